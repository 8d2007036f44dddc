/*
 * cpu_backend.c - eng_backend_cpu: the FP32 reference forward pass for
 * LLaMA-family models (llama 2/3, SmolLM2, qwen3) over a paged KV cache.
 *
 * Design: the backend reads the model's FP32 weights in place (no copy; the
 * model must outlive it). init makes every allocation the backend will ever
 * need: one KV pool, one arena of work buffers sized for max_batch_tokens /
 * max_seqs, per-thread attention scratch, and the RoPE cos/sin tables;
 * forward allocates nothing. A forward call processes all tokens of all
 * sequences of the batch together, so every projection is one sgemm over the
 * whole batch (decode of many sequences batches into sgemm too):
 *
 *   x = embed(tokens)
 *   per layer: xb = rmsnorm(x); q,k,v = xb Wq^T, xb Wk^T, xb Wv^T
 *              (qwen3: per-head rmsnorm of q, k); rope(q, k) at each position;
 *              store k, v in the pool; att = causal GQA attention;
 *              x += att Wo^T  (residual fused as sgemm beta = 1)
 *              xb = rmsnorm(x); g = silu(xb Wg^T) * (xb Wu^T); x += g Wd^T
 *   logits: gather the last row of every sequence that wants logits,
 *           rmsnorm, one sgemm against the LM head.
 *
 * KV pool layout: [n_layers][2 (K, V)][n_blocks][block_size][kv_dim], one
 * calloc (pages are touched lazily). Bytes per block over all layers:
 * 2 * n_layers * block_size * n_kv_heads * head_dim * 4.
 *
 * Invariants: positions are < max_pos = min(cfg.max_seq_len (if > 0),
 * n_blocks * block_size); forward validates every batch field that could make
 * it index out of bounds and returns NI_EINVAL instead.
 *
 * Threads: one OpenMP team of n_threads (0 = all cores) does everything:
 * every matmul is cut into n_threads column slices, each a single-threaded
 * OpenBLAS call (openblas_set_num_threads(1), process wide, at init and at
 * each forward); attention runs over (query tile, kv head) units;
 * omp_set_num_threads() is applied to the calling thread at each forward for
 * the elementwise ops. Keeping OpenBLAS's own pthread pool idle avoids two
 * spinning thread pools fighting over the cores (measured on 2 cores: decode
 * 4-8x, prefill ~2x faster than OpenBLAS-threaded sgemm).
 *
 * Speed depends a lot on the kernels OpenBLAS picks at load time: see
 * cpu_blas_core() in cpu_ops.h (OPENBLAS_CORETYPE).
 *
 * Quantized weights (config quant = 1: int8; quant = 2: 4-bit Q4_1-style
 * layers with an int8 LM head; cpu_q8.h): init also quantizes every
 * projection into backend-owned copies (the model's FP32 weights stay
 * untouched): per layer Wq|Wk|Wv stacked into one matrix, Wo, Wgate|Wup
 * stacked, Wdown, and the LM head (tok_embd when tied). Each projection's
 * input is quantized once per call (blocks of 32, into one activation buffer
 * sized at init) and one OpenMP region computes every output row of the
 * stacked matrix, writing each row range straight into q/k/v (gate/up). The
 * int8 products are bit-for-bit independent of the batch composition, the
 * thread count and the SIMD path, for decode and prefill alike; embedding,
 * norms, RoPE, attention and the KV cache stay FP32.
 */
#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "engine/backend/twins.h"
#include "cpu_ops.h"
#include "cpu_q8.h"
#include "engine/util/util.h"

/* Vocabulary columns per LM-head sgemm when logits rows must be scattered. */
#define LM_CHUNK 4096

/* Quantized copies of one layer's projections (quant = 1: int8, 2: 4-bit). */
typedef struct cpu_q8_layer {
    cpu_q8_mat qkv;     /* [q_dim + 2 * kv_dim][dim]: Wq, Wk, Wv stacked */
    cpu_q8_mat o;       /* [dim][q_dim] */
    cpu_q8_mat gate_up; /* [2 * hidden_dim][dim]: Wgate, Wup stacked */
    cpu_q8_mat down;    /* [dim][hidden_dim] */
} cpu_q8_layer;

typedef struct cpu_ctx {
    const mdl_model *m;
    mdl_config c;
    int n_blocks, block_size, max_batch_tokens, max_seqs, n_threads;
    int mm_split;           /* n_split argument of cpu_matmul (= n_threads) */
    int max_pos;            /* positions [0, max_pos) are allowed */
    int q_dim;              /* n_heads * head_dim */
    int kv_dim;             /* n_kv_heads * head_dim */
    size_t layer_kv_floats; /* n_blocks * block_size * kv_dim: K (or V) of one layer */
    size_t block_floats;    /* block_size * kv_dim */
    float *kv_pool;         /* [n_layers][2][n_blocks][block_size][kv_dim] */
    cpu_rope rope;          /* cos/sin [max_pos][head_dim/2] */

    float *arena;              /* one allocation holding every buffer below */
    float *x;                  /* [max_batch_tokens][dim] residual stream */
    float *xb;                 /* [max_batch_tokens][dim] normed input of a sublayer */
    float *q;                  /* [max_batch_tokens][q_dim] */
    float *k;                  /* [max_batch_tokens][kv_dim] */
    float *v;                  /* [max_batch_tokens][kv_dim] */
    float *att;                /* [max_batch_tokens][q_dim] attention output */
    float *gate;               /* [max_batch_tokens][hidden_dim] gate, then swiglu */
    float *up;                 /* [max_batch_tokens][hidden_dim] */
    float *xl;                 /* [max_seqs][dim] last rows of sequences wanting logits */
    float *lbuf;               /* [max_seqs][lm_chunk] logits staging for scattered rows */
    int lm_chunk;              /* min(vocab_size, LM_CHUNK) */
    float *scratch;            /* [n_threads][scratch_per_thread] attention scores */
    size_t scratch_per_thread; /* cpu_attention_scratch(..., max_pos) */
    int32_t *tok_pos;          /* [max_batch_tokens] position of each batch token */
    int32_t *tok_seq;          /* [max_batch_tokens] sequence of each batch token */
    int32_t *lm_seq;           /* [max_seqs] sequences wanting logits, ascending */

    int quant;        /* 0: FP32 weights; 1: int8 copies below; 2: 4-bit layers */
    cpu_q8_layer *ql; /* [n_layers] (quant != 0) */
    cpu_q8_mat qlm;   /* [vocab_size][dim] int8 LM head (quant != 0) */
    cpu_q8_act qa;    /* [max(max_batch_tokens, max_seqs)][max(dim, q_dim, hidden_dim)]
                       * the quantized input of the current projection */
} cpu_ctx;

/* a * b into *out unless it overflows size_t. */
static int mul_ok(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static void cpu_free(void *vctx) {
    cpu_ctx *x = vctx;
    if (!x) return;
    free(x->kv_pool);
    free(x->arena);
    free(x->tok_pos);
    free(x->tok_seq);
    free(x->lm_seq);
    cpu_rope_free(&x->rope);
    if (x->ql)
        for (int l = 0; l < x->c.n_layers; l++) {
            cpu_q8_mat_free(&x->ql[l].qkv);
            cpu_q8_mat_free(&x->ql[l].o);
            cpu_q8_mat_free(&x->ql[l].gate_up);
            cpu_q8_mat_free(&x->ql[l].down);
        }
    free(x->ql);
    cpu_q8_mat_free(&x->qlm);
    cpu_q8_act_free(&x->qa);
    free(x);
}

static int check_model(const mdl_model *m, char *err, size_t errlen) {
    const mdl_config *c = &m->cfg;
    if (c->n_layers <= 0 || c->dim <= 0 || c->hidden_dim <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->vocab_size <= 0 || c->head_dim <= 0)
        return ni_fail(err, errlen, NI_EINVAL, "cpu backend: non-positive model size");
    if (c->n_heads % c->n_kv_heads != 0)
        return ni_fail(err, errlen, NI_EINVAL,
                       "cpu backend: n_heads %d not a multiple of n_kv_heads %d", c->n_heads,
                       c->n_kv_heads);
    if (c->head_dim % 2 != 0)
        return ni_fail(err, errlen, NI_EINVAL, "cpu backend: odd head_dim %d", c->head_dim);
    if (!(c->rope_theta > 0.0f))
        return ni_fail(err, errlen, NI_EINVAL, "cpu backend: rope_theta must be positive");
    if (c->rope_scaling == MDL_ROPE_LLAMA3 &&
        !(c->rope_factor > 0.0f && c->rope_low_freq_factor > 0.0f &&
          c->rope_high_freq_factor > 0.0f && c->rope_orig_max_pos > 0))
        return ni_fail(err, errlen, NI_EINVAL, "cpu backend: bad llama3 rope scaling parameters");
    const mdl_weights *w = &m->w;
    if (!w->tok_embd || !w->out_norm || !w->lm_head || !w->layers)
        return ni_fail(err, errlen, NI_EINVAL, "cpu backend: model weights missing");
    for (int l = 0; l < c->n_layers; l++) {
        const mdl_layer *L = &w->layers[l];
        if (!L->attn_norm || !L->wq || !L->wk || !L->wv || !L->wo || !L->ffn_norm || !L->w_gate ||
            !L->w_up || !L->w_down || (c->has_qk_norm && (!L->q_norm || !L->k_norm)))
            return ni_fail(err, errlen, NI_EINVAL, "cpu backend: layer %d weights missing", l);
    }
    return 0;
}

/* quant = 1 or 2: the quantized copies of every projection (int8, or 4-bit
 * for the layers when quant = 2; the LM head is int8 in both) and the
 * activation buffer. Returns 0 or NI_ENOMEM with a message. */
static int init_q8(cpu_ctx *x, int quant, char *err, size_t errlen) {
    const mdl_config *c = &x->c;
    const mdl_weights *w = &x->m->w;
    const int dim = c->dim, hid = c->hidden_dim, qd = x->q_dim, kvd = x->kv_dim;
    const int bits = quant == 2 ? 4 : 8;
    x->quant = quant;
    omp_set_num_threads(x->n_threads); /* quantization runs on the team */
    x->ql = calloc((size_t)c->n_layers, sizeof(*x->ql));
    if (!x->ql) return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: out of memory");
    for (int l = 0; l < c->n_layers; l++) {
        const mdl_layer *L = &w->layers[l];
        cpu_q8_layer *Q = &x->ql[l];
        if (cpu_q8_mat_init(&Q->qkv, qd + 2 * kvd, dim, bits) ||
            cpu_q8_mat_init(&Q->o, dim, qd, bits) ||
            cpu_q8_mat_init(&Q->gate_up, 2 * hid, dim, bits) ||
            cpu_q8_mat_init(&Q->down, dim, hid, bits))
            return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: out of memory for int8 weights");
        cpu_q8_mat_set_rows(&Q->qkv, 0, L->wq, qd);
        cpu_q8_mat_set_rows(&Q->qkv, qd, L->wk, kvd);
        cpu_q8_mat_set_rows(&Q->qkv, qd + kvd, L->wv, kvd);
        cpu_q8_mat_set_rows(&Q->o, 0, L->wo, dim);
        cpu_q8_mat_set_rows(&Q->gate_up, 0, L->w_gate, hid);
        cpu_q8_mat_set_rows(&Q->gate_up, hid, L->w_up, hid);
        cpu_q8_mat_set_rows(&Q->down, 0, L->w_down, dim);
    }
    if (cpu_q8_mat_init(&x->qlm, c->vocab_size, dim, 8))
        return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: out of memory for the int8 LM head");
    cpu_q8_mat_set_rows(&x->qlm, 0, w->lm_head, c->vocab_size);
    const int rows = NI_MAX(x->max_batch_tokens, x->max_seqs);
    if (cpu_q8_act_init(&x->qa, rows, NI_MAX(dim, NI_MAX(qd, hid))))
        return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: out of memory for int8 activations");
    cpu_q8_select();
    return 0;
}

static int cpu_init(void **out, const mdl_model *m, const eng_backend_config *cf, char *err,
                    size_t errlen) {
    if (!out || !m || !cf) return ni_fail(err, errlen, NI_EINVAL, "cpu backend: NULL argument");
    *out = NULL;
    int rc = check_model(m, err, errlen);
    if (rc) return rc;
    if (cf->n_blocks <= 0 || cf->block_size <= 0 || cf->max_batch_tokens <= 0 ||
        cf->max_seqs <= 0 || cf->n_threads < 0 || cf->quant < 0 || cf->quant > 2)
        return ni_fail(err, errlen, NI_EINVAL,
                       "cpu backend: bad config (n_blocks %d, block_size %d, max_batch_tokens %d, "
                       "max_seqs %d, n_threads %d, quant %d)",
                       cf->n_blocks, cf->block_size, cf->max_batch_tokens, cf->max_seqs,
                       cf->n_threads, cf->quant);

    cpu_ctx *x = calloc(1, sizeof(*x));
    if (!x) return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: out of memory");
    const mdl_config *c = &m->cfg;
    x->m = m;
    x->c = *c;
    x->n_blocks = cf->n_blocks;
    x->block_size = cf->block_size;
    x->max_batch_tokens = cf->max_batch_tokens;
    x->max_seqs = cf->max_seqs;
    x->n_threads = cf->n_threads ? cf->n_threads : omp_get_num_procs();
    x->q_dim = c->n_heads * c->head_dim;
    x->kv_dim = c->n_kv_heads * c->head_dim;
    int64_t max_pos = (int64_t)cf->n_blocks * cf->block_size;
    if (c->max_seq_len > 0 && c->max_seq_len < max_pos) max_pos = c->max_seq_len;
    if (max_pos > INT32_MAX) max_pos = INT32_MAX;
    x->max_pos = (int)max_pos;

    /* KV pool: one allocation. */
    size_t pool = 0;
    x->block_floats = (size_t)cf->block_size * (size_t)x->kv_dim;
    if (!mul_ok(x->block_floats, (size_t)cf->n_blocks, &x->layer_kv_floats) ||
        !mul_ok(x->layer_kv_floats, 2 * (size_t)c->n_layers, &pool) ||
        !mul_ok(pool, sizeof(float), &pool)) {
        cpu_free(x);
        return ni_fail(err, errlen, NI_ERANGE, "cpu backend: KV pool size overflows");
    }
    x->kv_pool = calloc(1, pool);
    if (!x->kv_pool) {
        cpu_free(x);
        return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: cannot allocate KV pool (%zu MiB)",
                       pool >> 20);
    }

    rc = cpu_rope_init(&x->rope, c, x->max_pos);
    if (rc) {
        cpu_free(x);
        return ni_fail(err, errlen, rc, "cpu backend: cannot build RoPE tables");
    }

    /* Work buffers: one arena, every piece 64-byte aligned. */
    const size_t T = (size_t)cf->max_batch_tokens, S = (size_t)cf->max_seqs;
    x->lm_chunk = NI_MIN(c->vocab_size, LM_CHUNK);
    x->scratch_per_thread =
        cpu_attention_scratch(c->n_heads, c->n_kv_heads, c->head_dim, x->max_pos);
    const size_t sizes[] = {
        T * c->dim,
        T * c->dim,
        T * x->q_dim,
        T * x->kv_dim,
        T * x->kv_dim,
        T * x->q_dim,
        T * c->hidden_dim,
        T * c->hidden_dim,
        S * c->dim,
        S * x->lm_chunk,
        (size_t)x->n_threads * x->scratch_per_thread,
    };
    float **dst[] = {&x->x,    &x->xb, &x->q,  &x->k,    &x->v,      &x->att,
                     &x->gate, &x->up, &x->xl, &x->lbuf, &x->scratch};
    size_t total = 0;
    for (size_t i = 0; i < NI_ARRAY_LEN(sizes); i++) total += (sizes[i] + 15) & ~(size_t)15;
    x->arena = aligned_alloc(64, total * sizeof(float));
    x->tok_pos = malloc(T * sizeof(int32_t));
    x->tok_seq = malloc(T * sizeof(int32_t));
    x->lm_seq = malloc(S * sizeof(int32_t));
    if (!x->arena || !x->tok_pos || !x->tok_seq || !x->lm_seq) {
        cpu_free(x);
        return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: cannot allocate work buffers");
    }
    memset(x->arena, 0, total * sizeof(float));
    size_t off = 0;
    for (size_t i = 0; i < NI_ARRAY_LEN(sizes); i++) {
        *dst[i] = x->arena + off;
        off += (sizes[i] + 15) & ~(size_t)15;
    }

    /* Matmuls are split over our OpenMP team, each slice a single-threaded
     * BLAS call: measured 2-8x faster than OpenBLAS's own (pthread) threads,
     * whose spinning workers fight the OpenMP team for the cores. */
    x->mm_split = x->n_threads;
    openblas_set_num_threads(1);
    if (cf->quant != 0 && (rc = init_q8(x, cf->quant, err, errlen))) {
        cpu_free(x);
        return rc;
    }
    *out = x;
    return 0;
}

/* The shared rules of engine/backend/twins.h, plus: logits must be given
 * when any sequence wants them (this backend writes them to the host). */
static int check_batch(const cpu_ctx *x, const eng_batch *b, const float *logits) {
    const eng_batch_limits lim = {x->max_seqs, x->max_batch_tokens, x->c.vocab_size,
                                  x->max_pos,  x->block_size,       x->n_blocks};
    int rc = eng_batch_check(b, &lim);
    if (rc) return rc;
    for (int s = 0; s < b->n_seqs; s++)
        if (b->want_logits && b->want_logits[s] && !logits) return NI_EINVAL;
    return 0;
}

/* One output segment of a stacked int8 projection: `rows` consecutive rows of
 * the matrix land in y[t][0 .. rows) (row stride ld floats). */
typedef struct q8_seg {
    float *y;
    int ld;
    int rows;
} q8_seg;

/* seg outputs (+)= x->qa W^T for rows [rb, rb + sum of seg rows) of w, the
 * segments taking those rows in order. One OpenMP region: the rows are cut
 * into n_threads slices of whole 16-row chunks, each thread computing every
 * token of its slice. */
static void q8_project(const cpu_ctx *x, const cpu_q8_mat *w, int rb, const q8_seg *seg, int n_seg,
                       int accumulate) {
    int rows = 0;
    for (int s = 0; s < n_seg; s++) rows += seg[s].rows;
    const int chunks = (rows + 15) / 16;
    const int nth = NI_MIN(x->n_threads, chunks);
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int r0 = NI_MIN(rows, (int)((long)chunks * t / nt) * 16);
        const int r1 = NI_MIN(rows, (int)((long)chunks * (t + 1) / nt) * 16);
        for (int s = 0, s0 = 0; s < n_seg; s0 += seg[s].rows, s++) {
            const int a0 = NI_MAX(r0, s0), a1 = NI_MIN(r1, s0 + seg[s].rows);
            if (a1 > a0)
                cpu_q8_gemm_range(seg[s].y + (a0 - s0), seg[s].ld, &x->qa, 0, x->qa.n, w, rb + a0,
                                  rb + a1, accumulate);
        }
    }
}

/* Logits of the n_want rows of x->xl (already normed) into their sequences'
 * rows of logits, through the int8 LM head. */
static void q8_logits(cpu_ctx *x, float *logits, int n_want) {
    const int V = x->c.vocab_size;
    cpu_q8_quantize_act(&x->qa, x->xl, x->c.dim, n_want, x->c.dim);
    if (x->lm_seq[n_want - 1] - x->lm_seq[0] == n_want - 1) {
        const q8_seg seg = {logits + (size_t)x->lm_seq[0] * V, V, V};
        q8_project(x, &x->qlm, 0, &seg, 1, 0);
        return;
    }
    for (int v0 = 0; v0 < V; v0 += x->lm_chunk) {
        const int vc = NI_MIN(x->lm_chunk, V - v0);
        const q8_seg seg = {x->lbuf, vc, vc};
        q8_project(x, &x->qlm, v0, &seg, 1, 0);
        for (int r = 0; r < n_want; r++)
            memcpy(logits + (size_t)x->lm_seq[r] * V + v0, x->lbuf + (size_t)r * vc,
                   (size_t)vc * sizeof(float));
    }
}

static int cpu_forward(void *vctx, const eng_batch *b, float *logits) {
    cpu_ctx *x = vctx;
    if (!x || !b) return NI_EINVAL;
    int rc = check_batch(x, b, logits);
    if (rc) return rc;
    if (b->n_tokens == 0) return 0;

    const mdl_config *c = &x->c;
    const mdl_weights *w = &x->m->w;
    const int n = b->n_tokens, dim = c->dim, hd = c->head_dim, hid = c->hidden_dim;
    const float eps = c->norm_eps;
    omp_set_num_threads(x->n_threads);
    openblas_set_num_threads(1); /* cheap; guards against a later change elsewhere */

    for (int s = 0; s < b->n_seqs; s++)
        for (int i = b->seq_start[s]; i < b->seq_start[s + 1]; i++) {
            x->tok_seq[i] = s;
            x->tok_pos[i] = b->pos0[s] + (i - b->seq_start[s]);
        }
    const cpu_tok_map map = {n, x->tok_pos, x->tok_seq, b->block_tables, b->max_blocks};

    cpu_embed(x->x, w->tok_embd, b->tokens, n, dim);
    for (int l = 0; l < c->n_layers; l++) {
        const mdl_layer *L = &w->layers[l];
        float *kbase = x->kv_pool + (size_t)l * 2 * x->layer_kv_floats;
        const cpu_kv_layer kv = {kbase, kbase + x->layer_kv_floats, x->block_size, x->kv_dim};

        const cpu_q8_layer *Q = x->quant ? &x->ql[l] : NULL;

        cpu_rmsnorm(x->xb, x->x, L->attn_norm, n, dim, eps);
        if (Q) {
            const q8_seg seg[3] = {{x->q, x->q_dim, x->q_dim},
                                   {x->k, x->kv_dim, x->kv_dim},
                                   {x->v, x->kv_dim, x->kv_dim}};
            cpu_q8_quantize_act(&x->qa, x->xb, dim, n, dim);
            q8_project(x, &Q->qkv, 0, seg, 3, 0);
        } else {
            cpu_matmul(x->q, x->xb, L->wq, n, dim, x->q_dim, 0, x->mm_split);
            cpu_matmul(x->k, x->xb, L->wk, n, dim, x->kv_dim, 0, x->mm_split);
            cpu_matmul(x->v, x->xb, L->wv, n, dim, x->kv_dim, 0, x->mm_split);
        }
        if (c->has_qk_norm) {
            cpu_head_rmsnorm(x->q, L->q_norm, n, c->n_heads, hd, eps);
            cpu_head_rmsnorm(x->k, L->k_norm, n, c->n_kv_heads, hd, eps);
        }
        cpu_rope_apply(&x->rope, x->q, x->tok_pos, n, c->n_heads);
        cpu_rope_apply(&x->rope, x->k, x->tok_pos, n, c->n_kv_heads);
        cpu_kv_store(&kv, &map, x->k, x->v);
        cpu_attention(x->att, x->q, &kv, &map, c->n_heads, c->n_kv_heads, hd, x->scratch,
                      x->scratch_per_thread, x->n_threads);
        if (Q) {
            const q8_seg seg = {x->x, dim, dim};
            cpu_q8_quantize_act(&x->qa, x->att, x->q_dim, n, x->q_dim);
            q8_project(x, &Q->o, 0, &seg, 1, 1);
        } else {
            cpu_matmul(x->x, x->att, L->wo, n, x->q_dim, dim, 1, x->mm_split);
        }

        cpu_rmsnorm(x->xb, x->x, L->ffn_norm, n, dim, eps);
        if (Q) {
            const q8_seg seg[2] = {{x->gate, hid, hid}, {x->up, hid, hid}};
            cpu_q8_quantize_act(&x->qa, x->xb, dim, n, dim);
            q8_project(x, &Q->gate_up, 0, seg, 2, 0);
        } else {
            cpu_matmul(x->gate, x->xb, L->w_gate, n, dim, hid, 0, x->mm_split);
            cpu_matmul(x->up, x->xb, L->w_up, n, dim, hid, 0, x->mm_split);
        }
        cpu_swiglu(x->gate, x->gate, x->up, (size_t)n * hid);
        if (Q) {
            const q8_seg seg = {x->x, dim, dim};
            cpu_q8_quantize_act(&x->qa, x->gate, hid, n, hid);
            q8_project(x, &Q->down, 0, &seg, 1, 1);
        } else {
            cpu_matmul(x->x, x->gate, L->w_down, n, hid, dim, 1, x->mm_split);
        }
    }

    /* Logits: last row of each sequence that wants them. */
    int n_want = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        if (!b->want_logits || !b->want_logits[s]) continue;
        memcpy(x->xl + (size_t)n_want * dim, x->x + (size_t)(b->seq_start[s + 1] - 1) * dim,
               (size_t)dim * sizeof(float));
        x->lm_seq[n_want++] = s;
    }
    if (n_want == 0) return 0;
    cpu_rmsnorm(x->xl, x->xl, w->out_norm, n_want, dim, eps);
    if (x->quant) {
        q8_logits(x, logits, n_want);
        return 0;
    }
    const int V = c->vocab_size;
    if (x->lm_seq[n_want - 1] - x->lm_seq[0] == n_want - 1) {
        /* one contiguous run of rows: write straight into logits */
        cpu_matmul_ld(logits + (size_t)x->lm_seq[0] * V, V, x->xl, w->lm_head, n_want, dim, V, 0,
                      x->mm_split);
    } else {
        for (int v0 = 0; v0 < V; v0 += x->lm_chunk) {
            const int vc = NI_MIN(x->lm_chunk, V - v0);
            cpu_matmul_ld(x->lbuf, vc, x->xl, w->lm_head + (size_t)v0 * dim, n_want, dim, vc, 0,
                          x->mm_split);
            for (int r = 0; r < n_want; r++)
                memcpy(logits + (size_t)x->lm_seq[r] * V + v0, x->lbuf + (size_t)r * vc,
                       (size_t)vc * sizeof(float));
        }
    }
    return 0;
}

static int cpu_copy_block(void *vctx, int src, int dst) {
    cpu_ctx *x = vctx;
    if (!x || src < 0 || src >= x->n_blocks || dst < 0 || dst >= x->n_blocks) return NI_EINVAL;
    if (src == dst) return 0;
    for (size_t l = 0; l < 2 * (size_t)x->c.n_layers; l++) {
        float *base = x->kv_pool + l * x->layer_kv_floats;
        memcpy(base + (size_t)dst * x->block_floats, base + (size_t)src * x->block_floats,
               x->block_floats * sizeof(float));
    }
    return 0;
}

const eng_backend eng_backend_cpu = {
    .name = "cpu",
    .init = cpu_init,
    .forward = cpu_forward,
    .copy_block = cpu_copy_block,
    .free = cpu_free,
};
