/*
 * cu_quant.cu - int8 weight-only quantization (W8A16 / W8A32) of the
 * projection matrices: per-output-channel symmetric quantization at upload,
 * a memory-bound GEMV-style kernel for decode-sized batches and a
 * dequantize + cuBLAS path for prefill (see cu_internal.h for the contracts).
 *
 * Format: a row-major [out][in] weight W becomes q int8 [out][in] and
 * scale float [out] with scale[o] = max_k |W[o][k]| / 127 and
 * q[o][k] = rint(W[o][k] / scale[o]) clamped to [-127, 127] (an all-zero row
 * has scale 0 and q 0). The dequantized weight is q * scale (the CPU twin of
 * the tests). IEEE division and rintf (round half to even) on the device, so
 * a host twin computing the same formula gets the identical q and scale.
 *
 * GEMV (n <= CU_GEMV_MAX_N activation rows, decode): one warp per output
 * row; a lane reads 16 int8 weights (one 16-byte load) per step and the 16
 * matching activations of every row (two/four 16-byte loads of T, served
 * by L1/L2: the activations are tiny next to the weights), accumulates FP32
 * dot products per row in registers, and the warp reduces with shuffles:
 * y[m][o] = beta * y[m][o] + scale[o] * sum_k q[o][k] x[m][k]. Weight bytes
 * are read exactly once: the kernel is bound by weight bandwidth at n = 1
 * (2.0-2.5 TB/s on the large 1B-shaped matrices, H100). Every activation
 * row is re-read from L1 for every output row, so the kernel becomes
 * L1-bound as n grows: it beats cuBLAS on BF16 weights up to n ~ 4 and
 * loses beyond (docs/cuda.md has the table; a variant that reused the
 * activations across 8 output rows per block measured slower still and was
 * dropped). Shapes whose rows are not 16-byte multiples take a scalar path.
 *
 * Prefill (n > CU_GEMV_MAX_N): output-row chunks of q are widened to T into
 * the caller's scratch (integers |q| <= 127 are exact in BF16 and FP32),
 * multiplied by cuBLAS (cu_gemm) into y (beta 0) or into tmp (beta 1), and a
 * column-scale epilogue applies scale[o] (and the residual add).
 */
#include <math.h>

#include "cu_internal.h"

#define Q_THREADS 256
#define GEMV_WARPS 8

/* ---- quantization (upload) ------------------------------------------------------- */

__global__ void k_quantize_rows(int8_t *q, float *scale, const float *w, int cols) {
    __shared__ float red[Q_THREADS / 32];
    const size_t r = blockIdx.x;
    const float *wr = w + r * (size_t)cols;
    float m = 0.0f;
    for (int j = threadIdx.x; j < cols; j += Q_THREADS) m = fmaxf(m, fabsf(wr[j]));
    m = cu_warp_max(m);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < Q_THREADS / 32 ? red[threadIdx.x] : 0.0f;
        v = cu_warp_max(v);
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    const float s = red[0] / 127.0f;
    if (threadIdx.x == 0) scale[r] = s;
    int8_t *qr = q + r * (size_t)cols;
    for (int j = threadIdx.x; j < cols; j += Q_THREADS) {
        float v = s > 0.0f ? rintf(wr[j] / s) : 0.0f;
        v = fminf(127.0f, fmaxf(-127.0f, v));
        qr[j] = (int8_t)v;
    }
}

int cu_launch_quantize_rows(cudaStream_t st, int8_t *q, float *scale, const float *w, int rows,
                            int cols) {
    if (rows <= 0 || cols <= 0) return 0;
    k_quantize_rows<<<rows, Q_THREADS, 0, st>>>(q, scale, w, cols);
    CU_LAUNCH_CHECK(st);
    return 0;
}

/* ---- GEMV (decode) ------------------------------------------------------------------ */

/* 16 activations x[k..k+16) as floats (16-byte aligned). */
__device__ __forceinline__ void load16(float *o, const float *x) {
    const float4 *p = (const float4 *)x;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float4 v = __ldg(p + i);
        o[4 * i] = v.x;
        o[4 * i + 1] = v.y;
        o[4 * i + 2] = v.z;
        o[4 * i + 3] = v.w;
    }
}

__device__ __forceinline__ void load16(float *o, const cu_bf16 *x) {
    const uint4 *p = (const uint4 *)x;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const uint4 v = __ldg(p + i);
        const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float2 f = __bfloat1622float2(*(const __nv_bfloat162 *)&u[j]);
            o[8 * i + 2 * j] = f.x;
            o[8 * i + 2 * j + 1] = f.y;
        }
    }
}

/* NB: compile-time bound on the activation rows (n <= NB). VEC: 16-byte
 * path (in % 16 == 0, 16-byte aligned rows of q and x). */
template <typename T, int NB, bool VEC>
__global__ void __launch_bounds__(GEMV_WARPS * 32) k_gemv_q8(float *y, int ldy, const T *x, int ldx,
                                                             const int8_t *q, const float *scale,
                                                             int n, int in, int out, float beta) {
    const int lane = threadIdx.x & 31;
    const int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (o >= out) return; /* whole warp: no block-level barrier below */
    const int8_t *qr = q + (size_t)o * in;
    float acc[NB];
#pragma unroll
    for (int m = 0; m < NB; m++) acc[m] = 0.0f;
    if (VEC) {
#pragma unroll 2
        for (int k = lane * 16; k < in; k += 32 * 16) {
            const int4 wv = __ldg((const int4 *)(qr + k));
            const int32_t wi[4] = {wv.x, wv.y, wv.z, wv.w};
            float wf[16];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const char4 c = *(const char4 *)&wi[j];
                wf[4 * j] = (float)c.x;
                wf[4 * j + 1] = (float)c.y;
                wf[4 * j + 2] = (float)c.z;
                wf[4 * j + 3] = (float)c.w;
            }
#pragma unroll
            for (int m = 0; m < NB; m++) {
                if (m < n) {
                    float xv[16];
                    load16(xv, x + (size_t)m * ldx + k);
                    float s = acc[m];
#pragma unroll
                    for (int j = 0; j < 16; j++) s = fmaf(wf[j], xv[j], s);
                    acc[m] = s;
                }
            }
        }
    } else {
        for (int k = lane; k < in; k += 32) {
            const float wf = (float)qr[k];
#pragma unroll
            for (int m = 0; m < NB; m++)
                if (m < n) acc[m] = fmaf(wf, cu_tof(x[(size_t)m * ldx + k]), acc[m]);
        }
    }
    const float s = scale[o];
#pragma unroll
    for (int m = 0; m < NB; m++) {
        const float v = cu_warp_sum(acc[m]);
        if (lane == 0 && m < n) {
            float *yo = y + (size_t)m * ldy + o;
            *yo = beta != 0.0f ? beta * *yo + v * s : v * s;
        }
    }
}

/* 0 (default): GEMV for n <= CU_GEMV_MAX_N; 1: cu_gemm_q8 dequantizes for
 * every n (benchmarks). Set by cu_quant_set_gemv. */
static int g_gemv_variant = 0;

void cu_quant_set_gemv(int variant) { g_gemv_variant = variant; }

template <typename T, int NB>
static void gemv_go(cudaStream_t st, float *y, int ldy, const void *x, int ldx, const int8_t *q,
                    const float *scale, int n, int in, int out, float beta, bool vec) {
    const unsigned blocks = (unsigned)((out + GEMV_WARPS - 1) / GEMV_WARPS);
    if (vec)
        k_gemv_q8<T, NB, true><<<blocks, GEMV_WARPS * 32, 0, st>>>(y, ldy, (const T *)x, ldx, q,
                                                                   scale, n, in, out, beta);
    else
        k_gemv_q8<T, NB, false><<<blocks, GEMV_WARPS * 32, 0, st>>>(y, ldy, (const T *)x, ldx, q,
                                                                    scale, n, in, out, beta);
}

template <typename T>
static void gemv_dispatch(cudaStream_t st, float *y, int ldy, const void *x, int ldx,
                          const int8_t *q, const float *scale, int n, int in, int out, float beta,
                          bool vec) {
    if (n <= 1)
        gemv_go<T, 1>(st, y, ldy, x, ldx, q, scale, n, in, out, beta, vec);
    else if (n <= 2)
        gemv_go<T, 2>(st, y, ldy, x, ldx, q, scale, n, in, out, beta, vec);
    else if (n <= 4)
        gemv_go<T, 4>(st, y, ldy, x, ldx, q, scale, n, in, out, beta, vec);
    else if (n <= 8)
        gemv_go<T, 8>(st, y, ldy, x, ldx, q, scale, n, in, out, beta, vec);
    else
        gemv_go<T, 16>(st, y, ldy, x, ldx, q, scale, n, in, out, beta, vec);
}

int cu_launch_gemv_q8(cudaStream_t st, int dtype, float *y, int ldy, const void *x, int ldx,
                      const int8_t *q, const float *scale, int n, int in, int out, float beta) {
    if (n <= 0 || out <= 0) return 0;
    if (n > CU_GEMV_MAX_N || in <= 0) return NI_EINVAL;
    const size_t esz = cu_dtype_size(dtype);
    const bool vec = in % 16 == 0 && ((size_t)ldx * esz) % 16 == 0 &&
                     ((uintptr_t)x % 16) == 0 && ((uintptr_t)q % 16) == 0;
    if (dtype == CU_DTYPE_FP32)
        gemv_dispatch<float>(st, y, ldy, x, ldx, q, scale, n, in, out, beta, vec);
    else
        gemv_dispatch<cu_bf16>(st, y, ldy, x, ldx, q, scale, n, in, out, beta, vec);
    CU_LAUNCH_CHECK(st);
    return 0;
}

/* ---- prefill: dequantize + cuBLAS + column scale ------------------------------------ */

template <typename T>
__global__ void k_dequant_q8(T *dst, const int8_t *q, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = cu_fromf<T>((float)q[i]);
}

__global__ void k_scale_cols(float *y, int ldy, const float *t, int ldt, const float *scale,
                             int n, int out, float beta) {
    const size_t total = (size_t)n * out;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(e / out), j = (int)(e % out);
        const float v = t[(size_t)i * ldt + j] * scale[j];
        float *yo = y + (size_t)i * ldy + j;
        *yo = beta != 0.0f ? beta * *yo + v : v;
    }
}

static unsigned grid_for(size_t n) {
    size_t b = (n + Q_THREADS - 1) / Q_THREADS;
    if (b > 65535u * 8u) b = 65535u * 8u;
    return b ? (unsigned)b : 1u;
}

int cu_gemm_q8(cublasHandle_t h, cudaStream_t st, int dtype, float *y, int ldy, const void *x,
               int ldx, const int8_t *q, const float *scale, int n, int in, int out, float beta,
               void *deq, size_t deq_bytes, float *tmp) {
    if (n <= 0 || out <= 0) return 0;
    if (n <= CU_GEMV_MAX_N && g_gemv_variant == 0)
        return cu_launch_gemv_q8(st, dtype, y, ldy, x, ldx, q, scale, n, in, out, beta);
    const size_t esz = cu_dtype_size(dtype);
    size_t chunk = deq_bytes / ((size_t)in * esz);
    if (chunk == 0 || !deq || (beta != 0.0f && !tmp)) return NI_EINVAL;
    if (chunk > (size_t)out) chunk = (size_t)out;
    for (size_t o0 = 0; o0 < (size_t)out; o0 += chunk) {
        const int oc = (int)((size_t)out - o0 < chunk ? (size_t)out - o0 : chunk);
        const size_t ne = (size_t)oc * in;
        if (dtype == CU_DTYPE_FP32)
            k_dequant_q8<float><<<grid_for(ne), Q_THREADS, 0, st>>>((float *)deq,
                                                                    q + o0 * in, ne);
        else
            k_dequant_q8<cu_bf16><<<grid_for(ne), Q_THREADS, 0, st>>>((cu_bf16 *)deq,
                                                                      q + o0 * in, ne);
        CU_LAUNCH_CHECK(st);
        /* beta 0: straight into y, scaled in place; beta 1: into tmp [n][oc] */
        float *dst = beta != 0.0f ? tmp : y + o0;
        const int ldd = beta != 0.0f ? oc : ldy;
        CU_TRY(cu_gemm(h, dtype, dst, ldd, x, ldx, deq, n, in, oc, 0.0f));
        k_scale_cols<<<grid_for((size_t)n * oc), Q_THREADS, 0, st>>>(y + o0, ldy, dst, ldd,
                                                                     scale + o0, n, oc, beta);
        CU_LAUNCH_CHECK(st);
    }
    return 0;
}
