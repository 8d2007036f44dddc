/*
 * srv_tools.c - tools, tool_choice, the tool-call grammar and parsers (see
 * srv_tools.h).
 */
#include "srv_tools.h"

#include <stdlib.h>
#include <string.h>

#include "engine/util/util.h"
#include "srv_api.h"
#include "tokenizer/chat.h"

static const char OPEN[] = "<tool_call>", CLOSE[] = "</tool_call>";

srv_tool_format srv_tools_format_of(int chat_style) {
    return chat_style == CHAT_STYLE_LLAMA3 ? SRV_TOOLS_LLAMA3 : SRV_TOOLS_HERMES;
}

void srv_tools_free(srv_tools *t) {
    json_decref(t->tools);
    memset(t, 0, sizeof *t);
}

void srv_tool_call_free(srv_tool_call *c) {
    free(c->name);
    free(c->arguments);
    c->name = c->arguments = NULL;
}

static int valid_name(const char *s) {
    size_t n = strlen(s);
    if (n < 1 || n > 64) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-' || *s == '.'))
            return 0;
    return 1;
}

static const char *tool_name(const json_t *tool) {
    return json_string_value(json_object_get(json_object_get(tool, "function"), "name"));
}

static const json_t *find_tool(const srv_tools *t, const char *name) {
    for (int i = 0; i < t->n; i++) {
        const json_t *tool = json_array_get(t->tools, (size_t)i);
        if (!strcmp(tool_name(tool), name)) return tool;
    }
    return NULL;
}

int srv_tools_parse(const json_t *body, int chat_style, srv_tools *out, srv_api_error *e) {
    memset(out, 0, sizeof *out);
    out->parallel = 1;
    out->format = srv_tools_format_of(chat_style);
    const json_t *tools = json_object_get(body, "tools"), *tc = json_object_get(body, "tool_choice");
    const json_t *ptc = json_object_get(body, "parallel_tool_calls");
    if (ptc && !json_is_null(ptc)) {
        if (!json_is_boolean(ptc))
            return srv_api_fail(e, 400, "parallel_tool_calls", "'parallel_tool_calls' must be a boolean");
        out->parallel = json_is_true(ptc);
    }
    int n = 0;
    if (tools && !json_is_null(tools)) {
        if (!json_is_array(tools) || json_array_size(tools) > SRV_TOOLS_MAX)
            return srv_api_fail(e, 400, "tools", "'tools' must be an array of at most %d tools",
                                SRV_TOOLS_MAX);
        n = (int)json_array_size(tools);
        for (int i = 0; i < n; i++) {
            const json_t *tool = json_array_get(tools, (size_t)i);
            const json_t *type = json_object_get(tool, "type"), *fn = json_object_get(tool, "function");
            if (!json_is_object(tool) || !json_is_string(type) ||
                strcmp(json_string_value(type), "function") || !json_is_object(fn))
                return srv_api_fail(e, 400, "tools",
                                    "tools[%d] must be {\"type\": \"function\", \"function\": {...}}", i);
            const char *name = json_string_value(json_object_get(fn, "name"));
            if (!name || !valid_name(name))
                return srv_api_fail(e, 400, "tools",
                                    "tools[%d].function.name must be 1..64 of [a-zA-Z0-9_.-]", i);
            const json_t *params = json_object_get(fn, "parameters"), *desc = json_object_get(fn, "description");
            if (params && !json_is_null(params) && !json_is_object(params))
                return srv_api_fail(e, 400, "tools", "tools[%d].function.parameters must be an object", i);
            if (desc && !json_is_null(desc) && !json_is_string(desc))
                return srv_api_fail(e, 400, "tools", "tools[%d].function.description must be a string", i);
            for (int j = 0; j < i; j++)
                if (!strcmp(tool_name(json_array_get(tools, (size_t)j)), name))
                    return srv_api_fail(e, 400, "tools", "tools: '%s' is declared twice", name);
        }
    }
    out->choice = n > 0 ? SRV_TOOL_CHOICE_AUTO : SRV_TOOL_CHOICE_NONE;
    if (tc && !json_is_null(tc)) {
        const char *s = json_string_value(tc);
        if (s && !strcmp(s, "none")) {
            out->choice = SRV_TOOL_CHOICE_NONE;
        } else if (s && !strcmp(s, "auto")) {
            out->choice = SRV_TOOL_CHOICE_AUTO;
        } else if (s && !strcmp(s, "required")) {
            out->choice = SRV_TOOL_CHOICE_REQUIRED;
        } else if (json_is_object(tc)) {
            const char *name = json_string_value(json_object_get(json_object_get(tc, "function"), "name"));
            const char *type = json_string_value(json_object_get(tc, "type"));
            if (!name || !type || strcmp(type, "function"))
                return srv_api_fail(e, 400, "tool_choice",
                                    "'tool_choice' object must be {\"type\": \"function\", "
                                    "\"function\": {\"name\": ...}}");
            out->choice = SRV_TOOL_CHOICE_NAMED;
            snprintf(out->named, sizeof out->named, "%s", name);
        } else {
            return srv_api_fail(e, 400, "tool_choice",
                                "'tool_choice' must be \"none\", \"auto\", \"required\" or a named function");
        }
        if (out->choice != SRV_TOOL_CHOICE_NONE && n == 0)
            return srv_api_fail(e, 400, "tool_choice", "'tool_choice' needs 'tools'");
    }
    if (out->choice == SRV_TOOL_CHOICE_NONE) return 0;
    out->tools = json_incref((json_t *)tools);
    out->n = n;
    if (out->choice == SRV_TOOL_CHOICE_NAMED && !find_tool(out, out->named)) {
        srv_api_fail(e, 400, "tool_choice", "tool_choice names '%.64s', which is not in 'tools'",
                     out->named);
        srv_tools_free(out);
        return -1;
    }
    return 0;
}

/* ---- grammar ---- */

/* Appends one alternative per allowed function: {"name": "f", "arguments": ARGS} */
static int call_rule(gr_builder *b, const srv_tools *t) {
    int r = gr_b_rule(b, NULL);
    if (r < 0) return r;
    const char *args_key = t->format == SRV_TOOLS_LLAMA3 ? "parameters" : "arguments";
    for (int i = 0; i < t->n; i++) {
        const json_t *tool = json_array_get(t->tools, (size_t)i);
        const char *name = tool_name(tool);
        if (t->choice == SRV_TOOL_CHOICE_NAMED && strcmp(name, t->named)) continue;
        const json_t *params = json_object_get(json_object_get(tool, "function"), "parameters");
        int args = gr_b_schema(b, params && !json_is_null(params) && json_object_size(params) > 0 ? params : NULL);
        if (args < 0) return args;
        char head[160];
        int k = snprintf(head, sizeof head, "{\"name\": \"%s\", \"%s\": ", name, args_key);
        int rc = gr_b_alt(b, r);
        if (!rc) rc = gr_b_lit(b, r, head, (size_t)k);
        if (!rc) rc = gr_b_ref(b, r, args);
        if (!rc) rc = gr_b_lit(b, r, "}", 1);
        if (rc) return rc;
    }
    return r;
}

int srv_tools_grammar(const srv_tools *t, gr_grammar **out, srv_api_error *e) {
    *out = NULL;
    if (t->choice != SRV_TOOL_CHOICE_REQUIRED && t->choice != SRV_TOOL_CHOICE_NAMED) return 0;
    gr_builder *b;
    if (gr_builder_new(&b, NULL)) return srv_api_fail(e, 503, NULL, "out of memory");
    int root = gr_b_rule(b, "root"), rc = root < 0 ? root : 0;
    int call = rc ? rc : call_rule(b, t);
    if (call < 0) rc = call;
    if (!rc && t->format == SRV_TOOLS_LLAMA3) {
        rc = gr_b_ref(b, root, call);
    } else if (!rc) {
        int block = gr_b_rule(b, NULL); /* <tool_call>\n CALL \n</tool_call> */
        rc = block < 0 ? block : gr_b_lit(b, block, "<tool_call>\n", strlen("<tool_call>\n"));
        if (!rc) rc = gr_b_ref(b, block, call);
        if (!rc) rc = gr_b_lit(b, block, "\n</tool_call>", strlen("\n</tool_call>"));
        if (!rc) rc = gr_b_ref(b, root, block);
        if (!rc && t->parallel) {
            int more = gr_b_rule(b, NULL), rep;
            rc = more < 0 ? more : gr_b_lit(b, more, "\n", 1);
            if (!rc) rc = gr_b_ref(b, more, block);
            rep = rc ? rc : gr_b_repeat(b, more, 0, SRV_TOOLS_MAX_CALLS - 1);
            if (rep < 0) rc = rep;
            else rc = gr_b_ref(b, root, rep);
        }
    }
    char err[300];
    if (rc) rc = ni_fail(err, sizeof err, rc, "%s", gr_builder_error(b));
    else rc = gr_b_finish(b, root, out, err, sizeof err);
    gr_builder_free(b);
    if (rc == NI_ENOMEM) return srv_api_fail(e, 503, NULL, "out of memory compiling the tools");
    if (rc) return srv_api_fail(e, 400, "tools", "tools: a function's parameters: %s", err);
    return 0;
}

/* ---- parsing ---- */

/* Parses one call object; 1 with *c filled, 0 when it is not a call to a
 * declared function, NI_ENOMEM. */
static int parse_call(const srv_tools *t, const char *s, size_t n, srv_tool_call *c) {
    json_error_t je;
    json_t *o = json_loadb(s, n, 0, &je);
    if (!json_is_object(o)) {
        json_decref(o);
        return 0;
    }
    const char *name = json_string_value(json_object_get(o, "name"));
    json_t *args = json_object_get(o, "arguments");
    if (!args) args = json_object_get(o, "parameters");
    int ok = name && find_tool(t, name) && (!args || json_is_object(args) || json_is_string(args));
    if (!ok) {
        json_decref(o);
        return 0;
    }
    char *a = NULL;
    if (!args) a = strdup("{}");
    else if (json_is_string(args)) a = strdup(json_string_value(args));
    else a = json_dumps(args, JSON_PRESERVE_ORDER); /* ", " and ": " like Python's json.dumps */
    c->name = strdup(name);
    c->arguments = a;
    json_decref(o);
    if (!c->name || !c->arguments) {
        srv_tool_call_free(c);
        return NI_ENOMEM;
    }
    return 1;
}

static size_t trim_l(const char *s, size_t n) {
    size_t i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r')) i++;
    return i;
}

static size_t trim_r(const char *s, size_t n) {
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\t' || s[n - 1] == '\r')) n--;
    return n;
}

static const char *find(const char *s, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(s + i, needle, k)) return s + i;
    return NULL;
}

/* Growable content buffer. */
typedef struct cbuf {
    char *p;
    size_t n, cap;
    int oom;
} cbuf;

static void cb_add(cbuf *b, const char *s, size_t n) {
    if (b->oom || n == 0) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

int srv_tools_extract(const srv_tools *t, const char *text, size_t len, srv_tool_call *calls,
                      int *n_calls, char **content) {
    *n_calls = 0;
    *content = NULL;
    cbuf out = {0};
    if (t->format == SRV_TOOLS_LLAMA3) {
        size_t a = trim_l(text, len), z = trim_r(text, len);
        int rc = a < z && text[a] == '{' ? parse_call(t, text + a, z - a, &calls[0]) : 0;
        if (rc < 0) return rc;
        if (rc == 1) *n_calls = 1;
        else cb_add(&out, text, len);
    } else {
        const char *p = text, *end = text + len;
        while (p < end) {
            const char *o = find(p, (size_t)(end - p), OPEN);
            if (!o || *n_calls == SRV_TOOLS_MAX_CALLS) {
                cb_add(&out, p, (size_t)(end - p));
                break;
            }
            const char *in = o + strlen(OPEN), *c = find(in, (size_t)(end - in), CLOSE);
            const char *in_end = c ? c : end, *next = c ? c + strlen(CLOSE) : end;
            int rc = parse_call(t, in, (size_t)(in_end - in), &calls[*n_calls]);
            if (rc < 0) return rc;
            if (rc == 1) {
                (*n_calls)++;
                cb_add(&out, p, (size_t)(o - p));
            } else {
                cb_add(&out, p, (size_t)(next - p));
            }
            p = next;
        }
    }
    if (out.oom) {
        free(out.p);
        return NI_ENOMEM;
    }
    if (*n_calls > 0 && out.p) { /* the text around calls is usually just newlines */
        size_t a = trim_l(out.p, out.n), z = trim_r(out.p, out.n);
        memmove(out.p, out.p + a, z > a ? z - a : 0);
        out.n = z > a ? z - a : 0;
        out.p[out.n] = 0;
    }
    *content = out.p ? out.p : strdup("");
    return *content ? 0 : NI_ENOMEM;
}

/* ---- streaming ---- */

void srv_tool_stream_init(srv_tool_stream *s, const srv_tools *t) {
    memset(s, 0, sizeof *s);
    s->t = t;
}

void srv_tool_stream_free(srv_tool_stream *s) {
    free(s->buf);
    memset(s, 0, sizeof *s);
}

static void consume(srv_tool_stream *s, size_t n) {
    memmove(s->buf, s->buf + n, s->len - n);
    s->len -= n;
}

/* Length of the longest suffix of buf that is a proper prefix of OPEN. */
static size_t open_prefix(const char *buf, size_t n) {
    size_t k = strlen(OPEN) - 1;
    for (size_t l = NI_MIN(k, n); l > 0; l--)
        if (!memcmp(buf + n - l, OPEN, l)) return l;
    return 0;
}

int srv_tool_stream_push(srv_tool_stream *s, const char *text, size_t len, int final,
                         char **content, size_t *content_len, srv_tool_call *calls,
                         int *n_calls) {
    if (s->len + len + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->len + len + 1) cap *= 2;
        char *p = realloc(s->buf, cap);
        if (!p) return NI_ENOMEM;
        s->buf = p;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, text, len);
    s->len += len;
    cbuf out = {*content, *content_len, *content ? *content_len + 1 : 0, 0};
    const srv_tools *t = s->t;
    if (t->format == SRV_TOOLS_LLAMA3) {
        if (!s->started) {
            size_t a = trim_l(s->buf, s->len);
            if (a < s->len) {
                s->started = 1;
                s->json = s->buf[a] == '{';
            }
        }
        if (s->started && !s->json) {
            cb_add(&out, s->buf, s->len);
            s->len = 0;
        } else if (final) {
            srv_tool_call one[1];
            int n = 0;
            char *rest = NULL;
            int rc = srv_tools_extract(t, s->buf, s->len, one, &n, &rest);
            if (rc) return rc;
            if (n == 1 && *n_calls < SRV_TOOLS_MAX_CALLS) calls[(*n_calls)++] = one[0];
            else if (n == 1) srv_tool_call_free(&one[0]);
            cb_add(&out, rest, strlen(rest));
            free(rest);
            s->len = 0;
        }
    } else {
        for (;;) {
            if (!s->in_call) {
                const char *o = find(s->buf, s->len, OPEN);
                if (o) { /* the space before the tag goes with the call: dropped if it is one */
                    size_t before = (size_t)(o - s->buf), text = trim_r(s->buf, before);
                    cb_add(&out, s->buf, text);
                    s->lead = before - text;
                    consume(s, text);
                    memmove(s->buf + s->lead, s->buf + s->lead + strlen(OPEN),
                            s->len - s->lead - strlen(OPEN));
                    s->len -= strlen(OPEN);
                    s->in_call = 1;
                    continue;
                }
                size_t keep = s->len - (final ? 0 : open_prefix(s->buf, s->len));
                if (!final) /* trailing space may still turn out to precede a call */
                    while (keep > 0 && strchr(" \n\t\r", s->buf[keep - 1])) keep--;
                cb_add(&out, s->buf, keep);
                consume(s, keep);
                break;
            }
            const char *body = s->buf + s->lead;
            const char *c = find(body, s->len - s->lead, CLOSE);
            if (!c && !final) break;
            size_t in_len = c ? (size_t)(c - body) : s->len - s->lead;
            int rc = *n_calls < SRV_TOOLS_MAX_CALLS ? parse_call(t, body, in_len, &calls[*n_calls]) : 0;
            if (rc < 0) return rc;
            size_t used = c ? in_len + strlen(CLOSE) : in_len;
            if (rc == 1) {
                (*n_calls)++;
            } else { /* not a call after all: it was text */
                cb_add(&out, s->buf, s->lead);
                cb_add(&out, OPEN, strlen(OPEN));
                cb_add(&out, body, used);
            }
            consume(s, s->lead + used);
            s->lead = 0;
            s->in_call = 0;
            if (!c) break;
        }
    }
    if (out.oom) return NI_ENOMEM;
    *content = out.p;
    *content_len = out.n;
    return 0;
}
