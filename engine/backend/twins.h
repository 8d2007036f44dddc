/*
 * twins.h - what the CPU reference backend and the CUDA backend must compute
 * identically, in one copy: the batch validation rules of forward(), the
 * RoPE inverse-frequency table (built on the host in double, so both rotate
 * by bit-identical angles), the host twin of the E4M3 KV-cache rounding and
 * the constants of the Cephes expf that the CPU and GPU samplers evaluate op
 * for op (bit-identical probabilities).
 *
 * Included from C and, inside extern "C", from CUDA C++ (cuda/); no device
 * code here, only host functions and constants.
 */
#ifndef NI_TWINS_H
#define NI_TWINS_H

#include <stdint.h>

#include "backend.h"
#include "engine/model/model.h"

/* exp(x) for x <= 0 as Cephes' expf: range reduction by ln 2 (C1 + C2 split),
 * degree-6 polynomial P0..P5, 2^n by exponent bits; below NI_EXP_LO the result
 * is 0. engine/backend/sampler.c (exp_neg) and cuda/cu_sample.cu
 * (smp_exp_neg) evaluate these in the same order, each op rounded. */
#define NI_EXP_LO (-87.33654f)
#define NI_EXP_MAGIC 12582912.0f /* 1.5 * 2^23: adding it rounds to an integer */
#define NI_EXP_LOG2E 1.44269504088896341f
#define NI_EXP_C1 0.693359375f
#define NI_EXP_C2 (-2.12194440e-4f)
#define NI_EXP_P0 1.9875691500e-4f
#define NI_EXP_P1 1.3981999507e-3f
#define NI_EXP_P2 8.3334519073e-3f
#define NI_EXP_P3 4.1665795894e-2f
#define NI_EXP_P4 1.6666665459e-1f
#define NI_EXP_P5 5.0000001201e-1f

/* The capacities a backend was initialised with, against which a batch is
 * validated. */
typedef struct eng_batch_limits {
    int max_seqs;         /* sequences per forward */
    int max_batch_tokens; /* tokens per forward */
    int vocab_size;       /* token ids in [0, vocab_size) */
    int64_t max_pos;      /* positions in [0, max_pos) */
    int block_size;       /* tokens per KV block */
    int n_blocks;         /* physical block ids in [0, n_blocks) */
} eng_batch_limits;

/* Returns 0 when every field of b is consistent (seq_start monotone from 0
 * to n_tokens, every sequence brings >= 1 token, token ids, positions and
 * block ids in range, the block table covers every new position), else
 * NI_EINVAL. Whether logits may be NULL is the backend's own rule (the CUDA
 * backend keeps them on the device for sample()). */
int eng_batch_check(const eng_batch *b, const eng_batch_limits *lim);

/* RoPE inverse frequencies inv_freq[i] = theta^(-2i/head_dim), i < head_dim/2,
 * computed in double; with c->rope_scaling == MDL_ROPE_LLAMA3 rescaled
 * exactly as HF's _compute_llama3_parameters (low frequencies divided by
 * factor, medium ones interpolated). */
void eng_rope_inv_freq(const mdl_config *c, double *inv_freq /* [head_dim/2] */);

/* x rounded to the nearest FP8 E4M3 value (1 sign, 4 exponent bits with bias
 * 7, 3 mantissa bits; no infinities), as the CUDA backend's E4M3 KV cache
 * stores it (__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)): round to
 * nearest even, |x| > 448 and +-inf saturate to +-448, normals from 2^-6
 * keep 4 significant bits, subnormals are multiples of 2^-9 (below 2^-10,
 * and at it by the even rule, 0 with x's sign), NaN stays NaN. The host twin
 * of that conversion: bit-exact for every float (tests of the fp8 cache). */
float eng_fp8_e4m3_round(float x);

#endif
