/*
 * srv_util.c - see srv_util.h.
 */
#include "srv_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "engine/util/util.h"

static int buf_reserve(srv_buf *b, size_t extra) {
    if (b->limit && b->len - b->off + extra > b->limit) return NI_ERANGE;
    if (b->len + extra + 1 <= b->cap) return 0;
    if (b->off > 0) { /* compact first: the FIFO may have room at the front */
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + extra + 1 <= b->cap) return 0;
    }
    size_t need = b->len + extra + 1;
    if (need < extra) return NI_ENOMEM; /* overflow */
    size_t nc = b->cap ? b->cap : 256;
    while (nc < need) {
        if (nc > SIZE_MAX / 2) return NI_ENOMEM;
        nc *= 2;
    }
    char *p = realloc(b->data, nc);
    if (!p) return NI_ENOMEM;
    b->data = p;
    b->cap = nc;
    return 0;
}

int srv_buf_append(srv_buf *b, const void *p, size_t n) {
    if (n == 0) return 0;
    int rc = buf_reserve(b, n);
    if (rc) return rc;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int srv_buf_printf(srv_buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return NI_EINVAL;
    if ((size_t)n < sizeof tmp) return srv_buf_append(b, tmp, (size_t)n);
    int rc = buf_reserve(b, (size_t)n);
    if (rc) return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

const char *srv_buf_cstr(srv_buf *b) {
    if (!b->data) return "";
    b->data[b->len] = 0; /* the spare byte buf_reserve always keeps */
    return b->data + b->off;
}

void srv_buf_consume(srv_buf *b, size_t n) {
    if (n > b->len - b->off) n = b->len - b->off;
    b->off += n;
    if (b->off == b->len) b->off = b->len = 0;
}

void srv_buf_clear(srv_buf *b) { b->off = b->len = 0; }

void srv_buf_free(srv_buf *b) {
    free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned cp, min;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, cp = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, cp = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

int srv_utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

int srv_utf8_sanitize(srv_buf *out, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t run = 0; /* start of the pending valid run */
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i);
        if (k) {
            i += k;
            continue;
        }
        int rc = srv_buf_append(out, s + run, i - run);
        if (!rc) rc = srv_buf_append(out, "\xEF\xBF\xBD", 3);
        if (rc) return rc;
        /* skip the maximal invalid prefix: the lead byte and its continuation bytes */
        i++;
        while (i < n && (p[i] & 0xC0) == 0x80) i++;
        run = i;
    }
    return srv_buf_append(out, s + run, n - run);
}

int srv_ct_equal(const char *a, size_t alen, const char *b, size_t blen) {
    /* Walk the candidate's full length; compare against the secret cyclically
     * so the time does not depend on the position of the first mismatch. */
    volatile unsigned char acc = (unsigned char)(alen != blen);
    if (blen == 0) return alen == 0;
    for (size_t i = 0; i < alen; i++) acc |= (unsigned char)(a[i] ^ b[i % blen]);
    return acc == 0;
}

void srv_rng_seed(srv_rng *r) {
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) != (ssize_t)sizeof s) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
    }
    r->s = s;
}

uint64_t srv_rng_next(srv_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

char *srv_random_id(srv_rng *r, const char *prefix, char *out, size_t cap) {
    snprintf(out, cap, "%s%016llx%016llx", prefix, (unsigned long long)srv_rng_next(r),
             (unsigned long long)srv_rng_next(r));
    return out;
}
