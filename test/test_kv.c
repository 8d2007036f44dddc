/*
 * test_kv.c - the paged KV block manager (engine/kv.c): the block pool and
 * its accounting, reference counts, copy-on-write of forked sequences,
 * NI_ENOMEM and NI_ERANGE leaving every piece of state untouched, kv_check
 * itself, and a random stress of admission, growth, forks, preemption and
 * eviction over several block sizes and hash hooks. The prefix cache and the
 * eviction order have their own program, test_kv_prefix.c.
 *
 * The fake backend of test_kv_fake.h holds the KV values: a wrong hit, a
 * missed copy-on-write or a block reused while still referenced reads back
 * as a wrong value. kv_check() (the manager's own consistency checker) runs
 * after every operation of the stress tests.
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
#include "test_kv_fake.h"

static tu_rng g_rng;

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
    if (a->s.table[0] == a->s.table[1] || a->s.table[0] == a->s.table[2])
        a->s.table[0] = (t0 + 6) % 8;
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
        cmocka_unit_test(test_alloc_release_no_cache),
        cmocka_unit_test(test_enomem_no_state_change),
        cmocka_unit_test(test_fork_cow),
        cmocka_unit_test(test_capacity_queries),
        cmocka_unit_test(test_check_detects_corruption),
        cmocka_unit_test(test_stress),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
