/*
 * sampler.c - per-request sampler: the sampling passes of smp_sample and
 * smp_distribution (see sampler.h for the pipeline, the semantics and the
 * vLLM references; params, the RNG and the penalty table are in
 * sampler_state.c).
 *
 * Design:
 *   - Penalties come from the request's sparse token table
 *     (smp_apply_penalties, sampler_state.c), never a pass over the vocab.
 *   - Passes over the vocab are few and vectorised (GCC vector extensions,
 *     8 floats a step; exp is a Cephes polynomial so it vectorises too):
 *       greedy: max pass + first-index search; no softmax;
 *       dense:  no top_k and no top_p: weights exp((l - max) / T) into
 *               scratch (min_p zeroes some) with per-256 block sums; the
 *               draw skips whole blocks, then scans one;
 *       top_k:  a 2048-bin radix histogram of the logits' key bits finds the
 *               bin holding the k-th largest; only tokens from that bin up
 *               are gathered, a quickselect (3-way, ties cheap) finds the
 *               exact k-th value; the survivors form a candidate list;
 *       top_p:  no sort. On dense weights, tokens under a bound weight
 *               ((1-p) * total / vocab) are provably outside the nucleus and
 *               skipped; a 512-bin histogram (2^(1/4) wide) of the rest
 *               finds the bin where the mass from the top reaches p: bins
 *               above are kept whole, bins below dropped, and a weighted
 *               quickselect over the boundary bin alone finds the cut;
 *       min_p:  a threshold on weight (the top weight is exactly 1);
 *       draw:   one uniform, inverse CDF over the survivors.
 *     Survivor order (id order when dense, partition order for lists) is a
 *     deterministic function of the inputs, so draws are reproducible.
 *   - Raw logprobs: when logit_bias or a penalty will change logits[], the
 *     raw logits are first copied into scratch; otherwise logits[] is used.
 *     One fused pass computes the log-sum-exp and the top-n list.
 *
 * Invariants: candidate weights are in (0, 1]; the top-logit token has
 * weight exactly 1 and survives every filter, so the support is never empty.
 */
#include "sampler.h"

#include <math.h>
#include <string.h>
#ifdef __AVX__
#include <immintrin.h>
#endif

#include "engine/util/util.h"
#include "sampler_state.h"
#include "twins.h"

typedef struct cand {
    float v; /* logit during top_k selection, then weight exp((l - max) / T) */
    int32_t id;
} cand;

/* ---- vector helpers ------------------------------------------------------
 * GCC/Clang vector extensions, 8 floats at a time: AVX2 code under
 * -march=x86-64-v3, pairs of SSE ops otherwise. Vectors never cross a
 * function boundary by value (macros, or pointers), so no ABI depends on
 * AVX. Only plain IEEE single ops are used and fp contraction is off
 * (-std=c11), so vector and scalar kernels give the same bits. */

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));
typedef float v4f __attribute__((vector_size(16)));
typedef float v4f_u __attribute__((vector_size(16), aligned(4), may_alias));
typedef double v4d __attribute__((vector_size(32)));

#define LD8(p) (*(const v8f_u *)(const void *)(p))
#define ST8(p, v) (*(v8f_u *)(void *)(p) = (v))
#define BC8(x) ((v8f){0} + (float)(x))
#define SEL8(m, a, b) ((v8f)(((m) & (v8i)(a)) | (~(m) & (v8i)(b))))
#ifdef __AVX__
#define ANY8(m) (_mm256_movemask_ps((__m256)(m)) != 0)
#else
#define ANY8(m) any8_generic(&(m))
static inline int any8_generic(const v8i *m) {
    int32_t t[8];
    memcpy(t, m, sizeof t);
    return (t[0] | t[1] | t[2] | t[3] | t[4] | t[5] | t[6] | t[7]) != 0;
}
#endif

/* *a0 += p[0..4), *a1 += p[4..8), widened to double. */
static inline void acc8(v4d *a0, v4d *a1, const float *p) {
    *a0 += __builtin_convertvector(*(const v4f_u *)(const void *)p, v4d);
    *a1 += __builtin_convertvector(*(const v4f_u *)(const void *)(p + 4), v4d);
}

/* exp(x) for x <= 0: Cephes' expf (range reduction by ln 2, degree-6
 * polynomial, ~1 ulp). Results below FLT_MIN (x < NI_EXP_LO, -inf included)
 * are 0; exp(0) is exactly 1. Constants: twins.h (the CUDA sampler's too). */
static inline float exp_neg(float x) {
    if (!(x >= NI_EXP_LO)) return 0.0f;
    const float t = x * NI_EXP_LOG2E + NI_EXP_MAGIC;
    const float n = t - NI_EXP_MAGIC;
    float r = x - n * NI_EXP_C1;
    r = r - n * NI_EXP_C2;
    float q = NI_EXP_P0;
    q = q * r + NI_EXP_P1;
    q = q * r + NI_EXP_P2;
    q = q * r + NI_EXP_P3;
    q = q * r + NI_EXP_P4;
    q = q * r + NI_EXP_P5;
    q = q * r * r + r + 1.0f;
    uint32_t tb;
    memcpy(&tb, &t, sizeof tb);
    const uint32_t sb = (tb - 0x4b400000u + 127u) << 23;
    float s;
    memcpy(&s, &sb, sizeof s);
    return q * s;
}

/* *y = exp_neg(*y), lane by lane, same ops. */
static inline void exp_neg8(v8f *y) {
    v8f x = *y;
    const v8i ok = x >= NI_EXP_LO;
    x = SEL8(ok, x, BC8(0.0f));
    const v8f t = x * NI_EXP_LOG2E + NI_EXP_MAGIC;
    const v8f n = t - NI_EXP_MAGIC;
    v8f r = x - n * NI_EXP_C1;
    r = r - n * NI_EXP_C2;
    v8f q = BC8(NI_EXP_P0);
    q = q * r + NI_EXP_P1;
    q = q * r + NI_EXP_P2;
    q = q * r + NI_EXP_P3;
    q = q * r + NI_EXP_P4;
    q = q * r + NI_EXP_P5;
    q = q * r * r + r + 1.0f;
    const v8i sb = ((v8i)t - 0x4b400000 + 127) << 23;
    *y = SEL8(ok, q * (v8f)sb, BC8(0.0f));
}

/* ---- scratch ------------------------------------------------------------ */

#define BLK 256 /* weights per block sum */

static size_t round32(size_t x) { return (x + 31) & ~(size_t)31; }

size_t smp_scratch_bytes(int vocab) {
    if (vocab < 1) return 0;
    const size_t v = (size_t)vocab, nb = (v + BLK - 1) / BLK;
    return 32 + 2 * round32(v * sizeof(float)) + round32(v * sizeof(cand)) +
           round32(nb * sizeof(double));
}

typedef struct work {
    const float *raw; /* raw logits for logprobs (logits[] itself or rawbuf), or NULL */
    float *rawbuf;    /* [vocab] */
    float *w;         /* [vocab] dense weights */
    cand *c;          /* [vocab] candidates */
    double *bs;       /* [ceil(vocab / BLK)] block sums of w */
} work;

/* ---- processing (steps 1-4) --------------------------------------------- */

static int any_penalty(const smp_params *p, int *rep, int *fp) {
    *rep = p->repetition_penalty != 1.0f;
    *fp = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    return *rep || *fp;
}

/* Checks, carves scratch, keeps the raw logits if needed, applies logit_bias
 * then penalties in place. */
static int process(smp_state *s, const smp_params *p, float *logits, int vocab, void *scratch,
                   size_t scratch_bytes, int want_raw, work *w) {
    if (!s || !p || !logits || !scratch) return NI_EINVAL;
    if (vocab < 1 || vocab != s->vocab) return NI_EINVAL;
    if (scratch_bytes < smp_scratch_bytes(vocab)) return NI_ERANGE;
    if (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias)) return NI_EINVAL;
    for (int32_t i = 0; i < p->n_logit_bias; i++)
        if (p->logit_bias[i].token < 0 || p->logit_bias[i].token >= vocab) return NI_EINVAL;
    int rep, fp;
    const int pen = any_penalty(p, &rep, &fp);
    if ((rep && !s->track_prompt) || (fp && !s->track_output)) return NI_EINVAL;

    const size_t v = (size_t)vocab;
    char *base = (char *)(((uintptr_t)scratch + 31) & ~(uintptr_t)31);
    w->rawbuf = (float *)base;
    base += round32(v * sizeof(float));
    w->w = (float *)base;
    base += round32(v * sizeof(float));
    w->c = (cand *)base;
    base += round32(v * sizeof(cand));
    w->bs = (double *)base;
    w->raw = NULL;
    const int modifies = p->n_logit_bias > 0 || (pen && s->used > 0);
    if (want_raw) {
        if (modifies) {
            memcpy(w->rawbuf, logits, v * sizeof(float));
            w->raw = w->rawbuf;
        } else {
            w->raw = logits;
        }
    }

    /* 1. logit_bias (vLLM: a logits processor, before the sampler) */
    for (int32_t i = 0; i < p->n_logit_bias; i++)
        logits[p->logit_bias[i].token] += p->logit_bias[i].bias;

    /* 2-4. repetition (prompt | output), frequency, presence (output) */
    if (pen && s->used > 0) smp_apply_penalties(s, p, rep, fp, logits);
    return 0;
}

/* ---- passes over the vocab ---------------------------------------------- */

static inline int bad_logit(float x) { return x != x || x == INFINITY; }

/* Max of l[0..n) and the count of entries > -inf. NI_ERANGE on a NaN or
 * +inf entry, or when every entry is -inf. */
static int scan_max(const float *l, int n, float *max, int *nfin) {
    v8f m8 = BC8(-INFINITY);
    v8i bad8 = {0}, fin8 = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const v8f x = LD8(l + i);
        const v8i gt = x > m8;
        m8 = SEL8(gt, x, m8);
        bad8 |= (x != x) | (x == INFINITY);
        fin8 -= x > -INFINITY;
    }
    float m = -INFINITY;
    int bad = 0, fin = 0;
    for (int j = 0; j < 8; j++) {
        if (m8[j] > m) m = m8[j];
        bad |= bad8[j];
        fin += fin8[j];
    }
    for (; i < n; i++) {
        const float x = l[i];
        bad |= bad_logit(x);
        if (x > m) m = x;
        fin += x > -INFINITY;
    }
    if (bad || fin == 0) return NI_ERANGE;
    *max = m;
    *nfin = fin;
    return 0;
}

/* Greedy: the first index of the maximum (*max gets the maximum). */
static int argmax(const float *l, int n, int32_t *out, float *max) {
    float m;
    int nfin;
    int rc = scan_max(l, n, &m, &nfin);
    if (rc) return rc;
    *max = m;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const v8i eq = LD8(l + i) == m;
        if (ANY8(eq)) break;
    }
    while (l[i] != m) i++;
    *out = i;
    return 0;
}

/* w[i] = exp((l[i] - m) * inv_t), set to 0 below min_w; bs[b] = sum of
 * block b (BLK weights, in double). Returns the sum of the block sums. */
static double dense_weights(const float *l, int n, float m, float inv_t, float min_w, float *w,
                            double *bs) {
    double total = 0.0;
    for (int b0 = 0, bi = 0; b0 < n; b0 += BLK, bi++) {
        const int e = NI_MIN(n, b0 + BLK);
        v4d a0 = {0}, a1 = {0};
        int i = b0;
        for (; i + 8 <= e; i += 8) {
            v8f y = (LD8(l + i) - m) * inv_t;
            exp_neg8(&y);
            const v8i keep = y >= min_w;
            ST8(w + i, SEL8(keep, y, BC8(0.0f)));
            acc8(&a0, &a1, w + i);
        }
        const v4d a = a0 + a1;
        double s = (a[0] + a[1]) + (a[2] + a[3]);
        for (; i < e; i++) {
            float y = exp_neg((l[i] - m) * inv_t);
            if (!(y >= min_w)) y = 0.0f;
            w[i] = y;
            s += y;
        }
        bs[bi] = s;
        total += s;
    }
    return total;
}

/* Inverse CDF over dense weights: the first i whose running sum exceeds
 * target (target < total). Blocks whose sum stays below are skipped. */
static int32_t draw_dense(const float *w, int n, const double *bs, double target) {
    double acc = 0.0;
    const int nb = (n + BLK - 1) / BLK;
    for (int b = 0; b < nb; b++) {
        if (acc + bs[b] > target) {
            const int e = NI_MIN(n, (b + 1) * BLK);
            int last = -1;
            for (int i = b * BLK; i < e; i++) {
                if (!(w[i] > 0.0f)) continue;
                last = i;
                acc += w[i];
                if (acc > target) return i;
            }
            if (last >= 0) return last; /* rounding inside the block */
        }
        acc += bs[b];
    }
    for (int i = n - 1; i > 0; i--) /* rounding at the very end */
        if (w[i] > 0.0f) return i;
    return 0;
}

/* ---- candidate lists ---------------------------------------------------- */

static inline void cswap(cand *a, cand *b) {
    cand t = *a;
    *a = *b;
    *b = t;
}

static inline float median3(float x, float y, float z) {
    if (x > y) {
        float t = x;
        x = y;
        y = t;
    }
    if (z <= x) return x;
    if (z >= y) return y;
    return z;
}

/* Value of rank k (0-based, descending) among a[0..n), by quickselect with
 * a 3-way partition (equal keys end the search at once). Permutes a. */
static float kth_largest(cand *a, int n, int k) {
    int lo = 0, hi = n;
    while (hi - lo > 1) {
        const float piv = median3(a[lo].v, a[lo + (hi - lo) / 2].v, a[hi - 1].v);
        int lt = lo, i = lo, gt = hi;
        while (i < gt) {
            if (a[i].v > piv)
                cswap(&a[lt++], &a[i++]);
            else if (a[i].v < piv)
                cswap(&a[i], &a[--gt]);
            else
                i++;
        }
        if (k < lt)
            hi = lt;
        else if (k < gt)
            return piv;
        else
            lo = gt;
    }
    return a[lo].v;
}

/* Order-preserving map of non-NaN floats to uint32 and back. */
static inline uint32_t fkey(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return b ^ ((uint32_t)((int32_t)b >> 31) | 0x80000000u);
}

static inline float kfloat(uint32_t k) {
    const uint32_t b = (k & 0x80000000u) ? (k ^ 0x80000000u) : ~k;
    float x;
    memcpy(&x, &b, sizeof x);
    return x;
}

/* 6. top_k, 1 <= k < (finite count): fills c with (weight, id) of every
 * token whose logit >= the k-th largest (ties kept), weight > 0. A 2048-bin
 * radix histogram of the top key bits finds the bin holding the k-th
 * largest; only tokens from that bin up are gathered and quickselected. */
static int topk_list(const float *l, int vocab, int k, float m, float inv_t, cand *c) {
    uint32_t hist[2048];
    memset(hist, 0, sizeof hist);
    for (int i = 0; i < vocab; i++)
        if (l[i] > -INFINITY) hist[fkey(l[i]) >> 21]++;
    int b = 2047;
    uint32_t above = 0;
    while (above + hist[b] < (uint32_t)k) above += hist[b--];
    const float lo = kfloat((uint32_t)b << 21); /* smallest value of bin b */
    int n = 0, i = 0;
    while (i < vocab) {
        if (i + 8 <= vocab) {
            const v8i ge = LD8(l + i) >= lo;
            if (!ANY8(ge)) {
                i += 8;
                continue;
            }
        }
        for (const int e = NI_MIN(vocab, i + 8); i < e; i++)
            if (l[i] >= lo) c[n].v = l[i], c[n].id = i, n++;
    }
    const float thr = kth_largest(c, n, k - 1);
    int a = 0;
    for (int j = 0; j < n; j++) {
        if (!(c[j].v >= thr)) continue;
        const float w = exp_neg((c[j].v - m) * inv_t);
        if (w > 0.0f) c[a].v = w, c[a].id = c[j].id, a++;
    }
    return a;
}

/* Histogram bin of a weight in (0, 1]: binary exponent and the two top
 * mantissa bits (bins are 2^(1/4) wide), 0..508. */
#define WBINS 512
static inline int wbin(float w) {
    uint32_t b;
    memcpy(&b, &w, sizeof b);
    return (int)(b >> 21);
}

/* hist[wbin(w)] += w over the dense weights with w >= cut, w > 0. Blocks of
 * 8 with nothing to count are skipped; four interleaved sub-histograms
 * break the store-to-load chains of runs in one bin. */
static void weight_hist(const float *w, int vocab, float cut, double *hist) {
    double sub[4][WBINS];
    memset(sub, 0, sizeof sub);
    int i = 0;
    while (i < vocab) {
        if (i + 8 <= vocab) {
            const v8f y = LD8(w + i);
            const v8i take = (y >= cut) & (y > 0.0f);
            if (!ANY8(take)) {
                i += 8;
                continue;
            }
        }
        for (const int e = NI_MIN(vocab, i + 8); i < e; i++) {
            const float y = w[i];
            const int take = (y >= cut) & (y > 0.0f);
            sub[i & 3][wbin(y)] += take ? (double)y : 0.0;
        }
    }
    for (int b = 0; b < WBINS; b++) hist[b] = (sub[0][b] + sub[1][b]) + (sub[2][b] + sub[3][b]);
}

/* Gathers (w[i], i) for tokens in weight bins >= b: bins > b to the front
 * c[0..*na), bin b to the back c[vocab - *nm..vocab). Blocks of 8 below
 * bin b are skipped; stores are branch-free (a speculative store never
 * lands on a committed slot: committed <= i < vocab). */
static void gather_split(const float *w, int vocab, int b, cand *c, int *na_out, int *nm_out) {
    const uint32_t lob = (uint32_t)b << 21;
    float lo;
    memcpy(&lo, &lob, sizeof lo);
    int na = 0, nm = 0, i = 0;
    while (i < vocab) {
        if (i + 8 <= vocab) {
            const v8f y = LD8(w + i);
            const v8i take = (y >= lo) & (y > 0.0f);
            if (!ANY8(take)) {
                i += 8;
                continue;
            }
        }
        for (const int e = NI_MIN(vocab, i + 8); i < e; i++) {
            const float y = w[i];
            const int bin = wbin(y), pos = y > 0.0f;
            c[na].v = y;
            c[na].id = i;
            c[vocab - 1 - nm].v = y;
            c[vocab - 1 - nm].id = i;
            na += pos & (bin > b);
            nm += pos & (bin == b);
        }
    }
    *na_out = na;
    *nm_out = nm;
}

/* Strict rank order: larger weight first, lower id first among equal ones. */
static inline int before(const cand *x, const cand *y) {
    return x->v > y->v || (x->v == y->v && x->id < y->id);
}

/* 7. top_p by weighted quickselect, no sort: reorders a[0..n) so that a[0..K)
 * holds the K best-ranked candidates, where a candidate is kept iff the mass
 * ranked strictly above it is < target. Returns K (>= 1 when target > 0). */
static int nucleus(cand *a, int n, double target) {
    int lo = 0, hi = n;
    double above = 0.0; /* mass of a[0..lo), all kept */
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (before(&a[mid], &a[lo])) cswap(&a[mid], &a[lo]);
        if (before(&a[hi - 1], &a[lo])) cswap(&a[hi - 1], &a[lo]);
        if (before(&a[mid], &a[hi - 1])) cswap(&a[mid], &a[hi - 1]);
        const cand piv = a[hi - 1]; /* median of three */
        int st = lo;
        double ml = 0.0;
        for (int j = lo; j < hi - 1; j++)
            if (before(&a[j], &piv)) {
                ml += a[j].v;
                cswap(&a[st++], &a[j]);
            }
        cswap(&a[st], &a[hi - 1]);
        if (above + ml >= target) {
            hi = st; /* the pivot and everything after it are out */
        } else {
            above += ml + a[st].v; /* a[lo..st] are all in */
            lo = st + 1;
        }
    }
    return lo;
}

/* Moves the candidates with pred(bin) true to the front of c[0..n),
 * branch-free (Lomuto: [0, k) true, [k, j) false). Returns k. */
static int partition_bins(cand *c, int n, int b, int above) {
    int k = 0;
    for (int j = 0; j < n; j++) {
        const cand x = c[j];
        c[j] = c[k];
        c[k] = x;
        const int bin = wbin(x.v);
        k += above ? bin > b : bin == b;
    }
    return k;
}

/* 7. top_p over c[0..n) (all weights > 0): as nucleus(), but for long lists
 * a histogram of the weights first finds the
 * bin where the running mass from the top reaches target. Tokens in higher
 * bins have less than target above them: all kept. Tokens in lower bins
 * have at least target above them: all out. Only the boundary bin goes
 * through nucleus(). */
static int top_p_select(cand *c, int n, double target) {
    if (n <= 512) return nucleus(c, n, target);
    double hist[WBINS];
    memset(hist, 0, sizeof hist);
    for (int j = 0; j < n; j++) hist[wbin(c[j].v)] += c[j].v;
    int b = WBINS - 1;
    double above = 0.0;
    while (b > 0 && above + hist[b] < target) above += hist[b--];
    const int na = partition_bins(c, n, b, 1);
    const int nm = partition_bins(c + na, n - na, b, 0);
    return na + nucleus(c + na, nm, target - above);
}

/* ---- steps 5-8 ---------------------------------------------------------- */

typedef struct support {
    int dense; /* weights in w[0..vocab) with block sums bs, else c[0..n) */
    const float *w;
    const double *bs;
    const cand *c;
    int n;
    double total; /* sum of the surviving weights */
    float max;    /* max logit */
} support;

/* The support for T >= SMP_GREEDY_EPS, weights unnormalised (the top-logit
 * token has weight 1). Returns 0 or NI_ERANGE (NaN, +inf, no finite logit). */
static int build_support(const smp_params *p, const float *l, int vocab, const work *wk,
                         support *sp) {
    float m;
    int nfin;
    int rc = scan_max(l, vocab, &m, &nfin);
    if (rc) return rc;
    sp->max = m;
    const float inv_t = 1.0f / p->temperature; /* 5. temperature */
    const int do_top_p = p->top_p < 1.0f;
    cand *c = wk->c;
    int n;
    if (p->top_k >= 1 && p->top_k < nfin) {
        n = topk_list(l, vocab, p->top_k, m, inv_t, c);
        if (do_top_p) {
            double z = 0.0;
            for (int j = 0; j < n; j++) z += c[j].v;
            n = top_p_select(c, n, (double)p->top_p * z);
        }
    } else {
        /* min_p is a pure filter on w / max; without top_p apply it here */
        const float min_w = do_top_p ? 0.0f : p->min_p;
        const double total = dense_weights(l, vocab, m, inv_t, min_w, wk->w, wk->bs);
        if (!do_top_p) {
            sp->dense = 1;
            sp->w = wk->w;
            sp->bs = wk->bs;
            sp->c = NULL;
            sp->n = vocab;
            sp->total = total;
            return 0;
        }
        /* A token below `cut` has at least total - vocab * cut >= target
         * ranked above it: outside the nucleus. Only the rest is gathered. */
        const double cutd = ((1.0 - (double)p->top_p) - 1e-9) * total / vocab;
        float cut = cutd > 0.0 ? (float)cutd : 0.0f;
        if ((double)cut > cutd) cut = nextafterf(cut, 0.0f);
        const double target = (double)p->top_p * total;
        double hist[WBINS];
        weight_hist(wk->w, vocab, cut, hist);
        int b = WBINS - 1;
        double above = 0.0;
        while (b > 0 && above + hist[b] < target) above += hist[b--];
        int na, nm;
        gather_split(wk->w, vocab, b, c, &na, &nm);
        const int k = nucleus(c + vocab - nm, nm, target - above);
        memmove(c + na, c + vocab - nm, (size_t)k * sizeof(cand));
        n = na + k;
    }
    /* 8. min_p (after top_k / top_p, as in vLLM v0) */
    if (p->min_p > 0.0f) {
        int a = 0;
        for (int j = 0; j < n; j++)
            if (c[j].v >= p->min_p) c[a++] = c[j];
        n = a;
    }
    NI_ASSERT(n >= 1);
    double total = 0.0;
    for (int j = 0; j < n; j++) total += c[j].v;
    sp->dense = 0;
    sp->w = NULL;
    sp->bs = NULL;
    sp->c = c;
    sp->n = n;
    sp->total = total;
    return 0;
}

/* 9. inverse CDF at u in [0, 1) */
static int32_t draw(const support *sp, int vocab, double u) {
    const double target = u * sp->total;
    if (sp->dense) return draw_dense(sp->w, vocab, sp->bs, target);
    double acc = 0.0;
    for (int j = 0; j < sp->n; j++) {
        acc += sp->c[j].v;
        if (acc > target) return sp->c[j].id;
    }
    return sp->c[sp->n - 1].id; /* rounding */
}

/* Inserts raw[i0..i1) into the running top-n list t[0..*have), best first,
 * lower id first on ties (strict > keeps the earlier index). */
static void topn_insert(const float *raw, int i0, int i1, int n, smp_logprob *t, int *have) {
    for (int i = i0; i < i1; i++) {
        const float x = raw[i];
        if (*have == n && !(x > t[n - 1].logprob)) continue;
        int j = *have < n ? (*have)++ : n - 1;
        while (j > 0 && x > t[j - 1].logprob) {
            t[j] = t[j - 1];
            j--;
        }
        t[j].token = i;
        t[j].logprob = x; /* raw logit until the end */
    }
}

/* Raw logprobs: log_softmax of raw[] (finite or -inf, at least one finite:
 * the processed logits passed the same checks and differ by finite terms).
 * m is max(raw), or NAN if unknown. One pass sums exp(raw - m) and keeps
 * the top n, skipping blocks of 8 that cannot enter it. */
static void fill_logprobs(const float *raw, int vocab, float m, int32_t tok, int nlp,
                          smp_result *out) {
    if (m != m) {
        int nfin;
        NI_ASSERT(scan_max(raw, vocab, &m, &nfin) == 0);
    }
    const int n = NI_MIN(nlp, vocab);
    smp_logprob *t = out->top;
    int have = 0, i = 0;
    v4d a0 = {0}, a1 = {0};
    for (; i + 8 <= vocab; i += 8) {
        const v8f x = LD8(raw + i);
        v8f y = x - m;
        exp_neg8(&y);
        float tmp[8];
        ST8(tmp, y);
        acc8(&a0, &a1, tmp);
        if (n > 0) {
            const v8i gt = x > t[n - 1].logprob;
            if (have < n || ANY8(gt)) topn_insert(raw, i, i + 8, n, t, &have);
        }
    }
    const v4d a = a0 + a1;
    double sum = (a[0] + a[1]) + (a[2] + a[3]);
    for (int j = i; j < vocab; j++) sum += exp_neg(raw[j] - m);
    if (n > 0) topn_insert(raw, i, vocab, n, t, &have);

    const double lse = (double)m + log(sum);
    out->logprob = (float)((double)raw[tok] - lse);
    for (int j = 0; j < have; j++) t[j].logprob = (float)((double)t[j].logprob - lse);
    out->n_top = have;
}

/* ---- public sampling ---------------------------------------------------- */

int smp_sample(smp_state *s, const smp_params *p, float *logits, int vocab, void *scratch,
               size_t scratch_bytes, smp_result *out) {
    if (!out) return NI_EINVAL;
    work wk;
    int rc = process(s, p, logits, vocab, scratch, scratch_bytes, p && p->logprobs >= 0, &wk);
    if (rc) return rc;

    int32_t tok;
    float m;
    if (!(p->temperature >= SMP_GREEDY_EPS)) {
        rc = argmax(logits, vocab, &tok, &m);
        if (rc) return rc;
        (void)smp_rng_next(s->rng); /* one draw per token, greedy included */
    } else {
        support sp;
        rc = build_support(p, logits, vocab, &wk, &sp);
        if (rc) return rc;
        m = sp.max;
        tok = draw(&sp, vocab, smp_next_uniform(s));
    }

    out->token = tok;
    out->logprob = 0.0f;
    out->n_top = 0;
    if (p->logprobs >= 0)
        fill_logprobs(wk.raw, vocab, wk.raw == logits ? m : NAN, tok, p->logprobs, out);
    return 0;
}

int smp_distribution(smp_state *s, const smp_params *p, float *logits, int vocab, void *scratch,
                     size_t scratch_bytes, float *probs) {
    if (!probs) return NI_EINVAL;
    work wk;
    int rc = process(s, p, logits, vocab, scratch, scratch_bytes, 0, &wk);
    if (rc) return rc;
    if (!(p->temperature >= SMP_GREEDY_EPS)) {
        int32_t tok;
        float m;
        rc = argmax(logits, vocab, &tok, &m);
        if (rc) return rc;
        memset(probs, 0, (size_t)vocab * sizeof(float));
        probs[tok] = 1.0f;
        return 0;
    }
    support sp;
    rc = build_support(p, logits, vocab, &wk, &sp);
    if (rc) return rc;
    if (sp.dense) {
        for (int i = 0; i < vocab; i++) probs[i] = (float)(sp.w[i] / sp.total);
        return 0;
    }
    memset(probs, 0, (size_t)vocab * sizeof(float));
    for (int j = 0; j < sp.n; j++) probs[sp.c[j].id] = (float)(sp.c[j].v / sp.total);
    return 0;
}
