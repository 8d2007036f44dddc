/*
 * cu_rope.cu - fused per-token "qk-norm + RoPE + paged KV write" kernel and
 * the host RoPE tables (see cu_launch_rope_kv / cu_rope_tables in
 * cu_internal.h).
 *
 * Design: one block per token, one warp per head. A block walks the q heads
 * (normed and rotated in place in the FP32 qkv buffer, where attention reads
 * them), the k heads (normed, rotated and stored to the cache slot) and the v
 * heads (stored to the cache slot). Within a warp, the head's sum of squares
 * is reduced with shuffles before any lane writes, and each lane then owns
 * whole rotation pairs (interleaved: (2k, 2k+1); half-split: (k, k+hd/2)),
 * so no lane reads an element another lane writes. cos/sin come from tables
 * built on the host in double exactly as the CPU twin (cpu_rope_init, eng_rope_inv_freq), so
 * both backends rotate by bit-identical angles. CPU twins: cpu_head_rmsnorm,
 * cpu_rope_apply, cpu_kv_store (an E4M3 cache: the same, each stored value
 * rounded by eng_fp8_e4m3_round). The cache element type C is T, or cu_fp8
 * with kv_fp8 (one template argument: q stays FP32 either way).
 */
#include <math.h>
#include <stdlib.h>

#include "cu_internal.h"

#define ROPE_WARPS 4

/* Normalizes (optional) and rotates one head src[hd]; writes it to dst. */
template <typename T>
__device__ void rope_head(T *dst, const float *src, const float *nw, const float *cs,
                          const float *sn, int hd, int interleaved, float eps, int lane) {
    float r = 1.0f;
    if (nw) {
        float ss = 0.0f;
        for (int e = lane; e < hd; e += 32) ss += src[e] * src[e];
        ss = cu_warp_sum(ss);
        r = 1.0f / sqrtf(ss / (float)hd + eps);
    }
    __syncwarp();
    const int half = hd / 2;
    for (int k = lane; k < half; k += 32) {
        const int a = interleaved ? 2 * k : k, b = interleaved ? 2 * k + 1 : k + half;
        float x0 = src[a], x1 = src[b];
        if (nw) {
            x0 = x0 * r * nw[a];
            x1 = x1 * r * nw[b];
        }
        dst[a] = cu_fromf<T>(x0 * cs[k] - x1 * sn[k]);
        dst[b] = cu_fromf<T>(x0 * sn[k] + x1 * cs[k]);
    }
}

template <typename T>
__global__ void k_rope_kv(cu_rope_args a) {
    cu_pdl_trigger();
    cu_pdl_wait(); /* everything below reads or writes activations */
    const int i = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int hd = a.hd, half = hd / 2, kvd = a.n_kv * hd;
    float *row = a.qkv + (size_t)i * a.ld;
    const float *cs = a.cos_tab + (size_t)a.pos[i] * half;
    const float *sn = a.sin_tab + (size_t)a.pos[i] * half;
    const int32_t slot = a.slot[i];
    const size_t cache_off = slot >= 0 ? (size_t)slot * kvd : 0;
    T *kc = (T *)a.k_cache + cache_off, *vc = (T *)a.v_cache + cache_off;
    /* slot < 0: a padding row of a decode graph; q is rotated, K/V not stored */
    const int n_all = slot >= 0 ? a.n_heads + 2 * a.n_kv : a.n_heads;
    for (int h = warp; h < n_all; h += ROPE_WARPS) {
        if (h < a.n_heads) {
            float *q = row + (size_t)h * hd;
            rope_head<float>(q, q, a.q_norm, cs, sn, hd, a.interleaved, a.eps, lane);
        } else if (h < a.n_heads + a.n_kv) {
            const int g = h - a.n_heads;
            const float *k = row + (size_t)a.n_heads * hd + (size_t)g * hd;
            rope_head<T>(kc + (size_t)g * hd, k, a.k_norm, cs, sn, hd, a.interleaved, a.eps,
                         lane);
        } else {
            const int g = h - a.n_heads - a.n_kv;
            const float *v = row + (size_t)(a.n_heads + a.n_kv) * hd + (size_t)g * hd;
            for (int e = lane; e < hd; e += 32) vc[(size_t)g * hd + e] = cu_fromf<T>(v[e]);
        }
    }
}

int cu_launch_rope_kv(cudaStream_t st, const cu_rope_args *a, int dtype) {
    if (a->n <= 0) return 0;
    if (a->kv_fp8)
        CU_CHECK(cu_launch_k(k_rope_kv<cu_fp8>, a->n, ROPE_WARPS * 32, 0, st, a->pdl, *a));
    else if (dtype == CU_DTYPE_FP32)
        CU_CHECK(cu_launch_k(k_rope_kv<float>, a->n, ROPE_WARPS * 32, 0, st, a->pdl, *a));
    else
        CU_CHECK(cu_launch_k(k_rope_kv<cu_bf16>, a->n, ROPE_WARPS * 32, 0, st, a->pdl, *a));
    CU_LAUNCH_CHECK(st);
    return 0;
}

int cu_rope_tables(const mdl_config *c, const float *rope_freqs, int max_pos, float **cos_out,
                   float **sin_out) {
    *cos_out = *sin_out = NULL;
    if (c->head_dim <= 0 || c->head_dim % 2 != 0 || max_pos <= 0) return NI_EINVAL;
    const int half = c->head_dim / 2;
    double *inv = (double *)malloc((size_t)half * sizeof(double));
    float *cs = (float *)malloc((size_t)max_pos * half * sizeof(float));
    float *sn = (float *)malloc((size_t)max_pos * half * sizeof(float));
    if (!inv || !cs || !sn) {
        free(inv);
        free(cs);
        free(sn);
        return NI_ENOMEM;
    }
    const int llama3_ok = c->rope_scaling == MDL_ROPE_LLAMA3 && c->rope_factor > 0.0f &&
                          c->rope_low_freq_factor > 0.0f && c->rope_high_freq_factor > 0.0f &&
                          c->rope_orig_max_pos > 0;
    if (c->rope_scaling == MDL_ROPE_LLAMA3 && !llama3_ok && rope_freqs) {
        /* GGUF with precomputed divisors but no scaling parameters */
        for (int i = 0; i < half; i++)
            inv[i] = 1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)c->head_dim) /
                     (double)rope_freqs[i];
    } else {
        eng_rope_inv_freq(c, inv);
    }
    for (int p = 0; p < max_pos; p++)
        for (int i = 0; i < half; i++) {
            const double ang = (double)p * inv[i];
            cs[(size_t)p * half + i] = (float)cos(ang);
            sn[(size_t)p * half + i] = (float)sin(ang);
        }
    free(inv);
    *cos_out = cs;
    *sin_out = sn;
    return 0;
}
