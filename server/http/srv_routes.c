/*
 * srv_routes.c - the HTTP side of `nanoinfer serve`, loop thread only
 * (srv_server.c has the overview, srv_internal.h the shared state): the MHD
 * access and completed callbacks, routing, auth, the checks that need no
 * body, the handlers, responses and SSE streaming.
 *
 * Routes: the API (route_of), plus the web chat page's files (R_WEB, GET/HEAD,
 * no auth; srv_web.c builds those responses) unless --no-webui.
 *
 * MHD calls the access handler once with the headers (early_checks answer
 * everything that needs no body: 503 while draining, 404, 405, 401, 413 by
 * Content-Length behind Expect: 100-continue), then with each piece of the
 * body (buffered up to max-body), then once more with none, when the request
 * is dispatched.
 *
 * Bodies over max-body get a 413 the client can read. Answering while the
 * client still sends does not work through MHD 0.9.75: a response queued
 * before the body makes MHD skip the body and close the socket with the
 * client's bytes unread, which makes the kernel send a reset, and the client,
 * typically still writing, loses the 413 with its receive buffer (ECONNRESET
 * / EPIPE; curl: "send failure"). So: with Expect: 100-continue and a
 * Content-Length over the limit the 413 goes out at once (the client sends
 * nothing before it); otherwise, at the first body byte past the limit
 * (whatever the framing: Content-Length, chunked, a huge chunk size), the
 * 413 is written on the socket directly (MHD accepts no response in
 * mid-body), the write side shut down so the client sees the end of the
 * reply, and the body drained for up to DRAIN_S seconds / DRAIN_FACTOR x
 * the discard cap in all while the client reads it; then MHD closes.
 *
 * A generation request (srv_gen) is parsed, tokenized and handed to eng_add
 * inside the access handler. Then:
 *   streaming      a 200 text/event-stream response is queued whose content
 *                  reader copies from the connection's output buffer; when
 *                  the buffer is empty the reader suspends the connection
 *                  and returns 0; each event drained by srv_on_async appends
 *                  SSE chunks and resumes it. Nothing is sent before the
 *                  engine's first event: the opening chunk of a choice (chat
 *                  role, echo) goes out with its first token, in one write.
 *   non-streaming  the connection is suspended in the access handler; when
 *                  the last event arrives the JSON body is built and the
 *                  connection resumed; MHD calls the access handler again,
 *                  which queues it.
 * Half-closed clients: an EOF on a suspended connection (srv_server.c's
 * sweep) is either a client gone or one that shut only its write side
 * (shutdown(SHUT_WR)) and waits for the reply; TCP tells them apart only
 * when something is written (a gone peer answers with a reset), so the
 * sweep writes probes (srv_conn_probe): an SSE comment on a stream; on a
 * non-streaming request the 200 is committed early, chunked, with newlines
 * (JSON whitespace) before the body. Should that request end in an error
 * after all (engine failure, shutdown abort), the reply is cut short
 * instead: the client sees an unfinished body, never a wrong 200.
 * Slow readers: output buffered per connection is bounded
 * (max-stream-buffer); past it the request is aborted and the socket shut
 * down.
 *
 * Lifetimes: srv_conn is created on the first access-handler call and freed
 * only in MHD's request-completed callback, which also detaches its srv_gen
 * (aborting it if the engine still runs it).
 */
#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include "engine/engine.h"
#include "engine/util/util.h"
#include "srv_api.h"
#include "srv_internal.h"
#include "srv_log.h"
#include "srv_metrics.h"
#include "srv_util.h"
#include "srv_web.h"

#define DISCARD_FACTOR 16 /* oversized uploads: the discard cap is this x max-body */
#define DRAIN_S 5.0       /* after a 413 written mid-body: the longest drain */
#define DRAIN_FACTOR 8    /* ... and at most this x the discard cap in all (a client that
                           * sends a body just over 2x the cap must still read its 413) */

enum route {
    R_NONE,
    R_HEALTH,
    R_METRICS,
    R_MODELS,
    R_MODEL,
    R_COMPLETIONS,
    R_CHAT,
    R_TOKENIZE,
    R_DETOKENIZE,
    R_WEB /* the web chat page (srv_web.c); off with --no-webui */
};

/* ================= streaming and final bodies ================= */

/* Appends one SSE event for obj (stolen) to c's output; a full buffer means a
 * slow reader: the request is aborted and the connection closed. */
void srv_conn_sse(srv_conn *c, json_t *obj) {
    if (c->kill) {
        json_decref(obj);
        return;
    }
    int rc = srv_sse_event(&c->out, obj);
    json_decref(obj);
    if (rc == NI_ERANGE) {
        srv_log(SRV_LOG_WARN, "%s: client reads too slowly (over %lld buffered bytes); aborting",
                c->rid, c->s->cfg.max_stream_buffer);
        srv_conn_kill(c, SRV_ABORT_SLOW_READER);
        return;
    }
    if (rc) {
        srv_conn_kill(c, SRV_ABORT_DISCONNECT);
        return;
    }
    srv_conn_resume(c);
}

json_t *srv_stream_chunk(srv_gen *g, json_t *choice, int usage_null) {
    json_t *o = srv_api_envelope(g->rq.kind, 1, g->rid, g->created, g->conn->s->model_name);
    json_t *arr = json_array();
    if (!o || !arr || !choice) {
        json_decref(o);
        json_decref(arr);
        json_decref(choice);
        return NULL;
    }
    json_array_append_new(arr, choice);
    json_object_set_new(o, "choices", arr);
    if (usage_null) json_object_set_new(o, "usage", json_null());
    return o;
}

void srv_stream_open(srv_gen *g, int index) {
    srv_choice *ch = &g->ch[index];
    if (ch->opened || !g->conn) return;
    ch->opened = 1;
    int kind = g->rq.kind;
    if (kind == SRV_API_CHAT)
        srv_conn_sse(g->conn,
                     srv_stream_chunk(g, srv_api_choice(kind, 1, index, "", 0, 1, NULL, NULL),
                                      g->rq.include_usage));
    else if (g->rq.echo)
        srv_conn_sse(g->conn, srv_stream_chunk(g,
                                               srv_api_choice(kind, 1, index, g->rq.echo_text,
                                                              g->rq.echo_len, 0, NULL, NULL),
                                               g->rq.include_usage));
}

/* Fresh "call_..." ids for n tool calls. */
void srv_tool_ids(srv_server *s, char (*ids)[32], const char **ptrs, int n) {
    for (int i = 0; i < n; i++) {
        srv_random_id(&s->rng, "call_", ids[i], sizeof ids[i]);
        ptrs[i] = ids[i];
    }
}

/* A non-streaming chat choice of a request with tools: the calls parsed out
 * of the content, finish_reason "tool_calls" when there are some. */
static json_t *final_with_tools(srv_server *s, srv_gen *g, int i) {
    srv_choice *ch = &g->ch[i];
    srv_tool_call calls[SRV_TOOLS_MAX_CALLS];
    int n = 0;
    char *content = NULL;
    if (srv_tools_extract(&g->rq.tools, srv_buf_ptr(&ch->text), srv_buf_size(&ch->text), calls, &n,
                          &content))
        return NULL;
    const char *finish = n > 0 && ch->finish == ENG_FINISH_STOP ? "tool_calls"
                                                                : srv_api_finish_reason(ch->finish);
    json_t *choice = srv_api_choice(g->rq.kind, 0, i, content, strlen(content), 0,
                                    srv_lp_take(&ch->lp), finish);
    if (choice && g->rq.reasoning)
        choice = srv_api_choice_reasoning(choice, 0, srv_buf_ptr(&ch->reasoning),
                                          srv_buf_size(&ch->reasoning), 0);
    if (choice && n > 0) {
        char ids[SRV_TOOLS_MAX_CALLS][32];
        const char *ptrs[SRV_TOOLS_MAX_CALLS];
        srv_tool_ids(s, ids, ptrs, n);
        choice = srv_api_choice_tool_calls(choice, 0, calls, ptrs, n, 0);
    }
    ch->n_calls = n;
    for (int k = 0; k < n; k++) srv_tool_call_free(&calls[k]);
    free(content);
    return choice;
}

/* Builds the final non-streaming body into c->final_body. */
void srv_build_final(srv_server *s, srv_gen *g, srv_conn *c) {
    json_t *o = NULL;
    srv_api_error e;
    if (g->any_error) {
        srv_api_fail(&e, 500, NULL, "generation failed inside the engine (see the server log)");
    } else if (g->shutdown_abort) {
        srv_api_fail(&e, 503, NULL, "the server is shutting down; request aborted");
    } else {
        o = srv_api_envelope(g->rq.kind, 0, g->rid, g->created, s->model_name);
        json_t *arr = json_array();
        for (int i = 0; o && arr && i < g->rq.n; i++) {
            srv_choice *ch = &g->ch[i];
            json_t *choice;
            if (g->rq.echo) {
                srv_buf t = {0};
                int rc = srv_buf_append(&t, g->rq.echo_text, g->rq.echo_len);
                if (!rc) rc = srv_buf_append(&t, srv_buf_ptr(&ch->text), srv_buf_size(&ch->text));
                choice =
                    rc ? NULL
                       : srv_api_choice(g->rq.kind, 0, i, srv_buf_ptr(&t), srv_buf_size(&t), 0,
                                        srv_lp_take(&ch->lp), srv_api_finish_reason(ch->finish));
                srv_buf_free(&t);
            } else if (g->rq.tools.n > 0) {
                choice = final_with_tools(s, g, i);
            } else {
                choice = srv_api_choice(g->rq.kind, 0, i, srv_buf_ptr(&ch->text),
                                        srv_buf_size(&ch->text), 0, srv_lp_take(&ch->lp),
                                        srv_api_finish_reason(ch->finish));
                if (g->rq.reasoning)
                    choice = srv_api_choice_reasoning(choice, 0, srv_buf_ptr(&ch->reasoning),
                                                      srv_buf_size(&ch->reasoning),
                                                      srv_buf_size(&ch->text) == 0);
            }
            if (!choice) {
                json_decref(arr);
                arr = NULL;
                break;
            }
            json_array_append_new(arr, choice);
        }
        if (o && arr) {
            json_object_set_new(o, "choices", arr);
            json_object_set_new(o, "usage",
                                srv_api_usage(g->n_prompt, g->completion_tokens, g->n_cached));
        } else {
            json_decref(o);
            json_decref(arr);
            o = NULL;
            srv_api_fail(&e, 500, NULL, "out of memory building the response");
        }
    }
    int status = o ? 200 : e.status;
    if (!o) o = srv_api_error_json(&e);
    char *txt = o ? json_dumps(o, SRV_JSON_FLAGS) : NULL;
    json_decref(o);
    if (!txt) {
        srv_conn_kill(c, SRV_ABORT_DISCONNECT);
        return;
    }
    c->final_body = txt;
    c->final_len = strlen(txt);
    c->final_status = status;
}

void srv_conn_probe(srv_conn *c) {
    if (c->kill || c->out_done || c->final_body) return;
    if (!srv_buf_size(&c->out)) {
        const char *p = c->streaming ? ":\n\n" : "\n";
        if (srv_buf_append(&c->out, p, strlen(p))) {
            srv_conn_kill(c, SRV_ABORT_DISCONNECT);
            return;
        }
    }
    srv_conn_resume(c);
}

/* ================= responses ================= */

static void add_common_headers(srv_conn *c, struct MHD_Response *r) {
    if (c->rid[0]) MHD_add_response_header(r, "X-Request-Id", c->rid);
    if (c->s->draining) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
}

static void respond_raw(srv_conn *c, int status, char *body, size_t len, const char *ctype) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    add_common_headers(c, r);
    if (status == 405) {
        const char *allow = c->route == R_HEALTH || c->route == R_METRICS || c->route == R_MODELS ||
                                    c->route == R_MODEL || c->route == R_WEB
                                ? "GET, HEAD"
                                : "POST";
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    }
    if (status == 401) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    /* an oversized body: this client is not worth keeping */
    if (status == 413 && !c->s->draining)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    if (status == 429 || status == 503)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (MHD_queue_response(c->mc, (unsigned)status, r) == MHD_YES) {
        c->status = status;
        srv_metrics_response(&c->s->metrics, status);
    }
    MHD_destroy_response(r);
}

/* Queues obj (stolen) as the JSON response. */
static void respond_json(srv_conn *c, int status, json_t *obj) {
    char *txt = obj ? json_dumps(obj, SRV_JSON_FLAGS) : NULL;
    json_decref(obj);
    if (!txt) {
        static const char oom[] =
            "{\"error\":{\"message\":\"out of memory\",\"type\":\"internal_error\","
            "\"param\":null,\"code\":null}}";
        txt = strdup(oom);
        status = 500;
        if (!txt) return;
    }
    respond_raw(c, status, txt, strlen(txt), "application/json");
}

/* A page file: srv_web.c builds the response (headers, 304 on If-None-Match). */
static void respond_web(srv_conn *c) {
    const char *inm =
        MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
    int status = 0;
    struct MHD_Response *r = srv_web_response(srv_web_find(c->path), inm, &status);
    if (!r) {
        respond_json(c, 500, NULL); /* NULL: the out-of-memory body */
        return;
    }
    add_common_headers(c, r);
    if (MHD_queue_response(c->mc, (unsigned)status, r) == MHD_YES) {
        c->status = status;
        srv_metrics_response(&c->s->metrics, status);
    }
    MHD_destroy_response(r);
}

static void respond_error(srv_conn *c, const srv_api_error *e) {
    respond_json(c, e->status, srv_api_error_json(e));
}

static void respond_errorf(srv_conn *c, int status, const char *param, const char *code,
                           const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void respond_errorf(srv_conn *c, int status, const char *param, const char *code,
                           const char *fmt, ...) {
    srv_api_error e;
    srv_api_fail(&e, status, param, "%s", "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    e.code = code;
    respond_error(c, &e);
}

static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    srv_conn *c = cls;
    if (c->kill) return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t avail = srv_buf_size(&c->out);
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, srv_buf_ptr(&c->out), n);
        srv_buf_consume(&c->out, n);
        return (ssize_t)n;
    }
    if (c->out_done) return MHD_CONTENT_READER_END_OF_STREAM;
    srv_conn_suspend(c); /* resumed when the loop appends output */
    return 0;
}

/* The content of a non-streaming reply committed early (srv_conn_probe):
 * probes from c->out, then the final body; a final status other than 200
 * ends the reply unfinished. */
static ssize_t probe_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    srv_conn *c = cls;
    if (c->kill) return MHD_CONTENT_READER_END_WITH_ERROR;
    const char *src = srv_buf_ptr(&c->out);
    size_t avail = srv_buf_size(&c->out);
    if (!avail && c->final_body) {
        if (c->final_status != 200) return MHD_CONTENT_READER_END_WITH_ERROR;
        src = c->final_body + c->final_off;
        avail = c->final_len - c->final_off;
        if (!avail) return MHD_CONTENT_READER_END_OF_STREAM;
    }
    if (!avail) {
        srv_conn_suspend(c); /* resumed by the next probe or the final body */
        return 0;
    }
    size_t n = avail < max ? avail : max;
    memcpy(buf, src, n);
    if (src == c->final_body + c->final_off)
        c->final_off += n;
    else
        srv_buf_consume(&c->out, n);
    return (ssize_t)n;
}

static void respond_probing(srv_conn *c) {
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, probe_reader, c, NULL);
    if (!r) {
        srv_conn_kill(c, SRV_ABORT_DISCONNECT);
        return;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    add_common_headers(c, r);
    if (MHD_queue_response(c->mc, 200, r) == MHD_YES) {
        c->status = 200;
        srv_metrics_response(&c->s->metrics, 200);
    }
    MHD_destroy_response(r);
}

/* ================= handlers ================= */

static json_t *parse_body(srv_conn *c) {
    json_error_t je;
    json_t *j = json_loadb(srv_buf_ptr(&c->body), srv_buf_size(&c->body), JSON_ALLOW_NUL, &je);
    if (!j) {
        respond_errorf(c, 400, NULL, NULL,
                       "invalid JSON in the request body: %s (line %d, column %d)", je.text,
                       je.line, je.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        respond_errorf(c, 400, NULL, NULL, "the request body must be a JSON object");
        return NULL;
    }
    return j;
}

static int queue_full(srv_server *s) {
    eng_stats st;
    int waiting_over = s->n_live_gens - s->cfg.max_num_seqs >= s->cfg.max_queue;
    if (waiting_over) return 1;
    if (srv_get_snapshot(s, &st) && st.n_waiting > 0 && st.n_waiting >= s->cfg.max_queue) return 1;
    return 0;
}

/* Bytes the first stream events of a streamed echo request take in the
 * connection's output buffer (one per choice: the envelope and the prompt as
 * a JSON string); 0 when the request streams no echo. An upper bound: 512
 * bytes cover the envelope, ids and SSE framing. */
static size_t echo_event_bytes(const srv_server *s, const srv_gen_req *rq) {
    if (!rq->stream || !rq->echo) return 0;
    json_t *str = json_stringn(rq->echo_text, rq->echo_len);
    size_t n = str ? json_dumpb(str, NULL, 0, JSON_ENCODE_ANY) : 0;
    json_decref(str);
    if (!n) n = 6 * rq->echo_len + 2; /* every byte escaped, the worst case */
    return (size_t)rq->n * (n + 512 + strlen(s->model_name));
}

static void handle_gen(srv_server *s, srv_conn *c, int kind) {
    json_t *body = parse_body(c);
    if (!body) return;
    srv_fill_api_ctx(s);
    srv_gen *g = calloc(1, sizeof *g);
    if (!g) {
        json_decref(body);
        respond_errorf(c, 500, NULL, NULL, "out of memory");
        return;
    }
    srv_api_error e;
    int rc = srv_api_parse_gen(&s->api, kind, body, &g->rq, &e);
    json_decref(body);
    if (rc) {
        free(g);
        respond_error(c, &e);
        return;
    }
    const size_t echo_bytes = echo_event_bytes(s, &g->rq);
    if (echo_bytes > (size_t)s->cfg.max_stream_buffer) {
        /* the stream's first write would overflow its own buffer: refuse it now,
         * as JSON, instead of a stream cut with no error */
        srv_gen_req_free(&g->rq);
        free(g);
        respond_errorf(c, 400, "echo", NULL,
                       "echo: the echoed prompt needs %zu bytes of stream events, over "
                       "--max-stream-buffer (%lld bytes); send it without echo or stream",
                       echo_bytes, s->cfg.max_stream_buffer);
        return;
    }
    if (queue_full(s)) {
        srv_gen_req_free(&g->rq);
        free(g);
        respond_errorf(c, 429, NULL, "queue_full",
                       "the server is at capacity (%d requests running or waiting); retry later",
                       s->n_live_gens);
        return;
    }
    g->id = ++s->next_id;
    srv_random_id(&s->rng, kind == SRV_API_CHAT ? "chatcmpl-" : "cmpl-", g->rid, sizeof g->rid);
    g->created = (long long)time(NULL);
    g->t_arrival = c->t_start;
    for (int i = 0; i < g->rq.n; i++) {
        srv_reasoning_init(&g->ch[i].rp, g->rq.reasoning);
        srv_tool_stream_init(&g->ch[i].ts, &g->rq.tools);
        g->ch[i].text.limit = 0;
        g->ch[i].lp.kind = kind;
        g->ch[i].lp.text_offset = g->rq.echo ? g->rq.echo_len : 0;
    }
    eng_request q;
    srv_gen_req_to_eng(&g->rq, g->id, NULL, srv_rng_next(&s->rng), &q);
    eng_error ee;
    rc = eng_add(s->eng, &q, &ee);
    if (rc) {
        srv_gen_req_free(&g->rq);
        free(g);
        if (rc == NI_ENOMEM) {
            respond_errorf(c, 503, NULL, NULL, "out of memory queueing the request");
            return;
        }
        respond_errorf(c, 400, ee.param[0] ? ee.param : NULL, NULL, "%s", ee.msg);
        return;
    }
    srv_gen **b = &s->gens[g->id & (GEN_BUCKETS - 1)];
    g->hnext = *b;
    *b = g;
    g->engine_live = 1;
    s->n_live_gens++;
    s->n_gen_conns++;
    s->metrics.requests_in_flight++;
    s->metrics.gen_requests[kind]++;
    s->metrics.prompt_tokens += (uint64_t)g->rq.n_prompt;
    g->conn = c;
    c->gen = g;
    snprintf(c->rid, sizeof c->rid, "%s", g->rid);
    c->prompt_tokens = g->rq.n_prompt;
    srv_log(SRV_LOG_DEBUG, "%s: queued: %d prompt tokens, max_tokens %d, n %d, stream %d", g->rid,
            g->rq.n_prompt, g->rq.max_tokens, g->rq.n, g->rq.stream);
    if (!g->rq.stream) {
        srv_conn_suspend(c);
        return;
    }
    c->streaming = 1;
    c->out.limit = (size_t)s->cfg.max_stream_buffer;
    /* the headers go out now; the first chunk of each choice (the assistant role,
     * the echoed prompt) waits for its first engine event (srv_stream_open) */
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 32 * 1024, sse_reader, c, NULL);
    if (!r) {
        srv_conn_kill(c, SRV_ABORT_DISCONNECT);
        return;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    add_common_headers(c, r);
    if (MHD_queue_response(c->mc, 200, r) == MHD_YES) {
        c->status = 200;
        srv_metrics_response(&s->metrics, 200);
    }
    MHD_destroy_response(r);
}

static json_t *model_card(srv_server *s) {
    json_t *m = json_object();
    if (!m) return NULL;
    json_object_set_new(m, "id", srv_json_stringn(s->model_name, strlen(s->model_name)));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(s->start_time));
    json_object_set_new(m, "owned_by", json_string("nanoinfer"));
    json_object_set_new(m, "root", srv_json_stringn(s->cfg.model, strlen(s->cfg.model)));
    json_object_set_new(m, "parent", json_null());
    json_object_set_new(m, "max_model_len",
                        srv_is_ready(s) ? json_integer(s->api.max_seq_len) : json_null());
    return m;
}

static void handle_health(srv_server *s, srv_conn *c) {
    json_t *o = json_object();
    int st = atomic_load_explicit(&s->state, memory_order_acquire);
    const char *status = "ok";
    int code = 200;
    if (st == ST_LOADING || (st == ST_READY && !s->ready_seen))
        status = "loading", code = 503;
    else if (st == ST_FAILED)
        status = "failed", code = 503;
    else if (s->draining)
        status = "shutting down", code = 503;
    else if (!srv_engine_alive(s))
        status = "engine stalled", code = 503;
    else if (s->failing_streak >= SRV_FAILING_STREAK)
        status = "engine failing every request", code = 503;
    if (o) json_object_set_new(o, "status", json_string(status));
    respond_json(c, code, o);
}

static void handle_metrics(srv_server *s, srv_conn *c) {
    eng_stats st;
    int have = srv_get_snapshot(s, &st) && srv_is_ready(s);
    int healthy = srv_is_ready(s) && !s->draining && srv_engine_alive(s) &&
                  s->failing_streak < SRV_FAILING_STREAK;
    srv_buf b = {0};
    if (srv_metrics_render(&s->metrics, have ? &st : NULL, srv_is_ready(s), healthy, &b) ||
        srv_metrics_render_vllm(&s->metrics, have ? &st : NULL, s->model_name, &b)) {
        srv_buf_free(&b);
        respond_errorf(c, 500, NULL, NULL, "out of memory rendering metrics");
        return;
    }
    size_t n = srv_buf_size(&b);
    char *txt = b.data; /* off is 0: nothing was consumed */
    if (!txt) txt = strdup("");
    respond_raw(c, 200, txt, n, "text/plain; version=0.0.4; charset=utf-8");
}

static void dispatch(srv_server *s, srv_conn *c) {
    if (c->too_big) {
        respond_errorf(c, 413, NULL, NULL, "request body too large (limit %lld bytes)",
                       s->cfg.max_body);
        return;
    }
    switch (c->route) {
    case R_WEB: respond_web(c); return;
    case R_HEALTH: handle_health(s, c); return;
    case R_METRICS: handle_metrics(s, c); return;
    case R_MODELS: {
        json_t *o = json_object(), *arr = json_array();
        if (o && arr) {
            json_array_append_new(arr, model_card(s));
            json_object_set_new(o, "object", json_string("list"));
            json_object_set_new(o, "data", arr);
        } else {
            json_decref(arr);
            json_decref(o);
            o = NULL;
        }
        respond_json(c, 200, o);
        return;
    }
    case R_MODEL: {
        const char *id = c->path + strlen("/v1/models/");
        if (!strcmp(id, s->model_name))
            respond_json(c, 200, model_card(s));
        else
            respond_errorf(c, 404, "model", "model_not_found", "The model `%.200s` does not exist.",
                           id);
        return;
    }
    default: break;
    }
    if (!srv_is_ready(s)) {
        int st = atomic_load_explicit(&s->state, memory_order_acquire);
        respond_errorf(c, 503, NULL, NULL,
                       st == ST_FAILED ? "the model failed to load"
                                       : "the model is loading; retry shortly");
        return;
    }
    if (c->route == R_COMPLETIONS || c->route == R_CHAT) {
        handle_gen(s, c, c->route == R_CHAT ? SRV_API_CHAT : SRV_API_COMPLETION);
        return;
    }
    json_t *body = parse_body(c);
    if (!body) return;
    srv_api_error e;
    json_t *o = c->route == R_TOKENIZE ? srv_api_tokenize(&s->api, body, &e)
                                       : srv_api_detokenize(&s->api, body, &e);
    json_decref(body);
    if (o)
        respond_json(c, 200, o);
    else
        respond_error(c, &e);
}

/* ================= routing, auth, MHD callbacks ================= */

static int route_of(const char *path) {
    if (!strcmp(path, "/health")) return R_HEALTH;
    if (!strcmp(path, "/metrics")) return R_METRICS;
    if (!strcmp(path, "/v1/models")) return R_MODELS;
    if (!strncmp(path, "/v1/models/", 11) && path[11]) return R_MODEL;
    if (!strcmp(path, "/v1/completions")) return R_COMPLETIONS;
    if (!strcmp(path, "/v1/chat/completions")) return R_CHAT;
    if (!strcmp(path, "/tokenize")) return R_TOKENIZE;
    if (!strcmp(path, "/detokenize")) return R_DETOKENIZE;
    return R_NONE;
}

static int route_is_get(int r) {
    return r == R_HEALTH || r == R_METRICS || r == R_MODELS || r == R_MODEL || r == R_WEB;
}
/* The page's static files are public (like llama-server's); the API calls it makes are not. */
static int route_needs_auth(int r) { return r != R_HEALTH && r != R_METRICS && r != R_WEB; }

static int auth_ok(srv_server *s, srv_conn *c) {
    if (!s->cfg.api_key[0]) return 1;
    const char *h = NULL;
    size_t hl = 0;
    if (MHD_lookup_connection_value_n(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION,
                                      strlen(MHD_HTTP_HEADER_AUTHORIZATION), &h, &hl) != MHD_YES ||
        !h)
        return 0;
    /* Control bytes never belong in a key: "Bearer sekret\x01x" is not the
     * key "sekret" (issue 14). The value's own length is used, not strlen; an
     * embedded NUL is cut by libmicrohttpd 0.9.75's parser before it gets
     * here, so that case is still open. */
    for (size_t i = 0; i < hl; i++)
        if ((unsigned char)h[i] < 0x20 || h[i] == 0x7f) return 0;
    if (hl < 7 || strncasecmp(h, "Bearer ", 7)) return 0;
    size_t i = 7;
    while (i < hl && h[i] == ' ') i++;
    return srv_ct_equal(h + i, hl - i, s->cfg.api_key, strlen(s->cfg.api_key));
}

/* The client waits for a 100 Continue before it sends the body (MHD sends
 * one only to HTTP/1.1 clients). */
static int expects_continue(srv_conn *c, const char *version) {
    const char *e = MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
    return e && !strcasecmp(e, "100-continue") && !strcmp(version, MHD_HTTP_VERSION_1_1);
}

/* The discard cap: DRAIN_FACTOR x this is the most of an oversized body read
 * and dropped after its 413. */
static size_t discard_cap(const srv_server *s) { return (size_t)s->cfg.max_body * DISCARD_FACTOR; }

int srv_answer_raw(srv_server *s, int fd, int http10, int status, const char *msg) {
    srv_api_error e;
    srv_api_fail(&e, status, NULL, "%s", msg);
    json_t *o = srv_api_error_json(&e);
    char *txt = o ? json_dumps(o, SRV_JSON_FLAGS) : NULL;
    json_decref(o);
    if (!txt) return -1;
    char head[256];
    size_t bl = strlen(txt);
    const char *reason = MHD_get_reason_phrase_for((unsigned)status);
    int hl = snprintf(head, sizeof head,
                      "%s %d %s\r\nConnection: close\r\n"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                      http10 ? "HTTP/1.0" : "HTTP/1.1", status, reason ? reason : "Error", bl);
    struct iovec iov[2] = {{head, (size_t)hl}, {txt, bl}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
    /* nothing else was written for this request: the send buffer takes it whole */
    ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    free(txt);
    if (w != (ssize_t)((size_t)hl + bl)) return -1;
    shutdown(fd, SHUT_WR);
    srv_metrics_response(&s->metrics, status);
    return 0;
}

/* Writes a 413 on c's socket in the middle of its body (see the top of the
 * file). Returns 0, or -1 when the socket took less than all of it (the
 * connection is then closed). */
static int answer_raw_413(srv_server *s, srv_conn *c, const char *version) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci || ci->connect_fd < 0) return -1;
    char msg[96];
    snprintf(msg, sizeof msg, "request body too large (limit %lld bytes)", s->cfg.max_body);
    if (srv_answer_raw(s, ci->connect_fd, !strcmp(version, MHD_HTTP_VERSION_1_0), 413, msg))
        return -1;
    c->answered_raw = 1;
    c->t_answered = ni_now();
    c->status = 413;
    /* a client that sends no more is closed by the sweep when the drain time is over */
    srv_sock *k = srv_sock_of(c->mc);
    if (k) k->deadline = c->t_answered + DRAIN_S;
    return 0;
}

/* A piece of a body over max-body: dropped. Returns MHD_NO to close. */
static enum MHD_Result discard_body(srv_server *s, srv_conn *c, size_t n, const char *version) {
    c->discarded += n;
    if (c->answered_raw) { /* draining after the 413 */
        if (c->discarded > DRAIN_FACTOR * discard_cap(s) || ni_now() - c->t_answered > DRAIN_S)
            return MHD_NO;
        return MHD_YES;
    }
    /* the first byte past the limit, whatever the framing: a chunked body
     * (or a chunk size like ffffffffffffffff) would otherwise be read and
     * dropped to the discard cap before the client heard anything */
    if (answer_raw_413(s, c, version)) return MHD_NO;
    srv_log(SRV_LOG_INFO, "%s %s: body over %lld bytes; answered 413, draining", c->method,
            c->path, s->cfg.max_body);
    return MHD_YES;
}

/* Control bytes in request header values (issue 14). libmicrohttpd 0.9.75
 * parses the header block in place and takes every value's length with
 * strlen, so "Bearer sekret\0x" reaches us as "Bearer sekret": no API shows
 * the NUL. The block is still there, though: it starts at the method (the
 * request line's first byte) and spans REQUEST_HEADER_SIZE bytes, with each
 * line's CRLF (or LF) and each name's colon overwritten by NULs, values in
 * order. So between the end of a value and the next header's name there may
 * be only its line end, 1 or 2 NULs; after the last value, that plus the
 * empty line's, at most 4. Anything else there is the rest of a value cut at
 * a NUL. Values MHD moved to its pool (obsolete line folding) cannot be
 * placed and are refused too, as RFC 9112 5.2 allows. */
typedef struct hdr_scan {
    const char *lo, *hi; /* the header block */
    const char *tail;    /* end of the previous value (NULL: none yet) */
    int bad;
} hdr_scan;

static int nul_gap_ok(const char *from, const char *to, ptrdiff_t max) {
    if (to < from || to - from > max) return 0;
    for (const char *p = from; p < to; p++)
        if (*p) return 0;
    return 1;
}

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   size_t key_size, const char *value, size_t value_size) {
    (void)kind;
    (void)key_size;
    hdr_scan *h = cls;
    for (size_t i = 0; i < value_size; i++) {
        unsigned char b = (unsigned char)value[i];
        if ((b < 0x20 && b != '\t') || b == 0x7f) h->bad = 1;
    }
    if (key < h->lo || key >= h->hi || value < h->lo || value + value_size >= h->hi ||
        (h->tail && !nul_gap_ok(h->tail, key, 2)))
        h->bad = 1;
    h->tail = value + value_size;
    return h->bad ? MHD_NO : MHD_YES;
}

/* 1 when a header value of c's request holds a byte < 0x20 other than TAB,
 * or 0x7f (method: the access handler's, the start of the header block). */
static int bad_header_bytes(srv_conn *c, const char *method) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->mc, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (!ci) return 0;
    hdr_scan h = {.lo = method, .hi = method + ci->header_size};
    MHD_get_connection_values_n(c->mc, MHD_HEADER_KIND, scan_header, &h);
    if (!h.bad && h.tail && !nul_gap_ok(h.tail, h.hi, 4)) h.bad = 1;
    return h.bad;
}

/* First call for a request: decide everything that needs no body. Returns 1
 * when a response was queued already. */
static int early_checks(srv_server *s, srv_conn *c, const char *version) {
    if (s->draining) {
        respond_errorf(c, 503, NULL, NULL,
                       s->fatal_seen ? "the engine failed (see the server log); restarting"
                                     : "the server is shutting down");
        return 1;
    }
    if (c->route == R_NONE) {
        respond_errorf(c, 404, NULL, "not_found", "Invalid URL (%s %.100s)", c->method, c->path);
        return 1;
    }
    int is_get = !strcmp(c->method, "GET") || !strcmp(c->method, "HEAD");
    if (route_is_get(c->route) ? !is_get : strcmp(c->method, "POST")) {
        respond_errorf(c, 405, NULL, "method_not_allowed", "Method %s is not allowed for %.100s",
                       c->method, c->path);
        return 1;
    }
    if (route_needs_auth(c->route) && !auth_ok(s, c)) {
        respond_errorf(c, 401, NULL, "invalid_api_key",
                       "Incorrect or missing API key (Authorization: Bearer ...)");
        return 1;
    }
    const char *cl =
        MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        unsigned long long n = strtoull(cl, &end, 10);
        if (n > (unsigned long long)s->cfg.max_body) {
            if (expects_continue(c, version)) { /* nothing sent yet: answer now */
                respond_errorf(c, 413, NULL, NULL,
                               "request body too large (%llu bytes; limit %lld)", n,
                               s->cfg.max_body);
                return 1;
            }
            c->too_big = 1; /* answered at its first byte (discard_body) */
        }
    }
    return 0;
}

static srv_conn *conn_new(srv_server *s, struct MHD_Connection *mc, const char *url,
                          const char *method) {
    srv_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->s = s;
    c->mc = mc;
    c->t_start = ni_now();
    snprintf(c->method, sizeof c->method, "%s", method);
    snprintf(c->path, sizeof c->path, "%s", url);
    c->route = route_of(url);
    if (strlen(url) >= sizeof c->path) c->route = R_NONE;
    if (c->route == R_NONE && !s->cfg.no_webui && srv_web_find(url)) c->route = R_WEB;
    c->body.limit = (size_t)s->cfg.max_body;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(c->client, sizeof c->client, "-");
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, c->client,
                      sizeof c->client);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
                      c->client, sizeof c->client);
    }
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    return c;
}

static void conn_free(srv_server *s, srv_conn *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv_buf_free(&c->body);
    srv_buf_free(&c->out);
    free(c->final_body);
    free(c);
}

enum MHD_Result srv_on_request(void *cls, struct MHD_Connection *mc, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_size, void **req_cls) {
    srv_server *s = cls;
    srv_conn *c = *req_cls;
    srv_sock *k = srv_sock_of(mc);
    if (k && k->cut) return MHD_NO; /* timed out or evicted: MHD closes it */
    if (!c) {
        c = conn_new(s, mc, url, method);
        if (!c) return MHD_NO;
        *req_cls = c;
        srv_sock_phase(s, k, SRV_SOCK_BODY, c);
        if (bad_header_bytes(c, method))
            respond_errorf(c, 400, NULL, NULL,
                           "a request header holds a control character (NUL, CR, LF, DEL, ...)");
        else
            early_checks(s, c, version);
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (!c->status && !c->too_big) {
            int rc = srv_buf_append(&c->body, upload_data, n);
            if (rc == NI_ERANGE)
                c->too_big = 1;
            else if (rc)
                return MHD_NO;
            else
                return MHD_YES;
        }
        return discard_body(s, c, n, version);
    }
    srv_sock_phase(s, k, SRV_SOCK_ANSWERING, NULL);
    if (c->answered_raw) return MHD_NO; /* the 413 is out and the body read: close */
    if (c->status) return MHD_YES;      /* answered early; MHD is finishing the upload */
    if (c->gen) {                       /* resumed: a non-streaming generation finished */
        if (c->kill) return MHD_NO;
        if (c->final_body) {
            char *b = c->final_body;
            c->final_body = NULL;
            respond_raw(c, c->final_status, b, c->final_len, "application/json");
            return MHD_YES;
        }
        if (c->half_closed && !c->status) { /* resumed by a probe */
            respond_probing(c);
            return MHD_YES;
        }
        srv_conn_suspend(c); /* spurious resume */
        return MHD_YES;
    }
    dispatch(s, c);
    return MHD_YES;
}

void srv_on_completed(void *cls, struct MHD_Connection *mc, void **req_cls,
                      enum MHD_RequestTerminationCode toe) {
    (void)mc;
    srv_server *s = cls;
    srv_conn *c = *req_cls;
    if (!c) return;
    *req_cls = NULL;
    srv_gen *g = c->gen;
    int lost = toe != MHD_REQUEST_TERMINATED_COMPLETED_OK;
    if (g) {
        c->prompt_tokens = g->n_prompt ? g->n_prompt : g->rq.n_prompt;
        c->completion_tokens = g->completion_tokens;
        g->conn = NULL;
        c->gen = NULL;
        s->n_gen_conns--;
        if (g->engine_live) {
            srv_gen_abort(s, g, SRV_ABORT_DISCONNECT);
            c->completion_tokens = 0;
            for (int i = 0; i < g->rq.n; i++) c->completion_tokens += g->ch[i].n_gen;
        } else {
            srv_gen_free(s, g);
        }
    }
    static const char *const why[] = {"ok",       "error",      "timeout",
                                      "shutdown", "read error", "client abort"};
    srv_log(SRV_LOG_INFO, "access %s \"%s %s\" %d prompt=%d completion=%d %.3fs%s%s%s%s", c->client,
            c->method, c->path, c->status ? c->status : 499 /* nginx: client closed request */,
            c->prompt_tokens, c->completion_tokens, ni_now() - c->t_start, c->rid[0] ? " id=" : "",
            c->rid, lost ? " closed=" : "", lost ? why[(unsigned)toe < 6 ? (unsigned)toe : 1] : "");
    conn_free(s, c);
    srv_sock_phase(s, srv_sock_of(mc), SRV_SOCK_HEADERS, NULL);
    if (s->draining) srv_check_drained(s);
}
