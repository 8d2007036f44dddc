/*
 * tok_bpe.c - BPE model of HF tokenizers: pre-tokenizer steps over pcre2 and
 * rank-ordered merges; plus the GGUF "gpt2" loader.
 *
 * Design:
 *  - A segment (text between added tokens) is normalized (SentencePiece-style
 *    tokenizer.json only: Prepend/Replace normalizers, Metaspace), then cut
 *    into pre-tokens by the steps in order, each step splitting every piece of
 *    the previous one (HF PreTokenizedString semantics, including the Split
 *    behaviors Isolated/Removed/MergedWithPrevious/MergedWithNext/Contiguous
 *    and invert). Regexes are pcre2 in UTF + UCP mode, JIT-compiled when the
 *    library supports it; match data is allocated per call, so one compiled
 *    pattern is shared by every thread.
 *  - Each pre-token becomes initial symbols (byte-level: one per byte, via the
 *    GPT-2 byte->char map; char-level: one per UTF-8 char, with <0xXX> byte
 *    fallback or unk), then merges run exactly like HF's Word::merge_all: a
 *    binary min-heap of (rank, position) candidates over a doubly linked
 *    symbol list, stale entries skipped by re-checking the pair's result. The
 *    merge table is an open-addressing hash of (left id, right id), so a word
 *    of n symbols costs O(n log n).
 *  - The GGUF loader picks the split regexes from tokenizer.ggml.pre, using
 *    the original HF patterns (llama.cpp's table names the same families).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "engine/util/util.h"
#include "tok_internal.h"

/* GPT-2 / HF ByteLevel split pattern. */
static const char RE_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* LLaMA 3 tokenizer.json Split pattern. */
static const char RE_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/* Qwen2/Qwen3 tokenizer.json Split pattern (single digits). */
static const char RE_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/* HF Digits(individual_digits=true). */
static const char RE_DIGIT[] = "\\p{N}";

/* ------------------------------------------------------------------------ */
/* steps                                                                     */
/* ------------------------------------------------------------------------ */

/* Unicode White_Space, which is what Oniguruma's \s (HF tokenizers) matches;
 * PCRE2's UCP \s also matches U+180E, so patterns are rewritten with this. */
static const char WS_SET[] = "\\t\\n\\x{0b}\\f\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}"
                             "\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}";

/* Copies pattern with \s -> [WS] / WS inside a class, \S -> [^WS] outside a
 * class (\S inside a class is left to PCRE2). Returns a malloc'd string. */
static char *rewrite_ws(const char *p, size_t n, size_t *out_len) {
    size_t ws = strlen(WS_SET);
    char *o = malloc(n * (ws + 4) + 1);
    if (!o) return NULL;
    size_t w = 0;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[++i];
            if (d == 's') {
                if (!in_class) o[w++] = '[';
                memcpy(o + w, WS_SET, ws), w += ws;
                if (!in_class) o[w++] = ']';
            } else if (d == 'S' && !in_class) {
                o[w++] = '[', o[w++] = '^';
                memcpy(o + w, WS_SET, ws), w += ws;
                o[w++] = ']';
            } else {
                o[w++] = c, o[w++] = d;
            }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            o[w++] = c;
            if (i + 1 < n && p[i + 1] == '^') o[w++] = p[++i];
            if (i + 1 < n && p[i + 1] == ']') o[w++] = p[++i]; /* leading ] is literal */
            continue;
        }
        if (in_class && c == ']') in_class = 0;
        o[w++] = c;
    }
    o[w] = 0;
    *out_len = w;
    return o;
}

int tok__step_regex(tok_step *st, const char *pattern, size_t plen, int behavior, int invert, char *err,
                    size_t errlen) {
    memset(st, 0, sizeof(*st));
    int ec;
    PCRE2_SIZE eo;
    size_t rl;
    char *rw = rewrite_ws(pattern, plen, &rl);
    if (!rw) return ni_fail(err, errlen, NI_ENOMEM, "out of memory compiling a regex");
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)rw, rl, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
    free(rw);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return ni_fail(err, errlen, NI_EUNSUPPORTED, "pre-tokenizer regex does not compile at %zu: %s",
                       (size_t)eo, (const char *)msg);
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* interpreter if JIT is unavailable */
    st->type = TOK_STEP_SPLIT;
    st->re = re;
    st->behavior = behavior;
    st->invert = invert;
    return 0;
}

int tok__step_bytelevel(tok_step *st, int use_regex, int add_prefix_space, char *err, size_t errlen) {
    int rc = 0;
    memset(st, 0, sizeof(*st));
    if (use_regex && (rc = tok__step_regex(st, RE_GPT2, sizeof(RE_GPT2) - 1, TOK_SPLIT_ISOLATED, 0, err, errlen)))
        return rc;
    st->type = TOK_STEP_BYTELEVEL;
    st->add_prefix_space = add_prefix_space;
    return 0;
}

static int add_regex(tok_bpe *b, const char *re, char *err, size_t errlen) {
    if (b->n_steps >= TOK_MAX_STEPS) return ni_fail(err, errlen, NI_EUNSUPPORTED, "too many pre-tokenizer steps");
    int rc = tok__step_regex(&b->steps[b->n_steps], re, strlen(re), TOK_SPLIT_ISOLATED, 0, err, errlen);
    if (!rc) b->n_steps++;
    return rc;
}

static int name_in(const char *s, size_t n, const char *const *names) {
    for (; *names; names++)
        if (strlen(*names) == n && memcmp(*names, s, n) == 0) return 1;
    return 0;
}

int tok__bpe_pre_for_gguf(tok_bpe *b, const char *pre, size_t plen, int *ignore_merges, char *err,
                          size_t errlen) {
    static const char *const gpt2[] = {"default", "gpt-2", "gpt2", "phi-2", "jina-es", "jina-de", "gigachat",
                                       "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code", "roberta-bpe",
                                       "mpt", "olmo", "jais", NULL};
    static const char *const digits_gpt2[] = {"smollm", "starcoder", "refact", "codeshell", "exaone",
                                              "minerva-7b", "command-r", NULL};
    static const char *const llama3[] = {"llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe",
                                         "chatglm-bpe", NULL};
    static const char *const qwen2[] = {"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", NULL};
    *ignore_merges = 0;
    if (!pre || plen == 0 || name_in(pre, plen, gpt2)) return add_regex(b, RE_GPT2, err, errlen);
    if (name_in(pre, plen, digits_gpt2)) {
        int rc = add_regex(b, RE_DIGIT, err, errlen);
        return rc ? rc : add_regex(b, RE_GPT2, err, errlen);
    }
    if (name_in(pre, plen, llama3)) {
        static const char *const ign[] = {"llama3", "llama-v3", "llama-bpe", "falcon3", NULL};
        *ignore_merges = name_in(pre, plen, ign);
        return add_regex(b, RE_LLAMA3, err, errlen);
    }
    if (name_in(pre, plen, qwen2)) return add_regex(b, RE_QWEN2, err, errlen);
    return ni_fail(err, errlen, NI_EUNSUPPORTED, "tokenizer.ggml.pre '%.*s' is not supported", (int)NI_MIN(plen, 64),
                   pre);
}

/* ------------------------------------------------------------------------ */
/* merges                                                                    */
/* ------------------------------------------------------------------------ */

static uint32_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (uint32_t)x;
}

int tok__bpe_alloc_merges(tok_bpe *b, size_t n) {
    uint32_t cap = 16;
    while (cap < n * 2 + 16 && cap < (1u << 30)) cap <<= 1;
    free(b->mkey);
    free(b->mrank);
    free(b->mres);
    b->mkey = calloc(cap, sizeof(uint64_t));
    b->mrank = malloc((size_t)cap * sizeof(int32_t));
    b->mres = malloc((size_t)cap * sizeof(int32_t));
    b->mmask = cap - 1;
    b->n_merges = 0;
    if (!b->mkey || !b->mrank || !b->mres) return NI_ENOMEM;
    return 0;
}

int tok__bpe_add_merge(tok_bpe *b, int32_t left, int32_t right, int32_t res, int32_t rank) {
    if (!b->mkey || (uint32_t)b->n_merges * 2 >= b->mmask) return NI_ENOMEM;
    uint64_t key = (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
    uint32_t h = mix64(key) & b->mmask;
    while (b->mkey[h] && b->mkey[h] != key) h = (h + 1) & b->mmask;
    if (!b->mkey[h]) b->n_merges++;
    b->mkey[h] = key;
    b->mrank[h] = rank;
    b->mres[h] = res;
    return 0;
}

/* rank of (left, right) or -1; *res gets the merged id */
static int32_t merge_lookup(const tok_bpe *b, int32_t left, int32_t right, int32_t *res) {
    uint64_t key = (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
    uint32_t h = mix64(key) & b->mmask;
    for (;;) {
        uint64_t k = b->mkey[h];
        if (!k) return -1;
        if (k == key) {
            *res = b->mres[h];
            return b->mrank[h];
        }
        h = (h + 1) & b->mmask;
    }
}

int tok__bpe_merge_strs(tok_tokenizer *t, const char *l, size_t ln, const char *r, size_t rn, int32_t rank) {
    if (ln + rn > TOK_MAX_PIECE) return 0;
    int32_t a = tok__find(t, l, ln), c = tok__find(t, r, rn);
    if (a < 0 || c < 0) return 0;
    char tmp[TOK_MAX_PIECE];
    memcpy(tmp, l, ln);
    memcpy(tmp + ln, r, rn);
    int32_t m = tok__find(t, tmp, ln + rn);
    if (m < 0) return 0;
    return tok__bpe_add_merge(t->bpe, a, c, m, rank);
}

void tok__bpe_init_bytes(tok_tokenizer *t) {
    tok_bpe *b = t->bpe;
    for (int i = 0; i < 256; i++) {
        char s[8];
        size_t n;
        if (b->byte_level) {
            n = (size_t)tok__utf8_encode(tok__byte_to_cp((uint8_t)i), s);
        } else {
            snprintf(s, sizeof s, "<0x%02X>", i);
            n = 6;
        }
        b->byte_tok[i] = tok__find(t, s, n);
    }
}

void tok__bpe_free(tok_bpe *b) {
    free(b->mkey);
    free(b->mrank);
    free(b->mres);
    for (int i = 0; i < b->n_steps; i++)
        if (b->steps[i].re) pcre2_code_free(b->steps[i].re);
    memset(b, 0, sizeof(*b));
}

/* ------------------------------------------------------------------------ */
/* encoding                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct span {
    size_t off, len;
} span;

typedef struct spans {
    span *p;
    size_t n, cap;
    int oom;
} spans;

static void spans_push(spans *v, size_t off, size_t len) {
    if (v->oom) return;
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 32;
        span *p = realloc(v->p, nc * sizeof(span));
        if (!p) {
            v->oom = 1;
            return;
        }
        v->p = p;
        v->cap = nc;
    }
    v->p[v->n++] = (span){off, len};
}

typedef struct mspan { /* a split candidate: range + is_match */
    size_t a, b;
    int m;
} mspan;

typedef struct mspans {
    mspan *p;
    size_t n, cap;
    int oom;
} mspans;

static void mspans_push(mspans *v, size_t a, size_t b, int m) {
    if (v->oom) return;
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 32;
        mspan *p = realloc(v->p, nc * sizeof(mspan));
        if (!p) {
            v->oom = 1;
            return;
        }
        v->p = p;
        v->cap = nc;
    }
    v->p[v->n++] = (mspan){a, b, m};
}

/* Matches of re over s[0..n) as HF's find_matches: gaps and matches in order. */
static int find_matches(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t n, mspans *out) {
    out->n = 0;
    size_t prev = 0, at = 0;
    while (at <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(re, (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return NI_ERANGE; /* match limit etc. */
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        if (b == a) { /* empty match: step over one char */
            at = a + 1;
            while (at < n && ((unsigned char)s[at] & 0xC0) == 0x80) at++;
            continue;
        }
        if (a != prev) mspans_push(out, prev, a, 0);
        mspans_push(out, a, b, 1);
        prev = at = b;
    }
    if (prev != n) mspans_push(out, prev, n, 0);
    return out->oom ? NI_ENOMEM : 0;
}

/* Applies a split behavior to m (in place) like HF NormalizedString::split. */
static void apply_behavior(mspans *m, int behavior, int invert) {
    if (invert)
        for (size_t i = 0; i < m->n; i++) m->p[i].m = !m->p[i].m;
    size_t w = 0;
    int prev = 0;
    switch (behavior) {
    case TOK_SPLIT_REMOVED:
        for (size_t i = 0; i < m->n; i++)
            if (!m->p[i].m) m->p[w++] = m->p[i];
        m->n = w;
        break;
    case TOK_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < m->n; i++) {
            mspan c = m->p[i];
            if (c.m && !prev && w > 0) m->p[w - 1].b = c.b;
            else m->p[w++] = c;
            prev = c.m;
        }
        m->n = w;
        break;
    case TOK_SPLIT_MERGED_NEXT: { /* fold from the right */
        size_t r = m->n;
        w = m->n; /* write from the end */
        while (r > 0) {
            mspan c = m->p[--r];
            if (c.m && !prev && w < m->n) m->p[w].a = c.a;
            else m->p[--w] = c;
            prev = c.m;
        }
        memmove(m->p, m->p + w, (m->n - w) * sizeof(mspan));
        m->n -= w;
        break;
    }
    case TOK_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < m->n; i++) {
            mspan c = m->p[i];
            if (c.m == prev && w > 0) m->p[w - 1].b = c.b;
            else m->p[w++] = c;
            prev = c.m;
        }
        m->n = w;
        break;
    default: /* isolated */
        break;
    }
}

typedef struct sym {
    int32_t id;
    int32_t prev, next;
    uint32_t len; /* 0 = merged away */
} sym;

typedef struct hnode {
    int32_t rank;
    int32_t pos;
    int32_t res;
} hnode;

typedef struct scratch {
    sym *s;
    size_t scap;
    hnode *h;
    size_t hn, hcap;
    int oom;
} scratch;

static int hless(const hnode *a, const hnode *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void hpush(scratch *sc, hnode x) {
    if (sc->oom) return;
    if (sc->hn == sc->hcap) {
        size_t nc = sc->hcap ? sc->hcap * 2 : 64;
        hnode *p = realloc(sc->h, nc * sizeof(hnode));
        if (!p) {
            sc->oom = 1;
            return;
        }
        sc->h = p;
        sc->hcap = nc;
    }
    size_t i = sc->hn++;
    while (i > 0) {
        size_t par = (i - 1) / 2;
        if (!hless(&x, &sc->h[par])) break;
        sc->h[i] = sc->h[par];
        i = par;
    }
    sc->h[i] = x;
}

static hnode hpop(scratch *sc) {
    hnode top = sc->h[0], x = sc->h[--sc->hn];
    size_t i = 0, n = sc->hn;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const hnode *best = &x;
        if (l < n && hless(&sc->h[l], best)) m = l, best = &sc->h[l];
        if (r < n && hless(&sc->h[r], best)) m = r;
        if (m == i) break;
        sc->h[i] = sc->h[m];
        i = m;
    }
    if (n) sc->h[i] = x;
    return top;
}

static int sym_reserve(scratch *sc, size_t n) {
    if (n <= sc->scap) return 0;
    size_t nc = sc->scap ? sc->scap : 64;
    while (nc < n) nc *= 2;
    sym *p = realloc(sc->s, nc * sizeof(sym));
    if (!p) return NI_ENOMEM;
    sc->s = p;
    sc->scap = nc;
    return 0;
}

/* BPE over one pre-token s[0..n) (already normalized, not byte-mapped). */
static int bpe_word(const tok_tokenizer *t, const char *s, size_t n, scratch *sc, tok_ids *out) {
    const tok_bpe *b = t->bpe;
    if (n == 0) return 0;
    if (b->ignore_merges) {
        int32_t id = -1;
        if (b->byte_level) {
            char tmp[TOK_MAX_PIECE];
            size_t w = 0;
            if (2 * n <= sizeof tmp) { /* a mapped byte is at most 2 UTF-8 bytes */
                for (size_t i = 0; i < n; i++) w += (size_t)tok__utf8_encode(tok__byte_to_cp((uint8_t)s[i]), tmp + w);
                id = tok__find(t, tmp, w);
            }
        } else if (n <= TOK_MAX_PIECE) {
            id = tok__find(t, s, n);
        }
        if (id >= 0) {
            tok__ids_push(out, id);
            return 0;
        }
    }
    if (sym_reserve(sc, n)) return NI_ENOMEM;
    size_t ns = 0;
    int prev_unk = 0;
    if (b->byte_level) {
        for (size_t i = 0; i < n; i++) {
            int32_t id = b->byte_tok[(unsigned char)s[i]];
            if (id < 0) continue; /* HF drops chars missing from the vocab when there is no unk */
            sc->s[ns++] = (sym){id, 0, 0, 1};
        }
    } else {
        for (size_t i = 0; i < n;) {
            int k = tok__utf8_check((const unsigned char *)s + i, n - i);
            if (k <= 0) k = 1;
            int32_t id = tok__find(t, s + i, (size_t)k);
            if (id >= 0) {
                sc->s[ns++] = (sym){id, 0, 0, (uint32_t)k};
                prev_unk = 0;
            } else {
                int all = b->byte_fallback;
                for (int j = 0; j < k && all; j++)
                    if (b->byte_tok[(unsigned char)s[i + j]] < 0) all = 0;
                if (all) {
                    for (int j = 0; j < k; j++) sc->s[ns++] = (sym){b->byte_tok[(unsigned char)s[i + j]], 0, 0, 1};
                    prev_unk = 0;
                } else if (t->unk >= 0) {
                    if (b->fuse_unk && prev_unk) sc->s[ns - 1].len += (uint32_t)k;
                    else sc->s[ns++] = (sym){t->unk, 0, 0, (uint32_t)k};
                    prev_unk = 1;
                }
            }
            i += (size_t)k;
        }
    }
    for (size_t i = 0; i < ns; i++) {
        sc->s[i].prev = (int32_t)i - 1;
        sc->s[i].next = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    sc->hn = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        int32_t res, r = merge_lookup(b, sc->s[i].id, sc->s[i + 1].id, &res);
        if (r >= 0) hpush(sc, (hnode){r, (int32_t)i, res});
    }
    while (sc->hn && !sc->oom) {
        hnode top = hpop(sc);
        sym *cur = &sc->s[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        int32_t nx = cur->next;
        sym right = sc->s[nx];
        int32_t res;
        if (merge_lookup(b, cur->id, right.id, &res) < 0 || res != top.res) continue;
        cur->id = top.res;
        cur->len += right.len;
        cur->next = right.next;
        sc->s[nx].len = 0;
        if (right.next >= 0) sc->s[right.next].prev = top.pos;
        int32_t r;
        if (cur->prev >= 0 && (r = merge_lookup(b, sc->s[cur->prev].id, cur->id, &res)) >= 0)
            hpush(sc, (hnode){r, cur->prev, res});
        if (cur->next >= 0 && (r = merge_lookup(b, cur->id, sc->s[cur->next].id, &res)) >= 0)
            hpush(sc, (hnode){r, top.pos, res});
    }
    if (sc->oom) return NI_ENOMEM;
    for (size_t i = 0; i < ns; i++)
        if (sc->s[i].len) tok__ids_push(out, sc->s[i].id);
    return 0;
}

static const char META[] = "\xe2\x96\x81"; /* ▁ */

/* Normalizes a segment for SentencePiece-style tokenizer.json models. */
static void normalize_segment(const tok_bpe *b, const char *s, size_t n, int first, tok_buf *o) {
    int replace = b->norm_replace_space || b->meta;
    if (b->norm_prepend && n) tok__buf_put(o, META, 3);
    if (b->meta && n) {
        int prepend = b->meta_prepend == 1 || (b->meta_prepend == 2 && first);
        int starts = n >= 1 && s[0] == ' '; /* after replacement it would start with ▁ */
        if (n >= 3 && memcmp(s, META, 3) == 0) starts = 1;
        if (b->norm_prepend) starts = 1;
        if (prepend && !starts) tok__buf_put(o, META, 3);
    }
    for (size_t i = 0; i < n; i++) {
        if (replace && s[i] == ' ') tok__buf_put(o, META, 3);
        else tok__buf_put(o, s + i, 1);
    }
}

int tok__bpe_encode_segment(const tok_tokenizer *t, const char *text, size_t len, int first, tok_ids *out) {
    const tok_bpe *b = t->bpe;
    tok_buf cur = {0}, nxt = {0};
    spans sp = {0}, sp2 = {0};
    mspans ms = {0};
    scratch sc = {0};
    pcre2_match_data *md = NULL;
    int rc = 0;

    if (b->norm_prepend || b->norm_replace_space || b->meta) {
        normalize_segment(b, text, len, first, &cur);
        if (cur.oom) {
            rc = NI_ENOMEM;
            goto done;
        }
        text = cur.p ? cur.p : "";
        len = cur.n;
    }
    spans_push(&sp, 0, len);
    if (b->meta && b->meta_split) { /* split on ▁, MergedWithNext */
        sp.n = 0;
        size_t start = 0;
        for (size_t i = 0; i + 3 <= len; i++)
            if (memcmp(text + i, META, 3) == 0 && i > start) {
                spans_push(&sp, start, i - start);
                start = i;
            }
        if (start < len) spans_push(&sp, start, len - start);
    }
    for (int k = 0; k < b->n_steps && !rc; k++) {
        const tok_step *st = &b->steps[k];
        if (st->type == TOK_STEP_BYTELEVEL && st->add_prefix_space) {
            /* rebuild the text with a space before every piece lacking one */
            nxt.n = 0;
            sp2.n = 0;
            for (size_t i = 0; i < sp.n; i++) {
                size_t at = nxt.n;
                if (text[sp.p[i].off] != ' ') tok__buf_put(&nxt, " ", 1);
                tok__buf_put(&nxt, text + sp.p[i].off, sp.p[i].len);
                spans_push(&sp2, at, nxt.n - at);
            }
            if (nxt.oom || sp2.oom) {
                rc = NI_ENOMEM;
                break;
            }
            tok_buf tb = cur;
            cur = nxt;
            nxt = tb;
            text = cur.p;
            spans ts = sp;
            sp = sp2;
            sp2 = ts;
        }
        if (!st->re) continue;
        if (!md) md = pcre2_match_data_create(4, NULL);
        if (!md) {
            rc = NI_ENOMEM;
            break;
        }
        sp2.n = 0;
        for (size_t i = 0; i < sp.n && !rc; i++) {
            const char *s = text + sp.p[i].off;
            rc = find_matches(st->re, md, s, sp.p[i].len, &ms);
            if (rc) break;
            apply_behavior(&ms, st->type == TOK_STEP_BYTELEVEL ? TOK_SPLIT_ISOLATED : st->behavior, st->invert);
            for (size_t j = 0; j < ms.n; j++)
                if (ms.p[j].b > ms.p[j].a) spans_push(&sp2, sp.p[i].off + ms.p[j].a, ms.p[j].b - ms.p[j].a);
        }
        spans ts = sp;
        sp = sp2;
        sp2 = ts;
        if (sp.oom) rc = NI_ENOMEM;
    }
    for (size_t i = 0; i < sp.n && !rc; i++) rc = bpe_word(t, text + sp.p[i].off, sp.p[i].len, &sc, out);
    if (!rc && (out->oom || sp.oom)) rc = NI_ENOMEM;
done:
    if (md) pcre2_match_data_free(md);
    tok__buf_free(&cur);
    tok__buf_free(&nxt);
    free(sp.p);
    free(sp2.p);
    free(ms.p);
    free(sc.s);
    free(sc.h);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* GGUF                                                                      */
/* ------------------------------------------------------------------------ */

int tok__bpe_from_gguf(tok_tokenizer **out, const gguf_ctx *g, char *err, size_t errlen) {
    const char *path = g->path ? g->path : "gguf";
    const gguf_kv *toks = gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_VT_STRING);
    const gguf_kv *merges = gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_VT_STRING);
    const gguf_kv *types = NULL;
    if (!toks || toks->arr_n == 0 || toks->arr_n > TOK_MAX_VOCAB)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: tokenizer.ggml.tokens missing, empty or too large", path);
    if (!merges) return ni_fail(err, errlen, NI_EFORMAT, "%s: tokenizer.ggml.merges missing (gpt2 tokenizer)", path);
    if (tok__gguf_types(g, toks->arr_n, &types))
        return ni_fail(err, errlen, NI_EFORMAT, "%s: tokenizer.ggml.token_type is not an int32 array of %llu entries",
                       path, (unsigned long long)toks->arr_n);
    if (merges->arr_n > (uint64_t)INT32_MAX)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: too many merges", path);
    int32_t n = (int32_t)toks->arr_n;
    tok_tokenizer *t = tok__alloc(n);
    if (!t) return ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory for the tokenizer", path);
    *out = t;
    t->kind = TOK_KIND_BPE;
    t->engine = TOK_ENG_BPE;
    t->dec = TOK_DEC_BYTELEVEL;
    t->bpe = calloc(1, sizeof(tok_bpe));
    if (!t->bpe) return NI_ENOMEM;
    t->bpe->byte_level = 1;
    for (int32_t i = 0; i < n; i++) {
        gguf_str s = toks->arr_strs[i];
        if (s.len > TOK_MAX_PIECE)
            return ni_fail(err, errlen, NI_EFORMAT, "%s: token %d is %llu bytes long", path, i,
                           (unsigned long long)s.len);
        int rc = tok__set_piece(t, i, s.ptr, s.len);
        if (rc) return ni_fail(err, errlen, rc, "%s: out of memory for the vocabulary", path);
        int32_t ty = TOK_ATTR_NORMAL;
        if (types) memcpy(&ty, types->arr_data + 4 * (size_t)i, 4);
        if (ty < TOK_ATTR_NORMAL || ty > TOK_ATTR_BYTE) ty = TOK_ATTR_NORMAL;
        t->attr[i] = (uint8_t)ty;
        if (ty == TOK_ATTR_CONTROL || ty == TOK_ATTR_UNKNOWN) tok__mark_added(t, i, 1, 0, 0);
        else if (ty == TOK_ATTR_USER) tok__mark_added(t, i, 0, 0, 0);
    }
    int rc = tok__build_hash(t);
    if (!rc) rc = tok__bpe_alloc_merges(t->bpe, merges->arr_n);
    if (rc) return ni_fail(err, errlen, rc, "%s: out of memory for the merges", path);
    for (uint64_t i = 0; i < merges->arr_n; i++) {
        gguf_str m = merges->arr_strs[i];
        const char *sp = m.len ? memchr(m.ptr, ' ', m.len) : NULL;
        if (!sp) continue; /* malformed merge: ignored */
        size_t ln = (size_t)(sp - m.ptr);
        if ((rc = tok__bpe_merge_strs(t, m.ptr, ln, sp + 1, m.len - ln - 1, (int32_t)i)))
            return ni_fail(err, errlen, rc, "%s: out of memory for the merges", path);
    }
    tok__bpe_init_bytes(t);
    gguf_str pre = {0, NULL};
    (void)gguf_get_str(g, "tokenizer.ggml.pre", &pre);
    char e2[200] = "";
    rc = tok__bpe_pre_for_gguf(t->bpe, pre.ptr, pre.len, &t->bpe->ignore_merges, e2, sizeof e2);
    if (rc) return ni_fail(err, errlen, rc, "%s: %s", path, e2);
    return 0;
}
