/*
 * test_tp.c - tensor parallelism (--tensor-parallel-size) on the CPU
 * backend, against the unsharded backend, on the committed tiny models.
 *
 * Head counts (test/models/<m>/config.json): tiny-llama2 4 heads / 4 KV
 * heads / FFN 128; tiny-llama3 and tiny-qwen3 4 heads / 2 KV heads / FFN
 * 192. So TP = 2 runs on all three and TP = 4 on tiny-llama2 only; TP = 4 on
 * the two GQA models (2 KV heads) and TP = 3 everywhere must be refused.
 *
 * Checks:
 * (a) the plan (engine/backend/tp.h): the shards tile every head, KV head,
 *     FFN row and vocabulary row exactly once, in rank order; each token's
 *     vocabulary rank holds it; non-divisors are refused naming the option;
 * (b) TP = 1 is the unsharded code path: config tp 0 and 1 give
 *     bit-identical logits (and the same work buffers);
 * (c) logits of TP = N against TP = 1 over a scripted run of three
 *     sequences (scrambled block tables): a mixed prefill batch, decode
 *     batches, a chunk + decode batch, a batch with scattered want_logits
 *     (the LM head's staged path), and a sequence forked by copy_block:
 *     max relative error and NMSE per batch within FP32 tolerance (the
 *     all-reduce reorders the sums, so not bit-identical), worst printed;
 *     TP = N with 1 and 2 threads bit-identical (rank-ordered all-reduce);
 * (d) greedy generation through the engine (3 requests, 32 tokens each,
 *     chunked prefill, batched decode): TP = N gives the TP = 1 tokens;
 * (e) eng_init refuses TP that does not divide (message names
 *     tensor-parallel-size), TP > 1 with int8 / q4 weights, TP < 1.
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
#include "engine/backend/tp.h"
#include "engine/engine.h"
#include "engine/util/util.h"
#include "test_util.h"

#define BS 16
#define N_BLOCKS 32
#define MAX_BLOCKS 6 /* 96 positions per sequence */
#define MAX_SEQS 4
#define MAX_BATCH 128
#define N_SEQ 3
#define SEQ_TOKENS 64

/* FP32 tolerance of TP = N against TP = 1 (the sums are reordered): the
 * worst seen over the tiny models is printed by (c). */
#define TP_MAX_REL 2e-5
#define TP_NMSE 1e-10

/* Worst figures over every (c) comparison, printed at the end. */
static double g_worst_rel, g_worst_nmse;

/* ---- (a) the plan ---- */

static void test_plan(void **state) {
    const int idx = *(const int *)*state;
    mdl_model m;
    tu_load_tiny(&m, idx);
    const mdl_config *c = &m.cfg;
    char err[256];
    for (int tp = 1; tp <= 8; tp++) {
        eng_tp_plan p;
        const int divides =
            c->n_heads % tp == 0 && c->n_kv_heads % tp == 0 && c->hidden_dim % tp == 0;
        const int rc = eng_tp_plan_init(&p, c, tp, err, sizeof err);
        if (!divides) {
            assert_int_equal(rc, NI_EINVAL);
            assert_non_null(strstr(err, "tensor-parallel-size"));
            continue;
        }
        assert_int_equal(rc, 0);
        int heads = 0, kv = 0, ff = 0, voc = 0;
        for (int r = 0; r < tp; r++) {
            const eng_tp_shard s = eng_tp_shard_of(&p, r);
            assert_int_equal(s.head0, heads);
            assert_int_equal(s.kv_head0, kv);
            assert_int_equal(s.ff0, ff);
            assert_int_equal(s.vocab0, voc);
            assert_int_equal(s.q0, s.head0 * c->head_dim);
            assert_int_equal(s.q_dim, s.n_heads * c->head_dim);
            assert_int_equal(s.kv0, s.kv_head0 * c->head_dim);
            assert_int_equal(s.kv_dim, s.n_kv_heads * c->head_dim);
            /* GQA groups within the rank: its query heads read only its KV heads */
            const int G = c->n_heads / c->n_kv_heads;
            assert_int_equal(s.head0 / G, s.kv_head0);
            assert_int_equal((s.head0 + s.n_heads - 1) / G, s.kv_head0 + s.n_kv_heads - 1);
            assert_true(s.n_vocab == c->vocab_size / tp || s.n_vocab == c->vocab_size / tp + 1);
            for (int t = s.vocab0; t < s.vocab0 + s.n_vocab; t++)
                assert_int_equal(eng_tp_vocab_rank(&p, t), r);
            heads += s.n_heads, kv += s.n_kv_heads, ff += s.ff_dim, voc += s.n_vocab;
        }
        assert_int_equal(heads, c->n_heads);
        assert_int_equal(kv, c->n_kv_heads);
        assert_int_equal(ff, c->hidden_dim);
        assert_int_equal(voc, c->vocab_size);
    }
    eng_tp_plan p;
    assert_int_equal(eng_tp_plan_init(&p, c, 0, err, sizeof err), NI_EINVAL);
    assert_non_null(strstr(err, "tensor-parallel-size"));
    mdl_free(&m);
}

/* ---- backend runs ---- */

static void *be_new(const mdl_model *m, int tp, int n_threads) {
    const eng_backend_config cf = {.n_blocks = N_BLOCKS,
                                   .block_size = BS,
                                   .max_batch_tokens = MAX_BATCH,
                                   .max_seqs = MAX_SEQS,
                                   .n_threads = n_threads,
                                   .tp = tp};
    void *ctx = NULL;
    char err[256] = "";
    const int rc = eng_backend_cpu.init(&ctx, m, &cf, err, sizeof err);
    if (rc) fail_msg("init tp %d: %d %s", tp, rc, err);
    return ctx;
}

/* One batch of the script: n[s] new tokens of sequence s (0: not in the
 * batch), want[s] its logits. */
typedef struct step {
    int n[MAX_SEQS];
    uint8_t want[MAX_SEQS];
} step;

/* The script of (c): sequence 3 is sequence 0 forked (copy_block of its
 * partial block 1) after step 3, at position FORK_POS, continuing with other
 * tokens. The sequences of every step are a prefix of 0..3 (batch row s is
 * sequence s). */
#define FORK_POS 23
static const step k_script[] = {
    {{20, 25, 5, 0}, {1, 1, 1, 0}}, /* prefill of three prompts */
    {{1, 1, 1, 0}, {1, 1, 1, 0}},   /* decode */
    {{1, 8, 1, 0}, {1, 1, 1, 0}},   /* decode + a chunk */
    {{1, 1, 1, 0}, {1, 0, 1, 0}},   /* scattered want_logits */
    {{1, 1, 1, 3}, {1, 1, 1, 1}},   /* + the fork, three tokens */
    {{1, 1, 1, 1}, {1, 1, 1, 1}},   /* decode of four */
    {{1, 20, 1, 1}, {0, 1, 1, 0}},  /* a long chunk, scattered */
};
enum { N_STEPS = NI_ARRAY_LEN(k_script) };

/* Runs the script on ctx; logits [N_STEPS][MAX_SEQS][V] (rows not wanted
 * stay as they were: the buffer is NaN-filled by the caller, so a row
 * written when it should not be shows). */
static void run_script(void *ctx, const mdl_model *m, const int32_t toks[MAX_SEQS][SEQ_TOKENS],
                       const int32_t tables[MAX_SEQS][MAX_BLOCKS], float *logits) {
    const int V = m->cfg.vocab_size;
    int pos[MAX_SEQS] = {0};
    int32_t btok[MAX_BATCH], start[MAX_SEQS + 1], pos0[MAX_SEQS], tab[MAX_SEQS * MAX_BLOCKS];
    uint8_t want[MAX_SEQS];
    for (int g = 0; g < N_STEPS; g++) {
        if (g == 4) {
            /* fork: sequence 3 = sequence 0's first FORK_POS positions; its table
             * shares block 0 and gets a copy of the partial block 1 */
            assert_int_equal(pos[0], FORK_POS);
            assert_int_equal(eng_backend_cpu.copy_block(ctx, tables[0][1], tables[3][1]), 0);
            pos[3] = pos[0];
        }
        int ns = 0, nt = 0;
        start[0] = 0;
        for (int s = 0; s < MAX_SEQS; s++) {
            const int n = k_script[g].n[s];
            if (!n) continue;
            assert_int_equal(ns, s); /* a prefix: batch row s is sequence s */
            for (int i = 0; i < n; i++) btok[nt + i] = toks[s][pos[s] + i];
            pos0[ns] = pos[s];
            want[ns] = k_script[g].want[s];
            memcpy(tab + ns * MAX_BLOCKS, tables[s], sizeof tables[s]);
            nt += n;
            start[++ns] = nt;
            pos[s] += n;
        }
        const eng_batch b = {ns, nt, btok, start, pos0, tab, MAX_BLOCKS, want};
        float *out = logits + (size_t)g * MAX_SEQS * V;
        assert_int_equal(eng_backend_cpu.forward(ctx, &b, out), 0);
    }
}

/* Tokens and scrambled tables of the script (sequence 3 shares block 0 of
 * sequence 0; its own block 1 receives the copy). */
static void script_inputs(tu_rng *rng, int V, int32_t toks[MAX_SEQS][SEQ_TOKENS],
                          int32_t tables[MAX_SEQS][MAX_BLOCKS]) {
    int32_t perm[N_BLOCKS];
    tu_permutation(rng, perm, N_BLOCKS);
    for (int s = 0; s < MAX_SEQS; s++) {
        tu_fill_int(rng, toks[s], SEQ_TOKENS, V);
        for (int i = 0; i < MAX_BLOCKS; i++) tables[s][i] = perm[s * MAX_BLOCKS + i];
    }
    memcpy(toks[3], toks[0], FORK_POS * sizeof(int32_t)); /* the forked prefix */
    tables[3][0] = tables[0][0];
}

static float *nan_buf(size_t n) {
    float *p = malloc(n * sizeof(float));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}

/* (b) tp 0 and tp 1: the same path, bit for bit. */
static void test_tp1_identical(void **state) {
    const int idx = *(const int *)*state;
    mdl_model m;
    tu_load_tiny(&m, idx);
    const int V = m.cfg.vocab_size;
    tu_rng rng = {0x7e1 + (uint64_t)idx};
    int32_t toks[MAX_SEQS][SEQ_TOKENS], tables[MAX_SEQS][MAX_BLOCKS];
    script_inputs(&rng, V, toks, tables);
    const size_t n = (size_t)N_STEPS * MAX_SEQS * V;
    float *a = nan_buf(n), *b = nan_buf(n);
    void *c0 = be_new(&m, 0, 2), *c1 = be_new(&m, 1, 2);
    eng_backend_info i0, i1;
    assert_int_equal(eng_backend_cpu.info(c0, &i0), 0);
    assert_int_equal(eng_backend_cpu.info(c1, &i1), 0);
    assert_int_equal(i0.tp, 1);
    assert_int_equal(i1.tp, 1);
    assert_int_equal(i0.work_bytes, i1.work_bytes);
    run_script(c0, &m, toks, tables, a);
    run_script(c1, &m, toks, tables, b);
    assert_memory_equal(a, b, n * sizeof(float));
    eng_backend_cpu.free(c0);
    eng_backend_cpu.free(c1);
    free(a);
    free(b);
    mdl_free(&m);
}

/* (c) for every tp in {2, 4} that divides the model. */
static void test_logits(void **state) {
    const int idx = *(const int *)*state;
    mdl_model m;
    tu_load_tiny(&m, idx);
    const mdl_config *c = &m.cfg;
    const int V = c->vocab_size;
    tu_rng rng = {0x3c5 + (uint64_t)idx};
    int32_t toks[MAX_SEQS][SEQ_TOKENS], tables[MAX_SEQS][MAX_BLOCKS];
    script_inputs(&rng, V, toks, tables);
    const size_t n = (size_t)N_STEPS * MAX_SEQS * V;
    float *ref = nan_buf(n);
    void *c1 = be_new(&m, 1, 2);
    run_script(c1, &m, toks, tables, ref);
    eng_backend_cpu.free(c1);
    for (int tp = 2; tp <= 4; tp *= 2) {
        if (c->n_kv_heads % tp || c->n_heads % tp || c->hidden_dim % tp) {
            printf("  %s: tp %d does not divide (%d heads, %d KV heads, FFN %d): skipped here, "
                   "refused in test_refused\n",
                   tu_tiny_models[idx], tp, c->n_heads, c->n_kv_heads, c->hidden_dim);
            continue;
        }
        float *got = nan_buf(n), *got1 = nan_buf(n);
        void *ct = be_new(&m, tp, 2);
        eng_backend_info in;
        assert_int_equal(eng_backend_cpu.info(ct, &in), 0);
        assert_int_equal(in.tp, tp);
        run_script(ct, &m, toks, tables, got);
        eng_backend_cpu.free(ct);
        ct = be_new(&m, tp, 1);
        run_script(ct, &m, toks, tables, got1);
        eng_backend_cpu.free(ct);
        /* rank-ordered sums: the thread count changes nothing */
        assert_memory_equal(got, got1, n * sizeof(float));
        double worst_rel = 0, worst_nmse = 0;
        int rows = 0, bit_equal = 0;
        for (int g = 0; g < N_STEPS; g++)
            for (int s = 0; s < MAX_SEQS; s++) {
                const size_t off = ((size_t)g * MAX_SEQS + s) * V;
                if (!k_script[g].n[s] || !k_script[g].want[s]) {
                    /* not wanted: untouched (NaN) in both */
                    assert_true(isnan(got[off]) && isnan(ref[off]));
                    continue;
                }
                char what[96];
                snprintf(what, sizeof what, "%s tp %d step %d seq %d", tu_tiny_models[idx], tp, g,
                         s);
                const double rel =
                    tu_check(TU_MAX_REL, what, got + off, ref + off, (size_t)V, TP_MAX_REL);
                const double nmse =
                    tu_check(TU_NMSE, what, got + off, ref + off, (size_t)V, TP_NMSE);
                worst_rel = NI_MAX(worst_rel, rel);
                worst_nmse = NI_MAX(worst_nmse, nmse);
                rows++;
                bit_equal += !memcmp(got + off, ref + off, (size_t)V * sizeof(float));
                assert_int_equal(tu_argmax(got + off, V), tu_argmax(ref + off, V));
            }
        printf("  %s tp %d: %d logits rows over %d batches: max rel err %.2e, NMSE %.2e "
               "(bounds %.0e, %.0e); %d rows bit-identical; 1 vs 2 threads bit-identical\n",
               tu_tiny_models[idx], tp, rows, N_STEPS, worst_rel, worst_nmse, TP_MAX_REL, TP_NMSE,
               bit_equal);
        g_worst_rel = NI_MAX(g_worst_rel, worst_rel);
        g_worst_nmse = NI_MAX(g_worst_nmse, worst_nmse);
        free(got);
        free(got1);
    }
    free(ref);
    mdl_free(&m);
}

/* ---- (d) greedy through the engine ---- */

#define GEN_TOKENS 32

typedef struct gen_out {
    int32_t toks[N_SEQ][GEN_TOKENS];
    int n[N_SEQ];
    int finish[N_SEQ];
} gen_out;

static void on_event(void *ud, const eng_event *ev) {
    gen_out *o = ud;
    assert_true(ev->id < N_SEQ);
    if (ev->token >= 0) {
        assert_true(o->n[ev->id] < GEN_TOKENS);
        o->toks[ev->id][o->n[ev->id]++] = ev->token;
    }
    if (ev->finish) o->finish[ev->id] = ev->finish;
}

static void generate(const mdl_model *m, int tp, const int32_t prompts[N_SEQ][40],
                     const int *n_prompt, gen_out *o) {
    memset(o, 0, sizeof *o);
    eng_config cfg;
    eng_config_default(&cfg);
    cfg.tp = tp;
    cfg.n_threads = 2;
    cfg.max_num_seqs = 4;
    cfg.max_batched_tokens = 24;
    cfg.prefill_chunk = 8; /* chunked prefill mixed with decode */
    cfg.n_blocks = 64;
    eng_engine *e = NULL;
    char err[256] = "";
    const int rc = eng_init(&e, m, &eng_backend_cpu, &cfg, on_event, o, err, sizeof err);
    if (rc) fail_msg("eng_init tp %d: %s", tp, err);
    for (int i = 0; i < N_SEQ; i++) {
        eng_request r = {0};
        r.id = (uint64_t)i;
        r.prompt = prompts[i];
        r.n_prompt = n_prompt[i];
        r.sp = smp_params_default();
        r.sp.temperature = 0;
        r.max_tokens = GEN_TOKENS;
        r.n = 1;
        r.ignore_eos = 1;
        eng_error ee;
        if (eng_add(e, &r, &ee)) fail_msg("eng_add: %s", ee.msg);
    }
    int guard = 0;
    while (eng_step(e) > 0) assert_true(++guard < 10000);
    for (int i = 0; i < N_SEQ; i++) {
        assert_int_equal(o->n[i], GEN_TOKENS);
        assert_int_equal(o->finish[i], ENG_FINISH_LENGTH);
    }
    eng_free(e);
}

static void test_greedy(void **state) {
    const int idx = *(const int *)*state;
    mdl_model m;
    tu_load_tiny(&m, idx);
    const mdl_config *c = &m.cfg;
    tu_rng rng = {0x9a1 + (uint64_t)idx};
    int32_t prompts[N_SEQ][40];
    const int n_prompt[N_SEQ] = {5, 17, 30};
    for (int i = 0; i < N_SEQ; i++) tu_fill_int(&rng, prompts[i], 40, c->vocab_size);
    gen_out ref, got;
    generate(&m, 1, prompts, n_prompt, &ref);
    for (int tp = 2; tp <= 4; tp *= 2) {
        if (c->n_kv_heads % tp || c->n_heads % tp || c->hidden_dim % tp) continue;
        generate(&m, tp, prompts, n_prompt, &got);
        int same = 0;
        for (int i = 0; i < N_SEQ; i++)
            for (int t = 0; t < GEN_TOKENS; t++) same += got.toks[i][t] == ref.toks[i][t];
        printf("  %s tp %d: %d / %d greedy tokens equal to tp 1 (%d requests x %d)\n",
               tu_tiny_models[idx], tp, same, N_SEQ * GEN_TOKENS, N_SEQ, GEN_TOKENS);
        assert_memory_equal(got.toks, ref.toks, sizeof ref.toks);
    }
    mdl_free(&m);
}

/* ---- (e) refusals ---- */

static void expect_refused(const mdl_model *m, int tp, eng_quant q, const char *needle) {
    eng_config cfg;
    eng_config_default(&cfg);
    cfg.tp = tp;
    cfg.quant = q;
    cfg.n_threads = 1;
    cfg.n_blocks = 16;
    eng_engine *e = NULL;
    char err[256] = "";
    const int rc = eng_init(&e, m, &eng_backend_cpu, &cfg, NULL, NULL, err, sizeof err);
    if (rc == 0) {
        eng_free(e);
        fail_msg("tp %d quant %s: eng_init succeeded", tp, eng_quant_name(q));
    }
    assert_null(e);
    if (!strstr(err, "tensor-parallel-size") || (needle && !strstr(err, needle)))
        fail_msg("tp %d quant %s: message lacks tensor-parallel-size / %s: %s", tp,
                 eng_quant_name(q), needle ? needle : "", err);
    printf("  refused tp %d quant %s: %s\n", tp, eng_quant_name(q), err);
}

static void test_refused(void **state) {
    const int idx = *(const int *)*state;
    mdl_model m;
    tu_load_tiny(&m, idx);
    expect_refused(&m, 3, ENG_QUANT_NONE, "divide");
    if (m.cfg.n_kv_heads % 4) expect_refused(&m, 4, ENG_QUANT_NONE, "KV heads");
    expect_refused(&m, 8, ENG_QUANT_NONE, "divide");
    expect_refused(&m, 2, ENG_QUANT_INT8, "fp32");
    expect_refused(&m, 2, ENG_QUANT_Q4, "fp32");
    expect_refused(&m, -1, ENG_QUANT_NONE, NULL);
    expect_refused(&m, ENG_TP_MAX + 1, ENG_QUANT_NONE, NULL);
    mdl_free(&m);
}

static int print_worst(void **state) {
    (void)state;
    printf("test_tp: worst over the models: max rel err %.2e, NMSE %.2e\n", g_worst_rel,
           g_worst_nmse);
    return 0;
}

int main(void) {
    tu_filters();
#define PER_MODEL(f, i) cmocka_unit_test_prestate(f, (void *)&tu_tiny_idx[i])
    const struct CMUnitTest tests[] = {
        PER_MODEL(test_plan, 0),          PER_MODEL(test_plan, 1),
        PER_MODEL(test_plan, 2),          PER_MODEL(test_tp1_identical, 0),
        PER_MODEL(test_tp1_identical, 1), PER_MODEL(test_tp1_identical, 2),
        PER_MODEL(test_logits, 0),        PER_MODEL(test_logits, 1),
        PER_MODEL(test_logits, 2),        PER_MODEL(test_greedy, 0),
        PER_MODEL(test_greedy, 1),        PER_MODEL(test_greedy, 2),
        PER_MODEL(test_refused, 0),       PER_MODEL(test_refused, 1),
        PER_MODEL(test_refused, 2),
    };
#undef PER_MODEL
    return cmocka_run_group_tests(tests, NULL, print_worst);
}
