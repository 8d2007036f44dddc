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
 */
#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "backend.h"
#include "cpu_ops.h"
#include "util.h"

/* Vocabulary columns per LM-head sgemm when logits rows must be scattered. */
#define LM_CHUNK 4096

typedef struct cpu_ctx {
    const mdl_model *m;
    mdl_config c;
    int n_blocks, block_size, max_batch_tokens, max_seqs, n_threads;
    int mm_split;               /* n_split argument of cpu_matmul (= n_threads) */
    int max_pos;                /* positions [0, max_pos) are allowed */
    int q_dim;                  /* n_heads * head_dim */
    int kv_dim;                 /* n_kv_heads * head_dim */
    size_t layer_kv_floats;     /* n_blocks * block_size * kv_dim: K (or V) of one layer */
    size_t block_floats;        /* block_size * kv_dim */
    float *kv_pool;             /* [n_layers][2][n_blocks][block_size][kv_dim] */
    cpu_rope rope;              /* cos/sin [max_pos][head_dim/2] */

    float *arena;               /* one allocation holding every buffer below */
    float *x;                   /* [max_batch_tokens][dim] residual stream */
    float *xb;                  /* [max_batch_tokens][dim] normed input of a sublayer */
    float *q;                   /* [max_batch_tokens][q_dim] */
    float *k;                   /* [max_batch_tokens][kv_dim] */
    float *v;                   /* [max_batch_tokens][kv_dim] */
    float *att;                 /* [max_batch_tokens][q_dim] attention output */
    float *gate;                /* [max_batch_tokens][hidden_dim] gate, then swiglu */
    float *up;                  /* [max_batch_tokens][hidden_dim] */
    float *xl;                  /* [max_seqs][dim] last rows of sequences wanting logits */
    float *lbuf;                /* [max_seqs][lm_chunk] logits staging for scattered rows */
    int lm_chunk;               /* min(vocab_size, LM_CHUNK) */
    float *scratch;             /* [n_threads][scratch_per_thread] attention scores */
    size_t scratch_per_thread;  /* cpu_attention_scratch(..., max_pos) */
    int32_t *tok_pos;           /* [max_batch_tokens] position of each batch token */
    int32_t *tok_seq;           /* [max_batch_tokens] sequence of each batch token */
    int32_t *lm_seq;            /* [max_seqs] sequences wanting logits, ascending */
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
    free(x);
}

static int check_model(const mdl_model *m, char *err, size_t errlen) {
    const mdl_config *c = &m->cfg;
    if (c->n_layers <= 0 || c->dim <= 0 || c->hidden_dim <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->vocab_size <= 0 || c->head_dim <= 0)
        return ni_fail(err, errlen, NI_EINVAL, "cpu backend: non-positive model size");
    if (c->n_heads % c->n_kv_heads != 0)
        return ni_fail(err, errlen, NI_EINVAL, "cpu backend: n_heads %d not a multiple of n_kv_heads %d",
                       c->n_heads, c->n_kv_heads);
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
        if (!L->attn_norm || !L->wq || !L->wk || !L->wv || !L->wo || !L->ffn_norm ||
            !L->w_gate || !L->w_up || !L->w_down || (c->has_qk_norm && (!L->q_norm || !L->k_norm)))
            return ni_fail(err, errlen, NI_EINVAL, "cpu backend: layer %d weights missing", l);
    }
    return 0;
}

static int cpu_init(void **out, const mdl_model *m, const eng_backend_config *cf, char *err,
                    size_t errlen) {
    if (!out || !m || !cf) return ni_fail(err, errlen, NI_EINVAL, "cpu backend: NULL argument");
    *out = NULL;
    int rc = check_model(m, err, errlen);
    if (rc) return rc;
    if (cf->n_blocks <= 0 || cf->block_size <= 0 || cf->max_batch_tokens <= 0 ||
        cf->max_seqs <= 0 || cf->n_threads < 0)
        return ni_fail(err, errlen, NI_EINVAL,
                       "cpu backend: bad config (n_blocks %d, block_size %d, max_batch_tokens %d, "
                       "max_seqs %d, n_threads %d)",
                       cf->n_blocks, cf->block_size, cf->max_batch_tokens, cf->max_seqs,
                       cf->n_threads);

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
    x->scratch_per_thread = cpu_attention_scratch(c->n_heads, c->n_kv_heads, c->head_dim, x->max_pos);
    const size_t sizes[] = {
        T * c->dim, T * c->dim, T * x->q_dim, T * x->kv_dim, T * x->kv_dim, T * x->q_dim,
        T * c->hidden_dim, T * c->hidden_dim, S * c->dim, S * x->lm_chunk,
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
    *out = x;
    return 0;
}

/* Returns 0 if every field of b is consistent and in range for x. */
static int check_batch(const cpu_ctx *x, const eng_batch *b, const float *logits) {
    if (b->n_seqs < 0 || b->n_seqs > x->max_seqs) return NI_EINVAL;
    if (b->n_tokens < 0 || b->n_tokens > x->max_batch_tokens) return NI_EINVAL;
    if (b->n_seqs == 0) return b->n_tokens == 0 ? 0 : NI_EINVAL;
    if (!b->tokens || !b->seq_start || !b->pos0 || !b->block_tables || b->max_blocks <= 0)
        return NI_EINVAL;
    if (b->seq_start[0] != 0 || b->seq_start[b->n_seqs] != b->n_tokens) return NI_EINVAL;
    for (int i = 0; i < b->n_tokens; i++)
        if (b->tokens[i] < 0 || b->tokens[i] >= x->c.vocab_size) return NI_EINVAL;
    int want_any = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const int32_t n = b->seq_start[s + 1] - b->seq_start[s];
        if (n <= 0) return NI_EINVAL; /* every sequence brings at least one token */
        const int64_t p0 = b->pos0[s], end = p0 + n; /* positions [p0, end) */
        if (p0 < 0 || end > x->max_pos) return NI_EINVAL;
        const int64_t last_blk = (end - 1) / x->block_size;
        if (last_blk >= b->max_blocks) return NI_EINVAL;
        const int32_t *t = b->block_tables + (size_t)s * b->max_blocks;
        for (int64_t j = 0; j <= last_blk; j++)
            if (t[j] < 0 || t[j] >= x->n_blocks) return NI_EINVAL;
        if (b->want_logits && b->want_logits[s]) want_any = 1;
    }
    if (want_any && !logits) return NI_EINVAL;
    return 0;
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

        cpu_rmsnorm(x->xb, x->x, L->attn_norm, n, dim, eps);
        cpu_matmul(x->q, x->xb, L->wq, n, dim, x->q_dim, 0, x->mm_split);
        cpu_matmul(x->k, x->xb, L->wk, n, dim, x->kv_dim, 0, x->mm_split);
        cpu_matmul(x->v, x->xb, L->wv, n, dim, x->kv_dim, 0, x->mm_split);
        if (c->has_qk_norm) {
            cpu_head_rmsnorm(x->q, L->q_norm, n, c->n_heads, hd, eps);
            cpu_head_rmsnorm(x->k, L->k_norm, n, c->n_kv_heads, hd, eps);
        }
        cpu_rope_apply(&x->rope, x->q, x->tok_pos, n, c->n_heads);
        cpu_rope_apply(&x->rope, x->k, x->tok_pos, n, c->n_kv_heads);
        cpu_kv_store(&kv, &map, x->k, x->v);
        cpu_attention(x->att, x->q, &kv, &map, c->n_heads, c->n_kv_heads, hd, x->scratch,
                      x->scratch_per_thread, x->n_threads);
        cpu_matmul(x->x, x->att, L->wo, n, x->q_dim, dim, 1, x->mm_split);

        cpu_rmsnorm(x->xb, x->x, L->ffn_norm, n, dim, eps);
        cpu_matmul(x->gate, x->xb, L->w_gate, n, dim, hid, 0, x->mm_split);
        cpu_matmul(x->up, x->xb, L->w_up, n, dim, hid, 0, x->mm_split);
        cpu_swiglu(x->gate, x->gate, x->up, (size_t)n * hid);
        cpu_matmul(x->x, x->gate, L->w_down, n, hid, dim, 1, x->mm_split);
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
