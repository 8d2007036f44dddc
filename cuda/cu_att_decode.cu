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
 * Fine chunks (cu_att_args.no_lat == 0), for small batches where a split's
 * latency is its warps' serial work: when n_splits > 1 and the unsplit grid
 * has at most CU_ATT_FINE_BLOCKS blocks, the launch takes
 * k_att_decode<..., FINE>: P = 4 lanes per key (ad_chunk::FINE, BF16 hd 64:
 * 8-key chunks, 2 K and 2 V loads per lane, a quarter of the serial work
 * per warp) and splits of ad_lo tiles (1 at BF16 hd 64); k_att_dcombine
 * gets the same lo. The backend asks for it (no_lat 0) only when every item
 * then takes one chunk per warp (cu_att_decode_fine_keys): over longer
 * splits the fine walk is 16-28 % slower than the coarse one (few loads per
 * lane in flight, a softmax round per 8 keys), so a decode graph has a fine
 * and a coarse variant per bucket. In both the first chunk's K/V loads are
 * issued before q is staged. H200: SmolLM2-shape decode steps 3.4 % (1
 * sequence) to 5.3 % (2) faster, the 1B shape 1.5-1.7 % (docs/perf.md).
 *
 * Staged coarse chunks (cu_att_args.stage == 1, NI_CUDA_ATT_STAGE=1;
 * opt-in until verified on the GPU): with 16-byte cache loads the coarse
 * launch takes k_att_decode<..., NS = 1>, whose warps copy each chunk into
 * their own 8 KB of dynamic shared memory by cp.async (L2 only) instead of
 * register loads, then read the same values back: results equal bit for
 * bit. H200 kernel benchmarks: up to 24 % faster at long contexts of 64
 * sequences, 7 % at 256 x 200 keys (1B shape), 2-5 % slower in 6 of 51
 * cells, all long contexts (docs/perf.md). The 32 KB per block need
 * cu_att_decode_prepare (the default limit is 48 KB with the static arrays).
 *
 * Split-K: keys are partitioned among splits in CU_ATT_TILE-key tiles,
 * per = max(ceil(tiles / n_splits), lo) tiles per split (k_attention's rule,
 * but lo = 4 with the coarse 32-key chunks: one chunk per warp, fewer
 * partials to merge, no idle warps; lo = ad_lo of the fine chunks, 1 at
 * BF16 hd 64), so the split factor the decode graphs fix at capture
 * (cu_att_choose_splits on max_pos) leaves the extra splits of short contexts
 * empty: such a block exits at once and writes nothing, and k_att_dcombine,
 * which recomputes the number of non-empty splits ceil(tiles / per) from the
 * item's own length, never reads them. An item with a single non-empty
 * split is normalised and written by that split's block (the combine skips
 * it). The device code is in cu_att_decode.cuh (ad_unit, ad_combine_unit),
 * shared with the persistent decode kernel. The combine computes each row's split
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
#include "cu_att_decode.cuh"

#define DT 128
#define DW (DT / 32)
/* the combine: split weights kept in shared memory */
#define CMAX 8192
/* the fine-chunk kernel takes grids of at most this many (item, kv head, row
 * group) blocks before the split: a quarter of a 132-SM device (1-4
 * sequences of the 1B / SmolLM2 shapes; at 64 sequences one split fills it) */
#define CU_ATT_FINE_BLOCKS 32

/* NS = 1 (cu_att_args.stage) takes the coarse chunks only, and only with
 * 16-byte loads: the fine ones are a single chunk per warp (nothing to
 * overlap), and cp.async has no 8-byte L2-only form. */
template <typename C, bool FINE> constexpr bool ad_can_stage() {
    return !FINE && sizeof(typename dvec<C>::L) == 16;
}

template <typename T, typename C, int R, int HD, bool FINE, int NS>
__global__ void __launch_bounds__(DT, R >= 8 ? 2 : 3) k_att_decode(cu_att_args a) {
    constexpr int CK = FINE ? ad_chunk<C, HD>::FINE : ad_chunk<C, HD>::COARSE;
    extern __shared__ uint4 ad_stg[];
    cu_pdl_trigger();
    cu_pdl_wait(); /* first, on every path: q and the cache are activations */
    ad_unit<T, C, R, HD, DW, CK, false, NS>(a, blockIdx.x, blockIdx.y, blockIdx.z,
                                            ad_lo(DW, CK, FINE), ad_stg);
}

/* Dynamic shared memory of k_att_decode<T, C, R, HD, false, 1>: 32 KB. */
template <typename C, int HD> constexpr size_t ad_smem() {
    return ad_stage<C, HD, DW, ad_chunk<C, HD>::COARSE, 1>::BYTES;
}

template <typename T>
__global__ void __launch_bounds__(CT) k_att_dcombine(cu_att_args a, int lo) {
    cu_pdl_trigger();
    cu_pdl_wait(); /* before the early exits: see cu_launch_k */
    ad_combine_unit<T, CMAX>(a, blockIdx.x, blockIdx.y, blockIdx.z, lo);
}

/* Benchmarks only (cu_att_decode_enable): 0 sends decode batches to k_attention. */
static int g_enabled = 1;

void cu_att_decode_enable(int on) { g_enabled = on != 0; }

/* Benchmarks and tests (cu_att_decode_fp8_wide): 1 reads E4M3 caches with
 * 16-byte loads (cu_fp8), 0 with 8-byte loads (cu_fp8_l8), -1 (default) by
 * head_dim (fp8_wide_for). */
static int g_fp8_wide = -1;

void cu_att_decode_fp8_wide(int on) { g_fp8_wide = on < 0 ? -1 : on != 0; }

static bool fp8_wide_for(int head_dim) { return g_fp8_wide < 0 ? head_dim <= 64 : g_fp8_wide; }

int cu_att_decode_ok(const cu_att_args *a) {
    return g_enabled && a->max_nq == 1 &&
           (a->hd == 16 || a->hd == 32 || a->hd == 64 || a->hd == 128) &&
           (uintptr_t)a->k_cache % 16 == 0 && (uintptr_t)a->v_cache % 16 == 0;
}

/* Fine chunks: asked for, split, and an unsplit grid that is a small
 * fraction of the device. */
static bool fine_grid(const cu_att_args *a, int nrg) {
    return !a->no_lat && a->n_splits > 1 && (long)a->n_items * a->n_kv * nrg <= CU_ATT_FINE_BLOCKS;
}

int cu_att_decode_fine_keys(const cu_att_args *a, int dtype) {
    if (!cu_att_decode_ok(a) || a->n_kv <= 0 || a->n_heads % a->n_kv) return 0;
    const int G = a->n_heads / a->n_kv, R = ad_rows(G);
    if (!fine_grid(a, (G + R - 1) / R)) return 0;
    /* a row's loads (dvec: 16 bytes, E4M3 8 with the narrow loads) */
    const int row_bytes = a->hd * (a->kv_fp8 ? 1 : dtype == CU_DTYPE_FP32 ? 4 : 2);
    const int nch = row_bytes / (a->kv_fp8 && !fp8_wide_for(a->hd) ? 8 : 16);
    return a->n_splits * ad_lo(DW, ad_fine_ck(nch), true) * CU_ATT_TILE;
}

template <typename T, typename C, int R, int HD>
static int launch_dec(cudaStream_t st, const cu_att_args *a) {
    const int G = a->n_heads / a->n_kv, nrg = (G + R - 1) / R;
    const dim3 grid((unsigned)a->n_items, (unsigned)(a->n_kv * nrg), (unsigned)a->n_splits);
    const bool fine = fine_grid(a, nrg);
    if (fine)
        CU_CHECK(cu_launch_k(k_att_decode<T, C, R, HD, true, 0>, grid, DT, 0, st, a->pdl, *a));
    else if constexpr (ad_can_stage<C, false>()) {
        if (a->stage)
            CU_CHECK(cu_launch_k(k_att_decode<T, C, R, HD, false, 1>, grid, DT,
                                 ad_smem<C, HD>(), st, a->pdl, *a));
        else
            CU_CHECK(cu_launch_k(k_att_decode<T, C, R, HD, false, 0>, grid, DT, 0, st, a->pdl,
                                 *a));
    } else
        CU_CHECK(cu_launch_k(k_att_decode<T, C, R, HD, false, 0>, grid, DT, 0, st, a->pdl, *a));
    CU_LAUNCH_CHECK(st);
    if (a->n_splits > 1) {
        const int lo = fine ? ad_lo(DW, ad_chunk<C, HD>::FINE, true)
                            : ad_lo(DW, ad_chunk<C, HD>::COARSE, false);
        const unsigned slices = (unsigned)((G * a->hd + CT - 1) / CT);
        const dim3 cgrid((unsigned)a->n_items, (unsigned)a->n_kv, slices);
        CU_CHECK(cu_launch_k(k_att_dcombine<T>, cgrid, CT, 0, st, a->pdl, *a, lo));
        CU_LAUNCH_CHECK(st);
    }
    return 0;
}

/* Rows per block: ad_rows (G > 8: several row groups, each re-reading the
 * kv head's keys). */
template <typename T, typename C, int HD>
static int launch_hd(cudaStream_t st, const cu_att_args *a) {
    switch (ad_rows(a->n_heads / a->n_kv)) {
    case 1: return launch_dec<T, C, 1, HD>(st, a);
    case 2: return launch_dec<T, C, 2, HD>(st, a);
    case 4: return launch_dec<T, C, 4, HD>(st, a);
    default: return launch_dec<T, C, 8, HD>(st, a);
    }
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

/* Raises the dynamic shared-memory limit of every staged k_att_decode the
 * dispatch below can launch: a chunk per warp is 32 KB per block, which with
 * the static arrays of R = 8 passes the default 48 KB. Before any capture
 * (cu_att_prepare calls it). */
template <typename T, typename C, int R, int HD> static int prep_one(void) {
    if constexpr (ad_can_stage<C, false>())
        CU_CHECK(cudaFuncSetAttribute(k_att_decode<T, C, R, HD, false, 1>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)ad_smem<C, HD>()));
    return 0;
}
template <typename T, typename C, int HD> static int prep_hd(void) {
    CU_TRY((prep_one<T, C, 1, HD>()));
    CU_TRY((prep_one<T, C, 2, HD>()));
    CU_TRY((prep_one<T, C, 4, HD>()));
    return prep_one<T, C, 8, HD>();
}
template <typename T, typename C> static int prep_any_hd(void) {
    CU_TRY((prep_hd<T, C, 16>()));
    CU_TRY((prep_hd<T, C, 32>()));
    CU_TRY((prep_hd<T, C, 64>()));
    return prep_hd<T, C, 128>();
}

int cu_att_decode_prepare(void) {
    CU_TRY((prep_any_hd<float, float>()));
    CU_TRY((prep_any_hd<cu_bf16, cu_bf16>()));
    return prep_any_hd<cu_bf16, cu_fp8>(); /* cu_fp8_l8 is never staged */
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
