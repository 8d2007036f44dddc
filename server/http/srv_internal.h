/*
 * srv_internal.h - private to server/http; not an API. The state shared by
 * the files of the `nanoinfer serve` daemon:
 *   srv_server.c  the daemon: startup, listener, MHD driven from the uv loop,
 *                 connection suspend/resume, disconnect sweep, shutdown;
 *   srv_engine.c  the engine thread, the engine -> loop event queue, and the
 *                 loop-side application of engine events to generations;
 *   srv_routes.c  the MHD request callbacks: routing, auth, handlers,
 *                 responses, SSE;
 *   srv_accept.c  the listener, connection limits, and the check of each
 *                 connection's first request head before MHD gets it.
 * srv_server.c's header comment is the overview (threads, crossings).
 *
 * Ownership: cfg is filled before the engine thread starts and read-only
 * after. The uv handles, MHD, everything under "loop state", every srv_conn
 * and every srv_gen belong to the loop thread. The engine thread touches only
 * cfg, the fields under "engine side" (state, running and heartbeat_us are
 * atomics; snap under snap_mu) and evq (under evq_mu); model, eng and backend
 * are written by it before state turns ST_READY (release) and only read by
 * the loop after that (eng_add / eng_abort go through the engine's locked
 * inbox).
 *
 * Lifetimes: srv_conn is created on the first access-handler call and freed
 * only in MHD's request-completed callback. srv_gen lives until both its
 * connection has completed AND the engine has finished it (every choice
 * reported a finish); events are looked up by request id, never through a
 * pointer the engine holds, so a late event for a freed request is dropped.
 */
#ifndef NI_SRV_INTERNAL_H
#define NI_SRV_INTERNAL_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "engine/backend/backend.h"
#include "engine/engine.h"
#include "engine/model/model.h"
#include "srv_api.h"
#include "srv_config.h"
#include "srv_evq.h"
#include "srv_metrics.h"
#include "srv_reasoning.h"
#include "srv_util.h"

#define GEN_BUCKETS 1024 /* id -> srv_gen hash buckets (power of two) */

enum { ST_LOADING = 0, ST_READY = 1, ST_FAILED = 2 };


typedef struct srv_server srv_server;
typedef struct srv_conn srv_conn;

typedef struct srv_choice {
    srv_buf text; /* non-streaming: the generated text (its content, when rq.reasoning splits) */
    srv_buf reasoning; /* non-streaming, rq.reasoning: the think block's text */
    srv_reasoning rp;  /* rq.reasoning: the split of this choice's output so far */
    srv_tool_stream ts; /* streaming, rq.tools.n > 0: tool calls parsed out of the content */
    int n_calls;        /* tool calls sent so far (streaming) / found (final) */
    srv_lp lp;    /* logprobs (streaming: per chunk; else accumulated) */
    int finish;   /* enum eng_finish, 0 while generating */
    int opened;   /* streaming: the opening chunk (chat role, completions echo) was sent;
                   * it goes out with the choice's first engine event, so the first
                   * chunk a client sees arrives at its time to first token */
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
    int answered_raw; /* a 413 was written on the socket itself; draining the rest */
    double t_answered;
    int status;   /* status of the queued response, 0 = none yet */
    srv_gen *gen; /* generation request, until completion */
    int streaming;
    srv_buf out;  /* SSE bytes not yet handed to MHD */
    int out_done; /* everything, [DONE] included, is in out */
    int suspended;
    int kill;         /* end the response with an error at the next MHD callback */
    char *final_body; /* non-streaming result, queued when resumed */
    size_t final_len;
    size_t final_off; /* bytes of it given to a reply committed early */
    int final_status;
    int half_closed; /* the sweep saw EOF: the client shut its write side (or left) */
    int prompt_tokens, completion_tokens;
    char rid[64];
    srv_conn *prev, *next; /* all live srv_conn */
};

/* One TCP connection, from MHD's connection-start notification to its close
 * (MHD's socket context): which phase of a request it is in and by when that
 * phase must end, so that the sweep can cut off a client that takes too long
 * to send its headers (header-timeout) or its body (body-timeout); MHD's own
 * idle timeout restarts on every byte, these deadlines never do. At
 * max-connections the sweep of srv_server.c closes the one that has waited
 * longest for its headers to make room. */
enum srv_sock_phase {
    SRV_SOCK_HEADERS = 0, /* waiting for (the rest of) a request's headers */
    SRV_SOCK_BODY,        /* headers in, the body still arriving */
    SRV_SOCK_ANSWERING    /* the request is complete: no deadline */
};

typedef struct srv_sock {
    struct MHD_Connection *mc;
    enum srv_sock_phase phase;
    double t_phase;    /* when the phase began (ni_now) */
    double deadline;   /* ni_now() by which the phase must end; 0 = none */
    int n_requests;    /* requests completed on this connection */
    int cut;           /* shut down by the sweep (timeout, eviction, early close) */
    srv_conn *conn;    /* SRV_SOCK_BODY: the request being received */
    struct sockaddr_storage addr; /* the client's address (per-address limit) */
    struct srv_sock *prev, *next;
} srv_sock;

/* A connection accepted by srv_accept.c whose first request head has not
 * passed srv_head_check yet: it is ours, not MHD's, until handed over
 * (MHD_add_connection) or closed. answered: it failed the check (or its
 * header-timeout) and got a JSON error; what the client still sends is read
 * and dropped until EOF, linger_until or the drain cap (closing with unread
 * bytes would reset the connection and could destroy the answer in flight). */
typedef struct srv_gated {
    int fd;
    double t_accept;    /* ni_now() at accept: header-timeout counts from here */
    double t_last;      /* when bytes last arrived (idle-timeout, as MHD's) */
    size_t seen;        /* bytes of the head peeked so far */
    int answered;
    double linger_until; /* answered: closed by then at the latest */
    size_t drained;      /* answered: bytes read and dropped */
    int peer_shut;       /* EPOLLRDHUP seen: the client sends nothing more */
    struct sockaddr_storage addr;
    socklen_t addr_len;
    struct srv_gated *prev, *next;
} srv_gated;

/* This many generations in a row ending in an engine error (and none
 * succeeding) turn /health to 503: a model whose weights give NaN fails
 * every request, and orchestrators should see it. */
#define SRV_FAILING_STREAK 3

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

    /* srv_accept.c: the listener and the first-request gate */
    uv_poll_t listen_poll; /* listen_fd readable: accept */
    uv_poll_t gate_poll;   /* gate_epfd readable: a gated connection has news */
    int gate_epfd;         /* edge-triggered epoll set of the gated connections */
    int listening;         /* listen_poll started */
    int accept_stopped;    /* drained: the listener is closed for good */
    int accept_inited;     /* listen_poll and gate_poll initialised */
    double accept_retry_at; /* accept failed for lack of fds: retry then (ni_now) */
    srv_gated *gated;      /* connections not yet handed to MHD */
    const srv_gated *handing; /* during MHD_add_connection: the one being handed over */
    char *peek_buf;        /* SRV_HEAD_PEEK bytes, allocated once */

    /* engine side */
    pthread_t eng_thread;
    int eng_thread_started;
    atomic_int state; /* ST_* (release on READY) */
    atomic_int running;
    atomic_llong heartbeat_us;
    atomic_int engine_fatal; /* eng_fatal_error once the backend failed for good, else 0 */
    int fatal_seen;          /* loop: that failure started the drain */
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
    smp_params sp_default; /* api.sp_default: srv_config_sampling of cfg and the model */
    char model_name[256];
    srv_gen *gens[GEN_BUCKETS];
    int n_live_gens; /* engine_live generations */
    int n_gen_conns; /* connections that carry a generation */
    srv_conn *conns;
    srv_sock *socks; /* every open connection */
    uint64_t next_id;
    srv_rng rng;
    srv_metrics metrics;
    long long start_time;
    int draining, stopping, exit_code, shutdown_aborted;
    double drain_until; /* srv_drain with linger: no stop before this ni_now() */
    int failing_streak; /* generations in a row that ended in an engine error */
    int engine_stuck;   /* shutdown gave up joining the engine thread */
    int poll_inited;
};

/* ---- srv_server.c (loop thread) ---- */

/* Runs MHD once and re-arms its timer; clears need_run. No-op once MHD stopped. */
void srv_mhd_run(srv_server *s);

/* Resumes a suspended c and marks s->need_run (the caller's MHD_run picks it up);
 * no-op when c is not suspended. */
void srv_conn_resume(srv_conn *c);

/* mc's srv_sock (MHD's socket context), or NULL (none could be allocated). */
srv_sock *srv_sock_of(struct MHD_Connection *mc);

/* Moves k (NULL: no-op) into phase ph, arming the deadline of that phase:
 * header-timeout for SRV_SOCK_HEADERS (plus idle-timeout after a first
 * request, as a kept-alive client may idle that long before it sends),
 * body-timeout for SRV_SOCK_BODY (c: the request being received), none for
 * SRV_SOCK_ANSWERING. */
void srv_sock_phase(srv_server *s, srv_sock *k, enum srv_sock_phase ph, srv_conn *c);

/* k's socket, or -1 (MHD no longer knows the connection). */
int srv_sock_fd(const srv_sock *k);

/* Closes k from the outside: shutdown() wakes MHD up, it reads EOF and
 * closes; the access handler refuses a request completed from bytes it had
 * buffered (k->cut). fd: srv_sock_fd(k). */
void srv_sock_cut(srv_sock *k, int fd);

/* Suspends c (MHD stops calling back for it) until srv_conn_resume; idempotent. */
void srv_conn_suspend(srv_conn *c);

/* Ends the HTTP side of c with an error: aborts its generation with reason
 * (enum srv_abort_reason), shuts the socket down, resumes c. Idempotent. */
void srv_conn_kill(srv_conn *c, int reason);

/* Draining and no connection carries a generation any more: schedule the stop. */
void srv_check_drained(srv_server *s);

/* Stops the daemon on the next loop turn (never inside an MHD callback); idempotent. */
void srv_schedule_stop(srv_server *s);

/* Stops accepting connections and stops once the generations in flight are
 * done or --shutdown-timeout passed (SIGTERM's path; why starts the log
 * line). With linger > 0 (a failed engine) it keeps listening instead,
 * answering every request 503, and stops after linger seconds (the
 * generations in flight have ended with errors by then). */
void srv_drain(srv_server *s, const char *why, double linger);

/* ---- srv_accept.c (loop thread) ---- */

/* Starts accepting on s->listen_fd (opened; owned by srv_accept from now).
 * Returns 0 or -1 (logged). */
int srv_accept_start(srv_server *s);

/* The sweep's part (every SWEEP_MS): header-timeout (408) and linger ends of
 * gated connections, a retry after accept ran out of fds. */
void srv_accept_sweep(srv_server *s, double now);

/* A connection closed somewhere (MHD's or ours): accept again if the limit
 * had stopped it. */
void srv_accept_resume(srv_server *s);

/* Closes the listener for good (drain); gated connections go on to MHD. */
void srv_accept_stop(srv_server *s);

/* At stop: closes the listener, every gated connection and the handles. */
void srv_accept_close(srv_server *s);

/* At more than max-connections: closes the connection (gated or MHD's) that
 * has waited longest for its request headers, never `except_sock` /
 * `except_gated`. Returns 1 when one was closed (or cut: MHD closes it at
 * its next run). */
int srv_evict_one(srv_server *s, const srv_sock *except_sock, const srv_gated *except_gated);

/* ---- srv_engine.c ---- */

/* Engine thread body (pthread start routine, arg is the srv_server): loads the
 * model, publishes ST_READY or ST_FAILED, then steps the engine while running. */
void *srv_engine_main(void *arg);

/* uv_async callback (loop thread): notices READY/FAILED, drains every queued
 * engine event into its generation, then runs MHD if connections were resumed. */
void srv_on_async(uv_async_t *h);


/* 1 once the model is loaded and the loop has applied it (on_ready ran). */
int srv_is_ready(srv_server *s);

/* 1 when the engine loop is alive: heartbeat younger than health-timeout. */
int srv_engine_alive(srv_server *s);

/* Copies the latest engine stats snapshot into *st; 0 when none was published yet. */
int srv_get_snapshot(srv_server *s, eng_stats *st);

/* Refreshes s->api.kv_tokens from the snapshot (the KV pool bounds a prompt). */
void srv_fill_api_ctx(srv_server *s);

/* Unlinks g from the id table, settles the in-flight counters if the engine
 * still had it, and frees it. The caller clears any conn->gen pointing at g. */
void srv_gen_free(srv_server *s, srv_gen *g);

/* Asks the engine to abort g once (counted under reason); no-op when the
 * engine is done with g or an abort was sent already. */
void srv_gen_abort(srv_server *s, srv_gen *g, int reason);

/* ---- srv_routes.c (loop thread) ---- */

/* Appends one SSE event for obj (stolen; NULL = out of memory) to c's output
 * and resumes c; a full buffer (slow reader) or an error kills c instead.
 * No-op on a connection already being killed. */
void srv_conn_sse(srv_conn *c, json_t *obj);

/* Writes a probe to the client of c, which the sweep saw half-closed (EOF):
 * one that left for good answers the write with a reset, one that only shut
 * its write side reads on. Streaming: an SSE comment; non-streaming: the 200
 * is committed now (chunked JSON) and a newline, JSON whitespace, goes out.
 * Resumes c; no-op on a connection being killed or with its reply complete. */
void srv_conn_probe(srv_conn *c);

/* One streaming chunk of g (g->conn must be set) around choice (stolen;
 * NULL = out of memory); usage_null adds "usage": null. NULL on out of memory. */
json_t *srv_stream_chunk(srv_gen *g, json_t *choice, int usage_null);

/* Sends choice index's opening chunk once (chat: the assistant role delta;
 * completions with echo: the prompt), before its first event's chunks, so
 * both leave in one write; no-op once sent or without a connection. */
void srv_stream_open(srv_gen *g, int index);

/* Builds the final non-streaming body (or error body) of g into c->final_*;
 * kills c when even that cannot be built. */
void srv_build_final(srv_server *s, srv_gen *g, srv_conn *c);

/* n fresh "call_..." ids (ids[i], pointed to by ptrs[i]) for tool calls. */
void srv_tool_ids(srv_server *s, char (*ids)[32], const char **ptrs, int n);

/* Writes a whole JSON error response (OpenAI error shape, Connection: close)
 * with this status and message straight to socket fd, for a client MHD
 * cannot answer at this point (mid-body, or before its headers are complete),
 * counts it, and shuts the write side down. http10: HTTP/1.0 status line.
 * Returns 0, or -1 when the socket took less than all of it. */
int srv_answer_raw(srv_server *s, int fd, int http10, int status, const char *msg);

/* MHD access handler (MHD_AccessHandlerCallback); cls is the srv_server. */
enum MHD_Result srv_on_request(void *cls, struct MHD_Connection *mc, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_size, void **req_cls);

/* MHD request-completed callback: logs the access line, detaches and frees the
 * srv_conn (aborting a generation still running), checks a pending drain. */
void srv_on_completed(void *cls, struct MHD_Connection *mc, void **req_cls,
                      enum MHD_RequestTerminationCode toe);

#endif
