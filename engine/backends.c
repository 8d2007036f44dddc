/*
 * backend.c - choosing a backend once, by name, so that the engine and every
 * front end (generate, bench, serve) stay unaware of CUDA.
 */
#include <string.h>

#include "engine/backend/backend.h"
#include "engine/util/util.h"
#ifdef NI_USE_CUDA
#include "cuda/cu.h"
#endif

const eng_backend *eng_backend_select(const char *device, const char *dtype, char *err,
                                      size_t errlen) {
    if (!device) device = "auto";
    int want_cuda = !strcmp(device, "cuda");
    if (!want_cuda && strcmp(device, "cpu") && strcmp(device, "auto")) {
        ni_fail(err, errlen, NI_EINVAL, "device: '%s' is not one of auto, cpu, cuda", device);
        return NULL;
    }
    if (dtype && strcmp(dtype, "bf16") && strcmp(dtype, "fp32")) {
        ni_fail(err, errlen, NI_EINVAL, "dtype: '%s' is not one of bf16, fp32", dtype);
        return NULL;
    }
#ifdef NI_USE_CUDA
    if (strcmp(device, "cpu") && cu_device_count() > 0) {
        if (dtype) cu_backend_set_dtype(strcmp(dtype, "fp32") ? CU_DTYPE_BF16 : CU_DTYPE_FP32);
        return &eng_backend_cuda;
    }
    if (want_cuda) {
        ni_fail(err, errlen, NI_EUNSUPPORTED, "device: cuda requested but no GPU is visible");
        return NULL;
    }
#else
    if (want_cuda) {
        ni_fail(err, errlen, NI_EUNSUPPORTED, "device: this build has no CUDA backend (USE_CUDA=0)");
        return NULL;
    }
#endif
    if (dtype && strcmp(dtype, "fp32")) {
        ni_fail(err, errlen, NI_EUNSUPPORTED, "dtype: the CPU backend computes in fp32 only");
        return NULL;
    }
    return &eng_backend_cpu;
}
