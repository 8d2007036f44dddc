/*
 * test_q8.c - the int8 weight path (engine/cpu/cpu_q8.[ch]) and its quality on
 * the real model.
 *
 * Kernels, on every dispatch path this CPU can run (scalar, AVX2, AVX-VNNI,
 * AVX512-VNNI; the ones it cannot run are reported as skipped):
 *   - quantization: weights and activations round-trip within half a step
 *     (|x - q d| <= d / 2 per element, d = max|x| / 127 per block of 32,
 *     FP16 rounding of the weight scale accounted for), |q| <= 127, s = 128
 *     sum(q), every tail length (cols % 32 != 0, groups of < 16 blocks);
 *   - exactness: integer inputs with one +-127 per block make every scale
 *     exactly 1, so each path must return the exact integer dot product
 *     (compared with an int64 reference; sums stay below 2^24 so FP32 holds
 *     them exactly): this pins the int32 accumulation of each path;
 *   - agreement: on random FP32 data all paths, thread counts, row ranges
 *     and token batchings give bit-identical outputs (memcmp);
 *   - accuracy: against a double-precision product of the unquantized
 *     inputs, the error stays within the bound implied by the quantization
 *     steps, sum_i (dw_i/2 |x_i| + |w_i| dx_i/2 + dw_i dx_i / 4), plus FP32
 *     rounding; against the product of the dequantized values it is FP32
 *     rounding only (1e-5 relative to sum |w x|).
 * SmolLM2-135M (NI_MODEL or models/SmolLM2-135M-Instruct.Q4_1.gguf; skipped
 * with a message when absent) against test/fixtures/golden_smollm2.json
 * (HF transformers FP32 greedy, 30 prompts x 64 tokens), quant = 1:
 *   - first-step logits of the three stored rows: max |error| / max |logit|
 *     < 8e-2 (measured 3-6%: on this model int8 weights alone cost ~3.6%,
 *     as a symmetric int8 grid cannot hold the Q4_1 grid the weights come
 *     from, and Q8 activations - llama.cpp's scheme - ~4%);
 *   - teacher forcing (the reference tokens are fed, so one flip cannot
 *     cascade): int8 argmax == reference token at >= 95% of the 1920
 *     positions (measured 97.9%), and every miss is at a position whose
 *     reference top-2 margin is below 1.0 logit (a near-tie the int8 error
 *     may flip; the largest seen is ~0.5);
 *   - free-running greedy through the engine: prints, per prompt, the
 *     tokens matched before the first divergence; asserts every prompt
 *     matches its first token unless that step is a near-tie (< 1.0) and
 *     that >= 35% of all 1920 tokens come before the first divergence
 *     (measured ~48%; one flipped near-tie changes the rest of a sequence,
 *     so this number is chaotic and only loosely bounded).
 * The int8 products are bit-identical on every SIMD path, so these figures
 * do not depend on the machine beyond the FP32 parts (attention, norms).
 * Random inputs are fresh each run (seed printed; NI_TEST_SEED reproduces).
 */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "engine/backend/backend.h"
#include "engine/cpu/cpu_q8.h"
#include "engine/engine.h"
#include "engine/format/quant.h"
#include "engine/util/util.h"
#include "test_util.h"

static tu_rng g_rng;

/* Random values with occasional outliers (as LLM activations have). */
static void fill_act(float *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(tu_int(&g_rng, 50) == 0 ? tu_uniform(&g_rng, -20, 20)
                                               : tu_uniform(&g_rng, -1, 1));
}

/* Column counts covering: one block, partial blocks, a full group plus a
 * 1-block tail, a tail longer than 8 blocks, two full groups, SmolLM2. */
static const int k_cols[] = {1, 7, 32, 33, 100, 544, 800, 1000, 1024, 576};

/* Runs every supported path; returns how many ran, listing skipped ones. */
static int paths_supported(int *paths) {
    int n = 0;
    for (int p = 0; p < CPU_Q8_N_PATHS; p++) {
        if (cpu_q8_path_supported(p)) paths[n++] = p;
        else printf("  path %s: not supported on this CPU, skipped\n", cpu_q8_path_name(p));
    }
    return n;
}

/* ---- quantization round trip ------------------------------------------- */

static void test_quantize_weights(void **state) {
    (void)state;
    for (int bits = 8; bits >= 4; bits -= 4)
        for (size_t ci = 0; ci < NI_ARRAY_LEN(k_cols); ci++) {
            const int cols = k_cols[ci], rows = 5;
            float *w = malloc(sizeof(float) * rows * cols), *back = malloc(sizeof(float) * cols);
            fill_act(w, (size_t)rows * cols);
            for (int i = 0; i < cols; i++) w[i] = 0.0f; /* an all-zero row */
            cpu_q8_mat m;
            assert_int_equal(cpu_q8_mat_init(&m, rows, cols, bits), 0);
            assert_int_equal(m.nb, (cols + 31) / 32);
            cpu_q8_mat_set_rows(CPU_SERIAL, &m, 0, w, rows);
            for (int r = 0; r < rows; r++) {
                cpu_q8_mat_get_row(&m, r, back);
                for (int b = 0; b < m.nb; b++) {
                    double lo = INFINITY, hi = -INFINITY, amax = 0;
                    for (int i = b * 32; i < NI_MIN(cols, b * 32 + 32); i++) {
                        const double x = w[(size_t)r * cols + i];
                        lo = fmin(lo, x), hi = fmax(hi, x), amax = fmax(amax, fabs(x));
                    }
                    const double d = qnt_f16_to_f32(m.d[(size_t)r * m.nb + b]);
                    double bound, mabs = 0; /* |m| of a 4-bit block: w - m is rounded */
                    if (bits == 8) {
                        /* FP16 scale = amax/127 rounded to nearest: within half an ulp,
                         * 2^-11 relative for normal halves and 2^-25 absolute below
                         * 2^-14 (subnormal: a block of small values, e.g. a short tail,
                         * seed 26433024930528). Then half a step, or clamped at 127 d
                         * when d rounded down. */
                        const double ref = amax / 127;
                        const double tol = ref * (0x1p-11 + 1e-6) + 0x1p-25;
                        if (!(fabs(d - ref) <= tol))
                            fail_msg("bits 8 cols %d row %d block %d: FP16 scale %.9g vs amax/127 "
                                     "%.9g (|diff| %.3g > %.3g)",
                                     cols, r, b, d, ref, fabs(d - ref), tol);
                        bound = fmax(d / 2, amax - 127 * d);
                    } else {
                        /* FP16 m = min and d = (max - m)/15, each to 11 bits; half a step,
                         * or clamped at the rounded ends of the grid */
                        const double mv = qnt_f16_to_f32(m.m[(size_t)r * m.nb + b]);
                        mabs = fabs(mv);
                        const double dd = fmax(0, (hi - mv) / 15);
                        assert_true(fabs(mv - lo) <= fabs(lo) * 1e-3 + 1e-7);
                        assert_true(fabs(d - dd) <= dd * 1e-3 + 1e-7);
                        bound = d / 2 + fmax(0, mv - lo) + fmax(0, hi - (mv + 15 * d));
                    }
                    bound = bound * (1 + 1e-6) + 1e-30;
                    for (int i = b * 32; i < NI_MIN(cols, b * 32 + 32); i++) {
                        const double x = w[(size_t)r * cols + i];
                        /* plus the FP32 rounding of (w - m) * (1 / d) and of q * d + m: an x
                         * within a few ulp of a half-way point may round to the far side
                         * (NI_TEST_SEED=186: 8-bit, 0.781952 -> 0.785522 at d 0.00714111;
                         * 313: 4-bit, -0.416993 -> 0.0273438 at d 0.888672) */
                        const double slack = 4 * FLT_EPSILON * (fabs(x) + fabs(back[i]) + mabs);
                        if (fabs(back[i] - x) > bound + slack)
                            fail_msg("bits %d cols %d row %d elem %d: %g -> %g (d %g)", bits, cols,
                                     r, i, x, back[i], d);
                    }
                }
            }
            cpu_q8_mat_free(&m);
            free(w);
            free(back);
        }
    cpu_q8_mat m;
    assert_int_equal(cpu_q8_mat_init(&m, 0, 4, 8), NI_EINVAL);
    assert_int_equal(cpu_q8_mat_init(&m, 4, 0, 8), NI_EINVAL);
    assert_int_equal(cpu_q8_mat_init(&m, 4, 4, 6), NI_EINVAL);
    cpu_q8_mat_free(&m);
}

/* 4-bit weights made the way ggml's Q4_1 dequantizer makes them (FP16 d and
 * m, q in [0, 15] with both ends used, x = q d + m in FP32) come back bit for
 * bit: the SmolLM2 GGUF case. */
static void test_q4_lossless_for_q4_1(void **state) {
    (void)state;
    const int rows = 7, cols = 576;
    float *w = malloc(sizeof(float) * rows * cols), *back = malloc(sizeof(float) * cols);
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < cols / 32; b++) {
            const float d = qnt_f16_to_f32(qnt_f32_to_f16((float)tu_uniform(&g_rng, 1e-4, 0.05)));
            const float mn = qnt_f16_to_f32(qnt_f32_to_f16((float)tu_uniform(&g_rng, -1, 0.2)));
            int q[32];
            for (int e = 0; e < 32; e++) q[e] = tu_int(&g_rng, 16);
            const int i0 = tu_int(&g_rng, 32);
            int i1 = tu_int(&g_rng, 31);
            i1 += i1 >= i0;
            q[i0] = 0;
            q[i1] = 15;
            for (int e = 0; e < 32; e++) w[(size_t)r * cols + b * 32 + e] = (float)q[e] * d + mn;
        }
    cpu_q8_mat m;
    assert_int_equal(cpu_q8_mat_init(&m, rows, cols, 4), 0);
    cpu_q8_mat_set_rows(CPU_SERIAL, &m, 0, w, rows);
    for (int r = 0; r < rows; r++) {
        cpu_q8_mat_get_row(&m, r, back);
        assert_memory_equal(back, w + (size_t)r * cols, sizeof(float) * cols);
    }
    cpu_q8_mat_free(&m);
    free(w);
    free(back);
}

static void test_quantize_act(void **state) {
    (void)state;
    for (size_t ci = 0; ci < NI_ARRAY_LEN(k_cols); ci++) {
        const int cols = k_cols[ci], n = 3, ldx = cols + 5;
        float *x = malloc(sizeof(float) * n * ldx), *back = malloc(sizeof(float) * cols);
        fill_act(x, (size_t)n * ldx);
        cpu_q8_act a;
        assert_int_equal(cpu_q8_act_init(&a, 4, 1024), 0);
        cpu_q8_quantize_act(CPU_SERIAL, &a, x, ldx, n, cols);
        assert_int_equal(a.n, n);
        assert_int_equal(a.nb, (cols + 31) / 32);
        for (int t = 0; t < n; t++) {
            cpu_q8_act_get_row(&a, t, back);
            for (int b = 0; b < a.nb; b++) {
                double amax = 0, sum = 0;
                for (int i = b * 32; i < NI_MIN(cols, b * 32 + 32); i++)
                    amax = fmax(amax, fabs(x[(size_t)t * ldx + i]));
                const double d = a.d[(size_t)t * a.nb + b];
                assert_true(fabs(d - amax / 127) <= amax / 127 * 1e-6);
                for (int i = b * 32; i < NI_MIN(cols, b * 32 + 32); i++) {
                    const double q = d > 0 ? back[i] / d : 0;
                    assert_true(fabs(q - nearbyint(q)) < 1e-3 && fabs(q) <= 127.0 + 1e-3);
                    sum += nearbyint(q);
                    /* half a step, plus the FP32 rounding of the scale: the kernel
                     * rounds x * (127 / amax) while d = amax / 127 is rounded on its
                     * own, so an x within ~1e-7 relative of a half-way point may
                     * round to the far side (NI_TEST_SEED=259572439922224 failed
                     * the bare d / 2 (1 + 1e-5): 0.516016 -> 0.519838) */
                    const double xi = x[(size_t)t * ldx + i];
                    if (fabs(back[i] - xi) >
                        d / 2 + 4 * FLT_EPSILON * (fabs(xi) + fabs(back[i])) + 1e-30)
                        fail_msg("cols %d tok %d elem %d: %g -> %g", cols, t, i,
                                 x[(size_t)t * ldx + i], back[i]);
                }
                assert_int_equal(a.s[(size_t)t * a.nb + b], (int32_t)(128 * sum));
            }
        }
        cpu_q8_act_free(&a);
        free(x);
        free(back);
    }
}

/* ---- exact integer products on every path --------------------------------- */

/* Integer values in [-127, 127] with a +-127 in every block (so every int8
 * scale, FP16 or FP32, is exactly 1). */
static void fill_int(float *p, int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        float *row = p + (size_t)r * cols;
        for (int i = 0; i < cols; i++) row[i] = (float)(tu_int(&g_rng, 255) - 127);
        for (int b = 0; b * 32 < cols; b++) {
            const int ne = NI_MIN(32, cols - b * 32);
            row[b * 32 + tu_int(&g_rng, ne)] = tu_int(&g_rng, 2) ? 127.0f : -127.0f;
        }
    }
}

/* 4-bit: integers off + [0, 15] with both ends in every block, so d = 1 and
 * m = off exactly (a block of one element is just off + 0 ... the single
 * value is the min, d = 0: still exact). */
static void fill_int4(float *p, int rows, int cols, int off) {
    for (int r = 0; r < rows; r++) {
        float *row = p + (size_t)r * cols;
        for (int i = 0; i < cols; i++) row[i] = (float)(off + tu_int(&g_rng, 16));
        for (int b = 0; b * 32 < cols; b++) {
            const int ne = NI_MIN(32, cols - b * 32);
            if (ne < 2) continue;
            const int i0 = tu_int(&g_rng, ne);
            int i1 = tu_int(&g_rng, ne - 1);
            i1 += i1 >= i0;
            row[b * 32 + i0] = (float)off;
            row[b * 32 + i1] = (float)(off + 15);
        }
    }
}

static void test_exact_integer(void **state) {
    (void)state;
    int paths[CPU_Q8_N_PATHS];
    const int np = paths_supported(paths);
    const int shapes[][3] = {/* rows, cols, tokens */
                             {1, 32, 1},   {37, 544, 1}, {9, 800, 5}, {13, 1000, 9},
                             {6, 1024, 4}, {5, 33, 3},   {4, 7, 2},   {17, 100, 7}};
    for (int fmt = 0; fmt < 3; fmt++) { /* int8; 4-bit with m = 0; 4-bit with m = -8 */
        const int bits = fmt == 0 ? 8 : 4;
        for (size_t si = 0; si < NI_ARRAY_LEN(shapes); si++) {
            const int R = shapes[si][0], C = shapes[si][1], N = shapes[si][2];
            float *w = malloc(sizeof(float) * R * C), *x = malloc(sizeof(float) * N * C);
            float *y = malloc(sizeof(float) * N * R);
            if (bits == 8) fill_int(w, R, C);
            else fill_int4(w, R, C, fmt == 1 ? 0 : -8);
            fill_int(x, N, C);
            cpu_q8_mat m;
            cpu_q8_act a;
            assert_int_equal(cpu_q8_mat_init(&m, R, C, bits), 0);
            assert_int_equal(cpu_q8_act_init(&a, N, C), 0);
            cpu_q8_mat_set_rows(CPU_SERIAL, &m, 0, w, R);
            cpu_q8_quantize_act(CPU_SERIAL, &a, x, C, N, C);
            for (int pi = 0; pi < np; pi++) {
                assert_int_equal(cpu_q8_set_path(paths[pi]), 0);
                cpu_q8_gemm(CPU_SERIAL, y, R, &a, &m, 0);
                for (int t = 0; t < N; t++)
                    for (int r = 0; r < R; r++) {
                        int64_t ref = 0;
                        for (int i = 0; i < C; i++)
                            ref += (int64_t)w[(size_t)r * C + i] * (int64_t)x[(size_t)t * C + i];
                        if (y[(size_t)t * R + r] != (float)ref)
                            fail_msg("path %s bits %d %dx%d tok %d row %d: %.1f != %lld",
                                     cpu_q8_path_name(paths[pi]), bits, R, C, t, r,
                                     (double)y[(size_t)t * R + r], (long long)ref);
                    }
            }
            cpu_q8_mat_free(&m);
            cpu_q8_act_free(&a);
            free(w); free(x); free(y);
        }
    }
    cpu_q8_select();
}

/* ---- all paths / threads / ranges agree bit for bit; accuracy ------------- */

static void test_paths_agree_and_accuracy(void **state) {
    (void)state;
    int paths[CPU_Q8_N_PATHS];
    const int np = paths_supported(paths);
    const int shapes[][3] = {{67, 576, 1}, {40, 1536, 6}, {33, 800, 3}, {21, 100, 9}, {8, 33, 2}};
    for (int bits = 8; bits >= 4; bits -= 4)
    for (size_t si = 0; si < NI_ARRAY_LEN(shapes); si++) {
        const int R = shapes[si][0], C = shapes[si][1], N = shapes[si][2];
        float *w = malloc(sizeof(float) * R * C), *x = malloc(sizeof(float) * N * C);
        float *wd = malloc(sizeof(float) * R * C), *xd = malloc(sizeof(float) * N * C);
        const size_t ny = (size_t)N * R;
        float *ref = malloc(sizeof(float) * ny), *y = malloc(sizeof(float) * ny);
        float *yacc = malloc(sizeof(float) * ny), *base = malloc(sizeof(float) * ny);
        fill_act(w, (size_t)R * C);
        fill_act(x, (size_t)N * C);
        fill_act(base, ny);
        cpu_q8_mat m;
        cpu_q8_act a;
        assert_int_equal(cpu_q8_mat_init(&m, R, C, bits), 0);
        assert_int_equal(cpu_q8_act_init(&a, N, C), 0);
        cpu_q8_mat_set_rows(CPU_SERIAL, &m, 0, w, R);
        cpu_q8_quantize_act(CPU_SERIAL, &a, x, C, N, C);
        for (int r = 0; r < R; r++) cpu_q8_mat_get_row(&m, r, wd + (size_t)r * C);
        for (int t = 0; t < N; t++) cpu_q8_act_get_row(&a, t, xd + (size_t)t * C);

        assert_int_equal(cpu_q8_set_path(CPU_Q8_SCALAR), 0);
        cpu_q8_gemm(CPU_SERIAL, ref, R, &a, &m, 0);

        /* accuracy of the reference path */
        for (int t = 0; t < N; t++)
            for (int r = 0; r < R; r++) {
                double exact = 0, deq = 0, absdeq = 0, bound = 0;
                for (int i = 0; i < C; i++) {
                    const double wi = w[(size_t)r * C + i], xi = x[(size_t)t * C + i];
                    const double wq = wd[(size_t)r * C + i], xq = xd[(size_t)t * C + i];
                    exact += wi * xi;
                    deq += wq * xq;
                    absdeq += fabs(wq * xq);
                    /* w x - w' x' = (w - w') x + w' (x - x'); the round trips of w and x
                     * are bounded by test_quantize_* */
                    bound += fabs(wi - wq) * fabs(xi) + fabs(wq) * fabs(xi - xq);
                }
                const double got = ref[(size_t)t * R + r];
                if (fabs(got - deq) > 1e-5 * absdeq + 1e-6)
                    fail_msg("%dx%d: %g vs dequantized product %g", R, C, got, deq);
                if (fabs(got - exact) > bound + 1e-5 * absdeq + 1e-6)
                    fail_msg("%dx%d: %g vs exact %g beyond quantization bound %g", R, C, got,
                             exact, bound);
            }

        for (int pi = 0; pi < np; pi++) {
            assert_int_equal(cpu_q8_set_path(paths[pi]), 0);
            for (int nth = 1; nth <= 3; nth++) {
                memset(y, 0, sizeof(float) * ny);
                for (int i = 0; i < nth; i++) /* the parts compose the whole */
                    cpu_q8_gemm((cpu_part){i, nth}, y, R, &a, &m, 0);
                if (memcmp(y, ref, sizeof(float) * ny))
                    fail_msg("path %s, %d threads, bits %d, %dx%dx%d differs from scalar",
                             cpu_q8_path_name(paths[pi]), nth, bits, R, C, N);
            }
            /* accumulate = 1 adds exactly the same values */
            memcpy(yacc, base, sizeof(float) * ny);
            for (int i = 0; i < 2; i++) cpu_q8_gemm((cpu_part){i, 2}, yacc, R, &a, &m, 1);
            for (size_t i = 0; i < ny; i++) assert_true(yacc[i] == base[i] + ref[i]);
            /* row ranges x token ranges land at relative offsets, nothing else written */
            for (int rep = 0; rep < 4; rep++) {
                const int r0 = tu_int(&g_rng, R), r1 = r0 + 1 + tu_int(&g_rng, R - r0);
                const int t0 = tu_int(&g_rng, N), t1 = t0 + 1 + tu_int(&g_rng, N - t0);
                const int ld = r1 - r0 + 3;
                float *part = malloc(sizeof(float) * (size_t)(t1 - t0) * ld);
                for (int i = 0; i < (t1 - t0) * ld; i++) part[i] = NAN;
                cpu_q8_gemm_range(part, ld, &a, t0, t1, &m, r0, r1, 0);
                for (int t = t0; t < t1; t++)
                    for (int c = 0; c < ld; c++) {
                        const float v = part[(size_t)(t - t0) * ld + c];
                        if (c < r1 - r0) assert_true(v == ref[(size_t)t * R + r0 + c]);
                        else assert_true(isnan(v));
                    }
                free(part);
            }
            /* token batching: one token at a time == all at once */
            for (int t = 0; t < N; t++) {
                cpu_q8_gemm_range(y, R, &a, t, t + 1, &m, 0, R, 0);
                assert_memory_equal(y, ref + (size_t)t * R, sizeof(float) * R);
            }
        }
        cpu_q8_mat_free(&m);
        cpu_q8_act_free(&a);
        free(w); free(x); free(wd); free(xd); free(ref); free(y); free(yacc); free(base);
    }
    cpu_q8_select();
}

static void test_dispatch(void **state) {
    (void)state;
    cpu_q8_select();
    const int best = cpu_q8_get_path();
    printf("  selected path: %s\n", cpu_q8_path_name(best));
    assert_true(cpu_q8_path_supported(best));
    for (int p = best + 1; p < CPU_Q8_N_PATHS; p++) assert_false(cpu_q8_path_supported(p));
    assert_int_equal(cpu_q8_set_path(-1), NI_EUNSUPPORTED);
    assert_int_equal(cpu_q8_set_path(CPU_Q8_N_PATHS), NI_EUNSUPPORTED);
    assert_int_equal(cpu_q8_get_path(), best);
    assert_int_equal(cpu_q8_set_path(CPU_Q8_SCALAR), 0);
    assert_int_equal(cpu_q8_get_path(), CPU_Q8_SCALAR);
    cpu_q8_select();
    assert_int_equal(cpu_q8_get_path(), best);
}

/* ---- SmolLM2 against the HF golden greedy tokens --------------------------- */

#define SM_MAXP 32
#define SM_NEW 64
#define SM_MARGIN 1.0 /* logits: a reference step closer than this may flip under int8 */

static int json_ids(json_t *a, int32_t *out, int cap) {
    int n = (int)json_array_size(a);
    assert_true(n > 0 && n <= cap);
    for (int i = 0; i < n; i++) out[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return n;
}

typedef struct sm_out {
    int32_t toks[SM_MAXP][SM_NEW];
    int n[SM_MAXP];
} sm_out;

static void on_sm(void *ud, const eng_event *ev) {
    sm_out *o = ud;
    if (ev->token >= 0 && o->n[ev->id] < SM_NEW) o->toks[ev->id][o->n[ev->id]++] = ev->token;
}

static void test_smollm2_quant(void **s) {
    const int quant = *(const int *)*s;
    printf("  quant %d (%s)\n", quant, quant == 1 ? "int8" : "4-bit layers, int8 LM head");
    tu_skip_if_slow("SmolLM2 teacher forcing + greedy over 30 prompts");
    mdl_model m;
    json_t *g = tu_load_smollm2(&m);
    char err[512];
    const int V = m.cfg.vocab_size;
    json_t *prompts = json_object_get(g, "prompts");
    const int np = (int)json_array_size(prompts);
    assert_true(np >= 24 && np <= SM_MAXP);
    static int32_t ids[SM_MAXP][1024], ref_new[SM_MAXP][SM_NEW];
    static double margin[SM_MAXP][SM_NEW];
    int n_ids[SM_MAXP], max_prompt = 0;
    for (int i = 0; i < np; i++) {
        json_t *p = json_array_get(prompts, (size_t)i);
        n_ids[i] = json_ids(json_object_get(p, "ids"), ids[i], 1024);
        assert_int_equal(json_ids(json_object_get(p, "new_ids"), ref_new[i], SM_NEW), SM_NEW);
        for (int k = 0; k < SM_NEW; k++)
            margin[i][k] = json_number_value(json_array_get(json_object_get(p, "margins"), (size_t)k));
        max_prompt = NI_MAX(max_prompt, n_ids[i]);
    }

    /* the backend directly: every prompt in one prefill batch, then SM_NEW
     * teacher-forced decode steps of all prompts at once */
    const int bs = 16, mb = (max_prompt + SM_NEW + bs - 1) / bs;
    int total = 0;
    for (int i = 0; i < np; i++) total += n_ids[i];
    eng_backend_config bc = {.n_blocks = np * mb, .block_size = bs, .max_batch_tokens = total,
                             .max_seqs = np, .n_threads = 0, .quant = quant};
    void *ctx = NULL;
    assert_int_equal(eng_backend_cpu.init(&ctx, &m, &bc, err, sizeof err), 0);
    int32_t *tables = malloc(sizeof(int32_t) * np * mb), *tok = malloc(sizeof(int32_t) * total);
    int32_t ss[SM_MAXP + 1], p0[SM_MAXP];
    uint8_t want[SM_MAXP];
    for (int i = 0; i < np * mb; i++) tables[i] = i;
    float *lg = malloc(sizeof(float) * np * V);
    int n = 0;
    for (int i = 0; i < np; i++) {
        ss[i] = n;
        p0[i] = 0;
        want[i] = 1;
        memcpy(tok + n, ids[i], sizeof(int32_t) * n_ids[i]);
        n += n_ids[i];
    }
    ss[np] = n;
    eng_batch b = {np, n, tok, ss, p0, tables, mb, want};
    assert_int_equal(eng_backend_cpu.forward(ctx, &b, lg), 0);

    /* first-step logits against the stored FP32 reference rows */
    json_t *lb = json_object_get(g, "logits_bin");
    char *bin;
    size_t bin_len;
    assert_int_equal(ni_read_file(json_string_value(json_object_get(lb, "file")), &bin, &bin_len), 0);
    size_t k;
    json_t *row;
    json_array_foreach(json_object_get(lb, "rows"), k, row) {
        const int pi = (int)json_integer_value(json_object_get(row, "prompt_index"));
        const size_t off = (size_t)json_integer_value(json_object_get(row, "offset_bytes"));
        assert_true(off + (size_t)V * 4 <= bin_len);
        double md = 0, mr = 0;
        for (int v = 0; v < V; v++) {
            float r;
            memcpy(&r, bin + off + (size_t)v * 4, 4);
            md = fmax(md, fabs((double)lg[(size_t)pi * V + v] - r));
            mr = fmax(mr, fabs((double)r));
        }
        printf("  int8 first-step logits '%s': max abs error %.3g, relative %.3g\n",
               json_string_value(json_object_get(row, "name")), md, md / mr);
        assert_true(md / mr < 8e-2);
    }
    free(bin);

    int hits = 0, misses = 0;
    for (int step = 0; step < SM_NEW; step++) {
        for (int i = 0; i < np; i++) {
            const int am = tu_argmax(lg + (size_t)i * V, V);
            if (am == ref_new[i][step]) {
                hits++;
            } else {
                misses++;
                printf("  teacher-forced miss: prompt %d step %d (reference margin %.3g)\n", i,
                       step, margin[i][step]);
                assert_true(margin[i][step] < SM_MARGIN);
            }
        }
        if (step == SM_NEW - 1) break;
        for (int i = 0; i < np; i++) {
            ss[i] = i;
            p0[i] = n_ids[i] + step;
            tok[i] = ref_new[i][step];
        }
        ss[np] = np;
        b.n_tokens = np;
        assert_int_equal(eng_backend_cpu.forward(ctx, &b, lg), 0);
    }
    printf("  teacher-forced greedy agreement: %d of %d positions (%.1f%%)\n", hits,
           hits + misses, 100.0 * hits / (hits + misses));
    assert_true(hits >= 0.95 * (hits + misses));
    eng_backend_cpu.free(ctx);
    free(tables); free(tok); free(lg);

    /* free-running greedy through the engine, all prompts batched */
    static sm_out out;
    memset(&out, 0, sizeof out);
    eng_config c;
    eng_config_default(&c);
    c.max_num_seqs = SM_MAXP;
    c.max_seq_len = 1024;
    c.n_blocks = SM_MAXP * 1024 / 16;
    c.quant = quant;
    eng_engine *e = NULL;
    assert_int_equal(eng_init(&e, &m, &eng_backend_cpu, &c, on_sm, &out, err, sizeof err), 0);
    for (int i = 0; i < np; i++) {
        eng_request r = {.id = (uint64_t)i, .prompt = ids[i], .n_prompt = n_ids[i],
                         .sp = smp_params_default(), .max_tokens = SM_NEW, .n = 1,
                         .ignore_eos = 1};
        r.sp.temperature = 0;
        assert_int_equal(eng_add(e, &r, NULL), 0);
    }
    while (eng_step(e) > 0) {
    }
    eng_free(e);
    int matched = 0, full = 0;
    for (int i = 0; i < np; i++) {
        assert_int_equal(out.n[i], SM_NEW);
        int same = 0;
        while (same < SM_NEW && out.toks[i][same] == ref_new[i][same]) same++;
        matched += same;
        full += same == SM_NEW;
        if (same < SM_NEW)
            printf("  free-running prompt %d: %d tokens before divergence (margin there %.3g)\n",
                   i, same, margin[i][same]);
        if (same == 0) assert_true(margin[i][0] < SM_MARGIN);
    }
    printf("  free-running greedy: %d of %d tokens before first divergence (%.1f%%), %d of %d "
           "prompts identical for all %d tokens\n",
           matched, np * SM_NEW, 100.0 * matched / (np * SM_NEW), full, np, SM_NEW);
    assert_true(matched >= np * SM_NEW * 35 / 100);
    mdl_free(&m);
    json_decref(g);
}

static const int k_quant[2] = {1, 2};

int main(void) {
    tu_seed(&g_rng, "test_q8");
    tu_filters(); /* NI_TEST_FILTER=<glob> runs a subset */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dispatch),
        cmocka_unit_test(test_quantize_weights),
        cmocka_unit_test(test_q4_lossless_for_q4_1),
        cmocka_unit_test(test_quantize_act),
        cmocka_unit_test(test_exact_integer),
        cmocka_unit_test(test_paths_agree_and_accuracy),
        cmocka_unit_test_prestate(test_smollm2_quant, (void *)&k_quant[0]),
        cmocka_unit_test_prestate(test_smollm2_quant, (void *)&k_quant[1]),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
