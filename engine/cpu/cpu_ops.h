/*
 * cpu_ops.h - FP32 building blocks of the CPU reference forward pass.
 *
 * Design: every op works on row-major FP32 buffers owned by the caller and
 * never allocates, except cpu_rope_init (called once at backend init). Ops
 * that are worth splitting take a cpu_part {ith, nth}: the call computes part
 * ith of nth of the result, so nth threads of a cpu_pool task (each passing
 * its own ith) compute it together, and CPU_SERIAL computes all of it on the
 * caller. Every part is a fixed slice of the output (rows, tokens, output
 * columns, attention units), computed with the same arithmetic whatever nth
 * is, so results are bit-identical for any thread count. Ops over rows
 * (rmsnorm, head_rmsnorm, rope, kv_store, swiglu) split by whole tokens with
 * cpu_part_rows, which lets a caller chain them on one thread
 * without a barrier in between. matmul goes through OpenBLAS cblas_sgemm /
 * cblas_sgemv, one single-threaded call per part (openblas_set_num_threads(1)).
 *
 * Conventions:
 *   - a batch is n rows ("tokens"); a per-token activation is one row;
 *   - weight matrices are [out][in] (mdl_model layout), so y = x W^T;
 *   - a head-major row of n_heads heads is [n_heads][head_dim];
 *   - RoPE pairs: interleaved (x[2i], x[2i+1]) or half-split
 *     (x[i], x[i + head_dim/2]), both rotated by inv_freq[i] * pos.
 *
 * Paged KV cache (one layer): k and v are [n_blocks][block_size][kv_dim],
 * kv_dim = n_kv_heads * head_dim. Position p of a sequence lives in physical
 * block table[p / block_size], slot p % block_size. Callers validate block
 * ids and positions before calling (the ops assert nothing about user input
 * beyond what is cheap).
 */
#ifndef NI_CPU_OPS_H
#define NI_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "cpu_pool.h"
#include "engine/model/model.h"

/* ---- elementwise / row ops ------------------------------------------- */

/* out[i][:] = table[tokens[i]][:] for i < n (this part's tokens). Token ids
 * must be in range. */
void cpu_embed(cpu_part pt, float *out /* [n][dim] */, const float *table /* [vocab][dim] */,
               const int32_t *tokens /* [n] */, int n, int dim);

/* HF RMSNorm, per row: out = x * rsqrt(mean(x^2) + eps) * w, in FP32.
 * out may equal x (in place). */
void cpu_rmsnorm(cpu_part pt, float *out /* [n][dim] */, const float *x /* [n][dim] */,
                 const float *w /* [dim] */, int n, int dim, float eps);

/* Qwen3 q/k norm: RMSNorm of every head of every row, in place, with the
 * shared weight w. Same as cpu_rmsnorm over n*n_heads rows of head_dim, split
 * by tokens. */
void cpu_head_rmsnorm(cpu_part pt, float *x /* [n][n_heads][head_dim] */,
                      const float *w /* [head_dim] */, int n, int n_heads, int head_dim, float eps);

/* out = silu(gate) * up elementwise over n rows of `cols`, silu(g) = g / (1 +
 * exp(-g)), split by rows. out may equal gate or up. */
void cpu_swiglu(cpu_part pt, float *out /* [n][cols] */, const float *gate /* [n][cols] */,
                const float *up /* [n][cols] */, int n, int cols);

/* y += x elementwise (residual add), split in 64-byte aligned ranges. */
void cpu_add(cpu_part pt, float *y /* [n] */, const float *x /* [n] */, size_t n);

/* y = x W^T (+ y when accumulate != 0, which fuses a residual add). The out
 * columns are cut into nth slices of whole 16-column groups, part ith
 * computing its slice for every row with one BLAS call (sgemm; sgemv when
 * n == 1). Small matrices are not split (part 0 computes them). y must not
 * overlap x or w. */
void cpu_matmul(cpu_part pt, float *y /* [n][out] */, const float *x /* [n][in] */,
                const float *w /* [out][in] */, int n, int in, int out, int accumulate);

/* cpu_matmul writing row i of the result at y + i * ldy (ldy >= out): lets a
 * result land in a column range of a wider matrix. */
void cpu_matmul_ld(cpu_part pt, float *y /* [n][ldy] */, int ldy, const float *x /* [n][in] */,
                   const float *w /* [out][in] */, int n, int in, int out, int accumulate);

/* cpu_matmul_ld over strided operands: row i of x at x + i * ldx (ldx >= in)
 * and row o of w at w + o * ldw (ldw >= in), so w may be a column slice of a
 * wider matrix (a tensor-parallel shard of wo / w_down: engine/cpu/cpu_tp.h).
 * With ldx = ldw = in it is cpu_matmul_ld, call for call. */
void cpu_matmul_strided(cpu_part pt, float *y /* [n][ldy] */, int ldy,
                        const float *x /* [n][ldx] */, int ldx, const float *w /* [out][ldw] */,
                        int ldw, int n, int in, int out, int accumulate);

/* Name of the kernel set OpenBLAS chose at load time ("Haswell", "SkylakeX",
 * ...). "Prescott" means OpenBLAS 0.3.21 did not recognize the CPU (e.g.
 * Intel family 6 model 207) and fell back to SSE3 kernels, about 2x slower:
 * start the process with OPENBLAS_CORETYPE=Haswell (or SkylakeX) in the
 * environment; it is read only when the library loads. */
const char *cpu_blas_core(void);

/* ---- RoPE --------------------------------------------------------------- */

/* Cos/sin tables over positions [0, max_pos) from eng_rope_inv_freq
 * (engine/backend/twins.h), the same angles the CUDA backend uses. */
typedef struct cpu_rope {
    int head_dim;    /* even */
    int max_pos;     /* positions [0, max_pos) are tabulated */
    int interleaved; /* 1: adjacent pairs, 0: half-split */
    float *cos;      /* [max_pos][head_dim/2] cos(pos * inv_freq[i]) */
    float *sin;      /* [max_pos][head_dim/2] sin(pos * inv_freq[i]) */
} cpu_rope;

/* Tabulates cos/sin for positions [0, max_pos) (angles in double).
 * Returns 0, NI_EINVAL (odd/non-positive head_dim, max_pos <= 0) or
 * NI_ENOMEM. cpu_rope_free releases the tables (safe on a zeroed struct). */
int cpu_rope_init(cpu_rope *r, const mdl_config *c, int max_pos);
void cpu_rope_free(cpu_rope *r);

/* Rotates every head of every row in place at that row's position
 * pos[i] (0 <= pos[i] < r->max_pos), using r's pair layout. */
void cpu_rope_apply(cpu_part pt, const cpu_rope *r, float *x /* [n][n_heads][head_dim] */,
                    const int32_t *pos /* [n] */, int n, int n_heads);

/* ---- paged KV cache and attention -------------------------------------- */

typedef struct cpu_kv_layer {
    float *k; /* [n_blocks][block_size][kv_dim] */
    float *v; /* [n_blocks][block_size][kv_dim] */
    int block_size;
    int kv_dim; /* n_kv_heads * head_dim */
} cpu_kv_layer;

/* Where each batch token lives: its position and the block table row of its
 * sequence. The tokens of one sequence are contiguous in the batch and have
 * consecutive positions. */
typedef struct cpu_tok_map {
    int n_tokens;
    const int32_t *pos;          /* [n_tokens] absolute position of token i */
    const int32_t *seq;          /* [n_tokens] sequence of token i (row of block_tables) */
    const int32_t *block_tables; /* [n_seqs][max_blocks] physical block ids */
    int max_blocks;              /* row stride of block_tables */
} cpu_tok_map;

/* Writes k[i], v[i] into the cache slot of token i's position (this part's
 * tokens). */
void cpu_kv_store(cpu_part pt, const cpu_kv_layer *kv, const cpu_tok_map *m,
                  const float *k /* [n_tokens][kv_dim] */, const float *v /* [n_tokens][kv_dim] */);

/* Scratch floats per thread that cpu_attention needs for positions
 * < max_pos: max(G * max_pos, the tiled path's fixed tile buffers). */
size_t cpu_attention_scratch(int n_heads, int n_kv_heads, int head_dim, int max_pos);

/* Causal GQA attention of every token over its sequence's cached positions
 * [0, pos[i]] (which must all be stored already, including this call's new
 * tokens): out[i][h] = sum_j softmax_j(q[i][h] . k[j][h/G] / sqrt(head_dim))
 * v[j][h/G], G = n_heads / n_kv_heads, softmax in FP32 with max subtraction.
 * The work is cut into units of (tile, kv head), a tile being up to 32
 * consecutive tokens of one sequence (or (token, query head) units when there
 * are too few to keep nth parts busy: same arithmetic per head); part ith
 * takes units ith, ith + nth, ... (interleaved, which balances causal
 * prefill). Tiles of >= 4 tokens (prefill) run as flash-style sgemms over
 * 256-key tiles with an online softmax; smaller ones (decode) as direct dot
 * products. Part ith uses scratch + ith * scratch_per_thread, at least
 * cpu_attention_scratch(n_heads, n_kv_heads, head_dim, max_i pos[i] + 1). */
void cpu_attention(cpu_part pt, float *out /* [n_tokens][n_heads*head_dim] */,
                   const float *q /* [n_tokens][n_heads*head_dim] */, const cpu_kv_layer *kv,
                   const cpu_tok_map *m, int n_heads, int n_kv_heads, int head_dim,
                   float *scratch /* [nth][scratch_per_thread] */, size_t scratch_per_thread);

#endif
