/*
 * cpu_tp.c - the CPU backend's in-process tensor-parallel pieces (see
 * cpu_tp.h): weight views of a rank, the vocab-parallel embedding and the
 * rank-ordered all-reduce.
 */
#include "cpu_tp.h"

#include <string.h>

cpu_tp_layer cpu_tp_layer_view(const mdl_layer *L, const mdl_config *c, const eng_tp_shard *s) {
    const size_t dim = (size_t)c->dim;
    cpu_tp_layer v;
    v.wq = L->wq + (size_t)s->q0 * dim;
    v.wk = L->wk + (size_t)s->kv0 * dim;
    v.wv = L->wv + (size_t)s->kv0 * dim;
    v.wo = L->wo + s->q0;
    v.ld_o = c->n_heads * c->head_dim;
    v.w_gate = L->w_gate + (size_t)s->ff0 * dim;
    v.w_up = L->w_up + (size_t)s->ff0 * dim;
    v.w_down = L->w_down + s->ff0;
    v.ld_down = c->hidden_dim;
    return v;
}

void cpu_tp_embed(cpu_part pt, float *out, const float *table, const eng_tp_plan *p,
                  const int32_t *tokens, int n, int dim) {
    int i0, i1;
    cpu_part_rows(pt, n, &i0, &i1);
    for (int i = i0; i < i1; i++) {
        const eng_tp_shard s = eng_tp_shard_of(p, eng_tp_vocab_rank(p, tokens[i]));
        const float *slice = table + (size_t)s.vocab0 * dim; /* the owner's rows */
        memcpy(out + (size_t)i * dim, slice + (size_t)(tokens[i] - s.vocab0) * dim,
               (size_t)dim * sizeof(float));
    }
}

void cpu_tp_allreduce_add(cpu_part pt, float *y, const float *const *parts, int n_ranks, int n,
                          int cols) {
    int i0, i1;
    cpu_part_rows(pt, n, &i0, &i1);
    for (int i = i0; i < i1; i++) {
        const size_t row = (size_t)i * cols;
        float *yr = y + row;
#pragma omp simd
        for (int j = 0; j < cols; j++) {
            float s = parts[0][row + j];
            for (int r = 1; r < n_ranks; r++) s += parts[r][row + j];
            yr[j] += s;
        }
    }
}
