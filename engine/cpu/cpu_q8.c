/*
 * cpu_q8.c - block-quantized weight x int8 activation products (see cpu_q8.h
 * for the formats, the layout, the result definition and the dispatch).
 *
 * Kernels: every path walks output tiles of R rows x T tokens (decode is
 * T = 1), so one weight load serves T tokens and one activation load serves
 * R rows. Per group of 16 blocks and tile element, 8 int8 steps of 4 bytes
 * per block leave the 16 exact int32 block sums in 16 lanes (zmm: one
 * vector; ymm paths: a low and a high half). 4-bit weights load 4 steps of
 * nibble pairs and split each with a mask and a 4-bit shift into two int8
 * steps. The epilogue turns the lanes into FP32 (int8 weights: remove the
 * +128 bias with the activation's s; 4-bit: add m * ms), scales by d_a and
 * fmadds by d_w in the same lanes, and the 16 lanes of a row are summed by
 * the fixed tree at the end.
 *
 * The AVX2 path has no u8 x s8 dot that keeps 32-bit sums: it uses
 * vpmaddubsw + vpmaddwd(1). For 4-bit weights (0..15) x int8 (|a| <= 127)
 * the 16-bit pair sums cannot saturate; for int8 weights it un-biases the
 * bytes (xor 0x80) and multiplies |w| by sign(a, w) (pair sums <= 2 * 127^2
 * < 2^15), which gives the signed sums directly, so its epilogue skips the
 * bias removal. Every path's int32 lane sums are the same integers.
 *
 * Tails: a last group of nt < 16 blocks is read with masked loads (AVX-512:
 * k-masks; AVX2: vpmaskmovd, FP16 scales through a zeroed copy), never past
 * the buffers. Masked-off lanes hold +0 and add nothing.
 *
 * Invariants: pure functions of their inputs (the only global state is the
 * selected path); all allocation in *_init.
 */
#include "cpu_q8.h"

#include <math.h>
#include <string.h>

#include "engine/format/quant.h"
#include "engine/util/util.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define Q8_X86 1
#include <immintrin.h>
#endif

/* cpu_q8_gemm splits rows over threads in chunks of this many rows. */
#define Q8_CHUNK 16
/* Largest tile: rows sharing one activation load, tokens sharing one weight load. */
#define Q8_RMAX 4
#define Q8_TMAX 4

static size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Blocks in group g of a row of nb blocks. */
static inline int group_len(int nb, int g) { return NI_MIN(CPU_Q8_GROUP, nb - g * CPU_Q8_GROUP); }

/* Byte offset of element e (< 32) of block b in an int8 row of nb blocks. */
static inline size_t q8_offset(int nb, int b, int e) {
    const int g = b / CPU_Q8_GROUP, j = b % CPU_Q8_GROUP, nt = group_len(nb, g);
    return (size_t)g * CPU_Q8_GROUP * CPU_Q8_BLOCK + ((size_t)(e >> 2) * nt + j) * 4 + (e & 3);
}

/* Byte offset of element e of block b in a 4-bit row; the element is the
 * high nibble when (e & 4) != 0. */
static inline size_t q4_offset(int nb, int b, int e) {
    const int g = b / CPU_Q8_GROUP, j = b % CPU_Q8_GROUP, nt = group_len(nb, g);
    return (size_t)g * CPU_Q8_GROUP * CPU_Q8_BLOCK / 2 + ((size_t)(e >> 3) * nt + j) * 4 + (e & 3);
}

/* Round to nearest even for |x| < 2^22 without libm: adding 1.5 * 2^23
 * leaves the rounded integer in the low mantissa bits. Vectorizes. */
static inline int32_t round_even(float x) {
    const float t = x + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    return bits - 0x4B400000;
}

/* x clamped to [lo, hi]; NaN -> lo. */
static inline float clampf(float x, float lo, float hi) {
    return x >= lo ? (x <= hi ? x : hi) : lo;
}

/* ---- weights --------------------------------------------------------------- */

int cpu_q8_mat_init(cpu_q8_mat *m, int rows, int cols, int bits) {
    memset(m, 0, sizeof(*m));
    if (rows <= 0 || cols <= 0 || (bits != 8 && bits != 4)) return NI_EINVAL;
    m->rows = rows;
    m->cols = cols;
    m->bits = bits;
    m->nb = (cols + CPU_Q8_BLOCK - 1) / CPU_Q8_BLOCK;
    m->q_stride = round64((size_t)m->nb * CPU_Q8_BLOCK * bits / 8);
    const size_t qb = m->q_stride * (size_t)rows;
    const size_t db = round64((size_t)rows * m->nb * sizeof(uint16_t));
    m->q = aligned_alloc(64, qb);
    m->d = aligned_alloc(64, db);
    if (bits == 4) m->m = aligned_alloc(64, db);
    if (!m->q || !m->d || (bits == 4 && !m->m)) {
        cpu_q8_mat_free(m);
        return NI_ENOMEM;
    }
    memset(m->q, bits == 8 ? 128 : 0, qb);
    memset(m->d, 0, db);
    if (m->m) memset(m->m, 0, db);
    return 0;
}

void cpu_q8_mat_free(cpu_q8_mat *m) {
    free(m->q);
    free(m->d);
    free(m->m);
    memset(m, 0, sizeof(*m));
}

size_t cpu_q8_mat_bytes(const cpu_q8_mat *m) {
    const size_t per_block = CPU_Q8_BLOCK * (size_t)m->bits / 8 + (m->bits == 4 ? 4 : 2);
    return (size_t)m->rows * (size_t)m->nb * per_block;
}

/* One int8 row: FP16 scale first, then the values against the rounded
 * scale, clamped to [-127, 127]; padding elements are 0. */
static void quantize_row8(uint8_t *q, uint16_t *d, const float *w, int cols, int nb) {
    for (int b = 0; b < nb; b++) {
        const int e0 = b * CPU_Q8_BLOCK, ne = NI_MIN(CPU_Q8_BLOCK, cols - e0);
        float amax = 0.0f;
        for (int e = 0; e < ne; e++) {
            const float a = fabsf(w[e0 + e]);
            amax = a > amax ? a : amax;
        }
        d[b] = qnt_f32_to_f16(NI_MIN(amax / 127.0f, 65504.0f));
        const float df = qnt_f16_to_f32(d[b]);
        const float id = df > 0.0f ? 1.0f / df : 0.0f;
        for (int e = 0; e < CPU_Q8_BLOCK; e++) {
            const float v = e < ne ? clampf(w[e0 + e] * id, -127.0f, 127.0f) : 0.0f;
            q[q8_offset(nb, b, e)] = (uint8_t)(round_even(v) + 128);
        }
    }
}

/* One 4-bit row (ggml Q4_1): d = (max - min) / 15 and m = min, both rounded
 * to FP16 first; q = round((w - m) / d) clamped to [0, 15]. Weights that lie
 * on such a grid (a Q4_1 source) come back exactly. Padding q are 0. */
static void quantize_row4(uint8_t *q, uint16_t *d, uint16_t *mn, const float *w, int cols, int nb) {
    for (int b = 0; b < nb; b++) {
        const int e0 = b * CPU_Q8_BLOCK, ne = NI_MIN(CPU_Q8_BLOCK, cols - e0);
        float lo = w[e0], hi = w[e0];
        for (int e = 1; e < ne; e++) {
            lo = w[e0 + e] < lo ? w[e0 + e] : lo;
            hi = w[e0 + e] > hi ? w[e0 + e] : hi;
        }
        mn[b] = qnt_f32_to_f16(clampf(lo, -65504.0f, 65504.0f));
        const float mf = qnt_f16_to_f32(mn[b]);
        d[b] = qnt_f32_to_f16(clampf((hi - mf) / 15.0f, 0.0f, 65504.0f));
        const float df = qnt_f16_to_f32(d[b]);
        const float id = df > 0.0f ? 1.0f / df : 0.0f;
        for (int e = 0; e < CPU_Q8_BLOCK; e++) {
            const float v = e < ne ? clampf((w[e0 + e] - mf) * id, 0.0f, 15.0f) : 0.0f;
            const size_t o = q4_offset(nb, b, e);
            const int shift = (e & 4) ? 4 : 0;
            q[o] = (uint8_t)((q[o] & (0xF0 >> shift)) | (round_even(v) << shift));
        }
    }
}

void cpu_q8_mat_set_rows(cpu_part pt, cpu_q8_mat *m, int r0, const float *w, int n) {
    NI_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= m->rows);
    int i0, i1;
    cpu_part_rows(pt, n, &i0, &i1);
    for (int i = i0; i < i1; i++) {
        const size_t r = (size_t)(r0 + i);
        if (m->bits == 8)
            quantize_row8(m->q + r * m->q_stride, m->d + r * m->nb, w + (size_t)i * m->cols,
                          m->cols, m->nb);
        else
            quantize_row4(m->q + r * m->q_stride, m->d + r * m->nb, m->m + r * m->nb,
                          w + (size_t)i * m->cols, m->cols, m->nb);
    }
}

void cpu_q8_mat_get_row(const cpu_q8_mat *m, int r, float *out) {
    const uint8_t *q = m->q + (size_t)r * m->q_stride;
    const uint16_t *d = m->d + (size_t)r * m->nb;
    for (int i = 0; i < m->cols; i++) {
        const int b = i / CPU_Q8_BLOCK, e = i % CPU_Q8_BLOCK;
        const float df = qnt_f16_to_f32(d[b]);
        if (m->bits == 8) {
            out[i] = (float)((int)q[q8_offset(m->nb, b, e)] - 128) * df;
        } else {
            const int v = (q[q4_offset(m->nb, b, e)] >> ((e & 4) ? 4 : 0)) & 15;
            out[i] = (float)v * df + qnt_f16_to_f32(m->m[(size_t)r * m->nb + b]);
        }
    }
}

/* ---- activations ----------------------------------------------------------- */

int cpu_q8_act_init(cpu_q8_act *a, int cap_rows, int cap_cols) {
    memset(a, 0, sizeof(*a));
    if (cap_rows <= 0 || cap_cols <= 0) return NI_EINVAL;
    a->cap_rows = cap_rows;
    a->cap_cols = cap_cols;
    const size_t nb = (size_t)(cap_cols + CPU_Q8_BLOCK - 1) / CPU_Q8_BLOCK;
    const size_t qb = round64(nb * CPU_Q8_BLOCK) * (size_t)cap_rows;
    const size_t fb = round64(nb * (size_t)cap_rows * sizeof(float));
    a->mem = aligned_alloc(64, qb + 3 * fb);
    if (!a->mem) return NI_ENOMEM;
    memset(a->mem, 0, qb + 3 * fb);
    a->q = a->mem;
    a->d = (float *)((char *)a->mem + qb);
    a->s = (int32_t *)((char *)a->mem + qb + fb);
    a->ms = (float *)((char *)a->mem + qb + 2 * fb);
    return 0;
}

void cpu_q8_act_free(cpu_q8_act *a) {
    free(a->mem);
    memset(a, 0, sizeof(*a));
}

void cpu_q8_quantize_act(cpu_part pt, cpu_q8_act *a, const float *x, int ldx, int n, int cols) {
    NI_ASSERT(n >= 0 && n <= a->cap_rows && cols > 0 && cols <= a->cap_cols);
    const int nb = (cols + CPU_Q8_BLOCK - 1) / CPU_Q8_BLOCK;
    const size_t q_stride = round64((size_t)nb * CPU_Q8_BLOCK);
    if (pt.ith == 0) { /* read by the gemms only after the task's barrier */
        a->n = n;
        a->cols = cols;
        a->nb = nb;
        a->q_stride = q_stride;
    }
    int t0, t1;
    cpu_part_rows(pt, n, &t0, &t1);
    for (int t = t0; t < t1; t++) {
        const float *xr = x + (size_t)t * ldx;
        int8_t *q = a->q + (size_t)t * q_stride;
        for (int b = 0; b < nb; b++) {
            const int e0 = b * CPU_Q8_BLOCK, ne = NI_MIN(CPU_Q8_BLOCK, cols - e0);
            float v[CPU_Q8_BLOCK];
            memset(v, 0, sizeof v);
            memcpy(v, xr + e0, (size_t)ne * sizeof(float));
            float amax = 0.0f;
#pragma omp simd reduction(max : amax)
            for (int e = 0; e < CPU_Q8_BLOCK; e++) {
                const float av = fabsf(v[e]);
                amax = av > amax ? av : amax;
            }
            const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
            int32_t qi[CPU_Q8_BLOCK], sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int e = 0; e < CPU_Q8_BLOCK; e++) {
                const int32_t r = round_even(clampf(v[e] * id, -127.0f, 127.0f));
                qi[e] = r;
                sum += r;
            }
            const size_t o = (size_t)t * nb + b;
            a->d[o] = amax / 127.0f;
            a->s[o] = 128 * sum;
            a->ms[o] = a->d[o] * (float)sum;
            /* group-interleaved store: 4 values per step k */
            const int g = b / CPU_Q8_GROUP, j = b % CPU_Q8_GROUP, nt = group_len(nb, g);
            int8_t *base = q + (size_t)g * CPU_Q8_GROUP * CPU_Q8_BLOCK + (size_t)j * 4;
            for (int k = 0; k < CPU_Q8_BLOCK / 4; k++)
                for (int c = 0; c < 4; c++) base[(size_t)k * nt * 4 + c] = (int8_t)qi[4 * k + c];
        }
    }
}

void cpu_q8_act_get_row(const cpu_q8_act *a, int t, float *out) {
    const int8_t *q = a->q + (size_t)t * a->q_stride;
    const float *d = a->d + (size_t)t * a->nb;
    for (int i = 0; i < a->cols; i++) {
        const int b = i / CPU_Q8_BLOCK;
        out[i] = (float)q[q8_offset(a->nb, b, i % CPU_Q8_BLOCK)] * d[b];
    }
}

/* ---- the reference (scalar) path ------------------------------------------- */

/* The fixed 16-lane summation tree of the result definition. */
static inline float tree16(const float *f) {
    float v8[8], v4[4];
    for (int i = 0; i < 8; i++) v8[i] = f[i] + f[i + 8];
    for (int i = 0; i < 4; i++) v4[i] = v8[i] + v8[i + 4];
    const float v2a = v4[0] + v4[2], v2b = v4[1] + v4[3];
    return v2a + v2b;
}

static void gemm_scalar(float *y, int ldy, const cpu_q8_act *a, int t0, int t1, const cpu_q8_mat *w,
                        int r0, int r1, int accumulate) {
    const int nb = w->nb, q4 = w->bits == 4;
    for (int r = r0; r < r1; r++) {
        const uint8_t *wq = w->q + (size_t)r * w->q_stride;
        const uint16_t *wd = w->d + (size_t)r * nb;
        for (int t = t0; t < t1; t++) {
            const int8_t *aq = a->q + (size_t)t * a->q_stride;
            const float *ad = a->d + (size_t)t * nb;
            float f[CPU_Q8_GROUP] = {0};
            for (int g = 0; g * CPU_Q8_GROUP < nb; g++) {
                const int nt = group_len(nb, g);
                for (int j = 0; j < nt; j++) {
                    const int b = g * CPU_Q8_GROUP + j;
                    int32_t isum = 0;
                    for (int e = 0; e < CPU_Q8_BLOCK; e++) {
                        const int32_t av = aq[q8_offset(nb, b, e)];
                        const int32_t wv = q4 ? (wq[q4_offset(nb, b, e)] >> ((e & 4) ? 4 : 0)) & 15
                                              : (int32_t)wq[q8_offset(nb, b, e)] - 128;
                        isum += wv * av;
                    }
                    f[j] = fmaf((float)isum * ad[b], qnt_f16_to_f32(wd[b]), f[j]);
                    if (q4)
                        f[j] = fmaf(qnt_f16_to_f32(w->m[(size_t)r * nb + b]),
                                    a->ms[(size_t)t * nb + b], f[j]);
                }
            }
            const float v = tree16(f);
            float *yo = y + (size_t)(t - t0) * ldy + (r - r0);
            *yo = accumulate ? *yo + v : v;
        }
    }
}

#ifdef Q8_X86
typedef void (*tile_fn)(float *, int, const cpu_q8_act *, int, const cpu_q8_mat *, int, int);

/* Tiles rows [r0, r1) x tokens [t0, t1): R-row tiles, then single rows;
 * tokens T at a time (the last tile takes the remainder). tabR[T-1] and
 * tab1[T-1] are the R-row and 1-row kernels for T tokens; a tile kernel
 * writes its (token u, row i) result at y[u * ldy + i]. */
static void tile_loop(const tile_fn *tabR, const tile_fn *tab1, int R, int T, float *y, int ldy,
                      const cpu_q8_act *a, int t0, int t1, const cpu_q8_mat *w, int r0, int r1,
                      int acc) {
    int r = r0;
    for (; r + R <= r1; r += R)
        for (int t = t0; t < t1; t += T)
            tabR[NI_MIN(T, t1 - t) - 1](y + (size_t)(t - t0) * ldy + (r - r0), ldy, a, t, w, r,
                                        acc);
    for (; r < r1; r++)
        for (int t = t0; t < t1; t += T)
            tab1[NI_MIN(T, t1 - t) - 1](y + (size_t)(t - t0) * ldy + (r - r0), ldy, a, t, w, r,
                                        acc);
}

#define INL static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 4")

/* ---- AVX512-VNNI ------------------------------------------------------------ */

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

T512 INL float hsum512(__m512 f) {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1));
    const __m256 v8 = _mm256_add_ps(_mm512_castps512_ps256(f), hi);
    const __m128 v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));
    const __m128 v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
    return _mm_cvtss_f32(_mm_add_ss(v2, _mm_shuffle_ps(v2, v2, 1)));
}

/* One R x T tile at rows r.., tokens t.. (R <= Q8_RMAX, T <= Q8_TMAX, Q4
 * compile-time constants after inlining). */
T512 INL void tile512(float *y, int ldy, const cpu_q8_act *a, int t, const cpu_q8_mat *w, int r,
                      int accumulate, const int R, const int T, const int Q4) {
    const int nb = w->nb;
    const __m512i nib = _mm512_set1_epi8(0x0F);
    __m512 f[Q8_RMAX][Q8_TMAX];
    const uint8_t *wq[Q8_RMAX];
    const int8_t *aq[Q8_TMAX];
    UNROLL for (int i = 0; i < R; i++) {
        wq[i] = w->q + (size_t)(r + i) * w->q_stride;
        UNROLL for (int u = 0; u < T; u++) f[i][u] = _mm512_setzero_ps();
    }
    UNROLL for (int u = 0; u < T; u++) aq[u] = a->q + (size_t)(t + u) * a->q_stride;

    for (int g = 0; g * CPU_Q8_GROUP < nb; g++) {
        const int nt = group_len(nb, g);
        const __mmask16 m = (__mmask16)((1u << nt) - 1);
        const size_t ba = (size_t)g * CPU_Q8_GROUP * CPU_Q8_BLOCK; /* activation group base */
        const size_t bw = Q4 ? ba / 2 : ba;                        /* weight group base */
        const size_t step = (size_t)nt * 4;                        /* bytes per step */
        __m512i acc[Q8_RMAX][Q8_TMAX];
        UNROLL for (int i = 0; i < R; i++) UNROLL for (int u = 0; u < T; u++) acc[i][u] =
            _mm512_setzero_si512();
        if (Q4) {
            for (int k2 = 0; k2 < 4; k2++) {
                __m512i a0[Q8_TMAX], a1[Q8_TMAX];
                UNROLL for (int u = 0; u < T; u++) {
                    a0[u] = _mm512_maskz_loadu_epi32(m, aq[u] + ba + 2 * k2 * step);
                    a1[u] = _mm512_maskz_loadu_epi32(m, aq[u] + ba + (2 * k2 + 1) * step);
                }
                UNROLL for (int i = 0; i < R; i++) {
                    const __m512i wv = _mm512_maskz_loadu_epi32(m, wq[i] + bw + k2 * step);
                    const __m512i w0 = _mm512_and_si512(wv, nib);
                    const __m512i w1 = _mm512_and_si512(_mm512_srli_epi16(wv, 4), nib);
                    UNROLL for (int u = 0; u < T; u++) {
                        acc[i][u] = _mm512_dpbusd_epi32(acc[i][u], w0, a0[u]);
                        acc[i][u] = _mm512_dpbusd_epi32(acc[i][u], w1, a1[u]);
                    }
                }
            }
        } else {
            for (int k = 0; k < 8; k++) {
                __m512i av[Q8_TMAX];
                UNROLL for (int u = 0; u < T; u++) av[u] =
                    _mm512_maskz_loadu_epi32(m, aq[u] + ba + k * step);
                UNROLL for (int i = 0; i < R; i++) {
                    const __m512i wv = _mm512_maskz_loadu_epi32(m, wq[i] + bw + k * step);
                    UNROLL for (int u = 0; u < T; u++) acc[i][u] =
                        _mm512_dpbusd_epi32(acc[i][u], wv, av[u]);
                }
            }
        }
        const int b0 = g * CPU_Q8_GROUP;
        UNROLL for (int u = 0; u < T; u++) {
            const size_t ao = (size_t)(t + u) * nb + b0;
            const __m512 dav = _mm512_maskz_loadu_ps(m, a->d + ao);
            const __m512i sv = Q4 ? _mm512_setzero_si512() : _mm512_maskz_loadu_epi32(m, a->s + ao);
            const __m512 msv = Q4 ? _mm512_maskz_loadu_ps(m, a->ms + ao) : _mm512_setzero_ps();
            UNROLL for (int i = 0; i < R; i++) {
                const size_t wo = (size_t)(r + i) * nb + b0;
                const __m512 dwv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w->d + wo));
                const __m512i is = Q4 ? acc[i][u] : _mm512_sub_epi32(acc[i][u], sv);
                const __m512 fv = _mm512_mul_ps(_mm512_cvtepi32_ps(is), dav);
                f[i][u] = _mm512_fmadd_ps(fv, dwv, f[i][u]);
                if (Q4) {
                    const __m512 mwv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w->m + wo));
                    f[i][u] = _mm512_fmadd_ps(mwv, msv, f[i][u]);
                }
            }
        }
    }
    UNROLL for (int u = 0; u < T; u++) UNROLL for (int i = 0; i < R; i++) {
        float *yo = y + (size_t)u * ldy + i;
        const float v = hsum512(f[i][u]);
        *yo = accumulate ? *yo + v : v;
    }
}

#define TILE_FN(name, attr, body, R, T, Q4)                                                        \
    static attr void name(float *y, int ldy, const cpu_q8_act *a, int t, const cpu_q8_mat *w,      \
                          int r, int acc) {                                                        \
        body(y, ldy, a, t, w, r, acc, R, T, Q4);                                                   \
    }

TILE_FN(k512_8_4x1, T512, tile512, 4, 1, 0)
TILE_FN(k512_8_4x2, T512, tile512, 4, 2, 0)
TILE_FN(k512_8_4x3, T512, tile512, 4, 3, 0)
TILE_FN(k512_8_4x4, T512, tile512, 4, 4, 0)
TILE_FN(k512_8_1x1, T512, tile512, 1, 1, 0)
TILE_FN(k512_8_1x2, T512, tile512, 1, 2, 0)
TILE_FN(k512_8_1x3, T512, tile512, 1, 3, 0)
TILE_FN(k512_8_1x4, T512, tile512, 1, 4, 0)
TILE_FN(k512_4_4x1, T512, tile512, 4, 1, 1)
TILE_FN(k512_4_4x2, T512, tile512, 4, 2, 1)
TILE_FN(k512_4_1x1, T512, tile512, 1, 1, 1)
TILE_FN(k512_4_1x2, T512, tile512, 1, 2, 1)

static void gemm_avx512vnni(float *y, int ldy, const cpu_q8_act *a, int t0, int t1,
                            const cpu_q8_mat *w, int r0, int r1, int acc) {
    static const tile_fn r8[4] = {k512_8_4x1, k512_8_4x2, k512_8_4x3, k512_8_4x4};
    static const tile_fn o8[4] = {k512_8_1x1, k512_8_1x2, k512_8_1x3, k512_8_1x4};
    static const tile_fn r4[2] = {k512_4_4x1, k512_4_4x2};
    static const tile_fn o4[2] = {k512_4_1x1, k512_4_1x2};
    if (w->bits == 4)
        tile_loop(r4, o4, 4, 2, y, ldy, a, t0, t1, w, r0, r1, acc);
    else
        tile_loop(r8, o8, 4, 4, y, ldy, a, t0, t1, w, r0, r1, acc);
}

/* ---- AVX2 and AVX-VNNI (ymm: two 8-lane halves per group) --------------------- */

#define T256 __attribute__((target("avx2,fma,f16c")))
#define T256V __attribute__((target("avx2,fma,f16c,avxvnni")))

/* Lane mask for n active 32-bit lanes of 8 (n may be <= 0 or >= 8). */
#define LANES8(n)                                                                                  \
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))

/* Loads the low (lanes 0-7) and high (8-15) halves of one step at p. */
#define LOAD2(lo, hi, p)                                                                           \
    do {                                                                                           \
        if (full) {                                                                                \
            lo = _mm256_loadu_si256((const __m256i *)(p));                                         \
            hi = _mm256_loadu_si256((const __m256i *)((p) + 32));                                  \
        } else {                                                                                   \
            lo = _mm256_maskload_epi32((const int *)(p), mlo);                                     \
            hi = _mm256_maskload_epi32((const int *)((p) + 32), mhi);                              \
        }                                                                                          \
    } while (0)

/* Body shared by the AVX2 (VNNI = 0) and AVX-VNNI (VNNI = 1) tiles, for both
 * weight formats. Per path: YMM_PREP8(w, p0, p1) prepares an int8 weight
 * half, YMM_DOT8(acc, p0, p1, a) and YMM_DOT4(acc, w, a) accumulate one
 * 8-lane step of int8 or 4-bit weights. */
#define YMM_TILE_BODY(VNNI)                                                                        \
    const int nb = w->nb;                                                                          \
    const __m256i nib = _mm256_set1_epi8(0x0F);                                                    \
    __m256 flo[Q8_RMAX][Q8_TMAX], fhi[Q8_RMAX][Q8_TMAX];                                           \
    const uint8_t *wq[Q8_RMAX];                                                                    \
    const int8_t *aq[Q8_TMAX];                                                                     \
    UNROLL for (int i = 0; i < R; i++) {                                                           \
        wq[i] = w->q + (size_t)(r + i) * w->q_stride;                                              \
        UNROLL for (int u = 0; u < T; u++) flo[i][u] = fhi[i][u] = _mm256_setzero_ps();            \
    }                                                                                              \
    UNROLL for (int u = 0; u < T; u++) aq[u] = a->q + (size_t)(t + u) * a->q_stride;               \
    for (int g = 0; g * CPU_Q8_GROUP < nb; g++) {                                                  \
        const int nt = group_len(nb, g), full = nt == CPU_Q8_GROUP;                                \
        const __m256i mlo = LANES8(nt), mhi = LANES8(nt - 8);                                      \
        const size_t ba = (size_t)g * CPU_Q8_GROUP * CPU_Q8_BLOCK;                                 \
        const size_t bw = Q4 ? ba / 2 : ba, step = (size_t)nt * 4;                                 \
        __m256i alo[Q8_RMAX][Q8_TMAX], ahi[Q8_RMAX][Q8_TMAX];                                      \
        UNROLL for (int i = 0; i < R; i++) UNROLL for (int u = 0; u < T; u++) alo[i][u] =          \
            ahi[i][u] = _mm256_setzero_si256();                                                    \
        if (Q4) {                                                                                  \
            for (int k2 = 0; k2 < 4; k2++) {                                                       \
                __m256i a0l[Q8_TMAX], a0h[Q8_TMAX], a1l[Q8_TMAX], a1h[Q8_TMAX];                    \
                UNROLL for (int u = 0; u < T; u++) {                                               \
                    LOAD2(a0l[u], a0h[u], aq[u] + ba + 2 * k2 * step);                             \
                    LOAD2(a1l[u], a1h[u], aq[u] + ba + (2 * k2 + 1) * step);                       \
                }                                                                                  \
                UNROLL for (int i = 0; i < R; i++) {                                               \
                    __m256i wl, wh;                                                                \
                    LOAD2(wl, wh, wq[i] + bw + k2 * step);                                         \
                    const __m256i w0l = _mm256_and_si256(wl, nib);                                 \
                    const __m256i w0h = _mm256_and_si256(wh, nib);                                 \
                    const __m256i w1l = _mm256_and_si256(_mm256_srli_epi16(wl, 4), nib);           \
                    const __m256i w1h = _mm256_and_si256(_mm256_srli_epi16(wh, 4), nib);           \
                    UNROLL for (int u = 0; u < T; u++) {                                           \
                        YMM_DOT4(alo[i][u], w0l, a0l[u]);                                          \
                        YMM_DOT4(ahi[i][u], w0h, a0h[u]);                                          \
                        YMM_DOT4(alo[i][u], w1l, a1l[u]);                                          \
                        YMM_DOT4(ahi[i][u], w1h, a1h[u]);                                          \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        } else {                                                                                   \
            for (int k = 0; k < 8; k++) {                                                          \
                __m256i avl[Q8_TMAX], avh[Q8_TMAX];                                                \
                UNROLL for (int u = 0; u < T; u++) LOAD2(avl[u], avh[u], aq[u] + ba + k * step);   \
                UNROLL for (int i = 0; i < R; i++) {                                               \
                    __m256i wl, wh;                                                                \
                    LOAD2(wl, wh, wq[i] + bw + k * step);                                          \
                    YMM_PREP8(wl, pl0, pl1);                                                       \
                    YMM_PREP8(wh, ph0, ph1);                                                       \
                    UNROLL for (int u = 0; u < T; u++) {                                           \
                        YMM_DOT8(alo[i][u], pl0, pl1, avl[u]);                                     \
                        YMM_DOT8(ahi[i][u], ph0, ph1, avh[u]);                                     \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        const int b0 = g * CPU_Q8_GROUP;                                                           \
        UNROLL for (int u = 0; u < T; u++) {                                                       \
            const size_t ao = (size_t)(t + u) * nb + b0;                                           \
            const __m256 dal = _mm256_maskload_ps(a->d + ao, mlo);                                 \
            const __m256 dah = _mm256_maskload_ps(a->d + ao + 8, mhi);                             \
            const int sub = VNNI && !Q4; /* int8 weights on VNNI: remove the bias */               \
            const __m256i sl = sub ? _mm256_maskload_epi32((const int *)(a->s + ao), mlo)          \
                                   : _mm256_setzero_si256();                                       \
            const __m256i sh = sub ? _mm256_maskload_epi32((const int *)(a->s + ao + 8), mhi)      \
                                   : _mm256_setzero_si256();                                       \
            const __m256 msl = Q4 ? _mm256_maskload_ps(a->ms + ao, mlo) : _mm256_setzero_ps();     \
            const __m256 msh = Q4 ? _mm256_maskload_ps(a->ms + ao + 8, mhi) : _mm256_setzero_ps(); \
            UNROLL for (int i = 0; i < R; i++) {                                                   \
                const size_t wo = (size_t)(r + i) * nb + b0;                                       \
                uint16_t hd[CPU_Q8_GROUP] = {0}, hm[CPU_Q8_GROUP] = {0};                           \
                memcpy(hd, w->d + wo, (size_t)nt * sizeof(uint16_t));                              \
                if (Q4) memcpy(hm, w->m + wo, (size_t)nt * sizeof(uint16_t));                      \
                const __m256 dwl = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)hd));          \
                const __m256 dwh = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(hd + 8)));    \
                const __m256 fl =                                                                  \
                    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(alo[i][u], sl)), dal);       \
                const __m256 fh =                                                                  \
                    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(ahi[i][u], sh)), dah);       \
                flo[i][u] = _mm256_fmadd_ps(fl, dwl, flo[i][u]);                                   \
                fhi[i][u] = _mm256_fmadd_ps(fh, dwh, fhi[i][u]);                                   \
                if (Q4) {                                                                          \
                    const __m256 mwl = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)hm));      \
                    const __m256 mwh =                                                             \
                        _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(hm + 8)));               \
                    flo[i][u] = _mm256_fmadd_ps(mwl, msl, flo[i][u]);                              \
                    fhi[i][u] = _mm256_fmadd_ps(mwh, msh, fhi[i][u]);                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    UNROLL for (int u = 0; u < T; u++) UNROLL for (int i = 0; i < R; i++) {                        \
        const __m256 v8 = _mm256_add_ps(flo[i][u], fhi[i][u]);                                     \
        const __m128 v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));    \
        const __m128 v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));                                   \
        const float hs = _mm_cvtss_f32(_mm_add_ss(v2, _mm_shuffle_ps(v2, v2, 1)));                 \
        float *yo = y + (size_t)u * ldy + i;                                                       \
        *yo = accumulate ? *yo + hs : hs;                                                          \
    }

/* AVX2: int8 weights un-biased (p1 = signed w, p0 = |w|), then |w| x sign(a, w). */
#define YMM_PREP8(wv, p0, p1)                                                                      \
    const __m256i p1 = _mm256_xor_si256(wv, _mm256_set1_epi8((char)0x80));                         \
    const __m256i p0 = _mm256_abs_epi8(p1)
#define YMM_DOT8(acc, p0, p1, av)                                                                  \
    acc = _mm256_add_epi32(acc,                                                                    \
                           _mm256_madd_epi16(_mm256_maddubs_epi16(p0, _mm256_sign_epi8(av, p1)),   \
                                             _mm256_set1_epi16(1)))
#define YMM_DOT4(acc, wv, av)                                                                      \
    acc = _mm256_add_epi32(acc,                                                                    \
                           _mm256_madd_epi16(_mm256_maddubs_epi16(wv, av), _mm256_set1_epi16(1)))

T256 INL void tile256(float *y, int ldy, const cpu_q8_act *a, int t, const cpu_q8_mat *w, int r,
                      int accumulate, const int R, const int T, const int Q4) {
    YMM_TILE_BODY(0)
}
#undef YMM_PREP8
#undef YMM_DOT8
#undef YMM_DOT4

/* AVX-VNNI: biased u8 weights (or 4-bit q) x s8 directly. */
#define YMM_PREP8(wv, p0, p1) const __m256i p0 = wv
#define YMM_DOT8(acc, p0, p1, av) acc = _mm256_dpbusd_avx_epi32(acc, p0, av)
#define YMM_DOT4(acc, wv, av) acc = _mm256_dpbusd_avx_epi32(acc, wv, av)

T256V INL void tile256v(float *y, int ldy, const cpu_q8_act *a, int t, const cpu_q8_mat *w, int r,
                        int accumulate, const int R, const int T, const int Q4){YMM_TILE_BODY(1)}
#undef YMM_PREP8
#undef YMM_DOT8
#undef YMM_DOT4

TILE_FN(k256_8_2x1, T256, tile256, 2, 1, 0) TILE_FN(k256_8_2x2, T256, tile256, 2, 2, 0)
    TILE_FN(k256_8_1x1, T256, tile256, 1, 1, 0) TILE_FN(k256_8_1x2, T256, tile256, 1, 2, 0)
        TILE_FN(k256_4_2x1, T256, tile256, 2, 1, 1) TILE_FN(k256_4_2x2, T256, tile256, 2, 2, 1)
            TILE_FN(k256_4_1x1, T256, tile256, 1, 1, 1) TILE_FN(k256_4_1x2, T256, tile256, 1, 2, 1)
                TILE_FN(k256v_8_2x1, T256V, tile256v, 2, 1, 0)
                    TILE_FN(k256v_8_2x2, T256V, tile256v, 2, 2, 0)
                        TILE_FN(k256v_8_1x1, T256V, tile256v, 1, 1, 0)
                            TILE_FN(k256v_8_1x2, T256V, tile256v, 1, 2, 0)
                                TILE_FN(k256v_4_2x1, T256V, tile256v, 2, 1, 1)
                                    TILE_FN(k256v_4_2x2, T256V, tile256v, 2, 2, 1)
                                        TILE_FN(k256v_4_1x1, T256V, tile256v, 1, 1, 1)
                                            TILE_FN(k256v_4_1x2, T256V, tile256v, 1, 2, 1)

                                                static void gemm_avx2(float *y, int ldy,
                                                                      const cpu_q8_act *a, int t0,
                                                                      int t1, const cpu_q8_mat *w,
                                                                      int r0, int r1, int acc) {
    static const tile_fn r8[2] = {k256_8_2x1, k256_8_2x2}, o8[2] = {k256_8_1x1, k256_8_1x2};
    static const tile_fn r4[2] = {k256_4_2x1, k256_4_2x2}, o4[2] = {k256_4_1x1, k256_4_1x2};
    tile_loop(w->bits == 4 ? r4 : r8, w->bits == 4 ? o4 : o8, 2, 2, y, ldy, a, t0, t1, w, r0, r1,
              acc);
}

static void gemm_avxvnni(float *y, int ldy, const cpu_q8_act *a, int t0, int t1,
                         const cpu_q8_mat *w, int r0, int r1, int acc) {
    static const tile_fn r8[2] = {k256v_8_2x1, k256v_8_2x2}, o8[2] = {k256v_8_1x1, k256v_8_1x2};
    static const tile_fn r4[2] = {k256v_4_2x1, k256v_4_2x2}, o4[2] = {k256v_4_1x1, k256v_4_1x2};
    tile_loop(w->bits == 4 ? r4 : r8, w->bits == 4 ? o4 : o8, 2, 2, y, ldy, a, t0, t1, w, r0, r1,
              acc);
}
#endif /* Q8_X86 */

/* ---- dispatch ------------------------------------------------------------- */

typedef void (*gemm_fn)(float *, int, const cpu_q8_act *, int, int, const cpu_q8_mat *, int, int,
                        int);

static gemm_fn g_gemm;
static int g_path = -1;

int cpu_q8_path_supported(int p) {
    if (p == CPU_Q8_SCALAR) return 1;
#ifdef Q8_X86
    __builtin_cpu_init();
#if defined(__clang__) && __clang_major__ < 16
    /* clang 14 (Debian 12, the fuzz build) knows neither "f16c" nor
     * "avxvnni": every AVX2 CPU has F16C; AVX-VNNI is then not used. */
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const int avxvnni = 0;
#else
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                     __builtin_cpu_supports("f16c");
    const int avxvnni = __builtin_cpu_supports("avxvnni");
#endif
    switch (p) {
    case CPU_Q8_AVX2: return avx2;
    case CPU_Q8_AVXVNNI: return avx2 && avxvnni;
    case CPU_Q8_AVX512VNNI:
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    default: return 0;
    }
#else
    return 0;
#endif
}

int cpu_q8_set_path(int p) {
    if (p < 0 || p >= CPU_Q8_N_PATHS || !cpu_q8_path_supported(p)) return NI_EUNSUPPORTED;
    switch (p) {
#ifdef Q8_X86
    case CPU_Q8_AVX2: g_gemm = gemm_avx2; break;
    case CPU_Q8_AVXVNNI: g_gemm = gemm_avxvnni; break;
    case CPU_Q8_AVX512VNNI: g_gemm = gemm_avx512vnni; break;
#endif
    default: g_gemm = gemm_scalar; break;
    }
    g_path = p;
    return 0;
}

void cpu_q8_select(void) {
    for (int p = CPU_Q8_N_PATHS - 1; p >= 0; p--)
        if (cpu_q8_set_path(p) == 0) return;
}

int cpu_q8_get_path(void) {
    if (g_path < 0) cpu_q8_select();
    return g_path;
}

const char *cpu_q8_path_name(int p) {
    switch (p) {
    case CPU_Q8_SCALAR: return "scalar";
    case CPU_Q8_AVX2: return "avx2";
    case CPU_Q8_AVXVNNI: return "avx-vnni";
    case CPU_Q8_AVX512VNNI: return "avx512-vnni";
    default: return "unknown";
    }
}

/* ---- products ------------------------------------------------------------ */

void cpu_q8_gemm_range(float *y, int ldy, const cpu_q8_act *a, int t0, int t1, const cpu_q8_mat *w,
                       int r0, int r1, int accumulate) {
    NI_ASSERT(a->cols == w->cols && a->nb == w->nb);
    NI_ASSERT(0 <= t0 && t1 <= a->n && 0 <= r0 && r1 <= w->rows);
    if (t1 <= t0 || r1 <= r0) return;
    if (g_path < 0) cpu_q8_select();
    g_gemm(y, ldy, a, t0, t1, w, r0, r1, accumulate);
}

void cpu_q8_gemm(cpu_part pt, float *y, int ldy, const cpu_q8_act *a, const cpu_q8_mat *w,
                 int accumulate) {
    int64_t r0, r1;
    cpu_pool_range(w->rows, Q8_CHUNK, pt.ith, pt.nth, &r0, &r1);
    if (r1 > r0) cpu_q8_gemm_range(y + r0, ldy, a, 0, a->n, w, (int)r0, (int)r1, accumulate);
}
