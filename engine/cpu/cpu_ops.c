/*
 * cpu_ops.c - FP32 ops of the CPU reference backend (see cpu_ops.h).
 *
 * Design:
 *   - matmul: OpenBLAS sgemm (sgemv for one row), one single-threaded call
 *     per part over a slice of output columns;
 *   - row ops (rmsnorm, rope, swiglu, add): plain loops vectorized with
 *     `omp simd` (reductions included, so no -ffast-math is needed; only the
 *     SIMD pragmas of OpenMP are used, not its runtime), split by rows;
 *   - exp in softmax and SiLU: an 8-lane AVX2/FMA polynomial (exp8, ~1 ulp)
 *     when compiled for x86-64-v3, libm expf otherwise and for tails;
 *   - attention: units of (query tile, kv head) so the G query heads sharing
 *     a kv head read each K/V row once. Decode-sized tiles (< ATT_TILE_MIN
 *     tokens) use direct dot products with a two-pass softmax over a
 *     [G][n_ctx] score buffer; prefill tiles gather ATT_KT keys at a time from
 *     the paged cache and run two sgemms per key tile with an online softmax
 *     (flash-attention style), so their scratch is fixed-size.
 * Invariants: no allocation except cpu_rope_init; no op keeps state; all
 * accumulation in FP32.
 */
#include "cpu_ops.h"

#include <cblas.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#include <math.h>
#include <string.h>

#include "cpu_pool.h"
#include "engine/backend/twins.h"
#include "engine/util/util.h"

/* Attention tiles: query tokens per tile, keys per tile, and the fewest
 * query tokens that take the tiled (sgemm) path rather than direct dots. */
#define ATT_QT 32
#define ATT_KT 256
#define ATT_TILE_MIN 4
/* Below this many weights, a matmul is not split over threads. */
#define SPLIT_MIN (1 << 16)

#if defined(__AVX2__) && defined(__FMA__)
#define HAVE_EXP8 1
/* exp of 8 lanes, ~1 ulp relative error for x in [-87.3, 88.3] (inputs are
 * clamped to it, so exp(-1000) gives ~1e-38, not 0). Cephes expf: x = n ln2
 * + r, e^r by a degree-6 polynomial, 2^n through the exponent bits. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    const __m256 fx = _mm256_floor_ps(
        _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    const __m256 z = _mm256_mul_ps(r, r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, z, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
#endif

/* s[j] = exp(s[j] - m) for j < n; returns their sum. */
static float exp_sub_sum(float *s, int n, float m) {
    float sum = 0.0f;
    int j = 0;
#ifdef HAVE_EXP8
    __m256 acc = _mm256_setzero_ps();
    const __m256 mv = _mm256_set1_ps(m);
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    for (int k = 0; k < 8; k++) sum += lanes[k];
#endif
    for (; j < n; j++) {
        s[j] = expf(s[j] - m);
        sum += s[j];
    }
    return sum;
}

static inline float dotf(const float *a, const float *b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void cpu_embed(cpu_part pt, float *out, const float *table, const int32_t *tokens, int n, int dim) {
    int i0, i1;
    cpu_part_rows(pt, n, &i0, &i1);
    for (int i = i0; i < i1; i++)
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

void cpu_rmsnorm(cpu_part pt, float *out, const float *x, const float *w, int n, int dim,
                 float eps) {
    int i0, i1;
    cpu_part_rows(pt, n, &i0, &i1);
    for (int i = i0; i < i1; i++)
        rmsnorm_row(out + (size_t)i * dim, x + (size_t)i * dim, w, dim, eps);
}

void cpu_head_rmsnorm(cpu_part pt, float *x, const float *w, int n, int n_heads, int head_dim,
                      float eps) {
    int i0, i1;
    cpu_part_rows(pt, n, &i0, &i1);
    for (int r = i0 * n_heads; r < i1 * n_heads; r++)
        rmsnorm_row(x + (size_t)r * head_dim, x + (size_t)r * head_dim, w, head_dim, eps);
}

/* out[i] = silu(gate[i]) * up[i] for i in [i0, i1). */
static void swiglu_range(float *out, const float *gate, const float *up, size_t i0, size_t i1) {
    size_t i = i0;
#ifdef HAVE_EXP8
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= i1; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        const __m256 sg = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(sg, _mm256_loadu_ps(up + i)));
    }
#endif
    for (; i < i1; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

void cpu_swiglu(cpu_part pt, float *out, const float *gate, const float *up, int n, int cols) {
    int i0, i1;
    cpu_part_rows(pt, n, &i0, &i1);
    swiglu_range(out, gate, up, (size_t)i0 * cols, (size_t)i1 * cols);
}

void cpu_add(cpu_part pt, float *y, const float *x, size_t n) {
    int64_t lo, hi;
    cpu_pool_range((int64_t)n, 16, pt.ith, pt.nth, &lo, &hi);
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) y[i] += x[i];
}

/* One BLAS call: y[n][ldy] (columns [0, out)) = x W^T (+ y); ldy >= out,
 * rows of x ldx apart, rows of w ldw apart (both >= in). */
static void matmul_blas(float *y, int ldy, const float *x, int ldx, const float *w, int ldw, int n,
                        int in, int out, int accumulate) {
    if (n == 1) {
        /* OpenBLAS 0.3.21 sgemm has no gemv fast path for one row. */
        if (!accumulate) memset(y, 0, (size_t)out * sizeof(float));
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w, ldw, x, 1, 1.0f, y, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, ldx, w, ldw,
                accumulate ? 1.0f : 0.0f, y, ldy);
}

void cpu_matmul_strided(cpu_part pt, float *y, int ldy, const float *x, int ldx, const float *w,
                        int ldw, int n, int in, int out, int accumulate) {
    if (n <= 0) return;
    if ((size_t)out * in < SPLIT_MIN || out < 2 * 16) {
        if (pt.ith == 0) matmul_blas(y, ldy, x, ldx, w, ldw, n, in, out, accumulate);
        return;
    }
    /* slices of whole 16-row groups keep every slice SIMD friendly */
    int64_t o0, o1;
    cpu_pool_range(out, 16, pt.ith, pt.nth, &o0, &o1);
    if (o1 > o0)
        matmul_blas(y + o0, ldy, x, ldx, w + (size_t)o0 * ldw, ldw, n, in, (int)(o1 - o0),
                    accumulate);
}

void cpu_matmul_ld(cpu_part pt, float *y, int ldy, const float *x, const float *w, int n, int in,
                   int out, int accumulate) {
    cpu_matmul_strided(pt, y, ldy, x, in, w, in, n, in, out, accumulate);
}

void cpu_matmul(cpu_part pt, float *y, const float *x, const float *w, int n, int in, int out,
                int accumulate) {
    cpu_matmul_ld(pt, y, out, x, w, n, in, out, accumulate);
}

const char *cpu_blas_core(void) {
    const char *s = openblas_get_corename();
    return s ? s : "unknown";
}

/* ---- RoPE ---------------------------------------------------------------- */

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
    eng_rope_inv_freq(c, inv);
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

void cpu_rope_apply(cpu_part pt, const cpu_rope *r, float *x, const int32_t *pos, int n,
                    int n_heads) {
    const int hd = r->head_dim, half = hd / 2;
    const int interleaved = r->interleaved;
    int i0, i1;
    cpu_part_rows(pt, n, &i0, &i1);
    for (int i = i0; i < i1; i++) {
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

void cpu_kv_store(cpu_part pt, const cpu_kv_layer *kv, const cpu_tok_map *m, const float *k,
                  const float *v) {
    const int bs = kv->block_size, kvd = kv->kv_dim;
    int i0, i1;
    cpu_part_rows(pt, m->n_tokens, &i0, &i1);
    for (int i = i0; i < i1; i++) {
        const int p = m->pos[i];
        const int32_t blk = m->block_tables[(size_t)m->seq[i] * m->max_blocks + p / bs];
        const size_t off = ((size_t)blk * bs + (size_t)(p % bs)) * kvd;
        memcpy(kv->k + off, k + (size_t)i * kvd, (size_t)kvd * sizeof(float));
        memcpy(kv->v + off, v + (size_t)i * kvd, (size_t)kvd * sizeof(float));
    }
}

/* One (token, kv head) unit: the G query heads qg[G][hd] attend over n_ctx
 * cached positions; sc is [G][n_ctx] scratch; og[G][hd] receives the result. */
static void attend_group(float *og, const float *qg, const cpu_kv_layer *kv, const int32_t *table,
                         int n_ctx, int kv_off, int G, int hd, float scale, float *sc) {
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
#pragma omp simd reduction(max : mx)
        for (int j = 1; j < n_ctx; j++) mx = s[j] > mx ? s[j] : mx;
        const float sum = exp_sub_sum(s, n_ctx, mx);
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

/* Tiled ("flash") attention of nq >= 1 consecutive tokens of one sequence
 * (positions p0 .. p0+nq-1) for the G query heads of kv head g:
 *   S = (scale * Q) K^T and O += P V, one sgemm each per tile of ATT_KT keys
 *   gathered from the paged cache, with an online softmax (running max m and
 *   sum l per row) so scratch does not grow with the context.
 * Rows r = t * G + h. q/out point at token 0, head g*G; rows are q_dim apart. */
static void attend_tile(float *out, const float *q, size_t q_dim, const cpu_kv_layer *kv,
                        const int32_t *table, int p0, int nq, int g, int G, int hd, float scale,
                        float *scr) {
    const int bs = kv->block_size, kvd = kv->kv_dim, R = nq * G;
    float *Q = scr;                              /* [R][hd] scaled queries */
    float *O = Q + (size_t)ATT_QT * G * hd;      /* [R][hd] unnormalized output */
    float *S = O + (size_t)ATT_QT * G * hd;      /* [R][ATT_KT] scores, then P */
    float *Kc = S + (size_t)ATT_QT * G * ATT_KT; /* [ATT_KT][hd] gathered keys */
    float *Vc = Kc + (size_t)ATT_KT * hd;        /* [ATT_KT][hd] gathered values */
    float *mx = Vc + (size_t)ATT_KT * hd;        /* [R] running max */
    float *l = mx + (size_t)ATT_QT * G;          /* [R] running sum */
    for (int t = 0; t < nq; t++)
        for (int h = 0; h < G; h++) {
            const float *src = q + (size_t)t * q_dim + (size_t)h * hd;
            float *dst = Q + ((size_t)t * G + h) * hd;
            for (int d = 0; d < hd; d++) dst[d] = src[d] * scale;
        }
    memset(O, 0, (size_t)R * hd * sizeof(float));
    for (int r = 0; r < R; r++) mx[r] = -INFINITY, l[r] = 0.0f;

    const int n_ctx = p0 + nq; /* keys [0, n_ctx) */
    for (int k0 = 0; k0 < n_ctx; k0 += ATT_KT) {
        const int nk = NI_MIN(ATT_KT, n_ctx - k0);
        for (int j = 0; j < nk; j++) {
            const int p = k0 + j;
            const size_t off =
                ((size_t)table[p / bs] * bs + (size_t)(p % bs)) * kvd + (size_t)g * hd;
            memcpy(Kc + (size_t)j * hd, kv->k + off, (size_t)hd * sizeof(float));
            memcpy(Vc + (size_t)j * hd, kv->v + off, (size_t)hd * sizeof(float));
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, nk, hd, 1.0f, Q, hd, Kc, hd, 0.0f,
                    S, ATT_KT);
        for (int r = 0; r < R; r++) {
            float *s = S + (size_t)r * ATT_KT;
            const int qpos = p0 + r / G;
            const int nv = NI_MAX(0, NI_MIN(nk, qpos - k0 + 1)); /* causal: keys <= qpos */
            if (nv == 0) {
                memset(s, 0, (size_t)nk * sizeof(float));
                continue;
            }
            float m_new = mx[r];
#pragma omp simd reduction(max : m_new)
            for (int j = 0; j < nv; j++) m_new = s[j] > m_new ? s[j] : m_new;
            const float corr = expf(mx[r] - m_new); /* 0 on the first tile */
            const float sum = exp_sub_sum(s, nv, m_new);
            for (int j = nv; j < nk; j++) s[j] = 0.0f;
            l[r] = l[r] * corr + sum;
            mx[r] = m_new;
            if (corr != 1.0f) {
                float *o = O + (size_t)r * hd;
#pragma omp simd
                for (int d = 0; d < hd; d++) o[d] *= corr;
            }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, hd, nk, 1.0f, S, ATT_KT, Vc, hd,
                    1.0f, O, hd);
    }
    for (int t = 0; t < nq; t++)
        for (int h = 0; h < G; h++) {
            const size_t r = (size_t)t * G + h;
            const float inv = 1.0f / l[r];
            float *dst = out + (size_t)t * q_dim + (size_t)h * hd;
            for (int d = 0; d < hd; d++) dst[d] = O[r * hd + d] * inv;
        }
}

size_t cpu_attention_scratch(int n_heads, int n_kv_heads, int head_dim, int max_pos) {
    const size_t G = (size_t)(n_heads / n_kv_heads), hd = (size_t)head_dim;
    const size_t direct = G * (size_t)max_pos;
    const size_t tiled =
        2 * ATT_QT * G * hd + ATT_QT * G * ATT_KT + 2 * ATT_KT * hd + 2 * ATT_QT * G;
    return direct > tiled ? direct : tiled;
}

void cpu_attention(cpu_part pt, float *out, const float *q, const cpu_kv_layer *kv,
                   const cpu_tok_map *m, int n_heads, int n_kv_heads, int head_dim, float *scratch,
                   size_t scratch_per_thread) {
    const int G = n_heads / n_kv_heads, n = m->n_tokens;
    const size_t q_dim = (size_t)n_heads * head_dim;
    const float scale = 1.0f / sqrtf((float)head_dim);
    const int n_threads = pt.nth;
    float *sc = scratch + (size_t)pt.ith * scratch_per_thread;
    /* Units of (token, kv head) share K/V reads over the group; with too few
     * of them to keep the threads busy (decode of one sequence), use
     * (token, query head) units instead. */
    const int per_head = G > 1 && (long)n * n_kv_heads < 4L * n_threads;
    const int upt = per_head ? n_heads : n_kv_heads; /* units per token */
    const int ug = per_head ? 1 : G;                 /* query heads per unit */
    const long n_units = (long)n * upt;
    for (long u = pt.ith; u < n_units; u += pt.nth) {
        const int i = (int)(u / upt), h0 = (int)(u % upt) * ug; /* first query head */
        /* A unit leads a tile: up to ATT_QT consecutive tokens of one
         * sequence, starting at a position multiple of ATT_QT or at the
         * sequence's first token in the batch; other units have no work. */
        if (i > 0 && m->seq[i - 1] == m->seq[i] && m->pos[i] % ATT_QT != 0) continue;
        int nq = 1;
        while (i + nq < n && nq < ATT_QT && m->seq[i + nq] == m->seq[i] &&
               m->pos[i + nq] % ATT_QT != 0)
            nq++;
        const int32_t *table = m->block_tables + (size_t)m->seq[i] * m->max_blocks;
        const size_t off = (size_t)i * q_dim + (size_t)h0 * head_dim;
        if (nq >= ATT_TILE_MIN) {
            attend_tile(out + off, q + off, q_dim, kv, table, m->pos[i], nq, h0 / G, ug, head_dim,
                        scale, sc);
            continue;
        }
        for (int t = 0; t < nq; t++) {
            const int n_ctx = m->pos[i + t] + 1;
            NI_ASSERT((size_t)ug * n_ctx <= scratch_per_thread);
            attend_group(out + off + t * q_dim, q + off + t * q_dim, kv, table, n_ctx,
                         (h0 / G) * head_dim, ug, head_dim, scale, sc);
        }
    }
}
