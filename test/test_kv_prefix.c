/*
 * test_kv_prefix.c - the prefix cache of the paged KV block manager
 * (engine/kv.c): the chained block hash, hits on full blocks of a shared
 * prefix (never the block holding a prompt's last token), parents told apart
 * under forced hash collisions, caching switched off, the LRU order in which
 * released cached blocks are evicted, revival of an evictable block on a hit,
 * and two sequences computing the same prefix at once. The block pool,
 * refcounts, copy-on-write and the random stress are in test_kv.c.
 *
 * The fake backend of test_kv_fake.h holds the KV values: a wrong prefix hit
 * reads back as a wrong value. Deterministic: no random inputs.
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
#include "test_kv_fake.h"

/* ---- unit tests ----------------------------------------------------------- */

static void test_hash_default(void **state) {
    (void)state;
    int32_t a[4] = {1, 2, 3, 4}, b[4] = {1, 2, 4, 3};
    assert_true(kv_hash_default(0, a, 4) == kv_hash_default(0, a, 4));
    assert_true(kv_hash_default(0, a, 4) != kv_hash_default(1, a, 4));
    assert_true(kv_hash_default(0, a, 4) != kv_hash_default(0, b, 4));
    assert_true(kv_hash_default(0, a, 4) != kv_hash_default(0, a, 3));
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

    struct {
        int n, want;
    } cases[] = {{1, 0}, {16, 0}, {17, 16}, {31, 16}, {33, 32}, {47, 32}, {48, 32}};
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
    struct {
        int diverge, n, want;
    } cases[] = {
        {0, 20, 0},                 /* first token differs */
        {3, 20, 0},                 /* differs inside block 0 */
        {4, 20, 4},                 /* block 0 shared */
        {10, 20, 8},                /* differs inside block 2 */
        {12, 30, 12}, {31, 32, 28}, /* only the last token differs */
        {32, 10, 8},                /* a strict prefix of a cached prompt */
    };
    for (size_t k = 0; k < NI_ARRAY_LEN(cases); k++) {
        memcpy(p, base, sizeof(p));
        for (int i = cases[k].diverge; i < 32; i++) p[i] = 5000 + i;
        t_run_prompt(&f, b, p, cases[k].n, &nc);
        if (nc != cases[k].want) fail_msg("case %zu: n_cached %d, want %d", k, nc, cases[k].want);
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_default),        cmocka_unit_test(test_prefix_hit),
        cmocka_unit_test(test_fully_cached_prompt), cmocka_unit_test(test_partial_prefix),
        cmocka_unit_test(test_chained_hash),        cmocka_unit_test(test_parent_blind_hash),
        cmocka_unit_test(test_forced_collisions),   cmocka_unit_test(test_disable_flag),
        cmocka_unit_test(test_lru_eviction_order),  cmocka_unit_test(test_revival),
        cmocka_unit_test(test_commit_dedup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
