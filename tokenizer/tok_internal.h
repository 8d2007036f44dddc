/*
 * tok_internal.h - private layout of tok_tokenizer, shared by the tokenizer
 * sources (tok.c core, tok_bpe.c merge engine + pre-tokenizer, tok_spm.c
 * SentencePiece glue, tok_hf.c Hugging Face loader). Not a public header.
 *
 * Invariants (established by the loaders through tok__finish(), relied on
 * everywhere else without re-checking):
 *  - 0 < n_vocab <= TOK_MAX_VOCAB; every id stored in the struct (bos, eos,
 *    unk, eog[], added[].id, merge results, byte_tok[]) is -1 or < n_vocab.
 *  - piece i is text.p[off[i] .. off[i]+len[i]) (raw vocab string, not
 *    NUL-terminated); its decoded bytes are dtext.p[doff[i] .. +dlen[i]).
 *  - the piece hash maps every distinct piece string to its lowest id.
 *  - added[] is sorted by first byte, then by length descending, so the first
 *    match at a position is the longest (HF's leftmost-longest rule).
 *  - after load nothing is written: every encode/decode call keeps its state
 *    on the stack or in its own allocations (thread-safe reads).
 */
#ifndef NI_TOK_INTERNAL_H
#define NI_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "tok.h"

#define TOK_MAX_VOCAB (1 << 22)
#define TOK_MAX_PIECE 4096 /* longest vocab string accepted (bytes) */
#define TOK_MAX_EOG 16
#define TOK_MAX_STEPS 8

/* Growable byte buffer. */
typedef struct tok_buf {
    char *p;
    size_t n, cap;
    int oom;
} tok_buf;
void tok__buf_put(tok_buf *b, const void *s, size_t n);
void tok__buf_free(tok_buf *b);

/* Token attribute, same numbering as SentencePiece's Type and GGUF's
 * tokenizer.ggml.token_type. */
enum tok_attr {
    TOK_ATTR_NORMAL = 1,
    TOK_ATTR_UNKNOWN = 2,
    TOK_ATTR_CONTROL = 3,
    TOK_ATTR_USER = 4,
    TOK_ATTR_UNUSED = 5,
    TOK_ATTR_BYTE = 6,
};

/* Per-token flags. */
enum {
    TOKF_SKIP = 1,  /* special: dropped by decode(skip_special_tokens=True) */
    TOKF_ADDED = 2, /* matched in raw text before the model runs */
};

/* An added/special token matched in raw text. */
typedef struct tok_added {
    int32_t id;
    uint32_t len;       /* bytes of text (> 0) */
    uint32_t off;       /* text is tok_tokenizer.text.p + off */
    uint8_t special;    /* 1: only matched when parse_special */
    uint8_t lstrip;     /* HF: swallow whitespace on the left */
    uint8_t rstrip;     /* HF: swallow whitespace on the right */
} tok_added;

enum tok_engine { TOK_ENG_BPE = 0, TOK_ENG_SPMLIB = 1 };
enum tok_dec { TOK_DEC_BYTELEVEL = 0, TOK_DEC_SPM = 1 };

/* One pre-tokenizer step (HF pre_tokenizers, applied in order). */
enum tok_step_type {
    TOK_STEP_SPLIT = 0,     /* regex split with a behavior */
    TOK_STEP_BYTELEVEL = 1, /* ByteLevel: optional prefix space, optional GPT-2 regex */
};
enum tok_split_behavior {
    TOK_SPLIT_ISOLATED = 0,
    TOK_SPLIT_REMOVED = 1,
    TOK_SPLIT_MERGED_PREV = 2,
    TOK_SPLIT_MERGED_NEXT = 3,
    TOK_SPLIT_CONTIGUOUS = 4,
};
typedef struct tok_step {
    int type;
    void *re;            /* pcre2_code_8 *, or NULL (ByteLevel without regex) */
    int behavior;
    int invert;
    int add_prefix_space;
} tok_step;

/* Byte-level / char-level BPE model state (HF tokenizers' BPE). */
typedef struct tok_bpe {
    /* merges: open-addressing hash of (left id, right id) -> rank, result */
    uint64_t *mkey;    /* ((uint64)left << 32 | right) + 1; 0 = empty */
    int32_t *mrank;
    int32_t *mres;
    uint32_t mmask;
    int32_t n_merges;
    int byte_level;    /* initial symbols = GPT-2 mapped bytes */
    int byte_fallback; /* char-level: unknown chars -> <0xXX> tokens */
    int fuse_unk;
    int ignore_merges; /* whole pre-token in vocab -> single id */
    int32_t byte_tok[256]; /* byte_level: id of the mapped char; fallback: id of <0xXX>; -1 */
    /* normalizer / Metaspace (SentencePiece-style tokenizer.json) */
    int norm_prepend;       /* Prepend("▁") normalizer */
    int norm_replace_space; /* Replace(" ", "▁") normalizer */
    int meta;               /* Metaspace pre-tokenizer present */
    int meta_prepend;       /* 0 never, 1 always, 2 first */
    int meta_split;
    tok_step steps[TOK_MAX_STEPS];
    int n_steps;
} tok_bpe;

struct tok_tokenizer {
    int kind;   /* enum tok_kind */
    int engine; /* enum tok_engine */
    int dec;    /* enum tok_dec */
    int32_t n_vocab;

    tok_buf text;      /* all piece strings (text.p) */
    uint32_t *off, *len;
    tok_buf dtext;     /* decoded bytes of every token (dtext.p) */
    uint32_t *doff, *dlen;
    uint8_t *attr;     /* enum tok_attr */
    uint8_t *flags;    /* TOKF_* */
    int16_t *byteval;  /* SPM decode: byte of a "<0xXX>" piece, else -1 */

    int32_t *hslot;    /* piece hash: id or -1 */
    uint32_t hmask;

    tok_added *added;
    int n_added, cap_added;
    int32_t added_first[257]; /* added[] index range per first byte */

    int32_t bos, eos, unk;
    int add_bos, add_eos;
    int32_t eog[TOK_MAX_EOG];
    int n_eog;
    int max_token_bytes;

    tok_bpe *bpe;      /* engine == TOK_ENG_BPE */
    void *spm;         /* engine == TOK_ENG_SPMLIB: tok_spm_shim * */
    int spm_add_dummy_prefix;
};

/* ---- tok.c helpers for the loaders ---- */

/* Allocates an empty tokenizer with room for n pieces (ids 0..n-1, all
 * empty). Returns NULL on OOM. */
tok_tokenizer *tok__alloc(int32_t n);
/* Sets piece id's string (copied). Returns 0 or NI_ENOMEM. */
int tok__set_piece(tok_tokenizer *t, int32_t id, const char *s, size_t n);
/* Piece id of string s[0..n), or -1. Valid after tok__build_hash(). */
int32_t tok__find(const tok_tokenizer *t, const char *s, size_t n);
int tok__build_hash(tok_tokenizer *t);
/* Marks id as an added token matched in raw text. */
void tok__mark_added(tok_tokenizer *t, int32_t id, int special, int lstrip, int rstrip);
/* After pieces/attrs/flags/ids are set: builds decoded bytes, the added-token
 * index and the eog set; validates ids. Returns 0 or a NI_E* code. */
int tok__finish(tok_tokenizer *t, char *err, size_t errlen);
/* Adds id to the end-of-generation set (ignored if <0, duplicate or full). */
void tok__add_eog(tok_tokenizer *t, int32_t id);

/* GPT-2 bytes_to_unicode: code point of byte b; inverse returns -1 for code
 * points that are not in the map. */
uint32_t tok__byte_to_cp(uint8_t b);
int tok__cp_to_byte(uint32_t cp);

/* UTF-8: length of the sequence at s[0..n) if it is one complete valid
 * character, 0 if s is a valid but incomplete prefix (needs more bytes), or
 * -k if the first k bytes form a maximal invalid subpart (k >= 1), following
 * the Unicode/WHATWG "maximal subpart" rule that Rust's from_utf8_lossy uses. */
int tok__utf8_check(const unsigned char *s, size_t n);
/* Decodes one valid UTF-8 char; returns its length (1..4) and stores the code
 * point; on invalid input returns 1 and cp = 0xFFFD. */
int tok__utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);
int tok__utf8_encode(uint32_t cp, char *out);

/* Growable id vector. */
typedef struct tok_ids {
    int32_t *p;
    size_t n, cap;
    int oom;
} tok_ids;
void tok__ids_push(tok_ids *v, int32_t id);

/* tokenizer.ggml.token_type as a 4-byte integer array (INT32 or UINT32
 * storage). Returns 0 with *out NULL when absent, NI_EFORMAT when present with
 * another type or a length different from n. */
int tok__gguf_types(const gguf_ctx *g, uint64_t n, const gguf_kv **out);

/* ---- tok_bpe.c ---- */

/* Compiles a pcre2 pattern (UTF + UCP, JIT when available) into a step. */
int tok__step_regex(tok_step *st, const char *pattern, size_t plen, int behavior, int invert,
                    char *err, size_t errlen);
/* A ByteLevel step (use_regex -> GPT-2 pattern). */
int tok__step_bytelevel(tok_step *st, int use_regex, int add_prefix_space, char *err,
                        size_t errlen);
/* Standard steps for a GGUF tokenizer.ggml.pre name. Returns 0,
 * NI_EUNSUPPORTED for an unknown name. Sets *ignore_merges. */
int tok__bpe_pre_for_gguf(tok_bpe *b, const char *pre, size_t plen, int *ignore_merges,
                          char *err, size_t errlen);
/* Adds a merge (left, right) -> res with the given rank (later ranks of the
 * same pair overwrite earlier ones, like HF). Returns 0 or NI_ENOMEM. */
int tok__bpe_add_merge(tok_bpe *b, int32_t left, int32_t right, int32_t res, int32_t rank);
int tok__bpe_alloc_merges(tok_bpe *b, size_t n);
/* Parses "left right" / (left, right) strings into a merge. Unknown pieces
 * or a result not in the vocab skip the merge (returns 0). */
int tok__bpe_merge_strs(tok_tokenizer *t, const char *l, size_t ln, const char *r, size_t rn,
                        int32_t rank);
/* Fills byte_tok[] from the vocab (byte-level map or <0xXX> pieces). */
void tok__bpe_init_bytes(tok_tokenizer *t);
void tok__bpe_free(tok_bpe *b);
/* Builds a byte-level BPE tokenizer from GGUF tokenizer.ggml.{tokens,merges,
 * token_type,pre} (ids/eog are set by the caller). */
int tok__bpe_from_gguf(tok_tokenizer **out, const gguf_ctx *g, char *err, size_t errlen);
/* Encodes one non-special segment text[0..len) (first: the segment starts at
 * offset 0 of the whole input, for Metaspace prepend_scheme "first"). */
int tok__bpe_encode_segment(const tok_tokenizer *t, const char *text, size_t len, int first,
                            tok_ids *out);

/* ---- tok_spm.c ---- */

/* Loads a serialized SentencePiece ModelProto (tokenizer.model bytes):
 * vocab, attributes, unk/bos/eos ids and the libsentencepiece processor. */
int tok__spm_from_proto(tok_tokenizer **out, const void *proto, size_t n, const char *what,
                        char *err, size_t errlen);
/* Builds a SentencePiece tokenizer from GGUF tokenizer.ggml.* arrays. */
int tok__spm_from_gguf(tok_tokenizer **out, const gguf_ctx *g, char *err, size_t errlen);
void tok__spm_free_shim(void *shim);
int tok__spm_encode_segment(const tok_tokenizer *t, const char *text, size_t len, tok_ids *out);

/* ---- tok_hf.c ---- */
int tok__hf_load(tok_tokenizer **out, const char *dir, char *err, size_t errlen);

#endif
