/*
 * model.c - mdl_load(): GGUF file or Hugging Face directory -> mdl_model.
 *
 * Both sources go through the same three steps:
 *   1. read the config (GGUF metadata / config.json) and validate it;
 *   2. plan the weights: for every tensor the model needs, find it in the
 *      source, check its type and exact shape, and reserve its slot in one
 *      FP32 arena (so an error is reported before any big allocation);
 *   3. dequantize every tensor into the arena (parallel over tensors).
 * Tensor views are resolved through a small `src_tensor` abstraction so the
 * plan/fill code is shared by both formats. Nothing is read from the mapping
 * before its bounds were validated by gguf.c / safetensors.c.
 */
#include "model.h"

#include <jansson.h>
#include <libgen.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenizer/tok.h"
#include "engine/format/gguf.h"
#include "engine/format/quant.h"
#include "engine/format/safetensors.h"
#include "engine/util/util.h"

/* A source tensor reduced to what the planner needs. dims[0] = out (rows),
 * dims[1] = in (row length); 1-D tensors have dims[1] = 0. */
typedef struct src_tensor {
    uint32_t type;
    uint64_t dims[2];
    int n_dims;
    const void *data;
    uint64_t n_elements;
} src_tensor;

typedef struct loader {
    const char *path;
    int is_gguf;
    gguf_ctx g;
    st_set st;
    char *err;
    size_t errlen;
    /* plan */
    struct plan_item {
        src_tensor src;
        float **dst;
        size_t off;   /* float offset in the arena */
    } *items;
    int n_items, cap_items;
    size_t total;
} loader;

static int find_tensor(loader *L, const char *name, src_tensor *out) {
    memset(out, 0, sizeof(*out));
    if (L->is_gguf) {
        const gguf_tensor *t = gguf_find_tensor(&L->g, name);
        if (!t) return NI_ENOTFOUND;
        if (t->n_dims > 2 && (t->ne[2] != 1 || t->ne[3] != 1)) return NI_EFORMAT;
        out->type = t->type;
        out->n_dims = t->ne[1] == 1 && t->n_dims == 1 ? 1 : 2;
        out->dims[0] = out->n_dims == 1 ? t->ne[0] : t->ne[1];
        out->dims[1] = out->n_dims == 1 ? 0 : t->ne[0];
        out->data = t->data;
        out->n_elements = t->n_elements;
    } else {
        const st_tensor *t = st_find(&L->st, name);
        if (!t) return NI_ENOTFOUND;
        if (t->n_dims < 1 || t->n_dims > 2) return NI_EFORMAT;
        out->type = t->type;
        out->n_dims = t->n_dims;
        out->dims[0] = t->shape[0];
        out->dims[1] = t->n_dims == 2 ? t->shape[1] : 0;
        out->data = t->data;
        out->n_elements = t->n_elements;
    }
    return 0;
}

/* Plans tensor `name` of shape [rows] (cols == 0) or [rows][cols] into *dst.
 * optional: a missing tensor is not an error (returns NI_ENOTFOUND quietly). */
static int plan(loader *L, float **dst, const char *name, uint64_t rows, uint64_t cols,
                int optional) {
    src_tensor s;
    int rc = find_tensor(L, name, &s);
    if (rc == NI_ENOTFOUND) {
        if (optional) return NI_ENOTFOUND;
        return ni_fail(L->err, L->errlen, NI_ENOTFOUND, "%s: missing tensor '%s'", L->path, name);
    }
    if (rc) return ni_fail(L->err, L->errlen, rc, "%s: tensor '%s' has too many dimensions",
                           L->path, name);
    if (s.type == ST_TYPE_UNSUPPORTED || !qnt_block_elems(s.type))
        return ni_fail(L->err, L->errlen, NI_EUNSUPPORTED,
                       "%s: tensor '%s' has an unsupported data type", L->path, name);
    int want_dims = cols ? 2 : 1;
    if (s.n_dims != want_dims || s.dims[0] != rows || (cols && s.dims[1] != cols))
        return ni_fail(L->err, L->errlen, NI_EFORMAT,
                       "%s: tensor '%s' has shape [%llu, %llu], expected [%llu, %llu]", L->path,
                       name, (unsigned long long)s.dims[0], (unsigned long long)s.dims[1],
                       (unsigned long long)rows, (unsigned long long)cols);
    if (L->n_items == L->cap_items) {
        int nc = L->cap_items ? 2 * L->cap_items : 64;
        void *p = realloc(L->items, (size_t)nc * sizeof(*L->items));
        if (!p) return ni_fail(L->err, L->errlen, NI_ENOMEM, "%s: out of memory", L->path);
        L->items = p;
        L->cap_items = nc;
    }
    struct plan_item *it = &L->items[L->n_items++];
    it->src = s;
    it->dst = dst;
    it->off = L->total;
    L->total += (size_t)s.n_elements;
    return 0;
}

int mdl_config_validate(const mdl_config *c, const char *path, char *err, size_t errlen) {
#define BAD(...) return ni_fail(err, errlen, NI_EFORMAT, __VA_ARGS__)
    if (c->n_layers < 1 || c->n_layers > 1024) BAD("%s: invalid layer count %d", path, c->n_layers);
    if (c->dim < 1 || c->dim > 65536) BAD("%s: invalid hidden size %d", path, c->dim);
    if (c->hidden_dim < 1 || c->hidden_dim > 1 << 20)
        BAD("%s: invalid FFN size %d", path, c->hidden_dim);
    if (c->n_heads < 1 || c->n_heads > 1024) BAD("%s: invalid head count %d", path, c->n_heads);
    if (c->n_kv_heads < 1 || c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads)
        BAD("%s: KV head count %d does not divide head count %d", path, c->n_kv_heads,
            c->n_heads);
    if (c->head_dim < 2 || c->head_dim > 1024 || c->head_dim % 2)
        BAD("%s: invalid head dimension %d", path, c->head_dim);
    if (c->vocab_size < 1 || c->vocab_size > 1 << 22)
        BAD("%s: invalid vocabulary size %d", path, c->vocab_size);
    if (c->max_seq_len < 1 || c->max_seq_len > 1 << 24)
        BAD("%s: invalid context length %d", path, c->max_seq_len);
    if (!(c->norm_eps > 0 && c->norm_eps < 1)) BAD("%s: invalid RMSNorm epsilon", path);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta)) BAD("%s: invalid rope theta", path);
    if (c->rope_scaling == MDL_ROPE_LLAMA3 &&
        !(c->rope_factor > 0 && c->rope_low_freq_factor > 0 &&
          c->rope_high_freq_factor > c->rope_low_freq_factor && c->rope_orig_max_pos > 0))
        BAD("%s: invalid llama3 rope_scaling parameters", path);
    return 0;
#undef BAD
}

/* ---- GGUF config ---- */

static int gguf_int(loader *L, const char *arch, const char *suffix, int *out, int required,
                    int dflt) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int64_t v;
    int rc = gguf_get_int(&L->g, key, &v);
    if (rc == NI_ENOTFOUND && !required) {
        *out = dflt;
        return 0;
    }
    if (rc) return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: %s metadata '%s'", L->path,
                           rc == NI_ENOTFOUND ? "missing" : "non-integer", key);
    if (v < 0 || v > INT32_MAX)
        return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: absurd value %lld for '%s'", L->path,
                       (long long)v, key);
    *out = (int)v;
    return 0;
}

static float gguf_flt(loader *L, const char *arch, const char *suffix, float dflt) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    double v;
    return gguf_get_float(&L->g, key, &v) == 0 ? (float)v : dflt;
}

static int config_from_gguf(loader *L, mdl_config *c) {
    gguf_str a;
    if (gguf_get_str(&L->g, "general.architecture", &a))
        return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: missing general.architecture",
                       L->path);
    char arch[32];
    if (gguf_str_eq(a, "llama")) {
        c->arch = MDL_ARCH_LLAMA;
        c->rope_interleaved = 1; /* llama.cpp's converter permutes q/k for adjacent pairs */
    } else if (gguf_str_eq(a, "qwen3")) {
        c->arch = MDL_ARCH_QWEN3;
        c->rope_interleaved = 0;
        c->has_qk_norm = 1;
    } else {
        return ni_fail(L->err, L->errlen, NI_EUNSUPPORTED,
                       "%s: unsupported architecture '%.*s' (supported: llama, qwen3)", L->path,
                       (int)NI_MIN(a.len, 64), a.ptr);
    }
    snprintf(arch, sizeof arch, "%.*s", (int)a.len, a.ptr);
    int rc;
    if ((rc = gguf_int(L, arch, "block_count", &c->n_layers, 1, 0)) ||
        (rc = gguf_int(L, arch, "embedding_length", &c->dim, 1, 0)) ||
        (rc = gguf_int(L, arch, "feed_forward_length", &c->hidden_dim, 1, 0)) ||
        (rc = gguf_int(L, arch, "attention.head_count", &c->n_heads, 1, 0)) ||
        (rc = gguf_int(L, arch, "attention.head_count_kv", &c->n_kv_heads, 0, c->n_heads)) ||
        (rc = gguf_int(L, arch, "context_length", &c->max_seq_len, 0, 4096)))
        return rc;
    if ((rc = gguf_int(L, arch, "attention.key_length", &c->head_dim, 0,
                       c->n_heads ? c->dim / c->n_heads : 0)))
        return rc;
    c->norm_eps = gguf_flt(L, arch, "attention.layer_norm_rms_epsilon", 1e-5f);
    c->rope_theta = gguf_flt(L, arch, "rope.freq_base", 10000.0f);
    const gguf_kv *toks = gguf_get_arr(&L->g, "tokenizer.ggml.tokens", GGUF_VT_STRING);
    int64_t vs;
    if (gguf_get_int(&L->g, "llama.vocab_size", &vs) == 0 && c->arch == MDL_ARCH_LLAMA)
        c->vocab_size = (int)NI_MIN(vs, INT32_MAX);
    else {
        const gguf_tensor *e = gguf_find_tensor(&L->g, "token_embd.weight");
        c->vocab_size = e ? (int)NI_MIN(e->ne[1], INT32_MAX) : toks ? (int)toks->arr_n : 0;
    }
    return 0;
}

/* ---- HF config ---- */

static int json_int_field(json_t *o, const char *k, int dflt) {
    json_t *v = json_object_get(o, k);
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        return x < INT32_MIN || x > INT32_MAX ? -1 : (int)x;
    }
    return dflt;
}

static double json_num_field(json_t *o, const char *k, double dflt) {
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

static int config_from_hf(loader *L, mdl_config *c, const char *cfg_path) {
    json_error_t je;
    json_t *j = json_load_file(cfg_path, 0, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: invalid JSON (line %d: %s)", cfg_path,
                       je.line, je.text);
    }
    const char *mt = json_string_value(json_object_get(j, "model_type"));
    int rc = 0;
    if (mt && (!strcmp(mt, "llama") || !strcmp(mt, "mistral"))) {
        c->arch = MDL_ARCH_LLAMA;
    } else if (mt && !strcmp(mt, "qwen3")) {
        c->arch = MDL_ARCH_QWEN3;
        c->has_qk_norm = 1;
    } else {
        rc = ni_fail(L->err, L->errlen, NI_EUNSUPPORTED,
                     "%s: unsupported model_type '%s' (supported: llama, qwen3)", cfg_path,
                     mt ? mt : "(none)");
        goto out;
    }
    c->rope_interleaved = 0;
    c->n_layers = json_int_field(j, "num_hidden_layers", 0);
    c->dim = json_int_field(j, "hidden_size", 0);
    c->hidden_dim = json_int_field(j, "intermediate_size", 0);
    c->n_heads = json_int_field(j, "num_attention_heads", 0);
    c->n_kv_heads = json_int_field(j, "num_key_value_heads", c->n_heads);
    json_t *hd = json_object_get(j, "head_dim");
    c->head_dim = json_is_integer(hd) ? (int)json_integer_value(hd)
                  : c->n_heads > 0    ? c->dim / c->n_heads
                                      : 0;
    c->vocab_size = json_int_field(j, "vocab_size", 0);
    c->max_seq_len = json_int_field(j, "max_position_embeddings", 2048);
    c->norm_eps = (float)json_num_field(j, "rms_norm_eps", 1e-6);
    c->tied_embeddings = json_is_true(json_object_get(j, "tie_word_embeddings"));
    /* transformers >= 5 nests rope settings in rope_parameters; older files
     * use rope_theta + rope_scaling at the top level. */
    json_t *rp = json_object_get(j, "rope_parameters");
    json_t *rs = json_is_object(rp) ? rp : json_object_get(j, "rope_scaling");
    c->rope_theta = (float)json_num_field(j, "rope_theta",
                                          json_num_field(json_is_object(rp) ? rp : j,
                                                         "rope_theta", 10000.0));
    if (json_is_object(rs)) {
        const char *t = json_string_value(json_object_get(rs, "rope_type"));
        if (!t) t = json_string_value(json_object_get(rs, "type"));
        if (t && !strcmp(t, "llama3")) {
            c->rope_scaling = MDL_ROPE_LLAMA3;
            c->rope_factor = (float)json_num_field(rs, "factor", 0);
            c->rope_low_freq_factor = (float)json_num_field(rs, "low_freq_factor", 0);
            c->rope_high_freq_factor = (float)json_num_field(rs, "high_freq_factor", 0);
            c->rope_orig_max_pos = json_int_field(rs, "original_max_position_embeddings", 0);
        } else if (t && strcmp(t, "default")) {
            rc = ni_fail(L->err, L->errlen, NI_EUNSUPPORTED,
                         "%s: unsupported rope scaling type '%s'", cfg_path, t);
        }
    }
out:
    json_decref(j);
    return rc;
}

/* HF rotary "llama3" frequency adjustment expressed as divisors of the base
 * inverse frequencies (same arithmetic as transformers' _compute_llama3_parameters). */
static void llama3_freq_divisors(const mdl_config *c, float *out) {
    double lo_wl = c->rope_orig_max_pos / c->rope_low_freq_factor;
    double hi_wl = c->rope_orig_max_pos / c->rope_high_freq_factor;
    for (int i = 0; i < c->head_dim / 2; i++) {
        double f = pow(c->rope_theta, -2.0 * i / c->head_dim), wl = 2 * M_PI / f, nf;
        if (wl < hi_wl) nf = f;
        else if (wl > lo_wl) nf = f / c->rope_factor;
        else {
            double s = (c->rope_orig_max_pos / wl - c->rope_low_freq_factor) /
                       (c->rope_high_freq_factor - c->rope_low_freq_factor);
            nf = (1 - s) * f / c->rope_factor + s * f;
        }
        out[i] = (float)(f / nf);
    }
}

/* ---- weights ---- */

static int plan_weights(loader *L, mdl_model *m) {
    const mdl_config *c = &m->cfg;
    mdl_weights *w = &m->w;
    const uint64_t D = (uint64_t)c->dim, V = (uint64_t)c->vocab_size, F = (uint64_t)c->hidden_dim,
                   Q = (uint64_t)c->n_heads * c->head_dim,
                   KV = (uint64_t)c->n_kv_heads * c->head_dim, H = (uint64_t)c->head_dim;
    w->layers = calloc((size_t)c->n_layers, sizeof(mdl_layer));
    if (!w->layers) return ni_fail(L->err, L->errlen, NI_ENOMEM, "%s: out of memory", L->path);
    const int G = L->is_gguf;
    int rc;
#define P(dst, name, r, cc) \
    if ((rc = plan(L, dst, name, r, cc, 0))) return rc
    P(&w->tok_embd, G ? "token_embd.weight" : "model.embed_tokens.weight", V, D);
    P(&w->out_norm, G ? "output_norm.weight" : "model.norm.weight", D, 0);
    rc = plan(L, &w->lm_head, G ? "output.weight" : "lm_head.weight", V, D, 1);
    if (rc == NI_ENOTFOUND) {
        if (!G && !m->cfg.tied_embeddings)
            return ni_fail(L->err, L->errlen, NI_ENOTFOUND,
                           "%s: missing tensor 'lm_head.weight' (and tie_word_embeddings is false)",
                           L->path);
        m->cfg.tied_embeddings = 1;
    } else if (rc) {
        return rc;
    } else {
        m->cfg.tied_embeddings = 0;
    }
    if (G && c->arch == MDL_ARCH_LLAMA &&
        plan(L, &w->rope_freqs, "rope_freqs.weight", H / 2, 0, 1) == 0)
        m->cfg.rope_scaling = MDL_ROPE_LLAMA3; /* factors precomputed by the converter */
    for (int l = 0; l < c->n_layers; l++) {
        mdl_layer *y = &w->layers[l];
        char n[128];
#define NM(g, h) (snprintf(n, sizeof n, G ? "blk.%d." g ".weight" : "model.layers.%d." h ".weight", l), n)
        P(&y->attn_norm, NM("attn_norm", "input_layernorm"), D, 0);
        P(&y->wq, NM("attn_q", "self_attn.q_proj"), Q, D);
        P(&y->wk, NM("attn_k", "self_attn.k_proj"), KV, D);
        P(&y->wv, NM("attn_v", "self_attn.v_proj"), KV, D);
        P(&y->wo, NM("attn_output", "self_attn.o_proj"), D, Q);
        if (c->has_qk_norm) {
            P(&y->q_norm, NM("attn_q_norm", "self_attn.q_norm"), H, 0);
            P(&y->k_norm, NM("attn_k_norm", "self_attn.k_norm"), H, 0);
        }
        P(&y->ffn_norm, NM("ffn_norm", "post_attention_layernorm"), D, 0);
        P(&y->w_gate, NM("ffn_gate", "mlp.gate_proj"), F, D);
        P(&y->w_up, NM("ffn_up", "mlp.up_proj"), F, D);
        P(&y->w_down, NM("ffn_down", "mlp.down_proj"), D, F);
#undef NM
    }
#undef P
    src_tensor q0;
    if (find_tensor(L, G ? "blk.0.attn_q.weight" : "model.layers.0.self_attn.q_proj.weight", &q0) ==
        0)
        w->src_type = q0.type;
    return 0;
}

static int fill_weights(loader *L, mdl_model *m) {
    mdl_weights *w = &m->w;
    size_t extra = (!w->rope_freqs && m->cfg.rope_scaling == MDL_ROPE_LLAMA3)
                       ? (size_t)m->cfg.head_dim / 2 : 0;
    if (L->total + extra > ((size_t)1 << 36))
        return ni_fail(L->err, L->errlen, NI_ERANGE, "%s: model too large (%zu parameters)",
                       L->path, L->total);
    w->arena_floats = L->total + extra;
    w->arena = malloc(w->arena_floats * sizeof(float));
    if (!w->arena)
        return ni_fail(L->err, L->errlen, NI_ENOMEM, "%s: cannot allocate %zu MiB for weights",
                       L->path, w->arena_floats * 4 >> 20);
    int bad = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad)
    for (int i = 0; i < L->n_items; i++) {
        struct plan_item *it = &L->items[i];
        *it->dst = w->arena + it->off;
        bad |= qnt_dequantize(it->src.type, it->src.data, *it->dst, it->src.n_elements) != 0;
    }
    if (bad) return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: dequantization failed", L->path);
    if (extra) {
        w->rope_freqs = w->arena + L->total;
        llama3_freq_divisors(&m->cfg, w->rope_freqs);
    }
    if (m->cfg.tied_embeddings) w->lm_head = w->tok_embd;
    for (size_t i = 0; i < (size_t)m->cfg.head_dim / 2 && w->rope_freqs; i++)
        if (!(w->rope_freqs[i] > 0) || !isfinite(w->rope_freqs[i]))
            return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: invalid rope frequency factors",
                           L->path);
    return 0;
}

/* ---- chat template ---- */

static char *hf_chat_template(const char *dir) {
    char p[4096];
    snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
    json_t *j = json_load_file(p, 0, NULL);
    json_t *t = json_object_get(j, "chat_template");
    char *out = NULL;
    if (json_is_string(t)) {
        out = strdup(json_string_value(t));
    } else if (json_is_array(t)) { /* [{name, template}], take "default" or the first */
        size_t i;
        json_t *e;
        json_array_foreach(t, i, e) {
            const char *nm = json_string_value(json_object_get(e, "name"));
            const char *tp = json_string_value(json_object_get(e, "template"));
            if (tp && (!out || (nm && !strcmp(nm, "default")))) {
                free(out);
                out = strdup(tp);
            }
        }
    }
    json_decref(j);
    if (!out) { /* transformers >= 4.43 may store it in chat_template.jinja */
        char *s;
        snprintf(p, sizeof p, "%s/chat_template.jinja", dir);
        if (ni_read_file(p, &s, NULL) == 0) out = s;
    }
    return out;
}

static void set_name(mdl_model *m, const char *path) {
    char *tmp = strdup(path);
    if (!tmp) return;
    size_t n = strlen(tmp);
    while (n > 1 && tmp[n - 1] == '/') tmp[--n] = 0;
    m->name = strdup(basename(tmp));
    free(tmp);
}

int mdl_load(mdl_model *m, const char *path, char *err, size_t errlen) {
    memset(m, 0, sizeof(*m));
    loader L = {.path = path, .err = err, .errlen = errlen};
    struct stat sb;
    if (stat(path, &sb) != 0)
        return ni_fail(err, errlen, NI_EIO, "%s: no such file or directory", path);
    int rc;
    char cfg_path[4096];
    if (S_ISDIR(sb.st_mode)) {
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", path);
        if (access(cfg_path, R_OK) != 0)
            return ni_fail(err, errlen, NI_ENOTFOUND,
                           "%s: not a model directory (no config.json)", path);
        if ((rc = config_from_hf(&L, &m->cfg, cfg_path))) goto fail;
        if ((rc = mdl_config_validate(&m->cfg, cfg_path, err, errlen))) goto fail;
        if ((rc = st_open_dir(&L.st, path, err, errlen))) goto fail;
    } else {
        L.is_gguf = 1;
        if ((rc = gguf_open(&L.g, path, err, errlen))) goto fail;
        if ((rc = config_from_gguf(&L, &m->cfg))) goto fail;
        if ((rc = mdl_config_validate(&m->cfg, path, err, errlen))) goto fail;
    }
    if ((rc = plan_weights(&L, m))) goto fail;
    if ((rc = fill_weights(&L, m))) goto fail;
    if (L.is_gguf) {
        rc = tok_load_gguf(&m->tok, &L.g, err, errlen);
        gguf_str ct;
        if (!rc && gguf_get_str(&L.g, "tokenizer.chat_template", &ct) == 0 &&
            ct.len < (1u << 20))
            m->chat_template = strndup(ct.ptr, ct.len);
    } else {
        rc = tok_load_hf(&m->tok, path, err, errlen);
        m->chat_template = hf_chat_template(path);
    }
    if (rc) goto fail;
    if (tok_vocab_size(m->tok) > m->cfg.vocab_size) {
        rc = ni_fail(err, errlen, NI_EFORMAT,
                     "%s: tokenizer has %d tokens but the model's vocabulary is %d", path,
                     tok_vocab_size(m->tok), m->cfg.vocab_size);
        goto fail;
    }
    m->path = strdup(path);
    set_name(m, path);
    free(L.items);
    if (L.is_gguf) gguf_close(&L.g);
    else st_close(&L.st);
    return 0;
fail:
    free(L.items);
    if (L.is_gguf) gguf_close(&L.g);
    else st_close(&L.st);
    mdl_free(m);
    return rc;
}

void mdl_free(mdl_model *m) {
    if (m->tok) tok_free(m->tok);
    free(m->w.layers);
    free(m->w.arena);
    free(m->chat_template);
    free(m->name);
    free(m->path);
    memset(m, 0, sizeof(*m));
}
