/*
 * spm_shim.h - the C face of libsentencepiece (the project's only C++,
 * tokenizer/spm_shim.cc). Every entry point catches all C++ exceptions and
 * turns them into NI_E* codes, so no exception ever crosses into C.
 *
 * A loaded shim wraps one sentencepiece::SentencePieceProcessor; Encode on it
 * is const and thread-safe, so one shim serves every thread.
 */
#ifndef NI_SPM_SHIM_H
#define NI_SPM_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tok_spm_shim tok_spm_shim;

/* Loads a serialized ModelProto (the bytes of a tokenizer.model). Returns 0
 * and *out, or NI_ENOMEM / NI_EFORMAT with sentencepiece's message in err. */
int tok_spm_shim_load(const void *proto, size_t n, tok_spm_shim **out, char *err, size_t errlen);

/* Encodes text[0..n) (UTF-8) with the model's own normalizer (dummy prefix,
 * whitespace escaping, byte fallback). On success returns 0 and a malloc'd
 * array *ids of *n_ids ids (caller frees; NULL when empty); else NI_E*. */
int tok_spm_shim_encode(const tok_spm_shim *s, const char *text, size_t n, int32_t **ids, size_t *n_ids);

/* Number of pieces of the loaded model. */
int tok_spm_shim_size(const tok_spm_shim *s);

void tok_spm_shim_free(tok_spm_shim *s);

#ifdef __cplusplus
}
#endif

#endif
