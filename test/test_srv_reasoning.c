/*
 * test_srv_reasoning.c - the reasoning parsers (server/http/srv_reasoning.c):
 *   - a table of outputs, fed whole, against the reasoning/content split they
 *     must give (tags dropped, whitespace kept, unterminated blocks, tags
 *     that are not tags, text after </think> verbatim, UTF-8);
 *   - the same outputs, and random texts built from tag fragments, fed in
 *     random pieces (empty ones too, cuts inside tags and UTF-8 sequences):
 *     the concatenated output must equal the unsplit one, byte for byte.
 *     Randomised: prints its seed (NI_TEST_SEED repeats a run);
 *   - srv_reasoning_thinking along the way, and the parser names.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/util/util.h"
#include "server/http/srv_reasoning.h"
#include "server/http/srv_util.h"
#include "test_util.h"

typedef struct split_case {
    int parser;
    const char *text, *reasoning, *content;
} split_case;

#define Q SRV_REASONING_QWEN3
#define R SRV_REASONING_DEEPSEEK_R1
#define N SRV_REASONING_NONE
static const split_case g_cases[] = {
    {Q, "<think>\nabc\n</think>\n\nThe answer.", "\nabc\n", "\n\nThe answer."},
    {Q, "The answer only.", "", "The answer only."},
    {Q, "", "", ""},
    {Q, "\n <think>r</think>c", "r", "c"},        /* whitespace before the tag goes */
    {Q, "                 <think>r</think>c", "", /* 17 spaces: not an opening tag */
     "                 <think>r</think>c"},
    {Q, "<thin", "", "<thin"},                      /* cut off: text */
    {Q, "<think>unterminated", "unterminated", ""}, /* max_tokens inside the block */
    {Q, "<think>a</thin b</think>c", "a</thin b", "c"},
    {Q, "<think>a<</think>", "a<", ""},
    {Q, "<think>a</think", "a</think", ""},
    {Q, "<think><think></think>x", "<think>", "x"},
    {Q, "x<think>y</think>", "", "x<think>y</think>"}, /* not at the start: content */
    {Q, "<think></think>\n\nhi", "", "\n\nhi"},
    {Q, "<think>a</think>b<think>c</think>", "a", "b<think>c</think>"},
    {Q, "<think>\xc3\xa9\xf0\x9f\x98\x80</think>\xc3\xbc", "\xc3\xa9\xf0\x9f\x98\x80", "\xc3\xbc"},
    {R, "reason</think>answer", "reason", "answer"},
    {R, "<think>reason</think>answer", "reason", "answer"},
    {R, "  <think>\nr</think>\n\na", "\nr", "\n\na"},
    {R, "no end", "no end", ""},
    {R, "<thi", "<thi", ""},
    {R, "", "", ""},
    {N, "<think>a</think>b", "", "<think>a</think>b"},
};
#undef Q
#undef R
#undef N

/* Feeds text in the given pieces (cuts[0..n_cuts) ascending offsets), then flushes. */
static void run(int parser, const char *text, size_t len, const size_t *cuts, int n_cuts,
                srv_buf *reasoning, srv_buf *content) {
    srv_reasoning r;
    srv_reasoning_init(&r, parser);
    size_t at = 0;
    for (int i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        assert_int_equal(srv_reasoning_feed(&r, text + at, end - at, reasoning, content), 0);
        at = end;
    }
    assert_int_equal(srv_reasoning_flush(&r, reasoning, content), 0);
}

static void expect_buf(const char *what, const char *text, const srv_buf *got, const char *want,
                       size_t want_len) {
    if (srv_buf_size(got) != want_len || memcmp(srv_buf_ptr(got), want, want_len))
        fail_msg("%s of \"%s\": got \"%.*s\" (%zu bytes), want \"%.*s\" (%zu bytes)", what, text,
                 (int)srv_buf_size(got), srv_buf_ptr(got), srv_buf_size(got), (int)want_len, want,
                 want_len);
}

static void test_table(void **state) {
    (void)state;
    for (size_t i = 0; i < NI_ARRAY_LEN(g_cases); i++) {
        const split_case *c = &g_cases[i];
        srv_buf rb = {0}, cb = {0};
        run(c->parser, c->text, strlen(c->text), NULL, 0, &rb, &cb);
        expect_buf("reasoning", c->text, &rb, c->reasoning, strlen(c->reasoning));
        expect_buf("content", c->text, &cb, c->content, strlen(c->content));
        srv_buf_free(&rb);
        srv_buf_free(&cb);
    }
}

/* Random cut points (sorted, repeats allowed: empty pieces) into cuts. */
static int random_cuts(tu_rng *g, size_t len, size_t *cuts, int cap) {
    int n = tu_int(g, cap + 1);
    for (int i = 0; i < n; i++) cuts[i] = (size_t)tu_int(g, (int)len + 1);
    for (int i = 1; i < n; i++) /* insertion sort */
        for (int j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
            size_t t = cuts[j];
            cuts[j] = cuts[j - 1];
            cuts[j - 1] = t;
        }
    return n;
}

static void check_splits(tu_rng *g, int parser, const char *text, size_t len, int rounds) {
    srv_buf rw = {0}, cw = {0};
    run(parser, text, len, NULL, 0, &rw, &cw);
    size_t cuts[64];
    for (int k = 0; k < rounds; k++) {
        srv_buf rb = {0}, cb = {0};
        int n = random_cuts(g, len, cuts, (int)NI_MIN(len + 2, NI_ARRAY_LEN(cuts)));
        run(parser, text, len, cuts, n, &rb, &cb);
        expect_buf("split reasoning", text, &rb, srv_buf_ptr(&rw), srv_buf_size(&rw));
        expect_buf("split content", text, &cb, srv_buf_ptr(&cw), srv_buf_size(&cw));
        srv_buf_free(&rb);
        srv_buf_free(&cb);
    }
    srv_buf_free(&rw);
    srv_buf_free(&cw);
}

static void test_random_splits(void **state) {
    (void)state;
    tu_rng g;
    tu_seed(&g, "test_srv_reasoning");
    for (size_t i = 0; i < NI_ARRAY_LEN(g_cases); i++)
        check_splits(&g, g_cases[i].parser, g_cases[i].text, strlen(g_cases[i].text), 200);
    /* random texts made of tag fragments */
    static const char *const frag[] = {
        "<", "/",  ">", "think", "<think>",  "</think>",         "<th", "</thin",
        " ", "\n", "a", "b c",   "\xc3\xa9", "\xf0\x9f\x98\x80", "<<",  "</"};
    char text[256];
    for (int t = 0; t < 2000; t++) {
        size_t len = 0;
        int nf = 1 + tu_int(&g, 12);
        for (int k = 0; k < nf; k++) {
            const char *f = frag[tu_int(&g, (int)NI_ARRAY_LEN(frag))];
            size_t fl = strlen(f);
            if (len + fl >= sizeof text) break;
            memcpy(text + len, f, fl);
            len += fl;
        }
        text[len] = 0;
        check_splits(&g, SRV_REASONING_QWEN3 + t % 2, text, len, 8);
        /* the split loses no byte: reasoning + content + the dropped tags = the text */
        srv_buf rb = {0}, cb = {0};
        run(SRV_REASONING_QWEN3 + t % 2, text, len, NULL, 0, &rb, &cb);
        if (srv_buf_size(&rb) + srv_buf_size(&cb) > len)
            fail_msg("\"%s\": %zu + %zu bytes out of %zu in", text, srv_buf_size(&rb),
                     srv_buf_size(&cb), len);
        srv_buf_free(&rb);
        srv_buf_free(&cb);
    }
}

static void test_thinking_and_names(void **state) {
    (void)state;
    srv_reasoning r;
    srv_buf rb = {0}, cb = {0};
    srv_reasoning_init(&r, SRV_REASONING_QWEN3);
    assert_false(srv_reasoning_thinking(&r));
    assert_int_equal(srv_reasoning_feed(&r, "<think>", 7, &rb, &cb), 0);
    assert_true(srv_reasoning_thinking(&r));
    assert_int_equal(srv_reasoning_feed(&r, "x</thi", 6, &rb, &cb), 0);
    assert_true(srv_reasoning_thinking(&r));
    expect_buf("held back", "<think>x</thi", &rb, "x", 1); /* "</thi" is held */
    assert_int_equal(srv_reasoning_feed(&r, "nk>y", 4, &rb, &cb), 0);
    assert_false(srv_reasoning_thinking(&r));
    expect_buf("content", "nk>y", &cb, "y", 1);
    srv_reasoning_init(&r, SRV_REASONING_DEEPSEEK_R1);
    assert_true(srv_reasoning_thinking(&r));
    srv_reasoning_init(&r, SRV_REASONING_NONE);
    assert_false(srv_reasoning_thinking(&r));
    srv_buf_free(&rb);
    srv_buf_free(&cb);
    for (int p = SRV_REASONING_NONE; p <= SRV_REASONING_DEEPSEEK_R1; p++)
        assert_int_equal(srv_reasoning_parser_from_name(srv_reasoning_parser_name(p)), p);
    assert_string_equal(srv_reasoning_parser_name(SRV_REASONING_DEEPSEEK_R1), "deepseek_r1");
    assert_int_equal(srv_reasoning_parser_from_name("qwen"), NI_ENOTFOUND);
    assert_int_equal(srv_reasoning_parser_from_name(NULL), NI_ENOTFOUND);
    assert_string_equal(srv_reasoning_parser_name(7), "unknown");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_random_splits),
        cmocka_unit_test(test_thinking_and_names),
    };
    tu_filters();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
