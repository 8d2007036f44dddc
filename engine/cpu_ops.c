/*
 * cpu_ops.c - FP32 ops of the CPU reference backend (see cpu_ops.h).
 *
 * Design: matmuls are one OpenBLAS call per batch; everything else is a
 * simple loop over rows, vectorized with `omp simd` (reductions included, so
 * no -ffast-math is needed) and spread over threads with `omp parallel for`
 * only when the work is large enough to pay for waking the team (PAR_MIN
 * floats). Attention splits over (token, kv head): the G query heads that
 * share a kv head are done together so each K/V row is read once for all of
 * them. Invariants: no allocation except cpu_rope_init; no op keeps state.
 */
#include "cpu_ops.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "util.h"

/* Below this many floats touched, elementwise ops stay single-threaded. */
#define PAR_MIN (1 << 15)
/* Below this many weights, a matmul is not split over threads. */
#define SPLIT_MIN (1 << 16)

static const double PI_D = 3.14159265358979323846;

static inline float dotf(const float *a, const float *b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void cpu_embed(float *out, const float *table, const int32_t *tokens, int n, int dim) {
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * dim, table + (size_t)tokens[i] * dim, (size_t)dim * sizeof(float));
}

static inline void rmsnorm_row(float *o, const float *x, const float *w, int dim, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int j = 0; j < dim; j++) ss += x[j] * x[j];
    const float r = 1.0f / sqrtf(ss / (float)dim + eps);
#pragma omp simd
    for (int j = 0; j < dim; j++) o[j] = x[j] * r * w[j];
}

void cpu_rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps) {
#pragma omp parallel for schedule(static) if ((size_t)n * dim >= PAR_MIN)
    for (int i = 0; i < n; i++)
        rmsnorm_row(out + (size_t)i * dim, x + (size_t)i * dim, w, dim, eps);
}

void cpu_head_rmsnorm(float *x, const float *w, int n, int n_heads, int head_dim, float eps) {
    cpu_rmsnorm(x, x, w, n * n_heads, head_dim, eps);
}

void cpu_swiglu(float *out, const float *gate, const float *up, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void cpu_add(float *y, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= 4 * PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

/* One BLAS call: y[n][ldy] (columns [0, out)) = x W^T (+ y); ldy >= out. */
static void matmul_blas(float *y, int ldy, const float *x, const float *w, int n, int in, int out,
                        int accumulate) {
    if (n == 1) {
        /* OpenBLAS 0.3.21 sgemm has no gemv fast path for one row. */
        if (!accumulate) memset(y, 0, (size_t)out * sizeof(float));
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w, in, x, 1, 1.0f, y, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in,
                accumulate ? 1.0f : 0.0f, y, ldy);
}

void cpu_matmul_ld(float *y, int ldy, const float *x, const float *w, int n, int in, int out,
                   int accumulate, int n_split) {
    if (n <= 0) return;
    if (n_split <= 1 || (size_t)out * in < SPLIT_MIN || out < 2 * 16) {
        matmul_blas(y, ldy, x, w, n, in, out, accumulate);
        return;
    }
#pragma omp parallel num_threads(n_split)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        /* slices of whole 16-row groups keep every slice SIMD friendly */
        const int groups = (out + 15) / 16;
        const int o0 = NI_MIN(out, (int)((long)groups * t / nt) * 16);
        const int o1 = NI_MIN(out, (int)((long)groups * (t + 1) / nt) * 16);
        if (o1 > o0)
            matmul_blas(y + o0, ldy, x, w + (size_t)o0 * in, n, in, o1 - o0, accumulate);
    }
}

void cpu_matmul(float *y, const float *x, const float *w, int n, int in, int out, int accumulate,
                int n_split) {
    cpu_matmul_ld(y, out, x, w, n, in, out, accumulate, n_split);
}

/* ---- RoPE ---------------------------------------------------------------- */

void cpu_rope_inv_freq(const mdl_config *c, double *inv_freq) {
    const int half = c->head_dim / 2;
    for (int i = 0; i < half; i++)
        inv_freq[i] = 1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)c->head_dim);
    if (c->rope_scaling != MDL_ROPE_LLAMA3) return;
    const double factor = c->rope_factor;
    const double lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
    const double old_ctx = c->rope_orig_max_pos;
    const double low_freq_wavelen = old_ctx / lo;
    const double high_freq_wavelen = old_ctx / hi;
    for (int i = 0; i < half; i++) {
        const double f = inv_freq[i];
        const double wavelen = 2.0 * PI_D / f;
        if (wavelen < high_freq_wavelen) continue;          /* high frequency: keep */
        if (wavelen > low_freq_wavelen) {                   /* low frequency: scale */
            inv_freq[i] = f / factor;
        } else if (hi != lo) {                              /* medium: interpolate */
            const double smooth = (old_ctx / wavelen - lo) / (hi - lo);
            inv_freq[i] = (1.0 - smooth) * f / factor + smooth * f;
        }
    }
}

int cpu_rope_init(cpu_rope *r, const mdl_config *c, int max_pos) {
    memset(r, 0, sizeof(*r));
    if (c->head_dim <= 0 || c->head_dim % 2 != 0 || max_pos <= 0) return NI_EINVAL;
    const int half = c->head_dim / 2;
    double *inv = malloc((size_t)half * sizeof(double));
    r->cos = malloc((size_t)max_pos * half * sizeof(float));
    r->sin = malloc((size_t)max_pos * half * sizeof(float));
    if (!inv || !r->cos || !r->sin) {
        free(inv);
        cpu_rope_free(r);
        return NI_ENOMEM;
    }
    cpu_rope_inv_freq(c, inv);
    for (int p = 0; p < max_pos; p++)
        for (int i = 0; i < half; i++) {
            const double a = (double)p * inv[i];
            r->cos[(size_t)p * half + i] = (float)cos(a);
            r->sin[(size_t)p * half + i] = (float)sin(a);
        }
    free(inv);
    r->head_dim = c->head_dim;
    r->max_pos = max_pos;
    r->interleaved = c->rope_interleaved != 0;
    return 0;
}

void cpu_rope_free(cpu_rope *r) {
    free(r->cos);
    free(r->sin);
    memset(r, 0, sizeof(*r));
}

void cpu_rope_apply(const cpu_rope *r, float *x, const int32_t *pos, int n, int n_heads) {
    const int hd = r->head_dim, half = hd / 2;
    const int interleaved = r->interleaved;
#pragma omp parallel for schedule(static) if ((size_t)n * n_heads * hd >= PAR_MIN)
    for (int i = 0; i < n; i++) {
        NI_ASSERT(pos[i] >= 0 && pos[i] < r->max_pos);
        const float *c = r->cos + (size_t)pos[i] * half;
        const float *s = r->sin + (size_t)pos[i] * half;
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + ((size_t)i * n_heads + h) * hd;
            if (interleaved) {
#pragma omp simd
                for (int k = 0; k < half; k++) {
                    const float x0 = xh[2 * k], x1 = xh[2 * k + 1];
                    xh[2 * k] = x0 * c[k] - x1 * s[k];
                    xh[2 * k + 1] = x0 * s[k] + x1 * c[k];
                }
            } else {
#pragma omp simd
                for (int k = 0; k < half; k++) {
                    const float x0 = xh[k], x1 = xh[k + half];
                    xh[k] = x0 * c[k] - x1 * s[k];
                    xh[k + half] = x0 * s[k] + x1 * c[k];
                }
            }
        }
    }
}

/* ---- paged KV cache and attention --------------------------------------- */

void cpu_kv_store(const cpu_kv_layer *kv, const cpu_tok_map *m, const float *k, const float *v) {
    const int bs = kv->block_size, kvd = kv->kv_dim;
    for (int i = 0; i < m->n_tokens; i++) {
        const int p = m->pos[i];
        const int32_t blk = m->block_tables[(size_t)m->seq[i] * m->max_blocks + p / bs];
        const size_t off = ((size_t)blk * bs + (size_t)(p % bs)) * kvd;
        memcpy(kv->k + off, k + (size_t)i * kvd, (size_t)kvd * sizeof(float));
        memcpy(kv->v + off, v + (size_t)i * kvd, (size_t)kvd * sizeof(float));
    }
}

/* One (token, kv head) unit: the G query heads qg[G][hd] attend over n_ctx
 * cached positions; sc is [G][n_ctx] scratch; og[G][hd] receives the result. */
static void attend_group(float *og, const float *qg, const cpu_kv_layer *kv,
                         const int32_t *table, int n_ctx, int kv_off, int G, int hd,
                         float scale, float *sc) {
    const int bs = kv->block_size, kvd = kv->kv_dim;
    /* scores */
    for (int p0 = 0, b = 0; p0 < n_ctx; p0 += bs, b++) {
        const float *kb = kv->k + (size_t)table[b] * bs * kvd + kv_off;
        const int nj = NI_MIN(bs, n_ctx - p0);
        for (int j = 0; j < nj; j++) {
            const float *kj = kb + (size_t)j * kvd;
            for (int h = 0; h < G; h++)
                sc[(size_t)h * n_ctx + p0 + j] = dotf(qg + (size_t)h * hd, kj, hd) * scale;
        }
    }
    /* softmax per head, in place, normalized */
    for (int h = 0; h < G; h++) {
        float *s = sc + (size_t)h * n_ctx;
        float mx = s[0];
        for (int j = 1; j < n_ctx; j++) mx = s[j] > mx ? s[j] : mx;
        float sum = 0.0f;
        for (int j = 0; j < n_ctx; j++) {
            s[j] = expf(s[j] - mx);
            sum += s[j];
        }
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int j = 0; j < n_ctx; j++) s[j] *= inv;
    }
    /* weighted sum of values */
    memset(og, 0, (size_t)G * hd * sizeof(float));
    for (int p0 = 0, b = 0; p0 < n_ctx; p0 += bs, b++) {
        const float *vb = kv->v + (size_t)table[b] * bs * kvd + kv_off;
        const int nj = NI_MIN(bs, n_ctx - p0);
        for (int j = 0; j < nj; j++) {
            const float *vj = vb + (size_t)j * kvd;
            for (int h = 0; h < G; h++) {
                const float p = sc[(size_t)h * n_ctx + p0 + j];
                float *o = og + (size_t)h * hd;
#pragma omp simd
                for (int d = 0; d < hd; d++) o[d] += p * vj[d];
            }
        }
    }
}

void cpu_attention(float *out, const float *q, const cpu_kv_layer *kv, const cpu_tok_map *m,
                   int n_heads, int n_kv_heads, int head_dim, float *scratch,
                   size_t scratch_per_thread, int n_threads) {
    const int G = n_heads / n_kv_heads;
    const size_t q_dim = (size_t)n_heads * head_dim;
    const float scale = 1.0f / sqrtf((float)head_dim);
    const long n_units = (long)m->n_tokens * n_kv_heads;
    if (n_threads < 1) n_threads = 1;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) if (n_units > 1)
    for (long u = 0; u < n_units; u++) {
        const int i = (int)(u / n_kv_heads), g = (int)(u % n_kv_heads);
        const int n_ctx = m->pos[i] + 1;
        NI_ASSERT((size_t)G * n_ctx <= scratch_per_thread);
        const int32_t *table = m->block_tables + (size_t)m->seq[i] * m->max_blocks;
        float *sc = scratch + (size_t)omp_get_thread_num() * scratch_per_thread;
        const size_t off = (size_t)i * q_dim + (size_t)g * G * head_dim;
        attend_group(out + off, q + off, kv, table, n_ctx, g * head_dim, G, head_dim, scale, sc);
    }
}
