/*
 * test_model_writer.h - the tiny GGUF model the model-loader programs
 * (test_model_bad.c, test_model_defaults.c) build in C: a llama model (F32,
 * gpt2 tokenizer of "t<i>" tokens, shapes D/FF/NH/NKV/HD all different so a
 * transposed or misnamed tensor cannot pass by accident) described by a
 * gspec, whose fields break (or legitimately vary: alignment, the storage
 * type of token_embd) one thing each; gspec_valid() loads. extra_kv,
 * when set, appends further metadata (through g_key and the w_* writers of
 * test_gguf_writer.h). write_gguf writes it to g_path.
 *
 * Static inline like test_gguf_writer.h (which must be included first); the
 * functions fail through cmocka, so they are called from a test function.
 */
#ifndef NI_TEST_MODEL_WRITER_H
#define NI_TEST_MODEL_WRITER_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "engine/format/gguf.h"
#include "engine/format/quant.h"

enum { D = 32, FF = 64, NH = 2, NKV = 1, HD = 16 };

struct gwriter;

/* Deterministic small weights; norms are all ones. */
static inline float weight(int t, uint64_t k) {
    return (float)((int)((k * 37 + (uint64_t)t * 11) % 17) - 8) / 64.0f;
}

/* ------------------------------------------------------------ GGUF model */

enum { OFF_PACKED, OFF_ZERO, OFF_OVERLAP, OFF_MISALIGNED, OFF_GAP, OFF_FIRST_NOT_0 };

typedef struct gspec {
    int block_count;    /* llama.block_count */
    int tensor_layers;  /* layers whose tensors are written */
    int n_tokens;       /* tokenizer.ggml.tokens entries */
    int embd_rows;      /* token_embd.weight rows */
    int vocab_key;      /* > 0: llama.vocab_size */
    uint32_t arch_type; /* type of general.architecture: STRING, or UINT32 (the value 1) */
    uint32_t freq_type; /* type of llama.rope.freq_base: FLOAT32, UINT32, STRING or BOOL */
    uint32_t eps_type;  /* type of llama.attention.layer_norm_rms_epsilon: FLOAT32 or STRING */
    uint64_t ctx_len;   /* > 0: llama.context_length as UINT64 (else UINT32 2048) */
    const char *poison; /* tensor whose element 1 becomes poison_val */
    float poison_val;
    int offsets;                         /* OFF_* */
    uint32_t align;      /* > 0: a general.alignment key of this value */
    uint32_t data_align; /* the padding really written before the data and between
                          * tensors (0: 32, the default a reader assumes) */
    uint32_t trailing;   /* bytes appended after the last tensor's padding */
    uint32_t embd_type;  /* token_embd's storage: GGUF_T_F32, F16 or BF16 */
    int embd_claim;      /* >= 0: the type id its info records instead (the data
                          * stays embd_type: a type changed without its data) */
    void (*extra_kv)(struct gwriter *w); /* appends further metadata, or NULL */
} gspec;

static inline gspec gspec_valid(void) {
    return (gspec){.block_count = 2,
                   .tensor_layers = 2,
                   .n_tokens = 64,
                   .embd_rows = 64,
                   .arch_type = GGUF_VT_STRING,
                   .freq_type = GGUF_VT_FLOAT32,
                   .eps_type = GGUF_VT_FLOAT32,
                   .embd_type = GGUF_T_F32,
                   .embd_claim = -1};
}

typedef struct gwriter {
    wb kv, ti, data;
    uint64_t n_kv, n_tensors;
    const gspec *s;
} gwriter;

static inline void g_key(gwriter *w, const char *key, uint32_t type) {
    w_key(&w->kv, key, type);
    w->n_kv++;
}
static inline void g_u32(gwriter *w, const char *key, uint32_t v) {
    g_key(w, key, GGUF_VT_UINT32);
    w_u32(&w->kv, v);
}

static inline uint32_t g_data_align(const gspec *s) { return s->data_align ? s->data_align : 32; }

/* One tensor of [rows][cols] (cols 0: a vector of rows), F32 except
 * token_embd (s->embd_type), data packed at g_data_align(); s->offsets
 * decides what offset its info records. */
static inline void g_tensor(gwriter *w, const char *name, uint64_t rows, uint64_t cols) {
    const gspec *s = w->s;
    uint64_t ne[2] = {cols ? cols : rows, rows}, n = rows * (cols ? cols : 1);
    int is_norm = strstr(name, "norm") != NULL, embd = !strcmp(name, "token_embd.weight");
    uint32_t type = embd ? s->embd_type : GGUF_T_F32;
    w_pad(&w->data, g_data_align(s));
    if (s->offsets == OFF_FIRST_NOT_0 && w->n_tensors == 0) wb_put(&w->data, "\0\0\0\0", 4);
    if (s->offsets == OFF_GAP && w->n_tensors == 1) /* 32 unused bytes before output_norm */
        for (int k = 0; k < 32; k++) w_u8(&w->data, 0);
    w_pad(&w->data, g_data_align(s));
    uint64_t off = w->data.len;
    if (s->offsets == OFF_ZERO) off = 0;
    if (s->offsets == OFF_OVERLAP && w->n_tensors == 1) off = 32; /* inside token_embd */
    if (s->offsets == OFF_MISALIGNED && w->n_tensors == 1) off += 4;
    w_tinfo(&w->ti, name, cols ? 2 : 1, ne, embd && s->embd_claim >= 0 ? (uint32_t)s->embd_claim : type,
            off);
    for (uint64_t k = 0; k < n; k++) {
        float x = is_norm ? 1.0f : weight((int)w->n_tensors, k);
        if (s->poison && !strcmp(name, s->poison) && k == 1) x = s->poison_val;
        if (type == GGUF_T_F16) w_u16(&w->data, qnt_f32_to_f16(x));
        else if (type == GGUF_T_BF16) w_u16(&w->data, qnt_f32_to_bf16(x));
        else w_f32(&w->data, x);
    }
    if (s->offsets == OFF_MISALIGNED && w->n_tensors == 1) w_u32(&w->data, 0);
    w->n_tensors++;
}

static inline void write_gguf(const gspec *s) {
    gwriter w = {.s = s};
    g_key(&w, "general.architecture", s->arch_type);
    if (s->arch_type == GGUF_VT_STRING) w_str(&w.kv, "llama");
    else w_u32(&w.kv, 1);
    g_u32(&w, "llama.block_count", (uint32_t)s->block_count);
    g_u32(&w, "llama.embedding_length", D);
    g_u32(&w, "llama.feed_forward_length", FF);
    g_u32(&w, "llama.attention.head_count", NH);
    g_u32(&w, "llama.attention.head_count_kv", NKV);
    if (s->ctx_len) {
        g_key(&w, "llama.context_length", GGUF_VT_UINT64);
        w_u64(&w.kv, s->ctx_len);
    } else {
        g_u32(&w, "llama.context_length", 2048);
    }
    g_key(&w, "llama.rope.freq_base", s->freq_type);
    if (s->freq_type == GGUF_VT_STRING)
        w_str(&w.kv, "500000");
    else if (s->freq_type == GGUF_VT_UINT32)
        w_u32(&w.kv, 500000);
    else if (s->freq_type == GGUF_VT_BOOL)
        w_u8(&w.kv, 1);
    else
        w_f32(&w.kv, 500000.0f);
    g_key(&w, "llama.attention.layer_norm_rms_epsilon", s->eps_type);
    if (s->eps_type == GGUF_VT_STRING)
        w_str(&w.kv, "1e-5");
    else
        w_f32(&w.kv, 1e-5f);
    if (s->vocab_key) g_u32(&w, "llama.vocab_size", (uint32_t)s->vocab_key);
    if (s->align) g_u32(&w, "general.alignment", s->align);
    g_key(&w, "tokenizer.ggml.model", GGUF_VT_STRING);
    w_str(&w.kv, "gpt2");
    g_key(&w, "tokenizer.ggml.tokens", GGUF_VT_ARRAY);
    w_u32(&w.kv, GGUF_VT_STRING);
    w_u64(&w.kv, (uint64_t)s->n_tokens);
    for (int i = 0; i < s->n_tokens; i++) {
        char t[16];
        snprintf(t, sizeof t, "t%d", i);
        w_str(&w.kv, t);
    }
    g_key(&w, "tokenizer.ggml.merges", GGUF_VT_ARRAY);
    w_u32(&w.kv, GGUF_VT_STRING);
    w_u64(&w.kv, 0);
    if (s->extra_kv) s->extra_kv(&w);

    g_tensor(&w, "token_embd.weight", (uint64_t)s->embd_rows, D);
    g_tensor(&w, "output_norm.weight", D, 0);
    for (int l = 0; l < s->tensor_layers; l++) {
        char n[64];
#define T(suffix, r, c)                                                                            \
    (snprintf(n, sizeof n, "blk.%d." suffix ".weight", l), g_tensor(&w, n, r, c))
        T("attn_norm", D, 0);
        T("attn_q", NH * HD, D);
        T("attn_k", NKV * HD, D);
        T("attn_v", NKV * HD, D);
        T("attn_output", D, NH * HD);
        T("ffn_norm", D, 0);
        T("ffn_gate", FF, D);
        T("ffn_up", FF, D);
        T("ffn_down", D, FF);
#undef T
    }

    wb f = {0};
    w_header(&f, 3, w.n_tensors, w.n_kv);
    wb_put(&f, w.kv.p, w.kv.len);
    wb_put(&f, w.ti.p, w.ti.len);
    w_pad(&f, g_data_align(s));
    wb_put(&f, w.data.p, w.data.len);
    w_pad(&f, g_data_align(s));
    for (uint32_t k = 0; k < s->trailing; k++) w_u8(&f, 0xee);
    write_file(g_path, f.p, f.len);
    wb_free(&f);
    wb_free(&w.kv);
    wb_free(&w.ti);
    wb_free(&w.data);
}

#endif
