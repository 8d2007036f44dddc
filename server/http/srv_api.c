/*
 * srv_api.c - see srv_api.h. Structure: small typed getters (each names the
 * parameter on failure), the prompt / messages readers, one reader per group
 * of generation parameters (stream, sampling, stop, n, logprobs, max_tokens,
 * context fit), srv_api_parse_gen calling them in a fixed order (which
 * decides the error reported first), /tokenize and /detokenize. The
 * response builders live in srv_api_out.c.
 *
 * Invariant: on any failure path srv_api_parse_gen leaves *out zeroed (it
 * frees whatever it built), so callers never free a half-built request.
 */
#include "srv_api.h"
#include "srv_guided.h"
#include "srv_tools.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/chat.h"
#include "engine/util/util.h"

/* ---- errors ---- */

static const char *type_for_status(int status) {
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    case 501: /* an unsupported transfer coding, */
    case 505: /* an HTTP version other than 1.x: the request, not the server */
        return "invalid_request_error";
    default: return status >= 500 ? "internal_error" : "invalid_request_error";
    }
}

int srv_api_fail(srv_api_error *e, int status, const char *param, const char *fmt, ...) {
    e->status = status;
    e->type = type_for_status(status);
    e->code = NULL;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

json_t *srv_api_error_json(const srv_api_error *e) {
    json_t *in = json_object();
    json_t *o = json_object();
    if (!in || !o) {
        json_decref(in);
        json_decref(o);
        return NULL;
    }
    json_object_set_new(in, "message", srv_json_stringn(e->message, strlen(e->message)));
    json_object_set_new(in, "type", json_string(e->type ? e->type : type_for_status(e->status)));
    json_object_set_new(in, "param",
                        e->param[0] ? srv_json_stringn(e->param, strlen(e->param)) : json_null());
    json_object_set_new(in, "code", e->code ? json_string(e->code) : json_null());
    json_object_set_new(o, "error", in);
    return o;
}

json_t *srv_json_stringn(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    if (j) return j;
    srv_buf b = {0};
    if (srv_utf8_sanitize(&b, s, n)) {
        srv_buf_free(&b);
        return NULL;
    }
    j = json_stringn(srv_buf_ptr(&b), srv_buf_size(&b));
    srv_buf_free(&b);
    return j;
}

/* ---- typed getters: 0 absent/null, 1 present, -1 error (filled) ---- */

static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static int get_number(const json_t *o, const char *key, double *out, srv_api_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v))
        return srv_api_fail(e, 400, key, "'%s' must be a number, got %s", key, json_kind(v));
    *out = json_number_value(v);
    return 1;
}

static int get_int(const json_t *o, const char *key, long long lo, long long hi, long long *out,
                   srv_api_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d) || d < -9.2e18 || d > 9.2e18)
            return srv_api_fail(e, 400, key, "'%s' must be an integer, got %g", key, d);
        x = (long long)d;
    } else {
        return srv_api_fail(e, 400, key, "'%s' must be an integer, got %s", key, json_kind(v));
    }
    if (x < lo || x > hi)
        return srv_api_fail(e, 400, key, "'%s' must be in [%lld, %lld], got %lld", key, lo, hi, x);
    *out = x;
    return 1;
}

static int get_bool(const json_t *o, const char *key, int *out, srv_api_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v))
        return srv_api_fail(e, 400, key, "'%s' must be a boolean, got %s", key, json_kind(v));
    *out = json_is_true(v);
    return 1;
}

/* Sets *out to the float parameter when present. */
static int get_float(const json_t *o, const char *key, float *out, srv_api_error *e) {
    double d = 0;
    int rc = get_number(o, key, &d, e);
    if (rc == 1) *out = (float)d;
    return rc;
}

/* ---- tokenization ---- */

static int encode_alloc(const tok_tokenizer *t, const char *text, size_t len, int add_bos,
                        int special, int32_t **out) {
    if (len > (size_t)1 << 28) return NI_ERANGE;
    int cap = (int)NI_MIN(len + 16, (size_t)1 << 28);
    int32_t *ids = malloc((size_t)cap * sizeof(int32_t));
    if (!ids) return NI_ENOMEM;
    int n = tok_encode(t, text, len, add_bos, special, ids, cap);
    if (n > cap) {
        int32_t *p = realloc(ids, (size_t)n * sizeof(int32_t));
        if (!p) {
            free(ids);
            return NI_ENOMEM;
        }
        ids = p;
        n = tok_encode(t, text, len, add_bos, special, ids, n);
    }
    if (n < 0) {
        free(ids);
        return n;
    }
    *out = ids;
    return n;
}

/* Reads an array of token ids (all integers in [0, vocab)). Returns count or -1. */
static int read_ids(const srv_api_ctx *ctx, const json_t *a, const char *param, int32_t **out,
                    srv_api_error *e) {
    size_t n = json_array_size(a);
    if (n > (size_t)1 << 24) return srv_api_fail(e, 400, param, "'%s' has too many tokens", param);
    int32_t *ids = malloc((n ? n : 1) * sizeof(int32_t));
    if (!ids) return srv_api_fail(e, 500, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v)) {
            free(ids);
            return srv_api_fail(e, 400, param, "'%s' must be a string or an array of token ids",
                                param);
        }
        json_int_t x = json_integer_value(v);
        if (x < 0 || x >= ctx->vocab) {
            free(ids);
            return srv_api_fail(e, 400, param, "'%s': token id %lld is out of range [0, %d)", param,
                                (long long)x, ctx->vocab);
        }
        ids[i] = (int32_t)x;
    }
    *out = ids;
    return (int)n;
}

/* Completions "prompt": string | [ids] | [string] | [[ids]]. Fills r->prompt
 * (and r->echo_text when echo). Returns 0 or -1. */
static int read_prompt(const srv_api_ctx *ctx, const json_t *body, srv_gen_req *r,
                       srv_api_error *e) {
    json_t *p = json_object_get(body, "prompt");
    if (!p || json_is_null(p)) return srv_api_fail(e, 400, "prompt", "'prompt' is required");
    if (json_is_array(p) && json_array_size(p) == 1 &&
        (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
        p = json_array_get(p, 0); /* a list of one prompt */
    if (json_is_string(p)) {
        const char *s = json_string_value(p);
        size_t len = json_string_length(p);
        int n = encode_alloc(ctx->tok, s, len, tok_add_bos(ctx->tok), 1, &r->prompt);
        if (n < 0)
            return srv_api_fail(e, 400, "prompt", "'prompt' could not be tokenized: %s",
                                ni_strerror(n));
        r->n_prompt = n;
        if (r->echo) {
            r->echo_text = malloc(len + 1);
            if (!r->echo_text) return srv_api_fail(e, 500, NULL, "out of memory");
            memcpy(r->echo_text, s, len + 1);
            r->echo_len = len;
        }
    } else if (json_is_array(p)) {
        size_t na = json_array_size(p);
        for (size_t i = 0; i < na; i++)
            if (!json_is_integer(json_array_get(p, i)))
                return srv_api_fail(
                    e, 400, "prompt",
                    json_is_string(json_array_get(p, i)) || json_is_array(json_array_get(p, i))
                        ? "batched prompts (a list of several prompts) are not supported; "
                          "send one prompt per request"
                        : "'prompt' must be a string, an array of token ids, or a list of one of "
                          "those");
        int n = read_ids(ctx, p, "prompt", &r->prompt, e);
        if (n < 0) return -1;
        r->n_prompt = n;
        if (r->echo && n > 0) {
            int need = tok_decode(ctx->tok, r->prompt, n, NULL, 0);
            if (need < 0) return srv_api_fail(e, 400, "prompt", "'prompt' could not be decoded");
            r->echo_text = malloc((size_t)need + 1);
            if (!r->echo_text) return srv_api_fail(e, 500, NULL, "out of memory");
            tok_decode(ctx->tok, r->prompt, n, r->echo_text, (size_t)need + 1);
            r->echo_len = (size_t)need;
        }
    } else {
        return srv_api_fail(e, 400, "prompt",
                            "'prompt' must be a string or an array of token ids, got %s",
                            json_kind(p));
    }
    if (r->n_prompt < 1) return srv_api_fail(e, 400, "prompt", "'prompt' is empty (no tokens)");
    return 0;
}

/* An assistant message's "tool_calls" -> m->tool_calls (owned: names borrow
 * the body, arguments are copies; free_messages frees them). Returns 0 or -1. */
static int read_tool_calls(const json_t *tc, chat_msg *m, const char *param, srv_api_error *e) {
    size_t n = json_array_size(tc);
    if (!json_is_array(tc) || n > 128)
        return srv_api_fail(e, 400, param, "'%s.tool_calls' must be an array (at most 128)",
                            param);
    if (n == 0) return 0;
    chat_tool_call *calls = calloc(n, sizeof *calls);
    if (!calls) return srv_api_fail(e, 500, NULL, "out of memory");
    m->tool_calls = calls;
    for (size_t j = 0; j < n; j++) {
        json_t *f = json_object_get(json_array_get(tc, j), "function");
        const char *name = json_string_value(json_object_get(f, "name"));
        json_t *args = json_object_get(f, "arguments");
        if (!name || !(json_is_string(args) || json_is_object(args)))
            return srv_api_fail(e, 400, param,
                                "'%s.tool_calls[%zu]' must have function.name and "
                                "function.arguments (a JSON string)",
                                param, j);
        calls[j].name = name;
        calls[j].arguments = json_is_string(args) ? strdup(json_string_value(args))
                                                  : json_dumps(args, JSON_PRESERVE_ORDER);
        m->n_tool_calls = (int)j + 1;
        if (!calls[j].arguments) return srv_api_fail(e, 500, NULL, "out of memory");
    }
    return 0;
}

/* Chat "messages" -> chat_msg array (contents owned in *bufs). Returns count or -1. */
static int read_messages(const json_t *body, chat_msg **msgs_out, char ***bufs_out,
                         srv_api_error *e) {
    json_t *m = json_object_get(body, "messages");
    if (!m || json_is_null(m)) return srv_api_fail(e, 400, "messages", "'messages' is required");
    if (!json_is_array(m)) return srv_api_fail(e, 400, "messages", "'messages' must be an array");
    size_t n = json_array_size(m);
    if (n == 0) return srv_api_fail(e, 400, "messages", "'messages' must not be empty");
    if (n > 100000) return srv_api_fail(e, 400, "messages", "'messages' has too many entries");
    chat_msg *msgs = calloc(n, sizeof *msgs);
    char **bufs = calloc(n, sizeof *bufs);
    if (!msgs || !bufs) {
        free(msgs);
        free(bufs);
        return srv_api_fail(e, 500, NULL, "out of memory");
    }
    *msgs_out = msgs;
    *bufs_out = bufs;
    char param[64];
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(m, i);
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(it))
            return srv_api_fail(e, 400, param, "'%s' must be an object", param);
        json_t *role = json_object_get(it, "role");
        if (!json_is_string(role))
            return srv_api_fail(e, 400, param, "'%s.role' must be a string", param);
        const char *rs = json_string_value(role);
        if (!strcmp(rs, "developer")) rs = "system"; /* OpenAI's newer name for system */
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") &&
            strcmp(rs, "tool"))
            return srv_api_fail(
                e, 400, param,
                "'%s.role' must be system, developer, user, assistant or tool (got '%.40s')",
                param, rs);
        msgs[i].role = rs;
        json_t *c = json_object_get(it, "content");
        srv_buf text = {0};
        if (!c || json_is_null(c)) {
            if (strcmp(rs, "assistant"))
                return srv_api_fail(e, 400, param, "'%s.content' is required", param);
        } else if (json_is_string(c)) {
            if (strlen(json_string_value(c)) != json_string_length(c))
                return srv_api_fail(e, 400, param, "'%s.content' contains a NUL character", param);
            if (srv_buf_append(&text, json_string_value(c), json_string_length(c)))
                return srv_api_fail(e, 500, NULL, "out of memory");
        } else if (json_is_array(c)) {
            size_t np = json_array_size(c);
            for (size_t k = 0; k < np; k++) {
                json_t *part = json_array_get(c, k);
                json_t *ty = json_object_get(part, "type"), *tx = json_object_get(part, "text");
                if (!json_is_object(part) || !json_is_string(ty) ||
                    strcmp(json_string_value(ty), "text") || !json_is_string(tx)) {
                    srv_buf_free(&text);
                    return srv_api_fail(
                        e, 400, param,
                        "'%s.content[%zu]': only {\"type\": \"text\", \"text\": ...} parts "
                        "are supported",
                        param, k);
                }
                if (strlen(json_string_value(tx)) != json_string_length(tx)) {
                    srv_buf_free(&text);
                    return srv_api_fail(e, 400, param, "'%s.content' contains a NUL character",
                                        param);
                }
                /* parts are joined with newlines, as vLLM does */
                if ((k && srv_buf_append(&text, "\n", 1)) ||
                    srv_buf_append(&text, json_string_value(tx), json_string_length(tx))) {
                    srv_buf_free(&text);
                    return srv_api_fail(e, 500, NULL, "out of memory");
                }
            }
        } else {
            return srv_api_fail(e, 400, param,
                                "'%s.content' must be a string or an array of text parts", param);
        }
        json_t *tc = json_object_get(it, "tool_calls");
        if (tc && !json_is_null(tc) && (read_tool_calls(tc, &msgs[i], param, e) ||
                                        strcmp(rs, "assistant"))) {
            srv_buf_free(&text);
            if (strcmp(rs, "assistant"))
                return srv_api_fail(e, 400, param, "'%s.tool_calls': only assistant messages "
                                    "carry tool calls", param);
            return -1;
        }
        bufs[i] = strdup(srv_buf_cstr(&text));
        srv_buf_free(&text);
        if (!bufs[i]) return srv_api_fail(e, 500, NULL, "out of memory");
        msgs[i].content = bufs[i];
    }
    return (int)n;
}

static void free_messages(chat_msg *msgs, char **bufs, int n) {
    if (bufs)
        for (int i = 0; i < n; i++) free(bufs[i]);
    for (int i = 0; msgs && i < n; i++) {
        chat_tool_call *c = (chat_tool_call *)msgs[i].tool_calls;
        for (int j = 0; j < msgs[i].n_tool_calls; j++) free((char *)c[j].arguments);
        free(c);
    }
    free(bufs);
    free(msgs);
}

/* chat_template_kwargs: an object; enable_thinking, when given, a boolean
 * (the other variables are ignored, as a template that does not read them
 * would). Sets *think to -1 (undefined), 0 or 1. Returns 0 or -1. */
static int read_template_kwargs(const json_t *body, int *think, srv_api_error *e) {
    *think = -1;
    json_t *k = json_object_get(body, "chat_template_kwargs");
    if (!k || json_is_null(k)) return 0;
    if (!json_is_object(k))
        return srv_api_fail(e, 400, "chat_template_kwargs",
                            "'chat_template_kwargs' must be an object");
    json_t *v = json_object_get(k, "enable_thinking");
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v))
        return srv_api_fail(e, 400, "chat_template_kwargs",
                            "'chat_template_kwargs.enable_thinking' must be a boolean, got %s",
                            json_kind(v));
    *think = json_is_true(v);
    return 0;
}

/* Renders and tokenizes the conversation. Returns token count or -1. */
static int chat_tokens(const srv_api_ctx *ctx, const json_t *body, int add_gen,
                       const srv_tools *tools, int32_t **ids, srv_api_error *e) {
    chat_msg *msgs = NULL;
    char **bufs = NULL;
    int think;
    if (read_template_kwargs(body, &think, e)) return -1;
    /* the functions as the template's `tool | tojson` prints them */
    char *tool_text[SRV_TOOLS_MAX];
    int n_tools = tools ? tools->n : 0;
    size_t flags = JSON_PRESERVE_ORDER | (tools && tools->format == SRV_TOOLS_LLAMA3 ? JSON_INDENT(4) : 0);
    for (int i = 0; i < n_tools; i++)
        if (!(tool_text[i] = json_dumps(json_array_get(tools->tools, (size_t)i), flags))) {
            while (i--) free(tool_text[i]);
            return srv_api_fail(e, 500, NULL, "out of memory");
        }
    int n = read_messages(body, &msgs, &bufs, e);
    int nm = (int)json_array_size(json_object_get(body, "messages"));
    char *text = NULL;
    const chat_opts co = {.add_generation_prompt = add_gen,
                          .enable_thinking = think,
                          .tools = (const char *const *)tool_text,
                          .n_tools = n_tools};
    int rc = n < 0 ? 0 : chat_render_opts(ctx->chat_style, msgs, n, &co, &text);
    free_messages(msgs, bufs, nm);
    for (int i = 0; i < n_tools; i++) free(tool_text[i]);
    if (n < 0) return -1;
    if (rc == NI_ENOMEM) return srv_api_fail(e, 500, NULL, "out of memory");
    if (rc)
        return srv_api_fail(
            e, 400, "messages",
            "the conversation does not fit the model's chat template (%s): roles must "
            "be system/user/assistant%s",
            chat_style_name(ctx->chat_style),
            ctx->chat_style == CHAT_STYLE_LLAMA2
                ? ", alternating user/assistant after an optional first system message, "
                  "and tools are not supported"
            : ctx->chat_style == CHAT_STYLE_ZEPHYR ? ", and tools are not supported"
                                                    : " (or tool)");
    int add_bos = tok_add_bos(ctx->tok) && !chat_has_bos_text(ctx->chat_style, text);
    int nt = encode_alloc(ctx->tok, text, strlen(text), add_bos, 1, ids);
    free(text);
    if (nt < 0)
        return srv_api_fail(e, 400, "messages", "messages could not be tokenized: %s",
                            ni_strerror(nt));
    if (nt == 0) {
        free(*ids);
        *ids = NULL;
        return srv_api_fail(e, 400, "messages", "the rendered conversation is empty");
    }
    return nt;
}

/* ---- the generation request ---- */

static int check_model(const srv_api_ctx *ctx, const json_t *body, srv_api_error *e) {
    json_t *m = json_object_get(body, "model");
    if (!m || json_is_null(m)) return 0;
    if (!json_is_string(m)) return srv_api_fail(e, 400, "model", "'model' must be a string");
    const char *s = json_string_value(m);
    if (!*s || !strcmp(s, ctx->model_name) || (ctx->model_path && !strcmp(s, ctx->model_path)))
        return 0;
    srv_api_fail(e, 404, "model", "The model `%.200s` does not exist.", s);
    e->code = "model_not_found";
    return -1;
}

static int read_stop(const json_t *body, srv_gen_req *r, srv_api_error *e) {
    json_t *s = json_object_get(body, "stop");
    if (!s || json_is_null(s)) return 0;
    json_t *one = json_is_string(s) ? s : NULL;
    size_t n = one ? 1 : json_array_size(s);
    if (!one && !json_is_array(s))
        return srv_api_fail(e, 400, "stop", "'stop' must be a string or an array of strings");
    for (size_t i = 0; i < n; i++) {
        json_t *v = one ? one : json_array_get(s, i);
        if (!json_is_string(v))
            return srv_api_fail(e, 400, "stop", "'stop' must contain only strings");
        size_t len = json_string_length(v);
        if (len == 0) continue; /* an empty stop string can never match: ignore it */
        if (len > ENG_MAX_STOP_LEN)
            return srv_api_fail(e, 400, "stop", "each 'stop' string must be at most %d bytes",
                                ENG_MAX_STOP_LEN);
        if (strlen(json_string_value(v)) != len)
            return srv_api_fail(e, 400, "stop", "'stop' strings must not contain NUL");
        if (r->n_stop == ENG_MAX_STOP)
            return srv_api_fail(e, 400, "stop", "at most %d 'stop' strings", ENG_MAX_STOP);
        r->stop[r->n_stop] = strdup(json_string_value(v));
        if (!r->stop[r->n_stop]) return srv_api_fail(e, 500, NULL, "out of memory");
        r->n_stop++;
    }
    return 0;
}

static int read_logit_bias(const srv_api_ctx *ctx, const json_t *body, srv_gen_req *r,
                           srv_api_error *e) {
    json_t *b = json_object_get(body, "logit_bias");
    if (!b || json_is_null(b)) return 0;
    if (!json_is_object(b))
        return srv_api_fail(e, 400, "logit_bias",
                            "'logit_bias' must be an object mapping token ids to biases");
    size_t n = json_object_size(b);
    if (n == 0) return 0;
    if (n > SRV_API_MAX_LOGIT_BIAS)
        return srv_api_fail(e, 400, "logit_bias", "'logit_bias' has more than %d entries",
                            SRV_API_MAX_LOGIT_BIAS);
    r->bias = calloc(n, sizeof *r->bias);
    if (!r->bias) return srv_api_fail(e, 500, NULL, "out of memory");
    const char *key;
    json_t *v;
    int i = 0;
    json_object_foreach(b, key, v) {
        char *end;
        long id = strtol(key, &end, 10);
        if (!*key || *end || id < 0 || id >= ctx->vocab)
            return srv_api_fail(e, 400, "logit_bias",
                                "'logit_bias' key '%.40s' is not a token id in [0, %d)", key,
                                ctx->vocab);
        if (!json_is_number(v))
            return srv_api_fail(e, 400, "logit_bias", "'logit_bias' values must be numbers");
        double d = json_number_value(v);
        if (!(d >= -100 && d <= 100))
            return srv_api_fail(e, 400, "logit_bias", "'logit_bias' values must be in [-100, 100]");
        r->bias[i].token = (int32_t)id;
        r->bias[i].bias = (float)d;
        i++;
    }
    r->sp.logit_bias = r->bias;
    r->sp.n_logit_bias = i;
    return 0;
}

static int reject_unsupported(int kind, const json_t *body, srv_api_error *e) {
    json_t *v;
    if (kind == SRV_API_COMPLETION && (v = json_object_get(body, "suffix")) && !json_is_null(v))
        return srv_api_fail(e, 400, "suffix",
                            "'suffix' (insertion) is not supported by this server");
    if (kind == SRV_API_COMPLETION && (v = json_object_get(body, "tools")) && !json_is_null(v) &&
        (!json_is_array(v) || json_array_size(v) > 0))
        return srv_api_fail(e, 400, "tools",
                            "tools are only supported on /v1/chat/completions");
    if ((v = json_object_get(body, "functions")) && !json_is_null(v))
        return srv_api_fail(e, 400, "functions",
                            "function calling is not supported by this server");
    if ((v = json_object_get(body, "min_tokens")) && !json_is_null(v) &&
        !(json_is_integer(v) && json_integer_value(v) == 0))
        return srv_api_fail(e, 400, "min_tokens", "'min_tokens' is not supported by this server");
    if ((v = json_object_get(body, "include_stop_str_in_output")) && json_is_true(v))
        return srv_api_fail(e, 400, "include_stop_str_in_output",
                            "'include_stop_str_in_output' is not supported by this server");
    if ((v = json_object_get(body, "prompt_logprobs")) && !json_is_null(v))
        return srv_api_fail(e, 400, "prompt_logprobs",
                            "prompt logprobs are not supported by this server");
    if ((v = json_object_get(body, "use_beam_search")) && json_is_true(v))
        return srv_api_fail(e, 400, "use_beam_search",
                            "beam search is not supported by this server");
    return 0;
}

/* Maps a smp_params_validate field name to the API parameter name. */
static const char *api_param_name(int kind, const char *smp_name) {
    if (!strcmp(smp_name, "logprobs")) return kind == SRV_API_CHAT ? "top_logprobs" : "logprobs";
    return smp_name;
}

static const char *smp_range(const char *name) {
    if (!strcmp(name, "temperature")) return "[0, 100]";
    if (!strcmp(name, "top_k")) return "-1, 0 (off) or >= 1";
    if (!strcmp(name, "top_p")) return "(0, 1]";
    if (!strcmp(name, "min_p")) return "[0, 1]";
    if (!strcmp(name, "repetition_penalty")) return "(0, 2]";
    if (!strcmp(name, "presence_penalty") || !strcmp(name, "frequency_penalty")) return "[-2, 2]";
    return "the allowed range";
}

/* stream, stream_options.include_usage (only with stream). Returns 0 or -1. */
static int read_stream(const json_t *body, srv_gen_req *r, srv_api_error *e) {
    if (get_bool(body, "stream", &r->stream, e) < 0) return -1;
    json_t *so = json_object_get(body, "stream_options");
    if (!so || json_is_null(so)) return 0;
    if (!r->stream)
        return srv_api_fail(e, 400, "stream_options",
                            "'stream_options' is only allowed when 'stream' is true");
    if (!json_is_object(so))
        return srv_api_fail(e, 400, "stream_options", "'stream_options' must be an object");
    if (get_bool(so, "include_usage", &r->include_usage, e) < 0) {
        snprintf(e->param, sizeof e->param, "stream_options.include_usage");
        return -1;
    }
    return 0;
}

/* The sampling parameters into r->sp, typed only: smp_params_validate checks
 * the ranges once everything is read (check_sampling). Returns 0 or -1. */
static int read_sampling(const json_t *body, srv_gen_req *r, srv_api_error *e) {
    long long x;
    int rc;
    if (get_float(body, "temperature", &r->sp.temperature, e) < 0) return -1;
    if (get_float(body, "top_p", &r->sp.top_p, e) < 0) return -1;
    if ((rc = get_int(body, "top_k", -1, INT32_MAX, &x, e)) < 0) return -1;
    if (rc) r->sp.top_k = (int32_t)x;
    if (get_float(body, "min_p", &r->sp.min_p, e) < 0) return -1;
    if (get_float(body, "presence_penalty", &r->sp.presence_penalty, e) < 0) return -1;
    if (get_float(body, "frequency_penalty", &r->sp.frequency_penalty, e) < 0) return -1;
    if (get_float(body, "repetition_penalty", &r->sp.repetition_penalty, e) < 0) return -1;
    if ((rc = get_int(body, "seed", INT64_MIN, INT64_MAX, &x, e)) < 0) return -1;
    if (rc) {
        r->sp.has_seed = 1;
        r->sp.seed = (uint64_t)x;
    }
    return 0;
}

/* stop_token_ids: up to ENG_MAX_STOP_IDS ids in [0, vocab). Returns 0 or -1. */
static int read_stop_ids(const srv_api_ctx *ctx, const json_t *body, srv_gen_req *r,
                         srv_api_error *e) {
    json_t *sti = json_object_get(body, "stop_token_ids");
    if (!sti || json_is_null(sti)) return 0;
    if (!json_is_array(sti))
        return srv_api_fail(e, 400, "stop_token_ids",
                            "'stop_token_ids' must be an array of token ids");
    if (json_array_size(sti) > ENG_MAX_STOP_IDS)
        return srv_api_fail(e, 400, "stop_token_ids", "at most %d 'stop_token_ids'",
                            ENG_MAX_STOP_IDS);
    for (size_t i = 0; i < json_array_size(sti); i++) {
        json_t *v = json_array_get(sti, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= ctx->vocab)
            return srv_api_fail(e, 400, "stop_token_ids",
                                "'stop_token_ids' must hold token ids in [0, %d)", ctx->vocab);
        r->stop_ids[r->n_stop_ids++] = (int32_t)json_integer_value(v);
    }
    return 0;
}

/* n in [1, max_n]; best_of, when given, must equal it. Returns 0 or -1. */
static int read_n(const srv_api_ctx *ctx, const json_t *body, srv_gen_req *r, srv_api_error *e) {
    long long x;
    int rc;
    if ((rc = get_int(body, "n", 1, ctx->max_n, &x, e)) < 0) return -1;
    if (rc) r->n = (int)x;
    if ((rc = get_int(body, "best_of", 1, ctx->max_n, &x, e)) < 0) return -1;
    if (rc && x != r->n)
        return srv_api_fail(e, 400, "best_of",
                            "'best_of' must equal 'n' (best-of sampling is not supported)");
    return 0;
}

/* r->logprobs (and r->echo): completions take logprobs as an integer and may
 * echo; chat takes logprobs as a boolean plus top_logprobs and never echoes.
 * Returns 0 or -1. */
static int read_logprobs(int kind, const json_t *body, srv_gen_req *r, srv_api_error *e) {
    long long x;
    int rc;
    if (kind == SRV_API_COMPLETION) {
        json_t *lp = json_object_get(body, "logprobs");
        if (lp && json_is_boolean(lp))
            return srv_api_fail(e, 400, "logprobs",
                                "'logprobs' must be an integer in [0, %d] for completions",
                                SRV_API_MAX_LOGPROBS);
        if ((rc = get_int(body, "logprobs", 0, SRV_API_MAX_LOGPROBS, &x, e)) < 0) return -1;
        if (rc) r->logprobs = (int)x;
        if (get_bool(body, "echo", &r->echo, e) < 0) return -1;
        if (r->echo && r->logprobs >= 0)
            return srv_api_fail(
                e, 400, "echo",
                "'echo' together with 'logprobs' (prompt logprobs) is not supported");
        return 0;
    }
    int want = 0;
    if (get_bool(body, "logprobs", &want, e) < 0) return -1;
    if ((rc = get_int(body, "top_logprobs", 0, SRV_API_MAX_LOGPROBS, &x, e)) < 0) return -1;
    if (rc && !want && x > 0)
        return srv_api_fail(e, 400, "top_logprobs",
                            "'top_logprobs' requires 'logprobs' to be true");
    if (want) r->logprobs = rc ? (int)x : 0;
    if (json_object_get(body, "echo") && json_is_true(json_object_get(body, "echo")))
        return srv_api_fail(e, 400, "echo", "'echo' is not supported for chat completions");
    return 0;
}

/* Chat: the reasoning split of the output: the server's parser, unless
 * "reasoning_format" (llama-server's field) is "none" (inline). Returns 0 or -1. */
static int read_reasoning(const srv_api_ctx *ctx, int kind, const json_t *body, srv_gen_req *r,
                          srv_api_error *e) {
    r->reasoning = kind == SRV_API_CHAT ? ctx->reasoning_parser : SRV_REASONING_NONE;
    json_t *v = json_object_get(body, "reasoning_format");
    if (kind != SRV_API_CHAT || !v || json_is_null(v)) return 0;
    const char *f = json_string_value(v);
    if (f && !strcmp(f, "none"))
        r->reasoning = SRV_REASONING_NONE;
    else if (!f || (strcmp(f, "auto") && strcmp(f, "deepseek")))
        return srv_api_fail(
            e, 400, "reasoning_format",
            "'reasoning_format' must be \"none\" (inline), \"auto\" or \"deepseek\" "
            "(split into reasoning_content)");
    return 0;
}

/* Range-checks r->sp (logprobs included), naming the API parameter. Returns 0 or -1. */
static int check_sampling(const srv_api_ctx *ctx, int kind, srv_gen_req *r, srv_api_error *e) {
    r->sp.logprobs = r->logprobs;
    const char *bad = NULL;
    if (!smp_params_validate(&r->sp, ctx->vocab, &bad)) return 0;
    const char *pn = api_param_name(kind, bad ? bad : "sampling");
    return srv_api_fail(e, 400, pn, "'%s' is out of range: allowed %s", pn,
                        bad ? smp_range(bad) : "");
}

/* max_tokens (chat: max_completion_tokens wins) into *max, its name into
 * *name. Returns 1 when given, 0 when absent, -1 on error. */
static int read_max_tokens(int kind, const json_t *body, long long *max, const char **name,
                           srv_api_error *e) {
    int rc;
    *name = "max_tokens";
    if (kind == SRV_API_CHAT) {
        if ((rc = get_int(body, "max_completion_tokens", 1, INT32_MAX, max, e)) < 0) return -1;
        if (rc) {
            *name = "max_completion_tokens";
            return 1;
        }
    }
    return get_int(body, "max_tokens", 1, INT32_MAX, max, e);
}

/* The prompt tokens: completions "prompt", chat "messages" through the chat
 * template (add_generation_prompt, default true). Returns 0 or -1. */
static int read_gen_prompt(const srv_api_ctx *ctx, int kind, const json_t *body, srv_gen_req *r,
                           srv_api_error *e) {
    if (kind == SRV_API_COMPLETION) return read_prompt(ctx, body, r, e);
    int add_gen = 1;
    if (get_bool(body, "add_generation_prompt", &add_gen, e) < 0) return -1;
    if (srv_tools_parse(body, ctx->chat_style, &r->tools, e)) return -1;
    int n = chat_tokens(ctx, body, add_gen, &r->tools, &r->prompt, e);
    if (n < 0) return -1;
    r->n_prompt = n;
    return 0;
}

/* Fits the prompt plus max_tokens into the context (the KV pool, when
 * smaller, bounds it too) and resolves r->max_tokens: the requested max
 * (have_max) must fit, the default is capped by what is left. Returns 0 or -1. */
static int fit_context(const srv_api_ctx *ctx, int kind, srv_gen_req *r, int have_max,
                       long long max, const char *max_name, srv_api_error *e) {
    const char *what = kind == SRV_API_CHAT ? "messages" : "prompt";
    int limit = ctx->max_seq_len;
    if (ctx->kv_tokens > 0 && ctx->kv_tokens < limit) limit = ctx->kv_tokens;
    if (r->n_prompt >= limit)
        return srv_api_fail(
            e, 400, what,
            "This model's maximum context length is %d tokens. However, your %s has %d "
            "tokens; at least one token must remain for the completion.",
            limit, what, r->n_prompt);
    if (!have_max) {
        r->max_tokens = NI_MIN(limit - r->n_prompt, ctx->max_tokens_default);
        return 0;
    }
    if ((long long)r->n_prompt + max > limit)
        return srv_api_fail(
            e, 400, max_name,
            "This model's maximum context length is %d tokens. However, you requested "
            "%lld tokens (%d in the %s, %lld in the completion). Please reduce the "
            "length of the %s or completion.",
            limit, (long long)r->n_prompt + max, r->n_prompt, what, max, what);
    r->max_tokens = (int)max;
    return 0;
}

int srv_api_parse_gen(const srv_api_ctx *ctx, int kind, const json_t *body, srv_gen_req *r,
                      srv_api_error *e) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->sp = ctx->sp_default ? *ctx->sp_default : smp_params_default();
    r->n = 1;
    r->logprobs = -1;
    /* the order of the steps decides which error a request with several gets */
    if (!json_is_object(body)) {
        srv_api_fail(e, 400, NULL, "the request body must be a JSON object");
        goto fail;
    }
    if (check_model(ctx, body, e) || reject_unsupported(kind, body, e)) goto fail;
    if (read_stream(body, r, e) || read_sampling(body, r, e) || read_logit_bias(ctx, body, r, e) ||
        read_stop(body, r, e) || read_stop_ids(ctx, body, r, e))
        goto fail;
    if (get_bool(body, "ignore_eos", &r->ignore_eos, e) < 0) goto fail;
    /* echo (read with logprobs) must be known before the prompt is read */
    if (read_n(ctx, body, r, e) || read_logprobs(kind, body, r, e) ||
        check_sampling(ctx, kind, r, e) || read_reasoning(ctx, kind, body, r, e))
        goto fail;
    long long max = 0;
    const char *max_name;
    int have_max = read_max_tokens(kind, body, &max, &max_name, e);
    if (have_max < 0 || read_gen_prompt(ctx, kind, body, r, e) ||
        fit_context(ctx, kind, r, have_max, max, max_name, e) ||
        srv_guided_parse(body, &r->grammar, e))
        goto fail;
    if (r->tools.choice == SRV_TOOL_CHOICE_REQUIRED || r->tools.choice == SRV_TOOL_CHOICE_NAMED) {
        if (r->grammar) {
            srv_api_fail(e, 400, "tool_choice",
                         "tool_choice \"required\" or a named function cannot be combined with "
                         "response_format / guided decoding");
            goto fail;
        }
        if (srv_tools_grammar(&r->tools, &r->grammar, e)) goto fail;
    }
    return 0;
fail:
    srv_gen_req_free(r);
    return -1;
}

void srv_gen_req_free(srv_gen_req *r) {
    free(r->bias);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->prompt);
    free(r->echo_text);
    gr_grammar_free(r->grammar);
    srv_tools_free(&r->tools);
    memset(r, 0, sizeof *r);
}

void srv_gen_req_to_eng(srv_gen_req *r, uint64_t id, void *user, uint64_t fallback_seed,
                        eng_request *q) {
    memset(q, 0, sizeof *q);
    q->id = id;
    q->user = user;
    q->prompt = r->prompt;
    q->n_prompt = r->n_prompt;
    q->sp = r->sp;
    q->max_tokens = r->max_tokens;
    q->n = r->n;
    q->ignore_eos = r->ignore_eos;
    memcpy(q->stop_ids, r->stop_ids, sizeof q->stop_ids);
    q->n_stop_ids = r->n_stop_ids;
    for (int i = 0; i < r->n_stop; i++) q->stop[i] = r->stop[i];
    q->n_stop = r->n_stop;
    q->fallback_seed = fallback_seed;
    q->grammar = r->grammar; /* moved: eng_add owns it from here */
    r->grammar = NULL;
}

/* ---- /tokenize, /detokenize ---- */

json_t *srv_api_tokenize(const srv_api_ctx *ctx, const json_t *body, srv_api_error *e) {
    if (!json_is_object(body)) {
        srv_api_fail(e, 400, NULL, "the request body must be a JSON object");
        return NULL;
    }
    int32_t *ids = NULL;
    int n;
    json_t *p = json_object_get(body, "prompt");
    if (p && !json_is_null(p)) {
        if (!json_is_string(p)) {
            srv_api_fail(e, 400, "prompt", "'prompt' must be a string");
            return NULL;
        }
        int add_special = 1;
        if (get_bool(body, "add_special_tokens", &add_special, e) < 0) return NULL;
        n = encode_alloc(ctx->tok, json_string_value(p), json_string_length(p),
                         add_special && tok_add_bos(ctx->tok), 1, &ids);
        if (n < 0) {
            srv_api_fail(e, 400, "prompt", "'prompt' could not be tokenized: %s", ni_strerror(n));
            return NULL;
        }
    } else if (json_object_get(body, "messages")) {
        int add_gen = 1;
        if (get_bool(body, "add_generation_prompt", &add_gen, e) < 0) return NULL;
        srv_tools t;
        if (srv_tools_parse(body, ctx->chat_style, &t, e)) return NULL;
        n = chat_tokens(ctx, body, add_gen, &t, &ids, e);
        srv_tools_free(&t);
        if (n < 0) return NULL;
    } else {
        srv_api_fail(e, 400, "prompt", "'prompt' (a string) or 'messages' is required");
        return NULL;
    }
    json_t *arr = json_array();
    for (int i = 0; arr && i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
    free(ids);
    json_t *o = json_object();
    if (!o || !arr) {
        json_decref(o);
        json_decref(arr);
        srv_api_fail(e, 500, NULL, "out of memory");
        return NULL;
    }
    json_object_set_new(o, "count", json_integer(n));
    json_object_set_new(o, "max_model_len", json_integer(ctx->max_seq_len));
    json_object_set_new(o, "tokens", arr);
    return o;
}

json_t *srv_api_detokenize(const srv_api_ctx *ctx, const json_t *body, srv_api_error *e) {
    if (!json_is_object(body)) {
        srv_api_fail(e, 400, NULL, "the request body must be a JSON object");
        return NULL;
    }
    json_t *t = json_object_get(body, "tokens");
    if (!json_is_array(t)) {
        srv_api_fail(e, 400, "tokens", "'tokens' (an array of token ids) is required");
        return NULL;
    }
    int32_t *ids = NULL;
    int n = read_ids(ctx, t, "tokens", &ids, e);
    if (n < 0) return NULL;
    int need = n ? tok_decode(ctx->tok, ids, n, NULL, 0) : 0;
    char *text = need >= 0 ? malloc((size_t)need + 1) : NULL;
    if (!text) {
        free(ids);
        srv_api_fail(e, need < 0 ? 400 : 500, need < 0 ? "tokens" : NULL,
                     need < 0 ? "'tokens' could not be decoded" : "out of memory");
        return NULL;
    }
    text[0] = 0;
    if (n) tok_decode(ctx->tok, ids, n, text, (size_t)need + 1);
    free(ids);
    json_t *o = json_object();
    if (o) json_object_set_new(o, "prompt", srv_json_stringn(text, (size_t)need));
    free(text);
    if (!o) srv_api_fail(e, 500, NULL, "out of memory");
    return o;
}
