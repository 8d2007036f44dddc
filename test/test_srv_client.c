/*
 * test_srv_client.c - the client-side parsers of `nanoinfer chat` and
 * `nanoinfer bench --url`: URL splitting, the HTTP/1.1 chunked-body decoder,
 * the HTTP/1.1 response parser, the Server-Sent-Events parser and the reading
 * of one OpenAI stream chunk, each fed the same input split at every possible
 * point (a recv() may return any prefix) or byte by byte, plus malformed and
 * garbled input; the chunk scanner is also checked against jansson on every
 * one-byte mutation of a few chunks.
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
#include <jansson.h>

#include "engine/util/util.h"
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

/* ---- the response parser, as bench_http.c drives it: body -> srv_sse -> events ---- */

typedef struct resp_sink {
    srv_sse sse;
    events ev;
    srv_buf body; /* the raw decoded body */
    int sse_rc;
} resp_sink;

static void on_body(void *ud, const char *p, size_t n) {
    resp_sink *s = ud;
    assert_int_equal(srv_buf_append(&s->body, p, n), 0);
    if (srv_sse_feed(&s->sse, p, n, on_ev, &s->ev)) s->sse_rc = -1;
}

/* Feeds in[0..n) in pieces: first split bytes, then the rest; or one byte at a
 * time when split == (size_t)-1. Returns the first error, else 0; *used_total
 * gets the bytes the response consumed. */
static int feed_resp(srv_resp *r, resp_sink *s, const char *in, size_t n, size_t split,
                     size_t *used_total) {
    srv_resp_init(r);
    *used_total = 0;
    size_t pos = 0;
    while (pos < n && !srv_resp_done(r)) {
        size_t k = split == (size_t)-1 ? 1 : pos == 0 ? split : n - pos;
        if (k == 0) k = n;
        k = NI_MIN(k, n - pos);
        size_t used = 0;
        int rc = srv_resp_feed(r, in + pos, k, on_body, s, &used);
        *used_total += used;
        if (rc) return rc;
        assert_true(used == k || srv_resp_done(r));
        pos += used;
        if (used < k) break;
    }
    return 0;
}

static void sink_free(resp_sink *s) {
    srv_sse_free(&s->sse);
    srv_buf_free(&s->body);
}

/* A chunked SSE stream with CRLF and LF events, a role chunk, text chunks, usage,
 * [DONE], chunk extensions, a trailer, then the next response's first bytes. */
static const char k_stream[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\ntransfer-encoding:  Chunked \r\n"
    "Cache-Control: no-cache\r\n\r\n"
    "4b\r\ndata: "
    "{\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\r\n"
    "32;ext=1\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n\r\n"
    "8\r\ndata: {\n\r\n"
    "31\r\ndata: \"choices\":[{\"delta\":{\"content\":\" you\"}}]}\n\n\r\n"
    "51\nevent: x\ndata: "
    "{\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":null}\n\n\n"
    "5e\r\n: keep-alive comment\r\ndata: "
    "{\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n\r\n"
    "e\r\ndata: [DONE]\n\n\r\n"
    "0\r\nX-Trailer: yes\r\n\r\n"
    "HTTP/1.1 200 OK\r\n";

static void check_stream_events(const events *e) {
    assert_int_equal(e->n, 6);
    srv_stream_ev ev;
    assert_int_equal(srv_stream_event_parse(e->got[0], strlen(e->got[0]), &ev), 0);
    assert_int_equal(ev.text, 0); /* the role chunk is not the first token */
    assert_int_equal(srv_stream_event_parse(e->got[1], strlen(e->got[1]), &ev), 0);
    assert_int_equal(ev.text, 1);
    assert_int_equal(srv_stream_event_parse(e->got[2], strlen(e->got[2]), &ev), 0);
    assert_int_equal(ev.text, 1); /* a JSON split over two data lines and two chunks */
    assert_int_equal(srv_stream_event_parse(e->got[3], strlen(e->got[3]), &ev), 0);
    assert_int_equal(ev.text, 0);
    assert_string_equal(ev.finish_reason, "length");
    assert_int_equal(ev.has_usage, 0);
    assert_int_equal(srv_stream_event_parse(e->got[4], strlen(e->got[4]), &ev), 0);
    assert_int_equal(ev.has_usage, 1);
    assert_int_equal(ev.prompt_tokens, 5);
    assert_int_equal(ev.completion_tokens, 2);
    assert_int_equal(srv_stream_event_parse(e->got[5], strlen(e->got[5]), &ev), 0);
    assert_int_equal(ev.done, 1);
}

static void test_resp_chunked_sse(void **state) {
    (void)state;
    size_t n = sizeof k_stream - 1, tail = strlen("HTTP/1.1 200 OK\r\n");
    for (size_t split = 0; split <= n + 1; split++) {
        srv_resp r;
        resp_sink s = {0};
        size_t used;
        size_t how = split == n + 1 ? (size_t)-1 : split; /* the last pass: byte by byte */
        assert_int_equal(feed_resp(&r, &s, k_stream, n, how, &used), 0);
        assert_true(srv_resp_done(&r));
        assert_int_equal(used, n - tail); /* the next response's bytes are left alone */
        assert_int_equal(r.status, 200);
        assert_int_equal(r.chunked, 1);
        assert_int_equal(r.keep_alive, 1);
        assert_int_equal(s.sse_rc, 0);
        check_stream_events(&s.ev);
        assert_int_equal(srv_resp_eof(&r), 0); /* a close after the end is fine */
        sink_free(&s);
    }
}

/* Error bodies framed by Content-Length (400, 429 with Connection: close). */
static void test_resp_errors(void **state) {
    (void)state;
    static const char *const in[] = {
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 63\r\n\r\n"
        "{\"error\":{\"message\":\"bad max_tokens\",\"type\":\"invalid_request\"}}",
        "HTTP/1.1 429 Too Many Requests\nconnection: close\ncontent-length: 45\nRetry-After: 1\n\n"
        "{\"error\":{\"message\":\"queue full\",\"code\":429}}",
    };
    static const int status[] = {400, 429}, keep[] = {1, 0};
    for (int t = 0; t < 2; t++) {
        size_t n = strlen(in[t]);
        for (size_t split = 0; split <= n + 1; split++) {
            srv_resp r;
            resp_sink s = {0};
            size_t used;
            assert_int_equal(
                feed_resp(&r, &s, in[t], n, split == n + 1 ? (size_t)-1 : split, &used), 0);
            assert_true(srv_resp_done(&r));
            assert_int_equal(used, n);
            assert_int_equal(r.status, status[t]);
            assert_int_equal(r.keep_alive, keep[t]);
            assert_int_equal(r.content_length, (long long)srv_buf_size(&s.body));
            srv_stream_ev ev;
            assert_int_equal(
                srv_stream_event_parse(srv_buf_ptr(&s.body), srv_buf_size(&s.body), &ev), 0);
            assert_int_equal(ev.error, 1);
            assert_string_equal(ev.error_msg, t ? "queue full" : "bad max_tokens");
            sink_free(&s);
        }
    }
}

static void test_resp_framing(void **state) {
    (void)state;
    srv_resp r;
    resp_sink s = {0};
    size_t used;
    /* 100 Continue is skipped; HTTP/1.0 without keep-alive closes */
    static const char cont[] =
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
    assert_int_equal(feed_resp(&r, &s, cont, sizeof cont - 1, 5, &used), 0);
    assert_true(srv_resp_done(&r));
    assert_int_equal(r.status, 200);
    assert_int_equal(r.keep_alive, 0);
    assert_string_equal(srv_buf_cstr(&s.body), "ok");
    /* 204: no body even without a length */
    srv_buf_clear(&s.body);
    assert_int_equal(feed_resp(&r, &s, "HTTP/1.1 204 No Content\r\n\r\n", 27, 0, &used), 0);
    assert_true(srv_resp_done(&r));
    /* no length, not chunked: the body ends with the connection */
    srv_buf_clear(&s.body);
    static const char until_close[] = "HTTP/1.1 200 OK\r\n\r\nsome bytes";
    assert_int_equal(feed_resp(&r, &s, until_close, sizeof until_close - 1, 20, &used), 0);
    assert_false(srv_resp_done(&r));
    assert_int_equal(r.keep_alive, 0);
    assert_int_equal(srv_resp_eof(&r), 0);
    assert_true(srv_resp_done(&r));
    assert_string_equal(srv_buf_cstr(&s.body), "some bytes");
    /* Transfer-Encoding wins over Content-Length */
    srv_buf_clear(&s.body);
    static const char both[] =
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
        "1\r\na\r\n0\r\n\r\n";
    assert_int_equal(feed_resp(&r, &s, both, sizeof both - 1, 3, &used), 0);
    assert_true(srv_resp_done(&r));
    assert_string_equal(srv_buf_cstr(&s.body), "a");
    /* cut short: EOF inside a Content-Length body, a chunk, the head */
    static const char *const cut[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        "HTTP/1.1 200 OK\r\nContent-", ""};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(feed_resp(&r, &s, cut[i], strlen(cut[i]), 0, &used), 0);
        assert_int_equal(srv_resp_eof(&r), NI_EFORMAT);
    }
    /* garbled */
    static const char *const bad[] = {
        "HTTP/2 200 OK\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        "HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n123456789012345678901234567890\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3 x\r\n",
    };
    for (size_t i = 0; i < NI_ARRAY_LEN(bad); i++) {
        size_t n = strlen(bad[i]);
        for (size_t split = 0; split <= n; split++)
            assert_int_equal(feed_resp(&r, &s, bad[i], n, split, &used), NI_EFORMAT);
    }
    /* bounded: an endless header line or head is refused, never buffered */
    char *big = malloc(SRV_RESP_HEAD_MAX + 64);
    memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 21);
    memset(big + 21, 'a', SRV_RESP_HEAD_MAX + 43);
    assert_int_equal(feed_resp(&r, &s, big, SRV_RESP_HEAD_MAX + 64, 0, &used), NI_ERANGE);
    static const char many[] = "X-Many: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    size_t m = 17; /* after the status line */
    while (m + sizeof many < SRV_RESP_HEAD_MAX + 64) {
        memcpy(big + m, many, sizeof many - 1);
        m += sizeof many - 1;
    }
    assert_int_equal(feed_resp(&r, &s, big, m, 0, &used), NI_ERANGE);
    static const char ch_head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1";
    memcpy(big, ch_head, sizeof ch_head - 1);
    memset(big + sizeof ch_head - 1, ';', 400);
    assert_int_equal(feed_resp(&r, &s, big, sizeof ch_head - 1 + 400, 0, &used),
                     NI_ERANGE); /* chunk-size line */
    free(big);
    sink_free(&s);
}

static void test_stream_event(void **state) {
    (void)state;
    srv_stream_ev ev;
    static const char comp[] =
        "{\"id\":\"cmpl-1\",\"choices\":[{\"index\":0,\"text\":\"a\",\"finish_reason\":null}]}";
    assert_int_equal(srv_stream_event_parse(comp, sizeof comp - 1, &ev), 0);
    assert_int_equal(ev.text, 1);
    assert_string_equal(ev.finish_reason, "");
    static const char nul[] = "{\"choices\":[{\"index\":0,\"text\":\"\\u0000\"}]}";
    assert_int_equal(srv_stream_event_parse(nul, sizeof nul - 1, &ev), 0);
    assert_int_equal(ev.text, 1);
    static const char empty[] = "{\"choices\":[{\"index\":0,\"text\":\"\"}]}";
    assert_int_equal(srv_stream_event_parse(empty, sizeof empty - 1, &ev), 0);
    assert_int_equal(ev.text, 0);
    static const char think[] = "{\"choices\":[{\"delta\":{\"reasoning_content\":\"hmm\"}}]}";
    assert_int_equal(srv_stream_event_parse(think, sizeof think - 1, &ev), 0);
    assert_int_equal(ev.text, 1);
    static const char err[] =
        "{\"error\":{\"message\":\"engine failed\",\"type\":\"server_error\"}}";
    assert_int_equal(srv_stream_event_parse(err, sizeof err - 1, &ev), 0);
    assert_int_equal(ev.error, 1);
    assert_string_equal(ev.error_msg, "engine failed");
    /* the scanner walks the structure: keys inside strings or nested elsewhere do not count */
    static const char tricky[] =
        " {\"id\":\"\\\"text\\\":\\\"x\\\"\",\"meta\":{\"text\":\"no\",\"usage\":{\"completion_"
        "tokens\":9}},"
        "\"choices\":[{\"index\":0,\"logprobs\":{\"content\":[{\"token\":\"a\",\"logprob\":-1.5e-3}"
        "]},"
        "\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]},\"finish_reason\":"
        "null}],"
        "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15,"
        "\"prompt_tokens_details\":null}} \n";
    assert_int_equal(srv_stream_event_parse(tricky, sizeof tricky - 1, &ev), 0);
    assert_int_equal(ev.text, 0);
    assert_int_equal(ev.has_usage, 1);
    assert_int_equal(ev.prompt_tokens, 12);
    assert_int_equal(ev.completion_tokens, 3);
    assert_string_equal(ev.finish_reason, "");
    static const char esc[] =
        "{\"choices\":[{\"text\":\"\\\"\\u00e9\\n\",\"finish_reason\":\"stop\"}]}";
    assert_int_equal(srv_stream_event_parse(esc, sizeof esc - 1, &ev), 0);
    assert_int_equal(ev.text, 1);
    assert_string_equal(ev.finish_reason, "stop");
    static const char no_err[] = "{\"error\":null,\"choices\":[]}";
    assert_int_equal(srv_stream_event_parse(no_err, sizeof no_err - 1, &ev), 0);
    assert_int_equal(ev.error, 0);
    static const char *const garbled[] = {
        "{\"choices\":[{\"text\":\"a\"}]",
        "{\"choices\":[{\"text\":\"a}]}",
        "{\"a\":1}x",
        "{\"a\":01x}",
        "{\"a\":\"\\q\"}",
        "{\"a\":\"\\u12\"}",
        "{\"a\" 1}",
        "{\"a\":tru}",
        "{\"a\":[1,]}",
        "{,}",
        "{\"a\":\"\x01\"}",
        "",
        "  ",
        "{\"a\":-}",
        "{\"a\":1.}",
        "{\"a\":1e}",
    };
    for (size_t i = 0; i < NI_ARRAY_LEN(garbled); i++)
        assert_int_equal(srv_stream_event_parse(garbled[i], strlen(garbled[i]), &ev), NI_EFORMAT);
    char deep[200];
    size_t dn = 0;
    dn += (size_t)snprintf(deep, sizeof deep, "{\"a\":");
    for (int i = 0; i < 40; i++) deep[dn++] = '[';
    for (int i = 0; i < 40; i++) deep[dn++] = ']';
    deep[dn++] = '}';
    assert_int_equal(srv_stream_event_parse(deep, dn, &ev), NI_EFORMAT); /* nesting bound */
    assert_int_equal(srv_stream_event_parse("[DONE]", 6, &ev), 0);
    assert_int_equal(ev.done, 1);
    assert_int_equal(srv_stream_event_parse("[DONE", 5, &ev), NI_EFORMAT);
    assert_int_equal(srv_stream_event_parse("[1,2]", 5, &ev), NI_EFORMAT);
    assert_int_equal(srv_stream_event_parse("{\"choices\":", 11, &ev), NI_EFORMAT);
}

/* The reference reading of a chunk, with jansson, for the differential test. */
static int ref_parse(const char *data, size_t len, srv_stream_ev *ev) {
    memset(ev, 0, sizeof *ev);
    json_t *j = json_loadb(data, len, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return NI_EFORMAT;
    }
    json_t *choices = json_object_get(j, "choices");
    for (size_t i = 0; i < json_array_size(choices); i++) {
        json_t *c = json_array_get(choices, i), *d = json_object_get(c, "delta");
        const char *keys[3] = {"content", "reasoning_content", "reasoning"};
        json_t *t = json_object_get(c, "text");
        if (json_is_string(t) && json_string_length(t)) ev->text = 1;
        for (int k = 0; k < 3; k++) {
            json_t *v = json_object_get(d, keys[k]);
            if (json_is_string(v) && json_string_length(v)) ev->text = 1;
        }
        const char *fr = json_string_value(json_object_get(c, "finish_reason"));
        if (fr && !ev->finish_reason[0])
            snprintf(ev->finish_reason, sizeof ev->finish_reason, "%s", fr);
    }
    json_t *u = json_object_get(j, "usage");
    json_t *ct = json_object_get(u, "completion_tokens"), *pt = json_object_get(u, "prompt_tokens");
    if (json_is_integer(ct)) {
        ev->has_usage = 1;
        ev->completion_tokens = (long)json_integer_value(ct);
        ev->prompt_tokens = json_is_integer(pt) ? (long)json_integer_value(pt) : -1;
    }
    json_t *e = json_object_get(j, "error");
    ev->error = e && !json_is_null(e);
    json_decref(j);
    return 0;
}

/* Every chunk jansson reads as an object, mutated at every byte, reads the same
 * through the scanner (text, finish_reason, usage, error). */
static void test_stream_event_differential(void **state) {
    (void)state;
    static const char *const base[] = {
        "{\"id\":\"c\",\"choices\":[{\"index\":0,\"text\":\"ab\",\"logprobs\":null,\"finish_"
        "reason\":null}],\"usage\":null}",
        "{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":"
        "\"length\"}]}",
        "{\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":27,\"total_tokens\":"
        "32}}",
        "{\"error\":{\"message\":\"x\",\"code\":1},\"choices\":[{\"delta\":{\"reasoning\":\"r\"}}]"
        "}",
    };
    static const char subst[] = "\"\\{}[],:0 -a.e\x01n";
    int checked = 0;
    for (size_t b = 0; b < NI_ARRAY_LEN(base); b++) {
        size_t n = strlen(base[b]);
        char buf[256];
        for (size_t i = 0; i <= n; i++)
            for (size_t k = 0; k < sizeof subst; k++) {
                /* k < sizeof subst - 1: replace byte i; the last k: delete it */
                memcpy(buf, base[b], n);
                size_t m = n;
                if (i == n) {
                    if (k == sizeof subst - 1) continue;
                    buf[m++] = subst[k]; /* append */
                } else if (k < sizeof subst - 1) {
                    buf[i] = subst[k];
                } else {
                    memmove(buf + i, buf + i + 1, n - i - 1);
                    m--;
                }
                srv_stream_ev a, r;
                int ra = srv_stream_event_parse(buf, m, &a), rr = ref_parse(buf, m, &r);
                if (rr) continue; /* the scanner may accept more (duplicate keys, big numbers) */
                checked++;
                if (ra) fprintf(stderr, "scanner refused valid: %.*s\n", (int)m, buf);
                assert_int_equal(ra, 0);
                assert_int_equal(a.text, r.text);
                if (!strchr(a.finish_reason, '\\')) /* kept raw: escapes are not decoded */
                    assert_string_equal(a.finish_reason, r.finish_reason);
                assert_int_equal(a.has_usage, r.has_usage);
                assert_int_equal(a.completion_tokens, r.completion_tokens);
                assert_int_equal(a.prompt_tokens, r.prompt_tokens);
                assert_int_equal(a.error, r.error);
            }
    }
    assert_true(checked > 500);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url),          cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_sse),          cmocka_unit_test(test_resp_chunked_sse),
        cmocka_unit_test(test_resp_errors),  cmocka_unit_test(test_resp_framing),
        cmocka_unit_test(test_stream_event), cmocka_unit_test(test_stream_event_differential),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
