/*
 * srv_client.c - see srv_client.h.
 */
#include "srv_client.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/util/util.h"

int srv_parse_url(const char *url, char *host, size_t host_cap, int *port, char *prefix, size_t prefix_cap) {
    const char *p = url;
    if (!strncasecmp(p, "http://", 7))
        p += 7;
    else if (strstr(p, "://"))
        return -1; /* https and others */
    const char *hs = p, *he;
    if (*p == '[') {
        hs = ++p;
        he = strchr(p, ']');
        if (!he) return -1;
        p = he + 1;
    } else {
        while (*p && *p != ':' && *p != '/') p++;
        he = p;
    }
    size_t hl = (size_t)(he - hs);
    if (hl == 0 || hl >= host_cap) return -1;
    memcpy(host, hs, hl);
    host[hl] = 0;
    *port = 80;
    if (*p == ':') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || v < 1 || v > 65535) return -1;
        *port = (int)v;
        p = end;
    }
    if (*p && *p != '/') return -1;
    size_t pl = strlen(p);
    while (pl > 0 && p[pl - 1] == '/') pl--;
    if (pl >= prefix_cap) return -1;
    memcpy(prefix, p, pl);
    prefix[pl] = 0;
    return 0;
}

enum { CH_SIZE = 0, CH_DATA, CH_DATA_CR, CH_DATA_LF, CH_TRAILER, CH_DONE };

int srv_chunked_feed(srv_chunked *d, const char *in, size_t n, srv_buf *out, int *done) {
    for (size_t i = 0; i < n;) {
        char c = in[i];
        switch (d->state) {
        case CH_SIZE:
            i++;
            if (c == '\n') {
                d->line[d->line_len] = 0;
                char *end;
                unsigned long long v = strtoull(d->line, &end, 16);
                if (end == d->line || (*end && *end != ';' && *end != '\r' && *end != ' ')) return -1;
                if (v > ((unsigned long long)1 << 40)) return -1;
                d->line_len = 0;
                d->remaining = (size_t)v;
                d->state = v ? CH_DATA : CH_TRAILER;
            } else {
                if (d->line_len + 1 >= (int)sizeof d->line) return -1;
                d->line[d->line_len++] = c;
            }
            break;
        case CH_DATA: {
            size_t k = NI_MIN(d->remaining, n - i);
            if (srv_buf_append(out, in + i, k)) return -1;
            i += k;
            d->remaining -= k;
            if (!d->remaining) d->state = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            i++;
            if (c == '\r')
                d->state = CH_DATA_LF;
            else if (c == '\n')
                d->state = CH_SIZE;
            else
                return -1;
            break;
        case CH_DATA_LF:
            i++;
            if (c != '\n') return -1;
            d->state = CH_SIZE;
            break;
        case CH_TRAILER: /* lines until an empty one */
            i++;
            if (c == '\n') {
                if (d->line_len == 0) {
                    d->state = CH_DONE;
                    *done = 1;
                }
                d->line_len = 0;
            } else if (c != '\r') {
                if (d->line_len < (int)sizeof d->line - 1) d->line_len++;
            }
            break;
        default: return 0; /* bytes after the end are ignored */
        }
    }
    return 0;
}

static int sse_line(srv_sse *p, const char *l, size_t n, srv_sse_fn fn, void *ud) {
    if (n > 0 && l[n - 1] == '\r') n--;
    if (n == 0) { /* dispatch */
        if (p->have_data) fn(ud, srv_buf_cstr(&p->data), srv_buf_size(&p->data));
        srv_buf_clear(&p->data);
        p->have_data = 0;
        return 0;
    }
    if (l[0] == ':') return 0; /* comment */
    const char *colon = memchr(l, ':', n);
    size_t fl = colon ? (size_t)(colon - l) : n;
    if (fl != 4 || memcmp(l, "data", 4)) return 0;
    const char *v = colon ? colon + 1 : l + n;
    size_t vl = (size_t)(l + n - v);
    if (vl && *v == ' ') v++, vl--;
    if (p->have_data && srv_buf_append(&p->data, "\n", 1)) return -1;
    if (srv_buf_append(&p->data, v, vl)) return -1;
    p->have_data = 1;
    return 0;
}

int srv_sse_feed(srv_sse *p, const char *in, size_t n, srv_sse_fn fn, void *ud) {
    p->line.limit = SRV_SSE_MAX_LINE;
    p->data.limit = 4 * (size_t)SRV_SSE_MAX_LINE;
    while (n > 0) {
        const char *nl = memchr(in, '\n', n);
        size_t k = nl ? (size_t)(nl - in) : n;
        if (srv_buf_append(&p->line, in, k)) return -1;
        if (!nl) return 0;
        int rc = sse_line(p, srv_buf_ptr(&p->line), srv_buf_size(&p->line), fn, ud);
        srv_buf_clear(&p->line);
        if (rc) return -1;
        in += k + 1;
        n -= k + 1;
    }
    return 0;
}

void srv_sse_free(srv_sse *p) {
    srv_buf_free(&p->line);
    srv_buf_free(&p->data);
    p->have_data = 0;
}
