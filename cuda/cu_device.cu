/*
 * cu_device.cu - device discovery and the error-checking macros used by every
 * CUDA source (see cu.h).
 */
#include <cuda_runtime.h>
#include <stdio.h>

#include "../engine/util.h"
#include "cu.h"

#define CU_CHECK(call)                                                                  \
    do {                                                                                \
        cudaError_t e_ = (call);                                                        \
        if (e_ != cudaSuccess) {                                                        \
            fprintf(stderr, "%s:%d: CUDA error %s: %s\n", __FILE__, __LINE__, #call,    \
                    cudaGetErrorString(e_));                                            \
            return NI_EIO;                                                              \
        }                                                                               \
    } while (0)

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
