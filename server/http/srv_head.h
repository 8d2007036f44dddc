/*
 * srv_head.h - the check of an HTTP/1.x request head before libmicrohttpd
 * sees it (issue 14). libmicrohttpd 0.9.75 answers a malformed request
 * itself, before any server hook runs: an HTML page, for a bad
 * Content-Length its header block written twice, and for a request line it
 * cannot read no answer at all until a timeout. So the listener
 * (srv_accept.c) peeks at the first request of every new connection and
 * hands it to libmicrohttpd only when this check passes; a head that fails
 * gets our JSON error (the OpenAI shape) with the status named here.
 *
 * What is checked (RFC 9112; what h11, nginx and llama-server refuse too):
 *   request line  METHOD SP TARGET SP HTTP/D.D: a token method, a target of
 *                 visible bytes, HTTP major 1 (505 for any other), at most
 *                 SRV_HEAD_LINE_MAX bytes (414);
 *   headers       name ":" value lines: token names, no obsolete line folding,
 *                 no bare CR, no control byte but TAB in a value; the head at
 *                 most SRV_HEAD_MAX bytes (431);
 *   framing       Content-Length all digits, repeated only with one value,
 *                 over max_body: 413 (also when it overflows); Transfer-Encoding
 *                 only "chunked" (501 for other codings), never with
 *                 Content-Length nor in HTTP/1.0 (400: the body length would be
 *                 ambiguous, the request-smuggling shape); a first chunk-size
 *                 line already received must be hex and at most max_body (413);
 *   Host          exactly one in HTTP/1.1.
 * Lines may end in CRLF or a bare LF; empty lines before the request line are
 * skipped. A complete request line (or the method as far as it has arrived)
 * is judged at once, so garbage is refused without waiting for a head end.
 *
 * Pure function, no I/O, no allocation; unit tests in test/test_srv_head.c,
 * fuzzed by test/fuzz/fuzz_http_head.c.
 */
#ifndef NI_SRV_HEAD_H
#define NI_SRV_HEAD_H

#include <stddef.h>

#define SRV_HEAD_MAX (16 * 1024)          /* request line + headers + the empty line */
#define SRV_HEAD_LINE_MAX (8 * 1024)      /* the request line */
/* what a caller offers: the head and a first chunk-size line */
#define SRV_HEAD_PEEK (SRV_HEAD_MAX + 64)

enum srv_head_verdict {
    SRV_HEAD_MORE = 0, /* incomplete and fine so far: offer more bytes */
    SRV_HEAD_OK,       /* a complete head that passes */
    SRV_HEAD_BAD       /* refused: status and msg say why */
};

typedef struct srv_head_info {
    int status;               /* SRV_HEAD_BAD: 400, 413, 414, 431, 501 or 505 */
    char msg[160];            /* SRV_HEAD_BAD: a one-line reason for the client */
    int http10;               /* the request line says HTTP/1.0 (answer in kind) */
    size_t head_len;          /* SRV_HEAD_OK: bytes up to and including the empty line */
    long long content_length; /* SRV_HEAD_OK: -1 when absent */
    int chunked;              /* SRV_HEAD_OK: Transfer-Encoding: chunked */
    int expect_continue;      /* SRV_HEAD_OK: Expect: 100-continue */
} srv_head_info;

/* Judges the n bytes p received so far on a connection (its first request;
 * at most SRV_HEAD_PEEK are looked at). max_body bounds a declared body.
 * Fills *h (status and msg only for SRV_HEAD_BAD). When n reaches
 * SRV_HEAD_MAX without a head end the verdict is SRV_HEAD_BAD (431/414),
 * never SRV_HEAD_MORE. */
enum srv_head_verdict srv_head_check(const char *p, size_t n, long long max_body, srv_head_info *h);

#endif
