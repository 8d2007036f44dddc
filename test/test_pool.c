/*
 * test_pool.c - the CPU backend's thread pool (engine/cpu/cpu_pool.c): every
 * part of every task runs exactly once, on nth = min(max_parts, threads)
 * threads; the barrier orders the phases of a task; hand-offs across the
 * spin/sleep boundary lose no wake-up; an idle
 * pool ends with every worker asleep; cpu_pool_range partitions exactly.
 * Pools larger than the machine (8 threads on 2 cores) are part of the test:
 * correctness must not depend on the workers being scheduled promptly.
 * A hang fails the test through alarm() instead of stalling CI.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/cpu/cpu_pool.h"
#include "engine/util/util.h"

#define MAX_T 8

typedef struct count_task {
    int calls[MAX_T]; /* per part: calls in this run */
    int nth_seen[MAX_T];
    int64_t sum; /* sum of the parts' ranges: must be n */
    int64_t n;
    int64_t parts[MAX_T];
} count_task;

static void count_fn(void *ctx, int ith, int nth) {
    count_task *t = ctx;
    t->calls[ith]++;
    t->nth_seen[ith] = nth;
    int64_t lo, hi;
    cpu_pool_range(t->n, 16, ith, nth, &lo, &hi);
    t->parts[ith] = hi - lo;
}

/* Runs one task on p and checks that parts 0..want-1 ran once each with
 * nth == want and that their ranges add up to n. */
static void run_and_check(cpu_pool *p, int max_parts, int want, int64_t n) {
    count_task t;
    memset(&t, 0, sizeof t);
    t.n = n;
    cpu_pool_run(p, count_fn, &t, max_parts);
    int64_t sum = 0;
    for (int i = 0; i < MAX_T; i++) {
        if (i < want) {
            if (t.calls[i] != 1 || t.nth_seen[i] != want)
                fail_msg("part %d: %d calls with nth %d, want 1 call with nth %d", i, t.calls[i],
                         t.nth_seen[i], want);
            sum += t.parts[i];
        } else if (t.calls[i]) {
            fail_msg("part %d ran although nth is %d", i, want);
        }
    }
    assert_int_equal(sum, n);
}

static void test_serial(void **state) {
    (void)state;
    run_and_check(NULL, 0, 1, 100); /* a NULL pool runs on the caller */
    cpu_pool *p = NULL;
    assert_int_equal(cpu_pool_init(&p, 1, 0), 0);
    assert_int_equal(cpu_pool_threads(p), 1);
    run_and_check(p, 0, 1, 100);
    assert_int_equal(cpu_pool_handoffs(p), 0);
    cpu_pool_free(p);
    cpu_pool_free(NULL);
    assert_int_equal(cpu_pool_init(&p, -1, 0), NI_EINVAL);
    assert_null(p);
}

static void test_many_tasks(void **state) {
    (void)state;
    for (int n = 2; n <= MAX_T; n *= 2) {
        cpu_pool *p = NULL;
        assert_int_equal(cpu_pool_init(&p, n, 0), 0);
        assert_int_equal(cpu_pool_threads(p), n);
        /* more threads than cores: each hand-off may wait for a time slice */
        const int tasks = n <= 2 ? 20000 : 500;
        for (int k = 0; k < tasks; k++) run_and_check(p, 0, n, 1000 + k % 37);
        assert_int_equal(cpu_pool_handoffs(p), (uint64_t)tasks);
        for (int m = 1; m <= n + 1; m++) run_and_check(p, m, NI_MIN(m, n), 999);
        cpu_pool_free(p);
    }
}

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Gaps around the 100 us spin budget: some hand-offs find the workers
 * spinning, some asleep, some just going to sleep. */
static void test_sleep_wake(void **state) {
    (void)state;
    cpu_pool *p = NULL;
    assert_int_equal(cpu_pool_init(&p, 3, 100), 0);
    for (int k = 0; k < 600; k++) {
        run_and_check(p, 0, 3, 64);
        sleep_us((k % 7) * 40);
    }
    /* idle: every worker goes to sleep (polled, no timing assumed) */
    int asleep = 0;
    for (int i = 0; i < 5000 && (asleep = cpu_pool_sleeping(p)) != 2; i++) sleep_us(1000);
    assert_int_equal(asleep, 2);
    run_and_check(p, 0, 3, 64); /* and wakes up */
    cpu_pool_free(p);
}

typedef struct barrier_task {
    cpu_pool *p;
    volatile int slot[MAX_T]; /* phase last written by each part */
    int errors[MAX_T];
} barrier_task;

/* 200 phases: write my slot, barrier, every slot must hold this phase,
 * barrier (so nobody overwrites a slot while another part still reads). */
static void barrier_fn(void *ctx, int ith, int nth) {
    barrier_task *t = ctx;
    for (int phase = 1; phase <= 200; phase++) {
        t->slot[ith] = phase;
        cpu_pool_barrier(t->p);
        for (int i = 0; i < nth; i++)
            if (t->slot[i] != phase) t->errors[ith]++;
        cpu_pool_barrier(t->p);
    }
}

static void test_barrier(void **state) {
    (void)state;
    for (int n = 1; n <= 4; n++) {
        barrier_task t;
        memset(&t, 0, sizeof t);
        assert_int_equal(cpu_pool_init(&t.p, n, 0), 0);
        for (int rep = 0; rep < 20; rep++) cpu_pool_run(t.p, barrier_fn, &t, 0);
        cpu_pool_run(t.p, barrier_fn, &t, 2); /* a task on fewer threads than the pool */
        for (int i = 0; i < n; i++)
            if (t.errors[i])
                fail_msg("%d threads: part %d saw %d unfinished phases", n, i, t.errors[i]);
        cpu_pool_barrier(NULL); /* no-op */
        cpu_pool_free(t.p);
    }
}

static void test_range(void **state) {
    (void)state;
    const int64_t ns[] = {0, 1, 15, 16, 17, 100, 4096, 4097};
    for (size_t a = 0; a < NI_ARRAY_LEN(ns); a++)
        for (int nth = 1; nth <= 5; nth++)
            for (int64_t align = 1; align <= 32; align *= 4) {
                int64_t next = 0;
                for (int i = 0; i < nth; i++) {
                    int64_t lo, hi;
                    cpu_pool_range(ns[a], align, i, nth, &lo, &hi);
                    if (lo != next || hi < lo || (hi != ns[a] && hi % align))
                        fail_msg("n %lld align %lld part %d/%d: [%lld, %lld), expected "
                                 "start %lld",
                                 (long long)ns[a], (long long)align, i, nth, (long long)lo,
                                 (long long)hi, (long long)next);
                    next = hi;
                }
                assert_int_equal(next, ns[a]);
            }
}

int main(void) {
    alarm(120); /* a lost wake-up hangs: fail instead */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_serial),
        cmocka_unit_test(test_many_tasks),
        cmocka_unit_test(test_sleep_wake),
        cmocka_unit_test(test_barrier),
        cmocka_unit_test(test_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
