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
 * Grammar masks (eng_sample_row.allow): every parameter set under a dense
 * (~50%, NaN / +inf at disallowed tokens), a sparse (2..8 tokens), a
 * single-token and an "only -inf tokens allowed" mask, with unmasked rows
 * and siblings of a masked row in the same call: the same checks against
 * gr_apply_mask + the CPU twin (logprobs of the masked row; the -inf-only
 * rows give token -1 like the CPU's NI_ERANGE); every token is allowed.
 * End to end through the backend on tiny-llama3: forward(logits = NULL)
 * (a decode graph) + sample(), masks on every other step: greedy tokens
 * and logprobs == the CPU sampler on the (masked) logits of a twin
 * context's forward; a sequence without logits is rejected. Through the
 * engine: regex-constrained requests (greedy, logprobs, n = 2 sampled) and
 * an unconstrained one on CUDA (device masks) and on the CPU backend: the
 * same greedy tokens, every output inside its grammar.
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
#include "engine/engine.h"
#include "engine/grammar/grammar.h"
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

/* Dense rows (temperature, no top_k / top_p) draw the CPU state's own next uniform, so the
 * GPU token must equal smp_sample's. */
static void dense_uniforms(eng_sample_row *rows, int n_rows, const history *hs,
                           const uint64_t *seeds, int V) {
    for (int r = 0; r < n_rows; r++) {
        const smp_params *p = rows[r].p;
        if (p->temperature >= SMP_GREEDY_EPS && !(p->top_k >= 1 && p->top_k < V) &&
            !(p->top_p < 1.0f)) {
            smp_state s;
            cpu_state(&s, p, &hs[r], V, seeds[r]);
            rows[r].u = peek_uniform(&s);
            smp_state_free(&s);
        }
    }
}

typedef struct check_stats {
    int n_exact, n_near, n_same_cpu, n_dense, n_err;
    double worst_p, worst_lp;
} check_stats;

/* |a - b| with equal infinities (the logprob of a -inf logit) at distance 0. */
static double lp_dist(double a, double b) { return a == b ? 0.0 : fabs(a - b); }

/* Checks the GPU's res / probs of every row against the CPU twin on the same logits: the row
 * of rows[r].seq, masked with gr_apply_mask when rows[r].allow, then smp_sample /
 * smp_distribution (the CPU's NI_ERANGE: the GPU token must be -1). */
static void check_rows(const char *what, int V, const float *lg, const eng_sample_row *rows,
                       int n_rows, const history *hs, const uint64_t *seeds,
                       const smp_result *res, const float *probs, check_stats *cs) {
    float *pc = malloc(sizeof(float) * V), *tmp = malloc(sizeof(float) * V);
    float *raw = malloc(sizeof(float) * V);
    const size_t scratch_bytes = smp_scratch_bytes(V);
    void *scratch = malloc(scratch_bytes);
    memset(cs, 0, sizeof *cs);
    for (int r = 0; r < n_rows; r++) {
        const smp_params *p = rows[r].p;
        memcpy(raw, lg + (size_t)rows[r].seq * V, sizeof(float) * V);
        if (rows[r].allow) gr_apply_mask(raw, V, rows[r].allow);
        smp_state s;
        /* smp_sample on the same state: greedy and dense rows give the same token */
        smp_result cr;
        memcpy(tmp, raw, sizeof(float) * V);
        cpu_state(&s, p, &hs[r], V, seeds[r]);
        const int crc = smp_sample(&s, p, tmp, V, scratch, scratch_bytes, &cr);
        smp_state_free(&s);
        if (crc == NI_ERANGE) { /* no finite logit left (or NaN / +inf) */
            if (res[r].token != -1)
                fail_msg("%s V %d row %d: cpu NI_ERANGE, gpu token %d", what, V, r,
                         res[r].token);
            cs->n_err++;
            continue;
        }
        assert_int_equal(crc, 0);
        /* distribution */
        cpu_state(&s, p, &hs[r], V, seeds[r]);
        memcpy(tmp, raw, sizeof(float) * V);
        assert_int_equal(smp_distribution(&s, p, tmp, V, scratch, scratch_bytes, pc), 0);
        smp_state_free(&s);
        const float *pg = probs + (size_t)r * V;
        for (int i = 0; i < V; i++) {
            if ((pc[i] > 0.0f) != (pg[i] > 0.0f))
                fail_msg("%s V %d row %d: token %d in one support only (cpu %g gpu %g)", what, V,
                         r, i, pc[i], pg[i]);
            const double d = fabs((double)pc[i] - pg[i]);
            if (d > cs->worst_p) cs->worst_p = d;
            if (!(d < 1e-6))
                fail_msg("%s V %d row %d: p[%d] cpu %.9g gpu %.9g", what, V, r, i, pc[i], pg[i]);
        }
        /* draw */
        int exact = 0;
        if (!cdf_ok(pc, V, rows[r].u, res[r].token, &exact))
            fail_msg("%s V %d row %d: token %d not at u %.17g of the CPU distribution", what, V,
                     r, res[r].token, rows[r].u);
        cs->n_exact += exact;
        cs->n_near += !exact;
        const int greedy = !(p->temperature >= SMP_GREEDY_EPS);
        const int dense = !greedy && !(p->top_k >= 1 && p->top_k < V) && !(p->top_p < 1.0f);
        if (greedy && cr.token != res[r].token)
            fail_msg("%s V %d row %d: greedy token cpu %d gpu %d", what, V, r, cr.token,
                     res[r].token);
        if (dense) {
            cs->n_dense++;
            cs->n_same_cpu += cr.token == res[r].token;
            if (cr.token != res[r].token && exact)
                fail_msg("%s V %d row %d: dense draw cpu %d gpu %d at the CPU's own u", what, V,
                         r, cr.token, res[r].token);
        }
        /* logprobs (of the masked row, as on the CPU) */
        if (p->logprobs >= 0) {
            if (res[r].n_top != cr.n_top)
                fail_msg("%s V %d row %d: n_top cpu %d gpu %d", what, V, r, cr.n_top,
                         res[r].n_top);
            for (int j = 0; j < cr.n_top; j++) {
                if (res[r].top[j].token != cr.top[j].token)
                    fail_msg("%s V %d row %d: top[%d] cpu %d gpu %d", what, V, r, j,
                             cr.top[j].token, res[r].top[j].token);
                const double d = lp_dist(res[r].top[j].logprob, cr.top[j].logprob);
                if (d > cs->worst_lp) cs->worst_lp = d;
                if (!(d < 1e-5))
                    fail_msg("%s V %d row %d: top[%d] logprob off by %g", what, V, r, j, d);
            }
            /* the chosen token's raw logprob, in double */
            double m = -INFINITY, sum = 0;
            for (int i = 0; i < V; i++) m = fmax(m, raw[i]);
            for (int i = 0; i < V; i++) sum += exp((double)raw[i] - m);
            const double ref = (double)raw[res[r].token] - (m + log(sum));
            const double d = fabs(ref - res[r].logprob);
            if (d > cs->worst_lp) cs->worst_lp = d;
            if (!(d < 1e-4 * fmax(1.0, fabs(ref))))
                fail_msg("%s V %d row %d: logprob %g vs %g", what, V, r, res[r].logprob, ref);
        } else if (res[r].n_top != 0 || res[r].logprob != 0.0f) {
            fail_msg("%s V %d row %d: logprobs filled though off", what, V, r);
        }
    }
    free(pc);
    free(tmp);
    free(raw);
    free(scratch);
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
        smp_params *ps = calloc(n_rows, sizeof *ps);
        smp_logit_bias (*bias)[6] = calloc(n_rows, sizeof *bias);
        history *hs = calloc(n_rows, sizeof *hs);
        eng_sample_row *rows = calloc(n_rows, sizeof *rows);
        smp_result *res = calloc(n_rows, sizeof *res);
        uint64_t *seeds = calloc(n_rows, sizeof *seeds);
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
        for (int r = 0; r < n_rows; r++) seeds[r] = tu_next(&g_rng);
        dense_uniforms(rows, n_rows, hs, seeds, V);
        const double t0 = ni_now();
        assert_int_equal(cu_op_sample(lg, 2 * N_PARAM, V, rows, n_rows, res, probs), 0);
        const double t_op = ni_now() - t0;
        check_stats cs;
        check_rows("plain", V, lg, rows, n_rows, hs, seeds, res, probs, &cs);
        printf("  V %6d: %d rows, distributions max |dp| %.2g, draws %d exact + %d at a "
               "boundary, dense == smp_sample %d/%d, logprobs max |d| %.2g, op %.1f ms\n",
               V, n_rows, cs.worst_p, cs.n_exact, cs.n_near, cs.n_same_cpu, cs.n_dense,
               cs.worst_lp, t_op * 1e3);
        assert_int_equal(cs.n_err, 0);
        if (cs.n_near > 1) fail_msg("too many boundary draws (%d)", cs.n_near);
        free(lg); free(probs); free(ps); free(bias); free(hs); free(rows); free(res); free(seeds);
    }
#endif
}

/* Grammar masks (eng_sample_row.allow) against gr_apply_mask + the CPU twin: every parameter
 * set under four kinds of mask: dense (each token 50%, with NaN / +inf at disallowed tokens,
 * which the mask removes), sparse (2..8 tokens), a single finite token, and only -inf tokens
 * allowed (token -1, the CPU's NI_ERANGE); plus unmasked rows in the same call and siblings
 * sharing a dense-masked row (greedy, top_p + 20 logprobs, penalties). */
static void test_masks(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    static const int vocabs[3] = {1000, 49152, 151936};
    enum { N_KIND = 4, N_MASKED = N_PARAM * N_KIND, N_SRC = N_MASKED + 2, N_ROWS = N_SRC + 3 };
    for (int vi = 0; vi < 3; vi++) {
        const int V = vocabs[vi], W = (V + 31) / 32;
        float *lg = malloc(sizeof(float) * (size_t)N_SRC * V);
        float *probs = malloc(sizeof(float) * (size_t)N_ROWS * V);
        uint32_t *masks = calloc((size_t)N_SRC * W, sizeof *masks);
        smp_params *ps = calloc(N_ROWS, sizeof *ps);
        smp_logit_bias (*bias)[6] = calloc(N_ROWS, sizeof *bias);
        history *hs = calloc(N_ROWS, sizeof *hs);
        eng_sample_row *rows = calloc(N_ROWS, sizeof *rows);
        smp_result *res = calloc(N_ROWS, sizeof *res);
        uint64_t *seeds = calloc(N_ROWS, sizeof *seeds);
        static const int sib_set[3] = {0, 10, 12};
        const int sib_src = 5; /* a dense-masked row (kind 0) */
        int n_allowed[N_SRC] = {0};
        for (int r = 0; r < N_ROWS; r++) {
            const int src = r < N_SRC ? r : sib_src;
            const int k = r < N_MASKED ? r % N_PARAM : r < N_SRC ? 2 + 5 * (r - N_MASKED)
                                                                 : sib_set[r - N_SRC];
            ps[r] = make_params(k, bias[r], V);
            make_history(&hs[r], &ps[r], V);
            rows[r].seq = src;
            rows[r].p = &ps[r];
            rows[r].toks = hs[r].toks;
            rows[r].n_toks = hs[r].n_toks;
            rows[r].u = tu_uniform(&g_rng, 0, 1);
            rows[r].allow = src < N_MASKED ? masks + (size_t)src * W : NULL;
            if (r >= N_SRC) continue;
            float *l = lg + (size_t)src * V;
            uint32_t *m = masks + (size_t)src * W;
            rand_logits(l, V);
            if (src >= N_MASKED) continue; /* unmasked */
            const int kind = src / N_PARAM;
            int allow_n = 0;
            if (kind == 0) { /* dense */
                for (int w = 0; w < W; w++) m[w] = (uint32_t)tu_next(&g_rng);
                for (int t = 0, bad = 0; t < V && bad < 2; t++)
                    if (!((m[t >> 5] >> (t & 31)) & 1u) && tu_int(&g_rng, 50) == 0)
                        l[t] = bad++ ? INFINITY : NAN; /* masked away: no error */
            } else {
                const int n = kind == 1 ? 2 + tu_int(&g_rng, 7) : kind == 2 ? 1
                                                                            : 1 + tu_int(&g_rng, 3);
                for (int j = 0; j < n; j++) {
                    const int t = tu_int(&g_rng, V);
                    m[t >> 5] |= 1u << (t & 31);
                    if (kind < 3 && j == 0 && !(l[t] > -INFINITY)) l[t] = (float)tu_normal(&g_rng);
                    if (kind == 3) l[t] = -INFINITY;
                }
            }
            for (int t = 0; t < V; t++) allow_n += (m[t >> 5] >> (t & 31)) & 1u;
            if (V % 32) m[W - 1] |= ~0u << (V % 32); /* bits past the vocab: ignored */
            n_allowed[src] = allow_n;
        }
        for (int r = 0; r < N_ROWS; r++) seeds[r] = tu_next(&g_rng);
        dense_uniforms(rows, N_ROWS, hs, seeds, V);
        const double t0 = ni_now();
        assert_int_equal(cu_op_sample(lg, N_SRC, V, rows, N_ROWS, res, probs), 0);
        const double t_op = ni_now() - t0;
        check_stats cs;
        check_rows("masked", V, lg, rows, N_ROWS, hs, seeds, res, probs, &cs);
        /* every drawn token is allowed; the -inf-only rows (kind 3) and only they fail */
        int n_err_want = 0;
        for (int r = 0; r < N_ROWS; r++) {
            const int src = rows[r].seq;
            if (src < N_MASKED && src / N_PARAM == 3) {
                n_err_want++;
                assert_int_equal(res[r].token, -1);
                continue;
            }
            assert_true(res[r].token >= 0 && res[r].token < V);
            if (rows[r].allow)
                assert_true((rows[r].allow[res[r].token >> 5] >> (res[r].token & 31)) & 1u);
        }
        assert_int_equal(cs.n_err, n_err_want);
        printf("  V %6d: %d masked rows (dense: %d of %d allowed; 2..8; 1; -inf only) + %d "
               "unmasked + %d siblings: max |dp| %.2g, draws %d exact + %d at a boundary, "
               "dense == smp_sample %d/%d, logprobs max |d| %.2g, %d token -1, op %.1f ms\n",
               V, N_MASKED, n_allowed[0], V, N_SRC - N_MASKED, N_ROWS - N_SRC, cs.worst_p,
               cs.n_exact, cs.n_near, cs.n_same_cpu, cs.n_dense, cs.worst_lp, cs.n_err,
               t_op * 1e3);
        if (cs.n_near > 1) fail_msg("too many boundary draws (%d)", cs.n_near);
        free(lg); free(probs); free(masks); free(ps); free(bias); free(hs); free(rows);
        free(res); free(seeds);
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
    eng_sample_row rows[5] = {{0, &p, 0.5, NULL, 0, NULL}, {1, &g, 0.5, NULL, 0, NULL},
                              {2, &p, 0.5, NULL, 0, NULL}, {3, &p, 0.25, NULL, 0, NULL},
                              {3, &g, 0.25, NULL, 0, NULL}};
    smp_result res[5];
    assert_int_equal(cu_op_sample(lg, 4, V, rows, 5, res, NULL), 0);
    assert_int_equal(res[0].token, -1);
    assert_int_equal(res[1].token, -1);
    assert_int_equal(res[2].token, -1);
    assert_true(res[3].token >= 0 && res[3].token < V);
    assert_true(res[4].token >= 0 && res[4].token < V);
    rows[0].seq = 4; /* no such row */
    assert_int_equal(cu_op_sample(lg, 4, V, rows, 1, res, NULL), NI_EINVAL);
    uint32_t allow[(V + 31) / 32] = {0};
    allow[1] = 1u << 3; /* token 35 alone */
    rows[0].allow = allow; /* a mask on no such row: rejected before anything runs */
    assert_int_equal(cu_op_sample(lg, 4, V, rows, 1, res, NULL), NI_EINVAL);
    rows[0].seq = 0; /* the mask removes the NaN at 5; every draw is token 35 */
    rows[2].allow = allow; /* the all -inf row stays without a finite logit */
    rows[3].allow = allow;
    rows[4].allow = allow; /* siblings carry their sequence's mask */
    assert_int_equal(cu_op_sample(lg, 4, V, rows, 5, res, NULL), 0);
    assert_int_equal(res[0].token, 35);
    assert_int_equal(res[1].token, -1);
    assert_int_equal(res[2].token, -1);
    assert_int_equal(res[3].token, 35);
    assert_int_equal(res[4].token, 35);
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
    float *lg = malloc(sizeof(float) * NS * V), *tmp = malloc(sizeof(float) * V);
    void *scratch = malloc(smp_scratch_bytes(V));
    const int W = (V + 31) / 32;
    uint32_t *masks = malloc(sizeof(uint32_t) * NS * W);
    int n_masked = 0;
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
        /* grammar masks on odd steps: sequence 0 (and its sibling) a sparse one, 1 and 2
         * dense ones; 3 none */
        memset(masks, 0, sizeof(uint32_t) * NS * W);
        for (int s = 0; s < 3; s++) {
            uint32_t *mk = masks + s * W;
            if (s == 0)
                for (int j = 0; j < 1 + tu_int(&g_rng, 6); j++) {
                    const int t = tu_int(&g_rng, V);
                    mk[t >> 5] |= 1u << (t & 31);
                }
            else
                for (int w = 0; w < W; w++) mk[w] = (uint32_t)tu_next(&g_rng);
        }
        const int masked = st % 2 == 1;
        eng_sample_row rows[NS + 1];
        int n = 0;
        for (int s = 0; s < NS; s++)
            if (want[s])
                rows[n++] = (eng_sample_row){s, s == 1 ? &pl : &pg, tu_uniform(&g_rng, 0, 1),
                                             NULL, 0, masked && s < 3 ? masks + s * W : NULL};
        rows[n++] = (eng_sample_row){0, &pg, 0.0, NULL, 0,
                                     masked ? masks : NULL}; /* a sibling of sequence 0 */
        smp_result res[NS + 1];
        assert_int_equal(eng_backend_cuda.sample(a, rows, n, res), 0);
        for (int i = 0; i < n; i++) {
            const int s = rows[i].seq;
            const uint32_t *al = rows[i].allow;
            assert_true(res[i].token >= 0 && res[i].token < V);
            if (al) {
                assert_true((al[res[i].token >> 5] >> (res[i].token & 31)) & 1u);
                n_masked++;
            }
            if (rows[i].p != &pg) continue;
            smp_state ss0;
            smp_result cr;
            assert_int_equal(smp_state_init(&ss0, &pg, V, NULL, 0, 1, 0), 0);
            float *row = tmp;
            memcpy(row, lg + (size_t)s * V, sizeof(float) * V);
            if (al) gr_apply_mask(row, V, al);
            assert_int_equal(smp_sample(&ss0, &pg, row, V, scratch, smp_scratch_bytes(V), &cr),
                             0);
            smp_state_free(&ss0);
            assert_int_equal(res[i].token, cr.token);
            assert_int_equal(res[i].n_top, cr.n_top);
            assert_true(fabs(res[i].logprob - cr.logprob) < 1e-5);
            for (int j = 0; j < cr.n_top; j++) {
                assert_int_equal(res[i].top[j].token, cr.top[j].token);
                assert_true(lp_dist(res[i].top[j].logprob, cr.top[j].logprob) < 1e-5);
            }
            n_checked++;
        }
        if (!want[3]) { /* no logits for sequence 3 this step */
            const eng_sample_row bad = {3, &pg, 0.5, NULL, 0, NULL};
            assert_int_equal(eng_backend_cuda.sample(a, &bad, 1, res), NI_EINVAL);
        }
    }
    cu_backend_stats st;
    assert_int_equal(cu_backend_get_stats(a, &st), 0);
    printf("  backend: %d greedy draws == smp_sample on the twin's logits (%d rows masked); "
           "%lld sample calls, %lld graph replays\n",
           n_checked, n_masked, st.sample_calls, st.graph_launches);
    assert_true(eng_backend_cuda.sample_masks);
    eng_backend_cuda.free(a);
    eng_backend_cuda.free(b);
    free(lg);
    free(tmp);
    free(masks);
    free(scratch);
    mdl_free(&m);
#endif
}

#ifdef NI_USE_CUDA
/* ---- end to end: the engine with grammar requests on CUDA (device masks) and on the CPU */

enum { E2E_REQ = 6, E2E_N = 2, E2E_MAXT = 48 };

typedef struct e2e_out {
    int32_t toks[E2E_MAXT];
    int n;
    char text[1024];
    int len;
    int finish, error;
    int n_top[E2E_MAXT];
    int32_t top[E2E_MAXT][3];
} e2e_out;

static void e2e_event(void *ud, const eng_event *ev) {
    e2e_out(*o)[E2E_N] = ud;
    assert_true(ev->id < E2E_REQ && ev->index < E2E_N);
    e2e_out *q = &o[ev->id][ev->index];
    if (ev->token >= 0) {
        assert_true(q->n < E2E_MAXT);
        if (ev->lp) {
            q->n_top[q->n] = ev->lp->n_top;
            for (int j = 0; j < ev->lp->n_top && j < 3; j++) q->top[q->n][j] = ev->lp->top[j].token;
        }
        q->toks[q->n++] = ev->token;
    }
    assert_true(q->len + ev->text_len < (int)sizeof q->text);
    memcpy(q->text + q->len, ev->text, (size_t)ev->text_len);
    q->len += ev->text_len;
    q->text[q->len] = 0;
    if (ev->finish) {
        q->finish = ev->finish;
        q->error = ev->error;
    }
}

/* The regex of request i (NULL: unconstrained) and the bytes its text may hold. */
static const char *const e2e_re[E2E_REQ] = {"[a-z ]{4,40}", "[0-9]{1,6}(,[0-9]{1,6}){0,5}",
                                           "(yes|no|maybe)", NULL, "[A-Z][a-z]+", "[a-z]{2,12}"};
#define E2E_LOWER "abcdefghijklmnopqrstuvwxyz"
static const char *const e2e_chars[E2E_REQ] = {E2E_LOWER " ",  "0123456789,",
                                              "yesnomab",       NULL,
                                              "ABCDEFGHIJKLMNOPQRSTUVWXYZ" E2E_LOWER, E2E_LOWER};

static void e2e_run(const mdl_model *m, const eng_backend *be, const int32_t prompts[][12],
                    e2e_out out[][E2E_N], eng_stats *st) {
    eng_config cfg;
    eng_config_default(&cfg);
    cfg.n_blocks = 64;
    cfg.max_num_seqs = 8;
    cfg.max_batched_tokens = 256;
    cfg.n_threads = 2;
    cfg.dtype = ENG_DTYPE_FP32;
    eng_engine *e = NULL;
    char err[512] = "";
    if (eng_init(&e, m, be, &cfg, e2e_event, out, err, sizeof err))
        fail_msg("eng_init %s: %s", be->name, err);
    for (int i = 0; i < E2E_REQ; i++) {
        eng_request r = {0};
        r.id = (uint64_t)i;
        r.prompt = prompts[i];
        r.n_prompt = 12;
        r.sp = smp_params_default();
        r.sp.temperature = 0;
        r.max_tokens = 40;
        r.n = 1;
        if (i == 3) r.ignore_eos = 1;
        if (i == 4) r.sp.logprobs = 3;
        if (i == 5) { /* sampled, n = 2, seeded */
            r.n = 2;
            r.sp.temperature = 0.9f;
            r.sp.has_seed = 1;
            r.sp.seed = 42;
        }
        if (e2e_re[i] &&
            gr_compile_regex(e2e_re[i], strlen(e2e_re[i]), NULL, &r.grammar, err, sizeof err))
            fail_msg("gr_compile_regex %s: %s", e2e_re[i], err);
        eng_error ee;
        if (eng_add(e, &r, &ee)) fail_msg("eng_add %d: %s", i, ee.msg);
    }
    int guard = 0, rc;
    while ((rc = eng_step(e)) > 0) assert_true(++guard < 10000);
    assert_int_equal(rc, 0);
    eng_get_stats(e, st);
    eng_free(e);
}
#endif

/* The engine on tiny-llama3 with regex-constrained requests (greedy, greedy + logprobs, an
 * unconstrained one beside them, n = 2 sampled): CUDA (FP32, device sampling with grammar
 * masks) gives the CPU backend's greedy tokens (host sampling after gr_apply_mask), every
 * output stays inside its grammar. */
static void test_engine_grammar(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    mdl_model m;
    tu_load_tiny(&m, 1);
    int32_t prompts[E2E_REQ][12];
    for (int i = 0; i < E2E_REQ; i++)
        for (int j = 0; j < 12; j++) prompts[i][j] = tu_int(&g_rng, 400); /* no special ids */
    static e2e_out oc[E2E_REQ][E2E_N], og[E2E_REQ][E2E_N];
    memset(oc, 0, sizeof oc);
    memset(og, 0, sizeof og);
    eng_stats sc, sg;
    e2e_run(&m, &eng_backend_cpu, prompts, oc, &sc);
    e2e_run(&m, &eng_backend_cuda, prompts, og, &sg);
    int n_same_sampled = 0, n_tok = 0;
    for (int i = 0; i < E2E_REQ; i++)
        for (int k = 0; k < (i == 5 ? 2 : 1); k++) {
            const e2e_out *c = &oc[i][k], *g = &og[i][k];
            for (int side = 0; side < 2; side++) { /* both inside the grammar */
                const e2e_out *o = side ? g : c;
                if (o->finish != ENG_FINISH_STOP && o->finish != ENG_FINISH_LENGTH)
                    fail_msg("request %d.%d on %s: finish %d error %d", i, k,
                             side ? "cuda" : "cpu", o->finish, o->error);
                if (e2e_chars[i] && strspn(o->text, e2e_chars[i]) != (size_t)o->len)
                    fail_msg("request %d.%d on %s: text \"%s\" outside %s", i, k,
                             side ? "cuda" : "cpu", o->text, e2e_re[i]);
                if (o->n == 0)
                    fail_msg("request %d.%d on %s: no token", i, k, side ? "cuda" : "cpu");
            }
            if (e2e_re[i])
                printf("  request %d.%d %-30s cpu \"%s\" (%d tokens) cuda \"%s\" (%d tokens)\n",
                       i, k, e2e_re[i], c->text, c->n, g->text, g->n);
            if (i == 5) { /* sampled: the same u, logits within float rounding */
                n_same_sampled += c->n == g->n && !memcmp(c->toks, g->toks, sizeof(int32_t) * c->n);
                continue;
            }
            assert_int_equal(g->n, c->n);
            assert_memory_equal(g->toks, c->toks, sizeof(int32_t) * c->n);
            assert_int_equal(g->finish, c->finish);
            n_tok += c->n;
            if (i == 4)
                for (int t = 0; t < c->n; t++) {
                    assert_int_equal(g->n_top[t], c->n_top[t]);
                    for (int j = 0; j < c->n_top[t] && j < 3; j++)
                        assert_int_equal(g->top[t][j], c->top[t][j]);
                }
        }
    printf("  engine: %d greedy tokens of 5 requests cuda == cpu, sampled n = 2 identical %d/2, "
           "grammar masks cpu %llu cuda %llu\n",
           n_tok, n_same_sampled, (unsigned long long)sc.grammar_masks,
           (unsigned long long)sg.grammar_masks);
    assert_true(sg.grammar_masks > 0);
    assert_true(sc.grammar_masks > 0);
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
    tu_filters();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vs_cpu),
        cmocka_unit_test(test_bad_rows),
        cmocka_unit_test(test_masks),
        cmocka_unit_test(test_backend),
        cmocka_unit_test(test_engine_grammar),
        cmocka_unit_test(test_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
