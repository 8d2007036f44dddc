/*
 * srv_web.h - the built-in web chat page of `nanoinfer serve` (GET /).
 *
 * The files under server/web/ (index.html, app.js, app.css, favicon.svg) are
 * compiled into the binary: scripts/embed.py turns them into a C table
 * ($(BUILD)/gen/srv_web_assets.c, made by the Makefile) with each file's
 * bytes, Content-Type and an ETag (a SHA-256 prefix of the bytes, computed at
 * build time). Nothing is read from disk at run time.
 *
 * Serving: GET/HEAD only, without authentication (the page holds no secret;
 * every API call it makes carries the key, and is subject to all of the
 * API's limits). Responses carry Cache-Control: no-cache with the ETag (the
 * browser revalidates; If-None-Match gives 304), a strict
 * Content-Security-Policy (no inline script or style, no other origin),
 * X-Content-Type-Options: nosniff and Referrer-Policy: no-referrer.
 * `--no-webui` (config key no-webui) turns the page off: the paths are then
 * unknown routes (404 JSON).
 *
 * Threads: the table is constant data; everything here is reentrant.
 */
#ifndef NI_SRV_WEB_H
#define NI_SRV_WEB_H

#include <microhttpd.h>
#include <stddef.h>

/* The policy sent with every page response. */
#define SRV_WEB_CSP                                                                                \
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "                \
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/* One embedded file. */
typedef struct srv_web_asset {
    const char *path;          /* URL path, "/app.js" */
    const char *ctype;         /* Content-Type value */
    const char *etag;          /* quoted strong ETag, "\"0123456789abcdef\"" */
    const unsigned char *data; /* the file's bytes */
    size_t len;
} srv_web_asset;

/* The table, defined by the generated srv_web_assets.c (scripts/embed.py). */
extern const srv_web_asset srv_web_assets[];
extern const size_t srv_web_n_assets;

/* The asset served at path (a URL path without the query string): "/" and
 * "/index.html" are the page, "/<name>" a file of server/web/. NULL when no
 * asset has that path (also for NULL or over-long paths). */
const srv_web_asset *srv_web_find(const char *path);

/* 1 when an If-None-Match header value (a comma-separated list of entity
 * tags, weak ones W/"..." included, or *) matches etag, else 0; NULL or an
 * empty value never matches. Reads at most 4096 bytes of the value. */
int srv_web_etag_matches(const char *if_none_match, const char *etag);

/* A response for a (not NULL) with every page header set: 304 with no body
 * when if_none_match (NULL: the header was absent) matches its ETag, else 200
 * with the file's bytes (static data, not copied). *status receives 200 or
 * 304. NULL when MHD cannot allocate the response. The caller queues and
 * destroys it. */
struct MHD_Response *srv_web_response(const srv_web_asset *a, const char *if_none_match,
                                      int *status);

#endif
