/*
 * cu.h - host-side API of the CUDA backend (the only header C code includes;
 * no CUDA types leak out of it, so the rest of NanoInfer builds without nvcc).
 *
 * Every CUDA/cuBLAS call inside cuda/ goes through CU_CHECK / CUBLAS_CHECK,
 * which turn a failure into NI_EIO with file:line on stderr; no function here
 * exits. Kernels arrive with the CUDA backend issue; this file starts with
 * device discovery so the build, the link and the "no GPU" skip are real now.
 */
#ifndef NI_CU_H
#define NI_CU_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices (0 when there is no GPU or no driver; never
 * an error). */
int cu_device_count(void);

/* Writes "NVIDIA H100 80GB HBM3, sm_90, 79 GiB" for device dev into buf.
 * Returns 0 or a negative NI_E* code. */
int cu_device_describe(int dev, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif

#endif
