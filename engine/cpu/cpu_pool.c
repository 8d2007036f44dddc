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

struct cpu_pool {
    int n;           /* threads per task, the caller included */
    int64_t spin_ns; /* idle spin before a worker sleeps */
    pthread_t *th;   /* [n - 1] */
    int n_started;
    _Atomic uint32_t gen; /* futex word: bumped once per task */
    atomic_int n_sleeping;
    atomic_int n_done;
    atomic_int stop;
    /* the current task: written by the caller before gen is bumped */
    cpu_task_fn fn;
    void *ctx;
    int nth;
    uint64_t handoffs;
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

/* Returns the new generation once gen != seen: spins for spin_ns, then
 * sleeps until woken (and spins again after each wake-up). */
static uint32_t wait_gen(cpu_pool *p, uint32_t seen) {
    int64_t t0 = now_ns();
    for (unsigned k = 1;; k++) {
        uint32_t g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen) return g;
        if (k % 64 == 0 && now_ns() - t0 > p->spin_ns) {
            atomic_fetch_add(&p->n_sleeping, 1);
            if (atomic_load(&p->gen) == seen) futex_wait(&p->gen, seen);
            atomic_fetch_sub(&p->n_sleeping, 1);
            t0 = now_ns();
        } else {
            _mm_pause();
        }
    }
}

static void *worker_main(void *arg) {
    worker_arg *a = arg;
    cpu_pool *p = a->p;
    const int i = a->i;
    free(a);
    uint32_t seen = 0;
    for (;;) {
        seen = wait_gen(p, seen);
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        if (i < p->nth) p->fn(p->ctx, i, p->nth);
        atomic_fetch_add_explicit(&p->n_done, 1, memory_order_release);
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
    if (atomic_load(&p->n_sleeping) > 0) futex_wake_all(&p->gen);
    fn(ctx, 0, nth);
    const int want = p->n - 1;
    const int64_t t0 = now_ns();
    for (unsigned k = 1; atomic_load_explicit(&p->n_done, memory_order_acquire) < want; k++) {
        /* a worker descheduled by an oversubscribed machine: let it run */
        if (k % 64 == 0 && now_ns() - t0 > p->spin_ns)
            sched_yield();
        else
            _mm_pause();
    }
}

void cpu_pool_range(int64_t n, int64_t align, int ith, int nth, int64_t *lo, int64_t *hi) {
    if (align < 1) align = 1;
    const int64_t units = (n + align - 1) / align;
    *lo = NI_MIN(n, units * ith / nth * align);
    *hi = NI_MIN(n, units * (ith + 1) / nth * align);
}
