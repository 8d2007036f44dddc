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
 * The grid is capped at a few blocks per SM: more blocks would repeat the
 * prologue (each block reads its n input rows from L2) without adding
 * bandwidth. Invariants: in % 8 == 0; weights, the BF16 input rows and ldx
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

/* Stages the NB input rows into xs (BF16 [NB][in]). */
template <int NB>
__device__ __forceinline__ void gv_stage(const cu_gemv_args &a, cu_bf16 *xs) {
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
            xs4[e] = out;
        }
    } else {
        for (int e = tid; e < NB * in8; e += GV_THREADS) {
            const int r = e / in8, c = e - r * in8;
            xs4[e] = r < a.n ? ((const uint4 *)((const cu_bf16 *)a.x + (size_t)r * a.ldx))[c]
                             : make_uint4(0, 0, 0, 0);
        }
    }
    __syncthreads();
}

template <int NB, bool SW>
__global__ void __launch_bounds__(GV_THREADS) k_gemv(cu_gemv_args a) {
    extern __shared__ uint4 gv_smem[];
    cu_bf16 *xs = (cu_bf16 *)gv_smem;
    gv_stage<NB>(a, xs);
    const int in8 = a.in / 8, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint4 *xs4 = (const uint4 *)xs;
    for (int o = blockIdx.x * GV_WARPS + warp; o < a.out; o += gridDim.x * GV_WARPS) {
        const uint4 *wr = (const uint4 *)(a.w + (size_t)o * a.in);
        const uint4 *wr2 = (const uint4 *)(a.w + (size_t)(a.out + o) * a.in);
        float acc[NB], acc2[NB];
#pragma unroll
        for (int r = 0; r < NB; r++) acc[r] = acc2[r] = 0.0f;
        for (int c0 = lane; c0 < in8; c0 += 32 * GV_UNROLL) {
            uint4 wv[GV_UNROLL], wv2[GV_UNROLL];
#pragma unroll
            for (int u = 0; u < GV_UNROLL; u++) {
                const int c = c0 + 32 * u;
                wv[u] = c < in8 ? gv_ld_stream(wr + c) : make_uint4(0, 0, 0, 0);
                if (SW) wv2[u] = c < in8 ? gv_ld_stream(wr2 + c) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < GV_UNROLL; u++) {
                const int c = c0 + 32 * u;
                if (c < in8) {
#pragma unroll
                    for (int r = 0; r < NB; r++) {
                        const uint4 xv = xs4[r * in8 + c];
                        acc[r] = gv_dot8(wv[u], xv, acc[r]);
                        if (SW) acc2[r] = gv_dot8(wv2[u], xv, acc2[r]);
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < NB; r++) {
            const float s = gv_warp_allsum(acc[r]);
            const float s2 = SW ? gv_warp_allsum(acc2[r]) : 0.0f;
            if (lane == r && r < a.n) {
                if (SW) {
                    cu_bf16 *y = (cu_bf16 *)a.y + (size_t)r * a.ldy + o;
                    *y = cu_fromf<cu_bf16>(s / (1.0f + expf(-s)) * s2);
                } else {
                    float *y = (float *)a.y + (size_t)r * a.ldy + o;
                    *y = a.accumulate ? *y + s : s;
                }
            }
        }
    }
}

static size_t gv_nb(int n) { return n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : 8; }

static size_t gv_smem_bytes(int n, int in) { return gv_nb(n) * (size_t)in * sizeof(cu_bf16); }

static bool gv_aligned(const void *p) { return ((uintptr_t)p & 15u) == 0; }

int cu_gemv_ok(int n, int in, int out, const void *w, const void *x, int ldx) {
    if (n < 1 || n > CU_GEMV_MAX_ROWS || in <= 0 || out <= 0 || in % 8) return 0;
    if (gv_smem_bytes(n, in) > GV_MAX_SMEM || !gv_aligned(w)) return 0;
    if (x && (!gv_aligned(x) || ldx % 8)) return 0;
    return 1;
}

template <int NB, bool SW> static int gv_raise_smem(void) {
    CU_CHECK(cudaFuncSetAttribute(k_gemv<NB, SW>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  GV_MAX_SMEM));
    return 0;
}

int cu_gemv_prepare(void) {
    CU_TRY((gv_raise_smem<1, false>()));
    CU_TRY((gv_raise_smem<2, false>()));
    CU_TRY((gv_raise_smem<4, false>()));
    CU_TRY((gv_raise_smem<8, false>()));
    CU_TRY((gv_raise_smem<1, true>()));
    CU_TRY((gv_raise_smem<2, true>()));
    CU_TRY((gv_raise_smem<4, true>()));
    CU_TRY((gv_raise_smem<8, true>()));
    return 0;
}

template <bool SW>
static void gv_launch(cudaStream_t st, const cu_gemv_args &a, unsigned grid, size_t smem) {
    switch (gv_nb(a.n)) {
    case 1: k_gemv<1, SW><<<grid, GV_THREADS, smem, st>>>(a); break;
    case 2: k_gemv<2, SW><<<grid, GV_THREADS, smem, st>>>(a); break;
    case 4: k_gemv<4, SW><<<grid, GV_THREADS, smem, st>>>(a); break;
    default: k_gemv<8, SW><<<grid, GV_THREADS, smem, st>>>(a); break;
    }
}

int cu_launch_gemv(cudaStream_t st, const cu_gemv_args *a, int n_sm) {
    if (a->n <= 0 || a->out <= 0) return 0;
    if (!cu_gemv_ok(a->n, a->in, a->out, a->w, a->xf ? NULL : a->x, a->ldx) || !a->y ||
        (a->xf && (!a->norm_w || a->ldx % 4 || !gv_aligned(a->xf) || !gv_aligned(a->norm_w))) ||
        (!a->xf && !a->x) || (a->swiglu && a->accumulate))
        return NI_EINVAL;
    /* a few blocks per SM: enough warps in flight to cover the memory latency,
     * few enough that the repeated prologue stays cheap */
    const long rows_blocks = ((long)a->out + GV_WARPS - 1) / GV_WARPS;
    const long cap = (long)(n_sm > 0 ? n_sm : 132) * (a->n <= 2 ? 4 : 2);
    const unsigned grid = (unsigned)(rows_blocks < cap ? rows_blocks : cap);
    const size_t smem = gv_smem_bytes(a->n, a->in);
    if (a->swiglu)
        gv_launch<true>(st, *a, grid, smem);
    else
        gv_launch<false>(st, *a, grid, smem);
    CU_LAUNCH_CHECK(st);
    return 0;
}
