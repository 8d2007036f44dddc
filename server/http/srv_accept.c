/*
 * srv_accept.c - the listener and the first-request gate of `nanoinfer
 * serve` (issue 14). libmicrohttpd 0.9.75 answers a malformed request head
 * itself (HTML, a doubled header block for a bad Content-Length, silence for
 * a request line it cannot read), so MHD runs without a listen socket
 * (MHD_USE_NO_LISTEN_SOCKET) and the connections reach it through here:
 *
 *   accept -> gated: the first request's head is peeked at (MSG_PEEK, so the
 *             bytes stay in the socket for MHD) each time more arrives and
 *             judged by srv_head_check;
 *          -> passes: MHD_add_connection, and MHD owns the socket from then;
 *          -> fails:  our JSON error (srv_answer_raw, the status the check
 *             named), then what the client still sends is read and dropped
 *             until it closes, LINGER_S, or LINGER_FACTOR x max-body, and the
 *             socket is closed (an unread receive buffer at close() would
 *             reset the connection and could destroy the answer in flight).
 * Later requests on a kept-alive connection go straight to MHD, which parses
 * them itself (see docs/security.md).
 *
 * Readiness of gated sockets comes from an epoll set of our own in edge-
 * triggered mode (the loop polls its fd): a peek does not consume, so a
 * level-triggered watch of an incomplete head would fire forever. EPOLLRDHUP
 * says the client shut its write side: an incomplete head then can never
 * complete, and the connection is closed.
 *
 * Limits (they used to live in MHD's accept path): every open connection,
 * gated or MHD's, counts in metrics.connections. Past max-connections the
 * one that has waited longest for its request headers is closed
 * (srv_evict_one); with max-connections + 1 open and none waiting, the
 * listener stops until a connection closes (srv_accept_resume). Per-address
 * limit: gated plus MHD connections from the same address. header-timeout
 * counts from accept, also after the hand-over (srv_server.c on_connection
 * takes t_accept from s->handing); idle-timeout closes a gated connection
 * that has sent nothing for that long, silently, as MHD does.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/util/util.h"
#include "srv_head.h"
#include "srv_internal.h"
#include "srv_log.h"

#define ACCEPT_BATCH 64    /* accepts per wake-up: the loop serves the rest meanwhile */
#define LINGER_S 5.0       /* after an answer: the longest wait for the client to close */
#define LINGER_FACTOR 128  /* ... and the most it may still send, x max-body */
#define ACCEPT_RETRY_S 0.1 /* accept ran out of fds: try again after */

static void on_listen(uv_poll_t *p, int status, int events);

/* ---- bookkeeping ---- */

static void gated_unlink(srv_server *s, srv_gated *g) {
    if (g->prev)
        g->prev->next = g->next;
    else
        s->gated = g->next;
    if (g->next) g->next->prev = g->prev;
    s->metrics.connections--;
    epoll_ctl(s->gate_epfd, EPOLL_CTL_DEL, g->fd, NULL);
}

static void gated_close(srv_server *s, srv_gated *g) {
    gated_unlink(s, g);
    close(g->fd);
    free(g);
    srv_accept_resume(s);
}

static int same_host(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET)
        return !memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                       &((const struct sockaddr_in *)b)->sin_addr, sizeof(struct in_addr));
    if (a->ss_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                       &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr));
    return 0;
}

static int count_from(const srv_server *s, const struct sockaddr_storage *a) {
    int n = 0;
    for (const srv_gated *g = s->gated; g; g = g->next) n += same_host(&g->addr, a);
    for (const srv_sock *k = s->socks; k; k = k->next) n += !k->cut && same_host(&k->addr, a);
    return n;
}

int srv_evict_one(srv_server *s, const srv_sock *except_sock, const srv_gated *except_gated) {
    if (s->metrics.connections <= s->cfg.max_connections) return 0;
    srv_sock *vk = NULL;
    for (srv_sock *k = s->socks; k; k = k->next)
        if (k != except_sock && !k->cut && k->phase == SRV_SOCK_HEADERS &&
            (!vk || k->t_phase < vk->t_phase))
            vk = k;
    srv_gated *vg = NULL;
    for (srv_gated *g = s->gated; g; g = g->next)
        if (g != except_gated && !g->answered && (!vg || g->t_accept < vg->t_accept)) vg = g;
    const int vk_fd = vk ? srv_sock_fd(vk) : -1;
    if (vk_fd < 0) vk = NULL;
    if (!vk && !vg) return 0;
    double waited;
    if (vg && (!vk || vg->t_accept <= vk->t_phase)) {
        waited = ni_now() - vg->t_accept;
        gated_close(s, vg);
    } else {
        waited = ni_now() - vk->t_phase;
        srv_sock_cut(vk, vk_fd);
    }
    s->metrics.connections_evicted++;
    srv_log(SRV_LOG_INFO,
            "connection: at max-connections (%d); closed one that waited %.1fs for its request",
            s->cfg.max_connections, waited);
    return 1;
}

/* ---- the listener ---- */

static void listen_on(srv_server *s, int on) {
    if (!s->accept_inited || s->accept_stopped || on == s->listening) return;
    if (on ? uv_poll_start(&s->listen_poll, UV_READABLE, on_listen) == 0
           : uv_poll_stop(&s->listen_poll) == 0)
        s->listening = on;
}

void srv_accept_resume(srv_server *s) {
    if (!s->listening && s->accept_retry_at == 0 &&
        s->metrics.connections <= s->cfg.max_connections)
        listen_on(s, 1);
}

/* ---- gated connections ---- */

/* Reads and drops what an answered client still sends; closes at EOF, on an
 * error or past the cap. */
static void linger_read(srv_server *s, srv_gated *g) {
    const size_t cap = (size_t)s->cfg.max_body * LINGER_FACTOR;
    for (;;) {
        ssize_t r = recv(g->fd, s->peek_buf, SRV_HEAD_PEEK, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0 || (g->drained += (size_t)r) > cap) {
            gated_close(s, g);
            return;
        }
    }
}

static void answer(srv_server *s, srv_gated *g, int http10, int status, const char *msg) {
    g->answered = 1;
    g->linger_until = ni_now() + LINGER_S;
    if (srv_answer_raw(s, g->fd, http10, status, msg)) {
        gated_close(s, g); /* the socket would not take it: nothing to wait for */
        return;
    }
    linger_read(s, g);
}

static void hand_over(srv_server *s, srv_gated *g) {
    gated_unlink(s, g);
    s->handing = g;
    /* MHD closes the socket whatever the outcome */
    const int ok =
        MHD_add_connection(s->mhd, g->fd, (const struct sockaddr *)&g->addr, g->addr_len) == MHD_YES;
    if (!ok) srv_log(SRV_LOG_WARN, "connection: libmicrohttpd refused it: %s", strerror(errno));
    s->handing = NULL;
    free(g);
    s->need_run = 1;
    if (!ok) srv_accept_resume(s); /* one connection fewer: the listener may go on */
}

/* Something arrived on g (or it was just accepted): judge the head so far. */
static void gate_check(srv_server *s, srv_gated *g) {
    if (g->answered) {
        linger_read(s, g);
        return;
    }
    ssize_t r;
    do r = recv(g->fd, s->peek_buf, SRV_HEAD_PEEK, MSG_PEEK | MSG_DONTWAIT);
    while (r < 0 && errno == EINTR);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (g->peer_shut) gated_close(s, g);
        return;
    }
    if (r <= 0) { /* gone before a request (or a socket error) */
        gated_close(s, g);
        return;
    }
    if ((size_t)r > g->seen) {
        g->seen = (size_t)r;
        g->t_last = ni_now();
    }
    srv_head_info h;
    switch (srv_head_check(s->peek_buf, (size_t)r, s->cfg.max_body, &h)) {
    case SRV_HEAD_OK: hand_over(s, g); return;
    case SRV_HEAD_BAD:
        srv_log(SRV_LOG_INFO, "connection: request head refused with %d: %s", h.status, h.msg);
        answer(s, g, h.http10, h.status, h.msg);
        return;
    case SRV_HEAD_MORE:
        if (g->peer_shut) {
            srv_log(SRV_LOG_INFO, "connection: client closed before its request was complete");
            gated_close(s, g);
        }
        return;
    }
}

static void on_gate(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    srv_server *s = p->data;
    struct epoll_event ev[64];
    int n = epoll_wait(s->gate_epfd, ev, (int)NI_ARRAY_LEN(ev), 0);
    /* handling one entry frees at most that entry (never evicts another) */
    for (int i = 0; i < n; i++) {
        srv_gated *g = ev[i].data.ptr;
        if (ev[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) g->peer_shut = 1;
        gate_check(s, g);
    }
    if (s->need_run) srv_mhd_run(s);
}

static void on_listen(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    srv_server *s = p->data;
    for (int i = 0; i < ACCEPT_BATCH && !s->accept_stopped; i++) {
        if (s->metrics.connections > s->cfg.max_connections) { /* max + 1: full */
            listen_on(s, 0); /* the kernel's backlog holds the rest until a close */
            break;
        }
        struct sockaddr_storage a;
        socklen_t al = sizeof a;
        int fd = accept4(s->listen_fd, (struct sockaddr *)&a, &al, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* level-triggered: without a pause the loop would spin on it */
                srv_log(SRV_LOG_WARN, "accept: %s; retrying in %gs", strerror(errno),
                        ACCEPT_RETRY_S);
                s->accept_retry_at = ni_now() + ACCEPT_RETRY_S;
                listen_on(s, 0);
                break;
            }
            srv_log(SRV_LOG_WARN, "accept: %s", strerror(errno));
            break;
        }
        if (s->cfg.max_connections_per_ip > 0 &&
            count_from(s, &a) >= s->cfg.max_connections_per_ip) {
            srv_log(SRV_LOG_DEBUG, "connection: over max-connections-per-ip; closed");
            close(fd);
            continue;
        }
        srv_gated *g = calloc(1, sizeof *g);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = g};
        if (!g || epoll_ctl(s->gate_epfd, EPOLL_CTL_ADD, fd, &ev)) {
            srv_log(SRV_LOG_WARN, "connection: cannot track it (%s); closed",
                    g ? strerror(errno) : "out of memory");
            free(g);
            close(fd);
            continue;
        }
        g->fd = fd;
        g->t_accept = g->t_last = ni_now();
        g->addr = a;
        g->addr_len = al;
        g->next = s->gated;
        if (s->gated) s->gated->prev = g;
        s->gated = g;
        s->metrics.connections++;
        srv_evict_one(s, NULL, g);
        gate_check(s, g); /* the request often came with the handshake */
    }
    if (s->need_run) srv_mhd_run(s);
}

void srv_accept_sweep(srv_server *s, double now) {
    if (s->accept_retry_at > 0 && now >= s->accept_retry_at) {
        s->accept_retry_at = 0;
        srv_accept_resume(s);
    }
    for (srv_gated *g = s->gated, *next; g; g = next) {
        next = g->next;
        if (g->answered) {
            if (now > g->linger_until) gated_close(s, g);
        } else if (s->cfg.header_timeout > 0 && now > g->t_accept + s->cfg.header_timeout) {
            s->metrics.request_timeouts++;
            srv_log(SRV_LOG_INFO, "connection: request headers not received within %gs; closing",
                    s->cfg.header_timeout);
            char msg[96];
            snprintf(msg, sizeof msg, "request headers not received within %g seconds",
                     s->cfg.header_timeout);
            answer(s, g, 0, 408, msg);
        } else if (s->cfg.idle_timeout > 0 && now > g->t_last + s->cfg.idle_timeout) {
            srv_log(SRV_LOG_DEBUG, "connection: idle for %gs before its request; closed",
                    s->cfg.idle_timeout);
            gated_close(s, g); /* silently, as MHD's idle timeout */
        }
    }
}

int srv_accept_start(srv_server *s) {
    s->peek_buf = malloc(SRV_HEAD_PEEK);
    s->gate_epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!s->peek_buf || s->gate_epfd < 0) {
        srv_log(SRV_LOG_ERROR, "cannot set up the listener: %s",
                s->peek_buf ? strerror(errno) : "out of memory");
        return -1;
    }
    if (uv_poll_init(&s->loop, &s->listen_poll, s->listen_fd) ||
        uv_poll_init(&s->loop, &s->gate_poll, s->gate_epfd)) {
        srv_log(SRV_LOG_ERROR, "cannot poll the listen socket");
        return -1;
    }
    s->accept_inited = 1;
    s->listen_poll.data = s->gate_poll.data = s;
    if (uv_poll_start(&s->gate_poll, UV_READABLE, on_gate)) {
        srv_log(SRV_LOG_ERROR, "cannot poll the listen socket");
        return -1;
    }
    listen_on(s, 1);
    if (!s->listening) {
        srv_log(SRV_LOG_ERROR, "cannot poll the listen socket");
        return -1;
    }
    return 0;
}

void srv_accept_stop(srv_server *s) {
    if (s->accept_stopped) return;
    listen_on(s, 0);
    s->accept_stopped = 1;
    if (s->accept_inited && !uv_is_closing((uv_handle_t *)&s->listen_poll))
        uv_close((uv_handle_t *)&s->listen_poll, NULL);
    if (s->listen_fd >= 0) close(s->listen_fd); /* after the poll stopped watching it */
    s->listen_fd = -1;
}

void srv_accept_close(srv_server *s) {
    srv_accept_stop(s); /* first: gated_close's resume is then a no-op */
    while (s->gated) gated_close(s, s->gated);
    if (s->accept_inited && !uv_is_closing((uv_handle_t *)&s->gate_poll))
        uv_close((uv_handle_t *)&s->gate_poll, NULL);
    if (s->gate_epfd >= 0) close(s->gate_epfd);
    s->gate_epfd = -1;
    free(s->peek_buf);
    s->peek_buf = NULL;
}
