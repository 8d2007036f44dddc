/*
 * test_sampler.c - the distributions of engine/backend/sampler.c: greedy,
 * temperature, the block-skipping inverse CDF, top_k, top_p and min_p (each
 * alone, combined in vLLM's order, and on a Qwen-sized vocab), against
 * double-precision references written here and against a torch golden of
 * vLLM v0's sampler order (test/fixtures/sampler_golden.json,
 * scripts/gen_sampler_golden.py). Penalties, logit bias, seeds, logprobs and
 * parameter validation are in test_sampler_params.c.
 *
 * Every statistical test uses a fixed seed, so runs are deterministic; the
 * tolerances are about 4 standard deviations of the empirical estimate, and
 * each is far below the error the test would see if the feature under test
 * were ignored (noted where not obvious). Run from the repository root.
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
#include <jansson.h>

#include "engine/backend/sampler.h"
#include "engine/util/util.h"
#include "test_util.h"
#include "test_sampler_ctx.h"

/* ---- helpers ------------------------------------------------------------ */

static void distribution(ctx *c, const float *logits, float *probs) {
    memcpy(c->tmp, logits, (size_t)c->vocab * sizeof(float));
    assert_int_equal(
        smp_distribution(&c->s, &c->p, c->tmp, c->vocab, c->scratch, c->scratch_bytes, probs), 0);
}

/* softmax(l / t) in double */
static void ref_softmax(const float *l, int n, double t, double *out) {
    double m = -INFINITY;
    for (int i = 0; i < n; i++) m = fmax(m, (double)l[i]);
    double s = 0;
    for (int i = 0; i < n; i++) s += (out[i] = exp(((double)l[i] - m) / t));
    for (int i = 0; i < n; i++) out[i] /= s;
}

/* Empirical frequencies over `draws` samples; returns max |freq - ref| and
 * the chi-square statistic over tokens with ref > 0 (fails on a draw with
 * ref == 0). */
static double empirical(ctx *c, const float *logits, const double *ref, int draws, double *chi2) {
    int *cnt = calloc((size_t)c->vocab, sizeof(int));
    assert_non_null(cnt);
    for (int i = 0; i < draws; i++) cnt[draw(c, logits).token]++;
    double maxerr = 0, x2 = 0;
    for (int i = 0; i < c->vocab; i++) {
        const double f = (double)cnt[i] / draws;
        if (ref[i] == 0.0) {
            if (cnt[i]) fail_msg("token %d drawn %d times but has probability 0", i, cnt[i]);
            continue;
        }
        maxerr = fmax(maxerr, fabs(f - ref[i]));
        const double e = ref[i] * draws;
        x2 += (cnt[i] - e) * (cnt[i] - e) / e;
    }
    free(cnt);
    if (chi2) *chi2 = x2;
    return maxerr;
}

static float *logits_from_probs(const double *p, int n) {
    float *l = malloc((size_t)n * sizeof(float));
    assert_non_null(l);
    for (int i = 0; i < n; i++) l[i] = (float)log(p[i]);
    return l;
}

/* Asserts that probs (from smp_distribution) is `ref` renormalised over the
 * tokens with keep[i] != 0, and exactly 0 elsewhere. */
static void check_support(const char *what, const float *probs, const double *ref, const int *keep,
                          int n) {
    double z = 0;
    for (int i = 0; i < n; i++)
        if (keep[i]) z += ref[i];
    for (int i = 0; i < n; i++) {
        if (!keep[i]) {
            if (probs[i] != 0.0f)
                fail_msg("%s: token %d should be removed, p=%g", what, i, probs[i]);
            continue;
        }
        const double want = ref[i] / z;
        if (!(fabs(probs[i] - want) <= 1e-5 + 1e-4 * want))
            fail_msg("%s: token %d p=%.7g want %.7g", what, i, probs[i], want);
    }
}

/* ---- tests -------------------------------------------------------------- */

static void test_greedy(void **state) {
    (void)state;
    smp_params p = smp_params_default();
    p.temperature = 0.0f;
    p.top_k = 3; /* ignored under greedy, as in vLLM */
    p.top_p = 0.5f;
    ctx c;
    const int V = 1000;
    ctx_init(&c, &p, V, NULL, 0, 1);
    for (int rep = 0; rep < 20; rep++) {
        float *l = rand_logits(V, 3.0);
        int best = 0;
        for (int i = 1; i < V; i++)
            if (l[i] > l[best]) best = i;
        assert_int_equal(draw(&c, l).token, best);
        free(l);
    }
    /* ties: the lowest index wins */
    float *l = calloc(V, sizeof(float));
    assert_non_null(l);
    for (int i = 0; i < V; i++) l[i] = -1.0f;
    l[900] = l[17] = l[400] = 5.0f;
    assert_int_equal(draw(&c, l).token, 17);
    l[3] = -INFINITY;
    assert_int_equal(draw(&c, l).token, 17);
    /* temperature below 1e-5 is greedy too; 1e-3 is not but is nearly so */
    c.p.temperature = 5e-6f;
    assert_int_equal(draw(&c, l).token, 17);
    /* all -inf, NaN, +inf: errors, RNG untouched */
    smp_result r;
    for (int i = 0; i < V; i++) l[i] = -INFINITY;
    assert_int_equal(smp_sample(&c.s, &c.p, l, V, c.scratch, c.scratch_bytes, &r), NI_ERANGE);
    l[5] = NAN;
    assert_int_equal(smp_sample(&c.s, &c.p, l, V, c.scratch, c.scratch_bytes, &r), NI_ERANGE);
    l[5] = INFINITY;
    c.p.temperature = 1.0f;
    assert_int_equal(smp_sample(&c.s, &c.p, l, V, c.scratch, c.scratch_bytes, &r), NI_ERANGE);
    free(l);
    ctx_free(&c);
}

/* Fails if temperature were ignored: for T=0.6 the top probability would
 * be 0.52 instead of 0.70 (error 0.18 vs tolerance 0.013). */
static void test_temperature_distribution(void **state) {
    (void)state;
    const float logits[6] = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -2.0f};
    const float temps[3] = {0.6f, 1.0f, 1.8f};
    for (int t = 0; t < 3; t++) {
        smp_params p = smp_params_default();
        p.temperature = temps[t];
        p.has_seed = 1;
        p.seed = 1000 + (uint64_t)t;
        ctx c;
        ctx_init(&c, &p, 6, NULL, 0, 0);
        double ref[6], chi2;
        ref_softmax(logits, 6, temps[t], ref);
        float probs[6];
        distribution(&c, logits, probs);
        for (int i = 0; i < 6; i++) assert_true(fabs(probs[i] - ref[i]) < 1e-6);
        const double err = empirical(&c, logits, ref, 20000, &chi2);
        /* sd of a frequency <= sqrt(0.25/20000) = 0.0035; chi2 df=5, p=1e-4: 25.7
         */
        if (!(err < 0.013 && chi2 < 25.7))
            fail_msg("T=%g: max abs err %.4f chi2 %.2f", temps[t], err, chi2);
        ctx_free(&c);
    }
}

/* Dense draws over several 256-token blocks: the block-skipping inverse CDF
 * must land in the right block. Categories: 5 heavy tokens spread over
 * blocks 0, 1, 3 and the last, plus "all the rest". */
static void test_dense_blocks(void **state) {
    (void)state;
    const int V = 1000, N = 20000;
    float *l = rand_logits(V, 0.5);
    const int heavy[5] = {5, 300, 301, 777, 999};
    const float hl[5] = {3.0f, 2.5f, 2.0f, 3.5f, 1.5f};
    for (int j = 0; j < 5; j++) l[heavy[j]] = hl[j];
    smp_params p = smp_params_default();
    p.temperature = 0.9f;
    p.has_seed = 1;
    p.seed = 99;
    ctx c;
    ctx_init(&c, &p, V, NULL, 0, 0);
    double *ref = malloc(V * sizeof(double));
    assert_non_null(ref);
    ref_softmax(l, V, 0.9, ref);
    double cat_ref[6] = {0}, cat[6] = {0};
    for (int i = 0; i < V; i++) {
        int k = 5;
        for (int j = 0; j < 5; j++)
            if (heavy[j] == i) k = j;
        cat_ref[k] += ref[i];
    }
    for (int i = 0; i < N; i++) {
        const int t = draw(&c, l).token;
        int k = 5;
        for (int j = 0; j < 5; j++)
            if (heavy[j] == t) k = j;
        cat[k] += 1.0 / N;
    }
    for (int k = 0; k < 6; k++)
        if (!(fabs(cat[k] - cat_ref[k]) < 0.013))
            fail_msg("category %d: freq %.4f want %.4f", k, cat[k], cat_ref[k]);
    ctx_free(&c);
    free(ref);
    free(l);
}

static void test_top_k(void **state) {
    (void)state;
    const int V = 64;
    float *l = rand_logits(V, 2.0);
    smp_params p = smp_params_default();
    p.top_k = 5;
    p.temperature = 0.8f;
    p.has_seed = 1;
    p.seed = 7;
    ctx c;
    ctx_init(&c, &p, V, NULL, 0, 0);
    /* reference support: the 5 largest */
    int keep[64] = {0};
    for (int k = 0; k < 5; k++) {
        int best = -1;
        for (int i = 0; i < V; i++)
            if (!keep[i] && (best < 0 || l[i] > l[best])) best = i;
        keep[best] = 1;
    }
    double ref[64];
    ref_softmax(l, V, 0.8, ref);
    float probs[64];
    distribution(&c, l, probs);
    check_support("top_k=5", probs, ref, keep, V);
    double z = 0, rn[64];
    for (int i = 0; i < V; i++) z += keep[i] ? ref[i] : 0;
    for (int i = 0; i < V; i++) rn[i] = keep[i] ? ref[i] / z : 0;
    double chi2;
    const double err = empirical(&c, l, rn, 20000, &chi2);
    if (!(err < 0.013)) fail_msg("top_k empirical err %.4f", err);
    ctx_free(&c);
    free(l);

    /* boundary ties are all kept (vLLM masks logits < k-th value) */
    const float tl[5] = {3.0f, 2.0f, 2.0f, 1.0f, 0.0f};
    p.top_k = 2;
    p.temperature = 1.0f;
    ctx_init(&c, &p, 5, NULL, 0, 0);
    float pr[5];
    double rt[5];
    ref_softmax(tl, 5, 1.0, rt);
    distribution(&c, tl, pr);
    const int kt[5] = {1, 1, 1, 0, 0};
    check_support("top_k=2 ties", pr, rt, kt, 5);
    /* k = 1 with T > 0 is the argmax; k >= vocab is off */
    c.p.top_k = 1;
    distribution(&c, tl, pr);
    const int k1[5] = {1, 0, 0, 0, 0};
    check_support("top_k=1", pr, rt, k1, 5);
    c.p.top_k = 5;
    distribution(&c, tl, pr);
    const int kall[5] = {1, 1, 1, 1, 1};
    check_support("top_k=vocab", pr, rt, kall, 5);
    c.p.top_k = 0; /* off */
    distribution(&c, tl, pr);
    check_support("top_k=0", pr, rt, kall, 5);
    ctx_free(&c);
}

/* probabilities 0.15, 0.5, 0.05, 0.3 at ids 0..3 (shuffled order) */
static const double k_p4[4] = {0.15, 0.5, 0.05, 0.3};

static void test_top_p(void **state) {
    (void)state;
    float *l = logits_from_probs(k_p4, 4);
    smp_params p = smp_params_default();
    ctx c;
    ctx_init(&c, &p, 4, NULL, 0, 0);
    float pr[4];
    const struct {
        float top_p;
        int keep[4];
    } cases[] =
        {
            {1e-6f, {0, 1, 0, 0}}, /* at least one token is kept */
            {0.49f, {0, 1, 0, 0}}, {0.51f, {0, 1, 0, 1}},
            {0.79f, {0, 1, 0, 1}}, /* 0.5 + 0.3 = 0.8 >= 0.79 */
            {0.81f, {1, 1, 0, 1}}, {0.94f, {1, 1, 0, 1}},
            {0.96f, {1, 1, 1, 1}}, {1.0f, {1, 1, 1, 1}},
        };
    for (size_t i = 0; i < NI_ARRAY_LEN(cases); i++) {
        c.p.top_p = cases[i].top_p;
        distribution(&c, l, pr);
        char what[64];
        snprintf(what, sizeof what, "top_p=%g", (double)cases[i].top_p);
        check_support(what, pr, k_p4, cases[i].keep, 4);
    }
    /* empirical: only {1,3} ever drawn with p = 0.8 */
    c.p.top_p = 0.79f;
    c.p.has_seed = 1;
    double rn[4] = {0, 0.5 / 0.8, 0, 0.3 / 0.8};
    const double err = empirical(&c, l, rn, 10000, NULL);
    if (!(err < 0.02)) fail_msg("top_p empirical err %.4f", err);
    ctx_free(&c);
    free(l);

    /* top_p ranks ties by lower id first */
    const float eq[4] = {0, 0, 0, 0};
    const double q[4] = {0.25, 0.25, 0.25, 0.25};
    p.top_p = 0.3f;
    ctx_init(&c, &p, 4, NULL, 0, 0);
    distribution(&c, eq, pr);
    const int k01[4] = {1, 1, 0, 0};
    check_support("top_p ties", pr, q, k01, 4);
    /* exact boundaries (equal weights are exact): a token whose mass above
     * equals p is out, as in vLLM's `cumsum <= 1 - p` mask */
    c.p.top_p = 0.5f;
    distribution(&c, eq, pr);
    check_support("top_p=0.5 exact", pr, q, k01, 4);
    c.p.top_p = 0.75f;
    distribution(&c, eq, pr);
    const int k012[4] = {1, 1, 1, 0};
    check_support("top_p=0.75 exact", pr, q, k012, 4);
    c.p.top_p = 0.7500001f;
    distribution(&c, eq, pr);
    const int kall4[4] = {1, 1, 1, 1};
    check_support("top_p=0.7500001", pr, q, kall4, 4);
    ctx_free(&c);

    /* top_p acts on the softmax of the top_k survivors (vLLM order):
     * probs .4 .3 .2 .1, k=2 -> .571 .429; p=0.5 keeps only the first.
     * Were top_p computed over the full vocab it would keep {0, 1}. */
    const double q4[4] = {0.4, 0.3, 0.2, 0.1};
    float *l4 = logits_from_probs(q4, 4);
    p.top_p = 0.5f;
    p.top_k = 2;
    ctx_init(&c, &p, 4, NULL, 0, 0);
    distribution(&c, l4, pr);
    const int k0[4] = {1, 0, 0, 0};
    check_support("top_k then top_p", pr, q4, k0, 4);
    c.p.top_k = -1;
    distribution(&c, l4, pr);
    check_support("top_p alone", pr, q4, k01, 4);
    ctx_free(&c);
    free(l4);
}

static void test_min_p(void **state) {
    (void)state;
    float *l = logits_from_probs(k_p4, 4);
    smp_params p = smp_params_default();
    ctx c;
    ctx_init(&c, &p, 4, NULL, 0, 0);
    float pr[4];
    c.p.min_p = 0.2f; /* threshold 0.1: drops 0.05 */
    distribution(&c, l, pr);
    const int a[4] = {1, 1, 0, 1};
    check_support("min_p=0.2", pr, k_p4, a, 4);
    c.p.min_p = 0.35f; /* threshold 0.175: drops 0.15 too */
    distribution(&c, l, pr);
    const int b[4] = {0, 1, 0, 1};
    check_support("min_p=0.35", pr, k_p4, b, 4);
    c.p.min_p = 1.0f;
    distribution(&c, l, pr);
    const int d[4] = {0, 1, 0, 0};
    check_support("min_p=1", pr, k_p4, d, 4);
    /* with top_p too (min_p after top_p): top_p .96 keeps all, min_p .35 -> {1,3}
     */
    c.p.min_p = 0.35f;
    c.p.top_p = 0.96f;
    distribution(&c, l, pr);
    check_support("top_p+min_p", pr, k_p4, b, 4);
    /* min_p is relative to the tempered distribution: T=3 flattens it,
     * 0.05/0.5 -> (0.1)^(1/3) = 0.46 >= 0.35, so everything survives */
    c.p.top_p = 1.0f;
    c.p.temperature = 3.0f;
    distribution(&c, l, pr);
    double rt[4];
    ref_softmax(l, 4, 3.0, rt);
    const int all[4] = {1, 1, 1, 1};
    check_support("min_p T=3", pr, rt, all, 4);
    ctx_free(&c);
    free(l);
}

/* The fast top_k / top_p paths against a full double-precision sort on a
 * Qwen-sized vocab. */
static void test_large_vocab(void **state) {
    (void)state;
    const int V = 151936;
    float *l = rand_logits(V, 2.5);
    double *w = malloc(V * sizeof(double));
    int *order = malloc(V * sizeof(int));
    int *keep = malloc(V * sizeof(int));
    float *probs = malloc(V * sizeof(float));
    assert_non_null(w);
    assert_non_null(order);
    assert_non_null(keep);
    assert_non_null(probs);
    const struct {
        float t, top_p, min_p;
        int top_k;
    } cases[] = {
        {1.0f, 0.9f, 0.0f, -1}, {0.7f, 0.95f, 0.0f, -1},  {1.5f, 0.5f, 0.0f, -1},
        {1.0f, 1.0f, 0.0f, 50}, {0.8f, 0.9f, 0.05f, 40},  {2.0f, 0.99f, 0.01f, -1},
        {1.0f, 1.0f, 0.2f, -1}, {1.0f, 0.3f, 0.0f, 1000},
    };
    for (size_t k = 0; k < NI_ARRAY_LEN(cases); k++) {
        smp_params p = smp_params_default();
        p.temperature = cases[k].t;
        p.top_p = cases[k].top_p;
        p.min_p = cases[k].min_p;
        p.top_k = cases[k].top_k;
        ctx c;
        ctx_init(&c, &p, V, NULL, 0, 0);
        const double t0 = ni_now();
        distribution(&c, l, probs);
        const double dt = ni_now() - t0;
        /* reference */
        ref_softmax(l, V, cases[k].t, w);
        for (int i = 0; i < V; i++) order[i] = i, keep[i] = 0;
        qsort_r(order, V, sizeof(int), cmp_desc, w);
        const int kk = cases[k].top_k > 0 ? NI_MIN(cases[k].top_k, V) : V;
        double z = 0;
        for (int j = 0; j < kk; j++) z += w[order[j]];
        double above = 0;
        int n = 0;
        while (n < kk && (n == 0 || above < cases[k].top_p * z)) above += w[order[n++]];
        const double top = w[order[0]];
        for (int j = 0; j < n; j++)
            if (w[order[j]] >= cases[k].min_p * top) keep[order[j]] = 1;
        int nk = 0;
        for (int i = 0; i < V; i++) nk += keep[i];
        char what[96];
        snprintf(what, sizeof what, "V=%d T=%g top_p=%g min_p=%g top_k=%d (%d kept)", V,
                 (double)cases[k].t, (double)cases[k].top_p, (double)cases[k].min_p, cases[k].top_k,
                 nk);
        check_support(what, probs, w, keep, V);
        print_message("  %s: %.2f ms\n", what, dt * 1e3);
        ctx_free(&c);
    }
    /* greedy fast path timing */
    smp_params p = smp_params_default();
    p.temperature = 0.0f;
    ctx c;
    ctx_init(&c, &p, V, NULL, 0, 0);
    const double t0 = ni_now();
    for (int i = 0; i < 10; i++) (void)draw(&c, l);
    print_message("  greedy V=%d: %.3f ms/token\n", V, (ni_now() - t0) * 100);
    ctx_free(&c);
    free(w);
    free(order);
    free(keep);
    free(probs);
    free(l);
}

/* ---- golden: torch implementation of vLLM v0's order ------------------- */

static void test_golden(void **state) {
    (void)state;
    json_error_t jerr;
    json_t *root = json_load_file("test/fixtures/sampler_golden.json", 0, &jerr);
    if (!root) fail_msg("test/fixtures/sampler_golden.json: %s (line %d)", jerr.text, jerr.line);
    json_t *cases = json_object_get(root, "cases");
    assert_true(json_is_array(cases));
    assert_true(json_array_size(cases) >= 10);
    size_t ci;
    json_t *cs;
    json_array_foreach(cases, ci, cs) {
        const char *name = json_string_value(json_object_get(cs, "name"));
        const int V = (int)json_integer_value(json_object_get(cs, "vocab"));
        json_t *jl = json_object_get(cs, "logits"), *jp = json_object_get(cs, "probs");
        json_t *jpr = json_object_get(cs, "prompt"), *jo = json_object_get(cs, "output");
        json_t *prm = json_object_get(cs, "params");
        assert_non_null(name);
        assert_int_equal((int)json_array_size(jl), V);
        assert_int_equal((int)json_array_size(jp), V);
        float *l = malloc(V * sizeof(float)), *probs = malloc(V * sizeof(float));
        double *ref = malloc(V * sizeof(double));
        assert_non_null(l);
        assert_non_null(probs);
        assert_non_null(ref);
        for (int i = 0; i < V; i++) {
            l[i] = (float)json_number_value(json_array_get(jl, i));
            ref[i] = json_number_value(json_array_get(jp, i));
        }
        const int np = (int)json_array_size(jpr);
        int32_t prompt[64];
        assert_true(np <= 64);
        for (int i = 0; i < np; i++)
            prompt[i] = (int32_t)json_integer_value(json_array_get(jpr, i));
        smp_params p = smp_params_default();
        p.temperature = (float)json_number_value(json_object_get(prm, "temperature"));
        p.top_k = (int32_t)json_integer_value(json_object_get(prm, "top_k"));
        p.top_p = (float)json_number_value(json_object_get(prm, "top_p"));
        p.min_p = (float)json_number_value(json_object_get(prm, "min_p"));
        p.repetition_penalty = (float)json_number_value(json_object_get(prm, "repetition_penalty"));
        p.presence_penalty = (float)json_number_value(json_object_get(prm, "presence_penalty"));
        p.frequency_penalty = (float)json_number_value(json_object_get(prm, "frequency_penalty"));
        json_t *jb = json_object_get(prm, "logit_bias");
        smp_logit_bias bias[8];
        p.n_logit_bias = (int32_t)json_array_size(jb);
        assert_true(p.n_logit_bias <= 8);
        for (int i = 0; i < p.n_logit_bias; i++) {
            bias[i].token = (int32_t)json_integer_value(json_array_get(json_array_get(jb, i), 0));
            bias[i].bias = (float)json_number_value(json_array_get(json_array_get(jb, i), 1));
        }
        p.logit_bias = bias;
        ctx c;
        ctx_init(&c, &p, V, prompt, np, 0);
        for (size_t i = 0; i < json_array_size(jo); i++)
            assert_int_equal(smp_accept(&c.s, (int32_t)json_integer_value(json_array_get(jo, i))),
                             0);
        distribution(&c, l, probs);
        for (int i = 0; i < V; i++) {
            const int zr = ref[i] == 0.0, zo = probs[i] == 0.0f;
            if (zr != zo && fmax(ref[i], probs[i]) > 1e-30)
                fail_msg("%s: token %d support differs: ours %g ref %g", name, i, probs[i], ref[i]);
            if (!(fabs(probs[i] - ref[i]) <= 1e-5 + 1e-4 * ref[i]))
                fail_msg("%s: token %d p=%.8g ref %.8g", name, i, probs[i], ref[i]);
        }
        /* smp_sample draws from the same support */
        for (int k = 0; k < 50; k++) {
            smp_result r = draw(&c, l);
            if (!(ref[r.token] > 0))
                fail_msg("%s: drew token %d outside the support", name, r.token);
        }
        ctx_free(&c);
        free(l);
        free(probs);
        free(ref);
    }
    json_decref(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy),       cmocka_unit_test(test_temperature_distribution),
        cmocka_unit_test(test_dense_blocks), cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p),        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_large_vocab),  cmocka_unit_test(test_golden),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
