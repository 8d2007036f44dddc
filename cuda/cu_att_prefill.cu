/*
 * cu_att_prefill.cu - FlashAttention-2-style causal GQA attention on tensor
 * cores (mma.sync m16n8k16, BF16 inputs, FP32 accumulation) over the paged
 * BF16 KV cache, for batches with prefill chunks (cu_att_args.max_nq > 1;
 * cu_launch_attention in cu_attention.cu dispatches, cu_att_prefill_ok
 * gates). Same contract, work items (cu_att_plan), split-K partial layout and
 * CPU twin (cpu_attention) as k_attention; only the math inside a block
 * differs.
 *
 * Work decomposition: block (item, kv head, split), 4 warps. An item is at
 * most CU_ATT_ROWS = 64 query rows (n_q tokens x the G query heads of the kv
 * head, token-major: row r = token r / G, head kvh*G + r % G), so warp w owns
 * the 16 rows [16w, 16w + 16) -- one m16 tile -- and every K/V element
 * loaded serves all G heads and all tokens of the item. Rows >= n_q*G (a
 * 1-token decode item of a mixed batch has only G rows) are zero q rows whose
 * results are never written; a warp with no valid row does no math but still
 * helps load.
 *
 * Per block:
 *   prologue: the item's q rows (FP32, RoPE applied) are scaled by
 *     log2(e)/sqrt(hd) (softmax in the exp2 domain), rounded to BF16 into
 *     shared memory, and each warp keeps its 16 x hd A fragments in
 *     registers (ldmatrix.x4), for the whole key loop.
 *   key loop over BN = 64-key tiles [t_begin, t_end) of this split, with
 *     t_end <= ceil((pos_first + n_q) / 64): tiles past the item's last query
 *     row are never visited; a warp also skips the math of a tile whose first
 *     key is past its own last row. K and V tiles are copied with cp.async
 *     (16 bytes per copy; each key's cache slot from the block table; keys
 *     beyond the context are zero-filled) into double-buffered shared memory:
 *     tile i+1 is in flight while tile i is computed. An E4M3 cache (kv_fp8,
 *     k_att_prefill<HD, true>) is read with plain 8-byte loads and converted
 *     to BF16 on the way into the same shared layout (cp.async cannot
 *     convert), so its next tile is not overlapped with the math.
 *     S = Q K^T: K rows [key][d] are the "col" B operand as stored
 *     (ldmatrix.x4, two 8-key n-tiles x one k16 step per instruction); 8
 *     n-tiles x hd/16 k-steps of mma per warp.
 *     Causal mask (key position > row position -> -inf) only on tiles that
 *     reach past the warp's first row. Online softmax in registers: each
 *     thread holds 2 rows (g, g+8 of the m16 tile) x 16 keys; row max over the
 *     quad with two xor shuffles; m, and a per-thread partial l (summed over
 *     the quad at the end). A row with every key so far masked keeps
 *     m = -inf and uses 0 as the exponent base, so p = 0 and alpha = 0,
 *     never NaN (only possible inside a split: tile 0 always holds key 0).
 *     O += P V: the S accumulators, exponentiated and packed to BF16, are
 *     already the A fragments of P (the C layout of two n8 tiles equals the
 *     A layout of one k16 step); V rows [key][d] are row-major B, loaded
 *     with ldmatrix.x4.trans; hd/8 n-tiles x 4 k-steps of mma.
 *   epilogue: O / l as BF16 (one split), or the unnormalized O and (m, l)
 *     (m converted to natural-log units) to the item's split-K slot, which
 *     k_att_combine merges (empty splits write m = -inf, as k_attention's).
 *
 * Shared memory: rows padded to hd + 8 BF16 (row stride = 16 mod 128
 * bytes), so the 8 row addresses of each ldmatrix phase and the 16-byte
 * cp.async stores hit distinct bank quads: conflict-free without a swizzle.
 * (64 + 4 * 64) * (hd + 8) * 2 bytes: 25 KB (hd 32), 45 KB (hd 64), 85 KB
 * (hd 128; two blocks per SM), dynamic (limits raised by
 * cu_att_prefill_prepare).
 *
 * Precision: q and P rounded to BF16 (k_attention keeps both in FP32), K/V
 * are the BF16 (or E4M3, exactly widened) cache; scores, softmax, l and O accumulate in FP32.
 * Invariants: those of k_attention (every cache position < pos_first + n_q
 * written and covered by the block table), head_dim 32 / 64 / 128, 16-byte
 * aligned caches (hd % 8 == 0 then keeps every row 16-byte aligned).
 */
#include <math.h>

#include <type_traits>

#include "cu_internal.h"

#define PT 128            /* threads per block: 4 warps x 16 query rows */
#define BN 64             /* keys per tile */
#define PROWS CU_ATT_ROWS /* query rows per item */

#if PROWS != 4 * 16
#error "k_att_prefill maps one m16 tile per warp: CU_ATT_ROWS must be 64"
#endif

/* ---- PTX wrappers ---------------------------------------------------------- */

__device__ __forceinline__ unsigned smem_u32(const void *p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

/* 16-byte global -> shared copy; valid == false zero-fills the destination
 * (src-size 0: nothing is read). */
__device__ __forceinline__ void cp16(void *dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}

__device__ __forceinline__ void cp_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* Waits until at most n of this thread's committed groups are pending. */
template <int N> __device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Four 8x8 BF16 matrices; lanes 8i..8i+7 give the row addresses of matrix i,
 * register i gets this lane's (row lane/4, cols 2(lane%4), +1) of matrix i
 * (.trans: (rows 2(lane%4), +1; col lane/4)). */
__device__ __forceinline__ void ldsm4(unsigned (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

__device__ __forceinline__ void ldsm4_t(unsigned (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

/* c += a b: A 16x16 row-major (a[0]: row g cols 2t..; a[1]: row g+8; a[2]:
 * row g cols 2t+8..; a[3]: row g+8 cols 2t+8..), B 16x8 "col" (b0: k 2t..,
 * b1: k 2t+8.., col g), C 16x8 FP32 (c[0..1]: row g cols 2t, 2t+1; c[2..3]:
 * row g+8), with g = lane / 4, t = lane % 4. */
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats as BF16x2, lo in the low half (the lower column / k index). */
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(const unsigned *)&v;
}

/* ---- the kernel ------------------------------------------------------------ */

template <int HD> struct pf_shape {
    static constexpr int LDS = HD + 8;        /* padded shared row, BF16 elements */
    static constexpr int CPR = HD / 8;        /* 16-byte chunks per cache row */
    static constexpr int KS = HD / 16;        /* k16 steps of Q K^T */
    static constexpr int DT = HD / 8;         /* n8 tiles of O */
    static constexpr int NT = BN / 8;         /* n8 tiles of S */
    static constexpr int CPT = BN * CPR / PT; /* K (and V) copies per thread per tile */
    static constexpr size_t SMEM = (size_t)(PROWS + 4 * BN) * LDS * sizeof(cu_bf16);
    static_assert(HD % 32 == 0 && DT % 2 == 0 && (BN * CPR) % PT == 0 && PT % CPR == 0,
                  "unsupported head_dim");
};

/* 8 E4M3 cache elements (8 bytes at src) as 8 BF16 into shared memory (16
 * bytes at dst), zeros when !valid. A plain load, not cp.async (which cannot
 * convert): the thread waits for it, so an E4M3 tile is not prefetched behind
 * the previous tile's math as a BF16 one is. E4M3 -> BF16 is exact. */
__device__ __forceinline__ void ld8_fp8(cu_bf16 *dst, const unsigned char *src, bool valid) {
    uint2 u = make_uint2(0u, 0u);
    if (valid) u = __ldg((const uint2 *)src);
    float f[8];
    cu_fp8x4_unpack(u.x, f);
    cu_fp8x4_unpack(u.y, f + 4);
    uint4 o;
    o.x = pack_bf16(f[0], f[1]);
    o.y = pack_bf16(f[2], f[3]);
    o.z = pack_bf16(f[4], f[5]);
    o.w = pack_bf16(f[6], f[7]);
    *(uint4 *)dst = o;
}

/* F8: the cache holds E4M3 (kv_fp8), converted while staged into shared
 * memory; everything after the staging is the BF16 kernel. */
template <int HD, bool F8> __global__ void __launch_bounds__(PT) k_att_prefill(cu_att_args a) {
    using S = pf_shape<HD>;
    constexpr int LDS = S::LDS;
    extern __shared__ __align__(16) unsigned char pf_smem[];
    cu_bf16 *qs = (cu_bf16 *)pf_smem; /* [PROWS][LDS] */
    cu_bf16 *ks = qs + PROWS * LDS;   /* [2][BN][LDS] */
    cu_bf16 *vs = ks + 2 * BN * LDS;  /* [2][BN][LDS] */

    const cu_att_item it = a.items[blockIdx.x];
    if (it.n_q <= 0) return; /* decode-graph padding: nothing read or written */
    const int G = a.n_heads / a.n_kv, kvh = blockIdx.y, z = blockIdx.z;
    const int R = it.n_q * G, n_ctx = it.pos_first + it.n_q;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int bs = a.block_size;
    const size_t kvd = (size_t)a.n_kv * HD;
    using C = typename std::conditional<F8, unsigned char, cu_bf16>::type; /* cache element */
    const C *kc = (const C *)a.k_cache + (size_t)kvh * HD;
    const C *vc = (const C *)a.v_cache + (size_t)kvh * HD;
    const int32_t *tbl = a.tables + (size_t)it.seq * a.tbl_stride;

    const int n_tiles = (n_ctx + BN - 1) / BN;
    const int per = (n_tiles + a.n_splits - 1) / a.n_splits;
    const int t_begin = z * per, t_end = min(n_tiles, t_begin + per);

    /* this thread's copies: chunk column col of keys jr, jr + PT/CPR, ... */
    const int col = tid % S::CPR, jr = tid / S::CPR;
    auto load_tile = [&](int tile, int buf) {
        const int key0 = tile * BN;
        cu_bf16 *kd = ks + buf * BN * LDS, *vd = vs + buf * BN * LDS;
#pragma unroll
        for (int i = 0; i < S::CPT; i++) {
            const int j = jr + i * (PT / S::CPR), kp = key0 + j;
            const bool ok = kp < n_ctx;
            size_t off = 0;
            if (ok) off = ((size_t)tbl[kp / bs] * bs + (size_t)(kp % bs)) * kvd + (size_t)col * 8;
            if constexpr (F8) {
                ld8_fp8(kd + j * LDS + col * 8, kc + off, ok);
                ld8_fp8(vd + j * LDS + col * 8, vc + off, ok);
            } else {
                cp16(kd + j * LDS + col * 8, kc + off, ok);
                cp16(vd + j * LDS + col * 8, vc + off, ok);
            }
        }
    };
    if (t_begin < t_end) load_tile(t_begin, 0); /* in flight while q is staged */
    cp_commit();

    const float qscale = 1.4426950408889634f / sqrtf((float)HD);
    for (int e = tid; e < PROWS * (HD / 2); e += PT) {
        const int r = e / (HD / 2), d = (e % (HD / 2)) * 2;
        float x0 = 0.0f, x1 = 0.0f;
        if (r < R) {
            const float *qp =
                a.q + (size_t)(it.tok0 + r / G) * a.ldq + (size_t)(kvh * G + r % G) * HD + d;
            x0 = qp[0] * qscale;
            x1 = qp[1] * qscale;
        }
        *(__nv_bfloat162 *)(qs + r * LDS + d) = __floats2bfloat162_rn(x0, x1);
    }
    __syncthreads();

    unsigned qf[S::KS][4];
#pragma unroll
    for (int kk = 0; kk < S::KS; kk++)
        ldsm4(qf[kk], qs + (w * 16 + (lane & 15)) * LDS + kk * 16 + (lane >> 4) * 8);

    /* rows of this thread: lo = 16w + g, hi = lo + 8; invalid rows take the
     * last valid row's position (finite scores, never written) */
    const bool active = w * 16 < R;
    const int r_lo = min(w * 16 + g, R - 1), r_hi = min(w * 16 + g + 8, R - 1);
    const int pos_lo = it.pos_first + r_lo / G, pos_hi = it.pos_first + r_hi / G;
    const int wpos_min = it.pos_first + min(w * 16, R - 1) / G;
    const int wpos_max = it.pos_first + min(w * 16 + 15, R - 1) / G;

    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;
    float o[S::DT][4];
#pragma unroll
    for (int j = 0; j < S::DT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

    for (int tile = t_begin; tile < t_end; tile++) {
        const int buf = (tile - t_begin) & 1;
        if (tile + 1 < t_end) load_tile(tile + 1, buf ^ 1);
        cp_commit(); /* possibly empty: keeps "all but the newest group" = this tile */
        cp_wait<1>();
        __syncthreads();
        const int key0 = tile * BN;
        if (active && key0 <= wpos_max) {
            const cu_bf16 *kb = ks + buf * BN * LDS, *vb = vs + buf * BN * LDS;
            float s[S::NT][4];
#pragma unroll
            for (int j = 0; j < S::NT; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < S::KS; kk++)
#pragma unroll
                for (int j = 0; j < S::NT; j += 2) {
                    unsigned b[4]; /* n-tiles j, j+1 x (d 16kk.., 16kk+8..) */
                    ldsm4(b, kb + (j * 8 + (lane >> 4) * 8 + (lane & 7)) * LDS + kk * 16 +
                                 ((lane >> 3) & 1) * 8);
                    mma16816(s[j], qf[kk], b[0], b[1]);
                    mma16816(s[j + 1], qf[kk], b[2], b[3]);
                }
            if (key0 + BN - 1 > wpos_min) { /* the tile reaches past some row: mask */
#pragma unroll
                for (int j = 0; j < S::NT; j++) {
                    const int kp = key0 + j * 8 + 2 * t4;
                    if (kp > pos_lo) s[j][0] = -INFINITY;
                    if (kp + 1 > pos_lo) s[j][1] = -INFINITY;
                    if (kp > pos_hi) s[j][2] = -INFINITY;
                    if (kp + 1 > pos_hi) s[j][3] = -INFINITY;
                }
            }
            float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
            for (int j = 0; j < S::NT; j++) {
                mx_lo = fmaxf(mx_lo, fmaxf(s[j][0], s[j][1]));
                mx_hi = fmaxf(mx_hi, fmaxf(s[j][2], s[j][3]));
            }
#pragma unroll
            for (int x = 1; x < 4; x <<= 1) {
                mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, x));
                mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, x));
            }
            /* exponent bases: 0 for a row with nothing unmasked yet (p = 0, alpha = 0) */
            const float b_lo = mx_lo == -INFINITY ? 0.0f : mx_lo;
            const float b_hi = mx_hi == -INFINITY ? 0.0f : mx_hi;
            const float al_lo = exp2f(m_lo - b_lo), al_hi = exp2f(m_hi - b_hi);
            m_lo = mx_lo;
            m_hi = mx_hi;
            unsigned pf[BN / 16][4]; /* P as A fragments, k16 step = keys 16kk.. */
            float sl = 0.0f, sh = 0.0f;
#pragma unroll
            for (int j = 0; j < S::NT; j++) {
                const float p0 = exp2f(s[j][0] - b_lo), p1 = exp2f(s[j][1] - b_lo);
                const float p2 = exp2f(s[j][2] - b_hi), p3 = exp2f(s[j][3] - b_hi);
                sl += p0 + p1;
                sh += p2 + p3;
                pf[j / 2][(j & 1) * 2] = pack_bf16(p0, p1);
                pf[j / 2][(j & 1) * 2 + 1] = pack_bf16(p2, p3);
            }
            l_lo = l_lo * al_lo + sl;
            l_hi = l_hi * al_hi + sh;
#pragma unroll
            for (int j = 0; j < S::DT; j++) {
                o[j][0] *= al_lo;
                o[j][1] *= al_lo;
                o[j][2] *= al_hi;
                o[j][3] *= al_hi;
            }
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
                for (int j = 0; j < S::DT; j += 2) {
                    unsigned b[4]; /* (keys 16kk.., 16kk+8..) x d-tiles j, j+1 */
                    ldsm4_t(b, vb + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDS + j * 8 +
                                   (lane >> 4) * 8);
                    mma16816(o[j], pf[kk], b[0], b[1]);
                    mma16816(o[j + 1], pf[kk], b[2], b[3]);
                }
        }
        __syncthreads(); /* everyone is done with buf before it is refilled */
    }

#pragma unroll
    for (int x = 1; x < 4; x <<= 1) {
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, x);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, x);
    }
    if (!active) return;
    const int qd = a.n_heads * HD;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int r = w * 16 + g + 8 * half;
        if (r >= R) continue;
        const float l = half ? l_hi : l_lo, m = half ? m_hi : m_lo;
        if (a.n_splits == 1) {
            const float inv = 1.0f / l; /* l > 0: key 0 is in the only split */
            cu_bf16 *out = (cu_bf16 *)a.out + (size_t)(it.tok0 + r / G) * qd +
                           (size_t)(kvh * G + r % G) * HD + 2 * t4;
#pragma unroll
            for (int j = 0; j < S::DT; j++)
                *(__nv_bfloat162 *)(out + j * 8) =
                    __floats2bfloat162_rn(o[j][2 * half] * inv, o[j][2 * half + 1] * inv);
        } else {
            const size_t slot = (size_t)blockIdx.x * a.n_splits + z;
            float *pa = a.part + (slot * a.n_kv + kvh) * ((size_t)PROWS * (HD + 2));
#pragma unroll
            for (int j = 0; j < S::DT; j++) {
                pa[(size_t)r * HD + j * 8 + 2 * t4] = o[j][2 * half];
                pa[(size_t)r * HD + j * 8 + 2 * t4 + 1] = o[j][2 * half + 1];
            }
            if (t4 == 0) {
                float *pml = pa + (size_t)PROWS * HD;
                pml[2 * r] = m * 0.6931471805599453f; /* log2 -> natural units; -inf stays */
                pml[2 * r + 1] = l;
            }
        }
    }
}

/* ---- host ------------------------------------------------------------------- */

int cu_att_prefill_ok(const cu_att_args *a, int dtype) {
    return dtype == CU_DTYPE_BF16 && (a->hd == 32 || a->hd == 64 || a->hd == 128) && a->n_kv > 0 &&
           a->n_heads % a->n_kv == 0 && a->n_heads / a->n_kv <= PROWS &&
           (uintptr_t)a->k_cache % 16 == 0 && (uintptr_t)a->v_cache % 16 == 0;
}

template <int HD, bool F8> static int prepare_one() {
    CU_CHECK(cudaFuncSetAttribute(k_att_prefill<HD, F8>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)pf_shape<HD>::SMEM));
    return 0;
}

template <int HD> static int prepare_hd() {
    CU_TRY((prepare_one<HD, false>()));
    return prepare_one<HD, true>();
}

int cu_att_prefill_prepare(void) {
    CU_TRY(prepare_hd<32>());
    CU_TRY(prepare_hd<64>());
    return prepare_hd<128>();
}

/* An uncaptured launch raises the limit of the one instance it runs. */
template <int HD, bool F8> static int launch_pf(cudaStream_t st, const cu_att_args *a) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    CU_CHECK(cudaStreamIsCapturing(st, &cs));
    if (cs == cudaStreamCaptureStatusNone) CU_TRY((prepare_one<HD, F8>()));
    const dim3 grid((unsigned)a->n_items, (unsigned)a->n_kv, (unsigned)a->n_splits);
    k_att_prefill<HD, F8><<<grid, PT, pf_shape<HD>::SMEM, st>>>(*a);
    CU_LAUNCH_CHECK(st);
    return 0;
}

template <int HD> static int launch_hd(cudaStream_t st, const cu_att_args *a) {
    return a->kv_fp8 ? launch_pf<HD, true>(st, a) : launch_pf<HD, false>(st, a);
}

int cu_launch_att_prefill(cudaStream_t st, const cu_att_args *a, int dtype) {
    if (!cu_att_prefill_ok(a, dtype) || a->n_splits < 1 || (a->n_splits > 1 && !a->part))
        return NI_EINVAL;
    if (a->n_items <= 0) return 0;
    if (a->hd == 32)
        CU_TRY(launch_hd<32>(st, a));
    else if (a->hd == 64)
        CU_TRY(launch_hd<64>(st, a));
    else
        CU_TRY(launch_hd<128>(st, a));
    if (a->n_splits > 1) CU_TRY(cu_launch_att_combine(st, a, dtype));
    return 0;
}
