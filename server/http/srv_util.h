/*
 * srv_util.h - small helpers shared by the server modules: a bounded byte
 * buffer, UTF-8 validation/repair, constant-time comparison, random ids.
 *
 * Design: nothing here knows about HTTP, libuv or the engine, so every
 * function is unit-testable (test/test_srv_api.c). All functions are
 * reentrant; a srv_buf or srv_rng belongs to one thread at a time.
 */
#ifndef NI_SRV_UTIL_H
#define NI_SRV_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* A growable byte buffer with a hard size limit. Bytes [off, len) are the
 * live contents (a FIFO: append at the end, consume from the front).
 * Invariants: off <= len <= cap; len - off <= limit; data is NULL iff cap == 0.
 * Zero-initialise, then set limit (0 means unlimited). */
typedef struct srv_buf {
    char *data;
    size_t off, len, cap;
    size_t limit;
} srv_buf;

/* Appends n bytes. Returns 0, NI_ERANGE when the live size would exceed
 * limit (nothing appended), or NI_ENOMEM. Keeps one spare byte so that
 * srv_buf_cstr() never reallocates. */
int srv_buf_append(srv_buf *b, const void *p, size_t n);

/* printf-style append; same returns as srv_buf_append (NI_EINVAL on a bad format). */
int srv_buf_printf(srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Live bytes and their count. */
static inline const char *srv_buf_ptr(const srv_buf *b) { return b->data ? b->data + b->off : ""; }
static inline size_t srv_buf_size(const srv_buf *b) { return b->len - b->off; }

/* NUL-terminates the live bytes (in the spare byte) and returns them. */
const char *srv_buf_cstr(srv_buf *b);

/* Drops n (<= size) bytes from the front. */
void srv_buf_consume(srv_buf *b, size_t n);

/* Empties the buffer, keeping its memory; srv_buf_free releases it. */
void srv_buf_clear(srv_buf *b);
void srv_buf_free(srv_buf *b);

/* 1 when s[0..n) is valid UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int srv_utf8_valid(const char *s, size_t n);

/* Appends s[0..n) to out with every invalid UTF-8 sequence replaced by
 * U+FFFD (as Python's errors="replace"). Returns srv_buf_append's code. */
int srv_utf8_sanitize(srv_buf *out, const char *s, size_t n);

/* Compares two secrets in time that depends only on their lengths, never on
 * where they differ. Returns 1 when equal. */
int srv_ct_equal(const char *a, size_t alen, const char *b, size_t blen);

/* splitmix64-seeded xoshiro-like generator for ids and fallback seeds (not
 * for cryptography). Seed once from srv_rng_seed (getrandom, or time). */
typedef struct srv_rng {
    uint64_t s;
} srv_rng;
void srv_rng_seed(srv_rng *r);
uint64_t srv_rng_next(srv_rng *r);

/* Writes prefix followed by 32 random lowercase hex digits into out (cap >=
 * strlen(prefix) + 33). Returns out. */
char *srv_random_id(srv_rng *r, const char *prefix, char *out, size_t cap);

#endif
