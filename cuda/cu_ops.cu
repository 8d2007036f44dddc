/*
 * cu_ops.cu - host-pointer wrappers around each launcher (see cu_ops.h).
 *
 * Design: every wrapper owns its device buffers through dbuf (freed on every
 * return path), runs on the legacy default stream with synchronous copies,
 * and converts between the host's FP32 and the kernel's T exactly as the
 * backend's buffers would hold them. Test-only code: it allocates freely.
 */
#include <stdlib.h>
#include <string.h>

#include "cu_internal.h"

extern "C" {
#include "cu_ops.h"
}

/* cu_op_att_decode_lat: the wrappers' cu_att_args.no_lat (tests and
 * benchmarks; not thread-safe). */
static int g_att_no_lat = 0;
/* cu_op_att_decode_stage: the wrappers' cu_att_args.stage. */
static int g_att_stage = 0;

namespace {

/* A device allocation freed when it goes out of scope. */
struct dbuf {
    void *p = nullptr;
    dbuf() = default;
    dbuf(const dbuf &) = delete;
    dbuf &operator=(const dbuf &) = delete;
    ~dbuf() {
        if (p) cudaFree(p);
    }
    int alloc(size_t bytes) {
        if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
            cudaGetLastError();
            p = nullptr;
            fprintf(stderr, "%s:%d: cudaMalloc(%zu) failed\n", __FILE__, __LINE__, bytes);
            return NI_ENOMEM;
        }
        return 0;
    }
    template <typename P> P *as() const { return (P *)p; }
};

/* d = host FP32 data (n floats) uploaded as FP32. */
int put_f32(dbuf &d, const float *h, size_t n) {
    CU_TRY(d.alloc(n * 4));
    if (n) CU_CHECK(cudaMemcpy(d.p, h, n * 4, cudaMemcpyHostToDevice));
    return 0;
}

/* d = host FP32 data (n floats) uploaded and converted to T. */
int put_t(dbuf &d, const float *h, size_t n, int dtype) {
    dbuf tmp;
    CU_TRY(put_f32(tmp, h, n));
    CU_TRY(d.alloc(n * cu_dtype_size(dtype)));
    CU_TRY(cu_launch_convert(0, d.p, dtype, tmp.as<float>(), n));
    CU_CHECK(cudaDeviceSynchronize());
    return 0;
}

/* The median of t[0..n) (sorted in place): benchmark timings. */
double median(double *t, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            const double sw = t[j];
            t[j] = t[j - 1];
            t[j - 1] = sw;
        }
    return t[n / 2];
}

int put_i32(dbuf &d, const int32_t *h, size_t n) {
    CU_TRY(d.alloc(n * 4));
    if (n) CU_CHECK(cudaMemcpy(d.p, h, n * 4, cudaMemcpyHostToDevice));
    return 0;
}

/* host FP32 out[n] = (float) of the T buffer d. */
int get_t(float *h, const dbuf &d, size_t n, int dtype) {
    dbuf tmp;
    CU_TRY(tmp.alloc(n * 4));
    CU_TRY(cu_launch_to_f32(0, tmp.as<float>(), d.p, dtype, n));
    CU_CHECK(cudaDeviceSynchronize());
    if (n) CU_CHECK(cudaMemcpy(h, tmp.p, n * 4, cudaMemcpyDeviceToHost));
    return 0;
}

int get_f32(float *h, const dbuf &d, size_t n) {
    CU_CHECK(cudaDeviceSynchronize());
    if (n) CU_CHECK(cudaMemcpy(h, d.p, n * 4, cudaMemcpyDeviceToHost));
    return 0;
}

int dtype_ok(int dtype) { return dtype == CU_DTYPE_BF16 || dtype == CU_DTYPE_FP32; }

} // namespace

extern "C" int cu_op_embed(float *out, const float *table, int vocab, const int32_t *tokens, int n,
                           int dim, int dtype) {
    if (!dtype_ok(dtype) || n < 0 || dim <= 0 || vocab <= 0) return NI_EINVAL;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab) return NI_EINVAL;
    dbuf dt, dtok, dout;
    CU_TRY(put_t(dt, table, (size_t)vocab * dim, dtype));
    CU_TRY(put_i32(dtok, tokens, (size_t)n));
    CU_TRY(dout.alloc((size_t)n * dim * 4));
    CU_TRY(cu_launch_embed(0, dout.as<float>(), dt.p, dtype, dtok.as<int32_t>(), n, dim));
    return get_f32(out, dout, (size_t)n * dim);
}

extern "C" int cu_op_rmsnorm(float *out, float *x, int n_x, const float *add, const int32_t *rows,
                             const float *w, int n, int dim, float eps, int dtype) {
    if (!dtype_ok(dtype) || n < 0 || dim <= 0 || n_x < (rows ? 1 : n)) return NI_EINVAL;
    for (int i = 0; rows && i < n; i++)
        if (rows[i] < 0 || rows[i] >= n_x) return NI_EINVAL;
    dbuf dx, dadd, drows, dw, dout;
    CU_TRY(put_f32(dx, x, (size_t)n_x * dim));
    if (add) CU_TRY(put_f32(dadd, add, (size_t)n * dim));
    if (rows) CU_TRY(put_i32(drows, rows, (size_t)n));
    CU_TRY(put_f32(dw, w, (size_t)dim));
    CU_TRY(dout.alloc((size_t)n * dim * cu_dtype_size(dtype)));
    CU_TRY(cu_launch_rmsnorm(0, dout.p, dtype, dx.as<float>(), dadd.as<float>(),
                             drows.as<int32_t>(), dw.as<float>(), n, dim, eps));
    CU_TRY(get_t(out, dout, (size_t)n * dim, dtype));
    return get_f32(x, dx, (size_t)n_x * dim);
}

extern "C" int cu_op_swiglu(float *out, const float *gate, const float *up, int n, int hidden,
                            int dtype) {
    if (!dtype_ok(dtype) || n < 0 || hidden <= 0) return NI_EINVAL;
    const size_t H = hidden;
    float *gu = (float *)malloc((size_t)n * 2 * H * 4 + 4);
    if (!gu) return NI_ENOMEM;
    for (int i = 0; i < n; i++) {
        memcpy(gu + (size_t)i * 2 * H, gate + (size_t)i * H, H * 4);
        memcpy(gu + (size_t)i * 2 * H + H, up + (size_t)i * H, H * 4);
    }
    dbuf dgu, dout;
    int rc = put_f32(dgu, gu, (size_t)n * 2 * H);
    free(gu);
    CU_TRY(rc);
    CU_TRY(dout.alloc((size_t)n * H * cu_dtype_size(dtype)));
    CU_TRY(cu_launch_swiglu(0, dout.p, dtype, dgu.as<float>(), n, hidden));
    return get_t(out, dout, (size_t)n * H, dtype);
}

extern "C" int cu_op_matmul(float *y, const float *x, const float *w, int n, int in, int out,
                            int accumulate, int dtype) {
    if (!dtype_ok(dtype) || n < 0 || in <= 0 || out <= 0) return NI_EINVAL;
    dbuf dx, dw, dy;
    CU_TRY(put_t(dx, x, (size_t)n * in, dtype));
    CU_TRY(put_t(dw, w, (size_t)out * in, dtype));
    CU_TRY(put_f32(dy, y, (size_t)n * out)); /* accumulate reads it; otherwise poison check */
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    const int rc = cu_gemm(h, dtype, dy.as<float>(), out, dx.p, in, dw.p, n, in, out,
                           accumulate ? 1.0f : 0.0f);
    cudaError_t e = cudaDeviceSynchronize();
    cublasDestroy(h);
    CU_TRY(rc);
    CU_CHECK(e);
    return get_f32(y, dy, (size_t)n * out);
}

/* The device cos/sin tables of positions [0, max_pos) (cu_rope_tables, as
 * the backend builds them). */
static int put_rope_tables(dbuf &dcos, dbuf &dsin, const mdl_config *c, const float *rope_freqs,
                           int max_pos) {
    float *cs = NULL, *sn = NULL;
    int rc = cu_rope_tables(c, rope_freqs, max_pos, &cs, &sn);
    const size_t n = (size_t)max_pos * (c->head_dim / 2);
    if (!rc) rc = put_f32(dcos, cs, n);
    if (!rc) rc = put_f32(dsin, sn, n);
    free(cs);
    free(sn);
    return rc;
}

/* q [n][qd] = the first qd floats of each row of the device rows d [n][ld]. */
static int get_q_rows(float *q, const dbuf &d, int n, int ld, int qd) {
    float *back = (float *)malloc((size_t)n * ld * 4 + 4);
    if (!back) return NI_ENOMEM;
    const int rc = get_f32(back, d, (size_t)n * ld);
    for (int i = 0; !rc && i < n; i++)
        memcpy(q + (size_t)i * qd, back + (size_t)i * ld, (size_t)qd * 4);
    free(back);
    return rc;
}

extern "C" int cu_op_rope_kv(float *q, const float *k, const float *v, const float *q_norm,
                             const float *k_norm, const mdl_config *c, const float *rope_freqs,
                             const int32_t *pos, const int32_t *slot, int n, float *k_cache,
                             float *v_cache, int n_slots, int dtype) {
    if ((!dtype_ok(dtype) && dtype != CU_DTYPE_FP8) || n < 0 || !c || c->head_dim <= 0 || c->head_dim % 2 ||
        c->n_heads <= 0 || c->n_kv_heads <= 0 || n_slots <= 0)
        return NI_EINVAL;
    const int hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    const int ld = qd + 2 * kvd;
    int max_pos = 1;
    for (int i = 0; i < n; i++) {
        if (pos[i] < 0 || slot[i] < 0 || slot[i] >= n_slots) return NI_EINVAL;
        if (pos[i] + 1 > max_pos) max_pos = pos[i] + 1;
    }
    float *qkv = (float *)malloc((size_t)n * ld * 4 + 4);
    if (!qkv) return NI_ENOMEM;
    for (int i = 0; i < n; i++) {
        memcpy(qkv + (size_t)i * ld, q + (size_t)i * qd, (size_t)qd * 4);
        memcpy(qkv + (size_t)i * ld + qd, k + (size_t)i * kvd, (size_t)kvd * 4);
        memcpy(qkv + (size_t)i * ld + qd + kvd, v + (size_t)i * kvd, (size_t)kvd * 4);
    }
    dbuf dqkv, dpos, dslot, dcos, dsin, dqn, dkn, dk, dv;
    int rc = put_f32(dqkv, qkv, (size_t)n * ld);
    free(qkv);
    CU_TRY(rc);
    CU_TRY(put_rope_tables(dcos, dsin, c, rope_freqs, max_pos));
    CU_TRY(put_i32(dpos, pos, (size_t)n));
    CU_TRY(put_i32(dslot, slot, (size_t)n));
    if (q_norm) CU_TRY(put_f32(dqn, q_norm, (size_t)hd));
    if (k_norm) CU_TRY(put_f32(dkn, k_norm, (size_t)hd));
    CU_TRY(put_t(dk, k_cache, (size_t)n_slots * kvd, dtype));
    CU_TRY(put_t(dv, v_cache, (size_t)n_slots * kvd, dtype));
    const cu_rope_args a = {dqkv.as<float>(), ld, dpos.as<int32_t>(), dslot.as<int32_t>(),
                            dcos.as<float>(), dsin.as<float>(), dqn.as<float>(), dkn.as<float>(),
                            dk.p, dv.p, n, c->n_heads, c->n_kv_heads, hd,
                            c->rope_interleaved != 0, c->norm_eps, 1,
                            dtype == CU_DTYPE_FP8};
    CU_TRY(cu_launch_rope_kv(0, &a, dtype));
    CU_TRY(get_t(k_cache, dk, (size_t)n_slots * kvd, dtype));
    CU_TRY(get_t(v_cache, dv, (size_t)n_slots * kvd, dtype));
    return get_q_rows(q, dqkv, n, ld, qd);
}

extern "C" int cu_op_attention(float *out, const float *q, const float *k_cache,
                               const float *v_cache, int n_blocks, int block_size, int n_seqs,
                               const int32_t *seq_start, const int32_t *pos0,
                               const int32_t *block_tables, int max_blocks, int n_heads, int n_kv,
                               int hd, int n_splits, int dtype, cu_att_kernel kernel) {
    if (kernel < CU_ATT_AUTO || kernel > CU_ATT_TC) return NI_EINVAL;
    /* CU_DTYPE_FP8: BF16 compute over E4M3 caches (the backend's fp8 mode) */
    const int kv_dt = dtype, kv_fp8 = dtype == CU_DTYPE_FP8;
    if (kv_fp8) dtype = CU_DTYPE_BF16;
    if (!dtype_ok(dtype) || n_blocks <= 0 || block_size <= 0 || n_seqs <= 0 || max_blocks <= 0 ||
        n_heads <= 0 || n_kv <= 0 || n_heads % n_kv || hd <= 0 || hd % 2 || n_splits < 0)
        return NI_EINVAL;
    const int n = seq_start[n_seqs], G = n_heads / n_kv;
    if (seq_start[0] != 0 || n <= 0) return NI_EINVAL;
    for (int s = 0; s < n_seqs; s++) {
        const int len = seq_start[s + 1] - seq_start[s];
        const long end = (long)pos0[s] + len;
        if (len <= 0 || pos0[s] < 0 || (end - 1) / block_size >= max_blocks) return NI_EINVAL;
        for (long j = 0; j <= (end - 1) / block_size; j++) {
            const int32_t bid = block_tables[(size_t)s * max_blocks + j];
            if (bid < 0 || bid >= n_blocks) return NI_EINVAL;
        }
    }
    cu_att_item *items = (cu_att_item *)malloc((size_t)n * sizeof(cu_att_item));
    if (!items) return NI_ENOMEM;
    int max_ctx = 0, max_nq = 0;
    const int n_items = cu_att_plan(items, n_seqs, seq_start, pos0, G, &max_ctx, &max_nq);
    int dev = 0, n_sm = 0;
    cudaGetDevice(&dev);
    if (cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
        free(items);
        CU_CHECK(cudaGetLastError());
        return NI_EIO;
    }
    const int slots = 1 << 16; /* the wrapper sizes its workspace to the call */
    const int splits =
        n_splits > 0 ? n_splits : cu_att_choose_splits(n_items, n_kv, max_ctx, n_sm, slots);
    const size_t n_slots = (size_t)n_blocks * block_size, kvd = (size_t)n_kv * hd;
    dbuf ditems, dtab, dq, dk, dv, dout, dpart;
    int rc = ditems.alloc((size_t)n_items * sizeof(cu_att_item));
    if (!rc && cudaMemcpy(ditems.p, items, (size_t)n_items * sizeof(cu_att_item),
                          cudaMemcpyHostToDevice) != cudaSuccess)
        rc = NI_EIO;
    free(items);
    CU_TRY(rc);
    CU_TRY(put_i32(dtab, block_tables, (size_t)n_seqs * max_blocks));
    CU_TRY(put_f32(dq, q, (size_t)n * n_heads * hd));
    CU_TRY(put_t(dk, k_cache, n_slots * kvd, kv_dt));
    CU_TRY(put_t(dv, v_cache, n_slots * kvd, kv_dt));
    CU_TRY(dout.alloc((size_t)n * n_heads * hd * cu_dtype_size(dtype)));
    CU_CHECK(cudaMemset(dout.p, 0xff, (size_t)n * n_heads * hd * cu_dtype_size(dtype))); /* NaN */
    if (splits > 1)
        CU_TRY(dpart.alloc((size_t)n_items * splits * cu_att_part_floats(n_kv, hd) * 4));
    const cu_att_args a = {dout.p, dq.as<float>(), n_heads * hd, dk.p, dv.p,
                           ditems.as<cu_att_item>(), dtab.as<int32_t>(), max_blocks, n_items,
                           splits, dpart.as<float>(), n_heads, n_kv, hd, block_size, max_nq,
                           kernel, 1, kv_fp8, 0, g_att_no_lat, g_att_stage};
    CU_TRY(cu_att_prepare());
    CU_TRY(cu_launch_attention(0, &a, dtype));
    return get_t(out, dout, (size_t)n * n_heads * hd, dtype);
}

/* Median device time (us) of iters cu_launch_attention calls after 3
 * untimed ones, each preceded (untimed) by a memset of flush_bytes of flush
 * when flush != NULL (evicts the KV from L2). */
static int time_attention(const cu_att_args *a, int dtype, int iters, void *flush,
                          size_t flush_bytes, double *us) {
    cudaEvent_t e0, e1;
    double t[1000];
    CU_CHECK(cudaEventCreate(&e0));
    if (cudaEventCreate(&e1) != cudaSuccess) {
        cudaEventDestroy(e0);
        CU_CHECK(cudaGetLastError());
        return NI_EIO;
    }
    int rc = 0;
    for (int it = -3; it < iters && !rc; it++) {
        if (flush && cudaMemsetAsync(flush, it & 0xff, flush_bytes, 0) != cudaSuccess) rc = NI_EIO;
        if (!rc && cudaEventRecord(e0, 0) != cudaSuccess) rc = NI_EIO;
        if (!rc) rc = cu_launch_attention(0, a, dtype);
        if (!rc && cudaEventRecord(e1, 0) != cudaSuccess) rc = NI_EIO;
        if (!rc && cudaEventSynchronize(e1) != cudaSuccess) rc = NI_EIO;
        float ms = 0;
        if (!rc && cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess) rc = NI_EIO;
        if (it >= 0) t[it] = ms * 1e3;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    CU_TRY(rc);
    *us = median(t, iters);
    return 0;
}

extern "C" int cu_op_attention_bench(int n_seqs, int ctx, int n_heads, int n_kv, int hd,
                                     int block_size, int split_ctx, int kernel, int dtype,
                                     int iters, double *us, int *splits_used) {
    const int kv_fp8 = dtype == CU_DTYPE_FP8; /* BF16 compute over an E4M3 cache */
    if (kv_fp8) dtype = CU_DTYPE_BF16;
    if (!dtype_ok(dtype) || n_seqs <= 0 || ctx <= 0 || n_kv <= 0 || n_heads % n_kv ||
        n_heads / n_kv > CU_ATT_ROWS || hd <= 0 || hd % 2 || hd > CU_ATT_MAX_HD ||
        block_size <= 0 || split_ctx < 0 || kernel < 0 || kernel > 1 || iters <= 0 ||
        iters > 1000 || !us || !splits_used)
        return NI_EINVAL;
    const int nb = (ctx + block_size - 1) / block_size, n_blocks = n_seqs * nb;
    const size_t kvd = (size_t)n_kv * hd, esz = cu_dtype_size(dtype);
    const size_t cache_bytes =
        (size_t)n_blocks * block_size * kvd * (kv_fp8 ? cu_dtype_size(CU_DTYPE_FP8) : esz);
    cu_att_item *items = (cu_att_item *)malloc((size_t)n_seqs * sizeof(cu_att_item));
    int32_t *tab = (int32_t *)malloc((size_t)n_seqs * nb * sizeof(int32_t));
    if (!items || !tab) {
        free(items);
        free(tab);
        return NI_ENOMEM;
    }
    for (int s = 0; s < n_seqs; s++) {
        items[s] = (cu_att_item){s, 1, ctx - 1, s};
        for (int b = 0; b < nb; b++) tab[(size_t)s * nb + b] = b * n_seqs + s; /* interleaved */
    }
    dbuf ditems, dtab, dq, dk, dv, dout, dpart, dflush;
    int rc = put_i32(ditems, (const int32_t *)items, (size_t)n_seqs * 4);
    if (!rc) rc = put_i32(dtab, tab, (size_t)n_seqs * nb);
    free(items);
    free(tab);
    CU_TRY(rc);
    /* constant data (0.0117.. everywhere): timing only, nothing depends on the values */
    CU_TRY(dq.alloc((size_t)n_seqs * n_heads * hd * 4));
    CU_CHECK(cudaMemset(dq.p, 0x3c, (size_t)n_seqs * n_heads * hd * 4));
    CU_TRY(dk.alloc(cache_bytes));
    CU_TRY(dv.alloc(cache_bytes));
    CU_CHECK(cudaMemset(dk.p, 0x3c, cache_bytes));
    CU_CHECK(cudaMemset(dv.p, 0x3c, cache_bytes));
    CU_TRY(dout.alloc((size_t)n_seqs * n_heads * hd * esz));
    int dev = 0, n_sm = 0;
    CU_CHECK(cudaGetDevice(&dev));
    CU_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    const int slots = cu_att_part_slots(n_kv, hd);
    int splits = cu_att_choose_splits(n_seqs, n_kv, split_ctx ? split_ctx : ctx, n_sm, slots);
    if ((long)splits * n_seqs > slots) splits = slots / n_seqs;
    if (splits < 1) splits = 1;
    *splits_used = splits;
    if (splits > 1) CU_TRY(dpart.alloc((size_t)n_seqs * splits * cu_att_part_floats(n_kv, hd) * 4));
    const size_t flush_bytes = (size_t)256 << 20; /* > L2: every launch reads the KV from HBM */
    CU_TRY(dflush.alloc(flush_bytes));
    CU_TRY(cu_att_prepare());
    cu_att_args a = {dout.p, dq.as<float>(), n_heads * hd, dk.p, dv.p,
                     ditems.as<cu_att_item>(), dtab.as<int32_t>(), nb, n_seqs,
                     splits, dpart.as<float>(), n_heads, n_kv, hd, block_size, 1,
                     CU_ATT_AUTO, 0, kv_fp8, 0, g_att_no_lat, g_att_stage};
    /* the backend's rule (att_fine): fine chunks only where they take one pass */
    if (ctx > cu_att_decode_fine_keys(&a, kv_fp8 ? CU_DTYPE_BF16 : dtype)) a.no_lat = 1;
    cu_att_decode_enable(kernel);
    rc = time_attention(&a, dtype, iters, dflush.p, flush_bytes, us);
    cu_att_decode_enable(1);
    return rc;
}

extern "C" int cu_op_attention_prefill_bench(int n_tok, int n_heads, int n_kv, int hd,
                                             cu_att_kernel kernel, int kv_fp8, int iters,
                                             double *us) {
    if (n_tok <= 0 || n_kv <= 0 || n_heads % n_kv || n_heads / n_kv > CU_ATT_ROWS || hd <= 0 ||
        hd % 2 || hd > CU_ATT_MAX_HD || (kernel != CU_ATT_SIMT && kernel != CU_ATT_TC) ||
        iters <= 0 || iters > 1000 || !us)
        return NI_EINVAL;
    const int bs = 16, nb = (n_tok + bs - 1) / bs, G = n_heads / n_kv;
    const size_t kvd = (size_t)n_kv * hd, cache_bytes = (size_t)nb * bs * kvd * (kv_fp8 ? 1 : 2);
    const size_t qn = (size_t)n_tok * n_heads * hd;
    cu_att_item *items = (cu_att_item *)malloc((size_t)n_tok * sizeof(cu_att_item));
    int32_t *tab = (int32_t *)malloc((size_t)nb * sizeof(int32_t));
    if (!items || !tab) {
        free(items);
        free(tab);
        return NI_ENOMEM;
    }
    for (int b = 0; b < nb; b++) tab[b] = b;
    const int32_t ss[2] = {0, n_tok}, p0[1] = {0};
    int max_ctx = 0, max_nq = 0;
    const int n_items = cu_att_plan(items, 1, ss, p0, G, &max_ctx, &max_nq);
    dbuf ditems, dtab, dq, dk, dv, dout, dpart;
    int rc = put_i32(ditems, (const int32_t *)items, (size_t)n_items * 4);
    if (!rc) rc = put_i32(dtab, tab, (size_t)nb);
    free(items);
    free(tab);
    CU_TRY(rc);
    /* constant data: timing only */
    CU_TRY(dq.alloc(qn * 4));
    CU_CHECK(cudaMemset(dq.p, 0x3c, qn * 4));
    CU_TRY(dk.alloc(cache_bytes));
    CU_TRY(dv.alloc(cache_bytes));
    CU_CHECK(cudaMemset(dk.p, 0x3c, cache_bytes));
    CU_CHECK(cudaMemset(dv.p, 0x3c, cache_bytes));
    CU_TRY(dout.alloc(qn * 2));
    int dev = 0, n_sm = 0;
    CU_CHECK(cudaGetDevice(&dev));
    CU_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    const int slots = cu_att_part_slots(n_kv, hd);
    int splits = cu_att_choose_splits(n_items, n_kv, max_ctx, n_sm, slots);
    if ((long)splits * n_items > slots) splits = slots / n_items;
    if (splits < 1) splits = 1;
    if (splits > 1)
        CU_TRY(dpart.alloc((size_t)n_items * splits * cu_att_part_floats(n_kv, hd) * 4));
    CU_TRY(cu_att_prepare());
    const cu_att_args a = {dout.p, dq.as<float>(), n_heads * hd, dk.p, dv.p,
                           ditems.as<cu_att_item>(), dtab.as<int32_t>(), nb, n_items,
                           splits, dpart.as<float>(), n_heads, n_kv, hd, bs, max_nq,
                           kernel, 0, kv_fp8 ? 1 : 0, 0, g_att_no_lat, g_att_stage};
    return time_attention(&a, CU_DTYPE_BF16, iters, NULL, 0, us);
}

extern "C" int cu_op_quantize_q8(int8_t *q, float *scale, const float *w, int rows, int cols) {
    if (rows <= 0 || cols <= 0) return NI_EINVAL;
    dbuf dw, dq, ds;
    CU_TRY(put_f32(dw, w, (size_t)rows * cols));
    CU_TRY(dq.alloc((size_t)rows * cols));
    CU_TRY(ds.alloc((size_t)rows * 4));
    CU_TRY(cu_launch_quantize_rows(0, dq.as<int8_t>(), ds.as<float>(), dw.as<float>(), rows,
                                   cols));
    CU_CHECK(cudaDeviceSynchronize());
    CU_CHECK(cudaMemcpy(q, dq.p, (size_t)rows * cols, cudaMemcpyDeviceToHost));
    CU_CHECK(cudaMemcpy(scale, ds.p, (size_t)rows * 4, cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int cu_op_matmul_q8(float *y, const float *x, const int8_t *q, const float *scale,
                               int n, int in, int out, int accumulate, int deq_rows, int dtype) {
    if (!dtype_ok(dtype) || n < 0 || in <= 0 || out <= 0 || deq_rows < 0) return NI_EINVAL;
    const size_t esz = cu_dtype_size(dtype);
    const size_t deq_bytes = deq_rows ? (size_t)deq_rows * in * esz : (size_t)64 << 20;
    dbuf dx, dq, ds, dy, ddeq, dtmp;
    CU_TRY(put_t(dx, x, (size_t)n * in, dtype));
    CU_TRY(dq.alloc((size_t)out * in));
    CU_CHECK(cudaMemcpy(dq.p, q, (size_t)out * in, cudaMemcpyHostToDevice));
    CU_TRY(put_f32(ds, scale, (size_t)out));
    CU_TRY(put_f32(dy, y, (size_t)n * out));
    CU_TRY(ddeq.alloc(deq_bytes));
    CU_TRY(dtmp.alloc((size_t)n * out * 4));
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    const int rc = cu_gemm_q8(h, 0, dtype, dy.as<float>(), out, dx.p, in, dq.as<int8_t>(),
                              ds.as<float>(), n, in, out, accumulate ? 1.0f : 0.0f, ddeq.p,
                              deq_bytes, dtmp.as<float>());
    cudaError_t e = cudaDeviceSynchronize();
    cublasDestroy(h);
    CU_TRY(rc);
    CU_CHECK(e);
    return get_f32(y, dy, (size_t)n * out);
}

extern "C" int cu_op_sample(const float *logits, int n_src, int vocab, const eng_sample_row *rows,
                            int n_rows, smp_result *out, float *probs) {
    if (n_src <= 0 || vocab <= 0 || n_rows < 0 || !logits || (n_rows > 0 && (!rows || !out)))
        return NI_EINVAL;
    if (n_rows == 0) return 0;
    int32_t *row_of = (int32_t *)malloc((size_t)n_src * sizeof(int32_t));
    int *cons = (int *)malloc((size_t)n_src * sizeof(int));
    size_t ent_cap = (size_t)vocab + 65536;
    cu_smp_row *rh = (cu_smp_row *)malloc((size_t)n_rows * sizeof(cu_smp_row));
    cu_smp_ent *eh = (cu_smp_ent *)malloc(ent_cap * sizeof(cu_smp_ent));
    cu_smp_out *oh = (cu_smp_out *)malloc((size_t)n_rows * sizeof(cu_smp_out));
    const size_t mstride = CU_SMP_MASK_STRIDE(vocab);
    uint32_t *mh = (uint32_t *)malloc((size_t)n_src * mstride * sizeof(uint32_t));
    int rc = row_of && cons && rh && eh && oh && mh ? 0 : NI_ENOMEM;
    for (int s = 0; !rc && s < n_src; s++) row_of[s] = s;
    dbuf dl, drows, dents, dout, dscr, dprobs, dmask;
    const int n_scr = n_rows < 64 ? n_rows : 64;
    /* a copy of the logits: rows modified in place must not touch the caller's */
    if (!rc) rc = put_f32(dl, logits, (size_t)n_src * vocab);
    if (!rc) rc = drows.alloc((size_t)n_rows * sizeof(cu_smp_row));
    if (!rc) rc = dents.alloc(ent_cap * sizeof(cu_smp_ent));
    if (!rc) rc = dout.alloc((size_t)n_rows * sizeof(cu_smp_out));
    if (!rc) rc = dscr.alloc((size_t)n_scr * vocab * 4);
    if (!rc && probs) rc = dprobs.alloc((size_t)n_rows * vocab * 4);
    /* grammar masks: the copy's rows masked in place first, as eng_backend_cuda.sample */
    int nm = 0;
    if (!rc) rc = cu_sample_pack_masks(rows, n_rows, vocab, row_of, n_src, cons, mh, n_src, &nm);
    if (!rc && nm) {
        rc = dmask.alloc((size_t)nm * mstride * sizeof(uint32_t));
        if (!rc && cudaMemcpy(dmask.p, mh, (size_t)nm * mstride * sizeof(uint32_t),
                              cudaMemcpyHostToDevice) != cudaSuccess)
            rc = NI_EIO;
        if (!rc) rc = cu_launch_mask(0, dl.as<float>(), vocab, dmask.as<uint32_t>(), nm);
    }
    for (int done = 0; !rc && done < n_rows;) {
        int np = 0;
        size_t ne = 0;
        rc = cu_sample_pack(rows + done, n_rows - done, vocab, row_of, n_src, cons, rh,
                            n_rows - done, eh, ent_cap, n_scr, &np, &ne);
        if (!rc && np <= 0) rc = NI_ERANGE;
        if (!rc && (cudaMemcpy(drows.p, rh, (size_t)np * sizeof(cu_smp_row),
                               cudaMemcpyHostToDevice) != cudaSuccess ||
                    (ne && cudaMemcpy(dents.p, eh, ne * sizeof(cu_smp_ent),
                                      cudaMemcpyHostToDevice) != cudaSuccess)))
            rc = NI_EIO;
        const cu_sample_args a = {dl.as<float>(),
                                  vocab,
                                  drows.as<cu_smp_row>(),
                                  np,
                                  dents.as<cu_smp_ent>(),
                                  dscr.as<float>(),
                                  dout.as<cu_smp_out>(),
                                  probs ? dprobs.as<float>() + (size_t)done * vocab : NULL};
        if (!rc) rc = cu_launch_sample(0, &a);
        if (!rc && (cudaDeviceSynchronize() != cudaSuccess ||
                    cudaMemcpy(oh, dout.p, (size_t)np * sizeof(cu_smp_out),
                               cudaMemcpyDeviceToHost) != cudaSuccess))
            rc = NI_EIO;
        for (int i = 0; !rc && i < np; i++) cu_sample_result(&out[done + i], &oh[i]);
        done += np;
    }
    if (!rc && probs) rc = get_f32(probs, dprobs, (size_t)n_rows * vocab);
    if (rc == NI_EIO) {
        fprintf(stderr, "%s:%d: cu_op_sample: %s\n", __FILE__, __LINE__,
                cudaGetErrorString(cudaGetLastError()));
    }
    free(row_of);
    free(cons);
    free(rh);
    free(eh);
    free(oh);
    free(mh);
    return rc;
}

extern "C" int cu_op_sample_bench(int vocab, int n_rows, const smp_params *p, int iters,
                                  double *us) {
    if (vocab <= 0 || n_rows <= 0 || !p || iters <= 0 || iters > 1000 || !us) return NI_EINVAL;
    const size_t nl = (size_t)n_rows * vocab;
    float *h = (float *)malloc(nl * 4);
    cu_smp_row *rh = (cu_smp_row *)calloc((size_t)n_rows, sizeof(cu_smp_row));
    if (!h || !rh) {
        free(h);
        free(rh);
        return NI_ENOMEM;
    }
    uint64_t z = 12345;
    for (size_t i = 0; i < nl; i++) { /* cheap pseudo-normal-ish logits */
        z = z * 6364136223846793005ULL + 1442695040888963407ULL;
        h[i] = (float)((double)(z >> 40) / 16777216.0 * 8.0 - 4.0);
    }
    for (int r = 0; r < n_rows; r++) {
        cu_smp_row *o = &rh[r];
        o->src = r;
        o->work = CU_SMP_WORK_SRC;
        o->temperature = p->temperature;
        o->top_p = p->top_p;
        o->min_p = p->min_p;
        o->rep = 1.0f;
        o->top_k = p->top_k;
        o->logprobs = p->logprobs;
        o->u = (r + 0.5) / n_rows;
    }
    dbuf dl, drows, dout;
    int rc = put_f32(dl, h, nl);
    free(h);
    if (!rc) rc = drows.alloc((size_t)n_rows * sizeof(cu_smp_row));
    if (!rc && cudaMemcpy(drows.p, rh, (size_t)n_rows * sizeof(cu_smp_row),
                          cudaMemcpyHostToDevice) != cudaSuccess)
        rc = NI_EIO;
    free(rh);
    if (!rc) rc = dout.alloc((size_t)n_rows * sizeof(cu_smp_out));
    CU_TRY(rc);
    const cu_sample_args a = {dl.as<float>(), vocab, drows.as<cu_smp_row>(), n_rows, NULL, NULL,
                              dout.as<cu_smp_out>(), NULL};
    cudaEvent_t e0, e1;
    CU_CHECK(cudaEventCreate(&e0));
    CU_CHECK(cudaEventCreate(&e1));
    double t[1000];
    for (int it = -2; it < iters; it++) {
        CU_CHECK(cudaEventRecord(e0, 0));
        CU_TRY(cu_launch_sample(0, &a));
        CU_CHECK(cudaEventRecord(e1, 0));
        CU_CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        CU_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (it >= 0) t[it] = ms * 1e3;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    *us = median(t, iters);
    return 0;
}

extern "C" void cu_op_att_decode_fp8_wide(int on) { cu_att_decode_fp8_wide(on); }

extern "C" void cu_op_att_decode_lat(int on) { g_att_no_lat = !on; }

extern "C" void cu_op_att_decode_stage(int on) { g_att_stage = on != 0; }

extern "C" int cu_op_round_fp8(float *x, size_t n) {
    if (!x) return NI_EINVAL;
    dbuf d;
    CU_TRY(put_t(d, x, n, CU_DTYPE_FP8));
    return get_t(x, d, n, CU_DTYPE_FP8);
}

static_assert(CU_OP_GEMV_MAX_ROWS == CU_GEMV_MAX_ROWS, "cu_ops.h mirrors cu_internal.h");

extern "C" int cu_op_gemv_rope(float *q, const float *x, const float *norm_w, const float *w,
                               const mdl_config *c, const int32_t *pos, const int32_t *slot,
                               int n, float *k_cache, float *v_cache, int n_slots,
                               int kv_dtype) {
    if (kv_dtype != CU_DTYPE_BF16 && kv_dtype != CU_DTYPE_FP8) return NI_EINVAL;
    if (!q || !x || !norm_w || !w || !c || !pos || !slot || n <= 0 || n > 2 || c->dim <= 0 ||
        c->head_dim <= 0 || c->head_dim % 2 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        n_slots <= 0)
        return NI_EINVAL;
    const int D = c->dim, hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    const int out = qd + 2 * kvd;
    int max_pos = 1;
    for (int i = 0; i < n; i++) {
        if (pos[i] < 0 || slot[i] >= n_slots) return NI_EINVAL;
        if (pos[i] + 1 > max_pos) max_pos = pos[i] + 1;
    }
    int dev = 0, n_sm = 0;
    CU_CHECK(cudaGetDevice(&dev));
    CU_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    CU_TRY(cu_gemv_prepare());
    dbuf dcos, dsin, dw, dx, dnw, dy, dpos, dslot, dk, dv;
    CU_TRY(put_rope_tables(dcos, dsin, c, NULL, max_pos));
    CU_TRY(put_t(dw, w, (size_t)out * D, CU_DTYPE_BF16));
    CU_TRY(put_f32(dx, x, (size_t)n * D));
    CU_TRY(put_f32(dnw, norm_w, (size_t)D));
    CU_TRY(put_i32(dpos, pos, (size_t)n));
    CU_TRY(put_i32(dslot, slot, (size_t)n));
    CU_TRY(put_t(dk, k_cache, (size_t)n_slots * kvd, kv_dtype));
    CU_TRY(put_t(dv, v_cache, (size_t)n_slots * kvd, kv_dtype));
    CU_TRY(dy.alloc((size_t)n * out * 4));
    CU_CHECK(cudaMemset(dy.p, 0xff, (size_t)n * out * 4)); /* NaN where nothing is written */
    const cu_rope_args ra = {NULL, 0, dpos.as<int32_t>(), dslot.as<int32_t>(), dcos.as<float>(),
                             dsin.as<float>(), NULL, NULL, dk.p, dv.p, n, c->n_heads,
                             c->n_kv_heads, hd, c->rope_interleaved != 0, c->norm_eps, 1,
                             kv_dtype == CU_DTYPE_FP8};
    const cu_gemv_args g = {dw.as<cu_bf16>(), n, D, out, NULL, dx.as<float>(), NULL,
                            dnw.as<float>(), c->norm_eps, D, dy.p, out, 0, 0, 1, 1, ra};
    CU_TRY(cu_launch_gemv(0, &g, n_sm));
    CU_CHECK(cudaDeviceSynchronize());
    CU_TRY(get_t(k_cache, dk, (size_t)n_slots * kvd, kv_dtype));
    CU_TRY(get_t(v_cache, dv, (size_t)n_slots * kvd, kv_dtype));
    return get_q_rows(q, dy, n, out, qd);
}

extern "C" int cu_op_gemv(float *y, const float *x, int n_x, const int32_t *rows,
                          const float *norm_w, float eps, const float *w, int n, int in, int out,
                          int mode) {
    if (!y || !x || !w || n <= 0 || n > CU_GEMV_MAX_ROWS || in <= 0 || out <= 0 || mode < 0 ||
        mode > 2 || (!norm_w && (rows || n_x != n)) || n_x < n)
        return NI_EINVAL;
    if (rows)
        for (int i = 0; i < n; i++)
            if (rows[i] < 0 || rows[i] >= n_x) return NI_EINVAL;
    int dev = 0, n_sm = 0;
    CU_CHECK(cudaGetDevice(&dev));
    CU_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    CU_TRY(cu_gemv_prepare());
    const size_t w_rows = (size_t)out * (mode == 2 ? 2 : 1);
    dbuf dw, dx, drows, dnw, dy;
    CU_TRY(put_t(dw, w, w_rows * in, CU_DTYPE_BF16));
    if (norm_w) {
        CU_TRY(put_f32(dx, x, (size_t)n_x * in));
        CU_TRY(put_f32(dnw, norm_w, (size_t)in));
        if (rows) CU_TRY(put_i32(drows, rows, (size_t)n));
    } else {
        CU_TRY(put_t(dx, x, (size_t)n * in, CU_DTYPE_BF16));
    }
    if (mode == 2) {
        CU_TRY(dy.alloc((size_t)n * out * sizeof(cu_bf16)));
        CU_CHECK(cudaMemset(dy.p, 0xff, (size_t)n * out * sizeof(cu_bf16))); /* NaN */
    } else if (mode == 1) {
        CU_TRY(put_f32(dy, y, (size_t)n * out));
    } else {
        CU_TRY(dy.alloc((size_t)n * out * 4));
        CU_CHECK(cudaMemset(dy.p, 0xff, (size_t)n * out * 4));
    }
    const cu_gemv_args g = {dw.as<cu_bf16>(), n, in, out,
                            norm_w ? NULL : dx.p, norm_w ? dx.as<float>() : NULL,
                            drows.as<int32_t>(), dnw.as<float>(), eps, in, dy.p, out,
                            mode == 1, mode == 2, 1 /* the PDL prologue too */, 0, {}};
    CU_TRY(cu_launch_gemv(0, &g, n_sm));
    CU_CHECK(cudaDeviceSynchronize());
    if (mode == 2) return get_t(y, dy, (size_t)n * out, CU_DTYPE_BF16);
    CU_CHECK(cudaMemcpy(y, dy.p, (size_t)n * out * 4, cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int cu_op_matmul_bench(int n, int in, int out, int mode, int dtype, int iters,
                                  double *us) {
    if (!dtype_ok(dtype) || n <= 0 || in <= 0 || out <= 0 || mode < 0 || mode > 3 ||
        iters <= 0 || iters > 1000 || !us || (mode == 3 && (dtype != CU_DTYPE_BF16 ||
                                                           n > CU_GEMV_MAX_ROWS)))
        return NI_EINVAL;
    const size_t nw = (size_t)out * in, esz = cu_dtype_size(dtype);
    dbuf dx, dw, dq, ds, dy, ddeq, dtmp, dsrc;
    /* random device data: FP32 source, converted / quantized on the device */
    float *h = (float *)malloc(((size_t)n * in > (size_t)out ? (size_t)n * in : (size_t)out) * 4);
    if (!h) return NI_ENOMEM;
    uint64_t z = 777;
    for (size_t i = 0; i < (size_t)n * in; i++) {
        z = z * 6364136223846793005ULL + 1442695040888963407ULL;
        h[i] = (float)((double)(z >> 40) / 16777216.0 - 0.5);
    }
    int rc = put_t(dx, h, (size_t)n * in, dtype);
    free(h);
    CU_TRY(rc);
    CU_TRY(dsrc.alloc(nw * 4));
    CU_CHECK(cudaMemset(dsrc.p, 0x3c, nw * 4)); /* 0.0117.. everywhere: timing only */
    if (mode == 0 || mode == 3) {
        CU_TRY(dw.alloc(nw * esz));
        CU_TRY(cu_launch_convert(0, dw.p, dtype, dsrc.as<float>(), nw));
    } else {
        CU_TRY(dq.alloc(nw));
        CU_TRY(ds.alloc((size_t)out * 4));
        CU_TRY(cu_launch_quantize_rows(0, dq.as<int8_t>(), ds.as<float>(), dsrc.as<float>(), out,
                                       in));
    }
    CU_TRY(dy.alloc((size_t)n * out * 4));
    CU_TRY(ddeq.alloc((size_t)64 << 20));
    CU_TRY(dtmp.alloc((size_t)n * out * 4));
    CU_CHECK(cudaDeviceSynchronize());
    cublasHandle_t hb;
    CUBLAS_CHECK(cublasCreate(&hb));
    cu_quant_set_gemv(mode == 2 ? 1 : 0);
    int n_sm = 0, dev = 0;
    CU_CHECK(cudaGetDevice(&dev));
    CU_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    if (mode == 3) CU_TRY(cu_gemv_prepare());
    const cu_gemv_args g = {dw.as<cu_bf16>(), n, in, out, dx.p, NULL, NULL, NULL, 0.0f, in,
                            dy.p, out, 0, 0, 0, 0, {}};
    cudaEvent_t e0, e1;
    double t[1000];
    rc = 0;
    CU_CHECK(cudaEventCreate(&e0));
    CU_CHECK(cudaEventCreate(&e1));
    for (int it = -3; it < iters && !rc; it++) {
        CU_CHECK(cudaEventRecord(e0, 0));
        if (mode == 0)
            rc = cu_gemm(hb, dtype, dy.as<float>(), out, dx.p, in, dw.p, n, in, out, 0.0f);
        else if (mode == 3)
            rc = cu_launch_gemv(0, &g, n_sm);
        else
            rc = cu_gemm_q8(hb, 0, dtype, dy.as<float>(), out, dx.p, in, dq.as<int8_t>(),
                            ds.as<float>(), n, in, out, 0.0f, ddeq.p, (size_t)64 << 20,
                            dtmp.as<float>());
        CU_CHECK(cudaEventRecord(e1, 0));
        CU_CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        CU_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (it >= 0) t[it] = ms * 1e3;
    }
    cu_quant_set_gemv(0);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cublasDestroy(hb);
    CU_TRY(rc);
    *us = median(t, iters);
    return 0;
}
