/*
 * cpu_tp.h - tensor parallelism inside one process: the CPU backend's N
 * ranks of the sharding plan of engine/backend/tp.h (which says which rows,
 * columns, heads and KV channels each rank owns; read it first).
 *
 * Design: every rank works on views of the model's FP32 arena (pointers and
 * row strides; no weight is copied): its rows of wq / wk / wv / w_gate / w_up
 * / tok_embd / lm_head are contiguous, its columns of wo / w_down are a
 * column slice read with the full row stride. The ranks run one after the
 * other inside one forward call, each step of every rank split over the
 * cpu_pool threads like the unsharded ops (cpu_part), on rank-local
 * activation buffers and rank-local KV planes. The collectives are plain
 * loops: the all-reduce sums the ranks' partial outputs in rank order (so a
 * result does not depend on the thread count either), the embedding takes
 * each token's row from the rank that owns it, and the logits all-gather is
 * each rank writing its vocabulary columns of the logits rows. Replicated
 * tensors (the residual stream, the normed sublayer input, the last rows
 * that feed the LM head) are held once and read by every rank.
 *
 * Invariants: views are built once at backend init; nothing here allocates.
 */
#ifndef NI_CPU_TP_H
#define NI_CPU_TP_H

#include <stdint.h>

#include "cpu_pool.h"
#include "engine/backend/tp.h"
#include "engine/model/model.h"

/* One rank's weights of one layer, as views into the model's arena. */
typedef struct cpu_tp_layer {
    const float *wq;     /* [q_dim_r][dim]: rows of wq */
    const float *wk;     /* [kv_dim_r][dim] */
    const float *wv;     /* [kv_dim_r][dim] */
    const float *wo;     /* [dim][q_dim_r] columns of wo, row stride ld_o */
    int ld_o;            /* n_heads * head_dim */
    const float *w_gate; /* [ff_r][dim] */
    const float *w_up;   /* [ff_r][dim] */
    const float *w_down; /* [dim][ff_r] columns of w_down, row stride ld_down */
    int ld_down;         /* hidden_dim */
} cpu_tp_layer;

/* The views of shard s of layer L (model config c). */
cpu_tp_layer cpu_tp_layer_view(const mdl_layer *L, const mdl_config *c, const eng_tp_shard *s);

/* Vocab-parallel embedding: out[i] = row tokens[i] of table [vocab][dim],
 * read from the slice of the rank that owns the token (what the all-reduce
 * of the ranks' masked lookups gives, exactly). This part's tokens (split
 * as cpu_part_rows); token ids must be in range. */
void cpu_tp_embed(cpu_part pt, float *out /* [n][dim] */, const float *table, const eng_tp_plan *p,
                  const int32_t *tokens, int n, int dim);

/* The all-reduce after a row-sharded projection, fused with the residual
 * add: y[i][j] += ((parts[0][i][j] + parts[1][i][j]) + ...) over the
 * n_ranks partial outputs, summed in rank order, for this part's rows i
 * (cpu_part_rows of n, so row ops on the same rows may follow without a
 * barrier). */
void cpu_tp_allreduce_add(cpu_part pt, float *y /* [n][cols] */,
                          const float *const *parts /* [n_ranks] of [n][cols] */, int n_ranks,
                          int n, int cols);

#endif
