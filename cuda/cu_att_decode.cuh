/*
 * cu_att_decode.cuh - the device side of the decode attention kernels
 * (cu_att_decode.cu): one block's work of k_att_decode (ad_unit) and of
 * k_att_dcombine (ad_combine_unit), parameterised by the warps per block, the
 * keys per warp chunk and the block coordinates, so that the persistent
 * decode kernel (cu_persist.cu) runs the same code between its grid
 * barriers. Design, invariants and limits: cu_att_decode.cu. Private to
 * cuda/; include after cu_internal.h.
 */
#ifndef NI_CU_ATT_DECODE_CUH
#define NI_CU_ATT_DECODE_CUH

#include <math.h>

#define FULL 0xffffffffu
/* the combine: threads per block */
#define CT 256

/* E4M3 cache read with 8-byte loads (dvec<cu_fp8_l8>): a format tag. */
struct cu_fp8_l8 {};

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
 * least lo (ad_lo: the ad_unit block's warps times its chunk, in tiles: no
 * warp left idle by a short split, fewer splits to merge at short contexts);
 * and when the whole context fits mt tiles (mt > lo: the persistent
 * kernel), mt, so that it is one split and needs no combine. The non-empty
 * splits are the first ad_nz = ceil(tiles / per). */
__device__ __forceinline__ int dec_per(int n_ctx, int n_splits, int lo, int mt) {
    const int tiles = (n_ctx + CU_ATT_TILE - 1) / CU_ATT_TILE;
    const int per = (tiles + n_splits - 1) / n_splits;
    const int m = tiles <= mt ? mt : lo;
    return per > m ? per : m;
}

/* Keys per warp chunk of ad_unit for cache format C and head_dim HD (P =
 * 32 / CK lanes share a key's q . k; a row is NCH 16-byte columns):
 *   coarse: lane-per-key up to 128-byte rows (P = NCH / 8, 8 K loads per
 *     lane), the throughput shape: one warp does a whole tile's keys;
 *   fine:   P = min(4, NCH): a quarter of the keys per chunk (BF16 hd 64:
 *     8 keys, 2 K and 2 V loads per lane), for batches whose blocks do not
 *     fill the device, where a split's latency is its warps' serial work;
 *     with 4 warps a split can then be a single tile.
 * ad_lo: the matching least tiles per split (dec_per's lo) for NW warps. */
__host__ __device__ constexpr int ad_coarse_ck(int nch) { return 32 / (nch >= 8 ? nch / 8 : 1); }
__host__ __device__ constexpr int ad_fine_ck(int nch) { return 32 / (nch < 4 ? nch : 4); }
template <typename C, int HD> struct ad_chunk {
    static constexpr int NCH = HD / dvec<C>::N;
    static constexpr int COARSE = ad_coarse_ck(NCH);
    static constexpr int FINE = ad_fine_ck(NCH);
};

/* Query rows per decode block for G heads per kv head: G itself up to 2,
 * else 4 or 8 (G = 3: one idle row; G > 8: several row groups). The R of
 * k_att_decode and of the persistent kernel. */
__host__ __device__ constexpr int ad_rows(int G) {
    return G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8;
}
__host__ __device__ constexpr int ad_lo(int nw, int ck, bool fine) {
    return !fine ? nw : nw * ck >= CU_ATT_TILE ? nw * ck / CU_ATT_TILE : 1;
}

__device__ __forceinline__ int ad_nz(int n_ctx, int per) {
    return ((n_ctx + CU_ATT_TILE - 1) / CU_ATT_TILE + per - 1) / per;
}

/* One cache load: read-only path, or (COH) L2-coherent. */
template <bool COH, typename L> __device__ __forceinline__ L ad_ld(const L *p) {
    if constexpr (COH)
        return __ldcg(p);
    else
        return __ldg(p);
}

/* cp.async of 16 bytes into shared memory, L1 bypassed; zero-filled (nothing
 * read from src, which must still be a valid address) when !ok. */
__device__ __forceinline__ void ad_cp16(void *dst, const void *src, bool ok) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src),
                 "r"(ok ? 16 : 0)
                 : "memory");
}

/* Dynamic shared memory of ad_unit with NS (0 or 1) staged chunks per warp,
 * NW warps: every lane's NK K and NV V loads of a chunk (16 loads of 16
 * bytes: 8 KB per warp, whatever the format and head_dim). */
template <typename C, int HD, int NW, int CK, int NS> struct ad_stage {
    static constexpr int NCH = HD / dvec<C>::N, P = 32 / CK, NK = NCH / P;
    static constexpr int NV = CK / (32 / NCH);
    static constexpr size_t BYTES = (size_t)NS * NW * (NK + NV) * 32 * 16;
};

/* Block (bx, by, bz) of k_att_decode's grid (item, kv head x row group,
 * split), computed by the calling block's NW warps (blockDim.x == 32 * NW),
 * CK keys per warp chunk (ad_chunk), splits of at least lo tiles (ad_lo;
 * dec_per with a.min_tiles). COH: the cache is read with coherent (L2)
 * loads instead of the read-only path, for a caller that wrote it earlier in
 * the same kernel (the persistent decode kernel). NS = 1: the chunks are
 * staged in stg (ad_stage<...>::BYTES of dynamic shared memory) by cp.async,
 * see below. Block-uniform early returns; every thread must call. */
template <typename T, typename C, int R, int HD, int NW, int CK, bool COH, int NS = 0>
__device__ __forceinline__ void ad_unit(const cu_att_args &a, int bx, int by, int bz, int lo,
                                        uint4 *stg = nullptr) {
    constexpr int DT = 32 * NW, DW = NW;
    using E = typename dvec<C>::E;             /* cache element */
    using L = typename dvec<C>::L;             /* one load: 16 (cu_fp8_l8: 8) bytes */
    constexpr int VE = dvec<C>::N;             /* elements per load */
    constexpr int NCH = HD / VE;               /* 16-byte columns per row */
    constexpr int P = 32 / CK;                 /* lanes per key for q . k */
    constexpr int NK = NCH / P;                /* K loads per lane per chunk */
    constexpr int KPI = 32 / NCH;              /* keys per V load instruction */
    constexpr int NV = CK / KPI;               /* V loads per lane per chunk */
    constexpr int QW = NK * VE;                /* q elements one lane part covers */
    constexpr int QP = QW + 4;                 /* padded: the P parts hit distinct banks */
    static_assert(NCH <= 32 && 32 % NCH == 0 && 32 % CK == 0 && NCH % P == 0 && NK >= 1 &&
                      NK <= 8 && NV >= 1 && CU_ATT_TILE % CK == 0,
                  "unsupported head_dim / chunk");

    __shared__ __align__(16) float qs[R][P * QP];
    __shared__ __align__(16) float ps[DW][CK][R];
    __shared__ __align__(16) float wacc[DW][R][HD];
    __shared__ float wm[DW][R], wl[DW][R];

    const cu_att_item it = a.items[bx];
    if (it.n_q <= 0) return; /* decode-graph padding */
    const int G = a.n_heads / a.n_kv, nrg = (G + R - 1) / R;
    const int kvh = by / nrg, r0 = (by - kvh * nrg) * R;
    const int nr = min(R, G - r0);
    const int n_ctx = it.pos_first + 1;
    const int per = dec_per(n_ctx, a.n_splits, lo, a.min_tiles);
    const int k0 = bz * per * CU_ATT_TILE;
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
    int c0 = k0 + w * CK;

    /* The chunk at c0 (slot: this lane's key's cache slot) into kr / vr,
     * zero past k1. The first chunk's loads are issued before q is staged,
     * so that the two memory round trips overlap. */
    L kr[NK], vr[NV];
    auto slot_of = [&](int key) { return key < k1 ? tbl[key / bs] * bs + key % bs : 0; };
    int slot = slot_of(c0 + kl);
    auto load = [&]() {
        const L *k4 = (const L *)(kc + (size_t)slot * kvd) + kp * NK;
#pragma unroll
        for (int i = 0; i < NK; i++) kr[i] = c0 + kl < k1 ? ad_ld<COH>(k4 + i) : L{};
#pragma unroll
        for (int i = 0; i < NV; i++) {
            const int j = kg + i * KPI; /* key of this load within the chunk */
            const int sj = __shfl_sync(FULL, slot, j * P);
            vr[i] = c0 + j < k1 ? ad_ld<COH>((const L *)(vc + (size_t)sj * kvd) + dc) : L{};
        }
    };
    /* NS = 1 (16-byte loads only): a chunk goes through this warp's stage in
     * shared memory by cp.async (L2 only, no L1 allocation, no register held
     * while in flight) instead of register loads: the same one chunk in
     * flight per warp, measured faster on the H200 (docs/perf.md). Each lane
     * reads back only what it copied itself, so its own wait_group orders it:
     * no warp barrier. */
    static_assert(NS == 0 || (NS == 1 && sizeof(L) == 16), "staged chunks: 16-byte loads");
    constexpr int SL = (int)(ad_stage<C, HD, 1, CK, 1>::BYTES / 16); /* one warp's loads */
    uint4 *wst = NS ? stg + (size_t)w * SL : nullptr;
    auto issue = [&]() { /* the chunk at c0 (lane slot: slot) into the stage */
        const uint4 *k4 = (const uint4 *)(kc + (size_t)slot * kvd) + kp * NK;
#pragma unroll
        for (int i = 0; i < NK; i++) ad_cp16(wst + i * 32 + lane, k4 + i, c0 + kl < k1);
#pragma unroll
        for (int i = 0; i < NV; i++) {
            const int j = kg + i * KPI;
            const int sj = __shfl_sync(FULL, slot, j * P);
            ad_cp16(wst + (NK + i) * 32 + lane, (const uint4 *)(vc + (size_t)sj * kvd) + dc,
                    c0 + j < k1);
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
    };
    if (c0 < k1) {
        if constexpr (NS) issue();
        else load();
    }

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

    while (c0 < k1) { /* kr / vr hold the chunk at c0 */
        const bool kval = c0 + kl < k1;
        /* the next chunk's table entry, while this one computes */
        const int nslot = slot_of(c0 + DW * CK + kl);
        if constexpr (NS) {
            asm volatile("cp.async.wait_group 0;" ::: "memory");
#pragma unroll
            for (int i = 0; i < NK; i++) kr[i] = wst[i * 32 + lane];
#pragma unroll
            for (int i = 0; i < NV; i++) vr[i] = wst[(NK + i) * 32 + lane];
        }

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
        c0 += DW * CK;
        slot = nslot;
        if (c0 < k1) { /* the stage was read back above: free to refill */
            if constexpr (NS) issue();
            else load();
        }
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
    /* an item whose keys fit one split is finished here, whatever n_splits */
    const int nz = ad_nz(n_ctx, per);
    float *pa = NULL; /* this block's split-K slot */
    if (nz > 1)
        pa = a.part + (((size_t)bx * a.n_splits + bz) * a.n_kv + kvh) *
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
        if (nz == 1) {
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
 * round trips, not nz per element and pass. More than WZ weights (only
 * with a forced split factor far above the backend's 64): per element.
 * lo: that of the ad_unit blocks that wrote the partials (with a.min_tiles:
 * the split sizes); blockDim.x == CT. */
template <typename T, int WZ>
__device__ __forceinline__ void ad_combine_unit(const cu_att_args &a, int bx, int by, int bz,
                                                int lo) {
    __shared__ float wz[WZ]; /* [nz][G] */
    const cu_att_item it = a.items[bx];
    if (it.n_q <= 0) return;
    const int kvh = by, hd = a.hd, G = a.n_heads / a.n_kv, qd = a.n_heads * hd;
    const int e0 = bz * CT;
    if (e0 >= G * hd) return;
    const int n_ctx = it.pos_first + 1;
    const int per = dec_per(n_ctx, a.n_splits, lo, a.min_tiles);
    const int nz = ad_nz(n_ctx, per);
    if (nz == 1) return; /* ad_unit wrote it */
    const size_t slot_floats = (size_t)CU_ATT_ROWS * (hd + 2);
    const float *base = a.part + ((size_t)bx * a.n_splits * a.n_kv + kvh) * slot_floats;
    const size_t zstride = (size_t)a.n_kv * slot_floats; /* next split of the same item */
    const float *ml = base + (size_t)CU_ATT_ROWS * hd;   /* (M, L) pairs per row */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int e = e0 + tid, r = e / hd;
    T *out = (T *)a.out + (size_t)it.tok0 * qd + (size_t)kvh * G * hd;
    if (nz * G <= WZ) {
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

#endif
