/*
 * srv_server.c - `nanoinfer serve`: the OpenAI-compatible HTTP daemon.
 *
 * Threads (see docs/design.md):
 *   loop thread (main)  owns the libuv loop, libmicrohttpd (MHD), every
 *                       connection and request object, the metrics, and the
 *                       tokenizer calls made while parsing requests;
 *   engine thread       loads the model, then loops
 *                         while (running) { heartbeat; n = eng_step(); publish stats;
 *                                           if (n == 0) eng_wait_work(50 ms); }
 *                       It never touches HTTP state.
 * Crossings: loop -> engine through eng_add/eng_abort (the engine's locked
 * inbox); engine -> loop through on_engine_event, which copies each event
 * into a mutex-protected queue and calls uv_async_send. Async sends coalesce,
 * so on_async drains EVERYTHING queued per wake-up. The engine publishes an
 * eng_stats snapshot (under snap_mu) and a heartbeat (atomic) every iteration
 * for /metrics and /health.
 *
 * MHD runs in external-event mode with its own epoll set (MHD_USE_EPOLL, no
 * internal thread): the loop watches MHD's epoll fd with a uv_poll_t and
 * calls MHD_run when it is readable, when the uv_timer armed from
 * MHD_get_timeout fires, and after resuming connections.
 *
 * A generation request (srv_gen) is parsed, tokenized and handed to eng_add
 * inside the access handler. Then:
 *   streaming      a 200 text/event-stream response is queued whose content
 *                  reader copies from the connection's output buffer; when
 *                  the buffer is empty the reader suspends the connection
 *                  and returns 0; each event drained by on_async appends SSE
 *                  chunks and resumes it.
 *   non-streaming  the connection is suspended in the access handler; when
 *                  the last event arrives the JSON body is built and the
 *                  connection resumed; MHD calls the access handler again,
 *                  which queues it.
 * Disconnects: MHD reports the end of every request through the completed
 * callback (also when a write fails); a suspended connection is invisible to
 * MHD, so a 200 ms sweep peeks (MSG_PEEK) at the sockets of suspended
 * connections and, on EOF/error, aborts the request and resumes the
 * connection so that MHD closes it. A request whose client is gone is
 * eng_abort()ed, which frees its KV blocks within the next engine step.
 * Slow readers: output buffered per connection is bounded
 * (max-stream-buffer); past it the request is aborted and the socket shut
 * down.
 *
 * Lifetimes: srv_conn is created on the first access-handler call and freed
 * only in MHD's request-completed callback. srv_gen lives until both its
 * connection has completed AND the engine has finished it (every choice
 * reported a finish); events are looked up by request id, never through a
 * pointer the engine holds, so a late event for a freed request is dropped.
 *
 * Shutdown (SIGTERM/SIGINT): stop accepting (MHD_quiesce_daemon), answer new
 * requests on kept-alive connections with 503, let in-flight requests finish
 * for up to shutdown-timeout, then abort the rest; once none is left, resume
 * whatever is suspended, stop MHD, stop and join the engine thread, exit 0.
 * A second signal skips the wait.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "engine/backend/backend.h"
#include "tokenizer/chat.h"
#include "engine/engine.h"
#include "engine/model/model.h"
#include "engine/util/util.h"
#include "tokenizer/tok.h"
#include "srv_server.h"
#include "srv_api.h"
#include "srv_config.h"
#include "srv_log.h"
#include "srv_metrics.h"
#include "srv_util.h"

#define SWEEP_MS 200        /* disconnect sweep of suspended connections */
#define GEN_BUCKETS 1024    /* id -> srv_gen hash buckets (power of two) */
#define FINAL_GRACE_MS 5000 /* after the shutdown timeout aborted everything */
#define DISCARD_FACTOR 16   /* oversized chunked uploads: read at most this x max-body */

enum { ST_LOADING = 0, ST_READY = 1, ST_FAILED = 2 };

enum route {
    R_NONE,
    R_HEALTH,
    R_METRICS,
    R_MODELS,
    R_MODEL,
    R_COMPLETIONS,
    R_CHAT,
    R_TOKENIZE,
    R_DETOKENIZE
};

/* One engine event, copied on the engine thread. text lives in the queue's arena. */
typedef struct ev_rec {
    uint64_t id;
    int index, token, finish, n_prompt, n_generated, n_cached;
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
    uint64_t lost; /* events dropped for lack of memory */
} ev_queue;

typedef struct srv_server srv_server;
typedef struct srv_conn srv_conn;

typedef struct srv_choice {
    srv_buf text; /* non-streaming: the generated text */
    srv_lp lp;    /* logprobs (streaming: per chunk; else accumulated) */
    int finish;   /* enum eng_finish, 0 while generating */
    int n_gen;
    double t_last; /* time of the previous token (inter-token latency) */
} srv_choice;

typedef struct srv_gen {
    uint64_t id;  /* engine request id (unique, never reused) */
    char rid[64]; /* "cmpl-..." / "chatcmpl-..." */
    long long created;
    srv_gen_req rq;
    srv_conn *conn;  /* NULL once the HTTP request completed */
    int engine_live; /* the engine may still send events */
    int abort_sent;
    int shutdown_abort; /* aborted by the shutdown timeout */
    int any_error;
    int forked_seen; /* an event for index > 0 arrived */
    int n_finished;
    int n_prompt, n_cached, completion_tokens;
    double t_arrival, t_first;
    srv_choice ch[ENG_MAX_N];
    struct srv_gen *hnext;
} srv_gen;

struct srv_conn {
    srv_server *s;
    struct MHD_Connection *mc;
    int route;
    char method[16];
    char path[160];
    char client[64];
    double t_start;
    srv_buf body;
    size_t discarded; /* bytes dropped after the body exceeded max-body */
    int too_big;
    int status;   /* status of the queued response, 0 = none yet */
    srv_gen *gen; /* generation request, until completion */
    int streaming;
    srv_buf out;  /* SSE bytes not yet handed to MHD */
    int out_done; /* everything, [DONE] included, is in out */
    int suspended;
    int kill;         /* end the response with an error at the next MHD callback */
    char *final_body; /* non-streaming result, queued when resumed */
    size_t final_len;
    int final_status;
    int prompt_tokens, completion_tokens;
    char rid[64];
    srv_conn *prev, *next; /* all live srv_conn */
};

struct srv_server {
    srv_config cfg;
    uv_loop_t loop;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer, sweep_timer, shutdown_timer, stop_timer;
    uv_async_t async;
    uv_signal_t sig_term, sig_int;
    struct MHD_Daemon *mhd;
    int listen_fd;
    int port;
    int need_run; /* connections were resumed: call MHD_run */

    /* engine side */
    pthread_t eng_thread;
    int eng_thread_started;
    atomic_int state; /* ST_* (release on READY) */
    atomic_int running;
    atomic_llong heartbeat_us;
    mdl_model model;
    eng_engine *eng;
    const eng_backend *backend;
    char fail_msg[512];
    double load_seconds;
    pthread_mutex_t snap_mu;
    eng_stats snap;
    int snap_valid;

    /* engine -> loop events */
    pthread_mutex_t evq_mu;
    ev_queue evq;      /* filled by the engine thread */
    ev_queue evq_loop; /* drained by the loop */

    /* loop state */
    int ready_seen, fail_seen;
    srv_api_ctx api;
    char model_name[256];
    srv_gen *gens[GEN_BUCKETS];
    int n_live_gens; /* engine_live generations */
    int n_gen_conns; /* connections that carry a generation */
    srv_conn *conns;
    uint64_t next_id;
    srv_rng rng;
    srv_metrics metrics;
    long long start_time;
    int draining, stopping, exit_code, shutdown_aborted;
    int poll_inited;
};

static double now_s(void) { return ni_now(); }

/* ================= engine thread ================= */

static void evq_free(ev_queue *q) {
    free(q->v);
    free(q->text);
    memset(q, 0, sizeof *q);
}

/* Engine thread: copy the event (its pointers are only valid during the call). */
static void on_engine_event(void *ud, const eng_event *ev) {
    srv_server *s = ud;
    double t = now_s();
    pthread_mutex_lock(&s->evq_mu);
    ev_queue *q = &s->evq;
    int ok = 1;
    if (q->n == q->cap) {
        size_t nc = q->cap ? q->cap * 2 : 256;
        ev_rec *p = realloc(q->v, nc * sizeof *p);
        if (p)
            q->v = p, q->cap = nc;
        else
            ok = 0;
    }
    size_t tl = ev->text_len > 0 ? (size_t)ev->text_len : 0;
    if (ok && q->text_len + tl > q->text_cap) {
        size_t nc = q->text_cap ? q->text_cap : 4096;
        while (nc < q->text_len + tl) nc *= 2;
        char *p = realloc(q->text, nc);
        if (p)
            q->text = p, q->text_cap = nc;
        else
            ok = 0;
    }
    if (ok) {
        ev_rec *r = &q->v[q->n++];
        r->id = ev->id;
        r->index = ev->index;
        r->token = ev->token;
        r->finish = ev->finish;
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
    } else {
        q->lost++;
    }
    pthread_mutex_unlock(&s->evq_mu);
    uv_async_send(&s->async);
}

static void publish_stats(srv_server *s) {
    eng_stats st;
    eng_get_stats(s->eng, &st);
    pthread_mutex_lock(&s->snap_mu);
    s->snap = st;
    s->snap_valid = 1;
    pthread_mutex_unlock(&s->snap_mu);
}

static void heartbeat(srv_server *s) {
    atomic_store_explicit(&s->heartbeat_us, (long long)(now_s() * 1e6), memory_order_relaxed);
}

static void *engine_main(void *arg) {
    srv_server *s = arg;
    char err[512];
    double t0 = now_s();
    heartbeat(s);
    int rc = mdl_load(&s->model, s->cfg.model, err, sizeof err);
    if (!rc && !s->model.tok)
        rc = ni_fail(err, sizeof err, NI_EFORMAT, "%s: the model has no tokenizer", s->cfg.model);
    if (!rc) {
        eng_config ec;
        eng_config_default(&ec);
        ec.max_num_seqs = s->cfg.max_num_seqs;
        ec.max_batched_tokens = s->cfg.max_batched_tokens;
        ec.prefill_chunk = s->cfg.prefill_chunk;
        ec.block_size = s->cfg.block_size;
        ec.n_blocks = s->cfg.kv_blocks;
        ec.prefix_cache = !s->cfg.no_prefix_cache;
        ec.n_threads = s->cfg.threads;
        ec.max_seq_len = s->cfg.max_model_len;
        ec.mem_util = s->cfg.gpu_memory_utilization;
        s->backend = eng_backend_select(s->cfg.backend,
                                        strcmp(s->cfg.dtype, "auto") ? s->cfg.dtype : NULL, err,
                                        sizeof err);
        rc = s->backend ? eng_init(&s->eng, &s->model, s->backend, &ec, on_engine_event, s, err,
                                   sizeof err)
                        : NI_EINVAL;
    }
    if (rc) {
        snprintf(s->fail_msg, sizeof s->fail_msg, "%s", err);
        atomic_store_explicit(&s->state, ST_FAILED, memory_order_release);
        uv_async_send(&s->async);
        return NULL;
    }
    s->load_seconds = now_s() - t0;
    publish_stats(s);
    atomic_store_explicit(&s->state, ST_READY, memory_order_release);
    uv_async_send(&s->async);
    while (atomic_load_explicit(&s->running, memory_order_acquire)) {
        heartbeat(s);
        int n = eng_step(s->eng);
        publish_stats(s);
        if (n < 0) srv_log(SRV_LOG_ERROR, "engine step failed: %s", ni_strerror(n));
        if (n == 0) eng_wait_work(s->eng, 50);
    }
    return NULL;
}

static int is_ready(srv_server *s) {
    return atomic_load_explicit(&s->state, memory_order_acquire) == ST_READY && s->ready_seen;
}

/* 1 when the engine loop is alive: heartbeat younger than health-timeout. */
static int engine_alive(srv_server *s) {
    double hb = (double)atomic_load_explicit(&s->heartbeat_us, memory_order_relaxed) / 1e6;
    return now_s() - hb <= s->cfg.health_timeout;
}

static int get_snapshot(srv_server *s, eng_stats *st) {
    pthread_mutex_lock(&s->snap_mu);
    int ok = s->snap_valid;
    if (ok) *st = s->snap;
    pthread_mutex_unlock(&s->snap_mu);
    return ok;
}

/* ================= MHD driving ================= */

static void on_mhd_timer(uv_timer_t *t);

static void mhd_schedule(srv_server *s) {
    if (!s->mhd) return;
    MHD_UNSIGNED_LONG_LONG to = 0;
    if (s->need_run)
        to = 0;
    else if (MHD_get_timeout(s->mhd, &to) != MHD_YES) {
        uv_timer_stop(&s->mhd_timer);
        return;
    }
    if (to > 60000) to = 60000;
    uv_timer_start(&s->mhd_timer, on_mhd_timer, (uint64_t)to, 0);
}

static void mhd_run(srv_server *s) {
    if (!s->mhd) return;
    s->need_run = 0;
    MHD_run(s->mhd);
    mhd_schedule(s);
}

static void on_mhd_timer(uv_timer_t *t) { mhd_run(t->data); }

static void on_mhd_poll(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    mhd_run(p->data);
}

static int conn_fd(srv_conn *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

static void conn_resume(srv_conn *c) {
    if (!c->suspended) return;
    c->suspended = 0;
    MHD_resume_connection(c->mc);
    c->s->need_run = 1;
}

static void conn_suspend(srv_conn *c) {
    if (c->suspended) return;
    c->suspended = 1;
    MHD_suspend_connection(c->mc);
}

/* ================= generations ================= */

static srv_gen *gen_find(srv_server *s, uint64_t id) {
    for (srv_gen *g = s->gens[id & (GEN_BUCKETS - 1)]; g; g = g->hnext)
        if (g->id == id) return g;
    return NULL;
}

static void gen_free(srv_server *s, srv_gen *g) {
    srv_gen **pp = &s->gens[g->id & (GEN_BUCKETS - 1)];
    while (*pp && *pp != g) pp = &(*pp)->hnext;
    if (*pp) *pp = g->hnext;
    if (g->engine_live) {
        s->n_live_gens--;
        s->metrics.requests_in_flight--;
    }
    for (int i = 0; i < ENG_MAX_N; i++) {
        srv_buf_free(&g->ch[i].text);
        srv_lp_free(&g->ch[i].lp);
    }
    srv_gen_req_free(&g->rq);
    free(g);
}

static void gen_abort(srv_server *s, srv_gen *g, int reason) {
    if (!g->engine_live || g->abort_sent) return;
    g->abort_sent = 1;
    s->metrics.aborted[reason]++;
    if (s->eng) eng_abort(s->eng, g->id);
}

/* Ends the HTTP side of c with an error: aborts its request, shuts the socket
 * down so MHD notices even while it waits to write, resumes it if suspended. */
static void conn_kill(srv_conn *c, int reason) {
    if (c->kill) return;
    c->kill = 1;
    if (c->gen) gen_abort(c->s, c->gen, reason);
    int fd = conn_fd(c);
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
    conn_resume(c);
}

/* Appends one SSE event for obj (stolen) to c's output; a full buffer means a
 * slow reader: the request is aborted and the connection closed. */
static void conn_sse(srv_conn *c, json_t *obj) {
    if (c->kill) {
        json_decref(obj);
        return;
    }
    int rc = srv_sse_event(&c->out, obj);
    json_decref(obj);
    if (rc == NI_ERANGE) {
        srv_log(SRV_LOG_WARN, "%s: client reads too slowly (over %lld buffered bytes); aborting", c->rid,
                c->s->cfg.max_stream_buffer);
        conn_kill(c, SRV_ABORT_SLOW_READER);
        return;
    }
    if (rc) {
        conn_kill(c, SRV_ABORT_DISCONNECT);
        return;
    }
    conn_resume(c);
}

static json_t *stream_chunk(srv_gen *g, json_t *choice, int usage_null) {
    json_t *o = srv_api_envelope(g->rq.kind, 1, g->rid, g->created, g->conn->s->model_name);
    json_t *arr = json_array();
    if (!o || !arr || !choice) {
        json_decref(o);
        json_decref(arr);
        json_decref(choice);
        return NULL;
    }
    json_array_append_new(arr, choice);
    json_object_set_new(o, "choices", arr);
    if (usage_null) json_object_set_new(o, "usage", json_null());
    return o;
}

/* Builds the final non-streaming body into c->final_body. */
static void build_final(srv_server *s, srv_gen *g, srv_conn *c) {
    json_t *o = NULL;
    srv_api_error e;
    if (g->any_error) {
        srv_api_fail(&e, 500, NULL, "generation failed inside the engine (see the server log)");
    } else if (g->shutdown_abort) {
        srv_api_fail(&e, 503, NULL, "the server is shutting down; request aborted");
    } else {
        o = srv_api_envelope(g->rq.kind, 0, g->rid, g->created, s->model_name);
        json_t *arr = json_array();
        for (int i = 0; o && arr && i < g->rq.n; i++) {
            srv_choice *ch = &g->ch[i];
            json_t *choice;
            if (g->rq.echo) {
                srv_buf t = {0};
                int rc = srv_buf_append(&t, g->rq.echo_text, g->rq.echo_len);
                if (!rc) rc = srv_buf_append(&t, srv_buf_ptr(&ch->text), srv_buf_size(&ch->text));
                choice = rc ? NULL
                            : srv_api_choice(g->rq.kind, 0, i, srv_buf_ptr(&t), srv_buf_size(&t), 0,
                                             srv_lp_take(&ch->lp), srv_api_finish_reason(ch->finish));
                srv_buf_free(&t);
            } else {
                choice = srv_api_choice(g->rq.kind, 0, i, srv_buf_ptr(&ch->text), srv_buf_size(&ch->text), 0,
                                        srv_lp_take(&ch->lp), srv_api_finish_reason(ch->finish));
            }
            if (!choice) {
                json_decref(arr);
                arr = NULL;
                break;
            }
            json_array_append_new(arr, choice);
        }
        if (o && arr) {
            json_object_set_new(o, "choices", arr);
            json_object_set_new(o, "usage", srv_api_usage(g->n_prompt, g->completion_tokens, g->n_cached));
        } else {
            json_decref(o);
            json_decref(arr);
            o = NULL;
            srv_api_fail(&e, 500, NULL, "out of memory building the response");
        }
    }
    int status = o ? 200 : e.status;
    if (!o) o = srv_api_error_json(&e);
    char *txt = o ? json_dumps(o, SRV_JSON_FLAGS) : NULL;
    json_decref(o);
    if (!txt) {
        conn_kill(c, SRV_ABORT_DISCONNECT);
        return;
    }
    c->final_body = txt;
    c->final_len = strlen(txt);
    c->final_status = status;
}

/* All choices finished: the engine holds nothing of g any more. */
static void gen_engine_done(srv_server *s, srv_gen *g) {
    g->engine_live = 0;
    s->n_live_gens--;
    s->metrics.requests_in_flight--;
    if (!g->shutdown_abort && !g->abort_sent) srv_hist_observe(&s->metrics.e2e, now_s() - g->t_arrival);
    srv_conn *c = g->conn;
    if (!c) {
        gen_free(s, g);
        return;
    }
    c->prompt_tokens = g->n_prompt;
    c->completion_tokens = g->completion_tokens;
    if (c->kill) return;
    if (g->rq.stream) {
        if (g->any_error) {
            srv_api_error e;
            srv_api_fail(&e, 500, NULL, "generation failed inside the engine (see the server log)");
            conn_sse(c, srv_api_error_json(&e));
        }
        if (g->rq.include_usage && !c->kill) {
            json_t *o = srv_api_envelope(g->rq.kind, 1, g->rid, g->created, s->model_name);
            if (o) {
                json_object_set_new(o, "choices", json_array());
                json_object_set_new(o, "usage",
                                    srv_api_usage(g->n_prompt, g->completion_tokens, g->n_cached));
            }
            conn_sse(c, o);
        }
        if (!c->kill) {
            if (srv_sse_done(&c->out) == NI_ERANGE) conn_kill(c, SRV_ABORT_SLOW_READER);
            c->out_done = 1;
            conn_resume(c);
        }
    } else {
        build_final(s, g, c);
        conn_resume(c);
    }
}

static void stream_event(srv_server *s, srv_gen *g, int index, const ev_rec *ev, const char *text) {
    srv_conn *c = g->conn;
    json_t *lp = NULL;
    if (ev->has_lp && ev->token >= 0) {
        srv_lp_add(&g->ch[index].lp, s->model.tok, &ev->lp);
        lp = srv_lp_take(&g->ch[index].lp);
    }
    if (ev->text_len > 0 || lp)
        conn_sse(
            c, stream_chunk(g, srv_api_choice(g->rq.kind, 1, index, text, (size_t)ev->text_len, 0, lp, NULL),
                            g->rq.include_usage));
    if (ev->finish && !c->kill)
        conn_sse(c, stream_chunk(g,
                                 srv_api_choice(g->rq.kind, 1, index, NULL, 0, 0, NULL,
                                                srv_api_finish_reason(ev->finish)),
                                 g->rq.include_usage));
}

static void handle_event(srv_server *s, const ev_rec *ev, const char *text) {
    srv_gen *g = gen_find(s, ev->id);
    if (!g || !g->engine_live || ev->index < 0 || ev->index >= g->rq.n) return;
    srv_choice *ch = &g->ch[ev->index];
    if (ev->index > 0) g->forked_seen = 1;
    g->n_prompt = ev->n_prompt;
    g->n_cached = ev->n_cached;
    ch->n_gen = ev->n_generated;
    if (ev->token >= 0) {
        s->metrics.generation_tokens++;
        if (g->t_first == 0) {
            g->t_first = ev->t;
            srv_hist_observe(&s->metrics.ttft, ev->t - g->t_arrival);
        } else if (ch->t_last > 0) {
            srv_hist_observe(&s->metrics.itl, ev->t - ch->t_last);
        }
        ch->t_last = ev->t;
    }
    srv_conn *c = g->conn;
    if (c && !c->kill) {
        if (g->rq.stream) {
            stream_event(s, g, ev->index, ev, text);
        } else {
            if (ev->text_len > 0 && srv_buf_append(&ch->text, text, (size_t)ev->text_len))
                conn_kill(c, SRV_ABORT_DISCONNECT);
            if (ev->has_lp && ev->token >= 0) srv_lp_add(&ch->lp, s->model.tok, &ev->lp);
        }
    }
    if (ev->finish) {
        ch->finish = ev->finish;
        g->n_finished++;
        g->completion_tokens += ev->n_generated;
        if (ev->finish >= 0 && ev->finish < 5) s->metrics.finished[ev->finish]++;
        if (ev->finish == ENG_FINISH_ERROR) g->any_error = 1;
        int unforked_end = (ev->finish == ENG_FINISH_ABORT || ev->finish == ENG_FINISH_ERROR) &&
                           ev->index == 0 && g->rq.n > 1 && !g->forked_seen;
        if (g->n_finished >= g->rq.n || unforked_end) gen_engine_done(s, g);
    }
}

/* ================= responses ================= */

static void add_common_headers(srv_conn *c, struct MHD_Response *r) {
    if (c->rid[0]) MHD_add_response_header(r, "X-Request-Id", c->rid);
    if (c->s->draining) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
}

static void respond_raw(srv_conn *c, int status, char *body, size_t len, const char *ctype) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    add_common_headers(c, r);
    if (status == 405) {
        const char *allow =
            c->route == R_HEALTH || c->route == R_METRICS || c->route == R_MODELS || c->route == R_MODEL
                ? "GET, HEAD"
                : "POST";
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    }
    if (status == 401) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == 429 || status == 503) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (MHD_queue_response(c->mc, (unsigned)status, r) == MHD_YES) {
        c->status = status;
        srv_metrics_response(&c->s->metrics, status);
    }
    MHD_destroy_response(r);
}

/* Queues obj (stolen) as the JSON response. */
static void respond_json(srv_conn *c, int status, json_t *obj) {
    char *txt = obj ? json_dumps(obj, SRV_JSON_FLAGS) : NULL;
    json_decref(obj);
    if (!txt) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"internal_error\","
                                  "\"param\":null,\"code\":null}}";
        txt = strdup(oom);
        status = 500;
        if (!txt) return;
    }
    respond_raw(c, status, txt, strlen(txt), "application/json");
}

static void respond_error(srv_conn *c, const srv_api_error *e) {
    respond_json(c, e->status, srv_api_error_json(e));
}

static void respond_errorf(srv_conn *c, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void respond_errorf(srv_conn *c, int status, const char *param, const char *code, const char *fmt,
                           ...) {
    srv_api_error e;
    srv_api_fail(&e, status, param, "%s", "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    e.code = code;
    respond_error(c, &e);
}

static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    srv_conn *c = cls;
    if (c->kill) return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t avail = srv_buf_size(&c->out);
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, srv_buf_ptr(&c->out), n);
        srv_buf_consume(&c->out, n);
        return (ssize_t)n;
    }
    if (c->out_done) return MHD_CONTENT_READER_END_OF_STREAM;
    conn_suspend(c); /* resumed when the loop appends output */
    return 0;
}

/* ================= handlers ================= */

static void fill_api_ctx(srv_server *s) {
    eng_stats st;
    if (get_snapshot(s, &st)) s->api.kv_tokens = st.kv.blocks_total * s->cfg.block_size;
}

static json_t *parse_body(srv_conn *c) {
    json_error_t je;
    json_t *j = json_loadb(srv_buf_ptr(&c->body), srv_buf_size(&c->body), JSON_ALLOW_NUL, &je);
    if (!j) {
        respond_errorf(c, 400, NULL, NULL, "invalid JSON in the request body: %s (line %d, column %d)",
                       je.text, je.line, je.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        respond_errorf(c, 400, NULL, NULL, "the request body must be a JSON object");
        return NULL;
    }
    return j;
}

static int queue_full(srv_server *s) {
    eng_stats st;
    int waiting_over = s->n_live_gens - s->cfg.max_num_seqs >= s->cfg.max_queue;
    if (waiting_over) return 1;
    if (get_snapshot(s, &st) && st.n_waiting > 0 && st.n_waiting >= s->cfg.max_queue) return 1;
    return 0;
}

static void handle_gen(srv_server *s, srv_conn *c, int kind) {
    json_t *body = parse_body(c);
    if (!body) return;
    fill_api_ctx(s);
    srv_gen *g = calloc(1, sizeof *g);
    if (!g) {
        json_decref(body);
        respond_errorf(c, 500, NULL, NULL, "out of memory");
        return;
    }
    srv_api_error e;
    int rc = srv_api_parse_gen(&s->api, kind, body, &g->rq, &e);
    json_decref(body);
    if (rc) {
        free(g);
        respond_error(c, &e);
        return;
    }
    if (queue_full(s)) {
        srv_gen_req_free(&g->rq);
        free(g);
        respond_errorf(c, 429, NULL, "queue_full",
                       "the server is at capacity (%d requests running or waiting); retry later",
                       s->n_live_gens);
        return;
    }
    g->id = ++s->next_id;
    srv_random_id(&s->rng, kind == SRV_API_CHAT ? "chatcmpl-" : "cmpl-", g->rid, sizeof g->rid);
    g->created = (long long)time(NULL);
    g->t_arrival = c->t_start;
    for (int i = 0; i < g->rq.n; i++) {
        g->ch[i].text.limit = 0;
        g->ch[i].lp.kind = kind;
        g->ch[i].lp.text_offset = g->rq.echo ? g->rq.echo_len : 0;
    }
    eng_request q;
    srv_gen_req_to_eng(&g->rq, g->id, NULL, srv_rng_next(&s->rng), &q);
    eng_error ee;
    rc = eng_add(s->eng, &q, &ee);
    if (rc) {
        srv_gen_req_free(&g->rq);
        free(g);
        if (rc == NI_ENOMEM) {
            respond_errorf(c, 503, NULL, NULL, "out of memory queueing the request");
            return;
        }
        respond_errorf(c, 400, ee.param[0] ? ee.param : NULL, NULL, "%s", ee.msg);
        return;
    }
    srv_gen **b = &s->gens[g->id & (GEN_BUCKETS - 1)];
    g->hnext = *b;
    *b = g;
    g->engine_live = 1;
    s->n_live_gens++;
    s->n_gen_conns++;
    s->metrics.requests_in_flight++;
    s->metrics.gen_requests[kind]++;
    s->metrics.prompt_tokens += (uint64_t)g->rq.n_prompt;
    g->conn = c;
    c->gen = g;
    snprintf(c->rid, sizeof c->rid, "%s", g->rid);
    c->prompt_tokens = g->rq.n_prompt;
    srv_log(SRV_LOG_DEBUG, "%s: queued: %d prompt tokens, max_tokens %d, n %d, stream %d", g->rid,
            g->rq.n_prompt, g->rq.max_tokens, g->rq.n, g->rq.stream);
    if (!g->rq.stream) {
        conn_suspend(c);
        return;
    }
    c->streaming = 1;
    c->out.limit = (size_t)s->cfg.max_stream_buffer;
    /* opening chunks: the assistant role (chat) or the echoed prompt (completions) */
    for (int i = 0; i < g->rq.n; i++) {
        if (kind == SRV_API_CHAT)
            conn_sse(c,
                     stream_chunk(g, srv_api_choice(kind, 1, i, "", 0, 1, NULL, NULL), g->rq.include_usage));
        else if (g->rq.echo)
            conn_sse(
                c, stream_chunk(g, srv_api_choice(kind, 1, i, g->rq.echo_text, g->rq.echo_len, 0, NULL, NULL),
                                g->rq.include_usage));
    }
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 32 * 1024, sse_reader, c, NULL);
    if (!r) {
        conn_kill(c, SRV_ABORT_DISCONNECT);
        return;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    add_common_headers(c, r);
    if (MHD_queue_response(c->mc, 200, r) == MHD_YES) {
        c->status = 200;
        srv_metrics_response(&s->metrics, 200);
    }
    MHD_destroy_response(r);
}

static json_t *model_card(srv_server *s) {
    json_t *m = json_object();
    if (!m) return NULL;
    json_object_set_new(m, "id", srv_json_stringn(s->model_name, strlen(s->model_name)));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(s->start_time));
    json_object_set_new(m, "owned_by", json_string("nanoinfer"));
    json_object_set_new(m, "root", srv_json_stringn(s->cfg.model, strlen(s->cfg.model)));
    json_object_set_new(m, "parent", json_null());
    json_object_set_new(m, "max_model_len", is_ready(s) ? json_integer(s->api.max_seq_len) : json_null());
    return m;
}

static void handle_health(srv_server *s, srv_conn *c) {
    json_t *o = json_object();
    int st = atomic_load_explicit(&s->state, memory_order_acquire);
    const char *status = "ok";
    int code = 200;
    if (st == ST_LOADING || (st == ST_READY && !s->ready_seen))
        status = "loading", code = 503;
    else if (st == ST_FAILED)
        status = "failed", code = 503;
    else if (s->draining)
        status = "shutting down", code = 503;
    else if (!engine_alive(s))
        status = "engine stalled", code = 503;
    if (o) json_object_set_new(o, "status", json_string(status));
    respond_json(c, code, o);
}

static void handle_metrics(srv_server *s, srv_conn *c) {
    eng_stats st;
    int have = get_snapshot(s, &st) && is_ready(s);
    int healthy = is_ready(s) && !s->draining && engine_alive(s);
    srv_buf b = {0};
    if (srv_metrics_render(&s->metrics, have ? &st : NULL, is_ready(s), healthy, &b)) {
        srv_buf_free(&b);
        respond_errorf(c, 500, NULL, NULL, "out of memory rendering metrics");
        return;
    }
    size_t n = srv_buf_size(&b);
    char *txt = b.data; /* off is 0: nothing was consumed */
    if (!txt) txt = strdup("");
    respond_raw(c, 200, txt, n, "text/plain; version=0.0.4; charset=utf-8");
}

static void dispatch(srv_server *s, srv_conn *c) {
    if (c->too_big) {
        respond_errorf(c, 413, NULL, NULL, "request body too large (limit %lld bytes)", s->cfg.max_body);
        return;
    }
    switch (c->route) {
    case R_HEALTH: handle_health(s, c); return;
    case R_METRICS: handle_metrics(s, c); return;
    case R_MODELS: {
        json_t *o = json_object(), *arr = json_array();
        if (o && arr) {
            json_array_append_new(arr, model_card(s));
            json_object_set_new(o, "object", json_string("list"));
            json_object_set_new(o, "data", arr);
        } else {
            json_decref(arr);
            json_decref(o);
            o = NULL;
        }
        respond_json(c, 200, o);
        return;
    }
    case R_MODEL: {
        const char *id = c->path + strlen("/v1/models/");
        if (!strcmp(id, s->model_name))
            respond_json(c, 200, model_card(s));
        else
            respond_errorf(c, 404, "model", "model_not_found", "The model `%.200s` does not exist.", id);
        return;
    }
    default: break;
    }
    if (!is_ready(s)) {
        int st = atomic_load_explicit(&s->state, memory_order_acquire);
        respond_errorf(c, 503, NULL, NULL,
                       st == ST_FAILED ? "the model failed to load" : "the model is loading; retry shortly");
        return;
    }
    if (c->route == R_COMPLETIONS || c->route == R_CHAT) {
        handle_gen(s, c, c->route == R_CHAT ? SRV_API_CHAT : SRV_API_COMPLETION);
        return;
    }
    json_t *body = parse_body(c);
    if (!body) return;
    srv_api_error e;
    json_t *o =
        c->route == R_TOKENIZE ? srv_api_tokenize(&s->api, body, &e) : srv_api_detokenize(&s->api, body, &e);
    json_decref(body);
    if (o)
        respond_json(c, 200, o);
    else
        respond_error(c, &e);
}

static int route_of(const char *path) {
    if (!strcmp(path, "/health")) return R_HEALTH;
    if (!strcmp(path, "/metrics")) return R_METRICS;
    if (!strcmp(path, "/v1/models")) return R_MODELS;
    if (!strncmp(path, "/v1/models/", 11) && path[11]) return R_MODEL;
    if (!strcmp(path, "/v1/completions")) return R_COMPLETIONS;
    if (!strcmp(path, "/v1/chat/completions")) return R_CHAT;
    if (!strcmp(path, "/tokenize")) return R_TOKENIZE;
    if (!strcmp(path, "/detokenize")) return R_DETOKENIZE;
    return R_NONE;
}

static int route_is_get(int r) { return r == R_HEALTH || r == R_METRICS || r == R_MODELS || r == R_MODEL; }
static int route_needs_auth(int r) { return r != R_HEALTH && r != R_METRICS; }

static int auth_ok(srv_server *s, srv_conn *c) {
    if (!s->cfg.api_key[0]) return 1;
    const char *h = MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    h += 7;
    while (*h == ' ') h++;
    return srv_ct_equal(h, strlen(h), s->cfg.api_key, strlen(s->cfg.api_key));
}

/* First call for a request: decide everything that needs no body. Returns 1
 * when a response was queued already. */
static int early_checks(srv_server *s, srv_conn *c) {
    if (s->draining) {
        respond_errorf(c, 503, NULL, NULL, "the server is shutting down");
        return 1;
    }
    if (c->route == R_NONE) {
        respond_errorf(c, 404, NULL, "not_found", "Invalid URL (%s %.100s)", c->method, c->path);
        return 1;
    }
    int is_get = !strcmp(c->method, "GET") || !strcmp(c->method, "HEAD");
    if (route_is_get(c->route) ? !is_get : strcmp(c->method, "POST")) {
        respond_errorf(c, 405, NULL, "method_not_allowed", "Method %s is not allowed for %.100s", c->method,
                       c->path);
        return 1;
    }
    if (route_needs_auth(c->route) && !auth_ok(s, c)) {
        respond_errorf(c, 401, NULL, "invalid_api_key",
                       "Incorrect or missing API key (Authorization: Bearer ...)");
        return 1;
    }
    const char *cl = MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        unsigned long long n = strtoull(cl, &end, 10);
        if (n > (unsigned long long)s->cfg.max_body) {
            respond_errorf(c, 413, NULL, NULL, "request body too large (%llu bytes; limit %lld)", n,
                           s->cfg.max_body);
            return 1;
        }
    }
    return 0;
}

static srv_conn *conn_new(srv_server *s, struct MHD_Connection *mc, const char *url, const char *method) {
    srv_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->s = s;
    c->mc = mc;
    c->t_start = now_s();
    snprintf(c->method, sizeof c->method, "%s", method);
    snprintf(c->path, sizeof c->path, "%s", url);
    c->route = route_of(url);
    if (strlen(url) >= sizeof c->path) c->route = R_NONE;
    c->body.limit = (size_t)s->cfg.max_body;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(c->client, sizeof c->client, "-");
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, c->client,
                      sizeof c->client);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, c->client,
                      sizeof c->client);
    }
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    return c;
}

static void conn_free(srv_server *s, srv_conn *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv_buf_free(&c->body);
    srv_buf_free(&c->out);
    free(c->final_body);
    free(c);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size,
                                  void **req_cls) {
    (void)version;
    srv_server *s = cls;
    srv_conn *c = *req_cls;
    if (!c) {
        c = conn_new(s, mc, url, method);
        if (!c) return MHD_NO;
        *req_cls = c;
        early_checks(s, c);
        return MHD_YES;
    }
    if (*upload_size) {
        if (!c->status && !c->too_big) {
            int rc = srv_buf_append(&c->body, upload_data, *upload_size);
            if (rc == NI_ERANGE)
                c->too_big = 1;
            else if (rc)
                return MHD_NO;
        }
        if (c->too_big || c->status) {
            c->discarded += *upload_size;
            if (c->discarded > (size_t)s->cfg.max_body * DISCARD_FACTOR) return MHD_NO;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (c->status) return MHD_YES; /* answered early; MHD is finishing the upload */
    if (c->gen) {                  /* resumed: a non-streaming generation finished */
        if (c->kill) return MHD_NO;
        if (c->final_body) {
            char *b = c->final_body;
            c->final_body = NULL;
            respond_raw(c, c->final_status, b, c->final_len, "application/json");
            return MHD_YES;
        }
        conn_suspend(c); /* spurious resume */
        return MHD_YES;
    }
    dispatch(s, c);
    return MHD_YES;
}

static void check_drained(srv_server *s);

static void on_completed(void *cls, struct MHD_Connection *mc, void **req_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)mc;
    srv_server *s = cls;
    srv_conn *c = *req_cls;
    if (!c) return;
    *req_cls = NULL;
    srv_gen *g = c->gen;
    int lost = toe != MHD_REQUEST_TERMINATED_COMPLETED_OK;
    if (g) {
        c->prompt_tokens = g->n_prompt ? g->n_prompt : g->rq.n_prompt;
        c->completion_tokens = g->completion_tokens;
        g->conn = NULL;
        c->gen = NULL;
        s->n_gen_conns--;
        if (g->engine_live) {
            gen_abort(s, g, SRV_ABORT_DISCONNECT);
            c->completion_tokens = 0;
            for (int i = 0; i < g->rq.n; i++) c->completion_tokens += g->ch[i].n_gen;
        } else {
            gen_free(s, g);
        }
    }
    static const char *const why[] = {"ok", "error", "timeout", "shutdown", "read error", "client abort"};
    srv_log(SRV_LOG_INFO, "access %s \"%s %s\" %d prompt=%d completion=%d %.3fs%s%s%s%s", c->client,
            c->method, c->path, c->status ? c->status : 499 /* nginx: client closed request */,
            c->prompt_tokens, c->completion_tokens, now_s() - c->t_start, c->rid[0] ? " id=" : "", c->rid,
            lost ? " closed=" : "", lost ? why[(unsigned)toe < 6 ? (unsigned)toe : 1] : "");
    conn_free(s, c);
    if (s->draining) check_drained(s);
}

static void on_connection(void *cls, struct MHD_Connection *mc, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode toe) {
    (void)mc;
    (void)socket_ctx;
    srv_server *s = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED)
        s->metrics.connections++;
    else
        s->metrics.connections--;
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    /* our own MHD_NO for a connection we are closing on purpose is not news */
    int expected = strstr(msg, "Application reported internal error") != NULL;
    srv_log(expected ? SRV_LOG_DEBUG : SRV_LOG_WARN, "http: %s", msg);
}

/* ================= loop callbacks ================= */

static void do_stop(uv_timer_t *t);

/* Stops from a clean stack (never inside an MHD callback): next loop turn. */
static void schedule_stop(srv_server *s) {
    if (s->stopping) return;
    uv_timer_start(&s->stop_timer, do_stop, 0, 0);
}

static void on_ready(srv_server *s) {
    s->ready_seen = 1;
    const mdl_model *m = &s->model;
    snprintf(s->model_name, sizeof s->model_name, "%s",
             s->cfg.served_model_name[0] ? s->cfg.served_model_name : m->name);
    int style;
    if (strcmp(s->cfg.chat_template, "auto")) {
        style = chat_style_from_name(s->cfg.chat_template);
    } else {
        style = chat_detect_strict(m->chat_template);
        if (style < 0) {
            srv_log(SRV_LOG_WARN,
                    "the model has %s chat template; chat requests use ChatML "
                    "(set chat-template to choose)",
                    m->chat_template ? "an unrecognised" : "no");
            style = CHAT_STYLE_CHATML;
        }
    }
    s->api.tok = m->tok;
    s->api.chat_style = style;
    s->api.vocab = m->cfg.vocab_size;
    s->api.max_seq_len = eng_max_seq_len(s->eng);
    s->api.max_tokens_default = s->cfg.max_tokens_default;
    s->api.max_n = NI_MIN(ENG_MAX_N, s->cfg.max_num_seqs);
    s->api.model_name = s->model_name;
    s->api.model_path = s->cfg.model;
    fill_api_ctx(s);
    srv_log(SRV_LOG_INFO,
            "model %s loaded in %.2fs: %d layers, vocab %d, context %d, chat template %s, "
            "backend %s, KV pool %d tokens; ready",
            s->model_name, s->load_seconds, m->cfg.n_layers, m->cfg.vocab_size, s->api.max_seq_len,
            chat_style_name(style), s->backend->name, s->api.kv_tokens);
}

static void on_async(uv_async_t *h) {
    srv_server *s = h->data;
    int st = atomic_load_explicit(&s->state, memory_order_acquire);
    if (st == ST_READY && !s->ready_seen) on_ready(s);
    if (st == ST_FAILED && !s->fail_seen) {
        s->fail_seen = 1;
        srv_log(SRV_LOG_ERROR, "cannot load the model: %s", s->fail_msg);
        s->exit_code = 1;
        schedule_stop(s);
    }
    pthread_mutex_lock(&s->evq_mu);
    ev_queue tmp = s->evq;
    s->evq = s->evq_loop;
    s->evq_loop = tmp;
    pthread_mutex_unlock(&s->evq_mu);
    ev_queue *q = &s->evq_loop;
    if (q->lost) {
        srv_log(SRV_LOG_ERROR, "out of memory: %llu engine events lost", (unsigned long long)q->lost);
        q->lost = 0;
    }
    for (size_t i = 0; i < q->n; i++) handle_event(s, &q->v[i], q->text + q->v[i].text_off);
    q->n = 0;
    q->text_len = 0;
    if (q->cap > 65536 || q->text_cap > ((size_t)16 << 20)) evq_free(q); /* do not keep a burst's memory */
    if (s->need_run) mhd_run(s);
    if (s->draining) check_drained(s);
}

/* Peeks at every suspended connection: EOF or an error means the client left. */
static void on_sweep(uv_timer_t *t) {
    srv_server *s = t->data;
    for (srv_conn *c = s->conns; c; c = c->next) {
        if (!c->suspended || c->kill) continue;
        int fd = conn_fd(c);
        if (fd < 0) continue;
        char b;
        ssize_t r = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            srv_log(SRV_LOG_INFO, "%s: client disconnected; aborting", c->rid[0] ? c->rid : c->path);
            conn_kill(c, SRV_ABORT_DISCONNECT);
        }
    }
    if (s->need_run) mhd_run(s);
}

static void close_cb(uv_handle_t *h) { (void)h; }

static void do_stop(uv_timer_t *t) {
    srv_server *s = t->data;
    if (s->stopping) return;
    s->stopping = 1;
    /* MHD requires every connection resumed before MHD_stop_daemon. */
    for (srv_conn *c = s->conns; c; c = c->next) {
        c->kill = 1;
        if (c->gen) gen_abort(s, c->gen, SRV_ABORT_SHUTDOWN);
        conn_resume(c);
    }
    if (s->mhd) {
        MHD_run(s->mhd);
        MHD_stop_daemon(s->mhd); /* closes the listen socket unless quiesced */
        s->mhd = NULL;
    }
    /* the engine thread must be gone before the async handle closes */
    atomic_store_explicit(&s->running, 0, memory_order_release);
    if (s->eng_thread_started) {
        pthread_join(s->eng_thread, NULL);
        s->eng_thread_started = 0;
    }
    uv_handle_t *hs[] = {(uv_handle_t *)&s->mhd_poll,    (uv_handle_t *)&s->mhd_timer,
                         (uv_handle_t *)&s->sweep_timer, (uv_handle_t *)&s->shutdown_timer,
                         (uv_handle_t *)&s->stop_timer,  (uv_handle_t *)&s->async,
                         (uv_handle_t *)&s->sig_term,    (uv_handle_t *)&s->sig_int};
    for (size_t i = 0; i < NI_ARRAY_LEN(hs); i++)
        if ((i > 0 || s->poll_inited) && !uv_is_closing(hs[i])) uv_close(hs[i], close_cb);
}

static void check_drained(srv_server *s) {
    if (s->draining && s->n_gen_conns == 0) schedule_stop(s);
}

static void on_shutdown_timeout(uv_timer_t *t) {
    srv_server *s = t->data;
    if (s->stopping) return;
    if (s->n_gen_conns == 0) {
        schedule_stop(s);
        return;
    }
    if (s->shutdown_aborted) { /* the aborts did not drain in FINAL_GRACE_MS: stop anyway */
        srv_log(SRV_LOG_WARN, "shutdown: %d requests still open; closing them", s->n_gen_conns);
        schedule_stop(s);
        return;
    }
    s->shutdown_aborted = 1;
    srv_log(SRV_LOG_WARN, "shutdown timeout (%gs): aborting %d in-flight requests", s->cfg.shutdown_timeout,
            s->n_gen_conns);
    for (int b = 0; b < GEN_BUCKETS; b++)
        for (srv_gen *g = s->gens[b]; g; g = g->hnext)
            if (g->engine_live && !g->abort_sent) {
                g->shutdown_abort = 1;
                gen_abort(s, g, SRV_ABORT_SHUTDOWN);
            }
    uv_timer_start(&s->shutdown_timer, on_shutdown_timeout, FINAL_GRACE_MS, 0);
}

static void on_signal(uv_signal_t *h, int signum) {
    srv_server *s = h->data;
    if (s->stopping) return;
    if (s->draining) {
        srv_log(SRV_LOG_WARN, "%s again: stopping now", strsignal(signum));
        schedule_stop(s);
        return;
    }
    s->draining = 1;
    srv_log(SRV_LOG_INFO, "%s: no longer accepting connections; %d requests in flight (waiting up to %gs)",
            strsignal(signum), s->n_gen_conns, s->cfg.shutdown_timeout);
    if (s->mhd) {
        MHD_socket fd = MHD_quiesce_daemon(s->mhd);
        if (fd != MHD_INVALID_SOCKET) close(fd);
    }
    uv_timer_start(&s->shutdown_timer, on_shutdown_timeout, (uint64_t)(s->cfg.shutdown_timeout * 1000), 0);
    check_drained(s);
}

/* ================= setup ================= */

static int open_listener(srv_server *s) {
    char port[16];
    snprintf(port, sizeof port, "%d", s->cfg.port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int rc = getaddrinfo(s->cfg.host, port, &hints, &res);
    if (rc) {
        srv_log(SRV_LOG_ERROR, "host: cannot resolve '%s': %s", s->cfg.host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, err = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 511) == 0) break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        srv_log(SRV_LOG_ERROR, "cannot listen on %s:%d: %s", s->cfg.host, s->cfg.port, strerror(err));
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    s->port = s->cfg.port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    s->listen_fd = fd;
    return 0;
}

static int start_http(srv_server *s) {
    if (open_listener(s)) return -1;
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, s,
                              MHD_OPTION_LISTEN_SOCKET, s->listen_fd, MHD_OPTION_NOTIFY_COMPLETED,
                              on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->cfg.max_connections,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->cfg.idle_timeout, MHD_OPTION_END);
    if (!s->mhd) {
        srv_log(SRV_LOG_ERROR, "cannot start the HTTP server (libmicrohttpd)");
        close(s->listen_fd);
        s->listen_fd = -1;
        return -1;
    }
    s->listen_fd = -1; /* MHD owns it now */
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di || di->epoll_fd < 0) {
        srv_log(SRV_LOG_ERROR, "libmicrohttpd has no epoll fd");
        return -1;
    }
    if (uv_poll_init(&s->loop, &s->mhd_poll, di->epoll_fd)) {
        srv_log(SRV_LOG_ERROR, "cannot poll libmicrohttpd's epoll fd");
        return -1;
    }
    s->poll_inited = 1;
    s->mhd_poll.data = s;
    if (uv_poll_start(&s->mhd_poll, UV_READABLE, on_mhd_poll)) {
        srv_log(SRV_LOG_ERROR, "cannot poll libmicrohttpd's epoll fd");
        return -1;
    }
    const char *h = s->cfg.host;
    srv_log(SRV_LOG_INFO, "listening on http://%s%s%s:%d", strchr(h, ':') ? "[" : "", h,
            strchr(h, ':') ? "]" : "", s->port);
    return 0;
}

int srv_cmd_serve(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    srv_server *s = calloc(1, sizeof *s);
    if (!s) {
        fprintf(stderr, "error: out of memory\n");
        return 1;
    }
    srv_config_default(&s->cfg);
    char err[1024];
    int help = 0, check = 0;
    if (srv_config_parse_args(&s->cfg, argc, argv, &help, &check, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        free(s);
        return 2;
    }
    if (help) {
        srv_config_usage(stdout);
        free(s);
        return 0;
    }
    if (srv_config_validate(&s->cfg, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        free(s);
        return 2;
    }
    if (check) {
        printf("configuration ok\n");
        free(s);
        return 0;
    }
    srv_log_set_level(s->cfg.log_level);
    srv_config_log(&s->cfg);
    srv_rng_seed(&s->rng);
    srv_metrics_init(&s->metrics);
    s->start_time = (long long)time(NULL);
    s->listen_fd = -1;
    snprintf(s->model_name, sizeof s->model_name, "%s", s->cfg.served_model_name);
    if (!s->model_name[0]) { /* until loaded: the path's basename */
        const char *b = strrchr(s->cfg.model, '/');
        snprintf(s->model_name, sizeof s->model_name, "%s", b && b[1] ? b + 1 : s->cfg.model);
    }
    pthread_mutex_init(&s->snap_mu, NULL);
    pthread_mutex_init(&s->evq_mu, NULL);
    atomic_store(&s->running, 1);
    int rc = 1;
    if (uv_loop_init(&s->loop)) {
        srv_log(SRV_LOG_ERROR, "cannot create the event loop");
        goto out;
    }
    uv_timer_init(&s->loop, &s->mhd_timer);
    uv_timer_init(&s->loop, &s->sweep_timer);
    uv_timer_init(&s->loop, &s->shutdown_timer);
    uv_timer_init(&s->loop, &s->stop_timer);
    uv_async_init(&s->loop, &s->async, on_async);
    uv_signal_init(&s->loop, &s->sig_term);
    uv_signal_init(&s->loop, &s->sig_int);
    s->mhd_timer.data = s->sweep_timer.data = s->shutdown_timer.data = s->stop_timer.data = s;
    s->async.data = s->sig_term.data = s->sig_int.data = s;
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_timer_start(&s->sweep_timer, on_sweep, SWEEP_MS, SWEEP_MS);
    if (start_http(s)) {
        s->exit_code = 1;
        do_stop(&s->stop_timer);
    } else {
        srv_log(SRV_LOG_INFO, "loading %s", s->cfg.model);
        if (pthread_create(&s->eng_thread, NULL, engine_main, s)) {
            srv_log(SRV_LOG_ERROR, "cannot start the engine thread");
            s->exit_code = 1;
            do_stop(&s->stop_timer);
        } else {
            s->eng_thread_started = 1;
        }
    }
    uv_run(&s->loop, UV_RUN_DEFAULT);
    rc = s->exit_code;
    if (uv_loop_close(&s->loop)) srv_log(SRV_LOG_WARN, "event loop closed with open handles");
out:
    for (int b = 0; b < GEN_BUCKETS; b++)
        while (s->gens[b]) gen_free(s, s->gens[b]);
    eng_free(s->eng);
    mdl_free(&s->model);
    evq_free(&s->evq);
    evq_free(&s->evq_loop);
    pthread_mutex_destroy(&s->snap_mu);
    pthread_mutex_destroy(&s->evq_mu);
    if (rc == 0) srv_log(SRV_LOG_INFO, "stopped");
    free(s);
    return rc;
}
