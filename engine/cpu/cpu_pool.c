/*
 * cpu_pool.c - spin-then-sleep compute thread pool (see cpu_pool.h).
 *
 * Hand-off protocol. The caller publishes (fn, ctx, nth), resets n_done and
 * increments gen (seq_cst); a worker that sees gen change runs its part and
 * increments n_done; the caller returns once n_done == n - 1, so every
 * worker has finished with (fn, ctx) before the caller can publish the next
 * task. Sleeping: a worker that has spun for spin_ns increments n_sleeping
 * (seq_cst) and then futex-waits on gen while it still holds the old value;
 * the caller, after its seq_cst increment of gen, wakes the futex when
 * n_sleeping > 0. Of the two seq_cst writes each side reads the other's, so
 * either the worker's futex_wait sees the new gen (and returns at once) or
 * the caller sees the sleeper (and wakes it): no lost wake-up.
 */
#include "cpu_pool.h"

#include <errno.h>
#include <immintrin.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "engine/util/util.h"

#define DEFAULT_SPIN_US 200
/* Inside a task, waits at a barrier or for the workers to finish take
 * microseconds while every thread runs; longer means a thread lost its core
 * (a busy machine), and sleeping then hands the core over to it. */
#define BARRIER_SPIN_NS 20000

struct cpu_pool {
    int n;           /* threads per task, the caller included */
    int64_t spin_ns; /* idle spin before a worker sleeps */
    pthread_t *th;   /* [n - 1] */
    int n_started;
    _Atomic uint32_t gen; /* futex word: bumped once per task */
    atomic_int n_sleeping;
    _Atomic uint32_t n_done; /* futex word: workers done with the current task */
    atomic_int done_sleepers;
    atomic_int stop;
    /* the current task: written by the caller before gen is bumped */
    cpu_task_fn fn;
    void *ctx;
    int nth;
    uint64_t handoffs;
    /* barrier of the current task: arrivals, and a generation bumped by the
     * last arrival (sense reversal without a per-thread sense) */
    atomic_int bar_n;
    _Atomic uint32_t bar_gen; /* futex word */
    atomic_int bar_sleepers;
};

typedef struct worker_arg {
    cpu_pool *p;
    int i;
} worker_arg;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void futex_wait(_Atomic uint32_t *w, uint32_t val) {
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *w) {
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Returns *w once it differs from val: spins (with pause) for spin_ns, then
 * sleeps on the futex, counted in *sleepers so that the writer knows to wake
 * it, and spins again after each wake-up. The writer changes *w with a
 * seq_cst RMW and then calls wake(): of the two seq_cst writes (its change,
 * the sleeper count) each side reads the other's, so no wake-up is lost. */
static uint32_t wait_change(_Atomic uint32_t *w, uint32_t val, atomic_int *sleepers,
                            int64_t spin_ns) {
    int64_t t0 = now_ns();
    for (unsigned k = 1;; k++) {
        uint32_t v = atomic_load_explicit(w, memory_order_acquire);
        if (v != val) return v;
        if (k % 64 == 0 && now_ns() - t0 > spin_ns) {
            atomic_fetch_add(sleepers, 1);
            if (atomic_load(w) == val) futex_wait(w, val);
            atomic_fetch_sub(sleepers, 1);
            t0 = now_ns();
        } else {
            _mm_pause();
        }
    }
}

static void wake(_Atomic uint32_t *w, atomic_int *sleepers) {
    if (atomic_load(sleepers) > 0) futex_wake_all(w);
}

static void *worker_main(void *arg) {
    worker_arg *a = arg;
    cpu_pool *p = a->p;
    const int i = a->i;
    free(a);
    uint32_t seen = 0;
    for (;;) {
        seen = wait_change(&p->gen, seen, &p->n_sleeping, p->spin_ns);
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        if (i < p->nth) p->fn(p->ctx, i, p->nth);
        atomic_fetch_add(&p->n_done, 1);
        wake(&p->n_done, &p->done_sleepers);
    }
    return NULL;
}

static int online_cores(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void stop_workers(cpu_pool *p) {
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    futex_wake_all(&p->gen);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->th[i], NULL);
    p->n_started = 0;
}

int cpu_pool_init(cpu_pool **out, int n_threads, int spin_us) {
    *out = NULL;
    if (n_threads < 0 || spin_us < 0) return NI_EINVAL;
    if (n_threads == 0) n_threads = online_cores();
    cpu_pool *p = calloc(1, sizeof *p);
    if (!p) return NI_ENOMEM;
    p->n = n_threads;
    p->spin_ns = (int64_t)(spin_us ? spin_us : DEFAULT_SPIN_US) * 1000;
    if (n_threads > 1) {
        p->th = calloc((size_t)n_threads - 1, sizeof *p->th);
        if (!p->th) {
            free(p);
            return NI_ENOMEM;
        }
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (a) *a = (worker_arg){p, i};
        int rc = a ? pthread_create(&p->th[i - 1], NULL, worker_main, a) : ENOMEM;
        if (rc) {
            free(a);
            stop_workers(p);
            free(p->th);
            free(p);
            return rc == ENOMEM ? NI_ENOMEM : NI_EIO;
        }
        p->n_started++;
    }
    *out = p;
    return 0;
}

void cpu_pool_free(cpu_pool *p) {
    if (!p) return;
    stop_workers(p);
    free(p->th);
    free(p);
}

int cpu_pool_threads(const cpu_pool *p) { return p ? p->n : 1; }

uint64_t cpu_pool_handoffs(const cpu_pool *p) { return p ? p->handoffs : 0; }

int cpu_pool_sleeping(const cpu_pool *p) {
    return p ? atomic_load(&((cpu_pool *)p)->n_sleeping) : 0;
}

void cpu_pool_run(cpu_pool *p, cpu_task_fn fn, void *ctx, int max_parts) {
    int nth = p ? p->n : 1;
    if (max_parts > 0 && max_parts < nth) nth = max_parts;
    if (nth <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->nth = nth;
    p->handoffs++;
    atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
    atomic_fetch_add(&p->gen, 1); /* seq_cst: publishes the task (see the header comment) */
    wake(&p->gen, &p->n_sleeping);
    fn(ctx, 0, nth);
    const uint32_t want = (uint32_t)p->n - 1;
    for (uint32_t v = atomic_load_explicit(&p->n_done, memory_order_acquire); v < want;)
        v = wait_change(&p->n_done, v, &p->done_sleepers, BARRIER_SPIN_NS);
}

void cpu_pool_barrier(cpu_pool *p) {
    if (!p || p->nth <= 1) return;
    const uint32_t g = atomic_load_explicit(&p->bar_gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&p->bar_n, 1, memory_order_acq_rel) == p->nth - 1) {
        atomic_store_explicit(&p->bar_n, 0, memory_order_relaxed);
        atomic_fetch_add(&p->bar_gen, 1);
        wake(&p->bar_gen, &p->bar_sleepers);
        return;
    }
    wait_change(&p->bar_gen, g, &p->bar_sleepers, BARRIER_SPIN_NS);
}

void cpu_pool_range(int64_t n, int64_t align, int ith, int nth, int64_t *lo, int64_t *hi) {
    if (align < 1) align = 1;
    const int64_t units = (n + align - 1) / align;
    *lo = NI_MIN(n, units * ith / nth * align);
    *hi = NI_MIN(n, units * (ith + 1) / nth * align);
}
