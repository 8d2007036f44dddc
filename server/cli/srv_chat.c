/*
 * srv_chat.c - `nanoinfer chat`: an interactive multi-turn terminal chat
 * against a running server. Each turn POSTs the whole conversation to
 * /v1/chat/completions with stream=true over a plain TCP socket (HTTP/1.1,
 * Connection: close), prints the reply as SSE chunks arrive, and appends it
 * to the conversation.
 *
 * Commands at the prompt: /reset (forget the conversation), /exit or EOF.
 * Ctrl-C while a reply streams stops that reply (the partial text is kept);
 * Ctrl-C at the prompt exits. Input is one line per turn (stdin need not be
 * a terminal, so `printf 'hi\n' | nanoinfer chat` works).
 *
 * Threads: one. Memory: the response head is bounded (64 KiB), SSE lines by
 * srv_sse, error bodies by 1 MiB.
 */
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/util/util.h"
#include "cli.h"
#include "server/http/srv_client.h"
#include "server/http/srv_util.h"

#define HEAD_MAX (64 * 1024)
#define ERR_BODY_MAX (1 << 20)

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
}

typedef struct chat_opts {
    char host[256];
    int port;
    char prefix[512];
    const char *model;
    const char *system;
    const char *api_key;
    long max_tokens;
    json_t *params; /* sampling parameters given on the command line */
} chat_opts;

/* The command line of `nanoinfer chat`. */
typedef struct chat_args {
    const char *url, *model, *system, *api_key;
    int max_tokens; /* 0: the server's default */
    cli_list stop;
    smp_params sp; /* only the options given are sent */
} chat_args;

#define CA(f) offsetof(chat_args, f)
static const cli_opt g_chat_opts[] = {
    {"url", 0, CLI_OPT_STR, CA(url), 0, 0, NULL, "URL", "server (default $NANOINFER_URL, else http://127.0.0.1:8000)"},
    {"model", 0, CLI_OPT_STR, CA(model), 0, 0, NULL, "NAME", "model name sent with each request"},
    {"system", 0, CLI_OPT_STR, CA(system), 0, 0, NULL, "TEXT", "system prompt"},
    {"max-tokens", 0, CLI_OPT_INT, CA(max_tokens), 1, 1 << 20, NULL, "N", "tokens per reply"},
    {"api-key", 0, CLI_OPT_STR, CA(api_key), 0, 0, NULL, "KEY", "bearer key (default $NANOINFER_API_KEY)"},
    {"stop", 0, CLI_OPT_LIST, CA(stop), 0, 4, NULL, "STR", "stop string (repeatable, up to 4)"},
    {"temperature", 0, CLI_OPT_SAMPLING, CA(sp), 0, 0, NULL, "T", "sampling temperature"},
    {"top-p", 0, CLI_OPT_SAMPLING, CA(sp), 0, 0, NULL, "P", "nucleus sampling mass"},
    {"top-k", 0, CLI_OPT_SAMPLING, CA(sp), 0, 0, NULL, "K", "keep the K most likely tokens"},
    {"min-p", 0, CLI_OPT_SAMPLING, CA(sp), 0, 0, NULL, "P", "drop tokens below P x the top one"},
    {"seed", 0, CLI_OPT_SAMPLING, CA(sp), 0, 0, NULL, "S", "sampling seed"},
    {"repetition-penalty", 0, CLI_OPT_SAMPLING, CA(sp), 0, 0, NULL, "R", "penalty on seen tokens"},
    {"presence-penalty", 0, CLI_OPT_SAMPLING, CA(sp), 0, 0, NULL, "P", "OpenAI presence penalty"},
    {"frequency-penalty", 0, CLI_OPT_SAMPLING, CA(sp), 0, 0, NULL, "F", "OpenAI frequency penalty"},
};
#undef CA

static void chat_usage(FILE *f) {
    fprintf(f, "usage: nanoinfer chat [options]\n\n"
               "Interactive chat with a running `nanoinfer serve`: type a message, the reply streams\n"
               "back; the conversation grows turn by turn. /reset starts over, /exit (or EOF) quits,\n"
               "Ctrl-C stops a reply.\n\n");
    cli_usage_opts(f, g_chat_opts, NI_ARRAY_LEN(g_chat_opts));
}

/* The request parameters given on the command line, as JSON members
 * (sampling options under their API names, stop as an array). */
static json_t *chat_params(const chat_args *a, uint64_t seen) {
    json_t *params = json_object();
    if (!params) return NULL;
    for (size_t i = 0; i < NI_ARRAY_LEN(g_chat_opts); i++) {
        const cli_opt *o = &g_chat_opts[i];
        if (o->kind != CLI_OPT_SAMPLING || !(seen >> i & 1)) continue;
        char key[64];
        snprintf(key, sizeof key, "%s", o->name);
        for (char *p = key; *p; p++)
            if (*p == '-') *p = '_';
        const smp_params *sp = &a->sp;
        const char *n = o->name;
        json_t *v = !strcmp(n, "seed")                 ? json_integer((json_int_t)sp->seed)
                    : !strcmp(n, "top-k")              ? json_integer(sp->top_k)
                    : !strcmp(n, "temperature")        ? json_real(sp->temperature)
                    : !strcmp(n, "top-p")              ? json_real(sp->top_p)
                    : !strcmp(n, "min-p")              ? json_real(sp->min_p)
                    : !strcmp(n, "repetition-penalty") ? json_real(sp->repetition_penalty)
                    : !strcmp(n, "presence-penalty")   ? json_real(sp->presence_penalty)
                                                       : json_real(sp->frequency_penalty);
        json_object_set_new(params, key, v);
    }
    if (a->stop.n) {
        json_t *stops = json_array();
        for (int i = 0; i < a->stop.n; i++) json_array_append_new(stops, json_string(a->stop.v[i]));
        json_object_set_new(params, "stop", stops);
    }
    return params;
}

typedef struct turn {
    srv_buf reply; /* assistant text so far */
    int status;
    int done; /* [DONE] seen */
    char error[512];
    const char *finish;
} turn;

static void on_sse(void *ud, const char *data, size_t len) {
    turn *t = ud;
    if (len == 6 && !memcmp(data, "[DONE]", 6)) {
        t->done = 1;
        return;
    }
    json_t *j = json_loadb(data, len, 0, NULL);
    if (!j) return;
    json_t *err = json_object_get(j, "error");
    if (err) {
        snprintf(t->error, sizeof t->error, "%s",
                 json_string_value(json_object_get(err, "message"))
                     ? json_string_value(json_object_get(err, "message"))
                     : "error");
    }
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    json_t *content = json_object_get(json_object_get(c0, "delta"), "content");
    if (json_is_string(content) && json_string_length(content)) {
        fwrite(json_string_value(content), 1, json_string_length(content), stdout);
        fflush(stdout);
        srv_buf_append(&t->reply, json_string_value(content), json_string_length(content));
    }
    json_t *fr = json_object_get(c0, "finish_reason");
    if (json_is_string(fr) && !strcmp(json_string_value(fr), "length")) t->finish = "length";
    json_decref(j);
}

static int connect_to(const chat_opts *o, char *err, size_t errlen) {
    char port[16];
    snprintf(port, sizeof port, "%d", o->port);
    struct addrinfo hints = {0}, *res;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(o->host, port, &hints, &res);
    if (rc) {
        snprintf(err, errlen, "cannot resolve %s: %s", o->host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, e = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) snprintf(err, errlen, "cannot connect to %s:%d: %s", o->host, o->port, strerror(e));
    return fd;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Receives into buf, waking every 100 ms to notice Ctrl-C. Returns bytes, 0 at EOF, -1 error, -2 interrupted.
 */
static ssize_t recv_some(int fd, char *buf, size_t cap) {
    for (;;) {
        if (g_interrupted) return -2;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, 100);
        if (r < 0 && errno != EINTR) return -1;
        if (r <= 0) continue;
        ssize_t n = recv(fd, buf, cap, 0);
        if (n < 0 && errno == EINTR) continue;
        return n;
    }
}

/* One turn: POST, stream the reply to stdout. Returns 0 ok, 1 server/HTTP error, -1 transport error. */
static int run_turn(const chat_opts *o, json_t *messages, turn *t) {
    json_t *req = json_deep_copy(o->params);
    json_object_set(req, "messages", messages);
    json_object_set_new(req, "stream", json_true());
    if (o->model) json_object_set_new(req, "model", json_string(o->model));
    if (o->max_tokens > 0) json_object_set_new(req, "max_tokens", json_integer(o->max_tokens));
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!body) return -1;
    char err[512];
    int fd = connect_to(o, err, sizeof err);
    if (fd < 0) {
        free(body);
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    srv_buf head = {0};
    int rc = srv_buf_printf(&head,
                            "POST %s/v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\n"
                            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                            "Content-Length: %zu\r\nConnection: close\r\n",
                            o->prefix, o->host, o->port, strlen(body));
    if (!rc && o->api_key) rc = srv_buf_printf(&head, "Authorization: Bearer %s\r\n", o->api_key);
    if (!rc) rc = srv_buf_append(&head, "\r\n", 2);
    if (rc || send_all(fd, srv_buf_ptr(&head), srv_buf_size(&head)) || send_all(fd, body, strlen(body))) {
        fprintf(stderr, "error: cannot send the request\n");
        srv_buf_free(&head);
        free(body);
        close(fd);
        return -1;
    }
    srv_buf_free(&head);
    free(body);

    /* response head */
    srv_buf in = {0}, dec = {0}, errbody = {0};
    in.limit = HEAD_MAX;
    errbody.limit = ERR_BODY_MAX;
    char buf[16384];
    size_t head_end = 0;
    int result = -1, chunked = 0, chunks_done = 0;
    while (!head_end) {
        ssize_t n = recv_some(fd, buf, sizeof buf);
        if (n == -2) goto interrupted;
        if (n <= 0 || srv_buf_append(&in, buf, (size_t)n)) {
            fprintf(stderr, "error: bad or missing response from the server\n");
            goto out;
        }
        const char *p = srv_buf_cstr(&in), *e = strstr(p, "\r\n\r\n");
        if (e) head_end = (size_t)(e - p) + 4;
    }
    const char *h = srv_buf_cstr(&in);
    if (sscanf(h, "HTTP/%*d.%*d %d", &t->status) != 1) {
        fprintf(stderr, "error: not an HTTP response\n");
        goto out;
    }
    for (const char *l = strstr(h, "\r\n"); l && (size_t)(l - h) < head_end; l = strstr(l + 2, "\r\n"))
        if (!strncasecmp(l + 2, "Transfer-Encoding:", 18) && strstr(l + 2, "chunked") &&
            strstr(l + 2, "chunked") < strstr(l + 2, "\r\n"))
            chunked = 1;

    srv_chunked cd = {0};
    srv_sse sse = {0};
    const char *rest = srv_buf_ptr(&in) + head_end;
    size_t rest_n = srv_buf_size(&in) - head_end;
    for (;;) {
        const char *data = rest;
        size_t dn = rest_n;
        if (chunked) {
            srv_buf_clear(&dec);
            if (srv_chunked_feed(&cd, rest, rest_n, &dec, &chunks_done)) {
                fprintf(stderr, "\nerror: malformed chunked response\n");
                break;
            }
            data = srv_buf_ptr(&dec);
            dn = srv_buf_size(&dec);
        }
        if (t->status == 200) {
            if (srv_sse_feed(&sse, data, dn, on_sse, t)) {
                fprintf(stderr, "\nerror: malformed event stream\n");
                break;
            }
        } else if (srv_buf_append(&errbody, data, dn) == NI_ERANGE) {
            break;
        }
        if (t->done || chunks_done) break;
        ssize_t n = recv_some(fd, buf, sizeof buf);
        if (n == -2) {
            srv_sse_free(&sse);
            goto interrupted;
        }
        if (n <= 0) break;
        rest = buf;
        rest_n = (size_t)n;
    }
    srv_sse_free(&sse);
    if (t->status != 200) {
        json_t *j = json_loadb(srv_buf_ptr(&errbody), srv_buf_size(&errbody), 0, NULL);
        const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        fprintf(stderr, "error: HTTP %d: %s\n", t->status, msg ? msg : "(no message)");
        json_decref(j);
        result = 1;
    } else if (t->error[0]) {
        fprintf(stderr, "\nerror: %s\n", t->error);
        result = 1;
    } else {
        if (!t->done) fprintf(stderr, "\n[connection closed before the end of the reply]");
        result = 0;
    }
    goto out;
interrupted:
    g_interrupted = 0;
    fprintf(stderr, "\n[interrupted]");
    result = 0;
out:
    srv_buf_free(&in);
    srv_buf_free(&dec);
    srv_buf_free(&errbody);
    close(fd);
    return result;
}

int srv_cmd_chat(int argc, char **argv) {
    chat_args args = {0};
    args.sp = smp_params_default();
    uint64_t seen = 0;
    int r = cli_parse(g_chat_opts, NI_ARRAY_LEN(g_chat_opts), &args, argc, argv, &seen);
    if (r == 1) chat_usage(stdout);
    if (r) return r == 1 ? 0 : 2;
    chat_opts o = {0};
    const char *url = args.url ? args.url : getenv("NANOINFER_URL");
    if (!url || !*url) url = "http://127.0.0.1:8000";
    o.api_key = args.api_key ? args.api_key : getenv("NANOINFER_API_KEY");
    if (o.api_key && !*o.api_key) o.api_key = NULL;
    o.model = args.model;
    o.system = args.system;
    o.max_tokens = args.max_tokens;
    o.params = chat_params(&args, seen);
    if (!o.params) return 1;
    if (srv_parse_url(url, o.host, sizeof o.host, &o.port, o.prefix, sizeof o.prefix)) {
        fprintf(stderr,
                "error: bad --url '%s' (expected http://host:port[/prefix]; https is not supported)\n", url);
        json_decref(o.params);
        return 2;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: Ctrl-C interrupts the line read */

    int tty = isatty(STDIN_FILENO);
    json_t *messages = json_array();
    if (o.system) {
        json_t *m = json_pack("{s:s,s:s}", "role", "system", "content", o.system);
        json_array_append_new(messages, m);
    }
    if (tty)
        fprintf(stderr, "nanoinfer chat with %s:%d%s - /reset to start over, /exit to quit\n", o.host, o.port,
                o.prefix);
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    for (;;) {
        if (tty) {
            fprintf(stderr, "> ");
            fflush(stderr);
        }
        errno = 0;
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) {
            if (tty) fprintf(stderr, "\n");
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n == 0) continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            while (json_array_size(messages) > (o.system ? 1u : 0u))
                json_array_remove(messages, json_array_size(messages) - 1);
            fprintf(stderr, "[conversation cleared]\n");
            continue;
        }
        json_t *um = json_pack("{s:s,s:s%}", "role", "user", "content", line, (size_t)n);
        if (!um) {
            fprintf(stderr, "error: the message is not valid UTF-8\n");
            continue;
        }
        json_array_append_new(messages, um);
        turn t = {0};
        int r = run_turn(&o, messages, &t);
        printf("\n");
        fflush(stdout);
        if (t.finish) fprintf(stderr, "[reply cut at max tokens]\n");
        if (r == 0) {
            json_t *am = json_object();
            json_object_set_new(am, "role", json_string("assistant"));
            json_object_set_new(am, "content", json_stringn(srv_buf_ptr(&t.reply), srv_buf_size(&t.reply)));
            json_array_append_new(messages, am);
        } else {
            json_array_remove(messages, json_array_size(messages) - 1); /* the turn failed: drop it */
            rc = 1;
            if (!tty && r < 0) {
                srv_buf_free(&t.reply);
                break;
            }
        }
        srv_buf_free(&t.reply);
    }
    free(line);
    json_decref(messages);
    json_decref(o.params);
    return rc;
}
