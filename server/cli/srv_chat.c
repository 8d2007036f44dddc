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

static void chat_usage(FILE *f) {
    fprintf(
        f, "usage: nanoinfer chat [--url http://127.0.0.1:8000] [--model NAME] [--system TEXT]\n"
           "                      [--max-tokens N] [--api-key KEY] [--stop STR]...\n"
           "                      [--temperature T] [--top-p P] [--top-k K] [--min-p P] [--seed S]\n"
           "                      [--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F]\n\n"
           "Interactive chat with a running `nanoinfer serve`: type a message, the reply streams\n"
           "back; the conversation grows turn by turn. /reset starts over, /exit (or EOF) quits,\n"
           "Ctrl-C stops a reply. The API key defaults to $NANOINFER_API_KEY; the URL to\n"
           "$NANOINFER_URL.\n");
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
    chat_opts o = {0};
    const char *url = getenv("NANOINFER_URL");
    if (!url || !*url) url = "http://127.0.0.1:8000";
    o.api_key = getenv("NANOINFER_API_KEY");
    if (o.api_key && !*o.api_key) o.api_key = NULL;
    o.params = json_object();
    json_t *stops = json_array();
    if (!o.params || !stops) return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            chat_usage(stdout);
            json_decref(o.params);
            json_decref(stops);
            return 0;
        }
        if (strncmp(a, "--", 2) || i + 1 >= argc) {
            fprintf(stderr, "error: %s: expected --option VALUE\n", a);
            chat_usage(stderr);
            json_decref(o.params);
            json_decref(stops);
            return 2;
        }
        const char *name = a + 2, *val = argv[++i];
        smp_params sp = smp_params_default();
        int r = srv_parse_sampling_opt(name, val, &sp);
        if (r < 0) {
            fprintf(stderr, "error: bad value for --%s: '%s'\n", name, val);
            json_decref(o.params);
            json_decref(stops);
            return 2;
        }
        if (r == 1) {
            if (!strcmp(name, "logprobs")) {
                fprintf(stderr, "error: --logprobs is not shown by chat\n");
                json_decref(o.params);
                json_decref(stops);
                return 2;
            }
            char key[64];
            snprintf(key, sizeof key, "%s", name);
            for (char *p = key; *p; p++)
                if (*p == '-') *p = '_';
            json_t *v = !strcmp(name, "seed") ? json_integer((json_int_t)sp.seed)
                        : !strcmp(name, "top-k")
                            ? json_integer(sp.top_k)
                            : json_real(!strcmp(name, "temperature")          ? sp.temperature
                                        : !strcmp(name, "top-p")              ? sp.top_p
                                        : !strcmp(name, "min-p")              ? sp.min_p
                                        : !strcmp(name, "repetition-penalty") ? sp.repetition_penalty
                                        : !strcmp(name, "presence-penalty")   ? sp.presence_penalty
                                                                              : sp.frequency_penalty);
            json_object_set_new(o.params, key, v);
        } else if (!strcmp(name, "url")) {
            url = val;
        } else if (!strcmp(name, "model")) {
            o.model = val;
        } else if (!strcmp(name, "system")) {
            o.system = val;
        } else if (!strcmp(name, "api-key")) {
            o.api_key = val;
        } else if (!strcmp(name, "stop")) {
            json_array_append_new(stops, json_string(val));
        } else if (!strcmp(name, "max-tokens")) {
            char *end;
            o.max_tokens = strtol(val, &end, 10);
            if (*end || o.max_tokens < 1) {
                fprintf(stderr, "error: bad value for --max-tokens: '%s'\n", val);
                json_decref(o.params);
                json_decref(stops);
                return 2;
            }
        } else {
            fprintf(stderr, "error: unknown option --%s\n", name);
            chat_usage(stderr);
            json_decref(o.params);
            json_decref(stops);
            return 2;
        }
    }
    if (json_array_size(stops)) json_object_set(o.params, "stop", stops);
    json_decref(stops);
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
