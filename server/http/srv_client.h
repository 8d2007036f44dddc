/*
 * srv_client.h - the client side of the HTTP API, for `nanoinfer chat` and
 * the serving benchmark (`nanoinfer bench --url`): URL parsing, an
 * incremental HTTP/1.1 chunked-body decoder, an incremental HTTP/1.1
 * response parser (status line, headers, a body framed by Content-Length,
 * chunked transfer encoding or the end of the connection), an incremental
 * Server-Sent-Events parser, and the reading of one OpenAI streaming chunk.
 *
 * Design: byte-stream state machines with bounded state (a chunk-size line
 * is at most 64 bytes, a response head at most SRV_RESP_HEAD_MAX, an SSE line
 * at most SRV_SSE_MAX_LINE), fed whatever recv() returned, so they are
 * unit-testable with arbitrary splits (test/test_srv_client.c). No I/O here.
 * Single-threaded use per object.
 */
#ifndef NI_SRV_CLIENT_H
#define NI_SRV_CLIENT_H

#include <stddef.h>

#include "srv_util.h"

#define SRV_SSE_MAX_LINE (1 << 20)

/* Splits "http://host[:port][/prefix]" (also "[v6addr]:port"; no scheme means
 * http). prefix gets the path without a trailing slash ("" for none).
 * Returns 0, or -1 for https, other schemes, a bad port or too-long parts. */
int srv_parse_url(const char *url, char *host, size_t host_cap, int *port, char *prefix, size_t prefix_cap);

typedef struct srv_chunked {
    int state;        /* private */
    size_t remaining; /* bytes left in the current chunk */
    char line[64];
    int line_len;
} srv_chunked;

/* Decodes n bytes of a chunked body into out. Sets *done once the final
 * zero-size chunk (and its trailer) has been read. Returns 0, or -1 on
 * malformed input or an out-of-memory append. */
int srv_chunked_feed(srv_chunked *d, const char *in, size_t n, srv_buf *out, int *done);

typedef void (*srv_sse_fn)(void *ud, const char *data, size_t len);

typedef struct srv_sse {
    srv_buf line; /* current partial line */
    srv_buf data; /* data of the current event (lines joined by \n) */
    int have_data;
} srv_sse;

/* Feeds body bytes; for every complete event (ended by a blank line) that
 * has data, calls fn with its data ("data:" fields joined by newlines, one
 * leading space stripped, as the SSE spec says). Comment lines and other
 * fields are ignored. Returns 0, or -1 when a line exceeds SRV_SSE_MAX_LINE
 * or memory runs out. */
int srv_sse_feed(srv_sse *p, const char *in, size_t n, srv_sse_fn fn, void *ud);

/* Forgets a partial line and event (the next response on a kept-alive
 * connection starts clean), keeping the memory. */
void srv_sse_reset(srv_sse *p);

void srv_sse_free(srv_sse *p);

/* ---- HTTP/1.1 response parser ---- */

#define SRV_RESP_HEAD_MAX (64 * 1024) /* status line + headers (+ chunk trailers) */
#define SRV_RESP_LINE_MAX 8192        /* one header line */

/* Body bytes, decoded (chunk framing removed), in order, as they arrive. */
typedef void (*srv_resp_body_fn)(void *ud, const char *p, size_t n);

typedef struct srv_resp {
    /* set once the head is parsed (head_done): */
    int head_done;
    int status;               /* 100..999 */
    int keep_alive;           /* the connection may carry the next request */
    int chunked;              /* Transfer-Encoding: chunked */
    long long content_length; /* -1 when absent */
    /* private */
    int state, minor;
    size_t head_bytes;
    unsigned long long remaining;
    size_t line_len;
    char line[SRV_RESP_LINE_MAX];
} srv_resp;

/* Ready for the next response (also between responses on one connection). */
void srv_resp_init(srv_resp *r);

/* Feeds n bytes received from the server. Body bytes go to fn (may be NULL).
 * *used gets how many bytes belong to this response: n, or fewer when the
 * response ended inside them (the rest would be the next response's). A
 * 1xx interim response (100 Continue) is skipped; 204, 304 and 1xx have no
 * body. Returns 0, NI_EFORMAT on a malformed status line, header, length or
 * chunk framing (the connection is unusable), NI_ERANGE when the head or a
 * line exceeds its bound. */
int srv_resp_feed(srv_resp *r, const char *in, size_t n, srv_resp_body_fn fn, void *ud,
                  size_t *used);

/* 1 once the whole response (head and body) has been read. */
int srv_resp_done(const srv_resp *r);

/* The server closed the connection. Returns 0 when that completes the
 * response (a body delimited by the close, or the response was already
 * done), NI_EFORMAT when it was cut short (no head, or fewer body bytes
 * than framed). */
int srv_resp_eof(srv_resp *r);

/* ---- one OpenAI streaming chunk (the data of one SSE event) ---- */

typedef struct srv_stream_ev {
    int done;      /* the data was [DONE] */
    int text;      /* some choice carries generated text: a non-empty "text"
                      (completions) or delta "content" / "reasoning_content" /
                      "reasoning" (chat); the role-only first chunk does not */
    int has_usage; /* a "usage" object with token counts */
    long prompt_tokens, completion_tokens;
    char finish_reason[24]; /* of the first choice that has one; "" when none */
    int error;              /* an "error" member (an error event mid-stream) */
    char error_msg[160];    /* its message, truncated */
} srv_stream_ev;

/* Reads one SSE data payload of /v1/completions or /v1/chat/completions into
 * ev. Returns 0, or NI_EFORMAT when it is neither [DONE] nor a JSON object. */
int srv_stream_event_parse(const char *data, size_t len, srv_stream_ev *ev);

#endif
