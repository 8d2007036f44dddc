/*
 * test_sampler_ctx.h - what the sampler programs (test_sampler.c,
 * test_sampler_params.c) share: random logits from a fixed stream, a
 * sampling context (state, parameters, scratch) and a draw through it, and
 * the descending order of a double array for qsort_r.
 *
 * The helpers are static inline: each program uses only some of them. They
 * fail through cmocka, so they are called from inside a test function.
 */
#ifndef NI_TEST_SAMPLER_CTX_H
#define NI_TEST_SAMPLER_CTX_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/backend/sampler.h"
#include "test_util.h"

/* ---- helpers ------------------------------------------------------------ */

static tu_rng g_rng = {12345}; /* fixed: the statistical checks below use this stream */

/* approximately normal(0, sd): Irwin-Hall, sum of 12 uniforms */
static inline float nrand(double sd) {
    double s = 0;
    for (int i = 0; i < 12; i++) s += tu_uniform(&g_rng, 0, 1);
    return (float)((s - 6.0) * sd);
}

static inline float *rand_logits(int vocab, double sd) {
    float *l = malloc((size_t)vocab * sizeof(float));
    assert_non_null(l);
    for (int i = 0; i < vocab; i++) l[i] = nrand(sd);
    return l;
}

typedef struct ctx {
    smp_state s;
    smp_params p;
    void *scratch;
    size_t scratch_bytes;
    float *tmp;
    int vocab;
} ctx;

static inline void ctx_init(ctx *c, const smp_params *p, int vocab, const int32_t *prompt,
                            int n_prompt, uint64_t fallback) {
    c->p = *p;
    c->vocab = vocab;
    const char *bad = "x";
    assert_int_equal(smp_params_validate(p, vocab, &bad), 0);
    assert_null(bad);
    assert_int_equal(smp_state_init(&c->s, p, vocab, prompt, n_prompt, fallback, 0), 0);
    c->scratch_bytes = smp_scratch_bytes(vocab);
    c->scratch = malloc(c->scratch_bytes);
    c->tmp = malloc((size_t)vocab * sizeof(float));
    assert_non_null(c->scratch);
    assert_non_null(c->tmp);
}

static inline void ctx_free(ctx *c) {
    smp_state_free(&c->s);
    free(c->scratch);
    free(c->tmp);
}

/* Samples from a copy of logits (smp_sample modifies its input). */
static inline smp_result draw(ctx *c, const float *logits) {
    smp_result r;
    memcpy(c->tmp, logits, (size_t)c->vocab * sizeof(float));
    assert_int_equal(smp_sample(&c->s, &c->p, c->tmp, c->vocab, c->scratch, c->scratch_bytes, &r),
                     0);
    assert_true(r.token >= 0 && r.token < c->vocab);
    return r;
}

/* qsort_r comparator: indices by arg[] descending, ties by the lower index. */
static inline int cmp_desc(const void *x, const void *y, void *arg) {
    const double *v = arg;
    const int a = *(const int *)x, b = *(const int *)y;
    if (v[a] != v[b]) return v[a] > v[b] ? -1 : 1;
    return a - b;
}

#endif
