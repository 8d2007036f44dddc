/*
 * cu_att_decode.cu - flash-decoding GQA attention for decode batches (every
 * work item has at most one query token: cu_att_args.max_nq == 1, the whole
 * decode-graph path), over the paged KV cache, FP32 math. cu_launch_attention
 * (cu_attention.cu) dispatches here when cu_att_decode_ok accepts the shape;
 * same contract and CPU twin (cpu_attention) as k_attention.
 *
 * Work decomposition: block (item, kv head x row group, split); the R query
 * rows of the block (R = 1, 2, 4 or 8 compile-time, G = n_heads / n_kv rows
 * per kv head cut into ceil(G / R) row groups, so G up to CU_ATT_ROWS works
 * and G <= 8 reads every K/V element once) share every K/V load. 4 warps per
 * block; the split's keys are walked in chunks of CK keys, warp w taking
 * chunks w, w + 4, ... (no block barrier inside the loop). Per chunk:
 *   - K: lane-per-key (P lanes per key when a row is longer than 128 bytes:
 *     P = 2 for BF16 hd 128, 2 / 4 for FP32 hd 64 / 128, so CK = 32 / P):
 *     each lane issues 8 16-byte loads of its key's row and dots it with the
 *     R q rows, held in shared memory as FP32 pre-scaled by log2(e)/sqrt(hd)
 *     (warp-uniform broadcast reads); P > 1 lanes add their partial dots with
 *     xor shuffles. No shuffles per element, no integer division per element.
 *   - V: the same keys, lanes split the row into 16-byte columns (hd 64
 *     BF16: 8 lanes per key, 4 keys per instruction), again 8 loads per
 *     lane, issued together with the K loads so a chunk costs one memory
 *     round trip; the cache slot of each V key comes from the K lane by a
 *     shuffle. The block-table entries of the next chunk are fetched while
 *     the current chunk computes.
 *   - online softmax in the log2 domain (exp2f): warp max per row, p per key
 *     to a per-warp shared row [CK][R], acc[R][VE] per lane rescaled once per
 *     chunk; l is kept per lane and summed at the end.
 * Then the warp's KPI key groups are summed with shuffles, the 4 warps are
 * merged (log-sum-exp) through shared memory, and the block writes
 * out = O / L (one split) or unnormalized O and (M, L) to its split-K slot
 * of the partial workspace (the k_attention layout: slot (item, split), kv
 * head, row = the query head's index in its group; M in log2 units).
 *
 * Split-K: keys are partitioned among splits in CU_ATT_TILE-key tiles,
 * per = max(ceil(tiles / n_splits), 4) tiles per split (k_attention's rule,
 * but at least one 32-key chunk per warp: fewer partials to merge, no idle
 * warps), so the split factor the decode graphs fix at capture
 * (cu_att_choose_splits on max_pos) leaves the extra splits of short contexts
 * empty: such a block exits at once and writes nothing, and k_att_dcombine,
 * which recomputes the number of non-empty splits ceil(tiles / per) from the
 * item's own length, never reads them. The combine computes each row's split
 * weights once (a warp per row, lanes over splits, in shared memory), then
 * sums each element over the splits with 8 loads in flight. Items with n_q == 0 (decode-graph padding) read and write
 * nothing in either kernel.
 *
 * Cache format C (k_att_decode<T, C, ...>, dvec<C>: element type, load type
 * and elements per load): T with 16-byte loads, or E4M3 (kv_fp8, BF16 dtype
 * only) in one of two layouts. The lane layout is generic in the elements
 * per load VE: cu_fp8 loads 16 bytes = 16 elements, so a row is half the
 * columns of a BF16 one (hd 128: NCH 8, P 1, CK 32) at the price of VE = 16
 * accumulators per row and lane (R = 8: 128 floats; ptxas spills a little at
 * hd 128, R >= 4); cu_fp8_l8 loads 8 bytes = 8 elements, exactly the BF16
 * layout and register footprint with half the bytes per load. Both convert
 * in registers (cvt.f16x2.e4m3x2, then f16 -> f32). By default head_dim
 * picks: 16-byte loads up to hd 64, 8-byte loads at hd 128, where the 16
 * accumulators per row spill (H200, test_cuda_perf: hd 64 at 4000 tokens
 * 64 seqs 118 vs 129 us, 256 seqs 547 vs 619; hd 128 64 seqs at 200 tokens
 * 27 vs 19 us, at 4000 221 vs 176; docs/perf.md). cu_att_decode_fp8_wide
 * forces one (the op tests check both, the perf test times both).
 *
 * Limits (cu_att_decode_ok; other shapes take k_attention): head_dim 16, 32,
 * 64 or 128 (a row is 1..32 16-byte columns and 32 lanes divide evenly; the
 * tiny test models have 16 and 32), 16-byte aligned caches (every row is
 * then 16-byte aligned). Static
 * shared memory <= 26 KB; __launch_bounds__(128, 3) keeps three blocks (12
 * warps, each with 16 16-byte loads in flight) per SM.
 */
#include <math.h>

#include "cu_internal.h"

#define DT 128
#define DW (DT / 32)
#define FULL 0xffffffffu
/* the combine: threads per block, split weights kept in shared memory */
#define CT 256
#define CMAX 8192
/* Fewest key tiles per split: one 32-key chunk per warp (fewer splits to merge
 * at short contexts, no warp left idle by a 1-tile split). */
#define MIN_TILES DW

/* Benchmarks only (cu_att_decode_enable): 0 sends decode batches to k_attention. */
static int g_enabled = 1;

void cu_att_decode_enable(int on) { g_enabled = on != 0; }

/* E4M3 cache read with 8-byte loads (dvec<cu_fp8_l8>): a format tag. */
struct cu_fp8_l8 {};

/* Benchmarks and tests (cu_att_decode_fp8_wide): 1 reads E4M3 caches with
 * 16-byte loads (cu_fp8), 0 with 8-byte loads (cu_fp8_l8), -1 (default) by
 * head_dim (fp8_wide_for). */
static int g_fp8_wide = -1;

void cu_att_decode_fp8_wide(int on) { g_fp8_wide = on < 0 ? -1 : on != 0; }

static bool fp8_wide_for(int head_dim) { return g_fp8_wide < 0 ? head_dim <= 64 : g_fp8_wide; }

/* One load of the cache (L, N elements of E) as FP32: 4 floats or 8 BF16 in
 * 16 bytes, 16 or 8 E4M3 in 16 or 8 bytes (element 0 in the low bits). */
template <typename T> struct dvec;
template <> struct dvec<float> {
    using E = float;
    using L = uint4;
    static constexpr int N = 4;
    static __device__ __forceinline__ void unpack(const uint4 &u, float *f) {
        f[0] = __uint_as_float(u.x);
        f[1] = __uint_as_float(u.y);
        f[2] = __uint_as_float(u.z);
        f[3] = __uint_as_float(u.w);
    }
};
template <> struct dvec<cu_bf16> {
    using E = cu_bf16;
    using L = uint4;
    static constexpr int N = 8;
    static __device__ __forceinline__ void unpack(const uint4 &u, float *f) {
        const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};

template <> struct dvec<cu_fp8> {
    using E = cu_fp8;
    using L = uint4;
    static constexpr int N = 16;
    static __device__ __forceinline__ void unpack(const uint4 &u, float *f) {
        cu_fp8x4_unpack(u.x, f);
        cu_fp8x4_unpack(u.y, f + 4);
        cu_fp8x4_unpack(u.z, f + 8);
        cu_fp8x4_unpack(u.w, f + 12);
    }
};
template <> struct dvec<cu_fp8_l8> {
    using E = cu_fp8;
    using L = uint2;
    static constexpr int N = 8;
    static __device__ __forceinline__ void unpack(const uint2 &u, float *f) {
        cu_fp8x4_unpack(u.x, f);
        cu_fp8x4_unpack(u.y, f + 4);
    }
};

/* Key tiles per split of an item with n_ctx keys: ceil(tiles / n_splits), at
 * least MIN_TILES; the non-empty splits are the first ceil(tiles / per). */
__device__ __forceinline__ int dec_per(int n_ctx, int n_splits) {
    const int tiles = (n_ctx + CU_ATT_TILE - 1) / CU_ATT_TILE;
    const int per = (tiles + n_splits - 1) / n_splits;
    return per > MIN_TILES ? per : MIN_TILES;
}

template <typename T, typename C, int R, int HD>
__global__ void __launch_bounds__(DT, R >= 8 ? 2 : 3) k_att_decode(cu_att_args a) {
    cu_pdl_trigger();
    cu_pdl_wait(); /* first, on every path: q and the cache are activations */
    using E = typename dvec<C>::E;             /* cache element */
    using L = typename dvec<C>::L;             /* one load: 16 (cu_fp8_l8: 8) bytes */
    constexpr int VE = dvec<C>::N;             /* elements per load */
    constexpr int NCH = HD / VE;               /* 16-byte columns per row */
    constexpr int P = NCH >= 8 ? NCH / 8 : 1;  /* lanes per key for q . k */
    constexpr int CK = 32 / P;                 /* keys per warp chunk */
    constexpr int NK = NCH / P;                /* K loads per lane per chunk */
    constexpr int KPI = 32 / NCH;              /* keys per V load instruction */
    constexpr int NV = CK / KPI;               /* V loads per lane per chunk */
    constexpr int QW = NK * VE;                /* q elements one lane part covers */
    constexpr int QP = QW + 4;                 /* padded: the P parts hit distinct banks */
    static_assert(NCH <= 32 && 32 % NCH == 0 && CK % KPI == 0 && CU_ATT_TILE % CK == 0,
                  "unsupported head_dim");

    __shared__ __align__(16) float qs[R][P * QP];
    __shared__ __align__(16) float ps[DW][CK][R];
    __shared__ __align__(16) float wacc[DW][R][HD];
    __shared__ float wm[DW][R], wl[DW][R];

    const cu_att_item it = a.items[blockIdx.x];
    if (it.n_q <= 0) return; /* decode-graph padding */
    const int G = a.n_heads / a.n_kv, nrg = (G + R - 1) / R;
    const int kvh = blockIdx.y / nrg, r0 = (blockIdx.y - kvh * nrg) * R;
    const int nr = min(R, G - r0);
    const int n_ctx = it.pos_first + 1;
    const int per = dec_per(n_ctx, a.n_splits);
    const int k0 = blockIdx.z * per * CU_ATT_TILE;
    if (k0 >= n_ctx) return; /* empty split: k_att_dcombine does not read it */
    const int k1 = min(n_ctx, k0 + per * CU_ATT_TILE);
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;

    const int32_t *tbl = a.tables + (size_t)it.seq * a.tbl_stride;
    const int bs = a.block_size;
    const size_t kvd = (size_t)a.n_kv * HD;
    const E *kc = (const E *)a.k_cache + (size_t)kvh * HD;
    const E *vc = (const E *)a.v_cache + (size_t)kvh * HD;
    const int kl = lane / P, kp = lane % P;     /* q . k: key in the chunk, part of its row */
    const int kg = lane / NCH, dc = lane % NCH; /* P V: key group, 16-byte column */
    /* the first chunk's table entry is in flight while q is staged */
    int c0 = k0 + w * CK;
    int key = c0 + kl;
    int slot = key < k1 ? tbl[key / bs] * bs + key % bs : 0;

    const float qscale = 1.4426950408889634f / sqrtf((float)HD);
    const float *qg = a.q + (size_t)it.tok0 * a.ldq + (size_t)(kvh * G + r0) * HD;
    for (int e = tid; e < R * HD; e += DT) {
        const int r = e / HD, d = e % HD;
        qs[r][(d / QW) * QP + d % QW] = r < nr ? qg[(size_t)r * HD + d] * qscale : 0.0f;
    }
    __syncthreads();

    float m[R], l[R], acc[R][VE];
#pragma unroll
    for (int r = 0; r < R; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int e = 0; e < VE; e++) acc[r][e] = 0.0f;
    }

    for (; c0 < k1; c0 += DW * CK) {
        const bool kval = key < k1;
        L kr[NK], vr[NV];
        const L *kp4 = (const L *)(kc + (size_t)slot * kvd) + kp * NK;
#pragma unroll
        for (int i = 0; i < NK; i++) kr[i] = kval ? __ldg(kp4 + i) : L{};
#pragma unroll
        for (int i = 0; i < NV; i++) {
            const int j = kg + i * KPI; /* key of this load within the chunk */
            const int sj = __shfl_sync(FULL, slot, j * P);
            vr[i] = c0 + j < k1 ? __ldg((const L *)(vc + (size_t)sj * kvd) + dc) : L{};
        }
        /* the next chunk's table entry, while this one computes */
        key = c0 + DW * CK + kl;
        const int nslot = key < k1 ? tbl[key / bs] * bs + key % bs : 0;

        float s[R];
#pragma unroll
        for (int r = 0; r < R; r++) s[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < NK; i++) {
            float kf[VE];
            dvec<C>::unpack(kr[i], kf);
#pragma unroll
            for (int r = 0; r < R; r++) {
                const float4 *q4 = (const float4 *)&qs[r][kp * QP + i * VE];
#pragma unroll
                for (int e = 0; e < VE / 4; e++) {
                    const float4 qv = q4[e];
                    s[r] = fmaf(qv.x, kf[4 * e], s[r]);
                    s[r] = fmaf(qv.y, kf[4 * e + 1], s[r]);
                    s[r] = fmaf(qv.z, kf[4 * e + 2], s[r]);
                    s[r] = fmaf(qv.w, kf[4 * e + 3], s[r]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
#pragma unroll
            for (int o = 1; o < P; o <<= 1) s[r] += __shfl_xor_sync(FULL, s[r], o);
            if (!kval) s[r] = -INFINITY;
            /* the chunk's first key (c0 < k1) is valid: mx and mn are finite */
            const float mn = fmaxf(m[r], cu_warp_max(s[r]));
            const float al = exp2f(m[r] - mn); /* 0 on the first chunk */
            const float p = exp2f(s[r] - mn);  /* 0 for keys beyond k1 */
            l[r] = l[r] * al + (kp == 0 ? p : 0.0f);
            m[r] = mn;
            s[r] = p;
#pragma unroll
            for (int e = 0; e < VE; e++) acc[r][e] *= al;
        }
        if (kp == 0) {
#pragma unroll
            for (int r = 0; r < R; r++) ps[w][kl][r] = s[r];
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < NV; i++) {
            const int j = kg + i * KPI;
            float vf[VE], pr[R];
            dvec<C>::unpack(vr[i], vf);
            if constexpr (R % 4 == 0) {
#pragma unroll
                for (int r = 0; r < R; r += 4) {
                    const float4 p4 = *(const float4 *)&ps[w][j][r];
                    pr[r] = p4.x;
                    pr[r + 1] = p4.y;
                    pr[r + 2] = p4.z;
                    pr[r + 3] = p4.w;
                }
            } else {
#pragma unroll
                for (int r = 0; r < R; r++) pr[r] = ps[w][j][r];
            }
#pragma unroll
            for (int r = 0; r < R; r++)
#pragma unroll
                for (int e = 0; e < VE; e++) acc[r][e] = fmaf(pr[r], vf[e], acc[r][e]);
        }
        __syncwarp(); /* every lane has read ps before the next chunk rewrites it */
        slot = nslot;
    }

    /* warp merge: l over all lanes, acc over the KPI key groups of a column */
#pragma unroll
    for (int r = 0; r < R; r++) {
        l[r] = cu_warp_sum(l[r]);
#pragma unroll
        for (int o = NCH; o < 32; o <<= 1)
#pragma unroll
            for (int e = 0; e < VE; e++) acc[r][e] += __shfl_xor_sync(FULL, acc[r][e], o);
    }
    if (kg == 0) {
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int e = 0; e < VE; e += 4)
                *(float4 *)&wacc[w][r][dc * VE + e] =
                    make_float4(acc[r][e], acc[r][e + 1], acc[r][e + 2], acc[r][e + 3]);
    }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            wm[w][r] = m[r]; /* -inf for a warp that had no chunk */
            wl[w][r] = l[r];
        }
    }
    __syncthreads();

    /* block merge (warp 0 always had a chunk, so M is finite) */
    const int qd = a.n_heads * HD;
    float *pa = NULL; /* this block's split-K slot */
    if (a.n_splits > 1)
        pa = a.part + (((size_t)blockIdx.x * a.n_splits + blockIdx.z) * a.n_kv + kvh) *
                          ((size_t)CU_ATT_ROWS * (HD + 2));
    for (int e = tid; e < nr * HD; e += DT) {
        const int r = e / HD, d = e % HD;
        float M = -INFINITY;
#pragma unroll
        for (int v = 0; v < DW; v++) M = fmaxf(M, wm[v][r]);
        float L = 0.0f, O = 0.0f;
#pragma unroll
        for (int v = 0; v < DW; v++) {
            if (wm[v][r] == -INFINITY) continue;
            const float f = exp2f(wm[v][r] - M);
            L = fmaf(wl[v][r], f, L);
            O = fmaf(wacc[v][r][d], f, O);
        }
        const int row = r0 + r; /* the query head's index in its kv group */
        if (a.n_splits == 1) {
            ((T *)a.out)[(size_t)it.tok0 * qd + (size_t)(kvh * G + row) * HD + d] =
                cu_fromf<T>(O / L);
        } else {
            pa[(size_t)row * HD + d] = O;
            if (d == 0) {
                pa[(size_t)CU_ATT_ROWS * HD + 2 * row] = M;
                pa[(size_t)CU_ATT_ROWS * HD + 2 * row + 1] = L;
            }
        }
    }
}

/* Merges the non-empty splits of each (item, kv head): out = sum_z O_z w_z with
 * w_z = 2^(M_z - M) / sum_z L_z 2^(M_z - M) per row. Block (item, kv head,
 * CT-element slice of the [G][hd] rows): a warp per row first computes the
 * weights of every split into shared memory (lanes over splits), then each
 * thread sums one element over the splits, 8 independent loads in flight
 * (the partials were just written: L2 hits). So the latency is ~nz / 8 L2
 * round trips, not nz per element and pass. More than CMAX weights (only
 * with a forced split factor far above the backend's 64): per element. */
template <typename T>
__global__ void __launch_bounds__(CT) k_att_dcombine(cu_att_args a) {
    __shared__ float wz[CMAX]; /* [nz][G] */
    cu_pdl_trigger();
    cu_pdl_wait(); /* before the early exits: see cu_launch_k */
    const cu_att_item it = a.items[blockIdx.x];
    if (it.n_q <= 0) return;
    const int kvh = blockIdx.y, hd = a.hd, G = a.n_heads / a.n_kv, qd = a.n_heads * hd;
    const int e0 = blockIdx.z * CT;
    if (e0 >= G * hd) return;
    const int n_ctx = it.pos_first + 1;
    const int per = dec_per(n_ctx, a.n_splits);
    const int nz = ((n_ctx + CU_ATT_TILE - 1) / CU_ATT_TILE + per - 1) / per;
    const size_t slot_floats = (size_t)CU_ATT_ROWS * (hd + 2);
    const float *base = a.part + ((size_t)blockIdx.x * a.n_splits * a.n_kv + kvh) * slot_floats;
    const size_t zstride = (size_t)a.n_kv * slot_floats; /* next split of the same item */
    const float *ml = base + (size_t)CU_ATT_ROWS * hd;   /* (M, L) pairs per row */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int e = e0 + tid, r = e / hd;
    T *out = (T *)a.out + (size_t)it.tok0 * qd + (size_t)kvh * G * hd;
    if (nz * G <= CMAX) {
        const int rlo = e0 / hd, rhi = min(G, (e0 + CT - 1) / hd + 1); /* rows of this slice */
        for (int rr = rlo + warp; rr < rhi; rr += CT / 32) {
            float M = -INFINITY, L = 0.0f;
            for (int z = lane; z < nz; z += 32) M = fmaxf(M, ml[z * zstride + 2 * rr]);
            M = cu_warp_max(M);
            for (int z = lane; z < nz; z += 32)
                L = fmaf(ml[z * zstride + 2 * rr + 1], exp2f(ml[z * zstride + 2 * rr] - M), L);
            L = cu_warp_sum(L);
            for (int z = lane; z < nz; z += 32)
                wz[z * G + rr] = exp2f(ml[z * zstride + 2 * rr] - M) / L;
        }
        __syncthreads();
        if (e < G * hd) {
            float O = 0.0f;
#pragma unroll 8
            for (int z = 0; z < nz; z++) O = fmaf(wz[z * G + r], base[z * zstride + e], O);
            out[e] = cu_fromf<T>(O);
        }
    } else if (e < G * hd) {
        float M = -INFINITY;
        for (int z = 0; z < nz; z++) M = fmaxf(M, ml[z * zstride + 2 * r]);
        float L = 0.0f, O = 0.0f;
        for (int z = 0; z < nz; z++) {
            const float f = exp2f(ml[z * zstride + 2 * r] - M);
            L = fmaf(ml[z * zstride + 2 * r + 1], f, L);
            O = fmaf(base[z * zstride + e], f, O);
        }
        out[e] = cu_fromf<T>(O / L);
    }
}

int cu_att_decode_ok(const cu_att_args *a) {
    return g_enabled && a->max_nq == 1 &&
           (a->hd == 16 || a->hd == 32 || a->hd == 64 || a->hd == 128) &&
           (uintptr_t)a->k_cache % 16 == 0 && (uintptr_t)a->v_cache % 16 == 0;
}

template <typename T, typename C, int R, int HD>
static int launch_dec(cudaStream_t st, const cu_att_args *a) {
    const int G = a->n_heads / a->n_kv, nrg = (G + R - 1) / R;
    const dim3 grid((unsigned)a->n_items, (unsigned)(a->n_kv * nrg), (unsigned)a->n_splits);
    CU_CHECK(cu_launch_k(k_att_decode<T, C, R, HD>, grid, DT, 0, st, a->pdl, *a));
    CU_LAUNCH_CHECK(st);
    if (a->n_splits > 1) {
        const unsigned slices = (unsigned)((G * a->hd + CT - 1) / CT);
        const dim3 cgrid((unsigned)a->n_items, (unsigned)a->n_kv, slices);
        CU_CHECK(cu_launch_k(k_att_dcombine<T>, cgrid, CT, 0, st, a->pdl, *a));
        CU_LAUNCH_CHECK(st);
    }
    return 0;
}

/* Rows per block: G itself up to 2, else 4 or 8 (G = 3: one idle row; G > 8:
 * several row groups, each re-reading the kv head's keys). */
template <typename T, typename C, int HD>
static int launch_hd(cudaStream_t st, const cu_att_args *a) {
    const int G = a->n_heads / a->n_kv;
    if (G == 1) return launch_dec<T, C, 1, HD>(st, a);
    if (G == 2) return launch_dec<T, C, 2, HD>(st, a);
    if (G <= 4) return launch_dec<T, C, 4, HD>(st, a);
    return launch_dec<T, C, 8, HD>(st, a);
}

/* The head sizes cu_att_decode_ok takes, as compile-time HD. */
template <typename T, typename C>
static int launch_any_hd(cudaStream_t st, const cu_att_args *a) {
    switch (a->hd) {
    case 16: return launch_hd<T, C, 16>(st, a);
    case 32: return launch_hd<T, C, 32>(st, a);
    case 64: return launch_hd<T, C, 64>(st, a);
    default: return launch_hd<T, C, 128>(st, a);
    }
}

int cu_launch_att_decode(cudaStream_t st, const cu_att_args *a, int dtype) {
    if (!cu_att_decode_ok(a) || a->n_kv <= 0 || a->n_heads % a->n_kv != 0 ||
        a->n_heads / a->n_kv > CU_ATT_ROWS || a->n_splits < 1 || (a->n_splits > 1 && !a->part))
        return NI_EINVAL;
    if (a->kv_fp8 && dtype != CU_DTYPE_BF16) return NI_EINVAL; /* E4M3 caches: BF16 only */
    if (a->n_items <= 0) return 0;
    if (a->kv_fp8)
        return fp8_wide_for(a->hd) ? launch_any_hd<cu_bf16, cu_fp8>(st, a)
                          : launch_any_hd<cu_bf16, cu_fp8_l8>(st, a);
    return dtype == CU_DTYPE_FP32 ? launch_any_hd<float, float>(st, a)
                                  : launch_any_hd<cu_bf16, cu_bf16>(st, a);
}
