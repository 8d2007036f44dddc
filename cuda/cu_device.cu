/*
 * cu_device.cu - device discovery and the dtype names / mappings of the CUDA
 * backend (see cu.h). Error-checking macros live in cu_internal.h.
 */

#include "cu_internal.h"

extern "C" int cu_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver" error */
        return 0;
    }
    return n;
}

extern "C" int cu_device_describe(int dev, char *buf, size_t cap) {
    cudaDeviceProp p;
    CU_CHECK(cudaGetDeviceProperties(&p, dev));
    snprintf(buf, cap, "%s, sm_%d%d, %zu GiB", p.name, p.major, p.minor,
             p.totalGlobalMem >> 30);
    return 0;
}

extern "C" const char *cu_dtype_name(int dtype) {
    return dtype == CU_DTYPE_BF16   ? "bf16"
           : dtype == CU_DTYPE_FP32 ? "fp32"
           : dtype == CU_DTYPE_FP8  ? "fp8"
                                    : "?";
}

extern "C" int cu_dtype_of(eng_dtype dtype) {
    switch (dtype) {
    case ENG_DTYPE_DEFAULT:
    case ENG_DTYPE_BF16: return CU_DTYPE_BF16;
    case ENG_DTYPE_FP32: return CU_DTYPE_FP32;
    }
    return -1;
}

extern "C" eng_dtype cu_eng_dtype(int cu_dtype) {
    return cu_dtype == CU_DTYPE_BF16   ? ENG_DTYPE_BF16
           : cu_dtype == CU_DTYPE_FP32 ? ENG_DTYPE_FP32
                                       : ENG_DTYPE_DEFAULT;
}
