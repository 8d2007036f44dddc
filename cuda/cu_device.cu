/*
 * cu_device.cu - device discovery and the process-wide dtype selection of the
 * CUDA backend (see cu.h). Error-checking macros live in cu_internal.h.
 */
#include <stdlib.h>
#include <string.h>

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

/* -1: no override (environment, then BF16). */
static int g_dtype_override = -1;

extern "C" int cu_backend_set_dtype(int dtype) {
    if (dtype != -1 && dtype != CU_DTYPE_BF16 && dtype != CU_DTYPE_FP32) return NI_EINVAL;
    g_dtype_override = dtype;
    return 0;
}

extern "C" int cu_backend_get_dtype(void) {
    if (g_dtype_override >= 0) return g_dtype_override;
    const char *e = getenv("NI_CUDA_DTYPE");
    if (!e || !*e || !strcmp(e, "bf16")) return CU_DTYPE_BF16;
    if (!strcmp(e, "fp32")) return CU_DTYPE_FP32;
    return -1;
}

extern "C" const char *cu_dtype_name(int dtype) {
    return dtype == CU_DTYPE_BF16 ? "bf16" : dtype == CU_DTYPE_FP32 ? "fp32" : "?";
}
