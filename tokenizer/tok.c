/*
 * tok.c - tokenizer core: vocabulary storage, added/special-token splitting,
 * encode dispatch, HF-compatible decode, the streaming detokenizer and the
 * GGUF entry point.
 *
 * Design:
 *  - Every loader (GGUF here + tok_spm.c / tok_bpe.c, tokenizer.json in
 *    tok_hf.c) fills the same struct (tok_internal.h): piece strings, token
 *    attributes, per-token flags, special ids, then calls tok__finish(), which
 *    derives the decoded bytes of every token, the added-token index and the
 *    end-of-generation set. After that the struct is read-only.
 *  - Encoding follows HF tokenizers' order: the raw text is first cut at
 *    added tokens (leftmost-longest; special ones only when parse_special),
 *    then every remaining segment goes through the model engine (byte-level
 *    BPE in tok_bpe.c, or libsentencepiece through tok_spm.c). Input that is
 *    not valid UTF-8 is first repaired (each maximal invalid subpart becomes
 *    U+FFFD), as Python's bytes.decode(errors="replace") would.
 *  - Decoding reproduces HF decode(skip_special_tokens=True):
 *      byte-level: concatenate token bytes, then UTF-8-lossy (one U+FFFD per
 *      maximal invalid subpart, like Rust's String::from_utf8_lossy);
 *      SentencePiece: "▁" -> " ", runs of <0xXX> byte tokens become their
 *      bytes if the whole run is valid UTF-8 and one U+FFFD per byte if not
 *      (HF's ByteFallback decoder), then one leading space is stripped.
 *    clean_up_tokenization_spaces is never applied: transformers (5.x) ignores
 *    it for BPE-model tokenizers, which is every tokenizer supported here.
 *  - The stream never emits a broken UTF-8 sequence: an incomplete trailing
 *    sequence (<= 3 bytes) is held in tok_stream.pending. For valid UTF-8 its
 *    concatenated output equals tok_decode of the same ids; for byte-level
 *    models even invalid bytes match. Known deviation: for SPM byte runs
 *    that are invalid UTF-8, already emitted valid characters of the run stay
 *    (HF would replace the whole run by one U+FFFD per byte).
 */
#include "tok_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "engine/util/util.h"

/* ------------------------------------------------------------------------ */
/* small helpers                                                             */
/* ------------------------------------------------------------------------ */

void tok__buf_put(tok_buf *b, const void *s, size_t n) {
    if (b->oom || n == 0) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 64;
        while (nc < b->n + n + 1) nc *= 2;
        char *p = realloc(b->p, nc);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void tok__buf_free(tok_buf *b) {
    free(b->p);
    memset(b, 0, sizeof(*b));
}

void tok__ids_push(tok_ids *v, int32_t id) {
    if (v->oom) return;
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->p, nc * sizeof(int32_t));
        if (!p) {
            v->oom = 1;
            return;
        }
        v->p = p;
        v->cap = nc;
    }
    v->p[v->n++] = id;
}

int tok__utf8_check(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) need = 2, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) need = 2;
    else if (c == 0xED) need = 2, hi = 0x9F;
    else if (c == 0xF0) need = 3, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else if (c == 0xF4) need = 3, hi = 0x8F;
    else return -1;
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) return 0;
        unsigned b = s[i];
        unsigned l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) return -i;
    }
    return need + 1;
}

int tok__utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    int r = tok__utf8_check(s, n);
    if (r <= 0) {
        *cp = 0xFFFD;
        return 1;
    }
    if (r == 1) *cp = s[0];
    else if (r == 2) *cp = ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    else if (r == 3)
        *cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    else
        *cp = ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
              ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return r;
}

int tok__utf8_encode(uint32_t cp, char *o) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static const char FFFD[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

/* Appends s[0..n) to b as from_utf8_lossy would. */
static void put_lossy(tok_buf *b, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        int r = tok__utf8_check((const unsigned char *)s + i, n - i);
        if (r > 0) {
            size_t j = i + (size_t)r; /* copy runs of valid chars at once */
            while (j < n) {
                int r2 = tok__utf8_check((const unsigned char *)s + j, n - j);
                if (r2 <= 0) break;
                j += (size_t)r2;
            }
            tok__buf_put(b, s + i, j - i);
            i = j;
        } else {
            tok__buf_put(b, FFFD, 3);
            i += r < 0 ? (size_t)-r : n - i;
        }
    }
}

static int utf8_valid(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        int r = tok__utf8_check((const unsigned char *)s + i, n - i);
        if (r <= 0) return 0;
        i += (size_t)r;
    }
    return 1;
}

/* GPT-2 bytes_to_unicode: printable latin-1 bytes map to themselves, the rest
 * to 256.. in byte order. */
static int byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* The 68 non-printable bytes are 0x00-0x20, 0x7F-0xA0 and 0xAD, numbered in
 * byte order from 256. */
uint32_t tok__byte_to_cp(uint8_t b) {
    if (byte_is_printable(b)) return b;
    if (b <= 0x20) return 256u + b;
    if (b <= 0xA0) return 256u + 33u + (b - 0x7Fu);
    return 256u + 67u; /* 0xAD */
}

int tok__cp_to_byte(uint32_t cp) {
    if (cp < 256) return byte_is_printable(cp) ? (int)cp : -1;
    uint32_t n = cp - 256;
    if (n < 33) return (int)n;
    if (n < 67) return (int)(0x7F + n - 33);
    if (n == 67) return 0xAD;
    return -1;
}

/* ------------------------------------------------------------------------ */
/* vocabulary                                                                */
/* ------------------------------------------------------------------------ */

tok_tokenizer *tok__alloc(int32_t n) {
    if (n <= 0 || n > TOK_MAX_VOCAB) return NULL;
    tok_tokenizer *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->n_vocab = n;
    t->off = calloc((size_t)n, sizeof(uint32_t));
    t->len = calloc((size_t)n, sizeof(uint32_t));
    t->attr = malloc((size_t)n);
    t->flags = calloc((size_t)n, 1);
    t->byteval = malloc((size_t)n * sizeof(int16_t));
    t->bos = t->eos = t->unk = -1;
    if (!t->off || !t->len || !t->attr || !t->flags || !t->byteval) {
        tok_free(t);
        return NULL;
    }
    memset(t->attr, TOK_ATTR_NORMAL, (size_t)n);
    for (int32_t i = 0; i < n; i++) t->byteval[i] = -1;
    return t;
}

int tok__set_piece(tok_tokenizer *t, int32_t id, const char *s, size_t n) {
    if (id < 0 || id >= t->n_vocab) return NI_EINVAL;
    if (n > TOK_MAX_PIECE) return NI_EFORMAT;
    size_t at = t->text.n;
    if (at + n >= UINT32_MAX) return NI_EFORMAT;
    tok__buf_put(&t->text, s, n);
    if (t->text.oom) return NI_ENOMEM;
    t->off[id] = (uint32_t)at;
    t->len[id] = (uint32_t)n;
    return 0;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

int tok__build_hash(tok_tokenizer *t) {
    uint32_t cap = 16;
    while (cap < (uint32_t)t->n_vocab * 2u) cap <<= 1;
    free(t->hslot);
    t->hslot = malloc((size_t)cap * sizeof(int32_t));
    if (!t->hslot) return NI_ENOMEM;
    memset(t->hslot, 0xff, (size_t)cap * sizeof(int32_t));
    t->hmask = cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->text.p ? t->text.p + t->off[id] : "";
        size_t n = t->len[id];
        uint32_t h = (uint32_t)hash_bytes(s, n) & t->hmask;
        for (;;) {
            int32_t o = t->hslot[h];
            if (o < 0) {
                t->hslot[h] = id;
                break;
            }
            if (t->len[o] == n && memcmp(t->text.p + t->off[o], s, n) == 0) break; /* keep lowest id */
            h = (h + 1) & t->hmask;
        }
    }
    return 0;
}

int32_t tok__find(const tok_tokenizer *t, const char *s, size_t n) {
    if (!t->hslot) return -1;
    uint32_t h = (uint32_t)hash_bytes(s, n) & t->hmask;
    for (;;) {
        int32_t o = t->hslot[h];
        if (o < 0) return -1;
        if (t->len[o] == n && memcmp(t->text.p + t->off[o], s, n) == 0) return o;
        h = (h + 1) & t->hmask;
    }
}

void tok__mark_added(tok_tokenizer *t, int32_t id, int special, int lstrip, int rstrip) {
    if (id < 0 || id >= t->n_vocab) return;
    for (int i = 0; (t->flags[id] & TOKF_ADDED) && i < t->n_added; i++) /* re-marking: update */
        if (t->added[i].id == id) {
            t->added[i].special = (uint8_t)special;
            t->added[i].lstrip = (uint8_t)lstrip;
            t->added[i].rstrip = (uint8_t)rstrip;
            goto flags;
        }
    if (t->n_added == t->cap_added) {
        int nc = t->cap_added ? t->cap_added * 2 : 32;
        tok_added *p = realloc(t->added, (size_t)nc * sizeof(*p));
        if (!p) return; /* an unmatched added token is not fatal */
        t->added = p;
        t->cap_added = nc;
    }
    t->added[t->n_added++] = (tok_added){.id = id, .special = (uint8_t)special,
                                         .lstrip = (uint8_t)lstrip, .rstrip = (uint8_t)rstrip};
flags:
    t->flags[id] |= TOKF_ADDED;
    if (special) t->flags[id] |= TOKF_SKIP;
    else t->flags[id] &= (uint8_t)~TOKF_SKIP;
}

void tok__add_eog(tok_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n_vocab || t->n_eog >= TOK_MAX_EOG) return;
    for (int i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return;
    t->eog[t->n_eog++] = id;
}

static const char *piece(const tok_tokenizer *t, int32_t id) { return t->text.p + t->off[id]; }

/* "<0xXX>" -> XX, else -1 (HF ByteFallback accepts either hex case). */
static int parse_byte_piece(const char *s, size_t n) {
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Decoded bytes of one token under the tokenizer's decoder. */
static void token_dbytes(tok_tokenizer *t, int32_t id, tok_buf *b) {
    const char *s = piece(t, id);
    size_t n = t->len[id];
    uint8_t a = t->attr[id];
    if (a == TOK_ATTR_CONTROL || a == TOK_ATTR_UNKNOWN) { /* special: its text */
        tok__buf_put(b, s, n);
        return;
    }
    if (t->dec == TOK_DEC_SPM) {
        if (t->byteval[id] >= 0) {
            char c = (char)t->byteval[id];
            tok__buf_put(b, &c, 1);
            return;
        }
        for (size_t i = 0; i < n;) { /* "▁" (E2 96 81) -> ' ' */
            if (i + 3 <= n && (unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x96 &&
                (unsigned char)s[i + 2] == 0x81) {
                tok__buf_put(b, " ", 1);
                i += 3;
            } else {
                tok__buf_put(b, s + i, 1);
                i++;
            }
        }
        return;
    }
    /* byte-level: every char must be in the byte map, else the raw text */
    size_t start = b->n;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = tok__utf8_decode((const unsigned char *)s + i, n - i, &cp);
        int by = tok__utf8_check((const unsigned char *)s + i, n - i) > 0 ? tok__cp_to_byte(cp) : -1;
        if (by < 0) {
            b->n = start;
            if (b->p) b->p[start] = 0;
            tok__buf_put(b, s, n);
            return;
        }
        char c = (char)by;
        tok__buf_put(b, &c, 1);
        i += (size_t)k;
    }
}

/* qsort has no context argument in C11: the added tokens are sorted on
 * (first byte, length desc, id) with the first byte copied in beforehand. */
typedef struct added_key {
    unsigned first;
    tok_added a;
} added_key;

static int cmp_added_key(const void *pa, const void *pb) {
    const added_key *x = pa, *y = pb;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->a.len != y->a.len) return x->a.len > y->a.len ? -1 : 1;
    return x->a.id < y->a.id ? -1 : x->a.id > y->a.id;
}

int tok__finish(tok_tokenizer *t, char *err, size_t errlen) {
    int32_t n = t->n_vocab;
    tok__buf_put(&t->text, "", 1); /* make sure text.p exists */
    if (t->text.oom) return NI_ENOMEM;
    int rc = tok__build_hash(t);
    if (rc) return rc;

    /* ids */
    if (t->bos >= n || t->eos >= n || t->unk >= n)
        return ni_fail(err, errlen, NI_EFORMAT, "special token id out of range (bos %d, eos %d, unk %d, vocab %d)",
                       t->bos, t->eos, t->unk, n);
    if (t->bos < -1) t->bos = -1;
    if (t->eos < -1) t->eos = -1;
    if (t->unk < -1) t->unk = -1;

    /* byte pieces (SPM decoding) */
    for (int32_t i = 0; i < n; i++) {
        int v = parse_byte_piece(piece(t, i), t->len[i]);
        t->byteval[i] = (int16_t)(t->dec == TOK_DEC_SPM && t->attr[i] != TOK_ATTR_CONTROL &&
                                          t->attr[i] != TOK_ATTR_UNKNOWN ? v : -1);
    }
    /* special attributes imply "skipped by decode" */
    for (int32_t i = 0; i < n; i++)
        if ((t->attr[i] == TOK_ATTR_CONTROL || t->attr[i] == TOK_ATTR_UNKNOWN) && !(t->flags[i] & TOKF_ADDED))
            t->flags[i] |= TOKF_SKIP;

    /* decoded bytes */
    free(t->doff);
    free(t->dlen);
    t->doff = malloc((size_t)n * sizeof(uint32_t));
    t->dlen = malloc((size_t)n * sizeof(uint32_t));
    if (!t->doff || !t->dlen) return NI_ENOMEM;
    t->max_token_bytes = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t at = t->dtext.n;
        token_dbytes(t, i, &t->dtext);
        if (t->dtext.oom) return NI_ENOMEM;
        if (t->dtext.n >= UINT32_MAX) return ni_fail(err, errlen, NI_EFORMAT, "vocabulary too large");
        t->doff[i] = (uint32_t)at;
        t->dlen[i] = (uint32_t)(t->dtext.n - at);
        if ((int)t->dlen[i] > t->max_token_bytes) t->max_token_bytes = (int)t->dlen[i];
    }
    tok__buf_put(&t->dtext, "", 1);
    if (t->dtext.oom) return NI_ENOMEM;

    /* added-token index: drop empty ones, sort, bucket by first byte */
    int m = 0;
    added_key *keys = malloc((size_t)(t->n_added ? t->n_added : 1) * sizeof(*keys));
    if (!keys) return NI_ENOMEM;
    for (int i = 0; i < t->n_added; i++) {
        tok_added a = t->added[i];
        a.off = t->off[a.id];
        a.len = t->len[a.id];
        if (a.len == 0) continue;
        keys[m].first = (unsigned char)t->text.p[a.off];
        keys[m].a = a;
        m++;
    }
    qsort(keys, (size_t)m, sizeof(*keys), cmp_added_key);
    for (int i = 0; i < m; i++) t->added[i] = keys[i].a;
    t->n_added = m;
    int j = 0;
    for (int c = 0; c <= 256; c++) {
        while (j < m && keys[j].first < (unsigned)c) j++;
        t->added_first[c] = j;
    }
    free(keys);

    /* end of generation */
    tok__add_eog(t, t->eos);
    static const char *const eog_names[] = {"<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>",
                                            "<|eom_id|>", "<end_of_turn>", "<|end|>"};
    for (size_t k = 0; k < NI_ARRAY_LEN(eog_names); k++) {
        int32_t id = tok__find(t, eog_names[k], strlen(eog_names[k]));
        if (id >= 0 && (t->attr[id] == TOK_ATTR_CONTROL || t->attr[id] == TOK_ATTR_USER ||
                        (t->flags[id] & TOKF_ADDED)))
            tok__add_eog(t, id);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* loading                                                                   */
/* ------------------------------------------------------------------------ */

static int gguf_id(const gguf_ctx *g, const char *key, int32_t *out) {
    int64_t v;
    if (gguf_get_int(g, key, &v) != 0) return 0;
    if (v < -1 || v > INT32_MAX) return 0;
    *out = (int32_t)v;
    return 1;
}

int tok__gguf_types(const gguf_ctx *g, uint64_t n, const gguf_kv **out) {
    *out = NULL;
    const gguf_kv *kv = gguf_find(g, "tokenizer.ggml.token_type");
    if (!kv) return 0;
    if (kv->type != GGUF_VT_ARRAY || (kv->arr_type != GGUF_VT_INT32 && kv->arr_type != GGUF_VT_UINT32) ||
        kv->arr_n != n || !kv->arr_data)
        return NI_EFORMAT;
    *out = kv;
    return 0;
}

int tok_load_gguf(tok_tokenizer **out, const gguf_ctx *g, char *err, size_t errlen) {
    if (!out || !g) return ni_fail(err, errlen, NI_EINVAL, "tok_load_gguf: NULL argument");
    *out = NULL;
    const char *path = g->path ? g->path : "gguf";
    gguf_str model;
    if (gguf_get_str(g, "tokenizer.ggml.model", &model) != 0)
        return ni_fail(err, errlen, NI_ENOTFOUND, "%s: no tokenizer.ggml.model (no tokenizer in this file)", path);
    tok_tokenizer *t = NULL;
    int rc;
    if (gguf_str_eq(model, "llama")) {
        rc = tok__spm_from_gguf(&t, g, err, errlen);
    } else if (gguf_str_eq(model, "gpt2")) {
        rc = tok__bpe_from_gguf(&t, g, err, errlen);
    } else {
        int l = (int)NI_MIN(model.len, 64);
        return ni_fail(err, errlen, NI_EUNSUPPORTED,
                       "%s: tokenizer.ggml.model '%.*s' is not supported (llama, gpt2)", path, l, model.ptr);
    }
    if (rc) {
        tok_free(t);
        return rc;
    }
    int32_t id;
    if (gguf_id(g, "tokenizer.ggml.bos_token_id", &id)) t->bos = id;
    if (gguf_id(g, "tokenizer.ggml.eos_token_id", &id)) t->eos = id;
    if (gguf_id(g, "tokenizer.ggml.unknown_token_id", &id)) t->unk = id;
    int64_t v;
    if (gguf_get_int(g, "tokenizer.ggml.add_bos_token", &v) == 0) t->add_bos = v != 0;
    if (gguf_get_int(g, "tokenizer.ggml.add_eos_token", &v) == 0) t->add_eos = v != 0;
    if (t->bos < 0) t->add_bos = 0;
    if (t->bos >= t->n_vocab || t->eos >= t->n_vocab || t->unk >= t->n_vocab) {
        tok_free(t);
        return ni_fail(err, errlen, NI_EFORMAT, "%s: tokenizer special token id out of range", path);
    }
    if ((rc = tok__finish(t, err, errlen))) {
        tok_free(t);
        if (err && errlen && rc != NI_ENOMEM) {
            char tmp[256];
            snprintf(tmp, sizeof tmp, "%s", err);
            ni_fail(err, errlen, rc, "%s: %s", path, tmp);
        }
        return rc;
    }
    static const char *const eog_keys[] = {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"};
    for (size_t k = 0; k < NI_ARRAY_LEN(eog_keys); k++)
        if (gguf_id(g, eog_keys[k], &id) && id >= 0 && id < t->n_vocab) tok__add_eog(t, id);
    *out = t;
    return 0;
}

int tok_load_hf(tok_tokenizer **out, const char *dir, char *err, size_t errlen) {
    if (!out || !dir) return ni_fail(err, errlen, NI_EINVAL, "tok_load_hf: NULL argument");
    *out = NULL;
    return tok__hf_load(out, dir, err, errlen);
}

void tok_free(tok_tokenizer *t) {
    if (!t) return;
    tok__buf_free(&t->text);
    tok__buf_free(&t->dtext);
    free(t->off);
    free(t->len);
    free(t->doff);
    free(t->dlen);
    free(t->attr);
    free(t->flags);
    free(t->byteval);
    free(t->hslot);
    free(t->added);
    if (t->bpe) {
        tok__bpe_free(t->bpe);
        free(t->bpe);
    }
    if (t->spm) tok__spm_free_shim(t->spm);
    free(t);
}

/* ------------------------------------------------------------------------ */
/* accessors                                                                 */
/* ------------------------------------------------------------------------ */

int tok_kind(const tok_tokenizer *t) { return t ? t->kind : NI_EINVAL; }
int tok_vocab_size(const tok_tokenizer *t) { return t ? t->n_vocab : 0; }
int tok_bos(const tok_tokenizer *t) { return t ? t->bos : -1; }
int tok_eos(const tok_tokenizer *t) { return t ? t->eos : -1; }
int tok_add_bos(const tok_tokenizer *t) { return t ? t->add_bos : 0; }
int tok_max_token_bytes(const tok_tokenizer *t) { return t ? t->max_token_bytes : 0; }

int tok_is_eog(const tok_tokenizer *t, int32_t id) {
    if (!t || id < 0) return 0;
    for (int i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return 1;
    return 0;
}

int32_t tok_lookup(const tok_tokenizer *t, const char *p) {
    if (!t || !p || !*p) return -1;
    return tok__find(t, p, strlen(p));
}

int tok_is_special(const tok_tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->n_vocab) return 0;
    return (t->flags[id] & TOKF_SKIP) != 0;
}

/* ------------------------------------------------------------------------ */
/* encode                                                                    */
/* ------------------------------------------------------------------------ */

static int is_ws(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static int encode_segment(const tok_tokenizer *t, const char *s, size_t n, int first, tok_ids *v) {
    if (n == 0) return 0;
    if (t->engine == TOK_ENG_SPMLIB) return tok__spm_encode_segment(t, s, n, v);
    return tok__bpe_encode_segment(t, s, n, first, v);
}

int tok_encode(const tok_tokenizer *t, const char *text, size_t len, int add_bos, int parse_special,
               int32_t *ids, int cap) {
    if (!t || (!text && len) || cap < 0 || (cap > 0 && !ids)) return NI_EINVAL;
    if (len > (size_t)INT_MAX / 2) return NI_ERANGE;
    tok_buf fixed = {0};
    if (len && !utf8_valid(text, len)) {
        put_lossy(&fixed, text, len);
        if (fixed.oom) {
            tok__buf_free(&fixed);
            return NI_ENOMEM;
        }
        text = fixed.p;
        len = fixed.n;
    }
    tok_ids v = {0};
    if (add_bos && t->bos >= 0) tok__ids_push(&v, t->bos);
    size_t seg = 0, i = 0;
    int rc = 0;
    while (i < len && !rc) {
        unsigned c = (unsigned char)text[i];
        const tok_added *hit = NULL;
        for (int k = t->added_first[c]; k < t->added_first[c + 1]; k++) {
            const tok_added *a = &t->added[k];
            if (a->special && !parse_special) continue;
            if (a->len <= len - i && memcmp(text + i, t->text.p + a->off, a->len) == 0) {
                hit = a;
                break;
            }
        }
        if (!hit) {
            i++;
            continue;
        }
        size_t end = i;
        if (hit->lstrip)
            while (end > seg && is_ws((unsigned char)text[end - 1])) end--;
        rc = encode_segment(t, text + seg, end - seg, seg == 0, &v);
        tok__ids_push(&v, hit->id);
        i += hit->len;
        if (hit->rstrip)
            while (i < len && is_ws((unsigned char)text[i])) i++;
        seg = i;
    }
    if (!rc) rc = encode_segment(t, text + seg, len - seg, seg == 0, &v);
    tok__buf_free(&fixed);
    if (!rc && v.oom) rc = NI_ENOMEM;
    if (!rc && v.n > (size_t)INT_MAX) rc = NI_ERANGE;
    if (rc) {
        free(v.p);
        return rc;
    }
    size_t k = NI_MIN(v.n, (size_t)cap);
    if (k) memcpy(ids, v.p, k * sizeof(int32_t));
    free(v.p);
    return (int)v.n;
}

/* ------------------------------------------------------------------------ */
/* decode                                                                    */
/* ------------------------------------------------------------------------ */

static void flush_byte_run(tok_buf *b, tok_buf *run) {
    if (!run->n) return;
    if (utf8_valid(run->p, run->n)) tok__buf_put(b, run->p, run->n);
    else
        for (size_t i = 0; i < run->n; i++) tok__buf_put(b, FFFD, 3);
    run->n = 0;
}

static const char *dbytes(const tok_tokenizer *t, int32_t id) { return t->dtext.p + t->doff[id]; }

int tok_decode(const tok_tokenizer *t, const int32_t *ids, int n, char *buf, size_t cap) {
    if (!t || n < 0 || (n > 0 && !ids) || (cap > 0 && !buf)) return NI_EINVAL;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n_vocab) return NI_EINVAL;
    tok_buf b = {0};
    tok__buf_put(&b, "", 1);
    b.n = 0;
    if (t->dec == TOK_DEC_SPM) {
        tok_buf run = {0};
        for (int i = 0; i < n; i++) {
            int32_t id = ids[i];
            if (t->flags[id] & TOKF_SKIP) continue;
            if (t->byteval[id] >= 0) {
                char c = (char)t->byteval[id];
                tok__buf_put(&run, &c, 1);
            } else {
                flush_byte_run(&b, &run);
                tok__buf_put(&b, dbytes(t, id), t->dlen[id]);
            }
        }
        flush_byte_run(&b, &run);
        if (run.oom) b.oom = 1;
        tok__buf_free(&run);
        if (!b.oom && b.n && b.p[0] == ' ') {
            memmove(b.p, b.p + 1, b.n);
            b.n--;
        }
    } else {
        tok_buf raw = {0};
        for (int i = 0; i < n; i++) {
            int32_t id = ids[i];
            if (t->flags[id] & TOKF_SKIP) continue;
            tok__buf_put(&raw, dbytes(t, id), t->dlen[id]);
        }
        put_lossy(&b, raw.p, raw.n);
        if (raw.oom) b.oom = 1;
        tok__buf_free(&raw);
    }
    if (b.oom) {
        tok__buf_free(&b);
        return NI_ENOMEM;
    }
    if (b.n > (size_t)INT_MAX) {
        tok__buf_free(&b);
        return NI_ERANGE;
    }
    if (cap) {
        size_t k = NI_MIN(b.n, cap - 1);
        memcpy(buf, b.p, k);
        buf[k] = 0;
    }
    int r = (int)b.n;
    tok__buf_free(&b);
    return r;
}

int tok_token_bytes(const tok_tokenizer *t, int32_t id, char *buf, size_t cap) {
    if (!t || id < 0 || id >= t->n_vocab || (cap && !buf)) return NI_EINVAL;
    if (t->dlen[id] > cap) return NI_ERANGE;
    memcpy(buf, dbytes(t, id), t->dlen[id]);
    return (int)t->dlen[id];
}

int tok_token_piece(const tok_tokenizer *t, int32_t id, const char **piece_out, size_t *len) {
    if (!t || id < 0 || id >= t->n_vocab || !piece_out || !len) return NI_EINVAL;
    *piece_out = piece(t, id);
    *len = t->len[id];
    return 0;
}

/* ------------------------------------------------------------------------ */
/* streaming                                                                 */
/* ------------------------------------------------------------------------ */

void tok_stream_init(tok_stream *s, const tok_tokenizer *t) {
    memset(s, 0, sizeof(*s));
    s->t = t;
    s->at_start = 1;
}

/* Emits every complete character of pending, keeping an incomplete tail.
 * per_byte: invalid subparts give one U+FFFD per byte (SPM ByteFallback)
 * instead of one per maximal subpart. */
static size_t drain_pending(tok_stream *s, char *out, int per_byte) {
    size_t w = 0, i = 0, n = (size_t)s->pending_len;
    const unsigned char *p = (const unsigned char *)s->pending;
    while (i < n) {
        int r = tok__utf8_check(p + i, n - i);
        if (r == 0) break;
        if (r > 0) {
            memcpy(out + w, p + i, (size_t)r);
            w += (size_t)r;
            i += (size_t)r;
        } else {
            size_t k = (size_t)-r;
            for (size_t j = 0; j < (per_byte ? k : 1); j++) memcpy(out + w, FFFD, 3), w += 3;
            i += k;
        }
    }
    memmove(s->pending, s->pending + i, n - i);
    s->pending_len = (int)(n - i);
    return w;
}

int tok_stream_push_part(tok_stream *s, int32_t id, size_t *off, int *more, char *out,
                         size_t cap) {
    if (!s || !s->t || !off || !more || (cap && !out)) return NI_EINVAL;
    const tok_tokenizer *t = s->t;
    if (id < 0 || id >= t->n_vocab) return NI_EINVAL;
    if (cap < TOK_STREAM_PART_MIN) return NI_ERANGE;
    const size_t n = t->dlen[id];
    if (*off > n) return NI_EINVAL;
    const char *p = dbytes(t, id);
    size_t i = *off;
    *more = 0;
    if (i == 0) { /* the token's first piece */
        s->n_seen++;
        if (t->flags[id] & TOKF_SKIP) {
            *off = n;
            return 0;
        }
        if (t->dec == TOK_DEC_SPM && s->at_start && n) {
            if (p[0] == ' ') i = 1;
            s->at_start = 0;
        }
    }
    /* every input byte gives at most 3 output bytes (U+FFFD), and the held
     * bytes of an earlier piece or token at most 24 more */
    const size_t room = (cap - 24) / 3;
    const size_t end = n - i > room ? i + room : n;
    size_t w = 0;
    if (t->dec == TOK_DEC_SPM) {
        if (t->byteval[id] >= 0) {
            if (i < n) { /* none left when the byte was the stripped leading space */
                s->pending[s->pending_len++] = p[i];
                w += drain_pending(s, out, 1);
            }
        } else {
            for (int j = 0; j < s->pending_len; j++) memcpy(out + w, FFFD, 3), w += 3;
            s->pending_len = 0;
            memcpy(out + w, p + i, end - i);
            w += end - i;
        }
    } else {
        /* byte-level: lossy UTF-8 over the concatenation, holding an incomplete
         * tail (also one cut by the end of this piece) */
        while (i < end) {
            if (s->pending_len) {
                s->pending[s->pending_len++] = p[i++];
                w += drain_pending(s, out + w, 0);
                continue;
            }
            int r = tok__utf8_check((const unsigned char *)p + i, end - i);
            if (r > 0) {
                memcpy(out + w, p + i, (size_t)r);
                w += (size_t)r;
                i += (size_t)r;
            } else if (r < 0) {
                memcpy(out + w, FFFD, 3);
                w += 3;
                i += (size_t)-r;
            } else {
                s->pending[s->pending_len++] = p[i++];
            }
        }
    }
    *off = t->dec == TOK_DEC_SPM && t->byteval[id] >= 0 ? n : end;
    *more = *off < n;
    return (int)w;
}

int tok_stream_push(tok_stream *s, int32_t id, char *out, size_t cap) {
    if (!s || !s->t || (cap && !out)) return NI_EINVAL;
    if (id < 0 || id >= s->t->n_vocab) return NI_EINVAL;
    if (cap < 3 * ((size_t)s->t->dlen[id] + 8)) return NI_ERANGE;
    size_t off = 0;
    int more = 0; /* the whole token fits: one piece */
    return tok_stream_push_part(s, id, &off, &more, out, cap);
}

int tok_stream_flush(tok_stream *s, char *out, size_t cap) {
    if (!s || !s->t || (cap && !out)) return NI_EINVAL;
    if (cap < 3 * 8) return NI_ERANGE;
    size_t w = 0;
    if (s->pending_len) {
        int per_byte = s->t->dec == TOK_DEC_SPM;
        for (int j = 0; j < (per_byte ? s->pending_len : 1); j++) memcpy(out + w, FFFD, 3), w += 3;
        s->pending_len = 0;
    }
    return (int)w;
}
