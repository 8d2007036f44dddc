/*
 * gr_build.c - the grammar builder every front end uses, and the checks that
 * make a compiled grammar safe to match.
 *
 * While building, each rule is a growable array of elements in the final
 * encoding (gr_internal.h): its alternatives one after another, each closed
 * by END; the last one stays open until the next gr_b_alt or gr_b_finish.
 * gr_b_finish concatenates the rules into one element array.
 *
 * Safety: matching expands rule references without consuming input, so a
 * rule that reaches itself that way (left recursion, or x* with x able to
 * match empty) would never terminate; gr_b_finish finds such cycles over
 * the "can start with" graph (after computing which rules are nullable) and
 * refuses them. Sizes are capped by gr_limits while building, so a
 * compilation never runs away.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/util/util.h"
#include "gr_internal.h"

typedef struct gr_rule {
    uint32_t *e;
    int n, cap;
    int open;    /* an alternative is in progress */
    int n_alts;  /* closed + open */
    char *name;  /* NULL: anonymous */
} gr_rule;

struct gr_builder {
    gr_limits lim;
    gr_rule *rules;
    int n_rules, cap_rules;
    uint8_t (*sets)[32];
    int n_sets, cap_sets;
    int32_t *set_hash; /* open addressing over set indices, -1 empty */
    int set_hash_cap;
    long n_elems;
    char err[256];
};

static const gr_limits DEFAULT_LIMITS = {200000, 50000, 10000, 64};

int gr_builder_new(gr_builder **out, const gr_limits *lim) {
    gr_builder *b = calloc(1, sizeof *b);
    if (!b) return NI_ENOMEM;
    b->lim = DEFAULT_LIMITS;
    if (lim) {
        if (lim->max_elems > 0) b->lim.max_elems = lim->max_elems;
        if (lim->max_rules > 0) b->lim.max_rules = lim->max_rules;
        if (lim->max_repeat > 0) b->lim.max_repeat = lim->max_repeat;
        if (lim->max_depth > 0) b->lim.max_depth = lim->max_depth;
    }
    *out = b;
    return 0;
}

void gr_builder_free(gr_builder *b) {
    if (!b) return;
    for (int i = 0; i < b->n_rules; i++) {
        free(b->rules[i].e);
        free(b->rules[i].name);
    }
    free(b->rules);
    free(b->sets);
    free(b->set_hash);
    free(b);
}

int gr_b_fail(gr_builder *b, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err, sizeof b->err, fmt, ap);
    va_end(ap);
    return code;
}

const char *gr_builder_error(const gr_builder *b) { return b->err[0] ? b->err : "grammar error"; }

const gr_limits *gr_b_limits(const gr_builder *b) { return &b->lim; }

int gr_utf8_decode(const unsigned char *s, size_t left, uint32_t *cp) {
    uint32_t c = s[0];
    int len = 1;
    if (c >= 0xC0 && c < 0xE0 && left >= 2) {
        c = (c & 31) << 6 | (s[1] & 63);
        len = 2;
    } else if (c >= 0xE0 && c < 0xF0 && left >= 3) {
        c = (c & 15) << 12 | (s[1] & 63) << 6 | (s[2] & 63);
        len = 3;
    } else if (c >= 0xF0 && left >= 4) {
        c = (c & 7) << 18 | (s[1] & 63) << 12 | (s[2] & 63) << 6 | (s[3] & 63);
        len = 4;
    }
    *cp = c;
    return len;
}

int gr_hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int gr_b_rule(gr_builder *b, const char *name) {
    if (b->n_rules >= b->lim.max_rules)
        return gr_b_fail(b, NI_ERANGE, "grammar too large: more than %d rules", b->lim.max_rules);
    if (b->n_rules == b->cap_rules) {
        int cap = b->cap_rules ? 2 * b->cap_rules : 64;
        gr_rule *r = realloc(b->rules, (size_t)cap * sizeof *r);
        if (!r) return NI_ENOMEM;
        b->rules = r;
        b->cap_rules = cap;
    }
    gr_rule *r = &b->rules[b->n_rules];
    memset(r, 0, sizeof *r);
    if (name && !(r->name = strdup(name))) return NI_ENOMEM;
    return b->n_rules++;
}

int gr_b_named(gr_builder *b, const char *name, size_t len) {
    for (int i = 0; i < b->n_rules; i++) {
        const char *n = b->rules[i].name;
        if (n && strlen(n) == len && memcmp(n, name, len) == 0) return i;
    }
    char buf[128];
    if (len >= sizeof buf) return gr_b_fail(b, NI_EINVAL, "rule name too long");
    memcpy(buf, name, len);
    buf[len] = 0;
    return gr_b_rule(b, buf);
}

static int push(gr_builder *b, int rule, uint32_t e) {
    if (rule < 0 || rule >= b->n_rules) return gr_b_fail(b, NI_EINVAL, "bad rule id %d", rule);
    if (b->n_elems >= b->lim.max_elems)
        return gr_b_fail(b, NI_ERANGE, "grammar too large: more than %d elements",
                         b->lim.max_elems);
    gr_rule *r = &b->rules[rule];
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 8;
        uint32_t *p = realloc(r->e, (size_t)cap * sizeof *p);
        if (!p) return NI_ENOMEM;
        r->e = p;
        r->cap = cap;
    }
    r->e[r->n++] = e;
    b->n_elems++;
    return 0;
}

static int ensure_open(gr_builder *b, int rule) {
    if (rule < 0 || rule >= b->n_rules) return gr_b_fail(b, NI_EINVAL, "bad rule id %d", rule);
    gr_rule *r = &b->rules[rule];
    if (!r->open) {
        r->open = 1;
        r->n_alts++;
    }
    return 0;
}

int gr_b_alt(gr_builder *b, int rule) {
    if (rule < 0 || rule >= b->n_rules) return gr_b_fail(b, NI_EINVAL, "bad rule id %d", rule);
    gr_rule *r = &b->rules[rule];
    if (r->open) {
        int rc = push(b, rule, GR_ELEM(GR_K_END, 0));
        if (rc) return rc;
    }
    r->open = 1;
    r->n_alts++;
    return 0;
}

static uint32_t set_hash(const uint8_t *s) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < 32; i++) h = (h ^ s[i]) * 16777619u;
    return h;
}

/* Index of the set s, added when new. */
static int set_index(gr_builder *b, const uint8_t s[32]) {
    if (2 * (b->n_sets + 1) > b->set_hash_cap) {
        int cap = b->set_hash_cap ? 2 * b->set_hash_cap : 256;
        int32_t *h = malloc((size_t)cap * sizeof *h);
        if (!h) return NI_ENOMEM;
        for (int i = 0; i < cap; i++) h[i] = -1;
        for (int i = 0; i < b->n_sets; i++) {
            uint32_t k = set_hash(b->sets[i]) & (uint32_t)(cap - 1);
            while (h[k] >= 0) k = (k + 1) & (uint32_t)(cap - 1);
            h[k] = i;
        }
        free(b->set_hash);
        b->set_hash = h;
        b->set_hash_cap = cap;
    }
    uint32_t k = set_hash(s) & (uint32_t)(b->set_hash_cap - 1);
    for (; b->set_hash[k] >= 0; k = (k + 1) & (uint32_t)(b->set_hash_cap - 1))
        if (memcmp(b->sets[b->set_hash[k]], s, 32) == 0) return b->set_hash[k];
    if (b->n_sets == b->cap_sets) {
        int cap = b->cap_sets ? 2 * b->cap_sets : 64;
        uint8_t(*p)[32] = realloc(b->sets, (size_t)cap * 32);
        if (!p) return NI_ENOMEM;
        b->sets = p;
        b->cap_sets = cap;
    }
    memcpy(b->sets[b->n_sets], s, 32);
    b->set_hash[k] = b->n_sets;
    return b->n_sets++;
}

int gr_b_bytes(gr_builder *b, int rule, const uint8_t bits[32]) {
    int rc = ensure_open(b, rule);
    if (rc) return rc;
    int idx = set_index(b, bits);
    if (idx < 0) return idx;
    return push(b, rule, GR_ELEM(GR_K_SET, idx));
}

int gr_b_lit(gr_builder *b, int rule, const char *s, size_t len) {
    int rc = ensure_open(b, rule);
    for (size_t i = 0; i < len && rc == 0; i++) {
        uint8_t bits[32] = {0};
        uint8_t c = (uint8_t)s[i];
        bits[c >> 3] = (uint8_t)(1u << (c & 7));
        rc = gr_b_bytes(b, rule, bits);
    }
    return rc;
}

int gr_b_ref(gr_builder *b, int rule, int sub) {
    if (sub < 0 || sub >= b->n_rules) return gr_b_fail(b, NI_EINVAL, "bad rule id %d", sub);
    int rc = ensure_open(b, rule);
    return rc ? rc : push(b, rule, GR_ELEM(GR_K_REF, sub));
}

/* ---- character classes as UTF-8 ---- */

static int cmp_range(const void *a, const void *b) {
    const gr_range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Sorts, clamps and merges r[0..n) in place, drops surrogates; returns the new n. */
static int normalize(gr_range *r, int n) {
    qsort(r, (size_t)n, sizeof *r, cmp_range);
    int m = 0;
    for (int i = 0; i < n; i++) {
        gr_range x = r[i];
        if (x.hi > 0x10FFFF) x.hi = 0x10FFFF;
        if (x.lo > x.hi) continue;
        if (m > 0 && x.lo <= r[m - 1].hi + 1) {
            if (x.hi > r[m - 1].hi) r[m - 1].hi = x.hi;
        } else {
            r[m++] = x;
        }
    }
    return m;
}

static int encode(uint32_t c, uint8_t *o) {
    if (c < 0x80) { o[0] = (uint8_t)c; return 1; }
    if (c < 0x800) { o[0] = (uint8_t)(0xC0 | c >> 6); o[1] = (uint8_t)(0x80 | (c & 63)); return 2; }
    if (c < 0x10000) {
        o[0] = (uint8_t)(0xE0 | c >> 12);
        o[1] = (uint8_t)(0x80 | ((c >> 6) & 63));
        o[2] = (uint8_t)(0x80 | (c & 63));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | c >> 18);
    o[1] = (uint8_t)(0x80 | ((c >> 12) & 63));
    o[2] = (uint8_t)(0x80 | ((c >> 6) & 63));
    o[3] = (uint8_t)(0x80 | (c & 63));
    return 4;
}

/* Appends to rule one alternative per UTF-8 byte-range sequence covering
 * [lo, hi] (all code points of one encoded length >= 2 after splitting):
 * the classic split so that every byte position is a plain range. */
static int utf8_seqs(gr_builder *b, int rule, uint32_t lo, uint32_t hi) {
    if (lo > hi) return 0;
    static const uint32_t bounds[] = {0x7F, 0x7FF, 0xFFFF};
    for (int i = 0; i < 3; i++)
        if (lo <= bounds[i] && bounds[i] < hi) {
            int rc = utf8_seqs(b, rule, lo, bounds[i]);
            return rc ? rc : utf8_seqs(b, rule, bounds[i] + 1, hi);
        }
    uint8_t a[4], z[4];
    int n = encode(lo, a);
    encode(hi, z);
    for (int i = 1; i < n; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if ((lo & m) != 0) {
                int rc = utf8_seqs(b, rule, lo, lo | m);
                return rc ? rc : utf8_seqs(b, rule, (lo | m) + 1, hi);
            }
            if ((hi & m) != m) {
                int rc = utf8_seqs(b, rule, lo, (hi & ~m) - 1);
                return rc ? rc : utf8_seqs(b, rule, hi & ~m, hi);
            }
        }
    }
    int rc = gr_b_alt(b, rule);
    for (int k = 0; k < n && rc == 0; k++) {
        uint8_t bits[32] = {0};
        for (int c = a[k]; c <= z[k]; c++) bits[c >> 3] |= (uint8_t)(1u << (c & 7));
        rc = gr_b_bytes(b, rule, bits);
    }
    return rc;
}

int gr_b_class(gr_builder *b, int rule, const gr_range *ranges, int n, int negate) {
    if (n < 0 || n > 4096) return gr_b_fail(b, NI_ERANGE, "character class too large");
    gr_range r[4096 + 2];
    memcpy(r, ranges, (size_t)n * sizeof *r);
    r[n++] = (gr_range){0xD800, 0xDFFF}; /* surrogates: removed below */
    n = normalize(r, n);
    gr_range out[4096 + 4];
    int m = 0;
    if (negate) {
        uint32_t next = 0;
        for (int i = 0; i < n; i++) {
            if (r[i].lo > next) out[m++] = (gr_range){next, r[i].lo - 1};
            next = r[i].hi + 1;
        }
        if (next <= 0x10FFFF) out[m++] = (gr_range){next, 0x10FFFF};
    } else {
        /* drop the surrogate block we added (and any surrogates asked for) */
        for (int i = 0; i < n; i++) {
            gr_range x = r[i];
            if (x.lo <= 0xDFFF && x.hi >= 0xD800) {
                if (x.lo < 0xD800) out[m++] = (gr_range){x.lo, 0xD7FF};
                if (x.hi > 0xDFFF) out[m++] = (gr_range){0xE000, x.hi};
            } else {
                out[m++] = x;
            }
        }
    }
    if (m == 0) return gr_b_fail(b, NI_EINVAL, "empty character class");
    uint8_t ascii[32] = {0};
    int has_ascii = 0, has_wide = 0;
    for (int i = 0; i < m; i++) {
        for (uint32_t c = out[i].lo; c <= out[i].hi && c < 0x80; c++) {
            ascii[c >> 3] |= (uint8_t)(1u << (c & 7));
            has_ascii = 1;
        }
        if (out[i].hi >= 0x80) has_wide = 1;
    }
    if (!has_wide) return gr_b_bytes(b, rule, ascii);
    int sub = gr_b_rule(b, NULL);
    if (sub < 0) return sub;
    int rc = 0;
    if (has_ascii) {
        rc = gr_b_alt(b, sub);
        if (!rc) rc = gr_b_bytes(b, sub, ascii);
    }
    for (int i = 0; i < m && rc == 0; i++)
        if (out[i].hi >= 0x80) rc = utf8_seqs(b, sub, NI_MAX(out[i].lo, 0x80u), out[i].hi);
    return rc ? rc : gr_b_ref(b, rule, sub);
}

int gr_b_repeat(gr_builder *b, int sub, int min, int max) {
    if (min < 0 || (max >= 0 && max < min))
        return gr_b_fail(b, NI_EINVAL, "bad repetition bounds {%d,%d}", min, max);
    if (min > b->lim.max_repeat || max > b->lim.max_repeat)
        return gr_b_fail(b, NI_ERANGE, "repetition bound over %d", b->lim.max_repeat);
    int r = gr_b_rule(b, NULL);
    if (r < 0) return r;
    int rc = gr_b_alt(b, r);
    for (int i = 0; i < min && rc == 0; i++) rc = gr_b_ref(b, r, sub);
    if (rc) return rc;
    if (max < 0) { /* S ::= sub S | "" */
        int s = gr_b_rule(b, NULL);
        if (s < 0) return s;
        rc = gr_b_alt(b, s);
        if (!rc) rc = gr_b_ref(b, s, sub);
        if (!rc) rc = gr_b_ref(b, s, s);
        if (!rc) rc = gr_b_alt(b, s);
        if (!rc) rc = gr_b_ref(b, r, s);
        return rc ? rc : r;
    }
    int prev = -1; /* O_k ::= sub O_{k-1} | "" */
    for (int k = 1; k <= max - min; k++) {
        int o = gr_b_rule(b, NULL);
        if (o < 0) return o;
        rc = gr_b_alt(b, o);
        if (!rc) rc = gr_b_ref(b, o, sub);
        if (!rc && prev >= 0) rc = gr_b_ref(b, o, prev);
        if (!rc) rc = gr_b_alt(b, o);
        if (rc) return rc;
        prev = o;
    }
    if (prev >= 0) rc = gr_b_ref(b, r, prev);
    return rc ? rc : r;
}

/* ---- finish ---- */

static const char *rule_name(const gr_builder *b, int r, char *buf, size_t n) {
    if (b->rules[r].name) return b->rules[r].name;
    snprintf(buf, n, "<group %d>", r);
    return buf;
}

/* Finds a cycle in the "can start with" graph (r -> t when an alternative
 * of r references t after only nullable elements) by iterative DFS.
 * Returns a rule on a cycle, -1 when there is none, -2 out of memory. */
static int find_left_cycle(const gr_builder *b, const uint8_t *nullable) {
    int n = b->n_rules, found = -2;
    int *off = calloc((size_t)n + 1, sizeof *off), *to = NULL;
    int *stack = malloc((size_t)n * sizeof *stack), *at = malloc((size_t)n * sizeof *at);
    uint8_t *color = calloc((size_t)n, 1);
    if (!off || !stack || !at || !color) goto out;
    for (int pass = 0; pass < 2; pass++) { /* count, then fill */
        int k = 0;
        for (int i = 0; i < n; i++) {
            const gr_rule *r = &b->rules[i];
            int prefix_nullable = 1;
            if (pass == 0) off[i] = k;
            for (int j = 0; j < r->n; j++) {
                uint32_t e = r->e[j];
                if (GR_KIND(e) == GR_K_END) { prefix_nullable = 1; continue; }
                if (!prefix_nullable) continue;
                if (GR_KIND(e) == GR_K_REF) {
                    if (pass == 1) to[k] = (int)GR_ARG(e);
                    k++;
                }
                if (GR_KIND(e) == GR_K_SET || !nullable[GR_ARG(e)]) prefix_nullable = 0;
            }
        }
        if (pass == 0) {
            off[n] = k;
            if (!(to = malloc((size_t)NI_MAX(k, 1) * sizeof *to))) goto out;
        }
    }
    found = -1;
    for (int s = 0; s < n && found < 0; s++) {
        if (color[s]) continue;
        int sp = 0;
        stack[0] = s;
        at[0] = off[s];
        color[s] = 1;
        while (sp >= 0 && found < 0) {
            int v = stack[sp];
            if (at[sp] == off[v + 1]) {
                color[v] = 2;
                sp--;
                continue;
            }
            int w = to[at[sp]++];
            if (color[w] == 1) {
                found = w;
            } else if (color[w] == 0) {
                color[w] = 1;
                stack[++sp] = w;
                at[sp] = off[w];
            }
        }
    }
out:
    free(off);
    free(to);
    free(stack);
    free(at);
    free(color);
    return found;
}

int gr_b_finish(gr_builder *b, int root, gr_grammar **out, char *err, size_t errlen) {
    char nb[32];
    *out = NULL;
    if (root < 0 || root >= b->n_rules) return ni_fail(err, errlen, NI_EINVAL, "no start rule");
    for (int i = 0; i < b->n_rules; i++) {
        gr_rule *r = &b->rules[i];
        if (r->open) {
            int rc = push(b, i, GR_ELEM(GR_K_END, 0));
            if (rc) return ni_fail(err, errlen, rc, "%s", gr_builder_error(b));
            r->open = 0;
        }
    }
    for (int i = 0; i < b->n_rules; i++)
        for (int j = 0; j < b->rules[i].n; j++) {
            uint32_t e = b->rules[i].e[j];
            if (GR_KIND(e) == GR_K_REF && b->rules[GR_ARG(e)].n_alts == 0)
                return ni_fail(err, errlen, NI_EINVAL, "undefined rule '%s'",
                               rule_name(b, (int)GR_ARG(e), nb, sizeof nb));
        }
    if (b->rules[root].n_alts == 0)
        return ni_fail(err, errlen, NI_EINVAL, "undefined rule '%s'",
                       rule_name(b, root, nb, sizeof nb));
    /* nullable rules: fixpoint */
    uint8_t *nullable = calloc((size_t)b->n_rules, 1);
    if (!nullable) return NI_ENOMEM;
    for (int changed = 1; changed;) {
        changed = 0;
        for (int i = 0; i < b->n_rules; i++) {
            if (nullable[i]) continue;
            const gr_rule *r = &b->rules[i];
            int ok = 1;
            for (int j = 0; j < r->n; j++) {
                uint32_t e = r->e[j];
                if (GR_KIND(e) == GR_K_END) {
                    if (ok) { nullable[i] = 1; changed = 1; break; }
                    ok = 1;
                } else if (GR_KIND(e) == GR_K_SET || !nullable[GR_ARG(e)]) {
                    ok = 0;
                }
            }
        }
    }
    int cyc = find_left_cycle(b, nullable);
    free(nullable);
    if (cyc == -2) return NI_ENOMEM;
    if (cyc >= 0)
        return ni_fail(err, errlen, NI_EINVAL,
                       "rule '%s' can recurse without consuming input (left recursion, or a "
                       "repetition of something that can match empty)",
                       rule_name(b, cyc, nb, sizeof nb));
    gr_grammar *g = calloc(1, sizeof *g);
    if (!g) return NI_ENOMEM;
    int n_alts = 0;
    for (int i = 0; i < b->n_rules; i++) n_alts += b->rules[i].n_alts;
    g->elems = malloc((size_t)NI_MAX(b->n_elems, 1) * sizeof *g->elems);
    g->alt_off = malloc((size_t)(b->n_rules + 1) * sizeof *g->alt_off);
    g->alt_pos = malloc((size_t)NI_MAX(n_alts, 1) * sizeof *g->alt_pos);
    g->sets = malloc((size_t)NI_MAX(b->n_sets, 1) * 32);
    if (!g->elems || !g->alt_off || !g->alt_pos || !g->sets) {
        gr_grammar_free(g);
        return NI_ENOMEM;
    }
    int pos = 0, a = 0;
    for (int i = 0; i < b->n_rules; i++) {
        const gr_rule *r = &b->rules[i];
        g->alt_off[i] = a;
        for (int j = 0; j < r->n; j++) {
            if (j == 0 || GR_KIND(r->e[j - 1]) == GR_K_END) g->alt_pos[a++] = pos + j;
        }
        memcpy(g->elems + pos, r->e, (size_t)r->n * sizeof *r->e);
        pos += r->n;
    }
    g->alt_off[b->n_rules] = a;
    g->n_elems = pos;
    g->n_rules = b->n_rules;
    g->root = root;
    memcpy(g->sets, b->sets, (size_t)b->n_sets * 32);
    g->n_sets = b->n_sets;
    *out = g;
    return 0;
}

void gr_grammar_free(gr_grammar *g) {
    if (!g) return;
    free(g->elems);
    free(g->alt_off);
    free(g->alt_pos);
    free(g->sets);
    free(g);
}

int gr_grammar_size(const gr_grammar *g, int *n_rules) {
    if (n_rules) *n_rules = g->n_rules;
    return g->n_elems;
}
