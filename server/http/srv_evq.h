/*
 * srv_evq.h - the queue that carries engine events from the engine thread to
 * the loop (srv_engine.c owns the two queues and their lock).
 *
 * Design: capacity is fixed when the queue is allocated, and srv_evq_push
 * never allocates: an event that does not fit is refused (NI_ERANGE) and the
 * producer waits for the consumer to drain (backpressure), so no event - a
 * finish above all, whose loss would leak its request - is ever dropped for
 * lack of memory. Text is copied into the queue's own arena.
 */
#ifndef NI_SRV_EVQ_H
#define NI_SRV_EVQ_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"

/* One engine event, copied on the engine thread. text lives in the queue's arena. */
typedef struct ev_rec {
    uint64_t id;
    int index, token, finish, n_prompt, n_generated, n_cached;
    int error; /* eng_event.error */
    double t;
    size_t text_off;
    int text_len;
    int has_lp;
    smp_result lp;
} ev_rec;

typedef struct ev_queue {
    ev_rec *v;
    size_t n, cap;
    char *text;
    size_t text_len, text_cap;
    uint64_t lost; /* events dropped: only once the server is stopping */
    uint64_t cut;  /* events whose text was longer than the whole arena (cut to it) */
} ev_queue;

/* Allocates room for cap events and text_cap bytes of text (both >= 1) into a
 * zeroed q. Returns 0 or NI_ENOMEM (q then holds nothing). */
int srv_evq_alloc(ev_queue *q, size_t cap, size_t text_cap);

/* Copies ev (stamped t) into q. Returns 0, or NI_ERANGE when it does not fit
 * (q unchanged). Never allocates. An event whose text alone exceeds the
 * arena is stored when q is empty, its text cut to the arena (q->cut counts
 * it), so that every event fits an empty queue. */
int srv_evq_push(ev_queue *q, const eng_event *ev, double t);

/* Empties q, keeping its memory (the consumer, after applying the events). */
void srv_evq_clear(ev_queue *q);

/* Frees q's memory and zeroes it. */
void srv_evq_free(ev_queue *q);

#endif
