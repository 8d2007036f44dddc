/*
 * srv_client.h - the client side of the HTTP API, for `nanoinfer chat`:
 * URL parsing, an incremental HTTP/1.1 chunked-body decoder and an
 * incremental Server-Sent-Events parser.
 *
 * Design: byte-stream state machines with bounded state (a chunk-size line
 * is at most 64 bytes, an SSE line at most SRV_SSE_MAX_LINE), fed whatever
 * recv() returned, so they are unit-testable with arbitrary splits
 * (test/test_srv_client.c). No I/O here. Single-threaded use per object.
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

void srv_sse_free(srv_sse *p);

#endif
