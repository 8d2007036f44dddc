/*
 * cu.h - host-side API of the CUDA backend (the only header C code includes;
 * no CUDA types leak out of it, so the rest of NanoInfer builds without nvcc).
 *
 * Every CUDA/cuBLAS call inside cuda/ goes through CU_CHECK / CUBLAS_CHECK
 * (cuda/cu_internal.h), which turn a failure into NI_EIO with file:line on
 * stderr; no function here exits.
 *
 * The backend (eng_backend_cuda: cuda/cu_backend.cu runs a context,
 * cuda/cu_init.cu makes and frees it) implements the contract of
 * engine/backend/backend.h on one GPU. Every setting comes in the
 * eng_backend_config of init / kv_blocks_for_memory (nothing here reads the
 * environment: eng_backend_config_env in engine/backends.c maps the NI_CUDA_*
 * variables onto the config):
 *   dtype         ENG_DTYPE_DEFAULT / BF16: BF16 weights / activations / KV
 *                 cache with FP32 accumulation; FP32: FP32 everywhere
 *                 (verification against the CPU backend);
 *   kv_dtype      AUTO: the KV cache in dtype; BF16 (= AUTO with BF16); FP8:
 *                 E4M3 with scale 1.0, half the bytes, BF16 dtype only
 *                 (NI_EUNSUPPORTED otherwise; docs/cuda.md);
 *   device_index  the GPU (-1: device 0);
 *   quant         1: int8 projection and LM-head weights with per-row scales,
 *                 activations in dtype (W8A16 in BF16 mode); 0: none;
 *   graphs        decode CUDA graphs: DEFAULT / ON, OFF, EAGER (the padded
 *                 decode launches without capture; debugging and tests);
 *   att_splits    0: automatic attention split-K, >= 1 forced;
 *   att_kernel    enum cu_att_kernel: which attention kernel prefill batches
 *                 take (AUTO; SIMT / TC force one, for A/B runs);
 *   profile       1: per-phase device-time table on stderr at free (eager).
 * The backend also implements eng_backend.sample (cu_sample.cu): sampling
 * on the device from logits a forward(logits = NULL) left there, grammar
 * masks (eng_sample_row.allow) included (sample_masks = 1).
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

/* Compute precision of the cu_op_* wrappers and, inside the backend, of a
 * context (from eng_backend_config.dtype: cu_dtype_of). */
enum cu_dtype {
    CU_DTYPE_BF16 = 0, /* BF16 weights, GEMM inputs and KV cache; FP32 accumulation */
    CU_DTYPE_FP32 = 1, /* FP32 everywhere (SGEMM, no TF32) */
    CU_DTYPE_FP8 = 2,  /* E4M3: a KV-cache element type only (--kv-cache-dtype fp8, with
                        * BF16 compute), never a compute precision */
};

/* Attention kernel selection (eng_backend_config.att_kernel, NI_CUDA_ATT,
 * cu_op_attention). AUTO: batches with one query token per item
 * (max_nq == 1) take the decode kernel (cu_att_decode.cu), batches with
 * prefill chunks in a BF16 cache the tensor-core kernel
 * (cu_att_prefill.cu), everything else the SIMT k_attention. SIMT: never
 * the tensor-core kernel. TC: the tensor-core kernel for every batch
 * (decode-only ones too); shapes it does not take (FP32 cache, head_dim
 * other than 32 / 64 / 128) fail with NI_EINVAL. */
typedef enum cu_att_kernel {
    CU_ATT_AUTO = 0,
    CU_ATT_SIMT = 1,
    CU_ATT_TC = 2,
} cu_att_kernel;

/* Number of usable CUDA devices (0 when there is no GPU or no driver; never
 * an error). */
int cu_device_count(void);

/* Writes "NVIDIA H100 80GB HBM3, sm_90, 79 GiB" for device dev into buf.
 * Returns 0 or a negative NI_E* code. */
int cu_device_describe(int dev, char *buf, size_t cap);

/* Short name of a dtype ("bf16", "fp32", "?"). */
const char *cu_dtype_name(int dtype);

/* The enum cu_dtype the backend computes in for an eng_backend_config.dtype
 * (ENG_DTYPE_DEFAULT and BF16 -> CU_DTYPE_BF16, FP32 -> CU_DTYPE_FP32), or
 * -1 for a value outside enum eng_dtype. */
int cu_dtype_of(eng_dtype dtype);

/* The eng_backend_config.dtype that makes the backend compute in cu_dtype
 * (CU_DTYPE_BF16 -> ENG_DTYPE_BF16, CU_DTYPE_FP32 -> ENG_DTYPE_FP32; any
 * other value -> ENG_DTYPE_DEFAULT). For tests that loop over enum cu_dtype. */
eng_dtype cu_eng_dtype(int cu_dtype);

/* Counters of one backend context (tests and tools). */
typedef struct cu_backend_stats {
    int graph_mode;               /* 0 off, 1 graphs, 2 eager (from eng_backend_config.graphs) */
    int quant;                    /* 1: int8 weights */
    int graphs_captured;          /* decode graphs captured so far */
    int graphs_fine;              /* of which with fine attention chunks (a bucket has at
                                   * most one graph of each kind) */
    long long graph_launches;     /* decode steps replayed from a graph */
    long long decode_steps;       /* steps that took the padded decode path */
    long long general_steps;      /* steps that took the general path */
    long long persist_steps;      /* steps whose layers ran in the persistent decode
                                   * kernel (one sequence, one token; cu_persist.cu) */
    int persist;                  /* 1: the persistent decode kernel is enabled for this
                                   * model and settings */
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
