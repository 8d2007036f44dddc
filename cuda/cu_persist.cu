/*
 * cu_persist.cu - the persistent decode kernel: every layer of a decode step
 * of one sequence (one token) in a single cooperative launch.
 *
 * Why: a one-token step of a small model is a chain of ~5 short kernels per
 * layer (QKV, attention, wo, gate/up, down; k_gemv and k_att_decode), each
 * moving a few MB at most. On the H200 such a kernel costs 3-7 us however
 * small it is (launch, ramp-up of its blocks, DRAM latency of its first
 * loads, drain), so SmolLM2-135M's 30 layers took ~0.6 ms per token at ~4 %
 * of the memory roofline, and even the 1B shape's small projections ran at
 * ~1 TB/s. Here the grid stays resident for the whole stack and the phases
 * are separated by grid barriers (0.65-0.8 us each, measured), and each
 * block issues the first weight loads of its next projection, and the L2
 * prefetch of its attention rows, before it waits at the barrier (weights
 * and earlier cache rows do not depend on the previous phase). Measured on
 * the H200 (docs/perf.md): the step 4-8 % faster on the SmolLM2 shape,
 * neutral on the 1B shape, but not yet faster in `nanoinfer bench`, so the
 * backend runs it only when asked (eng_backend_config.persist).
 *
 * Phases of layer l (all blocks take part in each, grid-stride over its work;
 * | is a grid barrier):
 *   QKV: k_gemv's ROPE body (RMSNorm prologue of x, q rotated into qkv,
 *        k rotated and v stored to the cache slot)                         |
 *   attention: k_att_decode's blocks (kv head x row group, split), computed
 *        by 8 warps; coarse chunks (p.fine 0): up to min_tiles key tiles
 *        the context is one split, written directly, else splits of 8
 *        tiles (one chunk a warp); fine chunks (p.fine, the backend's
 *        default with the per-op fine chunks): splits of 2 tiles (8 warps
 *        x 8 keys), a unit per block, then the combine                  |
 *   [combine: k_att_dcombine's blocks, only when the item has > 1
 *        non-empty split (block-uniform test on the item's length)         |]
 *   wo:  x += att wo^T (k_gemv PLAIN, accumulate)                          |
 *   gate/up: RMSNorm prologue, SwiGLU epilogue into act                    |
 *   down: x += act w_down^T                                                | (next layer)
 * The code of each phase is the standalone kernels' own (cu_gemv.cuh,
 * cu_att_decode.cuh) with the block index and count passed in, so the two
 * paths compute the same function (the attention's split sizes differ, so
 * its FP32 summation order, and a BF16 rounding of its output may flip).
 *
 * Barrier: one counter in global memory; barrier k (k-th of this launch)
 * completes when the counter reaches k * gridDim.x. A block arrives (block
 * sync, thread 0: red.release add) and later waits (thread 0
 * spins on an acquire load, then block sync). A second counter counts the
 * blocks that have passed their last barrier; the last one resets both, so
 * the next launch (stream order) starts from zero. Cooperative launch
 * guarantees that the whole grid is resident (else the launch fails), which
 * the spinning needs. Activations written in the kernel are never read
 * through the read-only path (the cache loads of ad_unit are L2-coherent
 * here: COH).
 *
 * Scope (cu_persist_grid): BF16 weights and cache, no int8, no qk-norm,
 * head_dim 16, 32, 64 or 128 with G = n_heads / n_kv <= 8, one sequence of
 * at most CU_PS_MAX_CTX keys; the backend keeps a second bucket-1 decode
 * graph for it and one-token general steps use it too. Embed
 * before and LM head after stay separate launches. CPU twin: the per-op
 * path (same ops, cpu_* twins); test_persist (test_cuda_graph) compares
 * the two.
 */
#include "cu_internal.h"
#include "cu_att_decode.cuh"
#include "cu_gemv.cuh"

#define PS_THREADS GV_THREADS
#define PS_WARPS (PS_THREADS / 32)
/* split weights of the combine in shared memory: 64 splits x G <= 8 */
#define PS_WZ 512
/* blocks per SM at most (registers: __launch_bounds__ below) */
#define PS_PER_SM 1
/* 16-byte loads per lane and chunk of the wo / down projections (gate/up and
 * QKV read two rows per warp and keep k_gemv's 4) */
#define PS_UNROLL 8

struct ps_bar {
    unsigned *count;
    unsigned n;   /* blocks in the grid */
    unsigned gen; /* barriers this block has arrived at */
};

__device__ __forceinline__ void ps_arrive(ps_bar &b) {
    __syncthreads(); /* the block's writes of this phase are done */
    if (threadIdx.x == 0) {
        /* release: the block's writes (ordered before by the block sync) are
         * visible to whoever acquires the count */
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(b.count) : "memory");
    }
    b.gen++;
}

__device__ __forceinline__ void ps_wait(const ps_bar &b) {
    if (threadIdx.x == 0) {
        const unsigned target = b.gen * b.n;
        unsigned v;
        for (;;) {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(b.count) : "memory");
            if (v >= target) break;
        }
    }
    __syncthreads();
}

template <int R, int HD, bool FINE>
__global__ void __launch_bounds__(PS_THREADS, PS_PER_SM) k_persist(cu_persist_args p) {
    constexpr int CK = FINE ? ad_chunk<cu_bf16, HD>::FINE : ad_chunk<cu_bf16, HD>::COARSE;
    constexpr int LO = ad_lo(PS_WARPS, CK, FINE); /* least key tiles per split */
    ps_bar bar = {p.bar, gridDim.x, 0};
    const int bid = blockIdx.x, nb = gridDim.x;
    const int qd = p.n_heads * HD, kvd = p.n_kv * HD, qkvd = qd + 2 * kvd;
    const int G = p.n_heads / p.n_kv, nrg = (G + R - 1) / R;
    const cu_att_item it = p.items[0];
    const int n_ctx = it.pos_first + 1;
    const int per = dec_per(n_ctx, p.n_splits, LO, p.min_tiles);
    const bool comb = it.n_q > 0 && ad_nz(n_ctx, per) > 1;
    const int32_t *tbl = p.tables + (size_t)it.seq * p.tbl_stride;
    const int att_units = p.n_kv * nrg * p.n_splits;
    const int comb_units = p.n_kv * ((G * HD + CT - 1) / CT);

    for (int l = 0; l < p.n_layers; l++) {
        const cu_persist_layer L = p.layers[l];

        cu_gemv_args g = {};
        g.w = L.wqkv;
        g.n = 1;
        g.in = p.dim;
        g.out = qkvd;
        g.xf = p.x;
        g.norm_w = L.attn_norm;
        g.eps = p.eps;
        g.ldx = p.dim;
        g.y = p.qkv;
        g.ldy = qkvd;
        g.rope_on = 1;
        g.rope.pos = p.pos;
        g.rope.slot = p.slot;
        g.rope.cos_tab = p.cos_tab;
        g.rope.sin_tab = p.sin_tab;
        g.rope.k_cache = L.k_cache;
        g.rope.v_cache = L.v_cache;
        g.rope.n = 1;
        g.rope.n_heads = p.n_heads;
        g.rope.n_kv = p.n_kv;
        g.rope.hd = HD;
        g.rope.interleaved = p.interleaved;
        gv_run<1, GV_ROPE>(g, bid, nb, [&] {
            if (l > 0) ps_wait(bar); /* layer 0: x is the embedding, done before the launch */
        });
        ps_arrive(bar);
        /* While the others finish the QKV phase: the cache rows of this
         * block's attention keys into L2 (the earlier positions do not depend
         * on this step; the newest row is written through L2 anyway). */
        for (int u = bid; it.n_q > 0 && u < att_units; u += nb) {
            const int kvh = (u % (p.n_kv * nrg)) / nrg,
                      k0 = (u / (p.n_kv * nrg)) * per * CU_ATT_TILE;
            if (k0 >= n_ctx) break; /* u grows with the split index */
            const int k1 = min(n_ctx, k0 + per * CU_ATT_TILE);
            for (int key = k0 + (int)threadIdx.x; key < k1; key += PS_THREADS) {
                const size_t row =
                    (size_t)(tbl[key / p.block_size] * p.block_size + key % p.block_size) * kvd +
                    (size_t)kvh * HD;
                const char *kr = (const char *)((const cu_bf16 *)L.k_cache + row);
                const char *vr = (const char *)((const cu_bf16 *)L.v_cache + row);
#pragma unroll
                for (int o = 0; o < HD * 2; o += 128) {
                    asm volatile("prefetch.global.L2 [%0];" ::"l"(kr + o));
                    asm volatile("prefetch.global.L2 [%0];" ::"l"(vr + o));
                }
            }
        }

        cu_att_args a = {};
        a.out = p.att;
        a.q = p.qkv;
        a.ldq = qkvd;
        a.k_cache = L.k_cache;
        a.v_cache = L.v_cache;
        a.items = p.items;
        a.tables = p.tables;
        a.tbl_stride = p.tbl_stride;
        a.n_items = 1;
        a.n_splits = p.n_splits;
        a.part = p.part;
        a.n_heads = p.n_heads;
        a.n_kv = p.n_kv;
        a.hd = HD;
        a.block_size = p.block_size;
        a.max_nq = 1;
        a.min_tiles = p.min_tiles;
        ps_wait(bar);
        for (int u = bid; u < att_units; u += nb) {
            ad_unit<cu_bf16, cu_bf16, R, HD, PS_WARPS, CK, true>(a, 0, u % (p.n_kv * nrg),
                                                                 u / (p.n_kv * nrg), LO);
            __syncthreads(); /* the unit's shared memory is free for the next one */
        }
        ps_arrive(bar);
        if (comb) { /* block-uniform: every block takes this barrier or none does */
            ps_wait(bar);
            for (int u = bid; u < comb_units; u += nb) {
                ad_combine_unit<cu_bf16, PS_WZ>(a, 0, u % p.n_kv, u / p.n_kv, LO);
                __syncthreads();
            }
            ps_arrive(bar);
        }

        g = cu_gemv_args{};
        g.w = L.wo;
        g.n = 1;
        g.in = qd;
        g.out = p.dim;
        g.x = p.att;
        g.ldx = qd;
        g.y = p.x;
        g.ldy = p.dim;
        g.accumulate = 1;
        gv_run<1, GV_PLAIN, PS_UNROLL>(g, bid, nb, [&] { ps_wait(bar); });
        ps_arrive(bar);

        g = cu_gemv_args{};
        g.w = L.wgu;
        g.n = 1;
        g.in = p.dim;
        g.out = p.hidden;
        g.xf = p.x;
        g.norm_w = L.ffn_norm;
        g.eps = p.eps;
        g.ldx = p.dim;
        g.y = p.act;
        g.ldy = p.hidden;
        g.swiglu = 1;
        gv_run<1, GV_SWIGLU>(g, bid, nb, [&] { ps_wait(bar); });
        ps_arrive(bar);

        g = cu_gemv_args{};
        g.w = L.wdown;
        g.n = 1;
        g.in = p.hidden;
        g.out = p.dim;
        g.x = p.act;
        g.ldx = p.hidden;
        g.y = p.x;
        g.ldy = p.dim;
        g.accumulate = 1;
        gv_run<1, GV_PLAIN, PS_UNROLL>(g, bid, nb, [&] { ps_wait(bar); });
        if (l + 1 < p.n_layers) ps_arrive(bar);
    }
    /* every block is past its last wait once it gets here: the last one to
     * arrive resets the counters for the next launch */
    __syncthreads();
    if (threadIdx.x == 0 && atomicAdd(p.bar + 1, 1u) == gridDim.x - 1) {
        atomicExch(p.bar, 0u);
        atomicExch(p.bar + 1, 0u);
    }
}

typedef void (*ps_kernel)(cu_persist_args);

/* The instantiation for (G, head_dim, fine), or NULL: R is G rounded up to
 * 1, 2, 4 or 8 (k_att_decode's row groups). */
static ps_kernel ps_pick(int G, int hd, int fine) {
    const int r = G <= 8 ? ad_rows(G) : 0;
#define PS_CASE(RR, H)                                                                             \
    if (r == RR && hd == H) return fine ? k_persist<RR, H, true> : k_persist<RR, H, false>
    PS_CASE(1, 16);
    PS_CASE(2, 16);
    PS_CASE(4, 16);
    PS_CASE(1, 32);
    PS_CASE(2, 32);
    PS_CASE(4, 32);
    PS_CASE(1, 64);
    PS_CASE(2, 64);
    PS_CASE(4, 64);
    PS_CASE(8, 64);
    PS_CASE(4, 128);
    PS_CASE(8, 128);
#undef PS_CASE
    return NULL;
}

static size_t ps_smem(const cu_persist_args *p) {
    int in = p->dim;
    if (p->hidden > in) in = p->hidden;
    if (p->n_heads * p->hd > in) in = p->n_heads * p->hd;
    return (size_t)in * sizeof(cu_bf16); /* gv_stage of one row */
}

/* The shape checks of cu_persist_grid (what the kernel's phases assume). */
static int ps_shape_ok(const cu_persist_args *p) {
    if (p->n_layers < 1 || p->n_kv <= 0 || p->n_heads % p->n_kv ||
        !ps_pick(p->n_heads / p->n_kv, p->hd, p->fine))
        return 0;
    return p->dim % 8 == 0 && p->hidden % 8 == 0 && ps_smem(p) <= GV_MAX_SMEM;
}

int cu_persist_grid(const cu_persist_args *p, const cu_layer_w *layers, int n_sm, int *grid) {
    *grid = 0;
    if (!ps_shape_ok(p) || n_sm < 1) return NI_EUNSUPPORTED;
    const int qd = p->n_heads * p->hd, qkvd = qd + 2 * p->n_kv * p->hd;
    for (int l = 0; l < p->n_layers; l++) { /* k_gemv's own shape and alignment rules */
        const cu_layer_w *L = &layers[l];
        if (!cu_gemv_ok(1, p->dim, qkvd, L->wqkv, NULL, 0) ||
            !cu_gemv_ok(1, qd, p->dim, L->wo, NULL, 0) ||
            !cu_gemv_ok(1, p->dim, p->hidden, L->wgu, NULL, 0) ||
            !cu_gemv_ok(1, p->hidden, p->dim, L->wdown, NULL, 0) || L->q_norm || L->s_qkv)
            return NI_EUNSUPPORTED;
    }
    int dev = 0, coop = 0;
    CU_CHECK(cudaGetDevice(&dev));
    CU_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
    if (!coop) return NI_EUNSUPPORTED;
    const ps_kernel k = ps_pick(p->n_heads / p->n_kv, p->hd, p->fine);
    const size_t smem = ps_smem(p);
    CU_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    int per = 0;
    CU_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, k, PS_THREADS, smem));
    if (per < 1) return NI_EUNSUPPORTED;
    if (per > PS_PER_SM) per = PS_PER_SM;
    *grid = per * n_sm;
    return 0;
}

int cu_launch_persist(cudaStream_t st, const cu_persist_args *p, int grid) {
    if (grid <= 0 || !ps_shape_ok(p) || p->n_splits < 1 || p->min_tiles < 0 || !p->bar ||
        !p->layers)
        return NI_EINVAL;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)grid);
    cfg.blockDim = dim3(PS_THREADS);
    cfg.dynamicSmemBytes = ps_smem(p);
    cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeCooperative;
    at[0].val.cooperative = 1;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    CU_CHECK(cudaLaunchKernelEx(&cfg, ps_pick(p->n_heads / p->n_kv, p->hd, p->fine), *p));
    CU_LAUNCH_CHECK(st);
    return 0;
}
