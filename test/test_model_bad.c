/*
 * test_model_bad.c - mdl_load (engine/model/model.c) against model files that
 * are wrong in ways the container parsers cannot see (issue 14, "Model files").
 *
 * Every case builds a tiny model in a mkdtemp() directory, in C: a GGUF file
 * (llama, F32, gpt2 tokenizer) or a Hugging Face directory (config.json + a
 * safetensors file written here, with the SentencePiece tokenizer of
 * test/models/tiny-llama2 copied in). The valid form of each must load; each
 * defect must be refused with a negative NI_E* code and one message line
 * naming the file and the offending key or tensor:
 *   1. a metadata value of the wrong type (rope.freq_base as a string or a
 *      bool, general.architecture or tokenizer.chat_template not a string);
 *   2. tensors of a layer beyond block_count / num_hidden_layers;
 *   3. a tokenizer vocabulary that disagrees with token_embd's rows;
 *   4. a config.json architecture outside the LLaMA family;
 *   5. a context length >= 2^31 (reported as the file's number);
 *   6. NaN / Inf in a norm weight;
 *   7. a safetensors header one byte short or long, misaligned, overlapping,
 *      all-zero, gapped or trailing tensor data; GGUF misaligned, overlapping
 *      and all-zero tensor offsets, gaps, bytes left after the last tensor;
 *   8. a general.alignment the data does not follow (alignment 1 over data
 *      padded to 32: every weight read shifted); alignment 1 or 8 with data
 *      laid out for it loads, with the same weights;
 *   9. token_embd's type id changed without its data (F32 bytes called F16
 *      or BF16); real F16 / BF16 embeddings load, with the same weights.
 * The refusal lines are printed, so a run shows what a user would read.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/format/gguf.h"
#include "engine/model/model.h"
#include "engine/util/util.h"
#include "test_util.h"
#include "test_gguf_writer.h"
#include "test_model_writer.h"

enum { HF_VOCAB = 384 };
#define HF_TOKENIZER_DIR "test/models/tiny-llama2" /* SentencePiece, 384 pieces */

static char g_hf[160]; /* g_dir/hf: the Hugging Face directory */

/* ------------------------------------------------------------- helpers */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static int group_setup(void **state) {
    if (setup(state)) return -1;
    snprintf(g_path, sizeof g_path, "%s/m.gguf", g_dir);
    snprintf(g_hf, sizeof g_hf, "%s/hf", g_dir);
    if (mkdir(g_hf, 0700)) return -1;
    /* the tokenizer is never what a case breaks: copy the committed one once */
    static const char *const files[] = {"tokenizer.model", "tokenizer_config.json"};
    for (size_t i = 0; i < NI_ARRAY_LEN(files); i++) {
        char src[256], dst[256], *buf;
        size_t n;
        snprintf(src, sizeof src, "%s/%s", HF_TOKENIZER_DIR, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", g_hf, files[i]);
        if (ni_read_file(src, &buf, &n)) return -1;
        FILE *f = fopen(dst, "wb");
        int ok = f && fwrite(buf, 1, n, f) == n;
        if (f) ok &= fclose(f) == 0;
        free(buf);
        if (!ok) return -1;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    return nftw(g_dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Loads path, which must succeed; the caller mdl_frees m. */
static void expect_load(const char *path, mdl_model *m) {
    char err[512] = "";
    int rc = mdl_load(m, path, err, sizeof err);
    if (rc) fail_msg("%s: should load, got %d: %s", path, rc, err);
}

/* Loads path, which must be refused with code (any negative code if 0) and a
 * single-line message naming `names` (the file or its directory) and holding
 * every non-NULL want. */
static void expect_refused(const char *path, const char *names, int code, const char *want1,
                           const char *want2) {
    mdl_model m;
    char err[512] = "";
    int rc = mdl_load(&m, path, err, sizeof err);
    if (rc == 0) {
        mdl_free(&m);
        fail_msg("%s: loaded, but should be refused (%s%s%s)", path, want1 ? want1 : "",
                 want2 ? ", " : "", want2 ? want2 : "");
    }
    printf("  refused: %s\n", err);
    if (code && rc != code)
        fail_msg("%s: rc %d (%s), want %d; msg: %s", path, rc, ni_strerror(rc), code, err);
    assert_true(rc < 0);
    if (!strstr(err, names)) fail_msg("message does not name %s: %s", names, err);
    if (strchr(err, '\n')) fail_msg("message is more than one line: %s", err);
    if (want1 && !strstr(err, want1)) fail_msg("message lacks '%s': %s", want1, err);
    if (want2 && !strstr(err, want2)) fail_msg("message lacks '%s': %s", want2, err);
    static const mdl_model zero;
    assert_memory_equal(&m, &zero, sizeof m);
}

static void gguf_refused(const gspec *s, int code, const char *want1, const char *want2) {
    write_gguf(s);
    expect_refused(g_path, g_path, code, want1, want2);
}

/* ------------------------------------------------------ Hugging Face model */

enum {
    ST_OK,
    ST_HDR_SHORT,  /* header length one byte less than the JSON */
    ST_HDR_LONG,   /* header length one byte more than the JSON */
    ST_HDR_CUT,    /* the file ends one byte inside the header */
    ST_MISALIGNED, /* a 2-byte F16 tensor first: every F32 after it is at 2 mod 4 */
    ST_OVERLAP,    /* the second tensor starts inside the first */
    ST_ZERO,       /* every data_offsets = [0, size] */
    ST_ZERO_EMPTY, /* every data_offsets = [0, 0] */
    ST_HOLE,       /* 4 unused bytes between the first two tensors */
    ST_TRAILING,   /* 4 unused bytes after the last tensor */
};

typedef struct hspec {
    const char *model_type;    /* JSON value text */
    const char *architectures; /* JSON value text, or NULL: no key */
    const char *max_pos;       /* JSON value text of max_position_embeddings */
    const char *rope_theta;    /* JSON value text */
    int layers_key, tensor_layers;
    const char *poison; /* tensor whose element 1 becomes poison_val */
    float poison_val;
    int st; /* ST_* */
} hspec;

static hspec hspec_valid(void) {
    return (hspec){.model_type = "\"llama\"",
                   .architectures = "[\"LlamaForCausalLM\"]",
                   .max_pos = "512",
                   .rope_theta = "10000.0",
                   .layers_key = 2,
                   .tensor_layers = 2};
}

typedef struct st_t {
    char name[80];
    const char *dtype;
    uint64_t shape[2];
    int n_dims;
    wb bytes;
} st_t;

static void write_hf(const hspec *s) {
    char p[256];
    snprintf(p, sizeof p, "%s/config.json", g_hf);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fprintf(f,
            "{\"model_type\": %s,%s%s%s \"hidden_size\": %d, \"intermediate_size\": %d,"
            " \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d,"
            " \"num_hidden_layers\": %d, \"vocab_size\": %d, \"rms_norm_eps\": 1e-05,"
            " \"rope_theta\": %s, \"rope_scaling\": null, \"max_position_embeddings\": %s,"
            " \"tie_word_embeddings\": true}\n",
            s->model_type, s->architectures ? " \"architectures\": " : "",
            s->architectures ? s->architectures : "", s->architectures ? "," : "", D, FF, NH, NKV,
            HD, s->layers_key, HF_VOCAB, s->rope_theta, s->max_pos);
    assert_int_equal(fclose(f), 0);

    /* the tensors, in the order their data is laid out */
    st_t *t = calloc(64, sizeof *t);
    assert_non_null(t);
    int n = 0;
#define ADD(r, c, ...)                                                                             \
    do {                                                                                           \
        assert_true(n < 64);                                                                       \
        snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__);                                        \
        t[n].dtype = "F32";                                                                        \
        t[n].shape[0] = r, t[n].shape[1] = c, t[n].n_dims = (c) ? 2 : 1;                           \
        n++;                                                                                       \
    } while (0)
    if (s->st == ST_MISALIGNED) {
        snprintf(t[n].name, sizeof t[n].name, "extra.f16");
        t[n].dtype = "F16";
        t[n].shape[0] = 1, t[n].n_dims = 1;
        w_u16(&t[n].bytes, 0x3c00); /* 1.0 */
        n++;
    }
    ADD(HF_VOCAB, D, "model.embed_tokens.weight");
    ADD(D, 0, "model.norm.weight");
    for (int l = 0; l < s->tensor_layers; l++) {
        ADD(D, 0, "model.layers.%d.input_layernorm.weight", l);
        ADD(NH * HD, D, "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(NKV * HD, D, "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(NKV * HD, D, "model.layers.%d.self_attn.v_proj.weight", l);
        ADD(D, NH * HD, "model.layers.%d.self_attn.o_proj.weight", l);
        ADD(D, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(FF, D, "model.layers.%d.mlp.gate_proj.weight", l);
        ADD(FF, D, "model.layers.%d.mlp.up_proj.weight", l);
        ADD(D, FF, "model.layers.%d.mlp.down_proj.weight", l);
    }
#undef ADD
    for (int i = 0; i < n; i++) {
        if (t[i].bytes.len) continue; /* extra.f16 */
        uint64_t ne = t[i].shape[0] * (t[i].n_dims == 2 ? t[i].shape[1] : 1);
        int is_norm = strstr(t[i].name, "norm") != NULL;
        for (uint64_t k = 0; k < ne; k++) {
            float x = is_norm ? 1.0f : weight(i, k);
            if (s->poison && !strcmp(t[i].name, s->poison) && k == 1) x = s->poison_val;
            w_f32(&t[i].bytes, x);
        }
    }

    /* header and data */
    wb h = {0}, data = {0};
    char e[256];
    int len = snprintf(e, sizeof e, "{\"__metadata__\":{\"format\":\"pt\"}");
    wb_put(&h, e, (size_t)len);
    for (int i = 0; i < n; i++) {
        if (s->st == ST_HOLE && i == 1) w_u32(&data, 0);
        uint64_t b = data.len, end = b + t[i].bytes.len;
        if (s->st == ST_OVERLAP && i == 1) b = 4, end = 4 + t[i].bytes.len;
        if (s->st == ST_ZERO) b = 0, end = t[i].bytes.len;
        if (s->st == ST_ZERO_EMPTY) b = end = 0;
        wb_put(&data, t[i].bytes.p, t[i].bytes.len);
        char shape[64];
        if (t[i].n_dims == 2)
            snprintf(shape, sizeof shape, "%llu,%llu", (unsigned long long)t[i].shape[0],
                     (unsigned long long)t[i].shape[1]);
        else
            snprintf(shape, sizeof shape, "%llu", (unsigned long long)t[i].shape[0]);
        len = snprintf(
            e, sizeof e, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%s],\"data_offsets\":[%llu,%llu]}",
            t[i].name, t[i].dtype, shape, (unsigned long long)b, (unsigned long long)end);
        wb_put(&h, e, (size_t)len);
        wb_free(&t[i].bytes);
    }
    free(t);
    if (s->st == ST_TRAILING) w_u32(&data, 0);
    w_u8(&h, '}');
    /* the reference writer pads the header with spaces to 8 bytes; the
     * length cases keep it unpadded so their cut falls on the closing brace */
    int exact = s->st == ST_HDR_SHORT || s->st == ST_HDR_LONG || s->st == ST_HDR_CUT;
    while (!exact && h.len % 8) w_u8(&h, ' ');
    uint64_t hlen = h.len + (s->st == ST_HDR_LONG) - (s->st == ST_HDR_SHORT);
    wb out = {0};
    w_u64(&out, hlen);
    wb_put(&out, h.p, h.len);
    if (s->st != ST_HDR_CUT)
        wb_put(&out, data.p, data.len);
    else
        out.len = 8 + h.len - 1;
    snprintf(p, sizeof p, "%s/model.safetensors", g_hf);
    write_file(p, out.p, out.len);
    wb_free(&out);
    wb_free(&h);
    wb_free(&data);
}

static void hf_refused(const hspec *s, int code, const char *want1, const char *want2) {
    write_hf(s);
    expect_refused(g_hf, g_hf, code, want1, want2);
}

/* ----------------------------------------------------------- valid forms */

static void test_valid_files_load(void **state) {
    (void)state;
    mdl_model m;
    gspec g = gspec_valid();
    write_gguf(&g);
    expect_load(g_path, &m);
    assert_int_equal(m.cfg.n_layers, 2);
    assert_int_equal(m.cfg.vocab_size, 64);
    assert_int_equal(m.cfg.max_seq_len, 2048);
    assert_true(m.cfg.rope_theta == 500000.0f);
    assert_true(m.w.out_norm[1] == 1.0f);
    mdl_free(&m);
    /* an integer freq_base is a number too */
    g.freq_type = GGUF_VT_UINT32;
    write_gguf(&g);
    expect_load(g_path, &m);
    assert_true(m.cfg.rope_theta == 500000.0f);
    mdl_free(&m);

    hspec h = hspec_valid();
    write_hf(&h);
    expect_load(g_hf, &m);
    assert_int_equal(m.cfg.n_layers, 2);
    assert_int_equal(m.cfg.vocab_size, HF_VOCAB);
    assert_int_equal(m.cfg.max_seq_len, 512);
    assert_int_equal(m.cfg.n_kv_heads, NKV);
    mdl_free(&m);
    /* architectures is optional (older configs), and mistral is a llama */
    h.architectures = NULL;
    write_hf(&h);
    expect_load(g_hf, &m);
    mdl_free(&m);
    h.model_type = "\"mistral\"";
    h.architectures = "[\"MistralForCausalLM\"]";
    write_hf(&h);
    expect_load(g_hf, &m);
    mdl_free(&m);
    /* integral JSON reals are integers (some exporters write 512.0) */
    h = hspec_valid();
    h.max_pos = "512.0";
    write_hf(&h);
    expect_load(g_hf, &m);
    assert_int_equal(m.cfg.max_seq_len, 512);
    mdl_free(&m);
}

/* ----------------------------------------------------------------- cases */

static void chat_template_u32(gwriter *w) { g_u32(w, "tokenizer.chat_template", 7); }

/* 1. A number stored as a string used to fall back to the default silently. */
static void test_metadata_wrong_type(void **state) {
    (void)state;
    gspec g = gspec_valid();
    g.freq_type = GGUF_VT_STRING;
    gguf_refused(&g, NI_EFORMAT, "'llama.rope.freq_base'", "string");
    g = gspec_valid();
    g.eps_type = GGUF_VT_STRING;
    gguf_refused(&g, NI_EFORMAT, "'llama.attention.layer_norm_rms_epsilon'", "string");
    g = gspec_valid(); /* gguf_get_float reads a bool as 0 / 1: true ran with theta 1 */
    g.freq_type = GGUF_VT_BOOL;
    gguf_refused(&g, NI_EFORMAT, "'llama.rope.freq_base' has type bool", NULL);
    g = gspec_valid(); /* was "missing general.architecture" */
    g.arch_type = GGUF_VT_UINT32;
    gguf_refused(&g, NI_EFORMAT, "'general.architecture' has type uint32", NULL);
    g = gspec_valid(); /* was no chat template, silently */
    g.extra_kv = chat_template_u32;
    gguf_refused(&g, NI_EFORMAT, "'tokenizer.chat_template' has type uint32", NULL);
    hspec h = hspec_valid();
    h.rope_theta = "\"500000\"";
    hf_refused(&h, NI_EFORMAT, "rope_theta", "string");
    h = hspec_valid();
    h.max_pos = "\"512\"";
    hf_refused(&h, NI_EFORMAT, "max_position_embeddings", "string");
    h = hspec_valid();
    h.max_pos = "512.5";
    hf_refused(&h, NI_EFORMAT, "max_position_embeddings", "512.5");
}

/* 2. Layers the config does not count used to be dropped silently. */
static void test_layers_beyond_block_count(void **state) {
    (void)state;
    gspec g = gspec_valid();
    g.tensor_layers = 3;
    gguf_refused(&g, NI_EFORMAT, "'blk.2.", "llama.block_count");
    /* the other way round was refused already: keep it so */
    g = gspec_valid();
    g.block_count = 3;
    gguf_refused(&g, NI_ENOTFOUND, "'blk.2.attn_norm.weight'", NULL);
    hspec h = hspec_valid();
    h.tensor_layers = 3;
    hf_refused(&h, NI_EFORMAT, "'model.layers.2.", "num_hidden_layers");
}

/* 3. GGUF vocabularies are not padded: token_embd has one row per token. */
static void test_vocab_rows_disagree(void **state) {
    (void)state;
    gspec g = gspec_valid();
    g.n_tokens = 16; /* 64 embedding rows */
    gguf_refused(&g, NI_EFORMAT, "tokenizer.ggml.tokens", "token_embd.weight");
    g.n_tokens = 1000; /* the probe's file: SmolLM2's 49152 rows */
    g.embd_rows = 49152;
    gguf_refused(&g, NI_EFORMAT, "1000 tokens", "49152 rows");
    g.n_tokens = 16;
    g.embd_rows = 64;
    g.vocab_key = 64; /* a vocab_size key agreeing with the rows changes nothing */
    gguf_refused(&g, NI_EFORMAT, "tokenizer.ggml.tokens", "token_embd.weight");
    /* more tokens than rows, or a vocab_size key that disagrees with the rows:
     * refused already */
    g = gspec_valid();
    g.n_tokens = 100;
    gguf_refused(&g, NI_EFORMAT, "100 tokens", NULL);
    g = gspec_valid();
    g.vocab_key = 16;
    gguf_refused(&g, NI_EFORMAT, "'token_embd.weight'", "shape");
}

/* 4. config.json's class must be one the LLaMA forward pass implements. */
static void test_hf_architecture(void **state) {
    (void)state;
    hspec h = hspec_valid();
    h.architectures = "[\"GPT2LMHeadModel\"]";
    hf_refused(&h, NI_EUNSUPPORTED, "'GPT2LMHeadModel'", "config.json");
    h.architectures = "[\"LlamaForSequenceClassification\"]";
    hf_refused(&h, NI_EUNSUPPORTED, "'LlamaForSequenceClassification'", NULL);
    h.architectures = "[\"Qwen3ForCausalLM\"]"; /* contradicts model_type llama */
    hf_refused(&h, NI_EUNSUPPORTED, "'Qwen3ForCausalLM'", "'llama'");
    h.architectures = "\"LlamaForCausalLM\"";
    hf_refused(&h, NI_EFORMAT, "architectures", NULL);
    h.architectures = "[\"GPT2LMHeadModel\"]";
    h.model_type = "\"gpt2\"";
    hf_refused(&h, NI_EUNSUPPORTED, "'gpt2'", NULL);
}

/* 5. A context length >= 2^31 used to read as "invalid context length -1". */
static void test_context_length_overflow(void **state) {
    (void)state;
    hspec h = hspec_valid();
    h.max_pos = "2147483648";
    hf_refused(&h, NI_EFORMAT, "max_position_embeddings", "2147483648");
    h.max_pos = "18446744073709551615"; /* beyond json_int_t: jansson's own error */
    hf_refused(&h, NI_EFORMAT, "config.json", NULL);
    h.max_pos = "-1";
    hf_refused(&h, NI_EFORMAT, "max_position_embeddings", "-1");
    gspec g = gspec_valid();
    g.ctx_len = 1ull << 31;
    gguf_refused(&g, NI_EFORMAT, "llama.context_length", "2147483648");
    g.ctx_len = UINT64_MAX;
    gguf_refused(&g, NI_EFORMAT, "llama.context_length", "18446744073709551615");
}

/* 6. One NaN in a norm weight turns every logit into NaN. */
static void test_norm_not_finite(void **state) {
    (void)state;
    gspec g = gspec_valid();
    g.poison = "output_norm.weight";
    g.poison_val = NAN;
    gguf_refused(&g, NI_EFORMAT, "'output_norm.weight'", "non-finite");
    g.poison_val = INFINITY;
    gguf_refused(&g, NI_EFORMAT, "'output_norm.weight'", "non-finite");
    g.poison = "blk.1.ffn_norm.weight";
    g.poison_val = -INFINITY;
    gguf_refused(&g, NI_EFORMAT, "'blk.1.ffn_norm.weight'", "non-finite");
    hspec h = hspec_valid();
    h.poison = "model.norm.weight";
    h.poison_val = NAN;
    hf_refused(&h, NI_EFORMAT, "'model.norm.weight'", "non-finite");
    h.poison = "model.layers.0.input_layernorm.weight";
    h.poison_val = INFINITY;
    hf_refused(&h, NI_EFORMAT, "'model.layers.0.input_layernorm.weight'", "non-finite");
}

/* 7a. The 8-byte header length must frame the JSON exactly. */
static void test_safetensors_header(void **state) {
    (void)state;
    hspec h = hspec_valid();
    h.st = ST_HDR_SHORT;
    hf_refused(&h, NI_EFORMAT, "model.safetensors", "header");
    h.st = ST_HDR_LONG;
    hf_refused(&h, NI_EFORMAT, "model.safetensors", "header");
    h.st = ST_HDR_CUT;
    hf_refused(&h, NI_EFORMAT, "model.safetensors", "header length");
}

/* 7b. Tensor data must tile the data section: aligned, no overlap, no gap. */
static void test_safetensors_offsets(void **state) {
    (void)state;
    hspec h = hspec_valid();
    h.st = ST_MISALIGNED;
    hf_refused(&h, NI_EFORMAT, "'model.embed_tokens.weight'", "misaligned");
    h.st = ST_OVERLAP;
    hf_refused(&h, NI_EFORMAT, "'model.norm.weight'", "overlap");
    h.st = ST_ZERO;
    hf_refused(&h, NI_EFORMAT, "overlap", NULL);
    h.st = ST_ZERO_EMPTY;
    hf_refused(&h, NI_EFORMAT, "byte size", NULL);
    h.st = ST_HOLE;
    hf_refused(&h, NI_EFORMAT, "'model.norm.weight'", "gap");
    h.st = ST_TRAILING;
    hf_refused(&h, NI_EFORMAT, "after the last tensor", NULL);
}

/* 7c. GGUF tensors: aligned (gguf_open refused that already), and no two
 * sharing bytes (gguf_open allows it; mdl_load does not). */
static void test_gguf_offsets(void **state) {
    (void)state;
    gspec g = gspec_valid();
    g.offsets = OFF_MISALIGNED;
    gguf_refused(&g, NI_EFORMAT, "'output_norm.weight'", "misaligned");
    g.offsets = OFF_OVERLAP;
    gguf_refused(&g, NI_EFORMAT, "'output_norm.weight'", "overlap");
    g.offsets = OFF_ZERO;
    gguf_refused(&g, NI_EFORMAT, "overlap", NULL);
    /* bytes no tensor accounts for: between two tensors, before the first,
     * after the last (its padding to the alignment is allowed) */
    g.offsets = OFF_GAP;
    gguf_refused(&g, NI_EFORMAT, "32 unused bytes between tensors 'token_embd.weight'",
                 "'output_norm.weight'");
    g.offsets = OFF_FIRST_NOT_0;
    gguf_refused(&g, NI_EFORMAT, "first tensor 'token_embd.weight'", "offset 32");
    g = gspec_valid();
    g.trailing = 8;
    gguf_refused(&g, NI_EFORMAT, "8 bytes after the last tensor 'blk.1.ffn_down.weight'", NULL);
}

/* The weights of m equal those of gspec_valid(): what a file laid out
 * differently, or stored in another type, must load to. */
static void expect_valid_weights(const mdl_model *m) {
    assert_int_equal(m->cfg.n_layers, 2);
    for (uint64_t k = 0; k < 64ull * D; k++)
        if (m->w.tok_embd[k] != weight(0, k))
            fail_msg("token_embd[%llu] = %g, want %g", (unsigned long long)k,
                     (double)m->w.tok_embd[k], (double)weight(0, k));
    for (uint64_t k = 0; k < (uint64_t)FF * D; k++) /* the last tensor: blk.1.ffn_down */
        if (m->w.layers[1].w_down[k] != weight(19, k))
            fail_msg("blk.1.ffn_down[%llu] = %g, want %g", (unsigned long long)k,
                     (double)m->w.layers[1].w_down[k], (double)weight(19, k));
    assert_true(m->w.out_norm[0] == 1.0f && m->w.layers[1].ffn_norm[D - 1] == 1.0f);
}

/* 8. general.alignment decides where the data starts. The GGUF spec asks
 * for a multiple of 8, llama.cpp (and gguf_open) take any power of two, and
 * the tensors are read bytewise, so 1 is readable; what must not load is an
 * alignment the writer did not pad for (the probe set 1 in a file padded to
 * 32: the data section then starts up to 31 bytes early, every weight is read
 * shifted, and garbage or NaN came out of generate). */
static void test_gguf_alignment(void **state) {
    (void)state;
    mdl_model m;
    static const uint32_t ok[] = {1, 8, 32, 64};
    for (size_t i = 0; i < NI_ARRAY_LEN(ok); i++) {
        gspec g = gspec_valid();
        g.align = g.data_align = ok[i];
        write_gguf(&g);
        expect_load(g_path, &m);
        expect_valid_weights(&m);
        mdl_free(&m);
    }
    gspec g = gspec_valid();
    g.align = 1; /* over data padded to 32 */
    gguf_refused(&g, NI_EFORMAT, "general.alignment 1", "after the last tensor");
    g.align = 8;
    gguf_refused(&g, NI_EFORMAT, "general.alignment 8", "after the last tensor");
}

/* 9. F16 and BF16 embeddings are legal (and load exactly: the test weights
 * are multiples of 1/64); the probe's files changed the type id alone. */
static void test_embedding_types(void **state) {
    (void)state;
    mdl_model m;
    static const uint32_t types[] = {GGUF_T_F16, GGUF_T_BF16};
    for (size_t i = 0; i < NI_ARRAY_LEN(types); i++) {
        gspec g = gspec_valid();
        g.embd_type = types[i];
        write_gguf(&g);
        expect_load(g_path, &m);
        expect_valid_weights(&m);
        mdl_free(&m);
        /* F32 data recorded as F16 / BF16: half its bytes are read, the rest
         * is a gap before the next tensor */
        g = gspec_valid();
        g.embd_claim = (int)types[i];
        gguf_refused(&g, NI_EFORMAT, "'token_embd.weight'", "gap");
        /* F16 data recorded as F32: twice its bytes, into the next tensor */
        g = gspec_valid();
        g.embd_type = types[i];
        g.embd_claim = GGUF_T_F32;
        gguf_refused(&g, NI_EFORMAT, "'token_embd.weight'", "overlap");
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_files_load),
        cmocka_unit_test(test_metadata_wrong_type),
        cmocka_unit_test(test_layers_beyond_block_count),
        cmocka_unit_test(test_vocab_rows_disagree),
        cmocka_unit_test(test_hf_architecture),
        cmocka_unit_test(test_context_length_overflow),
        cmocka_unit_test(test_norm_not_finite),
        cmocka_unit_test(test_safetensors_header),
        cmocka_unit_test(test_safetensors_offsets),
        cmocka_unit_test(test_gguf_offsets),
        cmocka_unit_test(test_gguf_alignment),
        cmocka_unit_test(test_embedding_types),
    };
    tu_filters();
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
