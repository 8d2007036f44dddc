/*
 * quant.c - ggml block formats (see quant.h). Pure functions, no state.
 * Dequantization is the load-time path (weights become FP32 once), so it is
 * written for clarity over speed; it still runs at memory speed for a 135M model.
 */
#include "quant.h"

#include <string.h>

#include "gguf.h"
#include "engine/util/util.h"

#define QK 32

int qnt_block_elems(uint32_t type) {
    switch (type) {
    case GGUF_T_F32: case GGUF_T_F16: case GGUF_T_BF16: return 1;
    case GGUF_T_Q4_0: case GGUF_T_Q4_1: case GGUF_T_Q8_0: return QK;
    default: return 0;
    }
}

size_t qnt_block_bytes(uint32_t type) {
    switch (type) {
    case GGUF_T_F32: return 4;
    case GGUF_T_F16: case GGUF_T_BF16: return 2;
    case GGUF_T_Q4_0: return 2 + QK / 2;
    case GGUF_T_Q4_1: return 4 + QK / 2;
    case GGUF_T_Q8_0: return 2 + QK;
    default: return 0;
    }
}

int qnt_nbytes(uint32_t type, uint64_t n, uint64_t *out) {
    int be = qnt_block_elems(type);
    if (!be) return NI_EUNSUPPORTED;
    if (n % (uint64_t)be) return NI_EFORMAT;
    uint64_t blocks = n / (uint64_t)be, bb = qnt_block_bytes(type);
    if (blocks > UINT64_MAX / bb) return NI_ERANGE;
    *out = blocks * bb;
    return 0;
}

float qnt_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalize */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t qnt_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 0x1f) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* may carry into exp: correct */
    return (uint16_t)h;
}

float qnt_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t qnt_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

int qnt_dequantize(uint32_t type, const void *src, float *dst, size_t n) {
    const uint8_t *s = src;
    int be = qnt_block_elems(type);
    if (!be) return NI_EUNSUPPORTED;
    if (n % (size_t)be) return NI_EFORMAT;
    switch (type) {
    case GGUF_T_F32:
        memcpy(dst, s, n * 4);
        break;
    case GGUF_T_F16:
        for (size_t i = 0; i < n; i++) dst[i] = qnt_f16_to_f32(rd16(s + 2 * i));
        break;
    case GGUF_T_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = qnt_bf16_to_f32(rd16(s + 2 * i));
        break;
    case GGUF_T_Q4_0:
        for (size_t b = 0; b < n / QK; b++, s += 18, dst += QK) {
            float d = qnt_f16_to_f32(rd16(s));
            for (int j = 0; j < QK / 2; j++) {
                dst[j] = (float)((s[2 + j] & 0x0f) - 8) * d;
                dst[j + QK / 2] = (float)((s[2 + j] >> 4) - 8) * d;
            }
        }
        break;
    case GGUF_T_Q4_1:
        for (size_t b = 0; b < n / QK; b++, s += 20, dst += QK) {
            float d = qnt_f16_to_f32(rd16(s)), m = qnt_f16_to_f32(rd16(s + 2));
            for (int j = 0; j < QK / 2; j++) {
                dst[j] = (float)(s[4 + j] & 0x0f) * d + m;
                dst[j + QK / 2] = (float)(s[4 + j] >> 4) * d + m;
            }
        }
        break;
    case GGUF_T_Q8_0:
        for (size_t b = 0; b < n / QK; b++, s += 34, dst += QK) {
            float d = qnt_f16_to_f32(rd16(s));
            for (int j = 0; j < QK; j++) dst[j] = (float)(int8_t)s[2 + j] * d;
        }
        break;
    }
    return 0;
}
