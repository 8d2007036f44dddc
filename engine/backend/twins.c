/*
 * twins.c - the host-side computations shared by the CPU and CUDA backends
 * (see twins.h for why there is one copy).
 */
#include "twins.h"

#include <math.h>

#include "engine/util/util.h"

int eng_batch_check(const eng_batch *b, const eng_batch_limits *lim) {
    if (b->n_seqs < 0 || b->n_seqs > lim->max_seqs) return NI_EINVAL;
    if (b->n_tokens < 0 || b->n_tokens > lim->max_batch_tokens) return NI_EINVAL;
    if (b->n_seqs == 0) return b->n_tokens == 0 ? 0 : NI_EINVAL;
    if (!b->tokens || !b->seq_start || !b->pos0 || !b->block_tables || b->max_blocks <= 0)
        return NI_EINVAL;
    if (b->seq_start[0] != 0 || b->seq_start[b->n_seqs] != b->n_tokens) return NI_EINVAL;
    for (int i = 0; i < b->n_tokens; i++)
        if (b->tokens[i] < 0 || b->tokens[i] >= lim->vocab_size) return NI_EINVAL;
    for (int s = 0; s < b->n_seqs; s++) {
        const int32_t n = b->seq_start[s + 1] - b->seq_start[s];
        if (n <= 0) return NI_EINVAL; /* every sequence brings at least one token */
        const int64_t p0 = b->pos0[s], end = p0 + n; /* positions [p0, end) */
        if (p0 < 0 || end > lim->max_pos) return NI_EINVAL;
        const int64_t last_blk = (end - 1) / lim->block_size;
        if (last_blk >= b->max_blocks) return NI_EINVAL;
        const int32_t *t = b->block_tables + (size_t)s * b->max_blocks;
        for (int64_t j = 0; j <= last_blk; j++)
            if (t[j] < 0 || t[j] >= lim->n_blocks) return NI_EINVAL;
    }
    return 0;
}

void eng_rope_inv_freq(const mdl_config *c, double *inv_freq) {
    static const double pi = 3.14159265358979323846;
    const int half = c->head_dim / 2;
    for (int i = 0; i < half; i++)
        inv_freq[i] = 1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)c->head_dim);
    if (c->rope_scaling != MDL_ROPE_LLAMA3) return;
    const double factor = c->rope_factor;
    const double lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
    const double old_ctx = c->rope_orig_max_pos;
    const double low_freq_wavelen = old_ctx / lo;
    const double high_freq_wavelen = old_ctx / hi;
    for (int i = 0; i < half; i++) {
        const double f = inv_freq[i];
        const double wavelen = 2.0 * pi / f;
        if (wavelen < high_freq_wavelen) continue; /* high frequency: keep */
        if (wavelen > low_freq_wavelen) {          /* low frequency: scale */
            inv_freq[i] = f / factor;
        } else if (hi != lo) { /* medium: interpolate */
            const double smooth = (old_ctx / wavelen - lo) / (hi - lo);
            inv_freq[i] = (1.0 - smooth) * f / factor + smooth * f;
        }
    }
}

float eng_fp8_e4m3_round(float x) {
    if (isnan(x)) return x;
    const float a = fabsf(x);
    float r;
    if (a > 448.0f) {
        r = 448.0f; /* the largest finite E4M3 (S.1111.110); the next code is NaN */
    } else if (a < 0.015625f) {
        r = rintf(a * 512.0f) / 512.0f; /* subnormals: steps of 2^-9 (exact scaling) */
    } else {
        int e;
        frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1): the leading bit is 2^(e-1) */
        const float q = ldexpf(1.0f, e - 4); /* 3 mantissa bits below it */
        r = rintf(a / q) * q; /* rounding up to 2^e stays representable (a <= 448) */
    }
    return copysignf(r, x);
}
