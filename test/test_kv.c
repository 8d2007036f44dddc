/*
 * test_kv.c - the paged KV block manager (engine/kv.c).
 *
 * A fake backend stands in for the KV memory: each physical block holds
 * block_size 64-bit "KV values", and the value written at position p of a
 * sequence is a rolling hash of the sequence's tokens [0, p] (like real K/V,
 * it depends on the whole prefix). Every write asserts that the target block
 * is exclusively owned and uncached, and after every step the test re-reads
 * the sequence's computed positions through its block table. A wrong prefix
 * hit, a missed copy-on-write or a block reused while still referenced shows
 * up as a wrong value. kv_check() (the manager's own consistency checker)
 * runs after every operation of the stress tests.
 *
 * Random inputs are seeded from the clock each run (printed);
 * NI_TEST_SEED=<n> reproduces a run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/kv.h"
#include "engine/util/util.h"
#include "test_util.h"

static tu_rng g_rng;

/* ---- hash hooks (forced collisions) --------------------------------------- */

/* Every block collides with every other. */
static uint64_t hash_const(uint64_t parent, const int32_t *tokens, int n) {
    (void)parent, (void)tokens, (void)n;
    return 42;
}

/* Ignores the parent: equal blocks under different prefixes collide. */
static uint64_t hash_no_parent(uint64_t parent, const int32_t *tokens, int n) {
    (void)parent;
    return kv_hash_default(0, tokens, n);
}

/* Three hash values in all: many collisions, some non-colliding keys. */
static uint64_t hash_weak(uint64_t parent, const int32_t *tokens, int n) {
    return kv_hash_default(parent, tokens, n) % 3;
}

/* ---- fake backend + test sequences ---------------------------------------- */

#define MAXLEN 512

typedef struct tseq {
    kv_seq s;
    int32_t toks[MAXLEN];  /* the sequence's tokens (prompt + generated) */
    uint64_t ph[MAXLEN];   /* ph[p] = expected KV value at position p */
    int n_toks;
    int state;             /* 0 slot unused, 1 admitted, 2 preempted (needs admission) */
} tseq;

typedef struct fake {
    kv_mgr *kv;
    int bs, nb;
    uint64_t *mem;         /* [nb][bs] fake KV memory */
    long n_copies;
} fake;

static void check_ok(const kv_mgr *kv) {
    char err[256] = "";
    const int rc = kv_check(kv, err, sizeof(err));
    if (rc) fail_msg("kv_check: %s (%d)", err, rc);
}

static void fake_init(fake *f, int n_blocks, int bs, int max_len, int cache, kv_hash_fn fn) {
    memset(f, 0, sizeof(*f));
    kv_config c = {.n_blocks = n_blocks, .block_size = bs, .max_seq_len = max_len,
                   .enable_prefix_cache = cache, .hash_fn = fn};
    assert_int_equal(kv_init(&f->kv, &c), 0);
    f->bs = kv_block_size(f->kv);
    f->nb = n_blocks;
    f->mem = calloc((size_t)n_blocks * (size_t)f->bs, sizeof(uint64_t));
    assert_non_null(f->mem);
    check_ok(f->kv);
}

static void fake_free(fake *f) {
    kv_free(f->kv);
    free(f->mem);
}

static uint64_t mix(uint64_t h, int32_t t) {
    h ^= (uint64_t)(uint32_t)t + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdULL;
    return h ^ (h >> 31);
}

static void t_append(tseq *t, const int32_t *toks, int n) {
    assert_true(t->n_toks + n <= MAXLEN);
    for (int i = 0; i < n; i++) {
        const int p = t->n_toks++;
        t->toks[p] = toks[i];
        t->ph[p] = mix(p ? t->ph[p - 1] : 0x5eed, toks[i]);
    }
}

static uint64_t *slot(fake *f, int32_t b, int p) {
    assert_true(b >= 0 && b < f->nb);
    return &f->mem[(size_t)b * (size_t)f->bs + (size_t)(p % f->bs)];
}

/* Positions [0, n) read back through the table hold the expected values. */
static void fake_verify(fake *f, const tseq *t, int n) {
    for (int p = 0; p < n; p++) {
        const int32_t b = t->s.table[p / f->bs];
        if (*slot(f, b, p) != t->ph[p])
            fail_msg("KV mismatch at position %d (block %d): a wrong hit or a lost write", p, b);
    }
}

/* The forward pass: writes [from, to) (blocks must be exclusive, uncached). */
static void fake_write(fake *f, const tseq *t, int from, int to) {
    for (int p = from; p < to; p++) {
        const int32_t b = t->s.table[p / f->bs];
        if (kv_block_refcount(f->kv, b) != 1 || kv_block_is_cached(f->kv, b))
            fail_msg("write into shared/cached block %d (ref %d, cached %d) at position %d", b,
                     kv_block_refcount(f->kv, b), kv_block_is_cached(f->kv, b), p);
        *slot(f, b, p) = t->ph[p];
    }
}

static void fake_copy(fake *f, kv_copy cow) {
    if (cow.src < 0) {
        assert_int_equal(cow.dst, -1);
        return;
    }
    assert_int_not_equal(cow.src, cow.dst);
    assert_int_equal(kv_block_refcount(f->kv, cow.dst), 1);
    memcpy(slot(f, cow.dst, 0), slot(f, cow.src, 0), (size_t)f->bs * sizeof(uint64_t));
    f->n_copies++;
}

/* Reserve + copy + forward + commit up to target tokens. Returns reserve's rc. */
static int t_compute(fake *f, tseq *t, int target) {
    kv_copy cow;
    const int rc = kv_seq_reserve(f->kv, &t->s, target, &cow);
    if (rc) return rc;
    fake_copy(f, cow);
    fake_write(f, t, t->s.n_computed, target);
    assert_int_equal(kv_seq_commit(f->kv, &t->s, t->toks, target), 0);
    fake_verify(f, t, target);
    return 0;
}

/* kv_seq_init + alloc_prompt of the tseq's tokens; returns rc, *n_cached. */
static int t_admit(fake *f, tseq *t, int *n_cached) {
    int nc = -1;
    const int rc = kv_seq_alloc_prompt(f->kv, &t->s, t->toks, t->n_toks, &nc);
    if (rc == 0) {
        fake_verify(f, t, nc);
        if (n_cached) *n_cached = nc;
    }
    return rc;
}

/* New sequence with the given prompt, admitted and fully prefilled. */
static void t_run_prompt(fake *f, tseq *t, const int32_t *toks, int n, int *n_cached) {
    memset(t, 0, sizeof(*t));
    assert_int_equal(kv_seq_init(f->kv, &t->s), 0);
    t_append(t, toks, n);
    assert_int_equal(t_admit(f, t, n_cached), 0);
    assert_int_equal(t_compute(f, t, n), 0);
    t->state = 1;
}

static void seqtok(int32_t *dst, int n, int32_t base) {
    for (int i = 0; i < n; i++) dst[i] = base + i;
}

static int stats_equal(const kv_stats *a, const kv_stats *b) {
    return a->prefix_queries == b->prefix_queries && a->query_tokens == b->query_tokens &&
           a->hit_tokens == b->hit_tokens && a->evictions == b->evictions &&
           a->blocks_total == b->blocks_total && a->blocks_used == b->blocks_used &&
           a->blocks_free == b->blocks_free && a->blocks_evictable == b->blocks_evictable &&
           a->blocks_cached == b->blocks_cached && a->n_seqs == b->n_seqs;
}

static void assert_all_returned(fake *f) {
    kv_stats st;
    kv_get_stats(f->kv, &st);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.blocks_free + st.blocks_evictable, f->nb);
    assert_int_equal(kv_num_allocatable(f->kv), f->nb);
    assert_int_equal(st.n_seqs, 0);
    check_ok(f->kv);
}

/* ---- unit tests ----------------------------------------------------------- */

static void test_init_invalid(void **state) {
    (void)state;
    kv_mgr *kv = (kv_mgr *)1;
    kv_config c = {.n_blocks = 0};
    assert_int_equal(kv_init(&kv, &c), NI_EINVAL);
    assert_null(kv);
    c = (kv_config){.n_blocks = 4, .block_size = -1};
    assert_int_equal(kv_init(&kv, &c), NI_EINVAL);
    c = (kv_config){.n_blocks = 4, .max_seq_len = -3};
    assert_int_equal(kv_init(&kv, &c), NI_EINVAL);
    c = (kv_config){.n_blocks = 10, .max_seq_len = 100};
    assert_int_equal(kv_init(&kv, &c), 0);
    assert_int_equal(kv_block_size(kv), KV_DEFAULT_BLOCK_SIZE);
    assert_int_equal(kv_max_blocks_per_seq(kv), 7); /* ceil(100/16) */
    assert_int_equal(kv_num_allocatable(kv), 10);
    check_ok(kv);
    kv_free(kv);
    kv_free(NULL);
}

static void test_hash_default(void **state) {
    (void)state;
    int32_t a[4] = {1, 2, 3, 4}, b[4] = {1, 2, 4, 3};
    assert_true(kv_hash_default(0, a, 4) == kv_hash_default(0, a, 4));
    assert_true(kv_hash_default(0, a, 4) != kv_hash_default(1, a, 4));
    assert_true(kv_hash_default(0, a, 4) != kv_hash_default(0, b, 4));
    assert_true(kv_hash_default(0, a, 4) != kv_hash_default(0, a, 3));
}

/* Uncached accounting: blocks cover the prompt, all come back on release. */
static void test_alloc_release_no_cache(void **state) {
    (void)state;
    fake f;
    fake_init(&f, 10, 16, 0, 0, NULL);
    int32_t toks[40];
    seqtok(toks, 40, 100);
    tseq *a = calloc(1, sizeof(tseq)), *b = calloc(1, sizeof(tseq));
    int nc;
    t_run_prompt(&f, a, toks, 40, &nc);
    assert_int_equal(nc, 0);
    assert_int_equal(a->s.n_blocks, 3);
    assert_int_equal(a->s.n_computed, 40);
    assert_int_equal(a->s.n_hashed, 0);
    t_run_prompt(&f, b, toks, 40, &nc); /* identical prompt: caching is off */
    assert_int_equal(nc, 0);
    for (int i = 0; i < 3; i++) assert_int_not_equal(a->s.table[i], b->s.table[i]);
    kv_stats st;
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.blocks_used, 6);
    assert_int_equal(st.blocks_free, 4);
    assert_int_equal(st.blocks_cached, 0);
    assert_int_equal(st.prefix_queries, 0);
    assert_int_equal(st.n_seqs, 2);
    check_ok(f.kv);
    kv_seq_destroy(f.kv, &a->s);
    kv_seq_destroy(f.kv, &b->s);
    kv_seq_destroy(f.kv, &b->s); /* no-op */
    assert_all_returned(&f);
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.blocks_evictable, 0);
    free(a);
    free(b);
    fake_free(&f);
}

/* Second identical prompt hits every full block before the last token. */
static void test_prefix_hit(void **state) {
    (void)state;
    fake f;
    fake_init(&f, 16, 16, 0, 1, NULL);
    int32_t toks[40];
    seqtok(toks, 40, 7);
    tseq *a = calloc(1, sizeof(tseq)), *b = calloc(1, sizeof(tseq));
    int nc;
    t_run_prompt(&f, a, toks, 40, &nc);
    assert_int_equal(nc, 0);
    assert_int_equal(a->s.n_hashed, 2);
    assert_true(kv_block_is_cached(f.kv, a->s.table[0]));
    assert_true(kv_block_is_cached(f.kv, a->s.table[1]));
    assert_false(kv_block_is_cached(f.kv, a->s.table[2])); /* partial */

    /* admission query agrees with the allocation */
    int pred = -1;
    assert_int_equal(kv_prompt_blocks_needed(f.kv, toks, 40, &pred), 1);
    assert_int_equal(pred, 32);
    assert_true(kv_can_alloc_prompt(f.kv, toks, 40));

    t_run_prompt(&f, b, toks, 40, &nc);
    assert_int_equal(nc, 32);
    assert_int_equal(b->s.table[0], a->s.table[0]);
    assert_int_equal(b->s.table[1], a->s.table[1]);
    assert_int_not_equal(b->s.table[2], a->s.table[2]);
    assert_int_equal(kv_block_refcount(f.kv, a->s.table[0]), 2);
    assert_int_equal(kv_block_refcount(f.kv, a->s.table[1]), 2);
    assert_int_equal(kv_block_refcount(f.kv, b->s.table[2]), 1);
    assert_true(b->s.last_hash == a->s.last_hash);

    kv_stats st;
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.prefix_queries, 2);
    assert_int_equal(st.query_tokens, 80);
    assert_int_equal(st.hit_tokens, 32);
    assert_int_equal(st.blocks_used, 4);
    assert_int_equal(st.blocks_cached, 2);
    check_ok(f.kv);

    /* released cached blocks stay cached (evictable), the partial one is free */
    kv_seq_destroy(f.kv, &a->s);
    kv_seq_destroy(f.kv, &b->s);
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.blocks_evictable, 2);
    assert_int_equal(st.blocks_free, 14);
    assert_int_equal(st.blocks_cached, 2);
    assert_all_returned(&f);
    free(a);
    free(b);
    fake_free(&f);
}

/* The fully-cached-prompt rule: never match the block holding the last token. */
static void test_fully_cached_prompt(void **state) {
    (void)state;
    fake f;
    fake_init(&f, 32, 16, 0, 1, NULL);
    int32_t toks[48];
    seqtok(toks, 48, 1000);
    tseq *a = calloc(1, sizeof(tseq)), *b = calloc(1, sizeof(tseq));
    int nc;
    t_run_prompt(&f, a, toks, 48, &nc); /* caches blocks 0..2 */
    assert_int_equal(a->s.n_hashed, 3);

    /* n = 32, a multiple of 16, both blocks cached: reuse only block 0 */
    t_run_prompt(&f, b, toks, 32, &nc);
    assert_int_equal(nc, 16);
    assert_int_equal(b->s.table[0], a->s.table[0]);
    assert_int_not_equal(b->s.table[1], a->s.table[1]);
    /* the recomputed last block duplicates a cached one: not registered */
    assert_false(kv_block_is_cached(f.kv, b->s.table[1]));
    assert_int_equal(b->s.n_hashed, 2);
    kv_seq_destroy(f.kv, &b->s);

    struct { int n, want; } cases[] = {{1, 0}, {16, 0}, {17, 16}, {31, 16}, {33, 32}, {47, 32}, {48, 32}};
    for (size_t k = 0; k < NI_ARRAY_LEN(cases); k++) {
        t_run_prompt(&f, b, toks, cases[k].n, &nc);
        if (nc != cases[k].want)
            fail_msg("n_prompt %d: n_cached %d, want %d", cases[k].n, nc, cases[k].want);
        assert_true(nc <= cases[k].n - 1);
        check_ok(f.kv);
        kv_seq_destroy(f.kv, &b->s);
    }
    kv_seq_destroy(f.kv, &a->s);
    assert_all_returned(&f);
    free(a);
    free(b);
    fake_free(&f);
}

/* Prompts sharing only part of a cached prefix hit exactly the shared full blocks. */
static void test_partial_prefix(void **state) {
    (void)state;
    fake f;
    fake_init(&f, 64, 4, 0, 1, NULL);
    int32_t base[32], p[32];
    seqtok(base, 32, 1);
    tseq *a = calloc(1, sizeof(tseq)), *b = calloc(1, sizeof(tseq));
    int nc;
    t_run_prompt(&f, a, base, 32, &nc);
    struct { int diverge, n, want; } cases[] = {
        {0, 20, 0},   /* first token differs */
        {3, 20, 0},   /* differs inside block 0 */
        {4, 20, 4},   /* block 0 shared */
        {10, 20, 8},  /* differs inside block 2 */
        {12, 30, 12},
        {31, 32, 28}, /* only the last token differs */
        {32, 10, 8},  /* a strict prefix of a cached prompt */
    };
    for (size_t k = 0; k < NI_ARRAY_LEN(cases); k++) {
        memcpy(p, base, sizeof(p));
        for (int i = cases[k].diverge; i < 32; i++) p[i] = 5000 + i;
        t_run_prompt(&f, b, p, cases[k].n, &nc);
        if (nc != cases[k].want)
            fail_msg("case %zu: n_cached %d, want %d", k, nc, cases[k].want);
        for (int i = 0; i < nc / 4; i++) assert_int_equal(b->s.table[i], a->s.table[i]);
        check_ok(f.kv);
        kv_seq_destroy(f.kv, &b->s);
    }
    kv_seq_destroy(f.kv, &a->s);
    assert_all_returned(&f);
    free(a);
    free(b);
    fake_free(&f);
}

/* Equal blocks under different parents never hit, whatever the hash does. */
static void run_parent_case(kv_hash_fn fn) {
    fake f;
    fake_init(&f, 32, 4, 0, 1, fn);
    int32_t pa[9] = {1, 2, 3, 4, 9, 9, 9, 9, 0};
    int32_t pb[9] = {5, 6, 7, 8, 9, 9, 9, 9, 0};
    tseq *a = calloc(1, sizeof(tseq)), *b = calloc(1, sizeof(tseq)), *c = calloc(1, sizeof(tseq));
    int nc;
    t_run_prompt(&f, a, pa, 9, &nc);
    t_run_prompt(&f, b, pb, 9, &nc);
    assert_int_equal(nc, 0);
    /* b's second block has the same tokens as a's but another parent: both cached */
    assert_true(kv_block_is_cached(f.kv, a->s.table[1]));
    assert_true(kv_block_is_cached(f.kv, b->s.table[1]));
    assert_int_not_equal(a->s.table[1], b->s.table[1]);
    kv_stats st;
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.blocks_cached, 4);
    check_ok(f.kv);
    /* each prefix finds its own chain */
    t_run_prompt(&f, c, pb, 9, &nc);
    assert_int_equal(nc, 8);
    assert_int_equal(c->s.table[0], b->s.table[0]);
    assert_int_equal(c->s.table[1], b->s.table[1]);
    kv_seq_destroy(f.kv, &c->s);
    t_run_prompt(&f, c, pa, 9, &nc);
    assert_int_equal(nc, 8);
    assert_int_equal(c->s.table[0], a->s.table[0]);
    assert_int_equal(c->s.table[1], a->s.table[1]);
    kv_seq_destroy(f.kv, &c->s);
    /* a third prefix whose block 0 is new: its block 1 must not hit either one */
    int32_t pc[9] = {4, 3, 2, 1, 9, 9, 9, 9, 0};
    t_run_prompt(&f, c, pc, 9, &nc);
    assert_int_equal(nc, 0);
    kv_seq_destroy(f.kv, &a->s);
    kv_seq_destroy(f.kv, &b->s);
    kv_seq_destroy(f.kv, &c->s);
    assert_all_returned(&f);
    free(a);
    free(b);
    free(c);
    fake_free(&f);
}

static void test_chained_hash(void **state) {
    (void)state;
    run_parent_case(NULL);
    /* the chained hash is a real chain: same block, different parent hash */
    int32_t blk[4] = {9, 9, 9, 9};
    int32_t b0[4] = {1, 2, 3, 4}, b1[4] = {5, 6, 7, 8};
    const uint64_t h0 = kv_hash_default(0, b0, 4), h1 = kv_hash_default(0, b1, 4);
    assert_true(kv_hash_default(h0, blk, 4) != kv_hash_default(h1, blk, 4));
}

static void test_parent_blind_hash(void **state) {
    (void)state;
    run_parent_case(hash_no_parent);
}

/* Every hash collides: different contents are never a hit, equal ones are. */
static void test_forced_collisions(void **state) {
    (void)state;
    run_parent_case(hash_const);
    fake f;
    fake_init(&f, 32, 4, 0, 1, hash_const);
    int32_t pa[13], pb[13];
    seqtok(pa, 13, 10);
    seqtok(pb, 13, 20);
    tseq *a = calloc(1, sizeof(tseq)), *b = calloc(1, sizeof(tseq));
    int nc;
    t_run_prompt(&f, a, pa, 13, &nc);
    kv_seq_destroy(f.kv, &a->s); /* evictable, still cached */
    t_run_prompt(&f, b, pb, 13, &nc);
    assert_int_equal(nc, 0); /* same hash everywhere, other tokens: no hit */
    kv_stats st;
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.blocks_cached, 6);
    assert_int_equal(st.hit_tokens, 0);
    check_ok(f.kv);
    t_run_prompt(&f, a, pa, 13, &nc);
    assert_int_equal(nc, 12); /* the true match is still found */
    kv_seq_destroy(f.kv, &a->s);
    kv_seq_destroy(f.kv, &b->s);
    assert_all_returned(&f);
    free(a);
    free(b);
    fake_free(&f);
}

/* With caching off nothing is hashed, registered, hit or kept evictable. */
static void test_disable_flag(void **state) {
    (void)state;
    fake f;
    fake_init(&f, 16, 4, 0, 0, NULL);
    assert_int_equal(kv_prefix_cache_enabled(f.kv), 0);
    int32_t toks[13];
    seqtok(toks, 13, 3);
    tseq *a = calloc(1, sizeof(tseq)), *b = calloc(1, sizeof(tseq));
    int nc = -1;
    t_run_prompt(&f, a, toks, 13, &nc);
    assert_int_equal(nc, 0);
    kv_seq_destroy(f.kv, &a->s);
    assert_int_equal(kv_prompt_blocks_needed(f.kv, toks, 13, &nc), 4);
    assert_int_equal(nc, 0);
    t_run_prompt(&f, b, toks, 13, &nc);
    assert_int_equal(nc, 0);
    /* commit needs no tokens when caching is off */
    assert_int_equal(kv_seq_commit(f.kv, &b->s, NULL, 13), 0);
    kv_seq_destroy(f.kv, &b->s);
    kv_stats st;
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.blocks_cached, 0);
    assert_int_equal(st.blocks_evictable, 0);
    assert_int_equal(st.blocks_free, 16);
    assert_int_equal(st.prefix_queries, 0);
    assert_int_equal(st.query_tokens, 0);
    assert_int_equal(st.hit_tokens, 0);
    assert_all_returned(&f);
    free(a);
    free(b);
    fake_free(&f);
}

/* Free blocks go first, then cached ones in release order; a sequence's tail
 * is evicted before its prefix. */
static void test_lru_eviction_order(void **state) {
    (void)state;
    fake f;
    fake_init(&f, 6, 4, 0, 1, NULL);
    int32_t pa[9], pb[9], pd[12];
    seqtok(pa, 9, 100);
    seqtok(pb, 9, 200);
    seqtok(pd, 12, 300);
    tseq *a = calloc(1, sizeof(tseq)), *b = calloc(1, sizeof(tseq)), *d = calloc(1, sizeof(tseq));
    int nc;
    t_run_prompt(&f, a, pa, 9, &nc);
    t_run_prompt(&f, b, pb, 9, &nc);
    const int32_t a0 = a->s.table[0], a1 = a->s.table[1], a2 = a->s.table[2];
    const int32_t b0 = b->s.table[0], b1 = b->s.table[1], b2 = b->s.table[2];
    assert_int_equal(kv_num_allocatable(f.kv), 0);
    kv_seq_destroy(f.kv, &a->s); /* released a2 (free), a1, a0 (LRU) */
    kv_seq_destroy(f.kv, &b->s); /* b2 (free), b1, b0 */
    kv_stats st;
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.blocks_free, 2);
    assert_int_equal(st.blocks_evictable, 4);
    assert_int_equal(st.evictions, 0);

    t_run_prompt(&f, d, pd, 12, &nc); /* 3 blocks: a2, b2 (free), then evicts a1 */
    assert_int_equal(nc, 0);
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.evictions, 1);
    /* (a1 now holds d's block and may be cached again under d's tokens) */
    assert_true(kv_block_is_cached(f.kv, a0));
    assert_true(kv_block_is_cached(f.kv, b0));
    assert_true(kv_block_is_cached(f.kv, b1));
    int seen_a1 = 0, seen_a2 = 0, seen_b2 = 0;
    for (int i = 0; i < 3; i++) {
        seen_a1 += d->s.table[i] == a1;
        seen_a2 += d->s.table[i] == a2;
        seen_b2 += d->s.table[i] == b2;
    }
    assert_int_equal(seen_a1 + seen_a2 + seen_b2, 3);
    check_ok(f.kv);

    /* a again: a0 still hits (revived), a1 was evicted; the two new blocks
     * evict b1 then b0 (b's tail first) */
    t_run_prompt(&f, a, pa, 9, &nc);
    assert_int_equal(nc, 4);
    assert_int_equal(a->s.table[0], a0);
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.evictions, 3);
    assert_int_equal(a->s.table[1], b1);
    assert_int_equal(a->s.table[2], b0);
    /* b's prefix is gone from the cache, d's is intact */
    assert_int_equal(kv_prompt_blocks_needed(f.kv, pb, 9, &nc), 3);
    assert_int_equal(nc, 0);
    kv_prompt_blocks_needed(f.kv, pd, 12, &nc);
    assert_int_equal(nc, 8);
    check_ok(f.kv);
    kv_seq_destroy(f.kv, &a->s);
    kv_seq_destroy(f.kv, &d->s);
    assert_all_returned(&f);
    free(a);
    free(b);
    free(d);
    fake_free(&f);
}

/* A hit on an evictable block revives it: it leaves the LRU and cannot be
 * evicted while referenced. */
static void test_revival(void **state) {
    (void)state;
    fake f;
    fake_init(&f, 8, 4, 0, 1, NULL);
    int32_t pa[9], pc[20];
    seqtok(pa, 9, 1);
    seqtok(pc, 20, 50);
    tseq *a = calloc(1, sizeof(tseq)), *b = calloc(1, sizeof(tseq)), *c = calloc(1, sizeof(tseq));
    int nc;
    t_run_prompt(&f, a, pa, 9, &nc);
    const int32_t a0 = a->s.table[0], a1 = a->s.table[1];
    kv_seq_destroy(f.kv, &a->s);
    kv_stats st;
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.blocks_evictable, 2);
    assert_int_equal(kv_block_refcount(f.kv, a0), 0);

    t_run_prompt(&f, b, pa, 9, &nc);
    assert_int_equal(nc, 8);
    assert_int_equal(b->s.table[0], a0);
    assert_int_equal(b->s.table[1], a1);
    assert_int_equal(kv_block_refcount(f.kv, a0), 1);
    assert_int_equal(kv_block_refcount(f.kv, a1), 1);
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.blocks_evictable, 0);
    assert_int_equal(st.blocks_used, 3);
    check_ok(f.kv); /* revived blocks are in no list */

    /* a hit on a block in use just adds a reference */
    t_run_prompt(&f, a, pa, 9, &nc);
    assert_int_equal(nc, 8);
    assert_int_equal(kv_block_refcount(f.kv, a0), 2);
    kv_seq_destroy(f.kv, &a->s);
    assert_int_equal(kv_block_refcount(f.kv, a0), 1);

    /* use up the whole pool: the revived blocks are not evicted */
    assert_int_equal(kv_num_allocatable(f.kv), 5);
    t_run_prompt(&f, c, pc, 20, &nc);
    assert_int_equal(kv_num_allocatable(f.kv), 0);
    assert_true(kv_block_is_cached(f.kv, a0));
    assert_true(kv_block_is_cached(f.kv, a1));
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.evictions, 0);
    fake_verify(&f, b, 9);
    kv_seq_destroy(f.kv, &b->s);
    kv_seq_destroy(f.kv, &c->s);
    assert_all_returned(&f);
    free(a);
    free(b);
    free(c);
    fake_free(&f);
}

/* NI_ENOMEM leaves every refcount, list order, counter and table untouched. */
static void test_enomem_no_state_change(void **state) {
    (void)state;
    fake f;
    fake_init(&f, 8, 4, 40, 1, NULL);
    int32_t pa[13], px[20], py[2];
    seqtok(pa, 13, 1);
    seqtok(px, 20, 100);
    tseq *a = calloc(1, sizeof(tseq)), *x = calloc(1, sizeof(tseq));
    tseq *y1 = calloc(1, sizeof(tseq)), *y2 = calloc(1, sizeof(tseq));
    int nc;
    t_run_prompt(&f, a, pa, 9, &nc);
    const int32_t a0 = a->s.table[0], a1 = a->s.table[1];
    kv_seq_destroy(f.kv, &a->s); /* LRU: a1, a0 */
    t_run_prompt(&f, x, px, 20, &nc);
    assert_int_equal(kv_num_allocatable(f.kv), 3); /* 1 free + 2 evictable */

    /* 13 tokens: hits a0, a1 (2 revivals) + 2 new blocks = 4 > 3, although
     * the 2 new blocks alone would fit */
    assert_int_equal(kv_prompt_blocks_needed(f.kv, pa, 13, &nc), 4);
    assert_int_equal(nc, 8);
    assert_false(kv_can_alloc_prompt(f.kv, pa, 13));
    kv_stats before, after;
    kv_get_stats(f.kv, &before);
    memset(a, 0, sizeof(*a));
    assert_int_equal(kv_seq_init(f.kv, &a->s), 0);
    t_append(a, pa, 13);
    kv_get_stats(f.kv, &before);
    nc = -7;
    assert_int_equal(kv_seq_alloc_prompt(f.kv, &a->s, pa, 13, &nc), NI_ENOMEM);
    assert_int_equal(nc, -7);
    kv_get_stats(f.kv, &after);
    assert_true(stats_equal(&before, &after));
    assert_int_equal(a->s.n_blocks, 0);
    assert_int_equal(a->s.n_computed, 0);
    assert_int_equal(kv_block_refcount(f.kv, a0), 0);
    assert_int_equal(kv_block_refcount(f.kv, a1), 0);
    assert_true(kv_block_is_cached(f.kv, a0));
    assert_true(kv_block_is_cached(f.kv, a1));
    check_ok(f.kv);

    /* reserve: 20 -> 36 tokens needs 4 blocks */
    kv_seq saved = x->s;
    int32_t saved_table[16];
    memcpy(saved_table, x->s.table, sizeof(int32_t) * (size_t)x->s.n_blocks);
    assert_int_equal(kv_blocks_needed(f.kv, &x->s, 36), 4);
    assert_false(kv_can_reserve(f.kv, &x->s, 36));
    kv_copy cow = {5, 5};
    assert_int_equal(kv_seq_reserve(f.kv, &x->s, 36, &cow), NI_ENOMEM);
    assert_int_equal(cow.src, -1);
    kv_get_stats(f.kv, &after);
    assert_true(stats_equal(&before, &after));
    assert_int_equal(x->s.n_blocks, saved.n_blocks);
    assert_int_equal(x->s.n_computed, saved.n_computed);
    assert_int_equal(x->s.n_hashed, saved.n_hashed);
    assert_true(x->s.last_hash == saved.last_hash);
    assert_memory_equal(saved_table, x->s.table, sizeof(int32_t) * (size_t)saved.n_blocks);
    check_ok(f.kv);

    /* out of range */
    assert_int_equal(kv_seq_reserve(f.kv, &x->s, 41, &cow), NI_ERANGE);
    assert_int_equal(kv_blocks_needed(f.kv, &x->s, 41), NI_ERANGE);
    int32_t big[41] = {0};
    assert_int_equal(kv_seq_alloc_prompt(f.kv, &a->s, big, 41, &nc), NI_ERANGE);
    assert_int_equal(kv_seq_alloc_prompt(f.kv, &a->s, big, 0, &nc), NI_EINVAL);
    assert_int_equal(kv_seq_alloc_prompt(f.kv, &x->s, pa, 4, &nc), NI_EINVAL); /* not empty */

    /* the LRU order survived the failures: the free block goes first, then a1, a0 */
    seqtok(py, 2, 900);
    t_run_prompt(&f, y1, py, 1, &nc);
    kv_get_stats(f.kv, &after);
    assert_int_equal(after.evictions, 0);
    t_run_prompt(&f, y2, py + 1, 1, &nc);
    assert_int_equal(y2->s.table[0], a1);
    assert_false(kv_block_is_cached(f.kv, a1));
    assert_true(kv_block_is_cached(f.kv, a0));

    kv_seq_destroy(f.kv, &a->s);
    kv_seq_destroy(f.kv, &x->s);
    kv_seq_destroy(f.kv, &y1->s);
    kv_seq_destroy(f.kv, &y2->s);
    assert_all_returned(&f);
    free(a);
    free(x);
    free(y1);
    free(y2);
    fake_free(&f);
}

static void t_fork(fake *f, const tseq *src, tseq *dst) {
    memset(dst, 0, sizeof(*dst));
    assert_int_equal(kv_seq_init(f->kv, &dst->s), 0);
    const int before = kv_num_allocatable(f->kv);
    assert_int_equal(kv_seq_fork(f->kv, &src->s, &dst->s), 0);
    assert_int_equal(kv_num_allocatable(f->kv), before);
    memcpy(dst->toks, src->toks, sizeof(dst->toks));
    memcpy(dst->ph, src->ph, sizeof(dst->ph));
    dst->n_toks = src->n_toks;
    dst->state = 1;
}

/* n>1 sampling: forks share everything; the first writes into the shared
 * partial block copy it, the last holder writes in place. */
static void test_fork_cow(void **state) {
    (void)state;
    fake f;
    fake_init(&f, 32, 16, 0, 1, NULL);
    int32_t toks[41];
    seqtok(toks, 41, 10);
    tseq *p = calloc(1, sizeof(tseq)), *c = calloc(3, sizeof(tseq));
    int nc;
    t_run_prompt(&f, p, toks, 20, &nc);
    const int32_t p0 = p->s.table[0], p1 = p->s.table[1];
    for (int i = 0; i < 3; i++) t_fork(&f, p, &c[i]);
    assert_int_equal(kv_block_refcount(f.kv, p0), 4);
    assert_int_equal(kv_block_refcount(f.kv, p1), 4);
    assert_int_equal(c[0].s.n_computed, 20);
    assert_int_equal(c[0].s.n_hashed, 1);
    assert_true(c[0].s.last_hash == p->s.last_hash);
    check_ok(f.kv);

    for (int i = 0; i < 3; i++) {
        const int32_t t = 500 + i;
        t_append(&c[i], &t, 1);
        assert_int_equal(kv_blocks_needed(f.kv, &c[i].s, 21), 1);
        kv_copy cow;
        assert_int_equal(kv_seq_reserve(f.kv, &c[i].s, 21, &cow), 0);
        assert_int_equal(cow.src, p1);
        assert_int_not_equal(cow.dst, p1);
        assert_int_not_equal(cow.dst, p0);
        assert_int_equal(c[i].s.table[1], cow.dst);
        assert_int_equal(c[i].s.table[0], p0);
        assert_int_equal(kv_block_refcount(f.kv, p1), 3 - i);
        assert_int_equal(kv_block_refcount(f.kv, cow.dst), 1);
        assert_int_equal(kv_block_refcount(f.kv, p0), 4);
        fake_copy(&f, cow);
        fake_write(&f, &c[i], 20, 21);
        assert_int_equal(kv_seq_commit(f.kv, &c[i].s, c[i].toks, 21), 0);
        check_ok(f.kv);
    }
    const int32_t t = 499;
    t_append(p, &t, 1);
    assert_int_equal(kv_blocks_needed(f.kv, &p->s, 21), 0);
    assert_int_equal(t_compute(&f, p, 21), 0);
    assert_int_equal(p->s.table[1], p1); /* last holder: in place */
    for (int i = 0; i < 3; i++) fake_verify(&f, &c[i], 21);
    fake_verify(&f, p, 21);
    assert_int_equal(f.n_copies, 3);

    /* fork errors */
    assert_int_equal(kv_seq_fork(f.kv, &p->s, &c[0].s), NI_EINVAL); /* dst not empty */
    assert_int_equal(kv_seq_fork(f.kv, &p->s, &p->s), NI_EINVAL);
    for (int i = 0; i < 3; i++) kv_seq_destroy(f.kv, &c[i].s);
    kv_seq_destroy(f.kv, &p->s);
    assert_all_returned(&f);

    /* fork at a block boundary: the next token goes into a new block, no copy */
    t_run_prompt(&f, p, toks, 32, &nc);
    t_fork(&f, p, &c[0]);
    const int32_t t2 = 77;
    t_append(&c[0], &t2, 1);
    kv_copy cow;
    assert_int_equal(kv_seq_reserve(f.kv, &c[0].s, 33, &cow), 0);
    assert_int_equal(cow.src, -1);
    assert_int_equal(c[0].s.n_blocks, 3);
    assert_int_equal(kv_block_refcount(f.kv, p->s.table[1]), 2);
    fake_write(&f, &c[0], 32, 33);
    assert_int_equal(kv_seq_commit(f.kv, &c[0].s, c[0].toks, 33), 0);
    fake_verify(&f, &c[0], 33);
    kv_seq_destroy(f.kv, &c[0].s);
    kv_seq_destroy(f.kv, &p->s);

    /* fork mid-prefill: the partial computed block is copied, the reserved but
     * uncomputed one is only swapped */
    memset(p, 0, sizeof(*p));
    assert_int_equal(kv_seq_init(f.kv, &p->s), 0);
    t_append(p, toks + 1, 40);
    assert_int_equal(t_admit(&f, p, &nc), 0);
    assert_int_equal(p->s.n_blocks, 3);
    assert_int_equal(t_compute(&f, p, 20), 0);
    t_fork(&f, p, &c[1]);
    assert_int_equal(kv_blocks_needed(f.kv, &c[1].s, 40), 2);
    const int32_t old1 = p->s.table[1], old2 = p->s.table[2];
    assert_int_equal(kv_seq_reserve(f.kv, &c[1].s, 40, &cow), 0);
    assert_int_equal(cow.src, old1);
    assert_int_equal(cow.dst, c[1].s.table[1]);
    assert_int_not_equal(c[1].s.table[2], old2);
    assert_int_equal(kv_block_refcount(f.kv, old2), 1);
    fake_copy(&f, cow);
    fake_write(&f, &c[1], 20, 40);
    assert_int_equal(kv_seq_commit(f.kv, &c[1].s, c[1].toks, 40), 0);
    assert_int_equal(kv_blocks_needed(f.kv, &p->s, 40), 0);
    assert_int_equal(t_compute(&f, p, 40), 0);
    fake_verify(&f, &c[1], 40);
    check_ok(f.kv);
    kv_seq_destroy(f.kv, &c[1].s);
    kv_seq_destroy(f.kv, &p->s);
    assert_all_returned(&f);
    free(p);
    free(c);
    fake_free(&f);
}

/* Growth queries on a plain sequence. */
static void test_capacity_queries(void **state) {
    (void)state;
    fake f;
    fake_init(&f, 4, 16, 0, 1, NULL);
    tseq *s = calloc(1, sizeof(tseq));
    assert_int_equal(kv_seq_init(f.kv, &s->s), 0);
    assert_int_equal(kv_max_blocks_per_seq(f.kv), 4);
    assert_int_equal(kv_blocks_needed(f.kv, &s->s, 0), 0);
    assert_int_equal(kv_blocks_needed(f.kv, &s->s, 1), 1);
    assert_int_equal(kv_blocks_needed(f.kv, &s->s, 16), 1);
    assert_int_equal(kv_blocks_needed(f.kv, &s->s, 17), 2);
    assert_int_equal(kv_blocks_needed(f.kv, &s->s, 64), 4);
    assert_true(kv_can_reserve(f.kv, &s->s, 64));
    assert_int_equal(kv_blocks_needed(f.kv, &s->s, 65), NI_ERANGE);
    assert_false(kv_can_reserve(f.kv, &s->s, 65));
    kv_copy cow;
    assert_int_equal(kv_seq_reserve(f.kv, &s->s, 17, &cow), 0);
    assert_int_equal(s->s.n_blocks, 2);
    assert_int_equal(kv_num_allocatable(f.kv), 2);
    assert_int_equal(kv_blocks_needed(f.kv, &s->s, 32), 0);
    assert_int_equal(kv_blocks_needed(f.kv, &s->s, 33), 1);
    assert_int_equal(kv_seq_reserve(f.kv, &s->s, 10, &cow), 0); /* shrinking is a no-op */
    assert_int_equal(s->s.n_blocks, 2);
    /* commit bounds */
    assert_int_equal(kv_seq_commit(f.kv, &s->s, NULL, 33), NI_EINVAL);
    int32_t toks[16];
    seqtok(toks, 16, 0);
    t_append(s, toks, 16);
    fake_write(&f, s, 0, 5);
    assert_int_equal(kv_seq_commit(f.kv, &s->s, s->toks, 5), 0);
    assert_int_equal(kv_seq_commit(f.kv, &s->s, s->toks, 4), NI_EINVAL); /* backwards */
    kv_seq_reset(f.kv, &s->s);
    assert_int_equal(s->s.n_blocks, 0);
    assert_int_equal(kv_num_allocatable(f.kv), 4);
    kv_seq_destroy(f.kv, &s->s);
    assert_all_returned(&f);
    free(s);
    fake_free(&f);
}

/* Two sequences computing the same prefix concurrently: the second copy is
 * not registered; its later blocks chain from the first copy. */
static void test_commit_dedup(void **state) {
    (void)state;
    fake f;
    fake_init(&f, 16, 4, 0, 1, NULL);
    int32_t toks[9], more[4] = {70, 71, 72, 73};
    seqtok(toks, 9, 40);
    tseq *a = calloc(1, sizeof(tseq)), *b = calloc(1, sizeof(tseq)), *c = calloc(1, sizeof(tseq));
    int nc;
    tseq *ab[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(kv_seq_init(f.kv, &ab[i]->s), 0);
        t_append(ab[i], toks, 9);
        assert_int_equal(t_admit(&f, ab[i], &nc), 0);
        assert_int_equal(nc, 0);
    }
    assert_int_equal(t_compute(&f, a, 9), 0);
    assert_int_equal(t_compute(&f, b, 9), 0);
    assert_true(kv_block_is_cached(f.kv, a->s.table[0]));
    assert_false(kv_block_is_cached(f.kv, b->s.table[0]));
    assert_false(kv_block_is_cached(f.kv, b->s.table[1]));
    assert_int_equal(b->s.n_hashed, 2);
    assert_true(b->s.last_hash == a->s.last_hash);
    kv_stats st;
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.blocks_cached, 2);
    check_ok(f.kv);

    t_append(b, more, 4);
    assert_int_equal(t_compute(&f, b, 13), 0);
    const int32_t b2 = b->s.table[2];
    assert_true(kv_block_is_cached(f.kv, b2));
    memset(c, 0, sizeof(*c));
    assert_int_equal(kv_seq_init(f.kv, &c->s), 0);
    t_append(c, b->toks, 13);
    assert_int_equal(t_admit(&f, c, &nc), 0);
    assert_int_equal(nc, 12);
    assert_int_equal(c->s.table[0], a->s.table[0]);
    assert_int_equal(c->s.table[1], a->s.table[1]);
    assert_int_equal(c->s.table[2], b2);
    kv_seq_destroy(f.kv, &b->s);
    kv_get_stats(f.kv, &st);
    assert_int_equal(st.blocks_evictable, 0); /* b0,b1 uncached -> free; b2 held by c */
    kv_seq_destroy(f.kv, &a->s);
    kv_seq_destroy(f.kv, &c->s);
    assert_all_returned(&f);
    free(a);
    free(b);
    free(c);
    fake_free(&f);
}

/* kv_check is not vacuous: it reports corrupted state. */
static void test_check_detects_corruption(void **state) {
    (void)state;
    fake f;
    fake_init(&f, 8, 4, 0, 1, NULL);
    int32_t toks[9];
    seqtok(toks, 9, 1);
    tseq *a = calloc(1, sizeof(tseq));
    int nc;
    t_run_prompt(&f, a, toks, 9, &nc);
    char err[256];
    const int32_t t0 = a->s.table[0];
    a->s.table[0] = a->s.table[1]; /* same block twice, refcounts off */
    assert_int_equal(kv_check(f.kv, err, sizeof(err)), NI_EINVAL);
    a->s.table[0] = (t0 + 5) % 8; /* a free block */
    if (a->s.table[0] == a->s.table[1] || a->s.table[0] == a->s.table[2]) a->s.table[0] = (t0 + 6) % 8;
    assert_int_equal(kv_check(f.kv, err, sizeof(err)), NI_EINVAL);
    a->s.table[0] = t0;
    check_ok(f.kv);
    a->s.n_computed = 13; /* beyond the table */
    assert_int_equal(kv_check(f.kv, err, sizeof(err)), NI_EINVAL);
    a->s.n_computed = 4; /* n_hashed no longer matches */
    assert_int_equal(kv_check(f.kv, err, sizeof(err)), NI_EINVAL);
    a->s.n_computed = 9;
    check_ok(f.kv);
    kv_seq_destroy(f.kv, &a->s);
    assert_all_returned(&f);
    free(a);
    fake_free(&f);
}

/* ---- random stress -------------------------------------------------------- */

#define NSLOT 12
#define NBASE 4

typedef struct stress_cfg {
    const char *name;
    int nb, bs, max_len, cache;
    kv_hash_fn fn;
    int ops;
} stress_cfg;

static int pick(const tseq *ts, int st) {
    int idx[NSLOT], n = 0;
    for (int i = 0; i < NSLOT; i++)
        if (ts[i].state == st) idx[n++] = i;
    return n ? idx[tu_int(&g_rng, n)] : -1;
}

typedef struct stress_counts {
    long admit, admit_hit, enomem, fork, preempt, finish, steps;
} stress_counts;

static void seq_snapshot_equal(const kv_seq *a, const int32_t *table, const kv_seq *b) {
    assert_int_equal(a->n_blocks, b->n_blocks);
    assert_int_equal(a->n_computed, b->n_computed);
    assert_int_equal(a->n_hashed, b->n_hashed);
    assert_true(a->last_hash == b->last_hash);
    assert_true(a->last_uid == b->last_uid);
    if (a->n_blocks) assert_memory_equal(table, b->table, sizeof(int32_t) * (size_t)a->n_blocks);
}

static void op_admit(fake *f, tseq *ts, int32_t (*base)[MAXLEN], const stress_cfg *cfg,
                     stress_counts *cnt) {
    int i = tu_int(&g_rng, 2) ? pick(ts, 2) : -1;
    const int readmit = i >= 0;
    if (!readmit) {
        i = pick(ts, 0);
        if (i < 0) return;
        tseq *t = &ts[i];
        memset(t, 0, sizeof(*t));
        assert_int_equal(kv_seq_init(f->kv, &t->s), 0);
        int32_t p[MAXLEN];
        const int len = 1 + tu_int(&g_rng, cfg->max_len / 2);
        memcpy(p, base[tu_int(&g_rng, NBASE)], sizeof(int32_t) * (size_t)len);
        if (tu_int(&g_rng, 2))
            for (int k = tu_int(&g_rng, len); k < len; k++) p[k] = tu_int(&g_rng, 3);
        t_append(t, p, len);
    }
    tseq *t = &ts[i];
    int pred = -1;
    const int need = kv_prompt_blocks_needed(f->kv, t->toks, t->n_toks, &pred);
    const int can = kv_can_alloc_prompt(f->kv, t->toks, t->n_toks);
    const int avail = kv_num_allocatable(f->kv);
    kv_stats before, after;
    kv_get_stats(f->kv, &before);
    int nc = -1;
    const int rc = t_admit(f, t, &nc);
    kv_get_stats(f->kv, &after);
    if (rc == NI_ENOMEM) {
        assert_false(can);
        assert_true(need > avail);
        assert_true(stats_equal(&before, &after));
        assert_int_equal(t->s.n_blocks, 0);
        cnt->enomem++;
        if (!readmit) kv_seq_destroy(f->kv, &t->s);
        t->state = readmit ? 2 : 0;
        return;
    }
    assert_int_equal(rc, 0);
    assert_true(can);
    assert_int_equal(nc, pred);
    assert_true(nc <= t->n_toks - 1);
    assert_int_equal(nc % f->bs, 0);
    if (!cfg->cache) assert_int_equal(nc, 0);
    assert_int_equal(kv_num_allocatable(f->kv), avail - need);
    assert_int_equal(t->s.n_blocks, (t->n_toks + f->bs - 1) / f->bs);
    t->state = 1;
    cnt->admit++;
    if (nc > 0) cnt->admit_hit++;
}

static void op_step(fake *f, tseq *ts, const stress_cfg *cfg, stress_counts *cnt) {
    const int i = pick(ts, 1);
    if (i < 0) return;
    tseq *t = &ts[i];
    int target;
    if (t->s.n_computed < t->n_toks) {
        target = t->s.n_computed + 1 + tu_int(&g_rng, t->n_toks - t->s.n_computed);
    } else {
        if (t->n_toks >= cfg->max_len) { /* finished: max length */
            kv_seq_destroy(f->kv, &t->s);
            t->state = 0;
            cnt->finish++;
            return;
        }
        const int k = 1 + tu_int(&g_rng, NI_MIN(3, cfg->max_len - t->n_toks));
        int32_t nt[3];
        for (int j = 0; j < k; j++) nt[j] = tu_int(&g_rng, 3);
        t_append(t, nt, k);
        target = t->n_toks;
    }
    const int need = kv_blocks_needed(f->kv, &t->s, target);
    const int can = kv_can_reserve(f->kv, &t->s, target);
    const int avail = kv_num_allocatable(f->kv);
    kv_stats before, after;
    kv_get_stats(f->kv, &before);
    kv_seq saved = t->s;
    int32_t saved_table[MAXLEN];
    memcpy(saved_table, t->s.table, sizeof(int32_t) * (size_t)t->s.n_blocks);
    const int rc = t_compute(f, t, target);
    if (rc == NI_ENOMEM) {
        assert_false(can);
        assert_true(need > avail);
        kv_get_stats(f->kv, &after);
        assert_true(stats_equal(&before, &after));
        seq_snapshot_equal(&saved, saved_table, &t->s);
        cnt->enomem++;
        /* the scheduler preempts someone (maybe this one) by recompute */
        const int v = pick(ts, 1);
        kv_seq_reset(f->kv, &ts[v].s);
        ts[v].state = 2;
        cnt->preempt++;
        return;
    }
    assert_int_equal(rc, 0);
    assert_true(can);
    assert_int_equal(kv_num_allocatable(f->kv), avail - need);
    cnt->steps++;
}

static void op_fork(fake *f, tseq *ts, stress_counts *cnt) {
    const int s = pick(ts, 1), d = pick(ts, 0);
    if (s < 0 || d < 0) return;
    int32_t refs[MAXLEN];
    for (int k = 0; k < ts[s].s.n_blocks; k++) refs[k] = kv_block_refcount(f->kv, ts[s].s.table[k]);
    t_fork(f, &ts[s], &ts[d]);
    for (int k = 0; k < ts[s].s.n_blocks; k++)
        assert_int_equal(kv_block_refcount(f->kv, ts[s].s.table[k]), refs[k] + 1);
    fake_verify(f, &ts[d], ts[d].s.n_computed);
    cnt->fork++;
}

static void run_stress(const stress_cfg *cfg) {
    fake f;
    fake_init(&f, cfg->nb, cfg->bs, cfg->max_len, cfg->cache, cfg->fn);
    tseq *ts = calloc(NSLOT, sizeof(tseq));
    int32_t(*base)[MAXLEN] = malloc(sizeof(int32_t[NBASE][MAXLEN]));
    assert_non_null(ts);
    assert_non_null(base);
    for (int k = 0; k < NBASE; k++)
        for (int j = 0; j < MAXLEN; j++) base[k][j] = tu_int(&g_rng, 50);
    stress_counts cnt = {0};
    for (int it = 0; it < cfg->ops; it++) {
        const int r = tu_int(&g_rng, 100);
        if (r < 25) {
            op_admit(&f, ts, base, cfg, &cnt);
        } else if (r < 75) {
            op_step(&f, ts, cfg, &cnt);
        } else if (r < 85) {
            op_fork(&f, ts, &cnt);
        } else if (r < 93) {
            int i = pick(ts, tu_int(&g_rng, 2) ? 1 : 2);
            if (i >= 0) {
                kv_seq_destroy(f.kv, &ts[i].s); /* finish or abort */
                ts[i].state = 0;
                cnt.finish++;
            }
        } else {
            const int i = pick(ts, 1);
            if (i >= 0) {
                kv_seq_reset(f.kv, &ts[i].s);
                assert_int_equal(ts[i].s.n_blocks, 0);
                ts[i].state = 2;
                cnt.preempt++;
            }
        }
        check_ok(f.kv);
    }
    for (int i = 0; i < NSLOT; i++)
        if (ts[i].state) {
            if (ts[i].state == 1) fake_verify(&f, &ts[i], ts[i].s.n_computed);
            kv_seq_destroy(f.kv, &ts[i].s);
        }
    assert_all_returned(&f);
    kv_stats st;
    kv_get_stats(f.kv, &st);
    assert_true(st.hit_tokens <= st.query_tokens);
    printf("  stress %-14s admits %ld (%ld hit) steps %ld forks %ld copies %ld enomem %ld "
           "preempt %ld finish %ld evictions %llu hit %llu/%llu tokens\n",
           cfg->name, cnt.admit, cnt.admit_hit, cnt.steps, cnt.fork, f.n_copies, cnt.enomem,
           cnt.preempt, cnt.finish, (unsigned long long)st.evictions,
           (unsigned long long)st.hit_tokens, (unsigned long long)st.query_tokens);
    /* the run exercised what it claims to */
    assert_true(cnt.admit > 0 && cnt.steps > 0 && cnt.fork > 0 && cnt.enomem > 0);
    if (cfg->bs > 1) assert_true(f.n_copies > 0); /* bs 1 has no partial blocks */
    if (cfg->cache) {
        assert_true(cnt.admit_hit > 0);
        assert_true(st.evictions > 0);
    } else {
        assert_int_equal(st.blocks_cached, 0);
        assert_int_equal(st.blocks_evictable, 0);
    }
    free(ts);
    free(base);
    fake_free(&f);
}

static void test_stress(void **state) {
    (void)state;
    const stress_cfg cfgs[] = {
        {"bs4", 48, 4, 96, 1, NULL, 20000},
        {"bs16", 40, 16, 256, 1, NULL, 10000},
        {"bs3-weakhash", 40, 3, 90, 1, hash_weak, 10000},
        {"bs4-consthash", 48, 4, 96, 1, hash_const, 8000},
        {"bs1", 64, 1, 48, 1, NULL, 8000},
        {"bs4-nocache", 48, 4, 96, 0, NULL, 5000},
    };
    for (size_t k = 0; k < NI_ARRAY_LEN(cfgs); k++) run_stress(&cfgs[k]);
}

int main(void) {
    tu_seed(&g_rng, "test_kv");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_invalid),
        cmocka_unit_test(test_hash_default),
        cmocka_unit_test(test_alloc_release_no_cache),
        cmocka_unit_test(test_prefix_hit),
        cmocka_unit_test(test_fully_cached_prompt),
        cmocka_unit_test(test_partial_prefix),
        cmocka_unit_test(test_chained_hash),
        cmocka_unit_test(test_parent_blind_hash),
        cmocka_unit_test(test_forced_collisions),
        cmocka_unit_test(test_disable_flag),
        cmocka_unit_test(test_lru_eviction_order),
        cmocka_unit_test(test_revival),
        cmocka_unit_test(test_enomem_no_state_change),
        cmocka_unit_test(test_fork_cow),
        cmocka_unit_test(test_capacity_queries),
        cmocka_unit_test(test_commit_dedup),
        cmocka_unit_test(test_check_detects_corruption),
        cmocka_unit_test(test_stress),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
