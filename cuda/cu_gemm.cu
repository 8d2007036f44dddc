/*
 * cu_gemm.cu - the one GEMM entry point (cu_gemm, see cu_internal.h): every
 * projection of the model, row-major y = x W^T (+ y), through cuBLAS.
 *
 * Layout: cuBLAS is column-major. A row-major [out][in] weight read
 * column-major is W^T (in x out, ld = in), a row-major x [n][ldx] is x^T, and
 * a row-major y [n][ldy] is y^T; so y^T = W x^T is
 * gemm(op(A) = T on W, op(B) = N on x, m = out, n = n, k = in).
 * BF16: cublasGemmEx(A, B = CUDA_R_16BF, C = CUDA_R_32F, CUBLAS_COMPUTE_32F),
 * which runs on tensor cores; FP32: cublasSgemm (the handle keeps
 * CUBLAS_DEFAULT_MATH, so no TF32 unless NVIDIA_TF32_OVERRIDE says so).
 * The handle's stream and workspace are set by its owner.
 */
#include "cu_internal.h"

int cu_gemm(cublasHandle_t h, int dtype, float *y, int ldy, const void *x, int ldx, const void *w,
            int n, int in, int out, float beta) {
    if (n <= 0 || out <= 0) return 0;
    const float alpha = 1.0f;
    if (dtype == CU_DTYPE_FP32) {
        CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &alpha,
                                 (const float *)w, in, (const float *)x, ldx, &beta, y, ldy));
    } else {
        CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &alpha, w,
                                  CUDA_R_16BF, in, x, CUDA_R_16BF, ldx, &beta, y, CUDA_R_32F, ldy,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    return 0;
}
