/*
 * test_chat.c - chat template detection and rendering (tokenizer/chat.c).
 *
 * The golden cases in test/fixtures/chat_golden.json (tool use with the Qwen3
 * template included: tools, tool_calls, tool results) were rendered by the
 * real Jinja templates through transformers (scripts/gen_chat_golden.py);
 * every case must match byte for byte, and every case the template rejects
 * must fail with NI_EINVAL. Run from the repository root.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/chat.h"
#include "engine/util/util.h"
#include "test_util.h"

#define GOLDEN "test/fixtures/chat_golden.json"

static json_t *load_golden(void) {
    json_error_t e;
    json_t *doc = json_load_file(GOLDEN, 0, &e);
    if (!doc) fail_msg("%s:%d: %s (run from the repository root)", GOLDEN, e.line, e.text);
    return doc;
}

/* Prints where two strings first differ (for a readable failure). */
static void show_diff(const char *name, const char *want, const char *got) {
    size_t i = 0;
    while (want[i] && want[i] == got[i]) i++;
    print_error("%s: first difference at byte %zu\n  want: \"%.60s\"\n  got:  \"%.60s\"\n", name, i,
                want + i, got + i);
}

static void test_golden(void **state) {
    (void)state;
    json_t *doc = load_golden();
    json_t *cases = json_object_get(doc, "cases");
    assert_true(json_is_array(cases));
    size_t n_cases = json_array_size(cases), n_ok = 0, n_err = 0, failures = 0;
    assert_true(n_cases >= 200); /* the fixture is not accidentally empty */
    int styles_seen[CHAT_STYLE_COUNT] = {0};
    for (size_t i = 0; i < n_cases; i++) {
        json_t *c = json_array_get(cases, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *sname = json_string_value(json_object_get(c, "style"));
        int style = chat_style_from_name(sname);
        assert_true(style >= 0);
        styles_seen[style] = 1;
        json_t *jm = json_object_get(c, "messages");
        size_t n = json_array_size(jm);
        chat_msg *msgs = calloc(n ? n : 1, sizeof(chat_msg));
        assert_non_null(msgs);
        /* tool calls and tools as the templates' tojson prints them (", " / ": ") */
        chat_tool_call calls[64];
        char *texts[128];
        int n_calls = 0, n_texts = 0;
        for (size_t k = 0; k < n; k++) {
            json_t *m = json_array_get(jm, k);
            msgs[k].role = json_string_value(json_object_get(m, "role"));
            msgs[k].content = json_string_value(json_object_get(m, "content"));
            assert_non_null(msgs[k].role);
            assert_non_null(msgs[k].content);
            json_t *tc = json_object_get(m, "tool_calls");
            msgs[k].tool_calls = calls + n_calls;
            for (size_t j = 0; j < json_array_size(tc); j++) {
                json_t *f = json_object_get(json_array_get(tc, j), "function");
                assert_true(n_calls < 64 && n_texts < 128);
                calls[n_calls].name = json_string_value(json_object_get(f, "name"));
                texts[n_texts] = json_dumps(json_object_get(f, "arguments"), JSON_PRESERVE_ORDER);
                calls[n_calls++].arguments = texts[n_texts++];
                msgs[k].n_tool_calls++;
            }
        }
        json_t *jt = json_object_get(c, "tools");
        const char *tools[16];
        int n_tools = 0;
        for (size_t j = 0; j < json_array_size(jt); j++) {
            assert_true(n_tools < 16 && n_texts < 128);
            texts[n_texts] = json_dumps(json_array_get(jt, j), JSON_PRESERVE_ORDER);
            tools[n_tools++] = texts[n_texts++];
        }
        int gen = json_is_true(json_object_get(c, "add_generation_prompt"));
        json_t *jexp = json_object_get(c, "expected");
        char *out = (char *)0x1;
        const chat_opts o = {.add_generation_prompt = gen, .enable_thinking = -1, .tools = tools,
                             .n_tools = n_tools};
        int rc = chat_render_opts(style, msgs, (int)n, &o, &out);
        for (int j = 0; j < n_texts; j++) free(texts[j]);
        if (json_is_null(jexp)) {
            n_err++;
            if (rc != NI_EINVAL || out != NULL) {
                print_error("%s: expected NI_EINVAL, got rc=%d\n", name, rc);
                failures++;
            }
        } else {
            n_ok++;
            const char *want = json_string_value(jexp);
            if (rc != 0 || !out) {
                print_error("%s: rc=%d\n", name, rc);
                failures++;
            } else if (strcmp(want, out) != 0) {
                show_diff(name, want, out);
                failures++;
            } else {
                /* BOS helper agrees with what the text starts with. */
                const char *bos = chat_bos_text(style);
                assert_int_equal(chat_has_bos_text(style, out),
                                 bos != NULL && strncmp(out, bos, strlen(bos)) == 0);
            }
        }
        if (rc == 0) free(out);
        free(msgs);
    }
    print_message("chat golden: %zu rendered, %zu rejected, %zu failures\n", n_ok, n_err, failures);
    for (int s = 0; s < CHAT_STYLE_COUNT; s++) assert_true(styles_seen[s]);
    assert_true(n_err > 0 && n_ok > n_err);
    assert_int_equal(failures, 0);
    json_decref(doc);
}

/* Every reference template source in the fixture is detected as its style. */
static void test_detect_golden_sources(void **state) {
    (void)state;
    json_t *doc = load_golden();
    json_t *tpl = json_object_get(doc, "templates");
    assert_int_equal(json_object_size(tpl), CHAT_STYLE_COUNT);
    const char *key;
    json_t *v;
    json_object_foreach(tpl, key, v) {
        const char *src = json_string_value(json_object_get(v, "template_src"));
        assert_non_null(src);
        int want = chat_style_from_name(key);
        assert_true(want >= 0);
        if (chat_detect(src) != want) fail_msg("template '%s' detected as %s", key,
                                               chat_style_name(chat_detect(src)));
        assert_int_equal(chat_detect_strict(src), want);
    }
    json_decref(doc);
}

static void test_detect_other_sources(void **state) {
    (void)state;
    /* No template or an unknown one: ChatML fallback, strict says not found. */
    assert_int_equal(chat_detect(NULL), CHAT_STYLE_CHATML);
    assert_int_equal(chat_detect(""), CHAT_STYLE_CHATML);
    assert_int_equal(chat_detect_strict(NULL), NI_ENOTFOUND);
    assert_int_equal(chat_detect_strict(""), NI_ENOTFOUND);
    assert_int_equal(chat_detect_strict("{{ messages }}"), NI_ENOTFOUND);
    /* Mistral v0.1 ([INST] without <<SYS>>) is not Llama-2. */
    const char *mistral =
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ message['content'] + eos_token}}{% endif %}{% endfor %}";
    assert_int_equal(chat_detect_strict(mistral), NI_ENOTFOUND);
    assert_int_equal(chat_detect(mistral), CHAT_STYLE_CHATML);
    /* Phi-3 uses <|user|>/<|assistant|> but with <|end|>: not Zephyr. */
    const char *phi3 =
        "{% for message in messages %}{% if message['role'] == 'user' %}{{'<|user|>\n' + "
        "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
        "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}";
    assert_int_equal(chat_detect_strict(phi3), NI_ENOTFOUND);
    /* Qwen2.5-style ChatML without thinking is plain ChatML. */
    assert_int_equal(chat_detect("{%- for message in messages %}{{- '<|im_start|>' + message.role }}"
                                 "{%- endfor %}"),
                     CHAT_STYLE_CHATML);
    /* Llama-3.x style header tokens. */
    assert_int_equal(chat_detect("{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>'}}"),
                     CHAT_STYLE_LLAMA3);
    /* Zephyr-style without the eos variable spelled out. */
    assert_int_equal(chat_detect("{{ '<|user|>\n' + x }}{{ '<|assistant|>' }}"), CHAT_STYLE_ZEPHYR);
    /* A template mentioning <think> with ChatML markers is Qwen3. */
    assert_int_equal(chat_detect("<|im_start|>{{ '</think>' }}"), CHAT_STYLE_QWEN3);
}

static void test_errors(void **state) {
    (void)state;
    chat_msg ok[] = {{.role = "user", .content = "hi"}};
    char *out = (char *)0x1;
    assert_int_equal(chat_render(CHAT_STYLE_CHATML, ok, 1, 1, NULL), NI_EINVAL);
    assert_int_equal(chat_render(CHAT_STYLE_CHATML, NULL, 1, 1, &out), NI_EINVAL);
    assert_null(out);
    out = (char *)0x1;
    assert_int_equal(chat_render(CHAT_STYLE_CHATML, ok, 0, 1, &out), NI_EINVAL);
    assert_null(out);
    assert_int_equal(chat_render(CHAT_STYLE_CHATML, ok, -1, 1, &out), NI_EINVAL);
    assert_int_equal(chat_render(-1, ok, 1, 1, &out), NI_EINVAL);
    assert_int_equal(chat_render(CHAT_STYLE_COUNT, ok, 1, 1, &out), NI_EINVAL);
    assert_null(out);
    for (int s = 0; s < CHAT_STYLE_COUNT; s++) {
        chat_msg bad_role[] = {{.role = "user", .content = "a"}, {.role = "function", .content = "b"}};
        chat_msg caps_role[] = {{.role = "User", .content = "a"}};
        chat_msg empty_role[] = {{.role = "", .content = "a"}};
        chat_msg null_role[] = {{.role = NULL, .content = "a"}};
        chat_msg null_content[] = {{.role = "user", .content = NULL}};
        out = (char *)0x1;
        assert_int_equal(chat_render(s, bad_role, 2, 1, &out), NI_EINVAL);
        assert_null(out);
        assert_int_equal(chat_render(s, caps_role, 1, 1, &out), NI_EINVAL);
        assert_int_equal(chat_render(s, empty_role, 1, 1, &out), NI_EINVAL);
        assert_int_equal(chat_render(s, null_role, 1, 1, &out), NI_EINVAL);
        assert_int_equal(chat_render(s, null_content, 1, 1, &out), NI_EINVAL);
        assert_null(out);
        /* and a valid one works in every style */
        assert_int_equal(chat_render(s, ok, 1, 1, &out), 0);
        assert_non_null(out);
        assert_non_null(strstr(out, "hi"));
        free(out);
    }
    /* Llama-2 role order. */
    chat_msg l2_ok[] = {{.role = "system", .content = "s"}, {.role = "user", .content = "u"}, {.role = "assistant", .content = "a"}, {.role = "user", .content = "u2"}};
    assert_int_equal(chat_render(CHAT_STYLE_LLAMA2, l2_ok, 4, 0, &out), 0);
    free(out);
    chat_msg l2_bad1[] = {{.role = "user", .content = "u"}, {.role = "assistant", .content = "a"}, {.role = "assistant", .content = "b"}};
    chat_msg l2_bad2[] = {{.role = "system", .content = "s"}, {.role = "system", .content = "t"}, {.role = "user", .content = "u"}};
    chat_msg l2_bad3[] = {{.role = "user", .content = "u"}, {.role = "system", .content = "late"}};
    assert_int_equal(chat_render(CHAT_STYLE_LLAMA2, l2_bad1, 3, 0, &out), NI_EINVAL);
    assert_int_equal(chat_render(CHAT_STYLE_LLAMA2, l2_bad2, 3, 0, &out), NI_EINVAL);
    assert_int_equal(chat_render(CHAT_STYLE_LLAMA2, l2_bad3, 2, 0, &out), NI_EINVAL);
    assert_null(out);
    /* The same orders are fine in ChatML. */
    assert_int_equal(chat_render(CHAT_STYLE_CHATML, l2_bad1, 3, 0, &out), 0);
    free(out);
}

static char *render1(int style, const char *role, const char *content, int gen) {
    chat_msg m[] = {{.role = role, .content = content}};
    char *out = NULL;
    assert_int_equal(chat_render(style, m, 1, gen, &out), 0);
    assert_non_null(out);
    return out;
}

static void test_exact_small(void **state) {
    (void)state;
    char *s = render1(CHAT_STYLE_CHATML_SMOLLM, "user", "Hi", 1);
    assert_string_equal(s, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained "
                           "by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                           "<|im_start|>assistant\n");
    free(s);
    s = render1(CHAT_STYLE_CHATML_SMOLLM, "system", "S", 0);
    assert_string_equal(s, "<|im_start|>system\nS<|im_end|>\n");
    free(s);
    s = render1(CHAT_STYLE_LLAMA3, "user", " \t Hi \n", 1);
    assert_string_equal(s, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    assert_true(chat_has_bos_text(CHAT_STYLE_LLAMA3, s));
    free(s);
    s = render1(CHAT_STYLE_LLAMA2, "user", "Hi", 1);
    assert_string_equal(s, "<s>[INST] Hi [/INST]"); /* Llama-2 has no generation prompt */
    assert_true(chat_has_bos_text(CHAT_STYLE_LLAMA2, s));
    free(s);
    s = render1(CHAT_STYLE_LLAMA2, "system", "only", 1);
    assert_string_equal(s, ""); /* as the reference: a lone system message renders nothing */
    assert_false(chat_has_bos_text(CHAT_STYLE_LLAMA2, s));
    free(s);
    s = render1(CHAT_STYLE_ZEPHYR, "user", "Hi", 1);
    assert_string_equal(s, "<|user|>\nHi</s>\n<|assistant|>\n");
    assert_false(chat_has_bos_text(CHAT_STYLE_ZEPHYR, s));
    free(s);
    /* Qwen3: with no user query, an assistant turn loses its reasoning... */
    s = render1(CHAT_STYLE_QWEN3, "assistant", "<think>r</think>a", 0);
    assert_string_equal(s, "<|im_start|>assistant\na<|im_end|>\n");
    free(s);
    /* ...after the last query it keeps it. */
    chat_msg q[] = {{.role = "user", .content = "q"}, {.role = "assistant", .content = "<think>r</think>a"}};
    assert_int_equal(chat_render(CHAT_STYLE_QWEN3, q, 2, 0, &s), 0);
    assert_string_equal(s, "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nr\n"
                           "</think>\n\na<|im_end|>\n");
    free(s);
}

/* chat_template_kwargs.enable_thinking (Qwen3's template, rendered by jinja2
 * with transformers' trim_blocks/lstrip_blocks): false appends the empty think
 * block after the generation prompt only; true is the same as undefined;
 * the other styles ignore it. */
static void test_enable_thinking(void **state) {
    (void)state;
    chat_msg m[] = {{.role = "user", .content = "hi"}, {.role = "assistant", .content = "<think>\nx\n</think>\n\nyo"}, {.role = "user", .content = "again"}};
    const char *const base = "<|im_start|>user\nhi<|im_end|>\n";
    const char *const multi =
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
        "<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n";
    struct {
        int n, gen, think;
        const char *want_head, *want_tail;
    } t[] = {
        {1, 1, -1, base, "<|im_start|>assistant\n"},
        {1, 1, 1, base, "<|im_start|>assistant\n"},
        {1, 1, 0, base, "<|im_start|>assistant\n<think>\n\n</think>\n\n"},
        {1, 0, 0, base, ""},
        {3, 1, 0, multi, "<think>\n\n</think>\n\n"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        char *s = NULL, want[512];
        snprintf(want, sizeof want, "%s%s", t[i].want_head, t[i].want_tail);
        const chat_opts o = {.add_generation_prompt = t[i].gen, .enable_thinking = t[i].think};
        assert_int_equal(chat_render_opts(CHAT_STYLE_QWEN3, m, t[i].n, &o, &s), 0);
        if (strcmp(s, want)) fail_msg("case %zu: got %s, want %s", i, s, want);
        free(s);
    }
    /* another style: unchanged */
    char *a = NULL, *b = NULL;
    const chat_opts off = {.add_generation_prompt = 1, .enable_thinking = 0};
    assert_int_equal(chat_render_opts(CHAT_STYLE_CHATML, m, 1, &off, &a), 0);
    assert_int_equal(chat_render(CHAT_STYLE_CHATML, m, 1, 1, &b), 0);
    assert_string_equal(a, b);
    free(a);
    free(b);
    assert_int_equal(chat_render_opts(CHAT_STYLE_QWEN3, m, 1, NULL, &a), NI_EINVAL);
    assert_null(a);
}

/* Python strip() semantics on edge bytes: only whole whitespace code points
 * go; truncated/invalid UTF-8 is left alone and nothing reads out of bounds. */
static void test_strip_edges(void **state) {
    (void)state;
    struct { const char *in, *want; } t[] = {
        {"   ", ""},
        {"", ""},
        {"\xc2\xa0x\xc2\xa0", "x"},           /* U+00A0 both ends */
        {"x\xc2", "x\xc2"},                   /* truncated 2-byte sequence */
        {"\xa0x", "\xa0x"},                   /* lone continuation byte */
        {"x\x80\x80", "x\x80\x80"},           /* continuation bytes, not U+2000 */
        {"\xe2\x80x", "\xe2\x80x"},           /* truncated 3-byte lead */
        {"\xe2\x80\x8b" "x", "\xe2\x80\x8b" "x"}, /* U+200B is not whitespace */
        {"\xe2\x80\x8a" "x\xe3\x80\x80", "x"}, /* U+200A, U+3000 */
        {"x\x1c\x1d\x1e\x1f\x0b\x0c\r", "x"},
        {"\xe1\x9a\x80" "x\xe2\x81\x9f", "x"}, /* U+1680, U+205F */
    };
    for (size_t i = 0; i < NI_ARRAY_LEN(t); i++) {
        char *s = render1(CHAT_STYLE_LLAMA3, "user", t[i].in, 0);
        const char *pre = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n";
        size_t pl = strlen(pre), wl = strlen(t[i].want);
        assert_memory_equal(s, pre, pl);
        assert_memory_equal(s + pl, t[i].want, wl);
        assert_string_equal(s + pl + wl, "<|eot_id|>");
        free(s);
    }
}

static void test_large_content(void **state) {
    (void)state;
    size_t n = 3u << 20;
    char *big = malloc(n + 1);
    assert_non_null(big);
    for (size_t i = 0; i < n; i++) big[i] = (char)('a' + i % 26);
    big[n] = 0;
    chat_msg m[] = {{.role = "system", .content = big}, {.role = "user", .content = big},
                    {.role = "assistant", .content = big}, {.role = "user", .content = "end"}};
    for (int s = 0; s < CHAT_STYLE_COUNT; s++) {
        char *out = NULL;
        assert_int_equal(chat_render(s, m, 4, 1, &out), 0);
        assert_true(strlen(out) > 3 * n);
        assert_non_null(strstr(out, "end"));
        free(out);
    }
    free(big);
}

static void test_names(void **state) {
    (void)state;
    for (int s = 0; s < CHAT_STYLE_COUNT; s++) {
        const char *nm = chat_style_name(s);
        assert_string_not_equal(nm, "unknown");
        assert_int_equal(chat_style_from_name(nm), s);
    }
    assert_string_equal(chat_style_name(-1), "unknown");
    assert_string_equal(chat_style_name(CHAT_STYLE_COUNT), "unknown");
    assert_int_equal(chat_style_from_name("jinja"), NI_ENOTFOUND);
    assert_int_equal(chat_style_from_name(NULL), NI_ENOTFOUND);
    assert_string_equal(chat_bos_text(CHAT_STYLE_LLAMA3), "<|begin_of_text|>");
    assert_string_equal(chat_bos_text(CHAT_STYLE_LLAMA2), "<s>");
    assert_null(chat_bos_text(CHAT_STYLE_CHATML));
    assert_null(chat_bos_text(CHAT_STYLE_CHATML_SMOLLM));
    assert_null(chat_bos_text(CHAT_STYLE_QWEN3));
    assert_null(chat_bos_text(CHAT_STYLE_ZEPHYR));
    assert_false(chat_has_bos_text(CHAT_STYLE_LLAMA3, NULL));
}

/* Tools outside QWEN3 (no reference template knows them: our convention, see
 * chat.h): the Hermes block and calls in the ChatML family, Llama 3.1's
 * layout in LLAMA3, refusals in LLAMA2 / ZEPHYR. */
static void test_tools_other_styles(void **state) {
    (void)state;
    const char *tools[] = {"{\"type\": \"function\", \"function\": {\"name\": \"f\"}}"};
    chat_tool_call call = {.name = "f", .arguments = "{\"x\": 1}"};
    chat_msg m[] = {{.role = "user", .content = "q"},
                    {.role = "assistant", .content = "", .tool_calls = &call, .n_tool_calls = 1},
                    {.role = "tool", .content = "42"}};
    const chat_opts o = {.add_generation_prompt = 1, .enable_thinking = -1, .tools = tools, .n_tools = 1};
    char *out = NULL;
    assert_int_equal(chat_render_opts(CHAT_STYLE_CHATML_SMOLLM, m, 3, &o, &out), 0);
    assert_non_null(strstr(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
                                "trained by Hugging Face\n\n# Tools\n"));
    assert_non_null(strstr(out, "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"f\"}}\n</tools>"));
    assert_non_null(strstr(out, "<|im_start|>assistant\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call><|im_end|>\n"
                                "<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n"));
    assert_null(strstr(out, "<|im_start|>tool"));
    free(out);
    assert_int_equal(chat_render_opts(CHAT_STYLE_LLAMA3, m, 3, &o, &out), 0);
    assert_string_equal(out,
                        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nGiven the following "
                        "functions, please respond with a JSON for a function call with its proper "
                        "arguments that best answers the given prompt.\n\nRespond in the format "
                        "{\"name\": function name, \"parameters\": dictionary of argument name and its "
                        "value}.Do not use variables.\n\n{\"type\": \"function\", \"function\": "
                        "{\"name\": \"f\"}}\n\nq<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
                        "\n\n{\"name\": \"f\", \"parameters\": {\"x\": 1}}<|eot_id|><|start_header_id|>"
                        "ipython<|end_header_id|>\n\n42<|eot_id|><|start_header_id|>assistant"
                        "<|end_header_id|>\n\n");
    free(out);
    out = (char *)0x1;
    assert_int_equal(chat_render_opts(CHAT_STYLE_LLAMA2, m, 1, &o, &out), NI_EINVAL);
    assert_null(out);
    assert_int_equal(chat_render_opts(CHAT_STYLE_ZEPHYR, m, 3, &o, &out), NI_EINVAL);
    chat_tool_call bad = {.name = NULL, .arguments = "{}"};
    chat_msg mb[] = {{.role = "assistant", .content = "", .tool_calls = &bad, .n_tool_calls = 1}};
    assert_int_equal(chat_render_opts(CHAT_STYLE_QWEN3, mb, 1, &o, &out), NI_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_tools_other_styles),
        cmocka_unit_test(test_enable_thinking),
        cmocka_unit_test(test_detect_golden_sources),
        cmocka_unit_test(test_detect_other_sources),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_exact_small),
        cmocka_unit_test(test_strip_edges),
        cmocka_unit_test(test_large_content),
        cmocka_unit_test(test_names),
    };
    /* NI_TEST_FILTER / NI_TEST_SKIP=pattern (cmocka * ? wildcards) select tests. */
    tu_filters();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
