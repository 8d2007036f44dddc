/*
 * test_srv_web.c - the embedded web chat page (server/http/srv_web.c): the
 * generated asset table (every file of server/web/ present with its bytes,
 * Content-Type and a SHA-256-prefix ETag), path lookup, If-None-Match
 * matching, and the headers of the 200 and 304 responses. The page in a
 * browser is test/e2e_web.sh's.
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

#include "engine/util/util.h"
#include "server/http/srv_web.h"

static void test_table(void **state) {
    (void)state;
    static const char *const want[] = {"/index.html", "/app.js", "/app.css", "/favicon.svg"};
    for (size_t i = 0; i < NI_ARRAY_LEN(want); i++)
        if (!srv_web_find(want[i])) fail_msg("no asset %s", want[i]);
    for (size_t i = 0; i < srv_web_n_assets; i++) {
        const srv_web_asset *a = &srv_web_assets[i];
        assert_true(a->path[0] == '/');
        assert_true(a->len > 0);
        assert_non_null(a->data);
        assert_int_equal(strlen(a->etag), 18); /* "<16 hex>" */
        assert_true(a->etag[0] == '"' && a->etag[17] == '"');
        for (int k = 1; k < 17; k++) assert_non_null(strchr("0123456789abcdef", a->etag[k]));
        for (size_t j = 0; j < i; j++) assert_string_not_equal(a->etag, srv_web_assets[j].etag);
    }
    const srv_web_asset *h = srv_web_find("/index.html"), *js = srv_web_find("/app.js");
    assert_string_equal(h->ctype, "text/html; charset=utf-8");
    assert_string_equal(js->ctype, "text/javascript; charset=utf-8");
    assert_string_equal(srv_web_find("/app.css")->ctype, "text/css; charset=utf-8");
    assert_string_equal(srv_web_find("/favicon.svg")->ctype, "image/svg+xml");
    assert_true(h->len > 15 && !memcmp(h->data, "<!doctype html>", 15));
}

static void test_find(void **state) {
    (void)state;
    assert_ptr_equal(srv_web_find("/"), srv_web_find("/index.html"));
    assert_null(srv_web_find(NULL));
    assert_null(srv_web_find(""));
    assert_null(srv_web_find("/nope.html"));
    assert_null(srv_web_find("/app.js/"));
    assert_null(srv_web_find("app.js"));
    assert_null(srv_web_find("//app.js"));
    assert_null(srv_web_find("/../app.js"));
    assert_null(srv_web_find("/APP.JS"));
    char longp[300];
    memset(longp, 'a', sizeof longp - 1);
    longp[0] = '/';
    longp[sizeof longp - 1] = 0;
    assert_null(srv_web_find(longp));
}

static void test_etag_match(void **state) {
    (void)state;
    const char *e = "\"0123456789abcdef\"";
    assert_true(srv_web_etag_matches("\"0123456789abcdef\"", e));
    assert_true(srv_web_etag_matches("W/\"0123456789abcdef\"", e));
    assert_true(srv_web_etag_matches("*", e));
    assert_true(srv_web_etag_matches(" \"x\" , \"0123456789abcdef\" ", e));
    assert_true(srv_web_etag_matches("\"x\",W/\"0123456789abcdef\"", e));
    assert_false(srv_web_etag_matches(NULL, e));
    assert_false(srv_web_etag_matches("", e));
    assert_false(srv_web_etag_matches(",,, ", e));
    assert_false(srv_web_etag_matches("\"0123456789abcde\"", e));
    assert_false(srv_web_etag_matches("0123456789abcdef", e));
    assert_false(srv_web_etag_matches("\"0123456789abcdef\"x", e));
    assert_false(srv_web_etag_matches("W/", e));
    assert_false(srv_web_etag_matches("**", e));
    /* only the first 4096 bytes of a value are read */
    size_t n = 8192;
    char *big = malloc(n + 32);
    assert_non_null(big);
    memset(big, ' ', n);
    strcpy(big + n, e);
    assert_false(srv_web_etag_matches(big, e));
    memcpy(big + 100, e, strlen(e));
    assert_true(srv_web_etag_matches(big, e));
    free(big);
}

static void test_response(void **state) {
    (void)state;
    const srv_web_asset *a = srv_web_find("/");
    int status = 0;
    struct MHD_Response *r = srv_web_response(a, NULL, &status);
    assert_non_null(r);
    assert_int_equal(status, 200);
    assert_string_equal(MHD_get_response_header(r, "Content-Type"), a->ctype);
    assert_string_equal(MHD_get_response_header(r, "ETag"), a->etag);
    assert_string_equal(MHD_get_response_header(r, "Cache-Control"), "no-cache");
    assert_string_equal(MHD_get_response_header(r, "Content-Security-Policy"), SRV_WEB_CSP);
    assert_string_equal(MHD_get_response_header(r, "X-Content-Type-Options"), "nosniff");
    assert_non_null(strstr(SRV_WEB_CSP, "default-src 'none'"));
    assert_non_null(strstr(SRV_WEB_CSP, "frame-ancestors 'none'"));
    MHD_destroy_response(r);
    r = srv_web_response(a, a->etag, &status);
    assert_non_null(r);
    assert_int_equal(status, 304);
    assert_null(MHD_get_response_header(r, "Content-Type"));
    assert_string_equal(MHD_get_response_header(r, "ETag"), a->etag);
    MHD_destroy_response(r);
    r = srv_web_response(a, "\"other\"", &status);
    assert_int_equal(status, 200);
    MHD_destroy_response(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_etag_match),
        cmocka_unit_test(test_response),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
