/*
 * test_util.h - what the test programs share, instead of each carrying a
 * copy: the splitmix64 RNG and random fills, the seed of a randomised run
 * (NI_TEST_SEED), error metrics and the checks that fail with both operands,
 * the GPU skip, the default model and its golden fixture, the committed tiny
 * models, cmocka's test filters. Linked into every test program by the Makefile
 * ($(BUILD)/test/test_util.o); not a test program itself.
 *
 * Failing checks report through cmocka's fail_msg, skips through skip(), so
 * the functions that may fail or skip are called from inside a test
 * function. (cmocka 1.1.5 reports skip() from a setup fixture as "Test setup
 * failed", so tu_require_gpu() goes at the top of the test body.)
 */
#ifndef NI_TEST_UTIL_H
#define NI_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "engine/backend/backend.h"
#include "engine/grammar/grammar.h"
#include "engine/model/model.h"

/* The environment variable that fixes the seed of a randomised run. Named
 * here, not in test_util.c: test/test-seeds.sh finds the randomised programs
 * by grepping test/test_*.c for it, and test_util.c is not a program. */
#define TU_SEED_ENV "NI_TEST_SEED"

/* ---- random numbers -------------------------------------------------------- */

/* splitmix64 state: any value is a valid seed; {0} is as good as any. */
typedef struct tu_rng {
    uint64_t state;
} tu_rng;

/* Next 64 random bits (splitmix64). */
uint64_t tu_next(tu_rng *r);

/* Uniform integer in [0, n) (n >= 1; modulo bias is irrelevant here). */
int tu_int(tu_rng *r, int n);

/* Uniform double in [lo, hi) from the top 53 bits of tu_next. */
double tu_uniform(tu_rng *r, double lo, double hi);

/* Standard normal (Box-Muller on two tu_uniform draws). */
double tu_normal(tu_rng *r);

/* x[i] = (float)tu_uniform(r, lo, hi) for i < n. */
void tu_fill_uniform(tu_rng *r, float *x, size_t n, double lo, double hi);

/* x[i] = (float)(mean + sd * tu_normal(r)) for i < n. */
void tu_fill_normal(tu_rng *r, float *x, size_t n, double mean, double sd);

/* t[i] = tu_int(r, bound) for i < n (random token ids when bound = vocab). */
void tu_fill_int(tu_rng *r, int32_t *t, size_t n, int bound);

/* A malloc'ed buffer of n floats filled by tu_fill_uniform (asserts the
 * allocation; the caller frees it). */
float *tu_rand_buf(tu_rng *r, size_t n, double lo, double hi);

/* perm = a uniformly random permutation of 0 .. n-1 (Fisher-Yates). */
void tu_permutation(tu_rng *r, int32_t *perm, int n);

/* Seeds r for a randomised run: TU_SEED_ENV (strtoull, any base) when set,
 * else the clock; prints "<prog>: seed N (NI_TEST_SEED to reproduce)" on
 * stdout. Returns the seed. */
uint64_t tu_seed(tu_rng *r, const char *prog);

/* ---- grammars ---------------------------------------------------------------- */

/* A vocabulary of the 256 single bytes (token i = byte i) plus one end token
 * (256), so that a grammar mask is a byte set (random walks, acceptance
 * checks). Asserts the allocation; free with gr_vocab_free. */
gr_vocab *tu_byte_vocab(void);

/* ---- error metrics and checks ------------------------------------------------ */

/* How far got is from want over n elements; a non-finite got[i] makes every
 * metric +inf. */
typedef enum tu_metric {
    TU_MAX_REL, /* max |got - want| / max |want| (max |got - want| when want is all zero) */
    TU_NMSE,    /* sum (got - want)^2 / sum want^2 (the plain sum when want is all zero) */
    TU_REL_L2,  /* ||got - want|| / ||want|| = sqrt(NMSE) */
} tu_metric;

/* Metric m of got against want: float (another computation) or, in the _d
 * form, double (a float64 twin). */
double tu_err(tu_metric m, const float *got, const float *want, size_t n);
double tu_err_d(tu_metric m, const float *got, const double *want, size_t n);

/* The checks: return metric m of got against want (tu_check) or want_d
 * (tu_check_d) when it is < bound; otherwise fail the test with fail_msg
 * "<file>:<line>: <what>: <metric> E >= bound B (n N; largest |got - want|
 * at [i]: got G, want W)", naming the caller's line (the first non-finite
 * got instead of the largest difference, when there is one). */
#define tu_check(m, what, got, want, n, bound)                                                     \
    tu_check_at(__FILE__, __LINE__, m, what, got, want, NULL, n, bound)
#define tu_check_d(m, what, got, want_d, n, bound)                                                 \
    tu_check_at(__FILE__, __LINE__, m, what, got, NULL, want_d, n, bound)

/* What tu_check / tu_check_d expand to: want or want_d, the other NULL. */
double tu_check_at(const char *file, int line, tu_metric m, const char *what, const float *got,
                   const float *want, const double *want_d, size_t n, double bound);

/* ---- small numeric helpers ---------------------------------------------------- */

/* Index of the first maximum of x[0 .. n) (n >= 1). */
int tu_argmax(const float *x, int n);

/* f rounded to the nearest BF16, ties to even (as __float2bfloat16_rn);
 * inf and NaN pass unchanged. */
float tu_bf16_round(float f);

/* ---- environment: GPU, models, filters ---------------------------------------- */

/* Skips the calling test (skip(), which does not return) unless a CUDA GPU
 * is usable, printing why first: "SKIP: no GPU on this machine", or in a
 * CPU-only build "SKIP: built without CUDA (USE_CUDA=0 or no nvcc)". */
void tu_require_gpu(void);

/* Prints "device 0: <name, sm_XY, memory>" when this build has CUDA and a
 * GPU is visible; prints nothing otherwise. */
void tu_print_gpu(void);

/* Skips the calling test when NI_TEST_SKIP_SLOW=1 (set by `make asan`: the
 * sanitized build runs these minutes-long checks too slowly for CI), printing
 * "SKIP: <what> is slow under NI_TEST_SKIP_SLOW=1 (make test runs it)".
 * `make test` leaves the variable unset, so the coverage stays there. */
void tu_skip_if_slow(const char *what);

/* The default real model: NI_MODEL when set and non-empty, else
 * models/SmolLM2-135M-Instruct.Q4_1.gguf (fetched by `make model`). */
const char *tu_model_path(void);

/* tu_model_path(), or, when that file is not readable, skips the calling
 * test with "SKIP: model <path> not found (run `make model` or set NI_MODEL)". */
const char *tu_require_model(void);

/* Loads the default model (tu_require_model: skips the test when it is
 * absent) into m and returns its golden fixture
 * test/fixtures/golden_smollm2.json (Hugging Face transformers: prompt ids,
 * greedy tokens, first-step logits; json_decref it). Fails the test when
 * either does not load. */
json_t *tu_load_smollm2(mdl_model *m);

/* The committed tiny models (test/models): tiny-llama2 (MHA, SPM),
 * tiny-llama3 (GQA, llama3 RoPE scaling, tied embeddings), tiny-qwen3
 * (qk-norm, head_dim 32). tu_tiny_idx[i] == i: prestate pointers for tests
 * run once per model (cmocka_unit_test_prestate(f, (void *)&tu_tiny_idx[i])). */
enum { TU_N_TINY = 3 };
extern const char *const tu_tiny_models[TU_N_TINY];
extern const int tu_tiny_idx[TU_N_TINY];

/* mdl_load of tu_tiny_models[idx] into m; fails the test on an error. */
void tu_load_tiny(mdl_model *m, int idx);

/* One forward of a single sequence: tokens[0 .. n) at positions pos0 ..
 * through block table table (row stride max_blocks), the logits of the last
 * token into logits[0 .. vocab). Returns be->forward's code. */
int tu_forward_one(const eng_backend *be, void *ctx, const int32_t *tokens, int n, int pos0,
                   const int32_t *table, int max_blocks, float *logits);

/* Applies NI_TEST_FILTER / NI_TEST_SKIP (cmocka patterns with * and ?) to
 * the cmocka_run_group_tests that follows. */
void tu_filters(void);

#endif
