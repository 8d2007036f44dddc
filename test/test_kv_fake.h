/*
 * test_kv_fake.h - what the KV block manager programs (test_kv.c,
 * test_kv_prefix.c) share: hash hooks that force collisions, and a fake
 * backend standing in for the KV memory.
 *
 * Each physical block of the fake holds block_size 64-bit "KV values", and
 * the value written at position p of a sequence is a rolling hash of the
 * sequence's tokens [0, p] (like real K/V, it depends on the whole prefix).
 * Every write asserts that the target block is exclusively owned and
 * uncached, and after every step the test re-reads the sequence's computed
 * positions through its block table. A wrong prefix hit, a missed
 * copy-on-write or a block reused while still referenced shows up as a
 * wrong value.
 *
 * The helpers are static inline: each program uses only some of them. They
 * fail through cmocka, so they are called from inside a test function.
 */
#ifndef NI_TEST_KV_FAKE_H
#define NI_TEST_KV_FAKE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/kv.h"
#include "engine/util/util.h"

/* ---- hash hooks (forced collisions) --------------------------------------- */

/* Every block collides with every other. */
static inline uint64_t hash_const(uint64_t parent, const int32_t *tokens, int n) {
    (void)parent, (void)tokens, (void)n;
    return 42;
}

/* Ignores the parent: equal blocks under different prefixes collide. */
static inline uint64_t hash_no_parent(uint64_t parent, const int32_t *tokens, int n) {
    (void)parent;
    return kv_hash_default(0, tokens, n);
}

/* Three hash values in all: many collisions, some non-colliding keys. */
static inline uint64_t hash_weak(uint64_t parent, const int32_t *tokens, int n) {
    return kv_hash_default(parent, tokens, n) % 3;
}

/* ---- fake backend + test sequences ---------------------------------------- */

#define MAXLEN 512

typedef struct tseq {
    kv_seq s;
    int32_t toks[MAXLEN]; /* the sequence's tokens (prompt + generated) */
    uint64_t ph[MAXLEN];  /* ph[p] = expected KV value at position p */
    int n_toks;
    int state; /* 0 slot unused, 1 admitted, 2 preempted (needs admission) */
} tseq;

typedef struct fake {
    kv_mgr *kv;
    int bs, nb;
    uint64_t *mem; /* [nb][bs] fake KV memory */
    long n_copies;
} fake;

static inline void check_ok(const kv_mgr *kv) {
    char err[256] = "";
    const int rc = kv_check(kv, err, sizeof(err));
    if (rc) fail_msg("kv_check: %s (%d)", err, rc);
}

static inline void fake_init(fake *f, int n_blocks, int bs, int max_len, int cache, kv_hash_fn fn) {
    memset(f, 0, sizeof(*f));
    kv_config c = {.n_blocks = n_blocks,
                   .block_size = bs,
                   .max_seq_len = max_len,
                   .enable_prefix_cache = cache,
                   .hash_fn = fn};
    assert_int_equal(kv_init(&f->kv, &c), 0);
    f->bs = kv_block_size(f->kv);
    f->nb = n_blocks;
    f->mem = calloc((size_t)n_blocks * (size_t)f->bs, sizeof(uint64_t));
    assert_non_null(f->mem);
    check_ok(f->kv);
}

static inline void fake_free(fake *f) {
    kv_free(f->kv);
    free(f->mem);
}

static inline uint64_t mix(uint64_t h, int32_t t) {
    h ^= (uint64_t)(uint32_t)t + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdULL;
    return h ^ (h >> 31);
}

static inline void t_append(tseq *t, const int32_t *toks, int n) {
    assert_true(t->n_toks + n <= MAXLEN);
    for (int i = 0; i < n; i++) {
        const int p = t->n_toks++;
        t->toks[p] = toks[i];
        t->ph[p] = mix(p ? t->ph[p - 1] : 0x5eed, toks[i]);
    }
}

static inline uint64_t *slot(fake *f, int32_t b, int p) {
    assert_true(b >= 0 && b < f->nb);
    return &f->mem[(size_t)b * (size_t)f->bs + (size_t)(p % f->bs)];
}

/* Positions [0, n) read back through the table hold the expected values. */
static inline void fake_verify(fake *f, const tseq *t, int n) {
    for (int p = 0; p < n; p++) {
        const int32_t b = t->s.table[p / f->bs];
        if (*slot(f, b, p) != t->ph[p])
            fail_msg("KV mismatch at position %d (block %d): a wrong hit or a lost write", p, b);
    }
}

/* The forward pass: writes [from, to) (blocks must be exclusive, uncached). */
static inline void fake_write(fake *f, const tseq *t, int from, int to) {
    for (int p = from; p < to; p++) {
        const int32_t b = t->s.table[p / f->bs];
        if (kv_block_refcount(f->kv, b) != 1 || kv_block_is_cached(f->kv, b))
            fail_msg("write into shared/cached block %d (ref %d, cached %d) at position %d", b,
                     kv_block_refcount(f->kv, b), kv_block_is_cached(f->kv, b), p);
        *slot(f, b, p) = t->ph[p];
    }
}

static inline void fake_copy(fake *f, kv_copy cow) {
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
static inline int t_compute(fake *f, tseq *t, int target) {
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
static inline int t_admit(fake *f, tseq *t, int *n_cached) {
    int nc = -1;
    const int rc = kv_seq_alloc_prompt(f->kv, &t->s, t->toks, t->n_toks, &nc);
    if (rc == 0) {
        fake_verify(f, t, nc);
        if (n_cached) *n_cached = nc;
    }
    return rc;
}

/* New sequence with the given prompt, admitted and fully prefilled. */
static inline void t_run_prompt(fake *f, tseq *t, const int32_t *toks, int n, int *n_cached) {
    memset(t, 0, sizeof(*t));
    assert_int_equal(kv_seq_init(f->kv, &t->s), 0);
    t_append(t, toks, n);
    assert_int_equal(t_admit(f, t, n_cached), 0);
    assert_int_equal(t_compute(f, t, n), 0);
    t->state = 1;
}

static inline void seqtok(int32_t *dst, int n, int32_t base) {
    for (int i = 0; i < n; i++) dst[i] = base + i;
}

static inline int stats_equal(const kv_stats *a, const kv_stats *b) {
    return a->prefix_queries == b->prefix_queries && a->query_tokens == b->query_tokens &&
           a->hit_tokens == b->hit_tokens && a->evictions == b->evictions &&
           a->blocks_total == b->blocks_total && a->blocks_used == b->blocks_used &&
           a->blocks_free == b->blocks_free && a->blocks_evictable == b->blocks_evictable &&
           a->blocks_cached == b->blocks_cached && a->n_seqs == b->n_seqs;
}

static inline void assert_all_returned(fake *f) {
    kv_stats st;
    kv_get_stats(f->kv, &st);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.blocks_free + st.blocks_evictable, f->nb);
    assert_int_equal(kv_num_allocatable(f->kv), f->nb);
    assert_int_equal(st.n_seqs, 0);
    check_ok(f->kv);
}

#endif
