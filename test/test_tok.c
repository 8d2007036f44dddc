/*
 * test_tok.c - tokenizer tests (cmocka), run from the repository root.
 *
 * Golden ids come from the real references (HF tokenizers/transformers and
 * the sentencepiece package) through scripts/gen_tok_golden.py, stored under
 * test/fixtures/tok_*.json. Covered:
 *  - SmolLM2 byte-level BPE from the GGUF ($NI_MODEL, default
 *    models/SmolLM2-135M-Instruct.Q4_1.gguf; skipped with a message if absent)
 *  - LLaMA SentencePiece and GPT-2 vocab GGUFs from ../shared/vocab, with both
 *    our fixtures and the llama.cpp .inp/.out pairs (skipped if absent)
 *  - a tiny tokenizer.model (libsentencepiece path), the same model as legacy
 *    and Metaspace tokenizer.json, and two tiny byte-level tokenizer.json
 *    (SmolLM2-style Digits+ByteLevel, LLaMA-3-style Split+ignore_merges+BOS)
 *  - decode == HF decode(skip_special_tokens=True), the streaming
 *    detokenizer (never a broken UTF-8 sequence, same text as decode; the
 *    same text again when tokens are pushed in pieces, on random ids whose
 *    seed is printed), error paths and encode speed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "engine/format/gguf.h"
#include "engine/util/util.h"
#include "tokenizer/tok.h"
#include "test_util.h"

#define SHARED_VOCAB "../shared/vocab"

/* ------------------------------------------------------------------------ */
/* helpers                                                                   */
/* ------------------------------------------------------------------------ */

static int exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* 1 if s[0..n) is valid UTF-8 */
static int valid_utf8(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        int k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) k = 0;
        else if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c == 0xE0) k = 2, lo = 0xA0;
        else if (c == 0xED) k = 2, hi = 0x9F;
        else if (c >= 0xE1 && c <= 0xEF) k = 2;
        else if (c == 0xF0) k = 3, lo = 0x90;
        else if (c == 0xF4) k = 3, hi = 0x8F;
        else if (c >= 0xF1 && c <= 0xF3) k = 3;
        else return 0;
        if (i + (size_t)k >= n + (k ? 0 : 1)) return 0;
        for (int j = 1; j <= k; j++) {
            unsigned b = p[i + (size_t)j];
            if (b < (j == 1 ? lo : 0x80) || b > (j == 1 ? hi : 0xBF)) return 0;
        }
        i += (size_t)k + 1;
    }
    return 1;
}

static void print_escaped(const char *s, size_t n) {
    for (size_t i = 0; i < n && i < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') printf("\\n");
        else if (c == '\t') printf("\\t");
        else if (c < 0x20) printf("\\x%02x", c);
        else putchar(c);
    }
    if (n > 80) printf("...");
}

static void print_ids(const char *label, const int32_t *ids, int n) {
    printf("    %s (%d):", label, n);
    for (int i = 0; i < n && i < 24; i++) printf(" %d", ids[i]);
    if (n > 24) printf(" ...");
    printf("\n");
}

/* Encodes into a heap array (grown on demand); returns the count or < 0. */
static int encode_all(const tok_tokenizer *t, const char *s, size_t n, int add_bos, int special, int32_t **out) {
    int cap = 16;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)cap);
    int k = tok_encode(t, s, n, add_bos, special, ids, cap);
    if (k > cap) {
        free(ids);
        cap = k;
        ids = malloc(sizeof(int32_t) * (size_t)cap);
        int k2 = tok_encode(t, s, n, add_bos, special, ids, cap);
        assert_int_equal(k2, k);
    }
    *out = ids;
    return k;
}

/* Decodes into a heap string. */
static char *decode_all(const tok_tokenizer *t, const int32_t *ids, int n, int *len) {
    int need = tok_decode(t, ids, n, NULL, 0);
    assert_true(need >= 0);
    char *buf = malloc((size_t)need + 1);
    int k = tok_decode(t, ids, n, buf, (size_t)need + 1);
    assert_int_equal(k, need);
    *len = need;
    return buf;
}

/* Streams ids through tok_stream: every chunk must be valid UTF-8. Returns
 * the concatenation (heap). */
static char *stream_all(const tok_tokenizer *t, const int32_t *ids, int n, size_t *len) {
    tok_stream st;
    tok_stream_init(&st, t);
    size_t cap = 256, w = 0;
    char *all = malloc(cap);
    char out[4096];
    for (int i = 0; i <= n; i++) {
        int k = i < n ? tok_stream_push(&st, ids[i], out, sizeof out) : tok_stream_flush(&st, out, sizeof out);
        assert_true(k >= 0);
        assert_true(valid_utf8(out, (size_t)k));
        if (w + (size_t)k + 1 > cap) {
            while (w + (size_t)k + 1 > cap) cap *= 2;
            all = realloc(all, cap);
        }
        memcpy(all + w, out, (size_t)k);
        w += (size_t)k;
    }
    all[w] = 0;
    *len = w;
    return all;
}

static int has_fffd(const char *s, size_t n) {
    for (size_t i = 0; i + 2 < n; i++)
        if ((unsigned char)s[i] == 0xEF && (unsigned char)s[i + 1] == 0xBF && (unsigned char)s[i + 2] == 0xBD)
            return 1;
    return 0;
}

static int32_t *json_ids(json_t *arr, int *n) {
    *n = (int)json_array_size(arr);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(*n + 1));
    for (int i = 0; i < *n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return ids;
}

typedef struct fx_stats {
    int cases, enc_bad, dec_bad, stream_bad, stream_checked;
} fx_stats;

/* Runs every case of a fixture against t. stream_exact: the stream must equal
 * decode on every case (else only where decode has no U+FFFD). */
static fx_stats run_fixture(const tok_tokenizer *t, const char *path, int stream_exact) {
    fx_stats s = {0};
    json_error_t je;
    json_t *j = json_load_file(path, JSON_ALLOW_NUL, &je);
    if (!j) {
        printf("cannot load fixture %s: %s (line %d)\n", path, je.text, je.line);
        fail();
    }
    json_t *cases = json_object_get(j, "cases");
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *text = json_string_value(json_object_get(c, "text"));
        size_t tl = json_string_length(json_object_get(c, "text"));
        int ps = (int)json_integer_value(json_object_get(c, "parse_special"));
        /* HF add_special_tokens=True adds BOS only where the model asks for it */
        int ab = json_is_integer(json_object_get(c, "add_bos")) && json_integer_value(json_object_get(c, "add_bos")) &&
                 tok_add_bos(t);
        int nw;
        int32_t *want = json_ids(json_object_get(c, "ids"), &nw);
        int32_t *got;
        int ng = encode_all(t, text, tl, ab, ps, &got);
        s.cases++;
        if (ng != nw || memcmp(got, want, sizeof(int32_t) * (size_t)nw) != 0) {
            if (s.enc_bad++ < 8) {
                printf("  %s: encode mismatch (parse_special=%d) for \"", path, ps);
                print_escaped(text, tl);
                printf("\"\n");
                print_ids("want", want, nw);
                print_ids("got ", got, ng);
            }
        }
        /* decode of the reference ids */
        const char *dw = json_string_value(json_object_get(c, "decoded"));
        size_t dwl = json_string_length(json_object_get(c, "decoded"));
        int dl;
        char *d = decode_all(t, want, nw, &dl);
        if ((size_t)dl != dwl || memcmp(d, dw, dwl) != 0) {
            if (s.dec_bad++ < 8) {
                printf("  %s: decode mismatch for \"", path);
                print_escaped(dw, dwl);
                printf("\"\n    got \"");
                print_escaped(d, (size_t)dl);
                printf("\"\n");
            }
        }
        if (stream_exact || !has_fffd(dw, dwl)) {
            size_t sl;
            char *st = stream_all(t, want, nw, &sl);
            s.stream_checked++;
            if (sl != dwl || memcmp(st, dw, dwl) != 0) {
                if (s.stream_bad++ < 8) {
                    printf("  %s: stream differs from decode for \"", path);
                    print_escaped(dw, dwl);
                    printf("\"\n    got \"");
                    print_escaped(st, sl);
                    printf("\"\n");
                }
            }
            free(st);
        }
        free(d);
        free(want);
        free(got);
    }
    json_t *dcs = json_object_get(j, "decode_cases");
    json_array_foreach(dcs, i, c) {
        int n;
        int32_t *ids = json_ids(json_object_get(c, "ids"), &n);
        const char *dw = json_string_value(json_object_get(c, "text"));
        size_t dwl = json_string_length(json_object_get(c, "text"));
        int dl;
        char *d = decode_all(t, ids, n, &dl);
        s.cases++;
        if ((size_t)dl != dwl || memcmp(d, dw, dwl) != 0) {
            if (s.dec_bad++ < 8) {
                printf("  %s: decode_cases[%zu] mismatch: want \"", path, i);
                print_escaped(dw, dwl);
                printf("\" got \"");
                print_escaped(d, (size_t)dl);
                printf("\"\n");
                print_ids("ids", ids, n);
            }
        }
        if (stream_exact || !has_fffd(dw, dwl)) {
            size_t sl;
            char *st = stream_all(t, ids, n, &sl);
            s.stream_checked++;
            if (sl != dwl || memcmp(st, dw, dwl) != 0) {
                if (s.stream_bad++ < 8) {
                    printf("  %s: decode_cases[%zu] stream differs: want \"", path, i);
                    print_escaped(dw, dwl);
                    printf("\" got \"");
                    print_escaped(st, sl);
                    printf("\"\n");
                }
            }
            free(st);
        }
        free(d);
        free(ids);
    }
    json_decref(j);
    printf("  %s: %d cases, encode mismatches %d, decode mismatches %d, stream checked %d, stream mismatches %d\n",
           path, s.cases, s.enc_bad, s.dec_bad, s.stream_checked, s.stream_bad);
    return s;
}

static void assert_fixture(const tok_tokenizer *t, const char *path, int stream_exact) {
    fx_stats s = run_fixture(t, path, stream_exact);
    assert_true(s.cases > 0);
    assert_int_equal(s.enc_bad, 0);
    assert_int_equal(s.dec_bad, 0);
    assert_int_equal(s.stream_bad, 0);
}

/* llama.cpp vocab test pairs: X.gguf.inp (texts split by
 * "\n__ggml_vocab_test__\n") and X.gguf.out (ids per line). */
static void check_vocab_pairs(const tok_tokenizer *t, const char *gguf_path) {
    char pi[512], po[512];
    snprintf(pi, sizeof pi, "%s.inp", gguf_path);
    snprintf(po, sizeof po, "%s.out", gguf_path);
    char *inp, *outp;
    size_t il, ol;
    assert_int_equal(ni_read_file(pi, &inp, &il), 0);
    assert_int_equal(ni_read_file(po, &outp, &ol), 0);
    const char *sep = "\n__ggml_vocab_test__\n";
    size_t sl = strlen(sep);
    char *p = inp, *line = outp;
    int n = 0, bad = 0;
    for (;;) {
        char *e = strstr(p, sep);
        if (!e) break;
        char *le = strchr(line, '\n');
        assert_non_null(le);
        *le = 0;
        int32_t want[4096];
        int nw = 0;
        char *q = line;
        for (;;) {
            char *end;
            long v = strtol(q, &end, 10);
            if (end == q) break;
            want[nw++] = (int32_t)v;
            q = end;
        }
        int32_t *got;
        int ng = encode_all(t, p, (size_t)(e - p), 0, 0, &got);
        n++;
        if (ng != nw || memcmp(got, want, sizeof(int32_t) * (size_t)nw) != 0) {
            bad++;
            printf("  %s: mismatch for \"", pi);
            print_escaped(p, (size_t)(e - p));
            printf("\"\n");
            print_ids("want", want, nw);
            print_ids("got ", got, ng);
        }
        free(got);
        p = e + sl;
        line = le + 1;
    }
    printf("  %s: %d strings, %d mismatches\n", pi, n, bad);
    assert_true(n >= 40);
    assert_int_equal(bad, 0);
    free(inp);
    free(outp);
}

static tok_tokenizer *load_gguf_tok(const char *path) {
    gguf_ctx g;
    char err[512] = "";
    int rc = gguf_open(&g, path, err, sizeof err);
    if (rc) printf("gguf_open: %s\n", err);
    assert_int_equal(rc, 0);
    tok_tokenizer *t = NULL;
    double t0 = ni_now();
    rc = tok_load_gguf(&t, &g, err, sizeof err);
    if (rc) printf("tok_load_gguf: %s\n", err);
    assert_int_equal(rc, 0);
    printf("  loaded %s in %.1f ms\n", path, (ni_now() - t0) * 1e3);
    gguf_close(&g); /* the tokenizer must not keep views into the mapping */
    return t;
}

static tok_tokenizer *load_hf_tok(const char *dir) {
    char err[512] = "";
    tok_tokenizer *t = NULL;
    int rc = tok_load_hf(&t, dir, err, sizeof err);
    if (rc) printf("tok_load_hf(%s): %s\n", dir, err);
    assert_int_equal(rc, 0);
    return t;
}

/* ------------------------------------------------------------------------ */
/* tests                                                                     */
/* ------------------------------------------------------------------------ */

/* Random id sequences give the same text streamed whole (tok_stream_push)
 * and in pieces of 8..18 bytes (tok_stream_push_part with a small cap), on
 * a SentencePiece and a byte-level vocabulary: byte tokens, invalid and
 * split UTF-8 included. */
static void test_stream_pieces(void **state) {
    (void)state;
    tu_rng rng;
    tu_seed(&rng, "test_tok");
    const char *dirs[] = {"test/models/tiny-llama2", "test/models/tiny-llama3"};
    for (size_t d = 0; d < NI_ARRAY_LEN(dirs); d++) {
        tok_tokenizer *t = load_hf_tok(dirs[d]);
        const int V = tok_vocab_size(t);
        for (int rep = 0; rep < 200; rep++) {
            int32_t ids[30];
            tu_fill_int(&rng, ids, NI_ARRAY_LEN(ids), V);
            tok_stream whole, part;
            tok_stream_init(&whole, t);
            tok_stream_init(&part, t);
            char a[8192], b[8192], out[4096];
            size_t na = 0, nb = 0;
            const size_t cap = TOK_STREAM_PART_MIN + (size_t)tu_int(&rng, 33);
            for (size_t i = 0; i < NI_ARRAY_LEN(ids); i++) {
                int k = tok_stream_push(&whole, ids[i], out, sizeof out);
                assert_true(k >= 0);
                memcpy(a + na, out, (size_t)k), na += (size_t)k;
                size_t off = 0;
                int more = 1, pieces = 0;
                while (more) {
                    k = tok_stream_push_part(&part, ids[i], &off, &more, out, cap);
                    assert_true(k >= 0 && (size_t)k <= cap);
                    memcpy(b + nb, out, (size_t)k), nb += (size_t)k;
                    assert_true(++pieces < 1000);
                }
            }
            int k = tok_stream_flush(&whole, out, sizeof out);
            memcpy(a + na, out, (size_t)k), na += (size_t)k;
            k = tok_stream_flush(&part, out, sizeof out);
            memcpy(b + nb, out, (size_t)k), nb += (size_t)k;
            if (na != nb || memcmp(a, b, na))
                fail_msg("%s rep %d cap %zu: %zu bytes whole, %zu in pieces", dirs[d], rep, cap, na, nb);
            assert_true(valid_utf8(b, nb));
        }
        size_t off = 0;
        int more;
        char out[64];
        tok_stream st;
        tok_stream_init(&st, t);
        assert_int_equal(tok_stream_push_part(&st, 0, &off, &more, out, TOK_STREAM_PART_MIN - 1),
                         NI_ERANGE);
        assert_int_equal(tok_stream_push_part(&st, V, &off, &more, out, sizeof out), NI_EINVAL);
        off = 1u << 20;
        assert_int_equal(tok_stream_push_part(&st, 0, &off, &more, out, sizeof out), NI_EINVAL);
        tok_free(t);
    }
}

static void test_smollm2_gguf(void **state) {
    (void)state;
    const char *mp = tu_model_path();
    if (!exists(mp)) {
        printf("SKIP test_smollm2_gguf: model %s not found (set NI_MODEL or run make model)\n", mp);
        skip();
    }
    tok_tokenizer *t = load_gguf_tok(mp);
    assert_int_equal(tok_kind(t), TOK_KIND_BPE);
    assert_int_equal(tok_vocab_size(t), 49152);
    assert_int_equal(tok_bos(t), 1);
    assert_int_equal(tok_eos(t), 2);
    assert_int_equal(tok_add_bos(t), 0);
    assert_int_equal(tok_lookup(t, "<|im_end|>"), 2);
    assert_true(tok_is_eog(t, 2));
    assert_true(tok_is_eog(t, 0)); /* <|endoftext|> */
    assert_false(tok_is_eog(t, 1));
    assert_false(tok_is_eog(t, 100));
    assert_true(tok_is_special(t, 1));
    assert_fixture(t, "test/fixtures/tok_smollm2.json", 1);
    tok_free(t);
}

static void test_gpt2_vocab(void **state) {
    (void)state;
    const char *p = SHARED_VOCAB "/ggml-vocab-gpt-2.gguf";
    if (!exists(p)) {
        printf("SKIP test_gpt2_vocab: %s not found (../shared/vocab absent)\n", p);
        skip();
    }
    tok_tokenizer *t = load_gguf_tok(p);
    assert_int_equal(tok_kind(t), TOK_KIND_BPE);
    assert_true(tok_is_eog(t, 50256));
    check_vocab_pairs(t, p);
    assert_fixture(t, "test/fixtures/tok_gpt2.json", 1);
    tok_free(t);
}

static void test_llama_spm_vocab(void **state) {
    (void)state;
    const char *p = SHARED_VOCAB "/ggml-vocab-llama-spm.gguf";
    if (!exists(p)) {
        printf("SKIP test_llama_spm_vocab: %s not found (../shared/vocab absent)\n", p);
        skip();
    }
    tok_tokenizer *t = load_gguf_tok(p);
    assert_int_equal(tok_kind(t), TOK_KIND_SPM);
    assert_int_equal(tok_vocab_size(t), 32000);
    assert_int_equal(tok_bos(t), 1);
    assert_int_equal(tok_eos(t), 2);
    assert_int_equal(tok_add_bos(t), 1);
    assert_true(tok_is_eog(t, 2));
    assert_false(tok_is_eog(t, 1));
    check_vocab_pairs(t, p);
    assert_fixture(t, "test/fixtures/tok_llama_spm.json", 0);
    /* BOS handling and HF's leading-space strip */
    int32_t ids[16];
    int n = tok_encode(t, "Hello", 5, 1, 0, ids, 16);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 15043);
    char buf[64];
    assert_int_equal(tok_decode(t, ids, n, buf, sizeof buf), 5);
    assert_string_equal(buf, "Hello");
    tok_free(t);
}

static void test_spm_tiny_model(void **state) {
    (void)state;
    tok_tokenizer *t = load_hf_tok("test/fixtures/tok_spm_tiny");
    assert_int_equal(tok_kind(t), TOK_KIND_SPM);
    assert_int_equal(tok_bos(t), 1);
    assert_int_equal(tok_eos(t), 2);
    assert_int_equal(tok_add_bos(t), 1);
    assert_fixture(t, "test/fixtures/tok_spm_tiny.json", 0);
    tok_free(t);
}

static void test_spm_tiny_json(void **state) {
    (void)state;
    tok_tokenizer *t = load_hf_tok("test/fixtures/tok_spm_tiny_json");
    assert_int_equal(tok_kind(t), TOK_KIND_SPM);
    assert_int_equal(tok_add_bos(t), 1);
    assert_fixture(t, "test/fixtures/tok_spm_tiny_json.json", 0);
    /* same ids as the libsentencepiece path on the tokenizer.model */
    tok_tokenizer *m = load_hf_tok("test/fixtures/tok_spm_tiny");
    const char *s = "Hello world, 12345 café 日本 🦙  two  spaces\n\ttab";
    int32_t *a, *b;
    int na = encode_all(t, s, strlen(s), 1, 1, &a), nb = encode_all(m, s, strlen(s), 1, 1, &b);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, sizeof(int32_t) * (size_t)na);
    free(a);
    free(b);
    tok_free(m);
    tok_free(t);
}

static void test_spm_tiny_meta(void **state) {
    (void)state;
    tok_tokenizer *t = load_hf_tok("test/fixtures/tok_spm_tiny_meta");
    assert_int_equal(tok_kind(t), TOK_KIND_SPM);
    assert_fixture(t, "test/fixtures/tok_spm_tiny_meta.json", 0);
    tok_free(t);
}

static void test_bpe_tiny_digits(void **state) {
    (void)state;
    tok_tokenizer *t = load_hf_tok("test/fixtures/tok_bpe_tiny_digits");
    assert_int_equal(tok_kind(t), TOK_KIND_BPE);
    assert_int_equal(tok_add_bos(t), 0);
    assert_int_equal(tok_eos(t), tok_lookup(t, "<|im_end|>"));
    assert_true(tok_is_eog(t, tok_lookup(t, "<|im_end|>")));
    assert_true(tok_is_eog(t, tok_lookup(t, "<|endoftext|>")));
    assert_fixture(t, "test/fixtures/tok_bpe_tiny_digits.json", 1);
    tok_free(t);
}

static void test_bpe_tiny_l3(void **state) {
    (void)state;
    tok_tokenizer *t = load_hf_tok("test/fixtures/tok_bpe_tiny_l3");
    assert_int_equal(tok_kind(t), TOK_KIND_BPE);
    assert_int_equal(tok_add_bos(t), 1); /* from the TemplateProcessing post-processor */
    assert_int_equal(tok_bos(t), tok_lookup(t, "<|begin_of_text|>"));
    assert_true(tok_is_eog(t, tok_lookup(t, "<|eot_id|>")));
    assert_true(tok_is_eog(t, tok_lookup(t, "<|end_of_text|>")));
    assert_false(tok_is_special(t, tok_lookup(t, "<tool>")));
    /* clean_up_tokenization_spaces=true in its config: transformers ignores it for BPE */
    assert_fixture(t, "test/fixtures/tok_bpe_tiny_l3.json", 1);
    tok_free(t);
}

/* Pushes the single-byte tokens of s one at a time (byte-level vocab) and
 * checks nothing is emitted until a character completes. */
static void stream_bytes_bpe(const tok_tokenizer *t, const char *s) {
    tok_stream st;
    tok_stream_init(&st, t);
    char out[256], all[256];
    size_t w = 0, n = strlen(s);
    for (size_t i = 0; i < n; i++) {
        char piece[8];
        /* byte -> GPT-2 mapped char */
        unsigned b = (unsigned char)s[i];
        unsigned cp;
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if (printable) cp = b;
        else {
            unsigned k = 0;
            for (unsigned x = 0; x < b; x++)
                if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE))) k++;
            cp = 256 + k;
        }
        if (cp < 0x80) piece[0] = (char)cp, piece[1] = 0;
        else piece[0] = (char)(0xC0 | (cp >> 6)), piece[1] = (char)(0x80 | (cp & 0x3F)), piece[2] = 0;
        int32_t id = tok_lookup(t, piece);
        assert_true(id >= 0);
        int k = tok_stream_push(&st, id, out, sizeof out);
        assert_true(k >= 0);
        assert_true(valid_utf8(out, (size_t)k));
        memcpy(all + w, out, (size_t)k);
        w += (size_t)k;
        if (i % 2 == 0) { /* a special token in between must not break the sequence */
            int32_t sp = tok_lookup(t, "<|endoftext|>");
            if (sp >= 0) assert_int_equal(tok_stream_push(&st, sp, out, sizeof out), 0);
        }
    }
    int k = tok_stream_flush(&st, out, sizeof out);
    assert_int_equal(k, 0);
    assert_int_equal(w, n);
    assert_memory_equal(all, s, n);
}

static void test_stream_utf8(void **state) {
    (void)state;
    const char *texts[] = {"🦙", "日本語", "é", "a🎉b", "👨‍👩‍👧‍👦 family", "😶‍🌫️", "mixed 中文 and émoji 🚀!"};
    tok_tokenizer *bpe = load_hf_tok("test/fixtures/tok_bpe_tiny_digits");
    tok_tokenizer *spm = load_hf_tok("test/fixtures/tok_spm_tiny");
    for (size_t i = 0; i < NI_ARRAY_LEN(texts); i++) {
        stream_bytes_bpe(bpe, texts[i]);
        tok_tokenizer *ts[2] = {bpe, spm};
        for (int k = 0; k < 2; k++) { /* round trip through encode + stream */
            int32_t *ids;
            int n = encode_all(ts[k], texts[i], strlen(texts[i]), 0, 1, &ids);
            size_t sl;
            char *s = stream_all(ts[k], ids, n, &sl);
            assert_int_equal(sl, strlen(texts[i]));
            assert_memory_equal(s, texts[i], sl);
            int dl;
            char *d = decode_all(ts[k], ids, n, &dl);
            assert_string_equal(d, texts[i]);
            free(d);
            free(s);
            free(ids);
        }
    }
    /* SPM byte tokens: the emoji is 4 byte-fallback pieces */
    int32_t bytes[4];
    const unsigned char llama[] = {0xF0, 0x9F, 0xA6, 0x99};
    for (int i = 0; i < 4; i++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", llama[i]);
        bytes[i] = tok_lookup(spm, name);
        assert_true(bytes[i] >= 0);
    }
    tok_stream st;
    tok_stream_init(&st, spm);
    char out[128];
    for (int i = 0; i < 3; i++) assert_int_equal(tok_stream_push(&st, bytes[i], out, sizeof out), 0);
    assert_int_equal(tok_stream_push(&st, bytes[3], out, sizeof out), 4);
    assert_memory_equal(out, llama, 4);
    /* truncated sequence: flush gives U+FFFD, never raw bytes */
    tok_stream_init(&st, bpe);
    int32_t ids[8];
    int n = tok_encode(bpe, "\xF0\x9F\xA6\x99", 4, 0, 0, ids, 8);
    assert_true(n >= 1);
    tok_stream_init(&st, spm);
    assert_int_equal(tok_stream_push(&st, bytes[0], out, sizeof out), 0);
    assert_int_equal(tok_stream_push(&st, bytes[1], out, sizeof out), 0);
    int k = tok_stream_flush(&st, out, sizeof out);
    assert_true(k > 0 && valid_utf8(out, (size_t)k));
    /* buffer contract */
    tok_stream_init(&st, bpe);
    assert_int_equal(tok_stream_push(&st, 5, out, 8), NI_ERANGE);
    assert_int_equal(tok_stream_push(&st, -1, out, sizeof out), NI_EINVAL);
    assert_int_equal(tok_stream_push(&st, tok_vocab_size(bpe), out, sizeof out), NI_EINVAL);
    tok_free(bpe);
    tok_free(spm);
}

static void test_api_edges(void **state) {
    (void)state;
    tok_tokenizer *t = load_hf_tok("test/fixtures/tok_bpe_tiny_digits");
    const char *s = "Hello world, this is a test of the buffer handling.";
    int32_t few[2];
    int n = tok_encode(t, s, strlen(s), 0, 0, few, 2);
    assert_true(n > 2);
    int32_t *all;
    assert_int_equal(encode_all(t, s, strlen(s), 0, 0, &all), n);
    assert_int_equal(few[0], all[0]);
    assert_int_equal(few[1], all[1]);
    assert_int_equal(tok_encode(t, s, strlen(s), 0, 0, NULL, 0), n); /* count only */
    char small[8];
    int dl = tok_decode(t, all, n, small, sizeof small);
    assert_int_equal(dl, (int)strlen(s));
    assert_int_equal(strlen(small), 7);
    assert_memory_equal(small, s, 7);
    free(all);
    /* empty input, bad arguments */
    assert_int_equal(tok_encode(t, "", 0, 0, 1, few, 2), 0);
    assert_int_equal(tok_encode(t, NULL, 0, 0, 1, few, 2), 0);
    assert_int_equal(tok_encode(t, NULL, 3, 0, 1, few, 2), NI_EINVAL);
    assert_int_equal(tok_encode(NULL, "a", 1, 0, 1, few, 2), NI_EINVAL);
    int32_t bad = tok_vocab_size(t);
    assert_int_equal(tok_decode(t, &bad, 1, small, sizeof small), NI_EINVAL);
    assert_int_equal(tok_decode(t, NULL, 0, small, sizeof small), 0);
    assert_string_equal(small, "");
    assert_int_equal(tok_token_bytes(t, -1, small, sizeof small), NI_EINVAL);
    assert_int_equal(tok_lookup(t, "definitely-not-a-token"), -1);
    /* invalid UTF-8 input is encoded as if each bad subpart were U+FFFD */
    int32_t *a, *b;
    int na = encode_all(t, "a\xff" "b\xe2\x82", 5, 0, 0, &a);
    int nb = encode_all(t, "a\xef\xbf\xbd" "b\xef\xbf\xbd", 8, 0, 0, &b);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, sizeof(int32_t) * (size_t)na);
    free(a);
    free(b);
    /* token bytes: a special token gives its text */
    int32_t im = tok_lookup(t, "<|im_start|>");
    char tb[64];
    assert_int_equal(tok_token_bytes(t, im, tb, sizeof tb), 12);
    assert_memory_equal(tb, "<|im_start|>", 12);
    assert_int_equal(tok_token_bytes(t, im, tb, 4), NI_ERANGE);
    const char *pc;
    size_t pl;
    assert_int_equal(tok_token_piece(t, im, &pc, &pl), 0);
    assert_int_equal(pl, 12);
    assert_true(tok_max_token_bytes(t) >= 12);
    tok_free(t);
}

/* Writes a minimal GGUF v3 with string key/value pairs (no tensors). */
static void write_gguf(const char *path, const char *const *kv, int n_kv) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint32_t u32;
    uint64_t u64;
    fwrite("GGUF", 1, 4, f);
    u32 = 3;
    fwrite(&u32, 4, 1, f);
    u64 = 0;
    fwrite(&u64, 8, 1, f);
    u64 = (uint64_t)n_kv;
    fwrite(&u64, 8, 1, f);
    for (int i = 0; i < n_kv; i++) {
        const char *k = kv[2 * i], *v = kv[2 * i + 1];
        u64 = strlen(k);
        fwrite(&u64, 8, 1, f);
        fwrite(k, 1, strlen(k), f);
        u32 = 8; /* string */
        fwrite(&u32, 4, 1, f);
        u64 = strlen(v);
        fwrite(&u64, 8, 1, f);
        fwrite(v, 1, strlen(v), f);
    }
    fclose(f);
}

static void write_text(const char *path, const char *s, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(s, 1, n, f);
    fclose(f);
}

static void expect_gguf_error(const char *path, int want) {
    gguf_ctx g;
    char err[512] = "";
    int rc = gguf_open(&g, path, err, sizeof err);
    if (rc) printf("gguf_open(%s): %s\n", path, err);
    assert_int_equal(rc, 0);
    tok_tokenizer *t = (tok_tokenizer *)1;
    rc = tok_load_gguf(&t, &g, err, sizeof err);
    printf("  expected error: %s\n", err);
    assert_int_equal(rc, want);
    assert_null(t);
    assert_true(strlen(err) > 0);
    gguf_close(&g);
}

static void expect_hf_error(const char *dir, int want) {
    char err[512] = "";
    tok_tokenizer *t = (tok_tokenizer *)1;
    int rc = tok_load_hf(&t, dir, err, sizeof err);
    printf("  expected error: %s\n", err);
    assert_int_equal(rc, want);
    assert_null(t);
    assert_true(strlen(err) > 0);
}

static void test_errors(void **state) {
    (void)state;
    char dir[] = "/tmp/ni_tok_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char p[512];
    /* missing directory / files */
    expect_hf_error("/nonexistent/dir/for/ni", NI_ENOTFOUND);
    expect_hf_error(dir, NI_ENOTFOUND);
    /* GGUF: wrong tokenizer model, no tokenizer, unknown pre-tokenizer */
    snprintf(p, sizeof p, "%s/bert.gguf", dir);
    const char *kv1[] = {"general.architecture", "bert", "tokenizer.ggml.model", "bert"};
    write_gguf(p, kv1, 2);
    expect_gguf_error(p, NI_EUNSUPPORTED);
    snprintf(p, sizeof p, "%s/none.gguf", dir);
    write_gguf(p, kv1, 1);
    expect_gguf_error(p, NI_ENOTFOUND);
    snprintf(p, sizeof p, "%s/gpt2.gguf", dir);
    const char *kv2[] = {"tokenizer.ggml.model", "gpt2"};
    write_gguf(p, kv2, 1);
    expect_gguf_error(p, NI_EFORMAT); /* no tokens */
    snprintf(p, sizeof p, "%s/llama.gguf", dir);
    const char *kv3[] = {"tokenizer.ggml.model", "llama"};
    write_gguf(p, kv3, 1);
    expect_gguf_error(p, NI_EFORMAT);
    /* corrupt tokenizer.json, unsupported model, corrupt tokenizer.model */
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    write_text(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": [1,2", 40);
    expect_hf_error(dir, NI_EFORMAT);
    const char *wp = "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}";
    write_text(p, wp, strlen(wp));
    expect_hf_error(dir, NI_EUNSUPPORTED);
    const char *badid = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -4}, \"merges\": []}}";
    write_text(p, badid, strlen(badid));
    expect_hf_error(dir, NI_EFORMAT);
    const char *badpre = "{\"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"}, \"decoder\": {\"type\": \"ByteLevel\"},"
                         " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}";
    write_text(p, badpre, strlen(badpre));
    expect_hf_error(dir, NI_EUNSUPPORTED);
    const char *badre = "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": "
                        "\"Isolated\"}, \"decoder\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", "
                        "\"vocab\": {\"a\": 0}, \"merges\": []}}";
    write_text(p, badre, strlen(badre));
    expect_hf_error(dir, NI_EUNSUPPORTED);
    unlink(p);
    snprintf(p, sizeof p, "%s/tokenizer.model", dir);
    write_text(p, "\x0a\xff\xff\xff\x0f garbage", 14);
    expect_hf_error(dir, NI_EFORMAT);
    /* a truncated copy of the real tiny model */
    char *m;
    size_t ml;
    assert_int_equal(ni_read_file("test/fixtures/tok_spm_tiny/tokenizer.model", &m, &ml), 0);
    write_text(p, m, ml / 2);
    expect_hf_error(dir, NI_EFORMAT);
    free(m);
    unlink(p);
    snprintf(p, sizeof p, "%s/bert.gguf", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/none.gguf", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/gpt2.gguf", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/llama.gguf", dir);
    unlink(p);
    rmdir(dir);
}

static void test_speed(void **state) {
    (void)state;
    const char *mp = tu_model_path();
    tok_tokenizer *t = exists(mp) ? load_gguf_tok(mp) : load_hf_tok("test/fixtures/tok_bpe_tiny_digits");
    const char *para = "The tokenizer splits text into pieces, then merges them by rank. Numbers like 31415 "
                       "and 2718; emojis 🎉🦙 fall back to bytes. 日本語もテストします。 Ünïcödé wörds!\n";
    char text[10241];
    size_t pl = strlen(para), w = 0;
    while (w + pl < sizeof text) memcpy(text + w, para, pl), w += pl;
    text[w] = 0;
    int32_t *ids = malloc(sizeof(int32_t) * 20000);
    int n = 0;
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t0 = ni_now();
        n = tok_encode(t, text, w, 0, 1, ids, 20000);
        double dt = ni_now() - t0;
        if (dt < best) best = dt;
    }
    assert_true(n > 0 && n < 20000);
    /* one long pre-token (no spaces): the merge loop must not be quadratic */
    char *aaa = malloc(100001);
    memset(aaa, 'a', 100000);
    aaa[100000] = 0;
    double t1 = ni_now();
    int32_t *ids2;
    int n2 = encode_all(t, aaa, 100000, 0, 0, &ids2);
    double dt2 = ni_now() - t1;
    printf("  encode %zu bytes -> %d ids: %.2f ms (best of 5); 100000 x 'a' -> %d ids: %.1f ms\n", w, n,
           best * 1e3, n2, dt2 * 1e3);
    assert_true(best < 0.25);  /* generous: sanitizers and slow CI machines */
    assert_true(dt2 < 2.0);
    free(ids2);
    free(aaa);
    free(ids);
    tok_free(t);
}

/* One tokenizer shared by several threads must give the same ids. */
typedef struct thr_arg {
    const tok_tokenizer *t;
    const char *const *texts;
    int n_texts;
    const int32_t *want; /* concatenated single-thread ids */
    int n_want;
    int ok;
} thr_arg;

static void *thr_main(void *p) {
    thr_arg *a = p;
    int32_t ids[4096];
    a->ok = 1;
    for (int r = 0; r < 30; r++) {
        int w = 0;
        for (int i = 0; i < a->n_texts; i++) {
            int n = tok_encode(a->t, a->texts[i], strlen(a->texts[i]), 1, 1, ids, 4096);
            if (n < 0 || w + n > a->n_want || memcmp(ids, a->want + w, sizeof(int32_t) * (size_t)n)) a->ok = 0;
            char buf[1024];
            if (n >= 0 && tok_decode(a->t, ids, n, buf, sizeof buf) < 0) a->ok = 0;
            w += n > 0 ? n : 0;
        }
        if (w != a->n_want) a->ok = 0;
    }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    static const char *const texts[] = {"Hello world 12345", "<|im_start|>user\nhi<|im_end|>", "日本語 🦙 café",
                                        "  spaces\tand\nnewlines  ", "def f(x):\n    return x ** 2"};
    tok_tokenizer *ts[2] = {load_hf_tok("test/fixtures/tok_bpe_tiny_digits"),
                            load_hf_tok("test/fixtures/tok_spm_tiny")};
    for (int k = 0; k < 2; k++) {
        int32_t want[8192];
        int nw = 0;
        for (size_t i = 0; i < NI_ARRAY_LEN(texts); i++)
            nw += tok_encode(ts[k], texts[i], strlen(texts[i]), 1, 1, want + nw, 8192 - nw);
        pthread_t th[4];
        thr_arg args[4];
        for (int i = 0; i < 4; i++) {
            args[i] = (thr_arg){ts[k], texts, (int)NI_ARRAY_LEN(texts), want, nw, 0};
            assert_int_equal(pthread_create(&th[i], NULL, thr_main, &args[i]), 0);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            assert_true(args[i].ok);
        }
        tok_free(ts[k]);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smollm2_gguf),   cmocka_unit_test(test_gpt2_vocab),
        cmocka_unit_test(test_llama_spm_vocab), cmocka_unit_test(test_spm_tiny_model),
        cmocka_unit_test(test_spm_tiny_json),  cmocka_unit_test(test_spm_tiny_meta),
        cmocka_unit_test(test_bpe_tiny_digits), cmocka_unit_test(test_bpe_tiny_l3),
        cmocka_unit_test(test_stream_utf8),    cmocka_unit_test(test_api_edges),
        cmocka_unit_test(test_errors),         cmocka_unit_test(test_speed),
        cmocka_unit_test(test_threads),        cmocka_unit_test(test_stream_pieces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
