/*
 * sampler_state.c - the request side of the sampler (sampler.h): parameter
 * defaults and validation, the per-request RNG and the penalty state.
 *
 * The RNG is xoshiro256**, seeded through splitmix64; smp_sample (sampler.c)
 * consumes one draw per token through smp_rng_next / smp_next_uniform.
 *
 * Penalty state is sparse: one open-addressing table (linear probing,
 * power-of-two capacity, load <= 1/2) mapping token id -> (in prompt bit,
 * output count). Applying penalties (smp_apply_penalties) walks the table,
 * never the vocab. The table is only built when the request's params need
 * it. Invariants: slots with tok < 0 are empty; every stored tok is in
 * [0, vocab).
 */
#include "sampler_state.h"

#include <stdlib.h>
#include <string.h>

#include "engine/util/util.h"

struct smp_slot {
    int32_t tok;  /* -1 = empty */
    uint32_t val; /* SLOT_PROMPT bit | output count */
};

#define SLOT_PROMPT 0x80000000u
#define SLOT_COUNT 0x7fffffffu

/* ---- RNG: splitmix64 seeding, xoshiro256** ----------------------------- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t smp_rng_next(uint64_t s[4]) {
    const uint64_t r = rotl64(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return r;
}

/* uniform double in [0, 1), 53 random bits */
static double xo_uniform(uint64_t s[4]) { return (double)(smp_rng_next(s) >> 11) * 0x1.0p-53; }

/* ---- params ------------------------------------------------------------ */

smp_params smp_params_default(void) {
    smp_params p;
    memset(&p, 0, sizeof p);
    p.temperature = 1.0f;
    p.top_k = -1;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repetition_penalty = 1.0f;
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 0.0f;
    p.logit_bias = NULL;
    p.n_logit_bias = 0;
    p.has_seed = 0;
    p.seed = 0;
    p.logprobs = -1;
    return p;
}

int smp_params_validate(const smp_params *p, int vocab, const char **bad_param) {
#define SMP_BAD(name)                       \
    do {                                    \
        if (bad_param) *bad_param = (name); \
        return NI_EINVAL;                   \
    } while (0)
    if (bad_param) *bad_param = NULL;
    if (!p) SMP_BAD("params");
    if (vocab < 1) SMP_BAD("vocab");
    if (!(p->temperature >= 0.0f && p->temperature <= 100.0f)) SMP_BAD("temperature");
    if (p->top_k < -1) SMP_BAD("top_k");
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) SMP_BAD("top_p");
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f)) SMP_BAD("min_p");
    if (!(p->repetition_penalty > 0.0f && p->repetition_penalty <= 2.0f))
        SMP_BAD("repetition_penalty");
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f)) SMP_BAD("presence_penalty");
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        SMP_BAD("frequency_penalty");
    if (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias)) SMP_BAD("logit_bias");
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        const smp_logit_bias *b = &p->logit_bias[i];
        if (b->token < 0 || b->token >= vocab) SMP_BAD("logit_bias");
        if (!(b->bias >= -100.0f && b->bias <= 100.0f)) SMP_BAD("logit_bias");
    }
    if (p->logprobs < -1 || p->logprobs > SMP_MAX_LOGPROBS) SMP_BAD("logprobs");
    return 0;
#undef SMP_BAD
}

/* ---- token table ------------------------------------------------------- */

static inline uint32_t slot_hash(int32_t tok, uint32_t mask) {
    uint32_t h = (uint32_t)tok * 0x9e3779b1u;
    h ^= h >> 15;
    return h & mask;
}

/* Returns the slot holding tok, or the empty slot where it would go.
 * Requires cap > used (always true: load <= 1/2). */
static struct smp_slot *tab_lookup(const smp_state *s, int32_t tok) {
    const uint32_t mask = s->cap - 1;
    uint32_t i = slot_hash(tok, mask);
    while (s->tab[i].tok >= 0 && s->tab[i].tok != tok) i = (i + 1) & mask;
    return &s->tab[i];
}

/* Grows the table so that `need` entries keep the load <= 1/2. */
static int tab_reserve(smp_state *s, uint64_t need) {
    if (need * 2 <= s->cap) return 0;
    uint64_t cap = s->cap ? s->cap : 16;
    while (need * 2 > cap) cap *= 2;
    if (cap > (1u << 31)) return NI_ENOMEM;
    struct smp_slot *nt = malloc((size_t)cap * sizeof *nt);
    if (!nt) return NI_ENOMEM;
    for (uint64_t i = 0; i < cap; i++) nt[i].tok = -1, nt[i].val = 0;
    struct smp_slot *old = s->tab;
    const uint32_t old_cap = s->cap;
    s->tab = nt;
    s->cap = (uint32_t)cap;
    for (uint32_t i = 0; i < old_cap; i++)
        if (old[i].tok >= 0) *tab_lookup(s, old[i].tok) = old[i];
    free(old);
    return 0;
}

int smp_state_init(smp_state *s, const smp_params *p, int vocab, const int32_t *prompt,
                   int n_prompt, uint64_t fallback_seed, uint32_t stream) {
    if (!s) return NI_EINVAL;
    memset(s, 0, sizeof *s);
    if (!p || vocab < 1 || n_prompt < 0 || (n_prompt > 0 && !prompt)) return NI_EINVAL;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= vocab) return NI_EINVAL;

    s->vocab = vocab;
    s->track_prompt = p->repetition_penalty != 1.0f;
    s->track_output =
        s->track_prompt || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;

    uint64_t x = (p->has_seed ? p->seed : fallback_seed) + (uint64_t)stream * 0xd1b54a32d192ed03ULL;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);

    if (s->track_prompt && n_prompt > 0) {
        int rc = tab_reserve(s, (uint64_t)NI_MIN(n_prompt, vocab));
        if (rc) {
            smp_state_free(s);
            return rc;
        }
        for (int i = 0; i < n_prompt; i++) {
            struct smp_slot *sl = tab_lookup(s, prompt[i]);
            if (sl->tok < 0) {
                sl->tok = prompt[i];
                s->used++;
            }
            sl->val |= SLOT_PROMPT;
        }
    }
    return 0;
}

void smp_state_free(smp_state *s) {
    if (!s) return;
    free(s->tab);
    memset(s, 0, sizeof *s);
}

int smp_reserve(smp_state *s, int n_output) {
    if (!s || n_output < 0) return NI_EINVAL;
    if (!s->track_output || s->vocab < 1) return 0;
    /* distinct tokens never exceed the vocabulary, however long the output */
    const uint64_t need = NI_MIN((uint64_t)s->used + (uint64_t)n_output, (uint64_t)s->vocab);
    return tab_reserve(s, need);
}

int smp_accept(smp_state *s, int32_t tok) {
    if (!s || tok < 0 || tok >= s->vocab) return NI_EINVAL;
    if (s->track_output) {
        int rc = tab_reserve(s, (uint64_t)s->used + 1);
        if (rc) return rc;
        struct smp_slot *sl = tab_lookup(s, tok);
        if (sl->tok < 0) {
            sl->tok = tok;
            s->used++;
        }
        if ((sl->val & SLOT_COUNT) != SLOT_COUNT) sl->val++;
    }
    if (s->n_output < INT32_MAX) s->n_output++;
    return 0;
}

/* ---- penalties, draws ---------------------------------------------------- */

void smp_apply_penalties(const smp_state *s, const smp_params *p, int rep, int fp, float *logits) {
    const float r = p->repetition_penalty, fr = p->frequency_penalty, pr = p->presence_penalty;
    for (uint32_t i = 0; i < s->cap; i++) {
        const struct smp_slot *sl = &s->tab[i];
        if (sl->tok < 0) continue;
        float l = logits[sl->tok];
        const uint32_t cnt = sl->val & SLOT_COUNT;
        if (rep) l = l > 0.0f ? l / r : l * r;
        if (fp && cnt > 0) {
            l -= fr * (float)cnt;
            l -= pr;
        }
        logits[sl->tok] = l;
    }
}

double smp_next_uniform(smp_state *s) { return xo_uniform(s->rng); }
