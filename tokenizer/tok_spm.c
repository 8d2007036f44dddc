/*
 * tok_spm.c - SentencePiece models (LLaMA 2 / TinyLlama) through
 * libsentencepiece (spm_shim.cc).
 *
 * Design: everything goes through a serialized ModelProto. A tokenizer.model
 * file already is one; for a GGUF with tokenizer.ggml.model = "llama" the
 * proto is hand-encoded here from tokenizer.ggml.{tokens,scores,token_type}
 * (model_type BPE, byte_fallback when byte pieces exist, identity
 * normalizer, add_dummy_prefix from tokenizer.ggml.add_space_prefix, default
 * on). The proto is then parsed by a small bounds-checked protobuf reader
 * (pieces, types, special ids) to fill the shared vocabulary tables, and
 * handed to libsentencepiece for encoding. Decoding never uses the library:
 * tok.c reproduces HF's decoder from the pieces.
 *
 * Special tokens: control/unknown pieces are split out of the text by tok.c
 * (only with parse_special), user-defined ones always; each remaining segment
 * is encoded separately, so every segment gets the dummy-prefix "▁" exactly
 * like the HF "legacy" Llama tokenizer and llama.cpp do.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/util/util.h"
#include "spm_shim.h"
#include "tok_internal.h"

/* ------------------------------------------------------------------------ */
/* protobuf writer                                                           */
/* ------------------------------------------------------------------------ */

static void pb_varint(tok_buf *b, uint64_t v) {
    unsigned char tmp[10];
    int n = 0;
    do {
        tmp[n++] = (unsigned char)((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
        v >>= 7;
    } while (v);
    tok__buf_put(b, tmp, (size_t)n);
}

static void pb_tag(tok_buf *b, uint32_t field, uint32_t wire) { pb_varint(b, ((uint64_t)field << 3) | wire); }

static void pb_int(tok_buf *b, uint32_t field, int64_t v) {
    pb_tag(b, field, 0);
    pb_varint(b, (uint64_t)v); /* negative int32 -> 10-byte two's complement, as protobuf does */
}

static void pb_bytes(tok_buf *b, uint32_t field, const void *s, size_t n) {
    pb_tag(b, field, 2);
    pb_varint(b, n);
    tok__buf_put(b, s, n);
}

static void pb_float(tok_buf *b, uint32_t field, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    unsigned char le[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
                           (unsigned char)(u >> 24)};
    pb_tag(b, field, 5);
    tok__buf_put(b, le, 4);
}

/* ------------------------------------------------------------------------ */
/* protobuf reader                                                           */
/* ------------------------------------------------------------------------ */

typedef struct pb_rd {
    const unsigned char *p, *end;
} pb_rd;

static int rd_varint(pb_rd *r, uint64_t *v) {
    uint64_t x = 0;
    for (int s = 0; s < 70; s += 7) {
        if (r->p >= r->end) return -1;
        unsigned c = *r->p++;
        x |= (uint64_t)(c & 0x7F) << s;
        if (!(c & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* Next field: 0 ok, 1 end, -1 malformed. For wire type 2 data and len are set;
 * for 0 *v; for 5/1 *v holds the raw little-endian bits. */
static int rd_field(pb_rd *r, uint32_t *field, uint32_t *wire, uint64_t *v, const unsigned char **data,
                    size_t *len) {
    if (r->p >= r->end) return 1;
    uint64_t tag;
    if (rd_varint(r, &tag) || (tag >> 3) == 0 || (tag >> 3) > UINT32_MAX) return -1;
    *field = (uint32_t)(tag >> 3);
    *wire = (uint32_t)(tag & 7);
    switch (*wire) {
    case 0: return rd_varint(r, v);
    case 1:
        if (r->end - r->p < 8) return -1;
        *v = 0;
        for (int i = 7; i >= 0; i--) *v = (*v << 8) | r->p[i];
        r->p += 8;
        return 0;
    case 5:
        if (r->end - r->p < 4) return -1;
        *v = (uint64_t)r->p[0] | ((uint64_t)r->p[1] << 8) | ((uint64_t)r->p[2] << 16) | ((uint64_t)r->p[3] << 24);
        r->p += 4;
        return 0;
    case 2: {
        uint64_t n;
        if (rd_varint(r, &n) || n > (uint64_t)(r->end - r->p)) return -1;
        *data = r->p;
        *len = (size_t)n;
        r->p += n;
        return 0;
    }
    default: return -1; /* groups are not used by sentencepiece */
    }
}

typedef struct spm_info {
    int64_t unk_id, bos_id, eos_id, pad_id;
    int model_type;
    int byte_fallback;
    int add_dummy_prefix;
} spm_info;

/* Walks the ModelProto. With t == NULL only counts pieces (*n_pieces) and
 * reads the specs; with t, stores piece i's string and type. */
static int parse_model(const unsigned char *data, size_t n, tok_tokenizer *t, int32_t *n_pieces, spm_info *info) {
    pb_rd r = {data, data + n};
    uint32_t f, w;
    uint64_t v;
    const unsigned char *d = NULL;
    size_t l = 0;
    int32_t np = 0;
    int rc;
    while ((rc = rd_field(&r, &f, &w, &v, &d, &l)) == 0) {
        if (f == 1 && w == 2) { /* SentencePiece */
            pb_rd s = {d, d + l};
            const unsigned char *pd = (const unsigned char *)"";
            size_t pl = 0;
            int64_t type = TOK_ATTR_NORMAL;
            uint32_t f2, w2;
            uint64_t v2;
            const unsigned char *d2 = NULL;
            size_t l2 = 0;
            int rc2;
            while ((rc2 = rd_field(&s, &f2, &w2, &v2, &d2, &l2)) == 0) {
                if (f2 == 1 && w2 == 2) pd = d2, pl = l2;
                else if (f2 == 3 && w2 == 0) type = (int64_t)v2;
            }
            if (rc2 < 0) return -1;
            if (np >= TOK_MAX_VOCAB) return -2;
            if (t) {
                if (np >= t->n_vocab) return -1;
                if (pl > TOK_MAX_PIECE) return -3;
                if (tok__set_piece(t, np, (const char *)pd, pl)) return -4;
                t->attr[np] = (uint8_t)(type >= TOK_ATTR_NORMAL && type <= TOK_ATTR_BYTE ? type : TOK_ATTR_NORMAL);
            }
            np++;
        } else if (f == 2 && w == 2) { /* TrainerSpec */
            pb_rd s = {d, d + l};
            uint32_t f2, w2;
            uint64_t v2;
            const unsigned char *d2 = NULL;
            size_t l2 = 0;
            int rc2;
            while ((rc2 = rd_field(&s, &f2, &w2, &v2, &d2, &l2)) == 0) {
                if (w2 != 0) continue;
                int64_t iv = (int64_t)(int32_t)(uint32_t)v2; /* int32 fields */
                if (f2 == 3) info->model_type = (int)iv;
                else if (f2 == 35) info->byte_fallback = v2 != 0;
                else if (f2 == 40) info->unk_id = iv;
                else if (f2 == 41) info->bos_id = iv;
                else if (f2 == 42) info->eos_id = iv;
                else if (f2 == 43) info->pad_id = iv;
            }
            if (rc2 < 0) return -1;
        } else if (f == 3 && w == 2) { /* NormalizerSpec */
            pb_rd s = {d, d + l};
            uint32_t f2, w2;
            uint64_t v2;
            const unsigned char *d2 = NULL;
            size_t l2 = 0;
            int rc2;
            while ((rc2 = rd_field(&s, &f2, &w2, &v2, &d2, &l2)) == 0)
                if (f2 == 3 && w2 == 0) info->add_dummy_prefix = v2 != 0;
            if (rc2 < 0) return -1;
        }
    }
    if (rc < 0) return -1;
    *n_pieces = np;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* loading                                                                   */
/* ------------------------------------------------------------------------ */

void tok__spm_free_shim(void *shim) { tok_spm_shim_free(shim); }

int tok__spm_from_proto(tok_tokenizer **out, const void *proto, size_t n, const char *what, char *err,
                        size_t errlen) {
    *out = NULL;
    spm_info info = {.unk_id = 0, .bos_id = 1, .eos_id = 2, .pad_id = -1, .model_type = 1,
                     .add_dummy_prefix = 1};
    int32_t np = 0;
    int prc = parse_model(proto, n, NULL, &np, &info);
    if (prc || np <= 0)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: not a SentencePiece model (%s)", what,
                       prc == -2 ? "too many pieces" : np <= 0 && !prc ? "no pieces" : "malformed protobuf");
    tok_tokenizer *t = tok__alloc(np);
    if (!t) return ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory for the tokenizer", what);
    *out = t;
    t->kind = TOK_KIND_SPM;
    t->engine = TOK_ENG_SPMLIB;
    t->dec = TOK_DEC_SPM;
    prc = parse_model(proto, n, t, &np, &info);
    if (prc)
        return ni_fail(err, errlen, prc == -4 ? NI_ENOMEM : NI_EFORMAT, "%s: %s", what,
                       prc == -3 ? "piece longer than 4096 bytes" : "malformed SentencePiece model");
    if (info.model_type != 1 && info.model_type != 2)
        return ni_fail(err, errlen, NI_EUNSUPPORTED, "%s: SentencePiece model_type %d (only unigram/BPE)", what,
                       info.model_type);
    t->spm_add_dummy_prefix = info.add_dummy_prefix;
    t->unk = info.unk_id >= 0 && info.unk_id < np ? (int32_t)info.unk_id : -1;
    t->bos = info.bos_id >= 0 && info.bos_id < np ? (int32_t)info.bos_id : -1;
    t->eos = info.eos_id >= 0 && info.eos_id < np ? (int32_t)info.eos_id : -1;
    t->add_bos = t->bos >= 0; /* LlamaTokenizer default */
    for (int32_t i = 0; i < np; i++) {
        if (t->attr[i] == TOK_ATTR_CONTROL || t->attr[i] == TOK_ATTR_UNKNOWN) tok__mark_added(t, i, 1, 0, 0);
        else if (t->attr[i] == TOK_ATTR_USER) tok__mark_added(t, i, 0, 0, 0);
    }
    char e2[256] = "";
    tok_spm_shim *shim = NULL;
    int rc = tok_spm_shim_load(proto, n, &shim, e2, sizeof e2);
    if (rc) return ni_fail(err, errlen, rc, "%s: %s", what, e2);
    t->spm = shim;
    if (tok_spm_shim_size(shim) != np)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: sentencepiece sees %d pieces, expected %d", what,
                       tok_spm_shim_size(shim), np);
    return 0;
}

int tok__spm_from_gguf(tok_tokenizer **out, const gguf_ctx *g, char *err, size_t errlen) {
    *out = NULL;
    const char *path = g->path ? g->path : "gguf";
    const gguf_kv *toks = gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_VT_STRING);
    const gguf_kv *scores = gguf_get_arr(g, "tokenizer.ggml.scores", GGUF_VT_FLOAT32);
    const gguf_kv *types = NULL;
    if (!toks || toks->arr_n == 0 || toks->arr_n > TOK_MAX_VOCAB)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: tokenizer.ggml.tokens missing, empty or too large", path);
    if (gguf_find(g, "tokenizer.ggml.scores") && (!scores || scores->arr_n != toks->arr_n))
        return ni_fail(err, errlen, NI_EFORMAT, "%s: tokenizer.ggml.scores is not a float32 array like tokens", path);
    if (tok__gguf_types(g, toks->arr_n, &types))
        return ni_fail(err, errlen, NI_EFORMAT, "%s: tokenizer.ggml.token_type is not an int32 array of %llu entries",
                       path, (unsigned long long)toks->arr_n);
    size_t n = (size_t)toks->arr_n;
    int32_t unk = 0, bos = 1, eos = 2;
    int64_t v;
    if (gguf_get_int(g, "tokenizer.ggml.unknown_token_id", &v) == 0 && v >= 0 && (uint64_t)v < n) unk = (int32_t)v;
    if (gguf_get_int(g, "tokenizer.ggml.bos_token_id", &v) == 0) bos = v >= 0 && (uint64_t)v < n ? (int32_t)v : -1;
    if (gguf_get_int(g, "tokenizer.ggml.eos_token_id", &v) == 0) eos = v >= 0 && (uint64_t)v < n ? (int32_t)v : -1;
    int add_prefix = 1, rm_ws = 0;
    if (gguf_get_int(g, "tokenizer.ggml.add_space_prefix", &v) == 0) add_prefix = v != 0;
    if (gguf_get_int(g, "tokenizer.ggml.remove_extra_whitespaces", &v) == 0) rm_ws = v != 0;

    tok_buf pb = {0}, sub = {0};
    int has_bytes = 0, has_unk = 0;
    for (size_t i = 0; i < n; i++) {
        gguf_str s = toks->arr_strs[i];
        if (s.len > TOK_MAX_PIECE) {
            tok__buf_free(&pb);
            return ni_fail(err, errlen, NI_EFORMAT, "%s: token %zu is %llu bytes long", path, i,
                           (unsigned long long)s.len);
        }
        float score = 0;
        int32_t ty = TOK_ATTR_NORMAL;
        if (scores) memcpy(&score, scores->arr_data + 4 * i, 4);
        if (types) memcpy(&ty, types->arr_data + 4 * i, 4);
        if (ty < TOK_ATTR_NORMAL || ty > TOK_ATTR_BYTE) ty = TOK_ATTR_NORMAL;
        if (ty == TOK_ATTR_BYTE) has_bytes = 1;
        if (ty == TOK_ATTR_UNKNOWN) has_unk = 1;
        if (!types && (int32_t)i == unk) ty = TOK_ATTR_UNKNOWN, has_unk = 1;
        sub.n = 0;
        pb_bytes(&sub, 1, s.ptr, s.len);
        pb_float(&sub, 2, score);
        if (ty != TOK_ATTR_NORMAL) pb_int(&sub, 3, ty);
        pb_bytes(&pb, 1, sub.p, sub.n);
    }
    if (!has_unk) {
        tok__buf_free(&pb);
        tok__buf_free(&sub);
        return ni_fail(err, errlen, NI_EFORMAT, "%s: SentencePiece vocabulary has no unknown token", path);
    }
    sub.n = 0;
    pb_int(&sub, 3, 2); /* model_type = BPE */
    pb_int(&sub, 4, (int64_t)n);
    if (has_bytes) pb_int(&sub, 35, 1); /* byte_fallback */
    pb_int(&sub, 40, unk);
    pb_int(&sub, 41, bos);
    pb_int(&sub, 42, eos);
    pb_int(&sub, 43, -1);
    pb_bytes(&pb, 2, sub.p, sub.n);
    sub.n = 0;
    pb_bytes(&sub, 1, "identity", 8);
    pb_int(&sub, 3, add_prefix);
    pb_int(&sub, 4, rm_ws);
    pb_int(&sub, 5, 1); /* escape_whitespaces */
    pb_bytes(&pb, 3, sub.p, sub.n);
    int rc = 0;
    if (pb.oom || sub.oom) rc = ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory building the model", path);
    else rc = tok__spm_from_proto(out, pb.p, pb.n, path, err, errlen);
    tok__buf_free(&pb);
    tok__buf_free(&sub);
    if (!rc) (*out)->add_bos = (*out)->bos >= 0;
    return rc;
}

int tok__spm_encode_segment(const tok_tokenizer *t, const char *text, size_t len, tok_ids *out) {
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tok_spm_shim_encode(t->spm, text, len, &ids, &n);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab) {
            free(ids);
            return NI_ERANGE;
        }
        tok__ids_push(out, ids[i]);
    }
    free(ids);
    return out->oom ? NI_ENOMEM : 0;
}
