/*
 * cu_sample.cu - the fused GPU sampler: one launch samples every row of a
 * batch from logits that never leave the device, with per-row parameters
 * and the semantics of engine/backend/sampler.c (its CPU twin; see sampler.h for the
 * pipeline and the vLLM references).
 *
 * 0. Grammar masks (eng_sample_row.allow), a launch of their own before the
 *    sampler: k_mask sets every disallowed logit of a masked row to -inf in
 *    place (cu_sample_pack_masks packs one slot per masked sequence: the
 *    logits row, then its (vocab + 31) / 32 mask words), exactly what
 *    gr_apply_mask does before smp_sample on the host, so every step below
 *    (raw logprobs included) sees the masked row. Siblings (rows naming one
 *    sequence) share its mask; a row whose allowed tokens are all -inf gets
 *    token -1 from step 3, as the CPU's no-finite-logit case.
 *
 * k_sample: one block of SMP_THREADS threads per row. Per row, in order:
 *   1. raw logprobs (p.logprobs >= 0): max, log-sum-exp (float exp, double
 *      sums) and the top-N raw logits (N <= 20; a radix select finds the
 *      N-th largest, ties broken by lower id through an id-order scan);
 *   2. logit_bias (one thread, in list order: duplicates add up exactly as on
 *      the CPU), then repetition / frequency / presence penalties (one thread
 *      per penalty-table entry) -- applied to a scratch copy of the row, or
 *      in place when the host says the row has a single consumer and no
 *      logprobs;
 *   3. checks (NaN / +inf / no finite logit -> token -1, NI_ERANGE), max;
 *   4. greedy (temperature < SMP_GREEDY_EPS): argmax, lowest id on ties;
 *      otherwise weights w = exp((l - max) / T) with the CPU's Cephes
 *      polynomial and IEEE single ops in the CPU's order (__fmul_rn etc., no
 *      contraction), so every weight is bit-identical to the CPU's;
 *      top_k: radix select (4 passes of 8-bit digits over order-preserving
 *      keys, warp-aggregated shared histograms) of the k-th largest logit;
 *      keep logit >= it; top_p: the nucleus without sorting: a radix descent
 *      over the weight bits with mass histograms finds the smallest weight
 *      v* whose "mass ranked strictly above" is < p * total; ties at v* are
 *      kept in id order while the mass above stays < target; min_p: w >=
 *      min_p (the top weight is exactly 1);
 *   5. draw: target = floor(u * total); the first survivor in id order whose
 *      running mass exceeds it (block scan of per-warp chunk sums, then one
 *      warp scans its chunk).
 * Masses are fixed point (weight * 2^44 rounded, uint64), so every sum is
 * exact and order-independent: results do not depend on thread timing.
 * Differences from the CPU (documented in docs/cuda.md): sums are fixed
 * point instead of double (a token within ~1e-13 of a top_p boundary may
 * fall on the other side; weights below 2^-45 count as 0 mass and are never
 * drawn); survivors are drawn in id order (the CPU's dense path is id order
 * too, so for the same u the same token; its top_k / top_p lists are in
 * partition order, so the token for a given u differs there while the
 * distribution is the same). The uniform u comes from the caller (the
 * request's RNG), so seeded requests are reproducible and independent of
 * batching.
 *
 * k_sample is the five steps above in order, each a __device__ helper
 * numbered after its step (smp_row_lse .. smp_draw, smp_write_probs); the
 * filters of steps 4-5 travel in a struct smp_filt.
 */
#include <limits.h>
#include <math.h>
#include <string.h>

#include "cu_internal.h"

#define SMP_THREADS 1024
#define SMP_WARPS (SMP_THREADS / 32)
#define FULL_MASK 0xffffffffu
#define Q_ONE 17592186044416.0 /* 2^44: fixed-point scale of weights in (0, 1] */

typedef unsigned long long u64;

/* exp(x) for x <= 0, bit-identical to sampler.c's exp_neg (constants NI_EXP_*
 * of engine/backend/twins.h, same ops, each
 * rounded, never fused). */
__device__ __forceinline__ float smp_exp_neg(float x) {
    if (!(x >= NI_EXP_LO)) return 0.0f;
    const float t = __fadd_rn(__fmul_rn(x, NI_EXP_LOG2E), NI_EXP_MAGIC);
    const float n = __fsub_rn(t, NI_EXP_MAGIC);
    float r = __fsub_rn(x, __fmul_rn(n, NI_EXP_C1));
    r = __fsub_rn(r, __fmul_rn(n, NI_EXP_C2));
    float q = NI_EXP_P0;
    q = __fadd_rn(__fmul_rn(q, r), NI_EXP_P1);
    q = __fadd_rn(__fmul_rn(q, r), NI_EXP_P2);
    q = __fadd_rn(__fmul_rn(q, r), NI_EXP_P3);
    q = __fadd_rn(__fmul_rn(q, r), NI_EXP_P4);
    q = __fadd_rn(__fmul_rn(q, r), NI_EXP_P5);
    q = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(q, r), r), r), 1.0f);
    const uint32_t sb = (__float_as_uint(t) - 0x4b400000u + 127u) << 23;
    return __fmul_rn(q, __uint_as_float(sb));
}

/* Order-preserving map of non-NaN floats to uint32 (sampler.c's fkey). */
__device__ __forceinline__ uint32_t smp_fkey(float x) {
    const uint32_t b = __float_as_uint(x);
    return b ^ ((uint32_t)((int32_t)b >> 31) | 0x80000000u);
}

__device__ __forceinline__ u64 smp_fixed(float w) { return __double2ull_rn((double)w * Q_ONE); }

struct smp_sh {
    u64 hist[256];
    u64 wu[SMP_WARPS];
    double wd[SMP_WARPS];
    float wf[SMP_WARPS];
    int wi[SMP_WARPS];
    u64 bu;
    double bd;
    float bf;
    int bi, bi2;
    uint32_t key;
    int n_gather;
    int32_t g_tok[SMP_MAX_LOGPROBS];
    float g_val[SMP_MAX_LOGPROBS];
};

__device__ __forceinline__ u64 warp_sum_u64(u64 v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ int warp_sum_i(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

/* Block reductions: every thread calls; every thread gets the result; the
 * shared scratch is free again on return. */
__device__ float blk_max(float v, smp_sh &sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = cu_warp_max(v);
    if (lane == 0) sh.wf[w] = v;
    __syncthreads();
    if (w == 0) {
        v = cu_warp_max(sh.wf[lane]);
        if (lane == 0) sh.bf = v;
    }
    __syncthreads();
    v = sh.bf;
    __syncthreads();
    return v;
}

__device__ u64 blk_sum_u64(u64 v, smp_sh &sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_sum_u64(v);
    if (lane == 0) sh.wu[w] = v;
    __syncthreads();
    if (w == 0) {
        v = warp_sum_u64(sh.wu[lane]);
        if (lane == 0) sh.bu = v;
    }
    __syncthreads();
    v = sh.bu;
    __syncthreads();
    return v;
}

__device__ double blk_sum_d(double v, smp_sh &sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_sum_d(v);
    if (lane == 0) sh.wd[w] = v;
    __syncthreads();
    if (w == 0) {
        v = warp_sum_d(sh.wd[lane]);
        if (lane == 0) sh.bd = v;
    }
    __syncthreads();
    v = sh.bd;
    __syncthreads();
    return v;
}

/* Sums a and b over the block (two counters in one round). */
__device__ void blk_sum_2i(int &a, int &b, smp_sh &sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    a = warp_sum_i(a);
    b = warp_sum_i(b);
    if (lane == 0) {
        sh.wi[w] = a;
        sh.wu[w] = (u64)b;
    }
    __syncthreads();
    if (w == 0) {
        const int x = warp_sum_i(sh.wi[lane]);
        const int y = warp_sum_i((int)sh.wu[lane]);
        if (lane == 0) {
            sh.bi = x;
            sh.bi2 = y;
        }
    }
    __syncthreads();
    a = sh.bi;
    b = sh.bi2;
    __syncthreads();
}

/* (max value, lowest index among equal values) over the block. */
__device__ void blk_argmax(float &v, int &i, smp_sh &sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(FULL_MASK, v, o);
        const int i2 = __shfl_xor_sync(FULL_MASK, i, o);
        if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
    }
    if (lane == 0) {
        sh.wf[w] = v;
        sh.wi[w] = i;
    }
    __syncthreads();
    if (w == 0) {
        v = sh.wf[lane];
        i = sh.wi[lane];
        for (int o = 16; o > 0; o >>= 1) {
            const float v2 = __shfl_xor_sync(FULL_MASK, v, o);
            const int i2 = __shfl_xor_sync(FULL_MASK, i, o);
            if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
        }
        if (lane == 0) {
            sh.bf = v;
            sh.bi = i;
        }
    }
    __syncthreads();
    v = sh.bf;
    i = sh.bi;
    __syncthreads();
}

/* h[bin] += v for the active lanes of a warp (every lane calls): one atomic
 * per distinct bin in the warp. */
__device__ __forceinline__ void warp_hist_add(u64 *h, uint32_t bin, u64 v, bool act) {
    const int lane = threadIdx.x & 31;
    unsigned pend = __ballot_sync(FULL_MASK, act);
    while (pend) {
        const int leader = __ffs(pend) - 1;
        const uint32_t b = __shfl_sync(FULL_MASK, bin, leader);
        const bool mine = act && bin == b;
        const u64 s = warp_sum_u64(mine ? v : 0ull);
        if (lane == leader) atomicAdd(&h[b], s);
        pend &= ~__ballot_sync(FULL_MASK, mine);
        act = act && !mine;
    }
}

/* The k-th largest key (1-based) among the i < V with kf(i, key) true;
 * *n_gt = how many of them have a larger key. Radix select, 8 bits a pass. */
template <class KF>
__device__ uint32_t blk_kth_key(KF kf, int V, unsigned k, unsigned *n_gt, smp_sh &sh) {
    uint32_t prefix = 0, mask = 0;
    u64 kk = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int j = threadIdx.x; j < 256; j += SMP_THREADS) sh.hist[j] = 0;
        __syncthreads();
        for (int base = 0; base < V; base += SMP_THREADS) {
            const int i = base + threadIdx.x;
            uint32_t key = 0;
            const bool inc = i < V && kf(i, key) && (key & mask) == prefix;
            warp_hist_add(sh.hist, (key >> shift) & 255u, 1ull, inc);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u64 run = 0;
            int d = 255;
            while (d > 0 && run + sh.hist[d] < kk) run += sh.hist[d--];
            sh.key = prefix | ((uint32_t)d << shift);
            sh.bu = kk - run;
        }
        __syncthreads();
        prefix = sh.key;
        kk = sh.bu;
        mask |= 255u << shift;
        __syncthreads();
    }
    *n_gt = (unsigned)(k - kk);
    return prefix;
}

/* top_p: among the i with wf(i, key, q) true and q > 0 (key = bits of the
 * weight, q its fixed-point mass), the smallest key v whose mass strictly
 * above (sum of q over larger keys) is < target; *above gets that mass. */
template <class WF>
__device__ uint32_t blk_top_p_key(WF wf, int V, double target, u64 *above_out, smp_sh &sh) {
    uint32_t prefix = 0, mask = 0;
    u64 above = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int j = threadIdx.x; j < 256; j += SMP_THREADS) sh.hist[j] = 0;
        __syncthreads();
        for (int base = 0; base < V; base += SMP_THREADS) {
            const int i = base + threadIdx.x;
            uint32_t key = 0;
            u64 q = 0;
            const bool inc = i < V && wf(i, key, q) && q > 0 && (key & mask) == prefix;
            warp_hist_add(sh.hist, (key >> shift) & 255u, q, inc);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u64 run = above, ab = above;
            int chosen = -1;
            for (int d = 255; d >= 0; d--) {
                if (sh.hist[d] == 0) continue;
                if (!((double)run < target)) break;
                chosen = d;
                ab = run;
                run += sh.hist[d];
            }
            if (chosen < 0) chosen = 0; /* unreachable: the top token has mass above 0 */
            sh.key = prefix | ((uint32_t)chosen << shift);
            sh.bu = ab;
        }
        __syncthreads();
        prefix = sh.key;
        above = sh.bu;
        mask |= 255u << shift;
        __syncthreads();
    }
    *above_out = above;
    return prefix;
}

/* The first index i (id order) at which sum_{j <= i} val(j) exceeds target,
 * or -1 if the total does not. Warp w owns the contiguous chunk
 * [w * chunk, (w + 1) * chunk); the warp holding the crossing scans it. */
template <class VF>
__device__ int blk_find_prefix(VF val, int V, u64 target, smp_sh &sh) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int chunk = ((V + SMP_THREADS - 1) / SMP_THREADS) * 32;
    const int beg = w * chunk, end = min(V, beg + chunk);
    u64 s = 0;
    for (int b = beg; b < end; b += 32) {
        const int i = b + lane;
        if (i < end) s += val(i);
    }
    s = warp_sum_u64(s);
    if (lane == 0) sh.wu[w] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        u64 run = 0;
        int W = -1;
        for (int k = 0; k < SMP_WARPS; k++) {
            if (run + sh.wu[k] > target) {
                W = k;
                break;
            }
            run += sh.wu[k];
        }
        sh.bi = W;
        sh.bu = run;
        sh.bi2 = -1;
    }
    __syncthreads();
    if (w == sh.bi) {
        u64 run = sh.bu;
        for (int b = beg; b < end; b += 32) {
            const int i = b + lane;
            u64 inc = i < end ? val(i) : 0ull;
            for (int o = 1; o < 32; o <<= 1) {
                const u64 t = __shfl_up_sync(FULL_MASK, inc, o);
                if (lane >= o) inc += t;
            }
            const unsigned hit = __ballot_sync(FULL_MASK, run + inc > target);
            if (hit) {
                if (lane == __ffs(hit) - 1) sh.bi2 = i;
                break;
            }
            run += __shfl_sync(FULL_MASK, inc, 31);
        }
    }
    __syncthreads();
    const int r = sh.bi2;
    __syncthreads();
    return r;
}

/* ---- the steps of k_sample (every thread of the block calls each helper) -------------- */

/* 1a. log-sum-exp of raw[0..V) (max, then float exp, double sums). */
__device__ __forceinline__ double smp_row_lse(const float *raw, int V, smp_sh &sh) {
    const int tid = threadIdx.x;
    float m = -INFINITY;
    for (int i = tid; i < V; i += SMP_THREADS) m = fmaxf(m, raw[i]);
    m = blk_max(m, sh);
    double s = 0.0;
    for (int i = tid; i < V; i += SMP_THREADS) s += (double)smp_exp_neg(__fsub_rn(raw[i], m));
    s = blk_sum_d(s, sh);
    return (double)m + log(s);
}

/* 1b. Gathers the n_top (>= 1) largest raw logits, ties by lower id, into sh.g_tok / g_val. */
__device__ __forceinline__ void smp_gather_top(const float *raw, int V, int n_top, smp_sh &sh) {
    const int tid = threadIdx.x;
    unsigned n_gt = 0;
    const uint32_t thr = blk_kth_key(
        [&](int i, uint32_t &key) {
            key = smp_fkey(raw[i]);
            return true;
        },
        V, (unsigned)n_top, &n_gt, sh);
    /* ties at thr: the first (n_top - n_gt) in id order */
    const int cut =
        blk_find_prefix([&](int i) -> u64 { return smp_fkey(raw[i]) == thr ? 1ull : 0ull; }, V,
                        (u64)(n_top - (int)n_gt - 1), sh);
    if (tid == 0) sh.n_gather = 0;
    __syncthreads();
    for (int i = tid; i < V; i += SMP_THREADS) {
        const uint32_t k = smp_fkey(raw[i]);
        if (k > thr || (k == thr && i <= cut)) {
            const int slot = atomicAdd(&sh.n_gather, 1);
            if (slot < SMP_MAX_LOGPROBS) {
                sh.g_tok[slot] = i;
                sh.g_val[slot] = raw[i];
            }
        }
    }
    __syncthreads();
}

/* 1c. Thread 0: the gathered entries, value desc / id asc, into o->top_*; returns how many. */
__device__ __forceinline__ int smp_write_top(int n_top, double lse, cu_smp_out *o, smp_sh &sh) {
    const int n = min(sh.n_gather, n_top);
    for (int j = 1; j < n; j++) { /* insertion sort: value desc, id asc */
        const float v = sh.g_val[j];
        const int32_t t = sh.g_tok[j];
        int k = j;
        while (k > 0 && (sh.g_val[k - 1] < v || (sh.g_val[k - 1] == v && sh.g_tok[k - 1] > t))) {
            sh.g_val[k] = sh.g_val[k - 1];
            sh.g_tok[k] = sh.g_tok[k - 1];
            k--;
        }
        sh.g_val[k] = v;
        sh.g_tok[k] = t;
    }
    for (int j = 0; j < n; j++) {
        o->top_tok[j] = sh.g_tok[j];
        o->top_lp[j] = (float)((double)sh.g_val[j] - lse);
    }
    return n;
}

/* 2. logit_bias (thread 0, in list order), then penalties (a thread per entry) into L, which
 * is raw itself (CU_SMP_WORK_INPLACE) or a scratch row first filled from raw. */
__device__ __forceinline__ void smp_bias_penalties(const cu_smp_row &R, const cu_smp_ent *ents,
                                                   const float *raw, float *L, int V) {
    const int tid = threadIdx.x;
    if (R.work >= 0) {
        for (int i = tid; i < V; i += SMP_THREADS) L[i] = raw[i];
        __syncthreads();
    }
    if (tid == 0)
        for (int j = 0; j < R.n_bias; j++) {
            const cu_smp_ent e = ents[R.bias_off + j];
            L[e.token] = __fadd_rn(L[e.token], __uint_as_float(e.bits));
        }
    __syncthreads();
    const bool rep = R.rep != 1.0f, fp = R.pres != 0.0f || R.freq != 0.0f;
    for (int j = tid; j < R.n_toks; j += SMP_THREADS) {
        const cu_smp_ent e = ents[R.toks_off + j];
        float l = L[e.token];
        const uint32_t cnt = e.bits & 0x7fffffffu;
        if (rep) l = l > 0.0f ? __fdiv_rn(l, R.rep) : __fmul_rn(l, R.rep);
        if (fp && cnt > 0) {
            l = __fsub_rn(l, __fmul_rn(R.freq, (float)cnt));
            l = __fsub_rn(l, R.pres);
        }
        L[e.token] = l;
    }
    __syncthreads();
}

/* 3. false on NaN / +inf / no finite L[i]; else m = max, am = its first id, nfin = #(L > -inf). */
__device__ __forceinline__ bool smp_check_max(const float *L, int V, float &m, int &am, int &nfin,
                                              smp_sh &sh) {
    int bad = 0;
    nfin = 0;
    m = -INFINITY;
    am = INT_MAX;
    for (int i = threadIdx.x; i < V; i += SMP_THREADS) {
        const float x = L[i];
        bad |= (x != x) | (x == INFINITY);
        nfin += x > -INFINITY;
        if (x > m) m = x, am = i; /* first index of this thread's max (i increases) */
    }
    blk_sum_2i(bad, nfin, sh);
    if (bad || nfin == 0) return false;
    blk_argmax(m, am, sh);
    return true;
}

/* The filters of a non-greedy row (steps 4-5), filled in step order by k_sample. */
struct smp_filt {
    const float *L; /* processed logits */
    float m, inv_t; /* max of L, 1 / temperature */
    bool do_k;      /* top_k: keep logit keys >= kthr (and weight > 0) */
    uint32_t kthr;
    bool do_p; /* top_p: keep weight keys > vstar, and == vstar at ids <= tcut */
    uint32_t vstar;
    int tcut;
    float min_p; /* min_p > 0: keep weights >= min_p */

    /* exp((L[i] - m) * inv_t), op for op as the CPU. */
    __device__ __forceinline__ float weight(int i) const {
        return smp_exp_neg(__fmul_rn(__fsub_rn(L[i], m), inv_t));
    }
    /* w = weight(i); true when i is a candidate (survives top_k; every i without it). */
    __device__ __forceinline__ bool cand(int i, float &w) const {
        w = weight(i);
        return do_k ? (smp_fkey(L[i]) >= kthr && w > 0.0f) : true;
    }
    /* w = weight(i); true when i survives top_k, top_p and min_p. */
    __device__ __forceinline__ bool surv(int i, float &w) const {
        if (!cand(i, w)) return false;
        if (do_p) {
            const uint32_t k = __float_as_uint(w);
            if (!(k > vstar || (k == vstar && i <= tcut))) return false;
        }
        return !(min_p > 0.0f) || w >= min_p;
    }
};

/* 4a. top_k: the key of the top_k-th largest finite logit of L (1 <= top_k < finite count). */
__device__ __forceinline__ uint32_t smp_top_k_key(const float *L, int V, int top_k, smp_sh &sh) {
    unsigned n_gt = 0;
    return blk_kth_key(
        [&](int i, uint32_t &key) {
            key = smp_fkey(L[i]);
            return L[i] > -INFINITY;
        },
        V, (unsigned)top_k, &n_gt, sh);
}

/* 4b. top_p over f's candidates: f.vstar = weight key of the cut, f.tcut = last tie kept at it. */
__device__ __forceinline__ void smp_top_p_cut(smp_filt &f, int V, float top_p, smp_sh &sh) {
    const int tid = threadIdx.x;
    u64 z = 0;
    for (int i = tid; i < V; i += SMP_THREADS) {
        float w;
        if (f.cand(i, w)) z += smp_fixed(w);
    }
    z = blk_sum_u64(z, sh);
    const double target = (double)top_p * (double)z;
    u64 above = 0;
    f.vstar = blk_top_p_key(
        [&](int i, uint32_t &key, u64 &q) {
            float w;
            const bool c = f.cand(i, w);
            key = __float_as_uint(w);
            q = smp_fixed(w);
            return c;
        },
        V, target, &above, sh);
    int n_eq = 0, dummy = 0;
    for (int i = tid; i < V; i += SMP_THREADS) {
        float w;
        n_eq += f.cand(i, w) && __float_as_uint(w) == f.vstar;
    }
    blk_sum_2i(n_eq, dummy, sh);
    const double qv = (double)smp_fixed(__uint_as_float(f.vstar));
    const double xk = qv > 0.0 ? (target - (double)above) / qv : (double)n_eq;
    const int keep = xk >= (double)n_eq ? n_eq : max(1, (int)ceil(xk));
    if (keep < n_eq)
        f.tcut = blk_find_prefix(
            [&](int i) -> u64 {
                float w;
                return f.cand(i, w) && __float_as_uint(w) == f.vstar ? 1ull : 0ull;
            },
            V, (u64)(keep - 1), sh);
}

/* 5. The first survivor in id order whose running mass exceeds floor(u * total), -1 if none. */
__device__ __forceinline__ int smp_draw(const smp_filt &f, int V, double u, smp_sh &sh) {
    u64 tot = 0;
    for (int i = threadIdx.x; i < V; i += SMP_THREADS) {
        float w;
        if (f.surv(i, w)) tot += smp_fixed(w);
    }
    tot = blk_sum_u64(tot, sh);
    u64 target = (u64)(u * (double)tot);
    if (target >= tot) target = tot - 1; /* tot >= 2^44: the top token survives */
    return blk_find_prefix(
        [&](int i) -> u64 {
            float w;
            return f.surv(i, w) ? smp_fixed(w) : 0ull;
        },
        V, target, sh);
}

/* probs[i] = the survivors' weights over their double sum, 0 elsewhere (the drawn distribution). */
__device__ __forceinline__ void smp_write_probs(const smp_filt &f, int V, float *probs,
                                                smp_sh &sh) {
    const int tid = threadIdx.x;
    double zs = 0.0;
    for (int i = tid; i < V; i += SMP_THREADS) {
        float w;
        if (f.surv(i, w)) zs += (double)w;
    }
    zs = blk_sum_d(zs, sh);
    for (int i = tid; i < V; i += SMP_THREADS) {
        float w;
        probs[i] = f.surv(i, w) ? (float)((double)w / zs) : 0.0f;
    }
}

/* One block per row: the steps above, in order (see the comment at the top). */
__global__ void __launch_bounds__(SMP_THREADS) k_sample(cu_sample_args a) {
    __shared__ smp_sh sh;
    const int V = a.vocab, tid = threadIdx.x;
    const cu_smp_row R = a.rows[blockIdx.x];
    float *raw = a.logits + (size_t)R.src * V;
    float *L = R.work >= 0 ? a.scratch + (size_t)R.work * V : raw;
    cu_smp_out *o = a.out + blockIdx.x;
    float *probs = a.probs ? a.probs + (size_t)blockIdx.x * V : NULL;

    /* 1. raw logprobs (before any change to the row) */
    double lse = 0.0;
    int n_top = 0;
    if (R.logprobs >= 0) {
        lse = smp_row_lse(raw, V, sh);
        n_top = min(R.logprobs, V);
        if (n_top > 0) {
            smp_gather_top(raw, V, n_top, sh);
            if (tid == 0) n_top = smp_write_top(n_top, lse, o, sh);
            __syncthreads();
        }
    }

    /* 2. logit_bias, then penalties */
    if (R.work != CU_SMP_WORK_SRC) smp_bias_penalties(R, a.ents, raw, L, V);

    /* 3. checks and max of the processed logits */
    float m;
    int am, nfin;
    if (!smp_check_max(L, V, m, am, nfin, sh)) {
        if (tid == 0) {
            o->token = -1;
            o->err = NI_ERANGE;
            o->logprob = 0.0f;
            o->n_top = 0;
        }
        return;
    }

    int tok;
    const bool greedy = !(R.temperature >= SMP_GREEDY_EPS);
    if (greedy) {
        tok = am;
        if (probs)
            for (int i = tid; i < V; i += SMP_THREADS) probs[i] = i == tok ? 1.0f : 0.0f;
    } else {
        smp_filt f;
        f.L = L;
        f.m = m;
        f.inv_t = __fdiv_rn(1.0f, R.temperature);
        /* candidates: top_k survivors (logit >= k-th largest, weight > 0), else all */
        f.do_k = R.top_k >= 1 && R.top_k < nfin;
        f.kthr = 0;
        if (f.do_k) f.kthr = smp_top_k_key(L, V, R.top_k, sh);
        /* top_p cut: key vstar (weight bits) and, among ties at vstar, the last kept index tcut */
        f.do_p = R.top_p < 1.0f;
        f.vstar = 0;
        f.tcut = V;
        if (f.do_p) smp_top_p_cut(f, V, R.top_p, sh);
        f.min_p = R.min_p;
        tok = smp_draw(f, V, R.u, sh);
        if (tok < 0) tok = am; /* unreachable */
        if (probs) smp_write_probs(f, V, probs, sh);
    }

    if (tid == 0) {
        o->token = tok;
        o->err = 0;
        o->n_top = R.logprobs >= 0 ? n_top : 0;
        o->logprob = R.logprobs >= 0 ? (float)((double)raw[tok] - lse) : 0.0f;
    }
}

/* Step 0, the grammar masks (its own launch, before k_sample): blockIdx.y walks the slots,
 * one thread per token; the 32 threads of a warp read one mask word (a broadcast) and write
 * -inf over the disallowed tokens of their 32. */
__global__ void __launch_bounds__(256) k_mask(float *logits, int V, const uint32_t *slots,
                                             int n_slots) {
    const size_t stride = CU_SMP_MASK_STRIDE(V);
    for (int j = blockIdx.y; j < n_slots; j += gridDim.y) {
        const uint32_t *sl = slots + (size_t)j * stride;
        float *row = logits + (size_t)sl[0] * V;
        for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < V; t += gridDim.x * blockDim.x)
            if (!((sl[1 + (t >> 5)] >> (t & 31)) & 1u)) row[t] = -INFINITY;
    }
}

int cu_launch_mask(cudaStream_t st, float *logits, int vocab, const uint32_t *slots,
                   int n_slots) {
    if (n_slots <= 0) return 0;
    if (vocab <= 0 || !logits || !slots) return NI_EINVAL;
    const int bx = (vocab + 255) / 256;
    const dim3 grid(bx < 1024 ? bx : 1024, n_slots < 65535 ? n_slots : 65535);
    k_mask<<<grid, 256, 0, st>>>(logits, vocab, slots, n_slots);
    CU_LAUNCH_CHECK(st);
    return 0;
}

int cu_launch_sample(cudaStream_t st, const cu_sample_args *a) {
    if (a->n_rows <= 0) return 0;
    if (a->vocab <= 0 || !a->logits || !a->rows || !a->out) return NI_EINVAL;
    k_sample<<<a->n_rows, SMP_THREADS, 0, st>>>(*a);
    CU_LAUNCH_CHECK(st);
    return 0;
}

/* ---- host side ------------------------------------------------------------------------ */

int cu_sample_pack(const eng_sample_row *rows, int n_rows, int vocab, const int32_t *row_of_seq,
                   int n_seqs, int *consumers, cu_smp_row *rh, int cap_rows, cu_smp_ent *eh,
                   size_t ent_cap, int n_scratch, int *n_packed, size_t *n_ents) {
    *n_packed = 0;
    *n_ents = 0;
    for (int s = 0; s < n_seqs; s++) consumers[s] = 0;
    for (int r = 0; r < n_rows; r++) {
        const int s = rows[r].seq;
        if (s < 0 || s >= n_seqs || row_of_seq[s] < 0 || !rows[r].p) return NI_EINVAL;
        consumers[s]++;
    }
    size_t ne = 0;
    int k = 0, ns = 0;
    for (; k < n_rows && k < cap_rows; k++) {
        const eng_sample_row *r = &rows[k];
        const smp_params *p = r->p;
        const int pen = p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
                        p->frequency_penalty != 0.0f;
        const int nb = p->n_logit_bias, nt = pen ? r->n_toks : 0;
        if (nb < 0 || nt < 0 || (nb > 0 && !p->logit_bias) || (nt > 0 && !r->toks))
            return NI_EINVAL;
        const size_t need = (size_t)nb + (size_t)nt;
        if (need > ent_cap) return NI_ERANGE;
        if (ne + need > ent_cap) break;
        int work = CU_SMP_WORK_SRC;
        if (need > 0) {
            if (consumers[r->seq] == 1 && p->logprobs < 0) {
                work = CU_SMP_WORK_INPLACE;
            } else {
                if (ns == n_scratch) break;
                work = ns++;
            }
        }
        cu_smp_row *o = &rh[k];
        o->src = row_of_seq[r->seq];
        o->work = work;
        o->temperature = p->temperature;
        o->top_p = p->top_p;
        o->min_p = p->min_p;
        o->rep = p->repetition_penalty;
        o->pres = p->presence_penalty;
        o->freq = p->frequency_penalty;
        o->top_k = p->top_k;
        o->logprobs = p->logprobs > SMP_MAX_LOGPROBS ? SMP_MAX_LOGPROBS : p->logprobs;
        o->n_bias = nb;
        o->n_toks = nt;
        double u = r->u;
        if (!(u >= 0.0)) u = 0.0;
        if (u >= 1.0) u = nextafter(1.0, 0.0);
        o->u = u;
        o->bias_off = (int64_t)ne;
        for (int j = 0; j < nb; j++) {
            const smp_logit_bias *b = &p->logit_bias[j];
            if (b->token < 0 || b->token >= vocab) return NI_EINVAL;
            uint32_t bits;
            memcpy(&bits, &b->bias, 4);
            eh[ne].token = b->token;
            eh[ne++].bits = bits;
        }
        o->toks_off = (int64_t)ne;
        for (int j = 0; j < nt; j++) {
            if (r->toks[j].token < 0 || r->toks[j].token >= vocab) return NI_EINVAL;
            eh[ne].token = r->toks[j].token;
            eh[ne++].bits = r->toks[j].val;
        }
    }
    *n_packed = k;
    *n_ents = ne;
    return 0;
}

int cu_sample_pack_masks(const eng_sample_row *rows, int n_rows, int vocab,
                         const int32_t *row_of_seq, int n_seqs, int *seen, uint32_t *mh, int cap,
                         int *n_slots) {
    *n_slots = 0;
    for (int s = 0; s < n_seqs; s++) seen[s] = 0;
    const size_t stride = CU_SMP_MASK_STRIDE(vocab), words = stride - 1;
    int n = 0;
    for (int r = 0; r < n_rows; r++) {
        const int s = rows[r].seq;
        if (s < 0 || s >= n_seqs || row_of_seq[s] < 0) return NI_EINVAL;
        if (!rows[r].allow || seen[s]) continue;
        if (n == cap) return NI_ERANGE;
        seen[s] = 1;
        uint32_t *sl = mh + (size_t)n++ * stride;
        sl[0] = (uint32_t)row_of_seq[s];
        memcpy(sl + 1, rows[r].allow, words * sizeof(uint32_t));
    }
    *n_slots = n;
    return 0;
}

void cu_sample_result(smp_result *out, const cu_smp_out *d) {
    memset(out, 0, sizeof *out);
    out->token = d->token;
    out->logprob = d->logprob;
    out->n_top = d->n_top < 0 ? 0 : d->n_top > SMP_MAX_LOGPROBS ? SMP_MAX_LOGPROBS : d->n_top;
    for (int j = 0; j < out->n_top; j++) {
        out->top[j].token = d->top_tok[j];
        out->top[j].logprob = d->top_lp[j];
    }
}
