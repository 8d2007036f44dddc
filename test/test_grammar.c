/*
 * test_grammar.c - engine/grammar alone (no model): the compilers and the
 * matcher.
 *   - regex: ~50 patterns, each against random strings over an alphabet that
 *     hits its edges and against random sentences walked out of its own
 *     grammar; acceptance must equal PCRE2's full match (PCRE2_ANCHORED |
 *     PCRE2_ENDANCHORED, UTF mode) for every string;
 *   - GBNF: an expression grammar accepts / refuses by hand-picked strings;
 *     left recursion, a repeated empty group, undefined rules and syntax
 *     errors are refused with messages naming the problem;
 *   - JSON Schema: random walks through each schema's grammar give JSON text
 *     that parses (jansson) and satisfies the schema's keywords as far as a
 *     small checker here knows them (types, required, enum, const, ranges,
 *     lengths, item counts, additionalProperties false);
 *   - masks: over a random toy vocabulary, every mask bit equals feeding the
 *     token's bytes (brute force), end tokens only in complete states, and
 *     only end tokens once nothing can follow;
 *   - bad schemas, bad patterns and over-limit inputs fail fast with a
 *     message naming the keyword / offset.
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
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "engine/grammar/grammar.h"
#include "engine/util/util.h"
#include "test_util.h"

static tu_rng g_rng;

static int accepts(gr_matcher *m, const char *s, size_t n) {
    gr_state st = gr_matcher_feed(m, gr_matcher_start(m), s, n);
    assert_true(st != GR_ERROR);
    return gr_matcher_accepting(m, st);
}

/* A random sentence of g (walks byte masks; stops in an accepting state with
 * probability p_stop, or when nothing can follow). Returns its length, or -1
 * when no accepting state was reached within cap bytes. */
static int walk(gr_matcher *m, char *out, int cap, double p_stop) {
    gr_state s = gr_matcher_start(m);
    int n = 0;
    for (;;) {
        assert_true(s >= 0);
        if (gr_matcher_accepting(m, s) && (gr_matcher_finished(m, s) || tu_uniform(&g_rng, 0, 1) < p_stop))
            return n;
        if (n >= cap) return -1;
        const uint32_t *allow;
        assert_int_equal(gr_matcher_mask(m, s, &allow), 0);
        int cand[256], nc = 0;
        for (int c = 0; c < 256; c++)
            if ((allow[c >> 5] >> (c & 31)) & 1) cand[nc++] = c;
        assert_true(nc > 0); /* not finished: some byte must follow */
        int c = cand[tu_int(&g_rng, nc)];
        out[n++] = (char)c;
        s = gr_matcher_next(m, s, c);
    }
}

/* ---- regex against PCRE2 ---- */

static const char *const k_regexes[] = {
    "abc", "a|b|c", "a*", "a+b?", "(ab)*c", "(a|bc)+", "[a-c]{2,4}", "[^ab]*", "a{3}", "a{2,}",
    "(a|b){0,3}c", "\\d+", "\\d{1,3}(\\.\\d{1,3}){3}", "\\w+@\\w+\\.com", "[0-9a-f]{4}",
    "(-|\\+)?[0-9]+(\\.[0-9]+)?", ".", ".*", "a.c", "[.]", "\\.", "(?:ab|a)(?:bc|c)", "x?y?z?",
    "(a*b*)c", "[A-Z][a-z]*( [A-Z][a-z]*)*", "\\s*", "\\S+", "[\\w.-]+", "[^\\d\\s]+", "é+",
    "[à-ü]+", "[^é]", "(yes|no|maybe)", "colou?r", "[-a]", "[a-]", "[]a]", "\\x41+", "\\u00e9",
    "(a|)b", "((a|b)c){1,2}", "^abc$", "(?P<x>a)b", "a{0}", "a{0,1}b", "(ab|cd|ef){2}",
    "[a-z0-9]{1,5}@x", "\\W", "\\D\\d", "(\\(|\\))+", "[\\u4e00-\\u9fff]{1,2}", "\\$\\^",
};

static const char k_alpha[] = "abcxyz019.-_@ +(\n)ABZ$^";
static const char *const k_wide[] = {"\xC3\xA9", "\xC3\xA0", "\xE4\xB8\x80", "\xFF", "\xC3"};

static void test_regex_vs_pcre2(void **state) {
    (void)state;
    gr_vocab *v = tu_byte_vocab();
    char buf[512], err[256];
    for (size_t i = 0; i < NI_ARRAY_LEN(k_regexes); i++) {
        const char *re = k_regexes[i];
        gr_grammar *g;
        int rc = gr_compile_regex(re, strlen(re), NULL, &g, err, sizeof err);
        if (rc) fail_msg("regex %s: %s", re, err);
        gr_matcher *m;
        assert_int_equal(gr_matcher_new(&m, g, v, 0), 0);
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *pc = pcre2_compile((PCRE2_SPTR)re, strlen(re), PCRE2_UTF | PCRE2_DOLLAR_ENDONLY | PCRE2_ALT_BSUX, &ec, &eo, NULL);
        if (!pc) fail_msg("pcre2 refuses /%s/ at %zu", re, (size_t)eo);
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(pc, NULL);
        for (int k = 0; k < 400; k++) {
            int n = 0;
            if (k % 2 == 0) {
                n = walk(m, buf, 64, 0.3);
                if (n < 0) continue;
            } else {
                int len = tu_int(&g_rng, 7);
                for (int j = 0; j < len; j++) {
                    if (tu_int(&g_rng, 6) == 0) {
                        const char *w = k_wide[tu_int(&g_rng, (int)NI_ARRAY_LEN(k_wide))];
                        memcpy(buf + n, w, strlen(w));
                        n += (int)strlen(w);
                    } else {
                        buf[n++] = k_alpha[tu_int(&g_rng, (int)sizeof k_alpha - 1)];
                    }
                }
            }
            int got = accepts(m, buf, (size_t)n);
            int r = pcre2_match(pc, (PCRE2_SPTR)buf, (size_t)n, 0,
                                PCRE2_ANCHORED | PCRE2_ENDANCHORED, md, NULL);
            int want = r >= 0;
            if (r == PCRE2_ERROR_UTF8_ERR1 || (r <= PCRE2_ERROR_UTF8_ERR1 && r >= PCRE2_ERROR_UTF8_ERR21))
                want = 0; /* invalid UTF-8 never matches: the grammar only spells valid UTF-8 */
            if (got != want)
                fail_msg("regex /%s/ on \"%.*s\" (%d bytes): grammar %d, pcre2 %d (rc %d)", re, n,
                         buf, n, got, want, r);
            if (k % 2 == 0) assert_int_equal(got, 1); /* walked sentences are sentences */
        }
        pcre2_match_data_free(md);
        pcre2_code_free(pc);
        gr_matcher_free(m);
        gr_grammar_free(g);
    }
    gr_vocab_free(v);
}

/* ---- GBNF ---- */

static const char k_expr[] =
    "# arithmetic\n"
    "root ::= expr\n"
    "expr ::= term ( [-+] term )*\n"
    "term ::= factor\n"
    "       | factor [*/] term\n"
    "factor ::= num | \"(\" expr \")\" | \"-\" factor\n"
    "num ::= [0-9]+ (\".\" [0-9]{1,3})?\n";

static void test_gbnf(void **state) {
    (void)state;
    gr_vocab *v = tu_byte_vocab();
    char err[256];
    gr_grammar *g;
    if (gr_compile_gbnf(k_expr, strlen(k_expr), NULL, &g, err, sizeof err)) fail_msg("%s", err);
    gr_matcher *m;
    assert_int_equal(gr_matcher_new(&m, g, v, 0), 0);
    static const char *const yes[] = {"1", "1+2", "(1+2)*3", "-4/2.5", "((7))", "1.234-0", "--1"};
    static const char *const no[] = {"", "1+", "(1", "1.2345", "a", "1 + 2", ")("};
    for (size_t i = 0; i < NI_ARRAY_LEN(yes); i++)
        if (!accepts(m, yes[i], strlen(yes[i]))) fail_msg("gbnf refused \"%s\"", yes[i]);
    for (size_t i = 0; i < NI_ARRAY_LEN(no); i++)
        if (accepts(m, no[i], strlen(no[i]))) fail_msg("gbnf accepted \"%s\"", no[i]);
    gr_matcher_free(m);
    gr_grammar_free(g);

    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"root ::= root \"a\" | \"b\"", "left recursion"},
        {"root ::= x \"a\"\nx ::= \"\" | root", "left recursion"},
        {"root ::= (\"a\"?)*", "can recurse without consuming"},
        {"root ::= foo", "undefined rule 'foo'"},
        {"root ::= \"a", "unterminated literal"},
        {"root ::= [a-", "unterminated character class"},
        {"root ::= (\"a\"", "missing )"},
        {"root = \"a\"", "expected `name ::=`"},
        {"other ::= \"a\"", "undefined rule 'root'"},
        {"root ::= \"a\"{99999}", "repetition bound"},
        {"root ::= [z-a]", "range out of order"},
    };
    for (size_t i = 0; i < NI_ARRAY_LEN(bad); i++) {
        err[0] = 0;
        int rc = gr_compile_gbnf(bad[i].text, strlen(bad[i].text), NULL, &g, err, sizeof err);
        if (rc == 0) fail_msg("gbnf accepted bad grammar %s", bad[i].text);
        if (!strstr(err, bad[i].msg))
            fail_msg("gbnf %s: message \"%s\" lacks \"%s\"", bad[i].text, err, bad[i].msg);
    }
    gr_vocab_free(v);
}

/* ---- JSON Schema: walks checked by a small validator ---- */

static int check(const json_t *s, const json_t *x, const json_t *root, char *why, size_t n);

static int check_fail(char *why, size_t n, const char *what) {
    snprintf(why, n, "%s", what);
    return 0;
}

static const json_t *deref(const json_t *root, const char *ref) {
    const json_t *cur = root;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", ref + 1);
    for (char *tok = strtok(buf, "/"); tok && cur; tok = strtok(NULL, "/")) cur = json_object_get(cur, tok);
    return cur;
}

static int type_ok(const char *t, const json_t *x) {
    if (!strcmp(t, "string")) return json_is_string(x);
    if (!strcmp(t, "integer")) return json_is_integer(x);
    if (!strcmp(t, "number")) return json_is_number(x);
    if (!strcmp(t, "boolean")) return json_is_boolean(x);
    if (!strcmp(t, "null")) return json_is_null(x);
    if (!strcmp(t, "object")) return json_is_object(x);
    if (!strcmp(t, "array")) return json_is_array(x);
    return 0;
}

static size_t utf8_len(const char *s) {
    size_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static int check(const json_t *s, const json_t *x, const json_t *root, char *why, size_t n) {
    if (json_is_true(s)) return 1;
    const json_t *v;
    if ((v = json_object_get(s, "$ref"))) return check(deref(root, json_string_value(v)), x, root, why, n);
    if ((v = json_object_get(s, "const")) && !json_equal((json_t *)v, (json_t *)x)) return check_fail(why, n, "const");
    if ((v = json_object_get(s, "enum"))) {
        int hit = 0;
        for (size_t i = 0; i < json_array_size(v); i++) hit |= json_equal(json_array_get(v, i), (json_t *)x);
        if (!hit) return check_fail(why, n, "enum");
    }
    if ((v = json_object_get(s, "anyOf")) || (v = json_object_get(s, "oneOf"))) {
        int hit = 0;
        for (size_t i = 0; i < json_array_size(v) && !hit; i++) hit = check(json_array_get(v, i), x, root, why, n);
        if (!hit) return check_fail(why, n, "anyOf");
    }
    if ((v = json_object_get(s, "type"))) {
        int hit = 0;
        if (json_is_string(v)) hit = type_ok(json_string_value(v), x);
        for (size_t i = 0; json_is_array(v) && i < json_array_size(v); i++)
            hit |= type_ok(json_string_value(json_array_get(v, i)), x);
        if (!hit) return check_fail(why, n, "type");
    }
    if (json_is_object(x)) {
        const json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required");
        for (size_t i = 0; i < json_array_size(req); i++)
            if (!json_object_get(x, json_string_value(json_array_get(req, i)))) return check_fail(why, n, "required");
        const char *k;
        json_t *val;
        json_object_foreach((json_t *)x, k, val) {
            const json_t *ps = props ? json_object_get(props, k) : NULL;
            const json_t *ad = json_object_get(s, "additionalProperties");
            if (ps) {
                if (!check(ps, val, root, why, n)) return 0;
            } else if (props && (!ad || json_is_false(ad))) {
                return check_fail(why, n, "additionalProperties");
            } else if (ad && json_is_object(ad) && !check(ad, val, root, why, n)) {
                return 0;
            }
        }
    }
    if (json_is_array(x)) {
        const json_t *it = json_object_get(s, "items");
        size_t sz = json_array_size(x);
        if ((v = json_object_get(s, "minItems")) && sz < (size_t)json_integer_value(v)) return check_fail(why, n, "minItems");
        if ((v = json_object_get(s, "maxItems")) && sz > (size_t)json_integer_value(v)) return check_fail(why, n, "maxItems");
        for (size_t i = 0; it && i < sz; i++)
            if (!check(it, json_array_get(x, i), root, why, n)) return 0;
    }
    if (json_is_string(x)) {
        size_t len = utf8_len(json_string_value(x));
        if ((v = json_object_get(s, "minLength")) && len < (size_t)json_integer_value(v)) return check_fail(why, n, "minLength");
        if ((v = json_object_get(s, "maxLength")) && len > (size_t)json_integer_value(v)) return check_fail(why, n, "maxLength");
        if ((v = json_object_get(s, "pattern"))) {
            int ec;
            PCRE2_SIZE eo;
            pcre2_code *pc = pcre2_compile((PCRE2_SPTR)json_string_value(v), PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ec, &eo, NULL);
            pcre2_match_data *md = pcre2_match_data_create_from_pattern(pc, NULL);
            int r = pcre2_match(pc, (PCRE2_SPTR)json_string_value(x), json_string_length(x), 0, 0, md, NULL);
            pcre2_match_data_free(md);
            pcre2_code_free(pc);
            if (r < 0) return check_fail(why, n, "pattern");
        }
    }
    if (json_is_number(x)) {
        double d = json_number_value(x);
        if ((v = json_object_get(s, "minimum")) && d < json_number_value(v)) return check_fail(why, n, "minimum");
        if ((v = json_object_get(s, "maximum")) && d > json_number_value(v)) return check_fail(why, n, "maximum");
        if ((v = json_object_get(s, "exclusiveMinimum")) && d <= json_number_value(v)) return check_fail(why, n, "exclusiveMinimum");
        if ((v = json_object_get(s, "exclusiveMaximum")) && d >= json_number_value(v)) return check_fail(why, n, "exclusiveMaximum");
    }
    return 1;
}

static const char *const k_schemas[] = {
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":150}},\"required\":[\"name\",\"age\"]}",
    "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"boolean\"},\"b\":{\"type\":\"null\"},\"c\":{\"type\":\"number\"}}}",
    "{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"minimum\":-20,\"exclusiveMaximum\":7},\"minItems\":1,\"maxItems\":4}",
    "{\"enum\":[\"red\",\"green\",\"blue\",1,null,{\"x\":[1,2]}]}",
    "{\"const\":{\"k\":\"v\",\"n\":[true,false]}}",
    "{\"type\":\"string\",\"minLength\":2,\"maxLength\":5}",
    "{\"type\":\"string\",\"pattern\":\"^[A-Z]{2}-[0-9]{3}$\"}",
    "{\"type\":\"string\",\"pattern\":\"a\\\"b\\\\\\\\c|\\\\n\"}",
    "{\"type\":\"string\",\"format\":\"date-time\"}",
    "{\"type\":\"string\",\"format\":\"uuid\"}",
    "{\"type\":\"string\",\"format\":\"ipv4\"}",
    "{\"anyOf\":[{\"type\":\"integer\",\"minimum\":100,\"maximum\":999},{\"type\":\"string\",\"maxLength\":2}]}",
    "{\"type\":[\"integer\",\"null\"],\"minimum\":5}",
    "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},\"next\":{\"anyOf\":[{\"$ref\":\"#/$defs/node\"},{\"type\":\"null\"}]}},\"required\":[\"v\",\"next\"]}},\"$ref\":\"#/$defs/node\"}",
    "{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}},\"additionalProperties\":{\"type\":\"string\"}}",
    "{\"type\":\"object\",\"properties\":{\"p\":{\"type\":\"integer\"},\"q\":{\"type\":\"integer\"},\"r\":{\"type\":\"integer\"}},\"required\":[\"q\"]}",
    "{\"type\":\"integer\",\"minimum\":-1000000,\"maximum\":-999}",
    "{\"type\":\"integer\",\"exclusiveMinimum\":9}",
    "{\"type\":\"number\",\"minimum\":0}",
    "{\"type\":\"number\",\"exclusiveMinimum\":0}",
    "{}",
    "{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"integer\"}]}",
    "{\"type\":\"object\",\"properties\":{\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\"]},\"maxItems\":0}},\"required\":[\"tags\"],\"additionalProperties\":false}",
};

/* Rewrites every \u0000 escape inside a JSON string of buf to \u0001, in
 * place (same length): JSON allows U+0000 in object keys, jansson refuses
 * it there even with JSON_ALLOW_NUL ("NUL byte in object key not
 * supported", NI_TEST_SEED=141: an additionalProperties key). No schema
 * of k_schemas names a key or pattern with U+0000 or U+0001, so the checks
 * see the same structure, lengths and matches. An escaped backslash before "u0000"
 * is left alone. */
static void nul_to_soh(char *buf) {
    int in_str = 0;
    for (char *p = buf; *p; p++) {
        if (!in_str) {
            in_str = *p == '"';
        } else if (*p == '"') {
            in_str = 0;
        } else if (*p == '\\' && p[1]) {
            if (!strncmp(p + 1, "u0000", 5)) p[5] = '1';
            p++; /* the escaped character (for \u, the 'u'; its hex digits are plain) */
        }
    }
}

static void test_schema_walks(void **state) {
    (void)state;
    gr_vocab *v = tu_byte_vocab();
    static char buf[8192];
    char err[256], why[64];
    for (size_t i = 0; i < NI_ARRAY_LEN(k_schemas); i++) {
        json_error_t je;
        json_t *s = json_loads(k_schemas[i], 0, &je);
        if (!s) fail_msg("schema %zu does not parse: %s", i, je.text);
        gr_grammar *g;
        if (gr_compile_schema(s, NULL, &g, err, sizeof err)) fail_msg("schema %s: %s", k_schemas[i], err);
        gr_matcher *m;
        assert_int_equal(gr_matcher_new(&m, g, v, 0), 0);
        int done = 0;
        for (int k = 0; k < 200; k++) {
            int n = walk(m, buf, (int)sizeof buf - 1, 0.5);
            if (n < 0) continue;
            done++;
            buf[n] = 0;
            nul_to_soh(buf);
            json_t *x = json_loads(buf, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
            if (!x) fail_msg("schema %s: walk \"%s\" is not JSON: %s", k_schemas[i], buf, je.text);
            if (!check(s, x, s, why, sizeof why))
                fail_msg("schema %s: walk \"%s\" fails '%s'", k_schemas[i], buf, why);
            json_decref(x);
        }
        if (done < 50) fail_msg("schema %s: only %d of 200 walks ended", k_schemas[i], done);
        gr_matcher_free(m);
        gr_grammar_free(g);
        json_decref(s);
    }
    gr_vocab_free(v);
}

/* additionalProperties keys never reuse a declared name (seed 41 of the
 * walks once wrote {"x": "..."} for x: integer + additionalProperties:
 * string); prefixes, extensions and other keys stay allowed. */
static void test_schema_additional_keys(void **state) {
    (void)state;
    gr_vocab *v = tu_byte_vocab();
    char err[256];
    json_error_t je;
    json_t *s = json_loads("{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"},"
                           "\"xyz\":{\"type\":\"integer\"},\"\":{\"type\":\"integer\"}},"
                           "\"additionalProperties\":{\"type\":\"string\"}}", 0, &je);
    assert_non_null(s);
    gr_grammar *g;
    if (gr_compile_schema(s, NULL, &g, err, sizeof err)) fail_msg("%s", err);
    gr_matcher *m;
    assert_int_equal(gr_matcher_new(&m, g, v, 0), 0);
    static const char *const ok[] = {"{\"x\":1}", "{\"xy\":\"a\"}", "{\"xyzw\":\"a\"}",
                                     "{\"y\":\"a\"}", "{\"x\":1,\"X\":\"b\"}", "{\"\":2}",
                                     "{\"x\":1,\"xyz\":2,\"\\n\":\"c\"}"};
    static const char *const bad[] = {"{\"x\":\"a\"}", "{\"xyz\":\"a\"}", "{\"\":\"a\"}",
                                      "{\"x\":1,\"x\":\"a\"}", "{\"y\":\"a\",\"xyz\":\"b\"}"};
    for (size_t i = 0; i < NI_ARRAY_LEN(ok); i++)
        if (!accepts(m, ok[i], strlen(ok[i]))) fail_msg("refused %s", ok[i]);
    for (size_t i = 0; i < NI_ARRAY_LEN(bad); i++)
        if (accepts(m, bad[i], strlen(bad[i]))) fail_msg("accepted %s", bad[i]);
    gr_matcher_free(m);
    gr_grammar_free(g);
    json_decref(s);
    gr_vocab_free(v);
}

/* ---- masks against brute force over a toy vocabulary ---- */

static void test_masks_brute_force(void **state) {
    (void)state;
    enum { V = 600 };
    static const char alpha[] = "{}[]\":, 0123456789abenlrstu-.\\\n";
    static char store[V][8];
    const char *ptr[V];
    size_t lens[V];
    for (int t = 0; t < V; t++) {
        int len = t < (int)sizeof alpha - 1 ? 1 : 1 + tu_int(&g_rng, 5);
        for (int j = 0; j < len; j++)
            store[t][j] = t < (int)sizeof alpha - 1 ? alpha[t] : alpha[tu_int(&g_rng, (int)sizeof alpha - 1)];
        ptr[t] = store[t];
        lens[t] = (size_t)len;
    }
    lens[V - 1] = 0; /* a control token: never admitted */
    int32_t ends[2] = {V - 2, V - 3};
    gr_vocab *v;
    assert_int_equal(gr_vocab_new(&v, V, ptr, lens, ends, 2), 0);
    const char *schema = "{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\"},\"s\":{\"type\":\"string\"},\"l\":{\"type\":\"array\",\"items\":{\"type\":\"boolean\"}}},\"required\":[\"n\"]}";
    json_t *s = json_loads(schema, 0, NULL);
    gr_grammar *g;
    char err[256];
    if (gr_compile_schema(s, NULL, &g, err, sizeof err)) fail_msg("%s", err);
    for (int run = 0; run < 30; run++) {
        gr_matcher *m;
        assert_int_equal(gr_matcher_new(&m, g, v, 0), 0);
        gr_state st = gr_matcher_start(m);
        char text[4096];
        int n = 0;
        for (int step = 0; step < 80; step++) {
            const uint32_t *allow;
            assert_int_equal(gr_matcher_mask(m, st, &allow), 0);
            int cand[V], nc = 0;
            for (int t = 0; t < V; t++) {
                int bit = (allow[t >> 5] >> (t & 31)) & 1;
                int is_end = t == V - 2 || t == V - 3;
                gr_state nx = gr_matcher_next(m, st, t);
                int want = is_end ? gr_matcher_accepting(m, st) : nx >= 0;
                if (bit != want)
                    fail_msg("step %d token %d (\"%.*s\"): mask %d, fed %d, after \"%.*s\"", step, t,
                             (int)lens[t], ptr[t], bit, want, n, text);
                if (bit) cand[nc++] = t;
            }
            if (gr_matcher_finished(m, st)) { /* only the end tokens */
                assert_int_equal(nc, 2);
                break;
            }
            assert_true(nc > 0);
            int t = cand[tu_int(&g_rng, nc)];
            if (t == V - 2 || t == V - 3) break;
            memcpy(text + n, ptr[t], lens[t]);
            n += (int)lens[t];
            st = gr_matcher_next(m, st, t);
        }
        gr_matcher_free(m);
    }
    gr_grammar_free(g);
    json_decref(s);
    gr_vocab_free(v);
}

/* ---- refusals ---- */

static void test_refusals(void **state) {
    (void)state;
    static const struct {
        const char *schema, *msg;
    } bad[] = {
        {"{\"type\":\"strin\"}", "unknown type 'strin'"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\",\"multipleOf\":3}}}", "unsupported keyword 'multipleOf' at /properties/a"},
        {"{\"type\":\"array\",\"uniqueItems\":true}", "unsupported keyword 'uniqueItems'"},
        {"{\"frobnicate\":1}", "unsupported keyword 'frobnicate'"},
        {"{\"$ref\":\"#/$defs/missing\"}", "does not resolve"},
        {"{\"$ref\":\"http://example.com/s.json\"}", "only local $ref"},
        {"{\"type\":\"object\",\"required\":[\"x\"]}", "required property 'x' is not in 'properties'"},
        {"{\"type\":\"string\",\"pattern\":\"(a)\\\\1\"}", "backreferences"},
        {"{\"type\":\"string\",\"pattern\":\"(?=a)\"}", "lookaround"},
        {"{\"type\":\"string\",\"pattern\":\"(a*)*\"}", "can recurse without consuming"},
        {"{\"type\":\"string\",\"maxLength\":1000000}", "over the limit"},
        {"{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}", "empty integer range"},
        {"{\"type\":\"string\",\"format\":\"ipv6\"}", "unsupported string format 'ipv6'"},
        {"false", "admits no value"},
        {"{\"allOf\":[{},{}]}", "'allOf' is only supported with one schema"},
    };
    char err[256];
    gr_grammar *g;
    for (size_t i = 0; i < NI_ARRAY_LEN(bad); i++) {
        json_t *s = json_loads(bad[i].schema, JSON_DECODE_ANY, NULL);
        assert_non_null(s);
        err[0] = 0;
        double t0 = ni_now();
        int rc = gr_compile_schema(s, NULL, &g, err, sizeof err);
        json_decref(s);
        if (rc == 0) fail_msg("accepted bad schema %s", bad[i].schema);
        if (!strstr(err, bad[i].msg)) fail_msg("schema %s: \"%s\" lacks \"%s\"", bad[i].schema, err, bad[i].msg);
        (void)t0;
    }
    /* nesting, huge enums, long patterns: refused by the limits */
    static char big[300000];
    size_t n = 0;
    for (int i = 0; i < 100; i++) n += (size_t)sprintf(big + n, "{\"type\":\"array\",\"items\":");
    n += (size_t)sprintf(big + n, "{}");
    for (int i = 0; i < 100; i++) big[n++] = '}';
    big[n] = 0;
    json_t *s = json_loads(big, 0, NULL);
    assert_non_null(s);
    assert_int_not_equal(gr_compile_schema(s, NULL, &g, err, sizeof err), 0);
    assert_non_null(strstr(err, "nested too deep"));
    json_decref(s);
    json_t *e = json_array();
    for (int i = 0; i < 5000; i++) json_array_append_new(e, json_integer(i));
    s = json_pack("{s:o}", "enum", e);
    assert_int_not_equal(gr_compile_schema(s, NULL, &g, err, sizeof err), 0);
    assert_non_null(strstr(err, "too many values"));
    json_decref(s);
    memset(big, '(', 200);
    big[200] = 0;
    assert_int_not_equal(gr_compile_regex(big, 200, NULL, &g, err, sizeof err), 0);
    assert_non_null(strstr(err, "nested too deep"));
    for (int i = 0; i < 250000; i++) big[i] = (char)('a' + i % 26);
    assert_int_not_equal(gr_compile_regex(big, 250000, NULL, &g, err, sizeof err), 0);
    assert_non_null(strstr(err, "grammar too large"));
}

/* ---- memory cap: the matcher fails cleanly ---- */

static void test_mem_cap(void **state) {
    (void)state;
    gr_vocab *v = tu_byte_vocab();
    gr_grammar *g;
    char err[256];
    assert_int_equal(gr_compile_json_object(NULL, &g, err, sizeof err), 0);
    gr_matcher *m;
    assert_int_equal(gr_matcher_new(&m, g, v, 64 << 10), 0);
    gr_state s = gr_matcher_start(m);
    int failed = 0;
    for (int i = 0; i < 20000 && !failed; i++) {
        s = gr_matcher_feed(m, s, i == 0 ? "{\"a\":" : "[", i == 0 ? 5 : 1);
        if (s == GR_ERROR) failed = gr_matcher_error(m) == NI_ENOMEM;
        else assert_true(s >= 0);
    }
    assert_true(failed);
    assert_true(gr_matcher_bytes(m) <= (64 << 10));
    gr_matcher_free(m);
    gr_grammar_free(g);
    gr_vocab_free(v);
}

int main(void) {
    tu_seed(&g_rng, "test_grammar");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regex_vs_pcre2),  cmocka_unit_test(test_gbnf),
        cmocka_unit_test(test_schema_walks),
        cmocka_unit_test(test_schema_additional_keys),    cmocka_unit_test(test_masks_brute_force),
        cmocka_unit_test(test_refusals),        cmocka_unit_test(test_mem_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
