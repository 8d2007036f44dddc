/*
 * srv_head.c - see srv_head.h. One pass over the lines received so far;
 * every complete line is judged as it is reached, so the verdict for a
 * given prefix never depends on bytes after it, except that a head is only
 * OK once its empty line is in.
 */
#include "srv_head.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* RFC 9110 tchar */
static int is_tchar(unsigned char c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static enum srv_head_verdict bad(srv_head_info *h, int status, const char *fmt, ...) {
    h->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->msg, sizeof h->msg, fmt, ap);
    va_end(ap);
    return SRV_HEAD_BAD;
}

/* Too many bytes without the end of the request line (414) or of the head (431). */
static enum srv_head_verdict too_long(srv_head_info *h, int in_request_line) {
    return in_request_line
               ? bad(h, 414, "request line too long (limit %d bytes)", SRV_HEAD_LINE_MAX)
               : bad(h, 431, "request headers too large (limit %d bytes)", SRV_HEAD_MAX);
}

/* The request line [l, l + n) (no line end). */
static enum srv_head_verdict request_line(const char *l, size_t n, srv_head_info *h) {
    if (n > SRV_HEAD_LINE_MAX) return too_long(h, 1);
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)l[i])) i++;
    if (i == 0 || i >= n || l[i] != ' ') return bad(h, 400, "malformed request line");
    size_t t0 = ++i;
    while (i < n && (unsigned char)l[i] > 0x20 && l[i] != 0x7f) i++;
    if (i == t0 || i >= n || l[i] != ' ') return bad(h, 400, "malformed request line");
    const char *v = l + i + 1;
    size_t vl = n - i - 1;
    if (vl != 8 || memcmp(v, "HTTP/", 5) || v[5] < '0' || v[5] > '9' || v[6] != '.' || v[7] < '0' ||
        v[7] > '9')
        return bad(h, 400, "malformed request line (no HTTP version)");
    if (v[5] != '1') return bad(h, 505, "HTTP version %.8s not supported (HTTP/1.1 is)", v);
    h->http10 = v[7] == '0';
    return SRV_HEAD_MORE;
}

/* So far only the start of the request line [l, l + n) is in: refuse it when
 * the method already cannot be one (garbage is answered without waiting). */
static enum srv_head_verdict partial_request_line(const char *l, size_t n, srv_head_info *h) {
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)l[i])) i++;
    if (i < n && (i == 0 || l[i] != ' ')) return bad(h, 400, "malformed request line");
    if (n > SRV_HEAD_LINE_MAX) return too_long(h, 1);
    return SRV_HEAD_MORE;
}

typedef struct framing {
    long long content_length; /* -1 none */
    int te_seen, chunked, n_host, expect_continue;
    char te_bad[40]; /* the first unsupported coding */
} framing;

static int name_is(const char *l, size_t n, const char *name) {
    return strlen(name) == n && !strncasecmp(l, name, n);
}

/* Case-insensitive token list [v, v + n): the codings of Transfer-Encoding.
 * Sets f->chunked when the only coding is chunked, else te_bad. */
static void transfer_codings(const char *v, size_t n, framing *f) {
    f->te_seen++;
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        size_t b = i;
        while (i < n && v[i] != ',') i++;
        size_t e = i;
        while (e > b && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
        if (e == b) continue;
        if (e - b == 7 && !strncasecmp(v + b, "chunked", 7) && !f->chunked && !f->te_bad[0]) {
            f->chunked = 1;
        } else if (!f->te_bad[0]) {
            snprintf(f->te_bad, sizeof f->te_bad, "%.*s", (int)(e - b > 32 ? 32 : e - b), v + b);
            f->chunked = 0;
        }
    }
}

/* One header line [l, l + n) (no line end). */
static enum srv_head_verdict header_line(const char *l, size_t n, long long max_body, framing *f,
                                         srv_head_info *h) {
    if (l[0] == ' ' || l[0] == '\t') return bad(h, 400, "obsolete header line folding");
    size_t c = 0;
    while (c < n && is_tchar((unsigned char)l[c])) c++;
    if (c == 0 || c >= n || l[c] != ':') return bad(h, 400, "malformed header line");
    const char *v = l + c + 1;
    size_t vl = n - c - 1;
    while (vl && (*v == ' ' || *v == '\t')) v++, vl--;
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
    for (size_t i = 0; i < vl; i++) {
        unsigned char b = (unsigned char)v[i];
        if ((b < 0x20 && b != '\t') || b == 0x7f)
            return bad(h, 400,
                       "a request header holds a control character (NUL, CR, LF, DEL, ...)");
    }
    if (name_is(l, c, "Content-Length")) {
        if (!vl) return bad(h, 400, "invalid Content-Length (not a number)");
        unsigned long long x = 0;
        int over = 0;
        for (size_t i = 0; i < vl; i++) {
            if (v[i] < '0' || v[i] > '9')
                return bad(h, 400, "invalid Content-Length (not a number)");
            if (x > (1ull << 60))
                over = 1;
            else
                x = x * 10 + (unsigned)(v[i] - '0');
        }
        long long len = over || x > (1ull << 60) ? (1ll << 60) : (long long)x;
        if (f->content_length >= 0 && f->content_length != len)
            return bad(h, 400, "conflicting Content-Length headers");
        f->content_length = len;
        if (len > max_body)
            return bad(h, 413, "request body too large (limit %lld bytes)", max_body);
    } else if (name_is(l, c, "Transfer-Encoding")) {
        transfer_codings(v, vl, f);
    } else if (name_is(l, c, "Host")) {
        f->n_host++;
    } else if (name_is(l, c, "Expect")) {
        f->expect_continue = vl == 12 && !strncasecmp(v, "100-continue", 12);
    }
    return SRV_HEAD_MORE;
}

/* The first chunk-size line [l, l + n) of a chunked body (no line end). */
static enum srv_head_verdict chunk_size_line(const char *l, size_t n, long long max_body,
                                             srv_head_info *h) {
    size_t i = 0;
    unsigned long long v = 0;
    int over = 0;
    for (; i < n; i++) {
        unsigned char c = (unsigned char)l[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) break;
        if (v >> 56)
            over = 1;
        else
            v = v * 16 + (unsigned)d;
    }
    if (i == 0) return bad(h, 400, "malformed chunk size");
    while (i < n && (l[i] == ' ' || l[i] == '\t')) i++;
    if (i < n && l[i] != ';') return bad(h, 400, "malformed chunk size");
    if (over || v > (unsigned long long)max_body)
        return bad(h, 413, "request body too large (limit %lld bytes)", max_body);
    return SRV_HEAD_MORE;
}

enum srv_head_verdict srv_head_check(const char *p, size_t n, long long max_body,
                                     srv_head_info *h) {
    memset(h, 0, sizeof *h);
    h->content_length = -1;
    if (n > SRV_HEAD_PEEK) n = SRV_HEAD_PEEK;
    framing f = {.content_length = -1};
    size_t pos = 0;
    while (pos < n && (p[pos] == '\r' || p[pos] == '\n')) pos++; /* empty lines first */
    const size_t start = pos;
    enum srv_head_verdict r;
    for (int line = 0;; line++) {
        const char *nl = memchr(p + pos, '\n', n - pos);
        if (!nl) {
            if (line == 0 && (r = partial_request_line(p + pos, n - pos, h))) return r;
            return n >= SRV_HEAD_MAX ? too_long(h, line == 0) : SRV_HEAD_MORE;
        }
        size_t ln = (size_t)(nl - (p + pos));
        const char *l = p + pos;
        if (ln && l[ln - 1] == '\r') ln--;
        if (memchr(l, '\r', ln)) return bad(h, 400, "a bare CR in the request head");
        pos = (size_t)(nl - p) + 1;
        if (pos - start > SRV_HEAD_MAX) return too_long(h, line == 0);
        if (line == 0) {
            if ((r = request_line(l, ln, h))) return r;
            continue;
        }
        if (ln == 0) break; /* the end of the head */
        if ((r = header_line(l, ln, max_body, &f, h))) return r;
    }
    if (!h->http10 && f.n_host != 1)
        return bad(h, 400, f.n_host ? "more than one Host header" : "missing Host header");
    if (f.te_seen) {
        if (h->http10) return bad(h, 400, "Transfer-Encoding in an HTTP/1.0 request");
        if (f.content_length >= 0)
            return bad(h, 400, "both Content-Length and Transfer-Encoding (ambiguous body length)");
        if (!f.chunked)
            return bad(h, 501, "Transfer-Encoding '%s' not supported (only chunked)",
                       f.te_bad[0] ? f.te_bad : "");
    }
    h->head_len = pos;
    h->content_length = f.content_length;
    h->chunked = f.chunked;
    h->expect_continue = f.expect_continue;
    if (f.chunked) { /* the first chunk-size line, when it came with the head */
        const char *nl = memchr(p + pos, '\n', n - pos);
        if (nl) {
            size_t ln = (size_t)(nl - (p + pos));
            if (ln && p[pos + ln - 1] == '\r') ln--;
            if ((r = chunk_size_line(p + pos, ln, max_body, h))) return r;
        }
    }
    return SRV_HEAD_OK;
}
