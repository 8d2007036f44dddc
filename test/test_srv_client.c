/*
 * test_srv_client.c - the client-side parsers of `nanoinfer chat`: URL
 * splitting, the HTTP/1.1 chunked-body decoder and the Server-Sent-Events
 * parser, each fed the same input split at every possible point (a recv()
 * may return any prefix), plus malformed input.
 * Links the server library (libnanoinfer_srv.a).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/http/srv_client.h"
#include "server/http/srv_util.h"

static void test_url(void **state) {
    (void)state;
    char host[64], prefix[64];
    int port;
    assert_int_equal(srv_parse_url("http://127.0.0.1:8000", host, sizeof host, &port, prefix, sizeof prefix),
                     0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 8000);
    assert_string_equal(prefix, "");
    assert_int_equal(srv_parse_url("localhost", host, sizeof host, &port, prefix, sizeof prefix), 0);
    assert_string_equal(host, "localhost");
    assert_int_equal(port, 80);
    assert_int_equal(srv_parse_url("http://[::1]:9/api/", host, sizeof host, &port, prefix, sizeof prefix),
                     0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 9);
    assert_string_equal(prefix, "/api");
    assert_int_equal(srv_parse_url("HTTP://h/v1//", host, sizeof host, &port, prefix, sizeof prefix), 0);
    assert_string_equal(prefix, "/v1");
    assert_int_equal(srv_parse_url("https://h", host, sizeof host, &port, prefix, sizeof prefix), -1);
    assert_int_equal(srv_parse_url("http://h:0", host, sizeof host, &port, prefix, sizeof prefix), -1);
    assert_int_equal(srv_parse_url("http://h:70000", host, sizeof host, &port, prefix, sizeof prefix), -1);
    assert_int_equal(srv_parse_url("http://h:80x", host, sizeof host, &port, prefix, sizeof prefix), -1);
    assert_int_equal(srv_parse_url("http://", host, sizeof host, &port, prefix, sizeof prefix), -1);
    assert_int_equal(srv_parse_url("http://[::1", host, sizeof host, &port, prefix, sizeof prefix), -1);
}

static void feed_chunked(const char *in, size_t n, size_t split, srv_buf *out, int *done, int *rc) {
    srv_chunked d = {0};
    *done = 0;
    *rc = srv_chunked_feed(&d, in, split, out, done);
    if (!*rc) *rc = srv_chunked_feed(&d, in + split, n - split, out, done);
}

static void test_chunked(void **state) {
    (void)state;
    static const char in[] =
        "5\r\nhello\r\n1;ext=1\r\n \r\nB\r\nworld!!!!!!\r\n0\r\nX-Trailer: 1\r\n\r\nGARBAGE";
    size_t n = sizeof in - 1;
    for (size_t split = 0; split <= n; split++) {
        srv_buf out = {0};
        int done, rc;
        feed_chunked(in, n, split, &out, &done, &rc);
        assert_int_equal(rc, 0);
        assert_int_equal(done, 1);
        assert_string_equal(srv_buf_cstr(&out), "hello world!!!!!!");
        srv_buf_free(&out);
    }
    static const char *const bad[] = {"zz\r\nab\r\n", "3\r\nabcX\r\n", "123456789012345678901234567890\r\n"};
    for (size_t i = 0; i < 3; i++) {
        srv_chunked d = {0};
        srv_buf out = {0};
        int done = 0;
        assert_int_equal(srv_chunked_feed(&d, bad[i], strlen(bad[i]), &out, &done), -1);
        srv_buf_free(&out);
    }
}

typedef struct events {
    char got[16][128];
    int n;
} events;

static void on_ev(void *ud, const char *data, size_t len) {
    events *e = ud;
    assert_true(e->n < 16 && len < 128);
    memcpy(e->got[e->n], data, len);
    e->got[e->n][len] = 0;
    assert_int_equal(strlen(data), len); /* NUL-terminated view */
    e->n++;
}

static void test_sse(void **state) {
    (void)state;
    static const char in[] =
        ": comment\n\ndata: {\"a\":1}\n\ndata:x\r\ndata:  y\r\n\r\nevent: ping\nid: 3\n\n"
        "data\n\ndata: [DONE]\n\ndata: unterminated";
    size_t n = sizeof in - 1;
    for (size_t split = 0; split <= n; split++) {
        srv_sse p = {0};
        events e = {0};
        assert_int_equal(srv_sse_feed(&p, in, split, on_ev, &e), 0);
        assert_int_equal(srv_sse_feed(&p, in + split, n - split, on_ev, &e), 0);
        assert_int_equal(e.n, 4);
        assert_string_equal(e.got[0], "{\"a\":1}");
        assert_string_equal(e.got[1], "x\n y"); /* fields joined; one leading space stripped */
        assert_string_equal(e.got[2], "");      /* "data" with no colon: empty data */
        assert_string_equal(e.got[3], "[DONE]");
        srv_sse_free(&p);
    }
    /* a line longer than the bound is refused instead of growing forever */
    srv_sse p = {0};
    events e = {0};
    char *big = malloc(SRV_SSE_MAX_LINE + 10);
    memset(big, 'a', SRV_SSE_MAX_LINE + 10);
    assert_int_equal(srv_sse_feed(&p, big, SRV_SSE_MAX_LINE + 10, on_ev, &e), -1);
    free(big);
    srv_sse_free(&p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_sse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
