/*
 * cu_gemv.cuh - the device side of k_gemv (cu_gemv.cu), shared with the
 * persistent decode kernel (cu_persist.cu), which runs the same projection
 * bodies between its grid barriers. Design and invariants: cu_gemv.cu.
 * Private to cuda/; include after cu_internal.h.
 */
#ifndef NI_CU_GEMV_CUH
#define NI_CU_GEMV_CUH

#include <stdint.h>

#define GV_THREADS 256
#define GV_WARPS (GV_THREADS / 32)
#define GV_UNROLL 4
/* largest staged input: NB rows x in BF16 (227 KB is the sm_90 maximum) */
#define GV_MAX_SMEM (160 * 1024)
/* rows up to which the FP32-FMA kernel runs; above, k_gemv_tc */
#define CU_GEMV_FMA_ROWS 2

/* 16 bytes of weights, bypassing L1 (each weight is read once per launch). */
__device__ __forceinline__ uint4 gv_ld_stream(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* acc += dot of 8 BF16 weights and 8 BF16 inputs, in FP32. */
__device__ __forceinline__ float gv_dot8(uint4 w, uint4 x, float acc) {
    const uint32_t wv[4] = {w.x, w.y, w.z, w.w}, xv[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        /* a BF16 is the high half of an FP32: shifting is the exact conversion */
        acc = fmaf(__uint_as_float(wv[i] << 16), __uint_as_float(xv[i] << 16), acc);
        acc = fmaf(__uint_as_float(wv[i] & 0xffff0000u), __uint_as_float(xv[i] & 0xffff0000u),
                   acc);
    }
    return acc;
}

__device__ __forceinline__ float gv_warp_allsum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Stages the NB input rows into xs (BF16 [NB][ld8 * 8], ld8 >= in / 8:
 * the k_gemv_tc layout pads rows by 16 bytes against bank conflicts). */
template <int NB>
__device__ __forceinline__ void gv_stage(const cu_gemv_args &a, cu_bf16 *xs, int ld8) {
    const int in = a.in, tid = threadIdx.x;
    const int in8 = in / 8;
    uint4 *xs4 = (uint4 *)xs;
    if (a.xf) {
        __shared__ float red[GV_WARPS][NB];
        __shared__ float rinv[NB];
        const int lane = tid & 31, warp = tid >> 5;
#pragma unroll
        for (int r = 0; r < NB; r++) {
            float ss = 0.0f;
            if (r < a.n) {
                const float4 *xr =
                    (const float4 *)(a.xf + (size_t)(a.rows ? a.rows[r] : r) * a.ldx);
                for (int j = tid; j < in / 4; j += GV_THREADS) {
                    const float4 v = xr[j];
                    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                }
            }
            ss = gv_warp_allsum(ss);
            if (lane == 0) red[warp][r] = ss;
        }
        __syncthreads();
        if (tid < NB) {
            float t = 0.0f;
            for (int w = 0; w < GV_WARPS; w++) t += red[w][tid];
            rinv[tid] = 1.0f / sqrtf(t / (float)in + a.eps);
        }
        __syncthreads();
        for (int e = tid; e < NB * in8; e += GV_THREADS) {
            const int r = e / in8, c = e - r * in8;
            uint4 out = make_uint4(0, 0, 0, 0);
            if (r < a.n) {
                const float *xr = a.xf + (size_t)(a.rows ? a.rows[r] : r) * a.ldx + 8 * c;
                const float *wr = a.norm_w + 8 * c;
                const float4 x0 = *(const float4 *)xr, x1 = *(const float4 *)(xr + 4);
                const float4 w0 = *(const float4 *)wr, w1 = *(const float4 *)(wr + 4);
                const float ri = rinv[r];
                __nv_bfloat162 p0 = __floats2bfloat162_rn(x0.x * ri * w0.x, x0.y * ri * w0.y);
                __nv_bfloat162 p1 = __floats2bfloat162_rn(x0.z * ri * w0.z, x0.w * ri * w0.w);
                __nv_bfloat162 p2 = __floats2bfloat162_rn(x1.x * ri * w1.x, x1.y * ri * w1.y);
                __nv_bfloat162 p3 = __floats2bfloat162_rn(x1.z * ri * w1.z, x1.w * ri * w1.w);
                out.x = *(uint32_t *)&p0;
                out.y = *(uint32_t *)&p1;
                out.z = *(uint32_t *)&p2;
                out.w = *(uint32_t *)&p3;
            }
            xs4[r * ld8 + c] = out;
        }
    } else {
        for (int e = tid; e < NB * in8; e += GV_THREADS) {
            const int r = e / in8, c = e - r * in8;
            xs4[r * ld8 + c] = r < a.n
                                   ? ((const uint4 *)((const cu_bf16 *)a.x + (size_t)r * a.ldx))[c]
                                   : make_uint4(0, 0, 0, 0);
        }
    }
    __syncthreads();
}

/* Epilogue modes of k_gemv: one weight row per output (PLAIN), or two
 * (SWIGLU: gate row o and up row out + o; ROPE: the two rows of RoPE pair o). */
enum { GV_PLAIN, GV_SWIGLU, GV_ROPE };

/* The weight rows of output (pair) o: rows ra and rb (rb unused for PLAIN).
 * ROPE: pair o is head h = o / (hd/2), index k = o % (hd/2), rows (2k, 2k+1)
 * interleaved or (k, k + hd/2) half-split, offset by h * hd. */
template <int MODE>
__device__ __forceinline__ void gv_rows(const cu_gemv_args &a, int o, int *ra, int *rb) {
    if (MODE == GV_ROPE) {
        const int half = a.rope.hd / 2, h = o / half, k = o - h * half;
        *ra = h * a.rope.hd + (a.rope.interleaved ? 2 * k : k);
        *rb = *ra + (a.rope.interleaved ? 1 : half);
    } else {
        *ra = o;
        *rb = a.out + o;
    }
}

/* ROPE epilogue for activation row r (lane r): s, s2 are rows ra, rb of the
 * qkv projection. q heads are rotated into y (FP32, attention reads them
 * there); k heads rotated and v heads copied to the cache slot of row r (BF16,
 * or E4M3 with rope.kv_fp8)
 * (nothing stored for slot < 0, a decode-graph padding row): k_rope_kv's math
 * (cos/sin tables of the same host code), without the qk-norm. */
__device__ __forceinline__ void gv_rope_store(const cu_gemv_args &a, int r, int o, int ra, int rb,
                                              float s, float s2) {
    const cu_rope_args &R = a.rope;
    const int half = R.hd / 2, h = o / half, k = o - h * half;
    if (h < R.n_heads + R.n_kv) {
        const size_t t = (size_t)R.pos[r] * half + k;
        const float cs = R.cos_tab[t], sn = R.sin_tab[t];
        const float x0 = s * cs - s2 * sn, x1 = s * sn + s2 * cs;
        if (h < R.n_heads) {
            float *y = (float *)a.y + (size_t)r * a.ldy;
            y[ra] = x0;
            y[rb] = x1;
            return;
        }
        s = x0;
        s2 = x1;
    }
    const int32_t slot = R.slot[r];
    if (slot < 0) return;
    const int v = h >= R.n_heads + R.n_kv;
    const int base = (v ? R.n_heads + R.n_kv : R.n_heads) * R.hd; /* first row of k (v) */
    const size_t off = (size_t)slot * (R.n_kv * R.hd);
    if (R.kv_fp8) { /* warp-uniform: an E4M3 cache (--kv-cache-dtype fp8) */
        cu_fp8 *c = (cu_fp8 *)(v ? R.v_cache : R.k_cache) + off;
        c[ra - base] = cu_fromf<cu_fp8>(s);
        c[rb - base] = cu_fromf<cu_fp8>(s2);
        return;
    }
    cu_bf16 *c = (cu_bf16 *)(v ? R.v_cache : R.k_cache) + off;
    c[ra - base] = cu_fromf<cu_bf16>(s);
    c[rb - base] = cu_fromf<cu_bf16>(s2);
}

/* The k_gemv body for one block: bid of nblk blocks takes outputs (pairs)
 * bid * GV_WARPS + warp, stepping by nblk * GV_WARPS. wait() is called once,
 * after the first weight chunk is in flight and before any activation is read
 * (k_gemv: the PDL wait; the persistent decode kernel: its grid barrier).
 * U: 16-byte loads per lane and chunk (two chunks in flight per row). */
template <int NB, int MODE, int U = GV_UNROLL, typename W>
__device__ __forceinline__ void gv_run(const cu_gemv_args &a, int bid, int nblk, W wait) {
    constexpr bool TWO = MODE != GV_PLAIN; /* two weight rows per output */
    extern __shared__ uint4 gv_smem[];
    cu_bf16 *xs = (cu_bf16 *)gv_smem;
    const int in8 = a.in / 8, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_out = MODE == GV_ROPE ? a.out / 2 : a.out; /* outputs (pairs) */
    const int stride = nblk * GV_WARPS;
    /* Software pipeline across rows: the first chunk of a warp's next row is
     * loaded while the current row's last chunk computes and reduces, and the
     * very first one before the prologue (weights are never written by a
     * forward, so before the PDL wait too): the DRAM latency overlaps the
     * staging of the input and the butterfly reductions. */
    uint4 pw[U], pw2[U];
    auto preload = [&](int o2) {
        int qa, qb;
        gv_rows<MODE>(a, o2, &qa, &qb);
        const uint4 *p1 = (const uint4 *)(a.w + (size_t)qa * a.in);
        const uint4 *p2 = (const uint4 *)(a.w + (size_t)qb * a.in);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = lane + 32 * u;
            pw[u] = c < in8 ? gv_ld_stream(p1 + c) : make_uint4(0, 0, 0, 0);
            if (TWO) pw2[u] = c < in8 ? gv_ld_stream(p2 + c) : make_uint4(0, 0, 0, 0);
        }
    };
    int o = bid * GV_WARPS + warp;
    if (o < n_out) preload(o);
    wait();
    gv_stage<NB>(a, xs, a.in / 8);
    const uint4 *xs4 = (const uint4 *)xs;
    for (; o < n_out; o += stride) {
        int ra, rb;
        gv_rows<MODE>(a, o, &ra, &rb);
        const uint4 *wr = (const uint4 *)(a.w + (size_t)ra * a.in);
        const uint4 *wr2 = (const uint4 *)(a.w + (size_t)rb * a.in);
        float acc[NB], acc2[NB];
#pragma unroll
        for (int r = 0; r < NB; r++) acc[r] = acc2[r] = 0.0f;
        /* Double-buffered chunks: chunk c0 + 32 * U is loaded while
         * chunk c0 computes, so a warp keeps two chunks of loads in flight
         * through a long row (w_down's 8192 inputs are 8 chunks) instead of
         * one latency per chunk; the first chunk is the preloaded one. */
        uint4 wv[U], wv2[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            wv[u] = pw[u];
            if (TWO) wv2[u] = pw2[u];
        }
        for (int c0 = lane; c0 < in8; c0 += 32 * U) {
            /* the row's last chunk (c0 + 32 * U >= in8 for every lane
             * at once, since c0 - lane is warp-uniform): start the next row */
            const bool last = c0 - lane + 32 * U >= in8;
            uint4 nv[U], nv2[U];
            if (!last) {
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const int c = c0 + 32 * (U + u);
                    nv[u] = c < in8 ? gv_ld_stream(wr + c) : make_uint4(0, 0, 0, 0);
                    if (TWO) nv2[u] = c < in8 ? gv_ld_stream(wr2 + c) : make_uint4(0, 0, 0, 0);
                }
            } else if (o + stride < n_out) {
                preload(o + stride);
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int c = c0 + 32 * u;
                if (c < in8) {
#pragma unroll
                    for (int r = 0; r < NB; r++) {
                        const uint4 xv = xs4[r * in8 + c];
                        acc[r] = gv_dot8(wv[u], xv, acc[r]);
                        if (TWO) acc2[r] = gv_dot8(wv2[u], xv, acc2[r]);
                    }
                }
            }
            if (!last) {
#pragma unroll
                for (int u = 0; u < U; u++) {
                    wv[u] = nv[u];
                    if (TWO) wv2[u] = nv2[u];
                }
            }
        }
#pragma unroll
        for (int r = 0; r < NB; r++) {
            const float s = gv_warp_allsum(acc[r]);
            const float s2 = TWO ? gv_warp_allsum(acc2[r]) : 0.0f;
            if (lane == r && r < a.n) {
                if (MODE == GV_SWIGLU) {
                    cu_bf16 *y = (cu_bf16 *)a.y + (size_t)r * a.ldy + o;
                    *y = cu_fromf<cu_bf16>(s / (1.0f + expf(-s)) * s2);
                } else if (MODE == GV_ROPE) {
                    gv_rope_store(a, r, o, ra, rb, s, s2);
                } else {
                    float *y = (float *)a.y + (size_t)r * a.ldy + o;
                    *y = a.accumulate ? *y + s : s;
                }
            }
        }
    }
}


#endif
