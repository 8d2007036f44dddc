/*
 * test_cuda_sample.c - the fused GPU sampler (cuda/cu_sample.cu, through
 * cu_op_sample and eng_backend_cuda.sample) against its CPU twin
 * engine/backend/sampler.c (smp_sample / smp_distribution) on the same logits.
 *
 * Logits: fresh random rows (normal times a random scale, some -inf, some
 * exact ties) of vocab 1000, 49152 and 151936. Parameter sets cover greedy,
 * plain temperature, top_k (1, small, >= finite count = off), top_p (small
 * and large nuclei, T = 100), min_p, their combinations, logit_bias with
 * duplicate ids, repetition / presence / frequency penalties (prompt and
 * output tokens as the CPU state records them), logprobs 0..20, and n > 1
 * siblings sharing one logits row. Checks per row:
 *   distribution: the GPU's survivors == the CPU's (same support) and
 *     |p_gpu - p_cpu| < 1e-6 (the weights are bit-identical; only the
 *     normalizing sums differ in order);
 *   draw: the GPU token lies in the CPU distribution's id-order inverse CDF
 *     at the same u (within 1e-6 of a boundary it may be a neighbour); for
 *     dense rows (no top_k / top_p) u is the CPU state's own next uniform
 *     and the token must equal smp_sample's (same RNG stream, same id-order
 *     draw); greedy: identical to smp_sample's argmax;
 *   logprobs: chosen and top-N tokens identical to smp_sample's raw
 *     logprobs, values within 1e-5;
 *   errors: NaN, +inf and all -inf rows give token -1.
 * End to end through the backend on tiny-llama3: forward(logits = NULL)
 * (a decode graph) + sample(): greedy tokens and logprobs == the CPU
 * sampler on the logits of a twin context's forward; a sequence without
 * logits is rejected.
 * Random data is fresh each run (seed printed; NI_TEST_SEED reproduces).
 * Without a GPU the tests skip.
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

#include "engine/backend/backend.h"
#include "engine/model/model.h"
#include "engine/backend/sampler.h"
#include "engine/util/util.h"
#include "test_util.h"
#ifdef NI_USE_CUDA
#include "cuda/cu.h"
#include "cuda/cu_ops.h"
#endif

#ifdef NI_USE_CUDA
static tu_rng g_rng;

/* The next uniform of a smp_state's RNG (sampler.c's xoshiro256** and
 * xo_uniform), without advancing it: what smp_sample() will draw. */
static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static double peek_uniform(const smp_state *s) {
    const uint64_t r = rotl64(s->rng[1] * 5, 7) * 9;
    return (double)(r >> 11) * 0x1.0p-53;
}

static void rand_logits(float *l, int V) {
    const float scale = 0.5f + 6.0f * (float)tu_uniform(&g_rng, 0, 1);
    for (int i = 0; i < V; i++) l[i] = scale * (float)tu_normal(&g_rng);
    const int n_inf = tu_int(&g_rng, V / 50 + 1), n_tie = tu_int(&g_rng, 8);
    for (int k = 0; k < n_inf; k++) l[tu_int(&g_rng, V)] = -INFINITY;
    for (int k = 0; k < n_tie; k++) l[tu_int(&g_rng, V)] = l[tu_int(&g_rng, V)]; /* exact ties */
    if (tu_int(&g_rng, 3) == 0) { /* a tie at the top */
        int a = 0;
        for (int i = 1; i < V; i++)
            if (l[i] > l[a]) a = i;
        l[tu_int(&g_rng, V)] = l[a];
    }
}

enum { N_PARAM = 16 };

/* Parameter set k (logit_bias of row bias[] if used). */
static smp_params make_params(int k, smp_logit_bias *bias, int V) {
    smp_params p = smp_params_default();
    switch (k) {
    case 0: p.temperature = 0.0f; break;
    case 1: p.temperature = 0.0f; p.logprobs = 5; break;
    case 2: p.temperature = 1.0f; break;
    case 3: p.temperature = 0.7f; p.min_p = 0.05f; break;
    case 4: p.temperature = 1.3f; p.top_k = 50; break;
    case 5: p.temperature = 1.0f; p.top_k = 1; break;
    case 6: p.temperature = 0.9f; p.top_k = V + 5; p.logprobs = 3; break; /* top_k off */
    case 7: p.temperature = 1.0f; p.top_p = 0.9f; break;
    case 8: p.temperature = 0.8f; p.top_p = 0.5f; p.top_k = 100; break;
    case 9: p.temperature = 1.1f; p.top_p = 0.95f; p.min_p = 0.1f; break;
    case 10: p.temperature = 100.0f; p.top_p = 0.99f; p.logprobs = 20; break;
    case 11: p.temperature = 1.0f; p.top_p = 0.3f; p.top_k = 7; p.min_p = 0.2f; p.logprobs = 0; break;
    case 12: p.temperature = 1.0f; p.repetition_penalty = 1.3f; p.presence_penalty = 0.5f;
             p.frequency_penalty = 0.7f; p.logprobs = 4; break;
    case 13: p.temperature = 0.0f; p.repetition_penalty = 0.8f; break;
    case 14: p.temperature = 0.6f; p.frequency_penalty = -1.5f; p.top_k = 20; p.top_p = 0.8f; break;
    case 15:
        p.temperature = 1.0f;
        for (int j = 0; j < 6; j++) {
            bias[j].token = j < 2 ? 3 : tu_int(&g_rng, V); /* token 3 twice: the biases add up */
            bias[j].bias = (float)(tu_int(&g_rng, 2001) - 1000) / 10.0f;
        }
        p.logit_bias = bias;
        p.n_logit_bias = 6;
        p.logprobs = 2;
        break;
    }
    return p;
}

/* Penalty history of one row: prompt and output tokens; fills the CPU state
 * and the GPU's table (what the engine would export from the state). */
typedef struct history {
    int32_t prompt[64];
    int n_prompt;
    int32_t out[32];
    int n_out;
    eng_sample_tok toks[96];
    int n_toks;
} history;

static void make_history(history *h, const smp_params *p, int V) {
    h->n_prompt = 1 + tu_int(&g_rng, 64);
    h->n_out = tu_int(&g_rng, 33);
    const int narrow = 1 + tu_int(&g_rng, 200); /* repeats */
    for (int i = 0; i < h->n_prompt; i++) h->prompt[i] = tu_int(&g_rng, narrow < V ? narrow : V);
    for (int i = 0; i < h->n_out; i++) h->out[i] = tu_int(&g_rng, narrow < V ? narrow : V);
    h->n_toks = 0;
    const int rep = p->repetition_penalty != 1.0f;
    const int fp = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    if (!rep && !fp) return;
    for (int pass = 0; pass < 2; pass++) {
        const int32_t *t = pass ? h->out : h->prompt;
        const int n = pass ? h->n_out : h->n_prompt;
        if (!pass && !rep) continue;
        for (int i = 0; i < n; i++) {
            int j = 0;
            while (j < h->n_toks && h->toks[j].token != t[i]) j++;
            if (j == h->n_toks) {
                h->toks[j].token = t[i];
                h->toks[j].val = 0;
                h->n_toks++;
            }
            if (pass) h->toks[j].val++;
            else h->toks[j].val |= 0x80000000u;
        }
    }
}

/* CPU state for p with history h (seeded with seed). */
static void cpu_state(smp_state *s, const smp_params *p, const history *h, int V, uint64_t seed) {
    assert_int_equal(smp_state_init(s, p, V, h->prompt, h->n_prompt, seed, 0), 0);
    for (int i = 0; i < h->n_out; i++) assert_int_equal(smp_accept(s, h->out[i]), 0);
}

/* Is token g consistent with the id-order inverse CDF of probs at u? */
static int cdf_ok(const float *probs, int V, double u, int g, int *exact) {
    double c = 0;
    int e = -1;
    for (int i = 0; i < V; i++) {
        if (probs[i] <= 0.0f) continue;
        c += probs[i];
        if (c > u) {
            e = i;
            break;
        }
    }
    if (e < 0) /* rounding at the end: the last survivor */
        for (int i = V - 1; i >= 0 && e < 0; i--)
            if (probs[i] > 0.0f) e = i;
    *exact = g == e;
    if (g == e) return 1;
    if (g < 0 || g >= V || !(probs[g] > 0.0f)) return 0;
    double before = 0;
    for (int i = 0; i < g; i++) before += probs[i] > 0.0f ? probs[i] : 0.0;
    return u >= before - 1e-6 && u <= before + probs[g] + 1e-6;
}
#endif

static void test_vs_cpu(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    static const int vocabs[3] = {1000, 49152, 151936};
    for (int vi = 0; vi < 3; vi++) {
        const int V = vocabs[vi];
        const int n_rows = N_PARAM * 2 + 2; /* every set twice, + 2 siblings */
        float *lg = malloc(sizeof(float) * (size_t)n_rows * V);
        float *probs = malloc(sizeof(float) * (size_t)n_rows * V);
        float *pc = malloc(sizeof(float) * V), *tmp = malloc(sizeof(float) * V);
        smp_params *ps = calloc(n_rows, sizeof *ps);
        smp_logit_bias (*bias)[6] = calloc(n_rows, sizeof *bias);
        history *hs = calloc(n_rows, sizeof *hs);
        eng_sample_row *rows = calloc(n_rows, sizeof *rows);
        smp_result *res = calloc(n_rows, sizeof *res);
        const size_t scratch_bytes = smp_scratch_bytes(V);
        void *scratch = malloc(scratch_bytes);
        for (int r = 0; r < n_rows; r++) {
            const int k = r < 2 * N_PARAM ? r % N_PARAM : 12; /* siblings: penalties */
            ps[r] = make_params(k, bias[r], V);
            make_history(&hs[r], &ps[r], V);
            rand_logits(lg + (size_t)r * V, V);
            rows[r].seq = r < 2 * N_PARAM ? r : 2; /* the 2 siblings share row 2 */
            rows[r].p = &ps[r];
            rows[r].toks = hs[r].toks;
            rows[r].n_toks = hs[r].n_toks;
            rows[r].u = tu_uniform(&g_rng, 0, 1);
        }
        /* dense rows draw the CPU state's own next uniform */
        uint64_t seeds[N_PARAM * 2 + 2];
        for (int r = 0; r < n_rows; r++) {
            seeds[r] = tu_next(&g_rng);
            const smp_params *p = &ps[r];
            if (p->temperature >= SMP_GREEDY_EPS && !(p->top_k >= 1 && p->top_k < V) &&
                !(p->top_p < 1.0f)) {
                smp_state s;
                cpu_state(&s, p, &hs[r], V, seeds[r]);
                rows[r].u = peek_uniform(&s);
                smp_state_free(&s);
            }
        }
        const double t0 = ni_now();
        assert_int_equal(cu_op_sample(lg, 2 * N_PARAM, V, rows, n_rows, res, probs), 0);
        const double t_op = ni_now() - t0;

        int n_exact = 0, n_near = 0, n_same_cpu = 0, n_dense = 0;
        double worst_p = 0, worst_lp = 0;
        for (int r = 0; r < n_rows; r++) {
            const smp_params *p = &ps[r];
            const float *raw = lg + (size_t)rows[r].seq * V;
            smp_state s;
            /* distribution */
            cpu_state(&s, p, &hs[r], V, seeds[r]);
            memcpy(tmp, raw, sizeof(float) * V);
            assert_int_equal(smp_distribution(&s, p, tmp, V, scratch, scratch_bytes, pc), 0);
            const float *pg = probs + (size_t)r * V;
            for (int i = 0; i < V; i++) {
                if ((pc[i] > 0.0f) != (pg[i] > 0.0f))
                    fail_msg("V %d row %d (set %d): token %d in one support only (cpu %g gpu %g)",
                             V, r, r % N_PARAM, i, pc[i], pg[i]);
                const double d = fabs((double)pc[i] - pg[i]);
                if (d > worst_p) worst_p = d;
                if (!(d < 1e-6))
                    fail_msg("V %d row %d: p[%d] cpu %.9g gpu %.9g", V, r, i, pc[i], pg[i]);
            }
            /* draw */
            int exact = 0;
            if (!cdf_ok(pc, V, rows[r].u, res[r].token, &exact))
                fail_msg("V %d row %d: token %d not at u %.17g of the CPU distribution", V, r,
                         res[r].token, rows[r].u);
            n_exact += exact;
            n_near += !exact;
            /* smp_sample on the same state: greedy and dense rows give the same token */
            smp_result cr;
            memcpy(tmp, raw, sizeof(float) * V);
            smp_state_free(&s);
            cpu_state(&s, p, &hs[r], V, seeds[r]);
            assert_int_equal(smp_sample(&s, p, tmp, V, scratch, scratch_bytes, &cr), 0);
            smp_state_free(&s);
            const int greedy = !(p->temperature >= SMP_GREEDY_EPS);
            const int dense = !greedy && !(p->top_k >= 1 && p->top_k < V) && !(p->top_p < 1.0f);
            if (greedy && cr.token != res[r].token)
                fail_msg("V %d row %d: greedy token cpu %d gpu %d", V, r, cr.token, res[r].token);
            if (dense) {
                n_dense++;
                n_same_cpu += cr.token == res[r].token;
                if (cr.token != res[r].token && exact)
                    fail_msg("V %d row %d: dense draw cpu %d gpu %d at the CPU's own u", V, r,
                             cr.token, res[r].token);
            }
            /* logprobs */
            if (p->logprobs >= 0) {
                if (res[r].n_top != cr.n_top)
                    fail_msg("V %d row %d: n_top cpu %d gpu %d", V, r, cr.n_top, res[r].n_top);
                for (int j = 0; j < cr.n_top; j++) {
                    if (res[r].top[j].token != cr.top[j].token)
                        fail_msg("V %d row %d: top[%d] cpu %d gpu %d", V, r, j, cr.top[j].token,
                                 res[r].top[j].token);
                    const double d = fabs((double)res[r].top[j].logprob - cr.top[j].logprob);
                    if (d > worst_lp) worst_lp = d;
                    if (!(d < 1e-5)) fail_msg("V %d row %d: top[%d] logprob off by %g", V, r, j, d);
                }
                /* the chosen token's raw logprob, in double */
                double m = -INFINITY, sum = 0;
                for (int i = 0; i < V; i++) m = fmax(m, raw[i]);
                for (int i = 0; i < V; i++) sum += exp((double)raw[i] - m);
                const double ref = (double)raw[res[r].token] - (m + log(sum));
                const double d = fabs(ref - res[r].logprob);
                if (d > worst_lp) worst_lp = d;
                if (!(d < 1e-4 * fmax(1.0, fabs(ref))))
                    fail_msg("V %d row %d: logprob %g vs %g", V, r, res[r].logprob, ref);
            } else if (res[r].n_top != 0 || res[r].logprob != 0.0f) {
                fail_msg("V %d row %d: logprobs filled though off", V, r);
            }
        }
        printf("  V %6d: %d rows, distributions max |dp| %.2g, draws %d exact + %d at a "
               "boundary, dense == smp_sample %d/%d, logprobs max |d| %.2g, op %.1f ms\n",
               V, n_rows, worst_p, n_exact, n_near, n_same_cpu, n_dense, worst_lp, t_op * 1e3);
        if (n_near > 1) fail_msg("too many boundary draws (%d)", n_near);
        free(lg); free(probs); free(pc); free(tmp); free(ps); free(bias); free(hs); free(rows);
        free(res); free(scratch);
    }
#endif
}

static void test_bad_rows(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    enum { V = 777 };
    float *lg = malloc(sizeof(float) * 4 * V);
    tu_fill_normal(&g_rng, lg, (size_t)4 * V, 0, 1);
    lg[5] = NAN;
    lg[V + 9] = INFINITY;
    for (int i = 0; i < V; i++) lg[2 * V + i] = -INFINITY;
    smp_params p = smp_params_default(), g = smp_params_default();
    g.temperature = 0;
    eng_sample_row rows[5] = {{0, &p, 0.5, NULL, 0}, {1, &g, 0.5, NULL, 0},
                              {2, &p, 0.5, NULL, 0}, {3, &p, 0.25, NULL, 0},
                              {3, &g, 0.25, NULL, 0}};
    smp_result res[5];
    assert_int_equal(cu_op_sample(lg, 4, V, rows, 5, res, NULL), 0);
    assert_int_equal(res[0].token, -1);
    assert_int_equal(res[1].token, -1);
    assert_int_equal(res[2].token, -1);
    assert_true(res[3].token >= 0 && res[3].token < V);
    assert_true(res[4].token >= 0 && res[4].token < V);
    rows[0].seq = 4; /* no such row */
    assert_int_equal(cu_op_sample(lg, 4, V, rows, 1, res, NULL), NI_EINVAL);
    free(lg);
#endif
}

/* End to end: forward(NULL) + sample on the backend vs the CPU sampler on a
 * twin context's logits. */
static void test_backend(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    mdl_model m;
    char err[512] = "";
    tu_load_tiny(&m, 1); /* tiny-llama3 */
    const int V = m.cfg.vocab_size;
    enum { BS = 16, NB = 64, MB = 8, NS = 4 };
    const eng_backend_config cf = {.n_blocks = NB,
                                   .block_size = BS,
                                   .max_batch_tokens = 128,
                                   .max_seqs = NS,
                                   .dtype = ENG_DTYPE_FP32};
    void *a = NULL, *b = NULL;
    assert_int_equal(eng_backend_cuda.init(&a, &m, &cf, err, sizeof err), 0);
    assert_int_equal(eng_backend_cuda.init(&b, &m, &cf, err, sizeof err), 0);
    int32_t tables[NS * MB], tok[NS * 40];
    for (int i = 0; i < NS * MB; i++) tables[i] = i;
    for (int i = 0; i < NS * 40; i++) tok[i] = tu_int(&g_rng, V);
    float *lg = malloc(sizeof(float) * NS * V);
    void *scratch = malloc(smp_scratch_bytes(V));
    smp_params pg = smp_params_default(), pl = smp_params_default();
    pg.temperature = 0;
    pg.logprobs = 3;
    pl.temperature = 0.8f;
    pl.top_k = 40;
    int n_checked = 0;
    for (int st = 0; st < 12; st++) {
        /* step 0: prefill of 10 tokens each; then decode (a graph) */
        const int len = st == 0 ? 10 : 1;
        int32_t ss[NS + 1], p0[NS], flat[NS * 10];
        uint8_t want[NS];
        for (int s = 0; s < NS; s++) {
            ss[s] = s * len;
            p0[s] = st == 0 ? 0 : 9 + st;
            memcpy(flat + s * len, tok + s * 40 + p0[s], sizeof(int32_t) * len);
            want[s] = (uint8_t)(s != 3 || st % 2 == 0);
        }
        ss[NS] = NS * len;
        const eng_batch bt = {NS, NS * len, flat, ss, p0, tables, MB, want};
        assert_int_equal(eng_backend_cuda.forward(a, &bt, NULL), 0);
        assert_int_equal(eng_backend_cuda.forward(b, &bt, lg), 0);
        eng_sample_row rows[NS + 1];
        int n = 0;
        for (int s = 0; s < NS; s++)
            if (want[s])
                rows[n++] =
                    (eng_sample_row){s, s == 1 ? &pl : &pg, tu_uniform(&g_rng, 0, 1), NULL, 0};
        rows[n++] = (eng_sample_row){0, &pg, 0.0, NULL, 0}; /* a sibling of sequence 0 */
        smp_result res[NS + 1];
        assert_int_equal(eng_backend_cuda.sample(a, rows, n, res), 0);
        for (int i = 0; i < n; i++) {
            const int s = rows[i].seq;
            if (rows[i].p != &pg) {
                assert_true(res[i].token >= 0 && res[i].token < V);
                continue;
            }
            smp_state ss0;
            smp_result cr;
            assert_int_equal(smp_state_init(&ss0, &pg, V, NULL, 0, 1, 0), 0);
            float *row = lg + (size_t)s * V;
            assert_int_equal(smp_sample(&ss0, &pg, row, V, scratch, smp_scratch_bytes(V), &cr),
                             0);
            smp_state_free(&ss0);
            assert_int_equal(res[i].token, cr.token);
            assert_int_equal(res[i].n_top, cr.n_top);
            assert_true(fabs(res[i].logprob - cr.logprob) < 1e-5);
            for (int j = 0; j < cr.n_top; j++) assert_int_equal(res[i].top[j].token, cr.top[j].token);
            n_checked++;
        }
        if (!want[3]) { /* no logits for sequence 3 this step */
            const eng_sample_row bad = {3, &pg, 0.5, NULL, 0};
            assert_int_equal(eng_backend_cuda.sample(a, &bad, 1, res), NI_EINVAL);
        }
    }
    cu_backend_stats st;
    assert_int_equal(cu_backend_get_stats(a, &st), 0);
    printf("  backend: %d greedy draws == smp_sample on the twin's logits; %lld sample calls, "
           "%lld graph replays\n",
           n_checked, st.sample_calls, st.graph_launches);
    eng_backend_cuda.free(a);
    eng_backend_cuda.free(b);
    free(lg);
    free(scratch);
    mdl_free(&m);
#endif
}

/* Timing of the sampler kernel alone on SmolLM2- and Llama-3-sized vocabs
 * (reported, not checked). */
static void test_speed(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    static const int vocabs[2] = {49152, 128256};
    static const int nrows[3] = {1, 64, 256};
    for (int vi = 0; vi < 2; vi++)
        for (int k = 0; k < 4; k++) {
            smp_params p = smp_params_default();
            const char *name = "greedy";
            if (k == 0) p.temperature = 0.0f;
            if (k == 1) { p.temperature = 0.0f; p.logprobs = 5; name = "greedy+logprobs5"; }
            if (k == 2) name = "T=1 dense";
            if (k == 3) { p.top_k = 50; p.top_p = 0.9f; name = "top_k 50 + top_p .9"; }
            printf("  sampler V %6d %-20s", vocabs[vi], name);
            for (int r = 0; r < 3; r++) {
                double us = 0;
                assert_int_equal(cu_op_sample_bench(vocabs[vi], nrows[r], &p, 20, &us), 0);
                printf(" %4d rows %8.1f us", nrows[r], us);
            }
            printf("\n");
        }
#endif
}

int main(void) {
#ifdef NI_USE_CUDA
    tu_seed(&g_rng, "test_cuda_sample");
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vs_cpu),
        cmocka_unit_test(test_bad_rows),
        cmocka_unit_test(test_backend),
        cmocka_unit_test(test_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
