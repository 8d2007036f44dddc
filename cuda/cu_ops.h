/*
 * cu_ops.h - host-pointer entry points to each CUDA kernel of the backend, for
 * tests and tools (C callable, no CUDA types). Each call allocates device
 * buffers, uploads its inputs, runs the same launcher the backend runs,
 * downloads the outputs and frees everything: slow, never used by the
 * backend's forward pass.
 *
 * dtype is enum cu_dtype (cu.h). In BF16 mode the inputs the backend keeps in
 * BF16 (weights, GEMM inputs, the KV cache) are rounded to BF16 on the device
 * and the BF16 outputs are widened back to FP32, so each wrapper computes
 * exactly what the backend computes; the CPU twin named in each comment is
 * the FP32 reference (engine/cpu/cpu_ops.h). All return 0, NI_EINVAL on bad
 * arguments, NI_ENOMEM / NI_EIO on CUDA failures (message on stderr).
 */
#ifndef NI_CU_OPS_H
#define NI_CU_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "engine/backend/backend.h"
#include "engine/model/model.h"
#include "cuda/cu.h"

/* out[i] = table[tokens[i]] (table in T). Twin: cpu_embed. */
int cu_op_embed(float *out /* [n][dim] */, const float *table /* [vocab][dim] */, int vocab,
                const int32_t *tokens /* [n] */, int n, int dim, int dtype);

/* For i < n, s = rows ? rows[i] : i: if add, x[s] += add[i]; out[i] =
 * rmsnorm(x[s]) * w (out rounded to T). x is updated in place when add is
 * given. Twin: cpu_add + cpu_rmsnorm. */
int cu_op_rmsnorm(float *out /* [n][dim] */, float *x /* [n_x][dim] */, int n_x,
                  const float *add /* [n][dim] or NULL */, const int32_t *rows /* [n] or NULL */,
                  const float *w /* [dim] */, int n, int dim, float eps, int dtype);

/* out = silu(gate) * up (rounded to T). Twin: cpu_swiglu. */
int cu_op_swiglu(float *out /* [n][hidden] */, const float *gate /* [n][hidden] */,
                 const float *up /* [n][hidden] */, int n, int hidden, int dtype);

/* y = x W^T (+ y when accumulate), x and W in T, y FP32. Twin: cpu_matmul. */
int cu_op_matmul(float *y /* [n][out] */, const float *x /* [n][in] */,
                 const float *w /* [out][in] */, int n, int in, int out, int accumulate,
                 int dtype);

/* Fused qk-norm (when q_norm/k_norm are given) + RoPE (c's layout and
 * scaling, positions pos) of q (in place) and k, then k and v stored to the
 * cache rows slot[i] (caches in T, updated in place; dtype CU_DTYPE_FP8:
 * E4M3 caches, uploaded and stored rounded through E4M3). Twin:
 * cpu_head_rmsnorm + cpu_rope_apply + cpu_kv_store (+ eng_fp8_e4m3_round). */
int cu_op_rope_kv(float *q /* [n][n_heads*hd] */, const float *k /* [n][n_kv*hd] */,
                  const float *v /* [n][n_kv*hd] */, const float *q_norm /* [hd] or NULL */,
                  const float *k_norm /* [hd] or NULL */, const mdl_config *c,
                  const float *rope_freqs /* [hd/2] or NULL */, const int32_t *pos /* [n] */,
                  const int32_t *slot /* [n] */, int n, float *k_cache /* [n_slots][n_kv*hd] */,
                  float *v_cache /* [n_slots][n_kv*hd] */, int n_slots, int dtype);

/* Paged causal GQA attention of a batch laid out like eng_batch (sequence s
 * has tokens seq_start[s] .. seq_start[s+1]-1 at positions pos0[s] ..), over
 * caches of n_blocks blocks of block_size rows (in T; dtype CU_DTYPE_FP8: BF16
 * compute over caches uploaded as E4M3, the backend's --kv-cache-dtype fp8
 * mode, so the twin runs on the E4M3-rounded caches). n_splits: 0 picks the
 * backend's automatic split-K factor, >= 1 forces one. kernel: the backend's
 * selection (enum cu_att_kernel, cu.h; CU_ATT_TC on a shape the tensor-core
 * kernel does not take returns NI_EINVAL). Twin: cpu_attention. */
int cu_op_attention(float *out /* [n_tokens][n_heads*hd] */,
                    const float *q /* [n_tokens][n_heads*hd] */,
                    const float *k_cache /* [n_blocks*block_size][n_kv*hd] */,
                    const float *v_cache /* [n_blocks*block_size][n_kv*hd] */, int n_blocks,
                    int block_size, int n_seqs, const int32_t *seq_start /* [n_seqs+1] */,
                    const int32_t *pos0 /* [n_seqs] */,
                    const int32_t *block_tables /* [n_seqs][max_blocks] */, int max_blocks,
                    int n_heads, int n_kv, int hd, int n_splits, int dtype,
                    cu_att_kernel kernel);

/* Device int8 quantization of w [rows][cols] (cu_launch_quantize_rows):
 * q [rows][cols] and scale [rows] come back. Twin: scale = max|w| / 127,
 * q = rint(w / scale) clamped to +-127, computed on the host (identical). */
int cu_op_quantize_q8(int8_t *q, float *scale, const float *w, int rows, int cols);

/* y = x (q * scale)^T (+ y when accumulate) through the backend's int8 GEMM
 * (cu_gemm_q8: GEMV kernel for n <= 16, else dequantize + cuBLAS in chunks
 * of deq_rows output rows, 0 = the backend's 64 MiB). x in T, y FP32. Twin:
 * cpu_matmul with the dequantized weights q * scale. */
int cu_op_matmul_q8(float *y /* [n][out] */, const float *x /* [n][in] */,
                    const int8_t *q /* [out][in] */, const float *scale /* [out] */, int n,
                    int in, int out, int accumulate, int deq_rows, int dtype);

/* The device sampler (cu_launch_sample) on host logits [n_src][vocab]: row
 * i samples logits row rows[i].seq (< n_src) like eng_backend_cuda.sample,
 * grammar masks (rows[i].allow, cu_launch_mask first) included.
 * probs (optional) gets each row's distribution [n_rows][vocab] (the
 * survivors' normalized weights; one-hot for greedy), the twin of
 * smp_distribution. Logits rows are not modified (the device copy is).
 * Twin: gr_apply_mask where allow != NULL, then smp_sample. */
int cu_op_sample(const float *logits, int n_src, int vocab, const eng_sample_row *rows,
                 int n_rows, smp_result *out, float *probs /* [n_rows][vocab] or NULL */);

/* Most activation rows of cu_op_gemv (the backend's CU_GEMV_MAX_ROWS). */
#define CU_OP_GEMV_MAX_ROWS 8

/* The fused BF16 GEMV (k_gemv, cu_launch_gemv), BF16 only, n <= 8 rows.
 * Input: norm_w == NULL: x [n][in] as is (rows NULL, n_x == n); else the
 * RMSNorm (weight norm_w, eps) of the FP32 rows x[rows ? rows[i] : i] of x
 * [n_x][in]. mode 0: y [n][out] = in W^T; 1: y += in W^T (y holds the
 * addend); 2: SwiGLU, w is [2*out][in] (gate rows, then up rows) and y [n][out]
 * = silu(gate) * up. Twin: cpu_rmsnorm + cpu_matmul (+ cpu_swiglu). */
int cu_op_gemv(float *y, const float *x, int n_x, const int32_t *rows, const float *norm_w,
               float eps, const float *w, int n, int in, int out, int mode);

/* The QKV projection with RoPE and the KV store fused (k_gemv's rope
 * epilogue, the decode path of one or two tokens, BF16, no qk-norm): the
 * RMSNorm (norm_w, c->norm_eps) of the FP32 rows x [n][c->dim] times w
 * [(n_heads + 2*n_kv) * hd][dim]; q [n][n_heads*hd] gets the rotated q heads,
 * the caches (kv_dtype CU_DTYPE_BF16 or CU_DTYPE_FP8; updated in place, as
 * floats) the rotated k and the v of row i at slot[i] (slot < 0: not
 * stored). n is 1 or 2. Twin: cpu_rmsnorm + cpu_matmul + cpu_rope_apply +
 * cpu_kv_store (+ eng_fp8_e4m3_round). */
int cu_op_gemv_rope(float *q, const float *x, const float *norm_w, const float *w,
                    const mdl_config *c, const int32_t *pos, const int32_t *slot, int n,
                    float *k_cache /* [n_slots][n_kv*hd] */, float *v_cache, int n_slots,
                    int kv_dtype);

/* How the decode kernel reads an E4M3 cache (cu_att_decode_fp8_wide): 1
 * 16-byte loads, 0 8-byte loads, -1 (default) by head_dim (16-byte up to 64).
 * For tests and benchmarks; not thread-safe. */
void cu_op_att_decode_fp8_wide(int on);

/* Whether the attention wrappers below let the decode kernel take fine key
 * chunks for short contexts of small batches (cu_att_args.no_lat = !on;
 * cu_att_decode.cu); default 1. For tests and benchmarks; not thread-safe. */
void cu_op_att_decode_lat(int on);

/* Whether the attention wrappers below stage the decode kernel's coarse
 * key chunks in shared memory (cu_att_args.stage = on); default 0. For
 * tests and benchmarks; not thread-safe. */
void cu_op_att_decode_stage(int on);

/* x[0..n) rounded through the device's E4M3 conversion (cu_fromf<cu_fp8>:
 * the KV cache's) and back to FP32, in place. Twin: eng_fp8_e4m3_round. */
int cu_op_round_fp8(float *x, size_t n);

/* Times one projection y = x W^T on device data (median of iters, device
 * events) for n activation rows: mode 0 cuBLAS on T weights (cu_gemm), 1
 * the int8 path as the backend runs it (cu_gemm_q8: GEMV for n <= 16), 2
 * int8 always dequantized + cuBLAS, 3 the BF16 k_gemv (dtype BF16, n <= 8).
 * *us gets microseconds per call. */
int cu_op_matmul_bench(int n, int in, int out, int mode, int dtype, int iters, double *us);

/* Times one decode attention launch (cu_launch_attention with max_nq 1, plus
 * its combine when split; device events, median of iters after a warm-up, L2
 * flushed before each) on n_seqs sequences of ctx keys each (one query token
 * at position ctx - 1, block tables interleaved across sequences, constant
 * data): kernel 0 the tiled k_attention, 1 the decode kernel (cu_att_decode.cu;
 * falls back to k_attention for shapes it does not take). The split factor is
 * the backend's rule for split_ctx keys (0: ctx; a decode graph uses its
 * max_pos), and the fine key chunks are taken where the backend would take
 * them (cu_att_decode_fine_keys covers ctx; never with
 * cu_op_att_decode_lat(0)); *splits_used gets it, *us microseconds per
 * launch. dtype
 * CU_DTYPE_FP8: BF16 compute over an E4M3 cache (constant 0x3c bytes = 1.5). */
int cu_op_attention_bench(int n_seqs, int ctx, int n_heads, int n_kv, int hd, int block_size,
                          int split_ctx, int kernel, int dtype, int iters, double *us,
                          int *splits_used);

/* Times one prefill attention call (cu_launch_attention, plus the combine
 * when split; device events, median of iters after a warm-up) of one
 * sequence of n_tok new tokens from position 0 (causal, block size 16,
 * blocks in order, constant data; a BF16 cache, or E4M3 with kv_fp8), items
 * from cu_att_plan and the backend's split rule: kernel CU_ATT_SIMT
 * (k_attention) or CU_ATT_TC (the tensor-core kernel). *us gets
 * microseconds per call. */
int cu_op_attention_prefill_bench(int n_tok, int n_heads, int n_kv, int hd, cu_att_kernel kernel,
                                  int kv_fp8, int iters, double *us);

/* Times cu_launch_sample alone (device events, median of iters launches
 * after a warm-up) on n_rows random logits rows of vocab, every row with
 * params p (no penalties). *us gets microseconds per launch. */
int cu_op_sample_bench(int vocab, int n_rows, const smp_params *p, int iters, double *us);

#ifdef __cplusplus
}
#endif

#endif
