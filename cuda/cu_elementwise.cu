/*
 * cu_elementwise.cu - element-wise kernels: FP32 -> T conversion (weight
 * upload), embedding gather and SwiGLU (see cu_internal.h for contracts).
 *
 * Design: grid-stride loops, one element per thread per step; FP32 math in
 * every mode (T only changes what is loaded or stored). CPU twins:
 * cpu_embed, cpu_swiglu (engine/cpu/cpu_ops.c); silu uses expf like the CPU.
 */
#include "cu_internal.h"

#define EW_THREADS 256

/* Grid size for n elements, capped (grid-stride loops cover the rest). */
static unsigned ew_blocks(size_t n) {
    size_t b = (n + EW_THREADS - 1) / EW_THREADS;
    if (b > 65535u * 8u) b = 65535u * 8u;
    return b ? (unsigned)b : 1u;
}

template <typename T>
__global__ void k_convert(T *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = cu_fromf<T>(src[i]);
}

int cu_launch_convert(cudaStream_t st, void *dst, int dtype, const float *src, size_t n) {
    if (n == 0) return 0;
    if (dtype == CU_DTYPE_FP32) {
        CU_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, st));
        return 0;
    }
    if (dtype == CU_DTYPE_FP8)
        k_convert<cu_fp8><<<ew_blocks(n), EW_THREADS, 0, st>>>((cu_fp8 *)dst, src, n);
    else
        k_convert<cu_bf16><<<ew_blocks(n), EW_THREADS, 0, st>>>((cu_bf16 *)dst, src, n);
    CU_LAUNCH_CHECK(st);
    return 0;
}

/* One block per token row. */
template <typename T>
__global__ void k_embed(float *out, const T *table, const int32_t *tokens, int dim) {
    const int i = blockIdx.x;
    const T *row = table + (size_t)tokens[i] * dim;
    float *o = out + (size_t)i * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] = cu_tof(row[j]);
}

int cu_launch_embed(cudaStream_t st, float *out, const void *table, int dtype,
                    const int32_t *tokens, int n, int dim) {
    if (n <= 0) return 0;
    if (dtype == CU_DTYPE_FP32)
        k_embed<float><<<n, EW_THREADS, 0, st>>>(out, (const float *)table, tokens, dim);
    else
        k_embed<cu_bf16><<<n, EW_THREADS, 0, st>>>(out, (const cu_bf16 *)table, tokens, dim);
    CU_LAUNCH_CHECK(st);
    return 0;
}

template <typename T>
__global__ void k_swiglu(T *out, const float *gu, int n, int hidden) {
    const size_t total = (size_t)n * hidden;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        const size_t i = e / hidden, j = e % hidden;
        const float g = gu[i * 2 * hidden + j], u = gu[i * 2 * hidden + hidden + j];
        out[e] = cu_fromf<T>(g / (1.0f + expf(-g)) * u);
    }
}

int cu_launch_swiglu(cudaStream_t st, void *out, int dtype, const float *gu, int n, int hidden) {
    if (n <= 0) return 0;
    const unsigned nb = ew_blocks((size_t)n * hidden);
    if (dtype == CU_DTYPE_FP32)
        k_swiglu<float><<<nb, EW_THREADS, 0, st>>>((float *)out, gu, n, hidden);
    else
        k_swiglu<cu_bf16><<<nb, EW_THREADS, 0, st>>>((cu_bf16 *)out, gu, n, hidden);
    CU_LAUNCH_CHECK(st);
    return 0;
}

/* Block (plane p = blockIdx.y): words [0, block_words) of block src -> dst. */
template <typename W>
__global__ void k_copy_block(W *pool, size_t plane_words, size_t block_words, int src, int dst) {
    W *plane = pool + (size_t)blockIdx.y * plane_words;
    const W *s = plane + (size_t)src * block_words;
    W *d = plane + (size_t)dst * block_words;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < block_words;
         i += (size_t)gridDim.x * blockDim.x)
        d[i] = s[i];
}

int cu_launch_copy_block(cudaStream_t st, void *pool, int n_planes, size_t plane_bytes,
                         size_t block_bytes, int src, int dst) {
    if (n_planes <= 0 || block_bytes == 0) return 0;
    /* words when both sizes allow (BF16 / FP32 caches always, E4M3 ones when
     * block_size * kv_dim % 4 == 0), else bytes */
    const size_t w = plane_bytes % 4 || block_bytes % 4 ? 1 : 4;
    const size_t words = block_bytes / w;
    unsigned gx = (unsigned)((words + EW_THREADS - 1) / EW_THREADS);
    if (gx > 64) gx = 64;
    const dim3 grid(gx, (unsigned)n_planes);
    if (w == 4)
        k_copy_block<<<grid, EW_THREADS, 0, st>>>((uint32_t *)pool, plane_bytes / 4, words, src,
                                                  dst);
    else
        k_copy_block<<<grid, EW_THREADS, 0, st>>>((uint8_t *)pool, plane_bytes, words, src, dst);
    CU_LAUNCH_CHECK(st);
    return 0;
}

template <typename T>
__global__ void k_to_f32(float *dst, const T *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = cu_tof(src[i]);
}

int cu_launch_to_f32(cudaStream_t st, float *dst, const void *src, int dtype, size_t n) {
    if (n == 0) return 0;
    if (dtype == CU_DTYPE_FP32) {
        CU_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, st));
        return 0;
    }
    if (dtype == CU_DTYPE_FP8)
        k_to_f32<cu_fp8><<<ew_blocks(n), EW_THREADS, 0, st>>>(dst, (const cu_fp8 *)src, n);
    else
        k_to_f32<cu_bf16><<<ew_blocks(n), EW_THREADS, 0, st>>>(dst, (const cu_bf16 *)src, n);
    CU_LAUNCH_CHECK(st);
    return 0;
}
