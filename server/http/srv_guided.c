/*
 * srv_guided.c - structured-output parameters -> gr_grammar (see srv_guided.h).
 */
#include "srv_guided.h"

#include <string.h>

#include "engine/util/util.h"

/* One structured-output source: which parameter, and what it asks. */
typedef enum guided_kind {
    GUIDED_NONE = 0,
    GUIDED_OBJECT,  /* any JSON object */
    GUIDED_SCHEMA,  /* val: a JSON Schema */
    GUIDED_REGEX,   /* val: a string */
    GUIDED_CHOICE,  /* val: an array of strings */
    GUIDED_GRAMMAR, /* val: GBNF text */
} guided_kind;

typedef struct guided {
    guided_kind kind;
    const json_t *val;
    char param[64];
} guided;

static int set_source(guided *g, guided_kind kind, const json_t *val, const char *param,
                      srv_api_error *e) {
    if (g->kind != GUIDED_NONE)
        return srv_api_fail(e, 400, param, "'%s' and '%s' cannot be combined: pass one", g->param,
                            param);
    g->kind = kind;
    g->val = val;
    snprintf(g->param, sizeof g->param, "%s", param);
    return 0;
}

static int read_response_format(const json_t *body, guided *g, srv_api_error *e) {
    const json_t *rf = json_object_get(body, "response_format");
    if (!rf || json_is_null(rf)) return 0;
    const json_t *t = json_object_get(rf, "type");
    if (!json_is_object(rf) || !json_is_string(t))
        return srv_api_fail(e, 400, "response_format",
                            "'response_format' must be an object with a string 'type'");
    const char *type = json_string_value(t);
    if (!strcmp(type, "text")) return 0;
    if (!strcmp(type, "json_object")) {
        const json_t *s = json_object_get(rf, "schema");
        if (s && !json_is_null(s)) return set_source(g, GUIDED_SCHEMA, s, "response_format", e);
        return set_source(g, GUIDED_OBJECT, NULL, "response_format", e);
    }
    if (!strcmp(type, "json_schema")) {
        const json_t *js = json_object_get(rf, "json_schema");
        if (!json_is_object(js))
            return srv_api_fail(e, 400, "response_format",
                                "response_format.json_schema must be an object with a 'schema'");
        const json_t *s = json_object_get(js, "schema");
        if (!s || json_is_null(s))
            return srv_api_fail(e, 400, "response_format",
                                "response_format.json_schema.schema is required");
        const json_t *strict = json_object_get(js, "strict");
        if (strict && !json_is_boolean(strict) && !json_is_null(strict))
            return srv_api_fail(e, 400, "response_format",
                                "response_format.json_schema.strict must be a boolean");
        return set_source(g, GUIDED_SCHEMA, s, "response_format", e);
    }
    return srv_api_fail(e, 400, "response_format",
                        "response_format.type must be 'text', 'json_object' or 'json_schema', "
                        "not '%.40s'",
                        type);
}

/* guided_* (prefix "guided_") or structured_outputs.* (prefix NULL: keys json,
 * regex, choice, grammar inside obj). */
static int read_vllm(const json_t *obj, const char *prefix, guided *g, srv_api_error *e) {
    static const struct {
        const char *key;
        guided_kind kind;
    } keys[] = {{"json", GUIDED_SCHEMA}, {"regex", GUIDED_REGEX}, {"choice", GUIDED_CHOICE},
                {"grammar", GUIDED_GRAMMAR}};
    for (size_t i = 0; i < NI_ARRAY_LEN(keys); i++) {
        char name[64];
        snprintf(name, sizeof name, "%s%s", prefix ? prefix : "structured_outputs.",
                 keys[i].key);
        const json_t *v = json_object_get(obj, prefix ? name : keys[i].key);
        if (!v || json_is_null(v)) continue;
        if (set_source(g, keys[i].kind, v, name, e)) return -1;
    }
    return 0;
}

static int compile(const guided *g, gr_grammar **out, srv_api_error *e) {
    char err[300] = "";
    int rc = 0;
    json_t *parsed = NULL;
    const json_t *v = g->val;
    switch (g->kind) {
    case GUIDED_NONE: return 0;
    case GUIDED_OBJECT: rc = gr_compile_json_object(NULL, out, err, sizeof err); break;
    case GUIDED_SCHEMA:
        if (json_is_string(v)) { /* vLLM accepts the schema as a JSON string */
            json_error_t je;
            parsed = json_loads(json_string_value(v), JSON_DECODE_ANY, &je);
            if (!parsed)
                return srv_api_fail(e, 400, g->param, "'%s' is not valid JSON: %s", g->param,
                                    je.text);
            v = parsed;
        }
        if (!json_is_object(v) && !json_is_boolean(v)) {
            json_decref(parsed);
            return srv_api_fail(e, 400, g->param, "'%s': the schema must be a JSON object",
                                g->param);
        }
        rc = gr_compile_schema(v, NULL, out, err, sizeof err);
        json_decref(parsed);
        break;
    case GUIDED_REGEX:
        if (!json_is_string(v))
            return srv_api_fail(e, 400, g->param, "'%s' must be a string", g->param);
        rc = gr_compile_regex(json_string_value(v), json_string_length(v), NULL, out, err,
                              sizeof err);
        break;
    case GUIDED_GRAMMAR:
        if (!json_is_string(v))
            return srv_api_fail(e, 400, g->param, "'%s' must be a string", g->param);
        rc = gr_compile_gbnf(json_string_value(v), json_string_length(v), NULL, out, err,
                             sizeof err);
        break;
    case GUIDED_CHOICE: {
        size_t n = json_array_size(v);
        if (!json_is_array(v) || n == 0 || n > 4096)
            return srv_api_fail(e, 400, g->param, "'%s' must be an array of 1..4096 strings",
                                g->param);
        const char **s = malloc(n * sizeof *s);
        size_t *l = malloc(n * sizeof *l);
        if (!s || !l) {
            free(s);
            free(l);
            return srv_api_fail(e, 500, NULL, "out of memory");
        }
        size_t total = 0;
        for (size_t i = 0; i < n; i++) {
            const json_t *x = json_array_get(v, i);
            s[i] = json_string_value(x);
            l[i] = json_string_length(x);
            total += l[i];
            if (!s[i] || l[i] == 0) {
                free(s);
                free(l);
                return srv_api_fail(e, 400, g->param, "'%s' must list non-empty strings",
                                    g->param);
            }
        }
        if (total > 256 * 1024) rc = ni_fail(err, sizeof err, NI_ERANGE, "choices too long");
        else rc = gr_compile_choice(s, l, (int)n, NULL, out, err, sizeof err);
        free(s);
        free(l);
        break;
    }
    }
    if (rc == NI_ENOMEM) return srv_api_fail(e, 503, NULL, "out of memory compiling '%s'", g->param);
    if (rc) return srv_api_fail(e, 400, g->param, "'%s': %s", g->param, err);
    return 0;
}

int srv_guided_parse(const json_t *body, gr_grammar **out, srv_api_error *err) {
    guided g = {GUIDED_NONE, NULL, ""};
    *out = NULL;
    const json_t *so = json_object_get(body, "structured_outputs");
    if (so && !json_is_null(so) && !json_is_object(so))
        return srv_api_fail(err, 400, "structured_outputs", "'structured_outputs' must be an object");
    if (read_response_format(body, &g, err) || read_vllm(body, "guided_", &g, err) ||
        (so && json_is_object(so) && read_vllm(so, NULL, &g, err)))
        return -1;
    return compile(&g, out, err);
}
