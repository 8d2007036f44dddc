/*
 * sampler_state.h - private to engine/backend/sampler.c and sampler_state.c:
 * what the sampling passes (sampler.c) use of the request state that
 * sampler_state.c owns (the RNG and the penalty table of smp_state).
 */
#ifndef NI_SAMPLER_STATE_H
#define NI_SAMPLER_STATE_H

#include <stdint.h>

#include "sampler.h"

/* Advances the xoshiro256** state s by one step and returns its output (the
 * one draw a greedy smp_sample consumes; smp_next_uniform maps it to [0, 1)). */
uint64_t smp_rng_next(uint64_t s[4]);

/* Steps 2-4 of sampler.h on logits[] for every token in s's table:
 * repetition (rep: l > 0 ? l / r : l * r), then for output count > 0
 * (fp) l -= frequency * count, l -= presence. rep / fp say which of
 * p's penalties are on; s must track them. */
void smp_apply_penalties(const smp_state *s, const smp_params *p, int rep, int fp, float *logits);

#endif
