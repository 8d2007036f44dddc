/*
 * test_ops.c - every op of engine/cpu/cpu_ops.c against a plain double-precision
 * reference written here, on fresh random inputs (seeded from the clock each
 * run, printed; NI_TEST_SEED=<n> reproduces a run). Errors are relative:
 * max |got - ref| / max |ref| over the whole output.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <cmocka.h>

#include "engine/backend/twins.h"
#include "engine/cpu/cpu_ops.h"
#include "engine/util/util.h"
#include "test_util.h"

static tu_rng g_rng;

/* ---- matmul ------------------------------------------------------------ */

static void test_matmul(void **state) {
    (void)state;
    const int shapes[][3] = {{1, 67, 45}, {7, 67, 45}, {33, 128, 96}, {1, 300, 531}, {5, 300, 531}};
    for (size_t t = 0; t < NI_ARRAY_LEN(shapes); t++) {
        const int n = shapes[t][0], in = shapes[t][1], out = shapes[t][2];
        float *x = tu_rand_buf(&g_rng, (size_t)n * in, -1, 1),
              *w = tu_rand_buf(&g_rng, (size_t)out * in, -1, 1);
        float *y0 = tu_rand_buf(&g_rng, (size_t)n * out, -1, 1);
        float *y = malloc((size_t)n * out * sizeof(float));
        double *ref = malloc((size_t)n * out * sizeof(double));
        for (int acc = 0; acc <= 1; acc++) {
            memcpy(y, y0, (size_t)n * out * sizeof(float));
            for (int i = 0; i < n; i++)
                for (int o = 0; o < out; o++) {
                    double s = acc ? y0[(size_t)i * out + o] : 0.0;
                    for (int k = 0; k < in; k++)
                        s += (double)x[(size_t)i * in + k] * w[(size_t)o * in + k];
                    ref[(size_t)i * out + o] = s;
                }
            for (int split = 1; split <= 3; split += 2) {
                memcpy(y, y0, (size_t)n * out * sizeof(float));
                for (int i = 0; i < split; i++) /* the parts compose the whole */
                    cpu_matmul((cpu_part){i, split}, y, x, w, n, in, out, acc);
                tu_check_d(TU_MAX_REL, acc ? "matmul+acc" : "matmul", y, ref, (size_t)n * out,
                           1e-5);
            }
        }
        free(x); free(w); free(y0); free(y); free(ref);
    }
}

/* cpu_matmul_ld writes a column range of a wider matrix and nothing else. */
static void test_matmul_ld(void **state) {
    (void)state;
    const int n = 6, in = 70, out = 300, ld = 517, c0 = 100;
    float *x = tu_rand_buf(&g_rng, (size_t)n * in, -1, 1),
          *w = tu_rand_buf(&g_rng, (size_t)out * in, -1, 1);
    float *y = tu_rand_buf(&g_rng, (size_t)n * ld, -1, 1),
          *y0 = malloc((size_t)n * ld * sizeof(float));
    memcpy(y0, y, (size_t)n * ld * sizeof(float));
    double *ref = malloc((size_t)n * out * sizeof(double));
    float *got = malloc((size_t)n * out * sizeof(float));
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++) {
            double s = 0;
            for (int k = 0; k < in; k++) s += (double)x[(size_t)i * in + k] * w[(size_t)o * in + k];
            ref[(size_t)i * out + o] = s;
        }
    for (int split = 1; split <= 2; split++) {
        memcpy(y, y0, (size_t)n * ld * sizeof(float));
        for (int i = 0; i < split; i++)
            cpu_matmul_ld((cpu_part){i, split}, y + c0, ld, x, w, n, in, out, 0);
        for (int i = 0; i < n; i++) {
            memcpy(got + (size_t)i * out, y + (size_t)i * ld + c0, out * sizeof(float));
            for (int j = 0; j < ld; j++)
                if (j < c0 || j >= c0 + out) assert_true(y[(size_t)i * ld + j] == y0[(size_t)i * ld + j]);
        }
        tu_check_d(TU_MAX_REL, "matmul_ld", got, ref, (size_t)n * out, 1e-5);
    }
    free(x); free(w); free(y); free(y0); free(ref); free(got);
}

/* ---- embed, add, swiglu ---------------------------------------------- */

static void test_embed_add(void **state) {
    (void)state;
    const int V = 50, D = 24, n = 9;
    float *tab = tu_rand_buf(&g_rng, (size_t)V * D, -1, 1),
          *out = tu_rand_buf(&g_rng, (size_t)n * D, -1, 1);
    int32_t tok[9];
    for (int i = 0; i < n; i++) tok[i] = tu_int(&g_rng, V);
    cpu_embed(CPU_SERIAL, out, tab, tok, n, D);
    for (int i = 0; i < n; i++)
        assert_memory_equal(out + (size_t)i * D, tab + (size_t)tok[i] * D, D * sizeof(float));

    const size_t N = 100003; /* large enough to take the threaded path */
    float *y = tu_rand_buf(&g_rng, N, -1, 1), *x = tu_rand_buf(&g_rng, N, -1, 1);
    double *ref = malloc(N * sizeof(double));
    for (size_t i = 0; i < N; i++) ref[i] = (double)y[i] + x[i];
    cpu_add(CPU_SERIAL, y, x, N);
    tu_check_d(TU_MAX_REL, "add", y, ref, N, 1e-6);
    free(tab); free(out); free(y); free(x); free(ref);
}

static void test_swiglu(void **state) {
    (void)state;
    const size_t sizes[] = {13, 70001};
    /* wide gate range: exp clamping in both directions */
    for (size_t t = 0; t < NI_ARRAY_LEN(sizes); t++) {
        const size_t n = sizes[t];
        float *g = tu_rand_buf(&g_rng, n, t ? -12 : -100, t ? 12 : 100),
              *u = tu_rand_buf(&g_rng, n, -3, 3), *o = tu_rand_buf(&g_rng, n, -1, 1);
        double *ref = malloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) ref[i] = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        cpu_swiglu(CPU_SERIAL, o, g, u, 1, n);
        tu_check_d(TU_MAX_REL, "swiglu", o, ref, n, 1e-5);
        cpu_swiglu(CPU_SERIAL, g, g, u, 1, n); /* in place on gate */
        tu_check_d(TU_MAX_REL, "swiglu in place", g, ref, n, 1e-5);
        free(g); free(u); free(o); free(ref);
    }
}

/* ---- rmsnorm / qk-norm ------------------------------------------------ */

static void ref_rmsnorm(double *out, const float *x, const float *w, int n, int dim, double eps) {
    for (int i = 0; i < n; i++) {
        double ss = 0.0;
        for (int j = 0; j < dim; j++) ss += (double)x[(size_t)i * dim + j] * x[(size_t)i * dim + j];
        const double r = 1.0 / sqrt(ss / dim + eps);
        for (int j = 0; j < dim; j++)
            out[(size_t)i * dim + j] = (double)x[(size_t)i * dim + j] * r * w[j];
    }
}

static void test_rmsnorm(void **state) {
    (void)state;
    const int shapes[][2] = {{1, 64}, {5, 77}, {300, 576}};
    for (size_t t = 0; t < NI_ARRAY_LEN(shapes); t++) {
        const int n = shapes[t][0], dim = shapes[t][1];
        const float eps = 1e-5f;
        float *x = tu_rand_buf(&g_rng, (size_t)n * dim, -3, 3),
              *w = tu_rand_buf(&g_rng, dim, 0.5, 1.5);
        float *o = tu_rand_buf(&g_rng, (size_t)n * dim, -1, 1);
        double *ref = malloc((size_t)n * dim * sizeof(double));
        ref_rmsnorm(ref, x, w, n, dim, eps);
        cpu_rmsnorm(CPU_SERIAL, o, x, w, n, dim, eps);
        tu_check_d(TU_MAX_REL, "rmsnorm", o, ref, (size_t)n * dim, 1e-5);
        cpu_rmsnorm(CPU_SERIAL, x, x, w, n, dim, eps);
        tu_check_d(TU_MAX_REL, "rmsnorm in place", x, ref, (size_t)n * dim, 1e-5);
        free(x); free(w); free(o); free(ref);
    }
    /* eps matters when the row is tiny */
    float x[8], w[8], o[8];
    double ref[8];
    for (int j = 0; j < 8; j++)
        x[j] = (float)tu_uniform(&g_rng, -1e-3, 1e-3), w[j] = (float)tu_uniform(&g_rng, 0.5, 1.5);
    ref_rmsnorm(ref, x, w, 1, 8, 1e-6);
    cpu_rmsnorm(CPU_SERIAL, o, x, w, 1, 8, 1e-6f);
    tu_check_d(TU_MAX_REL, "rmsnorm small", o, ref, 8, 1e-5);
}

static void test_qk_norm(void **state) {
    (void)state;
    const int n = 6, nh = 5, hd = 24;
    float *x = tu_rand_buf(&g_rng, (size_t)n * nh * hd, -4, 4),
          *w = tu_rand_buf(&g_rng, hd, 0.2, 2.0);
    double *ref = malloc((size_t)n * nh * hd * sizeof(double));
    for (int i = 0; i < n; i++)
        for (int h = 0; h < nh; h++) {
            const float *xh = x + ((size_t)i * nh + h) * hd;
            double ss = 0;
            for (int d = 0; d < hd; d++) ss += (double)xh[d] * xh[d];
            const double r = 1.0 / sqrt(ss / hd + 1e-6);
            for (int d = 0; d < hd; d++) ref[((size_t)i * nh + h) * hd + d] = xh[d] * r * w[d];
        }
    cpu_head_rmsnorm(CPU_SERIAL, x, w, n, nh, hd, 1e-6f);
    tu_check_d(TU_MAX_REL, "qk-norm", x, ref, (size_t)n * nh * hd, 1e-5);
    free(x); free(w); free(ref);
}

/* ---- RoPE ------------------------------------------------------------- */

/* HF _compute_default_rope_parameters + _compute_llama3_parameters, written
 * in the same array-wise style (torch.where over every frequency). */
static void ref_inv_freq(const mdl_config *c, double *out) {
    const int half = c->head_dim / 2;
    double inv[512], wavelen[512], llama[512], smooth[512];
    for (int i = 0; i < half; i++) inv[i] = 1.0 / pow(c->rope_theta, (2.0 * i) / c->head_dim);
    if (c->rope_scaling != MDL_ROPE_LLAMA3) {
        memcpy(out, inv, half * sizeof(double));
        return;
    }
    const double factor = c->rope_factor, lo = c->rope_low_freq_factor,
                 hi = c->rope_high_freq_factor, old = c->rope_orig_max_pos;
    const double low_wl = old / lo, high_wl = old / hi;
    for (int i = 0; i < half; i++) wavelen[i] = 2 * 3.14159265358979323846 / inv[i];
    for (int i = 0; i < half; i++) llama[i] = wavelen[i] > low_wl ? inv[i] / factor : inv[i];
    for (int i = 0; i < half; i++) {
        const double sf = (old / wavelen[i] - lo) / (hi - lo);
        smooth[i] = (1 - sf) * llama[i] / factor + sf * llama[i];
    }
    for (int i = 0; i < half; i++) {
        const int medium = !(wavelen[i] < high_wl) && !(wavelen[i] > low_wl);
        out[i] = medium ? smooth[i] : llama[i];
    }
}

/* Rotates n rows of nh heads at positions pos in double. */
static void ref_rope(double *out, const float *x, const int32_t *pos, int n, int nh,
                     const mdl_config *c) {
    const int hd = c->head_dim, half = hd / 2;
    double inv[512];
    ref_inv_freq(c, inv);
    for (int i = 0; i < n; i++)
        for (int h = 0; h < nh; h++) {
            const float *xh = x + ((size_t)i * nh + h) * hd;
            double *oh = out + ((size_t)i * nh + h) * hd;
            for (int k = 0; k < half; k++) {
                const int a = c->rope_interleaved ? 2 * k : k;
                const int b = c->rope_interleaved ? 2 * k + 1 : k + half;
                const double th = (double)pos[i] * inv[k];
                oh[a] = xh[a] * cos(th) - xh[b] * sin(th);
                oh[b] = xh[b] * cos(th) + xh[a] * sin(th);
            }
        }
}

static mdl_config rope_cfg(int hd, double theta, int interleaved, int llama3) {
    mdl_config c;
    memset(&c, 0, sizeof(c));
    c.head_dim = hd;
    c.rope_theta = (float)theta;
    c.rope_interleaved = interleaved;
    if (llama3) { /* Llama 3.1 values */
        c.rope_scaling = MDL_ROPE_LLAMA3;
        c.rope_factor = 8.0f;
        c.rope_low_freq_factor = 1.0f;
        c.rope_high_freq_factor = 4.0f;
        c.rope_orig_max_pos = 8192;
    }
    return c;
}

static void test_rope_inv_freq(void **state) {
    (void)state;
    double got[64], ref[64];
    /* Llama 3.1: head_dim 128, theta 500000 */
    mdl_config c = rope_cfg(128, 500000.0, 0, 1);
    eng_rope_inv_freq(&c, got);
    ref_inv_freq(&c, ref);
    int n_keep = 0, n_scaled = 0, n_medium = 0;
    double plain[64];
    mdl_config c0 = rope_cfg(128, 500000.0, 0, 0);
    eng_rope_inv_freq(&c0, plain);
    for (int i = 0; i < 64; i++) {
        assert_true(fabs(got[i] - ref[i]) <= 1e-12 * ref[i]);
        if (got[i] == plain[i]) n_keep++;
        else if (fabs(got[i] - plain[i] / 8.0) <= 1e-15 * plain[i]) n_scaled++;
        else n_medium++;
    }
    /* all three regimes are present for these parameters */
    assert_true(n_keep > 0 && n_scaled > 0 && n_medium > 0);
    assert_true(fabs(got[0] - 1.0) < 1e-15);
    assert_true(fabs(plain[1] - pow(500000.0, -2.0 / 128)) < 1e-15);
}

static void test_rope(void **state) {
    (void)state;
    const int n = 11, nh = 3, hd = 128, max_pos = 20000;
    for (int layout = 0; layout <= 1; layout++)
        for (int llama3 = 0; llama3 <= 1; llama3++) {
            mdl_config c = rope_cfg(hd, llama3 ? 500000.0 : 10000.0, layout, llama3);
            cpu_rope r;
            assert_int_equal(cpu_rope_init(&r, &c, max_pos), 0);
            float *x = tu_rand_buf(&g_rng, (size_t)n * nh * hd, -2, 2);
            double *ref = malloc((size_t)n * nh * hd * sizeof(double));
            int32_t pos[11];
            pos[0] = 0;
            pos[1] = max_pos - 1;
            for (int i = 2; i < n; i++) pos[i] = tu_int(&g_rng, max_pos);
            ref_rope(ref, x, pos, n, nh, &c);
            cpu_rope_apply(CPU_SERIAL, &r, x, pos, n, nh);
            tu_check_d(TU_MAX_REL, layout ? "rope interleaved" : "rope half-split", x, ref,
                       (size_t)n * nh * hd, 2e-6);
            /* position 0 is the identity */
            for (int d = 0; d < nh * hd; d++) assert_true(fabs(x[d] - ref[d]) <= 1e-6 * fabs(ref[d]) + 1e-7);
            cpu_rope_free(&r);
            free(x); free(ref);
        }
    mdl_config bad = rope_cfg(7, 10000.0, 0, 0);
    cpu_rope r;
    assert_int_equal(cpu_rope_init(&r, &bad, 16), NI_EINVAL);
}

/* llama.cpp's converter permutes q/k rows per head so that HF half-split pair
 * (i, i + hd/2) becomes the adjacent pair (2i, 2i+1): new row h*hd + 2i + j =
 * old row h*hd + j*hd/2 + i. Interleaved RoPE on the permuted projection must
 * equal half-split RoPE on the original one, up to that permutation, and
 * q.k scores must be identical. */
static void test_rope_layouts_equivalent(void **state) {
    (void)state;
    const int dim = 40, nh = 4, hd = 16, half = hd / 2, n = 9, max_pos = 600;
    const int qd = nh * hd;
    float *w = tu_rand_buf(&g_rng, (size_t)qd * dim, -1, 1),
          *wp = malloc((size_t)qd * dim * sizeof(float));
    float *wk = tu_rand_buf(&g_rng, (size_t)qd * dim, -1, 1),
          *wkp = malloc((size_t)qd * dim * sizeof(float));
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++) {
                const size_t dst = (size_t)h * hd + 2 * i + j, src = (size_t)h * hd + j * half + i;
                memcpy(wp + dst * dim, w + src * dim, dim * sizeof(float));
                memcpy(wkp + dst * dim, wk + src * dim, dim * sizeof(float));
            }
    float *x = tu_rand_buf(&g_rng, (size_t)n * dim, -1, 1);
    float *q = malloc((size_t)n * qd * sizeof(float)), *qp = malloc((size_t)n * qd * sizeof(float));
    float *k = malloc((size_t)n * qd * sizeof(float)), *kp = malloc((size_t)n * qd * sizeof(float));
    cpu_matmul(CPU_SERIAL, q, x, w, n, dim, qd, 0);
    cpu_matmul(CPU_SERIAL, qp, x, wp, n, dim, qd, 0);
    cpu_matmul(CPU_SERIAL, k, x, wk, n, dim, qd, 0);
    cpu_matmul(CPU_SERIAL, kp, x, wkp, n, dim, qd, 0);
    int32_t pos[9];
    for (int i = 0; i < n; i++) pos[i] = tu_int(&g_rng, max_pos);
    for (int llama3 = 0; llama3 <= 1; llama3++) {
        mdl_config ch = rope_cfg(hd, 10000.0, 0, llama3), ci = rope_cfg(hd, 10000.0, 1, llama3);
        if (llama3) ch.rope_orig_max_pos = ci.rope_orig_max_pos = 64; /* make every regime occur */
        cpu_rope rh, ri;
        assert_int_equal(cpu_rope_init(&rh, &ch, max_pos), 0);
        assert_int_equal(cpu_rope_init(&ri, &ci, max_pos), 0);
        float *a = malloc((size_t)n * qd * sizeof(float)), *b = malloc((size_t)n * qd * sizeof(float));
        float *ak = malloc((size_t)n * qd * sizeof(float)), *bk = malloc((size_t)n * qd * sizeof(float));
        memcpy(a, q, (size_t)n * qd * sizeof(float));
        memcpy(b, qp, (size_t)n * qd * sizeof(float));
        memcpy(ak, k, (size_t)n * qd * sizeof(float));
        memcpy(bk, kp, (size_t)n * qd * sizeof(float));
        cpu_rope_apply(CPU_SERIAL, &rh, a, pos, n, nh);
        cpu_rope_apply(CPU_SERIAL, &ri, b, pos, n, nh);
        cpu_rope_apply(CPU_SERIAL, &rh, ak, pos, n, nh);
        cpu_rope_apply(CPU_SERIAL, &ri, bk, pos, n, nh);
        double *perm = malloc((size_t)n * qd * sizeof(double));
        for (int t = 0; t < n; t++)
            for (int h = 0; h < nh; h++)
                for (int i = 0; i < half; i++)
                    for (int j = 0; j < 2; j++)
                        perm[(size_t)t * qd + h * hd + 2 * i + j] = a[(size_t)t * qd + h * hd + j * half + i];
        tu_check_d(TU_MAX_REL, "interleaved(permuted) vs half-split", b, perm, (size_t)n * qd,
                   1e-6);
        /* attention scores of every (query token, key token, head) agree */
        for (int t = 0; t < n; t++)
            for (int u = 0; u < n; u++)
                for (int h = 0; h < nh; h++) {
                    double s1 = 0, s2 = 0, mag = 0;
                    for (int d = 0; d < hd; d++) {
                        const size_t qi = (size_t)t * qd + h * hd + d, ki = (size_t)u * qd + h * hd + d;
                        s1 += (double)a[qi] * ak[ki];
                        s2 += (double)b[qi] * bk[ki];
                        mag += fabs((double)a[qi] * ak[ki]);
                    }
                    assert_true(fabs(s1 - s2) <= 1e-5 * mag);
                }
        free(a); free(b); free(ak); free(bk); free(perm);
        cpu_rope_free(&rh);
        cpu_rope_free(&ri);
    }
    free(w); free(wp); free(wk); free(wkp); free(x); free(q); free(qp); free(k); free(kp);
}

/* ---- paged attention -------------------------------------------------- */

static void test_attention_paged(void **state) {
    (void)state;
    enum { NS = 5, NB = 128, MB = 48 };
    const int nh = 8, nkv = 2, hd = 32, bs = 8, n_blocks = NB, max_blocks = MB;
    const int G = nh / nkv, qd = nh * hd, kvd = nkv * hd;
    /* sequences: (cached prefix length, new tokens). Covers decode (direct
     * dots), short and long prefill tiles (sgemm path), query tiles crossing
     * a 32-position boundary, and contexts over one 256-key tile. */
    const int n_seqs = NS, pre[NS] = {13, 0, 6, 300, 40}, nnew[NS] = {3, 5, 1, 37, 40};
    int n_tok = 0, max_ctx = 0;
    for (int s = 0; s < n_seqs; s++) {
        n_tok += nnew[s];
        max_ctx = NI_MAX(max_ctx, pre[s] + nnew[s]);
    }
    /* scrambled, disjoint block tables */
    int32_t perm[NB], tables[NS * MB];
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        const int j = tu_int(&g_rng, i + 1);
        const int32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t;
    }
    for (int s = 0, next = 0; s < n_seqs; s++)
        for (int j = 0; j < max_blocks; j++)
            tables[s * max_blocks + j] = j * bs < pre[s] + nnew[s] ? perm[next++] : -1;

    /* pool full of random garbage, so reading a wrong slot shows */
    float *kpool = tu_rand_buf(&g_rng, (size_t)n_blocks * bs * kvd, -1, 1);
    float *vpool = tu_rand_buf(&g_rng, (size_t)n_blocks * bs * kvd, -1, 1);
    const cpu_kv_layer kv = {kpool, vpool, bs, kvd};

    /* logical K/V of every sequence: [s][max_ctx][kvd] */
    float *K = tu_rand_buf(&g_rng, (size_t)n_seqs * max_ctx * kvd, -2, 2);
    float *Vv = tu_rand_buf(&g_rng, (size_t)n_seqs * max_ctx * kvd, -2, 2);
    /* store cached prefixes through the op, one sequence at a time */
    for (int s = 0; s < n_seqs; s++) {
        if (!pre[s]) continue;
        int32_t pos[400], seq[400];
        for (int p = 0; p < pre[s]; p++) pos[p] = p, seq[p] = 0;
        const cpu_tok_map m = {pre[s], pos, seq, tables + s * max_blocks, max_blocks};
        cpu_kv_store(CPU_SERIAL, &kv, &m, K + (size_t)s * max_ctx * kvd, Vv + (size_t)s * max_ctx * kvd);
    }
    /* the batch of new tokens */
    int32_t pos[128], seq[128];
    float *kn = malloc((size_t)n_tok * kvd * sizeof(float)), *vn = malloc((size_t)n_tok * kvd * sizeof(float));
    for (int s = 0, i = 0; s < n_seqs; s++)
        for (int t = 0; t < nnew[s]; t++, i++) {
            pos[i] = pre[s] + t;
            seq[i] = s;
            memcpy(kn + (size_t)i * kvd, K + ((size_t)s * max_ctx + pos[i]) * kvd, kvd * sizeof(float));
            memcpy(vn + (size_t)i * kvd, Vv + ((size_t)s * max_ctx + pos[i]) * kvd, kvd * sizeof(float));
        }
    const cpu_tok_map m = {n_tok, pos, seq, tables, max_blocks};
    cpu_kv_store(CPU_SERIAL, &kv, &m, kn, vn);

    float *q = tu_rand_buf(&g_rng, (size_t)n_tok * qd, -2, 2),
          *out = tu_rand_buf(&g_rng, (size_t)n_tok * qd, -1, 1);
    double *ref = malloc((size_t)n_tok * qd * sizeof(double));
    /* second round: huge scores (exp overflows without max subtraction) */
    for (int round = 0; round < 2; round++) {
    if (round == 1)
        for (int i = 0; i < n_tok * qd; i++) q[i] *= 100.0f;
    for (int i = 0; i < n_tok; i++)
        for (int h = 0; h < nh; h++) {
            const int g = h / G, n_ctx = pos[i] + 1;
            double sc[400], mx = -1e300, sum = 0;
            for (int j = 0; j < n_ctx; j++) {
                const float *kj = K + ((size_t)seq[i] * max_ctx + j) * kvd + g * hd;
                double d = 0;
                for (int e = 0; e < hd; e++) d += (double)q[(size_t)i * qd + h * hd + e] * kj[e];
                sc[j] = d / sqrt((double)hd);
                mx = fmax(mx, sc[j]);
            }
            for (int j = 0; j < n_ctx; j++) sum += (sc[j] = exp(sc[j] - mx));
            for (int e = 0; e < hd; e++) {
                double o = 0;
                for (int j = 0; j < n_ctx; j++)
                    o += sc[j] / sum * Vv[((size_t)seq[i] * max_ctx + j) * kvd + g * hd + e];
                ref[(size_t)i * qd + h * hd + e] = o;
            }
        }
    for (int nt = 1; nt <= 2; nt++) {
        const size_t per = cpu_attention_scratch(nh, nkv, hd, max_ctx);
        assert_true(per >= (size_t)G * max_ctx);
        float *scratch = tu_rand_buf(&g_rng, per * nt, -1, 1);
        for (int i = 0; i < nt; i++) /* the parts compose the whole */
            cpu_attention((cpu_part){i, nt}, out, q, &kv, &m, nh, nkv, hd, scratch, per);
        tu_check_d(TU_MAX_REL, round ? "paged attention, large scores" : "paged attention", out,
                   ref, (size_t)n_tok * qd, round ? 1e-4 : 1e-5);
        free(scratch);
    }
    }
    free(kpool); free(vpool); free(K); free(Vv); free(kn); free(vn); free(q); free(out); free(ref);
}

int main(void) {
    tu_seed(&g_rng, "test_ops");
    printf("test_ops: OpenBLAS core %s\n", cpu_blas_core());
    /* split matmuls and tiled attention call BLAS from OpenMP threads */
    openblas_set_num_threads(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_ld),
        cmocka_unit_test(test_embed_add),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_qk_norm),
        cmocka_unit_test(test_rope_inv_freq),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_rope_layouts_equivalent),
        cmocka_unit_test(test_attention_paged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
