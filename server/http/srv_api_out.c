/*
 * srv_api_out.c - the response half of srv_api.h: finish reasons, token
 * strings, logprobs in both API shapes (completions: parallel arrays;
 * chat: content items with top_logprobs), usage, and SSE framing. Pure
 * functions of their inputs: no engine or connection state.
 */
#include "srv_api.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/util/util.h"

/* ---- responses ---- */

const char *srv_api_finish_reason(int finish) {
    switch (finish) {
    case ENG_FINISH_STOP: return "stop";
    case ENG_FINISH_LENGTH: return "length";
    case ENG_FINISH_ABORT: return "abort";
    case ENG_FINISH_ERROR: return "error";
    default: return NULL;
    }
}

int srv_api_token_str(const tok_tokenizer *tok, int32_t id, srv_buf *out) {
    char raw[1024];
    int n = tok_token_bytes(tok, id, raw, sizeof raw);
    if (n < 0) n = 0;
    if (n > (int)sizeof raw) n = (int)sizeof raw;
    if (srv_utf8_valid(raw, (size_t)n)) return srv_buf_append(out, raw, (size_t)n);
    int rc = srv_buf_append(out, "bytes:", 6);
    for (int i = 0; !rc && i < n; i++) rc = srv_buf_printf(out, "\\x%02x", (unsigned char)raw[i]);
    return rc;
}

static double finite_lp(float lp) { return isfinite(lp) ? (double)lp : -9999.0; }

/* {"token","logprob","bytes"} for chat entries. */
static json_t *chat_lp_item(const tok_tokenizer *tok, int32_t id, float lp) {
    srv_buf s = {0};
    char raw[1024];
    int n = tok_token_bytes(tok, id, raw, sizeof raw);
    if (n < 0) n = 0;
    if (n > (int)sizeof raw) n = (int)sizeof raw;
    json_t *o = json_object(), *bytes = json_array();
    if (!o || !bytes || srv_api_token_str(tok, id, &s)) {
        json_decref(o);
        json_decref(bytes);
        srv_buf_free(&s);
        return NULL;
    }
    for (int i = 0; i < n; i++) json_array_append_new(bytes, json_integer((unsigned char)raw[i]));
    json_object_set_new(o, "token", srv_json_stringn(srv_buf_ptr(&s), srv_buf_size(&s)));
    json_object_set_new(o, "logprob", json_real(finite_lp(lp)));
    json_object_set_new(o, "bytes", bytes);
    srv_buf_free(&s);
    return o;
}

int srv_lp_add(srv_lp *l, const tok_tokenizer *tok, const smp_result *r) {
    if (!l->obj) {
        l->obj = json_object();
        if (!l->obj) return NI_ENOMEM;
        if (l->kind == SRV_API_CHAT) {
            json_object_set_new(l->obj, "content", json_array());
            json_object_set_new(l->obj, "refusal", json_null());
        } else {
            json_object_set_new(l->obj, "tokens", json_array());
            json_object_set_new(l->obj, "token_logprobs", json_array());
            json_object_set_new(l->obj, "top_logprobs", json_array());
            json_object_set_new(l->obj, "text_offset", json_array());
        }
    }
    if (l->kind == SRV_API_CHAT) {
        json_t *it = chat_lp_item(tok, r->token, r->logprob), *tops = json_array();
        if (!it || !tops) {
            json_decref(it);
            json_decref(tops);
            return NI_ENOMEM;
        }
        for (int i = 0; i < r->n_top; i++)
            json_array_append_new(tops, chat_lp_item(tok, r->top[i].token, r->top[i].logprob));
        json_object_set_new(it, "top_logprobs", tops);
        json_array_append_new(json_object_get(l->obj, "content"), it);
        return 0;
    }
    srv_buf s = {0};
    if (srv_api_token_str(tok, r->token, &s)) {
        srv_buf_free(&s);
        return NI_ENOMEM;
    }
    json_array_append_new(json_object_get(l->obj, "tokens"),
                          srv_json_stringn(srv_buf_ptr(&s), srv_buf_size(&s)));
    json_array_append_new(json_object_get(l->obj, "token_logprobs"),
                          json_real(finite_lp(r->logprob)));
    json_array_append_new(json_object_get(l->obj, "text_offset"),
                          json_integer((json_int_t)l->text_offset));
    l->text_offset += srv_buf_size(&s);
    json_t *tops = json_object();
    for (int i = 0; tops && i < r->n_top; i++) {
        srv_buf_clear(&s);
        if (srv_api_token_str(tok, r->top[i].token, &s)) break;
        json_object_set_new(tops, srv_buf_cstr(&s), json_real(finite_lp(r->top[i].logprob)));
    }
    srv_buf_free(&s);
    json_array_append_new(json_object_get(l->obj, "top_logprobs"), tops ? tops : json_null());
    return 0;
}

json_t *srv_lp_take(srv_lp *l) {
    json_t *o = l->obj;
    l->obj = NULL;
    return o;
}

void srv_lp_free(srv_lp *l) {
    json_decref(l->obj);
    l->obj = NULL;
}

json_t *srv_api_usage(int prompt_tokens, int completion_tokens, int cached_tokens) {
    json_t *u = json_object(), *d = json_object();
    if (!u || !d) {
        json_decref(u);
        json_decref(d);
        return NULL;
    }
    json_object_set_new(u, "prompt_tokens", json_integer(prompt_tokens));
    json_object_set_new(u, "completion_tokens", json_integer(completion_tokens));
    json_object_set_new(u, "total_tokens", json_integer(prompt_tokens + completion_tokens));
    json_object_set_new(d, "cached_tokens", json_integer(cached_tokens));
    json_object_set_new(u, "prompt_tokens_details", d);
    return u;
}

json_t *srv_api_envelope(int kind, int chunk, const char *id, long long created,
                         const char *model) {
    json_t *o = json_object();
    if (!o) return NULL;
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "object",
                        json_string(kind == SRV_API_COMPLETION ? "text_completion"
                                    : chunk                    ? "chat.completion.chunk"
                                                               : "chat.completion"));
    json_object_set_new(o, "created", json_integer(created));
    json_object_set_new(o, "model", srv_json_stringn(model, strlen(model)));
    json_object_set_new(o, "system_fingerprint", json_null());
    return o;
}

json_t *srv_api_choice(int kind, int chunk, int index, const char *text, size_t len, int with_role,
                       json_t *logprobs, const char *finish) {
    json_t *c = json_object();
    if (!c) {
        json_decref(logprobs);
        return NULL;
    }
    json_object_set_new(c, "index", json_integer(index));
    if (kind == SRV_API_COMPLETION) {
        json_object_set_new(c, "text", srv_json_stringn(text ? text : "", text ? len : 0));
    } else {
        json_t *m = json_object();
        if (!chunk || with_role) json_object_set_new(m, "role", json_string("assistant"));
        if (!chunk || text)
            json_object_set_new(m, "content", srv_json_stringn(text ? text : "", text ? len : 0));
        json_object_set_new(c, chunk ? "delta" : "message", m);
    }
    json_object_set_new(c, "logprobs", logprobs ? logprobs : json_null());
    json_object_set_new(c, "finish_reason", finish ? json_string(finish) : json_null());
    return c;
}

json_t *srv_api_choice_reasoning(json_t *choice, int chunk, const char *reasoning, size_t len,
                                 int content_empty) {
    json_t *m = json_object_get(choice, chunk ? "delta" : "message");
    if (!m) return choice;
    if (chunk) {
        if (len) json_object_set_new(m, "reasoning_content", srv_json_stringn(reasoning, len));
        return choice;
    }
    json_object_set_new(m, "reasoning_content",
                        len ? srv_json_stringn(reasoning, len) : json_null());
    if (content_empty) json_object_set_new(m, "content", json_null());
    return choice;
}

json_t *srv_api_choice_tool_calls(json_t *choice, int chunk, const srv_tool_call *calls,
                                  const char *const *ids, int n, int first_index) {
    json_t *m = json_object_get(choice, chunk ? "delta" : "message");
    json_t *arr = json_array();
    if (!m || !arr) {
        json_decref(arr);
        return choice;
    }
    for (int i = 0; i < n; i++) {
        json_t *tc = json_object(), *f = json_object();
        if (!tc || !f) {
            json_decref(tc);
            json_decref(f);
            break;
        }
        json_object_set_new(f, "name", json_string(calls[i].name));
        json_object_set_new(f, "arguments", srv_json_stringn(calls[i].arguments, strlen(calls[i].arguments)));
        if (chunk) json_object_set_new(tc, "index", json_integer(first_index + i));
        json_object_set_new(tc, "id", json_string(ids[i]));
        json_object_set_new(tc, "type", json_string("function"));
        json_object_set_new(tc, "function", f);
        json_array_append_new(arr, tc);
    }
    json_object_set_new(m, "tool_calls", arr);
    if (!chunk) {
        json_t *c = json_object_get(m, "content");
        if (json_is_string(c) && json_string_length(c) == 0)
            json_object_set_new(m, "content", json_null());
    }
    return choice;
}

int srv_sse_event(srv_buf *out, const json_t *obj) {
    char *s = obj ? json_dumps(obj, SRV_JSON_FLAGS) : NULL;
    if (!s) return NI_ENOMEM;
    int rc = srv_buf_printf(out, "data: %s\n\n", s); /* all or nothing */
    free(s);
    return rc;
}

int srv_sse_done(srv_buf *out) { return srv_buf_append(out, "data: [DONE]\n\n", 14); }
