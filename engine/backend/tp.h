/*
 * tp.h - the tensor-parallel sharding plan (--tensor-parallel-size N,
 * Megatron-LM style): which heads, which rows and columns of every weight and
 * which KV-cache channels each of N ranks owns, and which collective joins
 * the ranks after each sharded step. Pure data and integer arithmetic, no
 * compute, no allocation: the CPU backend runs the N ranks inside one
 * process (engine/cpu/cpu_tp.h, an in-process all-reduce), and a multi-GPU
 * backend (one rank per device, NCCL all-reduce / all-gather) is meant to
 * shard by the same functions, so that the CPU path stays its reference.
 *
 * Layout for rank r of N (weights row-major [out][in] as in mdl_model; hd =
 * head_dim, Hq = n_heads / N, Hkv = n_kv_heads / N, F = hidden_dim / N):
 *
 *   tensor                   split        rank r owns                     then
 *   tok_embd  [V][dim]       rows         vocab rows [v0_r, v1_r)         all-reduce (*)
 *   attn_norm, ffn_norm      replicated
 *   wq        [n_heads*hd][dim]  rows     query heads [r*Hq, (r+1)*Hq)
 *   wk, wv    [n_kv*hd][dim]  rows        KV heads [r*Hkv, (r+1)*Hkv)
 *   q_norm, k_norm (qwen3)   replicated   (one [hd] weight shared by every head)
 *   RoPE                     replicated   (applied to the rank's own heads)
 *   attention                local        query head h reads KV head h / G, G =
 *                                         n_heads / n_kv_heads; Hq = G * Hkv, so
 *                                         a rank's query heads only read its own
 *                                         KV heads (GQA groups never straddle ranks)
 *   KV cache                 by KV head   rank r holds its own pool planes
 *                                         [n_layers][2][n_blocks][block_size][Hkv*hd];
 *                                         every rank uses the engine's block tables
 *   wo        [dim][n_heads*hd]  columns  input columns [r*Hq*hd, (r+1)*Hq*hd)  all-reduce
 *   w_gate, w_up [hidden][dim]  rows      FFN rows [r*F, (r+1)*F)
 *   w_down    [dim][hidden]  columns      input columns [r*F, (r+1)*F)   all-reduce
 *   out_norm                 replicated
 *   lm_head   [V][dim]       rows         vocab rows [v0_r, v1_r)        all-gather of the
 *                                                                        logits columns
 *
 * All-reduce: the sum of the N ranks' partial [n_tokens][dim] outputs, in
 * rank order (((p0 + p1) + p2) + ...), added to the replicated residual
 * stream; the sums differ from the unsharded matmul's only by rounding.
 * (*) The embedding is vocab-parallel: a rank looks up the tokens in its
 * rows and contributes zeros for the others, so the all-reduce equals taking
 * each token's row from its owner (exact; no rounding). The logits
 * all-gather concatenates the ranks' vocabulary slices in rank order.
 *
 * Vocabulary slices: v0_r = floor(r * V / N) (v1_r = v0_{r+1}, v0_N = V):
 * the vocabulary need not divide (slices differ by at most one row; a GPU
 * path may pad its buffers to the largest slice). Heads, KV heads and the
 * FFN width must divide by N: eng_tp_plan_init refuses otherwise, naming the
 * option (tensor-parallel-size) and the model dimension. N = 1 is the plan
 * of an unsharded model (rank 0 owns everything).
 *
 * Included from C and, inside extern "C", from CUDA C++.
 */
#ifndef NI_TP_H
#define NI_TP_H

#include <stddef.h>

#include "engine/model/model.h"

/* The largest tensor-parallel-size accepted (any larger value fails the
 * head divisibility of every real model anyway). */
#define ENG_TP_MAX 256

/* Why a CUDA backend refuses tensor-parallel-size > 1 (its init, and serve's
 * config check when device = cuda): one wording everywhere. */
#define ENG_TP_NO_CUDA "tensor parallelism on CUDA needs NCCL and several GPUs: not built yet"

/* What rank `rank` owns. Offsets and counts are in rows / columns of the
 * full (unsharded) tensors named in the layout above. */
typedef struct eng_tp_shard {
    int rank;
    int head0, n_heads;       /* query heads [head0, head0 + n_heads) */
    int kv_head0, n_kv_heads; /* KV heads [kv_head0, kv_head0 + n_kv_heads) */
    int q0, q_dim;            /* head0 * hd, n_heads * hd: rows of wq, columns of wo */
    int kv0, kv_dim;          /* kv_head0 * hd, n_kv_heads * hd: rows of wk / wv, the
                                 channels of this rank's KV planes */
    int ff0, ff_dim;          /* rows of w_gate / w_up, columns of w_down */
    int vocab0, n_vocab;      /* rows of tok_embd / lm_head, columns of the logits */
} eng_tp_shard;

/* The plan of one model over n_ranks ranks (the model sizes it needs). */
typedef struct eng_tp_plan {
    int n_ranks;
    int n_heads, n_kv_heads, head_dim, hidden_dim, vocab_size;
} eng_tp_plan;

/* Builds the plan of model config c over tp ranks. Returns 0, or NI_EINVAL
 * with a message naming tensor-parallel-size when tp is outside [1,
 * ENG_TP_MAX] or does not divide n_heads, n_kv_heads or hidden_dim, or
 * exceeds the vocabulary size (*p is then zeroed). */
int eng_tp_plan_init(eng_tp_plan *p, const mdl_config *c, int tp, char *err, size_t errlen);

/* The shard of rank 0 <= rank < p->n_ranks. */
eng_tp_shard eng_tp_shard_of(const eng_tp_plan *p, int rank);

/* The rank whose vocabulary slice holds token 0 <= token < vocab_size. */
int eng_tp_vocab_rank(const eng_tp_plan *p, int token);

#endif
