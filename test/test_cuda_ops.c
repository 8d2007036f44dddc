/*
 * test_cuda_ops.c - every CUDA kernel of the backend (through the host-pointer
 * wrappers of cuda/cu_ops.h) against its CPU twin in engine/cpu/cpu_ops.c, in
 * both precisions, on fresh random inputs (never zeros; seed printed,
 * NI_TEST_SEED reproduces). Outputs are poisoned with NaN before each call so
 * an unwritten element fails. Error measure: NMSE = sum (got - ref)^2 /
 * sum ref^2 over the whole output; thresholds: FP32 1e-10 (element-wise)
 * .. 1e-9 (reductions over long rows), BF16 1e-4. The E4M3 (FP8) KV cache:
 * its conversion bit for bit against the host twin eng_fp8_e4m3_round, stores
 * within one E4M3 step of the twin rounded through it, and attention over it
 * against cpu_attention on the host-rounded cache (BF16 output bound).
 *
 * Without a GPU every test skips with "no GPU"; in a CPU-only build with
 * "built without CUDA".
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/backend/twins.h"
#include "engine/cpu/cpu_ops.h"
#include "engine/util/util.h"
#include "test_util.h"
#ifdef NI_USE_CUDA
#include "cuda/cu.h"
#include "cuda/cu_ops.h"
#endif

#ifdef NI_USE_CUDA
static tu_rng g_rng;

static float *nan_buf(size_t n) {
    float *p = malloc(n * sizeof(float) + 4);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}

static float *rand_buf(size_t n, double lo, double hi) {
    float *p = nan_buf(n);
    tu_fill_uniform(&g_rng, p, n, lo, hi);
    return p;
}

static float *copy_buf(const float *src, size_t n) {
    float *p = malloc(n * sizeof(float) + 4);
    assert_non_null(p);
    memcpy(p, src, n * sizeof(float));
    return p;
}

static const int k_dtypes[2] = {CU_DTYPE_FP32, CU_DTYPE_BF16};

/* Threshold per dtype: fp32 value for FP32, 1e-4 for BF16. */
static double tol(int dtype, double fp32) { return dtype == CU_DTYPE_FP32 ? fp32 : 1e-4; }

static void check_nmse(const char *what, int dtype, const float *got, const float *ref, size_t n,
                       double fp32_tol) {
    char label[96];
    snprintf(label, sizeof label, "%s (%s)", what, cu_dtype_name(dtype));
    const double e = tu_check(TU_NMSE, label, got, ref, n, tol(dtype, fp32_tol));
    printf("  %-40s %s nmse %.3g\n", what, cu_dtype_name(dtype), e);
}

/* NMSE bound of values stored to an E4M3 cache against their FP32 twin: 3
 * mantissa bits give ~6e-4 for values spread over a binade (a BF16 input on
 * top adds ~1e-5); a wrong byte order or scale gives ~1. */
#define FP8_CACHE_TOL 2e-3

/* Distance between adjacent E4M3 values at magnitude a: 2^-9 below 2^-6
 * (subnormals), else 2^(floor(log2 a) - 3). */
static double fp8_step(double a) {
    if (a < 0.015625) return 1.0 / 512;
    int e;
    frexp(a, &e);
    return ldexp(1.0, e - 4);
}

/* got: an E4M3 cache read back; ref: what its twin computed before the
 * rounding. Every element must be eng_fp8_e4m3_round(ref) or, where the two
 * FP32 computations differ by an ulp across a rounding boundary, an adjacent
 * E4M3 value; at most max_off elements may be such neighbours. */
static void check_fp8_cache(const char *what, const float *got, const float *ref, size_t n,
                            size_t max_off) {
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const float r = eng_fp8_e4m3_round(ref[i]);
        if (got[i] == r) continue;
        off++;
        const double a = fmax(fabs((double)got[i]), fabs((double)r));
        if (!(fabs((double)got[i] - r) <= fp8_step(a) * (1 + 1e-9)))
            fail_msg("%s: element %zu is %.9g, the E4M3 twin %.9g (of %.9g): more than one "
                     "E4M3 step apart",
                     what, i, got[i], r, ref[i]);
    }
    printf("  %-40s fp8 %zu of %zu one E4M3 step off (at most %zu)\n", what, off, n, max_off);
    if (off > max_off)
        fail_msg("%s: %zu elements one E4M3 step off the twin, more than %zu", what, off,
                 max_off);
}
#endif

/* ---- E4M3 conversion ----------------------------------------------------------- */

/* The device conversion of the FP8 KV cache against eng_fp8_e4m3_round, value
 * for value: every finite E4M3 value, every midpoint between neighbours (the
 * ties to even) and the floats either side of it, saturation above 448 and
 * of infinities, subnormals and underflow, and random floats over 24
 * binades. Signed zeros compare equal (the sign of a zero never matters to
 * attention). */
static void test_fp8_round(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    enum { NR = 4000, CAP = 127 * 8 + 64 + NR };
    float *x = nan_buf(CAP), vals[127];
    size_t n = 0;
    for (int c = 0; c < 127; c++) { /* codes 0 .. 126 (127 is NaN): e4 m3 with bias 7 */
        const int e = c >> 3, m = c & 7;
        vals[c] = e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(8 + m), e - 10);
    }
    assert_true(vals[126] == 448.0f && vals[8] == 0.015625f && vals[1] == ldexpf(1, -9));
    for (int c = 0; c < 127; c++)
        for (int sg = 0; sg < 2; sg++) {
            const float s = sg ? -1.0f : 1.0f;
            x[n++] = s * vals[c];
            if (c == 126) continue;
            const float mid = 0.5f * (vals[c] + vals[c + 1]);
            x[n++] = s * mid;
            x[n++] = s * nextafterf(mid, 0.0f);
            x[n++] = s * nextafterf(mid, INFINITY);
        }
    static const float special[] = {449.0f, 456.0f, 464.0f, 464.5f, 479.0f, 480.0f, 500.0f,
                                    1e6f, 3.4e38f, INFINITY, 1e-30f, 1e-40f, 0.0009765625f,
                                    0.0009765626f, 0.00292968750f, 0.0146484375f, 0.0151367188f};
    for (size_t i = 0; i < NI_ARRAY_LEN(special); i++) {
        x[n++] = special[i];
        x[n++] = -special[i];
    }
    for (int i = 0; i < NR; i++) {
        const float mag = exp2f((float)tu_uniform(&g_rng, -14.0, 10.0));
        x[n++] = tu_int(&g_rng, 2) ? mag : -mag;
    }
    assert_true(n <= CAP);
    float *y = copy_buf(x, n);
    assert_int_equal(cu_op_round_fp8(y, n), 0);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        const float r = eng_fp8_e4m3_round(x[i]);
        if (y[i] != r && bad++ < 10)
            printf("  fp8 round: x %.9g (%a): device %.9g, host %.9g\n", x[i], x[i], y[i], r);
    }
    printf("  %-40s %zu values, %zu differ\n", "fp8 e4m3 round", n, bad);
    assert_int_equal(bad, 0);
    free(x);
    free(y);
#endif
}

/* ---- embed ---------------------------------------------------------------- */

static void test_embed(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    const int V = 1000, D = 96, n = 37;
    float *tab = rand_buf((size_t)V * D, -1, 1);
    int32_t tok[37];
    for (int i = 0; i < n; i++) tok[i] = tu_int(&g_rng, V);
    float *ref = nan_buf((size_t)n * D);
    cpu_embed(CPU_SERIAL, ref, tab, tok, n, D);
    for (int t = 0; t < 2; t++) {
        float *got = nan_buf((size_t)n * D);
        assert_int_equal(cu_op_embed(got, tab, V, tok, n, D, k_dtypes[t]), 0);
        check_nmse("embed", k_dtypes[t], got, ref, (size_t)n * D, 1e-12);
        free(got);
    }
    free(tab);
    free(ref);
#endif
}

/* ---- rmsnorm (+ fused add, + gather) ---------------------------------------- */

static void test_rmsnorm(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    const int dims[] = {64, 1000, 4133};
    for (size_t di = 0; di < NI_ARRAY_LEN(dims); di++) {
        const int D = dims[di], n_x = 31;
        for (int variant = 0; variant < 4; variant++) { /* bit 0: add, bit 1: gather */
            const int use_add = variant & 1, use_rows = variant & 2;
            const int n = use_rows ? 11 : n_x;
            float *x0 = rand_buf((size_t)n_x * D, -2, 2), *w = rand_buf(D, 0.5, 1.5);
            float *add = use_add ? rand_buf((size_t)n * D, -1, 1) : NULL;
            int32_t rows[31], perm[31];
            for (int i = 0; i < n_x; i++) perm[i] = i;
            for (int i = n_x - 1; i > 0; i--) {
                const int j = tu_int(&g_rng, i + 1), t = perm[i];
                perm[i] = perm[j];
                perm[j] = t;
            }
            for (int i = 0; i < n; i++) rows[i] = perm[i]; /* distinct rows */
            /* CPU twin: gather, add, norm */
            float *xr = copy_buf(x0, (size_t)n_x * D), *ref = nan_buf((size_t)n * D);
            float *g = nan_buf((size_t)n * D);
            for (int i = 0; i < n; i++) {
                float *src = xr + (size_t)(use_rows ? rows[i] : i) * D;
                if (add) cpu_add(CPU_SERIAL, src, add + (size_t)i * D, (size_t)D);
                memcpy(g + (size_t)i * D, src, (size_t)D * sizeof(float));
            }
            cpu_rmsnorm(CPU_SERIAL, ref, g, w, n, D, 1e-5f);
            for (int t = 0; t < 2; t++) {
                float *xg = copy_buf(x0, (size_t)n_x * D), *got = nan_buf((size_t)n * D);
                assert_int_equal(cu_op_rmsnorm(got, xg, n_x, add, use_rows ? rows : NULL, w, n,
                                               D, 1e-5f, k_dtypes[t]),
                                 0);
                char what[64];
                snprintf(what, sizeof what, "rmsnorm dim %d%s%s", D, use_add ? " +add" : "",
                         use_rows ? " gather" : "");
                check_nmse(what, k_dtypes[t], got, ref, (size_t)n * D, 1e-10);
                /* the residual stream is FP32 in both modes: exact */
                check_nmse("  residual after fused add", CU_DTYPE_FP32, xg, xr, (size_t)n_x * D,
                           1e-12);
                free(xg);
                free(got);
            }
            free(x0); free(w); free(add); free(xr); free(ref); free(g);
        }
    }
#endif
}

/* ---- swiglu --------------------------------------------------------------- */

static void test_swiglu(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    const int n = 13, H = 1537;
    float *gate = rand_buf((size_t)n * H, -12, 12), *up = rand_buf((size_t)n * H, -3, 3);
    float *ref = nan_buf((size_t)n * H);
    cpu_swiglu(CPU_SERIAL, ref, gate, up, n, H);
    for (int t = 0; t < 2; t++) {
        float *got = nan_buf((size_t)n * H);
        assert_int_equal(cu_op_swiglu(got, gate, up, n, H, k_dtypes[t]), 0);
        check_nmse("swiglu", k_dtypes[t], got, ref, (size_t)n * H, 1e-10);
        free(got);
    }
    free(gate); free(up); free(ref);
#endif
}

/* ---- matmul (cuBLAS) -------------------------------------------------------- */

static void test_matmul(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    const int shapes[][3] = {{1, 64, 97}, {7, 256, 384}, {64, 576, 1536}, {33, 1000, 77},
                             {130, 128, 405}};
    for (size_t s = 0; s < NI_ARRAY_LEN(shapes); s++) {
        const int n = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
        float *x = rand_buf((size_t)n * in, -1, 1), *w = rand_buf((size_t)out * in, -1, 1);
        float *y0 = rand_buf((size_t)n * out, -1, 1);
        for (int acc = 0; acc <= 1; acc++) {
            float *ref = copy_buf(y0, (size_t)n * out);
            cpu_matmul(CPU_SERIAL, ref, x, w, n, in, out, acc);
            for (int t = 0; t < 2; t++) {
                float *got = acc ? copy_buf(y0, (size_t)n * out) : nan_buf((size_t)n * out);
                assert_int_equal(cu_op_matmul(got, x, w, n, in, out, acc, k_dtypes[t]), 0);
                char what[64];
                snprintf(what, sizeof what, "matmul %dx%dx%d%s", n, in, out, acc ? " +acc" : "");
                check_nmse(what, k_dtypes[t], got, ref, (size_t)n * out, 1e-10);
                free(got);
            }
            free(ref);
        }
        free(x); free(w); free(y0);
    }
#endif
}

/* ---- fused BF16 GEMV (decode projections) ------------------------------------ */

/* k_gemv against its composed CPU twins: rmsnorm (with gather) -> matmul
 * (-> +addend | swiglu), for every row count 1..8 and the three epilogues,
 * on shapes with ragged row counts and inputs that are and are not a
 * multiple of the 256 inputs a warp reads per step. */
static void test_gemv(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    const int shapes[][2] = {{64, 97}, {576, 960}, {2048, 77}, {1544, 333}, {5632, 130}};
    for (size_t si = 0; si < NI_ARRAY_LEN(shapes); si++) {
        const int in = shapes[si][0], out = shapes[si][1], n_x = 11;
        for (int n = 1; n <= 8; n++)
            for (int mode = 0; mode < 3; mode++)
                for (int norm = 0; norm < 2; norm++) {
                    const int w_rows = mode == 2 ? 2 * out : out;
                    float *x = rand_buf((size_t)n_x * in, -2, 2);
                    float *w = rand_buf((size_t)w_rows * in, -1, 1);
                    float *nw = rand_buf(in, 0.5, 1.5), *y0 = rand_buf((size_t)n * out, -1, 1);
                    int32_t rows[8];
                    for (int i = 0; i < n; i++) rows[i] = (3 * i + 5) % n_x; /* distinct */
                    const int gather = norm && (n & 1);
                    /* twin */
                    float *xin = nan_buf((size_t)n * in);
                    if (norm) {
                        float *g = nan_buf((size_t)n * in);
                        for (int i = 0; i < n; i++)
                            memcpy(g + (size_t)i * in, x + (size_t)(gather ? rows[i] : i) * in,
                                   sizeof(float) * (size_t)in);
                        cpu_rmsnorm(CPU_SERIAL, xin, g, nw, n, in, 1e-5f);
                        free(g);
                    } else {
                        memcpy(xin, x, sizeof(float) * (size_t)n * in);
                    }
                    float *ref = copy_buf(y0, (size_t)n * out);
                    if (mode == 2) {
                        float *gu = nan_buf((size_t)n * w_rows);
                        cpu_matmul(CPU_SERIAL, gu, xin, w, n, in, w_rows, 0);
                        float *gate = nan_buf((size_t)n * out), *up = nan_buf((size_t)n * out);
                        for (int i = 0; i < n; i++) {
                            memcpy(gate + (size_t)i * out, gu + (size_t)i * w_rows,
                                   sizeof(float) * (size_t)out);
                            memcpy(up + (size_t)i * out, gu + (size_t)i * w_rows + out,
                                   sizeof(float) * (size_t)out);
                        }
                        cpu_swiglu(CPU_SERIAL, ref, gate, up, n, out);
                        free(gu); free(gate); free(up);
                    } else {
                        cpu_matmul(CPU_SERIAL, ref, xin, w, n, in, out, mode == 1);
                    }
                    float *got = mode == 1 ? copy_buf(y0, (size_t)n * out) : nan_buf((size_t)n * out);
                    assert_int_equal(cu_op_gemv(got, x, norm ? n_x : n, gather ? rows : NULL,
                                                norm ? nw : NULL, 1e-5f, w, n, in, out, mode),
                                     0);
                    char what[80];
                    snprintf(what, sizeof what, "gemv n%d %dx%d %s%s%s", n, in, out,
                             mode == 0 ? "store" : mode == 1 ? "add" : "swiglu",
                             norm ? " +norm" : "", gather ? " gather" : "");
                    if (n == 1 || n == 3 || n == 8)
                        check_nmse(what, CU_DTYPE_BF16, got, ref, (size_t)n * out, 0);
                    else
                        tu_check(TU_NMSE, what, got, ref, (size_t)n * out, tol(CU_DTYPE_BF16, 0));
                    free(x); free(w); free(nw); free(y0); free(xin); free(ref); free(got);
                }
    }
    /* shapes the kernel refuses: in not a multiple of 8, more than 8 rows */
    float z[16 * 8] = {0};
    assert_int_equal(cu_op_gemv(z, z, 1, NULL, NULL, 0, z, 1, 12, 1, 0), NI_EINVAL);
    assert_int_equal(cu_op_gemv(z, z, 9, NULL, NULL, 0, z, 9, 8, 1, 0), NI_EINVAL);
#endif
}

/* ---- qk-norm + RoPE + KV store ------------------------------------------------ */

#ifdef NI_USE_CUDA
enum { R_LLAMA, R_INTERLEAVED, R_QWEN3, R_LLAMA3, N_ROPE };

static mdl_config rope_cfg(int v) {
    mdl_config c;
    memset(&c, 0, sizeof c);
    c.n_heads = 8;
    c.n_kv_heads = 2;
    c.head_dim = 64;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    if (v == R_INTERLEAVED) c.rope_interleaved = 1;
    if (v == R_QWEN3) {
        c.head_dim = 128;
        c.n_heads = 16;
        c.n_kv_heads = 8;
        c.rope_theta = 1000000.0f;
        c.has_qk_norm = 1;
        c.norm_eps = 1e-6f;
    }
    if (v == R_LLAMA3) {
        c.rope_theta = 500000.0f;
        c.rope_scaling = MDL_ROPE_LLAMA3;
        c.rope_factor = 8.0f;
        c.rope_low_freq_factor = 1.0f;
        c.rope_high_freq_factor = 4.0f;
        c.rope_orig_max_pos = 64;
    }
    return c;
}
#endif

static void test_rope_kv(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    for (int v = 0; v < N_ROPE; v++) {
        const mdl_config c = rope_cfg(v);
        const int n = 23, hd = c.head_dim, qd = c.n_heads * hd, kvd = c.n_kv_heads * hd;
        const int bs = 16, n_blocks = 40, n_slots = n_blocks * bs, max_blocks = 200;
        int32_t pos[23], seq[23], slot[23], perm[40];
        for (int i = 0; i < n_blocks; i++) perm[i] = i;
        for (int i = n_blocks - 1; i > 0; i--) {
            const int j = tu_int(&g_rng, i + 1), t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        int max_pos = 0;
        int32_t *tables = calloc((size_t)n * max_blocks, sizeof(int32_t));
        for (int i = 0; i < n; i++) { /* token i: its own sequence, its own block */
            pos[i] = i < 3 ? i : tu_int(&g_rng, 3000);
            seq[i] = i;
            tables[(size_t)i * max_blocks + pos[i] / bs] = perm[i];
            slot[i] = perm[i] * bs + pos[i] % bs;
            if (pos[i] + 1 > max_pos) max_pos = pos[i] + 1;
        }
        float *q = rand_buf((size_t)n * qd, -2, 2), *k = rand_buf((size_t)n * kvd, -2, 2);
        float *vv = rand_buf((size_t)n * kvd, -2, 2);
        float *qn = c.has_qk_norm ? rand_buf(hd, 0.5, 2) : NULL;
        float *kn = c.has_qk_norm ? rand_buf(hd, 0.5, 2) : NULL;
        float *kc0 = rand_buf((size_t)n_slots * kvd, -1, 1);
        float *vc0 = rand_buf((size_t)n_slots * kvd, -1, 1);

        /* CPU twin */
        float *qr = copy_buf(q, (size_t)n * qd), *kr = copy_buf(k, (size_t)n * kvd);
        float *kcr = copy_buf(kc0, (size_t)n_slots * kvd), *vcr = copy_buf(vc0, (size_t)n_slots * kvd);
        if (qn) {
            cpu_head_rmsnorm(CPU_SERIAL, qr, qn, n, c.n_heads, hd, c.norm_eps);
            cpu_head_rmsnorm(CPU_SERIAL, kr, kn, n, c.n_kv_heads, hd, c.norm_eps);
        }
        cpu_rope rope;
        assert_int_equal(cpu_rope_init(&rope, &c, max_pos), 0);
        cpu_rope_apply(CPU_SERIAL, &rope, qr, pos, n, c.n_heads);
        cpu_rope_apply(CPU_SERIAL, &rope, kr, pos, n, c.n_kv_heads);
        cpu_rope_free(&rope);
        const cpu_kv_layer kv = {kcr, vcr, bs, kvd};
        const cpu_tok_map map = {n, pos, seq, tables, max_blocks};
        cpu_kv_store(CPU_SERIAL, &kv, &map, kr, vv);

        static const char *names[N_ROPE] = {"half-split", "interleaved", "qwen3 qk-norm",
                                            "llama3 scaling"};
        for (int t = 0; t < 2; t++) {
            float *qg = copy_buf(q, (size_t)n * qd);
            float *kcg = copy_buf(kc0, (size_t)n_slots * kvd);
            float *vcg = copy_buf(vc0, (size_t)n_slots * kvd);
            assert_int_equal(cu_op_rope_kv(qg, k, vv, qn, kn, &c, NULL, pos, slot, n, kcg, vcg,
                                           n_slots, k_dtypes[t]),
                             0);
            char what[64];
            snprintf(what, sizeof what, "rope %s: q", names[v]);
            check_nmse(what, k_dtypes[t], qg, qr, (size_t)n * qd, 1e-10);
            snprintf(what, sizeof what, "rope %s: k cache", names[v]);
            check_nmse(what, k_dtypes[t], kcg, kcr, (size_t)n_slots * kvd, 1e-10);
            snprintf(what, sizeof what, "rope %s: v cache", names[v]);
            check_nmse(what, k_dtypes[t], vcg, vcr, (size_t)n_slots * kvd, 1e-12);
            free(qg); free(kcg); free(vcg);
        }
        { /* E4M3 caches (q stays FP32): the twin's caches rounded through eng_fp8_e4m3_round */
            float *qg = copy_buf(q, (size_t)n * qd);
            float *kcg = copy_buf(kc0, (size_t)n_slots * kvd);
            float *vcg = copy_buf(vc0, (size_t)n_slots * kvd);
            assert_int_equal(cu_op_rope_kv(qg, k, vv, qn, kn, &c, NULL, pos, slot, n, kcg, vcg,
                                           n_slots, CU_DTYPE_FP8),
                             0);
            char what[64];
            snprintf(what, sizeof what, "rope %s: q (fp8 cache)", names[v]);
            check_nmse(what, CU_DTYPE_FP32, qg, qr, (size_t)n * qd, 1e-10);
            snprintf(what, sizeof what, "rope %s: k cache", names[v]);
            check_fp8_cache(what, kcg, kcr, (size_t)n_slots * kvd, (size_t)n * kvd / 50);
            snprintf(what, sizeof what, "rope %s: v cache", names[v]);
            check_fp8_cache(what, vcg, vcr, (size_t)n_slots * kvd, 0); /* copied: exact */
            free(qg); free(kcg); free(vcg);
        }
        free(tables); free(q); free(k); free(vv); free(qn); free(kn); free(kc0); free(vc0);
        free(qr); free(kr); free(kcr); free(vcr);
    }
#endif
}

/* The QKV GEMV with the RoPE + KV-store epilogue against rmsnorm + matmul +
 * rope + kv_store on the CPU: 1 and 2 rows, the three rotations without
 * qk-norm, a padding row (slot -1) that must leave the caches alone. */
static void test_gemv_rope(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    static const int variants[] = {R_LLAMA, R_INTERLEAVED, R_LLAMA3};
    for (size_t vi = 0; vi < NI_ARRAY_LEN(variants); vi++)
        for (int n = 1; n <= 2; n++)
            for (int pad = 0; pad < n; pad++) {
                mdl_config c = rope_cfg(variants[vi]);
                c.dim = 256;
                const int D = c.dim, hd = c.head_dim, qd = c.n_heads * hd;
                const int kvd = c.n_kv_heads * hd, out = qd + 2 * kvd;
                const int bs = 16, n_blocks = 8, n_slots = n_blocks * bs;
                int32_t pos[2], seq[2] = {0, 1}, slot[2], tables[2 * 8] = {0};
                for (int i = 0; i < n; i++) {
                    pos[i] = tu_int(&g_rng, 5 * bs);
                    const int blk = (3 * i + 1) % n_blocks;
                    tables[i * 8 + pos[i] / bs] = blk;
                    slot[i] = blk * bs + pos[i] % bs;
                }
                if (pad) slot[n - 1] = -1; /* a decode-graph padding row */
                float *x = rand_buf((size_t)n * D, -2, 2), *nw = rand_buf(D, 0.5, 1.5);
                float *w = rand_buf((size_t)out * D, -0.2, 0.2);
                float *kc0 = rand_buf((size_t)n_slots * kvd, -1, 1);
                float *vc0 = rand_buf((size_t)n_slots * kvd, -1, 1);
                /* twin */
                float *xn = nan_buf((size_t)n * D), *qkv = nan_buf((size_t)n * out);
                cpu_rmsnorm(CPU_SERIAL, xn, x, nw, n, D, c.norm_eps);
                cpu_matmul(CPU_SERIAL, qkv, xn, w, n, D, out, 0);
                float *qr = nan_buf((size_t)n * qd), *kr = nan_buf((size_t)n * kvd);
                float *vr = nan_buf((size_t)n * kvd);
                for (int i = 0; i < n; i++) {
                    memcpy(qr + (size_t)i * qd, qkv + (size_t)i * out, sizeof(float) * qd);
                    memcpy(kr + (size_t)i * kvd, qkv + (size_t)i * out + qd, sizeof(float) * kvd);
                    memcpy(vr + (size_t)i * kvd, qkv + (size_t)i * out + qd + kvd,
                           sizeof(float) * kvd);
                }
                int max_pos = 1;
                for (int i = 0; i < n; i++)
                    if (pos[i] + 1 > max_pos) max_pos = pos[i] + 1;
                cpu_rope rope;
                assert_int_equal(cpu_rope_init(&rope, &c, max_pos), 0);
                cpu_rope_apply(CPU_SERIAL, &rope, qr, pos, n, c.n_heads);
                cpu_rope_apply(CPU_SERIAL, &rope, kr, pos, n, c.n_kv_heads);
                cpu_rope_free(&rope);
                float *kcr = copy_buf(kc0, (size_t)n_slots * kvd);
                float *vcr = copy_buf(vc0, (size_t)n_slots * kvd);
                const cpu_kv_layer kv = {kcr, vcr, bs, kvd};
                const cpu_tok_map map = {n - pad, pos, seq, tables, 8}; /* the padding row last */
                cpu_kv_store(CPU_SERIAL, &kv, &map, kr, vr);

                float *qg = nan_buf((size_t)n * qd);
                float *kcg = copy_buf(kc0, (size_t)n_slots * kvd);
                float *vcg = copy_buf(vc0, (size_t)n_slots * kvd);
                assert_int_equal(cu_op_gemv_rope(qg, x, nw, w, &c, pos, slot, n, kcg, vcg,
                                                 n_slots, CU_DTYPE_BF16),
                                 0);
                char what[80];
                snprintf(what, sizeof what, "gemv+rope v%d n%d%s: q", variants[vi], n,
                         pad ? " pad" : "");
                check_nmse(what, CU_DTYPE_BF16, qg, qr, (size_t)n * qd, 0);
                snprintf(what, sizeof what, "gemv+rope v%d n%d%s: k cache", variants[vi], n,
                         pad ? " pad" : "");
                check_nmse(what, CU_DTYPE_BF16, kcg, kcr, (size_t)n_slots * kvd, 0);
                snprintf(what, sizeof what, "gemv+rope v%d n%d%s: v cache", variants[vi], n,
                         pad ? " pad" : "");
                check_nmse(what, CU_DTYPE_BF16, vcg, vcr, (size_t)n_slots * kvd, 0);
                /* E4M3 caches: the same epilogue storing E4M3. Against the twin within
                 * FP8_CACHE_TOL, and element for element against the BF16 run's values
                 * rounded through E4M3 (one step apart only where rounding the FP32 sum
                 * to BF16 first moved it across an E4M3 midpoint: ~1 in 32) */
                float *qg8 = nan_buf((size_t)n * qd);
                float *kcg8 = copy_buf(kc0, (size_t)n_slots * kvd);
                float *vcg8 = copy_buf(vc0, (size_t)n_slots * kvd);
                assert_int_equal(cu_op_gemv_rope(qg8, x, nw, w, &c, pos, slot, n, kcg8, vcg8,
                                                 n_slots, CU_DTYPE_FP8),
                                 0);
                const size_t nc = (size_t)n_slots * kvd;
                snprintf(what, sizeof what, "gemv+rope v%d n%d%s: q (fp8)", variants[vi], n,
                         pad ? " pad" : "");
                check_nmse(what, CU_DTYPE_BF16, qg8, qr, (size_t)n * qd, 0);
                snprintf(what, sizeof what, "gemv+rope v%d n%d%s: k fp8", variants[vi], n,
                         pad ? " pad" : "");
                double e8 = tu_check(TU_NMSE, what, kcg8, kcr, nc, FP8_CACHE_TOL);
                printf("  %-40s fp8 nmse %.3g\n", what, e8);
                check_fp8_cache(what, kcg8, kcg, nc, nc / 10);
                snprintf(what, sizeof what, "gemv+rope v%d n%d%s: v fp8", variants[vi], n,
                         pad ? " pad" : "");
                e8 = tu_check(TU_NMSE, what, vcg8, vcr, nc, FP8_CACHE_TOL);
                printf("  %-40s fp8 nmse %.3g\n", what, e8);
                check_fp8_cache(what, vcg8, vcg, nc, nc / 10);
                free(qg8); free(kcg8); free(vcg8);
                free(x); free(nw); free(w); free(kc0); free(vc0); free(xn); free(qkv);
                free(qr); free(kr); free(vr); free(kcr); free(vcr); free(qg); free(kcg);
                free(vcg);
            }
#endif
}

/* ---- attention over the paged cache --------------------------------------------- */

#ifdef NI_USE_CUDA
/* NMSE bound of the tensor-core prefill kernel (BF16 only): q and the
 * probabilities P are rounded to BF16 too (k_attention keeps both FP32), a
 * few times the 1e-5 of the BF16 cache alone; a wrong fragment layout or
 * mask gives ~1. */
#define TC_ATT_TOL 5e-4

/* One attention batch (sequence s: len[s] new tokens at positions p0[s] ..)
 * over a cache of scrambled blocks of bs rows: cu_op_attention with the
 * kernel selection kernel, in both dtypes (BF16 only for CU_ATT_TC; bound
 * TC_ATT_TOL wherever BF16 runs the TC kernel) and every split factor of
 * splits[], against cpu_attention; then BF16 over E4M3 caches (CU_DTYPE_FP8:
 * the caches rounded through eng_fp8_e4m3_round on the host, so the upload
 * is exact and the twin, cpu_attention on the rounded caches, differs only
 * by the BF16 output: the BF16 bound; TC_ATT_TOL where the TC kernel runs,
 * which converts the E4M3 tiles to BF16 while staging them). */
static void att_check(const char *kind, cu_att_kernel kernel, int ns, const int *len,
                      const int *p0, int bs, int nh, int nkv, int hd, const int *splits,
                      int n_split) {
    const int qd = nh * hd, kvd = nkv * hd;
    int32_t *ss = malloc(sizeof(int32_t) * (ns + 1)), *pos0 = malloc(sizeof(int32_t) * ns);
    int n = 0, max_blocks = 1, n_blocks = 7; /* 7 blocks no sequence owns */
    int prefill = 0; /* AUTO then takes the TC kernel for BF16 at hd 32 / 64 / 128 */
    for (int s = 0; s < ns; s++) {
        prefill |= len[s] > 1;
        ss[s] = n;
        pos0[s] = p0[s];
        n += len[s];
        const int need = (p0[s] + len[s] + bs - 1) / bs;
        if (need > max_blocks) max_blocks = need;
        n_blocks += need;
    }
    ss[ns] = n;
    int32_t *perm = malloc(sizeof(int32_t) * n_blocks);
    int32_t *tables = malloc(sizeof(int32_t) * (size_t)ns * max_blocks);
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        const int j = tu_int(&g_rng, i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int s = 0, next = 0; s < ns; s++) /* distinct scattered blocks; unused entries 0 */
        for (int b = 0; b < max_blocks; b++)
            tables[(size_t)s * max_blocks + b] =
                b < (p0[s] + len[s] + bs - 1) / bs ? perm[next++] : 0;
    const size_t n_slots = (size_t)n_blocks * bs;
    float *q = rand_buf((size_t)n * qd, -3, 3);
    float *kc = rand_buf(n_slots * kvd, -3, 3), *vc = rand_buf(n_slots * kvd, -2, 2);
    int32_t *tpos = malloc(sizeof(int32_t) * n), *tseq = malloc(sizeof(int32_t) * n);
    int max_ctx = 0;
    for (int s = 0; s < ns; s++)
        for (int i = ss[s]; i < ss[s + 1]; i++) {
            tpos[i] = p0[s] + i - ss[s];
            tseq[i] = s;
            if (tpos[i] + 1 > max_ctx) max_ctx = tpos[i] + 1;
        }
    const size_t scratch_n = cpu_attention_scratch(nh, nkv, hd, max_ctx);
    float *ref = nan_buf((size_t)n * qd), *scratch = malloc(sizeof(float) * scratch_n);
    const cpu_kv_layer kv = {kc, vc, bs, kvd};
    const cpu_tok_map map = {n, tpos, tseq, tables, max_blocks};
    cpu_attention(CPU_SERIAL, ref, q, &kv, &map, nh, nkv, hd, scratch, scratch_n);
    float *kc8 = copy_buf(kc, n_slots * kvd), *vc8 = copy_buf(vc, n_slots * kvd);
    for (size_t i = 0; i < n_slots * kvd; i++) {
        kc8[i] = eng_fp8_e4m3_round(kc8[i]);
        vc8[i] = eng_fp8_e4m3_round(vc8[i]);
    }
    /* where the TC kernel runs (forced, or AUTO's choice for prefill batches): its bound */
    const int on_tc = kernel == CU_ATT_TC ||
                      (kernel == CU_ATT_AUTO && prefill && (hd == 32 || hd == 64 || hd == 128));
    float *ref8 = nan_buf((size_t)n * qd);
    const cpu_kv_layer kv8 = {kc8, vc8, bs, kvd};
    cpu_attention(CPU_SERIAL, ref8, q, &kv8, &map, nh, nkv, hd, scratch, scratch_n);
    /* decode batches: both ways the decode kernel reads E4M3 (16- and 8-byte loads) */
    for (int sp = 0; sp < n_split; sp++)
        for (int wi = 0; wi < (prefill ? 1 : 2); wi++) {
            cu_op_att_decode_fp8_wide(wi == 0);
            float *got = nan_buf((size_t)n * qd);
            const int rc = cu_op_attention(got, q, kc8, vc8, n_blocks, bs, ns, ss, pos0, tables,
                                           max_blocks, nh, nkv, hd, splits[sp], CU_DTYPE_FP8,
                                           kernel);
            assert_int_equal(rc, 0);
            char what[96];
            snprintf(what, sizeof what, "%s h%d kv%d hd%d bs%d splits %d%s", kind, nh, nkv, hd,
                     bs, splits[sp], prefill ? "" : wi == 0 ? " 16B" : " 8B");
            const double e = tu_check(TU_NMSE, what, got, ref8, (size_t)n * qd, on_tc ? TC_ATT_TOL : 1e-4);
            printf("  %-40s fp8 cache%s nmse %.3g\n", what, on_tc ? " (tc)" : "", e);
            free(got);
        }
    cu_op_att_decode_fp8_wide(-1);
    free(kc8); free(vc8); free(ref8);
    for (int t = kernel == CU_ATT_TC ? 1 : 0; t < 2; t++)
        for (int sp = 0; sp < n_split; sp++) {
            float *got = nan_buf((size_t)n * qd);
            assert_int_equal(cu_op_attention(got, q, kc, vc, n_blocks, bs, ns, ss, pos0, tables,
                                             max_blocks, nh, nkv, hd, splits[sp], k_dtypes[t],
                                             kernel),
                             0);
            char what[96];
            snprintf(what, sizeof what, "%s h%d kv%d hd%d bs%d splits %d", kind, nh, nkv, hd, bs,
                     splits[sp]);
            if (k_dtypes[t] == CU_DTYPE_BF16 && on_tc) {
                const double e = tu_check(TU_NMSE, what, got, ref, (size_t)n * qd, TC_ATT_TOL);
                printf("  %-40s tc bf16 nmse %.3g\n", what, e);
            } else {
                check_nmse(what, k_dtypes[t], got, ref, (size_t)n * qd, 1e-9);
            }
            free(got);
        }
    free(q); free(kc); free(vc); free(tpos); free(tseq); free(ref); free(scratch);
    free(ss); free(pos0); free(perm); free(tables);
}
#endif

/* The SIMT k_attention (forced with CU_ATT_SIMT, which AUTO would replace by
 * the tensor-core kernel for BF16 at hd 64 / 128: test_attention_prefill). */
static void test_attention(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    /* n_heads, n_kv, head_dim: GQA 4, MHA, GQA 8 at hd 128, qwen3-0.6B shape, odd hd */
    const int shapes[][3] = {{8, 2, 64}, {4, 4, 16}, {16, 2, 128}, {16, 8, 128}, {6, 3, 24}};
    /* a mixed batch: long prefill from 0, decode at 300, a chunk at 40, decode at 5,
     * a 70-token chunk at 131 (several items per sequence) */
    const int len[] = {50, 1, 17, 1, 70}, p0[] = {0, 300, 40, 5, 131};
    const int splits[] = {0, 1, 3, 7};
    for (size_t si = 0; si < NI_ARRAY_LEN(shapes); si++)
        att_check("attention", CU_ATT_SIMT, (int)NI_ARRAY_LEN(len), len, p0, 16,
                  shapes[si][0], shapes[si][1], shapes[si][2], splits,
                  (int)NI_ARRAY_LEN(splits));
#endif
}

/* A decode-only batch (every sequence one token: max_nq == 1, the decode
 * kernel of cu_att_decode.cu for hd 16 / 32 / 64 / 128, k_attention otherwise), contexts
 * around the 32-key tiles and long ones, two block sizes, G = 1..16, split
 * factors that leave most splits empty for the short contexts; all of it
 * again with the coarse chunks staged through shared memory (stage 1). */
static void test_attention_decode(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    /* n_heads, n_kv, hd: G 1, 3 (SmolLM2), 8 (TinyLlama), 4 (Llama-3.2-1B), 2 (Qwen3-0.6B),
     * 8 at hd 128, 12 and 16 (two row groups), hd 16 / 32 (the tiny models), and the
     * generic path's hd 24 */
    const int shapes[][3] = {{4, 4, 64},   {9, 3, 64}, {32, 4, 64}, {32, 8, 64},
                             {16, 8, 128}, {8, 1, 128}, {12, 1, 64}, {32, 2, 128},
                             {4, 2, 16},   {8, 2, 32},  {6, 3, 24}};
    const int ctx[] = {1, 2, 31, 32, 33, 200, 1000, 4097};
    enum { NS = 8 };
    int len[NS], p0[NS];
    for (int s = 0; s < NS; s++) {
        len[s] = 1;
        p0[s] = ctx[s] - 1;
    }
    const int splits[] = {0, 1, 3, 7, 64}, bsz[] = {16, 7};
    /* stage 1: the coarse chunks through shared memory (cu_att_args.stage) */
    for (int stage = 0; stage < 2; stage++) {
        cu_op_att_decode_stage(stage);
        for (size_t si = 0; si < NI_ARRAY_LEN(shapes); si++)
            for (size_t b = 0; b < NI_ARRAY_LEN(bsz); b++)
                att_check(stage ? "decode att staged" : "decode att", CU_ATT_AUTO, NS, len, p0,
                          bsz[b], shapes[si][0], shapes[si][1], shapes[si][2], splits,
                          (int)NI_ARRAY_LEN(splits));
    }
    cu_op_att_decode_stage(0);
#endif
}

/* The tensor-core prefill kernel (cu_att_prefill.cu, forced with CU_ATT_TC;
 * BF16) against cpu_attention: head dims 32 / 64 / 128, G = 1, 4, 8;
 * batch A: four sequences of 1, 17, 100 and 513 new tokens (not multiples
 * of the 64-key tile or of the items) after prefixes of 5, 0, 64 and 31
 * cached tokens; batch B: a mixed batch of decode tokens (deep contexts,
 * masked rows in the m16 tiles) and prefill chunks; batch C: decode only
 * (the TC kernel on max_nq == 1). Block tables shuffled (att_check), two
 * block sizes, split-K automatic, 1, 3 and 7 (empty and partly masked
 * splits). The automatic selection must take the same kernel for A. */
static void test_attention_prefill(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    /* n_heads, n_kv, hd: G 1 / 4 / 8 at hd 64 and 128 (TinyLlama 32/4/64,
     * Llama-3-8B 32/8/128 in miniature), hd 32 */
    const int shapes[][3] = {{4, 4, 64}, {16, 4, 64}, {16, 2, 64}, {4, 4, 128},
                             {8, 2, 128}, {16, 2, 128}, {8, 2, 32}};
    const int la[] = {1, 17, 100, 513}, pa[] = {5, 0, 64, 31};
    const int lb[] = {1, 64, 1, 1, 33, 2}, pb[] = {300, 0, 1000, 7, 200, 63};
    const int lc[] = {1, 1, 1}, pc[] = {0, 64, 700};
    const int splits[] = {0, 1, 3, 7}, auto_split[] = {0};
    for (size_t si = 0; si < NI_ARRAY_LEN(shapes); si++) {
        const int nh = shapes[si][0], nkv = shapes[si][1], hd = shapes[si][2];
        att_check("tc prefill", CU_ATT_TC, (int)NI_ARRAY_LEN(la), la, pa, 16, nh, nkv, hd, splits,
                  (int)NI_ARRAY_LEN(splits));
        att_check("tc mixed", CU_ATT_TC, (int)NI_ARRAY_LEN(lb), lb, pb, 7, nh, nkv, hd, splits,
                  (int)NI_ARRAY_LEN(splits));
        att_check("tc decode", CU_ATT_TC, (int)NI_ARRAY_LEN(lc), lc, pc, 16, nh, nkv, hd, splits,
                  (int)NI_ARRAY_LEN(splits));
    }
    /* AUTO takes the TC kernel for a BF16 prefill batch: same bound holds */
    att_check("auto prefill", CU_ATT_AUTO, (int)NI_ARRAY_LEN(la), la, pa, 16, 32, 4, 64,
              auto_split, 1);
    /* the TC kernel refuses an FP32 cache and unsupported head dims */
    {
        const int32_t ss[2] = {0, 2}, p0[1] = {0}, tb[1] = {0};
        float *q = rand_buf(2 * 4 * 24, -1, 1), *kc = rand_buf(16 * 2 * 24, -1, 1);
        float *out = nan_buf(2 * 4 * 24);
        assert_int_equal(cu_op_attention(out, q, kc, kc, 1, 16, 1, ss, p0, tb, 1, 4, 2, 24, 1,
                                         CU_DTYPE_BF16, CU_ATT_TC),
                         NI_EINVAL);
        assert_int_equal(cu_op_attention(out, q, kc, kc, 1, 16, 1, ss, p0, tb, 1, 4, 2, 16, 1,
                                         CU_DTYPE_FP32, CU_ATT_TC),
                         NI_EINVAL);
        free(q);
        free(kc);
        free(out);
    }
#endif
}

int main(void) {
#ifdef NI_USE_CUDA
    tu_seed(&g_rng, "test_cuda_ops");
    tu_print_gpu();
#endif
    /* NI_TEST_FILTER=<glob> runs a subset (e.g. under compute-sanitizer) */
    tu_filters();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp8_round), cmocka_unit_test(test_embed), cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_swiglu),  cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_gemv),
        cmocka_unit_test(test_rope_kv), cmocka_unit_test(test_gemv_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_decode), cmocka_unit_test(test_attention_prefill),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
