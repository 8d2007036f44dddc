/*
 * test_srv_tools.c - server/http/srv_tools alone: tools / tool_choice
 * validation (400 naming the parameter), the required / named tool-call
 * grammar (a valid call is a sentence, another function or bad arguments
 * are not, parallel_tool_calls false allows one block), whole-reply
 * extraction in both formats (calls, content around them, blocks that are
 * not calls left as content), and the streaming parser: a reply cut into
 * random pieces gives the same calls and content as the whole reply.
 * Seeded from the clock each run (printed); NI_TEST_SEED=<n> reproduces one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "engine/grammar/grammar.h"
#include "engine/util/util.h"
#include "server/http/srv_api.h"
#include "server/http/srv_tools.h"
#include "test_util.h"
#include "tokenizer/chat.h"

static tu_rng g_rng;

static const char TOOLS[] =
    "{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": "
    "\"Weather\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": "
    "\"string\"}, \"unit\": {\"enum\": [\"c\", \"f\"]}}, \"required\": [\"city\"]}}}, {\"type\": "
    "\"function\", \"function\": {\"name\": \"now\"}}]";

static json_t *body_with(const char *extra) {
    char buf[2048];
    snprintf(buf, sizeof buf, "%s%s}", TOOLS, extra);
    json_error_t je;
    json_t *b = json_loads(buf, 0, &je);
    if (!b) fail_msg("bad test body %s: %s", buf, je.text);
    return b;
}

static void test_validation(void **state) {
    (void)state;
    static const struct {
        const char *body, *param;
    } bad[] = {
        {"{\"tools\": {}}", "tools"},
        {"{\"tools\": [{\"type\": \"retrieval\"}]}", "tools"},
        {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"bad name\"}}]}", "tools"},
        {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": 3}}]}", "tools"},
        {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}, {\"type\": \"function\", \"function\": {\"name\": \"f\"}}]}", "tools"},
        {"{\"tool_choice\": \"required\"}", "tool_choice"},
        {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}], \"tool_choice\": \"sometimes\"}", "tool_choice"},
        {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}], \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"g\"}}}", "tool_choice"},
        {"{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}], \"parallel_tool_calls\": 1}", "parallel_tool_calls"},
    };
    for (size_t i = 0; i < NI_ARRAY_LEN(bad); i++) {
        json_t *b = json_loads(bad[i].body, 0, NULL);
        assert_non_null(b);
        srv_tools t;
        srv_api_error e = {0};
        int rc = srv_tools_parse(b, CHAT_STYLE_QWEN3, &t, &e);
        if (rc == 0) fail_msg("accepted %s", bad[i].body);
        if (e.status != 400 || strcmp(e.param, bad[i].param))
            fail_msg("%s: status %d param '%s', want 400 '%s'", bad[i].body, e.status, e.param, bad[i].param);
        json_decref(b);
    }
    json_t *b = body_with(", \"tool_choice\": \"none\"");
    srv_tools t;
    srv_api_error e;
    assert_int_equal(srv_tools_parse(b, CHAT_STYLE_QWEN3, &t, &e), 0);
    assert_int_equal(t.n, 0); /* none: the tools are not used at all */
    json_decref(b);
    b = body_with("");
    assert_int_equal(srv_tools_parse(b, CHAT_STYLE_LLAMA3, &t, &e), 0);
    assert_int_equal(t.n, 2);
    assert_int_equal(t.choice, SRV_TOOL_CHOICE_AUTO);
    assert_int_equal(t.format, SRV_TOOLS_LLAMA3);
    srv_tools_free(&t);
    json_decref(b);
}

static int accepts(const gr_grammar *g, const char *s) {
    gr_vocab *v = tu_byte_vocab();
    gr_matcher *m;
    assert_int_equal(gr_matcher_new(&m, g, v, 0), 0);
    gr_state st = gr_matcher_feed(m, gr_matcher_start(m), s, strlen(s));
    int ok = gr_matcher_accepting(m, st);
    gr_matcher_free(m);
    gr_vocab_free(v);
    return ok;
}

static void test_grammar(void **state) {
    (void)state;
    static const struct {
        const char *extra;
        int style;
        const char *text;
        int want;
    } cases[] = {
        {", \"tool_choice\": \"required\"", CHAT_STYLE_QWEN3, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", 1},
        {", \"tool_choice\": \"required\"", CHAT_STYLE_QWEN3, "<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"unit\": \"c\"}}\n</tool_call>", 1},
        {", \"tool_choice\": \"required\"", CHAT_STYLE_QWEN3, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"unit\": \"c\"}}\n</tool_call>", 0},
        {", \"tool_choice\": \"required\"", CHAT_STYLE_QWEN3, "<tool_call>\n{\"name\": \"other\", \"arguments\": {}}\n</tool_call>", 0},
        {", \"tool_choice\": \"required\"", CHAT_STYLE_QWEN3, "Sure!", 0},
        {", \"tool_choice\": \"required\", \"parallel_tool_calls\": false", CHAT_STYLE_QWEN3, "<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>", 0},
        {", \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"now\"}}", CHAT_STYLE_QWEN3, "<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>", 1},
        {", \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"now\"}}", CHAT_STYLE_QWEN3, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"x\"}}\n</tool_call>", 0},
        {", \"tool_choice\": \"required\"", CHAT_STYLE_LLAMA3, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}", 1},
        {", \"tool_choice\": \"required\"", CHAT_STYLE_LLAMA3, "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}", 0},
    };
    for (size_t i = 0; i < NI_ARRAY_LEN(cases); i++) {
        json_t *b = body_with(cases[i].extra);
        srv_tools t;
        srv_api_error e;
        assert_int_equal(srv_tools_parse(b, cases[i].style, &t, &e), 0);
        gr_grammar *g;
        if (srv_tools_grammar(&t, &g, &e)) fail_msg("grammar: %s", e.message);
        assert_non_null(g);
        int got = accepts(g, cases[i].text);
        if (got != cases[i].want) fail_msg("case %zu (%s): accepts %d, want %d", i, cases[i].text, got, cases[i].want);
        gr_grammar_free(g);
        srv_tools_free(&t);
        json_decref(b);
    }
    json_t *b = body_with("");
    srv_tools t;
    srv_api_error e;
    assert_int_equal(srv_tools_parse(b, CHAT_STYLE_QWEN3, &t, &e), 0);
    gr_grammar *g = (gr_grammar *)1;
    assert_int_equal(srv_tools_grammar(&t, &g, &e), 0);
    assert_null(g); /* auto: unconstrained */
    srv_tools_free(&t);
    json_decref(b);
}

typedef struct reply {
    int style;
    const char *text;
    int n_calls;
    const char *name0, *args0;
    const char *content;
} reply;

static const reply k_replies[] = {
    {CHAT_STYLE_QWEN3, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", 1, "get_weather", "{\"city\": \"Paris\"}", ""},
    {CHAT_STYLE_QWEN3, "Let me check.\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Oslo\\\"}\"}\n</tool_call>", 2, "now", "{}", "Let me check."},
    {CHAT_STYLE_QWEN3, "No tools needed: <tool_call> is a tag.", 0, NULL, NULL, "No tools needed: <tool_call> is a tag."},
    {CHAT_STYLE_QWEN3, "<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call>", 0, NULL, NULL, "<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call>"},
    {CHAT_STYLE_CHATML_SMOLLM, "Plain answer <tool_ca", 0, NULL, NULL, "Plain answer <tool_ca"},
    {CHAT_STYLE_LLAMA3, "  {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\", \"unit\": \"c\"}}", 1, "get_weather", "{\"city\": \"Rome\", \"unit\": \"c\"}", ""},
    {CHAT_STYLE_LLAMA3, "{not json", 0, NULL, NULL, "{not json"},
    {CHAT_STYLE_LLAMA3, "The weather is fine.", 0, NULL, NULL, "The weather is fine."},
};

static void check_reply(const reply *r, int n, const srv_tool_call *calls, const char *content, const char *how) {
    if (n != r->n_calls) fail_msg("%s \"%s\": %d calls, want %d", how, r->text, n, r->n_calls);
    if (n > 0 && (strcmp(calls[0].name, r->name0) || strcmp(calls[0].arguments, r->args0)))
        fail_msg("%s \"%s\": call 0 %s(%s), want %s(%s)", how, r->text, calls[0].name, calls[0].arguments, r->name0, r->args0);
    if (strcmp(content, r->content)) fail_msg("%s \"%s\": content \"%s\", want \"%s\"", how, r->text, content, r->content);
}

static void test_extract_and_stream(void **state) {
    (void)state;
    json_t *b = body_with("");
    for (size_t i = 0; i < NI_ARRAY_LEN(k_replies); i++) {
        const reply *r = &k_replies[i];
        srv_tools t;
        srv_api_error e;
        assert_int_equal(srv_tools_parse(b, r->style, &t, &e), 0);
        srv_tool_call calls[SRV_TOOLS_MAX_CALLS];
        int n;
        char *content;
        assert_int_equal(srv_tools_extract(&t, r->text, strlen(r->text), calls, &n, &content), 0);
        check_reply(r, n, calls, content, "extract");
        for (int k = 0; k < n; k++) srv_tool_call_free(&calls[k]);
        free(content);
        for (int run = 0; run < 50; run++) { /* random pieces */
            srv_tool_stream s;
            srv_tool_stream_init(&s, &t);
            char *c = NULL;
            size_t cl = 0;
            n = 0;
            size_t len = strlen(r->text), at = 0;
            while (at < len) {
                size_t piece = 1 + (size_t)tu_int(&g_rng, 6);
                if (piece > len - at) piece = len - at;
                assert_int_equal(srv_tool_stream_push(&s, r->text + at, piece, 0, &c, &cl, calls, &n), 0);
                at += piece;
            }
            assert_int_equal(srv_tool_stream_push(&s, "", 0, 1, &c, &cl, calls, &n), 0);
            /* streamed content keeps the text between calls as it came; compare trimmed */
            char *tc = c ? c : strdup("");
            size_t a = 0, z = strlen(tc);
            while (a < z && strchr(" \n", tc[a])) a++;
            while (z > a && strchr(" \n", tc[z - 1])) z--;
            tc[z] = 0;
            check_reply(r, n, calls, tc + a, "stream");
            for (int k = 0; k < n; k++) srv_tool_call_free(&calls[k]);
            free(tc);
            srv_tool_stream_free(&s);
        }
        srv_tools_free(&t);
    }
    json_decref(b);
}

int main(void) {
    tu_seed(&g_rng, "test_srv_tools");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_grammar),
        cmocka_unit_test(test_extract_and_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
