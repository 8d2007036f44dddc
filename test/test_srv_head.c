/*
 * test_srv_head.c - srv_head_check, the server's check of a connection's
 * first request head (server/http/srv_head.h): a table of heads with their
 * verdict and status (the probe's findings of issue 14 among them), every
 * prefix of each (a head is judged as it arrives: a prefix is "more" or the
 * same refusal, never a different one, and never OK before the empty line),
 * the limits at their edges, and random mutations of valid heads (seeded:
 * every verdict is well formed, OK only with a head end inside the input).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/http/srv_head.h"
#include "test_util.h"

static tu_rng g_rng;

#define MAXB 1000 /* the max_body of every case */

typedef struct hcase {
    const char *name;
    const char *p;
    size_t n; /* 0: strlen(p) */
    enum srv_head_verdict v;
    int status; /* SRV_HEAD_BAD */
} hcase;

/* a literal with embedded NULs and its length */
#define LIT(s) s, sizeof(s) - 1

#define POST "POST /v1/completions HTTP/1.1\r\nHost: t\r\n"

static const hcase k_cases[] = {
    {"plain GET", "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", 0, SRV_HEAD_OK, 0},
    {"bare LF lines", "GET /health HTTP/1.1\nHost: t\n\n", 0, SRV_HEAD_OK, 0},
    {"empty lines first", "\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n", 0, SRV_HEAD_OK, 0},
    {"HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", 0, SRV_HEAD_OK, 0},
    {"HTTP/1.2 is 1.x", "GET / HTTP/1.2\r\nHost: t\r\n\r\n", 0, SRV_HEAD_OK, 0},
    {"POST with a body", POST "Content-Length: 5\r\n\r\nhello", 0, SRV_HEAD_OK, 0},
    {"Content-Length at max-body", POST "Content-Length: 1000\r\n\r\n", 0, SRV_HEAD_OK, 0},
    {"repeated equal Content-Length", POST "Content-Length: 5\r\nContent-Length: 5\r\n\r\n", 0,
     SRV_HEAD_OK, 0},
    {"chunked", POST "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 0, SRV_HEAD_OK,
     0},
    {"chunked, case and ext", POST "transfer-encoding: Chunked\r\n\r\n3e8;x=y\r\n", 0, SRV_HEAD_OK,
     0},
    {"TAB and OWS in values", "GET / HTTP/1.1\r\nHost:\tt \r\nX-A:  a\tb  \r\n\r\n", 0, SRV_HEAD_OK,
     0},
    {"bytes >= 0x80 in a value", "GET / HTTP/1.1\r\nHost: t\r\nX-A: \xc3\xa9\r\n\r\n", 0,
     SRV_HEAD_OK, 0},
    {"Expect", POST "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n", 0, SRV_HEAD_OK, 0},

    {"Content-Length: -1", POST "Content-Length: -1\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"Content-Length: abc", POST "Content-Length: abc\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"Content-Length empty", POST "Content-Length:\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"Content-Length list", POST "Content-Length: 5, 5\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"Content-Length 23 digits", POST "Content-Length: 99999999999999999999999\r\n\r\n", 0,
     SRV_HEAD_BAD, 413},
    {"Content-Length over max-body", POST "Content-Length: 1001\r\n\r\n", 0, SRV_HEAD_BAD, 413},
    {"conflicting Content-Length", POST "Content-Length: 1\r\nContent-Length: 2\r\n\r\n", 0,
     SRV_HEAD_BAD, 400},
    {"Content-Length and chunked", POST "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
     0, SRV_HEAD_BAD, 400},
    {"Transfer-Encoding gzip", POST "Transfer-Encoding: gzip\r\n\r\n", 0, SRV_HEAD_BAD, 501},
    {"chunked then gzip", POST "Transfer-Encoding: chunked, gzip\r\n\r\n", 0, SRV_HEAD_BAD, 501},
    {"gzip then chunked", POST "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 0,
     SRV_HEAD_BAD, 501},
    {"Transfer-Encoding in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 0,
     SRV_HEAD_BAD, 400},
    {"chunk size ffffffffffffffff", POST "Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
     0, SRV_HEAD_BAD, 413},
    {"chunk size of 40 digits",
     POST "Transfer-Encoding: chunked\r\n\r\n0000000000000000000000000000000000000001\r\n", 0,
     SRV_HEAD_OK, 0},
    {"chunk size over max-body", POST "Transfer-Encoding: chunked\r\n\r\n3e9\r\n", 0, SRV_HEAD_BAD,
     413},
    {"chunk size not hex", POST "Transfer-Encoding: chunked\r\n\r\nzz\r\n", 0, SRV_HEAD_BAD, 400},
    {"chunk size then junk", POST "Transfer-Encoding: chunked\r\n\r\n5 x\r\n", 0, SRV_HEAD_BAD,
     400},
    {"garbage request line", LIT("\0\xff\xfe GARBAGE\r\n\r\n"), SRV_HEAD_BAD, 400},
    {"TLS hello", LIT("\x16\x03\x01\x02\x00\x01"), SRV_HEAD_BAD, 400},
    {"space first", " GET / HTTP/1.1\r\nHost: t\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"two spaces", "GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"no version", "GET /health\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"lower-case version", "GET / http/1.1\r\nHost: t\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"version junk", "GET / HTTP/1.1x\r\nHost: t\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"HTTP/2.0", "GET / HTTP/2.0\r\nHost: t\r\n\r\n", 0, SRV_HEAD_BAD, 505},
    {"HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", 0, SRV_HEAD_BAD, 505},
    {"control byte in the target", "GET /a\x01 HTTP/1.1\r\nHost: t\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"no Host", "GET / HTTP/1.1\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"no colon", "GET / HTTP/1.1\r\nHost: t\r\nOops\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"empty name", "GET / HTTP/1.1\r\nHost: t\r\n: v\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"space before colon", "GET / HTTP/1.1\r\nHost : t\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"obs-fold", "GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\t2\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"NUL in a value", LIT("GET / HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k\0x\r\n\r\n"),
     SRV_HEAD_BAD, 400},
    {"DEL in a value", "GET / HTTP/1.1\r\nHost: t\r\nX: a\x7f\r\n\r\n", 0, SRV_HEAD_BAD, 400},
    {"bare CR", "GET / HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n", 0, SRV_HEAD_BAD, 400},
};

static enum srv_head_verdict check(const char *p, size_t n, srv_head_info *h) {
    return srv_head_check(p, n, MAXB, h);
}

/* A verdict is well formed: BAD has a known status and a message, OK ends
 * its head with a line end inside the input. */
static void well_formed(enum srv_head_verdict v, const srv_head_info *h, const char *p, size_t n,
                        const char *what) {
    if (v == SRV_HEAD_BAD) {
        int st = h->status;
        if (!(st == 400 || st == 413 || st == 414 || st == 431 || st == 501 || st == 505) ||
            !h->msg[0])
            fail_msg("%s: BAD with status %d, message '%s'", what, st, h->msg);
    } else if (v == SRV_HEAD_OK) {
        if (h->head_len < 2 || h->head_len > n || p[h->head_len - 1] != '\n')
            fail_msg("%s: OK with head_len %zu of %zu bytes", what, h->head_len, n);
    } else if (v != SRV_HEAD_MORE) {
        fail_msg("%s: verdict %d", what, (int)v);
    }
}

static void test_table(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof k_cases / sizeof k_cases[0]; i++) {
        const hcase *c = &k_cases[i];
        size_t n = c->n ? c->n : strlen(c->p);
        srv_head_info h;
        enum srv_head_verdict v = check(c->p, n, &h);
        well_formed(v, &h, c->p, n, c->name);
        if (v != c->v || (v == SRV_HEAD_BAD && h.status != c->status))
            fail_msg("%s: verdict %d status %d (%s), want verdict %d status %d", c->name, (int)v,
                     h.status, h.msg, (int)c->v, c->status);
    }
}

/* Bytes arrive in any split: the verdict of every prefix is MORE or the
 * full input's own refusal; OK never comes before the head's end. The first
 * chunk-size line is judged only when it is in (a documented limit), so for
 * chunked requests a prefix that ends the head may be OK. */
static void test_prefixes(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof k_cases / sizeof k_cases[0]; i++) {
        const hcase *c = &k_cases[i];
        size_t n = c->n ? c->n : strlen(c->p);
        srv_head_info full, h;
        check(c->p, n, &full);
        int chunked = strstr(c->p, "hunked") != NULL;
        for (size_t k = 0; k < n; k++) {
            enum srv_head_verdict v = check(c->p, k, &h);
            well_formed(v, &h, c->p, k, c->name);
            if (v == SRV_HEAD_MORE) continue;
            if (v == SRV_HEAD_OK && (c->v == SRV_HEAD_OK || chunked)) {
                if (c->v == SRV_HEAD_OK && h.head_len != full.head_len)
                    fail_msg("%s: prefix %zu: head_len %zu, full input %zu", c->name, k, h.head_len,
                             full.head_len);
                continue;
            }
            if (v != c->v || h.status != c->status)
                fail_msg("%s: prefix of %zu bytes: verdict %d status %d (%s), full input %d/%d",
                         c->name, k, (int)v, h.status, h.msg, (int)c->v, c->status);
        }
    }
}

static void test_fields(void **state) {
    (void)state;
    srv_head_info h;
    const char *p = POST "Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello";
    assert_int_equal(check(p, strlen(p), &h), SRV_HEAD_OK);
    assert_int_equal(h.content_length, 5);
    assert_int_equal(h.head_len, strlen(p) - 5);
    assert_int_equal(h.expect_continue, 1);
    assert_int_equal(h.chunked, 0);
    assert_int_equal(h.http10, 0);
    p = POST "Transfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(check(p, strlen(p), &h), SRV_HEAD_OK);
    assert_int_equal(h.chunked, 1);
    assert_int_equal(h.content_length, -1);
    p = "POST / HTTP/1.0\r\nContent-Length: 2000\r\n\r\n";
    assert_int_equal(check(p, strlen(p), &h), SRV_HEAD_BAD);
    assert_int_equal(h.status, 413);
    assert_int_equal(h.http10, 1); /* answered as HTTP/1.0 */
}

/* The size limits at their edges: a request line of SRV_HEAD_LINE_MAX bytes
 * passes and one more is 414 (also before its line end arrives); a head of
 * SRV_HEAD_MAX bytes passes, one more is 431, and SRV_HEAD_MAX bytes with no
 * end is 431, never "more". */
static void test_limits(void **state) {
    (void)state;
    static char b[SRV_HEAD_PEEK + 4096];
    srv_head_info h;
    const char *tail = " HTTP/1.1\r\nHost: t\r\n\r\n";
    for (int extra = 0; extra <= 1; extra++) {
        size_t line = SRV_HEAD_LINE_MAX + (size_t)extra; /* without its CRLF */
        memcpy(b, "GET /", 5);
        memset(b + 5, 'a', line - 5 - 9);
        strcpy(b + line - 9, tail);
        enum srv_head_verdict v = check(b, strlen(b), &h);
        if (extra ? !(v == SRV_HEAD_BAD && h.status == 414) : v != SRV_HEAD_OK)
            fail_msg("request line of %zu bytes: verdict %d status %d", line, (int)v, h.status);
    }
    memset(b, 'a', sizeof b);
    memcpy(b, "GET /", 5);
    assert_int_equal(check(b, SRV_HEAD_LINE_MAX + 1, &h), SRV_HEAD_BAD);
    assert_int_equal(h.status, 414);
    assert_int_equal(check(b, SRV_HEAD_LINE_MAX, &h), SRV_HEAD_MORE);
    for (int extra = 0; extra <= 1; extra++) {
        size_t total = SRV_HEAD_MAX + (size_t)extra;
        const char *start = "GET / HTTP/1.1\r\nHost: t\r\nX-A: ";
        size_t sl = strlen(start);
        memcpy(b, start, sl);
        memset(b + sl, 'v', total - sl - 4);
        memcpy(b + total - 4, "\r\n\r\n", 4);
        enum srv_head_verdict v = check(b, total, &h);
        if (extra ? !(v == SRV_HEAD_BAD && h.status == 431) : v != SRV_HEAD_OK)
            fail_msg("head of %zu bytes: verdict %d status %d", total, (int)v, h.status);
    }
    memset(b + 40, 'v', SRV_HEAD_MAX);
    assert_int_equal(check(b, SRV_HEAD_MAX, &h), SRV_HEAD_BAD);
    assert_int_equal(h.status, 431);
}

/* Random edits of valid heads (flip, insert, delete bytes; splice in
 * framing headers): no crash, every verdict well formed. */
static void test_mutations(void **state) {
    (void)state;
    static const char *frags[] = {"\r\n",
                                  "\n",
                                  ":",
                                  " ",
                                  "\t",
                                  "\0",
                                  "Content-Length: ",
                                  "Transfer-Encoding: chunked",
                                  "Host: x",
                                  "HTTP/1.",
                                  "-1",
                                  "ffffffffffffffff",
                                  "\r",
                                  "\x7f",
                                  ";"};
    char buf[512];
    int n_ok = 0, n_bad = 0, n_more = 0;
    for (int it = 0; it < 20000; it++) {
        const hcase *c = &k_cases[tu_int(&g_rng, (int)(sizeof k_cases / sizeof k_cases[0]))];
        size_t n = c->n ? c->n : strlen(c->p);
        memcpy(buf, c->p, n);
        int edits = 1 + tu_int(&g_rng, 4);
        for (int e = 0; e < edits && n > 0; e++) {
            size_t at = (size_t)tu_int(&g_rng, (int)n);
            switch (tu_int(&g_rng, 4)) {
            case 0: buf[at] = (char)tu_int(&g_rng, 256); break;
            case 1:
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
                break;
            default: {
                const char *f = frags[tu_int(&g_rng, (int)(sizeof frags / sizeof frags[0]))];
                size_t fl = f[0] ? strlen(f) : 1;
                if (n + fl > sizeof buf) break;
                memmove(buf + at + fl, buf + at, n - at);
                memcpy(buf + at, f, fl);
                n += fl;
            }
            }
        }
        srv_head_info h;
        enum srv_head_verdict v = check(buf, n, &h);
        well_formed(v, &h, buf, n, "mutation");
        n_ok += v == SRV_HEAD_OK;
        n_bad += v == SRV_HEAD_BAD;
        n_more += v == SRV_HEAD_MORE;
    }
    printf("mutations: %d ok, %d refused, %d incomplete\n", n_ok, n_bad, n_more);
    assert_true(n_ok > 0 && n_bad > 0 && n_more > 0);
}

int main(void) {
    tu_seed(&g_rng, "test_srv_head");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),     cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_fields),    cmocka_unit_test(test_limits),
        cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
