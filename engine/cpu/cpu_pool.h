/*
 * cpu_pool.h - the CPU backend's compute thread pool.
 *
 * Design: n - 1 persistent workers plus the calling thread run one task at a
 * time: cpu_pool_run(p, fn, ctx) calls fn(ctx, i, n) once for every i in
 * [0, n) (i = 0 on the caller) and returns when all calls have returned. A
 * hand-off is one atomic increment of a generation counter; workers spin on
 * it (with pause) for a bounded time after their last task, then sleep on a
 * futex, so back-to-back tasks of one forward pass cost well under a
 * microsecond each while an idle server keeps its workers asleep (no CPU).
 * The caller never sleeps: it spins until the last worker finishes. Inside
 * a task, cpu_pool_barrier separates dependent steps, so a whole forward
 * pass can be one task: one hand-off, then barriers (tens of nanoseconds
 * when every thread is running) instead of a wake-up per op.
 *
 * Invariants: one thread calls cpu_pool_run at a time (the engine thread);
 * tasks must not call cpu_pool_run themselves; fn is called with the same
 * (ctx, n) on every thread, and the partition of work by i is the task's
 * business (cpu_pool_range is the static one most tasks use), so results do
 * not depend on which thread ran which part. A pool of 1 thread (or a NULL
 * pool) runs fn(ctx, 0, 1) on the caller: the same code path, serial.
 */
#ifndef NI_CPU_POOL_H
#define NI_CPU_POOL_H

#include <stdint.h>

typedef struct cpu_pool cpu_pool;

/* Part ith of nth of an op's work (0 <= ith < nth): what a task passes to
 * the ops it calls (cpu_ops.h, cpu_q8.h). */
typedef struct cpu_part {
    int ith;
    int nth;
} cpu_part;

/* The whole of an op's work, on the calling thread. */
#define CPU_SERIAL ((cpu_part){0, 1})

/* One part of a task: thread ith of nth. */
typedef void (*cpu_task_fn)(void *ctx, int ith, int nth);

/* Starts n_threads - 1 workers (n_threads >= 1; 0 = every online core).
 * spin_us: how long an idle worker spins before it sleeps (0 = default,
 * 200 us; the gap between the tasks of one forward is far shorter).
 * Returns 0, NI_EINVAL or NI_ENOMEM / NI_EIO (thread creation failed; no
 * thread is left running). */
int cpu_pool_init(cpu_pool **out, int n_threads, int spin_us);

/* Stops and joins the workers; safe on NULL. */
void cpu_pool_free(cpu_pool *p);

/* Threads that run each task (the caller included); 1 for a NULL pool. */
int cpu_pool_threads(const cpu_pool *p);

/* Runs fn(ctx, i, nth) for every i < nth on nth threads, the caller taking
 * i = 0, where nth = min(max_parts, cpu_pool_threads(p)) (max_parts <= 0:
 * every thread). Returns when every call has returned. */
void cpu_pool_run(cpu_pool *p, cpu_task_fn fn, void *ctx, int max_parts);

/* Waits until all nth threads of the current task have called it (a
 * spinning barrier; no-op for a 1-thread task or a NULL pool). Every thread
 * of the task must make the same sequence of calls. Writes made before the
 * barrier are visible to every thread after it. */
void cpu_pool_barrier(cpu_pool *p);

/* The static partition of [0, n) into nth contiguous ranges, in units of
 * `align` elements (the last range takes the remainder): part ith is
 * [*lo, *hi), possibly empty. */
void cpu_pool_range(int64_t n, int64_t align, int ith, int nth, int64_t *lo, int64_t *hi);

/* Workers asleep on the futex right now (tests: an idle pool ends with
 * every worker asleep). */
int cpu_pool_sleeping(const cpu_pool *p);

/* Part pt's whole rows [*lo, *hi) of n: the one split every row op uses
 * (cpu_ops.h, cpu_q8.h, the forward pass), which is what lets a part chain
 * row ops on its own rows without a barrier between them. */
static inline void cpu_part_rows(cpu_part pt, int n, int *lo, int *hi) {
    int64_t l, h;
    cpu_pool_range(n, 1, pt.ith, pt.nth, &l, &h);
    *lo = (int)l;
    *hi = (int)h;
}

/* Tasks handed to the workers since init (tests: a 1-thread pool hands
 * none off). */
uint64_t cpu_pool_handoffs(const cpu_pool *p);

#endif
