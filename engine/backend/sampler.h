/*
 * sampler.h - per-request token sampler with vLLM / OpenAI semantics.
 *
 * Pipeline of one smp_sample() call (the order of vLLM v0's LogitsProcessor
 * + Sampler, vllm/model_executor/layers/sampler.py):
 *   1. logit_bias        logits[id] += bias (vLLM applies it as a logits
 *                        processor, before the sampler; duplicates add up)
 *   2. repetition        for every token in prompt OR output (HF/vLLM):
 *                        l > 0 ? l / r : l * r
 *   3. frequency         l -= frequency * count   (output tokens only)
 *   4. presence          l -= presence * (count > 0) (output tokens only)
 *   -- on return, logits[] holds exactly the result of steps 1-4 --
 *   5. temperature       T < 1e-5 (vLLM's _SAMPLING_EPS) = greedy: argmax of
 *                        the step-4 logits, lowest index on ties; top_k,
 *                        top_p and min_p are then ignored (vLLM resets them).
 *                        Otherwise probabilities are softmax(l / T).
 *   6. top_k             keep tokens whose logit >= the k-th largest logit
 *                        (ties at the boundary are all kept, as vLLM's mask
 *                        `logits_sort < kth_value` does).
 *   7. top_p             over the softmax of the top_k survivors, ranked by
 *                        probability (ties: lower id ranks first), keep a
 *                        token iff the mass ranked strictly above it is < p:
 *                        the smallest prefix whose mass reaches p, and
 *                        always the top token (vLLM's `probs_sum <= 1 - p`
 *                        mask with `top_p_mask[:, -1] = False`).
 *   8. min_p             drop tokens with prob < min_p * max prob (applied
 *                        after top_k/top_p as in vLLM v0; it depends only on
 *                        the ratio to the top token, so it is a pure filter).
 *   9. draw              one uniform u in [0,1) from the request's RNG,
 *                        inverse CDF over the survivors.
 *
 * Logprobs: reported from the RAW model distribution, log_softmax of the
 * logits as passed in, before steps 1-9 (vLLM's default, logprobs_mode
 * "raw_logprobs"). The chosen token's logprob is always filled when
 * p->logprobs >= 0; p->logprobs alternatives (0..20) come sorted by logprob
 * descending, lower id first on ties. The chosen token may or may not be
 * among them (OpenAI's top_logprobs).
 *
 * Determinism: a request's RNG (xoshiro256**, seeded through splitmix64 from
 * p->seed when has_seed, else from the caller's fallback_seed, and a stream
 * index for n > 1) is owned by its smp_state. Every successful smp_sample()
 * advances it by exactly one draw (greedy calls too), so the same seed and
 * the same logits give the same tokens regardless of batching or of other
 * requests. The RNG stream is not bit-compatible with torch/vLLM (vLLM
 * samples by an exponential race; we use one uniform per token); the
 * distribution is the same.
 *
 * Precision: penalties and processed logits in float (as vLLM's float32);
 * softmax weights exp((l - max) / T) in float (a ~1 ulp polynomial exp;
 * weights below FLT_MIN, i.e. probability < ~1e-38 of the top token's, are
 * 0), all sums in double. Filter boundaries (top_p mass, min_p ratio) are
 * decided on these values, so a token lying within float rounding of a
 * boundary may fall on the other side than in torch's float32.
 *
 * Invariants: a smp_state only ever holds token ids in [0, vocab); its hash
 * table has a power-of-two capacity and is at most half full. smp_sample()
 * never allocates: all workspace comes from the caller's scratch.
 * Thread safety: distinct states may be used from distinct threads at once;
 * a scratch buffer must not be shared by concurrent calls (params may be).
 */
#ifndef NI_SAMPLER_H
#define NI_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#define SMP_MAX_LOGPROBS 20
#define SMP_GREEDY_EPS 1e-5f /* temperature below this = greedy (vLLM) */

typedef struct smp_logit_bias {
    int32_t token;
    float bias; /* [-100, 100] */
} smp_logit_bias;

/* Per-request sampling parameters. Owned by the caller; the logit_bias
 * array is borrowed and must outlive every smp_sample() call using it. */
typedef struct smp_params {
    float temperature;                /* [0, 100]; 0 (< SMP_GREEDY_EPS) = greedy. default 1 */
    int32_t top_k;                    /* -1 or 0 = off; >= 1 (>= vocab is off). default -1 */
    float top_p;                      /* (0, 1]; 1 = off. default 1 */
    float min_p;                      /* [0, 1]; 0 = off. default 0 */
    float repetition_penalty;         /* (0, 2] (vLLM); 1 = off. default 1 */
    float presence_penalty;           /* [-2, 2]; 0 = off. default 0 */
    float frequency_penalty;          /* [-2, 2]; 0 = off. default 0 */
    const smp_logit_bias *logit_bias; /* n_logit_bias entries, ids in [0, vocab) */
    int32_t n_logit_bias;
    int has_seed; /* nonzero: seed the RNG from `seed` */
    uint64_t seed;
    int32_t logprobs; /* -1 = off (default); 0..20: chosen + that many alternatives */
} smp_params;

typedef struct smp_logprob {
    int32_t token;
    float logprob;
} smp_logprob;

typedef struct smp_result {
    int32_t token; /* the sampled token */
    float logprob; /* raw log_softmax of `token`; 0 when p->logprobs < 0 */
    int32_t n_top; /* valid entries in top[] (min(p->logprobs, vocab), 0 if off) */
    smp_logprob top[SMP_MAX_LOGPROBS]; /* raw top alternatives, best first */
} smp_result;

/* Per-request state. Zero-initialise or smp_state_init() before use; all
 * fields are private to sampler.c and sampler_state.c. Owned by the request. */
typedef struct smp_state {
    uint64_t rng[4]; /* xoshiro256** state */
    int32_t vocab;
    int32_t n_output;     /* tokens recorded by smp_accept() */
    int track_prompt;     /* prompt tokens are in the table (repetition on) */
    int track_output;     /* output counts are kept (any penalty on) */
    struct smp_slot *tab; /* open addressing: token -> (in prompt, output count) */
    uint32_t cap;         /* power of two, or 0 */
    uint32_t used;
} smp_state;

/* The OpenAI/vLLM defaults: temperature 1, top_k -1, top_p 1, min_p 0,
 * repetition 1, presence 0, frequency 0, no bias, no seed, logprobs -1. */
smp_params smp_params_default(void);

/* Checks every field of p against the ranges documented in smp_params (NaN
 * is out of range everywhere). Returns 0, or NI_EINVAL with *bad_param (if
 * bad_param) set to a static string naming the field: "temperature",
 * "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
 * "frequency_penalty", "logit_bias", "logprobs" (or "vocab" if vocab < 1).
 * On success *bad_param is set to NULL. */
int smp_params_validate(const smp_params *p, int vocab, const char **bad_param);

/* Initialises s for one completion of a request whose params p passed
 * smp_params_validate(). Seeds the RNG from p->seed if p->has_seed, else from
 * fallback_seed (the caller's per-request random source); `stream` separates
 * the n completions of one request (0 for the first / only one). Records
 * the prompt tokens when p->repetition_penalty != 1 (the table is only built
 * when some penalty needs it). The prompt is copied, not kept.
 * Returns 0, NI_EINVAL (vocab < 1, n_prompt < 0, prompt NULL with n_prompt >
 * 0, a prompt id outside [0, vocab)) or NI_ENOMEM; on error s is left empty
 * (smp_state_free() is safe). */
int smp_state_init(smp_state *s, const smp_params *p, int vocab, const int32_t *prompt,
                   int n_prompt, uint64_t fallback_seed, uint32_t stream);

/* Frees what s owns and zeroes it. Safe on a zeroed or freed state. */
void smp_state_free(smp_state *s);

/* Records an output token (for presence/frequency/repetition penalties).
 * Call once per generated token, after smp_sample(). Returns 0, NI_EINVAL
 * (tok outside [0, vocab)) or NI_ENOMEM (table growth failed; s unchanged). */
int smp_accept(smp_state *s, int32_t tok);

/* Grows s's table now so that the next n_output smp_accept() calls allocate
 * nothing and cannot fail with NI_ENOMEM (the engine calls it when a
 * sequence is created, with max_tokens: nothing is allocated per token).
 * A no-op without penalties. The table then holds 2..4 slots of 8 bytes per
 * min(n_output, vocab) token (128 KiB for max_tokens 8192). Returns 0,
 * NI_EINVAL (n_output < 0) or NI_ENOMEM (s unchanged). */
int smp_reserve(smp_state *s, int n_output);

/* Advances s's RNG by the one draw smp_sample() makes per token (greedy
 * included) and returns it, a uniform double in [0, 1). For samplers that
 * run elsewhere (a GPU backend) but must consume the request's stream exactly
 * as smp_sample() would, so seeded requests stay reproducible. */
double smp_next_uniform(smp_state *s);

/* Bytes of scratch smp_sample() / smp_distribution() need for this vocab
 * (about 16 * vocab + vocab / 32, e.g. 2.4 MB for 151936); 0 if vocab < 1.
 * Any alignment is accepted. One scratch per concurrently sampling thread
 * is enough: nothing in it survives a call. */
size_t smp_scratch_bytes(int vocab);

/* Samples one token from logits[vocab] (the model output for this request's
 * last position) through the pipeline above. p must be the params s was
 * initialised with (validated). logits is modified in place: on return it
 * holds the logits after logit_bias and penalties (steps 1-4). scratch is
 * caller-owned workspace of at least smp_scratch_bytes(vocab) bytes, not
 * shared with a concurrent call; nothing is allocated. Fills *out.
 * Returns 0; NI_EINVAL (vocab differs from the state's, a logit_bias id out
 * of range, p asks for a penalty s was not initialised to track, NULL
 * pointer); NI_ERANGE (scratch too small; a NaN or +inf logit; no finite
 * logit). On error the RNG has not advanced; logits[] is untouched except
 * after a NI_ERANGE for bad values, where steps 1-4 may have been applied. */
int smp_sample(smp_state *s, const smp_params *p, float *logits, int vocab, void *scratch,
               size_t scratch_bytes, smp_result *out);

/* The distribution smp_sample() would draw from, without drawing: writes
 * probs[vocab] (0 for removed tokens, survivors sum to 1; greedy: 1 on the
 * argmax). Same contract for logits/scratch/errors as smp_sample(); the RNG
 * is not touched. For tests, goldens and "processed" logprobs. */
int smp_distribution(smp_state *s, const smp_params *p, float *logits, int vocab, void *scratch,
                     size_t scratch_bytes, float *probs);

#endif
