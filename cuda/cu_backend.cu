/*
 * cu_backend.cu - eng_backend_cuda: the forward pass of engine/backend/backend.h on
 * one GPU (LLaMA 2/3, SmolLM2, qwen3), BF16 or FP32 (see cu.h), optionally
 * with int8 projection weights, plus a fused device sampler.
 *
 * Files: this one runs a context (forward, decode graphs, sample,
 * copy_block, the profile); cu_init.cu makes and frees it (settings, sizes,
 * allocations, weight upload, the KV-capacity planner, free); the context
 * (cu_ctx) is declared in cu_internal.h. Memory: see cu_init.cu (every
 * device allocation is made by init; forward and sample allocate nothing).
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
#include <string.h>

#include "cu_internal.h"

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
    int max_nq;               /* most query tokens of any attention item */
    const int32_t *lm_rows;   /* [n_lm] rows of x wanting logits, or NULL: rows 0..n_lm-1 */
    int n_lm;
    int persist;              /* the layers in the persistent kernel (use_persist) */
    int att_fine;             /* decode attention may take fine key chunks (att_fine) */
} cu_fwd;

/* y = a W^T + beta y through cuBLAS, or the int8 path when scale != NULL. */
static int mm(cu_ctx *x, float *y, int ldy, const void *a, int lda, const void *w,
              const float *scale, int n, int in, int out, float beta) {
    if (!scale) return cu_gemm(x->blas, x->dtype, y, ldy, a, lda, w, n, in, out, beta);
    return cu_gemm_q8(x->blas, x->st, x->dtype, y, ldy, a, lda, (const int8_t *)w, scale, n, in,
                      out, beta, x->deq, CU_DEQ_BYTES, x->qtmp);
}

/* profile: an event after the launches of phase ph. */
static int mark(cu_ctx *x, int ph) {
    if (!x->prof) return 0;
    if (ph == CU_PH_START) x->n_ev = 0;
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

/* Names of the profile phases (enum CU_PH_*, cu_internal.h). */
static const char *const k_phase[CU_PH_N] = {"embed",     "rmsnorm",  "qkv gemm", "rope+kv",
                                             "attention", "wo gemm",  "gu gemm",  "swiglu",
                                             "down gemm", "final norm + lm head"};

void cu_prof_print(const cu_ctx *x) {
    for (int k = 0; k < 2; k++) {
        if (!x->prof_steps[k]) continue;
        double tot = 0;
        for (int p = 0; p < CU_PH_N; p++) tot += x->ph_ms[k][p];
        fprintf(stderr, "cuda profile, %s steps: %lld, %.3f ms/step of device time\n",
                k ? "general" : "decode", x->prof_steps[k], tot / x->prof_steps[k]);
        for (int p = 0; p < CU_PH_N; p++)
            fprintf(stderr, "  %-22s %8.1f us/step %5.1f%%\n", k_phase[p],
                    1e3 * x->ph_ms[k][p] / x->prof_steps[k], 100.0 * x->ph_ms[k][p] / tot);
    }
}

/* k_gemv for this projection? Only decode-sized batches of the BF16 path
 * (x->gemv), and shapes cu_gemv_ok takes. */
static int use_gemv(const cu_ctx *x, int n, int in, int out, const void *w, const void *in_x,
                    int ldx) {
    return x->gemv && n <= CU_GEMV_BACKEND_ROWS && cu_gemv_ok(n, in, out, w, in_x, ldx);
}

/* y = rmsnorm(xf rows) W^T (FP32 y, ldy), fused (k_gemv) or rmsnorm into xb + mm. */
static int norm_proj(cu_ctx *x, float *y, int ldy, const int32_t *rows, const float *norm_w,
                     const void *w, const float *scale, int n, int out, int ph_norm) {
    const int D = x->c.dim;
    if (!scale && use_gemv(x, n, D, out, w, x->x, D)) {
        const cu_gemv_args g = {(const cu_bf16 *)w, n, D, out, NULL, x->x, rows, norm_w,
                                x->c.norm_eps, D, y, ldy, 0, 0, x->pdl, 0, {}};
        return cu_launch_gemv(x->st, &g, x->n_sm);
    }
    void *xin = rows ? x->xl : x->xb;
    CU_TRY(cu_launch_rmsnorm(x->st, xin, x->dtype, x->x, NULL, rows, norm_w, n, D,
                             x->c.norm_eps));
    CU_TRY(mark(x, ph_norm));
    return mm(x, y, ldy, xin, D, w, scale, n, D, out, 0.0f);
}

/* x += a W^T for a T [n][in] input a (the residual add fused). */
static int res_proj(cu_ctx *x, const void *a, int in, const void *w, const float *scale, int n) {
    const int D = x->c.dim;
    if (!scale && use_gemv(x, n, in, D, w, a, in)) {
        const cu_gemv_args g = {(const cu_bf16 *)w, n, in, D, a, NULL, NULL, NULL, 0.0f,
                                in, x->x, D, 1, 0, x->pdl, 0, {}};
        return cu_launch_gemv(x->st, &g, x->n_sm);
    }
    return mm(x, x->x, D, a, in, w, scale, n, in, D, 1.0f);
}

/* The persistent decode kernel for a forward of n tokens in n_items
 * attention items with max_ctx keys at most? One sequence, one token (the
 * bucket-1 graph, or a one-token general step), a context of at most
 * CU_PS_MAX_CTX keys. */
static int use_persist(const cu_ctx *x, int n, int n_items, int max_nq, int max_ctx) {
    return x->persist && n == 1 && n_items == 1 && max_nq == 1 && max_ctx <= CU_PS_MAX_CTX;
}

/* Whether the decode attention of a forward with n_items items, n_splits
 * splits and max_ctx keys at most takes the fine key chunks: allowed
 * (att_lat), a decode batch, and every item one fine chunk per warp
 * (cu_att_decode_fine_keys; longer contexts are faster coarse). */
static int att_fine(const cu_ctx *x, int n_items, int n_splits, int max_nq, int max_ctx) {
    if (!x->att_lat || max_nq != 1) return 0;
    cu_att_args a = {};
    a.k_cache = a.v_cache = x->kv; /* every layer's plane is 16-byte aligned like it */
    a.n_items = n_items;
    a.n_splits = n_splits;
    a.n_heads = x->c.n_heads;
    a.n_kv = x->c.n_kv_heads;
    a.hd = x->c.head_dim;
    a.max_nq = 1;
    a.kv_fp8 = x->kv_fp8;
    return max_ctx <= cu_att_decode_fine_keys(&a, x->dtype);
}

/* Every layer of a use_persist forward in one cooperative launch. */
static int enqueue_persist(cu_ctx *x, const cu_fwd *f) {
    const mdl_config *c = &x->c;
    cu_persist_args p = {};
    p.layers = x->ps_layers;
    p.n_layers = c->n_layers;
    p.dim = c->dim;
    p.hidden = c->hidden_dim;
    p.n_heads = c->n_heads;
    p.n_kv = c->n_kv_heads;
    p.hd = c->head_dim;
    p.interleaved = c->rope_interleaved != 0;
    p.eps = c->norm_eps;
    p.x = x->x;
    p.qkv = x->qkv;
    p.att = x->att;
    p.act = x->act;
    p.part = x->part;
    p.pos = f->pos;
    p.slot = f->slot;
    p.items = f->items;
    p.tables = f->tables;
    p.tbl_stride = f->ts;
    p.n_splits = f->n_splits;
    p.block_size = x->block_size;
    /* coarse chunks: up to 16 key tiles (512 keys, two chunks per warp) one
     * split, no combine phase; fine chunks: splits of 2 tiles (one chunk per
     * warp), spread over the grid, and the combine. A forced split factor
     * (tests) splits from one chunk per warp on. */
    p.fine = x->att_lat;
    p.min_tiles = x->force_splits > 0 || p.fine ? 0 : CU_PS_MAX_CTX / CU_ATT_TILE;
    p.cos_tab = x->cos_tab;
    p.sin_tab = x->sin_tab;
    p.bar = x->ps_bar;
    return cu_launch_persist(x->st, &p, x->ps_grid);
}

/* Enqueues embed .. LM head (logits_d rows 0..n_lm-1); no host work, no
 * synchronization, so it can be captured into a graph. With x->gemv and
 * n <= CU_GEMV_BACKEND_ROWS the RMSNorms and the SwiGLU run inside the
 * projections' k_gemv launches (the profile then books them under the
 * projection's phase). */
static int enqueue_layers(cu_ctx *x, const cu_fwd *f) {
    const mdl_config *c = &x->c;
    const int n = f->n, D = c->dim, hd = c->head_dim, H = c->hidden_dim;
    const int V = c->vocab_size, bs = x->block_size, dt = x->dtype;
    CU_TRY(mark(x, CU_PH_START));
    CU_TRY(cu_launch_embed(x->st, x->x, x->tok_embd, dt, f->tok, n, D));
    CU_TRY(mark(x, CU_PH_EMBED));
    if (f->persist) CU_TRY(enqueue_persist(x, f)); /* never profiled: no marks */
    for (int l = 0; l < c->n_layers && !f->persist; l++) {
        const cu_layer_w *L = &x->layers[l];
        char *kc = (char *)x->kv + (size_t)(2 * l) * x->plane_bytes;
        char *vc = kc + x->plane_bytes;

        const cu_rope_args ra = {x->qkv,     x->qkv_dim, f->pos,       f->slot,
                                 x->cos_tab, x->sin_tab, L->q_norm,    L->k_norm,
                                 kc,         vc,         n,            c->n_heads,
                                 c->n_kv_heads, hd,      c->rope_interleaved != 0, c->norm_eps,
                                 x->pdl,     x->kv_fp8};
        if (x->fuse_rope && !L->s_qkv && !L->q_norm &&
            use_gemv(x, n, D, x->qkv_dim, L->wqkv, x->x, D)) {
            /* RMSNorm + QKV + RoPE + KV store in one launch */
            const cu_gemv_args g = {(const cu_bf16 *)L->wqkv, n, D, x->qkv_dim, NULL, x->x,
                                    NULL, L->attn_norm, c->norm_eps, D, x->qkv, x->qkv_dim,
                                    0, 0, x->pdl, 1, ra};
            CU_TRY(cu_launch_gemv(x->st, &g, x->n_sm));
            CU_TRY(mark(x, CU_PH_QKV));
        } else {
            CU_TRY(norm_proj(x, x->qkv, x->qkv_dim, NULL, L->attn_norm, L->wqkv, L->s_qkv, n,
                             x->qkv_dim, CU_PH_NORM));
            CU_TRY(mark(x, CU_PH_QKV));
            CU_TRY(cu_launch_rope_kv(x->st, &ra, dt));
            CU_TRY(mark(x, CU_PH_ROPE));
        }
        const cu_att_args aa = {x->att,    x->qkv,    x->qkv_dim, kc,          vc,
                                f->items,  f->tables, f->ts,      f->n_items,  f->n_splits,
                                x->part,   c->n_heads, c->n_kv_heads, hd,      bs,
                                f->max_nq, x->att_kernel, x->pdl, x->kv_fp8, 0,
                                !f->att_fine, x->att_stage};
        CU_TRY(cu_launch_attention(x->st, &aa, dt));
        CU_TRY(mark(x, CU_PH_ATT));
        CU_TRY(res_proj(x, x->att, x->q_dim, L->wo, L->s_o, n));
        CU_TRY(mark(x, CU_PH_WO));

        if (!L->s_gu && use_gemv(x, n, D, H, L->wgu, x->x, D)) {
            const cu_gemv_args g = {(const cu_bf16 *)L->wgu, n, D, H, NULL, x->x, NULL,
                                    L->ffn_norm, c->norm_eps, D, x->act, H, 0, 1, x->pdl, 0, {}};
            CU_TRY(cu_launch_gemv(x->st, &g, x->n_sm));
            CU_TRY(mark(x, CU_PH_GU));
        } else {
            CU_TRY(norm_proj(x, x->gu, 2 * H, NULL, L->ffn_norm, L->wgu, L->s_gu, n, 2 * H,
                             CU_PH_NORM));
            CU_TRY(mark(x, CU_PH_GU));
            CU_TRY(cu_launch_swiglu(x->st, x->act, dt, x->gu, n, H));
            CU_TRY(mark(x, CU_PH_SWIGLU));
        }
        CU_TRY(res_proj(x, x->act, H, L->wdown, L->s_down, n));
        CU_TRY(mark(x, CU_PH_DOWN));
    }
    if (f->n_lm > 0) {
        CU_TRY(norm_proj(x, x->logits_d, V, f->lm_rows, x->out_norm, x->lm_head, x->lm_scale,
                         f->n_lm, V, CU_PH_LM));
        CU_TRY(mark(x, CU_PH_LM));
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
    int max_ctx = 0, max_nq = 0;
    const int n_items =
        cu_att_plan(items, b->n_seqs, b->seq_start, b->pos0, G, &max_ctx, &max_nq);
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
                      max_nq,
                      x->meta_d + off_lm,
                      n_want,
                      use_persist(x, n, n_items, max_nq, max_ctx),
                      att_fine(x, n_items, n_splits, max_nq, max_ctx)};
    x->prof_kind = 1;
    CU_TRY(enqueue_layers(x, &f));
    x->stats.general_steps++;
    x->stats.persist_steps += f.persist;
    return finish_forward(x, b, logits, n_want);
}

/* Decode bucket bi over the fixed decode metadata layout of meta_d:
 * tok [dec_cap] | pos [dec_cap] | slot [dec_cap] | items [4*dec_cap] |
 * tables [dec_cap][tbl_cap]; logits rows = batch rows. ps: through the
 * persistent kernel (bucket 1 only); fine: attention with fine key chunks. */
static int enqueue_decode(cu_ctx *x, int bi, int ps, int fine) {
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
                      1,
                      NULL,
                      B,
                      ps,
                      fine};
    return enqueue_layers(x, &f);
}

/* Captures bucket bi's graph (ps: the persistent one of bucket 1; fine: the
 * one with fine attention chunks) into *ge (thread-local capture mode: only
 * this thread's unsafe calls would invalidate it; the launchers make none). */
static int capture_decode(cu_ctx *x, int bi, int ps, int fine, cudaGraphExec_t *ge) {
    cudaGraph_t g = NULL;
    CU_CHECK(cudaStreamBeginCapture(x->st, cudaStreamCaptureModeThreadLocal));
    int rc = enqueue_decode(x, bi, ps, fine);
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
    const cudaError_t ei = cudaGraphInstantiate(ge, g, 0);
    cudaGraphDestroy(g);
    if (ei != cudaSuccess) *ge = NULL;
    CU_CHECK(ei);
    x->stats.graphs_captured++;
    x->stats.graphs_fine += fine;
    return 0;
}

/* Pure decode batch (n_tokens == n_seqs): padded to its bucket, replayed
 * from the bucket's graph (or enqueued eagerly in CU_GRAPHS_EAGER). */
static int forward_decode(cu_ctx *x, const eng_batch *b, float *logits) {
    const int n = b->n_seqs, bs = x->block_size, dc = x->dec_cap;
    int bi = 0;
    while (x->bucket[bi] < n) bi++;
    const int B = x->bucket[bi];
    int32_t *mh = x->meta_h;
    int32_t *tok = mh, *pos = mh + dc, *slot = mh + 2 * dc;
    cu_att_item *items = (cu_att_item *)(mh + 3 * dc);
    int32_t *tables = mh + 7 * dc; /* compact [n][ts] here, [n][tbl_cap] on the device */
    int ts = 1, max_ctx = 1;
    for (int s = 0; s < n; s++) {
        const int need = b->pos0[s] / bs + 1;
        if (need > ts) ts = need;
        if (b->pos0[s] + 1 > max_ctx) max_ctx = b->pos0[s] + 1;
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
    const int ps = use_persist(x, B, B, 1, b->pos0[0] + 1);
    const int fine = !ps && att_fine(x, B, x->bucket_splits[bi], 1, max_ctx);
    if (x->graph_mode == CU_GRAPHS_ON) {
        cudaGraphExec_t *ge = ps ? &x->gexec_ps : fine ? &x->gexec_fine[bi] : &x->gexec[bi];
        if (!*ge) CU_TRY(capture_decode(x, bi, ps, fine, ge));
        CU_CHECK(cudaGraphLaunch(*ge, x->st));
        x->stats.graph_launches++;
    } else {
        CU_TRY(enqueue_decode(x, bi, ps, fine));
    }
    x->stats.decode_steps++;
    x->stats.persist_steps += ps;
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
    if (x->graph_mode != CU_GRAPHS_OFF && b->n_tokens == b->n_seqs)
        return forward_decode(x, b, logits);
    return forward_general(x, b, logits);
}

/* The groups of one sample call: packs the jobs (groups when they exceed the staging
 * buffers), one launch and one copy back per group. */
static int sample_groups(cu_ctx *x, const eng_sample_row *rows, int n_rows, smp_result *out) {
    const int V = x->c.vocab_size;
    for (int done = 0; done < n_rows;) {
        int np = 0;
        size_t ne = 0;
        CU_TRY(cu_sample_pack(rows + done, n_rows - done, V, x->row_of_seq, x->last_n_seqs,
                              x->smp_consumers, x->smp_rows_h, x->smp_cap, x->smp_ents_h,
                              x->smp_ent_cap, CU_SMP_SCRATCH, &np, &ne));
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
    return 0;
}

/* Uploads the nm packed mask slots (one copy) and masks their logits rows in place. */
static int enqueue_masks(cu_ctx *x, int nm) {
    const int V = x->c.vocab_size;
    CU_CHECK(cudaMemcpyAsync(x->smp_mask_d, x->smp_mask_h, (size_t)nm * CU_SMP_MASK_STRIDE(V) * 4,
                             cudaMemcpyHostToDevice, x->st));
    return cu_launch_mask(x->st, x->logits_d, V, x->smp_mask_d, nm);
}

/* eng_backend.sample: the grammar masks of the call first (one slot per masked sequence,
 * applied to the logits rows in place before any group), then the groups. */
static int cu_sample(void *vctx, const eng_sample_row *rows, int n_rows, smp_result *out) {
    cu_ctx *x = (cu_ctx *)vctx;
    if (!x || n_rows < 0 || (n_rows > 0 && (!rows || !out))) return NI_EINVAL;
    if (n_rows == 0) return 0;
    CU_CHECK(cudaSetDevice(x->dev));
    int nm = 0;
    CU_TRY(cu_sample_pack_masks(rows, n_rows, x->c.vocab_size, x->row_of_seq, x->last_n_seqs,
                                x->smp_consumers, x->smp_mask_h, x->smp_cap, &nm));
    int rc = nm ? enqueue_masks(x, nm) : 0;
    if (!rc) rc = sample_groups(x, rows, n_rows, out);
    if (rc && nm) /* the mask copy may still read smp_mask_h: done before the next call packs */
        (void)cudaStreamSynchronize(x->st);
    if (rc) return rc;
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
    const size_t block_bytes = (size_t)x->block_size * x->kv_dim * x->kv_esz;
    return cu_launch_copy_block(x->st, x->kv, 2 * x->c.n_layers, x->plane_bytes, block_bytes, src,
                                dst);
}

/* The vtable, member by member: the optional members not named here stay
 * NULL (a constant expression, so eng_backend_cuda is initialised statically). */
static constexpr eng_backend cu_vtable() {
    eng_backend b{};
    b.name = "cuda";
    b.init = cu_backend_init;
    b.forward = cu_forward;
    b.copy_block = cu_copy_block;
    b.free = cu_backend_free;
    b.kv_blocks_for_memory = cu_backend_kv_blocks;
    b.sample = cu_sample;
    b.sample_masks = 1;
    return b;
}

extern "C" const eng_backend eng_backend_cuda = cu_vtable();
