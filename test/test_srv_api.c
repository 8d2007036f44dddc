/*
 * test_srv_api.c - the OpenAI request/response layer without sockets:
 * parsing and validation of /v1/completions and /v1/chat/completions bodies
 * (every parameter, every error naming its param, which error a body with
 * several reports), chat templating and tokenization, /tokenize and
 * /detokenize, the JSON shapes of responses, SSE framing, logprobs formats,
 * plus the helpers they rest on (bounded buffers, UTF-8 repair, constant-time
 * compare) and the Prometheus text.
 *
 * Links the server library (libnanoinfer_srv.a). Uses the committed tiny-llama3 model (BPE tokenizer,
 * Llama-3 chat template, context 512, vocab 405).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/http/srv_api.h"
#include "tokenizer/chat.h"
#include "engine/util/util.h"
#include "server/http/srv_metrics.h"
#include "server/http/srv_util.h"

#define MODEL_DIR "test/models/tiny-llama3"

static mdl_model g_m;
static srv_api_ctx g_ctx;

static int setup(void **state) {
    (void)state;
    char err[256];
    if (mdl_load(&g_m, MODEL_DIR, err, sizeof err)) {
        fprintf(stderr, "cannot load %s: %s\n", MODEL_DIR, err);
        return -1;
    }
    g_ctx.tok = g_m.tok;
    g_ctx.chat_style = chat_detect(g_m.chat_template);
    g_ctx.vocab = g_m.cfg.vocab_size;
    g_ctx.max_seq_len = g_m.cfg.max_seq_len;
    g_ctx.kv_tokens = 0;
    g_ctx.max_tokens_default = 4096;
    g_ctx.max_n = ENG_MAX_N;
    g_ctx.model_name = "tiny";
    g_ctx.model_path = MODEL_DIR;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    mdl_free(&g_m);
    return 0;
}

/* Parses a JSON literal as a request of kind; returns the parse result. */
static int parse(int kind, const char *json, srv_gen_req *r, srv_api_error *e) {
    json_error_t je;
    json_t *j = json_loads(json, JSON_ALLOW_NUL, &je);
    if (!j) fail_msg("bad test JSON: %s: %s", json, je.text);
    int rc = srv_api_parse_gen(&g_ctx, kind, j, r, e);
    json_decref(j);
    return rc;
}

static int encode(const char *text, int bos, int32_t *ids, int cap) {
    return tok_encode(g_m.tok, text, strlen(text), bos, 1, ids, cap);
}

/* ---- completions ---- */

static void test_completion_defaults(void **state) {
    (void)state;
    srv_gen_req r;
    srv_api_error e;
    assert_int_equal(parse(SRV_API_COMPLETION, "{\"prompt\": \"hello world\"}", &r, &e), 0);
    int32_t ids[64];
    int n = encode("hello world", tok_add_bos(g_m.tok), ids, 64);
    assert_int_equal(r.n_prompt, n);
    assert_memory_equal(r.prompt, ids, (size_t)n * sizeof(int32_t));
    assert_int_equal(r.max_tokens, 512 - n); /* context left, under max-tokens-default */
    assert_int_equal(r.n, 1);
    assert_int_equal(r.stream, 0);
    assert_int_equal(r.logprobs, -1);
    assert_float_equal(r.sp.temperature, 1.0f, 0);
    assert_float_equal(r.sp.top_p, 1.0f, 0);
    assert_int_equal(r.sp.has_seed, 0);
    assert_int_equal(r.n_stop, 0);
    assert_null(r.echo_text);
    srv_gen_req_free(&r);

    g_ctx.max_tokens_default = 16;
    assert_int_equal(parse(SRV_API_COMPLETION, "{\"prompt\": \"hello\"}", &r, &e), 0);
    assert_int_equal(r.max_tokens, 16);
    srv_gen_req_free(&r);
    g_ctx.max_tokens_default = 4096;
    g_ctx.kv_tokens = 100; /* the KV pool is smaller than the context */
    assert_int_equal(parse(SRV_API_COMPLETION, "{\"prompt\": \"hello\"}", &r, &e), 0);
    assert_int_equal(r.max_tokens + r.n_prompt, 100);
    srv_gen_req_free(&r);
    g_ctx.kv_tokens = 0;
}

static void test_completion_prompt_forms(void **state) {
    (void)state;
    srv_gen_req r;
    srv_api_error e;
    assert_int_equal(parse(SRV_API_COMPLETION, "{\"prompt\": [5, 6, 7], \"echo\": true}", &r, &e), 0);
    assert_int_equal(r.n_prompt, 3);
    assert_int_equal(r.prompt[0], 5);
    assert_int_equal(r.prompt[2], 7);
    assert_non_null(r.echo_text); /* decoded prompt */
    srv_gen_req_free(&r);
    assert_int_equal(parse(SRV_API_COMPLETION, "{\"prompt\": [[9, 10]]}", &r, &e), 0);
    assert_int_equal(r.n_prompt, 2);
    assert_int_equal(r.prompt[1], 10);
    srv_gen_req_free(&r);
    assert_int_equal(parse(SRV_API_COMPLETION, "{\"prompt\": [\"abc\"], \"echo\": true}", &r, &e), 0);
    assert_string_equal(r.echo_text, "abc");
    assert_int_equal(r.echo_len, 3);
    srv_gen_req_free(&r);
}

static void test_sampling_params(void **state) {
    (void)state;
    srv_gen_req r;
    srv_api_error e;
    assert_int_equal(
        parse(SRV_API_COMPLETION,
              "{\"prompt\": \"x\", \"temperature\": 0.5, \"top_p\": 0.9, \"top_k\": 40, "
              "\"min_p\": 0.05, \"presence_penalty\": 0.5, \"frequency_penalty\": -0.5, "
              "\"repetition_penalty\": 1.1, \"seed\": -7, \"logit_bias\": {\"3\": 5, \"7\": -100}, "
              "\"stop\": [\"a\", \"\", \"bc\"], \"stop_token_ids\": [1, 2], \"ignore_eos\": true, "
              "\"n\": 3, \"best_of\": 3, \"logprobs\": 4, \"max_tokens\": 9, \"stream\": true, "
              "\"stream_options\": {\"include_usage\": true}, \"user\": \"ignored\"}",
              &r, &e),
        0);
    assert_float_equal(r.sp.temperature, 0.5f, 0);
    assert_float_equal(r.sp.top_p, 0.9f, 0);
    assert_int_equal(r.sp.top_k, 40);
    assert_float_equal(r.sp.min_p, 0.05f, 0);
    assert_float_equal(r.sp.presence_penalty, 0.5f, 0);
    assert_float_equal(r.sp.frequency_penalty, -0.5f, 0);
    assert_float_equal(r.sp.repetition_penalty, 1.1f, 1e-7);
    assert_int_equal(r.sp.has_seed, 1);
    assert_true(r.sp.seed == (uint64_t)(int64_t)-7);
    assert_int_equal(r.sp.n_logit_bias, 2);
    assert_ptr_equal(r.sp.logit_bias, r.bias);
    assert_int_equal(r.n_stop, 2); /* the empty string is ignored */
    assert_string_equal(r.stop[0], "a");
    assert_string_equal(r.stop[1], "bc");
    assert_int_equal(r.n_stop_ids, 2);
    assert_int_equal(r.ignore_eos, 1);
    assert_int_equal(r.n, 3);
    assert_int_equal(r.logprobs, 4);
    assert_int_equal(r.sp.logprobs, 4);
    assert_int_equal(r.max_tokens, 9);
    assert_int_equal(r.stream, 1);
    assert_int_equal(r.include_usage, 1);

    eng_request q;
    srv_gen_req_to_eng(&r, 42, &r, 1234, &q);
    assert_true(q.id == 42);
    assert_ptr_equal(q.user, &r);
    assert_ptr_equal(q.prompt, r.prompt);
    assert_int_equal(q.n_prompt, r.n_prompt);
    assert_int_equal(q.max_tokens, 9);
    assert_int_equal(q.n, 3);
    assert_int_equal(q.ignore_eos, 1);
    assert_int_equal(q.n_stop, 2);
    assert_ptr_equal(q.stop[1], r.stop[1]);
    assert_int_equal(q.n_stop_ids, 2);
    assert_int_equal(q.stop_ids[1], 2);
    assert_true(q.fallback_seed == 1234);
    assert_int_equal(q.sp.top_k, 40);
    srv_gen_req_free(&r);

    /* a single stop string, integral reals for ints, nulls as absent */
    assert_int_equal(parse(SRV_API_COMPLETION,
                           "{\"prompt\": \"x\", \"stop\": \"\\n\", \"max_tokens\": 4.0, \"n\": null, "
                           "\"temperature\": null, \"seed\": null}",
                           &r, &e),
                     0);
    assert_int_equal(r.n_stop, 1);
    assert_string_equal(r.stop[0], "\n");
    assert_int_equal(r.max_tokens, 4);
    assert_int_equal(r.n, 1);
    assert_float_equal(r.sp.temperature, 1.0f, 0);
    assert_int_equal(r.sp.has_seed, 0);
    srv_gen_req_free(&r);

    /* the server's defaults (srv_config_sampling) fill what the request leaves
     * out, null included; what it gives wins */
    smp_params d = smp_params_default();
    d.temperature = 0;
    d.top_p = 0.5f;
    d.top_k = 7;
    g_ctx.sp_default = &d;
    assert_int_equal(parse(SRV_API_COMPLETION,
                           "{\"prompt\": \"x\", \"top_p\": 0.8, \"temperature\": null}", &r, &e),
                     0);
    g_ctx.sp_default = NULL;
    assert_float_equal(r.sp.temperature, 0.0f, 0);
    assert_float_equal(r.sp.top_p, 0.8f, 0);
    assert_int_equal(r.sp.top_k, 7);
    assert_float_equal(r.sp.min_p, 0.0f, 0);
    srv_gen_req_free(&r);
}

typedef struct bad_case {
    int kind;
    const char *body;
    int status;
    const char *param; /* NULL: null */
} bad_case;

static void test_rejections(void **state) {
    (void)state;
    static const bad_case cases[] = {
        {SRV_API_COMPLETION, "[]", 400, NULL},
        {SRV_API_COMPLETION, "{}", 400, "prompt"},
        {SRV_API_COMPLETION, "{\"prompt\": null}", 400, "prompt"},
        {SRV_API_COMPLETION, "{\"prompt\": 5}", 400, "prompt"},
        {SRV_API_COMPLETION, "{\"prompt\": {}}", 400, "prompt"},
        {SRV_API_COMPLETION, "{\"prompt\": []}", 400, "prompt"},
        {SRV_API_COMPLETION, "{\"prompt\": \"\"}", 400,
         "prompt"}, /* no BOS in this tokenizer's config? see below */
        {SRV_API_COMPLETION, "{\"prompt\": [\"a\", \"b\"]}", 400, "prompt"},
        {SRV_API_COMPLETION, "{\"prompt\": [1, \"b\"]}", 400, "prompt"},
        {SRV_API_COMPLETION, "{\"prompt\": [1, -1]}", 400, "prompt"},
        {SRV_API_COMPLETION, "{\"prompt\": [405]}", 400, "prompt"},
        {SRV_API_COMPLETION, "{\"prompt\": [1.5]}", 400, "prompt"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"model\": \"other\"}", 404, "model"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"model\": 3}", 400, "model"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"suffix\": \"y\"}", 400, "suffix"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"temperature\": \"1\"}", 400, "temperature"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"temperature\": -0.1}", 400, "temperature"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"temperature\": 101}", 400, "temperature"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"top_p\": 0}", 400, "top_p"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"top_p\": 1.5}", 400, "top_p"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"top_k\": -5}", 400, "top_k"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"top_k\": 2.5}", 400, "top_k"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"min_p\": 2}", 400, "min_p"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"presence_penalty\": 3}", 400, "presence_penalty"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"frequency_penalty\": -3}", 400, "frequency_penalty"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"repetition_penalty\": 0}", 400, "repetition_penalty"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"repetition_penalty\": true}", 400, "repetition_penalty"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"seed\": \"1\"}", 400, "seed"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"seed\": 0.5}", 400, "seed"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"max_tokens\": 0}", 400, "max_tokens"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"max_tokens\": -1}", 400, "max_tokens"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"max_tokens\": \"5\"}", 400, "max_tokens"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"max_tokens\": 511}", 400, "max_tokens"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"n\": 0}", 400, "n"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"n\": 17}", 400, "n"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"best_of\": 2}", 400, "best_of"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"logprobs\": 21}", 400, "logprobs"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"logprobs\": -1}", 400, "logprobs"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"logprobs\": true}", 400, "logprobs"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"logprobs\": 1, \"echo\": true}", 400, "echo"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"echo\": 1}", 400, "echo"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"stream\": \"yes\"}", 400, "stream"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"stream_options\": {\"include_usage\": true}}", 400,
         "stream_options"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"stream\": true, \"stream_options\": 1}", 400,
         "stream_options"},
        {SRV_API_COMPLETION,
         "{\"prompt\": \"x\", \"stream\": true, \"stream_options\": {\"include_usage\": 1}}", 400,
         "stream_options.include_usage"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"stop\": 5}", 400, "stop"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"stop\": [\"a\", 5]}", 400, "stop"},
        {SRV_API_COMPLETION,
         "{\"prompt\": \"x\", \"stop\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]}", 400,
         "stop"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"stop_token_ids\": [405]}", 400, "stop_token_ids"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"stop_token_ids\": 3}", 400, "stop_token_ids"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"logit_bias\": []}", 400, "logit_bias"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"logit_bias\": {\"abc\": 1}}", 400, "logit_bias"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"logit_bias\": {\"405\": 1}}", 400, "logit_bias"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"logit_bias\": {\"-1\": 1}}", 400, "logit_bias"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"logit_bias\": {\"1\": 100.5}}", 400, "logit_bias"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"logit_bias\": {\"1\": \"2\"}}", 400, "logit_bias"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"ignore_eos\": \"no\"}", 400, "ignore_eos"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"min_tokens\": 3}", 400, "min_tokens"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"tools\": [{\"type\": \"function\"}]}", 400, "tools"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"response_format\": {\"type\": \"xml\"}}", 400,
         "response_format"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"schema\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"array\", \"uniqueItems\": true}}}}}}", 400,
         "response_format"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"x\"}}}", 400,
         "response_format"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"guided_regex\": \"(a\"}", 400, "guided_regex"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"guided_regex\": \"a\", \"guided_choice\": [\"b\"]}", 400, "guided_choice"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"guided_choice\": []}", 400, "guided_choice"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"guided_grammar\": \"root ::= root\"}", 400, "guided_grammar"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"guided_json\": \"{not json\"}", 400, "guided_json"},
        {SRV_API_COMPLETION, "{\"prompt\": \"x\", \"structured_outputs\": {\"regex\": 5}}", 400, "structured_outputs.regex"},
        {SRV_API_CHAT, "{}", 400, "messages"},
        {SRV_API_CHAT, "{\"messages\": []}", 400, "messages"},
        {SRV_API_CHAT, "{\"messages\": {}}", 400, "messages"},
        {SRV_API_CHAT, "{\"messages\": [1]}", 400, "messages[0]"},
        {SRV_API_CHAT, "{\"messages\": [{\"content\": \"hi\"}]}", 400, "messages[0]"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"function\", \"content\": \"hi\"}]}", 400, "messages[0]"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\", \"tool_calls\": [{\"function\": {\"name\": \"f\", \"arguments\": \"{}\"}}]}]}", 400, "messages[0]"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"function\": {\"name\": \"f\"}}]}]}", 400, "messages[0]"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}], \"tool_choice\": \"required\", \"response_format\": {\"type\": \"json_object\"}}", 400, "tool_choice"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {\"type\": \"object\", \"properties\": {\"a\": {\"not\": {}}}}}}], \"tool_choice\": \"required\"}", 400, "tools"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"user\"}]}", 400, "messages[0]"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", 400, "messages[0]"},
        {SRV_API_CHAT,
         "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": "
         "[{\"type\": \"image_url\", \"image_url\": {\"url\": \"x\"}}]}]}",
         400, "messages[1]"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\\u0000b\"}]}", 400,
         "messages[0]"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"logprobs\": 1}", 400,
         "logprobs"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"top_logprobs\": 2}",
         400, "top_logprobs"},
        {SRV_API_CHAT,
         "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"logprobs\": true, \"top_logprobs\": "
         "21}",
         400, "top_logprobs"},
        {SRV_API_CHAT,
         "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_completion_tokens\": 0}", 400,
         "max_completion_tokens"},
        {SRV_API_CHAT,
         "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_completion_tokens\": 500}", 400,
         "max_completion_tokens"},
        {SRV_API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"echo\": true}", 400,
         "echo"},
        {SRV_API_CHAT,
         "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"add_generation_prompt\": 1}", 400,
         "add_generation_prompt"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *c = &cases[i];
        if (!strcmp(c->body, "{\"prompt\": \"\"}") && tok_add_bos(g_m.tok))
            continue; /* BOS makes it non-empty */
        srv_gen_req r;
        srv_api_error e;
        memset(&e, 0, sizeof e);
        int rc = parse(c->kind, c->body, &r, &e);
        if (rc != -1 || e.status != c->status || strcmp(e.param, c->param ? c->param : ""))
            fail_msg("case %zu %s: rc %d status %d param '%s' message '%s'", i, c->body, rc, e.status,
                     e.param, e.message);
        assert_true(e.message[0] != 0);
        /* the failed request is left empty */
        assert_null(r.prompt);
        assert_null(r.bias);
        assert_int_equal(r.n_stop, 0);
        /* and the error renders in OpenAI's shape */
        json_t *j = srv_api_error_json(&e);
        json_t *in = json_object_get(j, "error");
        assert_true(json_is_string(json_object_get(in, "message")));
        assert_true(json_is_string(json_object_get(in, "type")));
        assert_non_null(json_object_get(in, "param"));
        assert_non_null(json_object_get(in, "code"));
        if (c->param)
            assert_string_equal(json_string_value(json_object_get(in, "param")), c->param);
        else
            assert_true(json_is_null(json_object_get(in, "param")));
        json_decref(j);
    }
}

static void test_long_prompt(void **state) {
    (void)state;
    /* a prompt that fills the context leaves no room: 400 on the prompt */
    json_t *arr = json_array();
    for (int i = 0; i < 512; i++) json_array_append_new(arr, json_integer(5));
    json_t *j = json_pack("{s:o}", "prompt", arr);
    srv_gen_req r;
    srv_api_error e;
    assert_int_equal(srv_api_parse_gen(&g_ctx, SRV_API_COMPLETION, j, &r, &e), -1);
    assert_int_equal(e.status, 400);
    assert_string_equal(e.param, "prompt");
    json_array_remove(arr, 0); /* 511 tokens: exactly one left */
    assert_int_equal(srv_api_parse_gen(&g_ctx, SRV_API_COMPLETION, j, &r, &e), 0);
    assert_int_equal(r.max_tokens, 1);
    srv_gen_req_free(&r);
    json_decref(j);
}

/* A body with several errors reports the first in parse order (model,
 * unsupported features, stream, sampling types, logit_bias, stop,
 * stop_token_ids, ignore_eos, n/best_of, logprobs/echo, sampling ranges,
 * max_tokens, prompt, context fit); the context messages keep their wording. */
static void test_error_order(void **state) {
    (void)state;
    static const struct {
        int kind;
        const char *body;
        int status;
        const char *param;
    } cases[] = {
        {SRV_API_COMPLETION, "{\"model\": \"nope\", \"suffix\": \"x\", \"prompt\": \"x\"}", 404, "model"},
        {SRV_API_COMPLETION, "{\"suffix\": \"x\", \"stream\": 1, \"prompt\": \"x\"}", 400, "suffix"},
        {SRV_API_COMPLETION, "{\"stream\": 1, \"temperature\": \"hot\", \"prompt\": \"x\"}", 400, "stream"},
        {SRV_API_COMPLETION, "{\"temperature\": \"hot\", \"logit_bias\": 1, \"prompt\": \"x\"}", 400,
         "temperature"},
        {SRV_API_COMPLETION, "{\"seed\": \"s\", \"logit_bias\": 1, \"prompt\": \"x\"}", 400, "seed"},
        {SRV_API_COMPLETION, "{\"logit_bias\": 1, \"stop\": 1, \"prompt\": \"x\"}", 400, "logit_bias"},
        {SRV_API_COMPLETION, "{\"stop\": 1, \"stop_token_ids\": 1, \"prompt\": \"x\"}", 400, "stop"},
        {SRV_API_COMPLETION, "{\"stop_token_ids\": 1, \"ignore_eos\": 1, \"prompt\": \"x\"}", 400,
         "stop_token_ids"},
        {SRV_API_COMPLETION, "{\"ignore_eos\": 1, \"n\": 0, \"prompt\": \"x\"}", 400, "ignore_eos"},
        {SRV_API_COMPLETION, "{\"n\": 0, \"logprobs\": 99, \"prompt\": \"x\"}", 400, "n"},
        {SRV_API_COMPLETION, "{\"n\": 2, \"best_of\": 3, \"logprobs\": 99, \"prompt\": \"x\"}", 400,
         "best_of"},
        {SRV_API_COMPLETION, "{\"logprobs\": 99, \"temperature\": 500, \"prompt\": \"x\"}", 400, "logprobs"},
        {SRV_API_COMPLETION, "{\"echo\": 1, \"temperature\": 500, \"prompt\": \"x\"}", 400, "echo"},
        {SRV_API_COMPLETION, "{\"temperature\": 500, \"max_tokens\": 0, \"prompt\": \"x\"}", 400,
         "temperature"},
        {SRV_API_COMPLETION, "{\"max_tokens\": 0, \"prompt\": 5}", 400, "max_tokens"},
        {SRV_API_COMPLETION, "{\"prompt\": 5, \"max_tokens\": 100000}", 400, "prompt"},
        {SRV_API_CHAT, "{\"top_logprobs\": 2, \"temperature\": 500, \"messages\": []}", 400, "top_logprobs"},
        {SRV_API_CHAT, "{\"max_completion_tokens\": 0, \"messages\": 1}", 400, "max_completion_tokens"},
        {SRV_API_CHAT, "{\"add_generation_prompt\": 1, \"messages\": 1}", 400, "add_generation_prompt"},
        {SRV_API_CHAT, "{\"max_tokens\": 100000, \"messages\": 1}", 400, "messages"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        srv_gen_req r;
        srv_api_error e;
        memset(&e, 0, sizeof e);
        int rc = parse(cases[i].kind, cases[i].body, &r, &e);
        if (rc != -1 || e.status != cases[i].status || strcmp(e.param, cases[i].param))
            fail_msg("case %zu %s: rc %d status %d param '%s' message '%s'", i, cases[i].body, rc, e.status,
                     e.param, e.message);
    }

    /* chat: max_completion_tokens wins, so max_tokens is not even read */
    srv_gen_req r;
    srv_api_error e;
    assert_int_equal(parse(SRV_API_CHAT,
                           "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], "
                           "\"max_completion_tokens\": 5, \"max_tokens\": 0}",
                           &r, &e),
                     0);
    assert_int_equal(r.max_tokens, 5);
    srv_gen_req_free(&r);

    /* the context messages, word for word */
    assert_int_equal(parse(SRV_API_COMPLETION, "{\"prompt\": [5, 6, 7], \"max_tokens\": 511}", &r, &e), -1);
    assert_string_equal(e.param, "max_tokens");
    assert_string_equal(e.message,
                        "This model's maximum context length is 512 tokens. However, you requested "
                        "514 tokens (3 in the prompt, 511 in the completion). Please reduce the "
                        "length of the prompt or completion.");
    json_t *arr = json_array();
    for (int i = 0; i < 512; i++) json_array_append_new(arr, json_integer(5));
    json_t *j = json_pack("{s:o}", "prompt", arr);
    assert_int_equal(srv_api_parse_gen(&g_ctx, SRV_API_COMPLETION, j, &r, &e), -1);
    assert_string_equal(e.message, "This model's maximum context length is 512 tokens. However, your prompt "
                                   "has 512 tokens; at least one token must remain for the completion.");
    json_decref(j);
    assert_int_equal(parse(SRV_API_CHAT,
                           "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], "
                           "\"max_completion_tokens\": 510}",
                           &r, &e),
                     -1);
    assert_string_equal(e.param, "max_completion_tokens");
    assert_non_null(strstr(e.message, " in the messages, 510 in the completion). Please reduce the length "
                                      "of the messages or completion."));

    /* a KV pool smaller than the context bounds the request too */
    g_ctx.kv_tokens = 100;
    assert_int_equal(parse(SRV_API_COMPLETION, "{\"prompt\": [5, 6, 7], \"max_tokens\": 98}", &r, &e), -1);
    assert_non_null(strstr(e.message, "maximum context length is 100 tokens"));
    assert_int_equal(parse(SRV_API_COMPLETION, "{\"prompt\": [5, 6, 7]}", &r, &e), 0);
    assert_int_equal(r.max_tokens, 97);
    srv_gen_req_free(&r);
    g_ctx.kv_tokens = 0;
}

/* ---- chat ---- */

static void test_chat_template(void **state) {
    (void)state;
    srv_gen_req r;
    srv_api_error e;
    assert_int_equal(parse(SRV_API_CHAT,
                           "{\"messages\": [{\"role\": \"developer\", \"content\": \"Be brief.\"}, "
                           "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Hello\"}, "
                           "{\"type\": \"text\", \"text\": \"there\"}]}], \"max_completion_tokens\": 7, "
                           "\"max_tokens\": 3, \"logprobs\": true, \"top_logprobs\": 3}",
                           &r, &e),
                     0);
    chat_msg msgs[2] = {{.role = "system", .content = "Be brief."}, {.role = "user", .content = "Hello\nthere"}};
    char *text = NULL;
    assert_int_equal(chat_render(g_ctx.chat_style, msgs, 2, 1, &text), 0);
    int32_t ids[256];
    int bos = tok_add_bos(g_m.tok) && !chat_has_bos_text(g_ctx.chat_style, text);
    int n = encode(text, bos, ids, 256);
    free(text);
    assert_int_equal(r.n_prompt, n);
    assert_memory_equal(r.prompt, ids, (size_t)n * sizeof(int32_t));
    assert_int_equal(r.max_tokens, 7); /* max_completion_tokens wins */
    assert_int_equal(r.logprobs, 3);
    assert_int_equal(r.kind, SRV_API_CHAT);
    srv_gen_req_free(&r);

    /* logprobs: true alone = the chosen token only; assistant content null is allowed */
    assert_int_equal(
        parse(SRV_API_CHAT,
              "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", "
              "\"content\": null}, {\"role\": \"user\", \"content\": \"b\"}], \"logprobs\": true}",
              &r, &e),
        0);
    assert_int_equal(r.logprobs, 0);
    srv_gen_req_free(&r);
}

static void test_tokenize_detokenize(void **state) {
    (void)state;
    srv_api_error e;
    json_t *b = json_pack("{s:s}", "prompt", "hello world");
    json_t *o = srv_api_tokenize(&g_ctx, b, &e);
    json_decref(b);
    assert_non_null(o);
    int32_t ids[64];
    int n = encode("hello world", tok_add_bos(g_m.tok), ids, 64);
    assert_int_equal(json_integer_value(json_object_get(o, "count")), n);
    assert_int_equal(json_integer_value(json_object_get(o, "max_model_len")), 512);
    json_t *toks = json_object_get(o, "tokens");
    assert_int_equal(json_array_size(toks), (size_t)n);
    for (int i = 0; i < n; i++) assert_int_equal(json_integer_value(json_array_get(toks, (size_t)i)), ids[i]);

    json_t *d = json_pack("{s:O}", "tokens", toks);
    json_t *p = srv_api_detokenize(&g_ctx, d, &e);
    assert_non_null(p);
    assert_string_equal(json_string_value(json_object_get(p, "prompt")), "hello world");
    json_decref(p);
    json_decref(d);
    json_decref(o);

    b = json_pack("{s:s,s:b}", "prompt", "hi", "add_special_tokens", 0);
    o = srv_api_tokenize(&g_ctx, b, &e);
    assert_non_null(o);
    assert_int_equal(json_integer_value(json_object_get(o, "count")), encode("hi", 0, ids, 64));
    json_decref(o);
    json_decref(b);

    b = json_pack("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", "hi");
    o = srv_api_tokenize(&g_ctx, b, &e);
    assert_non_null(o);
    assert_true(json_integer_value(json_object_get(o, "count")) > 3);
    json_decref(o);
    json_decref(b);

    static const char *const bad_tok[] = {"{}", "{\"prompt\": 3}",
                                          "{\"prompt\": \"x\", \"add_special_tokens\": 1}"};
    for (size_t i = 0; i < 3; i++) {
        b = json_loads(bad_tok[i], 0, NULL);
        assert_null(srv_api_tokenize(&g_ctx, b, &e));
        assert_int_equal(e.status, 400);
        json_decref(b);
    }
    static const char *const bad_detok[] = {"{}", "{\"tokens\": 3}", "{\"tokens\": [1, 999]}",
                                            "{\"tokens\": [\"a\"]}"};
    for (size_t i = 0; i < 4; i++) {
        b = json_loads(bad_detok[i], 0, NULL);
        assert_null(srv_api_detokenize(&g_ctx, b, &e));
        assert_int_equal(e.status, 400);
        assert_string_equal(e.param, "tokens");
        json_decref(b);
    }
    b = json_loads("{\"tokens\": []}", 0, NULL);
    p = srv_api_detokenize(&g_ctx, b, &e);
    assert_string_equal(json_string_value(json_object_get(p, "prompt")), "");
    json_decref(p);
    json_decref(b);
}

/* ---- responses ---- */

static char *dump(const json_t *j) { return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS); }

static void test_response_shapes(void **state) {
    (void)state;
    json_t *o = srv_api_envelope(SRV_API_COMPLETION, 0, "cmpl-1", 7, "tiny");
    json_t *arr = json_array();
    json_array_append_new(arr, srv_api_choice(SRV_API_COMPLETION, 0, 0, "hi", 2, 0, NULL, "length"));
    json_object_set_new(o, "choices", arr);
    json_object_set_new(o, "usage", srv_api_usage(3, 2, 1));
    char *s = dump(o);
    assert_string_equal(
        s, "{\"choices\":[{\"finish_reason\":\"length\",\"index\":0,\"logprobs\":null,\"text\":\"hi\"}],"
           "\"created\":7,\"id\":\"cmpl-1\",\"model\":\"tiny\",\"object\":\"text_completion\","
           "\"system_fingerprint\":null,\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":3,"
           "\"prompt_tokens_details\":{\"cached_tokens\":1},\"total_tokens\":5}}");
    free(s);
    json_decref(o);

    json_t *c = srv_api_choice(SRV_API_CHAT, 0, 1, "ok", 2, 0, NULL, "stop");
    s = dump(c);
    assert_string_equal(s, "{\"finish_reason\":\"stop\",\"index\":1,\"logprobs\":null,"
                           "\"message\":{\"content\":\"ok\",\"role\":\"assistant\"}}");
    free(s);
    json_decref(c);
    c = srv_api_choice(SRV_API_CHAT, 1, 0, "", 0, 1, NULL, NULL);
    s = dump(c);
    assert_string_equal(
        s, "{\"delta\":{\"content\":\"\",\"role\":\"assistant\"},\"finish_reason\":null,\"index\":0,"
           "\"logprobs\":null}");
    free(s);
    json_decref(c);
    c = srv_api_choice(SRV_API_CHAT, 1, 0, NULL, 0, 0, NULL, "length");
    s = dump(c);
    assert_string_equal(s, "{\"delta\":{},\"finish_reason\":\"length\",\"index\":0,\"logprobs\":null}");
    free(s);
    json_decref(c);
    o = srv_api_envelope(SRV_API_CHAT, 1, "chatcmpl-1", 7, "tiny");
    assert_string_equal(json_string_value(json_object_get(o, "object")), "chat.completion.chunk");
    json_decref(o);
    o = srv_api_envelope(SRV_API_CHAT, 0, "chatcmpl-1", 7, "tiny");
    assert_string_equal(json_string_value(json_object_get(o, "object")), "chat.completion");
    json_decref(o);

    assert_string_equal(srv_api_finish_reason(ENG_FINISH_STOP), "stop");
    assert_string_equal(srv_api_finish_reason(ENG_FINISH_LENGTH), "length");
    assert_null(srv_api_finish_reason(ENG_FINISH_NONE));

    /* invalid UTF-8 from a model never breaks the JSON */
    c = srv_api_choice(SRV_API_COMPLETION, 1, 0,
                       "a\xff"
                       "b",
                       3, 0, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(c, "text")), "a\xEF\xBF\xBD"
                                                                       "b");
    json_decref(c);
}

static void test_sse_framing(void **state) {
    (void)state;
    srv_buf b = {0};
    json_t *o = json_pack("{s:s}", "a", "x\ny");
    assert_int_equal(srv_sse_event(&b, o), 0);
    assert_int_equal(srv_sse_done(&b), 0);
    assert_string_equal(srv_buf_cstr(&b), "data: {\"a\":\"x\\ny\"}\n\ndata: [DONE]\n\n");
    /* a full buffer takes nothing of an event */
    srv_buf_free(&b);
    b.limit = 10;
    assert_int_equal(srv_sse_event(&b, o), NI_ERANGE);
    assert_int_equal(srv_buf_size(&b), 0);
    json_decref(o);
    srv_buf_free(&b);
}

static void test_logprobs_formats(void **state) {
    (void)state;
    smp_result r = {.token = 300, .logprob = -0.5f, .n_top = 2};
    r.top[0] = (smp_logprob){300, -0.5f};
    r.top[1] = (smp_logprob){301, -1.5f};
    srv_lp l = {.kind = SRV_API_COMPLETION, .text_offset = 4};
    assert_int_equal(srv_lp_add(&l, g_m.tok, &r), 0);
    r.logprob = -INFINITY; /* never emitted as a non-JSON number */
    assert_int_equal(srv_lp_add(&l, g_m.tok, &r), 0);
    json_t *o = srv_lp_take(&l);
    assert_null(srv_lp_take(&l));
    assert_int_equal(json_array_size(json_object_get(o, "tokens")), 2);
    assert_int_equal(json_array_size(json_object_get(o, "token_logprobs")), 2);
    assert_float_equal(json_real_value(json_array_get(json_object_get(o, "token_logprobs"), 0)), -0.5, 1e-6);
    assert_float_equal(json_real_value(json_array_get(json_object_get(o, "token_logprobs"), 1)), -9999.0, 0);
    json_t *off = json_object_get(o, "text_offset");
    assert_int_equal(json_integer_value(json_array_get(off, 0)), 4);
    srv_buf s = {0};
    srv_api_token_str(g_m.tok, 300, &s);
    assert_int_equal(json_integer_value(json_array_get(off, 1)), 4 + (json_int_t)srv_buf_size(&s));
    assert_true(json_object_size(json_array_get(json_object_get(o, "top_logprobs"), 0)) >= 1);
    char *txt = json_dumps(o, SRV_JSON_FLAGS);
    assert_non_null(txt);
    free(txt);
    json_decref(o);

    srv_lp c = {.kind = SRV_API_CHAT};
    r.logprob = -0.25f;
    assert_int_equal(srv_lp_add(&c, g_m.tok, &r), 0);
    o = srv_lp_take(&c);
    json_t *item = json_array_get(json_object_get(o, "content"), 0);
    assert_string_equal(json_string_value(json_object_get(item, "token")), srv_buf_cstr(&s));
    assert_float_equal(json_real_value(json_object_get(item, "logprob")), -0.25, 1e-6);
    assert_int_equal(json_array_size(json_object_get(item, "top_logprobs")), 2);
    assert_true(json_is_array(json_object_get(item, "bytes")));
    assert_true(json_is_null(json_object_get(o, "refusal")));
    json_decref(o);
    srv_buf_free(&s);

    /* token text: raw bytes when valid UTF-8, else OpenAI's "bytes:\xNN" */
    for (int32_t id = 0; id < g_ctx.vocab; id++) {
        srv_buf t = {0};
        assert_int_equal(srv_api_token_str(g_m.tok, id, &t), 0);
        assert_true(srv_utf8_valid(srv_buf_ptr(&t), srv_buf_size(&t)));
        srv_buf_free(&t);
    }
}

/* ---- helpers ---- */

static void test_buf_and_utf8(void **state) {
    (void)state;
    srv_buf b = {.limit = 8};
    assert_int_equal(srv_buf_append(&b, "abcdef", 6), 0);
    assert_int_equal(srv_buf_append(&b, "xyz", 3), NI_ERANGE);
    assert_int_equal(srv_buf_size(&b), 6);
    srv_buf_consume(&b, 4);
    assert_int_equal(srv_buf_append(&b, "123456", 6), 0); /* the limit is on live bytes */
    assert_string_equal(srv_buf_cstr(&b), "ef123456");
    srv_buf_consume(&b, 100);
    assert_int_equal(srv_buf_size(&b), 0);
    assert_int_equal(srv_buf_printf(&b, "%d-%s", 42, "x"), 0);
    assert_string_equal(srv_buf_cstr(&b), "42-x");
    srv_buf_free(&b);
    srv_buf big = {0};
    char chunk[1000];
    memset(chunk, 'q', sizeof chunk);
    for (int i = 0; i < 100; i++) assert_int_equal(srv_buf_printf(&big, "%.*s", 1000, chunk), 0);
    assert_int_equal(srv_buf_size(&big), 100000);
    srv_buf_free(&big);

    assert_true(srv_utf8_valid("h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80", 15));
    assert_false(srv_utf8_valid("\xC3", 1));             /* truncated */
    assert_false(srv_utf8_valid("\xC0\xAF", 2));         /* overlong */
    assert_false(srv_utf8_valid("\xED\xA0\x80", 3));     /* surrogate */
    assert_false(srv_utf8_valid("\xF4\x90\x80\x80", 4)); /* > U+10FFFF */
    assert_false(srv_utf8_valid("\x80", 1));
    srv_buf o = {0};
    assert_int_equal(srv_utf8_sanitize(&o,
                                       "a\xC3"
                                       "b\xE2\x82"
                                       "c\xF0\x9F\x98\x80",
                                       10),
                     0);
    assert_string_equal(srv_buf_cstr(&o), "a\xEF\xBF\xBD"
                                          "b\xEF\xBF\xBD"
                                          "c\xF0\x9F\x98\x80");
    srv_buf_free(&o);

    assert_true(srv_ct_equal("secret", 6, "secret", 6));
    assert_false(srv_ct_equal("secreT", 6, "secret", 6));
    assert_false(srv_ct_equal("secret1", 7, "secret", 6));
    assert_false(srv_ct_equal("", 0, "secret", 6));
    assert_false(srv_ct_equal("sec", 3, "secret", 6));

    srv_rng r;
    srv_rng_seed(&r);
    char a[64], b2[64];
    srv_random_id(&r, "cmpl-", a, sizeof a);
    srv_random_id(&r, "cmpl-", b2, sizeof b2);
    assert_int_equal(strlen(a), 5 + 32);
    assert_int_equal(strncmp(a, "cmpl-", 5), 0);
    assert_string_not_equal(a, b2);
}

static void test_metrics_text(void **state) {
    (void)state;
    srv_metrics m;
    srv_metrics_init(&m);
    srv_metrics_response(&m, 200);
    srv_metrics_response(&m, 200);
    srv_metrics_response(&m, 429);
    srv_metrics_response(&m, 99); /* ignored */
    srv_hist_observe(&m.ttft, 0.003);
    srv_hist_observe(&m.ttft, 0.5);
    srv_hist_observe(&m.ttft, 1e9);
    eng_stats st = {0};
    st.kv.blocks_total = 100;
    st.kv.blocks_used = 25;
    st.kv.prefix_queries = 3;
    st.kv.query_tokens = 300;
    st.kv.hit_tokens = 128;
    st.n_running = 2;
    srv_buf b = {0};
    assert_int_equal(srv_metrics_render(&m, &st, 1, 1, &b), 0);
    const char *t = srv_buf_cstr(&b);
    assert_non_null(strstr(t, "nanoinfer_http_requests_total{code=\"200\"} 2\n"));
    assert_non_null(strstr(t, "nanoinfer_http_requests_total{code=\"429\"} 1\n"));
    assert_null(strstr(t, "code=\"99\""));
    assert_non_null(strstr(t, "# TYPE nanoinfer_time_to_first_token_seconds histogram\n"));
    assert_non_null(strstr(t, "nanoinfer_time_to_first_token_seconds_bucket{le=\"0.001\"} 0\n"));
    assert_non_null(strstr(t, "nanoinfer_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"));
    assert_non_null(strstr(t, "nanoinfer_time_to_first_token_seconds_bucket{le=\"0.5\"} 2\n"));
    assert_non_null(strstr(t, "nanoinfer_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(t, "nanoinfer_time_to_first_token_seconds_count 3\n"));
    assert_non_null(strstr(t, "nanoinfer_inter_token_latency_seconds_count 0\n"));
    assert_non_null(strstr(t, "nanoinfer_kv_blocks_used 25\n"));
    assert_non_null(strstr(t, "nanoinfer_kv_blocks_total 100\n"));
    assert_non_null(strstr(t, "nanoinfer_kv_cache_usage_ratio 0.25\n"));
    assert_non_null(strstr(t, "nanoinfer_prefix_cache_lookups_total 3\n"));
    assert_non_null(strstr(t, "nanoinfer_prefix_cache_queries_total 300\n"));
    assert_non_null(strstr(t, "nanoinfer_prefix_cache_hits_total 128\n"));
    assert_non_null(strstr(t, "nanoinfer_num_seqs_running 2\n"));
    /* every sample line belongs to a declared metric */
    for (const char *l = t; *l; l = strchr(l, '\n') + 1) {
        if (*l != '#') {
            char name[128];
            sscanf(l, "%127[a-z0-9_]", name);
            char *suffix = strstr(name, "_bucket");
            if (!suffix) suffix = strstr(name, "_sum");
            if (!suffix) suffix = strstr(name, "_count");
            if (suffix && strstr(t, "histogram")) *suffix = 0;
            char decl[200];
            snprintf(decl, sizeof decl, "# TYPE %s ", name);
            if (!strstr(t, decl)) fail_msg("undeclared metric line: %.80s", l);
        }
    }
    srv_buf_free(&b);
    /* while the model loads: no engine section */
    assert_int_equal(srv_metrics_render(&m, NULL, 0, 0, &b), 0);
    assert_null(strstr(srv_buf_cstr(&b), "kv_blocks_used"));
    srv_buf_free(&b);
    /* the vLLM names: the same values, model_name escaped, histograms complete */
    m.finished[ENG_FINISH_LENGTH] = 4;
    m.prompt_tokens = 77;
    st.n_preemptions = 5;
    assert_int_equal(srv_metrics_render_vllm(&m, &st, "my \"model\"\\x\n", &b), 0);
    t = srv_buf_cstr(&b);
#define L "{model_name=\"my \\\"model\\\"\\\\x\\n\",engine=\"0\""
    static const char *const want[] = {
        "# TYPE vllm:num_requests_running gauge\n",
        "vllm:num_requests_running" L "} 2\n",
        "vllm:kv_cache_usage_perc" L "} 0.25\n",
        "# TYPE vllm:prompt_tokens_total counter\n",
        "vllm:prompt_tokens_total" L "} 77\n",
        "vllm:prefix_cache_hits_total" L "} 128\n",
        "vllm:num_preemptions_total" L "} 5\n",
        "vllm:request_success_total" L ",finished_reason=\"length\"} 4\n",
        "# TYPE vllm:time_to_first_token_seconds histogram\n",
        "vllm:time_to_first_token_seconds_bucket" L ",le=\"0.005\"} 1\n",
        "vllm:time_to_first_token_seconds_bucket" L ",le=\"+Inf\"} 3\n",
        "vllm:time_to_first_token_seconds_count" L "} 3\n",
        "vllm:inter_token_latency_seconds_count" L "} 0\n",
        "vllm:time_per_output_token_seconds_count" L "} 0\n",
        "vllm:e2e_request_latency_seconds_sum" L "} 0\n",
    };
#undef L
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(t, want[i])) fail_msg("no line %s in:\n%s", want[i], t);
    srv_buf_free(&b);
    assert_int_equal(srv_metrics_render_vllm(&m, NULL, "x", &b), 0);
    assert_int_equal(srv_buf_size(&b), 0);
    srv_buf_free(&b);
}

/* ---- reasoning models ---- */

/* chat_template_kwargs.enable_thinking reaches the template; reasoning_format
 * chooses between the server's parser and inline output; the message and
 * delta shapes of a split choice. */
static void test_reasoning(void **state) {
    (void)state;
    srv_gen_req r;
    srv_api_error e;
    int style = g_ctx.chat_style;
    g_ctx.chat_style = CHAT_STYLE_QWEN3;
    g_ctx.reasoning_parser = SRV_REASONING_QWEN3;
    const char *msg = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]";
    char body[512];
    /* enable_thinking false: the empty think block ends the prompt */
    snprintf(body, sizeof body, "%s, \"chat_template_kwargs\": {\"enable_thinking\": false}}", msg);
    assert_int_equal(parse(SRV_API_CHAT, body, &r, &e), 0);
    int32_t ids[256];
    int n = encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
                   tok_add_bos(g_m.tok), ids, 256);
    assert_int_equal(r.n_prompt, n);
    assert_memory_equal(r.prompt, ids, (size_t)n * sizeof(int32_t));
    assert_int_equal(r.reasoning, SRV_REASONING_QWEN3);
    srv_gen_req_free(&r);
    /* true (and other kwargs) render as if absent */
    snprintf(body, sizeof body,
             "%s, \"chat_template_kwargs\": {\"enable_thinking\": true, \"other\": 1}}", msg);
    assert_int_equal(parse(SRV_API_CHAT, body, &r, &e), 0);
    n = encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", tok_add_bos(g_m.tok), ids,
               256);
    assert_int_equal(r.n_prompt, n);
    srv_gen_req_free(&r);
    /* reasoning_format: none leaves the output inline; auto / deepseek keep the parser */
    snprintf(body, sizeof body, "%s, \"reasoning_format\": \"none\"}", msg);
    assert_int_equal(parse(SRV_API_CHAT, body, &r, &e), 0);
    assert_int_equal(r.reasoning, SRV_REASONING_NONE);
    srv_gen_req_free(&r);
    snprintf(body, sizeof body, "%s, \"reasoning_format\": \"deepseek\"}", msg);
    assert_int_equal(parse(SRV_API_CHAT, body, &r, &e), 0);
    assert_int_equal(r.reasoning, SRV_REASONING_QWEN3);
    srv_gen_req_free(&r);
    /* completions never split */
    assert_int_equal(parse(SRV_API_COMPLETION, "{\"prompt\": \"x\"}", &r, &e), 0);
    assert_int_equal(r.reasoning, SRV_REASONING_NONE);
    srv_gen_req_free(&r);
    /* bad values name their parameter */
    static const char *const bad[][2] = {
        {", \"reasoning_format\": \"parsed\"}", "reasoning_format"},
        {", \"reasoning_format\": true}", "reasoning_format"},
        {", \"chat_template_kwargs\": [1]}", "chat_template_kwargs"},
        {", \"chat_template_kwargs\": {\"enable_thinking\": \"no\"}}", "chat_template_kwargs"},
    };
    for (size_t i = 0; i < NI_ARRAY_LEN(bad); i++) {
        snprintf(body, sizeof body, "%s%s", msg, bad[i][0]);
        if (parse(SRV_API_CHAT, body, &r, &e) != -1) fail_msg("accepted: %s", body);
        assert_int_equal(e.status, 400);
        if (strcmp(e.param, bad[i][1])) fail_msg("%s: param %s, want %s", body, e.param, bad[i][1]);
    }
    g_ctx.reasoning_parser = SRV_REASONING_NONE;
    g_ctx.chat_style = style;

    /* shapes: message.reasoning_content (null when none), content null when empty */
    json_t *c = srv_api_choice_reasoning(
        srv_api_choice(SRV_API_CHAT, 0, 0, "", 0, 0, NULL, "length"), 0, "why", 3, 1);
    json_t *m = json_object_get(c, "message");
    assert_string_equal(json_string_value(json_object_get(m, "reasoning_content")), "why");
    assert_true(json_is_null(json_object_get(m, "content")));
    json_decref(c);
    c = srv_api_choice_reasoning(srv_api_choice(SRV_API_CHAT, 0, 0, "ok", 2, 0, NULL, "stop"), 0,
                                 NULL, 0, 0);
    m = json_object_get(c, "message");
    assert_true(json_is_null(json_object_get(m, "reasoning_content")));
    assert_string_equal(json_string_value(json_object_get(m, "content")), "ok");
    json_decref(c);
    /* a delta carries reasoning_content only when there is some */
    c = srv_api_choice_reasoning(srv_api_choice(SRV_API_CHAT, 1, 0, NULL, 0, 0, NULL, NULL), 1, "r",
                                 1, 0);
    m = json_object_get(c, "delta");
    assert_string_equal(json_string_value(json_object_get(m, "reasoning_content")), "r");
    assert_null(json_object_get(m, "content"));
    json_decref(c);
    c = srv_api_choice_reasoning(srv_api_choice(SRV_API_CHAT, 1, 0, "t", 1, 0, NULL, NULL), 1, "",
                                 0, 0);
    m = json_object_get(c, "delta");
    assert_null(json_object_get(m, "reasoning_content"));
    assert_string_equal(json_string_value(json_object_get(m, "content")), "t");
    json_decref(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completion_defaults), cmocka_unit_test(test_completion_prompt_forms),
        cmocka_unit_test(test_sampling_params),     cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_long_prompt),         cmocka_unit_test(test_error_order),
        cmocka_unit_test(test_chat_template),       cmocka_unit_test(test_tokenize_detokenize),
        cmocka_unit_test(test_response_shapes),     cmocka_unit_test(test_sse_framing),
        cmocka_unit_test(test_logprobs_formats),    cmocka_unit_test(test_buf_and_utf8),
        cmocka_unit_test(test_metrics_text),        cmocka_unit_test(test_reasoning),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
