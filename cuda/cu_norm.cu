/*
 * cu_norm.cu - RMSNorm with an optional fused residual add and row gather
 * (see cu_launch_rmsnorm in cu_internal.h).
 *
 * Design: one block of NORM_THREADS threads per row; each thread owns the
 * elements j = tid + k*NORM_THREADS; the sum of squares is reduced in FP32
 * (warp shuffles, then one float per warp in shared memory). Math matches the
 * CPU twin cpu_rmsnorm: r = 1/sqrtf(ss/dim + eps); out = (x * r) * w. The
 * gather (rows) lets the final norm pick the last token of each sequence
 * that wants logits without a separate copy. Invariant: when add != NULL the
 * rows gathered must be distinct (each source row is updated by one block).
 */
#include "cu_internal.h"

#define NORM_THREADS 256

template <typename T>
__global__ void k_rmsnorm(T *out, float *x, const float *add, const int32_t *rows,
                          const float *w, int dim, float eps) {
    __shared__ float red[NORM_THREADS / 32];
    const int i = blockIdx.x;
    float *xr = x + (size_t)(rows ? rows[i] : i) * dim;
    float ss = 0.0f;
    if (add) {
        const float *ar = add + (size_t)i * dim;
        for (int j = threadIdx.x; j < dim; j += NORM_THREADS) {
            const float v = xr[j] + ar[j];
            xr[j] = v;
            ss += v * v;
        }
    } else {
        for (int j = threadIdx.x; j < dim; j += NORM_THREADS) {
            const float v = xr[j];
            ss += v * v;
        }
    }
    ss = cu_warp_sum(ss);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < NORM_THREADS / 32 ? red[threadIdx.x] : 0.0f;
        v = cu_warp_sum(v);
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    const float r = 1.0f / sqrtf(red[0] / (float)dim + eps);
    T *o = out + (size_t)i * dim;
    for (int j = threadIdx.x; j < dim; j += NORM_THREADS) o[j] = cu_fromf<T>(xr[j] * r * w[j]);
}

int cu_launch_rmsnorm(cudaStream_t st, void *out, int dtype, float *x, const float *add,
                      const int32_t *rows, const float *w, int n, int dim, float eps) {
    if (n <= 0) return 0;
    if (dtype == CU_DTYPE_FP32)
        k_rmsnorm<float><<<n, NORM_THREADS, 0, st>>>((float *)out, x, add, rows, w, dim, eps);
    else
        k_rmsnorm<cu_bf16><<<n, NORM_THREADS, 0, st>>>((cu_bf16 *)out, x, add, rows, w, dim, eps);
    CU_LAUNCH_CHECK(st);
    return 0;
}
