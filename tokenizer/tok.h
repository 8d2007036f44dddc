/*
 * tok.h - tokenizers: SentencePiece (LLaMA 2 / TinyLlama, via libsentencepiece)
 * and GPT-2 style byte-level BPE (SmolLM2, LLaMA 3, Qwen3, via pcre2 pre-split).
 *
 * Design: one opaque tok_tokenizer behind a small C API; which algorithm runs
 * is decided once at load. A tokenizer is immutable after load and safe to use
 * from several threads at once (encode/decode keep no hidden state); streaming
 * state lives in a caller-owned tok_stream.
 */
#ifndef NI_TOK_H
#define NI_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "engine/format/gguf.h"

typedef struct tok_tokenizer tok_tokenizer;

enum tok_kind { TOK_KIND_SPM = 0, TOK_KIND_BPE = 1 };

/* Builds a tokenizer from GGUF tokenizer.ggml.* metadata (model "llama" ->
 * SentencePiece, "gpt2" -> byte-level BPE; pre-tokenizer regexes chosen from
 * tokenizer.ggml.pre). Returns 0 or a negative NI_E* code with a message. */
int tok_load_gguf(tok_tokenizer **out, const gguf_ctx *g, char *err, size_t errlen);

/* Builds a tokenizer from a Hugging Face directory: tokenizer.json (BPE, or
 * SPM-converted Llama tokenizers) or tokenizer.model (SentencePiece), plus
 * tokenizer_config.json / special_tokens_map.json for bos/eos/add_bos and
 * generation_config.json eos ids when present. */
int tok_load_hf(tok_tokenizer **out, const char *dir, char *err, size_t errlen);

void tok_free(tok_tokenizer *t);

int tok_kind(const tok_tokenizer *t);
int tok_vocab_size(const tok_tokenizer *t);
int tok_bos(const tok_tokenizer *t);      /* -1 if none */
int tok_eos(const tok_tokenizer *t);      /* -1 if none */
int tok_add_bos(const tok_tokenizer *t);  /* 1 if the model expects BOS prepended */
/* 1 if id ends generation (eos, eot, <|im_end|>, <|eot_id|>, ...). */
int tok_is_eog(const tok_tokenizer *t, int32_t id);
/* Id of an exact token string (e.g. "<|im_end|>"), or -1. */
int32_t tok_lookup(const tok_tokenizer *t, const char *piece);

/* 1 if id is a special token (control/unknown or an HF added token marked
 * special): matched in text only with parse_special, dropped by tok_decode. */
int tok_is_special(const tok_tokenizer *t, int32_t id);
/* Longest tok_token_bytes() result over the vocabulary. */
int tok_max_token_bytes(const tok_tokenizer *t);
/* The raw vocabulary string of id (e.g. "\xc4\xa0the" for byte-level "Ġthe",
 * "▁the" for SPM), as a view valid until tok_free (not NUL-terminated).
 * Returns 0 or NI_EINVAL. */
int tok_token_piece(const tok_tokenizer *t, int32_t id, const char **piece, size_t *len);

/* Encodes text[0..len). add_bos: prepend BOS when the model has one.
 * parse_special: match special/added tokens in the text (chat templates) as
 * single ids; when 0 they are encoded as plain text (HF
 * split_special_tokens=True). Non-special added tokens (HF "special": false,
 * GGUF user-defined) are always matched, as in HF. Bytes that are not valid
 * UTF-8 are replaced by U+FFFD first. The ids equal HF
 * encode(text, add_special_tokens=False) (plus BOS when add_bos).
 * Writes up to cap ids; returns the total number of ids (may exceed cap:
 * call again with a bigger buffer) or a negative NI_E* code. */
int tok_encode(const tok_tokenizer *t, const char *text, size_t len, int add_bos,
               int parse_special, int32_t *ids, int cap);

/* Decodes ids into buf as the HF tokenizer's decode(skip_special_tokens=True)
 * would. Writes at most cap-1 bytes plus a NUL; returns the full length needed
 * (excluding the NUL) or a negative code. */
int tok_decode(const tok_tokenizer *t, const int32_t *ids, int n, char *buf, size_t cap);

/* Raw bytes of one token (byte-level/SPM pieces converted to bytes; special
 * tokens give their text). Returns the byte count written (<= cap) or a
 * negative code. */
int tok_token_bytes(const tok_tokenizer *t, int32_t id, char *buf, size_t cap);

/* Incremental detokenizer for streaming: feed ids one at a time; it only ever
 * emits complete UTF-8 sequences, holding back an incomplete tail until the
 * next token completes it, and reproduces tok_decode's whitespace handling
 * (e.g. SPM's leading-space strip on the first piece). */
typedef struct tok_stream {
    const tok_tokenizer *t;
    int n_seen;             /* tokens pushed so far */
    int pending_len;        /* bytes of an incomplete UTF-8 sequence held back */
    char pending[8];
    int at_start;           /* SPM: no text byte produced yet (leading-space strip) */
} tok_stream;

void tok_stream_init(tok_stream *s, const tok_tokenizer *t);
/* Pushes one id; writes the newly completed text to out (no NUL) and returns
 * its length, or a negative code: NI_EINVAL for an id out of range,
 * NI_ERANGE if cap < 3 * (token bytes + 8) (invalid bytes may expand to
 * U+FFFD); cap >= 3 * tok_max_token_bytes(t) + 24 always suffices. Special
 * tokens produce nothing. For valid UTF-8 the concatenated output equals
 * tok_decode() of the same ids; held-back bytes stay across special tokens. */
int tok_stream_push(tok_stream *s, int32_t id, char *out, size_t cap);
/* Smallest cap tok_stream_push_part accepts. */
#define TOK_STREAM_PART_MIN 48
/* tok_stream_push for a token of any length, one piece at a time: call with
 * *off = 0, then again with the same id while *more is 1. Each call writes
 * the text completed by the next bytes of the token that fit in cap (at
 * least (cap - 24) / 3 of them; cap >= TOK_STREAM_PART_MIN) and advances
 * *off; an incomplete UTF-8 sequence cut by a piece's end is held like one
 * cut by a token's end. The pieces' outputs concatenate to what
 * tok_stream_push gives with a large enough cap. Returns the length written
 * or NI_EINVAL / NI_ERANGE (cap too small). */
int tok_stream_push_part(tok_stream *s, int32_t id, size_t *off, int *more, char *out,
                         size_t cap);
/* Flushes whatever is held back (an incomplete sequence becomes U+FFFD).
 * Needs cap >= 24; returns the bytes written or a negative code. */
int tok_stream_flush(tok_stream *s, char *out, size_t cap);

#endif
