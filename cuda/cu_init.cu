/*
 * cu_init.cu - the life cycle of an eng_backend_cuda context (cu_ctx,
 * cu_internal.h): settings (eng_backend_config -> cu_settings), model
 * checks, derived sizes, every allocation, the weight upload, the
 * KV-capacity planner (kv_blocks_for_memory) and free. The forward pass,
 * the decode graphs and sample are in cu_backend.cu.
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
 *            in T (the CPU backend's layout), or in E4M3 (one byte, scale
 *            1.0) with kv_dtype FP8, zeroed at init; the planner sizes blocks
 *            with the same element size (FP8: twice the blocks of BF16).
 *   work     one cudaMalloc: activations sized by max_batch_tokens (T) and
 *            max_seqs (S), the split-K attention workspace, the cuBLAS
 *            workspace, the batch metadata, the sampler's buffers (jobs,
 *            sparse entries, results, scratch rows, grammar mask slots
 *            [max_seqs][1 + vocab/32]) and, with int8, the dequantization
 *            scratch.
 *   host     pinned: batch metadata (tokens, positions, cache slots,
 *            attention items, logits rows, block tables; packed per call and
 *            sent with one copy), the logits of the rows that want them and
 *            the sampler's jobs, grammar masks and results.
 */
#include <stdlib.h>
#include <string.h>

#include "cu_internal.h"
extern "C" {
#include "engine/backend/tp.h"
}

/* cuBLAS workspace (the size NVIDIA recommends for Hopper). */
#define BLAS_WS_BYTES ((size_t)32 << 20)
/* Weight upload staging buffer (FP32 floats). */
#define STAGE_FLOATS ((size_t)16 << 20)

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

void cu_backend_free(void *vctx) {
    cu_ctx *x = (cu_ctx *)vctx;
    if (!x) return;
    cudaSetDevice(x->dev);
    if (x->st) cudaStreamSynchronize(x->st);
    if (x->prof) cu_prof_print(x);
    for (int i = 0; x->ev && i < x->ev_cap; i++)
        if (x->ev[i]) cudaEventDestroy(x->ev[i]);
    free(x->ev);
    free(x->ev_ph);
    for (int i = 0; i < CU_MAX_BUCKETS; i++) {
        if (x->gexec[i]) cudaGraphExecDestroy(x->gexec[i]);
        if (x->gexec_fine[i]) cudaGraphExecDestroy(x->gexec_fine[i]);
    }
    if (x->gexec_ps) cudaGraphExecDestroy(x->gexec_ps);
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
    cudaFreeHost(x->smp_mask_h);
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
    x->ps_layers = (cu_persist_layer *)take(b, (size_t)c->n_layers * sizeof(cu_persist_layer));
    x->ps_bar = (unsigned *)take(b, 2 * sizeof(unsigned));
    x->blas_ws = take(b, BLAS_WS_BYTES);
    x->meta_d = (int32_t *)take(b, x->meta_cap * 4);
    x->deq = x->quant ? take(b, CU_DEQ_BYTES) : NULL;
    x->qtmp = x->quant ? (float *)take(b, T * D * 4) : NULL;
    x->smp_rows_d = (cu_smp_row *)take(b, (size_t)x->smp_cap * sizeof(cu_smp_row));
    x->smp_ents_d = (cu_smp_ent *)take(b, x->smp_ent_cap * sizeof(cu_smp_ent));
    x->smp_out_d = (cu_smp_out *)take(b, (size_t)x->smp_cap * sizeof(cu_smp_out));
    x->smp_mask_d =
        (uint32_t *)take(b, (size_t)x->smp_cap * CU_SMP_MASK_STRIDE(c->vocab_size) * 4);
    x->smp_scratch = (float *)take(b, (size_t)CU_SMP_SCRATCH * c->vocab_size * 4);
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

/* The persistent decode kernel's layer table and grid; x->persist = 0 when
 * cu_persist_grid does not take the model or device (the per-op path then
 * runs every step). */
static int persist_setup(cu_ctx *x) {
    const mdl_config *c = &x->c;
    cu_persist_args p = {};
    p.n_layers = c->n_layers;
    p.dim = c->dim;
    p.hidden = c->hidden_dim;
    p.n_heads = c->n_heads;
    p.n_kv = c->n_kv_heads;
    p.hd = c->head_dim;
    p.fine = x->att_lat; /* enqueue_persist's choice */
    const int rc = cu_persist_grid(&p, x->layers, x->n_sm, &x->ps_grid);
    if (rc == NI_EUNSUPPORTED) {
        x->persist = 0;
        return 0;
    }
    if (rc) return rc;
    cu_persist_layer *t = (cu_persist_layer *)calloc((size_t)c->n_layers, sizeof(*t));
    if (!t) return NI_ENOMEM;
    for (int l = 0; l < c->n_layers; l++) {
        const cu_layer_w *L = &x->layers[l];
        char *kc = (char *)x->kv + (size_t)(2 * l) * x->plane_bytes;
        t[l] = (cu_persist_layer){(const cu_bf16 *)L->wqkv, (const cu_bf16 *)L->wo,
                                  (const cu_bf16 *)L->wgu,  (const cu_bf16 *)L->wdown,
                                  L->attn_norm,             L->ffn_norm,
                                  kc,                       kc + x->plane_bytes};
    }
    const cudaError_t e =
        cudaMemcpy(x->ps_layers, t, (size_t)c->n_layers * sizeof(*t), cudaMemcpyHostToDevice);
    free(t);
    CU_CHECK(e);
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
    CU_TRY(cu_gemv_prepare());

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
    if (!mul_ok((size_t)x->n_blocks * x->block_size, (size_t)x->kv_dim * x->kv_esz,
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
    if (x->persist && (rc = persist_setup(x)) != 0) return rc;

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
    CU_CHECK(cudaHostAlloc((void **)&x->smp_mask_h,
                           (size_t)x->smp_cap * CU_SMP_MASK_STRIDE(c->vocab_size) * 4,
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
        if (!x->ev || !x->ev_ph)
            return ni_fail(err, errlen, NI_ENOMEM, "cuda backend: out of memory");
        for (int i = 0; i < x->ev_cap; i++) CU_CHECK(cudaEventCreate(&x->ev[i]));
    }
    x->stats.graph_mode = x->graph_mode;
    x->stats.quant = x->quant;
    x->stats.persist = x->persist;
    CU_CHECK(cudaDeviceSynchronize());
    return 0;
}

/* The settings of one context, validated from eng_backend_config; shared by
 * init and the KV-capacity planner. */
typedef struct cu_settings {
    int dtype;      /* enum cu_dtype */
    int kv_fp8;     /* 1: E4M3 KV cache (kv_dtype FP8) */
    int dev;        /* device ordinal */
    int quant;      /* 1: int8 weights */
    int graph_mode; /* GRAPHS_* */
    int splits;     /* forced attention split-K factor, 0 automatic */
    int prof;       /* per-phase profile */
    int gemv;       /* fused GEMV kernels for decode-sized batches */
    int pdl;        /* programmatic dependent launch */
    int fuse_rope;  /* RoPE + KV store in the QKV GEMV epilogue */
    int persist;    /* the persistent decode kernel for one-sequence steps */
    int att_lat;    /* fine key chunks in decode attention (not cu_att_args.no_lat) */
    int att_stage;  /* decode attention's coarse chunks through shared memory */
    cu_att_kernel att_kernel; /* attention kernel selection */
} cu_settings;

/* Fills *s from cf; NI_EINVAL / NI_EUNSUPPORTED with a message naming the
 * setting when one is out of range or the device does not exist. */
static int settings(const eng_backend_config *cf, cu_settings *s, char *err, size_t errlen) {
    if (cf->tp > 1)
        return ni_fail(err, errlen, NI_EUNSUPPORTED,
                       "tensor-parallel-size %d: " ENG_TP_NO_CUDA
                       " (--device cpu runs the sharded CPU path)",
                       cf->tp);
    s->dtype = cu_dtype_of(cf->dtype);
    if (s->dtype < 0)
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: dtype %d is not bf16 or fp32",
                       (int)cf->dtype);
    if (cf->kv_dtype != ENG_KV_AUTO && cf->kv_dtype != ENG_KV_BF16 && cf->kv_dtype != ENG_KV_FP8)
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: kv_dtype %d is not auto, bf16 or fp8",
                       (int)cf->kv_dtype);
    if (cf->kv_dtype != ENG_KV_AUTO && s->dtype != CU_DTYPE_BF16)
        return ni_fail(err, errlen, NI_EUNSUPPORTED,
                       "kv-cache-dtype %s: the CUDA backend's %s compute keeps its KV cache in "
                       "%s (bf16 and fp8 caches need --dtype bf16)",
                       eng_kv_dtype_name(cf->kv_dtype), cu_dtype_name(s->dtype),
                       cu_dtype_name(s->dtype));
    s->kv_fp8 = cf->kv_dtype == ENG_KV_FP8;
    if (cf->quant != 0 && cf->quant != 1)
        return ni_fail(err, errlen, NI_EUNSUPPORTED,
                       "cuda backend: weight format %d unsupported (int8 or none)", cf->quant);
    s->quant = cf->quant;
    switch (cf->graphs) {
    case ENG_GRAPHS_DEFAULT:
    case ENG_GRAPHS_ON: s->graph_mode = CU_GRAPHS_ON; break;
    case ENG_GRAPHS_OFF: s->graph_mode = CU_GRAPHS_OFF; break;
    case ENG_GRAPHS_EAGER: s->graph_mode = CU_GRAPHS_EAGER; break;
    default:
        return ni_fail(err, errlen, NI_EINVAL,
                       "cuda backend: graph mode %d is not default, on, off or eager",
                       (int)cf->graphs);
    }
#ifdef NI_DEBUG
    if (s->graph_mode == CU_GRAPHS_ON)
        s->graph_mode = CU_GRAPHS_EAGER; /* CU_LAUNCH_CHECK synchronizes */
#endif
    s->prof = cf->profile != 0;
    if (s->prof && s->graph_mode == CU_GRAPHS_ON) s->graph_mode = CU_GRAPHS_EAGER;
    if (cf->att_splits < 0)
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: att_splits %d < 0", cf->att_splits);
    s->splits = cf->att_splits;
    s->gemv = !cf->no_gemv;
    s->pdl = !cf->no_pdl;
    s->fuse_rope = !cf->no_fuse_rope;
    s->persist = cf->persist != 0;
    s->att_lat = !cf->no_att_lat;
    s->att_stage = cf->att_stage != 0;
    if (cf->att_kernel < CU_ATT_AUTO || cf->att_kernel > CU_ATT_TC)
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: att_kernel %d is not 0, 1 or 2",
                       cf->att_kernel);
    s->att_kernel = (cu_att_kernel)cf->att_kernel;
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
    x->kv_fp8 = s->kv_fp8;
    x->kv_esz = s->kv_fp8 ? cu_dtype_size(CU_DTYPE_FP8) : x->esz;
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
    x->part_slots = cu_att_part_slots(c->n_kv_heads, c->head_dim);
    x->force_splits = s->splits;
    x->att_kernel = s->att_kernel;
    x->meta_cap = 7 * (size_t)cf->max_batch_tokens + (size_t)cf->max_seqs +
                  (size_t)cf->max_seqs * (size_t)x->tbl_cap;
    x->quant = s->quant;
    x->graph_mode = s->graph_mode;
    x->prof = s->prof;
    x->gemv = s->gemv && s->dtype == CU_DTYPE_BF16 && !s->quant;
    x->pdl = s->pdl;
    x->att_lat = s->att_lat;
    x->att_stage = s->att_stage;
    x->fuse_rope = x->gemv && s->fuse_rope;
    /* decided for good by setup (cu_persist_grid) */
    x->persist = x->fuse_rope && s->persist && !s->kv_fp8 && !s->prof && !c->has_qk_norm;
    x->smp_cap = cf->max_seqs;
    x->smp_ent_cap = (size_t)c->vocab_size + 65536;
    x->dec_cap = cf->max_seqs < cf->max_batch_tokens ? cf->max_seqs : cf->max_batch_tokens;
    x->n_buckets = 0;
    for (int b = 1; b < x->dec_cap && x->n_buckets < CU_MAX_BUCKETS - 1; b *= 2)
        x->bucket[x->n_buckets++] = b;
    x->bucket[x->n_buckets++] = x->dec_cap;
}

int cu_backend_init(void **out, const mdl_model *m, const eng_backend_config *cf, char *err,
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
    const int hd = m->cfg.head_dim;
    if (set.att_kernel == CU_ATT_TC &&
        (set.dtype != CU_DTYPE_BF16 || (hd != 32 && hd != 64 && hd != 128)))
        return ni_fail(err, errlen, NI_EINVAL,
                       "cuda backend: att_kernel tc needs bf16 compute (a bf16 or fp8 KV cache) "
                       "and head_dim 32, 64 or 128 (got %s, %d)",
                       cu_dtype_name(set.dtype), hd);

    cu_ctx *x = (cu_ctx *)calloc(1, sizeof(*x));
    if (!x) return ni_fail(err, errlen, NI_ENOMEM, "cuda backend: out of memory");
    ctx_derive(x, m, cf, &set);
    const mdl_config *c = &m->cfg;
    x->layers = (cu_layer_w *)calloc((size_t)c->n_layers, sizeof(cu_layer_w));
    if (!x->layers) {
        cu_backend_free(x);
        return ni_fail(err, errlen, NI_ENOMEM, "cuda backend: out of memory");
    }
    rc = setup(x, m, err, errlen);
    if (rc) {
        if (err && errlen && !err[0])
            ni_fail(err, errlen, rc, "cuda backend: CUDA initialization failed (see stderr)");
        cu_backend_free(x);
        return rc;
    }
    *out = x;
    return 0;
}

/* KV capacity from GPU memory: what is left of util * total memory after the
 * memory other processes use, our weights, work buffers and a margin for
 * the CUDA context, cuBLAS and upload staging. */
int cu_backend_kv_blocks(const mdl_model *m, const eng_backend_config *cf, double util,
                         int *n_blocks, char *err, size_t errlen) {
    if (!m || !cf || !n_blocks || !(util > 0 && util <= 1))
        return ni_fail(err, errlen, NI_EINVAL, "cuda backend: bad argument or memory fraction");
    cu_settings set;
    const int rc = settings(cf, &set, err, errlen);
    if (rc) return rc;
    set.graph_mode = CU_GRAPHS_OFF;
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
    const double block_bytes = 2.0 * m->cfg.n_layers * cf->block_size * t.kv_dim * t.kv_esz;
    if (budget < block_bytes)
        return ni_fail(err, errlen, NI_ENOMEM,
                       "cuda backend: no GPU memory left for the KV cache (%.0f MiB free of "
                       "%.0f MiB, %.0f MiB needed for weights and buffers)",
                       free_b / 1048576.0, total_b / 1048576.0, need / 1048576.0);
    double nb = budget / block_bytes;
    *n_blocks = nb > (double)(1 << 22) ? (1 << 22) : (int)nb;
    return 0;
}
