/*
 * grammar.h - constrained decoding: grammars over bytes, compiled from GBNF,
 * regular expressions, JSON Schema or choice lists, and the per-request
 * automaton that turns a grammar into a token mask for every step.
 *
 * Design
 *   A grammar (gr_grammar) is a context-free grammar over BYTES: rules of
 *   alternatives, each a sequence of byte sets (256-bit) and rule
 *   references. Characters outside ASCII are expanded by the compilers into
 *   their UTF-8 byte sequences, so matching never decodes UTF-8 and a
 *   negated class only admits well-formed UTF-8. Every front end (GBNF
 *   text, regex, JSON Schema, choices) goes through one builder
 *   (gr_builder), which refuses left recursion and a repetition of
 *   something that can be empty, and caps the size: compilation is linear
 *   in the output and bounded by gr_limits, so a hostile schema or pattern
 *   costs a 400, never a stall.
 *
 *   Matching is a pushdown automaton in the style of an Earley/GLR stack
 *   set: a state is the set of parser stacks whose top is a byte set. Stacks
 *   are hash-consed persistent lists (equal stacks are one node), states are
 *   interned sets of stacks, and byte transitions are memoised, so a
 *   request's gr_matcher builds a DFA lazily as it is used: the second time
 *   a state is seen its transitions cost one hash lookup, and its token mask
 *   (computed by walking the vocabulary trie, skipping every subtree whose
 *   first bytes already fail) is cached.
 *
 *   The vocabulary (gr_vocab) is built once per model: a trie of every
 *   token's bytes in preorder with subtree ends, plus the end-of-generation
 *   tokens, which the mask admits exactly when the bytes so far form a
 *   complete sentence of the grammar.
 *
 * Ownership: gr_grammar is immutable and may be shared; a gr_matcher holds a
 * borrowed grammar and vocab (both must outlive it) and is used by one
 * thread (the engine's). Siblings of an n > 1 request share one matcher and
 * keep their own gr_state.
 */
#ifndef NI_GRAMMAR_H
#define NI_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

typedef struct gr_grammar gr_grammar;
typedef struct gr_builder gr_builder;
typedef struct gr_vocab gr_vocab;
typedef struct gr_matcher gr_matcher;

/* A matcher state: >= 0, GR_DEAD (no continuation: the bytes so far are
 * not a prefix of any sentence) or GR_ERROR (the matcher failed:
 * gr_matcher_error says why; the request cannot go on). */
typedef int32_t gr_state;
#define GR_DEAD ((gr_state)-1)
#define GR_ERROR ((gr_state)-2)

/* Caps on compilation (zero fields take the defaults in brackets). */
typedef struct gr_limits {
    int max_elems;   /* grammar elements after expansion [200000] */
    int max_rules;   /* rules [50000] */
    int max_repeat;  /* the largest bound of a counted repetition {m,n} [10000] */
    int max_depth;   /* nesting of groups / schemas while compiling [64] */
} gr_limits;

/* ---- builder (used by the compilers; public for tests and new front ends) ---- */

/* Unicode code point range [lo, hi] for gr_b_class. */
typedef struct gr_range {
    uint32_t lo, hi;
} gr_range;

/* Creates an empty builder. lim may be NULL (defaults). Returns 0 or NI_ENOMEM. */
int gr_builder_new(gr_builder **out, const gr_limits *lim);
void gr_builder_free(gr_builder *b);

/* A new rule with no alternatives; name may be NULL (anonymous). Named rules
 * are found again by gr_b_named. Returns the rule id (>= 0) or a negative code. */
int gr_b_rule(gr_builder *b, const char *name);

/* The rule called name, created (still undefined) when it does not exist yet,
 * for forward references. Returns its id or a negative code. */
int gr_b_named(gr_builder *b, const char *name, size_t len);

/* Starts a new (empty) alternative of rule; the item functions below append
 * to rule's last alternative (one is started implicitly). Returns 0 or < 0. */
int gr_b_alt(gr_builder *b, int rule);

/* Appends a byte set (bits[c >> 3] >> (c & 7) & 1 admits byte c). */
int gr_b_bytes(gr_builder *b, int rule, const uint8_t bits[32]);
/* Appends the bytes of s[0..len) one set each. */
int gr_b_lit(gr_builder *b, int rule, const char *s, size_t len);
/* Appends a reference to rule sub. */
int gr_b_ref(gr_builder *b, int rule, int sub);
/* Appends one code point from ranges[0..n) (negate: any valid code point
 * NOT in them; surrogates are never admitted), as UTF-8. */
int gr_b_class(gr_builder *b, int rule, const gr_range *ranges, int n, int negate);

/* A new rule matching sub repeated min..max times (max < 0: unbounded).
 * Refuses (NI_EINVAL, message via gr_builder_error) a bound over
 * max_repeat. Returns the rule id or a negative code. */
int gr_b_repeat(gr_builder *b, int sub, int min, int max);

/* Sets the builder's error message (printf-style) and returns code; the
 * compilers use it so that every failure names what was wrong. */
int gr_b_fail(gr_builder *b, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const char *gr_builder_error(const gr_builder *b);

/* Finishes: root is the start rule. Checks that every referenced rule is
 * defined, that no rule is left-recursive (a rule that can reach itself
 * without consuming a byte) and the size limits. Returns 0 with *out (the
 * builder may then be freed), or a negative code with a message in err. */
int gr_b_finish(gr_builder *b, int root, gr_grammar **out, char *err, size_t errlen);

void gr_grammar_free(gr_grammar *g);
/* Elements and rules of g (for the size report and tests). */
int gr_grammar_size(const gr_grammar *g, int *n_rules);

/* ---- front ends: each returns 0 with *out or a negative code (NI_EINVAL:
 * the input is wrong or unsupported, NI_ERANGE: over a limit) with a
 * one-line message in err naming the place. lim may be NULL. ---- */

/* GBNF (llama.cpp's grammar format): `name ::= alt | alt`, "literals",
 * [classes] with ranges and ^, ( groups ), postfix * + ? {m} {m,} {m,n},
 * # comments; the start rule is `root`. */
int gr_compile_gbnf(const char *text, size_t len, const gr_limits *lim, gr_grammar **out, char *err,
                    size_t errlen);

/* A regular expression (full match): literals, ., classes with ranges and
 * negation, \d \w \s \D \W \S, escapes (\n \t \xHH \uHHHH), groups ( ),
 * (?: ), alternation, * + ? {m} {m,} {m,n} (a trailing ? for laziness is
 * accepted and changes nothing); ^ at the start and $ at the end are
 * accepted. Backreferences and lookaround are refused. */
int gr_compile_regex(const char *re, size_t len, const gr_limits *lim, gr_grammar **out, char *err,
                     size_t errlen);

/* Exactly one of the n strings (vLLM's guided_choice). */
int gr_compile_choice(const char *const *choices, const size_t *lens, int n, const gr_limits *lim,
                      gr_grammar **out, char *err, size_t errlen);

/* JSON Schema (the subset and output shape listed in gr_schema.c): a value
 * valid against schema. Unsupported keywords are refused by name with the
 * JSON pointer of their place. */
struct json_t;
int gr_compile_schema(const struct json_t *schema, const gr_limits *lim, gr_grammar **out,
                      char *err, size_t errlen);

/* Appends to b a rule matching the JSON text of values valid against schema
 * (NULL: any JSON object) and returns its id, or a negative code with the
 * message in gr_builder_error (for grammars that embed JSON, e.g. tool calls). */
int gr_b_schema(gr_builder *b, const struct json_t *schema);

/* Any JSON object (response_format {"type": "json_object"}). */
int gr_compile_json_object(const gr_limits *lim, gr_grammar **out, char *err, size_t errlen);

/* Appends to rule the grammar of the regex re (used by the JSON Schema
 * compiler for "pattern"); json_string: only characters that need no escape
 * inside a JSON string are admitted (no '"', '\\' or controls). */
int gr_b_regex(gr_builder *b, int rule, const char *re, size_t len, int json_string);

/* ---- vocabulary ---- */

/* Builds the trie of n_tokens tokens: bytes[i][0..lens[i]) (a token with
 * length 0, e.g. a control token, is never admitted) and the end tokens
 * ends[0..n_ends) (ids admitted only in a complete state). Returns 0 or
 * NI_ENOMEM / NI_EINVAL. */
int gr_vocab_new(gr_vocab **out, int n_tokens, const char *const *bytes, const size_t *lens,
                 const int32_t *ends, int n_ends);
void gr_vocab_free(gr_vocab *v);
int gr_vocab_size(const gr_vocab *v);
/* Trie nodes (for reports). */
int gr_vocab_nodes(const gr_vocab *v);

/* ---- matcher ---- */

/* A matcher of g over v, using at most mem_cap bytes of caches (0: 256 MiB).
 * Returns 0 or NI_ENOMEM. */
int gr_matcher_new(gr_matcher **out, const gr_grammar *g, const gr_vocab *v, size_t mem_cap);
void gr_matcher_free(gr_matcher *m);

/* The state before any byte (or GR_ERROR). */
gr_state gr_matcher_start(gr_matcher *m);

/* The state after feeding token tok in state s: GR_DEAD when the grammar does
 * not admit it; an end token in a complete state leaves the state as it is.
 * Returns the state, GR_DEAD, or GR_ERROR. */
gr_state gr_matcher_next(gr_matcher *m, gr_state s, int32_t tok);

/* The state after feeding bytes in state s (tests; the engine feeds tokens). */
gr_state gr_matcher_feed(gr_matcher *m, gr_state s, const char *bytes, size_t len);

/* The NI_E* code behind the last GR_ERROR (NI_ENOMEM: the caches reached
 * mem_cap; NI_ERANGE: reference nesting too deep). */
int gr_matcher_error(const gr_matcher *m);

/* Whether the bytes that led to s form a complete sentence (end tokens are
 * admitted), and whether nothing can follow (only end tokens are). */
int gr_matcher_accepting(const gr_matcher *m, gr_state s);
int gr_matcher_finished(const gr_matcher *m, gr_state s);

/* The token mask of s: allow[(vocab + 31) / 32] gets bit (t & 31) of word
 * t >> 5 set iff token t may follow. Cached per state (the pointer stays
 * valid until the next call on m). Returns 0 with *allow, or a negative code. */
int gr_matcher_mask(gr_matcher *m, gr_state s, const uint32_t **allow);

/* Cache bytes in use (for reports and tests). */
size_t gr_matcher_bytes(const gr_matcher *m);

/* Sets logits[t] = -INFINITY for every token t the mask does not allow. */
void gr_apply_mask(float *logits, int vocab, const uint32_t *allow);

#endif
