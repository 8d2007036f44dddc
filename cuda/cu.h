/*
 * cu.h - host-side API of the CUDA backend (the only header C code includes;
 * no CUDA types leak out of it, so the rest of NanoInfer builds without nvcc).
 *
 * Every CUDA/cuBLAS call inside cuda/ goes through CU_CHECK / CUBLAS_CHECK
 * (cuda/cu_internal.h), which turn a failure into NI_EIO with file:line on
 * stderr; no function here exits.
 *
 * The backend (eng_backend_cuda, cuda/cu_backend.cu) implements the contract
 * of engine/backend/backend.h on one GPU. Its precision is chosen per process before
 * init: BF16 weights / activations / KV cache with FP32 accumulation (the
 * default), or FP32 everywhere (verification against the CPU backend).
 * Selection, first match wins:
 *   1. cu_backend_set_dtype(CU_DTYPE_*) called before init;
 *   2. the environment variable NI_CUDA_DTYPE=bf16|fp32 read at init;
 *   3. CU_DTYPE_BF16.
 * NI_CUDA_DEVICE=<n> picks the device (default 0).
 * Weight format: eng_backend_config.quant == 1, else NI_CUDA_QUANT=int8
 * (default none): int8 projection and LM-head weights with per-row scales,
 * activations in the dtype above (W8A16 in BF16 mode).
 * Decode CUDA graphs: NI_CUDA_GRAPHS=1 (default) | 0 (off) | eager (the
 * padded decode launches without capture; debugging and tests).
 * The backend also implements eng_backend.sample (cu_sample.cu): sampling
 * on the device from logits a forward(logits = NULL) left there.
 *
 * Op-level entry points that take host pointers (for tests and tools) are in
 * cuda/cu_ops.h.
 */
#ifndef NI_CU_H
#define NI_CU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "engine/backend/backend.h"

/* Compute precision of the CUDA backend and of the cu_op_* wrappers. */
enum cu_dtype {
    CU_DTYPE_BF16 = 0, /* BF16 weights, GEMM inputs and KV cache; FP32 accumulation */
    CU_DTYPE_FP32 = 1, /* FP32 everywhere (SGEMM, no TF32) */
};

/* Number of usable CUDA devices (0 when there is no GPU or no driver; never
 * an error). */
int cu_device_count(void);

/* Writes "NVIDIA H100 80GB HBM3, sm_90, 79 GiB" for device dev into buf.
 * Returns 0 or a negative NI_E* code. */
int cu_device_describe(int dev, char *buf, size_t cap);

/* Sets the precision (enum cu_dtype) used by every later eng_backend_cuda
 * init in this process, overriding NI_CUDA_DTYPE; -1 clears the override.
 * Not thread-safe: call before init. Returns 0 or NI_EINVAL. */
int cu_backend_set_dtype(int dtype);

/* The precision the next init will use (override, else environment, else
 * BF16). An unparsable NI_CUDA_DTYPE yields -1 (init then fails). */
int cu_backend_get_dtype(void);

/* Short name of a dtype ("bf16", "fp32", "?"). */
const char *cu_dtype_name(int dtype);

/* Counters of one backend context (tests and tools). */
typedef struct cu_backend_stats {
    int graph_mode;               /* 0 off, 1 graphs, 2 eager (NI_CUDA_GRAPHS) */
    int quant;                    /* 1: int8 weights */
    int graphs_captured;          /* decode buckets captured so far */
    long long graph_launches;     /* decode steps replayed from a graph */
    long long decode_steps;       /* steps that took the padded decode path */
    long long general_steps;      /* steps that took the general path */
    long long sample_calls;       /* successful eng_backend.sample calls */
} cu_backend_stats;

/* Copies the counters of a context made by eng_backend_cuda.init.
 * Returns 0 or NI_EINVAL (NULL argument). */
int cu_backend_get_stats(const void *ctx, cu_backend_stats *st);

/* The CUDA backend (see engine/backend/backend.h). init fails with NI_EUNSUPPORTED
 * when there is no GPU, NI_ENOMEM when the weights, KV pool or work buffers
 * do not fit. */
extern const eng_backend eng_backend_cuda;

#ifdef __cplusplus
}
#endif

#endif
