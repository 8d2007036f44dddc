/*
 * gr_gbnf.c - GBNF text (llama.cpp's grammar format) into grammar rules.
 *
 *   root   ::= object
 *   object ::= "{" ws ( pair ( "," ws pair )* )? "}"
 *   pair   ::= string ":" ws value        # comments run to the end of the line
 *
 * Terms: "literal" (escapes \n \t \r \\ \" \[ \] \xHH \uHHHH \UHHHHHHHH),
 * [class] / [^class] with ranges, . (any character), rule names, ( groups ),
 * postfix * + ? {m} {m,} {m,n}. A rule runs until the next `name ::=` or the
 * end, so alternatives may continue on new lines. The start rule is `root`.
 * A term with a postfix becomes a rule of its own, then a repetition.
 */
#include <string.h>

#include "engine/util/util.h"
#include "gr_internal.h"


typedef struct gp {
    gr_builder *b;
    const unsigned char *s;
    size_t n, i;
    int depth;
} gp;

static int gp_fail(gp *p, const char *what) {
    size_t line = 1;
    for (size_t k = 0; k < p->i && k < p->n; k++) line += p->s[k] == '\n';
    return gr_b_fail(p->b, NI_EINVAL, "grammar: %s at line %zu (offset %zu)", what, line, p->i);
}

static void gp_space(gp *p) {
    while (p->i < p->n) {
        int c = p->s[p->i];
        if (c == '#') {
            while (p->i < p->n && p->s[p->i] != '\n') p->i++;
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            p->i++;
        } else {
            break;
        }
    }
}

static int is_name(int c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* Length of a name at i (0 if none). */
static size_t name_len(const gp *p, size_t i) {
    size_t k = i;
    while (k < p->n && is_name(p->s[k])) k++;
    return k - i;
}

/* Whether a `name ::=` starts at p->i. */
static int rule_starts(const gp *p) {
    size_t l = name_len(p, p->i);
    if (!l) return 0;
    size_t k = p->i + l;
    while (k < p->n && (p->s[k] == ' ' || p->s[k] == '\t')) k++;
    return k + 2 < p->n + 0 && memcmp(p->s + k, "::=", 3) == 0;
}

/* One (possibly escaped) character as a code point. */
static int gp_char(gp *p, uint32_t *out) {
    if (p->i >= p->n) return gp_fail(p, "unexpected end");
    const unsigned char *s = p->s + p->i;
    if (s[0] == '\\') {
        if (p->i + 1 >= p->n) return gp_fail(p, "trailing backslash");
        int e = s[1], digits = 0;
        p->i += 2;
        switch (e) {
        case 'n': *out = '\n'; return 0;
        case 't': *out = '\t'; return 0;
        case 'r': *out = '\r'; return 0;
        case 'x': digits = 2; break;
        case 'u': digits = 4; break;
        case 'U': digits = 8; break;
        default: *out = (uint32_t)e; return 0;
        }
        uint32_t v = 0;
        for (int k = 0; k < digits; k++) {
            if (p->i >= p->n || gr_hexval(p->s[p->i]) < 0) return gp_fail(p, "bad hex escape");
            v = v * 16 + (uint32_t)gr_hexval(p->s[p->i++]);
        }
        if (v > 0x10FFFF) return gp_fail(p, "code point out of range");
        *out = v;
        return 0;
    }
    p->i += (size_t)gr_utf8_decode(s, p->n - p->i, out);
    return 0;
}

static int emit_cp(gr_builder *b, int rule, uint32_t c) {
    if (c < 0x80) {
        char ch = (char)c;
        return gr_b_lit(b, rule, &ch, 1);
    }
    gr_range r = {c, c};
    return gr_b_class(b, rule, &r, 1, 0);
}

static int gp_alts(gp *p, int rule);

/* One term into rule. */
static int gp_term(gp *p, int rule) {
    int c = p->s[p->i], rc = 0;
    if (c == '"') {
        p->i++;
        while (rc == 0 && p->i < p->n && p->s[p->i] != '"') {
            uint32_t cp;
            if ((rc = gp_char(p, &cp))) return rc;
            rc = emit_cp(p->b, rule, cp);
        }
        if (p->i >= p->n) return gp_fail(p, "unterminated literal");
        p->i++;
        return rc ? rc : gr_b_lit(p->b, rule, "", 0); /* "" still opens the alternative */
    }
    if (c == '[') {
        gr_range r[512];
        int n = 0, neg = 0;
        p->i++;
        if (p->i < p->n && p->s[p->i] == '^') { neg = 1; p->i++; }
        while (p->i < p->n && p->s[p->i] != ']') {
            uint32_t lo, hi;
            if ((rc = gp_char(p, &lo))) return rc;
            hi = lo;
            if (p->i + 1 < p->n && p->s[p->i] == '-' && p->s[p->i + 1] != ']') {
                p->i++;
                if ((rc = gp_char(p, &hi))) return rc;
                if (hi < lo) return gp_fail(p, "range out of order");
            }
            if (n == (int)NI_ARRAY_LEN(r)) return gp_fail(p, "character class too large");
            r[n++] = (gr_range){lo, hi};
        }
        if (p->i >= p->n) return gp_fail(p, "unterminated character class");
        p->i++;
        if (n == 0 && !neg) return gp_fail(p, "empty character class");
        return gr_b_class(p->b, rule, r, n, neg);
    }
    if (c == '.') {
        p->i++;
        gr_range r = {0xD800, 0xDFFF}; /* negating only the surrogates: any character */
        return gr_b_class(p->b, rule, &r, 1, 1);
    }
    if (c == '(') {
        p->i++;
        if (++p->depth > gr_b_limits(p->b)->max_depth) return gp_fail(p, "groups nested too deep");
        int g = gr_b_rule(p->b, NULL);
        if (g < 0) return g;
        if ((rc = gp_alts(p, g))) return rc;
        if (p->i >= p->n || p->s[p->i] != ')') return gp_fail(p, "missing )");
        p->i++;
        p->depth--;
        return gr_b_ref(p->b, rule, g);
    }
    size_t l = name_len(p, p->i);
    if (!l) return gp_fail(p, "expected a term");
    int r = gr_b_named(p->b, (const char *)p->s + p->i, l);
    if (r < 0) return r;
    p->i += l;
    return gr_b_ref(p->b, rule, r);
}

static int gp_postfix(gp *p, int *min, int *max) {
    if (p->i >= p->n) return 0;
    int c = p->s[p->i];
    if (c == '*') { *min = 0; *max = -1; p->i++; return 1; }
    if (c == '+') { *min = 1; *max = -1; p->i++; return 1; }
    if (c == '?') { *min = 0; *max = 1; p->i++; return 1; }
    if (c != '{') return 0;
    p->i++;
    gp_space(p);
    long a = 0, bnd;
    int d = 0;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9' && a < 1000000) a = a * 10 + (p->s[p->i++] - '0'), d++;
    if (!d) return gp_fail(p, "bad repetition");
    gp_space(p);
    bnd = a;
    if (p->i < p->n && p->s[p->i] == ',') {
        p->i++;
        gp_space(p);
        long v = 0;
        d = 0;
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9' && v < 1000000) v = v * 10 + (p->s[p->i++] - '0'), d++;
        bnd = d ? v : -1;
        gp_space(p);
    }
    if (p->i >= p->n || p->s[p->i] != '}') return gp_fail(p, "bad repetition");
    p->i++;
    *min = (int)a;
    *max = (int)bnd;
    return 1;
}

static int gp_seq(gp *p, int rule) {
    int rc = gr_b_alt(p->b, rule);
    for (;;) {
        if (rc) return rc;
        gp_space(p);
        if (p->i >= p->n || p->s[p->i] == '|' || p->s[p->i] == ')' || rule_starts(p)) return 0;
        int t = gr_b_rule(p->b, NULL);
        if (t < 0) return t;
        if ((rc = gp_term(p, t))) return rc;
        int min = 1, max = 1, q = gp_postfix(p, &min, &max);
        if (q < 0) return q;
        int r = q ? gr_b_repeat(p->b, t, min, max) : t;
        if (r < 0) return r;
        rc = gr_b_ref(p->b, rule, r);
    }
}

static int gp_alts(gp *p, int rule) {
    int rc = gp_seq(p, rule);
    while (rc == 0 && p->i < p->n && p->s[p->i] == '|') {
        p->i++;
        rc = gp_seq(p, rule);
    }
    return rc;
}

int gr_compile_gbnf(const char *text, size_t len, const gr_limits *lim, gr_grammar **out, char *err,
                    size_t errlen) {
    gr_builder *b;
    *out = NULL;
    if (gr_builder_new(&b, lim)) return NI_ENOMEM;
    gp p = {b, (const unsigned char *)text, len, 0, 0};
    int rc = 0;
    for (;;) {
        gp_space(&p);
        if (p.i >= p.n) break;
        size_t l = name_len(&p, p.i);
        if (!l || !rule_starts(&p)) {
            rc = gp_fail(&p, "expected `name ::=`");
            break;
        }
        int r = gr_b_named(b, text + p.i, l);
        if (r < 0) { rc = r; break; }
        p.i += l;
        gp_space(&p);
        p.i += 3; /* ::= */
        if ((rc = gp_alts(&p, r))) break;
        if (p.i < p.n && p.s[p.i] == ')') {
            rc = gp_fail(&p, "unbalanced )");
            break;
        }
    }
    int root = rc ? -1 : gr_b_named(b, "root", 4);
    if (rc) rc = ni_fail(err, errlen, rc, "%s", gr_builder_error(b));
    else if (root < 0) rc = ni_fail(err, errlen, root, "%s", gr_builder_error(b));
    else rc = gr_b_finish(b, root, out, err, errlen);
    gr_builder_free(b);
    return rc;
}
