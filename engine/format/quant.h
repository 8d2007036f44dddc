/*
 * quant.h - ggml tensor storage types: sizes and dequantization to FP32.
 *
 * Block layouts (little-endian, as in ggml):
 *   Q4_0: 32 values = { f16 d; u8 qs[16] }        x = (q - 8) * d
 *   Q4_1: 32 values = { f16 d; f16 m; u8 qs[16] } x = q * d + m
 *   Q8_0: 32 values = { f16 d; i8 qs[32] }        x = q * d
 * For 4-bit types, value j < 16 is the low nibble of qs[j], value j + 16 the
 * high nibble of qs[j].
 */
#ifndef NI_QUANT_H
#define NI_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* Elements per block (1 for plain types), or 0 for an unknown type. */
int qnt_block_elems(uint32_t type);
/* Bytes per block, or 0 for an unknown type. */
size_t qnt_block_bytes(uint32_t type);
/* Bytes of n elements of type into *out. Returns 0, NI_EUNSUPPORTED for an
 * unknown type, NI_EFORMAT if n is not a multiple of the block, NI_ERANGE on
 * overflow. */
int qnt_nbytes(uint32_t type, uint64_t n, uint64_t *out);
/* Dequantizes n elements (a multiple of the block size) from src into dst. */
int qnt_dequantize(uint32_t type, const void *src, float *dst, size_t n);

float qnt_f16_to_f32(uint16_t h);
uint16_t qnt_f32_to_f16(float f);   /* round to nearest even */
float qnt_bf16_to_f32(uint16_t h);
uint16_t qnt_f32_to_bf16(float f);  /* round to nearest even */

#endif
