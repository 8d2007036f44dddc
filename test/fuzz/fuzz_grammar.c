/*
 * fuzz_grammar.c - the grammar compilers and the matcher on arbitrary bytes.
 * Input: byte 0 picks the front end (% 4: GBNF, regex, JSON Schema via
 * json_loadb, choices split at '\n'); the bytes up to the first NUL are its
 * text, the bytes after it drive the matcher. A compiler must refuse with a
 * one-line message or give a grammar; a grammar then gets a matcher over the
 * 256 single-byte tokens plus an end token (as test_util's tu_byte_vocab)
 * with a 4 MiB cache cap, which is fed the driving bytes as tokens and then
 * walked along the masks, the driving bytes choosing among the allowed
 * bytes. Failures (__builtin_trap), besides crashes, leaks and overflows:
 *   - a state other than >= 0, GR_DEAD or GR_ERROR; GR_ERROR without a
 *     negative code;
 *   - gr_matcher_bytes over the cap;
 *   - a mask bit of byte c that disagrees with gr_matcher_next(s, c) !=
 *     GR_DEAD, or an end-token bit that disagrees with accepting;
 *   - a live state that admits no token at all, or a finished state that
 *     admits a byte.
 * Stalls are caught by libFuzzer's -timeout (make fuzz passes 10 s here).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/grammar/grammar.h"

#define FZ_CAP ((size_t)4 << 20)
#define FZ_END 256
#define FZ_WORDS ((FZ_END + 1 + 31) / 32)
#define FZ_MAX_CHOICES 64
#define FZ_MASK_STEPS 64  /* steps of a feed / walk whose masks are cross-checked */
#define FZ_WALK_STEPS 512 /* longest walk */

static gr_vocab *g_vocab;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    static char bytes[256];
    static const char *ptr[FZ_END + 1];
    static size_t lens[FZ_END + 1];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        ptr[i] = &bytes[i];
        lens[i] = 1;
    }
    ptr[FZ_END] = "";
    lens[FZ_END] = 0;
    int32_t end = FZ_END;
    if (gr_vocab_new(&g_vocab, FZ_END + 1, ptr, lens, &end, 1)) abort();
    return 0;
}

static int one_line(const char *err) { return err[0] && !strchr(err, '\n'); }

static gr_grammar *compile(int kind, const char *text, size_t len) {
    char err[256];
    err[0] = 0;
    gr_grammar *g = NULL;
    int rc;
    if (kind == 0) {
        rc = gr_compile_gbnf(text, len, NULL, &g, err, sizeof err);
    } else if (kind == 1) {
        rc = gr_compile_regex(text, len, NULL, &g, err, sizeof err);
    } else if (kind == 2) {
        json_t *s = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
        if (!s) return NULL;
        rc = gr_compile_schema(s, NULL, &g, err, sizeof err);
        json_decref(s);
    } else {
        const char *c[FZ_MAX_CHOICES];
        size_t l[FZ_MAX_CHOICES];
        int n = 0;
        for (size_t i = 0, b = 0; i <= len && n < FZ_MAX_CHOICES; i++)
            if (i == len || text[i] == '\n') {
                c[n] = text + b;
                l[n++] = i - b;
                b = i + 1;
            }
        rc = gr_compile_choice(c, l, n, NULL, &g, err, sizeof err);
    }
    if (rc) {
        if (rc > 0 || g || !one_line(err)) __builtin_trap();
        return NULL;
    }
    if (!g) __builtin_trap();
    return g;
}

/* Checks state s; returns 1 to go on from it, 0 to stop (dead or error). */
static int check_state(gr_matcher *m, gr_state s) {
    if (gr_matcher_bytes(m) > FZ_CAP) __builtin_trap();
    if (s == GR_DEAD) return 0;
    if (s == GR_ERROR) {
        if (gr_matcher_error(m) >= 0) __builtin_trap();
        return 0;
    }
    if (s < 0) __builtin_trap();
    return 1;
}

/* Cross-checks the mask of live state s with gr_matcher_next; copies it to
 * out. Returns 1 when checked, 0 when the matcher ran out of memory. */
static int check_mask(gr_matcher *m, gr_state s, uint32_t out[FZ_WORDS]) {
    const uint32_t *allow;
    int rc = gr_matcher_mask(m, s, &allow);
    if (rc) {
        if (rc >= 0 || gr_matcher_error(m) >= 0) __builtin_trap();
        return 0;
    }
    memcpy(out, allow, FZ_WORDS * sizeof *out); /* allow lives until the next call */
    int any = 0;
    for (int c = 0; c <= FZ_END; c++) {
        int bit = (out[c >> 5] >> (c & 31)) & 1;
        any |= bit;
        gr_state n = gr_matcher_next(m, s, c);
        if (!check_state(m, n) && n == GR_ERROR) return 0;
        if (bit != (n != GR_DEAD)) __builtin_trap();
        if (c == FZ_END && bit != gr_matcher_accepting(m, s)) __builtin_trap();
        if (c < FZ_END && bit && gr_matcher_finished(m, s)) __builtin_trap();
    }
    if (!any) __builtin_trap();
    if (gr_matcher_bytes(m) > FZ_CAP) __builtin_trap();
    return 1;
}

/* Feeds drive[] byte by byte (the first FZ_MASK_STEPS states cross-checked). */
static void feed(gr_matcher *m, gr_state s, const uint8_t *drive, size_t n) {
    uint32_t mask[FZ_WORDS];
    for (size_t i = 0; i < n; i++) {
        if (i < FZ_MASK_STEPS && !check_mask(m, s, mask)) return;
        s = gr_matcher_next(m, s, drive[i]);
        if (!check_state(m, s)) return;
    }
    if (n < FZ_MASK_STEPS) check_mask(m, s, mask);
}

/* A walk along the masks: drive[] picks among the allowed tokens (the end
 * token finishes the walk). */
static void walk(gr_matcher *m, gr_state s, const uint8_t *drive, size_t n) {
    uint32_t mask[FZ_WORDS];
    for (size_t i = 0; i < FZ_WALK_STEPS; i++) {
        if (i < FZ_MASK_STEPS) {
            if (!check_mask(m, s, mask)) return;
        } else {
            const uint32_t *allow;
            if (gr_matcher_mask(m, s, &allow)) return;
            memcpy(mask, allow, sizeof mask);
        }
        int cand[FZ_END + 1], nc = 0;
        for (int c = 0; c <= FZ_END; c++)
            if ((mask[c >> 5] >> (c & 31)) & 1) cand[nc++] = c;
        if (!nc) __builtin_trap();
        int t = cand[(n ? drive[i % n] + (i / n) : i) % (size_t)nc];
        if (t == FZ_END) return;
        s = gr_matcher_next(m, s, t);
        if (!check_state(m, s)) {
            if (s == GR_DEAD) __builtin_trap(); /* the mask allowed it */
            return;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n < 1 || n > 16384) return 0;
    const uint8_t *text = data + 1, *nul = memchr(text, 0, n - 1);
    size_t tlen = nul ? (size_t)(nul - text) : n - 1;
    const uint8_t *drive = nul ? nul + 1 : data + n;
    size_t dlen = (size_t)(data + n - drive);
    gr_grammar *g = compile(data[0] % 4, (const char *)text, tlen);
    if (!g) return 0;
    gr_matcher *m;
    if (gr_matcher_new(&m, g, g_vocab, FZ_CAP) == 0) {
        gr_state s = gr_matcher_start(m);
        if (check_state(m, s)) {
            feed(m, s, drive, dlen);
            walk(m, s, drive, dlen);
        }
        gr_matcher_free(m);
    }
    gr_grammar_free(g);
    return 0;
}
