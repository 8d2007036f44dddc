/*
 * stop.h - output handling of one generated sequence: when it finishes
 * (EOS, stop token ids, stop strings, max_tokens, the context) and how much
 * of its decoded text may be shown now.
 *
 * Design: the module sees token ids and decoded bytes, never a model, a
 * tokenizer or a backend, so it can be tested alone; the caller keeps the
 * detokenizer. One token takes two calls, because what the id alone decides
 * comes first and changes what the caller decodes:
 *   1. stop_check_token(): EOS / a stop id (STOP: the token's text is never
 *      shown, so the caller does not decode it), or max_tokens / the context
 *      reached (LENGTH), else NONE.
 *   2. the caller decodes the token (unless STOP) and, when the sequence ends,
 *      flushes its decoder; stop_push_text() appends those bytes to the held
 *      text, looks for stop strings and says how many bytes may be released.
 *
 * Text release rules (OpenAI semantics):
 *   - a stop string ends the sequence (STOP) and is never released, nor
 *     anything after it; the first stop string to complete ends the text
 *     (a longer one that started earlier but is not complete yet loses),
 *     and of several completed by the same token the earliest-starting one;
 *   - while the sequence goes on, the longest tail of the held text that is a
 *     proper prefix of some stop string is held back (it may still complete
 *     across the next tokens), and so is an incomplete UTF-8 character at the
 *     end (a lead byte still waiting for its continuation bytes): released
 *     text never ends inside a character that may still complete;
 *   - when a stop string completes, exactly the bytes before it are released
 *     (a stop string that starts inside a character, i.e. is not valid UTF-8
 *     on its own, cuts that character: such bytes go out as they are);
 *   - when the sequence ends otherwise (EOS, a stop id, LENGTH) every held
 *     byte is released, and an incomplete character at the end becomes
 *     U+FFFD (the engine has flushed its decoder by then, so it sees none).
 *   Invalid UTF-8 is passed through as given: repairing it is the decoder's job.
 *
 * Memory: stop_spec (per request) and stop_state (per sequence) are plain
 * structs with fixed-size arrays: nothing is allocated, so they can sit inside
 * objects allocated once per request and be used in the step loop.
 *
 * Invariants of a stop_state between calls of a going sequence: the released
 * text of the last call is hold[0 .. released) and stays valid until the
 * next call; the held bytes hold[released .. len) are at most
 * STOP_MAX_STR_LEN - 1 (a proper prefix of a stop string, or an incomplete
 * character of at most 3 bytes), which leaves room for STOP_MAX_TEXT more.
 */
#ifndef NI_STOP_H
#define NI_STOP_H

#include <stdint.h>

#define STOP_MAX_STR 8       /* stop strings per request */
#define STOP_MAX_STR_LEN 256 /* bytes per stop string */
#define STOP_MAX_IDS 16      /* stop token ids per request */
#define STOP_MAX_TEXT 2304   /* most bytes one stop_push_text() call may add */

/* Why a sequence ends. */
typedef enum stop_reason {
    STOP_REASON_NONE = 0,   /* more tokens follow */
    STOP_REASON_STOP = 1,   /* EOS, a stop token id or a stop string */
    STOP_REASON_LENGTH = 2, /* max_tokens or the context reached */
} stop_reason;

/* The stop conditions of one request, shared by its n sequences (read only
 * once filled). Owns copies of the stop strings. */
typedef struct stop_spec {
    int max_tokens; /* generated tokens at which a sequence ends, >= 1 */
    int max_len;    /* prompt + generated tokens at which it ends (the context) */
    int ignore_eos; /* 1: an end-of-generation token is an ordinary token */
    int32_t ids[STOP_MAX_IDS];
    int n_ids;
    char str[STOP_MAX_STR][STOP_MAX_STR_LEN]; /* not NUL-terminated: see str_len */
    int str_len[STOP_MAX_STR];
    int n_str;
} stop_spec;

/* The text of one sequence not yet released. */
typedef struct stop_state {
    int len;      /* bytes in hold */
    int released; /* leading bytes of hold handed out by the last stop_push_text() */
    char hold[STOP_MAX_STR_LEN + STOP_MAX_TEXT + 4]; /* + 4: room for a U+FFFD at the end */
} stop_state;

/* Fills sp. ids[0..n_ids) are the stop token ids, strs[0..n_strs) the stop
 * strings (NUL-terminated, copied). Returns 0, or NI_EINVAL when max_tokens
 * < 1, max_len < 1, a count is negative or over its STOP_MAX_*, ids / strs is
 * NULL with a non-zero count, or a string is NULL, empty or longer than
 * STOP_MAX_STR_LEN bytes (sp is then unusable). */
int stop_spec_init(stop_spec *sp, int max_tokens, int max_len, int ignore_eos, const int32_t *ids,
                   int n_ids, const char *const *strs, int n_strs);

/* Empties st: a new sequence (also a forked one: siblings start with nothing
 * held). Cannot fail. */
void stop_state_init(stop_state *st);

/* What the token tok alone decides, given is_eog (1 when the tokenizer calls
 * tok an end-of-generation token), n_gen (generated tokens including tok) and
 * n_tokens (prompt + generated, including tok): STOP when tok is EOS (unless
 * sp->ignore_eos) or one of sp->ids (the token's text must not be shown);
 * else LENGTH when n_gen >= max_tokens or n_tokens >= max_len; else NONE.
 * Pure. */
stop_reason stop_check_token(const stop_spec *sp, int32_t tok, int is_eog, int n_gen, int n_tokens);

/* Appends the token's decoded bytes[0..n) (0 <= n <= STOP_MAX_TEXT; n == 0 with
 * bytes NULL is fine) to st, where why is stop_check_token()'s verdict for
 * the token. When why != NONE nothing follows: bytes should then include the
 * decoder's flush if its held-back bytes are to be shown. Deterministic; reads
 * sp and changes nothing but st. Returns the final reason: STOP when a stop
 * string is now complete, else why. *text / *text_len get the bytes that may
 * be released now (the rules in the file comment); they stay valid until the
 * next call on st, which drops them from st. After a reason other than NONE
 * st must be re-initialised before reuse. */
stop_reason stop_push_text(stop_state *st, const stop_spec *sp, stop_reason why, const char *bytes,
                           int n, const char **text, int *text_len);

#endif
