/*
 * tok_hf.c - Hugging Face tokenizer directories: tokenizer.json (BPE model,
 * byte-level or SentencePiece-converted), else tokenizer.model
 * (SentencePiece, via tok_spm.c); tokenizer_config.json /
 * special_tokens_map.json for bos/eos/add_bos, and
 * generation_config.json for extra end-of-generation ids.
 *
 * Design: tokenizer.json is parsed with jansson and mapped onto the engine of
 * tok_bpe.c: vocab + merges (either "a b" strings or [a, b] pairs), added
 * tokens (special / lstrip / rstrip), the normalizer (null, NFC, or
 * Sequence[Prepend("▁"), Replace(" ", "▁")]), and the pre_tokenizer (null,
 * ByteLevel, Split, Digits, Metaspace, Sequence of those). Anything else is
 * refused with NI_EUNSUPPORTED rather than tokenized differently from HF.
 * Known gaps, documented rather than silently wrong: the NFC normalizer is
 * accepted but not applied (input is assumed NFC already, as llama.cpp does);
 * added-token lstrip/rstrip only strip ASCII whitespace; single_word is
 * ignored; "normalized" added tokens are matched on the raw text.
 * clean_up_tokenization_spaces is not read: transformers 5.x ignores it for
 * BPE-model tokenizers. Every value read from the files is type- and
 * range-checked.
 */
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/util/util.h"
#include "tok_internal.h"

typedef struct hf_ctx {
    const char *dir;
    char *err;
    size_t errlen;
    char path[4096];
} hf_ctx;

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static const char *join(hf_ctx *c, const char *name) {
    snprintf(c->path, sizeof c->path, "%s/%s", c->dir, name);
    return c->path;
}

static json_t *load_json(hf_ctx *c, const char *name, int *rc) {
    const char *p = join(c, name);
    *rc = 0;
    if (!file_exists(p)) return NULL;
    json_error_t je;
    json_t *j = json_load_file(p, JSON_ALLOW_NUL, &je);
    if (!j) *rc = ni_fail(c->err, c->errlen, NI_EFORMAT, "%s:%d: %s", p, je.line, je.text);
    return j;
}

static int jbool(json_t *o, const char *key, int def) {
    json_t *v = json_object_get(o, key);
    if (json_is_boolean(v)) return json_is_true(v);
    return def;
}

static const char *jstr(json_t *o, const char *key, size_t *len) {
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v)) return NULL;
    if (len) *len = json_string_length(v);
    return json_string_value(v);
}

static int type_is(json_t *o, const char *type) {
    const char *t = jstr(o, "type", NULL);
    return t && strcmp(t, type) == 0;
}

/* ------------------------------------------------------------------------ */
/* tokenizer.json                                                            */
/* ------------------------------------------------------------------------ */

static int contains_type(json_t *o, const char *type) {
    if (json_is_array(o)) {
        size_t i;
        json_t *v;
        json_array_foreach(o, i, v) if (contains_type(v, type)) return 1;
        return 0;
    }
    if (!json_is_object(o)) return 0;
    if (type_is(o, type)) return 1;
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) if (json_is_array(v) || json_is_object(v)) if (contains_type(v, type)) return 1;
    return 0;
}

static const char META[] = "\xe2\x96\x81";

static int is_meta(const char *s, size_t n) { return s && n == 3 && memcmp(s, META, 3) == 0; }

static int parse_normalizer(hf_ctx *c, tok_bpe *b, json_t *n, const char *file) {
    if (!n || json_is_null(n)) return 0;
    if (type_is(n, "NFC")) return 0; /* accepted, not applied: see the header */
    if (type_is(n, "Sequence")) {
        json_t *arr = json_object_get(n, "normalizers");
        size_t i;
        json_t *v;
        if (!json_is_array(arr)) goto bad;
        json_array_foreach(arr, i, v) {
            int rc = parse_normalizer(c, b, v, file);
            if (rc) return rc;
        }
        return 0;
    }
    if (type_is(n, "Prepend")) {
        size_t l = 0;
        const char *p = jstr(n, "prepend", &l);
        if (!is_meta(p, l)) goto bad;
        b->norm_prepend = 1;
        return 0;
    }
    if (type_is(n, "Replace")) {
        size_t l = 0, pl = 0;
        json_t *pat = json_object_get(n, "pattern");
        const char *s = jstr(pat, "String", &pl), *r = jstr(n, "content", &l);
        if (!s || pl != 1 || s[0] != ' ' || !is_meta(r, l)) goto bad;
        b->norm_replace_space = 1;
        return 0;
    }
bad:;
    char *d = json_dumps(n, JSON_COMPACT);
    int rc = ni_fail(c->err, c->errlen, NI_EUNSUPPORTED, "%s: unsupported normalizer %.120s", file, d ? d : "?");
    free(d);
    return rc;
}

static int split_behavior(const char *s) {
    if (!s || !strcmp(s, "Isolated")) return TOK_SPLIT_ISOLATED;
    if (!strcmp(s, "Removed")) return TOK_SPLIT_REMOVED;
    if (!strcmp(s, "MergedWithPrevious")) return TOK_SPLIT_MERGED_PREV;
    if (!strcmp(s, "MergedWithNext")) return TOK_SPLIT_MERGED_NEXT;
    if (!strcmp(s, "Contiguous")) return TOK_SPLIT_CONTIGUOUS;
    return -1;
}

/* A literal pattern as a regex: every ASCII non-alphanumeric char escaped. */
static char *escape_literal(const char *s, size_t n, size_t *out_len) {
    char *o = malloc(2 * n + 1);
    if (!o) return NULL;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x80 && !((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')))
            o[w++] = '\\';
        if (ch == 0) { /* \0 cannot follow a backslash literally */
            w--;
            memcpy(o + w, "\\x00", 4);
            w += 4;
            continue;
        }
        o[w++] = (char)ch;
    }
    *out_len = w;
    return o;
}

static int add_step(hf_ctx *c, tok_bpe *b, const char *file) {
    if (b->n_steps >= TOK_MAX_STEPS)
        return ni_fail(c->err, c->errlen, NI_EUNSUPPORTED, "%s: too many pre-tokenizer steps", file);
    return 0;
}

static int parse_pre(hf_ctx *c, tok_bpe *b, json_t *p, const char *file, int *byte_level) {
    if (!p || json_is_null(p)) return 0;
    char e2[256] = "";
    int rc = 0;
    if (type_is(p, "Sequence")) {
        json_t *arr = json_object_get(p, "pretokenizers");
        size_t i;
        json_t *v;
        if (!json_is_array(arr)) goto bad;
        json_array_foreach(arr, i, v) if ((rc = parse_pre(c, b, v, file, byte_level))) return rc;
        return 0;
    }
    if (type_is(p, "ByteLevel")) {
        if ((rc = add_step(c, b, file))) return rc;
        rc = tok__step_bytelevel(&b->steps[b->n_steps], jbool(p, "use_regex", 1), jbool(p, "add_prefix_space", 0),
                                 e2, sizeof e2);
        if (rc) return ni_fail(c->err, c->errlen, rc, "%s: %s", file, e2);
        b->n_steps++;
        *byte_level = 1;
        return 0;
    }
    if (type_is(p, "Split")) {
        json_t *pat = json_object_get(p, "pattern");
        size_t l = 0;
        const char *re = jstr(pat, "Regex", &l);
        int beh = split_behavior(jstr(p, "behavior", NULL));
        if (beh < 0) goto bad;
        if ((rc = add_step(c, b, file))) return rc;
        if (re) {
            rc = tok__step_regex(&b->steps[b->n_steps], re, l, beh, jbool(p, "invert", 0), e2, sizeof e2);
        } else {
            const char *lit = jstr(pat, "String", &l);
            if (!lit || !l) goto bad;
            size_t el;
            char *esc = escape_literal(lit, l, &el);
            if (!esc) return NI_ENOMEM;
            rc = tok__step_regex(&b->steps[b->n_steps], esc, el, beh, jbool(p, "invert", 0), e2, sizeof e2);
            free(esc);
        }
        if (rc) return ni_fail(c->err, c->errlen, rc, "%s: %s", file, e2);
        b->n_steps++;
        return 0;
    }
    if (type_is(p, "Digits")) {
        if ((rc = add_step(c, b, file))) return rc;
        const char *re = jbool(p, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+";
        rc = tok__step_regex(&b->steps[b->n_steps], re, strlen(re), TOK_SPLIT_ISOLATED, 0, e2, sizeof e2);
        if (rc) return ni_fail(c->err, c->errlen, rc, "%s: %s", file, e2);
        b->n_steps++;
        return 0;
    }
    if (type_is(p, "Metaspace")) {
        size_t l = 0;
        const char *r = jstr(p, "replacement", &l);
        if (!is_meta(r, l) || b->n_steps) goto bad; /* only as the first step */
        b->meta = 1;
        const char *scheme = jstr(p, "prepend_scheme", NULL);
        if (scheme) b->meta_prepend = !strcmp(scheme, "always") ? 1 : !strcmp(scheme, "first") ? 2 : 0;
        else b->meta_prepend = jbool(p, "add_prefix_space", 1); /* older files */
        b->meta_split = jbool(p, "split", 1);
        return 0;
    }
bad:;
    char *d = json_dumps(p, JSON_COMPACT);
    rc = ni_fail(c->err, c->errlen, NI_EUNSUPPORTED, "%s: unsupported pre_tokenizer %.160s", file, d ? d : "?");
    free(d);
    return rc;
}

/* BOS from a TemplateProcessing post-processor (possibly inside a Sequence). */
static int32_t template_bos(tok_tokenizer *t, json_t *pp) {
    if (!json_is_object(pp)) return -1;
    if (type_is(pp, "Sequence")) {
        json_t *arr = json_object_get(pp, "processors");
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v) {
            int32_t id = template_bos(t, v);
            if (id >= 0) return id;
        }
        return -1;
    }
    if (!type_is(pp, "TemplateProcessing")) return -1;
    json_t *single = json_object_get(pp, "single");
    json_t *first = json_array_get(single, 0);
    json_t *st = json_object_get(first, "SpecialToken");
    if (!st) return -1;
    size_t l = 0;
    const char *name = jstr(st, "id", &l);
    if (!name) return -1;
    json_t *ids = json_object_get(json_object_get(json_object_get(pp, "special_tokens"), name), "ids");
    json_t *id0 = json_array_get(ids, 0);
    if (json_is_integer(id0) && json_integer_value(id0) >= 0 && json_integer_value(id0) < t->n_vocab)
        return (int32_t)json_integer_value(id0);
    return tok__find(t, name, l);
}

static int load_tokenizer_json(hf_ctx *c, json_t *j, tok_tokenizer **out) {
    char file[4096];
    snprintf(file, sizeof file, "%s/tokenizer.json", c->dir);
    json_t *model = json_object_get(j, "model");
    if (!json_is_object(model)) return ni_fail(c->err, c->errlen, NI_EFORMAT, "%s: no \"model\" object", file);
    const char *mtype = jstr(model, "type", NULL);
    if (mtype && strcmp(mtype, "BPE") != 0)
        return ni_fail(c->err, c->errlen, NI_EUNSUPPORTED, "%s: model type %s is not supported (BPE only)", file,
                       mtype);
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(j, "added_tokens");
    if (!json_is_object(vocab) || (merges && !json_is_array(merges)) || (added && !json_is_array(added)))
        return ni_fail(c->err, c->errlen, NI_EFORMAT, "%s: model.vocab / merges / added_tokens malformed", file);
    /* vocabulary size = highest id + 1 */
    int64_t max_id = -1;
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= TOK_MAX_VOCAB)
            return ni_fail(c->err, c->errlen, NI_EFORMAT, "%s: vocab id of \"%.40s\" invalid", file, k);
        if (json_integer_value(v) > max_id) max_id = json_integer_value(v);
    }
    size_t i;
    json_array_foreach(added, i, v) {
        json_t *id = json_object_get(v, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= TOK_MAX_VOCAB ||
            !jstr(v, "content", NULL))
            return ni_fail(c->err, c->errlen, NI_EFORMAT, "%s: added_tokens[%zu] malformed", file, i);
        if (json_integer_value(id) > max_id) max_id = json_integer_value(id);
    }
    if (max_id < 0) return ni_fail(c->err, c->errlen, NI_EFORMAT, "%s: empty vocabulary", file);
    tok_tokenizer *t = tok__alloc((int32_t)max_id + 1);
    if (!t) return ni_fail(c->err, c->errlen, NI_ENOMEM, "%s: out of memory", file);
    *out = t;
    t->engine = TOK_ENG_BPE;
    t->bpe = calloc(1, sizeof(tok_bpe));
    if (!t->bpe) return NI_ENOMEM;
    tok_bpe *b = t->bpe;
    int rc;
    /* pieces: json_object_foreach order is the file order; keys are unique */
    json_object_foreach(vocab, k, v) {
        size_t kl = strlen(k); /* jansson object keys cannot hold NUL */
        if (kl > TOK_MAX_PIECE) return ni_fail(c->err, c->errlen, NI_EFORMAT, "%s: vocab entry too long", file);
        if ((rc = tok__set_piece(t, (int32_t)json_integer_value(v), k, kl))) return rc;
    }
    json_array_foreach(added, i, v) {
        size_t l = 0;
        const char *s = jstr(v, "content", &l);
        int32_t id = (int32_t)json_integer_value(json_object_get(v, "id"));
        if (l > TOK_MAX_PIECE) return ni_fail(c->err, c->errlen, NI_EFORMAT, "%s: added token too long", file);
        if ((rc = tok__set_piece(t, id, s, l))) return rc;
        int special = jbool(v, "special", 0);
        t->attr[id] = special ? TOK_ATTR_CONTROL : TOK_ATTR_USER;
        tok__mark_added(t, id, special, jbool(v, "lstrip", 0), jbool(v, "rstrip", 0));
    }
    if ((rc = tok__build_hash(t))) return rc;

    /* pipeline */
    int byte_level = 0;
    if ((rc = parse_normalizer(c, b, json_object_get(j, "normalizer"), file))) return rc;
    if ((rc = parse_pre(c, b, json_object_get(j, "pre_tokenizer"), file, &byte_level))) return rc;
    json_t *dec = json_object_get(j, "decoder");
    if (!byte_level && contains_type(dec, "ByteLevel")) byte_level = 1;
    b->byte_level = byte_level;
    b->byte_fallback = jbool(model, "byte_fallback", 0);
    b->fuse_unk = jbool(model, "fuse_unk", 0);
    b->ignore_merges = jbool(model, "ignore_merges", 0);
    size_t ul = 0;
    const char *unk = jstr(model, "unk_token", &ul);
    if (unk) t->unk = tok__find(t, unk, ul);
    if (byte_level) {
        t->kind = TOK_KIND_BPE;
        t->dec = TOK_DEC_BYTELEVEL;
        if (b->norm_prepend || b->norm_replace_space || b->meta)
            return ni_fail(c->err, c->errlen, NI_EUNSUPPORTED, "%s: byte-level BPE with a SentencePiece normalizer",
                           file);
    } else {
        int spm_like = b->norm_prepend || b->norm_replace_space || b->meta || contains_type(dec, "ByteFallback") ||
                       contains_type(dec, "Metaspace");
        if (!spm_like)
            return ni_fail(c->err, c->errlen, NI_EUNSUPPORTED,
                           "%s: BPE that is neither byte-level nor SentencePiece-style", file);
        t->kind = TOK_KIND_SPM;
        t->dec = TOK_DEC_SPM;
        for (int32_t id = 0; id < t->n_vocab; id++)
            if (t->attr[id] == TOK_ATTR_NORMAL && t->len[id] == 6 && !memcmp(t->text.p + t->off[id], "<0x", 3))
                t->attr[id] = TOK_ATTR_BYTE;
    }
    /* merges */
    size_t nm = merges ? json_array_size(merges) : 0;
    if (nm > (size_t)INT32_MAX) return ni_fail(c->err, c->errlen, NI_EFORMAT, "%s: too many merges", file);
    if ((rc = tok__bpe_alloc_merges(b, nm))) return rc;
    json_array_foreach(merges, i, v) {
        const char *l = NULL, *r = NULL;
        size_t ln = 0, rn = 0;
        if (json_is_string(v)) {
            const char *s = json_string_value(v);
            size_t n = json_string_length(v);
            const char *sp = memchr(s, ' ', n);
            if (!sp) continue;
            l = s, ln = (size_t)(sp - s), r = sp + 1, rn = n - ln - 1;
        } else if (json_is_array(v) && json_array_size(v) == 2 && json_is_string(json_array_get(v, 0)) &&
                   json_is_string(json_array_get(v, 1))) {
            l = json_string_value(json_array_get(v, 0));
            ln = json_string_length(json_array_get(v, 0));
            r = json_string_value(json_array_get(v, 1));
            rn = json_string_length(json_array_get(v, 1));
        } else {
            return ni_fail(c->err, c->errlen, NI_EFORMAT, "%s: merges[%zu] malformed", file, i);
        }
        if ((rc = tok__bpe_merge_strs(t, l, ln, r, rn, (int32_t)i))) return rc;
    }
    tok__bpe_init_bytes(t);
    /* BOS from the post-processor (LLaMA 3 style) */
    int32_t bos = template_bos(t, json_object_get(j, "post_processor"));
    if (bos >= 0) {
        t->bos = bos;
        t->add_bos = 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* configs                                                                   */
/* ------------------------------------------------------------------------ */

/* bos_token / eos_token: a string or {"content": ...}. */
static int32_t token_ref(tok_tokenizer *t, json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return -2;
    return tok__find(t, json_string_value(v), json_string_length(v));
}

static void eog_from_json(tok_tokenizer *t, json_t *v) {
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x >= 0 && x < t->n_vocab) tok__add_eog(t, (int32_t)x);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) eog_from_json(t, e);
    }
}

int tok__hf_load(tok_tokenizer **out, const char *dir, char *err, size_t errlen) {
    hf_ctx c = {.dir = dir, .err = err, .errlen = errlen};
    int rc = 0;
    tok_tokenizer *t = NULL;
    json_t *cfg = NULL, *stm = NULL, *gen = NULL;
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return ni_fail(err, errlen, NI_ENOTFOUND, "%s: not a directory", dir);

    cfg = load_json(&c, "tokenizer_config.json", &rc);
    if (rc) goto fail;
    stm = load_json(&c, "special_tokens_map.json", &rc);
    if (rc) goto fail;

    json_t *tj = load_json(&c, "tokenizer.json", &rc);
    if (rc) goto fail;
    int has_pp_bos = 0;
    if (tj) {
        rc = load_tokenizer_json(&c, tj, &t);
        json_decref(tj);
        if (rc) goto fail;
        has_pp_bos = t->add_bos;
    } else if (file_exists(join(&c, "tokenizer.model"))) {
        char *data = NULL;
        size_t n = 0;
        char what[4096];
        snprintf(what, sizeof what, "%s", c.path);
        rc = ni_read_file(what, &data, &n);
        if (rc) {
            rc = ni_fail(err, errlen, rc, "%s: cannot read", what);
            goto fail;
        }
        rc = tok__spm_from_proto(&t, data, n, what, err, errlen);
        free(data);
        if (rc) goto fail;
        /* added_tokens_decoder entries inside the vocabulary */
        json_t *atd = json_object_get(cfg, "added_tokens_decoder");
        const char *k;
        json_t *v;
        json_object_foreach(atd, k, v) {
            char *end;
            long id = strtol(k, &end, 10);
            if (*end || id < 0 || id >= t->n_vocab || !json_is_object(v)) continue;
            size_t l;
            const char *s = jstr(v, "content", &l);
            if (!s || l != t->len[id] || memcmp(s, t->text.p + t->off[id], l)) continue;
            tok__mark_added(t, (int32_t)id, jbool(v, "special", 0), jbool(v, "lstrip", 0), jbool(v, "rstrip", 0));
        }
    } else {
        rc = ni_fail(err, errlen, NI_ENOTFOUND, "%s: no tokenizer.json or tokenizer.model", dir);
        goto fail;
    }

    /* special tokens */
    json_t *srcs[2] = {cfg, stm};
    for (int s = 1; s >= 0; s--) { /* tokenizer_config.json wins */
        if (!srcs[s]) continue;
        int32_t id = token_ref(t, srcs[s], "bos_token");
        if (id >= 0) t->bos = id;
        else if (json_is_null(json_object_get(srcs[s], "bos_token"))) t->bos = -1;
        id = token_ref(t, srcs[s], "eos_token");
        if (id >= 0) t->eos = id;
        id = token_ref(t, srcs[s], "unk_token");
        if (id >= 0) t->unk = id;
    }
    if (cfg) {
        json_t *ab = json_object_get(cfg, "add_bos_token");
        if (json_is_boolean(ab)) t->add_bos = json_is_true(ab) || has_pp_bos;
        t->add_eos = jbool(cfg, "add_eos_token", 0);
    }
    if (t->bos < 0) t->add_bos = 0;
    if ((rc = tok__finish(t, err, errlen))) goto fail;

    gen = load_json(&c, "generation_config.json", &rc);
    if (rc) goto fail;
    if (gen) eog_from_json(t, json_object_get(gen, "eos_token_id"));

    json_decref(cfg);
    json_decref(stm);
    json_decref(gen);
    *out = t;
    return 0;
fail:
    json_decref(cfg);
    json_decref(stm);
    json_decref(gen);
    tok_free(t);
    *out = NULL;
    return rc;
}
