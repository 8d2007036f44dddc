/*
 * cpu_q8.h - block-quantized weight x int8 activation matrix products for
 * the CPU backend (the `quant = 1` int8 and `quant = 2` 4-bit paths of
 * eng_backend_cpu).
 *
 * Scheme (llama.cpp's Q8_0 x Q8_0 and Q4_1 x Q8_1): a weight row [in] is cut
 * into blocks of CPU_Q8_BLOCK = 32 values. Two weight formats:
 *   bits = 8: 32 int8 q and an FP16 scale d: w = q d (symmetric, round to
 *             nearest: d = max|w| / 127, |q| <= 127);
 *   bits = 4: 32 4-bit q in [0, 15], an FP16 scale d and an FP16 minimum m:
 *             w = q d + m (d = (max - min) / 15, m = min). This is exactly
 *             ggml's Q4_1, so weights that came from a Q4_1 GGUF (such as
 *             SmolLM2-135M-Instruct.Q4_1.gguf) are represented losslessly.
 * Each activation row is quantized at run time to int8 blocks of 32 with an
 * FP32 scale (d_a = max|x| / 127), plus the block's sum of q. A dot product
 * is, per block, an exact int32 sum of 32 products scaled by d_w d_a (plus
 * m d_a sum(q_a) for bits = 4), accumulated in FP32. A row whose length is
 * not a multiple of 32 is zero-padded.
 *
 * Layout (chosen so the SIMD kernels need no horizontal sums per block): the
 * blocks of a row are taken in groups of CPU_Q8_GROUP = 16 (the last group
 * may be shorter: nt = nb % 16 blocks). Inside a group of nt blocks,
 *   int8 (weights, activations): byte (k * nt + j) * 4 + c, k < 8, j < nt,
 *     c < 4, holds element 4k + c of block j;
 *   4-bit weights: byte (k2 * nt + j) * 4 + c, k2 < 4, holds element
 *     8 k2 + c of block j in its low nibble and element 8 k2 + 4 + c in its
 *     high nibble (so one byte load + mask/shift yields int8 steps 2 k2 and
 *     2 k2 + 1).
 * One 64-byte load at step k thus gives every block of a group its next 4
 * values in its own 32-bit lane, and one AVX512-VNNI vpdpbusd (AVX-VNNI, or
 * AVX2 vpmaddubsw + vpmaddwd, on two 8-lane halves) advances all 16 block
 * sums at once. int8 weights are stored biased, u8 = q + 128 (vpdpbusd
 * multiplies u8 by s8), and the bias is removed with the activation's block
 * sum s = 128 sum(q_a); 4-bit q are already unsigned.
 *
 * Result definition (every dispatch path computes exactly this, bit for bit):
 * for output row r and token t, lane j of group g (block b = 16 g + j)
 * accumulates, over g in ascending order from f_j = +0,
 *   bits = 8: f_j = fmaf((float)isum * da[t][b], dw[r][b], f_j)
 *   bits = 4: f_j = fmaf(mw[r][b], ms[t][b],
 *                        fmaf((float)isum * da[t][b], dw[r][b], f_j))
 * with isum the exact int32 block dot product of the integer q's and
 * ms = da * sum(q_a) (FP32); then y = v2[0] + v2[1] by the fixed tree
 * v8[i] = f[i] + f[i+8], v4[i] = v8[i] + v8[i+4], v2[i] = v4[i] + v4[i+2].
 * Results therefore do not depend on the SIMD path, the number of threads
 * or how tokens are batched (batch invariance).
 *
 * Dispatch: cpu_q8_select() picks the best path the CPU supports at run time
 * (__builtin_cpu_supports): AVX512-VNNI (zmm vpdpbusd), AVX-VNNI (ymm
 * vpdpbusd), AVX2 (vpmaddubsw; int8 weights through the sign trick, exact
 * as |q| <= 127), scalar C. The SIMD paths are compiled with function-level
 * target attributes, so the file builds for plain x86-64 (and elsewhere
 * with the scalar path only).
 *
 * Invariants: no allocation outside cpu_q8_mat_init / cpu_q8_act_init; the
 * kernels never read outside the buffers they were given (tails use masked
 * loads); an activation must be quantized with the column count of the
 * matrix it multiplies.
 */
#ifndef NI_CPU_Q8_H
#define NI_CPU_Q8_H

#include <stddef.h>
#include <stdint.h>

#include "cpu_pool.h"

#define CPU_Q8_BLOCK 32 /* values per quantization block */
#define CPU_Q8_GROUP 16 /* blocks per interleaved group (one 512-bit lane each) */

enum cpu_q8_path {
    CPU_Q8_SCALAR = 0,
    CPU_Q8_AVX2 = 1,       /* AVX2: vpmaddubsw + vpmaddwd */
    CPU_Q8_AVXVNNI = 2,    /* AVX-VNNI: ymm vpdpbusd (VEX) */
    CPU_Q8_AVX512VNNI = 3, /* AVX512F/BW/VL + VNNI: zmm vpdpbusd */
    CPU_Q8_N_PATHS = 4
};

/* A quantized weight matrix, logical shape [rows][cols] (y = W x). */
typedef struct cpu_q8_mat {
    int rows, cols;
    int bits;        /* 8 or 4 */
    int nb;          /* blocks per row: ceil(cols / 32) */
    size_t q_stride; /* bytes per row of q: nb * bits * 4 rounded up to 64 */
    uint8_t *q;      /* [rows][q_stride] group-interleaved: q + 128 (bits 8) or nibbles */
    uint16_t *d;     /* [rows][nb] FP16 block scales */
    uint16_t *m;     /* [rows][nb] FP16 block minimums (bits 4), NULL for bits 8 */
} cpu_q8_mat;

/* Quantized activations: up to cap_rows rows of up to cap_cols columns;
 * n / cols / nb describe the rows last written by cpu_q8_quantize_act. */
typedef struct cpu_q8_act {
    int cap_rows, cap_cols;
    int n, cols, nb;
    size_t q_stride; /* bytes per row of q: nb * 32 rounded up to 64 */
    int8_t *q;       /* [n][q_stride] group-interleaved, |q| <= 127 */
    float *d;        /* [n][nb] block scales */
    int32_t *s;      /* [n][nb] 128 * sum of the block's q */
    float *ms;       /* [n][nb] d * sum of the block's q */
    void *mem;       /* one allocation holding q, d, s, ms */
} cpu_q8_act;

/* Allocates a rows x cols matrix of the given bits (8 or 4), all zero.
 * Returns 0, NI_EINVAL (non-positive size, other bits) or NI_ENOMEM.
 * cpu_q8_mat_free is safe on a zeroed struct. */
int cpu_q8_mat_init(cpu_q8_mat *m, int rows, int cols, int bits);
void cpu_q8_mat_free(cpu_q8_mat *m);

/* Quantizes n FP32 rows w[n][m->cols] into rows [r0, r0 + n) of m (so
 * several source matrices can be stacked into one, e.g. Wq|Wk|Wv).
 * Requires 0 <= r0 and r0 + n <= m->rows. Part pt quantizes its share of the
 * n rows (cpu_part_rows). */
void cpu_q8_mat_set_rows(cpu_part pt, cpu_q8_mat *m, int r0, const float *w /* [n][cols] */, int n);

/* Dequantizes row r of m into out[cols] (q d, or q d + m). */
void cpu_q8_mat_get_row(const cpu_q8_mat *m, int r, float *out /* [cols] */);

/* Bytes of weight data (quants + scales + minimums) one full product reads. */
size_t cpu_q8_mat_bytes(const cpu_q8_mat *m);

/* Allocates activation buffers for up to cap_rows rows of up to cap_cols
 * columns. Returns 0, NI_EINVAL or NI_ENOMEM; cpu_q8_act_free is safe on a
 * zeroed struct. */
int cpu_q8_act_init(cpu_q8_act *a, int cap_rows, int cap_cols);
void cpu_q8_act_free(cpu_q8_act *a);

/* Quantizes x[n][cols] (row stride ldx floats) into a: per block of 32,
 * d = max|x| / 127, q = round_to_nearest_even(x * (127 / max|x|)) clamped
 * to [-127, 127] (0 for an all-zero block). Requires n <= cap_rows,
 * 0 < cols <= cap_cols. Part pt quantizes its rows (cpu_part_rows, the
 * split of cpu_rmsnorm, so the two chain on one thread); part 0
 * also records n / cols / nb in a. Identical on every path. */
void cpu_q8_quantize_act(cpu_part pt, cpu_q8_act *a, const float *x /* [n][ldx] */, int ldx, int n,
                         int cols);

/* Dequantizes row t of the last quantization into out[a->cols] (q d). */
void cpu_q8_act_get_row(const cpu_q8_act *a, int t, float *out /* [cols] */);

/* For tokens t in [t0, t1) of a and rows r in [r0, r1) of w:
 *   y[(t - t0) * ldy + (r - r0)] (+)= dot(W[r], x[t])   (the result definition
 * above), so y points at the output of (t0, r0) and a row range can land in
 * any column range of any buffer. accumulate != 0 adds to y. Runs on the
 * calling thread only: meant for the caller's own parallel region. */
void cpu_q8_gemm_range(float *y /* [t1-t0][ldy] */, int ldy, const cpu_q8_act *a, int t0, int t1,
                       const cpu_q8_mat *w, int r0, int r1, int accumulate);

/* y[t][r] (+)= dot(W[r], x[t]) for every token t of a and this part's rows r
 * of w (the rows cut into nth slices of whole 16-row chunks). */
void cpu_q8_gemm(cpu_part pt, float *y /* [a->n][ldy] */, int ldy, const cpu_q8_act *a,
                 const cpu_q8_mat *w, int accumulate);

/* ---- dispatch ----------------------------------------------------------- */

/* Picks the fastest path this CPU supports (done implicitly on first use). */
void cpu_q8_select(void);
/* 1 if path p can run on this CPU (and was compiled in), else 0. */
int cpu_q8_path_supported(int p);
/* Forces path p (tests, benchmarks). Returns 0, or NI_EUNSUPPORTED when the
 * CPU cannot run it (the current path is kept). Not thread safe: call when
 * no product is running. */
int cpu_q8_set_path(int p);
int cpu_q8_get_path(void);
const char *cpu_q8_path_name(int p);

#endif
