/*
 * cu_gemv.cu - weight-streaming GEMV for decode-sized batches (n <= 8
 * activation rows, BF16 weights), with the layer's neighbouring element-wise
 * work fused in: RMSNorm in the prologue, residual add or SwiGLU in the
 * epilogue (see cu_launch_gemv in cu_internal.h).
 *
 * Why: at n <= 8 a projection is a pure weight read (every weight is used n
 * times), so its time is bytes / bandwidth plus launch overhead. cuBLAS
 * reaches ~1-2 TB/s on the small matrices of a 1B model, and the separate
 * RMSNorm and SwiGLU launches around it cost as much as the GEMMs at that
 * size. One launch per projection, streaming weights at close to copy
 * bandwidth, replaces rmsnorm + GEMM (+ swiglu) with one kernel.
 *
 * Design: a block of GV_THREADS threads first stages the n input rows in
 * shared memory as BF16 (NB x in, NB = n rounded up to 1/2/4/8; missing rows
 * zero): either copied from a BF16 activation buffer, or normalised from the
 * FP32 residual stream (sum of squares per row reduced over the block, then
 * x * (1/sqrt(ss/in + eps)) * w rounded to BF16: the same math as k_rmsnorm,
 * so the input equals what the unfused path hands cuBLAS up to the FP32
 * summation order of ss). Then each warp owns one output row at a time
 * (grid-stride over rows): lanes stream the weight row with 16-byte
 * non-allocating loads, GV_UNROLL loads in flight per lane, FMA against the
 * staged rows (FP32 accumulation), butterfly-reduce across the warp, and
 * lane r writes row r's result: y = acc, y += acc (the residual add), or,
 * with SwiGLU, the warp reads the gate row o and the up row hidden + o of
 * wgu and writes act[r][o] = bf16(silu(g) * u) (k_swiglu's formula).
 *
 * ROPE mode (the QKV projection of models without qk-norm): a warp owns the
 * two weight rows of one RoPE pair of one head (SwiGLU's two-row loop), and
 * its epilogue rotates them (k_rope_kv's cos/sin tables) into y for q heads,
 * or into the cache slot (BF16, or E4M3 with rope.kv_fp8) for k heads; v
 * heads go to the cache as they are. With PDL the kernel waits for its predecessor before the prologue and
 * releases its successor at the end (cu_launch_k in cu_internal.h).
 *
 * The grid is what the SMs hold at once (register occupancy, at most 4
 * blocks per SM): more blocks would repeat the prologue (each block reads
 * its n input rows from L2) without adding bandwidth, and blocks beyond the
 * resident ones would run as a second wave. Invariants: in % 8 == 0; weights, the BF16 input rows and ldx
 * 16-byte aligned / multiples of 8 (cu_gemv_ok checks them); with a row
 * gather the rows named are < the residual's rows. CPU twin: cpu_rmsnorm +
 * cpu_matmul (+ cpu_swiglu), test_cuda_ops.
 */
#include <stdint.h>

#include "cu_internal.h"

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

template <int NB, int MODE>
__global__ void __launch_bounds__(GV_THREADS) k_gemv(cu_gemv_args a) {
    constexpr bool TWO = MODE != GV_PLAIN; /* two weight rows per output */
    extern __shared__ uint4 gv_smem[];
    cu_bf16 *xs = (cu_bf16 *)gv_smem;
    const int in8 = a.in / 8, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_out = MODE == GV_ROPE ? a.out / 2 : a.out; /* outputs (pairs) */
    const int stride = gridDim.x * GV_WARPS;
    /* Software pipeline across rows: the first chunk of a warp's next row is
     * loaded while the current row's last chunk computes and reduces, and the
     * very first one before the prologue (weights are never written by a
     * forward, so before the PDL wait too): the DRAM latency overlaps the
     * staging of the input and the butterfly reductions. */
    uint4 pw[GV_UNROLL], pw2[GV_UNROLL];
    auto preload = [&](int o2) {
        int qa, qb;
        gv_rows<MODE>(a, o2, &qa, &qb);
        const uint4 *p1 = (const uint4 *)(a.w + (size_t)qa * a.in);
        const uint4 *p2 = (const uint4 *)(a.w + (size_t)qb * a.in);
#pragma unroll
        for (int u = 0; u < GV_UNROLL; u++) {
            const int c = lane + 32 * u;
            pw[u] = c < in8 ? gv_ld_stream(p1 + c) : make_uint4(0, 0, 0, 0);
            if (TWO) pw2[u] = c < in8 ? gv_ld_stream(p2 + c) : make_uint4(0, 0, 0, 0);
        }
    };
    int o = blockIdx.x * GV_WARPS + warp;
    if (o < n_out) preload(o);
    /* PDL: wait for the previous kernel before reading activations; this
     * block's dependents are released only at its end (see below) */
    if (a.pdl) cu_pdl_wait();
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
        /* Double-buffered chunks: chunk c0 + 32 * GV_UNROLL is loaded while
         * chunk c0 computes, so a warp keeps two chunks of loads in flight
         * through a long row (w_down's 8192 inputs are 8 chunks) instead of
         * one latency per chunk; the first chunk is the preloaded one. */
        uint4 wv[GV_UNROLL], wv2[GV_UNROLL];
#pragma unroll
        for (int u = 0; u < GV_UNROLL; u++) {
            wv[u] = pw[u];
            if (TWO) wv2[u] = pw2[u];
        }
        for (int c0 = lane; c0 < in8; c0 += 32 * GV_UNROLL) {
            /* the row's last chunk (c0 + 32 * GV_UNROLL >= in8 for every lane
             * at once, since c0 - lane is warp-uniform): start the next row */
            const bool last = c0 - lane + 32 * GV_UNROLL >= in8;
            uint4 nv[GV_UNROLL], nv2[GV_UNROLL];
            if (!last) {
#pragma unroll
                for (int u = 0; u < GV_UNROLL; u++) {
                    const int c = c0 + 32 * (GV_UNROLL + u);
                    nv[u] = c < in8 ? gv_ld_stream(wr + c) : make_uint4(0, 0, 0, 0);
                    if (TWO) nv2[u] = c < in8 ? gv_ld_stream(wr2 + c) : make_uint4(0, 0, 0, 0);
                }
            } else if (o + stride < n_out) {
                preload(o + stride);
            }
#pragma unroll
            for (int u = 0; u < GV_UNROLL; u++) {
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
                for (int u = 0; u < GV_UNROLL; u++) {
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
    /* Released at the end, not the start: measured on the H200 (docs/perf.md),
     * a next kernel resident from the start (or an L2 prefetch of its weights
     * before its wait) slowed the 1B shape's decode by 8-15 %, while a release
     * at the end keeps the launch latency hidden and costs nothing. */
    if (a.pdl) cu_pdl_trigger();
}

/* ---- tensor-core variant for 3..8 rows ------------------------------------------
 * The FP32-FMA kernel above is bound by its FMAs from 4 rows on; here one
 * mma.sync.m16n8k16 (BF16 in, FP32 accumulate) does 16 output rows x 8
 * activation rows x 16 inputs. A block owns a 16-row tile of W; its 8 warps
 * split the inputs into 32-wide k-blocks (warp w takes kb = w, w + 8, ...),
 * then the partial tiles are summed through shared memory and warp 0 runs
 * the epilogue. Loads stay 16-byte: lane (g = lane / 4, t = lane % 4) reads
 * W[row g][kb*32 + 8t .. +8) and W[row g + 8][same], and the 8 values feed
 * two MMAs. The dot product does not care which logical k a memory k is
 * assigned to as long as A and B agree, so step s uses words 2s and 2s + 1
 * of both loads as the fragment's k pairs (2t, 2t+1) and (2t+8, 2t+9), and
 * the B fragment (inputs, n = g) takes the same words of
 * xs[g][kb*32 + 8t .. +8). Rows of xs are padded by 16 bytes so the 8 rows g
 * read distinct banks. */
#define GT_KB 32 /* inputs per k-block */

__device__ __forceinline__ void gt_mma(float *c, uint32_t a0, uint32_t a1, uint32_t a2,
                                       uint32_t a3, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* c += the two MMAs of one k-block from the row-g / row-g+8 loads and x. */
__device__ __forceinline__ void gt_kblock(float *c, uint4 wg, uint4 wg8, uint4 x) {
    gt_mma(c, wg.x, wg8.x, wg.y, wg8.y, x.x, x.y);
    gt_mma(c, wg.z, wg8.z, wg.w, wg8.w, x.z, x.w);
}

template <bool SW>
__global__ void __launch_bounds__(GV_THREADS) k_gemv_tc(cu_gemv_args a) {
    extern __shared__ uint4 gv_smem[];
    cu_bf16 *xs = (cu_bf16 *)gv_smem;
    const int ld8 = a.in / 8 + 1;
    gv_stage<8>(a, xs, ld8);
    float *red = (float *)(gv_smem + 8 * ld8); /* [GV_WARPS][SW ? 2 : 1][32][4] */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int n_kb = (a.in + GT_KB - 1) / GT_KB, n_tiles = (a.out + 15) / 16;
    const uint4 *xs4 = (const uint4 *)xs;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const int r0 = tile * 16 + g, r1 = r0 + 8;
        /* rows past the end read row 0 (always valid) and are never stored */
        const cu_bf16 *w0 = a.w + (size_t)(r0 < a.out ? r0 : 0) * a.in;
        const cu_bf16 *w1 = a.w + (size_t)(r1 < a.out ? r1 : 0) * a.in;
        const cu_bf16 *u0 = a.w + (size_t)(a.out + (r0 < a.out ? r0 : 0)) * a.in;
        const cu_bf16 *u1 = a.w + (size_t)(a.out + (r1 < a.out ? r1 : 0)) * a.in;
        float c[4] = {0, 0, 0, 0}, cu[4] = {0, 0, 0, 0};
        for (int kb = warp; kb < n_kb; kb += 2 * GV_WARPS) {
            const int k0 = kb * GT_KB + 8 * t, k1 = k0 + GV_WARPS * GT_KB;
            const bool ok0 = k0 < a.in, ok1 = kb + GV_WARPS < n_kb && k1 < a.in;
            const uint4 a00 = ok0 ? gv_ld_stream((const uint4 *)(w0 + k0)) : zero;
            const uint4 a01 = ok0 ? gv_ld_stream((const uint4 *)(w1 + k0)) : zero;
            const uint4 a10 = ok1 ? gv_ld_stream((const uint4 *)(w0 + k1)) : zero;
            const uint4 a11 = ok1 ? gv_ld_stream((const uint4 *)(w1 + k1)) : zero;
            uint4 b00 = zero, b01 = zero, b10 = zero, b11 = zero;
            if (SW) {
                b00 = ok0 ? gv_ld_stream((const uint4 *)(u0 + k0)) : zero;
                b01 = ok0 ? gv_ld_stream((const uint4 *)(u1 + k0)) : zero;
                b10 = ok1 ? gv_ld_stream((const uint4 *)(u0 + k1)) : zero;
                b11 = ok1 ? gv_ld_stream((const uint4 *)(u1 + k1)) : zero;
            }
            const uint4 x0 = ok0 ? xs4[g * ld8 + k0 / 8] : zero;
            const uint4 x1 = ok1 ? xs4[g * ld8 + k1 / 8] : zero;
            gt_kblock(c, a00, a01, x0);
            gt_kblock(c, a10, a11, x1);
            if (SW) {
                gt_kblock(cu, b00, b01, x0);
                gt_kblock(cu, b10, b11, x1);
            }
        }
        float *rw = red + (size_t)warp * (SW ? 2 : 1) * 128;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            rw[lane * 4 + i] = c[i];
            if (SW) rw[128 + lane * 4 + i] = cu[i];
        }
        __syncthreads();
        if (warp == 0) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float s = 0.0f, su = 0.0f;
                for (int w = 0; w < GV_WARPS; w++) {
                    s += red[(size_t)w * (SW ? 2 : 1) * 128 + lane * 4 + i];
                    if (SW) su += red[(size_t)w * 256 + 128 + lane * 4 + i];
                }
                /* c[0], c[1]: row g, inputs 2t, 2t+1; c[2], c[3]: row g + 8 */
                const int row = i < 2 ? r0 : r1, col = 2 * t + (i & 1);
                if (row < a.out && col < a.n) {
                    if (SW) {
                        cu_bf16 *y = (cu_bf16 *)a.y + (size_t)col * a.ldy + row;
                        *y = cu_fromf<cu_bf16>(s / (1.0f + expf(-s)) * su);
                    } else {
                        float *y = (float *)a.y + (size_t)col * a.ldy + row;
                        *y = a.accumulate ? *y + s : s;
                    }
                }
            }
        }
        __syncthreads();
    }
}

static size_t gt_smem_bytes(int in, bool sw) {
    return 8 * ((size_t)in / 8 + 1) * 16 + (size_t)GV_WARPS * (sw ? 2 : 1) * 128 * 4;
}

static size_t gv_nb(int n) { return n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : 8; }

static size_t gv_smem_bytes(int n, int in) { return gv_nb(n) * (size_t)in * sizeof(cu_bf16); }

static bool gv_aligned(const void *p) { return ((uintptr_t)p & 15u) == 0; }

int cu_gemv_ok(int n, int in, int out, const void *w, const void *x, int ldx) {
    if (n < 1 || n > CU_GEMV_MAX_ROWS || in <= 0 || out <= 0 || in % 8) return 0;
    if (gv_smem_bytes(n, in) > GV_MAX_SMEM || gt_smem_bytes(in, true) > GV_MAX_SMEM ||
        !gv_aligned(w))
        return 0;
    if (x && (!gv_aligned(x) || ldx % 8)) return 0;
    return 1;
}

/* Blocks of k_gemv<NB, MODE> one SM holds at once as far as registers and
 * threads allow ([log2 NB][MODE], from cu_gemv_prepare; 0 = unknown). The
 * grid is sized to what is resident: a block that has to wait for a slot
 * is a second wave, which doubles the latency of a short kernel (measured
 * on the H200: the LM head lost 25 % when its kernel's registers went from
 * 4 to 3 blocks per SM under a fixed grid of 4 per SM). */
static int gv_occ[4][3];

static int gv_nb_index(int nb) { return nb <= 1 ? 0 : nb <= 2 ? 1 : nb <= 4 ? 2 : 3; }

template <int NB, int MODE> static int gv_raise_smem(void) {
    CU_CHECK(cudaFuncSetAttribute(k_gemv<NB, MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  GV_MAX_SMEM));
    int b = 0;
    CU_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, k_gemv<NB, MODE>, GV_THREADS, 0));
    gv_occ[gv_nb_index(NB)][MODE] = b;
    return 0;
}

template <int MODE> static int gv_raise_mode(void) {
    CU_TRY((gv_raise_smem<1, MODE>()));
    CU_TRY((gv_raise_smem<2, MODE>()));
    CU_TRY((gv_raise_smem<4, MODE>()));
    CU_TRY((gv_raise_smem<8, MODE>()));
    return 0;
}

/* Resident blocks per SM for a launch of mode with smem bytes of staged
 * input: the register/thread bound, then the shared-memory one (228 KB per
 * SM on sm_90, 1 KB of it reserved per block). */
static long gv_blocks_per_sm(int nb, int mode, size_t smem) {
    long b = gv_occ[gv_nb_index(nb)][mode];
    if (b <= 0) b = 2; /* not prepared: the old default */
    const long by_smem = (long)(228 * 1024) / (long)(smem + 1024);
    if (b > by_smem) b = by_smem;
    return b < 1 ? 1 : b;
}

int cu_gemv_prepare(void) {
    CU_TRY(gv_raise_mode<GV_PLAIN>());
    CU_TRY(gv_raise_mode<GV_SWIGLU>());
    CU_TRY(gv_raise_mode<GV_ROPE>());
    CU_CHECK(cudaFuncSetAttribute(k_gemv_tc<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  GV_MAX_SMEM));
    CU_CHECK(cudaFuncSetAttribute(k_gemv_tc<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  GV_MAX_SMEM));
    return 0;
}

template <int MODE>
static cudaError_t gv_launch(cudaStream_t st, const cu_gemv_args &a, unsigned grid,
                             size_t smem) {
    const int p = a.pdl;
    switch (gv_nb(a.n)) {
    case 1: return cu_launch_k(k_gemv<1, MODE>, grid, GV_THREADS, smem, st, p, a);
    case 2: return cu_launch_k(k_gemv<2, MODE>, grid, GV_THREADS, smem, st, p, a);
    case 4: return cu_launch_k(k_gemv<4, MODE>, grid, GV_THREADS, smem, st, p, a);
    default: return cu_launch_k(k_gemv<8, MODE>, grid, GV_THREADS, smem, st, p, a);
    }
}

int cu_launch_gemv(cudaStream_t st, const cu_gemv_args *a, int n_sm) {
    if (a->n <= 0 || a->out <= 0) return 0;
    if (!cu_gemv_ok(a->n, a->in, a->out, a->w, a->xf ? NULL : a->x, a->ldx) || !a->y ||
        (a->xf && (!a->norm_w || a->ldx % 4 || !gv_aligned(a->xf) || !gv_aligned(a->norm_w))) ||
        (!a->xf && !a->x) || (a->swiglu && a->accumulate))
        return NI_EINVAL;
    if (a->rope_on) {
        const cu_rope_args &R = a->rope;
        if (a->n > CU_GEMV_FMA_ROWS || a->swiglu || a->accumulate || R.hd <= 0 || R.hd % 2 ||
            R.n_kv <= 0 || a->out != (R.n_heads + 2 * R.n_kv) * R.hd || a->ldy < R.n_heads * R.hd ||
            !R.pos || !R.slot || !R.cos_tab || !R.sin_tab || !R.k_cache || !R.v_cache ||
            R.q_norm || R.k_norm)
            return NI_EINVAL;
    }
    /* as many blocks as the SMs hold at once, at most 4 per SM (enough warps
     * in flight to cover the memory latency, few enough that the repeated
     * prologue stays cheap), never a second wave (gv_occ) */
    const long n_out = a->rope_on ? a->out / 2 : a->out;
    const long rows_blocks = (n_out + GV_WARPS - 1) / GV_WARPS;
    const int mode = a->rope_on ? GV_ROPE : a->swiglu ? GV_SWIGLU : GV_PLAIN;
    long per_sm = gv_blocks_per_sm((int)gv_nb(a->n), mode, gv_smem_bytes(a->n, a->in));
    if (per_sm > 4) per_sm = 4;
    const long cap = (long)(n_sm > 0 ? n_sm : 132) * per_sm;
    const unsigned grid = (unsigned)(rows_blocks < cap ? rows_blocks : cap);
    if (a->n > CU_GEMV_FMA_ROWS) {
        const long tiles = ((long)a->out + 15) / 16, tcap = (long)(n_sm > 0 ? n_sm : 132) * 2;
        const unsigned tg = (unsigned)(tiles < tcap ? tiles : tcap);
        const size_t ts = gt_smem_bytes(a->in, a->swiglu != 0);
        if (a->swiglu)
            k_gemv_tc<true><<<tg, GV_THREADS, ts, st>>>(*a);
        else
            k_gemv_tc<false><<<tg, GV_THREADS, ts, st>>>(*a);
        CU_LAUNCH_CHECK(st);
        return 0;
    }
    const size_t smem = gv_smem_bytes(a->n, a->in);
    CU_CHECK(a->rope_on  ? gv_launch<GV_ROPE>(st, *a, grid, smem)
             : a->swiglu ? gv_launch<GV_SWIGLU>(st, *a, grid, smem)
                         : gv_launch<GV_PLAIN>(st, *a, grid, smem));
    CU_LAUNCH_CHECK(st);
    return 0;
}
