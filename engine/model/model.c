/*
 * model.c - mdl_load(): GGUF file or Hugging Face directory -> mdl_model.
 *
 * Both sources go through the same three steps:
 *   1. read the config (GGUF metadata / config.json) and validate it;
 *   2. plan the weights: for every tensor the model needs, find it in the
 *      source, check its type and exact shape, and reserve its slot in one
 *      FP32 arena (so an error is reported before any big allocation);
 *   3. dequantize every tensor into the arena (parallel over tensors).
 * Step 2 also checks what no single tensor shows: tensors of layers past the
 * layer count, GGUF tensors that do not tile the data section (shared
 * bytes, gaps, bytes left at the end), a GGUF vocabulary whose size is not
 * the embedding's row count; step 3 refuses NaN / Inf in norm weights.
 * Tensor views are resolved through a small `src_tensor` abstraction so the
 * plan/fill code is shared by both formats. Nothing is read from the mapping
 * before its bounds were validated by gguf.c / safetensors.c.
 */
#include "model.h"

#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
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
        char name[128]; /* for messages after planning */
        int norm;       /* a norm weight: every value must be finite */
        int64_t bad_at; /* norm: index of the first non-finite value, or -1 */
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

enum {
    PLAN_OPTIONAL = 1, /* a missing tensor is not an error (returns NI_ENOTFOUND quietly) */
    PLAN_NORM = 2,     /* a norm weight: checked for NaN / Inf once dequantized */
};

/* Plans tensor `name` of shape [rows] (cols == 0) or [rows][cols] into *dst;
 * flags: PLAN_*. */
static int plan(loader *L, float **dst, const char *name, uint64_t rows, uint64_t cols, int flags) {
    src_tensor s;
    int rc = find_tensor(L, name, &s);
    if (rc == NI_ENOTFOUND) {
        if (flags & PLAN_OPTIONAL) return NI_ENOTFOUND;
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
    snprintf(it->name, sizeof it->name, "%s", name);
    it->norm = (flags & PLAN_NORM) != 0;
    it->bad_at = -1;
    L->total += (size_t)s.n_elements;
    return 0;
}

/* Bounds of the integer settings. The readers check each value against them
 * as they read it, so a message quotes the file's own key and number (a
 * context length of 2^31 must not print as -1 after an int conversion);
 * mdl_config_validate checks them again for configs built by callers. */
enum {
    MAX_LAYERS = 1024,
    MAX_DIM = 65536,
    MAX_FFN = 1 << 20,
    MAX_HEADS = 1024,
    MAX_HEAD_DIM = 1024,
    MAX_VOCAB = 1 << 22,
    MAX_CTX = 1 << 24,
};

int mdl_config_validate(const mdl_config *c, const char *path, char *err, size_t errlen) {
#define BAD(...) return ni_fail(err, errlen, NI_EFORMAT, __VA_ARGS__)
    if (c->n_layers < 1 || c->n_layers > MAX_LAYERS)
        BAD("%s: invalid layer count %d", path, c->n_layers);
    if (c->dim < 1 || c->dim > MAX_DIM) BAD("%s: invalid hidden size %d", path, c->dim);
    if (c->hidden_dim < 1 || c->hidden_dim > MAX_FFN)
        BAD("%s: invalid FFN size %d", path, c->hidden_dim);
    if (c->n_heads < 1 || c->n_heads > MAX_HEADS)
        BAD("%s: invalid head count %d", path, c->n_heads);
    if (c->n_kv_heads < 1 || c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads)
        BAD("%s: KV head count %d does not divide head count %d", path, c->n_kv_heads,
            c->n_heads);
    if (c->head_dim < 2 || c->head_dim > MAX_HEAD_DIM || c->head_dim % 2)
        BAD("%s: invalid head dimension %d", path, c->head_dim);
    if (c->vocab_size < 1 || c->vocab_size > MAX_VOCAB)
        BAD("%s: invalid vocabulary size %d", path, c->vocab_size);
    if (c->max_seq_len < 1 || c->max_seq_len > MAX_CTX)
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

static const char *vtype_name(uint32_t t) {
    static const char *const names[] = {"uint8",  "int8",    "uint16", "int16",  "uint32",
                                        "int32",  "float32", "bool",   "string", "array",
                                        "uint64", "int64",   "float64"};
    return t < NI_ARRAY_LEN(names) ? names[t] : "unknown";
}

/* Integer metadata "<arch>.<suffix>" in [lo, hi] into *out; when absent, dflt
 * (or an error when required). A present key of another type is an error,
 * not the default: a value the converter wrote must not be ignored. A bool
 * is not a number here, though gguf_get_int reads it as 0 / 1. */
static int gguf_int(loader *L, const char *arch, const char *suffix, int required, int dflt, int lo,
                    int hi, int *out) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    const gguf_kv *kv = gguf_find(&L->g, key);
    if (!kv) {
        if (required)
            return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: missing metadata '%s'", L->path,
                           key);
        *out = dflt;
        return 0;
    }
    int64_t v;
    if (kv->type == GGUF_VT_BOOL || gguf_get_int(&L->g, key, &v) != 0) {
        if (kv->type == GGUF_VT_UINT64) /* the one integer gguf_get_int cannot hold */
            return ni_fail(L->err, L->errlen, NI_EFORMAT,
                           "%s: metadata '%s' is %llu, out of range [%d, %d]", L->path, key,
                           (unsigned long long)kv->v.u64, lo, hi);
        return ni_fail(L->err, L->errlen, NI_EFORMAT,
                       "%s: metadata '%s' has type %s, expected an integer", L->path, key,
                       vtype_name(kv->type));
    }
    if (v < lo || v > hi)
        return ni_fail(L->err, L->errlen, NI_EFORMAT,
                       "%s: metadata '%s' is %lld, out of range [%d, %d]", L->path, key,
                       (long long)v, lo, hi);
    *out = (int)v;
    return 0;
}

/* Numeric metadata "<arch>.<suffix>" into *out, dflt when absent; any other
 * type, bool included, is an error (a freq_base stored as a string once ran
 * with 10000; as the bool true it would run with 1). */
static int gguf_flt(loader *L, const char *arch, const char *suffix, float dflt, float *out) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    const gguf_kv *kv = gguf_find(&L->g, key);
    double v;
    if (!kv)
        v = dflt;
    else if (kv->type == GGUF_VT_BOOL || gguf_get_float(&L->g, key, &v) != 0)
        return ni_fail(L->err, L->errlen, NI_EFORMAT,
                       "%s: metadata '%s' has type %s, expected a number", L->path, key,
                       vtype_name(kv->type));
    *out = (float)v;
    return 0;
}

static int config_from_gguf(loader *L, mdl_config *c) {
    gguf_str a;
    const gguf_kv *akv = gguf_find(&L->g, "general.architecture");
    if (!akv)
        return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: missing general.architecture",
                       L->path);
    if (gguf_get_str(&L->g, "general.architecture", &a))
        return ni_fail(L->err, L->errlen, NI_EFORMAT,
                       "%s: metadata 'general.architecture' has type %s, expected a string",
                       L->path, vtype_name(akv->type));
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
    if ((rc = gguf_int(L, arch, "block_count", 1, 0, 1, MAX_LAYERS, &c->n_layers)) ||
        (rc = gguf_int(L, arch, "embedding_length", 1, 0, 1, MAX_DIM, &c->dim)) ||
        (rc = gguf_int(L, arch, "feed_forward_length", 1, 0, 1, MAX_FFN, &c->hidden_dim)) ||
        (rc = gguf_int(L, arch, "attention.head_count", 1, 0, 1, MAX_HEADS, &c->n_heads)) ||
        (rc = gguf_int(L, arch, "attention.head_count_kv", 0, c->n_heads, 1, MAX_HEADS,
                       &c->n_kv_heads)) ||
        (rc = gguf_int(L, arch, "context_length", 0, 4096, 1, MAX_CTX, &c->max_seq_len)) ||
        (rc = gguf_int(L, arch, "attention.key_length", 0, c->dim / c->n_heads, 2, MAX_HEAD_DIM,
                       &c->head_dim)) ||
        (rc = gguf_flt(L, arch, "attention.layer_norm_rms_epsilon", 1e-5f, &c->norm_eps)) ||
        (rc = gguf_flt(L, arch, "rope.freq_base", 10000.0f, &c->rope_theta)))
        return rc;
    const gguf_kv *toks = gguf_get_arr(&L->g, "tokenizer.ggml.tokens", GGUF_VT_STRING);
    if (c->arch == MDL_ARCH_LLAMA && gguf_find(&L->g, "llama.vocab_size")) {
        if ((rc = gguf_int(L, arch, "vocab_size", 1, 0, 1, MAX_VOCAB, &c->vocab_size))) return rc;
    } else {
        const gguf_tensor *e = gguf_find_tensor(&L->g, "token_embd.weight");
        c->vocab_size = e ? (int)NI_MIN(e->ne[1], INT32_MAX) : toks ? (int)toks->arr_n : 0;
    }
    return 0;
}

/* ---- sampling defaults (mdl_sampling_defaults) ---- */

/* general.sampling.<name> as a number into *out, *has = 1; absent: nothing.
 * Another type (bool, string) or a value that is not finite as a float is an
 * error naming the key: a recommendation the file makes must not be
 * misread silently. */
static int gguf_smp_float(loader *L, const char *name, int *has, float *out) {
    char key[64];
    snprintf(key, sizeof key, "general.sampling.%s", name);
    const gguf_kv *kv = gguf_find(&L->g, key);
    double v;
    if (!kv) return 0;
    if (kv->type == GGUF_VT_BOOL || gguf_get_float(&L->g, key, &v) != 0)
        return ni_fail(L->err, L->errlen, NI_EFORMAT,
                       "%s: metadata '%s' has type %s, expected a number", L->path, key,
                       vtype_name(kv->type));
    if (!isfinite((float)v))
        return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: metadata '%s' is %g, not a finite float",
                       L->path, key, v);
    *out = (float)v;
    *has = 1;
    return 0;
}

/* 1 when the file set any of the defaults. */
static int sampling_set(const mdl_sampling_defaults *s) {
    return s->has_temperature || s->has_top_k || s->has_top_p || s->has_min_p ||
           s->has_repetition_penalty;
}

static int gguf_sampling(loader *L, mdl_sampling_defaults *s) {
    int rc;
    const gguf_kv *kv = gguf_find(&L->g, "general.sampling.top_k");
    if (kv) {
        int64_t v;
        if (kv->type == GGUF_VT_BOOL || gguf_get_int(&L->g, "general.sampling.top_k", &v) != 0)
            return ni_fail(L->err, L->errlen, NI_EFORMAT,
                           "%s: metadata 'general.sampling.top_k' has type %s, expected an "
                           "integer",
                           L->path, vtype_name(kv->type));
        if (v < INT32_MIN || v > INT32_MAX)
            return ni_fail(L->err, L->errlen, NI_EFORMAT,
                           "%s: metadata 'general.sampling.top_k' is %lld, out of range", L->path,
                           (long long)v);
        s->top_k = (int)v;
        s->has_top_k = 1;
    }
    if ((rc = gguf_smp_float(L, "temp", &s->has_temperature, &s->temperature)) ||
        (rc = gguf_smp_float(L, "top_p", &s->has_top_p, &s->top_p)) ||
        (rc = gguf_smp_float(L, "min_p", &s->has_min_p, &s->min_p)) ||
        (rc = gguf_smp_float(L, "penalty_repeat", &s->has_repetition_penalty,
                             &s->repetition_penalty)))
        return rc;
    return 0;
}

/* ---- HF config ---- */

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "real";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    default: return "null";
    }
}

/* config.json reading: the file (for messages) and the object a key is in,
 * with its name ("" at the top level, else "rope_scaling." and the like). */
typedef struct hf_obj {
    loader *L;
    const char *file;
    json_t *o;
    const char *prefix;
} hf_obj;

/* Integer field k in [lo, hi] into *out; absent or null (Python's None): dflt.
 * An integral real (512.0, as some exporters write) counts as an integer;
 * anything else is an error naming the key and the file's value, where the
 * old reader fell back to the default or wrapped 2^31 to -1. */
static int hf_int(const hf_obj *h, const char *k, int dflt, int lo, int hi, int *out) {
    json_t *v = json_object_get(h->o, k);
    loader *L = h->L;
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d))
            return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: %s%s is %g, expected an integer",
                           h->file, h->prefix, k, d);
        if (d < lo || d > hi)
            return ni_fail(L->err, L->errlen, NI_EFORMAT,
                           "%s: %s%s is %.17g, out of range [%d, %d]", h->file, h->prefix, k, d, lo,
                           hi);
        *out = (int)d;
        return 0;
    }
    if (!json_is_integer(v))
        return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: %s%s has type %s, expected an integer",
                       h->file, h->prefix, k, json_type_name(v));
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: %s%s is %lld, out of range [%d, %d]",
                       h->file, h->prefix, k, (long long)x, lo, hi);
    *out = (int)x;
    return 0;
}

/* Numeric field k into *out; absent or null: dflt; another type is an error. */
static int hf_num(const hf_obj *h, const char *k, double dflt, double *out) {
    json_t *v = json_object_get(h->o, k);
    if (!v || json_is_null(v))
        *out = dflt;
    else if (json_is_number(v))
        *out = json_number_value(v);
    else
        return ni_fail(h->L->err, h->L->errlen, NI_EFORMAT,
                       "%s: %s%s has type %s, expected a number", h->file, h->prefix, k,
                       json_type_name(v));
    return 0;
}

static int hf_float(const hf_obj *h, const char *k, double dflt, float *out) {
    double d = 0;
    int rc = hf_num(h, k, dflt, &d);
    if (!rc) *out = (float)d;
    return rc;
}

/* The classes transformers builds for each model_type we run. "architectures"
 * decides what transformers instantiates, so a LLaMA-labelled config whose
 * class is GPT2LMHeadModel (or a sequence classifier) is not a model this
 * forward pass computes, whatever model_type says. */
static int hf_check_architectures(const hf_obj *h, const char *mt) {
    static const struct {
        const char *model_type;
        const char *classes[3];
    } known[] = {
        {"llama", {"LlamaForCausalLM", "MistralForCausalLM"}},
        {"mistral", {"MistralForCausalLM", "LlamaForCausalLM"}},
        {"qwen3", {"Qwen3ForCausalLM"}},
    };
    loader *L = h->L;
    json_t *a = json_object_get(h->o, "architectures");
    if (!a || json_is_null(a)) return 0; /* optional: older configs lack it */
    if (!json_is_array(a))
        return ni_fail(L->err, L->errlen, NI_EFORMAT,
                       "%s: architectures has type %s, expected a list of class names", h->file,
                       json_type_name(a));
    const char *const *ok = known[0].classes; /* mt is one of known[] (checked by the caller) */
    for (size_t k = 0; k < NI_ARRAY_LEN(known); k++)
        if (!strcmp(known[k].model_type, mt)) ok = known[k].classes;
    size_t i;
    json_t *e;
    json_array_foreach(a, i, e) {
        const char *cls = json_string_value(e);
        if (!cls)
            return ni_fail(L->err, L->errlen, NI_EFORMAT,
                           "%s: architectures[%zu] has type %s, expected a class name", h->file, i,
                           json_type_name(e));
        int found = 0;
        for (int k = 0; k < 3 && ok[k]; k++) found |= !strcmp(ok[k], cls);
        if (!found)
            return ni_fail(L->err, L->errlen, NI_EUNSUPPORTED,
                           "%s: unsupported architecture '%.100s' for model_type '%s' "
                           "(supported: %s%s%s)",
                           h->file, cls, mt, ok[0], ok[1] ? ", " : "", ok[1] ? ok[1] : "");
    }
    return 0;
}

static int hf_fields(const hf_obj *h, mdl_config *c) {
    loader *L = h->L;
    json_t *j = h->o;
    const char *mt = json_string_value(json_object_get(j, "model_type"));
    if (mt && (!strcmp(mt, "llama") || !strcmp(mt, "mistral"))) {
        c->arch = MDL_ARCH_LLAMA;
    } else if (mt && !strcmp(mt, "qwen3")) {
        c->arch = MDL_ARCH_QWEN3;
        c->has_qk_norm = 1;
    } else {
        return ni_fail(L->err, L->errlen, NI_EUNSUPPORTED,
                       "%s: unsupported model_type '%.100s' (supported: llama, mistral, qwen3)",
                       h->file, mt ? mt : "(none)");
    }
    int rc = hf_check_architectures(h, mt);
    if (rc) return rc;
    c->rope_interleaved = 0;
    if ((rc = hf_int(h, "num_hidden_layers", 0, 1, MAX_LAYERS, &c->n_layers)) ||
        (rc = hf_int(h, "hidden_size", 0, 1, MAX_DIM, &c->dim)) ||
        (rc = hf_int(h, "intermediate_size", 0, 1, MAX_FFN, &c->hidden_dim)) ||
        (rc = hf_int(h, "num_attention_heads", 0, 1, MAX_HEADS, &c->n_heads)) ||
        (rc = hf_int(h, "num_key_value_heads", c->n_heads, 1, MAX_HEADS, &c->n_kv_heads)) ||
        (rc = hf_int(h, "head_dim", c->n_heads > 0 ? c->dim / c->n_heads : 0, 2, MAX_HEAD_DIM,
                     &c->head_dim)) ||
        (rc = hf_int(h, "vocab_size", 0, 1, MAX_VOCAB, &c->vocab_size)) ||
        (rc = hf_int(h, "max_position_embeddings", 2048, 1, MAX_CTX, &c->max_seq_len)) ||
        (rc = hf_float(h, "rms_norm_eps", 1e-6, &c->norm_eps)))
        return rc;
    json_t *tie = json_object_get(j, "tie_word_embeddings");
    if (tie && !json_is_null(tie) && !json_is_boolean(tie))
        return ni_fail(L->err, L->errlen, NI_EFORMAT,
                       "%s: tie_word_embeddings has type %s, expected a boolean", h->file,
                       json_type_name(tie));
    c->tied_embeddings = json_is_true(tie);
    /* transformers >= 5 nests rope settings in rope_parameters; older files
     * use rope_theta + rope_scaling at the top level. */
    json_t *rp = json_object_get(j, "rope_parameters");
    json_t *rs = json_is_object(rp) ? rp : json_object_get(j, "rope_scaling");
    const hf_obj hp = {L, h->file, rp, "rope_parameters."};
    const hf_obj hs = {L, h->file, rs, json_is_object(rp) ? "rope_parameters." : "rope_scaling."};
    double theta = 0;
    if ((rc = hf_num(&hp, "rope_theta", 10000.0, &theta)) ||
        (rc = hf_float(h, "rope_theta", theta, &c->rope_theta)))
        return rc;
    if (json_is_object(rs)) {
        const char *t = json_string_value(json_object_get(rs, "rope_type"));
        if (!t) t = json_string_value(json_object_get(rs, "type"));
        if (t && !strcmp(t, "llama3")) {
            c->rope_scaling = MDL_ROPE_LLAMA3;
            if ((rc = hf_float(&hs, "factor", 0, &c->rope_factor)) ||
                (rc = hf_float(&hs, "low_freq_factor", 0, &c->rope_low_freq_factor)) ||
                (rc = hf_float(&hs, "high_freq_factor", 0, &c->rope_high_freq_factor)) ||
                (rc = hf_int(&hs, "original_max_position_embeddings", 0, 1, MAX_CTX,
                             &c->rope_orig_max_pos)))
                return rc;
        } else if (t && strcmp(t, "default")) {
            return ni_fail(L->err, L->errlen, NI_EUNSUPPORTED,
                           "%s: unsupported rope scaling type '%.100s'", h->file, t);
        }
    }
    return 0;
}

static int config_from_hf(loader *L, mdl_config *c, const char *cfg_path) {
    json_error_t je;
    json_t *j = json_load_file(cfg_path, 0, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: invalid JSON (line %d: %s)", cfg_path,
                       je.line, je.text);
    }
    const hf_obj h = {L, cfg_path, j, ""};
    int rc = hf_fields(&h, c);
    json_decref(j);
    return rc;
}

/* generation_config.json, when the directory has one: the sampling
 * defaults of transformers' GenerationConfig that vLLM also reads. Absent
 * or null keys are not set; "do_sample": false is greedy (transformers
 * ignores temperature then), so it sets temperature 0. */
static int hf_sampling(loader *L, const char *dir, mdl_sampling_defaults *s) {
    char p[4096];
    snprintf(p, sizeof p, "%s/generation_config.json", dir);
    if (access(p, F_OK) != 0) return 0;
    json_error_t je;
    json_t *j = json_load_file(p, 0, &je);
    if (!json_is_object(j)) {
        int parsed = j != NULL;
        json_decref(j);
        if (parsed) return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: not a JSON object", p);
        return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: invalid JSON (line %d: %s)", p, je.line,
                       je.text);
    }
    const hf_obj h = {L, p, j, ""};
    static const struct {
        const char *key;
        size_t has, val;
    } fl[] = {
        {"temperature", offsetof(mdl_sampling_defaults, has_temperature),
         offsetof(mdl_sampling_defaults, temperature)},
        {"top_p", offsetof(mdl_sampling_defaults, has_top_p),
         offsetof(mdl_sampling_defaults, top_p)},
        {"min_p", offsetof(mdl_sampling_defaults, has_min_p),
         offsetof(mdl_sampling_defaults, min_p)},
        {"repetition_penalty", offsetof(mdl_sampling_defaults, has_repetition_penalty),
         offsetof(mdl_sampling_defaults, repetition_penalty)},
    };
    int rc = 0;
    for (size_t i = 0; !rc && i < NI_ARRAY_LEN(fl); i++) {
        json_t *v = json_object_get(j, fl[i].key);
        float f = 0;
        if (!v || json_is_null(v)) continue;
        if ((rc = hf_float(&h, fl[i].key, 0, &f))) break;
        if (!isfinite(f)) {
            rc = ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: %s is not a finite float", p,
                         fl[i].key);
            break;
        }
        *(float *)((char *)s + fl[i].val) = f;
        *(int *)((char *)s + fl[i].has) = 1;
    }
    json_t *v = json_object_get(j, "top_k");
    if (!rc && v && !json_is_null(v) &&
        !(rc = hf_int(&h, "top_k", 0, INT32_MIN, INT32_MAX, &s->top_k)))
        s->has_top_k = 1;
    v = json_object_get(j, "do_sample");
    if (!rc && v && !json_is_null(v)) {
        if (!json_is_boolean(v))
            rc = ni_fail(L->err, L->errlen, NI_EFORMAT,
                         "%s: do_sample has type %s, expected a boolean", p, json_type_name(v));
        else if (json_is_false(v)) {
            s->temperature = 0;
            s->has_temperature = 1;
        }
    }
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

/* Layer index of a per-layer tensor name ("blk.29.attn_q.weight",
 * "model.layers.29.mlp.up_proj.weight"), or -1 for any other name. Indices
 * past 9 digits read as INT_MAX: beyond every layer count. */
static long layer_of(const char *s, size_t n, const char *prefix) {
    size_t p = strlen(prefix), i = p;
    if (n <= p || memcmp(s, prefix, p)) return -1;
    long v = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        v = i - p < 9 ? v * 10 + (s[i] - '0') : INT_MAX;
        i++;
    }
    return i > p && i < n && s[i] == '.' ? v : -1;
}

/* Tensors of a layer the config does not count would be ignored: a
 * block_count one too small runs a model with its last layer cut off and
 * nothing to show for it. Refuse any layer index >= n_layers. */
static int check_layer_count(loader *L, const mdl_config *c) {
    const char *prefix = L->is_gguf ? "blk." : "model.layers.";
    const char *key = !L->is_gguf                 ? "num_hidden_layers"
                      : c->arch == MDL_ARCH_QWEN3 ? "qwen3.block_count"
                                                  : "llama.block_count";
    uint64_t n = L->is_gguf ? L->g.n_tensors : (uint64_t)L->st.n_tensors;
    for (uint64_t i = 0; i < n; i++) {
        const char *s = L->is_gguf ? L->g.tensors[i].name.ptr : L->st.tensors[i].name;
        size_t len = L->is_gguf ? (size_t)L->g.tensors[i].name.len : strlen(s);
        long l = layer_of(s, len, prefix);
        if (l >= c->n_layers)
            return ni_fail(L->err, L->errlen, NI_EFORMAT,
                           "%s: tensor '%.*s' is in layer %ld, beyond %s = %d", L->path,
                           (int)NI_MIN(len, 200), s, l, key, c->n_layers);
    }
    return 0;
}

static int tensor_off_cmp(const void *a, const void *b) {
    const gguf_tensor *x = *(const gguf_tensor *const *)a, *y = *(const gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* printf arguments of a GGUF tensor name under "%.*s" (at most 200 bytes). */
#define TNAME(t) (int)NI_MIN((t)->name.len, 200), (t)->name.ptr

/* gguf_open checks each tensor on its own (aligned, inside the file), so a
 * reader may share bytes between tensors; a model file must not. ggml and
 * gguf-py write the tensors one after the other, each padded to the
 * alignment, and llama.cpp refuses any other offset. So, in offset order,
 * the tensors must tile the data section: the first at 0, each next one at
 * the end of the previous one rounded up to general.alignment, and the file
 * must end within that padding after the last one. What this catches,
 * beyond bounds: offsets all zero or overlapping (weights aliasing each
 * other), a tensor type id changed without its data (F32 bytes read as F16
 * leave a gap, Q4_1 bytes read as F16 overlap the next tensor), and a
 * general.alignment that does not match the padding the writer used (the
 * data section then starts where the writer did not put it and every
 * weight is read shifted: here the tensors still tile, but bytes are left
 * over at the end). Sorted: O(n log n). */
static int check_gguf_layout(loader *L) {
    uint64_t n = L->g.n_tensors, a = L->g.alignment;
    if (n < 1) return 0;
    const gguf_tensor **v = malloc(n * sizeof(*v));
    if (!v) return ni_fail(L->err, L->errlen, NI_ENOMEM, "%s: out of memory", L->path);
    for (uint64_t i = 0; i < n; i++) v[i] = &L->g.tensors[i];
    qsort(v, n, sizeof(*v), tensor_off_cmp);
    int rc = 0;
    if (v[0]->offset != 0)
        rc = ni_fail(L->err, L->errlen, NI_EFORMAT,
                     "%s: the first tensor '%.*s' starts at data offset %llu, not 0 (wrong tensor "
                     "offsets)",
                     L->path, TNAME(v[0]), (unsigned long long)v[0]->offset);
    for (uint64_t i = 1; i < n && !rc; i++) {
        const gguf_tensor *p = v[i - 1], *t = v[i];
        /* gguf_open placed both inside the file: no sum below can wrap */
        uint64_t end = p->offset + p->nbytes, next = (end + a - 1) / a * a;
        if (t->offset < end)
            rc = ni_fail(L->err, L->errlen, NI_EFORMAT,
                         "%s: tensors '%.*s' (offset %llu, %llu bytes of %s) and '%.*s' (offset "
                         "%llu) overlap",
                         L->path, TNAME(p), (unsigned long long)p->offset,
                         (unsigned long long)p->nbytes, gguf_type_name(p->type), TNAME(t),
                         (unsigned long long)t->offset);
        else if (t->offset > next)
            rc = ni_fail(L->err, L->errlen, NI_EFORMAT,
                         "%s: %llu unused bytes between tensors '%.*s' (offset %llu, %llu bytes of "
                         "%s) and '%.*s' (offset %llu): a gap (wrong offsets, or a wrong tensor "
                         "type)",
                         L->path, (unsigned long long)(t->offset - end), TNAME(p),
                         (unsigned long long)p->offset, (unsigned long long)p->nbytes,
                         gguf_type_name(p->type), TNAME(t), (unsigned long long)t->offset);
    }
    const gguf_tensor *last = v[n - 1];
    uint64_t end = last->offset + last->nbytes, pad = (end + a - 1) / a * a - end,
             left = L->g.size - L->g.data_offset - end;
    if (!rc && left > pad)
        rc = ni_fail(L->err, L->errlen, NI_EFORMAT,
                     "%s: %llu bytes after the last tensor '%.*s' that no tensor accounts for "
                     "(general.alignment %llu does not match the file's padding, or the tensor "
                     "offsets are wrong)",
                     L->path, (unsigned long long)left, TNAME(last), (unsigned long long)a);
    free(v);
    return rc;
}
#undef TNAME

static int plan_weights(loader *L, mdl_model *m) {
    const mdl_config *c = &m->cfg;
    mdl_weights *w = &m->w;
    const uint64_t D = (uint64_t)c->dim, V = (uint64_t)c->vocab_size, F = (uint64_t)c->hidden_dim,
                   Q = (uint64_t)c->n_heads * c->head_dim,
                   KV = (uint64_t)c->n_kv_heads * c->head_dim, H = (uint64_t)c->head_dim;
    w->layers = calloc((size_t)c->n_layers, sizeof(mdl_layer));
    if (!w->layers) return ni_fail(L->err, L->errlen, NI_ENOMEM, "%s: out of memory", L->path);
    const int G = L->is_gguf;
    int rc = check_layer_count(L, c);
    if (!rc && G) rc = check_gguf_layout(L);
    if (rc) return rc;
#define P(dst, name, r, cc) \
    if ((rc = plan(L, dst, name, r, cc, 0))) return rc
#define PN(dst, name, r) \
    if ((rc = plan(L, dst, name, r, 0, PLAN_NORM))) return rc
    P(&w->tok_embd, G ? "token_embd.weight" : "model.embed_tokens.weight", V, D);
    /* llama.cpp's converter pads a GGUF vocabulary to the embedding rows
     * ([PAD<i>] tokens) and llama.cpp refuses any other count, so fewer
     * tokens than rows is the tokenizer of another model; checked here,
     * before the weights are allocated. (HF tokenizers may cover fewer rows
     * than a padded embedding: mdl_load only refuses more.) */
    const gguf_kv *toks = G ? gguf_get_arr(&L->g, "tokenizer.ggml.tokens", GGUF_VT_STRING) : NULL;
    if (toks && toks->arr_n != V)
        return ni_fail(L->err, L->errlen, NI_EFORMAT,
                       "%s: tokenizer.ggml.tokens has %llu tokens but token_embd.weight has %llu "
                       "rows",
                       L->path, (unsigned long long)toks->arr_n, (unsigned long long)V);
    PN(&w->out_norm, G ? "output_norm.weight" : "model.norm.weight", D);
    rc = plan(L, &w->lm_head, G ? "output.weight" : "lm_head.weight", V, D, PLAN_OPTIONAL);
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
        plan(L, &w->rope_freqs, "rope_freqs.weight", H / 2, 0, PLAN_OPTIONAL) == 0)
        m->cfg.rope_scaling = MDL_ROPE_LLAMA3; /* factors precomputed by the converter */
    for (int l = 0; l < c->n_layers; l++) {
        mdl_layer *y = &w->layers[l];
        char n[128];
#define NM(g, h) (snprintf(n, sizeof n, G ? "blk.%d." g ".weight" : "model.layers.%d." h ".weight", l), n)
        PN(&y->attn_norm, NM("attn_norm", "input_layernorm"), D);
        P(&y->wq, NM("attn_q", "self_attn.q_proj"), Q, D);
        P(&y->wk, NM("attn_k", "self_attn.k_proj"), KV, D);
        P(&y->wv, NM("attn_v", "self_attn.v_proj"), KV, D);
        P(&y->wo, NM("attn_output", "self_attn.o_proj"), D, Q);
        if (c->has_qk_norm) {
            PN(&y->q_norm, NM("attn_q_norm", "self_attn.q_norm"), H);
            PN(&y->k_norm, NM("attn_k_norm", "self_attn.k_norm"), H);
        }
        PN(&y->ffn_norm, NM("ffn_norm", "post_attention_layernorm"), D);
        P(&y->w_gate, NM("ffn_gate", "mlp.gate_proj"), F, D);
        P(&y->w_up, NM("ffn_up", "mlp.up_proj"), F, D);
        P(&y->w_down, NM("ffn_down", "mlp.down_proj"), D, F);
#undef NM
    }
#undef PN
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
        /* One NaN or Inf in a norm weight makes every logit NaN; norms are
         * vectors of [dim] or [head_dim], so the scan costs nothing. */
        for (uint64_t k = 0; it->norm && k < it->src.n_elements; k++)
            if (!isfinite((*it->dst)[k])) {
                it->bad_at = (int64_t)k;
                break;
            }
    }
    if (bad) return ni_fail(L->err, L->errlen, NI_EFORMAT, "%s: dequantization failed", L->path);
    for (int i = 0; i < L->n_items; i++) {
        const struct plan_item *it = &L->items[i];
        if (it->bad_at >= 0)
            return ni_fail(L->err, L->errlen, NI_EFORMAT,
                           "%s: tensor '%s' has a non-finite value (%g) at element %lld", L->path,
                           it->name, (double)(*it->dst)[it->bad_at], (long long)it->bad_at);
    }
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
        if ((rc = hf_sampling(&L, path, &m->sampling))) goto fail;
        if (sampling_set(&m->sampling)) m->sampling.source = "generation_config.json";
        if ((rc = st_open_dir(&L.st, path, err, errlen))) goto fail;
    } else {
        L.is_gguf = 1;
        if ((rc = gguf_open(&L.g, path, err, errlen))) goto fail;
        if ((rc = config_from_gguf(&L, &m->cfg))) goto fail;
        if ((rc = mdl_config_validate(&m->cfg, path, err, errlen))) goto fail;
        if ((rc = gguf_sampling(&L, &m->sampling))) goto fail;
        if (sampling_set(&m->sampling)) m->sampling.source = "general.sampling.*";
    }
    if ((rc = plan_weights(&L, m))) goto fail;
    if ((rc = fill_weights(&L, m))) goto fail;
    if (L.is_gguf) {
        rc = tok_load_gguf(&m->tok, &L.g, err, errlen);
        gguf_str ct;
        const gguf_kv *ctk = gguf_find(&L.g, "tokenizer.chat_template");
        if (!rc && ctk && ctk->type != GGUF_VT_STRING) /* not "no template": a broken one */
            rc = ni_fail(err, errlen, NI_EFORMAT,
                         "%s: metadata 'tokenizer.chat_template' has type %s, expected a string",
                         path, vtype_name(ctk->type));
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
