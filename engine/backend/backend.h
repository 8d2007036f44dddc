/*
 * backend.h - the one interface between the engine and a compute backend.
 *
 * Design: the engine never knows which backend runs. It picks a function
 * table once (eng_backend_cpu, later eng_backend_cuda) and calls it with a
 * batch of sequences; the backend owns the model weights in its own format and
 * the paged KV pool (one allocation, made at init). The engine owns the block
 * tables (which physical KV block holds which 16-token span of a sequence).
 *
 * KV pool layout (per backend, logical): for each layer, K and V blocks of
 * [block_size][n_kv_heads*head_dim]. Physical block b of a sequence's table
 * holds positions [i*block_size, (i+1)*block_size) for table index i.
 *
 * Contract of forward(): for every sequence s in the batch, its n tokens
 * (tokens[seq_start[s] .. seq_start[s+1])) sit at positions pos0[s] .. pos0[s]+n-1;
 * positions < pos0[s] are already in the KV cache (written by earlier calls)
 * through the same block table. The call writes K/V for the new positions into
 * the blocks named by the table (which must already cover them) and, for
 * every sequence with want_logits[s] != 0, the logits of its last token into
 * logits[s * vocab_size ...]. Rows of sequences without want_logits are left
 * untouched (a chunked prefill that has not reached the prompt's end).
 */
#ifndef NI_BACKEND_H
#define NI_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model/model.h"
#include "sampler.h"

typedef struct eng_batch {
    int n_seqs;
    int n_tokens;                 /* sum of every sequence's new tokens */
    const int32_t *tokens;        /* [n_tokens] concatenated by sequence */
    const int32_t *seq_start;     /* [n_seqs+1] offsets into tokens */
    const int32_t *pos0;          /* [n_seqs] position of each sequence's first new token */
    const int32_t *block_tables;  /* [n_seqs][max_blocks] physical block ids */
    int max_blocks;               /* row stride of block_tables */
    const uint8_t *want_logits;   /* [n_seqs] */
} eng_batch;

/* Compute precision asked of a backend (eng_backend_config.dtype). */
typedef enum eng_dtype {
    ENG_DTYPE_DEFAULT = 0, /* the backend's own: BF16 on the GPU, FP32 on the CPU */
    ENG_DTYPE_BF16 = 1,    /* BF16 weights / activations / KV cache, FP32 accumulation */
    ENG_DTYPE_FP32 = 2,    /* FP32 everywhere (the CPU backend's only precision) */
} eng_dtype;

/* Element type of the KV cache (eng_backend_config.kv_dtype, --kv-cache-dtype). */
typedef enum eng_kv_dtype {
    ENG_KV_AUTO = 0, /* the compute dtype (BF16 or FP32) */
    ENG_KV_BF16 = 1, /* BF16 (CUDA with BF16 compute; the same as AUTO there) */
    ENG_KV_FP8 = 2,  /* FP8 E4M3, per-tensor scale 1.0 (CUDA with BF16 compute only): half
                      * the bytes of BF16, so twice the blocks for the same memory */
} eng_kv_dtype;

/* Decode CUDA graphs of the CUDA backend (eng_backend_config.graphs; the CPU
 * backend ignores it). */
typedef enum eng_graphs {
    ENG_GRAPHS_DEFAULT = 0, /* ON (EAGER in NI_DEBUG builds and under profile) */
    ENG_GRAPHS_ON = 1,      /* decode steps replayed from captured graphs */
    ENG_GRAPHS_OFF = 2,     /* every step through the general path */
    ENG_GRAPHS_EAGER = 3,   /* the padded decode launches without capture (debugging) */
} eng_graphs;

/* Weight format of the projections on the backend. */
typedef enum eng_quant {
    ENG_QUANT_AUTO = -1, /* the model file's own precision: Q4_0/Q4_1 -> Q4, Q8_0 -> INT8,
                          * 16/32-bit -> NONE (eng_backend.auto_quant; NONE without it) */
    ENG_QUANT_NONE = 0,  /* as loaded: FP32 on the CPU (the reference), dtype on CUDA */
    ENG_QUANT_INT8 = 1,  /* CPU: blocks of 32 with int8 activations; CUDA: per-row scales */
    ENG_QUANT_Q4 = 2,    /* CPU only: 4-bit (Q4_1-style) layers + int8 LM head */
} eng_quant;

/* What an initialised backend holds (for the load report and /metrics). */
typedef struct eng_backend_info {
    eng_quant quant;       /* the weight format in use (never AUTO) */
    size_t weight_bytes;   /* weights the backend reads per token: its own copies, or the
                            * model's arena when it reads that in place */
    size_t kv_bytes;       /* the KV pool */
    size_t work_bytes;     /* activations and scratch */
    int n_threads;         /* CPU threads (0 when not applicable) */
    int tp;                /* tensor-parallel ranks in use (1: unsharded; 0: not reported) */
} eng_backend_info;

/* A zero-initialized config asks for every default of the settings after
 * quant (device_index 0 then names device 0 explicitly); eng_init fills
 * them from eng_config and the environment (eng_backend_config_env). */
typedef struct eng_backend_config {
    int n_blocks;                 /* KV pool size in blocks */
    int block_size;               /* tokens per block (default 16) */
    int max_batch_tokens;         /* upper bound of n_tokens per forward call */
    int max_seqs;                 /* upper bound of n_seqs per forward call */
    int n_threads;                /* CPU threads (0 = all cores) */
    eng_quant quant;              /* weight format (never AUTO here: eng_init resolves it) */
    eng_dtype dtype;              /* compute precision (CUDA: BF16 or FP32; the CPU
                                   * backend computes in FP32 whatever is asked) */
    eng_kv_dtype kv_dtype;        /* KV cache element type: AUTO, or (CUDA with BF16
                                   * compute) BF16 / FP8; anything else is refused by init
                                   * and kv_blocks_for_memory with NI_EUNSUPPORTED */
    int device_index;             /* GPU ordinal (CUDA); -1 = the default, device 0 */
    eng_graphs graphs;            /* decode CUDA graphs (CUDA) */
    int att_splits;               /* attention split-K factor (CUDA): 0 automatic,
                                   * >= 1 forced (debugging, tests) */
    int att_kernel;               /* CUDA attention kernel of prefill batches: 0 automatic,
                                   * 1 the SIMT kernels only, 2 the tensor-core prefill
                                   * kernel (enum cu_att_kernel; A/B measurements) */
    int no_gemv;                  /* CUDA: 1 = decode projections through cuBLAS instead of
                                   * the fused GEMV kernels (A/B measurements); 0 default */
    int no_fuse_rope;             /* CUDA: 1 = RoPE + KV store in their own kernel after the
                                   * fused QKV GEMV (A/B measurements); 0 default */
    int no_pdl;                   /* CUDA: 1 = no programmatic dependent launch between
                                   * the decode kernels (A/B measurements); 0 default */
    int no_att_lat;               /* CUDA: 1 = decode attention in its throughput shape only
                                   * (no fine key chunks for short contexts of small
                                   * batches; A/B measurements); 0 default */
    int att_stage;                /* CUDA: 1 = decode attention's coarse key chunks staged
                                   * in shared memory by cp.async instead of register loads
                                   * (the same math: bit-identical; measured faster on the
                                   * H200 in the kernel benchmarks, opt-in until verified
                                   * end to end, docs/cuda.md); 0 default */
    int persist;                  /* CUDA: 1 = one-sequence decode steps of up to 512 keys
                                   * through the persistent decode kernel (experimental:
                                   * faster decode steps, not yet a faster bench; see
                                   * docs/cuda.md); 0 default: the per-op kernels */
    int profile;                  /* CUDA: 1 = per-phase device-time table on stderr at free
                                   * (decode then runs eager); 0 off */
    int tp;                       /* tensor-parallel ranks (--tensor-parallel-size): 0 or 1 =
                                   * unsharded; N > 1 = the Megatron sharding of
                                   * engine/backend/tp.h over N ranks (CPU: FP32 weights only,
                                   * the ranks in one process; CUDA: refused for now). A
                                   * backend that cannot shard refuses N > 1 in init and in
                                   * kv_blocks_for_memory. */
} eng_backend_config;

/* Penalty state of one sequence for eng_backend.sample: every distinct token
 * of its prompt (when repetition_penalty != 1) and of its output (when any
 * penalty is on), i.e. the entries of its smp_state table. */
typedef struct eng_sample_tok {
    int32_t token; /* [0, vocab) */
    uint32_t val;  /* bit 31: occurs in the prompt; bits 0..30: times generated */
} eng_sample_tok;

/* One draw for eng_backend.sample. */
typedef struct eng_sample_row {
    int32_t seq;                /* batch index s of the last forward (want_logits[s] != 0) */
    const smp_params *p;        /* the request's validated params (logit_bias borrowed) */
    double u;                   /* uniform [0, 1) from the sequence's RNG: the one draw per
                                   token smp_sample() makes (greedy rows too) */
    const eng_sample_tok *toks; /* [n_toks] penalty table; NULL / 0 when no penalty is on */
    int32_t n_toks;
    const uint32_t *allow;      /* NULL, or the grammar mask of seq ((vocab + 31) / 32 words,
                                   bit t & 31 of word t >> 5: token t may be drawn). Only for a
                                   backend with sample_masks; it sets every other logit of the
                                   row to -inf before anything else, logprobs included, as
                                   gr_apply_mask does before smp_sample on the host. Rows that
                                   name the same seq carry the same mask. */
} eng_sample_row;

typedef struct eng_backend {
    const char *name;
    /* Creates the backend state for model m (which must outlive it).
     * Returns 0 or a negative NI_E* code with a message in err. */
    int (*init)(void **ctx, const mdl_model *m, const eng_backend_config *c,
                char *err, size_t errlen);
    /* See the contract above. Returns 0 or a negative NI_E* code: NI_EIO
     * means the device is unusable (a CUDA error is sticky: illegal address,
     * Xid, lost device) and the engine stops using the backend for good
     * (eng_fatal_error); any other code fails this batch only. */
    int (*forward)(void *ctx, const eng_batch *b, float *logits);
    /* Copies KV block src to dst in every layer (copy-on-write of a shared
     * partial block). Returns 0 or a code as forward's. */
    int (*copy_block)(void *ctx, int src, int dst);
    void (*free)(void *ctx);
    /* Optional (NULL: the engine sizes the pool itself): how many KV blocks
     * fit when the backend may use the fraction mem_util of its device's
     * memory, after weights and work buffers for config c (c->n_blocks is
     * ignored). Returns 0 with *n_blocks, or a negative code with a message. */
    int (*kv_blocks_for_memory)(const mdl_model *m, const eng_backend_config *c,
                                double mem_util, int *n_blocks, char *err, size_t errlen);
    /* Optional (NULL: the engine samples on the CPU from forward's logits).
     * Device sampling, smp_sample() semantics: a forward() called with
     * logits == NULL leaves the logits of its want_logits rows on the
     * device; this call then samples rows[0..n_rows) from them (several rows
     * may name the same sequence: n > 1 siblings) and fills out[i] like
     * smp_sample() (token; raw logprobs when p->logprobs >= 0). It must come
     * before the next forward(). A row whose logits hold a NaN / +inf or no
     * finite value gets out[i].token = -1 (smp_sample's NI_ERANGE). Returns
     * 0, NI_EINVAL (a row's seq had no logits, bad ids) or NI_EIO. */
    int (*sample)(void *ctx, const eng_sample_row *rows, int n_rows, smp_result *out);
    /* 1 when sample() honours eng_sample_row.allow (grammar masks on the
     * device); 0: the engine samples constrained requests on the host. */
    int sample_masks;
    /* Optional (NULL: NONE): the weight format ENG_QUANT_AUTO means for model
     * m on this backend. */
    eng_quant (*auto_quant)(const mdl_model *m);
    /* Optional: fills *out for a context made by init. Returns 0 or NI_EINVAL. */
    int (*info)(void *ctx, eng_backend_info *out);
} eng_backend;

extern const eng_backend eng_backend_cpu;

/* Picks the backend once, by name: device "cpu", "cuda" or "auto"/NULL (CUDA
 * when this build has it and a GPU is visible, else CPU); dtype "bf16",
 * "fp32" or NULL (the backend's default: bf16 on the GPU, fp32 on the CPU,
 * which only computes in fp32). Returns the function table, or NULL with a
 * message naming the parameter when the choice is invalid or unavailable.
 * For tests: with NI_DEBUG_FAULT=forward:N[-M][:eio|:enomem] set, the table
 * returned wraps the backend's and its forward() calls N..M (1-based,
 * counted over the process) return NI_EIO (default; no -M: every call from
 * N on, like a lost device) or NI_ENOMEM (no -M: call N only); with
 * NI_DEBUG_STEP_US=N every forward() first sleeps N microseconds (a slow
 * device: tests that need requests to stay in flight); a malformed value of
 * either gives NULL with a message. */
const eng_backend *eng_backend_select(const char *device, const char *dtype, char *err,
                                      size_t errlen);

/* The dtype named by eng_backend_select's dtype argument, for
 * eng_config.dtype: "bf16" -> ENG_DTYPE_BF16, "fp32" -> ENG_DTYPE_FP32,
 * NULL -> ENG_DTYPE_DEFAULT. Returns 0, or NI_EINVAL for any other name
 * (*out untouched). */
int eng_dtype_parse(const char *name, eng_dtype *out);

/* --kv-cache-dtype: NULL or "auto" -> ENG_KV_AUTO, "bf16" -> ENG_KV_BF16,
 * "fp8" or "fp8_e4m3" -> ENG_KV_FP8. Returns 0, or NI_EINVAL for any other
 * name (*out untouched). */
int eng_kv_dtype_parse(const char *name, eng_kv_dtype *out);

/* Short name of k ("auto", "bf16", "fp8"). */
const char *eng_kv_dtype_name(eng_kv_dtype k);

/* "auto", "fp32" (or "none"), "int8", "q4" -> *out. Returns 0 or NI_EINVAL. */
int eng_quant_parse(const char *name, eng_quant *out);

/* Short name of q ("auto", "fp32", "int8", "q4"). */
const char *eng_quant_name(eng_quant q);

/* The one place the backend settings are read from the environment (eng_init
 * calls it on the config it passes to kv_blocks_for_memory and init; tools
 * that call be->init directly may call it too). A variable fills only a
 * setting still at its default, so an explicit setting (a command-line
 * flag) wins over the environment, and the environment over the built-in
 * default. The variables apply to the backend named "cuda" only (c is
 * untouched for any other be):
 *   NI_CUDA_DTYPE=bf16|fp32      dtype, when ENG_DTYPE_DEFAULT;
 *   NI_CUDA_KV_DTYPE=auto|bf16|fp8|fp8_e4m3  kv_dtype, when ENG_KV_AUTO;
 *   NI_CUDA_DEVICE=<n>           device_index (>= 0), when < 0;
 *   NI_CUDA_QUANT=int8|1|none|0  quant (int8 = 1), when 0;
 *   NI_CUDA_GRAPHS=1|on|0|off|eager  graphs, when ENG_GRAPHS_DEFAULT;
 *   NI_CUDA_ATT_SPLITS=<n>       att_splits (>= 0), when 0;
 *   NI_CUDA_ATT=auto|simt|tc     att_kernel (0 / 1 / 2), when 0;
 *   NI_CUDA_GEMV=0|1             no_gemv = 1 for "0", when 0;
 *   NI_CUDA_PDL=0|1              no_pdl = 1 for "0", when 0;
 *   NI_CUDA_FUSE_ROPE=0|1        no_fuse_rope = 1 for "0", when 0;
 *   NI_CUDA_ATT_LAT=0|1          no_att_lat = 1 for "0", when 0;
 *   NI_CUDA_ATT_STAGE=0|1        att_stage = 1 for "1", when 0;
 *   NI_CUDA_PERSIST=0|1          persist = 1 for "1", when 0;
 *   NI_CUDA_PROFILE=<v>          profile = 1 for any non-empty v but "0", when 0.
 * An unset or empty variable changes nothing. Returns 0, or NI_EINVAL with a
 * message naming the variable when a value does not parse (c may then be
 * partly filled). */
int eng_backend_config_env(eng_backend_config *c, const eng_backend *be, char *err, size_t errlen);

#endif
