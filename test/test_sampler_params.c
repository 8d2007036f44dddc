/*
 * test_sampler_params.c - what engine/backend/sampler.c does besides the
 * distribution filters: the default parameters and their validation,
 * repetition, presence and frequency penalties, logit bias (applied before
 * the penalties, as vLLM's logits processors), seeded and unseeded draws
 * (streams, requests independent of each other), logprobs of the raw logits
 * and the errors of the per-request state. Greedy, temperature, top_k,
 * top_p, min_p and the torch golden are in test_sampler.c.
 *
 * Random logits come from the fixed stream of test_sampler_ctx.h, so runs
 * are deterministic.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/backend/sampler.h"
#include "engine/util/util.h"
#include "test_util.h"
#include "test_sampler_ctx.h"

/* ---- tests -------------------------------------------------------------- */

static void test_defaults(void **state) {
    (void)state;
    smp_params p = smp_params_default();
    assert_true(p.temperature == 1.0f);
    assert_int_equal(p.top_k, -1);
    assert_true(p.top_p == 1.0f && p.min_p == 0.0f);
    assert_true(p.repetition_penalty == 1.0f);
    assert_true(p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f);
    assert_int_equal(p.n_logit_bias, 0);
    assert_null(p.logit_bias);
    assert_int_equal(p.has_seed, 0);
    assert_int_equal(p.logprobs, -1);
    assert_int_equal(smp_params_validate(&p, 10, NULL), 0);
}

static void test_repetition_penalty(void **state) {
    (void)state;
    smp_params p = smp_params_default();
    p.temperature = 0.0f;
    p.repetition_penalty = 1.5f;
    const int32_t prompt[3] = {0, 1, 0};
    const int32_t prompt5[1] = {5};
    ctx c;
    ctx_init(&c, &p, 7, prompt, 3, 0);
    assert_int_equal(smp_accept(&c.s, 2), 0);
    assert_int_equal(smp_accept(&c.s, 2), 0);
    assert_int_equal(smp_accept(&c.s, 3), 0);
    float l[7] = {2.0f, -2.0f, 1.0f, -1.0f, 0.5f, 0.0f, -0.5f};
    smp_result r;
    assert_int_equal(smp_sample(&c.s, &c.p, l, 7, c.scratch, c.scratch_bytes, &r), 0);
    /* prompt: 0 (positive: divided), 1 (negative: multiplied); output: 2, 3 */
    const float want[7] = {2.0f / 1.5f, -3.0f, 1.0f / 1.5f, -1.5f, 0.5f, 0.0f, -0.5f};
    for (int i = 0; i < 7; i++) assert_float_equal(l[i], want[i], 1e-6);
    assert_int_equal(r.token, 0);
    ctx_free(&c);

    /* flips greedy: 2.0 in the prompt vs 1.5 elsewhere, penalty 2 */
    p.repetition_penalty = 2.0f;
    ctx_init(&c, &p, 7, prompt, 3, 0);
    const float l2[7] = {2.0f, -2.0f, 1.0f, -1.0f, 1.5f, 0.0f, -0.5f};
    assert_int_equal(draw(&c, l2).token, 4);
    ctx_free(&c);
    /* a penalty < 1 favours repeats; zero logits stay zero */
    p.repetition_penalty = 0.5f;
    ctx_init(&c, &p, 7, prompt5, 1, 0);
    float l3[7] = {1.0f, 0.9f, 0.8f, 0.1f, 0.2f, 0.0f, 0.3f};
    assert_int_equal(smp_sample(&c.s, &c.p, l3, 7, c.scratch, c.scratch_bytes, &r), 0);
    assert_int_equal(r.token, 0);
    assert_true(l3[5] == 0.0f);
    assert_int_equal(smp_accept(&c.s, 3), 0);
    const float l4[7] = {0.0f, 0.0f, 0.0f, 0.5f, 0.9f, 0.0f, 0.0f};
    assert_int_equal(draw(&c, l4).token, 3); /* 0.5 / 0.5 = 1.0 > 0.9 */
    ctx_free(&c);
}

static void test_presence_frequency(void **state) {
    (void)state;
    const int32_t prompt[1] = {3};
    const float base[6] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
    const struct {
        float presence, frequency;
        float want[6];
    } cases[] = {
        /* output: token 1 x3, token 2 x1; token 3 only in the prompt */
        {0.5f, 0.0f, {1.0f, 0.5f, 0.5f, 1.0f, 1.0f, 1.0f}},
        {0.0f, 0.25f, {1.0f, 0.25f, 0.75f, 1.0f, 1.0f, 1.0f}},
        {0.5f, 0.25f, {1.0f, -0.25f, 0.25f, 1.0f, 1.0f, 1.0f}},
        {-1.0f, -0.5f, {1.0f, 3.5f, 2.5f, 1.0f, 1.0f, 1.0f}},
    };
    for (size_t k = 0; k < NI_ARRAY_LEN(cases); k++) {
        smp_params p = smp_params_default();
        p.presence_penalty = cases[k].presence;
        p.frequency_penalty = cases[k].frequency;
        p.temperature = 0.0f;
        ctx c;
        ctx_init(&c, &p, 6, prompt, 1, 0);
        const int32_t out[4] = {1, 2, 1, 1};
        for (int i = 0; i < 4; i++) assert_int_equal(smp_accept(&c.s, out[i]), 0);
        float l[6];
        memcpy(l, base, sizeof l);
        smp_result r;
        assert_int_equal(smp_sample(&c.s, &c.p, l, 6, c.scratch, c.scratch_bytes, &r), 0);
        for (int i = 0; i < 6; i++)
            if (fabsf(l[i] - cases[k].want[i]) > 1e-6f)
                fail_msg("case %zu token %d: %g want %g", k, i, l[i], cases[k].want[i]);
        ctx_free(&c);
    }
    /* penalties change the greedy choice: a frequent token loses */
    smp_params p = smp_params_default();
    p.temperature = 0.0f;
    p.frequency_penalty = 0.3f;
    ctx c;
    ctx_init(&c, &p, 3, NULL, 0, 0);
    const float l[3] = {2.0f, 1.5f, 0.0f};
    assert_int_equal(draw(&c, l).token, 0);
    assert_int_equal(smp_accept(&c.s, 0), 0);
    assert_int_equal(draw(&c, l).token, 0); /* 1.7 */
    assert_int_equal(smp_accept(&c.s, 0), 0);
    assert_int_equal(draw(&c, l).token, 1); /* 1.4 < 1.5 */
    ctx_free(&c);
}

static void test_logit_bias(void **state) {
    (void)state;
    const int V = 500;
    float *l = rand_logits(V, 3.0);
    int best = 0, worst = 0;
    for (int i = 1; i < V; i++) {
        if (l[i] > l[best]) best = i;
        if (l[i] < l[worst]) worst = i;
    }
    smp_params p = smp_params_default();
    p.temperature = 0.0f;
    smp_logit_bias b[2] = {{worst, 100.0f}, {best, -100.0f}};
    p.logit_bias = b;
    p.n_logit_bias = 1;
    ctx c;
    ctx_init(&c, &p, V, NULL, 0, 0);
    assert_int_equal(draw(&c, l).token, worst);
    /* -100 bans the argmax: the second largest wins */
    c.p.logit_bias = &b[1];
    int second = best == 0 ? 1 : 0;
    for (int i = 0; i < V; i++)
        if (i != best && l[i] > l[second]) second = i;
    assert_int_equal(draw(&c, l).token, second);
    /* under sampling too: a banned token is never drawn in 2000 draws */
    c.p.temperature = 1.0f;
    for (int i = 0; i < 2000; i++) assert_int_not_equal(draw(&c, l).token, best);
    ctx_free(&c);
    free(l);

    /* bias comes before the repetition penalty (vLLM: logits processors
     * run before the sampler): (1 + 1) / 2 = 1.0, not 1 / 2 + 1 = 1.5 */
    smp_logit_bias b0 = {0, 1.0f};
    smp_params q = smp_params_default();
    q.temperature = 0.0f;
    q.repetition_penalty = 2.0f;
    q.logit_bias = &b0;
    q.n_logit_bias = 1;
    const int32_t prompt[1] = {0};
    ctx_init(&c, &q, 3, prompt, 1, 0);
    float l3[3] = {1.0f, 1.2f, 0.0f};
    smp_result r;
    assert_int_equal(smp_sample(&c.s, &c.p, l3, 3, c.scratch, c.scratch_bytes, &r), 0);
    assert_float_equal(l3[0], 1.0f, 1e-6);
    assert_int_equal(r.token, 1);
    /* an id out of range is rejected by smp_sample too (memory safety) */
    b0.token = 3;
    assert_int_equal(smp_sample(&c.s, &c.p, l3, 3, c.scratch, c.scratch_bytes, &r), NI_EINVAL);
    ctx_free(&c);
}

static void draw_seq(const smp_params *p, uint64_t fallback, uint32_t stream, const float *l, int V,
                     int n, int32_t *out) {
    smp_state s;
    assert_int_equal(smp_state_init(&s, p, V, NULL, 0, fallback, stream), 0);
    void *scr = malloc(smp_scratch_bytes(V));
    float *tmp = malloc((size_t)V * sizeof(float));
    assert_non_null(scr);
    assert_non_null(tmp);
    for (int i = 0; i < n; i++) {
        smp_result r;
        memcpy(tmp, l, (size_t)V * sizeof(float));
        assert_int_equal(smp_sample(&s, p, tmp, V, scr, smp_scratch_bytes(V), &r), 0);
        out[i] = r.token;
    }
    free(scr);
    free(tmp);
    smp_state_free(&s);
}

static void test_seed(void **state) {
    (void)state;
    const int V = 50, N = 100;
    float *l = rand_logits(V, 1.0);
    smp_params p = smp_params_default();
    p.top_p = 0.95f;
    p.has_seed = 1;
    p.seed = 42;
    int32_t a[100], b[100], d[100];
    draw_seq(&p, 1, 0, l, V, N, a);
    draw_seq(&p, 2, 0, l, V, N, b); /* fallback ignored when seeded */
    assert_memory_equal(a, b, sizeof a);
    p.seed = 43;
    draw_seq(&p, 1, 0, l, V, N, d);
    assert_memory_not_equal(a, d, sizeof a);
    p.seed = 42;
    draw_seq(&p, 1, 1, l, V, N, d); /* another stream of the same seed */
    assert_memory_not_equal(a, d, sizeof a);
    /* unseeded: the fallback seed decides */
    p.has_seed = 0;
    draw_seq(&p, 99, 0, l, V, N, b);
    draw_seq(&p, 99, 0, l, V, N, d);
    assert_memory_equal(b, d, sizeof b);
    draw_seq(&p, 100, 0, l, V, N, d);
    assert_memory_not_equal(b, d, sizeof b);

    /* independence: interleaving with another request changes nothing */
    p.has_seed = 1;
    ctx c1, c2;
    ctx_init(&c1, &p, V, NULL, 0, 0);
    smp_params p2 = p;
    p2.seed = 7;
    p2.temperature = 0.0f;
    ctx_init(&c2, &p2, V, NULL, 0, 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(draw(&c1, l).token, a[i]);
        (void)draw(&c2, l);
        (void)draw(&c2, l);
    }
    ctx_free(&c1);
    ctx_free(&c2);

    /* one draw per token, greedy included: a greedy step of a request does
     * not shift its later random draws relative to a random step */
    int32_t e[3], f[3];
    smp_state s;
    void *scr = malloc(smp_scratch_bytes(V));
    float *tmp = malloc((size_t)V * sizeof(float));
    smp_result r;
    for (int pass = 0; pass < 2; pass++) {
        assert_int_equal(smp_state_init(&s, &p, V, NULL, 0, 0, 0), 0);
        smp_params g = p;
        if (pass) g.temperature = 0.0f;
        memcpy(tmp, l, (size_t)V * sizeof(float));
        assert_int_equal(smp_sample(&s, &g, tmp, V, scr, smp_scratch_bytes(V), &r), 0);
        for (int i = 0; i < 3; i++) {
            memcpy(tmp, l, (size_t)V * sizeof(float));
            assert_int_equal(smp_sample(&s, &p, tmp, V, scr, smp_scratch_bytes(V), &r), 0);
            (pass ? f : e)[i] = r.token;
        }
        smp_state_free(&s);
    }
    assert_memory_equal(e, f, sizeof e);
    assert_memory_equal(e, a + 1, sizeof e);
    free(scr);
    free(tmp);
    free(l);
}

static void test_logprobs(void **state) {
    (void)state;
    const int V = 2000;
    float *l = rand_logits(V, 3.0);
    l[10] = l[11] = 12.0f; /* a tie at the top: lower id first */
    /* reference: log_softmax of the RAW logits in double */
    double *ref = malloc(V * sizeof(double));
    int *order = malloc(V * sizeof(int));
    assert_non_null(ref);
    assert_non_null(order);
    double m = -INFINITY, s = 0;
    for (int i = 0; i < V; i++) m = fmax(m, l[i]);
    for (int i = 0; i < V; i++) s += exp(l[i] - m);
    for (int i = 0; i < V; i++) ref[i] = l[i] - m - log(s), order[i] = i;
    qsort_r(order, V, sizeof(int), cmp_desc, ref);

    const int32_t prompt[3] = {10, 5, 7};
    smp_logit_bias b[2] = {{11, -50.0f}, {3, 40.0f}};
    for (int greedy = 0; greedy < 2; greedy++) {
        smp_params p = smp_params_default();
        p.temperature = greedy ? 0.0f : 0.5f;
        p.top_k = 10;
        p.repetition_penalty = 1.7f;
        p.presence_penalty = 0.5f;
        p.logit_bias = b;
        p.n_logit_bias = 2;
        p.logprobs = 20;
        p.has_seed = 1;
        ctx c;
        ctx_init(&c, &p, V, prompt, 3, 0);
        assert_int_equal(smp_accept(&c.s, 5), 0);
        for (int it = 0; it < 10; it++) {
            smp_result r = draw(&c, l);
            /* processing biased token 3 to the top: sampling must differ from raw */
            if (greedy) assert_int_equal(r.token, 3);
            assert_true(fabs(r.logprob - ref[r.token]) < 1e-4);
            assert_int_equal(r.n_top, 20);
            for (int j = 0; j < 20; j++) {
                assert_int_equal(r.top[j].token, order[j]);
                assert_true(fabs(r.top[j].logprob - ref[order[j]]) < 1e-4);
                if (j) assert_true(r.top[j].logprob <= r.top[j - 1].logprob);
            }
            assert_int_equal(r.top[0].token, 10);
            assert_int_equal(r.top[1].token, 11);
        }
        /* logprobs = 0: the chosen token only; -1: nothing */
        c.p.logprobs = 0;
        smp_result r = draw(&c, l);
        assert_int_equal(r.n_top, 0);
        assert_true(fabs(r.logprob - ref[r.token]) < 1e-4);
        c.p.logprobs = -1;
        r = draw(&c, l);
        assert_int_equal(r.n_top, 0);
        assert_true(r.logprob == 0.0f);
        ctx_free(&c);
    }
    /* no processing at all (no copy of the raw logits taken) */
    smp_params p = smp_params_default();
    p.logprobs = 3;
    ctx c;
    ctx_init(&c, &p, V, NULL, 0, 0);
    smp_result r = draw(&c, l);
    assert_true(fabs(r.logprob - ref[r.token]) < 1e-4);
    assert_int_equal(r.n_top, 3);
    for (int j = 0; j < 3; j++) assert_int_equal(r.top[j].token, order[j]);
    ctx_free(&c);
    /* logprobs > vocab: capped */
    const float tiny[2] = {0.0f, 1.0f};
    p.logprobs = 5;
    ctx_init(&c, &p, 2, NULL, 0, 0);
    r = draw(&c, tiny);
    assert_int_equal(r.n_top, 2);
    assert_int_equal(r.top[0].token, 1);
    assert_true(fabs(r.top[1].logprob - (-1.0 - log1p(exp(-1.0)))) < 1e-6);
    ctx_free(&c);
    free(ref);
    free(order);
    free(l);
}

enum vfield { V_TEMP, V_TOPK, V_TOPP, V_MINP, V_REP, V_PRES, V_FREQ, V_BIAS, V_NBIAS, V_LP };

static void test_validate(void **state) {
    (void)state;
    const smp_logit_bias ok = {3, 100.0f}, bad_id = {10, 1.0f}, bad_neg = {-1, 1.0f},
                         bad_bias = {2, 100.5f}, nan_bias = {2, NAN};
    const struct {
        const char *name;
        enum vfield f;
        double v;
        const smp_logit_bias *b;
    } cases[] = {
        {"temperature", V_TEMP, -0.1, NULL},
        {"temperature", V_TEMP, 100.5, NULL},
        {"temperature", V_TEMP, NAN, NULL},
        {"top_k", V_TOPK, -2, NULL},
        {"top_p", V_TOPP, 0.0, NULL},
        {"top_p", V_TOPP, 1.01, NULL},
        {"top_p", V_TOPP, NAN, NULL},
        {"min_p", V_MINP, -0.01, NULL},
        {"min_p", V_MINP, 1.5, NULL},
        {"repetition_penalty", V_REP, 0.0, NULL},
        {"repetition_penalty", V_REP, -1.0, NULL},
        {"repetition_penalty", V_REP, 2.5, NULL},
        {"presence_penalty", V_PRES, 2.1, NULL},
        {"presence_penalty", V_PRES, -2.1, NULL},
        {"frequency_penalty", V_FREQ, -3.0, NULL},
        {"frequency_penalty", V_FREQ, INFINITY, NULL},
        {"logit_bias", V_BIAS, 1, &bad_id},
        {"logit_bias", V_BIAS, 1, &bad_neg},
        {"logit_bias", V_BIAS, 1, &bad_bias},
        {"logit_bias", V_BIAS, 1, &nan_bias},
        {"logit_bias", V_BIAS, 1, NULL},
        {"logit_bias", V_NBIAS, -1, NULL},
        {"logprobs", V_LP, 21, NULL},
        {"logprobs", V_LP, -2, NULL},
    };
    for (size_t i = 0; i < NI_ARRAY_LEN(cases); i++) {
        /* the defaults with exactly one field out of range */
        smp_params p = smp_params_default();
        const double v = cases[i].v;
        switch (cases[i].f) {
        case V_TEMP: p.temperature = (float)v; break;
        case V_TOPK: p.top_k = (int32_t)v; break;
        case V_TOPP: p.top_p = (float)v; break;
        case V_MINP: p.min_p = (float)v; break;
        case V_REP: p.repetition_penalty = (float)v; break;
        case V_PRES: p.presence_penalty = (float)v; break;
        case V_FREQ: p.frequency_penalty = (float)v; break;
        case V_BIAS: p.logit_bias = cases[i].b, p.n_logit_bias = (int32_t)v; break;
        case V_NBIAS: p.logit_bias = &ok, p.n_logit_bias = (int32_t)v; break;
        case V_LP: p.logprobs = (int32_t)v; break;
        }
        const char *bad = NULL;
        assert_int_equal(smp_params_validate(&p, 10, &bad), NI_EINVAL);
        assert_non_null(bad);
        if (strcmp(bad, cases[i].name) != 0)
            fail_msg("case %zu: named '%s', want '%s'", i, bad, cases[i].name);
    }
    /* edges that are valid */
    smp_params p = smp_params_default();
    p.temperature = 0.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    p.repetition_penalty = 2.0f;
    p.presence_penalty = -2.0f;
    p.frequency_penalty = 2.0f;
    p.logit_bias = &ok;
    p.n_logit_bias = 1;
    p.logprobs = 20;
    const char *bad = "x";
    assert_int_equal(smp_params_validate(&p, 10, &bad), 0);
    assert_null(bad);
    p.temperature = 100.0f;
    p.top_k = 100000;
    assert_int_equal(smp_params_validate(&p, 10, NULL), 0);
    assert_int_equal(smp_params_validate(&p, 0, &bad), NI_EINVAL);
    assert_string_equal(bad, "vocab");
}

/* smp_reserve(n) makes the next n smp_accept calls allocation-free, so the
 * engine's per-token accept cannot hit NI_ENOMEM; it clamps to the vocab and
 * is a no-op without penalties. */
static void test_reserve(void **state) {
    (void)state;
    const int V = 1000, N = 300;
    const int32_t prompt[2] = {5, 7};
    smp_params p = smp_params_default();
    p.repetition_penalty = 1.3f;
    smp_state s;
    assert_int_equal(smp_state_init(&s, &p, V, prompt, 2, 0, 0), 0);
    assert_int_equal(smp_reserve(&s, -1), NI_EINVAL);
    assert_int_equal(smp_reserve(&s, N), 0);
    const void *tab = s.tab;
    const uint32_t cap = s.cap;
    assert_true(cap >= 2 * (N + 2));
    for (int i = 0; i < N; i++) assert_int_equal(smp_accept(&s, (i * 7 + 11) % V), 0);
    assert_ptr_equal(s.tab, tab); /* no growth: nothing allocated per token */
    assert_int_equal(s.cap, cap);
    assert_int_equal(smp_reserve(&s, 1 << 30), 0); /* bounded by the vocab */
    assert_true(s.cap <= 2048);
    smp_state_free(&s);

    p = smp_params_default(); /* no penalty: nothing to reserve */
    assert_int_equal(smp_state_init(&s, &p, V, prompt, 2, 0, 0), 0);
    assert_int_equal(smp_reserve(&s, N), 0);
    assert_null(s.tab);
    smp_state_free(&s);
}

static void test_state_errors(void **state) {
    (void)state;
    smp_params p = smp_params_default();
    smp_state s;
    const int32_t bad_prompt[2] = {1, 10};
    assert_int_equal(smp_state_init(&s, &p, 10, bad_prompt, 2, 0, 0), NI_EINVAL);
    smp_state_free(&s); /* safe after a failed init */
    assert_int_equal(smp_state_init(&s, &p, 0, NULL, 0, 0, 0), NI_EINVAL);
    assert_int_equal(smp_state_init(&s, &p, 10, NULL, 1, 0, 0), NI_EINVAL);
    assert_int_equal(smp_state_init(&s, &p, 10, bad_prompt, 1, 0, 0), 0);
    assert_int_equal(smp_accept(&s, 10), NI_EINVAL);
    assert_int_equal(smp_accept(&s, -1), NI_EINVAL);
    assert_int_equal(smp_accept(&s, 9), 0);
    float l[10] = {0};
    smp_result r;
    const size_t need = smp_scratch_bytes(10);
    void *scr = malloc(need);
    assert_non_null(scr);
    assert_int_equal(smp_sample(&s, &p, l, 10, scr, need - 1, &r), NI_ERANGE);
    assert_int_equal(smp_sample(&s, &p, l, 9, scr, need, &r), NI_EINVAL);
    assert_int_equal(smp_sample(&s, &p, l, 10, NULL, need, &r), NI_EINVAL);
    assert_int_equal(smp_sample(&s, &p, l, 10, scr, need, NULL), NI_EINVAL);
    /* penalties the state was not initialised to track */
    smp_params q = p;
    q.repetition_penalty = 1.2f;
    assert_int_equal(smp_sample(&s, &q, l, 10, scr, need, &r), NI_EINVAL);
    q = p;
    q.presence_penalty = 1.0f;
    assert_int_equal(smp_sample(&s, &q, l, 10, scr, need, &r), NI_EINVAL);
    assert_int_equal(smp_sample(&s, &p, l, 10, scr, need, &r), 0);
    smp_state_free(&s);
    smp_state_free(&s);

    /* table growth: many distinct output tokens, counts stay right */
    p.frequency_penalty = 0.001f;
    p.temperature = 0.0f;
    const int V = 70000;
    assert_int_equal(smp_state_init(&s, &p, V, NULL, 0, 0, 0), 0);
    for (int i = 0; i < V; i++) assert_int_equal(smp_accept(&s, (int32_t)((i * 7919) % V)), 0);
    for (int i = 0; i < 1000; i++) assert_int_equal(smp_accept(&s, 123), 0);
    float *big = calloc(V, sizeof(float));
    void *bscr = malloc(smp_scratch_bytes(V));
    assert_non_null(big);
    assert_non_null(bscr);
    assert_int_equal(smp_sample(&s, &p, big, V, bscr, smp_scratch_bytes(V), &r), 0);
    for (int i = 0; i < V; i++) assert_float_equal(big[i], i == 123 ? -1.001f : -0.001f, 1e-6);
    assert_int_not_equal(r.token, 123);
    assert_int_equal(r.token, 0);
    free(big);
    free(bscr);
    smp_state_free(&s);
    free(scr);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_repetition_penalty),
        cmocka_unit_test(test_presence_frequency),
        cmocka_unit_test(test_logit_bias),
        cmocka_unit_test(test_seed),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_reserve),
        cmocka_unit_test(test_state_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
