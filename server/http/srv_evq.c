/*
 * srv_evq.c - the fixed-capacity engine event queue (see srv_evq.h).
 */
#include "srv_evq.h"

#include <stdlib.h>
#include <string.h>

#include "engine/util/util.h"

int srv_evq_alloc(ev_queue *q, size_t cap, size_t text_cap) {
    memset(q, 0, sizeof *q);
    if (cap < 1 || text_cap < 1) return NI_EINVAL;
    q->v = malloc(cap * sizeof *q->v);
    q->text = malloc(text_cap);
    if (!q->v || !q->text) {
        srv_evq_free(q);
        return NI_ENOMEM;
    }
    q->cap = cap;
    q->text_cap = text_cap;
    return 0;
}

int srv_evq_push(ev_queue *q, const eng_event *ev, double t) {
    size_t tl = ev->text_len > 0 ? (size_t)ev->text_len : 0;
    if (q->n == q->cap) return NI_ERANGE;
    if (q->text_len + tl > q->text_cap) {
        if (q->n > 0) return NI_ERANGE; /* wait for the drain */
        tl = q->text_cap;               /* longer than the arena: never fits whole */
        q->cut++;
    }
    ev_rec *r = &q->v[q->n++];
    r->id = ev->id;
    r->index = ev->index;
    r->token = ev->token;
    r->finish = ev->finish;
    r->error = ev->error;
    r->n_prompt = ev->n_prompt;
    r->n_generated = ev->n_generated;
    r->n_cached = ev->n_cached;
    r->t = t;
    r->text_off = q->text_len;
    r->text_len = (int)tl;
    if (tl) memcpy(q->text + q->text_len, ev->text, tl);
    q->text_len += tl;
    r->has_lp = ev->lp != NULL;
    if (ev->lp) r->lp = *ev->lp;
    return 0;
}

void srv_evq_clear(ev_queue *q) {
    q->n = 0;
    q->text_len = 0;
}

void srv_evq_free(ev_queue *q) {
    free(q->v);
    free(q->text);
    memset(q, 0, sizeof *q);
}
