/*
 * bench_http.c - `nanoinfer bench --url URL`: a serving benchmark client for
 * any OpenAI-compatible server (nanoinfer serve, llama-server, vLLM), so that
 * every engine is measured by the same client.
 *
 * Workload: --num-prompts requests per run to /v1/completions or
 * /v1/chat/completions (--endpoint), each streaming (stream: true,
 * stream_options.include_usage) with max_tokens = its output length,
 * ignore_eos (a vLLM / llama-server / nanoinfer extension) and temperature 0
 * unless --temperature. Prompts are synthetic: random common English words
 * (seeded, different in every request and every run, so a prefix cache only
 * sees the chat template), sized to --input-len tokens with the server's own
 * tokenizer when it has POST /tokenize (nanoinfer, vLLM: "prompt", llama-
 * server: "content"): one sample text is tokenized, and a prompt of L tokens
 * gets round(L / tokens-per-word) words. Without /tokenize, one word is taken
 * as one token (true of these words in GPT-2/Llama-3-style vocabularies).
 * The prompt tokens reported are the server's usage.prompt_tokens. The same
 * --seed sends the same prompts again (a server's prefix cache would then
 * serve them): vary --seed between invocations against one server.
 *
 * Load: --concurrency C is C keep-alive connections, at most one request in
 * flight on each; closed loop (the next request is sent as soon as a stream
 * ends) unless --request-rate R: Poisson arrivals at R requests/s (seeded
 * exponential gaps, timers of 1 ms resolution) with at most C in flight; an
 * arrival that finds every connection busy waits in the client (its wait is
 * reported; its timings start when it is sent). Lists (--concurrency 1,4,16,
 * --request-rate 2,8) run every combination in turn, each on fresh connections.
 *
 * Metrics, per request from the moment its bytes are handed to the socket;
 * every read is time-stamped once (events in one read share the stamp):
 * TTFT = first event that carries generated text (the role-only first chat
 * chunk does not count); ITL = gaps between successive text events; E2E =
 * the end of the response; TPOT = (E2E - TTFT) / (output tokens - 1).
 * Output tokens: usage.completion_tokens, else the text events counted.
 * mean / p50 / p90 / p99 (nearest rank, as `nanoinfer bench` offline and
 * scripts/http_bench.py). A request is ok when it got 200, a complete
 * response, [DONE] or a finish_reason, and no error event; every other ends
 * as one error kind: http_<status>, connect, closed (connection lost before
 * the response ended), timeout (--timeout seconds without a byte), protocol
 * (malformed HTTP, SSE or chunk JSON), stream_error, incomplete. A request
 * whose kept-alive connection closes before any byte of the reply is resent
 * once on a fresh connection (counted as a retry).
 *
 * Design: one thread, one uv loop per run, one uv_tcp_t per connection (one
 * run-wide timer finds the idle ones, so a read costs no timer update). Bytes
 * go through an incremental HTTP/1.1 response parser (srv_resp: Content-
 * Length, chunked, until-close) and the SSE line parser (srv_sse), and each
 * event's JSON through srv_stream_event_parse (a scanner that builds no
 * tree), all in server/http/srv_client.c and unit-tested there. Bounds: a
 * 64 KiB read buffer per connection, response heads 64 KiB, SSE lines 1 MiB
 * (their buffers are reused: nothing is allocated per chunk), error bodies
 * kept to 2 KiB, inter-token gaps in one array sized to the run's max_tokens
 * total. The request bodies are built before a run starts. Hosts are
 * resolved with uv_getaddrinfo (names, IPv4, IPv6); the first address that
 * accepts a connection is used for the whole benchmark. Model name: --model,
 * else the first id of GET /v1/models.
 *
 * Ctrl-C ends the current run: the requests finished so far are reported
 * and written, and the sweep stops.
 *
 * Errors are negative NI_E* codes inside; srv_cmd_bench_http returns the
 * exit status (0 ok, 1 runtime error or failed requests, 2 usage, 130
 * interrupted).
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "engine/util/util.h"
#include "cli.h"
#include "server/http/srv_client.h"
#include "server/http/srv_util.h"

#define HB_MAX_CONNS 1024
#define HB_READ_BUF (64 * 1024)
#define HB_ERR_KEEP 2048
#define HB_CTRL_MAX (8 << 20) /* a /v1/models or /tokenize reply */
#define HB_MAX_RUNS 64

/* ---- options ---- */

typedef struct hb_args {
    const char *url, *model, *api_key, *json, *concurrency, *rate, *input_len, *output_len,
        *temperature;
    int endpoint; /* 0 completions, 1 chat */
    int num_prompts, seed, timeout_s, no_tokenize, quiet;
} hb_args;

#define HA(f) offsetof(hb_args, f)
static const cli_opt g_opts[] = {
    {"url", 0, CLI_OPT_STR, HA(url), 0, 0, NULL, "URL",
     "server: http://host:port[/prefix] (a trailing /v1 is dropped)"},
    {"endpoint", 0, CLI_OPT_CHOICE, HA(endpoint), 0, 0, "completions|chat", NULL,
     "/v1/completions (default) or /v1/chat/completions"},
    {"model", 0, CLI_OPT_STR, HA(model), 0, 0, NULL, "NAME",
     "model name sent (default: the first of GET /v1/models)"},
    {"api-key", 0, CLI_OPT_STR, HA(api_key), 0, 0, NULL, "KEY",
     "bearer key (default $NANOINFER_API_KEY, $OPENAI_API_KEY)"},
    {"num-prompts", 0, CLI_OPT_INT, HA(num_prompts), 1, 1000000, NULL, "N",
     "requests per run (default 200)"},
    {"num-requests", 0, CLI_OPT_INT, HA(num_prompts), 1, 1000000, NULL, "N",
     "the same as --num-prompts"},
    {"input-len", 0, CLI_OPT_STR, HA(input_len), 0, 0, NULL, "A[:B]",
     "prompt tokens, uniform in [A, B] (default 128)"},
    {"output-len", 0, CLI_OPT_STR, HA(output_len), 0, 0, NULL, "A[:B]",
     "max_tokens with ignore_eos, uniform in [A, B] (default 128)"},
    {"concurrency", 0, CLI_OPT_STR, HA(concurrency), 0, 0, NULL, "N,..",
     "connections = max in flight; a list sweeps (default 16; 256 with a rate)"},
    {"request-rate", 0, CLI_OPT_STR, HA(rate), 0, 0, NULL, "R,..",
     "Poisson arrivals per second, or inf (default: closed loop)"},
    {"temperature", 0, CLI_OPT_STR, HA(temperature), 0, 0, NULL, "T",
     "sampling temperature (default 0)"},
    {"seed", 0, CLI_OPT_INT, HA(seed), 0, 2147483647, NULL, "S", "workload seed (default 0)"},
    {"timeout", 0, CLI_OPT_INT, HA(timeout_s), 1, 86400, NULL, "S",
     "a request fails after S s without a byte (default 600)"},
    {"no-tokenize", 0, CLI_OPT_FLAG, HA(no_tokenize), 0, 0, NULL, NULL,
     "do not size prompts with POST /tokenize (1 word = 1 token)"},
    {"json", 0, CLI_OPT_STR, HA(json), 0, 0, NULL, "FILE",
     "write the runs as a JSON array of objects"},
    {"quiet", 'q', CLI_OPT_FLAG, HA(quiet), 0, 0, NULL, NULL,
     "no per-run report (the summary table and --json only)"},
};
#undef HA

static void hb_usage(FILE *f) {
    fprintf(
        f,
        "usage: nanoinfer bench --url URL [options]\n\n"
        "Serving benchmark of a running OpenAI-compatible server (nanoinfer serve, llama-server,\n"
        "vLLM): streamed requests over keep-alive connections, closed loop or Poisson arrivals;\n"
        "reports request and token throughput, TTFT, TPOT, ITL and end-to-end latency.\n"
        "Without --url, `nanoinfer bench --model M` is the offline engine benchmark.\n\n");
    cli_usage_opts(f, g_opts, NI_ARRAY_LEN(g_opts));
}

/* The settings of the whole benchmark. */
typedef struct hb_cfg {
    char host[256], prefix[512], hostport[300], path[600];
    int port, endpoint, num_prompts, timeout_s, quiet;
    char model[256];
    const char *api_key;
    int in_lo, in_hi, out_lo, out_hi;
    uint64_t seed;
    double temperature;
    double words_per_token; /* prompt words per requested token */
    int tokenized;          /* words_per_token came from /tokenize */
    struct sockaddr_storage addr;
} hb_cfg;

/* ---- workload ---- */

static uint64_t hb_rng(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int hb_rand_in(uint64_t *s, int lo, int hi) {
    return lo + (int)(hb_rng(s) % (uint64_t)(hi - lo + 1));
}

/* Common English words, each one token with its leading space in GPT-2,
 * Llama-3, Qwen and SmolLM2 vocabularies. */
static const char *const g_words[] = {
    "the",   "of",     "and",    "to",     "in",     "is",     "that",  "for",   "it",    "as",
    "was",   "with",   "be",     "by",     "on",     "not",    "he",    "this",  "are",   "or",
    "his",   "from",   "at",     "which",  "but",    "have",   "an",    "had",   "they",  "you",
    "were",  "their",  "one",    "all",    "we",     "can",    "her",   "has",   "there", "been",
    "if",    "more",   "when",   "will",   "would",  "who",    "so",    "no",    "she",   "other",
    "its",   "time",   "about",  "may",    "into",   "only",   "some",  "could", "these", "them",
    "than",  "two",    "first",  "then",   "any",    "do",     "like",  "what",  "my",    "also",
    "our",   "out",    "new",    "over",   "such",   "people", "after", "most",  "made",  "many",
    "year",  "work",   "world",  "state",  "water",  "house",  "city",  "small", "light", "place",
    "day",   "way",    "life",   "part",   "number", "great",  "old",   "man",   "long",  "right",
    "down",  "each",   "back",   "use",    "good",   "high",   "under", "last",  "home",  "school",
    "music", "story",  "river",  "market", "family", "system", "order", "power", "green", "table",
    "paper", "money",  "window", "garden", "simple", "open",   "early", "south", "north", "west",
    "east",  "game",   "road",   "food",   "book",   "group",  "line",  "end",   "side",  "name",
    "area",  "point",  "war",    "hand",   "car",    "land",   "sea",   "air",   "fire",  "king",
    "field", "church", "island", "party",  "team",   "love",   "art",   "film",  "body",  "face",
    "door",  "tree",
};

/* Appends n random words (space-separated, no leading space) to b. */
static int hb_words(srv_buf *b, uint64_t *s, int n) {
    for (int i = 0; i < n; i++) {
        const char *w = g_words[hb_rng(s) % NI_ARRAY_LEN(g_words)];
        if ((i && srv_buf_append(b, " ", 1)) || srv_buf_append(b, w, strlen(w))) return NI_ENOMEM;
    }
    return 0;
}

/* ---- one run ---- */

enum { E_OK = 0, E_HTTP, E_CONNECT, E_CLOSED, E_TIMEOUT, E_PROTOCOL, E_STREAM, E_INCOMPLETE, E_N };
static const char *const g_err_names[E_N] = {"ok",      "http",     "connect",      "closed",
                                             "timeout", "protocol", "stream_error", "incomplete"};

typedef struct hb_req {
    char *body;
    size_t body_len;
    int max_tokens;
    double t_arrive, t_send, t_first, t_last, t_done; /* seconds since the run began */
    int n_text;                                       /* events with generated text */
    long prompt_tokens, completion_tokens;            /* usage; -1 when absent */
    int status, err, done_seen, finished, retried;
    char finish[24];
} hb_req;

enum { C_FREE = 0, C_CONNECTING, C_OPEN, C_CLOSING };

struct hb_run;

typedef struct hb_conn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    struct hb_run *run;
    int state;
    int req;       /* request in flight, -1 */
    int served;    /* requests completed on this TCP connection */
    int writing;   /* a uv_write is outstanding */
    int got_bytes; /* bytes of the current response received */
    int failed;    /* set during a read: the request ends with this error */
    double t_read; /* stamp of the last read (or of the send or connect) */
    srv_resp resp;
    srv_sse sse;
    srv_buf errbody;
    char head[2048];
    size_t head_len;
    char rbuf[HB_READ_BUF];
} hb_conn;

typedef struct hb_run {
    uv_loop_t loop;
    const hb_cfg *cfg;
    int concurrency;
    double rate; /* 0: closed loop */
    hb_req *reqs;
    int n, n_arrived, n_started, n_finished;
    hb_conn *conns;
    uv_timer_t arrival, progress, idle;
    int progress_on, interrupted;
    uv_signal_t sigint;
    uint64_t t0;
    double *itl;
    size_t n_itl, cap_itl, itl_dropped;
    long events, retries;
    int err_count[E_N];
    int http_count[1000];
    char err_msg[E_N][200]; /* the first message of each kind */
} hb_run;

static double hb_now(const hb_run *r) { return (double)(uv_hrtime() - r->t0) * 1e-9; }

static void conn_start(hb_conn *c);
static void dispatch(hb_run *r);

static void note_err(hb_run *r, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void note_err(hb_run *r, int kind, const char *fmt, ...) {
    if (r->err_msg[kind][0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err_msg[kind], sizeof r->err_msg[kind], fmt, ap);
    va_end(ap);
}

static void on_handle_closed(uv_handle_t *h) { (void)h; }

static void on_tcp_closed(uv_handle_t *h) {
    hb_conn *c = h->data;
    c->state = C_FREE;
    c->writing = 0;
    if (c->run->interrupted) return;
    if (c->req >= 0)
        conn_start(c); /* a retry: reconnect with the same request */
    else
        dispatch(c->run);
}

static void conn_close(hb_conn *c) {
    if (c->state == C_CONNECTING || c->state == C_OPEN) {
        c->state = C_CLOSING;
        uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
    }
}

static void close_all(hb_run *r) {
    for (int i = 0; i < r->concurrency; i++) {
        hb_conn *c = &r->conns[i];
        c->req = -1;
        conn_close(c);
    }
    uv_close((uv_handle_t *)&r->arrival, on_handle_closed);
    uv_close((uv_handle_t *)&r->progress, on_handle_closed);
    uv_close((uv_handle_t *)&r->idle, on_handle_closed);
    uv_close((uv_handle_t *)&r->sigint, on_handle_closed);
}

static void print_progress(hb_run *r, int final) {
    long toks = 0;
    for (int i = 0; i < r->n; i++)
        if (r->reqs[i].finished && !r->reqs[i].err)
            toks += r->reqs[i].completion_tokens >= 0 ? r->reqs[i].completion_tokens
                                                      : r->reqs[i].n_text;
    double el = hb_now(r);
    int w = 30, k = (int)((long)w * r->n_finished / r->n);
    fprintf(stderr, "\r[%.*s%*s] %d/%d requests, %.1f output tok/s ", k,
            "==============================", w - k, "", r->n_finished, r->n,
            el > 0 ? toks / el : 0.0);
    if (final) fprintf(stderr, "\n");
}

static void on_progress(uv_timer_t *t) { print_progress(t->data, 0); }

/* Ends the request in flight on c with kind (E_OK: judge by what arrived). */
static void finish_req(hb_conn *c, int kind) {
    hb_run *r = c->run;
    if (c->req < 0) return;
    hb_req *q = &r->reqs[c->req];
    c->req = -1;
    q->t_done = hb_now(r);
    q->status = c->resp.head_done ? c->resp.status : 0;
    if (kind == E_OK) {
        if (q->status != 200) {
            kind = E_HTTP;
            srv_stream_ev ev;
            if (q->status >= 100 && q->status < 1000) r->http_count[q->status]++;
            if (!srv_stream_event_parse(srv_buf_ptr(&c->errbody), srv_buf_size(&c->errbody), &ev) &&
                ev.error)
                note_err(r, E_HTTP, "HTTP %d: %s", q->status, ev.error_msg);
            else
                note_err(r, E_HTTP, "HTTP %d: %.120s", q->status, srv_buf_cstr(&c->errbody));
        } else if (!q->done_seen && !q->finish[0]) {
            kind = E_INCOMPLETE;
            note_err(r, E_INCOMPLETE,
                     "a stream ended without [DONE] or a finish_reason (not an SSE reply?)");
        }
    }
    if (kind == E_OK && q->err) kind = q->err; /* an error event in the stream */
    q->err = kind;
    q->finished = 1;
    r->err_count[kind]++;
    r->n_finished++;
    c->served++;
    if (r->n_finished == r->n) {
        if (r->progress_on) print_progress(r, 1);
        close_all(r);
    }
}

/* The connection failed (kind) while a request may be in flight. */
static void conn_fail(hb_conn *c, int kind, const char *what) {
    hb_run *r = c->run;
    if (c->req >= 0) {
        hb_req *q = &r->reqs[c->req];
        if (kind == E_CLOSED && !c->got_bytes && c->served > 0 && !q->retried) {
            /* the server closed a kept-alive connection before reading our request: resend */
            q->retried = 1;
            r->retries++;
            conn_close(c); /* on_tcp_closed reconnects with c->req */
            return;
        }
        note_err(r, kind, "%s", what);
        finish_req(c, kind);
    }
    conn_close(c);
}

/* Every second or so: requests that got no byte for --timeout seconds fail. */
static void on_idle_check(uv_timer_t *t) {
    hb_run *r = t->data;
    double now = hb_now(r);
    char m[64];
    snprintf(m, sizeof m, "no byte for %d s", r->cfg->timeout_s);
    for (int i = 0; i < r->concurrency && !r->interrupted; i++) {
        hb_conn *c = &r->conns[i];
        if (c->req >= 0 && (c->state == C_OPEN || c->state == C_CONNECTING) &&
            now - c->t_read > r->cfg->timeout_s)
            conn_fail(c, E_TIMEOUT, m);
    }
}

static void on_event(void *ud, const char *data, size_t len) {
    hb_conn *c = ud;
    hb_run *r = c->run;
    if (c->req < 0) return;
    hb_req *q = &r->reqs[c->req];
    srv_stream_ev ev;
    r->events++;
    if (srv_stream_event_parse(data, len, &ev)) {
        note_err(r, E_PROTOCOL, "an SSE event that is not JSON: %.80s", data);
        c->failed = E_PROTOCOL;
        return;
    }
    if (ev.done) q->done_seen = 1;
    if (ev.error && !q->err) {
        q->err = E_STREAM;
        note_err(r, E_STREAM, "error event: %s", ev.error_msg);
    }
    if (ev.text) {
        if (q->n_text == 0) {
            q->t_first = c->t_read;
        } else if (r->n_itl < r->cap_itl) {
            r->itl[r->n_itl++] = c->t_read - q->t_last;
        } else {
            r->itl_dropped++;
        }
        q->t_last = c->t_read;
        q->n_text++;
    }
    if (ev.has_usage) {
        q->prompt_tokens = ev.prompt_tokens;
        q->completion_tokens = ev.completion_tokens;
    }
    if (ev.finish_reason[0]) snprintf(q->finish, sizeof q->finish, "%s", ev.finish_reason);
}

static void on_body(void *ud, const char *p, size_t n) {
    hb_conn *c = ud;
    if (c->failed) return;
    if (c->resp.status == 200) {
        if (srv_sse_feed(&c->sse, p, n, on_event, c)) {
            note_err(c->run, E_PROTOCOL, "an SSE line over %d bytes", SRV_SSE_MAX_LINE);
            c->failed = E_PROTOCOL;
        }
    } else {
        size_t room = HB_ERR_KEEP - NI_MIN(HB_ERR_KEEP, srv_buf_size(&c->errbody));
        if (room && srv_buf_append(&c->errbody, p, NI_MIN(room, n))) c->failed = E_PROTOCOL;
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
    (void)hint;
    hb_conn *c = h->data;
    buf->base = c->rbuf;
    buf->len = sizeof c->rbuf;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    hb_conn *c = s->data;
    hb_run *r = c->run;
    if (c->state != C_OPEN) return;
    if (nread < 0) {
        if (c->req >= 0 && nread == UV_EOF && !srv_resp_eof(&c->resp)) {
            finish_req(c, E_OK); /* a body delimited by the close */
            conn_close(c);
            return;
        }
        conn_fail(c, E_CLOSED,
                  nread == UV_EOF ? "the server closed the connection mid-response"
                                  : uv_strerror((int)nread));
        return;
    }
    if (nread == 0) return;
    if (c->req < 0) { /* bytes nobody asked for */
        note_err(r, E_PROTOCOL, "bytes on an idle connection");
        conn_close(c);
        return;
    }
    c->got_bytes = 1;
    c->t_read = hb_now(r);
    size_t used = 0;
    int rc = srv_resp_feed(&c->resp, buf->base, (size_t)nread, on_body, c, &used);
    if (rc || c->failed) {
        if (rc) note_err(r, E_PROTOCOL, "malformed HTTP response (%s)", ni_strerror(rc));
        conn_fail(c, E_PROTOCOL, "protocol");
        return;
    }
    if (srv_resp_done(&c->resp)) {
        int keep = c->resp.keep_alive && used == (size_t)nread;
        finish_req(c, E_OK);
        if (!keep)
            conn_close(c);
        else if (!r->interrupted)
            dispatch(r);
    }
}

static void send_req(hb_conn *c);

static void on_write(uv_write_t *w, int status) {
    hb_conn *c = w->data;
    c->writing = 0;
    if (c->state != C_OPEN) return;
    if (status < 0) conn_fail(c, E_CLOSED, uv_strerror(status));
}

static void send_req(hb_conn *c) {
    hb_run *r = c->run;
    const hb_cfg *cfg = r->cfg;
    hb_req *q = &r->reqs[c->req];
    int n = snprintf(c->head, sizeof c->head,
                     "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: nanoinfer-bench\r\n"
                     "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                     "Content-Length: %zu\r\n%s%s%s\r\n",
                     cfg->path, cfg->hostport, q->body_len,
                     cfg->api_key ? "Authorization: Bearer " : "", cfg->api_key ? cfg->api_key : "",
                     cfg->api_key ? "\r\n" : "");
    NI_ASSERT(n > 0 && (size_t)n < sizeof c->head); /* lengths are checked at start-up */
    c->head_len = (size_t)n;
    srv_resp_init(&c->resp);
    srv_sse_reset(&c->sse);
    srv_buf_clear(&c->errbody);
    c->got_bytes = 0;
    c->failed = 0;
    q->t_send = c->t_read = hb_now(r);
    uv_buf_t bufs[2] = {uv_buf_init(c->head, (unsigned)c->head_len),
                        uv_buf_init(q->body, (unsigned)q->body_len)};
    c->writing = 1;
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, 2, on_write);
    if (rc) {
        c->writing = 0;
        conn_fail(c, E_CLOSED, uv_strerror(rc));
        return;
    }
}

static void on_connect(uv_connect_t *cr, int status) {
    hb_conn *c = cr->data;
    hb_run *r = c->run;
    if (c->state != C_CONNECTING) return;
    if (status < 0) {
        note_err(r, E_CONNECT, "connect: %s", uv_strerror(status));
        conn_fail(c, E_CONNECT, uv_strerror(status));
        return;
    }
    c->state = C_OPEN;
    c->served = 0;
    uv_tcp_nodelay(&c->tcp, 1);
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc) {
        conn_fail(c, E_CONNECT, uv_strerror(rc));
        return;
    }
    if (c->req >= 0) send_req(c);
}

/* Starts request c->req on c: on the open connection, or after connecting. */
static void conn_start(hb_conn *c) {
    hb_run *r = c->run;
    if (c->state == C_OPEN) {
        send_req(c);
        return;
    }
    NI_ASSERT(c->state == C_FREE);
    int rc = uv_tcp_init(&r->loop, &c->tcp);
    if (rc) {
        note_err(r, E_CONNECT, "uv_tcp_init: %s", uv_strerror(rc));
        finish_req(c, E_CONNECT);
        return;
    }
    c->tcp.data = c;
    c->creq.data = c;
    c->state = C_CONNECTING;
    c->t_read = hb_now(r);
    rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&r->cfg->addr, on_connect);
    if (rc) {
        note_err(r, E_CONNECT, "connect: %s", uv_strerror(rc));
        conn_fail(c, E_CONNECT, uv_strerror(rc));
    }
}

/* Hands arrived requests to idle connections. */
static void dispatch(hb_run *r) {
    for (int i = 0; i < r->concurrency && r->n_started < r->n_arrived && !r->interrupted; i++) {
        hb_conn *c = &r->conns[i];
        if (c->req >= 0 || (c->state != C_FREE && c->state != C_OPEN) || c->writing) continue;
        c->req = r->n_started++;
        conn_start(c);
    }
}

static void on_arrival(uv_timer_t *t) {
    hb_run *r = t->data;
    double now = hb_now(r);
    while (r->n_arrived < r->n && r->reqs[r->n_arrived].t_arrive <= now) r->n_arrived++;
    dispatch(r);
    if (r->n_arrived < r->n) {
        double wait = r->reqs[r->n_arrived].t_arrive - now;
        uv_timer_start(&r->arrival, on_arrival, (uint64_t)ceil(wait * 1000), 0);
    }
}

static void on_sigint(uv_signal_t *s, int sig) {
    (void)sig;
    hb_run *r = s->data;
    fprintf(stderr, "\ninterrupted: reporting the requests finished so far\n");
    r->interrupted = 1;
    close_all(r);
}

/* ---- statistics ---- */

typedef struct hb_stat {
    double mean, p50, p90, p99;
    int n;
} hb_stat;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v and fills the mean and nearest-rank percentiles (in ms for seconds * scale). */
static hb_stat stat_of(double *v, size_t n, double scale) {
    hb_stat s = {0, 0, 0, 0, (int)n};
    if (!n) return s;
    qsort(v, n, sizeof *v, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += v[i];
    s.mean = sum / (double)n * scale;
    const double ps[3] = {0.5, 0.9, 0.99};
    double *out[3] = {&s.p50, &s.p90, &s.p99};
    for (int k = 0; k < 3; k++) {
        size_t i = (size_t)(ps[k] * (double)(n - 1) + 0.5);
        *out[k] = v[NI_MIN(i, n - 1)] * scale;
    }
    return s;
}

typedef struct hb_result {
    int concurrency;
    double rate;
    int completed, failed, interrupted;
    double duration, req_s, out_tok_s, total_tok_s, cpu_s, events_s, queue_ms;
    long in_tokens, out_tokens, text_events, events, short_outputs, retries, usage_missing;
    size_t itl_dropped;
    hb_stat ttft, tpot, itl, e2e;
    int err_count[E_N];
    int http_count[1000];
    char err_msg[E_N][200];
} hb_result;

static void summarize(hb_run *r, double cpu_s, hb_result *res) {
    memset(res, 0, sizeof *res);
    res->concurrency = r->concurrency;
    res->rate = r->rate;
    res->interrupted = r->interrupted;
    double *ttft = calloc((size_t)r->n + 1, sizeof(double)),
           *tpot = calloc((size_t)r->n + 1, sizeof(double)),
           *e2e = calloc((size_t)r->n + 1, sizeof(double));
    size_t nt = 0, np = 0, ne = 0;
    double t_begin = -1, t_end = 0, queue = 0;
    for (int i = 0; i < r->n; i++) {
        hb_req *q = &r->reqs[i];
        if (!q->finished) continue;
        if (t_begin < 0 || q->t_send < t_begin) t_begin = q->t_send;
        t_end = NI_MAX(t_end, q->t_done);
        if (q->err) {
            res->failed++;
            continue;
        }
        res->completed++;
        queue += q->t_send - q->t_arrive;
        long out = q->completion_tokens >= 0 ? q->completion_tokens : q->n_text;
        if (q->completion_tokens < 0) res->usage_missing++;
        res->out_tokens += out;
        res->in_tokens += q->prompt_tokens > 0 ? q->prompt_tokens : 0;
        res->text_events += q->n_text;
        if (out < q->max_tokens) res->short_outputs++;
        if (ttft && e2e && tpot) {
            e2e[ne++] = q->t_done - q->t_send;
            if (q->n_text) ttft[nt++] = q->t_first - q->t_send;
            if (q->n_text && out > 1) tpot[np++] = (q->t_done - q->t_first) / (double)(out - 1);
        }
    }
    res->duration = t_begin >= 0 ? t_end - t_begin : 0;
    if (res->duration > 0) {
        res->req_s = res->completed / res->duration;
        res->out_tok_s = (double)res->out_tokens / res->duration;
        res->total_tok_s = (double)(res->out_tokens + res->in_tokens) / res->duration;
        res->events_s = (double)r->events / res->duration;
    }
    res->queue_ms = res->completed ? 1000 * queue / res->completed : 0;
    res->ttft = stat_of(ttft, nt, 1000);
    res->tpot = stat_of(tpot, np, 1000);
    res->e2e = stat_of(e2e, ne, 1000);
    res->itl = stat_of(r->itl, r->n_itl, 1000);
    res->itl_dropped = r->itl_dropped;
    res->events = r->events;
    res->retries = r->retries;
    res->cpu_s = cpu_s;
    memcpy(res->err_count, r->err_count, sizeof res->err_count);
    memcpy(res->http_count, r->http_count, sizeof res->http_count);
    memcpy(res->err_msg, r->err_msg, sizeof res->err_msg);
    free(ttft);
    free(tpot);
    free(e2e);
}

/* ---- running ---- */

/* CPU time of the calling thread: the client is this one thread (the process
 * also holds the idle helper threads of the linked math libraries). */
static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_THREAD, &u);
    return (double)u.ru_utime.tv_sec + u.ru_utime.tv_usec * 1e-6 + (double)u.ru_stime.tv_sec +
           u.ru_stime.tv_usec * 1e-6;
}

/* Builds the n request bodies of run number run_idx into reqs. */
static int build_requests(const hb_cfg *cfg, int run_idx, double rate, hb_req *reqs, int n) {
    uint64_t s = cfg->seed * 0x100000001b3ull + (uint64_t)run_idx * 0x9e3779b97f4a7c15ull + 1;
    srv_buf text = {0};
    double t = 0;
    for (int i = 0; i < n; i++) {
        hb_req *q = &reqs[i];
        int in_len = hb_rand_in(&s, cfg->in_lo, cfg->in_hi);
        q->max_tokens = hb_rand_in(&s, cfg->out_lo, cfg->out_hi);
        int words = (int)NI_MAX(1.0, floor(in_len * cfg->words_per_token + 0.5));
        srv_buf_clear(&text);
        if (hb_words(&text, &s, words)) goto oom;
        if (rate > 0) {
            double u = (double)(hb_rng(&s) >> 11) * (1.0 / 9007199254740992.0); /* [0, 1) */
            t += -log(1.0 - u) / rate;
        }
        q->t_arrive = t;
        q->prompt_tokens = q->completion_tokens = -1;
        json_t *body = json_object();
        if (!body) goto oom;
        json_object_set_new(body, "model", json_string(cfg->model));
        json_t *ptext = json_stringn(srv_buf_ptr(&text), srv_buf_size(&text));
        if (cfg->endpoint == 1) {
            json_t *m = json_object();
            json_object_set_new(m, "role", json_string("user"));
            json_object_set_new(m, "content", ptext);
            json_t *msgs = json_array();
            json_array_append_new(msgs, m);
            json_object_set_new(body, "messages", msgs);
        } else {
            json_object_set_new(body, "prompt", ptext);
        }
        json_object_set_new(body, "max_tokens", json_integer(q->max_tokens));
        json_object_set_new(body, "temperature", json_real(cfg->temperature));
        json_object_set_new(body, "ignore_eos", json_true());
        json_object_set_new(body, "stream", json_true());
        json_object_set_new(body, "stream_options", json_pack("{s:b}", "include_usage", 1));
        q->body = json_dumps(body, JSON_COMPACT);
        json_decref(body);
        if (!q->body) goto oom;
        q->body_len = strlen(q->body);
    }
    srv_buf_free(&text);
    return 0;
oom:
    srv_buf_free(&text);
    return NI_ENOMEM;
}

/* One run at the given concurrency and rate (0 = closed loop). */
static int run_one(const hb_cfg *cfg, int run_idx, int concurrency, double rate, int show_progress,
                   hb_result *res) {
    int n = cfg->num_prompts, rc = 0;
    hb_run *r = calloc(1, sizeof *r);
    if (!r) return NI_ENOMEM;
    r->cfg = cfg;
    r->n = n;
    r->concurrency = concurrency;
    r->rate = rate;
    r->reqs = calloc((size_t)n, sizeof *r->reqs);
    r->conns = calloc((size_t)concurrency, sizeof *r->conns);
    size_t cap = 0;
    if (r->reqs && !(rc = build_requests(cfg, run_idx, rate, r->reqs, n)))
        for (int i = 0; i < n; i++) cap += (size_t)r->reqs[i].max_tokens;
    r->cap_itl = cap;
    r->itl = malloc((cap + 1) * sizeof(double));
    if (!r->reqs || !r->conns || !r->itl || rc) {
        rc = rc ? rc : NI_ENOMEM;
        goto out;
    }
    if ((rc = uv_loop_init(&r->loop))) {
        fprintf(stderr, "error: uv_loop_init: %s\n", uv_strerror(rc));
        rc = NI_EIO;
        goto out;
    }
    for (int i = 0; i < concurrency; i++) {
        hb_conn *c = &r->conns[i];
        c->run = r;
        c->req = -1;
        c->errbody.limit = HB_ERR_KEEP + 1;
    }
    uv_timer_init(&r->loop, &r->arrival);
    r->arrival.data = r;
    uv_timer_init(&r->loop, &r->progress);
    uv_timer_init(&r->loop, &r->idle);
    r->idle.data = r;
    uint64_t tick = (uint64_t)NI_MIN(1000, cfg->timeout_s * 250);
    uv_timer_start(&r->idle, on_idle_check, tick, tick);
    r->progress.data = r;
    uv_signal_init(&r->loop, &r->sigint);
    r->sigint.data = r;
    uv_signal_start(&r->sigint, on_sigint, SIGINT);
    r->progress_on = show_progress;
    if (show_progress) uv_timer_start(&r->progress, on_progress, 250, 250);
    double cpu0 = cpu_seconds();
    r->t0 = uv_hrtime();
    if (rate > 0) {
        on_arrival(&r->arrival);
    } else {
        r->n_arrived = n;
        dispatch(r);
    }
    uv_run(&r->loop, UV_RUN_DEFAULT);
    double cpu = cpu_seconds() - cpu0;
    if (uv_loop_close(&r->loop)) fprintf(stderr, "warning: handles left open after a run\n");
    summarize(r, cpu, res);
    rc = r->interrupted ? NI_EINVAL : 0;
out:
    if (r->reqs)
        for (int i = 0; i < n; i++) free(r->reqs[i].body);
    if (r->conns)
        for (int i = 0; i < concurrency; i++) {
            srv_sse_free(&r->conns[i].sse);
            srv_buf_free(&r->conns[i].errbody);
        }
    free(r->reqs);
    free(r->conns);
    free(r->itl);
    free(r);
    return rc;
}

/* ---- control requests (GET /v1/models, POST /tokenize): blocking, before the runs ---- */

typedef struct ctrl_sink {
    srv_buf body;
    int failed;
} ctrl_sink;

static void on_ctrl_body(void *ud, const char *p, size_t n) {
    ctrl_sink *s = ud;
    if (srv_buf_append(&s->body, p, n)) s->failed = 1;
}

/* Connects to addr within timeout_ms. Returns the fd, or -errno. */
static int connect_addr(const struct sockaddr *a, socklen_t alen, int timeout_ms) {
    int fd = socket(a->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    if (connect(fd, a, alen) && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t el = sizeof err;
    if (poll(&p, 1, timeout_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) || err) {
        close(fd);
        return -(err ? err : ETIMEDOUT);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

/* One request with Connection: close. *status gets the HTTP status, body
 * the reply (bounded). Returns 0 or a negative code, with err set. */
static int ctrl_request(const hb_cfg *cfg, const char *method, const char *path, const char *body,
                        int *status, srv_buf *out, char *err, size_t errlen) {
    socklen_t alen =
        cfg->addr.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int fd = connect_addr((const struct sockaddr *)&cfg->addr, alen, 10000);
    if (fd < 0)
        return ni_fail(err, errlen, NI_EIO, "cannot connect to %s: %s", cfg->hostport,
                       strerror(-fd));
    srv_buf req = {0};
    int rc = srv_buf_printf(&req,
                            "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: nanoinfer-bench\r\n"
                            "Accept: application/json\r\nConnection: close\r\n%s%s%s",
                            method, cfg->prefix, path, cfg->hostport,
                            cfg->api_key ? "Authorization: Bearer " : "",
                            cfg->api_key ? cfg->api_key : "", cfg->api_key ? "\r\n" : "");
    if (!rc && body)
        rc = srv_buf_printf(&req, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                            strlen(body), body);
    else if (!rc)
        rc = srv_buf_append(&req, "\r\n", 2);
    const char *p = srv_buf_ptr(&req);
    size_t left = srv_buf_size(&req);
    while (!rc && left) {
        ssize_t w = send(fd, p, left, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            rc = ni_fail(err, errlen, NI_EIO, "%s %s: send: %s", method, path, strerror(errno));
        else
            p += w, left -= (size_t)w;
    }
    srv_buf_free(&req);
    srv_resp resp;
    srv_resp_init(&resp);
    ctrl_sink sink = {.body = {.limit = HB_CTRL_MAX}};
    char buf[16384];
    while (!rc && !srv_resp_done(&resp)) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int pr = poll(&pf, 1, cfg->timeout_s * 1000);
        if (pr < 0 && errno == EINTR) continue;
        if (pr != 1) {
            rc = ni_fail(err, errlen, NI_EIO, "%s %s: no reply in %d s", method, path,
                         cfg->timeout_s);
            break;
        }
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (srv_resp_eof(&resp))
                rc = ni_fail(err, errlen, NI_EIO, "%s %s: connection closed mid-reply", method,
                             path);
            break;
        }
        size_t used;
        int fr = srv_resp_feed(&resp, buf, (size_t)n, on_ctrl_body, &sink, &used);
        if (fr || sink.failed)
            rc = ni_fail(err, errlen, NI_EFORMAT, "%s %s: malformed or oversized reply", method,
                         path);
    }
    close(fd);
    *status = resp.status;
    if (!rc) {
        srv_buf_free(out);
        *out = sink.body;
    } else {
        srv_buf_free(&sink.body);
    }
    return rc;
}

/* Resolves the host and keeps the first address that accepts a connection. */
static int resolve(hb_cfg *cfg, char *err, size_t errlen) {
    uv_loop_t loop;
    if (uv_loop_init(&loop)) return ni_fail(err, errlen, NI_EIO, "uv_loop_init failed");
    uv_getaddrinfo_t gq;
    struct addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char port[16];
    snprintf(port, sizeof port, "%d", cfg->port);
    int rc =
        uv_getaddrinfo(&loop, &gq, NULL, cfg->host, port, &hints); /* NULL callback: synchronous */
    if (rc) {
        uv_loop_close(&loop);
        return ni_fail(err, errlen, NI_ENOTFOUND, "cannot resolve %s: %s", cfg->host,
                       uv_strerror(rc));
    }
    int fd = -ECONNREFUSED;
    for (struct addrinfo *a = gq.addrinfo; a; a = a->ai_next) {
        if (a->ai_addrlen > sizeof cfg->addr) continue;
        fd = connect_addr(a->ai_addr, a->ai_addrlen, 10000);
        if (fd >= 0) {
            memcpy(&cfg->addr, a->ai_addr, a->ai_addrlen);
            close(fd);
            break;
        }
    }
    uv_freeaddrinfo(gq.addrinfo);
    uv_loop_close(&loop);
    if (fd < 0)
        return ni_fail(err, errlen, NI_EIO, "cannot connect to %s: %s", cfg->hostport,
                       strerror(-fd));
    return 0;
}

/* --model, else the first id of GET /v1/models. */
static int pick_model(hb_cfg *cfg, const char *given, char *err, size_t errlen) {
    if (given) {
        snprintf(cfg->model, sizeof cfg->model, "%s", given);
        return 0;
    }
    srv_buf body = {0};
    int status = 0;
    int rc = ctrl_request(cfg, "GET", "/v1/models", NULL, &status, &body, err, errlen);
    if (rc) return rc;
    json_t *j = json_loadb(srv_buf_ptr(&body), srv_buf_size(&body), 0, NULL);
    const char *id =
        json_string_value(json_object_get(json_array_get(json_object_get(j, "data"), 0), "id"));
    if (status != 200 || !id || strlen(id) >= sizeof cfg->model) {
        rc = ni_fail(err, errlen, NI_ENOTFOUND,
                     "GET /v1/models: HTTP %d, no model id (%.120s); pass --model", status,
                     srv_buf_cstr(&body));
    } else {
        snprintf(cfg->model, sizeof cfg->model, "%s", id);
    }
    json_decref(j);
    srv_buf_free(&body);
    return rc;
}

/* Measures tokens per word of the synthetic text with POST /tokenize. */
static void calibrate(hb_cfg *cfg) {
    cfg->words_per_token = 1.0;
    cfg->tokenized = 0;
    uint64_t s = cfg->seed ^ 0x5eed;
    int nw = NI_MIN(NI_MAX(2 * cfg->in_hi, 512), 16384);
    srv_buf text = {0};
    if (hb_words(&text, &s, nw)) return;
    json_t *req = json_pack("{s:s,s:s%,s:s%,s:b,s:b}", "model", cfg->model, "prompt",
                            srv_buf_ptr(&text), srv_buf_size(&text), "content", srv_buf_ptr(&text),
                            srv_buf_size(&text), "add_special_tokens", 0, "add_special", 0);
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    srv_buf_free(&text);
    if (!body) return;
    srv_buf out = {0};
    int status = 0;
    char err[256];
    if (!ctrl_request(cfg, "POST", "/tokenize", body, &status, &out, err, sizeof err) &&
        status == 200) {
        json_t *j = json_loadb(srv_buf_ptr(&out), srv_buf_size(&out), 0, NULL);
        json_t *cnt = json_object_get(j, "count");
        long n = json_is_integer(cnt) ? (long)json_integer_value(cnt)
                                      : (long)json_array_size(json_object_get(j, "tokens"));
        if (n > nw / 4) { /* a sane answer */
            cfg->words_per_token = (double)nw / (double)n;
            cfg->tokenized = 1;
        }
        json_decref(j);
    }
    free(body);
    srv_buf_free(&out);
}

/* ---- output ---- */

static void fmt_rate(char *b, size_t n, double rate) {
    if (rate > 0)
        snprintf(b, n, "%g/s", rate);
    else
        snprintf(b, n, "inf");
}

static void print_report(const hb_cfg *cfg, const hb_result *r, int idx, int nruns) {
    char rate[32];
    fmt_rate(rate, sizeof rate, r->rate);
    printf("run %d/%d: concurrency %d, request rate %s, %d requests: %d ok, %d failed%s, %.2f s\n",
           idx + 1, nruns, r->concurrency, rate, cfg->num_prompts, r->completed, r->failed,
           r->interrupted ? " (interrupted)" : "", r->duration);
    printf("  throughput  %.3f req/s, %.1f output tok/s, %.1f total tok/s (%ld prompt + %ld output "
           "tokens)\n",
           r->req_s, r->out_tok_s, r->total_tok_s, r->in_tokens, r->out_tokens);
    printf("  %-12s %10s %10s %10s %10s\n", "(ms)", "mean", "p50", "p90", "p99");
    const hb_stat *st[4] = {&r->ttft, &r->tpot, &r->itl, &r->e2e};
    const char *nm[4] = {"TTFT", "TPOT", "ITL", "E2E"};
    for (int k = 0; k < 4; k++)
        printf("  %-12s %10.2f %10.2f %10.2f %10.2f\n", nm[k], st[k]->mean, st[k]->p50, st[k]->p90,
               st[k]->p99);
    printf("  client      %.2f CPU s (%.0f %% of a core), %ld SSE events (%.0f/s), %ld retries",
           r->cpu_s, r->duration > 0 ? 100 * r->cpu_s / r->duration : 0.0, r->events, r->events_s,
           r->retries);
    if (r->rate > 0) printf(", client queue %.1f ms mean", r->queue_ms);
    printf("\n");
    if (r->short_outputs)
        printf("  note: %ld requests got fewer tokens than max_tokens (ignore_eos unsupported?)\n",
               r->short_outputs);
    for (int k = 1; k < E_N; k++)
        if (r->err_count[k])
            printf("  errors: %d %s (first: %s)\n", r->err_count[k], g_err_names[k], r->err_msg[k]);
}

static void print_table(const hb_result *res, int n) {
    printf("\n%6s %8s %6s %6s %9s %10s %10s %9s %9s %9s %9s %9s %9s\n", "conc", "rate", "ok",
           "fail", "req/s", "out tok/s", "tot tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "ITL p99",
           "E2E p50", "E2E p99");
    for (int i = 0; i < n; i++) {
        const hb_result *r = &res[i];
        char rate[32];
        fmt_rate(rate, sizeof rate, r->rate);
        printf("%6d %8s %6d %6d %9.3f %10.1f %10.1f %9.1f %9.1f %9.2f %9.2f %9.0f %9.0f\n",
               r->concurrency, rate, r->completed, r->failed, r->req_s, r->out_tok_s,
               r->total_tok_s, r->ttft.p50, r->ttft.p99, r->tpot.p50, r->itl.p99, r->e2e.p50,
               r->e2e.p99);
    }
    printf("(latencies in ms)\n");
}

static json_t *stat_json(const hb_stat *s) {
    return json_pack("{s:f,s:f,s:f,s:f,s:i}", "mean", s->mean, "p50", s->p50, "p90", s->p90, "p99",
                     s->p99, "n", s->n);
}

static json_t *result_json(const hb_cfg *cfg, const hb_result *r, const char *url) {
    json_t *o = json_object();
    json_t *set = json_object();
    json_object_set_new(set, "url", json_string(url));
    json_object_set_new(set, "endpoint", json_string(cfg->endpoint ? "chat" : "completions"));
    json_object_set_new(set, "model", json_string(cfg->model));
    json_object_set_new(set, "concurrency", json_integer(r->concurrency));
    json_object_set_new(set, "request_rate", r->rate > 0 ? json_real(r->rate) : json_null());
    json_object_set_new(set, "num_prompts", json_integer(cfg->num_prompts));
    json_object_set_new(set, "input_len", json_pack("[i,i]", cfg->in_lo, cfg->in_hi));
    json_object_set_new(set, "output_len", json_pack("[i,i]", cfg->out_lo, cfg->out_hi));
    json_object_set_new(set, "temperature", json_real(cfg->temperature));
    json_object_set_new(set, "seed", json_integer((json_int_t)cfg->seed));
    json_object_set_new(set, "ignore_eos", json_true());
    json_object_set_new(set, "prompt_sized_by_tokenize", json_boolean(cfg->tokenized));
    json_object_set_new(set, "words_per_token", json_real(cfg->words_per_token));
    json_object_set_new(set, "timeout_s", json_integer(cfg->timeout_s));
    json_object_set_new(o, "settings", set);
    json_object_set_new(o, "completed", json_integer(r->completed));
    json_object_set_new(o, "failed", json_integer(r->failed));
    json_object_set_new(o, "interrupted", json_boolean(r->interrupted));
    json_t *errs = json_object();
    for (int k = 1; k < E_N; k++) {
        if (k == E_HTTP) {
            for (int s = 0; s < 1000; s++)
                if (r->http_count[s]) {
                    char key[16];
                    snprintf(key, sizeof key, "http_%d", s);
                    json_object_set_new(errs, key, json_integer(r->http_count[s]));
                }
        } else if (r->err_count[k]) {
            json_object_set_new(errs, g_err_names[k], json_integer(r->err_count[k]));
        }
    }
    json_object_set_new(o, "errors", errs);
    json_t *msgs = json_object();
    for (int k = 1; k < E_N; k++)
        if (r->err_msg[k][0]) json_object_set_new(msgs, g_err_names[k], json_string(r->err_msg[k]));
    json_object_set_new(o, "error_examples", msgs);
    json_object_set_new(o, "retries", json_integer(r->retries));
    json_object_set_new(o, "duration_s", json_real(r->duration));
    json_object_set_new(o, "request_throughput", json_real(r->req_s));
    json_object_set_new(o, "output_throughput", json_real(r->out_tok_s));
    json_object_set_new(o, "total_token_throughput", json_real(r->total_tok_s));
    json_object_set_new(o, "input_tokens", json_integer(r->in_tokens));
    json_object_set_new(o, "output_tokens", json_integer(r->out_tokens));
    json_object_set_new(o, "output_tokens_from_usage", json_boolean(r->usage_missing == 0));
    json_object_set_new(o, "short_outputs", json_integer(r->short_outputs));
    json_object_set_new(o, "text_events", json_integer(r->text_events));
    json_object_set_new(o, "sse_events", json_integer(r->events));
    json_object_set_new(o, "sse_events_per_s", json_real(r->events_s));
    json_object_set_new(o, "itl_dropped", json_integer((json_int_t)r->itl_dropped));
    json_object_set_new(o, "client_cpu_s", json_real(r->cpu_s));
    json_object_set_new(o, "client_cpu_pct",
                        json_real(r->duration > 0 ? 100 * r->cpu_s / r->duration : 0));
    json_object_set_new(o, "client_queue_ms_mean", json_real(r->queue_ms));
    json_object_set_new(o, "ttft_ms", stat_json(&r->ttft));
    json_object_set_new(o, "tpot_ms", stat_json(&r->tpot));
    json_object_set_new(o, "itl_ms", stat_json(&r->itl));
    json_object_set_new(o, "e2e_ms", stat_json(&r->e2e));
    return o;
}

/* ---- options to settings ---- */

static int parse_range(const char *s, int *lo, int *hi) {
    char *end;
    errno = 0;
    long a = strtol(s, &end, 10), b = a;
    if (*end == ':') b = strtol(end + 1, &end, 10);
    if (errno || end == s || *end || a < 1 || b < a || b > 1 << 20) return NI_EINVAL;
    *lo = (int)a;
    *hi = (int)b;
    return 0;
}

/* "a,b,c" of numbers (rates: > 0 or inf = 0) into v[0..*n). */
static int parse_list(const char *s, double *v, int *n, int cap, int is_rate) {
    *n = 0;
    for (const char *p = s;;) {
        char *end;
        double x;
        if (is_rate && !strncasecmp(p, "inf", 3) && (p[3] == ',' || !p[3])) {
            x = 0;
            end = (char *)p + 3;
        } else {
            errno = 0;
            x = strtod(p, &end);
            if (end == p || errno || !(x > 0) || !isfinite(x)) return NI_EINVAL;
            if (!is_rate && (x != floor(x) || x > HB_MAX_CONNS)) return NI_EINVAL;
        }
        if (*n >= cap) return NI_ERANGE;
        v[(*n)++] = x;
        if (!*end) return 0;
        if (*end != ',') return NI_EINVAL;
        p = end + 1;
    }
}

/* Raises the open-file limit to what conc connections need (soft up to hard). */
static void want_fds(int conc) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) return;
    rlim_t need = (rlim_t)conc + 64;
    if (rl.rlim_cur < need) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int srv_cmd_bench_http(int argc, char **argv) {
    hb_args a = {.num_prompts = 200, .timeout_s = 600};
    uint64_t seen = 0;
    int pr = cli_parse(g_opts, NI_ARRAY_LEN(g_opts), &a, argc, argv, &seen);
    if (pr == 1) hb_usage(stdout);
    if (pr) return pr == 1 ? 0 : 2;
    static hb_cfg cfg; /* large (sockaddr, paths): not on the stack */
    memset(&cfg, 0, sizeof cfg);
    cfg.endpoint = a.endpoint;
    cfg.num_prompts = a.num_prompts;
    cfg.timeout_s = a.timeout_s;
    cfg.quiet = a.quiet;
    cfg.seed = (uint64_t)a.seed;
    cfg.in_lo = cfg.in_hi = cfg.out_lo = cfg.out_hi = 128;
    cfg.api_key = a.api_key ? a.api_key : getenv("NANOINFER_API_KEY");
    if (!cfg.api_key || !*cfg.api_key) cfg.api_key = getenv("OPENAI_API_KEY");
    if (cfg.api_key && !*cfg.api_key) cfg.api_key = NULL;
    double conc[HB_MAX_RUNS], rates[HB_MAX_RUNS] = {0};
    int n_conc = 1, n_rate = 1;
    conc[0] = a.rate ? 256 : 16;
    const char *bad = NULL;
    if (!a.url ||
        srv_parse_url(a.url, cfg.host, sizeof cfg.host, &cfg.port, cfg.prefix, sizeof cfg.prefix))
        bad = "--url (http://host:port[/prefix]; https is not supported)";
    else if (a.input_len && parse_range(a.input_len, &cfg.in_lo, &cfg.in_hi))
        bad = "--input-len (A or A:B)";
    else if (a.output_len && parse_range(a.output_len, &cfg.out_lo, &cfg.out_hi))
        bad = "--output-len (A or A:B)";
    else if (a.concurrency && parse_list(a.concurrency, conc, &n_conc, HB_MAX_RUNS, 0))
        bad = "--concurrency (integers in [1, 1024], comma-separated)";
    else if (a.rate && parse_list(a.rate, rates, &n_rate, HB_MAX_RUNS, 1))
        bad = "--request-rate (positive numbers or inf, comma-separated)";
    else if (n_conc * n_rate > HB_MAX_RUNS)
        bad = "--concurrency x --request-rate (at most 64 runs)";
    else if (cfg.api_key && strlen(cfg.api_key) > 1024)
        bad = "--api-key (at most 1024 bytes)";
    if (!bad && a.temperature) {
        char *end;
        cfg.temperature = strtod(a.temperature, &end);
        if (end == a.temperature || *end || !(cfg.temperature >= 0) || cfg.temperature > 100)
            bad = "--temperature";
    }
    if (bad) {
        fprintf(stderr, "error: bad or missing %s\n", bad);
        return 2;
    }
    /* an OpenAI-style base URL ending in /v1 means the same server */
    size_t pl = strlen(cfg.prefix);
    if (pl >= 3 && !strcmp(cfg.prefix + pl - 3, "/v1")) cfg.prefix[pl - 3] = 0;
    if (strchr(cfg.host, ':'))
        snprintf(cfg.hostport, sizeof cfg.hostport, "[%s]:%d", cfg.host, cfg.port);
    else
        snprintf(cfg.hostport, sizeof cfg.hostport, "%s:%d", cfg.host, cfg.port);
    snprintf(cfg.path, sizeof cfg.path, "%s%s", cfg.prefix,
             cfg.endpoint ? "/v1/chat/completions" : "/v1/completions");
    signal(SIGPIPE, SIG_IGN);
    char err[512];
    int rc = resolve(&cfg, err, sizeof err);
    if (!rc) rc = pick_model(&cfg, a.model, err, sizeof err);
    if (rc) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    if (a.no_tokenize)
        cfg.words_per_token = 1.0;
    else
        calibrate(&cfg);
    int max_conc = 1;
    for (int i = 0; i < n_conc; i++) max_conc = NI_MAX(max_conc, (int)conc[i]);
    want_fds(max_conc);
    if (!cfg.quiet)
        printf("benchmark %s%s, model %s, %d requests per run, prompt %d:%d tokens (%s), output "
               "%d:%d tokens\n",
               cfg.hostport, cfg.path, cfg.model, cfg.num_prompts, cfg.in_lo, cfg.in_hi,
               cfg.tokenized ? "words sized with /tokenize" : "1 word = 1 token assumed",
               cfg.out_lo, cfg.out_hi);
    int nruns = n_conc * n_rate, done = 0, failed = 0;
    hb_result *res = calloc((size_t)nruns, sizeof *res);
    if (!res) return 1;
    int tty = isatty(2) && !cfg.quiet;
    for (int i = 0; i < n_conc && !rc; i++)
        for (int k = 0; k < n_rate && !rc; k++) {
            rc = run_one(&cfg, done, (int)conc[i], rates[k], tty, &res[done]);
            if (rc && rc != NI_EINVAL) {
                fprintf(stderr, "error: run %d: %s\n", done + 1, ni_strerror(rc));
                break;
            }
            failed += res[done].failed;
            if (!cfg.quiet) print_report(&cfg, &res[done], done, nruns);
            fflush(stdout);
            done++;
        }
    if (done > 1 || cfg.quiet) print_table(res, done);
    int out = rc && rc != NI_EINVAL ? 1 : 0;
    if (a.json && done) {
        json_t *arr = json_array();
        for (int i = 0; i < done; i++)
            json_array_append_new(arr, result_json(&cfg, &res[i], a.url));
        if (json_dump_file(arr, a.json, JSON_INDENT(1))) {
            fprintf(stderr, "error: cannot write %s\n", a.json);
            out = 1;
        }
        json_decref(arr);
    }
    free(res);
    if (failed && !out) {
        fprintf(stderr, "%d requests failed\n", failed);
        out = 1;
    }
    return rc == NI_EINVAL ? 130 : out;
}
