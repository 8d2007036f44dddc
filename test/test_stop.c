/*
 * test_stop.c - the output handling of one sequence (engine/stop.[ch]) alone:
 * no model, tokenizer or backend. Tokens are fed as the engine feeds them
 * (stop_check_token, then the token's bytes unless it is EOS / a stop id,
 * then stop_push_text), and every call's released text and reason are
 * checked against what OpenAI semantics allow at that point:
 *   - stop strings split across 2 and 3 tokens, a prefix held back and then
 *     released when the next bytes rule the match out (including an overlap
 *     where only a shorter suffix stays a prefix), two stop strings where the
 *     shorter completes first, a stop string in the very first token;
 *   - EOS vs stop ids vs ignore_eos, max_tokens and the context (LENGTH), and
 *     what a finish releases of the held text;
 *   - an incomplete UTF-8 character held back until its last byte arrives,
 *     and replaced by U+FFFD when the sequence ends first;
 *   - randomly split texts with random stop strings: the released text is
 *     exactly the text before the stop string that completes first (the
 *     earliest-starting one when several complete with the same token),
 *     never a stop string itself, and no chunk of a going sequence ends
 *     inside a character. Seeded from the clock each run (printed); NI_TEST_SEED=<n>
 *     reproduces a run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "engine/stop.h"
#include "engine/util/util.h"

#define TOK_TEXT 100 /* an ordinary token id (not a stop id) */
#define EURO "\xE2\x82\xAC"
#define FFFD "\xEF\xBF\xBD"

/* One sequence fed token by token, with the text released so far. */
typedef struct feed {
    stop_spec sp;
    stop_state st;
    int n_gen, n_tokens;
    char out[8192]; /* everything released, NUL-terminated */
    int out_len;
    char chunk[STOP_MAX_STR_LEN + STOP_MAX_TEXT + 8]; /* the last call's release */
    stop_reason why;
} feed;

static void feed_init(feed *f, const char *const *stops, int n_stops, const int32_t *ids, int n_ids,
                      int max_tokens, int ignore_eos) {
    memset(f, 0, sizeof *f);
    assert_int_equal(
        stop_spec_init(&f->sp, max_tokens, 1000, ignore_eos, ids, n_ids, stops, n_stops), 0);
    stop_state_init(&f->st);
}

/* Feeds token tok with decoded bytes[0..n) as the engine does; returns the
 * reason and leaves the released text in f->chunk. */
static stop_reason feed_tok(feed *f, int32_t tok, int is_eog, const char *bytes, int n) {
    assert_int_equal(f->why, STOP_REASON_NONE); /* nothing after a finish */
    f->n_gen++;
    f->n_tokens++;
    stop_reason why = stop_check_token(&f->sp, tok, is_eog, f->n_gen, f->n_tokens);
    const char *text = NULL;
    int len = -1;
    if (why == STOP_REASON_STOP) n = 0; /* EOS / stop ids: the token's text is never shown */
    f->why = stop_push_text(&f->st, &f->sp, why, bytes, n, &text, &len);
    assert_non_null(text);
    assert_in_range(len, 0, (int)sizeof f->chunk - 1);
    memcpy(f->chunk, text, (size_t)len);
    f->chunk[len] = 0;
    assert_true(f->out_len + len < (int)sizeof f->out);
    memcpy(f->out + f->out_len, text, (size_t)len);
    f->out_len += len;
    f->out[f->out_len] = 0;
    return f->why;
}

/* Feeds an ordinary token whose text is s and checks the call's reason and
 * released text. */
static void step(feed *f, const char *s, stop_reason want_why, const char *want_text) {
    assert_int_equal(feed_tok(f, TOK_TEXT, 0, s, (int)strlen(s)), want_why);
    assert_string_equal(f->chunk, want_text);
}

static void test_split_across_two_tokens(void **state) {
    (void)state;
    static feed f;
    const char *stops[] = {"END"};
    feed_init(&f, stops, 1, NULL, 0, 100, 0);
    step(&f, "abcE", STOP_REASON_NONE, "abc"); /* "E" may start "END" */
    step(&f, "NDxyz", STOP_REASON_STOP, "");   /* neither the stop string nor what follows */
    assert_string_equal(f.out, "abc");
}

static void test_split_across_three_tokens(void **state) {
    (void)state;
    static feed f;
    const char *stops[] = {"<|end|>"};
    feed_init(&f, stops, 1, NULL, 0, 100, 0);
    step(&f, "hi <|", STOP_REASON_NONE, "hi ");
    step(&f, "en", STOP_REASON_NONE, ""); /* "<|en" still held */
    step(&f, "d|> more", STOP_REASON_STOP, "");
    assert_string_equal(f.out, "hi ");
    assert_null(strstr(f.out, "<|"));
}

/* A held prefix comes out as soon as the next bytes rule the match out; when
 * only a shorter suffix is still a prefix, exactly that suffix stays held. */
static void test_prefix_held_then_released(void **state) {
    (void)state;
    static feed f;
    const char *stops[] = {"STOP"};
    feed_init(&f, stops, 1, NULL, 0, 100, 0);
    step(&f, "xST", STOP_REASON_NONE, "x");
    step(&f, "OX", STOP_REASON_NONE, "STOX");  /* "STOX": no suffix starts "STOP" */
    step(&f, "aSTS", STOP_REASON_NONE, "aST"); /* "STS": only the last "S" may still match */
    step(&f, "TO", STOP_REASON_NONE, "");      /* "STO" held */
    step(&f, "p", STOP_REASON_NONE, "STOp");   /* case matters */
    step(&f, "ST", STOP_REASON_NONE, "");
    step(&f, "OP!", STOP_REASON_STOP, "");
    assert_string_equal(f.out, "xSTOXaSTSTOp");
    assert_int_equal(f.n_gen, 7);
}

/* Of two stop strings the one completed first ends the text, whichever of
 * them is listed first and although the longer one was still possible. */
static void test_two_stops_shorter_first(void **state) {
    (void)state;
    static feed f;
    const char *orders[2][2] = {{"abcdef", "cd"}, {"cd", "abcdef"}};
    for (int o = 0; o < 2; o++) {
        feed_init(&f, orders[o], 2, NULL, 0, 100, 0);
        step(&f, "xab", STOP_REASON_NONE, "x"); /* "ab" may start "abcdef" */
        step(&f, "c", STOP_REASON_NONE, "");    /* "abc": both still possible */
        step(&f, "d", STOP_REASON_STOP, "ab");  /* "cd" complete; "abcdef" never will be */
        assert_string_equal(f.out, "xab");
    }
    /* both complete in one token: the earliest start wins */
    const char *stops[] = {"b", "xyz"};
    feed_init(&f, stops, 2, NULL, 0, 100, 0);
    step(&f, "axyzb", STOP_REASON_STOP, "a");
}

static void test_stop_at_first_token(void **state) {
    (void)state;
    static feed f;
    const char *stops[] = {"Hello"};
    feed_init(&f, stops, 1, NULL, 0, 100, 0);
    step(&f, "Hello world", STOP_REASON_STOP, "");
    assert_int_equal(f.out_len, 0);
    feed_init(&f, stops, 1, NULL, 0, 100, 0);
    step(&f, "Hello", STOP_REASON_STOP, "");
    feed_init(&f, stops, 1, NULL, 0, 1, 0); /* max_tokens 1: the stop string still wins */
    step(&f, "Hello", STOP_REASON_STOP, "");
}

/* EOS stops unless ignore_eos; stop ids stop either way and beat LENGTH; a
 * finish by token releases what was held for a stop string, never the
 * token's own text. */
static void test_stop_ids_eos_ignore_eos(void **state) {
    (void)state;
    static feed f;
    const int32_t ids[] = {7, 9};
    stop_spec sp;
    assert_int_equal(stop_spec_init(&sp, 10, 1000, 0, ids, 2, NULL, 0), 0);
    assert_int_equal(stop_check_token(&sp, 7, 0, 1, 5), STOP_REASON_STOP);
    assert_int_equal(stop_check_token(&sp, 9, 0, 1, 5), STOP_REASON_STOP);
    assert_int_equal(stop_check_token(&sp, 5, 1, 1, 5), STOP_REASON_STOP); /* EOS */
    assert_int_equal(stop_check_token(&sp, 5, 0, 1, 5), STOP_REASON_NONE);
    assert_int_equal(stop_check_token(&sp, 8, 0, 1, 5), STOP_REASON_NONE);
    assert_int_equal(stop_check_token(&sp, 9, 0, 10, 5), STOP_REASON_STOP); /* beats max_tokens */
    assert_int_equal(stop_check_token(&sp, 5, 1, 10, 5), STOP_REASON_STOP);
    assert_int_equal(stop_check_token(&sp, 5, 0, 10, 5), STOP_REASON_LENGTH);
    assert_int_equal(stop_spec_init(&sp, 10, 1000, 1, ids, 2, NULL, 0), 0);
    assert_int_equal(stop_check_token(&sp, 5, 1, 1, 5), STOP_REASON_NONE); /* ignore_eos */
    assert_int_equal(stop_check_token(&sp, 5, 1, 10, 5), STOP_REASON_LENGTH);
    assert_int_equal(stop_check_token(&sp, 7, 1, 1, 5), STOP_REASON_STOP); /* ids still stop */

    /* through the text path: EOS after a held prefix releases the prefix */
    const char *stops[] = {"END"};
    feed_init(&f, stops, 1, ids, 2, 100, 0);
    step(&f, "abE", STOP_REASON_NONE, "ab");
    assert_int_equal(feed_tok(&f, 3, 1, "<eos>", 5), STOP_REASON_STOP);
    assert_string_equal(f.chunk, "E");
    assert_string_equal(f.out, "abE");
    /* a stop id's text is never shown */
    feed_init(&f, stops, 1, ids, 2, 100, 0);
    step(&f, "ab", STOP_REASON_NONE, "ab");
    assert_int_equal(feed_tok(&f, 9, 0, "nine", 4), STOP_REASON_STOP);
    assert_string_equal(f.out, "ab");
    /* with ignore_eos the EOS token is ordinary text */
    feed_init(&f, stops, 1, ids, 2, 100, 1);
    assert_int_equal(feed_tok(&f, 3, 1, "<eos>", 5), STOP_REASON_NONE);
    assert_string_equal(f.out, "<eos>");
}

/* max_tokens and the context end with LENGTH and release everything held,
 * unless the last token completes a stop string (STOP, text before it). */
static void test_length(void **state) {
    (void)state;
    static feed f;
    const char *stops[] = {"END"};
    feed_init(&f, stops, 1, NULL, 0, 3, 0);
    step(&f, "a", STOP_REASON_NONE, "a");
    step(&f, "bE", STOP_REASON_NONE, "b");
    step(&f, "N", STOP_REASON_LENGTH, "EN"); /* the 3rd token: the held "EN" goes out */
    assert_string_equal(f.out, "abEN");
    feed_init(&f, stops, 1, NULL, 0, 2, 0);
    step(&f, "aE", STOP_REASON_NONE, "a");
    step(&f, "ND", STOP_REASON_STOP, "");
    assert_string_equal(f.out, "a");

    /* the context: prompt + generated reaching max_len */
    stop_spec sp;
    assert_int_equal(stop_spec_init(&sp, 100, 12, 0, NULL, 0, NULL, 0), 0);
    assert_int_equal(stop_check_token(&sp, 5, 0, 1, 11), STOP_REASON_NONE);
    assert_int_equal(stop_check_token(&sp, 5, 0, 2, 12), STOP_REASON_LENGTH);
    assert_int_equal(stop_check_token(&sp, 5, 0, 99, 11), STOP_REASON_NONE);
    assert_int_equal(stop_check_token(&sp, 5, 0, 100, 11), STOP_REASON_LENGTH);
}

/* A character split across tokens is released whole, with the token that
 * completes it; ASCII and invalid bytes are never held. */
static void test_utf8_held_back(void **state) {
    (void)state;
    static feed f;
    feed_init(&f, NULL, 0, NULL, 0, 100, 0);
    step(&f, "caf\xC3", STOP_REASON_NONE, "caf");
    step(&f, "\xA9!", STOP_REASON_NONE, "\xC3\xA9!");
    step(&f, "\xE2", STOP_REASON_NONE, ""); /* a 3-byte character over 3 tokens */
    step(&f, "\x82", STOP_REASON_NONE, "");
    step(&f, "\xAC", STOP_REASON_NONE, EURO);
    step(&f, "x\xF0\x9F", STOP_REASON_NONE, "x"); /* a 4-byte one over 2 */
    step(&f, "\x98\x80", STOP_REASON_NONE, "\xF0\x9F\x98\x80");
    step(&f, "\xFF", STOP_REASON_NONE, "\xFF"); /* invalid: passed through, not held */
    step(&f, "\x80", STOP_REASON_NONE, "\x80");
    step(&f, "\xE2\x82\xAC", STOP_REASON_NONE, EURO);
    assert_string_equal(f.out, "caf\xC3\xA9!" EURO "x\xF0\x9F\x98\x80\xFF\x80" EURO);

    /* the sequence ends before the character completes: U+FFFD, not a fragment */
    feed_init(&f, NULL, 0, NULL, 0, 2, 0);
    step(&f, "ab\xE2", STOP_REASON_NONE, "ab");
    step(&f, "\x82", STOP_REASON_LENGTH, FFFD);
    assert_string_equal(f.out, "ab" FFFD);

    /* with a stop string: the held character and the held prefix both wait */
    const char *stops[] = {EURO "!"};
    feed_init(&f, stops, 1, NULL, 0, 100, 0);
    step(&f, "a\xE2\x82", STOP_REASON_NONE, "a");
    step(&f, "\xAC", STOP_REASON_NONE, ""); /* a complete "€", still the stop's prefix */
    step(&f, "?", STOP_REASON_NONE, EURO "?");
    step(&f, "\xE2", STOP_REASON_NONE, "");
    step(&f, "\x82\xAC!", STOP_REASON_STOP, "");
    assert_string_equal(f.out, "a" EURO "?");

    /* a stop string starting inside a character (invalid UTF-8 on its own)
     * cuts it: the bytes before the match go out as they are */
    const char *cut[] = {"\xA9!"};
    feed_init(&f, cut, 1, NULL, 0, 100, 0);
    step(&f, "caf\xC3", STOP_REASON_NONE, "caf");
    step(&f, "\xA9!", STOP_REASON_STOP, "\xC3");
}

static void test_spec_validation(void **state) {
    (void)state;
    static stop_spec sp;
    char longest[STOP_MAX_STR_LEN + 2];
    memset(longest, 'a', sizeof longest);
    longest[STOP_MAX_STR_LEN] = 0;
    const char *ok[] = {longest};
    assert_int_equal(stop_spec_init(&sp, 1, 1, 0, NULL, 0, ok, 1), 0);
    assert_int_equal(sp.str_len[0], STOP_MAX_STR_LEN);
    longest[STOP_MAX_STR_LEN] = 'a';
    longest[STOP_MAX_STR_LEN + 1] = 0;
    assert_int_equal(stop_spec_init(&sp, 1, 1, 0, NULL, 0, ok, 1), NI_EINVAL);
    const char *empty[] = {""}, *null[] = {NULL};
    assert_int_equal(stop_spec_init(&sp, 1, 1, 0, NULL, 0, empty, 1), NI_EINVAL);
    assert_int_equal(stop_spec_init(&sp, 1, 1, 0, NULL, 0, null, 1), NI_EINVAL);
    const char *many[STOP_MAX_STR + 1];
    for (int i = 0; i <= STOP_MAX_STR; i++) many[i] = "x";
    assert_int_equal(stop_spec_init(&sp, 1, 1, 0, NULL, 0, many, STOP_MAX_STR), 0);
    assert_int_equal(stop_spec_init(&sp, 1, 1, 0, NULL, 0, many, STOP_MAX_STR + 1), NI_EINVAL);
    int32_t ids[STOP_MAX_IDS + 1] = {0};
    assert_int_equal(stop_spec_init(&sp, 1, 1, 0, ids, STOP_MAX_IDS, NULL, 0), 0);
    assert_int_equal(stop_spec_init(&sp, 1, 1, 0, ids, STOP_MAX_IDS + 1, NULL, 0), NI_EINVAL);
    assert_int_equal(stop_spec_init(&sp, 0, 1, 0, NULL, 0, NULL, 0), NI_EINVAL);
    assert_int_equal(stop_spec_init(&sp, 1, 0, 0, NULL, 0, NULL, 0), NI_EINVAL);
}

/* ---- randomised: released text == text before the first completed stop string ---- */

static uint64_t g_rng;

static uint64_t rng_next(void) {
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int irand(int n) { return (int)(rng_next() % (uint64_t)n); }

/* Appends 1..max random characters from a small alphabet (so that stop
 * strings occur often), with multi-byte ones to be split. */
static int rand_text(char *buf, int max) {
    static const char *alpha[] = {"a", "b", "c", "\xC3\xA9", EURO, "\xF0\x9F\x98\x80"};
    int n = 0, k = 1 + irand(max);
    for (int i = 0; i < k; i++) {
        const char *c = alpha[irand((int)NI_ARRAY_LEN(alpha))];
        memcpy(buf + n, c, strlen(c));
        n += (int)strlen(c);
    }
    buf[n] = 0;
    return n;
}

/* 1 when buf[0..n) ends with a lead byte missing continuation bytes. */
static int ends_open(const char *buf, int n) {
    for (int k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = (unsigned char)buf[n - k];
        if ((c & 0xC0) == 0x80) continue;
        int need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > k;
    }
    return 0;
}

static void test_random_splits(void **state) {
    (void)state;
    static feed f;
    static char text[1024], stop_buf[STOP_MAX_STR][64];
    for (int iter = 0; iter < 3000; iter++) {
        int n = rand_text(text, 60);
        int n_stops = irand(4);
        const char *stops[STOP_MAX_STR];
        for (int i = 0; i < n_stops; i++) {
            rand_text(stop_buf[i], 3);
            stops[i] = stop_buf[i];
        }
        /* split the bytes into tokens of 1..6 bytes, anywhere (inside characters too) */
        int cuts[1024], n_tok = 0;
        for (int off = 0; off < n;) {
            int len = 1 + irand(6); /* not inside NI_MIN, which evaluates twice */
            if (len > n - off) len = n - off;
            cuts[n_tok++] = len;
            off += len;
        }
        /* the reference: at the first token whose end completes a stop string,
         * the text ends where the earliest stop string in text[0 .. end) starts
         * (a longer one that began earlier but is not complete yet loses) */
        int first = -1;
        for (int t = 0, end = 0; t < n_tok && first < 0; t++) {
            end += cuts[t];
            for (int i = 0; i < n_stops; i++) {
                const char *p = memmem(text, (size_t)end, stops[i], strlen(stops[i]));
                if (p && (first < 0 || p - text < first)) first = (int)(p - text);
            }
        }
        int want_len = first >= 0 ? first : n;
        feed_init(&f, stops, n_stops, NULL, 0, n_tok, 0);
        int off = 0;
        for (int t = 0; t < n_tok && f.why == STOP_REASON_NONE; t++) {
            feed_tok(&f, TOK_TEXT, 0, text + off, cuts[t]);
            off += cuts[t];
            if (f.why == STOP_REASON_NONE && ends_open(f.out, f.out_len))
                fail_msg("iter %d: released text ends inside a character", iter);
            for (int i = 0; i < n_stops; i++)
                if (memmem(f.out, (size_t)f.out_len, stops[i], strlen(stops[i])))
                    fail_msg("iter %d: stop string %d was released", iter, i);
        }
        if (f.out_len != want_len || memcmp(f.out, text, (size_t)want_len))
            fail_msg("iter %d: released %d bytes, want %d (stop at %d of %d)", iter, f.out_len,
                     want_len, first, n);
        assert_int_equal(f.why, first >= 0 ? STOP_REASON_STOP : STOP_REASON_LENGTH);
    }
}

int main(void) {
    const char *env = getenv("NI_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    g_rng = seed;
    printf("test_stop: seed %llu (NI_TEST_SEED to reproduce)\n", (unsigned long long)seed);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_across_two_tokens),
        cmocka_unit_test(test_split_across_three_tokens),
        cmocka_unit_test(test_prefix_held_then_released),
        cmocka_unit_test(test_two_stops_shorter_first),
        cmocka_unit_test(test_stop_at_first_token),
        cmocka_unit_test(test_stop_ids_eos_ignore_eos),
        cmocka_unit_test(test_length),
        cmocka_unit_test(test_utf8_held_back),
        cmocka_unit_test(test_spec_validation),
        cmocka_unit_test(test_random_splits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
