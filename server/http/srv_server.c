/*
 * srv_server.c - `nanoinfer serve`: the OpenAI-compatible HTTP daemon. This
 * file is the daemon itself: configuration and the hand-off of the model load
 * to the engine thread, the listener, MHD in external-event mode driven from
 * the libuv loop, connection suspend/resume, the disconnect sweep, signals
 * and graceful shutdown. The other parts:
 *   srv_engine.c    the engine thread and the engine -> loop event queue;
 *   srv_routes.c    routing, auth, handlers, responses and SSE streaming;
 *   srv_internal.h  the shared structs, who owns what, and lifetimes.
 *
 * Threads (see docs/design.md):
 *   loop thread (main)  owns the libuv loop, libmicrohttpd (MHD), every
 *                       connection and request object, the metrics, and the
 *                       tokenizer calls made while parsing requests;
 *   engine thread       loads the model, then steps the engine (srv_engine.c).
 *                       It never touches HTTP state.
 * Crossings: loop -> engine through eng_add/eng_abort (the engine's locked
 * inbox); engine -> loop through a mutex-protected event queue and
 * uv_async_send, plus an eng_stats snapshot and a heartbeat for /metrics and
 * /health (srv_engine.c).
 *
 * MHD runs in external-event mode with its own epoll set (MHD_USE_EPOLL, no
 * internal thread): the loop watches MHD's epoll fd with a uv_poll_t and
 * calls MHD_run when it is readable, when the uv_timer armed from
 * MHD_get_timeout fires, and after resuming connections. MHD has no listen
 * socket: srv_accept.c accepts, checks each connection's first request head
 * (srv_head.c; MHD would answer a bad one with HTML or not at all) and hands
 * the connection over with MHD_add_connection.
 *
 * Disconnects: MHD reports the end of every request through the completed
 * callback (also when a write fails); a suspended connection is invisible to
 * MHD, so a 200 ms sweep peeks (MSG_PEEK) at the sockets of suspended
 * connections and, on an error, aborts the request and resumes the
 * connection so that MHD closes it. EOF alone is no proof: a client may
 * shut down only its write side and wait for the reply (half-close), so the
 * sweep writes a probe (srv_conn_probe) and keeps going; a peer that is gone
 * answers it with a reset, which the next sweep reads as a socket error (or
 * the next write fails inside MHD). A request whose client is gone is
 * eng_abort()ed, which frees its KV blocks within the next engine step.
 *
 * Slow clients and connection slots (issue 14): every connection has a
 * srv_sock with its phase (headers, body, answering) and a total deadline
 * for the first two (header-timeout, body-timeout; MHD's idle timeout
 * restarts on every byte, these do not); the sweep answers a late client 408
 * (JSON, written on the socket: MHD has no response to send before the
 * request is complete) and shuts the socket down, which wakes MHD to close
 * it. max-connections + 1 connections may be open (srv_accept.c counts
 * them, its own and MHD's): the newcomer that passes max-connections makes
 * srv_evict_one close the connection that has waited longest for its
 * headers, so a slowloris or idle keep-alive connections cannot lock new
 * clients out; with none waiting for headers, accepting stops until a
 * connection closes (srv_accept_resume from the close notification).
 *
 * Shutdown (SIGTERM/SIGINT): stop accepting (MHD_quiesce_daemon), answer new
 * requests on kept-alive connections with 503, let in-flight requests finish
 * for up to shutdown-timeout, then abort the rest; once none is left, resume
 * whatever is suspended, stop MHD, stop and join the engine thread, exit 0.
 * A second signal skips the wait.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "engine/engine.h"
#include "engine/model/model.h"
#include "engine/util/util.h"
#include "srv_server.h"
#include "srv_config.h"
#include "srv_head.h"
#include "srv_internal.h"
#include "srv_log.h"
#include "srv_metrics.h"
#include "srv_util.h"

#define SWEEP_MS 200        /* disconnect sweep of suspended connections */
#define FINAL_GRACE_MS 5000 /* after the shutdown timeout aborted everything */
#define ENGINE_JOIN_S 10    /* at stop, the longest wait for the engine thread */

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

void srv_mhd_run(srv_server *s) {
    if (!s->mhd) return;
    s->need_run = 0;
    MHD_run(s->mhd);
    mhd_schedule(s);
}

static void on_mhd_timer(uv_timer_t *t) { srv_mhd_run(t->data); }

static void on_mhd_poll(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    srv_mhd_run(p->data);
}

/* ================= connections ================= */

static int conn_fd(srv_conn *c) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

void srv_conn_resume(srv_conn *c) {
    if (!c->suspended) return;
    c->suspended = 0;
    MHD_resume_connection(c->mc);
    c->s->need_run = 1;
}

void srv_conn_suspend(srv_conn *c) {
    if (c->suspended) return;
    c->suspended = 1;
    MHD_suspend_connection(c->mc);
}

/* Ends the HTTP side of c with an error: aborts its request, shuts the socket
 * down so MHD notices even while it waits to write, resumes it if suspended. */
void srv_conn_kill(srv_conn *c, int reason) {
    if (c->kill) return;
    c->kill = 1;
    if (c->gen) srv_gen_abort(c->s, c->gen, reason);
    int fd = conn_fd(c);
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
    srv_conn_resume(c);
}

/* ================= connection phases, deadlines, eviction ================= */

srv_sock *srv_sock_of(struct MHD_Connection *mc) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

void srv_sock_phase(srv_server *s, srv_sock *k, enum srv_sock_phase ph, srv_conn *c) {
    if (!k) return;
    const double now = ni_now();
    if (ph == SRV_SOCK_HEADERS && k->phase != SRV_SOCK_HEADERS) k->n_requests++;
    k->phase = ph;
    k->t_phase = now;
    k->conn = ph == SRV_SOCK_BODY ? c : NULL;
    double lim = ph == SRV_SOCK_HEADERS ? s->cfg.header_timeout
                 : ph == SRV_SOCK_BODY  ? s->cfg.body_timeout
                                        : 0;
    if (lim > 0 && ph == SRV_SOCK_HEADERS && k->n_requests > 0) lim += s->cfg.idle_timeout;
    k->deadline = lim > 0 ? now + lim : 0;
}

int srv_sock_fd(const srv_sock *k) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(k->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* Closes k from the outside: shutdown() wakes MHD up (its epoll set sees the
 * hang-up), it reads EOF and closes; the access handler refuses a request
 * completed from bytes it had buffered (k->cut). */
void srv_sock_cut(srv_sock *k, int fd) {
    k->cut = 1;
    shutdown(fd, SHUT_RDWR);
}

/* ================= daemon callbacks ================= */

static void on_connection(void *cls, struct MHD_Connection *mc, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode toe) {
    srv_server *s = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        s->metrics.connections++;
        srv_sock *k = calloc(1, sizeof *k); /* no deadline for this one if NULL */
        if (k) {
            k->mc = mc; /* calloc: SRV_SOCK_HEADERS, no request yet: header-timeout from now */
            srv_sock_phase(s, k, SRV_SOCK_HEADERS, NULL);
            if (s->handing) { /* from srv_accept.c: its header-timeout began at accept */
                k->t_phase = s->handing->t_accept;
                if (k->deadline > 0) k->deadline = k->t_phase + s->cfg.header_timeout;
                k->addr = s->handing->addr;
            }
            k->next = s->socks;
            if (s->socks) s->socks->prev = k;
            s->socks = k;
        }
        *socket_ctx = k;
    } else {
        s->metrics.connections--;
        srv_sock *k = *socket_ctx;
        if (k) {
            if (k->prev) k->prev->next = k->next;
            else s->socks = k->next;
            if (k->next) k->next->prev = k->prev;
            free(k);
            *socket_ctx = NULL;
        }
        /* a slot is free: the listener may have stopped at the limit */
        srv_accept_resume(s);
    }
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
void srv_schedule_stop(srv_server *s) {
    if (s->stopping) return;
    uv_timer_start(&s->stop_timer, do_stop, 0, 0);
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
        int gone = r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
        if (r == 0 && c->half_closed) { /* after a probe: a reset leaves an error */
            int e = 0;
            socklen_t el = sizeof e;
            gone = getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0 || e != 0;
        }
        if (gone) {
            srv_log(SRV_LOG_INFO, "%s: client disconnected; aborting",
                    c->rid[0] ? c->rid : c->path);
            srv_conn_kill(c, SRV_ABORT_DISCONNECT);
        } else if (r == 0) {
            if (!c->half_closed)
                srv_log(SRV_LOG_DEBUG, "%s: client half-closed; probing",
                        c->rid[0] ? c->rid : c->path);
            c->half_closed = 1;
            srv_conn_probe(c);
        }
    }
    /* A client still sending its request's headers after header-timeout, or
     * its body after body-timeout, is answered 408 (when nothing was sent
     * for that request yet) and closed: MHD's idle timeout restarts on every
     * byte, so one byte every few seconds would hold the slot forever
     * (issue 14). A client that shut its write side (or left) before its
     * request was complete is closed: MHD takes a short read as "nothing
     * more to read" and, its epoll set being edge-triggered, never looks
     * again when the FIN came with the last bytes, so it would wait out the
     * timeouts for the rest (issue 14). */
    const double now = ni_now();
    for (srv_sock *k = s->socks; k; k = k->next) {
        if (k->phase == SRV_SOCK_ANSWERING || k->cut) continue;
        int fd = srv_sock_fd(k);
        if (fd < 0) continue;
        char b;
        if (recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
            srv_log(SRV_LOG_INFO, "connection: client closed before its request was complete");
            srv_sock_cut(k, fd);
        } else if (k->deadline > 0 && now > k->deadline && k->conn && k->conn->answered_raw) {
            srv_sock_cut(k, fd); /* its 413 is out; the drain time is over */
        } else if (k->deadline > 0 && now > k->deadline) {
            int headers = k->phase == SRV_SOCK_HEADERS;
            s->metrics.request_timeouts++;
            srv_log(SRV_LOG_INFO, "connection: request %s not received within %gs; closing",
                    headers ? "headers" : "body",
                    headers ? s->cfg.header_timeout : s->cfg.body_timeout);
            const srv_conn *c = k->conn;
            if (headers || (c && !c->status && !c->answered_raw)) {
                char msg[96];
                snprintf(msg, sizeof msg, "request %s not received within %g seconds",
                         headers ? "headers" : "body",
                         headers ? s->cfg.header_timeout : s->cfg.body_timeout);
                srv_answer_raw(s, fd, 0, 408, msg);
            }
            srv_sock_cut(k, fd);
        }
    }
    /* a slot may be needed still: a connection that finished its request
     * since the newcomer arrived now waits for headers and can go */
    srv_evict_one(s, NULL, NULL);
    srv_accept_sweep(s, now);
    /* Unconditionally: a safety net for whatever else could leave MHD
     * waiting for a run that no event asks for (cheap: 5 runs a second). */
    srv_mhd_run(s);
}

static void close_cb(uv_handle_t *h) { (void)h; }

static void do_stop(uv_timer_t *t) {
    srv_server *s = t->data;
    if (s->stopping) return;
    s->stopping = 1;
    /* MHD requires every connection resumed before MHD_stop_daemon. */
    for (srv_conn *c = s->conns; c; c = c->next) {
        c->kill = 1;
        if (c->gen) srv_gen_abort(s, c->gen, SRV_ABORT_SHUTDOWN);
        srv_conn_resume(c);
    }
    srv_accept_close(s);
    if (s->mhd) {
        MHD_run(s->mhd);
        MHD_stop_daemon(s->mhd);
        s->mhd = NULL;
    }
    /* the engine thread must be gone before the async handle closes */
    atomic_store_explicit(&s->running, 0, memory_order_release);
    if (s->eng_thread_started) {
        /* Bounded: a model still loading or a hung kernel must not keep a
         * stopped server alive (systemd would SIGKILL it; we say why). */
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl); /* pthread_timedjoin_np's clock */
        dl.tv_sec += ENGINE_JOIN_S;
        if (pthread_timedjoin_np(s->eng_thread, NULL, &dl) == 0) {
            s->eng_thread_started = 0;
        } else {
            srv_log(SRV_LOG_ERROR,
                    "shutdown: the engine thread did not stop within %ds (model load or a "
                    "device call still running); exiting without it",
                    ENGINE_JOIN_S);
            s->engine_stuck = 1;
            s->exit_code = 1;
        }
    }
    uv_handle_t *hs[] = {(uv_handle_t *)&s->mhd_poll,    (uv_handle_t *)&s->mhd_timer,
                         (uv_handle_t *)&s->sweep_timer, (uv_handle_t *)&s->shutdown_timer,
                         (uv_handle_t *)&s->stop_timer,  (uv_handle_t *)&s->async,
                         (uv_handle_t *)&s->sig_term,    (uv_handle_t *)&s->sig_int};
    for (size_t i = 0; i < NI_ARRAY_LEN(hs); i++)
        if ((i > 0 || s->poll_inited) && !uv_is_closing(hs[i])) uv_close(hs[i], close_cb);
}

void srv_check_drained(srv_server *s) {
    if (s->draining && s->n_gen_conns == 0 && ni_now() >= s->drain_until) srv_schedule_stop(s);
}

static void on_shutdown_timeout(uv_timer_t *t) {
    srv_server *s = t->data;
    if (s->stopping) return;
    if (s->n_gen_conns == 0) {
        srv_schedule_stop(s);
        return;
    }
    if (s->shutdown_aborted) { /* the aborts did not drain in FINAL_GRACE_MS: stop anyway */
        srv_log(SRV_LOG_WARN, "shutdown: %d requests still open; closing them", s->n_gen_conns);
        srv_schedule_stop(s);
        return;
    }
    s->shutdown_aborted = 1;
    srv_log(SRV_LOG_WARN, "shutdown timeout (%gs): aborting %d in-flight requests",
            s->cfg.shutdown_timeout, s->n_gen_conns);
    for (int b = 0; b < GEN_BUCKETS; b++)
        for (srv_gen *g = s->gens[b]; g; g = g->hnext)
            if (g->engine_live && !g->abort_sent) {
                g->shutdown_abort = 1;
                srv_gen_abort(s, g, SRV_ABORT_SHUTDOWN);
            }
    uv_timer_start(&s->shutdown_timer, on_shutdown_timeout, FINAL_GRACE_MS, 0);
}

static void on_signal(uv_signal_t *h, int signum) {
    srv_server *s = h->data;
    if (s->stopping) return;
    if (s->draining) {
        srv_log(SRV_LOG_WARN, "%s again: stopping now", strsignal(signum));
        srv_schedule_stop(s);
        return;
    }
    srv_drain(s, strsignal(signum), 0);
}

void srv_drain(srv_server *s, const char *why, double linger) {
    if (s->draining || s->stopping) return;
    s->draining = 1;
    if (linger > 0) { /* listening on, answering 503, so that probes see why */
        s->drain_until = ni_now() + linger;
        srv_log(SRV_LOG_INFO, "%s: answering 503 for %gs, then stopping", why, linger);
        uv_timer_start(&s->shutdown_timer, on_shutdown_timeout, (uint64_t)(linger * 1000), 0);
        srv_check_drained(s);
        return;
    }
    srv_log(SRV_LOG_INFO,
            "%s: no longer accepting connections; %d requests in flight (waiting up to %gs)",
            why, s->n_gen_conns, s->cfg.shutdown_timeout);
    srv_accept_stop(s);
    uv_timer_start(&s->shutdown_timer, on_shutdown_timeout,
                   (uint64_t)(s->cfg.shutdown_timeout * 1000), 0);
    srv_check_drained(s);
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
        srv_log(SRV_LOG_ERROR, "cannot listen on %s:%d: %s", s->cfg.host, s->cfg.port,
                strerror(err));
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
    /* no listen socket: connections come from srv_accept.c, which checks the
     * first request's head before MHD sees it */
    unsigned flags =
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET;
    s->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, srv_on_request, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, s,
        MHD_OPTION_NOTIFY_COMPLETED, srv_on_completed, s, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, s, MHD_OPTION_CONNECTION_LIMIT,
        /* one over: the newcomer that makes srv_evict_one close the
         * connection waiting longest for its headers (srv_accept.c counts) */
        (unsigned)s->cfg.max_connections + 1, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        /* room for any head srv_head_check passes (MHD's default is 32 KiB
         * for the head and the connection's buffers together) */
        (size_t)(4 * SRV_HEAD_MAX), MHD_OPTION_CONNECTION_TIMEOUT,
        /* MHD counts whole seconds and 0 means never: round a fraction up */
        (unsigned)ceil(s->cfg.idle_timeout), MHD_OPTION_END);
    if (!s->mhd) {
        srv_log(SRV_LOG_ERROR, "cannot start the HTTP server (libmicrohttpd)");
        return -1;
    }
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
    if (srv_accept_start(s)) return -1;
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
    s->gate_epfd = -1;
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
    uv_async_init(&s->loop, &s->async, srv_on_async);
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
        if (pthread_create(&s->eng_thread, NULL, srv_engine_main, s)) {
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
    if (s->engine_stuck) return rc; /* its thread still uses everything: leave it to exit */
    for (int b = 0; b < GEN_BUCKETS; b++)
        while (s->gens[b]) srv_gen_free(s, s->gens[b]);
    eng_free(s->eng);
    mdl_free(&s->model);
    srv_evq_free(&s->evq);
    srv_evq_free(&s->evq_loop);
    pthread_mutex_destroy(&s->snap_mu);
    pthread_mutex_destroy(&s->evq_mu);
    if (rc == 0) srv_log(SRV_LOG_INFO, "stopped");
    free(s);
    return rc;
}
