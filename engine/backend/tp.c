/*
 * tp.c - the tensor-parallel sharding plan (see tp.h): validation of
 * tensor-parallel-size against the model and the rank -> rows / columns
 * arithmetic, shared by every backend that shards.
 */
#include "tp.h"

#include <stdint.h>
#include <string.h>

#include "engine/util/util.h"

/* The first vocabulary row of rank r (r == n_ranks: vocab_size). */
static int vocab_start(const eng_tp_plan *p, int r) {
    return (int)((int64_t)r * p->vocab_size / p->n_ranks);
}

int eng_tp_plan_init(eng_tp_plan *p, const mdl_config *c, int tp, char *err, size_t errlen) {
    memset(p, 0, sizeof *p);
    if (tp < 1 || tp > ENG_TP_MAX)
        return ni_fail(err, errlen, NI_EINVAL, "tensor-parallel-size %d: must be in [1, %d]", tp,
                       ENG_TP_MAX);
    const struct {
        int n;
        const char *what;
    } dims[] = {{c->n_heads, "attention heads (num_attention_heads)"},
                {c->n_kv_heads, "KV heads (num_key_value_heads)"},
                {c->hidden_dim, "FFN width (intermediate_size)"}};
    for (size_t i = 0; i < NI_ARRAY_LEN(dims); i++)
        if (dims[i].n <= 0 || dims[i].n % tp != 0)
            return ni_fail(err, errlen, NI_EINVAL,
                           "tensor-parallel-size %d does not divide the model's %d %s: use a "
                           "divisor of %d",
                           tp, dims[i].n, dims[i].what, dims[i].n);
    if (c->vocab_size < tp)
        return ni_fail(err, errlen, NI_EINVAL,
                       "tensor-parallel-size %d exceeds the vocabulary size %d", tp, c->vocab_size);
    p->n_ranks = tp;
    p->n_heads = c->n_heads;
    p->n_kv_heads = c->n_kv_heads;
    p->head_dim = c->head_dim;
    p->hidden_dim = c->hidden_dim;
    p->vocab_size = c->vocab_size;
    return 0;
}

eng_tp_shard eng_tp_shard_of(const eng_tp_plan *p, int rank) {
    NI_ASSERT(rank >= 0 && rank < p->n_ranks);
    eng_tp_shard s;
    memset(&s, 0, sizeof s);
    const int N = p->n_ranks, hd = p->head_dim;
    s.rank = rank;
    s.n_heads = p->n_heads / N;
    s.head0 = rank * s.n_heads;
    s.n_kv_heads = p->n_kv_heads / N;
    s.kv_head0 = rank * s.n_kv_heads;
    s.q0 = s.head0 * hd;
    s.q_dim = s.n_heads * hd;
    s.kv0 = s.kv_head0 * hd;
    s.kv_dim = s.n_kv_heads * hd;
    s.ff_dim = p->hidden_dim / N;
    s.ff0 = rank * s.ff_dim;
    s.vocab0 = vocab_start(p, rank);
    s.n_vocab = vocab_start(p, rank + 1) - s.vocab0;
    return s;
}

int eng_tp_vocab_rank(const eng_tp_plan *p, int token) {
    NI_ASSERT(token >= 0 && token < p->vocab_size);
    /* start from the estimate floor(token * N / V), then step to the slice holding token */
    int r = (int)((int64_t)token * p->n_ranks / p->vocab_size);
    while (r + 1 < p->n_ranks && vocab_start(p, r + 1) <= token) r++;
    while (r > 0 && vocab_start(p, r) > token) r--;
    return r;
}
