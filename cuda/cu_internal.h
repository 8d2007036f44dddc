/*
 * cu_internal.h - shared internals of the CUDA sources (C++ / nvcc only; C
 * code includes cu.h or cu_ops.h instead).
 *
 * Error handling: every CUDA runtime call is wrapped in CU_CHECK and every
 * cuBLAS call in CUBLAS_CHECK; a failure prints "file:line: ..." to stderr and
 * makes the enclosing function return NI_EIO. Every kernel launch is followed
 * by CU_LAUNCH_CHECK(): cudaGetLastError() always (a cheap host call that
 * catches bad launch configurations), plus a stream synchronize when built
 * with -DNI_DEBUG so an asynchronous fault is reported at its launch site.
 *
 * Launchers: each op family (cu_elementwise.cu, cu_norm.cu, cu_rope.cu,
 * cu_attention.cu, cu_gemm.cu) exports host functions that enqueue its
 * kernels on a stream over DEVICE pointers and return 0 or NI_EIO; they never
 * allocate and never synchronize (except under NI_DEBUG). The backend
 * (cu_backend.cu, cu_init.cu) and the host-pointer wrappers (cu_ops.cu) are
 * their only callers. "dtype" arguments are enum cu_dtype and select the
 * element type of the buffers documented as "T": __nv_bfloat16 for
 * CU_DTYPE_BF16, float for CU_DTYPE_FP32. Buffers documented as float are
 * FP32 in both modes. KV caches are documented as "C": T, or E4M3 FP8
 * (cu_fp8, one byte, per-tensor scale 1.0) where the args say kv_fp8 (the
 * --kv-cache-dtype fp8 option; only with BF16 compute).
 *
 * The backend context (cu_ctx, at the end) is shared by cu_init.cu, which
 * makes and frees it, and cu_backend.cu, which runs it.
 */
#ifndef NI_CU_INTERNAL_H
#define NI_CU_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

extern "C" {
#include "engine/backend/twins.h"
#include "engine/util/util.h"
#include "cu.h"
}

#define CU_CHECK(call)                                                                   \
    do {                                                                                 \
        cudaError_t e_ = (call);                                                         \
        if (e_ != cudaSuccess) {                                                         \
            fprintf(stderr, "%s:%d: CUDA error in %s: %s\n", __FILE__, __LINE__, #call,  \
                    cudaGetErrorString(e_));                                             \
            return NI_EIO;                                                               \
        }                                                                                \
    } while (0)

#define CUBLAS_CHECK(call)                                                               \
    do {                                                                                 \
        cublasStatus_t s_ = (call);                                                      \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                               \
            fprintf(stderr, "%s:%d: cuBLAS error in %s: %s\n", __FILE__, __LINE__, #call, \
                    cublasGetStatusString(s_));                                          \
            return NI_EIO;                                                               \
        }                                                                                \
    } while (0)

#ifdef NI_DEBUG
#define CU_LAUNCH_CHECK(stream)                                                          \
    do {                                                                                 \
        CU_CHECK(cudaGetLastError());                                                    \
        CU_CHECK(cudaStreamSynchronize(stream));                                         \
    } while (0)
#else
#define CU_LAUNCH_CHECK(stream)                                                          \
    do {                                                                                 \
        (void)(stream);                                                                  \
        CU_CHECK(cudaGetLastError());                                                    \
    } while (0)
#endif

/* Forwards a non-zero return code of a launcher / helper. */
#define CU_TRY(expr)                                                                     \
    do {                                                                                 \
        int rc_ = (expr);                                                                \
        if (rc_) return rc_;                                                             \
    } while (0)

typedef __nv_bfloat16 cu_bf16;
typedef __nv_fp8_e4m3 cu_fp8;

/* Bytes of one element of a "T" (or, for CU_DTYPE_FP8, "C") buffer. */
static inline size_t cu_dtype_size(int dtype) {
    return dtype == CU_DTYPE_FP32 ? 4 : dtype == CU_DTYPE_FP8 ? 1 : 2;
}

/* ---- device-side conversions -------------------------------------------- */

__device__ __forceinline__ float cu_tof(float x) { return x; }
__device__ __forceinline__ float cu_tof(cu_bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float cu_tof(cu_fp8 x) { return (float)x; }

template <typename T> __device__ __forceinline__ T cu_fromf(float x);
template <> __device__ __forceinline__ float cu_fromf<float>(float x) { return x; }
template <> __device__ __forceinline__ cu_bf16 cu_fromf<cu_bf16>(float x) {
    return __float2bfloat16_rn(x);
}
/* E4M3 with round-to-nearest-even and saturation to +-448 (vLLM's cache
 * conversion with scale 1.0); the host twin is eng_fp8_e4m3_round. */
template <> __device__ __forceinline__ cu_fp8 cu_fromf<cu_fp8>(float x) {
    cu_fp8 r;
    r.__x = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
    return r;
}

/* 4 E4M3 of a 32-bit word as FP32, exactly (byte 0 is element 0). */
__device__ __forceinline__ void cu_fp8x4_unpack(unsigned w, float *f) {
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const __half2_raw h =
            __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w >> (16 * j)), __NV_E4M3);
        const float2 p = __half22float2(__half2(h));
        f[2 * j] = p.x;
        f[2 * j + 1] = p.y;
    }
}

/* Sum over the 32 lanes of a warp (every lane gets the total). */
__device__ __forceinline__ float cu_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float cu_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- programmatic dependent launch (PDL, sm_90) --------------------------------
 * A kernel launched with cu_launch_k(..., pdl = 1, ...) may start while the
 * kernel before it in the stream is still running: its blocks become resident
 * as soon as every block of the previous kernel has called cu_pdl_trigger (or
 * exited), and cu_pdl_wait returns once the previous kernel has completed and
 * its writes are visible. Because every kernel launched that way waits before
 * it completes, "previous kernel complete" is transitive: after cu_pdl_wait,
 * every earlier kernel of the stream is complete.
 *
 * The rule for a PDL kernel: before cu_pdl_wait it may only read memory that
 * no kernel of the forward writes (weights, RoPE tables) and must not write
 * global memory at all; a kernel launched with pdl must call cu_pdl_wait on
 * every path that touches activations (every block, also one that exits
 * early). What it buys: the next kernel's launch overlaps the tail of the
 * previous one, the bubble between the ~6 launches of a decode layer. Where a
 * kernel calls cu_pdl_trigger matters (k_gemv: at its end, see there).
 * Without the launch attribute both calls are no-ops, so a PDL-aware kernel
 * may be launched either way. */
__device__ __forceinline__ void cu_pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void cu_pdl_trigger(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Launches k<<<grid, block, smem, st>>>(args...), with the programmatic
 * stream serialization attribute when pdl != 0 (k must follow the rule
 * above). Returns the launch's cudaError_t. */
template <typename... KP, typename... A>
static inline cudaError_t cu_launch_k(void (*k)(KP...), dim3 grid, dim3 block, size_t smem,
                                      cudaStream_t st, int pdl, A... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, k, args...);
}

/* ---- cu_elementwise.cu --------------------------------------------------- */

/* dst[i] = (T)src[i] for i < n (round to nearest even for BF16; dtype
 * CU_DTYPE_FP8: E4M3 as cu_fromf<cu_fp8>, for the test wrappers' caches). */
int cu_launch_convert(cudaStream_t st, void *dst /* T [n] */, int dtype,
                      const float *src /* [n] */, size_t n);

/* dst[i] = (float)src[i] for i < n (the inverse of cu_launch_convert). */
int cu_launch_to_f32(cudaStream_t st, float *dst /* [n] */, const void *src /* T [n] */, int dtype,
                     size_t n);

/* out[i][:] = (float)table[tokens[i]][:]. Token ids must be in range. */
int cu_launch_embed(cudaStream_t st, float *out /* [n][dim] */,
                    const void *table /* T [vocab][dim] */, int dtype,
                    const int32_t *tokens /* [n] */, int n, int dim);

/* out[i][j] = (T)(silu(gu[i][j]) * gu[i][hidden + j]), silu(g) = g/(1+exp(-g)).
 * gu holds the fused gate|up projection of each row. */
int cu_launch_swiglu(cudaStream_t st, void *out /* T [n][hidden] */, int dtype,
                     const float *gu /* [n][2*hidden] */, int n, int hidden);

/* KV copy-on-write: for each of n_planes planes of plane_bytes (one per
 * layer and K/V), copies block src to block dst (block_bytes each; any sizes:
 * 4-byte words when both are multiples of 4, else bytes). */
int cu_launch_copy_block(cudaStream_t st, void *pool /* [n_planes][plane_bytes] */, int n_planes,
                         size_t plane_bytes, size_t block_bytes, int src, int dst);

/* ---- cu_norm.cu ----------------------------------------------------------- */

/* HF RMSNorm of n rows, FP32 math: for row i with source row
 * s = rows ? rows[i] : i: if add != NULL, x[s] += add[i] (stored back, the
 * fused residual add); then out[i] = (T)(x[s] * rsqrt(mean(x[s]^2) + eps) * w). */
int cu_launch_rmsnorm(cudaStream_t st, void *out /* T [n][dim] */, int dtype,
                      float *x /* [..][dim] */, const float *add /* [n][dim] or NULL */,
                      const int32_t *rows /* [n] or NULL */, const float *w /* [dim] */, int n,
                      int dim, float eps);

/* ---- cu_rope.cu ------------------------------------------------------------ */

typedef struct cu_rope_args {
    float *qkv;            /* [n][ld]: q [n_heads*hd] | k [n_kv*hd] | v [n_kv*hd] per row */
    int ld;                /* row stride of qkv in floats, >= (n_heads + 2*n_kv) * hd */
    const int32_t *pos;    /* [n] position of each token */
    const int32_t *slot;   /* [n] physical cache slot: block * block_size + pos % block_size;
                            * < 0: K/V of that token are not stored (decode padding rows) */
    const float *cos_tab;  /* [max_pos][hd/2] */
    const float *sin_tab;  /* [max_pos][hd/2] */
    const float *q_norm;   /* [hd] or NULL: qwen3 per-head RMSNorm of q (and k_norm of k) */
    const float *k_norm;   /* [hd] or NULL */
    void *k_cache;         /* C [n_slots][n_kv*hd] of one layer */
    void *v_cache;         /* C [n_slots][n_kv*hd] of one layer */
    int n, n_heads, n_kv, hd, interleaved;
    float eps;
    int pdl;    /* launched with PDL (cu_launch_k) */
    int kv_fp8; /* the caches are E4M3 (C = cu_fp8), else C = T */
} cu_rope_args;

/* Per token: optional per-head RMSNorm of q and k, RoPE of q (in place, FP32)
 * and k, then k and v written to the cache slot (converted to C: T of dtype,
 * or E4M3 when a->kv_fp8). */
int cu_launch_rope_kv(cudaStream_t st, const cu_rope_args *a, int dtype);

/* ---- cu_attention.cu -------------------------------------------------------- */

/* Query rows per attention work item (query tokens x heads of one kv head),
 * keys per shared-memory tile, threads per block. */
#define CU_ATT_ROWS 64
#define CU_ATT_TILE 32
#define CU_ATT_THREADS 256
#define CU_ATT_MAX_HD 128
#define CU_ATT_MAX_SPLITS 64

/* One work item: n_q consecutive query tokens of one sequence (batch tokens
 * tok0 .. tok0+n_q-1 at positions pos_first ..), attending over positions
 * [0, pos_first + n_q) with a causal mask per token. n_q == 0 (with
 * pos_first 0) is an empty item: nothing is read or written (the padding
 * rows of a decode graph). */
typedef struct cu_att_item {
    int32_t tok0, n_q, pos_first, seq;
} cu_att_item;

/* Cuts every sequence of a batch into items of at most CU_ATT_ROWS / G query
 * tokens (G = n_heads / n_kv). items must hold n_tokens entries. Returns the
 * item count; *max_ctx gets the longest context of any item, *max_nq the
 * most query tokens of any item (1: a pure decode batch). */
int cu_att_plan(cu_att_item *items, int n_seqs, const int32_t *seq_start, const int32_t *pos0,
                int G, int *max_ctx, int *max_nq);

/* Split-K factor for a call: 1 when n_items * n_kv blocks fill the device,
 * else enough splits of the key range to give ~2 blocks per SM, bounded by
 * the tiles of the longest context, CU_ATT_MAX_SPLITS and part_slots /
 * n_items (the partial-result workspace). */
int cu_att_choose_splits(int n_items, int n_kv, int max_ctx, int n_sm, int part_slots);

/* Floats of partial-result workspace per slot (one item x one split):
 * n_kv * CU_ATT_ROWS * (hd + 2). */
size_t cu_att_part_floats(int n_kv, int hd);

/* Partial-result slots the backend allocates (min(128, 64 MiB / slot bytes),
 * at least 1): the part_slots of cu_att_choose_splits. */
int cu_att_part_slots(int n_kv, int hd);

typedef struct cu_att_args {
    void *out;                 /* T [n_tokens][n_heads*hd] */
    const float *q;            /* [n_tokens][ldq], head h at h*hd (RoPE applied) */
    int ldq;
    const void *k_cache;       /* C [n_slots][n_kv*hd] of one layer */
    const void *v_cache;       /* C [n_slots][n_kv*hd] */
    const cu_att_item *items;  /* [n_items] */
    const int32_t *tables;     /* [n_seqs][tbl_stride] physical block ids */
    int tbl_stride;
    int n_items, n_splits;     /* n_splits > 1 needs part */
    float *part;               /* [n_items*n_splits][cu_att_part_floats] or NULL */
    int n_heads, n_kv, hd, block_size;
    int max_nq;                /* most query tokens of any item (1: decode only) */
    cu_att_kernel kernel;      /* which kernel (cu.h); AUTO in the backend by default */
    int pdl;                   /* the decode kernels launched with PDL (cu_launch_k) */
    int kv_fp8;                /* C = E4M3 (BF16 dtype only: NI_EINVAL with FP32), else T */
    int min_tiles;             /* decode kernel: a context of at most this many key tiles
                                * is one split (dec_per in cu_att_decode.cuh); 0 = none */
    int no_lat;                /* decode kernel: 1 = coarse key chunks only (the
                                * throughput shape); 0: fine chunks where the grid is
                                * small (cu_att_decode.cu; the backend sets 0 only when
                                * cu_att_decode_fine_keys covers the batch's contexts) */
    int stage;                 /* decode kernel: 1 = the coarse chunks staged in shared
                                * memory by cp.async (16-byte cache loads; the same
                                * results bit for bit), 0 = register loads */
} cu_att_args;

/* Causal GQA attention over the paged cache with online softmax (never a
 * score matrix in memory): out[t][h] = softmax(q[t][h] . K / sqrt(hd)) V over
 * the positions [0, pos(t)] of t's sequence. n_splits > 1 runs split-K
 * (flash-decoding): each split handles a range of key tiles into part, then a
 * combine kernel merges them. a->kernel picks the kernel (enum
 * cu_att_kernel, cu.h); NI_EINVAL for CU_ATT_TC on a shape
 * cu_att_prefill_ok refuses. */
int cu_launch_attention(cudaStream_t st, const cu_att_args *a, int dtype);

/* k_att_combine alone (the split-K merge of k_attention's partial layout:
 * M in natural-log units, empty splits with M = -inf): for the prefill
 * kernel's splits. a->n_splits > 1 and a->part required. */
int cu_launch_att_combine(cudaStream_t st, const cu_att_args *a, int dtype);

/* ---- cu_att_prefill.cu: tensor-core (mma.sync BF16) prefill attention ------- */

/* Whether the tensor-core kernel takes a: BF16 cache (not kv_fp8: cp.async
 * cannot convert), head_dim 32, 64 or
 * 128, 16-byte aligned caches, G <= CU_ATT_ROWS. Any max_nq. */
int cu_att_prefill_ok(const cu_att_args *a, int dtype);

/* cu_launch_attention's contract (same items from cu_att_plan, same split-K
 * partial layout, merged by cu_launch_att_combine) on tensor cores for a
 * batch cu_att_prefill_ok accepts (NI_EINVAL otherwise). The dynamic
 * shared-memory limit must have been raised by cu_att_prepare before a
 * graph capture (it is raised here outside capture). */
int cu_launch_att_prefill(cudaStream_t st, const cu_att_args *a, int dtype);

/* Raises k_att_prefill's dynamic shared-memory limits (cu_att_prepare calls it). */
int cu_att_prefill_prepare(void);

/* ---- cu_att_decode.cu: flash-decoding for max_nq == 1 ------------------------ */

/* Whether the decode kernel takes a: max_nq == 1, head_dim 16, 32, 64 or 128,
 * 16-byte aligned caches (and not disabled by cu_att_decode_enable). */
int cu_att_decode_ok(const cu_att_args *a);

/* The longest context (keys) for which a decode launch of a (with
 * no_lat 0) walks every item in one fine chunk per warp: n_splits fine
 * splits of ad_lo tiles each; 0 when the launch would take the coarse
 * chunks anyway (a split factor of 1, a grid of more than
 * CU_ATT_FINE_BLOCKS blocks, a shape cu_att_decode_ok refuses). Longer
 * contexts should run coarse (no_lat 1): fine chunks over several tiles per
 * split are slower than the coarse ones (docs/cuda.md). */
int cu_att_decode_fine_keys(const cu_att_args *a, int dtype);

/* cu_launch_attention's contract for a batch cu_att_decode_ok accepts
 * (NI_EINVAL otherwise): k_att_decode, plus k_att_dcombine when
 * n_splits > 1. Splits beyond an item's key tiles stay empty (not written,
 * not read). The coarse chunks are staged in dynamic shared memory, over
 * the default limit for R = 8: cu_att_decode_prepare must have run
 * (cu_att_prepare calls it) before a launch or a capture. */
int cu_launch_att_decode(cudaStream_t st, const cu_att_args *a, int dtype);

/* Raises the dynamic shared-memory limit of every decode kernel variant.
 * Returns 0 or NI_EIO. */
int cu_att_decode_prepare(void);

/* Benchmarks only: 0 sends decode batches to k_attention (the old kernel),
 * 1 (default) to the decode kernel. Not thread-safe. */
void cu_att_decode_enable(int on);

/* Benchmarks and tests: how the decode kernel reads an E4M3 cache, 1
 * 16-byte loads of 16 elements, 0 8-byte loads of 8 (the BF16 lane layout
 * and register use), -1 (default) by head_dim. Not thread-safe. */
void cu_att_decode_fp8_wide(int on);

/* Raises the attention kernels' dynamic shared-memory limit to what head_dim
 * CU_ATT_MAX_HD needs, on the current device; call once before capturing
 * launches into a graph (cu_launch_attention does it itself outside capture). */
int cu_att_prepare(void);

/* ---- cu_gemm.cu ------------------------------------------------------------- */

/* y[n][0..out) (row stride ldy) = x W^T + beta * y, where x is T [n][ldx]
 * and W is T [out][in] (row-major, the mdl_model layout). BF16: cublasGemmEx
 * with BF16 inputs, FP32 output and FP32 compute (tensor cores). FP32:
 * cublasSgemm with the handle's default math mode (no TF32). beta is 0 or 1
 * (1 fuses the residual add). */
int cu_gemm(cublasHandle_t h, int dtype, float *y, int ldy, const void *x, int ldx, const void *w,
            int n, int in, int out, float beta);

/* ---- cu_gemv.cu: BF16 weight-streaming GEMV with fused norm / epilogues ------- */

/* Activation rows cu_launch_gemv takes, and up to which the backend uses it.
 * Measured on an H200 (test_cuda_quant, docs/perf.md): the FP32-FMA k_gemv
 * (1-2 rows) streams weights at 2.7-4.2 TB/s against cuBLAS's 0.75-3.8; the
 * tensor-core k_gemv_tc (3-8 rows) beats cuBLAS on wqkv but loses on
 * w_down and the LM head (too few 16-row tiles per SM, a block reduction per
 * tile), and end to end batches of 3-8 ran 12-15 % slower with it, so the
 * backend keeps cuBLAS above 2 rows until k_gemv_tc splits K across blocks. */
#define CU_GEMV_MAX_ROWS 8
#define CU_GEMV_BACKEND_ROWS 2

typedef struct cu_gemv_args {
    const cu_bf16 *w;      /* [out][in]; swiglu: [2*out][in], gate rows then up rows */
    int n, in, out;        /* activation rows (1..CU_GEMV_MAX_ROWS), inputs, outputs */
    /* input: BF16 rows x [n][ldx], or (xf != NULL) RMSNorm of FP32 residual rows
     * xf[rows ? rows[i] : i][0..in) (row stride ldx) with weight norm_w and eps */
    const void *x;
    const float *xf;
    const int32_t *rows;
    const float *norm_w;
    float eps;
    int ldx;
    /* output: FP32 y[n][ldy] = acc (or += acc when accumulate); swiglu: BF16
     * y[n][ldy] = silu(gate) * up */
    void *y;
    int ldy;
    int accumulate, swiglu;
    int pdl; /* launch with programmatic dependent launch (see cu_launch_k); the
              * FMA kernel only (k_gemv_tc launches plainly) */
    /* rope_on: the QKV projection with k_rope_kv fused into the epilogue (n <=
     * 2 rows, BF16 or (rope.kv_fp8) E4M3 caches, no qk-norm; out =
     * (n_heads + 2*n_kv) * hd): q heads are rotated into y (FP32, row stride
     * ldy >= n_heads * hd), k heads rotated and v heads copied to rope's
     * cache slots; rope.qkv / ld / n / eps / pdl are not read. */
    int rope_on;
    cu_rope_args rope;
} cu_gemv_args;

/* Whether k_gemv takes this shape: n <= CU_GEMV_MAX_ROWS, in % 8 == 0, the
 * staged input fits shared memory, w (and x, ldx, when x != NULL) 16-byte
 * aligned. Callers fall back to cu_gemm (+ rmsnorm / swiglu) otherwise. */
int cu_gemv_ok(int n, int in, int out, const void *w, const void *x, int ldx);

/* y = f(norm?(x) W^T) in one launch (see cu_gemv_args); n_sm sizes the grid.
 * NI_EINVAL for a shape cu_gemv_ok refuses. */
int cu_launch_gemv(cudaStream_t st, const cu_gemv_args *a, int n_sm);

/* Raises k_gemv's dynamic shared-memory limit; once per device before any
 * launch or capture. */
int cu_gemv_prepare(void);

/* ---- cu_quant.cu: int8 weights (W8A16) ---------------------------------------- */

/* Activation rows up to which the int8 GEMM runs the GEMV kernel (decode);
 * above, it dequantizes to T and calls cuBLAS. */
#define CU_GEMV_MAX_N 16

/* Per-row symmetric int8 quantization of the device FP32 matrix w [rows][cols]:
 * scale[r] = max_c |w[r][c]| / 127, q[r][c] = rint(w[r][c] / scale[r])
 * clamped to [-127, 127] (scale 0 -> q 0). The dequantized weight is
 * q * scale. */
int cu_launch_quantize_rows(cudaStream_t st, int8_t *q /* [rows][cols] */,
                            float *scale /* [rows] */, const float *w /* [rows][cols] */,
                            int rows, int cols);

/* y[m][o] = beta * y[m][o] + scale[o] * sum_k q[o][k] * x[m][k] for m < n <=
 * CU_GEMV_MAX_N (FP32 accumulation; beta 0 never reads y). x is T [n][ldx].
 * NI_EINVAL when n > CU_GEMV_MAX_N. */
int cu_launch_gemv_q8(cudaStream_t st, int dtype, float *y /* [n][ldy] */, int ldy,
                      const void *x /* T [n][ldx] */, int ldx, const int8_t *q /* [out][in] */,
                      const float *scale /* [out] */, int n, int in, int out, float beta);

/* Benchmarks only: 0 (default) the GEMV kernel for n <= CU_GEMV_MAX_N, 1
 * cu_gemm_q8 takes the dequantize + cuBLAS path for every n. Not
 * thread-safe. */
void cu_quant_set_gemv(int variant);

/* The int8 analogue of cu_gemm: y[n][0..out) = beta * y + x (q * scale)^T.
 * n <= CU_GEMV_MAX_N: cu_launch_gemv_q8. Otherwise output-row chunks of q
 * are widened to T in deq (deq_bytes, at least one row of in elements),
 * multiplied with cuBLAS (into y when beta == 0, else into tmp, which must
 * hold n * out floats) and scaled per column (plus beta * y). Enqueues on st
 * (the handle's stream); returns 0, NI_EINVAL or NI_EIO. */
int cu_gemm_q8(cublasHandle_t h, cudaStream_t st, int dtype, float *y, int ldy, const void *x,
               int ldx, const int8_t *q, const float *scale, int n, int in, int out, float beta,
               void *deq, size_t deq_bytes, float *tmp);

/* ---- cu_sample.cu: the fused sampler ------------------------------------------- */

/* Per-row sampling job on the device (packed on the host by cu_sample_pack). */
typedef struct cu_smp_row {
    int32_t src;          /* logits row (in cu_sample_args.logits) */
    int32_t work;         /* CU_SMP_WORK_SRC: read src as is; CU_SMP_WORK_INPLACE: apply
                           * bias / penalties to src in place; >= 0: copy src to that
                           * scratch row first */
    float temperature, top_p, min_p, rep, pres, freq;
    int32_t top_k, logprobs;
    int32_t n_bias, n_toks;  /* entries at ents[bias_off..), ents[toks_off..) */
    int64_t bias_off, toks_off;
    double u;             /* uniform [0, 1) of this draw */
} cu_smp_row;

#define CU_SMP_WORK_SRC (-1)
#define CU_SMP_WORK_INPLACE (-2)

/* A sparse entry: logit_bias (token, float bits of the bias) or a penalty
 * token (token, bit 31 = in prompt | output count). */
typedef struct cu_smp_ent {
    int32_t token;
    uint32_t bits;
} cu_smp_ent;

typedef struct cu_smp_out {
    int32_t token;        /* sampled token, -1 on error */
    int32_t err;          /* 0, or NI_ERANGE (NaN / +inf logit, no finite logit) */
    float logprob;        /* raw log_softmax of token (logprobs >= 0) */
    int32_t n_top;
    int32_t top_tok[SMP_MAX_LOGPROBS];
    float top_lp[SMP_MAX_LOGPROBS];
} cu_smp_out;

typedef struct cu_sample_args {
    float *logits;            /* [..][vocab] FP32 rows (modified for CU_SMP_WORK_INPLACE rows) */
    int vocab;
    const cu_smp_row *rows;   /* [n_rows] device */
    int n_rows;
    const cu_smp_ent *ents;   /* device */
    float *scratch;           /* [n_scratch][vocab] device */
    cu_smp_out *out;          /* [n_rows] device */
    float *probs;             /* [n_rows][vocab] or NULL: the distribution drawn from (tests) */
} cu_sample_args;

/* One block per row: the smp_sample pipeline (see cu_sample.cu). */
int cu_launch_sample(cudaStream_t st, const cu_sample_args *a);

/* Host packing of eng_sample_row jobs for cu_launch_sample. row_of_seq[s]
 * is the logits row of sequence s (-1: none), n_seqs its length; consumers
 * [n_seqs] is workspace. Packs rows[0..) into rh[0..cap_rows) and their
 * sparse entries into eh[0..ent_cap), stopping before the first row that
 * does not fit (entries or one of n_scratch scratch rows); *n_packed >= 1
 * unless an error is returned. Returns 0, NI_EINVAL (bad row: no logits for
 * its seq, NULL params, token ids out of range) or NI_ERANGE (one row's
 * entries exceed ent_cap). */
int cu_sample_pack(const eng_sample_row *rows, int n_rows, int vocab, const int32_t *row_of_seq,
                   int n_seqs, int *consumers, cu_smp_row *rh, int cap_rows, cu_smp_ent *eh,
                   size_t ent_cap, int n_scratch, int *n_packed, size_t *n_ents);

/* out[i] from the device result d[i]. */
void cu_sample_result(smp_result *out, const cu_smp_out *d);

/* Grammar masks (eng_sample_row.allow) travel as slots of CU_SMP_MASK_STRIDE(vocab) uint32:
 * word 0 the logits row to mask, then the (vocab + 31) / 32 words of the mask. */
#define CU_SMP_MASK_STRIDE(vocab) (1 + ((size_t)(vocab) + 31) / 32)

/* Sets logits[row][t] = -inf for every t < vocab that slot's mask does not allow, for each of
 * the n_slots slots (device, [n_slots][CU_SMP_MASK_STRIDE(vocab)]; distinct rows). Enqueued
 * before cu_launch_sample, so every step of the pipeline (raw logprobs included) sees the
 * masked row, as gr_apply_mask before smp_sample on the host. */
int cu_launch_mask(cudaStream_t st, float *logits, int vocab, const uint32_t *slots, int n_slots);

/* Host packing of the masks of rows[0..n_rows) for cu_launch_mask: one slot per distinct
 * sequence with a mask (the mask of its first row that has one; rows of one sequence carry
 * the same mask), logits row row_of_seq[seq], into mh[0..cap) slots; seen [n_seqs] is
 * workspace. Validates every row's seq like cu_sample_pack. *n_slots = slots written (0
 * when no row has a mask). Returns 0, NI_EINVAL (a row's seq has no logits) or NI_ERANGE
 * (more masked sequences than cap). */
int cu_sample_pack_masks(const eng_sample_row *rows, int n_rows, int vocab,
                         const int32_t *row_of_seq, int n_seqs, int *seen, uint32_t *mh, int cap,
                         int *n_slots);

/* ---- rope tables (cu_rope.cu, host) ------------------------------------------ */

/* Host cos/sin tables [max_pos][hd/2] exactly as cpu_rope_init computes them
 * (angles in double): inverse frequencies from eng_rope_inv_freq when the
 * config's scaling parameters are complete, else theta^(-2i/hd) divided by
 * rope_freqs[i] when rope_freqs != NULL. Caller frees both with free().
 * Returns 0, NI_EINVAL or NI_ENOMEM. */
int cu_rope_tables(const mdl_config *c, const float *rope_freqs, int max_pos, float **cos_out,
                   float **sin_out);

/* ---- the backend context (cu_init.cu makes and frees it, cu_backend.cu runs it) ---------- */

/* int8: dequantization scratch of the prefill GEMMs (cu_gemm_q8). */
#define CU_DEQ_BYTES ((size_t)64 << 20)
/* Decode buckets (1, 2, 4, ... and the cap): at most 32 + 1. */
#define CU_MAX_BUCKETS 34
/* Sampler: scratch rows for rows that cannot be modified in place. */
#define CU_SMP_SCRATCH 16

/* Decode graph modes (eng_backend_config.graphs; cu.h). */
enum { CU_GRAPHS_OFF = 0, CU_GRAPHS_ON = 1, CU_GRAPHS_EAGER = 2 };

/* profile = 1: device time per phase of the forward pass, measured
 * with events between launches (graphs are then replaced by the eager
 * padded launches: events cannot time a replay's inside); printed to stderr
 * by free, split into decode and general steps. */
enum { CU_PH_START = -1, CU_PH_EMBED, CU_PH_NORM, CU_PH_QKV, CU_PH_ROPE, CU_PH_ATT, CU_PH_WO,
       CU_PH_GU, CU_PH_SWIGLU, CU_PH_DOWN, CU_PH_LM, CU_PH_N };

/* Projection weights are T [out][in], or int8 [out][in] with FP32 per-row
 * scales (the s_* pointers, NULL unless int8). */
typedef struct cu_layer_w {
    float *attn_norm;  /* [dim] */
    void *wqkv;        /* [q_dim + 2*kv_dim][dim]: wq rows, wk rows, wv rows */
    void *wo;          /* [dim][q_dim] */
    float *q_norm;     /* [head_dim] or NULL (qwen3) */
    float *k_norm;     /* [head_dim] or NULL */
    float *ffn_norm;   /* [dim] */
    void *wgu;         /* [2*hidden][dim]: w_gate rows, then w_up rows */
    void *wdown;       /* [dim][hidden] */
    float *s_qkv;      /* [q_dim + 2*kv_dim] int8 scales, or NULL */
    float *s_o;        /* [dim] */
    float *s_gu;       /* [2*hidden] */
    float *s_down;     /* [dim] */
} cu_layer_w;

/* ---- cu_persist.cu --------------------------------------------------------- */

/* One layer as the persistent decode kernel reads it (a device array of
 * n_layers, filled once by init). */
typedef struct cu_persist_layer {
    const cu_bf16 *wqkv, *wo, *wgu, *wdown; /* cu_layer_w's, BF16 */
    const float *attn_norm, *ffn_norm;
    void *k_cache, *v_cache;                /* BF16 [n_slots][n_kv*hd] of this layer */
} cu_persist_layer;

typedef struct cu_persist_args {
    const cu_persist_layer *layers; /* device [n_layers] */
    int n_layers, dim, hidden, n_heads, n_kv, hd, interleaved;
    float eps;
    float *x;                       /* [1][dim] residual (the embedding on entry) */
    float *qkv;                     /* [1][q_dim + 2 kv_dim] */
    void *att;                      /* BF16 [1][q_dim] */
    void *act;                      /* BF16 [1][hidden] */
    float *part;                    /* split-K partials, >= n_splits slots */
    const int32_t *pos, *slot;      /* [1] the token's position and cache slot */
    const cu_att_item *items;       /* [1] */
    const int32_t *tables;          /* [1][tbl_stride] */
    int tbl_stride, n_splits, block_size;
    int min_tiles;                  /* contexts of <= min_tiles key tiles are one split,
                                     * longer ones split from one chunk a warp (dec_per) */
    int fine;                       /* attention in fine key chunks (cu_att_decode.cuh
                                     * ad_chunk; splits of 2 tiles): fixed at init, the
                                     * kernel cu_persist_grid sized the grid for */
    const float *cos_tab, *sin_tab;
    unsigned *bar;                  /* [2] barrier counters: zero before the first launch,
                                     * left zero by every launch that completes */
} cu_persist_args;

/* Longest context (keys) a step runs the persistent kernel for: up to here its
 * coarse attention is one split (min_tiles = CU_PS_MAX_CTX / CU_ATT_TILE), no
 * combine phase, and its fine attention one chunk per warp (8 splits of 2
 * tiles at most). Longer contexts take the per-op kernels, whose attention
 * spreads over more blocks: on the H200 the persistent kernel was 7 %
 * slower at 4,000 keys (Llama-3.2-1B shape, docs/perf.md). */
#define CU_PS_MAX_CTX 512

/* Whether the persistent kernel takes this model shape (the shape fields of
 * p; see cu_persist.cu for the scope) with these layer weights (alignment),
 * and the cooperative grid it runs with on this device (*grid; sets the
 * kernel's shared-memory limit, so call once at init before any capture).
 * 0, NI_EUNSUPPORTED (shape or device not supported: use the per-op path) or
 * a CUDA error code. */
int cu_persist_grid(const cu_persist_args *p, const cu_layer_w *layers, int n_sm, int *grid);

/* Enqueues the layers of one decode token (x in, x out) as one cooperative
 * launch of grid blocks (from cu_persist_grid). No host synchronization:
 * capturable. */
int cu_launch_persist(cudaStream_t st, const cu_persist_args *p, int grid);


typedef struct cu_ctx {
    mdl_config c;
    int dtype;                  /* enum cu_dtype */
    size_t esz;                 /* bytes of one T element */
    int kv_fp8;                 /* KV cache in E4M3 (eng_backend_config.kv_dtype FP8) */
    size_t kv_esz;              /* bytes of one cache element: 1 with kv_fp8, else esz */
    int dev, n_sm;
    int n_blocks, block_size, max_batch_tokens, max_seqs;
    int max_pos;                /* positions [0, max_pos) are allowed */
    int tbl_cap;                /* ceil(max_pos / block_size): widest block table row */
    int q_dim, kv_dim, qkv_dim; /* n_heads*hd, n_kv_heads*hd, q_dim + 2*kv_dim */
    int part_slots;             /* split-K slots in part */
    int force_splits;           /* eng_backend_config.att_splits (0 = automatic) */
    cu_att_kernel att_kernel;   /* eng_backend_config.att_kernel (NI_CUDA_ATT) */
    int quant;                  /* 1: int8 projections and LM head (cu_quant.cu) */
    int graph_mode;             /* CU_GRAPHS_* (eng_backend_config.graphs) */
    int fuse_rope;              /* gemv and BF16 and not NI_CUDA_FUSE_ROPE=0: the QKV k_gemv
                                 * also does RoPE + the KV store (no k_rope_kv launch) */
    int pdl;                    /* not no_pdl: decode projections and attention launched
                                 * with programmatic dependent launch (cu_launch_k) */
    int att_lat;                /* not no_att_lat: decode attention may take fine key
                                 * chunks (cu_att_args.no_lat = 0) */
    int att_stage;              /* eng_backend_config.att_stage: cu_att_args.stage */
    int persist;                /* fuse_rope, BF16 cache, no qk-norm, persist asked for, not
                                 * profiling, and cu_persist_grid accepted the model: one-token
                                 * steps of one sequence run the persistent kernel */
    int ps_grid;                /* its cooperative grid */
    int gemv;                   /* BF16 without int8 and not no_gemv: projections of
                                 * <= CU_GEMV_MAX_ROWS rows through k_gemv (fused norm /
                                 * residual / SwiGLU) */
    cudaStream_t st;
    cublasHandle_t blas;

    /* weights (one allocation) */
    void *wmem;
    void *tok_embd;             /* T [vocab][dim] */
    void *lm_head;              /* T [vocab][dim] (== tok_embd when tied) or int8 [vocab][dim] */
    float *lm_scale;            /* [vocab] int8 scales, or NULL */
    float *out_norm;            /* [dim] */
    float *cos_tab, *sin_tab;   /* [max_pos][head_dim/2] */
    cu_layer_w *layers;         /* host array [n_layers] of device pointers */

    /* KV pool (one allocation) */
    void *kv;                   /* C [n_layers][2][n_blocks][block_size][kv_dim] */
    size_t plane_bytes;         /* n_blocks * block_size * kv_dim * kv_esz: one layer's K (or V) */

    /* work buffers (one allocation) */
    void *work;
    float *x;                   /* [max_batch_tokens][dim] residual stream */
    void *xb;                   /* T [max_batch_tokens][dim] normed sublayer input */
    float *qkv;                 /* [max_batch_tokens][qkv_dim] q | k | v projections */
    void *att;                  /* T [max_batch_tokens][q_dim] attention output */
    float *gu;                  /* [max_batch_tokens][2*hidden] gate | up projections */
    void *act;                  /* T [max_batch_tokens][hidden] swiglu output */
    void *xl;                   /* T [max_seqs][dim] normed last rows wanting logits */
    float *logits_d;            /* [max_seqs][vocab] */
    float *part;                /* [part_slots][cu_att_part_floats] split-K partials */
    cu_persist_layer *ps_layers; /* [n_layers] the persistent kernel's layer table */
    unsigned *ps_bar;           /* [2] its barrier counters (zeroed with the arena) */
    void *blas_ws;              /* [BLAS_WS_BYTES (cu_init.cu)] cuBLAS workspace */
    int32_t *meta_d;            /* [meta_cap] packed batch metadata (see forward) */
    size_t meta_cap;            /* int32 elements: 7*T + S + S*tbl_cap */
    void *deq;                  /* int8 only: T [CU_DEQ_BYTES] dequantized weight chunk */
    float *qtmp;                /* int8 only: [max_batch_tokens][dim] GEMM output before scaling */
    cu_smp_row *smp_rows_d;     /* [smp_cap] sampler jobs */
    cu_smp_ent *smp_ents_d;     /* [smp_ent_cap] logit_bias / penalty entries */
    cu_smp_out *smp_out_d;      /* [smp_cap] sampler results */
    uint32_t *smp_mask_d;       /* [smp_cap][CU_SMP_MASK_STRIDE(vocab)] grammar mask slots */
    float *smp_scratch;         /* [CU_SMP_SCRATCH][vocab] rows modified out of place */

    /* pinned host */
    int32_t *meta_h;            /* [meta_cap] staging of meta_d */
    float *logits_h;            /* [max_seqs][vocab] */
    cu_smp_row *smp_rows_h;     /* [smp_cap] */
    cu_smp_ent *smp_ents_h;     /* [smp_ent_cap] */
    cu_smp_out *smp_out_h;      /* [smp_cap] */
    uint32_t *smp_mask_h;       /* [smp_cap][CU_SMP_MASK_STRIDE(vocab)] */
    int smp_cap;                /* max_seqs: sampler rows per launch */
    size_t smp_ent_cap;         /* vocab + 65536 */

    /* plain host */
    int32_t *lm_seq;            /* [max_seqs] sequence of each logits row */
    int32_t *row_of_seq;        /* [max_seqs] logits_d row of each sequence of the last
                                 * forward, -1 when it wanted none */
    int *smp_consumers;         /* [max_seqs] sampler packing workspace */
    int last_n_seqs;            /* sequences of the last forward */
    int pending;                /* work enqueued since the last synchronize */

    /* decode graphs */
    int dec_cap;                /* largest bucket: min(max_seqs, max_batch_tokens) */
    int n_buckets;
    int bucket[CU_MAX_BUCKETS];        /* ascending; the last is dec_cap */
    int bucket_splits[CU_MAX_BUCKETS]; /* attention split-K factor of each bucket */
    cudaGraphExec_t gexec[CU_MAX_BUCKETS]; /* NULL until captured */
    cudaGraphExec_t gexec_fine[CU_MAX_BUCKETS]; /* the same with fine attention chunks
                                 * (contexts up to cu_att_decode_fine_keys; att_fine) */
    cudaGraphExec_t gexec_ps;   /* bucket 1 through the persistent kernel (contexts
                                 * <= CU_PS_MAX_CTX); NULL until captured */
    cu_backend_stats stats;

    /* eng_backend_config.profile */
    int prof;
    cudaEvent_t *ev;            /* [ev_cap] */
    int *ev_ph;                 /* [ev_cap] phase ending at each event */
    int n_ev, ev_cap;
    int prof_kind;              /* 0 decode, 1 general: the forward being timed */
    double ph_ms[2][CU_PH_N];
    long long prof_steps[2];
} cu_ctx;

/* eng_backend.init / free / kv_blocks_for_memory of eng_backend_cuda (cu_init.cu). */
int cu_backend_init(void **out, const mdl_model *m, const eng_backend_config *cf, char *err,
                    size_t errlen);
void cu_backend_free(void *ctx);
int cu_backend_kv_blocks(const mdl_model *m, const eng_backend_config *cf, double util,
                         int *n_blocks, char *err, size_t errlen);

/* The profile table of x (stderr; cu_backend.cu), printed by cu_backend_free. */
void cu_prof_print(const cu_ctx *x);

#endif
