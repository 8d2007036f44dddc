/*
 * gr_schema.c - JSON Schema (and "any JSON object") into grammar rules.
 *
 * Every schema becomes one rule matching the JSON text of its valid values.
 * Supported (anything else is refused with the keyword and its place):
 *   type (one or a list), enum, const, anyOf / oneOf (as alternatives),
 *   allOf with one schema, $ref to "#", "#/$defs/..", "#/definitions/.."
 *   or any local JSON pointer (recursion allowed);
 *   object: properties (emitted in the schema's order), required,
 *     additionalProperties (false, true or a schema; when absent, no other
 *     properties: the output stays valid either way and models ramble less);
 *   array: items, prefixItems (a fixed tuple), minItems, maxItems;
 *   string: minLength, maxLength, pattern (regex, full match of the value),
 *     format date, time, date-time, uuid, email, ipv4, hostname;
 *   integer: minimum, maximum, exclusiveMinimum, exclusiveMaximum (numbers
 *     in draft-6 style); number: minimum 0 / exclusiveMinimum 0 only;
 *   annotations (title, description, default, examples, $schema, $id,
 *   $comment, deprecated, readOnly, writeOnly, $defs, definitions) ignored.
 *
 * Output shape: JSON with optional whitespace between tokens, bounded (a
 * space, or a newline and up to 20 spaces/tabs) so that a model cannot
 * spin in whitespace forever; numbers have at most 16 digits per part.
 * Non-strict validators take oneOf as anyOf here: overlapping oneOf branches
 * may produce a value matching two of them.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "engine/util/util.h"
#include "gr_internal.h"


#define SC_MAX_REFS 512
#define SC_MAX_ENUM 4096
#define SC_MAX_LITERAL (256 * 1024)
#define SC_MAX_PROPS 256

typedef struct sc {
    gr_builder *b;
    const json_t *root;
    int depth;
    int ws, chr, string, number, integer, nonneg, value, boolean, null; /* shared rules, -1 unmade */
    struct {
        const json_t *node;
        int rule;
    } refs[SC_MAX_REFS];
    int n_refs;
    char path[256];
    long literal_bytes;
} sc;

static int sc_fail(sc *c, int code, const char *fmt, const char *arg) {
    char what[200];
    snprintf(what, sizeof what, fmt, arg);
    return gr_b_fail(c->b, code, "schema: %s at %s", what, c->path[0] ? c->path : "/");
}

/* ---- the shared rules, created on first use ---- */

static int lit_rule(sc *c, const char *const *alts, int n) {
    int r = gr_b_rule(c->b, NULL), rc = r < 0 ? r : 0;
    for (int i = 0; i < n && rc == 0; i++) {
        rc = gr_b_alt(c->b, r);
        if (!rc) rc = gr_b_lit(c->b, r, alts[i], strlen(alts[i]));
    }
    return rc ? rc : r;
}

static int regex_rule(sc *c, const char *re) {
    int r = gr_b_rule(c->b, NULL);
    if (r < 0) return r;
    int rc = gr_b_regex(c->b, r, re, strlen(re), 0);
    return rc ? rc : r;
}

static int ws(sc *c) {
    if (c->ws < 0) c->ws = regex_rule(c, "( |\\n[ \\t]{0,20})?");
    return c->ws;
}

/* One escape sequence of a JSON string (no lone surrogate halves). */
#define SC_ESCAPE_RE "\\\\([\"\\\\/bfnrt]|u([0-9a-cA-CeEfF][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))"

static int string_rule(sc *c) {
    if (c->string < 0) {
        c->chr = regex_rule(c, "[^\"\\\\\\x00-\\x1f]|" SC_ESCAPE_RE);
        if (c->chr < 0) return c->chr;
        int body = gr_b_repeat(c->b, c->chr, 0, -1);
        if (body < 0) return body;
        int r = gr_b_rule(c->b, NULL), rc = r < 0 ? r : 0;
        if (!rc) rc = gr_b_lit(c->b, r, "\"", 1);
        if (!rc) rc = gr_b_ref(c->b, r, body);
        if (!rc) rc = gr_b_lit(c->b, r, "\"", 1);
        c->string = rc ? rc : r;
    }
    return c->string;
}

/* Numbers (integer: no fraction or exponent; nonneg: non-negative numbers,
 * the only number bound supported). */
static int number_rule(sc *c, int integer, int nonneg) {
    char re[160];
    snprintf(re, sizeof re, "%s(0|[1-9][0-9]{0,15})%s", nonneg ? "" : "-?",
             integer ? "" : "(\\.[0-9]{1,16})?([eE][-+]?[0-9]{1,2})?");
    int *slot = nonneg ? &c->nonneg : integer ? &c->integer : &c->number;
    if (*slot < 0) *slot = regex_rule(c, re);
    return *slot;
}

/* A generic JSON value (any type), and objects/arrays of them. */
static int value_rule(sc *c);

static int any_container(sc *c, int object) {
    int w = ws(c), s = string_rule(c), v = value_rule(c);
    if (w < 0 || s < 0 || v < 0) return w < 0 ? w : s < 0 ? s : v;
    gr_builder *b = c->b;
    int item = gr_b_rule(b, NULL), rc = item < 0 ? item : 0; /* one member / element + ws */
    if (!rc && object) {
        rc = gr_b_ref(b, item, s);
        if (!rc) rc = gr_b_ref(b, item, w);
        if (!rc) rc = gr_b_lit(b, item, ":", 1);
        if (!rc) rc = gr_b_ref(b, item, w);
    }
    if (!rc) rc = gr_b_ref(b, item, v);
    if (!rc) rc = gr_b_ref(b, item, w);
    int more = rc ? -1 : gr_b_rule(b, NULL); /* "," ws item */
    if (more < 0) return rc ? rc : more;
    rc = gr_b_lit(b, more, ",", 1);
    if (!rc) rc = gr_b_ref(b, more, w);
    if (!rc) rc = gr_b_ref(b, more, item);
    int rep = rc ? rc : gr_b_repeat(b, more, 0, -1);
    if (rep < 0) return rep;
    int body = gr_b_rule(b, NULL); /* item more* | "" */
    if (body < 0) return body;
    rc = gr_b_ref(b, body, item);
    if (!rc) rc = gr_b_ref(b, body, rep);
    if (!rc) rc = gr_b_alt(b, body);
    int r = rc ? -1 : gr_b_rule(b, NULL);
    if (r < 0) return rc ? rc : r;
    rc = gr_b_lit(b, r, object ? "{" : "[", 1);
    if (!rc) rc = gr_b_ref(b, r, w);
    if (!rc) rc = gr_b_ref(b, r, body);
    if (!rc) rc = gr_b_lit(b, r, object ? "}" : "]", 1);
    return rc ? rc : r;
}

static int value_rule(sc *c) {
    if (c->value >= 0) return c->value;
    static const char *const tf[] = {"true", "false"}, *const nul[] = {"null"};
    int r = gr_b_rule(c->b, NULL);
    if (r < 0) return r;
    c->value = r; /* set first: the containers refer back to it */
    int parts[6] = {any_container(c, 1), any_container(c, 0), string_rule(c),
                    number_rule(c, 0, 0), lit_rule(c, tf, 2), lit_rule(c, nul, 1)};
    for (int i = 0; i < 6; i++) {
        if (parts[i] < 0) return parts[i];
        int rc = gr_b_alt(c->b, r);
        if (!rc) rc = gr_b_ref(c->b, r, parts[i]);
        if (rc) return rc;
    }
    return r;
}

/* ---- integer ranges ---- */

/* Appends to rule the digits of every number in [lo, hi] of the same
 * decimal length n (lo, hi as digit strings). */
static int same_len(gr_builder *b, int rule, const char *lo, const char *hi, int n) {
    if (n == 0) return 0;
    if (lo[0] == hi[0]) {
        int rc = gr_b_lit(b, rule, lo, 1);
        return rc ? rc : same_len(b, rule, lo + 1, hi + 1, n - 1);
    }
    int lo_zero = 1, hi_nine = 1;
    for (int k = 1; k < n; k++) {
        lo_zero &= lo[k] == '0';
        hi_nine &= hi[k] == '9';
    }
    int g = gr_b_rule(b, NULL), rc = g < 0 ? g : 0;
    char first = lo_zero ? lo[0] : (char)(lo[0] + 1), last = hi_nine ? hi[0] : (char)(hi[0] - 1);
    char nines[20], zeros[20];
    memset(nines, '9', sizeof nines);
    memset(zeros, '0', sizeof zeros);
    if (!rc && !lo_zero) { /* lo[0] then [lo+1 .., 9..9] */
        rc = gr_b_alt(b, g);
        if (!rc) rc = gr_b_lit(b, g, lo, 1);
        if (!rc) rc = same_len(b, g, lo + 1, nines, n - 1);
    }
    if (!rc && first <= last) {
        uint8_t bits[32] = {0};
        for (int d = first; d <= last; d++) bits[d >> 3] |= (uint8_t)(1u << (d & 7));
        uint8_t dig[32] = {0};
        for (int d = '0'; d <= '9'; d++) dig[d >> 3] |= (uint8_t)(1u << (d & 7));
        rc = gr_b_alt(b, g);
        if (!rc) rc = gr_b_bytes(b, g, bits);
        for (int k = 1; k < n && rc == 0; k++) rc = gr_b_bytes(b, g, dig);
    }
    if (!rc && !hi_nine) {
        rc = gr_b_alt(b, g);
        if (!rc) rc = gr_b_lit(b, g, hi, 1);
        if (!rc) rc = same_len(b, g, zeros, hi + 1, n - 1);
    }
    return rc ? rc : gr_b_ref(b, rule, g);
}

/* Adds alternatives to rule for the non-negative integers in [lo, hi]
 * (hi < 0: no upper bound, up to 16 digits), each prefixed by sign. */
static int pos_range(gr_builder *b, int rule, const char *sign, long long lo, long long hi) {
    const long long cap = 9999999999999999LL;
    if (hi < 0 || hi > cap) hi = cap;
    int rc = 0;
    for (long long p = 1, d = 1; d <= 16 && rc == 0; d++, p *= 10) {
        long long a = d == 1 ? 0 : p, z = p * 10 - 1;
        if (a < lo) a = lo;
        if (z > hi) z = hi;
        if (a > z) continue;
        char as[24], zs[24];
        snprintf(as, sizeof as, "%lld", a);
        snprintf(zs, sizeof zs, "%lld", z);
        rc = gr_b_alt(b, rule);
        if (!rc) rc = gr_b_lit(b, rule, sign, strlen(sign));
        if (!rc) rc = same_len(b, rule, as, zs, (int)d);
    }
    return rc;
}

/* Integers in [lo, hi]; has_lo / has_hi say whether the bounds exist. */
static int int_range(sc *c, int has_lo, long long lo, int has_hi, long long hi) {
    if (!has_lo && !has_hi) return number_rule(c, 1, 0);
    if (has_lo && has_hi && lo > hi) return sc_fail(c, NI_EINVAL, "%s", "empty integer range");
    int r = gr_b_rule(c->b, NULL), rc = r < 0 ? r : 0;
    if (!rc && (!has_hi || hi >= 0)) rc = pos_range(c->b, r, "", has_lo && lo > 0 ? lo : 0, has_hi ? hi : -1);
    if (!rc && (!has_lo || lo < 0)) { /* negative part: "-" then [max(1,-hi), -lo] */
        long long a = has_hi && hi < 0 ? -hi : 1, z = has_lo ? -lo : -1;
        rc = pos_range(c->b, r, "-", a, z);
    }
    return rc ? rc : r;
}

/* ---- schemas ---- */

static int schema_rule(sc *c, const json_t *s);

static int literal_alt(sc *c, int rule, const json_t *v) {
    char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    if (!t) return NI_ENOMEM;
    size_t n = strlen(t);
    c->literal_bytes += (long)n;
    int rc = c->literal_bytes > SC_MAX_LITERAL
                 ? sc_fail(c, NI_ERANGE, "%s", "enum/const values too large")
                 : gr_b_alt(c->b, rule);
    if (!rc) rc = gr_b_lit(c->b, rule, t, n);
    free(t);
    return rc;
}

static const char *const ANNOTATIONS[] = {"title",    "description", "default",   "examples",
                                          "$schema",  "$id",         "$comment",  "deprecated",
                                          "readOnly", "writeOnly",   "$defs",     "definitions",
                                          "nullable", "format_hint", NULL};

static int in_list(const char *k, const char *const *list) {
    for (int i = 0; list[i]; i++)
        if (strcmp(k, list[i]) == 0) return 1;
    return 0;
}

/* Path bookkeeping for messages. */
static size_t path_push(sc *c, const char *a, const char *b) {
    size_t n = strlen(c->path);
    snprintf(c->path + n, sizeof c->path - n, "/%s%s%s", a, b ? "/" : "", b ? b : "");
    return n;
}

static int get_int(sc *c, const json_t *s, const char *key, long long *out, int *has) {
    const json_t *v = json_object_get(s, key);
    *has = 0;
    if (!v) return 0;
    if (json_is_integer(v)) { *out = json_integer_value(v); *has = 1; return 0; }
    if (json_is_real(v) && json_real_value(v) == (double)(long long)json_real_value(v)) {
        *out = (long long)json_real_value(v);
        *has = 1;
        return 0;
    }
    return sc_fail(c, NI_EINVAL, "'%s' must be an integer", key);
}

static int string_schema(sc *c, const json_t *s) {
    const json_t *pat = json_object_get(s, "pattern"), *fmt = json_object_get(s, "format");
    long long mn = 0, mx = -1;
    int has_mn, has_mx, rc;
    if ((rc = get_int(c, s, "minLength", &mn, &has_mn)) || (rc = get_int(c, s, "maxLength", &mx, &has_mx)))
        return rc;
    if (!has_mx) mx = -1;
    if ((pat || fmt) && (has_mn || has_mx))
        return sc_fail(c, NI_EINVAL, "%s", "minLength/maxLength together with pattern/format are not supported");
    if (pat && fmt) return sc_fail(c, NI_EINVAL, "%s", "pattern together with format is not supported");
    const char *re = NULL;
    if (pat) {
        if (!json_is_string(pat)) return sc_fail(c, NI_EINVAL, "%s", "'pattern' must be a string");
        re = json_string_value(pat);
    } else if (fmt) {
        static const char *const names[] = {"date", "time", "date-time", "uuid", "email", "ipv4",
                                            "hostname", NULL};
#define DATE "[0-9]{4}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))"
#define TIME "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
#define OCTET "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
#define LABEL "[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
        static const char *const res[] = {
            DATE, TIME, DATE "T" TIME, "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[a-zA-Z0-9._%+-]{1,64}@" LABEL "(\\." LABEL "){0,8}\\.[a-zA-Z]{2,12}",
            OCTET "\\." OCTET "\\." OCTET "\\." OCTET, LABEL "(\\." LABEL "){0,8}"};
        const char *f = json_string_value(fmt);
        for (int i = 0; f && names[i]; i++)
            if (strcmp(f, names[i]) == 0) re = res[i];
        if (!re) return sc_fail(c, NI_EINVAL, "unsupported string format '%s'", f ? f : "?");
    }
    gr_builder *b = c->b;
    int r = gr_b_rule(b, NULL);
    if (r < 0) return r;
    rc = gr_b_lit(b, r, "\"", 1);
    if (!rc && re) {
        rc = gr_b_regex(b, r, re, strlen(re), 1);
    } else if (!rc) {
        if (string_rule(c) < 0) return c->string;
        if (mn > gr_b_limits(b)->max_repeat || mx > gr_b_limits(b)->max_repeat)
            return sc_fail(c, NI_ERANGE, "%s", "minLength/maxLength over the limit");
        if (mn < 0 || (mx >= 0 && mx < mn)) return sc_fail(c, NI_EINVAL, "%s", "bad length bounds");
        int body = gr_b_repeat(b, c->chr, (int)mn, (int)mx);
        if (body < 0) return body;
        rc = gr_b_ref(b, r, body);
    }
    if (!rc) rc = gr_b_lit(b, r, "\"", 1);
    return rc ? rc : r;
}

static int numeric_schema(sc *c, const json_t *s, int integer) {
    const json_t *mn = json_object_get(s, "minimum"), *mx = json_object_get(s, "maximum");
    const json_t *emn = json_object_get(s, "exclusiveMinimum"), *emx = json_object_get(s, "exclusiveMaximum");
    if (json_object_get(s, "multipleOf")) return sc_fail(c, NI_EINVAL, "%s", "'multipleOf' is not supported");
    if (!integer) {
        if (mx || emx) return sc_fail(c, NI_EINVAL, "%s", "'maximum' on a number is not supported (use integer)");
        if (emn && !(json_is_number(emn) && json_number_value(emn) == 0))
            return sc_fail(c, NI_EINVAL, "%s", "'exclusiveMinimum' on a number is only supported as 0");
        if (mn && !(json_is_number(mn) && json_number_value(mn) == 0))
            return sc_fail(c, NI_EINVAL, "%s", "'minimum' on a number is only supported as 0");
        if (emn) /* > 0: a nonzero digit somewhere before the exponent */
            return regex_rule(c, "([1-9][0-9]{0,15}(\\.[0-9]{1,16})?|0\\.[0-9]{0,15}[1-9])"
                                 "([eE][-+]?[0-9]{1,2})?");
        return number_rule(c, 0, mn != NULL);
    }
    int has_lo = 0, has_hi = 0;
    long long lo = 0, hi = 0;
    const json_t *bounds[4] = {mn, emn, mx, emx};
    for (int i = 0; i < 4; i++) {
        const json_t *v = bounds[i];
        if (!v) continue;
        if (json_is_boolean(v)) return sc_fail(c, NI_EINVAL, "%s", "boolean exclusiveMinimum/Maximum (draft 4) is not supported");
        if (!json_is_number(v)) return sc_fail(c, NI_EINVAL, "%s", "bounds must be numbers");
        double d = json_number_value(v);
        if (d > 9e15 || d < -9e15) return sc_fail(c, NI_ERANGE, "%s", "bound too large");
        long long x;
        if (i < 2) { /* lower: ceil, +1 when exclusive and integral */
            x = (long long)d;
            if ((double)x < d) x++;
            if (i == 1 && (double)x == d) x++;
            if (!has_lo || x > lo) lo = x;
            has_lo = 1;
        } else {
            x = (long long)d;
            if ((double)x > d) x--;
            if (i == 3 && (double)x == d) x--;
            if (!has_hi || x < hi) hi = x;
            has_hi = 1;
        }
    }
    return int_range(c, has_lo, lo, has_hi, hi);
}

/* The trie node of the names idx[0..n) that share their first d bytes: the
 * rest of a string key that is none of them (see key_not_in). body is
 * "any characters" (the string rule's body). */
static int trie_rule(sc *c, char *const *names, const int *idx, int n, size_t d, int body) {
    gr_builder *b = c->b;
    int terminal = 0, n_e = 0;
    unsigned char edges[128];
    for (int i = 0; i < n; i++) {
        const unsigned char ch = (unsigned char)names[idx[i]][d];
        if (!ch) {
            terminal = 1;
            continue;
        }
        int seen = 0;
        for (int j = 0; j < n_e && !seen; j++) seen = edges[j] == ch;
        if (!seen) edges[n_e++] = ch;
    }
    char cls[32 + 4 * 128];
    int len = snprintf(cls, sizeof cls, "%s", "[^\"\\\\\\x00-\\x1f");
    for (int j = 0; j < n_e; j++) len += snprintf(cls + len, sizeof cls - (size_t)len, "\\x%02x", edges[j]);
    len += snprintf(cls + len, sizeof cls - (size_t)len, "]");
    int r = gr_b_rule(b, NULL), rc = r < 0 ? r : 0;
    if (!rc && !terminal) rc = gr_b_alt(b, r); /* the key may end here */
    if (!rc) rc = gr_b_alt(b, r);              /* another character: anything after */
    if (!rc) rc = gr_b_regex(b, r, cls, (size_t)len, 0);
    if (!rc) rc = gr_b_ref(b, r, body);
    if (!rc) rc = gr_b_alt(b, r); /* an escape: treated as leaving the names */
    if (!rc) rc = gr_b_regex(b, r, SC_ESCAPE_RE, strlen(SC_ESCAPE_RE), 0);
    if (!rc) rc = gr_b_ref(b, r, body);
    int sub[SC_MAX_PROPS + 1];
    for (int j = 0; j < n_e && !rc; j++) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if ((unsigned char)names[idx[i]][d] == edges[j]) sub[m++] = idx[i];
        const int child = trie_rule(c, names, sub, m, d + 1, body);
        if (child < 0) return child;
        rc = gr_b_alt(b, r);
        if (!rc) rc = gr_b_lit(b, r, (const char *)&edges[j], 1);
        if (!rc) rc = gr_b_ref(b, r, child);
    }
    return rc ? rc : r;
}

/* A JSON string key that is none of the k declared property names: an
 * additional property may not reuse a declared name (its value must match
 * that property's schema, not additionalProperties'). A walk of the names'
 * trie: at each node the key may close (unless a name ends there), follow an
 * edge, or leave the names with any other character or an escape, after
 * which anything may follow. Names that need escaping or hold non-ASCII
 * bytes make it fall back to any string (the character classes work on code
 * points, the trie on bytes): a documented gap, as is an escape that spells
 * a name's character (\u0078 for "x"), which counts as leaving the names,
 * and names longer than SC_TRIE_MAX_NAME bytes (the trie is walked
 * recursively, one frame per byte). */
#define SC_TRIE_MAX_NAME 128
static int key_not_in(sc *c, char *const *names, int k) {
    const int any = string_rule(c);
    if (any < 0) return any;
    int idx[SC_MAX_PROPS + 1];
    for (int i = 0; i < k; i++) {
        if (strlen(names[i]) > SC_TRIE_MAX_NAME) return any; /* bounds the recursion */
        for (const unsigned char *p = (const unsigned char *)names[i]; *p; p++)
            if (*p >= 0x80 || *p < 0x20 || *p == '"' || *p == '\\') return any;
        idx[i] = i;
    }
    if (k == 0) return any;
    int body = gr_b_repeat(c->b, c->chr, 0, -1);
    if (body < 0) return body;
    int t = trie_rule(c, names, idx, k, 0, body);
    if (t < 0) return t;
    int r = gr_b_rule(c->b, NULL), rc = r < 0 ? r : 0;
    if (!rc) rc = gr_b_lit(c->b, r, "\"", 1);
    if (!rc) rc = gr_b_ref(c->b, r, t);
    if (!rc) rc = gr_b_lit(c->b, r, "\"", 1);
    return rc ? rc : r;
}

/* member rule: "key" ws ":" ws value ws */
static int member_rule(sc *c, const char *key, int value) {
    json_t *k = json_string(key);
    char *t = k ? json_dumps(k, JSON_ENCODE_ANY) : NULL;
    json_decref(k);
    if (!t) return NI_ENOMEM;
    int w = ws(c), r = w < 0 ? w : gr_b_rule(c->b, NULL), rc = r < 0 ? r : 0;
    if (!rc) rc = gr_b_lit(c->b, r, t, strlen(t));
    free(t);
    if (!rc) rc = gr_b_ref(c->b, r, w);
    if (!rc) rc = gr_b_lit(c->b, r, ":", 1);
    if (!rc) rc = gr_b_ref(c->b, r, w);
    if (!rc) rc = gr_b_ref(c->b, r, value);
    if (!rc) rc = gr_b_ref(c->b, r, w);
    return rc ? rc : r;
}

static int object_schema(sc *c, const json_t *s) {
    static const char *const unsupported[] = {"patternProperties", "propertyNames", "minProperties",
                                              "maxProperties", "dependencies", "dependentRequired",
                                              "dependentSchemas", "unevaluatedProperties", NULL};
    for (int i = 0; unsupported[i]; i++)
        if (json_object_get(s, unsupported[i])) return sc_fail(c, NI_EINVAL, "unsupported keyword '%s'", unsupported[i]);
    const json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required");
    const json_t *addl = json_object_get(s, "additionalProperties");
    if (props && !json_is_object(props)) return sc_fail(c, NI_EINVAL, "%s", "'properties' must be an object");
    if (req && !json_is_array(req)) return sc_fail(c, NI_EINVAL, "%s", "'required' must be an array");
    int k = props ? (int)json_object_size(props) : 0;
    if (k > SC_MAX_PROPS) return sc_fail(c, NI_ERANGE, "%s", "too many properties");
    for (size_t i = 0; req && i < json_array_size(req); i++) {
        const char *name = json_string_value(json_array_get(req, i));
        if (!name) return sc_fail(c, NI_EINVAL, "%s", "'required' must list strings");
        if (!props || !json_object_get(props, name))
            return sc_fail(c, NI_EINVAL, "required property '%s' is not in 'properties'", name);
    }
    int members[SC_MAX_PROPS + 1];
    char *names[SC_MAX_PROPS + 1];
    uint8_t required[SC_MAX_PROPS + 1] = {0};
    int i = 0;
    const char *key;
    json_t *sub;
    json_object_foreach((json_t *)props, key, sub) {
        size_t mark = path_push(c, "properties", key);
        int v = schema_rule(c, sub);
        c->path[mark] = 0;
        if (v < 0) return v;
        int m = member_rule(c, key, v);
        if (m < 0) return m;
        members[i] = m;
        names[i] = (char *)key;
        for (size_t j = 0; req && j < json_array_size(req); j++)
            if (strcmp(json_string_value(json_array_get(req, j)), key) == 0) required[i] = 1;
        i++;
    }
    gr_builder *b = c->b;
    int w = ws(c), rc = w < 0 ? w : 0;
    int extra = -1; /* ("," ws member)* for additional properties */
    int extra_first = -1;
    if (!rc && addl && !(json_is_false(addl))) {
        int v;
        if (json_is_true(addl)) {
            v = value_rule(c);
        } else {
            size_t mark = path_push(c, "additionalProperties", NULL);
            v = schema_rule(c, addl);
            c->path[mark] = 0;
        }
        int s2 = key_not_in(c, names, k);
        if (v < 0 || s2 < 0) return v < 0 ? v : s2;
        extra_first = gr_b_rule(b, NULL); /* string ws ":" ws v ws */
        if (extra_first < 0) return extra_first;
        rc = gr_b_ref(b, extra_first, s2);
        if (!rc) rc = gr_b_ref(b, extra_first, w);
        if (!rc) rc = gr_b_lit(b, extra_first, ":", 1);
        if (!rc) rc = gr_b_ref(b, extra_first, w);
        if (!rc) rc = gr_b_ref(b, extra_first, v);
        if (!rc) rc = gr_b_ref(b, extra_first, w);
        int more = rc ? rc : gr_b_rule(b, NULL);
        if (more < 0) return more;
        rc = gr_b_lit(b, more, ",", 1);
        if (!rc) rc = gr_b_ref(b, more, w);
        if (!rc) rc = gr_b_ref(b, more, extra_first);
        extra = rc ? rc : gr_b_repeat(b, more, 0, -1);
        if (extra < 0) return extra;
    }
    if (rc) return rc;
    /* F[i]: members from i on, none emitted yet; R[i]: at least one emitted */
    int F[SC_MAX_PROPS + 1], R[SC_MAX_PROPS + 1];
    for (int j = k; j >= 0 && rc == 0; j--) {
        F[j] = gr_b_rule(b, NULL);
        R[j] = gr_b_rule(b, NULL);
        if (F[j] < 0 || R[j] < 0) return F[j] < 0 ? F[j] : R[j];
        int all_opt = 1;
        for (int t = j; t < k && rc == 0; t++) {
            rc = gr_b_alt(b, F[j]);
            if (!rc) rc = gr_b_ref(b, F[j], members[t]);
            if (!rc) rc = gr_b_ref(b, F[j], R[t + 1]);
            if (!rc) rc = gr_b_alt(b, R[j]);
            if (!rc) rc = gr_b_lit(b, R[j], ",", 1);
            if (!rc) rc = gr_b_ref(b, R[j], w);
            if (!rc) rc = gr_b_ref(b, R[j], members[t]);
            if (!rc) rc = gr_b_ref(b, R[j], R[t + 1]);
            if (required[t]) { all_opt = 0; break; }
        }
        if (rc) return rc;
        if (all_opt) { /* may stop here */
            rc = gr_b_alt(b, F[j]);
            if (!rc && extra >= 0) {
                rc = gr_b_ref(b, F[j], extra_first);
                if (!rc) rc = gr_b_ref(b, F[j], extra);
                if (!rc) rc = gr_b_alt(b, F[j]);
            }
            if (!rc) rc = gr_b_alt(b, R[j]);
            if (!rc && extra >= 0) rc = gr_b_ref(b, R[j], extra);
        }
    }
    if (rc) return rc;
    int r = gr_b_rule(b, NULL);
    if (r < 0) return r;
    rc = gr_b_lit(b, r, "{", 1);
    if (!rc) rc = gr_b_ref(b, r, w);
    if (!rc) rc = gr_b_ref(b, r, F[0]);
    if (!rc) rc = gr_b_lit(b, r, "}", 1);
    return rc ? rc : r;
}

static int array_schema(sc *c, const json_t *s) {
    static const char *const unsupported[] = {"uniqueItems", "contains", "minContains", "maxContains",
                                              "unevaluatedItems", "additionalItems", NULL};
    for (int i = 0; unsupported[i]; i++) {
        const json_t *v = json_object_get(s, unsupported[i]);
        if (v && !(i == 0 && json_is_false(v)))
            return sc_fail(c, NI_EINVAL, "unsupported keyword '%s'", unsupported[i]);
    }
    long long mn = 0, mx = -1;
    int has_mn, has_mx, rc;
    if ((rc = get_int(c, s, "minItems", &mn, &has_mn)) || (rc = get_int(c, s, "maxItems", &mx, &has_mx)))
        return rc;
    if (!has_mx) mx = -1;
    if (mn < 0 || (mx >= 0 && mx < mn)) return sc_fail(c, NI_EINVAL, "%s", "bad minItems/maxItems");
    if (mn > gr_b_limits(c->b)->max_repeat || mx > gr_b_limits(c->b)->max_repeat)
        return sc_fail(c, NI_ERANGE, "%s", "minItems/maxItems over the limit");
    const json_t *items = json_object_get(s, "items"), *prefix = json_object_get(s, "prefixItems");
    if (json_is_array(items)) prefix = items, items = NULL; /* draft-4 tuple form */
    gr_builder *b = c->b;
    int w = ws(c);
    if (w < 0) return w;
    int r = gr_b_rule(b, NULL);
    if (r < 0) return r;
    rc = gr_b_lit(b, r, "[", 1);
    if (!rc) rc = gr_b_ref(b, r, w);
    if (rc) return rc;
    if (prefix) {
        if (!json_is_array(prefix)) return sc_fail(c, NI_EINVAL, "%s", "'prefixItems' must be an array");
        if (has_mn || has_mx) return sc_fail(c, NI_EINVAL, "%s", "prefixItems with minItems/maxItems is not supported");
        for (size_t i = 0; i < json_array_size(prefix) && rc == 0; i++) {
            char idx[24];
            snprintf(idx, sizeof idx, "%zu", i);
            size_t mark = path_push(c, "prefixItems", idx);
            int v = schema_rule(c, json_array_get(prefix, i));
            c->path[mark] = 0;
            if (v < 0) return v;
            if (i > 0) {
                rc = gr_b_lit(b, r, ",", 1);
                if (!rc) rc = gr_b_ref(b, r, w);
            }
            if (!rc) rc = gr_b_ref(b, r, v);
            if (!rc) rc = gr_b_ref(b, r, w);
        }
        if (!rc) rc = gr_b_lit(b, r, "]", 1);
        return rc ? rc : r;
    }
    int v;
    if (items && !json_is_true(items)) {
        size_t mark = path_push(c, "items", NULL);
        v = schema_rule(c, items);
        c->path[mark] = 0;
    } else {
        v = value_rule(c);
    }
    if (v < 0) return v;
    int item = gr_b_rule(b, NULL), more = item < 0 ? item : gr_b_rule(b, NULL);
    if (more < 0) return more;
    rc = gr_b_ref(b, item, v);
    if (!rc) rc = gr_b_ref(b, item, w);
    if (!rc) rc = gr_b_lit(b, more, ",", 1);
    if (!rc) rc = gr_b_ref(b, more, w);
    if (!rc) rc = gr_b_ref(b, more, item);
    if (rc) return rc;
    if (mx != 0) {
        int rest = gr_b_repeat(b, more, mn > 0 ? (int)mn - 1 : 0, mx > 0 ? (int)mx - 1 : -1);
        if (rest < 0) return rest;
        int body = gr_b_rule(b, NULL);
        if (body < 0) return body;
        rc = gr_b_ref(b, body, item);
        if (!rc) rc = gr_b_ref(b, body, rest);
        if (!rc && mn == 0) rc = gr_b_alt(b, body);
        if (!rc) rc = gr_b_ref(b, r, body);
    }
    if (!rc) rc = gr_b_lit(b, r, "]", 1);
    return rc ? rc : r;
}

static int resolve_ref(sc *c, const char *ref, const json_t **out) {
    if (ref[0] != '#') return sc_fail(c, NI_EINVAL, "only local $ref ('#...') is supported, not '%s'", ref);
    const json_t *cur = c->root;
    const char *p = ref + 1;
    while (*p == '/') {
        p++;
        char seg[128];
        size_t n = 0;
        while (*p && *p != '/' && n + 1 < sizeof seg) {
            if (p[0] == '~' && p[1] == '1') { seg[n++] = '/'; p += 2; }
            else if (p[0] == '~' && p[1] == '0') { seg[n++] = '~'; p += 2; }
            else seg[n++] = *p++;
        }
        seg[n] = 0;
        if (json_is_object(cur)) cur = json_object_get(cur, seg);
        else if (json_is_array(cur)) cur = json_array_get(cur, (size_t)atol(seg));
        else cur = NULL;
        if (!cur) return sc_fail(c, NI_EINVAL, "$ref '%s' does not resolve", ref);
    }
    if (*p) return sc_fail(c, NI_EINVAL, "$ref '%s' does not resolve", ref);
    *out = cur;
    return 0;
}

static int typed_schema(sc *c, const json_t *s, const char *type) {
    static const char *const tf[] = {"true", "false"}, *const nul[] = {"null"};
    if (strcmp(type, "string") == 0) return string_schema(c, s);
    if (strcmp(type, "integer") == 0) return numeric_schema(c, s, 1);
    if (strcmp(type, "number") == 0) return numeric_schema(c, s, 0);
    if (strcmp(type, "boolean") == 0) {
        if (c->boolean < 0) c->boolean = lit_rule(c, tf, 2);
        return c->boolean;
    }
    if (strcmp(type, "null") == 0) {
        if (c->null < 0) c->null = lit_rule(c, nul, 1);
        return c->null;
    }
    if (strcmp(type, "object") == 0) return object_schema(c, s);
    if (strcmp(type, "array") == 0) return array_schema(c, s);
    return sc_fail(c, NI_EINVAL, "unknown type '%s'", type);
}

static int alternatives(sc *c, const json_t *list, const char *kw) {
    if (!json_is_array(list) || json_array_size(list) == 0)
        return sc_fail(c, NI_EINVAL, "'%s' must be a non-empty array", kw);
    int r = gr_b_rule(c->b, NULL);
    if (r < 0) return r;
    for (size_t i = 0; i < json_array_size(list); i++) {
        char idx[24];
        snprintf(idx, sizeof idx, "%zu", i);
        size_t mark = path_push(c, kw, idx);
        int v = schema_rule(c, json_array_get(list, i));
        c->path[mark] = 0;
        if (v < 0) return v;
        int rc = gr_b_alt(c->b, r);
        if (!rc) rc = gr_b_ref(c->b, r, v);
        if (rc) return rc;
    }
    return r;
}

static int schema_body(sc *c, const json_t *s) {
    if (json_is_true(s)) return value_rule(c);
    if (json_is_false(s)) return sc_fail(c, NI_EINVAL, "%s", "schema 'false' admits no value");
    if (!json_is_object(s)) return sc_fail(c, NI_EINVAL, "%s", "a schema must be an object or a boolean");
    static const char *const known[] = {
        "type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "properties", "required",
        "additionalProperties", "items", "prefixItems", "minItems", "maxItems", "minLength",
        "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
        "exclusiveMaximum", "uniqueItems", NULL};
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)s, key, v) {
        if (!in_list(key, known) && !in_list(key, ANNOTATIONS))
            return sc_fail(c, NI_EINVAL, "unsupported keyword '%s'", key);
    }
    const json_t *ref = json_object_get(s, "$ref");
    if (ref) {
        if (!json_is_string(ref)) return sc_fail(c, NI_EINVAL, "%s", "'$ref' must be a string");
        const json_t *target = NULL;
        int rc = resolve_ref(c, json_string_value(ref), &target);
        if (rc) return rc;
        for (int i = 0; i < c->n_refs; i++)
            if (c->refs[i].node == target) return c->refs[i].rule;
        if (c->n_refs == SC_MAX_REFS) return sc_fail(c, NI_ERANGE, "%s", "too many $ref targets");
        int r = gr_b_rule(c->b, NULL); /* registered before compiling: recursion refers to it */
        if (r < 0) return r;
        c->refs[c->n_refs].node = target;
        c->refs[c->n_refs++].rule = r;
        int body = schema_rule(c, target);
        if (body < 0) return body;
        rc = gr_b_ref(c->b, r, body);
        return rc ? rc : r;
    }
    if ((v = json_object_get(s, "const"))) {
        int r = gr_b_rule(c->b, NULL);
        int rc = r < 0 ? r : literal_alt(c, r, v);
        return rc ? rc : r;
    }
    if ((v = json_object_get(s, "enum"))) {
        if (!json_is_array(v) || json_array_size(v) == 0)
            return sc_fail(c, NI_EINVAL, "%s", "'enum' must be a non-empty array");
        if (json_array_size(v) > SC_MAX_ENUM) return sc_fail(c, NI_ERANGE, "%s", "'enum' has too many values");
        int r = gr_b_rule(c->b, NULL), rc = r < 0 ? r : 0;
        for (size_t i = 0; i < json_array_size(v) && rc == 0; i++) rc = literal_alt(c, r, json_array_get(v, i));
        return rc ? rc : r;
    }
    if ((v = json_object_get(s, "anyOf"))) return alternatives(c, v, "anyOf");
    if ((v = json_object_get(s, "oneOf"))) return alternatives(c, v, "oneOf");
    if ((v = json_object_get(s, "allOf"))) {
        if (!json_is_array(v) || json_array_size(v) != 1)
            return sc_fail(c, NI_EINVAL, "%s", "'allOf' is only supported with one schema");
        return schema_rule(c, json_array_get(v, 0));
    }
    const json_t *type = json_object_get(s, "type");
    int nullable = json_is_true(json_object_get(s, "nullable"));
    const char *types[8];
    int nt = 0;
    if (json_is_string(type)) {
        types[nt++] = json_string_value(type);
    } else if (json_is_array(type)) {
        if (json_array_size(type) == 0 || json_array_size(type) > 7)
            return sc_fail(c, NI_EINVAL, "%s", "'type' list must have 1..7 names");
        for (size_t i = 0; i < json_array_size(type); i++) {
            types[nt] = json_string_value(json_array_get(type, i));
            if (!types[nt++]) return sc_fail(c, NI_EINVAL, "%s", "'type' must list strings");
        }
    } else if (type) {
        return sc_fail(c, NI_EINVAL, "%s", "'type' must be a string or a list");
    } else if (json_object_get(s, "properties") || json_object_get(s, "additionalProperties") ||
               json_object_get(s, "required")) {
        types[nt++] = "object";
    } else if (json_object_get(s, "items") || json_object_get(s, "prefixItems")) {
        types[nt++] = "array";
    } else if (json_object_get(s, "pattern") || json_object_get(s, "format") ||
               json_object_get(s, "minLength") || json_object_get(s, "maxLength")) {
        types[nt++] = "string";
    } else {
        return value_rule(c);
    }
    if (nullable) types[nt++] = "null";
    if (nt == 1) return typed_schema(c, s, types[0]);
    int r = gr_b_rule(c->b, NULL);
    if (r < 0) return r;
    for (int i = 0; i < nt; i++) {
        int t = typed_schema(c, s, types[i]);
        if (t < 0) return t;
        int rc = gr_b_alt(c->b, r);
        if (!rc) rc = gr_b_ref(c->b, r, t);
        if (rc) return rc;
    }
    return r;
}

static int schema_rule(sc *c, const json_t *s) {
    if (++c->depth > gr_b_limits(c->b)->max_depth)
        return sc_fail(c, NI_ERANGE, "%s", "schema nested too deep");
    int r = schema_body(c, s);
    c->depth--;
    return r;
}

static sc *sc_new(gr_builder *b, const json_t *schema) {
    sc *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->b = b;
    c->root = schema;
    c->ws = c->chr = c->string = c->number = c->integer = c->nonneg = c->value = c->boolean =
        c->null = -1;
    return c;
}

int gr_b_schema(gr_builder *b, const struct json_t *schema) {
    sc *c = sc_new(b, (const json_t *)schema);
    if (!c) return NI_ENOMEM;
    int r = schema ? schema_rule(c, (const json_t *)schema) : any_container(c, 1);
    free(c);
    return r;
}

/* Compiles root ::= the value of schema (NULL: any JSON object). */
static int compile(const json_t *schema, const gr_limits *lim, gr_grammar **out, char *err,
                   size_t errlen) {
    gr_builder *b;
    *out = NULL;
    if (gr_builder_new(&b, lim)) return NI_ENOMEM;
    int root = gr_b_rule(b, "root"), rc = root < 0 ? root : 0;
    int v = rc ? rc : gr_b_schema(b, schema);
    if (v < 0) rc = v;
    if (!rc) rc = gr_b_ref(b, root, v);
    if (rc) rc = ni_fail(err, errlen, rc, "%s", gr_builder_error(b));
    else rc = gr_b_finish(b, root, out, err, errlen);
    gr_builder_free(b);
    return rc;
}

int gr_compile_schema(const struct json_t *schema, const gr_limits *lim, gr_grammar **out,
                      char *err, size_t errlen) {
    if (!schema) return ni_fail(err, errlen, NI_EINVAL, "no schema");
    return compile((const json_t *)schema, lim, out, err, errlen);
}

int gr_compile_json_object(const gr_limits *lim, gr_grammar **out, char *err, size_t errlen) {
    return compile(NULL, lim, out, err, errlen);
}
