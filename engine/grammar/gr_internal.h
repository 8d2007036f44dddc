/*
 * gr_internal.h - the compiled grammar's layout, shared by the builder
 * (gr_build.c) and the matcher (gr_match.c). Not for use outside
 * engine/grammar.
 *
 * A compiled grammar is one flat element array. Each alternative of each
 * rule is a run of SET / REF elements closed by an END element; rule r's
 * alternatives start at alt_pos[alt_off[r] .. alt_off[r+1]). A parser
 * position is an index into elems: the next element to match.
 */
#ifndef NI_GR_INTERNAL_H
#define NI_GR_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "grammar.h"

enum gr_kind {
    GR_K_SET = 0, /* arg: index into sets */
    GR_K_REF = 1, /* arg: rule id */
    GR_K_END = 2, /* end of an alternative */
};

#define GR_KIND(e) ((e) >> 30)
#define GR_ARG(e) ((e) & 0x3fffffffu)
#define GR_ELEM(kind, arg) (((uint32_t)(kind) << 30) | (uint32_t)(arg))

struct gr_grammar {
    uint32_t *elems;
    int n_elems;
    int32_t *alt_off; /* [n_rules + 1] */
    int32_t *alt_pos; /* [alt_off[n_rules]] */
    int n_rules;
    int root;
    uint8_t (*sets)[32];
    int n_sets;
};

/* Decodes the UTF-8 code point at s[0..left) (left >= 1) into *cp and
 * returns its length; an invalid lead byte is taken as Latin-1 (length 1).
 * Shared by the regex and GBNF readers. */
int gr_utf8_decode(const unsigned char *s, size_t left, uint32_t *cp);

/* The value of hex digit c, or -1. */
int gr_hexval(int c);

/* The builder's limits (for the front ends). */
const gr_limits *gr_b_limits(const gr_builder *b);

#define GR_HAS(set, c) (((set)[(uint8_t)(c) >> 3] >> ((uint8_t)(c) & 7)) & 1)

#endif
