/*
 * test_engine.c - the scheduler end to end on the CPU backend with the
 * committed tiny llama2-style model (test/models/tiny-llama2): chunked
 * prefill, preemption, prefix caching, batch invariance, aborts, stop
 * strings, n > 1, a failing backend (copy_block), and block accounting (no
 * leaks) after every scenario; with scripted logits, a hidden EOS after an
 * incomplete character and a token longer than one event's text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <limits.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/format/gguf.h"
#include "engine/util/util.h"
#include "tokenizer/tok.h"

#define MODEL_DIR "test/models/tiny-llama2"
#define MAXR 64
#define MAXN 4
#define MAXT 512

typedef struct out_seq {
    int32_t toks[MAXT];
    int n;
    char text[8192];
    int text_len;
    int finish;
    int n_cached;
    int n_events_lp;
} out_seq;

typedef struct collector {
    out_seq o[MAXR][MAXN];
} collector;

static mdl_model g_model;

static void on_event(void *ud, const eng_event *ev) {
    collector *c = ud;
    assert_true(ev->id < MAXR && ev->index < MAXN);
    out_seq *o = &c->o[ev->id][ev->index];
    assert_int_equal(o->finish, 0); /* nothing after a finish */
    if (ev->token >= 0) {
        assert_true(o->n < MAXT);
        o->toks[o->n++] = ev->token;
    }
    assert_true(o->text_len + ev->text_len < (int)sizeof o->text);
    memcpy(o->text + o->text_len, ev->text, (size_t)ev->text_len);
    o->text_len += ev->text_len;
    o->text[o->text_len] = 0;
    if (ev->lp) o->n_events_lp++;
    o->finish = ev->finish;
    o->n_cached = ev->n_cached;
}

static int setup(void **state) {
    (void)state;
    char err[512];
    if (mdl_load(&g_model, MODEL_DIR, err, sizeof err)) {
        fprintf(stderr, "cannot load %s: %s\n", MODEL_DIR, err);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    mdl_free(&g_model);
    return 0;
}

static eng_engine *make_engine_on(const eng_backend *be, collector *c, int n_blocks, int chunk,
                                  int max_seqs, int max_batched, int prefix) {
    eng_config cfg;
    eng_config_default(&cfg);
    cfg.n_blocks = n_blocks;
    cfg.prefill_chunk = chunk;
    cfg.max_num_seqs = max_seqs;
    cfg.max_batched_tokens = max_batched;
    cfg.prefix_cache = prefix;
    cfg.n_threads = 1;
    eng_engine *e = NULL;
    char err[256];
    int rc = eng_init(&e, &g_model, be, &cfg, on_event, c, err, sizeof err);
    if (rc) fprintf(stderr, "eng_init: %s\n", err);
    assert_int_equal(rc, 0);
    return e;
}

static eng_engine *make_engine(collector *c, int n_blocks, int chunk, int max_seqs, int max_batched,
                               int prefix) {
    return make_engine_on(&eng_backend_cpu, c, n_blocks, chunk, max_seqs, max_batched, prefix);
}

static void make_prompt(int32_t *p, int n, uint32_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = 3 + (int32_t)((seed >> 8) % (uint32_t)(g_model.cfg.vocab_size - 3));
    }
}

static eng_request req_greedy(uint64_t id, const int32_t *p, int n, int max_tokens) {
    eng_request r = {0};
    r.id = id;
    r.prompt = p;
    r.n_prompt = n;
    r.sp = smp_params_default();
    r.sp.temperature = 0;
    r.max_tokens = max_tokens;
    r.n = 1;
    r.ignore_eos = 1;
    return r;
}

static void run_all(eng_engine *e) {
    int guard = 0;
    while (eng_step(e) > 0) assert_true(++guard < 100000);
    eng_stats st;
    eng_get_stats(e, &st);
    assert_int_equal(st.kv.blocks_used, 0); /* no leak: every block released */
    assert_int_equal(st.n_running + st.n_waiting, 0);
    /* step time covers the backend calls inside it; any step with a batch
     * called the backend (forward), which takes measurable time */
    assert_true(st.backend_seconds >= 0 && st.backend_seconds <= st.step_seconds);
    if (st.steps > 0) assert_true(st.backend_seconds > 0);
}

static void add_ok(eng_engine *e, const eng_request *r) {
    eng_error err;
    int rc = eng_add(e, r, &err);
    if (rc) fprintf(stderr, "eng_add: %s\n", err.msg);
    assert_int_equal(err.code, rc);
    assert_int_equal(rc, 0);
}

/* Chunked prefill (chunks of 5, small token budget) gives the tokens of one-shot prefill. */
static void test_chunked_prefill(void **state) {
    (void)state;
    static collector a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    int32_t p[4][100];
    int lens[4] = {100, 37, 16, 1};
    for (int i = 0; i < 4; i++) make_prompt(p[i], lens[i], 100 + (uint32_t)i);
    eng_engine *e1 = make_engine(&a, 256, 512, 8, 2048, 0);
    eng_engine *e2 = make_engine(&b, 256, 5, 8, 12, 0);
    for (int i = 0; i < 4; i++) {
        eng_request r = req_greedy((uint64_t)i, p[i], lens[i], 24);
        add_ok(e1, &r);
        add_ok(e2, &r);
    }
    run_all(e1);
    run_all(e2);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(a.o[i][0].n, 24);
        assert_int_equal(a.o[i][0].finish, ENG_FINISH_LENGTH);
        assert_memory_equal(a.o[i][0].toks, b.o[i][0].toks, 24 * sizeof(int32_t));
    }
    eng_free(e1);
    eng_free(e2);
}

/* A pool too small for all requests at once forces preemption; the greedy
 * outputs equal those of a large pool. */
static void test_preemption(void **state) {
    (void)state;
    static collector a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    enum { R = 8, L = 40, G = 40 };
    int32_t p[R][L];
    eng_engine *big = make_engine(&a, 512, 512, 16, 2048, 1);
    eng_engine *tiny = make_engine(&b, 12, 16, 16, 64, 1); /* 192 tokens for 8 x 80 */
    for (int i = 0; i < R; i++) {
        make_prompt(p[i], L, 7 + (uint32_t)i);
        eng_request r = req_greedy((uint64_t)i, p[i], L, G);
        add_ok(big, &r);
        add_ok(tiny, &r);
    }
    run_all(big);
    run_all(tiny);
    eng_stats st;
    eng_get_stats(tiny, &st);
    printf("preemptions with a 12-block pool: %llu\n", (unsigned long long)st.n_preemptions);
    assert_true(st.n_preemptions > 0);
    for (int i = 0; i < R; i++) {
        assert_int_equal(b.o[i][0].n, G);
        assert_memory_equal(a.o[i][0].toks, b.o[i][0].toks, G * sizeof(int32_t));
    }
    eng_free(big);
    eng_free(tiny);
}

/* A request that can never fit is rejected at admission, naming the reason. */
static void test_reject_too_large(void **state) {
    (void)state;
    static collector a;
    memset(&a, 0, sizeof a);
    eng_engine *e = make_engine(&a, 4, 512, 8, 2048, 1);
    int32_t p[60];
    make_prompt(p, 60, 1);
    eng_request r = req_greedy(0, p, 60, 10); /* 70 tokens > 64 in the pool */
    eng_error err;
    assert_int_equal(eng_add(e, &r, &err), NI_ERANGE);
    assert_int_equal(err.code, NI_ERANGE);
    assert_string_equal(err.param, "");
    assert_non_null(strstr(err.msg, "KV pool"));
    r = req_greedy(0, p, 60, 1000); /* over the 512-token context */
    assert_int_equal(eng_add(e, &r, &err), NI_ERANGE);
    assert_non_null(strstr(err.msg, "context"));
    r = req_greedy(0, p, 0, 4);
    assert_int_equal(eng_add(e, &r, &err), NI_EINVAL);
    assert_string_equal(err.param, "prompt");
    r = req_greedy(0, p, 4, 4);
    r.sp.top_p = 0;
    assert_int_equal(eng_add(e, &r, &err), NI_EINVAL);
    assert_string_equal(err.param, "top_p");
    assert_non_null(strstr(err.msg, "top_p"));
    r = req_greedy(0, p, 4, 4);
    r.n = 0;
    assert_int_equal(eng_add(e, &r, NULL), NI_EINVAL); /* err may be NULL */
    assert_int_equal(eng_add(e, &r, &err), NI_EINVAL);
    assert_string_equal(err.param, "n");
    eng_free(e);
}

/* Seeded sampling and greedy give identical outputs alone and among 31 others. */
static void test_batch_invariance(void **state) {
    (void)state;
    static collector a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    int32_t p[32][30];
    for (int i = 0; i < 32; i++) make_prompt(p[i], 10 + i % 20, 1000 + (uint32_t)i);
    eng_request r0 = req_greedy(0, p[0], 10, 48);
    r0.sp.temperature = 0.9f;
    r0.sp.top_p = 0.95f;
    r0.sp.has_seed = 1;
    r0.sp.seed = 1234;
    eng_request r1 = req_greedy(1, p[1], 11, 48);
    eng_engine *alone = make_engine(&a, 512, 512, 64, 2048, 0);
    add_ok(alone, &r0);
    add_ok(alone, &r1);
    run_all(alone);
    eng_engine *crowd = make_engine(&b, 512, 512, 64, 2048, 0);
    for (int i = 31; i >= 2; i--) { /* others first, so the pair is scheduled among them */
        eng_request r = req_greedy((uint64_t)i, p[i], 10 + i % 20, 16 + i);
        r.sp.temperature = 1.0f;
        r.sp.has_seed = 1;
        r.sp.seed = (uint64_t)i;
        add_ok(crowd, &r);
    }
    eng_step(crowd);
    add_ok(crowd, &r0);
    add_ok(crowd, &r1);
    run_all(crowd);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(a.o[i][0].n, 48);
        assert_memory_equal(a.o[i][0].toks, b.o[i][0].toks, 48 * sizeof(int32_t));
    }
    eng_free(alone);
    eng_free(crowd);
}

/* The second of two identical prompts is served from the prefix cache and
 * produces the same tokens; with the cache off nothing hits. */
static void test_prefix_cache(void **state) {
    (void)state;
    static collector a;
    memset(&a, 0, sizeof a);
    int32_t p[70];
    make_prompt(p, 70, 99);
    eng_engine *e = make_engine(&a, 256, 512, 8, 2048, 1);
    eng_request r = req_greedy(0, p, 70, 8);
    add_ok(e, &r);
    run_all(e);
    r.id = 1;
    add_ok(e, &r);
    run_all(e);
    assert_int_equal(a.o[0][0].n_cached, 0);
    assert_int_equal(a.o[1][0].n_cached, 64); /* 4 full blocks before the last token */
    assert_memory_equal(a.o[0][0].toks, a.o[1][0].toks, 8 * sizeof(int32_t));
    eng_stats st;
    eng_get_stats(e, &st);
    assert_int_equal(st.kv.hit_tokens, 64);
    eng_free(e);

    memset(&a, 0, sizeof a);
    e = make_engine(&a, 256, 512, 8, 2048, 0);
    r.id = 0;
    add_ok(e, &r);
    run_all(e);
    r.id = 1;
    add_ok(e, &r);
    run_all(e);
    assert_int_equal(a.o[1][0].n_cached, 0);
    eng_free(e);
}

/* Abort from the "other thread" API frees the request's blocks within a step. */
static void test_abort(void **state) {
    (void)state;
    static collector a;
    memset(&a, 0, sizeof a);
    int32_t p[3][20];
    eng_engine *e = make_engine(&a, 256, 512, 8, 2048, 0);
    for (int i = 0; i < 3; i++) {
        make_prompt(p[i], 20, 5 + (uint32_t)i);
        eng_request r = req_greedy((uint64_t)i, p[i], 20, 200);
        add_ok(e, &r);
    }
    for (int i = 0; i < 3; i++) eng_step(e);
    eng_stats st;
    eng_get_stats(e, &st);
    assert_true(st.kv.blocks_used >= 3 * 2);
    eng_abort(e, 1);
    eng_abort(e, 77); /* unknown: ignored */
    eng_step(e);
    assert_int_equal(a.o[1][0].finish, ENG_FINISH_ABORT);
    assert_int_equal(a.o[0][0].finish, 0);
    eng_abort(e, 0);
    eng_abort(e, 2);
    eng_step(e);
    eng_get_stats(e, &st);
    assert_int_equal(st.kv.blocks_used, 0);
    assert_int_equal(a.o[0][0].finish, ENG_FINISH_ABORT);
    assert_int_equal(a.o[2][0].finish, ENG_FINISH_ABORT);
    eng_free(e);
}

static int g_aborted; /* test_many_aborts: ABORT finishes seen */

static void count_aborts(void *ud, const eng_event *ev) {
    (void)ud;
    if (ev->finish == ENG_FINISH_ABORT) g_aborted++;
}

/* Many aborts at once (more than any fixed batch of ids): every one takes
 * effect within the next step, waiting and running requests alike. */
static void test_many_aborts(void **state) {
    (void)state;
    enum { N = 700 };
    eng_config cfg;
    eng_config_default(&cfg);
    cfg.n_blocks = 256;
    cfg.max_num_seqs = 8;
    cfg.n_threads = 1;
    eng_engine *e = NULL;
    char err[256];
    assert_int_equal(eng_init(&e, &g_model, &eng_backend_cpu, &cfg, count_aborts, NULL, err,
                              sizeof err),
                     0);
    int32_t p[8];
    make_prompt(p, 8, 11);
    for (int i = 0; i < N; i++) {
        eng_request r = req_greedy((uint64_t)i, p, 8, 50);
        add_ok(e, &r);
    }
    assert_int_equal(eng_step(e), N); /* 8 running, the rest waiting */
    g_aborted = 0;
    for (int i = N - 1; i >= 0; i--) eng_abort(e, (uint64_t)i);
    eng_abort(e, N + 5); /* unknown: ignored */
    assert_int_equal(eng_step(e), 0);
    assert_int_equal(g_aborted, N);
    eng_stats st;
    eng_get_stats(e, &st);
    assert_int_equal(st.kv.blocks_used, 0);
    assert_int_equal(st.n_running + st.n_waiting, 0);
    eng_free(e);
}

/* Stop strings: pick a substring of a greedy output that spans a token
 * boundary; rerunning with it as stop gives exactly the text before it. */
static void test_stop_string(void **state) {
    (void)state;
    static collector a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    int32_t p[12];
    make_prompt(p, 12, 4242);
    eng_engine *e = make_engine(&a, 256, 512, 8, 2048, 0);
    eng_request r = req_greedy(0, p, 12, 60);
    add_ok(e, &r);
    run_all(e);
    eng_free(e);
    out_seq *full = &a.o[0][0];
    assert_true(full->text_len > 20);
    /* find the byte offsets where each token's text starts */
    int bounds[MAXT], nb = 0, off = 0;
    char piece[256];
    tok_stream ts;
    tok_stream_init(&ts, g_model.tok);
    for (int i = 0; i < full->n; i++) {
        int k = tok_stream_push(&ts, full->toks[i], piece, sizeof piece);
        if (k > 0) {
            bounds[nb++] = off;
            off += k;
        }
    }
    assert_true(nb > 6);
    int cut = bounds[nb / 2]; /* a stop string straddling this token boundary */
    int st = cut - 2 > 0 ? cut - 2 : 0;
    char stop[8];
    memcpy(stop, full->text + st, 5);
    stop[5] = 0;
    if (strlen(stop) < 5) skip();
    char *first = strstr(full->text, stop);
    int expect = (int)(first - full->text);
    eng_engine *e2 = make_engine(&b, 256, 512, 8, 2048, 0);
    r.stop[0] = stop;
    r.n_stop = 1;
    add_ok(e2, &r);
    run_all(e2);
    eng_free(e2);
    assert_int_equal(b.o[0][0].finish, ENG_FINISH_STOP);
    assert_int_equal(b.o[0][0].text_len, expect);
    assert_memory_equal(b.o[0][0].text, full->text, (size_t)expect);
    assert_null(strstr(b.o[0][0].text, stop));
}

/* Stop token ids and max_tokens finish with the right reasons. */
static void test_stop_ids_and_length(void **state) {
    (void)state;
    static collector a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    int32_t p[10];
    make_prompt(p, 10, 31337);
    eng_engine *e = make_engine(&a, 256, 512, 8, 2048, 0);
    eng_request r = req_greedy(0, p, 10, 30);
    add_ok(e, &r);
    run_all(e);
    eng_free(e);
    assert_int_equal(a.o[0][0].finish, ENG_FINISH_LENGTH);
    assert_int_equal(a.o[0][0].n, 30);
    int32_t stop_tok = a.o[0][0].toks[10];
    int first = 0;
    while (a.o[0][0].toks[first] != stop_tok) first++;
    e = make_engine(&b, 256, 512, 8, 2048, 0);
    r.stop_ids[0] = stop_tok;
    r.n_stop_ids = 1;
    add_ok(e, &r);
    run_all(e);
    eng_free(e);
    assert_int_equal(b.o[0][0].finish, ENG_FINISH_STOP);
    assert_int_equal(b.o[0][0].n, first + 1);
}

/* n = 3 seeded samples share the prompt's blocks, differ from each other, and
 * are reproducible; logprobs arrive with every token when asked. */
static void test_parallel_samples(void **state) {
    (void)state;
    static collector a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    int32_t p[21]; /* 21 tokens: a partial last block forces copy-on-write */
    make_prompt(p, 21, 777);
    eng_request r = req_greedy(0, p, 21, 20);
    r.n = 3;
    r.sp.temperature = 1.0f;
    r.sp.has_seed = 1;
    r.sp.seed = 42;
    r.sp.logprobs = 2;
    for (int pass = 0; pass < 2; pass++) {
        collector *c = pass ? &b : &a;
        eng_engine *e = make_engine(c, 64, 512, 8, 2048, 1);
        add_ok(e, &r);
        run_all(e);
        eng_free(e);
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(a.o[0][i].n, 20);
        assert_int_equal(a.o[0][i].n_events_lp, 20);
        assert_memory_equal(a.o[0][i].toks, b.o[0][i].toks, 20 * sizeof(int32_t));
    }
    assert_true(memcmp(a.o[0][0].toks, a.o[0][1].toks, 20 * sizeof(int32_t)) ||
                memcmp(a.o[0][0].toks, a.o[0][2].toks, 20 * sizeof(int32_t)));
}

/* The CPU backend with a copy_block that fails like a device would. */
static int g_copy_calls, g_copy_code;

static int copy_block_fails(void *ctx, int src, int dst) {
    (void)ctx, (void)src, (void)dst;
    g_copy_calls++;
    return g_copy_code;
}

/* A failing copy-on-write ends the request that needed it and every request
 * batched before it in that step with ENG_FINISH_ERROR, eng_step returns the
 * backend's code; when the code is transient (NI_ENOMEM) a request not yet
 * batched goes on unharmed, when it is NI_EIO (a lost device) every request
 * ends and so does every later one, without another backend call.
 * copy_block is reached with n = 2 when the prompt's last block is partial
 * (21 tokens, blocks of 16) and max_tokens >= 2: the fork shares that block,
 * and the first decode step of sample 0 must copy it before writing into it.
 * (A prompt of a multiple of 16 tokens would give a fresh block instead.)
 * Order of the running list: A, B#0, C (admitted), then B#1 (forked), so in
 * step 2 A is batched before B#0 fails and C is not batched yet. */
static void copy_block_failure(int code) {
    static collector a;
    memset(&a, 0, sizeof a);
    eng_backend failing = eng_backend_cpu;
    failing.copy_block = copy_block_fails;
    g_copy_calls = 0;
    g_copy_code = code;
    int32_t pa[10], pb[21], pc[12];
    make_prompt(pa, 10, 11);
    make_prompt(pb, 21, 22);
    make_prompt(pc, 12, 33);
    eng_engine *e = make_engine_on(&failing, &a, 64, 512, 8, 2048, 0);
    eng_request ra = req_greedy(0, pa, 10, 20);
    eng_request rb = req_greedy(1, pb, 21, 20);
    rb.n = 2;
    rb.sp.temperature = 1.0f;
    rb.sp.has_seed = 1;
    rb.sp.seed = 42;
    eng_request rc = req_greedy(2, pc, 12, 5);
    add_ok(e, &ra);
    add_ok(e, &rb);
    add_ok(e, &rc);

    assert_int_equal(eng_step(e), 3); /* prefill, fork, first tokens: no copy yet */
    assert_int_equal(g_copy_calls, 0);
    assert_int_equal(a.o[1][0].n, 1);
    assert_int_equal(a.o[1][1].n, 1);

    assert_int_equal(eng_step(e), code);
    assert_int_equal(g_copy_calls, 1);
    assert_int_equal(a.o[1][0].finish, ENG_FINISH_ERROR);
    assert_int_equal(a.o[1][1].finish, ENG_FINISH_ERROR);
    assert_int_equal(a.o[0][0].finish, ENG_FINISH_ERROR); /* batched before the failure */
    assert_int_equal(a.o[0][0].n, 1);
    eng_stats st;
    if (code == NI_EIO) { /* fatal: C too, now and any request after */
        assert_int_equal(eng_fatal_error(e), NI_EIO);
        assert_int_equal(a.o[2][0].finish, ENG_FINISH_ERROR);
        eng_request rd = req_greedy(3, pc, 12, 5);
        add_ok(e, &rd);
        assert_int_equal(eng_step(e), NI_EIO);
        assert_int_equal(a.o[3][0].finish, ENG_FINISH_ERROR);
        assert_int_equal(a.o[3][0].n, 0);
        eng_get_stats(e, &st);
        assert_int_equal(st.n_running + st.n_waiting, 0);
        assert_int_equal(st.kv.blocks_used, 0);
        assert_int_equal(g_copy_calls, 1);
        eng_free(e);
        return;
    }
    assert_int_equal(eng_fatal_error(e), 0);
    assert_int_equal(a.o[2][0].finish, ENG_FINISH_NONE); /* not batched yet */
    eng_get_stats(e, &st);
    assert_int_equal(st.n_running + st.n_waiting, 1);

    run_all(e); /* C finishes normally; every block of A and B was released */
    assert_int_equal(a.o[2][0].finish, ENG_FINISH_LENGTH);
    assert_int_equal(a.o[2][0].n, 5);
    assert_int_equal(g_copy_calls, 1);
    eng_free(e);
}

static void test_copy_block_failure(void **state) {
    (void)state;
    copy_block_failure(NI_ENOMEM);
    copy_block_failure(NI_EIO);
}

/* --quant auto resolves from the file's storage type through the backend's
 * auto_quant (the CPU: 4-bit files -> q4, Q8_0 -> int8, else fp32), the
 * backend reports what it runs, and the names round-trip. */
static void test_quant_auto(void **state) {
    (void)state;
    const uint32_t saved = g_model.w.src_type;
    const struct {
        uint32_t src;
        eng_quant want;
    } cases[] = {{GGUF_T_F32, ENG_QUANT_NONE}, {GGUF_T_BF16, ENG_QUANT_NONE},
                 {GGUF_T_Q8_0, ENG_QUANT_INT8}, {GGUF_T_Q4_1, ENG_QUANT_Q4},
                 {GGUF_T_Q4_0, ENG_QUANT_Q4}};
    size_t fp32_bytes = 0;
    for (size_t i = 0; i < NI_ARRAY_LEN(cases); i++) {
        g_model.w.src_type = cases[i].src;
        eng_config cfg;
        eng_config_default(&cfg);
        assert_int_equal(cfg.quant, ENG_QUANT_NONE); /* the library default is the reference */
        cfg.quant = ENG_QUANT_AUTO;
        cfg.n_blocks = 64;
        cfg.n_threads = 1;
        eng_engine *e = NULL;
        char err[256];
        assert_int_equal(eng_init(&e, &g_model, &eng_backend_cpu, &cfg, on_event, NULL, err, sizeof err), 0);
        eng_backend_info in;
        assert_int_equal(eng_backend_info_get(e, &in), 0);
        if (in.quant != cases[i].want)
            fail_msg("source type %u: auto gave %s, want %s", cases[i].src, eng_quant_name(in.quant),
                     eng_quant_name(cases[i].want));
        assert_int_equal(in.n_threads, 1);
        assert_true(in.kv_bytes > 0 && in.work_bytes > 0 && in.weight_bytes > 0);
        if (in.quant == ENG_QUANT_NONE) fp32_bytes = in.weight_bytes;
        else assert_true(in.weight_bytes < fp32_bytes); /* the quantized copies are smaller */
        char desc[256];
        assert_non_null(strstr(eng_describe(e, desc, sizeof desc), eng_quant_name(cases[i].want)));
        eng_free(e);
    }
    g_model.w.src_type = saved;
    const char *names[] = {"auto", "fp32", "int8", "q4"};
    for (size_t i = 0; i < NI_ARRAY_LEN(names); i++) {
        eng_quant q;
        assert_int_equal(eng_quant_parse(names[i], &q), 0);
        assert_string_equal(eng_quant_name(q), names[i]);
    }
    eng_quant q;
    assert_int_equal(eng_quant_parse("none", &q), 0);
    assert_int_equal(q, ENG_QUANT_NONE);
    assert_int_equal(eng_quant_parse("q5", &q), NI_EINVAL);
    assert_int_equal(eng_quant_parse(NULL, &q), NI_EINVAL);
}

/* ---- scripted output: the CPU backend, with the logits of every sampled
 * row pushed so that greedy picks g_script[k] at the k-th sampling step ---- */
static int32_t g_script[4];
static int g_script_n, g_script_at, g_script_v;

static int forward_scripted(void *ctx, const eng_batch *b, float *logits) {
    int rc = eng_backend_cpu.forward(ctx, b, logits);
    if (rc || !logits) return rc;
    int row = 0;
    for (int i = 0; i < b->n_seqs; i++)
        if (b->want_logits[i]) row++;
    const int vocab = g_script_v;
    const int32_t want = g_script[NI_MIN(g_script_at, g_script_n - 1)];
    for (int r = 0; r < row; r++) logits[(size_t)r * (size_t)vocab + (size_t)want] = 1e6f;
    g_script_at++;
    return 0;
}

/* Runs one greedy request (prompt 4 tokens) on model m through the scripted
 * backend; the events go to c->o[0][0]. */
static void run_scripted(const mdl_model *m, collector *c, const int32_t *script, int n_script,
                         int max_tokens, int ignore_eos, const char *stop) {
    memset(c, 0, sizeof *c);
    memcpy(g_script, script, (size_t)n_script * sizeof *script);
    g_script_n = n_script;
    g_script_at = 0;
    g_script_v = m->cfg.vocab_size;
    eng_backend be = eng_backend_cpu;
    be.forward = forward_scripted;
    eng_config cfg;
    eng_config_default(&cfg);
    cfg.n_blocks = 64;
    cfg.n_threads = 1;
    eng_engine *e = NULL;
    char err[256];
    int rc = eng_init(&e, m, &be, &cfg, on_event, c, err, sizeof err);
    if (rc) fprintf(stderr, "eng_init: %s\n", err);
    assert_int_equal(rc, 0);
    const int32_t p[4] = {5, 6, 7, 8};
    eng_request r = req_greedy(0, p, 4, max_tokens);
    r.ignore_eos = ignore_eos;
    if (stop) {
        r.stop[0] = stop;
        r.n_stop = 1;
    }
    add_ok(e, &r);
    run_all(e);
    eng_free(e);
}

/* A hidden EOS after an incomplete UTF-8 lead byte ends the text with U+FFFD
 * (the byte was dropped: "" instead of tok_decode's U+FFFD). */
static void test_eos_flushes_utf8_tail(void **state) {
    (void)state;
    const tok_tokenizer *t = g_model.tok;
    int32_t lead = -1, eos = -1;
    for (int32_t id = 0; id < tok_vocab_size(t); id++) {
        char b[16];
        if (lead < 0 && tok_token_bytes(t, id, b, sizeof b) == 1 && (unsigned char)b[0] == 0xE2)
            lead = id;
        if (eos < 0 && tok_is_eog(t, id)) eos = id;
    }
    assert_true(lead >= 0 && eos >= 0);
    static collector c;
    const int32_t script[2] = {lead, eos};
    run_scripted(&g_model, &c, script, 2, 10, 0, NULL);
    assert_int_equal(c.o[0][0].finish, ENG_FINISH_STOP);
    assert_int_equal(c.o[0][0].n, 2);
    assert_string_equal(c.o[0][0].text, "\xEF\xBF\xBD");
    run_scripted(&g_model, &c, script, 2, 1, 0, NULL); /* max_tokens: flushed as before */
    assert_int_equal(c.o[0][0].finish, ENG_FINISH_LENGTH);
    assert_string_equal(c.o[0][0].text, "\xEF\xBF\xBD");
}

/* A token whose text (3,000 bytes) is longer than one event holds keeps all
 * of it, also when a stop string starts inside it. The model: tiny-llama3
 * with token 399 ("llo") renamed to the long text, written to a temporary
 * directory (its weights and config linked). */
#define LONG_TOK 3000
static void test_long_token_text(void **state) {
    (void)state;
    char dir[] = "/tmp/ni_longtok.XXXXXX", path[512], src[PATH_MAX];
    assert_non_null(mkdtemp(dir));
    const char *links[] = {"config.json", "model.safetensors", "tokenizer_config.json"};
    for (size_t i = 0; i < NI_ARRAY_LEN(links); i++) {
        snprintf(path, sizeof path, "test/models/tiny-llama3/%s", links[i]);
        assert_non_null(realpath(path, src));
        snprintf(path, sizeof path, "%s/%s", dir, links[i]);
        assert_int_equal(symlink(src, path), 0);
    }
    static char text[LONG_TOK + 1];
    for (int i = 0; i < LONG_TOK; i++) text[i] = (char)('a' + i % 26);
    text[2000] = text[2001] = 'Q'; /* the stop string below, once */
    json_error_t je;
    json_t *tj = json_load_file("test/models/tiny-llama3/tokenizer.json", 0, &je);
    assert_non_null(tj);
    json_t *model = json_object_get(tj, "model");
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    assert_int_equal(json_integer_value(json_object_get(vocab, "llo")), 399);
    json_object_del(vocab, "llo");
    json_object_set_new(vocab, text, json_integer(399));
    for (size_t i = 0; i < json_array_size(merges); i++)
        if (!strcmp(json_string_value(json_array_get(merges, i)), "ll o")) json_array_remove(merges, i);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    assert_int_equal(json_dump_file(tj, path, 0), 0);
    json_decref(tj);

    mdl_model m;
    char err[512];
    int rc = mdl_load(&m, dir, err, sizeof err);
    if (rc) fprintf(stderr, "mdl_load %s: %s\n", dir, err);
    assert_int_equal(rc, 0);
    char b[LONG_TOK + 8];
    assert_int_equal(tok_token_bytes(m.tok, 399, b, sizeof b), LONG_TOK);

    static collector c;
    const int32_t script[1] = {399};
    run_scripted(&m, &c, script, 1, 2, 1, NULL);
    assert_int_equal(c.o[0][0].finish, ENG_FINISH_LENGTH);
    assert_int_equal(c.o[0][0].n, 2);
    assert_int_equal(c.o[0][0].text_len, 2 * LONG_TOK);
    assert_memory_equal(c.o[0][0].text, text, LONG_TOK);
    assert_memory_equal(c.o[0][0].text + LONG_TOK, text, LONG_TOK);

    run_scripted(&m, &c, script, 1, 5, 1, "QQ");
    assert_int_equal(c.o[0][0].finish, ENG_FINISH_STOP);
    assert_int_equal(c.o[0][0].n, 1);
    assert_int_equal(c.o[0][0].text_len, 2000);
    assert_memory_equal(c.o[0][0].text, text, 2000);
    mdl_free(&m);
    for (size_t i = 0; i < NI_ARRAY_LEN(links) + 1; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, i < NI_ARRAY_LEN(links) ? links[i] : "tokenizer.json");
        unlink(path);
    }
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunked_prefill),  cmocka_unit_test(test_preemption),
        cmocka_unit_test(test_reject_too_large), cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_prefix_cache),     cmocka_unit_test(test_abort),
        cmocka_unit_test(test_many_aborts),
        cmocka_unit_test(test_stop_string),      cmocka_unit_test(test_stop_ids_and_length),
        cmocka_unit_test(test_parallel_samples), cmocka_unit_test(test_copy_block_failure),
        cmocka_unit_test(test_quant_auto),
        cmocka_unit_test(test_eos_flushes_utf8_tail),
        cmocka_unit_test(test_long_token_text),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
