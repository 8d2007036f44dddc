/*
 * gr_regex.c - regular expressions and choice lists into grammar rules.
 *
 * A recursive-descent parser over the pattern: alternation -> sequence ->
 * quantified atom. Each atom is appended to the rule being built; an atom
 * with a quantifier first becomes a rule of its own and then a repetition
 * (gr_b_repeat). Matching is a full match (as vLLM's guided_regex); ^ at the
 * start and $ at the end are accepted and mean nothing more.
 *
 * JSON-string mode (JSON Schema "pattern"): the pattern describes the
 * string's decoded value, and the grammar produces its JSON spelling: the
 * characters that JSON must escape (", \ and U+0000..U+001F) are produced as
 * escapes (\" \\ \n \t \r \b \f \u00XX), everything else as itself.
 *
 * Refused with NI_EINVAL and the offset: backreferences, lookaround, word
 * boundaries, inline flags, anchors in the middle; nesting over max_depth.
 */
#include <stdio.h>
#include <string.h>

#include "engine/util/util.h"
#include "gr_internal.h"

#define RX_MAX_RANGES 512

typedef struct rx {
    gr_builder *b;
    const unsigned char *s;
    size_t n, i;
    int json;
    int depth;
    int max_depth;
} rx;


static int rx_fail(rx *p, const char *what) {
    return gr_b_fail(p->b, NI_EINVAL, "regex: %s at offset %zu", what, p->i);
}

/* The UTF-8 code point at p->i (invalid bytes are taken as Latin-1). */
static uint32_t rx_cp(rx *p) {
    uint32_t c;
    p->i += (size_t)gr_utf8_decode(p->s + p->i, p->n - p->i, &c);
    return c;
}

static int rx_hex(rx *p, int digits, uint32_t *out) {
    uint32_t v = 0;
    for (int k = 0; k < digits; k++) {
        if (p->i >= p->n || gr_hexval(p->s[p->i]) < 0) return rx_fail(p, "bad hex escape");
        v = v * 16 + (uint32_t)gr_hexval(p->s[p->i++]);
    }
    *out = v;
    return 0;
}

typedef struct rx_set {
    gr_range r[RX_MAX_RANGES];
    int n;
    int neg;
} rx_set;

static int set_add(rx *p, rx_set *s, uint32_t lo, uint32_t hi) {
    if (s->n >= RX_MAX_RANGES) return rx_fail(p, "character class too large");
    s->r[s->n++] = (gr_range){lo, hi};
    return 0;
}

/* Adds class escape c (d w s, upper case = complement) to s. */
static int set_class_escape(rx *p, rx_set *s, int c) {
    static const gr_range d[] = {{'0', '9'}};
    static const gr_range w[] = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
    static const gr_range sp[] = {{'\t', '\r'}, {' ', ' '}};
    const gr_range *r = c == 'd' || c == 'D' ? d : c == 'w' || c == 'W' ? w : sp;
    int n = c == 'd' || c == 'D' ? 1 : c == 'w' || c == 'W' ? 4 : 2;
    if (c >= 'a') {
        for (int k = 0; k < n; k++)
            if (set_add(p, s, r[k].lo, r[k].hi)) return NI_EINVAL;
        return 0;
    }
    uint32_t next = 0; /* complement of a sorted list */
    for (int k = 0; k < n; k++) {
        if (r[k].lo > next && set_add(p, s, next, r[k].lo - 1)) return NI_EINVAL;
        next = r[k].hi + 1;
    }
    return set_add(p, s, next, 0x10FFFF);
}

/* A single-character escape after '\\' (not a class escape). */
static int rx_escape_char(rx *p, uint32_t *out) {
    if (p->i >= p->n) return rx_fail(p, "trailing backslash");
    int c = p->s[p->i];
    switch (c) {
    case 'n': p->i++; *out = '\n'; return 0;
    case 't': p->i++; *out = '\t'; return 0;
    case 'r': p->i++; *out = '\r'; return 0;
    case 'f': p->i++; *out = '\f'; return 0;
    case 'v': p->i++; *out = '\v'; return 0;
    case '0': p->i++; *out = 0; return 0;
    case 'x': p->i++; return rx_hex(p, 2, out);
    case 'u':
        p->i++;
        if (p->i < p->n && p->s[p->i] == '{') {
            p->i++;
            uint32_t v = 0;
            int k = 0;
            while (p->i < p->n && gr_hexval(p->s[p->i]) >= 0 && k < 6) v = v * 16 + (uint32_t)gr_hexval(p->s[p->i++]), k++;
            if (k == 0 || p->i >= p->n || p->s[p->i] != '}') return rx_fail(p, "bad \\u{} escape");
            p->i++;
            *out = v;
            return 0;
        }
        return rx_hex(p, 4, out);
    case 'b': case 'B': return rx_fail(p, "word boundaries are not supported");
    default:
        if (c >= '1' && c <= '9') return rx_fail(p, "backreferences are not supported");
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
            return rx_fail(p, "unknown escape");
        *out = rx_cp(p);
        return 0;
    }
}

static int rx_bracket(rx *p, rx_set *s) { /* after '[' */
    s->n = 0;
    s->neg = 0;
    if (p->i < p->n && p->s[p->i] == '^') { s->neg = 1; p->i++; }
    int first = 1;
    for (;;) {
        if (p->i >= p->n) return rx_fail(p, "unterminated character class");
        int c = p->s[p->i];
        if (c == ']' && !first) { p->i++; return 0; }
        first = 0;
        uint32_t lo;
        if (c == '\\') {
            p->i++;
            int e = p->i < p->n ? p->s[p->i] : 0;
            if (e && strchr("dwsDWS", e)) {
                p->i++;
                if (set_class_escape(p, s, e)) return NI_EINVAL;
                continue;
            }
            if (e == 'b') { p->i++; lo = '\b'; }
            else if (rx_escape_char(p, &lo)) return NI_EINVAL;
        } else if (c == '[' && p->i + 1 < p->n && p->s[p->i + 1] == ':') {
            return rx_fail(p, "POSIX classes are not supported");
        } else {
            lo = rx_cp(p);
        }
        uint32_t hi = lo;
        if (p->i + 1 < p->n && p->s[p->i] == '-' && p->s[p->i + 1] != ']') {
            p->i++;
            if (p->s[p->i] == '\\') {
                p->i++;
                if (rx_escape_char(p, &hi)) return NI_EINVAL;
            } else {
                hi = rx_cp(p);
            }
            if (hi < lo) return rx_fail(p, "range out of order");
        }
        if (set_add(p, s, lo, hi)) return NI_EINVAL;
    }
}

/* Appends the JSON escape of control/quote/backslash code point c. */
static int json_escape_lit(gr_builder *b, int rule, uint32_t c) {
    char buf[8];
    int n;
    switch (c) {
    case '"': n = snprintf(buf, sizeof buf, "\\\""); break;
    case '\\': n = snprintf(buf, sizeof buf, "\\\\"); break;
    case '\n': n = snprintf(buf, sizeof buf, "\\n"); break;
    case '\t': n = snprintf(buf, sizeof buf, "\\t"); break;
    case '\r': n = snprintf(buf, sizeof buf, "\\r"); break;
    case '\b': n = snprintf(buf, sizeof buf, "\\b"); break;
    case '\f': n = snprintf(buf, sizeof buf, "\\f"); break;
    default: n = snprintf(buf, sizeof buf, "\\u%04x", (unsigned)c); break;
    }
    return gr_b_lit(b, rule, buf, (size_t)n);
}

static int json_unsafe(uint32_t c) { return c < 0x20 || c == '"' || c == '\\'; }

/* Appends one character of set s to rule. JSON mode: the safe part as a
 * class, each unsafe member as its escape, in one group. */
static int emit_set(rx *p, int rule, rx_set *s) {
    gr_builder *b = p->b;
    if (!p->json) return gr_b_class(b, rule, s->r, s->n, s->neg);
    /* which unsafe code points does the set admit? */
    uint8_t admit[0x5D] = {0};
    for (uint32_t c = 0; c < 0x5D; c++) {
        if (!json_unsafe(c)) continue;
        int in = 0;
        for (int k = 0; k < s->n; k++) in |= c >= s->r[k].lo && c <= s->r[k].hi;
        admit[c] = (uint8_t)(in != s->neg);
    }
    rx_set safe = *s;
    if (s->neg) { /* exclude the unsafe ones too */
        if (set_add(p, &safe, 0, 0x1F) || set_add(p, &safe, '"', '"') ||
            set_add(p, &safe, '\\', '\\'))
            return NI_EINVAL;
    }
    int g = gr_b_rule(b, NULL), rc = 0;
    if (g < 0) return g;
    /* the safe part: a positive set minus unsafe code points */
    if (safe.neg) {
        rc = gr_b_alt(b, g);
        if (!rc) rc = gr_b_class(b, g, safe.r, safe.n, 1);
    } else {
        rx_set pos = {.n = 0};
        for (int k = 0; k < safe.n && rc == 0; k++) {
            uint32_t lo = safe.r[k].lo, hi = safe.r[k].hi;
            for (uint32_t c = lo; c <= hi && c < 0x5D; c++) { /* split around unsafe */
                if (json_unsafe(c)) continue;
                uint32_t e = c;
                while (e + 1 <= hi && e + 1 < 0x5D && !json_unsafe(e + 1)) e++;
                rc = set_add(p, &pos, c, e);
                c = e;
            }
            if (hi >= 0x5D && rc == 0) rc = set_add(p, &pos, NI_MAX(lo, 0x5Du), hi);
        }
        if (rc) return rc;
        if (pos.n > 0) {
            rc = gr_b_alt(b, g);
            if (!rc) rc = gr_b_class(b, g, pos.r, pos.n, 0);
        }
    }
    for (uint32_t c = 0; c < 0x5D && rc == 0; c++)
        if (admit[c]) {
            rc = gr_b_alt(b, g);
            if (!rc) rc = json_escape_lit(b, g, c);
        }
    if (rc) return rc;
    return gr_b_ref(b, rule, g);
}

static int emit_char(rx *p, int rule, uint32_t c) {
    if (p->json && json_unsafe(c)) return json_escape_lit(p->b, rule, c);
    uint8_t buf[4];
    gr_range r = {c, c};
    if (c < 0x80) {
        buf[0] = (uint8_t)c;
        return gr_b_lit(p->b, rule, (const char *)buf, 1);
    }
    return gr_b_class(p->b, rule, &r, 1, 0);
}

static int rx_alt(rx *p, int rule);

/* Parses one atom into rule (appended to its open alternative). */
static int rx_atom(rx *p, int rule) {
    int c = p->s[p->i];
    rx_set set;
    switch (c) {
    case '(': {
        p->i++;
        if (p->i < p->n && p->s[p->i] == '?') {
            if (p->i + 1 < p->n && p->s[p->i + 1] == ':') {
                p->i += 2;
            } else if (p->i + 2 < p->n && (p->s[p->i + 1] == 'P' || p->s[p->i + 1] == '<') &&
                       p->s[p->i + 2] != '=' && p->s[p->i + 2] != '!') {
                while (p->i < p->n && p->s[p->i] != '>') p->i++; /* named group */
                if (p->i >= p->n) return rx_fail(p, "unterminated group name");
                p->i++;
            } else {
                return rx_fail(p, "lookaround and inline flags are not supported");
            }
        }
        if (++p->depth > p->max_depth) return rx_fail(p, "groups nested too deep");
        int g = gr_b_rule(p->b, NULL);
        if (g < 0) return g;
        int rc = rx_alt(p, g);
        if (rc) return rc;
        if (p->i >= p->n || p->s[p->i] != ')') return rx_fail(p, "missing )");
        p->i++;
        p->depth--;
        return gr_b_ref(p->b, rule, g);
    }
    case '[':
        p->i++;
        if (rx_bracket(p, &set)) return NI_EINVAL;
        return emit_set(p, rule, &set);
    case '.':
        p->i++;
        set = (rx_set){.n = 1, .neg = 1};
        set.r[0] = (gr_range){'\n', '\n'};
        return emit_set(p, rule, &set);
    case '\\': {
        p->i++;
        int e = p->i < p->n ? p->s[p->i] : 0;
        if (e && strchr("dwsDWS", e)) {
            p->i++;
            set = (rx_set){.n = 0};
            if (set_class_escape(p, &set, e)) return NI_EINVAL;
            return emit_set(p, rule, &set);
        }
        uint32_t ch;
        if (rx_escape_char(p, &ch)) return NI_EINVAL;
        return emit_char(p, rule, ch);
    }
    case '*': case '+': case '?': return rx_fail(p, "quantifier without an atom");
    case '^': case '$': return rx_fail(p, "anchors are only supported at the ends");
    default: return emit_char(p, rule, rx_cp(p));
    }
}

/* Reads a {m}, {m,}, {m,n} quantifier at p->i; returns 1 if one was there. */
static int rx_braces(rx *p, int *min, int *max) {
    size_t j = p->i + 1;
    long a = 0, bnd = -1;
    int digits = 0;
    while (j < p->n && p->s[j] >= '0' && p->s[j] <= '9' && a < 1000000) a = a * 10 + (p->s[j++] - '0'), digits++;
    if (!digits) return 0;
    if (j < p->n && p->s[j] == '}') { bnd = a; }
    else if (j < p->n && p->s[j] == ',') {
        j++;
        long v = 0;
        int d2 = 0;
        while (j < p->n && p->s[j] >= '0' && p->s[j] <= '9' && v < 1000000) v = v * 10 + (p->s[j++] - '0'), d2++;
        bnd = d2 ? v : -1;
        if (j >= p->n || p->s[j] != '}') return 0;
    } else {
        return 0;
    }
    p->i = j + 1;
    *min = (int)a;
    *max = (int)bnd;
    return 1;
}

static int rx_seq(rx *p, int rule) {
    int rc = gr_b_alt(p->b, rule);
    if (rc) return rc;
    if (p->i == 0 && p->i < p->n && p->s[0] == '^') p->i++;
    while (p->i < p->n && p->s[p->i] != '|' && p->s[p->i] != ')') {
        if (p->s[p->i] == '$' && p->i + 1 == p->n) { p->i++; break; }
        /* parse the atom into its own rule, so a quantifier can wrap it */
        int a = gr_b_rule(p->b, NULL);
        if (a < 0) return a;
        if ((rc = rx_atom(p, a))) return rc;
        int min = 1, max = 1, q = 0;
        if (p->i < p->n) {
            int c = p->s[p->i];
            if (c == '*') { min = 0; max = -1; q = 1; p->i++; }
            else if (c == '+') { min = 1; max = -1; q = 1; p->i++; }
            else if (c == '?') { min = 0; max = 1; q = 1; p->i++; }
            else if (c == '{') q = rx_braces(p, &min, &max);
            if (q && p->i < p->n && (p->s[p->i] == '?' || p->s[p->i] == '+')) p->i++;
            if (q && p->i < p->n && strchr("*+?", p->s[p->i]))
                return rx_fail(p, "nested quantifier");
        }
        int r = q ? gr_b_repeat(p->b, a, min, max) : a;
        if (r < 0) return r;
        if ((rc = gr_b_ref(p->b, rule, r))) return rc;
    }
    return 0;
}

static int rx_alt(rx *p, int rule) {
    int rc = rx_seq(p, rule);
    while (rc == 0 && p->i < p->n && p->s[p->i] == '|') {
        p->i++;
        rc = rx_seq(p, rule);
    }
    return rc;
}

int gr_b_regex(gr_builder *b, int rule, const char *re, size_t len, int json_string) {
    rx p = {b, (const unsigned char *)re, len, 0, json_string, 0, gr_b_limits(b)->max_depth};
    int g = gr_b_rule(b, NULL);
    if (g < 0) return g;
    int rc = rx_alt(&p, g);
    if (rc) return rc;
    if (p.i < p.n) return rx_fail(&p, "unbalanced )");
    return gr_b_ref(b, rule, g);
}

int gr_compile_regex(const char *re, size_t len, const gr_limits *lim, gr_grammar **out, char *err,
                     size_t errlen) {
    gr_builder *b;
    *out = NULL;
    if (gr_builder_new(&b, lim)) return NI_ENOMEM;
    int root = gr_b_rule(b, "root"), rc = root < 0 ? root : 0;
    if (!rc) rc = gr_b_regex(b, root, re, len, 0);
    if (rc) rc = ni_fail(err, errlen, rc, "%s", gr_builder_error(b));
    else rc = gr_b_finish(b, root, out, err, errlen);
    gr_builder_free(b);
    return rc;
}

int gr_compile_choice(const char *const *choices, const size_t *lens, int n, const gr_limits *lim,
                      gr_grammar **out, char *err, size_t errlen) {
    gr_builder *b;
    *out = NULL;
    if (n < 1) return ni_fail(err, errlen, NI_EINVAL, "no choices");
    if (gr_builder_new(&b, lim)) return NI_ENOMEM;
    int root = gr_b_rule(b, "root"), rc = root < 0 ? root : 0;
    for (int i = 0; i < n && rc == 0; i++) {
        rc = gr_b_alt(b, root);
        if (!rc) rc = gr_b_lit(b, root, choices[i], lens[i]);
    }
    if (rc) rc = ni_fail(err, errlen, rc, "%s", gr_builder_error(b));
    else rc = gr_b_finish(b, root, out, err, errlen);
    gr_builder_free(b);
    return rc;
}
