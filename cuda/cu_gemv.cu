/*
 * cu_gemv.cu - weight-streaming GEMV for decode-sized batches (n <= 8
 * activation rows, BF16 weights), with the layer's neighbouring element-wise
 * work fused in: RMSNorm in the prologue, residual add or SwiGLU in the
 * epilogue (see cu_launch_gemv in cu_internal.h).
 *
 * Why: at n <= 8 a projection is a pure weight read (every weight is used n
 * times), so its time is bytes / bandwidth plus launch overhead. cuBLAS
 * reaches ~1-2 TB/s on the small matrices of a 1B model, and the separate
 * RMSNorm and SwiGLU launches around it cost as much as the GEMMs at that
 * size. One launch per projection, streaming weights at close to copy
 * bandwidth, replaces rmsnorm + GEMM (+ swiglu) with one kernel.
 *
 * Design: a block of GV_THREADS threads first stages the n input rows in
 * shared memory as BF16 (NB x in, NB = n rounded up to 1/2/4/8; missing rows
 * zero): either copied from a BF16 activation buffer, or normalised from the
 * FP32 residual stream (sum of squares per row reduced over the block, then
 * x * (1/sqrt(ss/in + eps)) * w rounded to BF16: the same math as k_rmsnorm,
 * so the input equals what the unfused path hands cuBLAS up to the FP32
 * summation order of ss). Then each warp owns one output row at a time
 * (grid-stride over rows): lanes stream the weight row with 16-byte
 * non-allocating loads, GV_UNROLL loads in flight per lane, FMA against the
 * staged rows (FP32 accumulation), butterfly-reduce across the warp, and
 * lane r writes row r's result: y = acc, y += acc (the residual add), or,
 * with SwiGLU, the warp reads the gate row o and the up row hidden + o of
 * wgu and writes act[r][o] = bf16(silu(g) * u) (k_swiglu's formula).
 *
 * ROPE mode (the QKV projection of models without qk-norm): a warp owns the
 * two weight rows of one RoPE pair of one head (SwiGLU's two-row loop), and
 * its epilogue rotates them (k_rope_kv's cos/sin tables) into y for q heads,
 * or into the cache slot (BF16, or E4M3 with rope.kv_fp8) for k heads; v
 * heads go to the cache as they are. With PDL the kernel waits for its predecessor before the prologue and
 * releases its successor at the end (cu_launch_k in cu_internal.h).
 *
 * The grid is what the SMs hold at once (register occupancy, at most 4
 * blocks per SM): more blocks would repeat the prologue (each block reads
 * its n input rows from L2) without adding bandwidth, and blocks beyond the
 * resident ones would run as a second wave. Invariants: in % 8 == 0; weights, the BF16 input rows and ldx
 * 16-byte aligned / multiples of 8 (cu_gemv_ok checks them); with a row
 * gather the rows named are < the residual's rows. CPU twin: cpu_rmsnorm +
 * cpu_matmul (+ cpu_swiglu), test_cuda_ops.
 */
#include <stdint.h>

#include "cu_internal.h"
#include "cu_gemv.cuh"

template <int NB, int MODE>
__global__ void __launch_bounds__(GV_THREADS) k_gemv(cu_gemv_args a) {
    /* PDL: wait for the previous kernel before reading activations (after the
     * first weight chunk is in flight); this block's dependents are released
     * only at its end. Released at the end, not the start: measured on the
     * H200 (docs/perf.md), a next kernel resident from the start (or an L2
     * prefetch of its weights before its wait) slowed the 1B shape's decode by
     * 8-15 %, while a release at the end keeps the launch latency hidden and
     * costs nothing. */
    gv_run<NB, MODE>(a, blockIdx.x, gridDim.x, [&] {
        if (a.pdl) cu_pdl_wait();
    });
    if (a.pdl) cu_pdl_trigger();
}

/* ---- tensor-core variant for 3..8 rows ------------------------------------------
 * The FP32-FMA kernel above is bound by its FMAs from 4 rows on; here one
 * mma.sync.m16n8k16 (BF16 in, FP32 accumulate) does 16 output rows x 8
 * activation rows x 16 inputs. A block owns a 16-row tile of W; its 8 warps
 * split the inputs into 32-wide k-blocks (warp w takes kb = w, w + 8, ...),
 * then the partial tiles are summed through shared memory and warp 0 runs
 * the epilogue. Loads stay 16-byte: lane (g = lane / 4, t = lane % 4) reads
 * W[row g][kb*32 + 8t .. +8) and W[row g + 8][same], and the 8 values feed
 * two MMAs. The dot product does not care which logical k a memory k is
 * assigned to as long as A and B agree, so step s uses words 2s and 2s + 1
 * of both loads as the fragment's k pairs (2t, 2t+1) and (2t+8, 2t+9), and
 * the B fragment (inputs, n = g) takes the same words of
 * xs[g][kb*32 + 8t .. +8). Rows of xs are padded by 16 bytes so the 8 rows g
 * read distinct banks. */
#define GT_KB 32 /* inputs per k-block */

__device__ __forceinline__ void gt_mma(float *c, uint32_t a0, uint32_t a1, uint32_t a2,
                                       uint32_t a3, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* c += the two MMAs of one k-block from the row-g / row-g+8 loads and x. */
__device__ __forceinline__ void gt_kblock(float *c, uint4 wg, uint4 wg8, uint4 x) {
    gt_mma(c, wg.x, wg8.x, wg.y, wg8.y, x.x, x.y);
    gt_mma(c, wg.z, wg8.z, wg.w, wg8.w, x.z, x.w);
}

template <bool SW>
__global__ void __launch_bounds__(GV_THREADS) k_gemv_tc(cu_gemv_args a) {
    extern __shared__ uint4 gv_smem[];
    cu_bf16 *xs = (cu_bf16 *)gv_smem;
    const int ld8 = a.in / 8 + 1;
    gv_stage<8>(a, xs, ld8);
    float *red = (float *)(gv_smem + 8 * ld8); /* [GV_WARPS][SW ? 2 : 1][32][4] */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int n_kb = (a.in + GT_KB - 1) / GT_KB, n_tiles = (a.out + 15) / 16;
    const uint4 *xs4 = (const uint4 *)xs;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const int r0 = tile * 16 + g, r1 = r0 + 8;
        /* rows past the end read row 0 (always valid) and are never stored */
        const cu_bf16 *w0 = a.w + (size_t)(r0 < a.out ? r0 : 0) * a.in;
        const cu_bf16 *w1 = a.w + (size_t)(r1 < a.out ? r1 : 0) * a.in;
        const cu_bf16 *u0 = a.w + (size_t)(a.out + (r0 < a.out ? r0 : 0)) * a.in;
        const cu_bf16 *u1 = a.w + (size_t)(a.out + (r1 < a.out ? r1 : 0)) * a.in;
        float c[4] = {0, 0, 0, 0}, cu[4] = {0, 0, 0, 0};
        for (int kb = warp; kb < n_kb; kb += 2 * GV_WARPS) {
            const int k0 = kb * GT_KB + 8 * t, k1 = k0 + GV_WARPS * GT_KB;
            const bool ok0 = k0 < a.in, ok1 = kb + GV_WARPS < n_kb && k1 < a.in;
            const uint4 a00 = ok0 ? gv_ld_stream((const uint4 *)(w0 + k0)) : zero;
            const uint4 a01 = ok0 ? gv_ld_stream((const uint4 *)(w1 + k0)) : zero;
            const uint4 a10 = ok1 ? gv_ld_stream((const uint4 *)(w0 + k1)) : zero;
            const uint4 a11 = ok1 ? gv_ld_stream((const uint4 *)(w1 + k1)) : zero;
            uint4 b00 = zero, b01 = zero, b10 = zero, b11 = zero;
            if (SW) {
                b00 = ok0 ? gv_ld_stream((const uint4 *)(u0 + k0)) : zero;
                b01 = ok0 ? gv_ld_stream((const uint4 *)(u1 + k0)) : zero;
                b10 = ok1 ? gv_ld_stream((const uint4 *)(u0 + k1)) : zero;
                b11 = ok1 ? gv_ld_stream((const uint4 *)(u1 + k1)) : zero;
            }
            const uint4 x0 = ok0 ? xs4[g * ld8 + k0 / 8] : zero;
            const uint4 x1 = ok1 ? xs4[g * ld8 + k1 / 8] : zero;
            gt_kblock(c, a00, a01, x0);
            gt_kblock(c, a10, a11, x1);
            if (SW) {
                gt_kblock(cu, b00, b01, x0);
                gt_kblock(cu, b10, b11, x1);
            }
        }
        float *rw = red + (size_t)warp * (SW ? 2 : 1) * 128;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            rw[lane * 4 + i] = c[i];
            if (SW) rw[128 + lane * 4 + i] = cu[i];
        }
        __syncthreads();
        if (warp == 0) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float s = 0.0f, su = 0.0f;
                for (int w = 0; w < GV_WARPS; w++) {
                    s += red[(size_t)w * (SW ? 2 : 1) * 128 + lane * 4 + i];
                    if (SW) su += red[(size_t)w * 256 + 128 + lane * 4 + i];
                }
                /* c[0], c[1]: row g, inputs 2t, 2t+1; c[2], c[3]: row g + 8 */
                const int row = i < 2 ? r0 : r1, col = 2 * t + (i & 1);
                if (row < a.out && col < a.n) {
                    if (SW) {
                        cu_bf16 *y = (cu_bf16 *)a.y + (size_t)col * a.ldy + row;
                        *y = cu_fromf<cu_bf16>(s / (1.0f + expf(-s)) * su);
                    } else {
                        float *y = (float *)a.y + (size_t)col * a.ldy + row;
                        *y = a.accumulate ? *y + s : s;
                    }
                }
            }
        }
        __syncthreads();
    }
}

static size_t gt_smem_bytes(int in, bool sw) {
    return 8 * ((size_t)in / 8 + 1) * 16 + (size_t)GV_WARPS * (sw ? 2 : 1) * 128 * 4;
}

static size_t gv_nb(int n) { return n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : 8; }

static size_t gv_smem_bytes(int n, int in) { return gv_nb(n) * (size_t)in * sizeof(cu_bf16); }

static bool gv_aligned(const void *p) { return ((uintptr_t)p & 15u) == 0; }

int cu_gemv_ok(int n, int in, int out, const void *w, const void *x, int ldx) {
    if (n < 1 || n > CU_GEMV_MAX_ROWS || in <= 0 || out <= 0 || in % 8) return 0;
    if (gv_smem_bytes(n, in) > GV_MAX_SMEM || gt_smem_bytes(in, true) > GV_MAX_SMEM ||
        !gv_aligned(w))
        return 0;
    if (x && (!gv_aligned(x) || ldx % 8)) return 0;
    return 1;
}

/* Blocks of k_gemv<NB, MODE> one SM holds at once as far as registers and
 * threads allow ([log2 NB][MODE], from cu_gemv_prepare; 0 = unknown). The
 * grid is sized to what is resident: a block that has to wait for a slot
 * is a second wave, which doubles the latency of a short kernel (measured
 * on the H200: the LM head lost 25 % when its kernel's registers went from
 * 4 to 3 blocks per SM under a fixed grid of 4 per SM). */
static int gv_occ[4][3];

static int gv_nb_index(int nb) { return nb <= 1 ? 0 : nb <= 2 ? 1 : nb <= 4 ? 2 : 3; }

template <int NB, int MODE> static int gv_raise_smem(void) {
    CU_CHECK(cudaFuncSetAttribute(k_gemv<NB, MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  GV_MAX_SMEM));
    int b = 0;
    CU_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, k_gemv<NB, MODE>, GV_THREADS, 0));
    gv_occ[gv_nb_index(NB)][MODE] = b;
    return 0;
}

template <int MODE> static int gv_raise_mode(void) {
    CU_TRY((gv_raise_smem<1, MODE>()));
    CU_TRY((gv_raise_smem<2, MODE>()));
    CU_TRY((gv_raise_smem<4, MODE>()));
    CU_TRY((gv_raise_smem<8, MODE>()));
    return 0;
}

/* Resident blocks per SM for a launch of mode with smem bytes of staged
 * input: the register/thread bound, then the shared-memory one (228 KB per
 * SM on sm_90, 1 KB of it reserved per block). */
static long gv_blocks_per_sm(int nb, int mode, size_t smem) {
    long b = gv_occ[gv_nb_index(nb)][mode];
    if (b <= 0) b = 2; /* not prepared: the old default */
    const long by_smem = (long)(228 * 1024) / (long)(smem + 1024);
    if (b > by_smem) b = by_smem;
    return b < 1 ? 1 : b;
}

int cu_gemv_prepare(void) {
    CU_TRY(gv_raise_mode<GV_PLAIN>());
    CU_TRY(gv_raise_mode<GV_SWIGLU>());
    CU_TRY(gv_raise_mode<GV_ROPE>());
    CU_CHECK(cudaFuncSetAttribute(k_gemv_tc<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  GV_MAX_SMEM));
    CU_CHECK(cudaFuncSetAttribute(k_gemv_tc<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  GV_MAX_SMEM));
    return 0;
}

template <int MODE>
static cudaError_t gv_launch(cudaStream_t st, const cu_gemv_args &a, unsigned grid,
                             size_t smem) {
    const int p = a.pdl;
    switch (gv_nb(a.n)) {
    case 1: return cu_launch_k(k_gemv<1, MODE>, grid, GV_THREADS, smem, st, p, a);
    case 2: return cu_launch_k(k_gemv<2, MODE>, grid, GV_THREADS, smem, st, p, a);
    case 4: return cu_launch_k(k_gemv<4, MODE>, grid, GV_THREADS, smem, st, p, a);
    default: return cu_launch_k(k_gemv<8, MODE>, grid, GV_THREADS, smem, st, p, a);
    }
}

int cu_launch_gemv(cudaStream_t st, const cu_gemv_args *a, int n_sm) {
    if (a->n <= 0 || a->out <= 0) return 0;
    if (!cu_gemv_ok(a->n, a->in, a->out, a->w, a->xf ? NULL : a->x, a->ldx) || !a->y ||
        (a->xf && (!a->norm_w || a->ldx % 4 || !gv_aligned(a->xf) || !gv_aligned(a->norm_w))) ||
        (!a->xf && !a->x) || (a->swiglu && a->accumulate))
        return NI_EINVAL;
    if (a->rope_on) {
        const cu_rope_args &R = a->rope;
        if (a->n > CU_GEMV_FMA_ROWS || a->swiglu || a->accumulate || R.hd <= 0 || R.hd % 2 ||
            R.n_kv <= 0 || a->out != (R.n_heads + 2 * R.n_kv) * R.hd || a->ldy < R.n_heads * R.hd ||
            !R.pos || !R.slot || !R.cos_tab || !R.sin_tab || !R.k_cache || !R.v_cache ||
            R.q_norm || R.k_norm)
            return NI_EINVAL;
    }
    /* as many blocks as the SMs hold at once, at most 4 per SM (enough warps
     * in flight to cover the memory latency, few enough that the repeated
     * prologue stays cheap), never a second wave (gv_occ) */
    const long n_out = a->rope_on ? a->out / 2 : a->out;
    const long rows_blocks = (n_out + GV_WARPS - 1) / GV_WARPS;
    const int mode = a->rope_on ? GV_ROPE : a->swiglu ? GV_SWIGLU : GV_PLAIN;
    long per_sm = gv_blocks_per_sm((int)gv_nb(a->n), mode, gv_smem_bytes(a->n, a->in));
    if (per_sm > 4) per_sm = 4;
    const long cap = (long)(n_sm > 0 ? n_sm : 132) * per_sm;
    const unsigned grid = (unsigned)(rows_blocks < cap ? rows_blocks : cap);
    if (a->n > CU_GEMV_FMA_ROWS) {
        const long tiles = ((long)a->out + 15) / 16, tcap = (long)(n_sm > 0 ? n_sm : 132) * 2;
        const unsigned tg = (unsigned)(tiles < tcap ? tiles : tcap);
        const size_t ts = gt_smem_bytes(a->in, a->swiglu != 0);
        if (a->swiglu)
            k_gemv_tc<true><<<tg, GV_THREADS, ts, st>>>(*a);
        else
            k_gemv_tc<false><<<tg, GV_THREADS, ts, st>>>(*a);
        CU_LAUNCH_CHECK(st);
        return 0;
    }
    const size_t smem = gv_smem_bytes(a->n, a->in);
    CU_CHECK(a->rope_on  ? gv_launch<GV_ROPE>(st, *a, grid, smem)
             : a->swiglu ? gv_launch<GV_SWIGLU>(st, *a, grid, smem)
                         : gv_launch<GV_PLAIN>(st, *a, grid, smem));
    CU_LAUNCH_CHECK(st);
    return 0;
}
