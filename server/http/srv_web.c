/*
 * srv_web.c - see srv_web.h. Lookup of the embedded page files by URL path,
 * If-None-Match matching and the response with its headers. The routing hook
 * (route R_WEB, no auth, GET/HEAD) lives in srv_routes.c; the bytes come from
 * the table scripts/embed.py generates at build time.
 */
#include "srv_web.h"

#include <stdint.h>
#include <string.h>

#define PATH_MAX_LEN 128 /* longest URL path looked up */
#define INM_MAX_LEN 4096 /* longest If-None-Match value read */

const srv_web_asset *srv_web_find(const char *path) {
    if (!path) return NULL;
    size_t n = strnlen(path, PATH_MAX_LEN + 1);
    if (n == 0 || n > PATH_MAX_LEN) return NULL;
    if (!strcmp(path, "/")) path = "/index.html";
    for (size_t i = 0; i < srv_web_n_assets; i++)
        if (!strcmp(srv_web_assets[i].path, path)) return &srv_web_assets[i];
    return NULL;
}

static int is_ws(char ch) { return ch == ' ' || ch == '\t'; }

int srv_web_etag_matches(const char *if_none_match, const char *etag) {
    if (!if_none_match || !etag) return 0;
    size_t el = strlen(etag);
    size_t n = strnlen(if_none_match, INM_MAX_LEN);
    size_t i = 0;
    while (i < n) {
        while (i < n && (is_ws(if_none_match[i]) || if_none_match[i] == ',')) i++;
        size_t start = i;
        while (i < n && if_none_match[i] != ',') i++;
        size_t end = i;
        while (end > start && is_ws(if_none_match[end - 1])) end--;
        const char *t = if_none_match + start;
        size_t tl = end - start;
        if (tl == 1 && t[0] == '*') return 1;
        if (tl >= 2 && t[0] == 'W' && t[1] == '/') { /* weak comparison for If-None-Match */
            t += 2;
            tl -= 2;
        }
        if (tl == el && tl && !memcmp(t, etag, el)) return 1;
    }
    return 0;
}

struct MHD_Response *srv_web_response(const srv_web_asset *a, const char *if_none_match,
                                      int *status) {
    int not_modified = srv_web_etag_matches(if_none_match, a->etag);
    /* MHD_RESPMEM_PERSISTENT: the bytes are static, MHD neither copies nor frees them */
    struct MHD_Response *r =
        not_modified ? MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT)
                     : MHD_create_response_from_buffer(a->len, (void *)(uintptr_t)a->data,
                                                       MHD_RESPMEM_PERSISTENT);
    if (!r) return NULL;
    if (!not_modified) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, a->ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, a->etag);
    /* the URLs are not versioned: always revalidate, which the ETag makes a 304 */
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "Content-Security-Policy", SRV_WEB_CSP);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(r, "X-Frame-Options", "DENY");
    *status = not_modified ? 304 : 200;
    return r;
}
