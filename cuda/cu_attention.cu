/*
 * cu_attention.cu - causal GQA attention over the paged KV cache for mixed
 * batches (prefill chunks and decode tokens in one launch), with online
 * softmax and optional split-K (flash-decoding). See cu_launch_attention in
 * cu_internal.h for the contract; CPU twin: cpu_attention. Batches whose items
 * all have one query token (max_nq == 1) go to the decode kernel of
 * cu_att_decode.cu when it takes the head size (cu_att_decode_ok); batches
 * with prefill chunks over a BF16 cache to the tensor-core kernel of
 * cu_att_prefill.cu (cu_att_prefill_ok); cu_att_args.kernel forces a path.
 *
 * Work decomposition: the host cuts each sequence's new tokens into items of
 * at most CU_ATT_ROWS / G consecutive query tokens (cu_att_plan); block
 * (item, kv head, split) handles the item's n_q * G query rows of the G query
 * heads that share that kv head, so each K/V element loaded from the cache
 * serves every one of them (GQA-aware), and the query tokens of a prefill
 * chunk share loads too. Rows are token-major: row r is token tok0 + r/G,
 * query head kvh*G + r%G.
 *
 * Per block: q rows live in shared memory (FP32); the item's key range
 * [0, pos_first + n_q) is walked in tiles of CU_ATT_TILE keys: load K and V
 * tiles (converted to FP32, zero beyond the context) -> scores
 * s = (q . k) / sqrt(hd), -inf where key position > the row's position
 * (causal mask) -> per-row online softmax (running max m, running sum l, a
 * warp per row, a lane per key) -> acc = acc * exp(m_old - m_new) + P V, with
 * acc in registers (thread owns elements tid + k*THREADS of [rows][hd]).
 * Memory is O(tile), never O(context^2).
 *
 * Split-K: with few blocks (decode of few sequences), grid.z splits the key
 * tiles of each item into contiguous ranges; every split writes its
 * unnormalized acc and (m, l) to the workspace, and k_att_combine merges
 * them with the usual log-sum-exp rescaling. Without splits the block writes
 * acc / l directly.
 *
 * Cache element type: C = T, or cu_fp8 (E4M3, scale 1.0) with kv_fp8 and a
 * BF16 dtype; k_attention<T, C> converts at the tile load, so everything
 * after it is the same FP32 math. The tensor-core kernel reads them too
 * (converted to BF16 while staged, cu_att_prefill.cu).
 *
 * Invariants: every cache position < pos_first + n_q of the item's sequence
 * was written (earlier calls, or this call's rope_kv launch), and the block
 * table covers it; head_dim even and <= CU_ATT_MAX_HD; G <= CU_ATT_ROWS.
 * Shared memory per block: 4 * (ROWS*(hd+1) + 2*TILE*(hd+1) + ROWS*TILE +
 * 3*ROWS) bytes (75 KB at hd 128), raised above 48 KB with
 * cudaFuncSetAttribute at each launch. Registers: the accumulator is
 * ROWS*MAX_HD/THREADS = 32 floats per thread; __launch_bounds__(256, 2) caps
 * the kernel at 128 registers so two blocks share an SM (head_dim <= 128).
 */
#include <math.h>

#include "cu_internal.h"

#define NT CU_ATT_THREADS
#define NWARPS (NT / 32)
#define TILE CU_ATT_TILE
#define ROWS CU_ATT_ROWS
/* accumulator registers per thread: ROWS * MAX_HD elements over NT threads */
#define KMAX (ROWS * CU_ATT_MAX_HD / NT)

#if TILE != 32
#error "the softmax step maps one lane to one key: CU_ATT_TILE must be 32"
#endif

int cu_att_plan(cu_att_item *items, int n_seqs, const int32_t *seq_start, const int32_t *pos0,
                int G, int *max_ctx, int *max_nq) {
    const int qt = G >= ROWS ? 1 : ROWS / G;
    int n = 0, mc = 0, mq = 0;
    for (int s = 0; s < n_seqs; s++) {
        const int len = seq_start[s + 1] - seq_start[s];
        for (int q0 = 0; q0 < len; q0 += qt) {
            const int nq = len - q0 < qt ? len - q0 : qt;
            cu_att_item it = {seq_start[s] + q0, nq, pos0[s] + q0, s};
            items[n++] = it;
            if (pos0[s] + q0 + nq > mc) mc = pos0[s] + q0 + nq;
            if (nq > mq) mq = nq;
        }
    }
    *max_ctx = mc;
    *max_nq = mq;
    return n;
}

int cu_att_choose_splits(int n_items, int n_kv, int max_ctx, int n_sm, int part_slots) {
    if (n_items <= 0 || n_kv <= 0) return 1;
    const long blocks = (long)n_items * n_kv;
    if (blocks >= n_sm) return 1;
    long s = (2L * n_sm + blocks - 1) / blocks;
    const long tiles = ((long)max_ctx + TILE - 1) / TILE;
    if (s > tiles) s = tiles;
    if (s > CU_ATT_MAX_SPLITS) s = CU_ATT_MAX_SPLITS;
    if (s > part_slots / n_items) s = part_slots / n_items;
    return s < 1 ? 1 : (int)s;
}

size_t cu_att_part_floats(int n_kv, int hd) { return (size_t)n_kv * ROWS * (size_t)(hd + 2); }

/* Split-K partial-result slots (item x split) and their byte budget. */
#define PART_SLOTS_MAX 128
#define PART_BUDGET ((size_t)64 << 20)

int cu_att_part_slots(int n_kv, int hd) {
    const size_t slots = PART_BUDGET / (cu_att_part_floats(n_kv, hd) * 4);
    return (int)(slots < 1 ? 1 : slots > PART_SLOTS_MAX ? PART_SLOTS_MAX : slots);
}

static size_t att_smem_bytes(int hd) {
    const size_t hp = (size_t)hd + 1;
    return sizeof(float) * (ROWS * hp + 2 * TILE * hp + (size_t)ROWS * TILE + 3 * ROWS);
}

template <typename T, typename C>
__global__ void __launch_bounds__(NT, 2) k_attention(cu_att_args a) {
    extern __shared__ float smem[];
    const int hd = a.hd, hp = hd + 1, G = a.n_heads / a.n_kv, bs = a.block_size;
    const int kvd = a.n_kv * hd, qd = a.n_heads * hd;
    const cu_att_item it = a.items[blockIdx.x];
    const int kvh = blockIdx.y, z = blockIdx.z;
    const int R = it.n_q * G, RH = R * hd;
    const int n_ctx = it.pos_first + it.n_q;
    float *qs = smem;                 /* [ROWS][hp] */
    float *ks = qs + ROWS * hp;       /* [TILE][hp] */
    float *vs = ks + TILE * hp;       /* [TILE][hp] */
    float *ps = vs + TILE * hp;       /* [ROWS][TILE] scores, then probabilities */
    float *m_s = ps + ROWS * TILE;    /* [ROWS] running max */
    float *l_s = m_s + ROWS;          /* [ROWS] running sum */
    float *al_s = l_s + ROWS;         /* [ROWS] rescale factor of this tile */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const float scale = 1.0f / sqrtf((float)hd);

    for (int e = tid; e < RH; e += NT) {
        const int r = e / hd, d = e - (e / hd) * hd;
        const int t = it.tok0 + r / G, h = kvh * G + r % G;
        qs[r * hp + d] = a.q[(size_t)t * a.ldq + (size_t)h * hd + d];
    }
    for (int r = tid; r < ROWS; r += NT) {
        m_s[r] = -INFINITY;
        l_s[r] = 0.0f;
    }
    float acc[KMAX];
#pragma unroll
    for (int k = 0; k < KMAX; k++) acc[k] = 0.0f;

    const int n_tiles = (n_ctx + TILE - 1) / TILE;
    const int per = (n_tiles + a.n_splits - 1) / a.n_splits;
    const int t_begin = z * per, t_end = min(n_tiles, t_begin + per);
    const int32_t *tbl = a.tables + (size_t)it.seq * a.tbl_stride;
    const C *kc = (const C *)a.k_cache + (size_t)kvh * hd;
    const C *vc = (const C *)a.v_cache + (size_t)kvh * hd;
    __syncthreads();

    for (int tile = t_begin; tile < t_end; tile++) {
        const int key0 = tile * TILE;
        for (int e = tid; e < TILE * hd; e += NT) {
            const int j = e / hd, d = e - j * hd, kp = key0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (kp < n_ctx) {
                const size_t off = ((size_t)tbl[kp / bs] * bs + (size_t)(kp % bs)) * kvd + d;
                kv = cu_tof(kc[off]);
                vv = cu_tof(vc[off]);
            }
            ks[j * hp + d] = kv;
            vs[j * hp + d] = vv;
        }
        __syncthreads();
        for (int e = tid; e < R * TILE; e += NT) {
            const int r = e / TILE, j = e % TILE;
            float s = -INFINITY;
            if (key0 + j <= it.pos_first + r / G) {
                const float *qr = qs + r * hp, *kr = ks + j * hp;
                float dot = 0.0f;
                for (int d = 0; d < hd; d++) dot += qr[d] * kr[d];
                s = dot * scale;
            }
            ps[r * TILE + j] = s;
        }
        __syncthreads();
        for (int r = warp; r < R; r += NWARPS) {
            const float s = ps[r * TILE + lane];
            const float m_old = m_s[r];
            const float m_new = fmaxf(m_old, cu_warp_max(s));
            float p = 0.0f, alpha = 1.0f;
            if (m_new != -INFINITY) {
                p = expf(s - m_new);
                alpha = expf(m_old - m_new);
            }
            const float psum = cu_warp_sum(p);
            ps[r * TILE + lane] = p;
            __syncwarp(); /* every lane has read m_s[r] before lane 0 rewrites it */
            if (lane == 0) {
                l_s[r] = l_s[r] * alpha + psum;
                m_s[r] = m_new;
                al_s[r] = alpha;
            }
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < KMAX; k++) {
            const int e = tid + k * NT;
            if (e < RH) {
                const int r = e / hd, d = e - r * hd;
                const float *pr = ps + r * TILE;
                float s = acc[k] * al_s[r];
#pragma unroll 8
                for (int j = 0; j < TILE; j++) s += pr[j] * vs[j * hp + d];
                acc[k] = s;
            }
        }
        __syncthreads();
    }

    if (a.n_splits == 1) {
        T *out = (T *)a.out;
#pragma unroll
        for (int k = 0; k < KMAX; k++) {
            const int e = tid + k * NT;
            if (e < RH) {
                const int r = e / hd, d = e - r * hd;
                const int t = it.tok0 + r / G, h = kvh * G + r % G;
                out[(size_t)t * qd + (size_t)h * hd + d] = cu_fromf<T>(acc[k] / l_s[r]);
            }
        }
    } else {
        const size_t slot = (size_t)blockIdx.x * a.n_splits + z;
        float *pa = a.part + (slot * a.n_kv + kvh) * ((size_t)ROWS * (hd + 2));
        float *pml = pa + (size_t)ROWS * hd;
#pragma unroll
        for (int k = 0; k < KMAX; k++) {
            const int e = tid + k * NT;
            if (e < RH) pa[e] = acc[k]; /* [r][d] with e = r*hd + d */
        }
        for (int r = tid; r < R; r += NT) {
            pml[2 * r] = m_s[r];
            pml[2 * r + 1] = l_s[r];
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(NT) k_att_combine(cu_att_args a) {
    const cu_att_item it = a.items[blockIdx.x];
    const int kvh = blockIdx.y, hd = a.hd, G = a.n_heads / a.n_kv, qd = a.n_heads * hd;
    const int R = it.n_q * G;
    const size_t slot_floats = (size_t)ROWS * (hd + 2);
    const float *base = a.part + ((size_t)blockIdx.x * a.n_splits * a.n_kv + kvh) * slot_floats;
    const size_t zstride = (size_t)a.n_kv * slot_floats; /* next split of the same item */
    T *out = (T *)a.out;
    for (int e = threadIdx.x; e < R * hd; e += NT) {
        const int r = e / hd, d = e - r * hd;
        float M = -INFINITY;
        for (int z = 0; z < a.n_splits; z++)
            M = fmaxf(M, base[z * zstride + (size_t)ROWS * hd + 2 * r]);
        float L = 0.0f, O = 0.0f;
        for (int z = 0; z < a.n_splits; z++) {
            const float *pa = base + z * zstride;
            const float m = pa[(size_t)ROWS * hd + 2 * r];
            if (m == -INFINITY) continue; /* empty split */
            const float w = expf(m - M);
            L += pa[(size_t)ROWS * hd + 2 * r + 1] * w;
            O += pa[e] * w;
        }
        const int t = it.tok0 + r / G, h = kvh * G + r % G;
        out[(size_t)t * qd + (size_t)h * hd + d] = cu_fromf<T>(O / L);
    }
}

int cu_att_prepare(void) {
    const int smem = (int)att_smem_bytes(CU_ATT_MAX_HD);
    CU_CHECK(cudaFuncSetAttribute(k_attention<float, float>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    CU_CHECK(cudaFuncSetAttribute(k_attention<cu_bf16, cu_bf16>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    CU_CHECK(cudaFuncSetAttribute(k_attention<cu_bf16, cu_fp8>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    CU_TRY(cu_att_decode_prepare());
    return cu_att_prefill_prepare();
}

int cu_launch_att_combine(cudaStream_t st, const cu_att_args *a, int dtype) {
    if (a->n_splits < 2 || !a->part) return NI_EINVAL;
    const dim3 grid((unsigned)a->n_items, (unsigned)a->n_kv);
    if (dtype == CU_DTYPE_FP32)
        k_att_combine<float><<<grid, NT, 0, st>>>(*a);
    else
        k_att_combine<cu_bf16><<<grid, NT, 0, st>>>(*a);
    CU_LAUNCH_CHECK(st);
    return 0;
}

template <typename T, typename C>
static int launch_att(cudaStream_t st, const cu_att_args *a, int dtype) {
    const size_t smem = att_smem_bytes(a->hd);
    /* the limit is raised outside stream capture only (a graph's launches
     * rely on cu_att_prepare having run before the capture) */
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    CU_CHECK(cudaStreamIsCapturing(st, &cs));
    if (cs == cudaStreamCaptureStatusNone)
        CU_CHECK(cudaFuncSetAttribute(k_attention<T, C>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid((unsigned)a->n_items, (unsigned)a->n_kv, (unsigned)a->n_splits);
    k_attention<T, C><<<grid, NT, smem, st>>>(*a);
    CU_LAUNCH_CHECK(st);
    if (a->n_splits > 1) CU_TRY(cu_launch_att_combine(st, a, dtype));
    return 0;
}

int cu_launch_attention(cudaStream_t st, const cu_att_args *a, int dtype) {
    if (a->n_items <= 0) return 0;
    if (a->hd <= 0 || a->hd > CU_ATT_MAX_HD || a->n_kv <= 0 || a->n_heads % a->n_kv != 0 ||
        a->n_heads / a->n_kv > ROWS || a->n_splits < 1 || (a->n_splits > 1 && !a->part))
        return NI_EINVAL;
    if (a->kv_fp8 && dtype != CU_DTYPE_BF16) return NI_EINVAL; /* E4M3 caches: BF16 only */
    const int tc = cu_att_prefill_ok(a, dtype);
    if (a->kernel == CU_ATT_TC) {
        if (!tc) return NI_EINVAL;
        return cu_launch_att_prefill(st, a, dtype); /* cu_att_prefill.cu */
    }
    if (cu_att_decode_ok(a)) return cu_launch_att_decode(st, a, dtype); /* cu_att_decode.cu */
    if (a->kernel == CU_ATT_AUTO && tc && a->max_nq > 1)
        return cu_launch_att_prefill(st, a, dtype); /* prefill chunks on tensor cores */
    if (a->kv_fp8) return launch_att<cu_bf16, cu_fp8>(st, a, dtype);
    return dtype == CU_DTYPE_FP32 ? launch_att<float, float>(st, a, dtype)
                                  : launch_att<cu_bf16, cu_bf16>(st, a, dtype);
}
