/*
 * test_util.c - the helpers every test program links (see test_util.h): RNG,
 * seeds, error metrics and checks, GPU skip, model paths, test filters.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/util/util.h"
#include "test_util.h"
#ifdef NI_USE_CUDA
#include "cuda/cu.h"
#endif

/* ---- random numbers -------------------------------------------------------- */

uint64_t tu_next(tu_rng *r) {
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

int tu_int(tu_rng *r, int n) { return (int)(tu_next(r) % (uint64_t)n); }

double tu_uniform(tu_rng *r, double lo, double hi) {
    return lo + (hi - lo) * ((double)(tu_next(r) >> 11) * 0x1.0p-53);
}

double tu_normal(tu_rng *r) {
    const double u1 = tu_uniform(r, 0, 1) + 1e-300, u2 = tu_uniform(r, 0, 1);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void tu_fill_uniform(tu_rng *r, float *x, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) x[i] = (float)tu_uniform(r, lo, hi);
}

void tu_fill_normal(tu_rng *r, float *x, size_t n, double mean, double sd) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(mean + sd * tu_normal(r));
}

void tu_fill_int(tu_rng *r, int32_t *t, size_t n, int bound) {
    for (size_t i = 0; i < n; i++) t[i] = tu_int(r, bound);
}

float *tu_rand_buf(tu_rng *r, size_t n, double lo, double hi) {
    float *p = malloc(n * sizeof(float));
    assert_non_null(p);
    tu_fill_uniform(r, p, n, lo, hi);
    return p;
}

void tu_permutation(tu_rng *r, int32_t *perm, int n) {
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        const int j = tu_int(r, i + 1);
        const int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

uint64_t tu_seed(tu_rng *r, const char *prog) {
    const char *env = getenv(TU_SEED_ENV);
    const uint64_t seed =
        env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    r->state = seed;
    printf("%s: seed %llu (" TU_SEED_ENV " to reproduce)\n", prog, (unsigned long long)seed);
    return seed;
}

/* ---- grammars ---------------------------------------------------------------- */

gr_vocab *tu_byte_vocab(void) {
    static char bytes[256];
    const char *ptr[257];
    size_t lens[257];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        ptr[i] = &bytes[i];
        lens[i] = 1;
    }
    ptr[256] = "";
    lens[256] = 0;
    int32_t end = 256;
    gr_vocab *v = NULL;
    assert_int_equal(gr_vocab_new(&v, 257, ptr, lens, &end, 1), 0);
    return v;
}

/* ---- error metrics and checks ------------------------------------------------ */

static const char *const k_metric_name[] = {"max rel err", "NMSE", "L2 rel err"};

/* Metric kind of got against want (wf, or wd when wf is NULL); *at gets the
 * element to show on failure: the first non-finite got, else the largest
 * |got - want|. */
static double metric(tu_metric kind, const float *got, const float *wf, const double *wd, size_t n,
                     size_t *at) {
    double num = 0.0, den = 0.0, worst = -1.0;
    *at = 0;
    for (size_t i = 0; i < n; i++) {
        const double w = wf ? (double)wf[i] : wd[i];
        if (!isfinite(got[i])) {
            *at = i;
            return INFINITY;
        }
        const double d = fabs((double)got[i] - w);
        if (d > worst) worst = d, *at = i;
        if (kind == TU_MAX_REL) {
            num = fmax(num, d);
            den = fmax(den, fabs(w));
        } else {
            num += d * d;
            den += w * w;
        }
    }
    const double e = den > 0 ? num / den : num;
    return kind == TU_REL_L2 ? sqrt(e) : e;
}

double tu_err(tu_metric m, const float *got, const float *want, size_t n) {
    size_t at;
    return metric(m, got, want, NULL, n, &at);
}

double tu_err_d(tu_metric m, const float *got, const double *want, size_t n) {
    size_t at;
    return metric(m, got, NULL, want, n, &at);
}

double tu_check_at(const char *file, int line, tu_metric m, const char *what, const float *got,
                   const float *want, const double *want_d, size_t n, double bound) {
    size_t at = 0;
    const double e = metric(m, got, want, want_d, n, &at);
    if (!(e < bound))
        fail_msg("%s:%d: %s: %s %.3g >= bound %.3g (n %zu; %s at [%zu]: got %.9g, want %.9g)", file,
                 line, what, k_metric_name[m], e, bound, n,
                 isfinite(got[at]) ? "largest |got - want|" : "non-finite", at, (double)got[at],
                 want ? (double)want[at] : want_d[at]);
    return e;
}

/* ---- small numeric helpers ---------------------------------------------------- */

int tu_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

float tu_bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return f;
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- environment: GPU, models, filters ---------------------------------------- */

void tu_require_gpu(void) {
#ifndef NI_USE_CUDA
    printf("SKIP: built without CUDA (USE_CUDA=0 or no nvcc)\n");
    skip();
#else
    if (cu_device_count() == 0) {
        printf("SKIP: no GPU on this machine\n");
        skip();
    }
#endif
}

void tu_print_gpu(void) {
#ifdef NI_USE_CUDA
    char buf[256];
    if (cu_device_count() > 0 && cu_device_describe(0, buf, sizeof buf) == 0)
        printf("device 0: %s\n", buf);
#endif
}

const char *tu_model_path(void) {
    const char *m = getenv("NI_MODEL");
    return m && *m ? m : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

void tu_skip_if_slow(const char *what) {
    const char *v = getenv("NI_TEST_SKIP_SLOW");
    if (v && strcmp(v, "1") == 0) {
        printf("SKIP: %s is slow under NI_TEST_SKIP_SLOW=1 (make test runs it)\n", what);
        skip();
    }
}

const char *tu_require_model(void) {
    const char *path = tu_model_path();
    if (access(path, R_OK) != 0) {
        printf("SKIP: model %s not found (run `make model` or set NI_MODEL)\n", path);
        skip();
    }
    return path;
}

json_t *tu_load_smollm2(mdl_model *m) {
    const char *path = tu_require_model();
    json_error_t je;
    json_t *g = json_load_file("test/fixtures/golden_smollm2.json", 0, &je);
    if (!g) fail_msg("test/fixtures/golden_smollm2.json: %s (line %d)", je.text, je.line);
    char err[512] = "";
    const int rc = mdl_load(m, path, err, sizeof err);
    if (rc) {
        json_decref(g);
        fail_msg("mdl_load %s: %d %s", path, rc, err);
    }
    return g;
}

const char *const tu_tiny_models[TU_N_TINY] = {"test/models/tiny-llama2", "test/models/tiny-llama3",
                                               "test/models/tiny-qwen3"};
const int tu_tiny_idx[TU_N_TINY] = {0, 1, 2};

void tu_load_tiny(mdl_model *m, int idx) {
    char err[512] = "";
    const int rc = mdl_load(m, tu_tiny_models[idx], err, sizeof err);
    if (rc) fail_msg("mdl_load %s: %d %s", tu_tiny_models[idx], rc, err);
}

int tu_forward_one(const eng_backend *be, void *ctx, const int32_t *tokens, int n, int pos0,
                   const int32_t *table, int max_blocks, float *logits) {
    const int32_t ss[2] = {0, n}, p0[1] = {pos0};
    const uint8_t want[1] = {1};
    const eng_batch b = {1, n, tokens, ss, p0, table, max_blocks, want};
    return be->forward(ctx, &b, logits);
}

void tu_filters(void) {
    const char *f = getenv("NI_TEST_FILTER"), *s = getenv("NI_TEST_SKIP");
    if (f) cmocka_set_test_filter(f);
    if (s) cmocka_set_skip_filter(s);
}
