/*
 * srv_client.c - see srv_client.h.
 */
#include "srv_client.h"

#include <ctype.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
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

void srv_sse_reset(srv_sse *p) {
    srv_buf_clear(&p->line);
    srv_buf_clear(&p->data);
    p->have_data = 0;
}

void srv_sse_free(srv_sse *p) {
    srv_buf_free(&p->line);
    srv_buf_free(&p->data);
    p->have_data = 0;
}

/* ---- HTTP/1.1 response parser ---- */

enum {
    RS_STATUS = 0, /* status line */
    RS_HEADER,     /* header lines until an empty one */
    RS_LEN,        /* Content-Length body */
    RS_CLOSE,      /* body until the connection closes */
    RS_CSIZE,      /* chunk-size line */
    RS_CDATA,      /* chunk data */
    RS_CEND,       /* CRLF after chunk data */
    RS_TRAILER,    /* trailer lines after the last chunk */
    RS_DONE
};

void srv_resp_init(srv_resp *r) {
    memset(r, 0, offsetof(srv_resp, line));
    r->content_length = -1;
    r->state = RS_STATUS;
}

int srv_resp_done(const srv_resp *r) { return r->state == RS_DONE; }

int srv_resp_eof(srv_resp *r) {
    if (r->state == RS_CLOSE) r->state = RS_DONE;
    return r->state == RS_DONE ? 0 : NI_EFORMAT;
}

/* Case-insensitive search for the token tok in a comma-separated header value. */
static int has_token(const char *v, const char *tok) {
    size_t tl = strlen(tok);
    for (const char *p = v; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        const char *t = e;
        while (t > p && (t[-1] == ' ' || t[-1] == '\t')) t--;
        if ((size_t)(t - p) == tl && !strncasecmp(p, tok, tl)) return 1;
        p = e;
    }
    return 0;
}

static int parse_status(srv_resp *r, const char *l) {
    /* HTTP/1.x SP 3DIGIT [SP reason] */
    if (strncmp(l, "HTTP/1.", 7) || !isdigit((unsigned char)l[7]) || l[8] != ' ') return NI_EFORMAT;
    if (!isdigit((unsigned char)l[9]) || !isdigit((unsigned char)l[10]) ||
        !isdigit((unsigned char)l[11]) || (l[12] && l[12] != ' '))
        return NI_EFORMAT;
    r->minor = l[7] - '0';
    r->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
    if (r->status < 100) return NI_EFORMAT;
    r->keep_alive = r->minor >= 1;
    return 0;
}

static int parse_header(srv_resp *r, char *l) {
    if (*l == ' ' || *l == '\t') return NI_EFORMAT; /* obsolete line folding */
    char *colon = strchr(l, ':');
    if (!colon || colon == l) return NI_EFORMAT;
    *colon = 0;
    char *v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    size_t vl = strlen(v);
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) v[--vl] = 0;
    if (!strcasecmp(l, "Content-Length")) {
        if (!vl) return NI_EFORMAT;
        unsigned long long x = 0;
        for (const char *p = v; *p; p++) {
            if (!isdigit((unsigned char)*p) || x > (1ull << 50)) return NI_EFORMAT;
            x = x * 10 + (unsigned)(*p - '0');
        }
        if (r->content_length >= 0 && (unsigned long long)r->content_length != x) return NI_EFORMAT;
        r->content_length = (long long)x;
    } else if (!strcasecmp(l, "Transfer-Encoding")) {
        /* chunked must be the last coding; any other framing is read until the close */
        r->chunked = has_token(v, "chunked") ? 1 : -1;
    } else if (!strcasecmp(l, "Connection")) {
        if (has_token(v, "close"))
            r->keep_alive = 0;
        else if (has_token(v, "keep-alive"))
            r->keep_alive = 1;
    }
    return 0;
}

/* The empty line after the headers: picks the body framing. */
static void end_head(srv_resp *r) {
    if (r->status < 200 && r->status != 101) { /* interim response: the real one follows */
        srv_resp_init(r);
        return;
    }
    r->head_done = 1;
    if (r->status == 204 || r->status == 304 || r->status == 101) {
        r->state = RS_DONE;
        r->chunked = 0;
    } else if (r->chunked == 1) {
        r->state = RS_CSIZE;
    } else if (r->chunked == 0 && r->content_length >= 0) {
        r->remaining = (unsigned long long)r->content_length;
        r->state = r->remaining ? RS_LEN : RS_DONE;
    } else {
        r->chunked = 0;
        r->keep_alive = 0;
        r->state = RS_CLOSE;
    }
}

static int parse_chunk_size(srv_resp *r, const char *l) {
    unsigned long long v = 0;
    const char *p = l;
    for (; isxdigit((unsigned char)*p); p++) {
        if (v >> 40) return NI_EFORMAT;
        v = v * 16 + (unsigned)(isdigit((unsigned char)*p)
                                    ? *p - '0'
                                    : (tolower((unsigned char)*p) - 'a' + 10));
    }
    if (p == l) return NI_EFORMAT;
    while (*p == ' ' || *p == '\t') p++;
    if (*p && *p != ';') return NI_EFORMAT;
    r->remaining = v;
    r->state = v ? RS_CDATA : RS_TRAILER;
    return 0;
}

/* A complete line of a line state (status, header, chunk size, trailer). */
static int on_line(srv_resp *r, char *l) {
    switch (r->state) {
    case RS_STATUS: {
        int rc = parse_status(r, l);
        if (!rc) r->state = RS_HEADER;
        return rc;
    }
    case RS_HEADER:
        if (!*l) {
            end_head(r);
            return 0;
        }
        return parse_header(r, l);
    case RS_CSIZE: return parse_chunk_size(r, l);
    case RS_TRAILER:
        if (!*l) r->state = RS_DONE;
        return 0;
    default: return NI_EFORMAT;
    }
}

int srv_resp_feed(srv_resp *r, const char *in, size_t n, srv_resp_body_fn fn, void *ud,
                  size_t *used) {
    size_t i = 0;
    int rc = 0;
    while (i < n && r->state != RS_DONE) {
        switch (r->state) {
        case RS_LEN:
        case RS_CDATA: {
            size_t k = (size_t)NI_MIN((unsigned long long)(n - i), r->remaining);
            if (fn && k) fn(ud, in + i, k);
            i += k;
            r->remaining -= k;
            if (!r->remaining) r->state = r->state == RS_LEN ? RS_DONE : RS_CEND;
            break;
        }
        case RS_CLOSE:
            if (fn) fn(ud, in + i, n - i);
            i = n;
            break;
        case RS_CEND: /* CRLF, or a bare LF */
            if (in[i] == '\r' && r->line_len == 0) {
                r->line_len = 1;
            } else if (in[i] == '\n') {
                r->line_len = 0;
                r->state = RS_CSIZE;
            } else {
                rc = NI_EFORMAT;
                goto out;
            }
            i++;
            break;
        default: { /* line states: collect up to LF */
            const char *nl = memchr(in + i, '\n', n - i);
            size_t k = nl ? (size_t)(nl - (in + i)) : n - i;
            if (r->state != RS_CSIZE) { /* head and trailer lines share one bound */
                r->head_bytes += k + (nl ? 1 : 0);
                if (r->head_bytes > SRV_RESP_HEAD_MAX) {
                    rc = NI_ERANGE;
                    goto out;
                }
            }
            size_t cap = r->state == RS_CSIZE ? 256 : sizeof r->line;
            if (r->line_len + k >= cap) {
                rc = NI_ERANGE;
                goto out;
            }
            memcpy(r->line + r->line_len, in + i, k);
            r->line_len += k;
            i += k;
            if (!nl) break;
            i++; /* the LF */
            if (r->line_len && r->line[r->line_len - 1] == '\r') r->line_len--;
            r->line[r->line_len] = 0;
            r->line_len = 0;
            if ((rc = on_line(r, r->line))) goto out;
            break;
        }
        }
    }
out:
    *used = i;
    return rc;
}

/* ---- one OpenAI streaming chunk ----
 * Every token of a benchmark passes through here, so the common chunks are read
 * by a small JSON scanner that walks the structure (strings with their escapes,
 * nesting bounded at 32 levels, numbers, literals) without building a tree or
 * allocating; only a chunk with an "error" member goes through jansson, for
 * the message. Keys are matched on their raw bytes. */

typedef struct jscan {
    const char *p, *e;
    int depth;
} jscan;

static void js_ws(jscan *s) {
    while (s->p < s->e && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}

/* A string at s->p ('"'): *v, *n get its raw bytes (escapes not decoded). */
static int js_string(jscan *s, const char **v, size_t *n) {
    if (s->p >= s->e || *s->p != '"') return NI_EFORMAT;
    const char *b = ++s->p;
    while (s->p < s->e) {
        unsigned char c = (unsigned char)*s->p;
        if (c == '"') {
            *v = b;
            *n = (size_t)(s->p - b);
            s->p++;
            return 0;
        }
        if (c < 0x20) return NI_EFORMAT;
        if (c == '\\') {
            if (++s->p >= s->e) return NI_EFORMAT;
            c = (unsigned char)*s->p;
            if (c == 'u') {
                for (int k = 1; k <= 4; k++)
                    if (s->p + k >= s->e || !isxdigit((unsigned char)s->p[k])) return NI_EFORMAT;
                s->p += 4;
            } else if (!strchr("\"\\/bfnrt", c) || !c) {
                return NI_EFORMAT;
            }
        }
        s->p++;
    }
    return NI_EFORMAT;
}

static int js_number(jscan *s, long *out) {
    const char *b = s->p;
    if (s->p < s->e && *s->p == '-') s->p++;
    const char *d = s->p;
    while (s->p < s->e && isdigit((unsigned char)*s->p)) s->p++;
    if (s->p == d) return NI_EFORMAT;
    int is_int = 1;
    if (s->p < s->e && *s->p == '.') {
        is_int = 0;
        const char *f = ++s->p;
        while (s->p < s->e && isdigit((unsigned char)*s->p)) s->p++;
        if (s->p == f) return NI_EFORMAT;
    }
    if (s->p < s->e && (*s->p == 'e' || *s->p == 'E')) {
        is_int = 0;
        s->p++;
        if (s->p < s->e && (*s->p == '+' || *s->p == '-')) s->p++;
        const char *x = s->p;
        while (s->p < s->e && isdigit((unsigned char)*s->p)) s->p++;
        if (s->p == x) return NI_EFORMAT;
    }
    if (out) {
        if (!is_int || s->p - b > 18) return NI_EFORMAT; /* counts are small integers */
        *out = strtol(b, NULL, 10);
    }
    return 0;
}

static int js_value(jscan *s);

/* Iterates an object at s->p: calls fn for each member with s->p at its value,
 * which fn must consume (js_value to skip it). */
typedef int (*js_member_fn)(jscan *s, const char *key, size_t klen, void *ud);

static int js_object(jscan *s, js_member_fn fn, void *ud) {
    if (s->p >= s->e || *s->p != '{' || ++s->depth > 32) return NI_EFORMAT;
    s->p++;
    js_ws(s);
    if (s->p < s->e && *s->p == '}') {
        s->p++;
        s->depth--;
        return 0;
    }
    for (;;) {
        const char *k;
        size_t kl;
        int rc;
        js_ws(s);
        if ((rc = js_string(s, &k, &kl))) return rc;
        js_ws(s);
        if (s->p >= s->e || *s->p != ':') return NI_EFORMAT;
        s->p++;
        js_ws(s);
        if ((rc = fn ? fn(s, k, kl, ud) : js_value(s))) return rc;
        js_ws(s);
        if (s->p >= s->e) return NI_EFORMAT;
        if (*s->p == '}') {
            s->p++;
            s->depth--;
            return 0;
        }
        if (*s->p++ != ',') return NI_EFORMAT;
    }
}

/* Iterates an array: fn(s, index, ud) consumes each element. */
static int js_array(jscan *s, int (*fn)(jscan *s, void *ud), void *ud) {
    if (s->p >= s->e || *s->p != '[' || ++s->depth > 32) return NI_EFORMAT;
    s->p++;
    js_ws(s);
    if (s->p < s->e && *s->p == ']') {
        s->p++;
        s->depth--;
        return 0;
    }
    for (;;) {
        js_ws(s);
        int rc = fn ? fn(s, ud) : js_value(s);
        if (rc) return rc;
        js_ws(s);
        if (s->p >= s->e) return NI_EFORMAT;
        if (*s->p == ']') {
            s->p++;
            s->depth--;
            return 0;
        }
        if (*s->p++ != ',') return NI_EFORMAT;
    }
}

static int js_lit(jscan *s, const char *w) {
    size_t n = strlen(w);
    if ((size_t)(s->e - s->p) < n || memcmp(s->p, w, n)) return NI_EFORMAT;
    s->p += n;
    return 0;
}

static int js_value(jscan *s) {
    if (s->p >= s->e) return NI_EFORMAT;
    const char *v;
    size_t n;
    switch (*s->p) {
    case '{': return js_object(s, NULL, NULL);
    case '[': return js_array(s, NULL, NULL);
    case '"': return js_string(s, &v, &n);
    case 't': return js_lit(s, "true");
    case 'f': return js_lit(s, "false");
    case 'n': return js_lit(s, "null");
    default: return js_number(s, NULL);
    }
}

#define KEY_IS(k, kl, lit) ((kl) == sizeof(lit) - 1 && !memcmp((k), lit, sizeof(lit) - 1))

/* A string member that counts as generated text when non-empty (null allowed). */
static int js_text_member(jscan *s, srv_stream_ev *ev) {
    if (s->p < s->e && *s->p == '"') {
        const char *v;
        size_t n;
        int rc = js_string(s, &v, &n);
        if (!rc && n) ev->text = 1;
        return rc;
    }
    return js_value(s);
}

static int on_delta(jscan *s, const char *k, size_t kl, void *ud) {
    if (KEY_IS(k, kl, "content") || KEY_IS(k, kl, "reasoning_content") ||
        KEY_IS(k, kl, "reasoning"))
        return js_text_member(s, ud);
    return js_value(s);
}

static int on_choice_member(jscan *s, const char *k, size_t kl, void *ud) {
    srv_stream_ev *ev = ud;
    if (KEY_IS(k, kl, "text")) return js_text_member(s, ev);
    if (KEY_IS(k, kl, "delta") && s->p < s->e && *s->p == '{') return js_object(s, on_delta, ev);
    if (KEY_IS(k, kl, "finish_reason") && s->p < s->e && *s->p == '"') {
        const char *v;
        size_t n;
        int rc = js_string(s, &v, &n);
        if (!rc && !ev->finish_reason[0])
            snprintf(ev->finish_reason, sizeof ev->finish_reason, "%.*s", (int)NI_MIN(n, 23), v);
        return rc;
    }
    return js_value(s);
}

static int on_choice(jscan *s, void *ud) {
    if (s->p < s->e && *s->p == '{') return js_object(s, on_choice_member, ud);
    return js_value(s);
}

typedef struct usage_acc {
    long prompt, completion;
    int has_prompt, has_completion;
} usage_acc;

static int on_usage(jscan *s, const char *k, size_t kl, void *ud) {
    usage_acc *u = ud;
    int is_p = KEY_IS(k, kl, "prompt_tokens"), is_c = KEY_IS(k, kl, "completion_tokens");
    if ((is_p || is_c) && s->p < s->e && (*s->p == '-' || isdigit((unsigned char)*s->p))) {
        long v;
        const char *b = s->p;
        if (js_number(s, &v)) { /* not an integer: skip it */
            s->p = b;
            return js_number(s, NULL);
        }
        if (is_p)
            u->prompt = v, u->has_prompt = 1;
        else
            u->completion = v, u->has_completion = 1;
        return 0;
    }
    return js_value(s);
}

typedef struct top_acc {
    srv_stream_ev *ev;
    usage_acc u;
    int error;
} top_acc;

static int on_top(jscan *s, const char *k, size_t kl, void *ud) {
    top_acc *t = ud;
    int is_obj = s->p < s->e && *s->p == '{', is_arr = s->p < s->e && *s->p == '[';
    if (KEY_IS(k, kl, "choices") && is_arr) return js_array(s, on_choice, t->ev);
    if (KEY_IS(k, kl, "usage") && is_obj) return js_object(s, on_usage, &t->u);
    if (KEY_IS(k, kl, "error") && !(s->p < s->e && *s->p == 'n')) t->error = 1;
    return js_value(s);
}

/* The message of an error chunk, through jansson (rare). */
static void error_message(const char *data, size_t len, srv_stream_ev *ev) {
    json_t *j = json_loadb(data, len, JSON_ALLOW_NUL, NULL);
    json_t *err = json_object_get(j, "error");
    const char *m = json_string_value(json_object_get(err, "message"));
    if (!m) m = json_string_value(err);
    snprintf(ev->error_msg, sizeof ev->error_msg, "%s", m ? m : "error");
    json_decref(j);
}

int srv_stream_event_parse(const char *data, size_t len, srv_stream_ev *ev) {
    memset(ev, 0, sizeof *ev);
    if (len == 6 && !memcmp(data, "[DONE]", 6)) {
        ev->done = 1;
        return 0;
    }
    jscan s = {data, data + len, 0};
    top_acc t = {.ev = ev};
    js_ws(&s);
    int rc = js_object(&s, on_top, &t);
    js_ws(&s);
    if (rc || s.p != s.e) {
        memset(ev, 0, sizeof *ev);
        return NI_EFORMAT;
    }
    if (t.u.has_completion) {
        ev->has_usage = 1;
        ev->completion_tokens = t.u.completion;
        ev->prompt_tokens = t.u.has_prompt ? t.u.prompt : -1;
    }
    if (t.error) {
        ev->error = 1;
        error_message(data, len, ev);
    }
    return 0;
}
