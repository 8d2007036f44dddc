/*
 * cu_backend.cu - eng_backend_cuda: the forward pass of engine/backend.h on
 * one GPU (LLaMA 2/3, SmolLM2, qwen3), BF16 or FP32 (see cu.h).
 *
 * Memory (every device allocation is made by init; forward allocates
 * nothing):
 *   weights  one cudaMalloc: embedding and LM head (shared when tied) and per
 *            layer the fused projections wqkv = [wq; wk; wv] ([q+2kv][dim])
 *            and wgu = [w_gate; w_up] ([2*hidden][dim]), wo, w_down, all in T
 *            (BF16 or FP32), row-major [out][in] as in mdl_model; RMSNorm
 *            weights and RoPE cos/sin tables in FP32. Converted from the FP32
 *            mdl_model once, through a temporary staging buffer.
 *   KV pool  one cudaMalloc, [n_layers][2 (K, V)][n_blocks][block_size][kv_dim]
 *            in T (the CPU backend's layout), zeroed at init.
 *   work     one cudaMalloc: activations sized by max_batch_tokens (T) and
 *            max_seqs (S), the split-K attention workspace, the cuBLAS
 *            workspace and the batch metadata.
 *   host     pinned: batch metadata (tokens, positions, cache slots,
 *            attention items, logits rows, block tables; packed per call and
 *            sent with one copy) and the logits of the rows that want them.
 *
 * Forward (one stream; one synchronize at the end):
 *   x = embed(tokens)                                          FP32 residual
 *   per layer: xb = rmsnorm(x)                                 T
 *              qkv = xb wqkv^T                                 FP32 (GEMM)
 *              rope_kv: qk-norm, RoPE(q, k), k/v -> cache slots
 *              att = attention(q, cache)                       T
 *              x += att wo^T                                   GEMM, beta = 1
 *              xb = rmsnorm(x); gu = xb wgu^T; act = swiglu(gu)
 *              x += act wdown^T                                GEMM, beta = 1
 *   xl = rmsnorm(x[last row of each sequence wanting logits])  gather fused
 *   logits = xl lm_head^T -> pinned host -> caller rows
 * Every accumulation (GEMMs, norms, softmax, attention) is FP32.
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
 * failed forward the context should be freed.
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

typedef struct cu_layer_w {
    float *attn_norm;  /* [dim] */
    void *wqkv;        /* T [q_dim + 2*kv_dim][dim]: wq rows, wk rows, wv rows */
    void *wo;          /* T [dim][q_dim] */
    float *q_norm;     /* [head_dim] or NULL (qwen3) */
    float *k_norm;     /* [head_dim] or NULL */
    float *ffn_norm;   /* [dim] */
    void *wgu;         /* T [2*hidden][dim]: w_gate rows, then w_up rows */
    void *wdown;       /* T [dim][hidden] */
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
    int force_splits;           /* NI_CUDA_ATT_SPLITS (0 = automatic) */
    cudaStream_t st;
    cublasHandle_t blas;

    /* weights (one allocation) */
    void *wmem;
    void *tok_embd;             /* T [vocab][dim] */
    void *lm_head;              /* T [vocab][dim]; == tok_embd when tied */
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

    /* pinned host */
    int32_t *meta_h;            /* [meta_cap] staging of meta_d */
    float *logits_h;            /* [max_seqs][vocab] */
    int32_t *lm_seq;            /* [max_seqs] (plain malloc) sequence of each logits row */
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

static void cu_free(void *vctx) {
    cu_ctx *x = (cu_ctx *)vctx;
    if (!x) return;
    cudaSetDevice(x->dev);
    if (x->st) cudaStreamSynchronize(x->st);
    if (x->blas) cublasDestroy(x->blas);
    if (x->st) cudaStreamDestroy(x->st);
    cudaFree(x->wmem);
    cudaFree(x->kv);
    cudaFree(x->work);
    cudaFreeHost(x->meta_h);
    cudaFreeHost(x->logits_h);
    cudaGetLastError(); /* freeing is best effort; clear any error for the next user */
    free(x->lm_seq);
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
    const size_t half = hd / 2, e = x->esz;
    x->tok_embd = take(b, V * D * e);
    x->lm_head = tied ? x->tok_embd : take(b, V * D * e);
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

static int upload_f32(cu_ctx *x, float *dst, const float *src, size_t n) {
    CU_CHECK(cudaMemcpyAsync(dst, src, n * 4, cudaMemcpyHostToDevice, x->st));
    return 0;
}

static int upload_weights(cu_ctx *x, const mdl_model *m, float *stage) {
    const mdl_config *c = &x->c;
    const size_t D = c->dim, V = c->vocab_size, H = c->hidden_dim, hd = c->head_dim;
    const size_t e = x->esz;
    CU_TRY(upload(x, x->tok_embd, m->w.tok_embd, V * D, stage));
    if (x->lm_head != x->tok_embd) CU_TRY(upload(x, x->lm_head, m->w.lm_head, V * D, stage));
    CU_TRY(upload_f32(x, x->out_norm, m->w.out_norm, D));
    for (int l = 0; l < c->n_layers; l++) {
        const mdl_layer *S = &m->w.layers[l];
        cu_layer_w *L = &x->layers[l];
        const size_t qd = x->q_dim, kvd = x->kv_dim;
        CU_TRY(upload_f32(x, L->attn_norm, S->attn_norm, D));
        CU_TRY(upload(x, L->wqkv, S->wq, qd * D, stage));
        CU_TRY(upload(x, (char *)L->wqkv + qd * D * e, S->wk, kvd * D, stage));
        CU_TRY(upload(x, (char *)L->wqkv + (qd + kvd) * D * e, S->wv, kvd * D, stage));
        CU_TRY(upload(x, L->wo, S->wo, D * qd, stage));
        if (c->has_qk_norm) {
            CU_TRY(upload_f32(x, L->q_norm, S->q_norm, hd));
            CU_TRY(upload_f32(x, L->k_norm, S->k_norm, hd));
        }
        CU_TRY(upload_f32(x, L->ffn_norm, S->ffn_norm, D));
        CU_TRY(upload(x, L->wgu, S->w_gate, H * D, stage));
        CU_TRY(upload(x, (char *)L->wgu + H * D * e, S->w_up, H * D, stage));
        CU_TRY(upload(x, L->wdown, S->w_down, D * H, stage));
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

    /* weights */
    bump b = {NULL, 0};
    layout_weights(x, &b, m->w.lm_head == m->w.tok_embd);
    if ((rc = dev_alloc(&x->wmem, b.off, "weights", err, errlen))) return rc;
    b = (bump){(char *)x->wmem, 0};
    layout_weights(x, &b, m->w.lm_head == m->w.tok_embd);
    float *stage = NULL;
    if (x->dtype != CU_DTYPE_FP32 &&
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
    x->lm_seq = (int32_t *)malloc((size_t)x->max_seqs * sizeof(int32_t));
    if (!x->lm_seq) return ni_fail(err, errlen, NI_ENOMEM, "cuda backend: out of memory");
    CU_CHECK(cudaDeviceSynchronize());
    return 0;
}

/* Fills x's settings and derived sizes (everything but allocations) from
 * the model and config; shared by init and the KV-capacity planner. */
static void ctx_derive(cu_ctx *x, const mdl_model *m, const eng_backend_config *cf, int dtype,
                       int dev) {
    const mdl_config *c = &m->cfg;
    x->c = *c;
    x->dtype = dtype;
    x->esz = cu_dtype_size(dtype);
    x->dev = dev;
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
    const char *sp = getenv("NI_CUDA_ATT_SPLITS");
    x->force_splits = sp ? atoi(sp) : 0;
    x->meta_cap = 7 * (size_t)cf->max_batch_tokens + (size_t)cf->max_seqs +
                  (size_t)cf->max_seqs * (size_t)x->tbl_cap;
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
    const int dtype = cu_backend_get_dtype();
    if (dtype < 0)
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: NI_CUDA_DTYPE must be bf16 or fp32");
    const int n_dev = cu_device_count();
    if (n_dev == 0) return ni_fail(err, errlen, NI_EUNSUPPORTED, "cuda backend: no CUDA device");
    const char *dev_env = getenv("NI_CUDA_DEVICE");
    const int dev = dev_env ? atoi(dev_env) : 0;
    if (dev < 0 || dev >= n_dev)
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: NI_CUDA_DEVICE=%d but %d device(s)",
                       dev, n_dev);

    cu_ctx *x = (cu_ctx *)calloc(1, sizeof(*x));
    if (!x) return ni_fail(err, errlen, NI_ENOMEM, "cuda backend: out of memory");
    ctx_derive(x, m, cf, dtype, dev);
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

/* Returns 0 if every field of b is consistent and in range for x (the CPU
 * backend's rules). */
static int check_batch(const cu_ctx *x, const eng_batch *b, const float *logits) {
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
        if (n <= 0) return NI_EINVAL;
        const int64_t p0 = b->pos0[s], end = p0 + n;
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

static int cu_forward(void *vctx, const eng_batch *b, float *logits) {
    cu_ctx *x = (cu_ctx *)vctx;
    if (!x || !b) return NI_EINVAL;
    int rc = check_batch(x, b, logits);
    if (rc) return rc;
    if (b->n_tokens == 0) return 0;
    CU_CHECK(cudaSetDevice(x->dev));

    const mdl_config *c = &x->c;
    const int n = b->n_tokens, D = c->dim, hd = c->head_dim, H = c->hidden_dim;
    const int V = c->vocab_size, bs = x->block_size, dt = x->dtype;
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
    const int32_t *d_tok = x->meta_d, *d_pos = x->meta_d + n, *d_slot = x->meta_d + 2 * n;
    const cu_att_item *d_items = (const cu_att_item *)(x->meta_d + 3 * n);
    const int32_t *d_lm = x->meta_d + off_lm, *d_tables = x->meta_d + off_tbl;

    int n_splits = x->force_splits > 0
                       ? x->force_splits
                       : cu_att_choose_splits(n_items, c->n_kv_heads, max_ctx, x->n_sm,
                                              x->part_slots);
    if ((long)n_splits * n_items > x->part_slots) n_splits = x->part_slots / n_items;
    if (n_splits < 1) n_splits = 1;

    CU_TRY(cu_launch_embed(x->st, x->x, x->tok_embd, dt, d_tok, n, D));
    for (int l = 0; l < c->n_layers; l++) {
        const cu_layer_w *L = &x->layers[l];
        char *kc = (char *)x->kv + (size_t)(2 * l) * x->plane_bytes;
        char *vc = kc + x->plane_bytes;

        CU_TRY(cu_launch_rmsnorm(x->st, x->xb, dt, x->x, NULL, NULL, L->attn_norm, n, D,
                                 c->norm_eps));
        CU_TRY(cu_gemm(x->blas, dt, x->qkv, x->qkv_dim, x->xb, D, L->wqkv, n, D, x->qkv_dim,
                       0.0f));
        const cu_rope_args ra = {x->qkv,     x->qkv_dim, d_pos,        d_slot,
                                 x->cos_tab, x->sin_tab, L->q_norm,    L->k_norm,
                                 kc,         vc,         n,            c->n_heads,
                                 c->n_kv_heads, hd,      c->rope_interleaved != 0, c->norm_eps};
        CU_TRY(cu_launch_rope_kv(x->st, &ra, dt));
        const cu_att_args aa = {x->att,  x->qkv,   x->qkv_dim, kc,        vc,
                                d_items, d_tables, ts,         n_items,   n_splits,
                                x->part, c->n_heads, c->n_kv_heads, hd, bs};
        CU_TRY(cu_launch_attention(x->st, &aa, dt));
        CU_TRY(cu_gemm(x->blas, dt, x->x, D, x->att, x->q_dim, L->wo, n, x->q_dim, D, 1.0f));

        CU_TRY(cu_launch_rmsnorm(x->st, x->xb, dt, x->x, NULL, NULL, L->ffn_norm, n, D,
                                 c->norm_eps));
        CU_TRY(cu_gemm(x->blas, dt, x->gu, 2 * H, x->xb, D, L->wgu, n, D, 2 * H, 0.0f));
        CU_TRY(cu_launch_swiglu(x->st, x->act, dt, x->gu, n, H));
        CU_TRY(cu_gemm(x->blas, dt, x->x, D, x->act, H, L->wdown, n, H, D, 1.0f));
    }

    if (n_want > 0) {
        CU_TRY(cu_launch_rmsnorm(x->st, x->xl, dt, x->x, NULL, d_lm, x->out_norm, n_want, D,
                                 c->norm_eps));
        CU_TRY(cu_gemm(x->blas, dt, x->logits_d, V, x->xl, D, x->lm_head, n_want, D, V, 0.0f));
        CU_CHECK(cudaMemcpyAsync(x->logits_h, x->logits_d, (size_t)n_want * V * 4,
                                 cudaMemcpyDeviceToHost, x->st));
    }
    /* Always: meta_h is rewritten by the next call, logits_h read below. */
    CU_CHECK(cudaStreamSynchronize(x->st));
    for (int r = 0; r < n_want; r++)
        memcpy(logits + (size_t)x->lm_seq[r] * V, x->logits_h + (size_t)r * V,
               (size_t)V * sizeof(float));
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
    const int dtype = cu_backend_get_dtype();
    const char *dev_env = getenv("NI_CUDA_DEVICE");
    const int dev = dev_env ? atoi(dev_env) : 0;
    if (dtype < 0 || dev < 0 || dev >= cu_device_count() || !(util > 0 && util <= 1))
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: bad device, dtype or memory fraction");
    eng_backend_config big = *cf;
    big.n_blocks = (m->cfg.max_seq_len + cf->block_size - 1) / cf->block_size; /* max_pos bound */
    cu_ctx t;
    memset(&t, 0, sizeof t);
    ctx_derive(&t, m, &big, dtype, dev);
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
    "cuda", cu_init, cu_forward, cu_copy_block, cu_free, cu_kv_blocks,
};
