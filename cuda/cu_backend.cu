/*
 * cu_backend.cu - eng_backend_cuda: the forward pass of engine/backend/backend.h on
 * one GPU (LLaMA 2/3, SmolLM2, qwen3), BF16 or FP32 (see cu.h), optionally
 * with int8 projection weights, plus a fused device sampler.
 *
 * Memory (every device allocation is made by init; forward and sample
 * allocate nothing):
 *   weights  one cudaMalloc: embedding and LM head (shared when tied) and per
 *            layer the fused projections wqkv = [wq; wk; wv] ([q+2kv][dim])
 *            and wgu = [w_gate; w_up] ([2*hidden][dim]), wo, w_down, all in T
 *            (BF16 or FP32), row-major [out][in] as in mdl_model; RMSNorm
 *            weights and RoPE cos/sin tables in FP32. Converted from the FP32
 *            mdl_model once, through a temporary staging buffer. With int8
 *            (cu_quant.cu) the projections and the LM head (then never tied)
 *            are int8 [out][in] plus FP32 per-row scales; the embedding
 *            stays in T.
 *   KV pool  one cudaMalloc, [n_layers][2 (K, V)][n_blocks][block_size][kv_dim]
 *            in T (the CPU backend's layout), zeroed at init.
 *   work     one cudaMalloc: activations sized by max_batch_tokens (T) and
 *            max_seqs (S), the split-K attention workspace, the cuBLAS
 *            workspace, the batch metadata, the sampler's buffers and, with
 *            int8, the dequantization scratch.
 *   host     pinned: batch metadata (tokens, positions, cache slots,
 *            attention items, logits rows, block tables; packed per call and
 *            sent with one copy), the logits of the rows that want them and
 *            the sampler's jobs and results.
 *
 * Forward (one stream):
 *   x = embed(tokens)                                          FP32 residual
 *   per layer: xb = rmsnorm(x)                                 T
 *              qkv = xb wqkv^T                                 FP32 (GEMM)
 *              rope_kv: qk-norm, RoPE(q, k), k/v -> cache slots
 *              att = attention(q, cache)                       T
 *              x += att wo^T                                   GEMM, beta = 1
 *              xb = rmsnorm(x); gu = xb wgu^T; act = swiglu(gu)
 *              x += act wdown^T                                GEMM, beta = 1
 *   xl = rmsnorm(x[last row of each sequence wanting logits])  gather fused
 *   logits = xl lm_head^T -> pinned host -> caller rows (or kept on the
 *   device for sample() when the caller passes logits == NULL)
 * Every accumulation (GEMMs, norms, softmax, attention) is FP32.
 *
 * Decode graphs: a pure decode batch (every sequence feeds one token) is
 * padded to a bucket size B (1, 2, 4, ..., up to min(max_seqs,
 * max_batch_tokens), the last bucket being that bound) and the whole stack
 * above, after the metadata copy, is replayed from a CUDA graph captured
 * lazily, on the first decode step of each bucket. The graph reads its
 * inputs from fixed places of the metadata buffer (tokens, positions, slots
 * and items at fixed offsets, block tables with the widest stride tbl_cap),
 * refreshed before each launch by two async copies (one 1-D, one 2-D for
 * the tables). Padding rows use token 0 at position 0 with cache slot -1 (K/V
 * not stored) and an empty attention item (n_q 0: nothing read or written);
 * their logits rows are computed and ignored. The attention split-K factor
 * of a bucket is fixed at capture from the largest context (max_pos); items
 * with fewer key tiles leave the extra splits empty (they exit at once and
 * the combine skips them), so one graph serves every context length. Modes
 * (eng_backend_config.graphs, NI_CUDA_GRAPHS through eng_backend_config_env):
 * ON (the default) graphs; EAGER the same padded launches without a graph
 * (bit-identical, for tests and debugging; what ON means under NI_DEBUG,
 * whose per-launch synchronize cannot be captured); OFF every batch takes
 * the general path. profile = 1 (NI_CUDA_PROFILE) times each phase with
 * events (eager launches instead of graphs) and prints a table at free.
 *
 * Tensor parallelism (not implemented) fits this layout: wqkv rows and wo
 * columns shard by kv-head groups, wgu rows and w_down columns by FFN
 * columns (keeping each shard's [gate; up] pair), the KV pool by kv heads;
 * an all-reduce of x's GEMM output after wo and w_down (beta = 1 becomes a
 * partial sum + all-reduce + the fused add of cu_launch_rmsnorm).
 *
 * Threads: the backend belongs to one driving thread at a time; every entry
 * point selects the device first, so init and forward may run on different
 * threads. Errors: every CUDA/cuBLAS call is checked (cu_internal.h); after a
 * failed forward the context should be freed. A forward that hands nothing
 * back to the host returns without synchronizing; the next forward or
 * sample synchronizes first (its staging buffers are reused), so a fault
 * may surface there.
 */
#include <stdlib.h>
#include <string.h>

#include "cu_internal.h"

/* Split-K partial-result slots (item x split) and their byte budget. */
#define PART_SLOTS_MAX 128
#define PART_BUDGET ((size_t)64 << 20)
/* cuBLAS workspace (the size NVIDIA recommends for Hopper). */
#define BLAS_WS_BYTES ((size_t)32 << 20)
/* Weight upload staging buffer (FP32 floats). */
#define STAGE_FLOATS ((size_t)16 << 20)
/* int8: dequantization scratch of the prefill GEMMs (cu_gemm_q8). */
#define DEQ_BYTES ((size_t)64 << 20)
/* Decode buckets (1, 2, 4, ... and the cap): at most 32 + 1. */
#define MAX_BUCKETS 34
/* Sampler: scratch rows for rows that cannot be modified in place. */
#define SMP_SCRATCH 16

enum { GRAPHS_OFF = 0, GRAPHS_ON = 1, GRAPHS_EAGER = 2 };

/* profile = 1: device time per phase of the forward pass, measured
 * with events between launches (graphs are then replaced by the eager
 * padded launches: events cannot time a replay's inside); printed to stderr
 * by free, split into decode and general steps. */
enum { PH_START = -1, PH_EMBED, PH_NORM, PH_QKV, PH_ROPE, PH_ATT, PH_WO, PH_GU, PH_SWIGLU,
       PH_DOWN, PH_LM, PH_N };
static const char *const k_phase[PH_N] = {"embed",  "rmsnorm", "qkv gemm", "rope+kv", "attention",
                                          "wo gemm", "gu gemm", "swiglu",   "down gemm",
                                          "final norm + lm head"};

/* Projection weights are T [out][in], or int8 [out][in] with FP32 per-row
 * scales (the s_* pointers, NULL unless int8). */
typedef struct cu_layer_w {
    float *attn_norm;  /* [dim] */
    void *wqkv;        /* [q_dim + 2*kv_dim][dim]: wq rows, wk rows, wv rows */
    void *wo;          /* [dim][q_dim] */
    float *q_norm;     /* [head_dim] or NULL (qwen3) */
    float *k_norm;     /* [head_dim] or NULL */
    float *ffn_norm;   /* [dim] */
    void *wgu;         /* [2*hidden][dim]: w_gate rows, then w_up rows */
    void *wdown;       /* [dim][hidden] */
    float *s_qkv;      /* [q_dim + 2*kv_dim] int8 scales, or NULL */
    float *s_o;        /* [dim] */
    float *s_gu;       /* [2*hidden] */
    float *s_down;     /* [dim] */
} cu_layer_w;

typedef struct cu_ctx {
    mdl_config c;
    int dtype;                  /* enum cu_dtype */
    size_t esz;                 /* bytes of one T element */
    int dev, n_sm;
    int n_blocks, block_size, max_batch_tokens, max_seqs;
    int max_pos;                /* positions [0, max_pos) are allowed */
    int tbl_cap;                /* ceil(max_pos / block_size): widest block table row */
    int q_dim, kv_dim, qkv_dim; /* n_heads*hd, n_kv_heads*hd, q_dim + 2*kv_dim */
    int part_slots;             /* split-K slots in part */
    int force_splits;           /* eng_backend_config.att_splits (0 = automatic) */
    int quant;                  /* 1: int8 projections and LM head (cu_quant.cu) */
    int graph_mode;             /* GRAPHS_* (eng_backend_config.graphs) */
    cudaStream_t st;
    cublasHandle_t blas;

    /* weights (one allocation) */
    void *wmem;
    void *tok_embd;             /* T [vocab][dim] */
    void *lm_head;              /* T [vocab][dim] (== tok_embd when tied) or int8 [vocab][dim] */
    float *lm_scale;            /* [vocab] int8 scales, or NULL */
    float *out_norm;            /* [dim] */
    float *cos_tab, *sin_tab;   /* [max_pos][head_dim/2] */
    cu_layer_w *layers;         /* host array [n_layers] of device pointers */

    /* KV pool (one allocation) */
    void *kv;                   /* T [n_layers][2][n_blocks][block_size][kv_dim] */
    size_t plane_bytes;         /* n_blocks * block_size * kv_dim * esz: one layer's K (or V) */

    /* work buffers (one allocation) */
    void *work;
    float *x;                   /* [max_batch_tokens][dim] residual stream */
    void *xb;                   /* T [max_batch_tokens][dim] normed sublayer input */
    float *qkv;                 /* [max_batch_tokens][qkv_dim] q | k | v projections */
    void *att;                  /* T [max_batch_tokens][q_dim] attention output */
    float *gu;                  /* [max_batch_tokens][2*hidden] gate | up projections */
    void *act;                  /* T [max_batch_tokens][hidden] swiglu output */
    void *xl;                   /* T [max_seqs][dim] normed last rows wanting logits */
    float *logits_d;            /* [max_seqs][vocab] */
    float *part;                /* [part_slots][cu_att_part_floats] split-K partials */
    void *blas_ws;              /* [BLAS_WS_BYTES] cuBLAS workspace */
    int32_t *meta_d;            /* [meta_cap] packed batch metadata (see forward) */
    size_t meta_cap;            /* int32 elements: 7*T + S + S*tbl_cap */
    void *deq;                  /* int8 only: T [DEQ_BYTES] dequantized weight chunk */
    float *qtmp;                /* int8 only: [max_batch_tokens][dim] GEMM output before scaling */
    cu_smp_row *smp_rows_d;     /* [smp_cap] sampler jobs */
    cu_smp_ent *smp_ents_d;     /* [smp_ent_cap] logit_bias / penalty entries */
    cu_smp_out *smp_out_d;      /* [smp_cap] sampler results */
    float *smp_scratch;         /* [SMP_SCRATCH][vocab] rows modified out of place */

    /* pinned host */
    int32_t *meta_h;            /* [meta_cap] staging of meta_d */
    float *logits_h;            /* [max_seqs][vocab] */
    cu_smp_row *smp_rows_h;     /* [smp_cap] */
    cu_smp_ent *smp_ents_h;     /* [smp_ent_cap] */
    cu_smp_out *smp_out_h;      /* [smp_cap] */
    int smp_cap;                /* max_seqs: sampler rows per launch */
    size_t smp_ent_cap;         /* vocab + 65536 */

    /* plain host */
    int32_t *lm_seq;            /* [max_seqs] sequence of each logits row */
    int32_t *row_of_seq;        /* [max_seqs] logits_d row of each sequence of the last
                                 * forward, -1 when it wanted none */
    int *smp_consumers;         /* [max_seqs] sampler packing workspace */
    int last_n_seqs;            /* sequences of the last forward */
    int pending;                /* work enqueued since the last synchronize */

    /* decode graphs */
    int dec_cap;                /* largest bucket: min(max_seqs, max_batch_tokens) */
    int n_buckets;
    int bucket[MAX_BUCKETS];        /* ascending; the last is dec_cap */
    int bucket_splits[MAX_BUCKETS]; /* attention split-K factor of each bucket */
    cudaGraphExec_t gexec[MAX_BUCKETS]; /* NULL until captured */
    cu_backend_stats stats;

    /* eng_backend_config.profile */
    int prof;
    cudaEvent_t *ev;            /* [ev_cap] */
    int *ev_ph;                 /* [ev_cap] phase ending at each event */
    int n_ev, ev_cap;
    int prof_kind;              /* 0 decode, 1 general: the forward being timed */
    double ph_ms[2][PH_N];
    long long prof_steps[2];
} cu_ctx;

/* Bump allocator over one allocation: a sizing pass with base == NULL, then
 * the carving pass. Every piece is 256-byte aligned. */
typedef struct bump {
    char *base;
    size_t off;
} bump;

static void *take(bump *b, size_t bytes) {
    void *p = b->base ? b->base + b->off : NULL;
    b->off += (bytes + 255) & ~(size_t)255;
    return p;
}

/* a * b into *out unless it overflows size_t. */
static int mul_ok(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* The profile table (stderr). */
static void prof_print(const cu_ctx *x) {
    for (int k = 0; k < 2; k++) {
        if (!x->prof_steps[k]) continue;
        double tot = 0;
        for (int p = 0; p < PH_N; p++) tot += x->ph_ms[k][p];
        fprintf(stderr, "cuda profile, %s steps: %lld, %.3f ms/step of device time\n",
                k ? "general" : "decode", x->prof_steps[k], tot / x->prof_steps[k]);
        for (int p = 0; p < PH_N; p++)
            fprintf(stderr, "  %-22s %8.1f us/step %5.1f%%\n", k_phase[p],
                    1e3 * x->ph_ms[k][p] / x->prof_steps[k], 100.0 * x->ph_ms[k][p] / tot);
    }
}

static void cu_free(void *vctx) {
    cu_ctx *x = (cu_ctx *)vctx;
    if (!x) return;
    cudaSetDevice(x->dev);
    if (x->st) cudaStreamSynchronize(x->st);
    if (x->prof) prof_print(x);
    for (int i = 0; x->ev && i < x->ev_cap; i++)
        if (x->ev[i]) cudaEventDestroy(x->ev[i]);
    free(x->ev);
    free(x->ev_ph);
    for (int i = 0; i < MAX_BUCKETS; i++)
        if (x->gexec[i]) cudaGraphExecDestroy(x->gexec[i]);
    if (x->blas) cublasDestroy(x->blas);
    if (x->st) cudaStreamDestroy(x->st);
    cudaFree(x->wmem);
    cudaFree(x->kv);
    cudaFree(x->work);
    cudaFreeHost(x->meta_h);
    cudaFreeHost(x->logits_h);
    cudaFreeHost(x->smp_rows_h);
    cudaFreeHost(x->smp_ents_h);
    cudaFreeHost(x->smp_out_h);
    cudaGetLastError(); /* freeing is best effort; clear any error for the next user */
    free(x->lm_seq);
    free(x->row_of_seq);
    free(x->smp_consumers);
    free(x->layers);
    free(x);
}

static int check_model(const mdl_model *m, char *err, size_t errlen) {
    const mdl_config *c = &m->cfg;
    if (c->n_layers <= 0 || c->dim <= 0 || c->hidden_dim <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->vocab_size <= 0 || c->head_dim <= 0)
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: non-positive model size");
    if (c->n_heads % c->n_kv_heads != 0)
        return ni_fail(err, errlen, NI_EINVAL,
                       "cuda backend: n_heads %d not a multiple of n_kv_heads %d", c->n_heads,
                       c->n_kv_heads);
    if (c->head_dim % 2 != 0 || c->head_dim > CU_ATT_MAX_HD)
        return ni_fail(err, errlen, NI_EUNSUPPORTED,
                       "cuda backend: head_dim %d (must be even and <= %d)", c->head_dim,
                       CU_ATT_MAX_HD);
    if (c->n_heads / c->n_kv_heads > CU_ATT_ROWS)
        return ni_fail(err, errlen, NI_EUNSUPPORTED, "cuda backend: GQA group %d > %d",
                       c->n_heads / c->n_kv_heads, CU_ATT_ROWS);
    if (!(c->rope_theta > 0.0f))
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: rope_theta must be positive");
    if (c->rope_scaling == MDL_ROPE_LLAMA3 && !m->w.rope_freqs &&
        !(c->rope_factor > 0.0f && c->rope_low_freq_factor > 0.0f &&
          c->rope_high_freq_factor > 0.0f && c->rope_orig_max_pos > 0))
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: bad llama3 rope scaling parameters");
    const mdl_weights *w = &m->w;
    if (!w->tok_embd || !w->out_norm || !w->lm_head || !w->layers)
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: model weights missing");
    for (int l = 0; l < c->n_layers; l++) {
        const mdl_layer *L = &w->layers[l];
        if (!L->attn_norm || !L->wq || !L->wk || !L->wv || !L->wo || !L->ffn_norm ||
            !L->w_gate || !L->w_up || !L->w_down ||
            (c->has_qk_norm && (!L->q_norm || !L->k_norm)))
            return ni_fail(err, errlen, NI_EINVAL, "cuda backend: layer %d weights missing", l);
    }
    return 0;
}

/* Lays out (b->base == NULL: sizes) the weight arena. */
static void layout_weights(cu_ctx *x, bump *b, int tied) {
    const mdl_config *c = &x->c;
    const size_t D = c->dim, V = c->vocab_size, H = c->hidden_dim, hd = c->head_dim;
    const size_t half = hd / 2, e = x->quant ? 1 : x->esz; /* e: bytes of a projection weight */
    const int q8 = x->quant;
    x->tok_embd = take(b, V * D * x->esz);
    x->lm_head = tied && !q8 ? x->tok_embd : take(b, V * D * e);
    x->lm_scale = q8 ? (float *)take(b, V * 4) : NULL;
    x->out_norm = (float *)take(b, D * 4);
    x->cos_tab = (float *)take(b, (size_t)x->max_pos * half * 4);
    x->sin_tab = (float *)take(b, (size_t)x->max_pos * half * 4);
    for (int l = 0; l < c->n_layers; l++) {
        cu_layer_w *L = &x->layers[l];
        L->attn_norm = (float *)take(b, D * 4);
        L->wqkv = take(b, (size_t)x->qkv_dim * D * e);
        L->wo = take(b, D * x->q_dim * e);
        L->q_norm = c->has_qk_norm ? (float *)take(b, hd * 4) : NULL;
        L->k_norm = c->has_qk_norm ? (float *)take(b, hd * 4) : NULL;
        L->ffn_norm = (float *)take(b, D * 4);
        L->wgu = take(b, 2 * H * D * e);
        L->wdown = take(b, D * H * e);
        L->s_qkv = q8 ? (float *)take(b, (size_t)x->qkv_dim * 4) : NULL;
        L->s_o = q8 ? (float *)take(b, D * 4) : NULL;
        L->s_gu = q8 ? (float *)take(b, 2 * H * 4) : NULL;
        L->s_down = q8 ? (float *)take(b, D * 4) : NULL;
    }
}

/* Lays out (b->base == NULL: sizes) the work arena. */
static void layout_work(cu_ctx *x, bump *b) {
    const mdl_config *c = &x->c;
    const size_t T = x->max_batch_tokens, S = x->max_seqs, D = c->dim, H = c->hidden_dim;
    const size_t e = x->esz;
    x->x = (float *)take(b, T * D * 4);
    x->xb = take(b, T * D * e);
    x->qkv = (float *)take(b, T * x->qkv_dim * 4);
    x->att = take(b, T * x->q_dim * e);
    x->gu = (float *)take(b, T * 2 * H * 4);
    x->act = take(b, T * H * e);
    x->xl = take(b, S * D * e);
    x->logits_d = (float *)take(b, S * (size_t)c->vocab_size * 4);
    x->part = (float *)take(b, (size_t)x->part_slots * cu_att_part_floats(c->n_kv_heads,
                                                                             c->head_dim) * 4);
    x->blas_ws = take(b, BLAS_WS_BYTES);
    x->meta_d = (int32_t *)take(b, x->meta_cap * 4);
    x->deq = x->quant ? take(b, DEQ_BYTES) : NULL;
    x->qtmp = x->quant ? (float *)take(b, T * D * 4) : NULL;
    x->smp_rows_d = (cu_smp_row *)take(b, (size_t)x->smp_cap * sizeof(cu_smp_row));
    x->smp_ents_d = (cu_smp_ent *)take(b, x->smp_ent_cap * sizeof(cu_smp_ent));
    x->smp_out_d = (cu_smp_out *)take(b, (size_t)x->smp_cap * sizeof(cu_smp_out));
    x->smp_scratch = (float *)take(b, (size_t)SMP_SCRATCH * c->vocab_size * 4);
}

/* FP32 host tensor src[n] -> T device tensor dst[n], through stage. */
static int upload(cu_ctx *x, void *dst, const float *src, size_t n, float *stage) {
    if (x->dtype == CU_DTYPE_FP32) {
        CU_CHECK(cudaMemcpyAsync(dst, src, n * 4, cudaMemcpyHostToDevice, x->st));
        return 0;
    }
    for (size_t off = 0; off < n; off += STAGE_FLOATS) {
        const size_t m = n - off < STAGE_FLOATS ? n - off : STAGE_FLOATS;
        CU_CHECK(cudaMemcpyAsync(stage, src + off, m * 4, cudaMemcpyHostToDevice, x->st));
        CU_TRY(cu_launch_convert(x->st, (char *)dst + off * x->esz, x->dtype, stage, m));
        CU_CHECK(cudaStreamSynchronize(x->st)); /* stage is reused next round */
    }
    return 0;
}

/* FP32 host matrix src [rows][cols] -> int8 q [rows][cols] + FP32 scale
 * [rows] (cu_launch_quantize_rows), whole rows at a time through stage. */
static int upload_q8(cu_ctx *x, void *q, float *scale, const float *src, size_t rows,
                     size_t cols, float *stage) {
    const size_t per = STAGE_FLOATS / cols;
    if (per == 0) return NI_EINVAL;
    for (size_t r0 = 0; r0 < rows; r0 += per) {
        const size_t m = rows - r0 < per ? rows - r0 : per;
        CU_CHECK(cudaMemcpyAsync(stage, src + r0 * cols, m * cols * 4, cudaMemcpyHostToDevice,
                                 x->st));
        CU_TRY(cu_launch_quantize_rows(x->st, (int8_t *)q + r0 * cols, scale + r0, stage, (int)m,
                                       (int)cols));
        CU_CHECK(cudaStreamSynchronize(x->st)); /* stage is reused next round */
    }
    return 0;
}

/* A projection [rows][cols] starting at row r0 of a fused matrix (dst,
 * scale): T, or int8 with per-row scales. */
static int upload_proj(cu_ctx *x, void *dst, float *scale, size_t r0, const float *src,
                       size_t rows, size_t cols, float *stage) {
    if (x->quant)
        return upload_q8(x, (int8_t *)dst + r0 * cols, scale + r0, src, rows, cols, stage);
    return upload(x, (char *)dst + r0 * cols * x->esz, src, rows * cols, stage);
}

static int upload_f32(cu_ctx *x, float *dst, const float *src, size_t n) {
    CU_CHECK(cudaMemcpyAsync(dst, src, n * 4, cudaMemcpyHostToDevice, x->st));
    return 0;
}

static int upload_weights(cu_ctx *x, const mdl_model *m, float *stage) {
    const mdl_config *c = &x->c;
    const size_t D = c->dim, V = c->vocab_size, H = c->hidden_dim, hd = c->head_dim;
    CU_TRY(upload(x, x->tok_embd, m->w.tok_embd, V * D, stage));
    if (x->lm_head != x->tok_embd)
        CU_TRY(upload_proj(x, x->lm_head, x->lm_scale, 0, m->w.lm_head, V, D, stage));
    CU_TRY(upload_f32(x, x->out_norm, m->w.out_norm, D));
    for (int l = 0; l < c->n_layers; l++) {
        const mdl_layer *S = &m->w.layers[l];
        cu_layer_w *L = &x->layers[l];
        const size_t qd = x->q_dim, kvd = x->kv_dim;
        CU_TRY(upload_f32(x, L->attn_norm, S->attn_norm, D));
        CU_TRY(upload_proj(x, L->wqkv, L->s_qkv, 0, S->wq, qd, D, stage));
        CU_TRY(upload_proj(x, L->wqkv, L->s_qkv, qd, S->wk, kvd, D, stage));
        CU_TRY(upload_proj(x, L->wqkv, L->s_qkv, qd + kvd, S->wv, kvd, D, stage));
        CU_TRY(upload_proj(x, L->wo, L->s_o, 0, S->wo, D, qd, stage));
        if (c->has_qk_norm) {
            CU_TRY(upload_f32(x, L->q_norm, S->q_norm, hd));
            CU_TRY(upload_f32(x, L->k_norm, S->k_norm, hd));
        }
        CU_TRY(upload_f32(x, L->ffn_norm, S->ffn_norm, D));
        CU_TRY(upload_proj(x, L->wgu, L->s_gu, 0, S->w_gate, H, D, stage));
        CU_TRY(upload_proj(x, L->wgu, L->s_gu, H, S->w_up, H, D, stage));
        CU_TRY(upload_proj(x, L->wdown, L->s_down, 0, S->w_down, D, H, stage));
    }
    CU_CHECK(cudaStreamSynchronize(x->st));
    return 0;
}

/* cudaMalloc that reports NI_ENOMEM with the size instead of a CUDA error. */
static int dev_alloc(void **p, size_t bytes, const char *what, char *err, size_t errlen) {
    if (cudaMalloc(p, bytes) != cudaSuccess) {
        cudaGetLastError();
        *p = NULL;
        return ni_fail(err, errlen, NI_ENOMEM, "cuda backend: cannot allocate %s (%zu MiB)",
                       what, bytes >> 20);
    }
    return 0;
}

static int setup(cu_ctx *x, const mdl_model *m, char *err, size_t errlen) {
    const mdl_config *c = &x->c;
    int rc;
    CU_CHECK(cudaSetDevice(x->dev));
    CU_CHECK(cudaDeviceGetAttribute(&x->n_sm, cudaDevAttrMultiProcessorCount, x->dev));
    CU_CHECK(cudaStreamCreateWithFlags(&x->st, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&x->blas));
    CUBLAS_CHECK(cublasSetStream(x->blas, x->st));
    CU_TRY(cu_att_prepare());

    /* weights */
    bump b = {NULL, 0};
    layout_weights(x, &b, m->w.lm_head == m->w.tok_embd);
    if ((rc = dev_alloc(&x->wmem, b.off, "weights", err, errlen))) return rc;
    b = (bump){(char *)x->wmem, 0};
    layout_weights(x, &b, m->w.lm_head == m->w.tok_embd);
    float *stage = NULL;
    if ((x->dtype != CU_DTYPE_FP32 || x->quant) &&
        (rc = dev_alloc((void **)&stage, STAGE_FLOATS * 4, "upload staging", err, errlen)))
        return rc;
    rc = upload_weights(x, m, stage);
    cudaFree(stage);
    if (rc) return ni_fail(err, errlen, rc, "cuda backend: weight upload failed");

    float *cs = NULL, *sn = NULL;
    if ((rc = cu_rope_tables(c, m->w.rope_freqs, x->max_pos, &cs, &sn)))
        return ni_fail(err, errlen, rc, "cuda backend: cannot build RoPE tables");
    const size_t tab = (size_t)x->max_pos * (c->head_dim / 2) * 4;
    cudaError_t e1 = cudaMemcpy(x->cos_tab, cs, tab, cudaMemcpyHostToDevice);
    cudaError_t e2 = cudaMemcpy(x->sin_tab, sn, tab, cudaMemcpyHostToDevice);
    free(cs);
    free(sn);
    CU_CHECK(e1);
    CU_CHECK(e2);

    /* KV pool */
    size_t pool = 0;
    if (!mul_ok((size_t)x->n_blocks * x->block_size, (size_t)x->kv_dim * x->esz,
                &x->plane_bytes) ||
        !mul_ok(x->plane_bytes, 2 * (size_t)c->n_layers, &pool))
        return ni_fail(err, errlen, NI_ERANGE, "cuda backend: KV pool size overflows");
    if ((rc = dev_alloc(&x->kv, pool, "KV pool", err, errlen))) return rc;
    CU_CHECK(cudaMemset(x->kv, 0, pool));

    /* work buffers, cuBLAS workspace, metadata */
    b = (bump){NULL, 0};
    layout_work(x, &b);
    if ((rc = dev_alloc(&x->work, b.off, "work buffers", err, errlen))) return rc;
    b = (bump){(char *)x->work, 0};
    layout_work(x, &b);
    CU_CHECK(cudaMemset(x->work, 0, b.off));
    CUBLAS_CHECK(cublasSetWorkspace(x->blas, x->blas_ws, BLAS_WS_BYTES));

    CU_CHECK(cudaHostAlloc((void **)&x->meta_h, x->meta_cap * 4, cudaHostAllocDefault));
    CU_CHECK(cudaHostAlloc((void **)&x->logits_h,
                           (size_t)x->max_seqs * (size_t)c->vocab_size * 4,
                           cudaHostAllocDefault));
    CU_CHECK(cudaHostAlloc((void **)&x->smp_rows_h, (size_t)x->smp_cap * sizeof(cu_smp_row),
                           cudaHostAllocDefault));
    CU_CHECK(cudaHostAlloc((void **)&x->smp_ents_h, x->smp_ent_cap * sizeof(cu_smp_ent),
                           cudaHostAllocDefault));
    CU_CHECK(cudaHostAlloc((void **)&x->smp_out_h, (size_t)x->smp_cap * sizeof(cu_smp_out),
                           cudaHostAllocDefault));
    x->lm_seq = (int32_t *)malloc((size_t)x->max_seqs * sizeof(int32_t));
    x->row_of_seq = (int32_t *)malloc((size_t)x->max_seqs * sizeof(int32_t));
    x->smp_consumers = (int *)malloc((size_t)x->max_seqs * sizeof(int));
    if (!x->lm_seq || !x->row_of_seq || !x->smp_consumers)
        return ni_fail(err, errlen, NI_ENOMEM, "cuda backend: out of memory");

    /* decode buckets and their fixed split-K factors */
    NI_ASSERT(7 * (size_t)x->dec_cap + (size_t)x->dec_cap * x->tbl_cap <= x->meta_cap);
    for (int i = 0; i < x->n_buckets; i++) {
        const int B = x->bucket[i];
        int sp = x->force_splits > 0 ? x->force_splits
                                     : cu_att_choose_splits(B, c->n_kv_heads, x->max_pos,
                                                            x->n_sm, x->part_slots);
        if ((long)sp * B > x->part_slots) sp = x->part_slots / B;
        x->bucket_splits[i] = sp < 1 ? 1 : sp;
    }
    if (x->prof) {
        x->ev_cap = 4 + 12 * c->n_layers;
        x->ev = (cudaEvent_t *)calloc((size_t)x->ev_cap, sizeof(cudaEvent_t));
        x->ev_ph = (int *)calloc((size_t)x->ev_cap, sizeof(int));
        if (!x->ev || !x->ev_ph) return ni_fail(err, errlen, NI_ENOMEM, "cuda backend: out of memory");
        for (int i = 0; i < x->ev_cap; i++) CU_CHECK(cudaEventCreate(&x->ev[i]));
    }
    x->stats.graph_mode = x->graph_mode;
    x->stats.quant = x->quant;
    CU_CHECK(cudaDeviceSynchronize());
    return 0;
}

/* The settings of one context, validated from eng_backend_config; shared by
 * init and the KV-capacity planner. */
typedef struct cu_settings {
    int dtype;      /* enum cu_dtype */
    int dev;        /* device ordinal */
    int quant;      /* 1: int8 weights */
    int graph_mode; /* GRAPHS_* */
    int splits;     /* forced attention split-K factor, 0 automatic */
    int prof;       /* per-phase profile */
} cu_settings;

/* Fills *s from cf; NI_EINVAL / NI_EUNSUPPORTED with a message naming the
 * setting when one is out of range or the device does not exist. */
static int settings(const eng_backend_config *cf, cu_settings *s, char *err, size_t errlen) {
    s->dtype = cu_dtype_of(cf->dtype);
    if (s->dtype < 0)
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: dtype %d is not bf16 or fp32",
                       (int)cf->dtype);
    if (cf->quant != 0 && cf->quant != 1)
        return ni_fail(err, errlen, NI_EUNSUPPORTED,
                       "cuda backend: weight format %d unsupported (int8 or none)", cf->quant);
    s->quant = cf->quant;
    switch (cf->graphs) {
    case ENG_GRAPHS_DEFAULT:
    case ENG_GRAPHS_ON: s->graph_mode = GRAPHS_ON; break;
    case ENG_GRAPHS_OFF: s->graph_mode = GRAPHS_OFF; break;
    case ENG_GRAPHS_EAGER: s->graph_mode = GRAPHS_EAGER; break;
    default:
        return ni_fail(err, errlen, NI_EINVAL,
                       "cuda backend: graph mode %d is not default, on, off or eager",
                       (int)cf->graphs);
    }
#ifdef NI_DEBUG
    if (s->graph_mode == GRAPHS_ON) s->graph_mode = GRAPHS_EAGER; /* CU_LAUNCH_CHECK synchronizes */
#endif
    s->prof = cf->profile != 0;
    if (s->prof && s->graph_mode == GRAPHS_ON) s->graph_mode = GRAPHS_EAGER;
    if (cf->att_splits < 0)
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: att_splits %d < 0", cf->att_splits);
    s->splits = cf->att_splits;
    const int n_dev = cu_device_count();
    if (n_dev == 0) return ni_fail(err, errlen, NI_EUNSUPPORTED, "cuda backend: no CUDA device");
    s->dev = cf->device_index < 0 ? 0 : cf->device_index;
    if (s->dev >= n_dev)
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: device %d but %d device(s)", s->dev,
                       n_dev);
    return 0;
}

/* Fills x's settings and derived sizes (everything but allocations) from
 * the model, config and validated settings; shared by init and the
 * KV-capacity planner. */
static void ctx_derive(cu_ctx *x, const mdl_model *m, const eng_backend_config *cf,
                       const cu_settings *s) {
    const mdl_config *c = &m->cfg;
    x->c = *c;
    x->dtype = s->dtype;
    x->esz = cu_dtype_size(s->dtype);
    x->dev = s->dev;
    x->n_blocks = cf->n_blocks;
    x->block_size = cf->block_size;
    x->max_batch_tokens = cf->max_batch_tokens;
    x->max_seqs = cf->max_seqs;
    int64_t max_pos = (int64_t)cf->n_blocks * cf->block_size;
    if (c->max_seq_len > 0 && c->max_seq_len < max_pos) max_pos = c->max_seq_len;
    if (max_pos > INT32_MAX) max_pos = INT32_MAX;
    x->max_pos = (int)max_pos;
    x->tbl_cap = (int)((max_pos + cf->block_size - 1) / cf->block_size);
    x->q_dim = c->n_heads * c->head_dim;
    x->kv_dim = c->n_kv_heads * c->head_dim;
    x->qkv_dim = x->q_dim + 2 * x->kv_dim;
    const size_t slot_bytes = cu_att_part_floats(c->n_kv_heads, c->head_dim) * 4;
    size_t slots = PART_BUDGET / slot_bytes;
    x->part_slots = (int)(slots < 1 ? 1 : slots > PART_SLOTS_MAX ? PART_SLOTS_MAX : slots);
    x->force_splits = s->splits;
    x->meta_cap = 7 * (size_t)cf->max_batch_tokens + (size_t)cf->max_seqs +
                  (size_t)cf->max_seqs * (size_t)x->tbl_cap;
    x->quant = s->quant;
    x->graph_mode = s->graph_mode;
    x->prof = s->prof;
    x->smp_cap = cf->max_seqs;
    x->smp_ent_cap = (size_t)c->vocab_size + 65536;
    x->dec_cap = cf->max_seqs < cf->max_batch_tokens ? cf->max_seqs : cf->max_batch_tokens;
    x->n_buckets = 0;
    for (int b = 1; b < x->dec_cap && x->n_buckets < MAX_BUCKETS - 1; b *= 2)
        x->bucket[x->n_buckets++] = b;
    x->bucket[x->n_buckets++] = x->dec_cap;
}

static int cu_init(void **out, const mdl_model *m, const eng_backend_config *cf, char *err,
                   size_t errlen) {
    if (!out || !m || !cf) return ni_fail(err, errlen, NI_EINVAL, "cuda backend: NULL argument");
    *out = NULL;
    int rc = check_model(m, err, errlen);
    if (rc) return rc;
    if (cf->n_blocks <= 0 || cf->block_size <= 0 || cf->max_batch_tokens <= 0 ||
        cf->max_seqs <= 0 || cf->n_threads < 0)
        return ni_fail(err, errlen, NI_EINVAL,
                       "cuda backend: bad config (n_blocks %d, block_size %d, "
                       "max_batch_tokens %d, max_seqs %d, n_threads %d)",
                       cf->n_blocks, cf->block_size, cf->max_batch_tokens, cf->max_seqs,
                       cf->n_threads);
    cu_settings set;
    if ((rc = settings(cf, &set, err, errlen))) return rc;

    cu_ctx *x = (cu_ctx *)calloc(1, sizeof(*x));
    if (!x) return ni_fail(err, errlen, NI_ENOMEM, "cuda backend: out of memory");
    ctx_derive(x, m, cf, &set);
    const mdl_config *c = &m->cfg;
    x->layers = (cu_layer_w *)calloc((size_t)c->n_layers, sizeof(cu_layer_w));
    if (!x->layers) {
        cu_free(x);
        return ni_fail(err, errlen, NI_ENOMEM, "cuda backend: out of memory");
    }
    rc = setup(x, m, err, errlen);
    if (rc) {
        if (err && errlen && !err[0])
            ni_fail(err, errlen, rc, "cuda backend: CUDA initialization failed (see stderr)");
        cu_free(x);
        return rc;
    }
    *out = x;
    return 0;
}

/* The shared rules of engine/backend/twins.h; logits may be NULL (wanted
 * rows then stay on the device for sample()). */
static int check_batch(const cu_ctx *x, const eng_batch *b, const float *logits) {
    (void)logits;
    const eng_batch_limits lim = {x->max_seqs, x->max_batch_tokens, x->c.vocab_size,
                                  x->max_pos,  x->block_size,       x->n_blocks};
    return eng_batch_check(b, &lim);
}

/* One forward's launches over device metadata (shared by the general path
 * and the decode graphs). */
typedef struct cu_fwd {
    int n;                    /* tokens: rows of every activation */
    const int32_t *tok;       /* [n] */
    const int32_t *pos;       /* [n] */
    const int32_t *slot;      /* [n] (< 0: K/V not stored) */
    const cu_att_item *items; /* [n_items] */
    int n_items;
    const int32_t *tables;    /* [..][ts] */
    int ts;
    int n_splits;
    const int32_t *lm_rows;   /* [n_lm] rows of x wanting logits, or NULL: rows 0..n_lm-1 */
    int n_lm;
} cu_fwd;

/* y = a W^T + beta y through cuBLAS, or the int8 path when scale != NULL. */
static int mm(cu_ctx *x, float *y, int ldy, const void *a, int lda, const void *w,
              const float *scale, int n, int in, int out, float beta) {
    if (!scale) return cu_gemm(x->blas, x->dtype, y, ldy, a, lda, w, n, in, out, beta);
    return cu_gemm_q8(x->blas, x->st, x->dtype, y, ldy, a, lda, (const int8_t *)w, scale, n, in,
                      out, beta, x->deq, DEQ_BYTES, x->qtmp);
}

/* Enqueues embed .. LM head (logits_d rows 0..n_lm-1); no host work, no
 * synchronization, so it can be captured into a graph. */
/* profile: an event after the launches of phase ph. */
static int mark(cu_ctx *x, int ph) {
    if (!x->prof) return 0;
    if (ph == PH_START) x->n_ev = 0;
    if (x->n_ev >= x->ev_cap) return 0;
    CU_CHECK(cudaEventRecord(x->ev[x->n_ev], x->st));
    x->ev_ph[x->n_ev++] = ph;
    return 0;
}

/* Adds the timed phases of the finished forward (stream synchronized). */
static int prof_collect(cu_ctx *x) {
    if (!x->prof || x->n_ev < 2) return 0;
    for (int i = 1; i < x->n_ev; i++) {
        float ms = 0;
        CU_CHECK(cudaEventElapsedTime(&ms, x->ev[i - 1], x->ev[i]));
        x->ph_ms[x->prof_kind][x->ev_ph[i]] += ms;
    }
    x->prof_steps[x->prof_kind]++;
    x->n_ev = 0;
    return 0;
}

static int enqueue_layers(cu_ctx *x, const cu_fwd *f) {
    const mdl_config *c = &x->c;
    const int n = f->n, D = c->dim, hd = c->head_dim, H = c->hidden_dim;
    const int V = c->vocab_size, bs = x->block_size, dt = x->dtype;
    CU_TRY(mark(x, PH_START));
    CU_TRY(cu_launch_embed(x->st, x->x, x->tok_embd, dt, f->tok, n, D));
    CU_TRY(mark(x, PH_EMBED));
    for (int l = 0; l < c->n_layers; l++) {
        const cu_layer_w *L = &x->layers[l];
        char *kc = (char *)x->kv + (size_t)(2 * l) * x->plane_bytes;
        char *vc = kc + x->plane_bytes;

        CU_TRY(cu_launch_rmsnorm(x->st, x->xb, dt, x->x, NULL, NULL, L->attn_norm, n, D,
                                 c->norm_eps));
        CU_TRY(mark(x, PH_NORM));
        CU_TRY(mm(x, x->qkv, x->qkv_dim, x->xb, D, L->wqkv, L->s_qkv, n, D, x->qkv_dim, 0.0f));
        CU_TRY(mark(x, PH_QKV));
        const cu_rope_args ra = {x->qkv,     x->qkv_dim, f->pos,       f->slot,
                                 x->cos_tab, x->sin_tab, L->q_norm,    L->k_norm,
                                 kc,         vc,         n,            c->n_heads,
                                 c->n_kv_heads, hd,      c->rope_interleaved != 0, c->norm_eps};
        CU_TRY(cu_launch_rope_kv(x->st, &ra, dt));
        CU_TRY(mark(x, PH_ROPE));
        const cu_att_args aa = {x->att,    x->qkv,    x->qkv_dim, kc,          vc,
                                f->items,  f->tables, f->ts,      f->n_items,  f->n_splits,
                                x->part,   c->n_heads, c->n_kv_heads, hd,      bs};
        CU_TRY(cu_launch_attention(x->st, &aa, dt));
        CU_TRY(mark(x, PH_ATT));
        CU_TRY(mm(x, x->x, D, x->att, x->q_dim, L->wo, L->s_o, n, x->q_dim, D, 1.0f));
        CU_TRY(mark(x, PH_WO));

        CU_TRY(cu_launch_rmsnorm(x->st, x->xb, dt, x->x, NULL, NULL, L->ffn_norm, n, D,
                                 c->norm_eps));
        CU_TRY(mark(x, PH_NORM));
        CU_TRY(mm(x, x->gu, 2 * H, x->xb, D, L->wgu, L->s_gu, n, D, 2 * H, 0.0f));
        CU_TRY(mark(x, PH_GU));
        CU_TRY(cu_launch_swiglu(x->st, x->act, dt, x->gu, n, H));
        CU_TRY(mark(x, PH_SWIGLU));
        CU_TRY(mm(x, x->x, D, x->act, H, L->wdown, L->s_down, n, H, D, 1.0f));
        CU_TRY(mark(x, PH_DOWN));
    }
    if (f->n_lm > 0) {
        CU_TRY(cu_launch_rmsnorm(x->st, x->xl, dt, x->x, NULL, f->lm_rows, x->out_norm, f->n_lm,
                                 D, c->norm_eps));
        CU_TRY(mm(x, x->logits_d, V, x->xl, D, x->lm_head, x->lm_scale, f->n_lm, D, V, 0.0f));
        CU_TRY(mark(x, PH_LM));
    }
    return 0;
}

/* Hands the wanted logits rows back (lm_seq[r] = sequence of logits_d row
 * r, r < n_rows), or leaves them on the device when logits == NULL. */
static int finish_forward(cu_ctx *x, const eng_batch *b, float *logits, int n_rows) {
    const int V = x->c.vocab_size;
    for (int s = 0; s < b->n_seqs; s++) x->row_of_seq[s] = -1;
    int n_want = 0;
    for (int r = 0; r < n_rows; r++) {
        const int s = x->lm_seq[r];
        if (!b->want_logits || !b->want_logits[s]) continue;
        x->row_of_seq[s] = r;
        n_want++;
    }
    x->last_n_seqs = b->n_seqs;
    if (x->prof) {
        CU_CHECK(cudaStreamSynchronize(x->st));
        CU_TRY(prof_collect(x));
    }
    if (n_want == 0 || !logits) {
        x->pending = 1; /* meta_h is still being read: the next call synchronizes */
        return 0;
    }
    CU_CHECK(cudaMemcpyAsync(x->logits_h, x->logits_d, (size_t)n_rows * V * 4,
                             cudaMemcpyDeviceToHost, x->st));
    CU_CHECK(cudaStreamSynchronize(x->st));
    x->pending = 0;
    for (int s = 0; s < b->n_seqs; s++)
        if (x->row_of_seq[s] >= 0)
            memcpy(logits + (size_t)s * V, x->logits_h + (size_t)x->row_of_seq[s] * V,
                   (size_t)V * sizeof(float));
    return 0;
}

/* Any batch: metadata sized to the call, one forward. */
static int forward_general(cu_ctx *x, const eng_batch *b, float *logits) {
    const mdl_config *c = &x->c;
    const int n = b->n_tokens, bs = x->block_size;
    const int G = c->n_heads / c->n_kv_heads;

    /* Packed metadata: tokens [n] | pos [n] | slot [n] | items [4*n_items] |
     * lm_rows [n_want] | tables [n_seqs][ts]. */
    int32_t *mh = x->meta_h;
    int32_t *tok = mh, *pos = mh + n, *slot = mh + 2 * n;
    cu_att_item *items = (cu_att_item *)(mh + 3 * n);
    memcpy(tok, b->tokens, (size_t)n * sizeof(int32_t));
    int ts = 1; /* table stride of this call: blocks needed by the longest sequence */
    for (int s = 0; s < b->n_seqs; s++) {
        const int32_t *tb = b->block_tables + (size_t)s * b->max_blocks;
        const int s0 = b->seq_start[s], s1 = b->seq_start[s + 1];
        for (int i = s0; i < s1; i++) {
            const int p = b->pos0[s] + (i - s0);
            pos[i] = p;
            slot[i] = tb[p / bs] * bs + p % bs;
        }
        const int need = (b->pos0[s] + (s1 - s0) + bs - 1) / bs;
        if (need > ts) ts = need;
    }
    int max_ctx = 0;
    const int n_items = cu_att_plan(items, b->n_seqs, b->seq_start, b->pos0, G, &max_ctx);
    const size_t off_lm = 3 * (size_t)n + 4 * (size_t)n_items;
    int32_t *lm_rows = mh + off_lm;
    int n_want = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        if (!b->want_logits || !b->want_logits[s]) continue;
        lm_rows[n_want] = b->seq_start[s + 1] - 1;
        x->lm_seq[n_want++] = s;
    }
    const size_t off_tbl = off_lm + (size_t)n_want;
    int32_t *tables = mh + off_tbl;
    for (int s = 0; s < b->n_seqs; s++) {
        const int32_t *tb = b->block_tables + (size_t)s * b->max_blocks;
        const int need = (b->pos0[s] + (b->seq_start[s + 1] - b->seq_start[s]) + bs - 1) / bs;
        memcpy(tables + (size_t)s * ts, tb, (size_t)need * sizeof(int32_t));
        for (int j = need; j < ts; j++) tables[(size_t)s * ts + j] = 0; /* never read */
    }
    const size_t meta_n = off_tbl + (size_t)b->n_seqs * ts;
    NI_ASSERT(meta_n <= x->meta_cap);
    CU_CHECK(cudaMemcpyAsync(x->meta_d, mh, meta_n * 4, cudaMemcpyHostToDevice, x->st));

    int n_splits = x->force_splits > 0
                       ? x->force_splits
                       : cu_att_choose_splits(n_items, c->n_kv_heads, max_ctx, x->n_sm,
                                              x->part_slots);
    if ((long)n_splits * n_items > x->part_slots) n_splits = x->part_slots / n_items;
    if (n_splits < 1) n_splits = 1;

    const cu_fwd f = {n,        x->meta_d,
                      x->meta_d + n,
                      x->meta_d + 2 * n,
                      (const cu_att_item *)(x->meta_d + 3 * n),
                      n_items,  x->meta_d + off_tbl,
                      ts,       n_splits,
                      x->meta_d + off_lm,
                      n_want};
    x->prof_kind = 1;
    CU_TRY(enqueue_layers(x, &f));
    x->stats.general_steps++;
    return finish_forward(x, b, logits, n_want);
}

/* Decode bucket bi over the fixed decode metadata layout of meta_d:
 * tok [dec_cap] | pos [dec_cap] | slot [dec_cap] | items [4*dec_cap] |
 * tables [dec_cap][tbl_cap]; logits rows = batch rows. */
static int enqueue_decode(cu_ctx *x, int bi) {
    const int B = x->bucket[bi], dc = x->dec_cap;
    const cu_fwd f = {B,
                      x->meta_d,
                      x->meta_d + dc,
                      x->meta_d + 2 * dc,
                      (const cu_att_item *)(x->meta_d + 3 * dc),
                      B,
                      x->meta_d + 7 * dc,
                      x->tbl_cap,
                      x->bucket_splits[bi],
                      NULL,
                      B};
    return enqueue_layers(x, &f);
}

/* Captures bucket bi's graph (thread-local capture mode: only this thread's
 * unsafe calls would invalidate it; the launchers make none). */
static int capture_decode(cu_ctx *x, int bi) {
    cudaGraph_t g = NULL;
    CU_CHECK(cudaStreamBeginCapture(x->st, cudaStreamCaptureModeThreadLocal));
    int rc = enqueue_decode(x, bi);
    const cudaError_t ec = cudaStreamEndCapture(x->st, &g);
    if (rc || ec != cudaSuccess) {
        if (g) cudaGraphDestroy(g);
        if (!rc) {
            fprintf(stderr, "%s:%d: CUDA graph capture of decode bucket %d failed: %s\n",
                    __FILE__, __LINE__, x->bucket[bi], cudaGetErrorString(ec));
            rc = NI_EIO;
        }
        cudaGetLastError();
        return rc;
    }
    const cudaError_t ei = cudaGraphInstantiate(&x->gexec[bi], g, 0);
    cudaGraphDestroy(g);
    if (ei != cudaSuccess) x->gexec[bi] = NULL;
    CU_CHECK(ei);
    x->stats.graphs_captured++;
    return 0;
}

/* Pure decode batch (n_tokens == n_seqs): padded to its bucket, replayed
 * from the bucket's graph (or enqueued eagerly in GRAPHS_EAGER). */
static int forward_decode(cu_ctx *x, const eng_batch *b, float *logits) {
    const int n = b->n_seqs, bs = x->block_size, dc = x->dec_cap;
    int bi = 0;
    while (x->bucket[bi] < n) bi++;
    const int B = x->bucket[bi];
    int32_t *mh = x->meta_h;
    int32_t *tok = mh, *pos = mh + dc, *slot = mh + 2 * dc;
    cu_att_item *items = (cu_att_item *)(mh + 3 * dc);
    int32_t *tables = mh + 7 * dc; /* compact [n][ts] here, [n][tbl_cap] on the device */
    int ts = 1;
    for (int s = 0; s < n; s++) {
        const int need = b->pos0[s] / bs + 1;
        if (need > ts) ts = need;
    }
    for (int s = 0; s < n; s++) {
        const int32_t *tb = b->block_tables + (size_t)s * b->max_blocks;
        const int p = b->pos0[s], need = p / bs + 1;
        tok[s] = b->tokens[s];
        pos[s] = p;
        slot[s] = tb[p / bs] * bs + p % bs;
        items[s] = (cu_att_item){s, 1, p, s};
        x->lm_seq[s] = s;
        memcpy(tables + (size_t)s * ts, tb, (size_t)need * sizeof(int32_t));
        for (int j = need; j < ts; j++) tables[(size_t)s * ts + j] = 0; /* never read */
    }
    for (int s = n; s < B; s++) { /* padding rows */
        tok[s] = 0;
        pos[s] = 0;
        slot[s] = -1;
        items[s] = (cu_att_item){s, 0, 0, 0};
    }
    CU_CHECK(cudaMemcpyAsync(x->meta_d, mh, (3 * (size_t)dc + 4 * (size_t)B) * 4,
                             cudaMemcpyHostToDevice, x->st));
    CU_CHECK(cudaMemcpy2DAsync(x->meta_d + 7 * dc, (size_t)x->tbl_cap * 4, tables,
                               (size_t)ts * 4, (size_t)ts * 4, (size_t)n,
                               cudaMemcpyHostToDevice, x->st));
    x->prof_kind = 0;
    if (x->graph_mode == GRAPHS_ON) {
        if (!x->gexec[bi]) CU_TRY(capture_decode(x, bi));
        CU_CHECK(cudaGraphLaunch(x->gexec[bi], x->st));
        x->stats.graph_launches++;
    } else {
        CU_TRY(enqueue_decode(x, bi));
    }
    x->stats.decode_steps++;
    return finish_forward(x, b, logits, n);
}

static int cu_forward(void *vctx, const eng_batch *b, float *logits) {
    cu_ctx *x = (cu_ctx *)vctx;
    if (!x || !b) return NI_EINVAL;
    int rc = check_batch(x, b, logits);
    if (rc) return rc;
    CU_CHECK(cudaSetDevice(x->dev));
    if (x->pending) { /* the previous call's metadata copy may still read meta_h */
        CU_CHECK(cudaStreamSynchronize(x->st));
        x->pending = 0;
    }
    x->last_n_seqs = 0;
    if (b->n_tokens == 0) return 0;
    if (x->graph_mode != GRAPHS_OFF && b->n_tokens == b->n_seqs)
        return forward_decode(x, b, logits);
    return forward_general(x, b, logits);
}

/* eng_backend.sample: packs the jobs (groups when they exceed the staging
 * buffers), one launch and one copy back per group. */
static int cu_sample(void *vctx, const eng_sample_row *rows, int n_rows, smp_result *out) {
    cu_ctx *x = (cu_ctx *)vctx;
    if (!x || n_rows < 0 || (n_rows > 0 && (!rows || !out))) return NI_EINVAL;
    if (n_rows == 0) return 0;
    CU_CHECK(cudaSetDevice(x->dev));
    const int V = x->c.vocab_size;
    for (int done = 0; done < n_rows;) {
        int np = 0;
        size_t ne = 0;
        CU_TRY(cu_sample_pack(rows + done, n_rows - done, V, x->row_of_seq, x->last_n_seqs,
                              x->smp_consumers, x->smp_rows_h, x->smp_cap, x->smp_ents_h,
                              x->smp_ent_cap, SMP_SCRATCH, &np, &ne));
        if (np <= 0) return NI_ERANGE;
        CU_CHECK(cudaMemcpyAsync(x->smp_rows_d, x->smp_rows_h, (size_t)np * sizeof(cu_smp_row),
                                 cudaMemcpyHostToDevice, x->st));
        if (ne)
            CU_CHECK(cudaMemcpyAsync(x->smp_ents_d, x->smp_ents_h, ne * sizeof(cu_smp_ent),
                                     cudaMemcpyHostToDevice, x->st));
        const cu_sample_args a = {x->logits_d,  V,           x->smp_rows_d, np,
                                  x->smp_ents_d, x->smp_scratch, x->smp_out_d, NULL};
        CU_TRY(cu_launch_sample(x->st, &a));
        CU_CHECK(cudaMemcpyAsync(x->smp_out_h, x->smp_out_d, (size_t)np * sizeof(cu_smp_out),
                                 cudaMemcpyDeviceToHost, x->st));
        CU_CHECK(cudaStreamSynchronize(x->st));
        x->pending = 0;
        for (int i = 0; i < np; i++) cu_sample_result(&out[done + i], &x->smp_out_h[i]);
        done += np;
    }
    x->stats.sample_calls++;
    return 0;
}

int cu_backend_get_stats(const void *ctx, cu_backend_stats *st) {
    if (!ctx || !st) return NI_EINVAL;
    *st = ((const cu_ctx *)ctx)->stats;
    return 0;
}

static int cu_copy_block(void *vctx, int src, int dst) {
    cu_ctx *x = (cu_ctx *)vctx;
    if (!x || src < 0 || src >= x->n_blocks || dst < 0 || dst >= x->n_blocks) return NI_EINVAL;
    if (src == dst) return 0;
    CU_CHECK(cudaSetDevice(x->dev));
    const size_t block_bytes = (size_t)x->block_size * x->kv_dim * x->esz;
    return cu_launch_copy_block(x->st, x->kv, 2 * x->c.n_layers, x->plane_bytes, block_bytes, src,
                                dst);
}


/* KV capacity from GPU memory: what is left of util * total memory after the
 * memory other processes use, our weights, work buffers and a margin for
 * the CUDA context, cuBLAS and upload staging. */
static int cu_kv_blocks(const mdl_model *m, const eng_backend_config *cf, double util,
                        int *n_blocks, char *err, size_t errlen) {
    if (!m || !cf || !n_blocks || !(util > 0 && util <= 1))
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: bad argument or memory fraction");
    cu_settings set;
    const int rc = settings(cf, &set, err, errlen);
    if (rc) return rc;
    set.graph_mode = GRAPHS_OFF;
    const int dev = set.dev;
    eng_backend_config big = *cf;
    big.n_blocks = (m->cfg.max_seq_len + cf->block_size - 1) / cf->block_size; /* max_pos bound */
    cu_ctx t;
    memset(&t, 0, sizeof t);
    ctx_derive(&t, m, &big, &set);
    t.layers = (cu_layer_w *)calloc((size_t)m->cfg.n_layers, sizeof(cu_layer_w));
    if (!t.layers) return ni_fail(err, errlen, NI_ENOMEM, "cuda backend: out of memory");
    bump b = {NULL, 0};
    layout_weights(&t, &b, m->w.lm_head == m->w.tok_embd);
    size_t need = b.off;
    b = (bump){NULL, 0};
    layout_work(&t, &b);
    need += b.off + STAGE_FLOATS * 4 + ((size_t)512 << 20);
    free(t.layers);
    size_t free_b = 0, total_b = 0;
    CU_CHECK(cudaSetDevice(dev));
    CU_CHECK(cudaMemGetInfo(&free_b, &total_b));
    double budget = util * (double)total_b - (double)(total_b - free_b) - (double)need;
    const double block_bytes = 2.0 * m->cfg.n_layers * cf->block_size * t.kv_dim * t.esz;
    if (budget < block_bytes)
        return ni_fail(err, errlen, NI_ENOMEM,
                       "cuda backend: no GPU memory left for the KV cache (%.0f MiB free of "
                       "%.0f MiB, %.0f MiB needed for weights and buffers)",
                       free_b / 1048576.0, total_b / 1048576.0, need / 1048576.0);
    double nb = budget / block_bytes;
    *n_blocks = nb > (double)(1 << 22) ? (1 << 22) : (int)nb;
    return 0;
}

extern "C" const eng_backend eng_backend_cuda = {
    "cuda", cu_init, cu_forward, cu_copy_block, cu_free, cu_kv_blocks, cu_sample,
};
