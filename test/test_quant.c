/*
 * test_quant.c - ggml storage types (engine/format/quant.c) against the python
 * reference implementation.
 *
 * Goldens come from scripts/gen_quant_golden.py: gguf-py (llama.cpp's own
 * python gguf package) quantize/dequantize for F16, BF16, Q8_0, Q4_0, Q4_1
 * blocks, numpy for f32 <-> f16 and gguf-py for f32 -> bf16. Floats are
 * compared by bit pattern (a NaN only needs to be a NaN of the same sign
 * where the payload is not specified). Independent checks: every one of the
 * 65536 halves against an exact ldexp() formula, and round trips. The real
 * model tensors are compared when the default model is present (skip
 * otherwise, saying why). Run from the repository root.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/format/gguf.h"
#include "engine/format/quant.h"
#include "engine/util/util.h"
#include "test_util.h"

#define FIX "test/fixtures/"

static json_t *load(const char *path) {
    json_error_t e;
    json_t *d = json_load_file(path, 0, &e);
    if (!d) fail_msg("%s:%d: %s (run scripts/gen_quant_golden.py; run from the repo root)", path,
                     e.line, e.text);
    return d;
}

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static int is_nan32(uint32_t u) { return (u & 0x7fffffffu) > 0x7f800000u; }
static int is_nan16(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }

/* Same checksum as wsum64() in scripts/gen_quant_golden.py. */
#define K_MUL 0x9E3779B97F4A7C15ull
static uint64_t wsum_u32(const uint32_t *w, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) s += (uint64_t)w[i] * (((uint64_t)i * K_MUL) | 1);
    return s;
}
static uint64_t wsum_u16(const uint16_t *w, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) s += (uint64_t)w[i] * (((uint64_t)i * K_MUL) | 1);
    return s;
}
static uint64_t hex64(json_t *j) {
    const char *s = json_string_value(j);
    assert_non_null(s);
    return strtoull(s, NULL, 16);
}

/* Exact value of a half from its fields, independent of quant.c. */
static uint32_t ref_f16_to_f32_bits(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023;
    if (e == 31) return sign | 0x7f800000u | (m << 13);
    double v = e == 0 ? ldexp((double)m, -24) : ldexp((double)(1024 + m), (int)e - 25);
    return sign | f2u((float)v);
}

static uint32_t type_id(json_t *doc, const char *name) {
    json_t *id = json_object_get(json_object_get(doc, "type_ids"), name);
    assert_true(json_is_integer(id));
    return (uint32_t)json_integer_value(id);
}

static uint8_t *unhex(const char *s, size_t *n) {
    size_t len = strlen(s);
    assert_int_equal(len % 2, 0);
    uint8_t *b = malloc(len / 2 + 1);
    assert_non_null(b);
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v;
        assert_int_equal(sscanf(s + 2 * i, "%2x", &v), 1);
        b[i] = (uint8_t)v;
    }
    *n = len / 2;
    return b;
}

/* ---------------------------------------------------------------- sizes */

static void test_sizes(void **state) {
    (void)state;
    json_t *doc = load(FIX "quant_blocks.json");
    json_t *sizes = json_object_get(doc, "block_sizes");
    const char *name;
    json_t *v;
    int n = 0;
    json_object_foreach(sizes, name, v) {
        uint32_t t = type_id(doc, name);
        assert_int_equal(qnt_block_elems(t), json_integer_value(json_array_get(v, 0)));
        assert_int_equal(qnt_block_bytes(t), json_integer_value(json_array_get(v, 1)));
        assert_string_equal(gguf_type_name(t), name);
        n++;
    }
    assert_int_equal(n, 6);
    json_decref(doc);
    uint64_t nb = 0;
    assert_int_equal(qnt_nbytes(GGUF_T_Q4_1, 64, &nb), 0); assert_int_equal(nb, 40);
    assert_int_equal(qnt_nbytes(GGUF_T_Q8_0, 0, &nb), 0); assert_int_equal(nb, 0);
    assert_int_equal(qnt_nbytes(GGUF_T_F32, 3, &nb), 0); assert_int_equal(nb, 12);
    assert_int_equal(qnt_nbytes(GGUF_T_Q4_0, 33, &nb), NI_EFORMAT);
    assert_int_equal(qnt_nbytes(14, 32, &nb), NI_EUNSUPPORTED);
    assert_int_equal(qnt_nbytes(GGUF_T_F32, UINT64_MAX / 2, &nb), NI_ERANGE);
    assert_int_equal(qnt_nbytes(GGUF_T_F16, UINT64_MAX / 2, &nb), 0);
    assert_int_equal(nb, UINT64_MAX - 1);
    for (uint32_t t = 0; t < 64; t++) {
        int known = t == 0 || t == 1 || t == 2 || t == 3 || t == 8 || t == 30;
        assert_int_equal(qnt_block_elems(t) != 0, known);
        assert_int_equal(qnt_block_bytes(t) != 0, known);
    }
    assert_int_equal(qnt_block_elems(0xffffffffu), 0);
    float out[64];
    uint8_t zero[64] = {0};
    assert_int_equal(qnt_dequantize(14, zero, out, 32), NI_EUNSUPPORTED);
    assert_int_equal(qnt_dequantize(GGUF_T_Q8_0, zero, out, 16), NI_EFORMAT);
    assert_int_equal(qnt_dequantize(GGUF_T_Q4_0, zero, out, 0), 0);
}

/* --------------------------------------------------------------- blocks */

static void test_blocks_golden(void **state) {
    (void)state;
    json_t *doc = load(FIX "quant_blocks.json");
    json_t *cases = json_object_get(doc, "cases");
    size_t nc = json_array_size(cases), values = 0;
    assert_true(nc >= 40);
    int per_type[64] = {0};
    for (size_t i = 0; i < nc; i++) {
        json_t *c = json_array_get(cases, i);
        const char *tn = json_string_value(json_object_get(c, "type"));
        const char *cn = json_string_value(json_object_get(c, "name"));
        uint32_t t = type_id(doc, tn);
        size_t n = (size_t)json_integer_value(json_object_get(c, "n")), nbytes;
        uint8_t *raw = unhex(json_string_value(json_object_get(c, "data_hex")), &nbytes);
        uint64_t want_bytes;
        assert_int_equal(qnt_nbytes(t, n, &want_bytes), 0);
        assert_int_equal(nbytes, want_bytes);
        json_t *exp = json_object_get(c, "expected_bits");
        assert_int_equal(json_array_size(exp), n);
        /* odd-aligned source: dequantization must not assume alignment */
        uint8_t *src = malloc(nbytes + 1);
        assert_non_null(src);
        memcpy(src + 1, raw, nbytes);
        float *out = malloc((n + 1) * sizeof(float));
        assert_non_null(out);
        out[n] = 12345.0f; /* canary */
        assert_int_equal(qnt_dequantize(t, src + 1, out, n), 0);
        assert_true(out[n] == 12345.0f);
        for (size_t k = 0; k < n; k++) {
            uint32_t want = (uint32_t)json_integer_value(json_array_get(exp, k)), got = f2u(out[k]);
            if (want != got && !(is_nan32(want) && is_nan32(got)))
                fail_msg("%s/%s value %zu: got %08x (%g), want %08x (%g)", tn, cn, k, got, out[k],
                         want, u2f(want));
        }
        values += n;
        per_type[t]++;
        free(out);
        free(src);
        free(raw);
    }
    assert_true(per_type[GGUF_T_F16] && per_type[GGUF_T_BF16] && per_type[GGUF_T_F32]);
    assert_true(per_type[GGUF_T_Q8_0] >= 10 && per_type[GGUF_T_Q4_0] >= 10 && per_type[GGUF_T_Q4_1] >= 10);
    print_message("quant blocks: %zu cases, %zu values bit-exact vs gguf-py\n", nc, values);
    json_decref(doc);
}

/* Hand-made blocks pin the documented layout (nibble order, offsets). */
static void test_block_layout(void **state) {
    (void)state;
    uint8_t q4_0[18] = {0x00, 0x3c}; /* d = 1.0 */
    for (int j = 0; j < 16; j++) q4_0[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    float out[32];
    assert_int_equal(qnt_dequantize(GGUF_T_Q4_0, q4_0, out, 32), 0);
    for (int j = 0; j < 16; j++) {
        assert_true(out[j] == (float)(j - 8));
        assert_true(out[j + 16] == (float)(7 - j));
    }
    uint8_t q4_1[20] = {0x00, 0x38, 0x00, 0xbc}; /* d = 0.5, m = -1 */
    for (int j = 0; j < 16; j++) q4_1[4 + j] = (uint8_t)(j | ((15 - j) << 4));
    assert_int_equal(qnt_dequantize(GGUF_T_Q4_1, q4_1, out, 32), 0);
    for (int j = 0; j < 16; j++) {
        assert_true(out[j] == 0.5f * (float)j - 1.0f);
        assert_true(out[j + 16] == 0.5f * (float)(15 - j) - 1.0f);
    }
    uint8_t q8[34] = {0x00, 0x40}; /* d = 2 */
    for (int j = 0; j < 32; j++) q8[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    assert_int_equal(qnt_dequantize(GGUF_T_Q8_0, q8, out, 32), 0);
    for (int j = 0; j < 32; j++) assert_true(out[j] == 2.0f * (float)(j * 8 - 128));
}

/* ---------------------------------------------------------- conversions */

static void test_f16_all_values(void **state) {
    (void)state;
    json_t *doc = load(FIX "quant_convert.json");
    uint32_t *all = malloc(65536 * sizeof(uint32_t));
    assert_non_null(all);
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t got = f2u(qnt_f16_to_f32((uint16_t)h)), want = ref_f16_to_f32_bits((uint16_t)h);
        if (got != want) fail_msg("f16 %04x -> %08x, want %08x", h, got, want);
        all[h] = got;
        /* round trip: every non-NaN half survives f16 -> f32 -> f16 exactly */
        uint16_t back = qnt_f32_to_f16(u2f(got));
        if (is_nan16((uint16_t)h)) {
            assert_true(is_nan16(back));
            assert_int_equal(back & 0x8000, h & 0x8000);
        } else if (back != h) {
            fail_msg("f16 round trip %04x -> %04x", h, back);
        }
    }
    /* and numpy agrees on all 65536 (NaN payloads included) */
    assert_true(wsum_u32(all, 65536) == hex64(json_object_get(doc, "f16_to_f32_all_wsum64")));
    free(all);
    json_decref(doc);
}

static void test_f32_to_f16_golden(void **state) {
    (void)state;
    json_t *doc = load(FIX "quant_convert.json");
    json_t *in = json_object_get(doc, "f32_bits"), *want = json_object_get(doc, "f16_bits");
    size_t n = json_array_size(in);
    assert_true(n > 2000);
    assert_int_equal(json_array_size(want), n);
    size_t nan_cases = 0, ties = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t x = (uint32_t)json_integer_value(json_array_get(in, i));
        uint16_t w = (uint16_t)json_integer_value(json_array_get(want, i));
        uint16_t g = qnt_f32_to_f16(u2f(x));
        if (is_nan32(x)) {
            /* numpy keeps the top payload bits, we return the canonical quiet NaN:
             * both are NaNs of the input's sign */
            nan_cases++;
            assert_true(is_nan16(w));
            if (!is_nan16(g) || (g & 0x8000) != (w & 0x8000))
                fail_msg("f32 %08x (NaN) -> %04x, want a NaN like %04x", x, g, w);
            continue;
        }
        if ((x & 0x1fff) == 0x1000) ties++; /* a tie for results in the normal range */
        if (g != w) fail_msg("f32 %08x (%.9g) -> f16 %04x, want %04x", x, u2f(x), g, w);
    }
    assert_true(nan_cases >= 8);
    assert_true(ties > 100);
    json_decref(doc);
}

/* Every round-half-even tie between consecutive finite halves, +-1 ulp, both
 * signs (190k inputs): the checksum of our outputs equals numpy's. The inputs
 * are rebuilt here the way the generator builds them (checked by checksum). */
static void test_f32_to_f16_tie_sweep(void **state) {
    (void)state;
    json_t *doc = load(FIX "quant_convert.json");
    json_t *ts = json_object_get(doc, "tie_sweep");
    size_t count = (size_t)json_integer_value(json_object_get(ts, "count"));
    uint32_t *in = malloc(count * sizeof(uint32_t));
    uint16_t *out = malloc(count * sizeof(uint16_t));
    assert_non_null(in);
    assert_non_null(out);
    size_t n = 0;
    for (uint32_t h = 0; h < 0x7bff; h++) {
        double lo = u2f(ref_f16_to_f32_bits((uint16_t)h)), hi = u2f(ref_f16_to_f32_bits((uint16_t)(h + 1)));
        float mid = (float)((lo + hi) / 2);
        assert_true((double)mid == (lo + hi) / 2); /* exact: a true tie */
        uint32_t mb = f2u(mid), c[3] = {mb, mb - 1, mb + 1};
        for (int k = 0; k < 3; k++)
            if (c[k] != 0xffffffffu) {
                assert_true(n < count / 2);
                in[n++] = c[k];
            }
    }
    assert_int_equal(2 * n, count);
    for (size_t i = 0; i < n; i++) in[n + i] = in[i] | 0x80000000u;
    assert_true(wsum_u32(in, count) == hex64(json_object_get(ts, "inputs_wsum64")));
    for (size_t i = 0; i < count; i++) out[i] = qnt_f32_to_f16(u2f(in[i]));
    /* spot-check the rule itself: an exact tie rounds to the even neighbour */
    for (size_t i = 0; i < n; i += 3) {
        uint16_t g = out[i];
        assert_int_equal(g & 1, 0);
    }
    assert_true(wsum_u16(out, count) == hex64(json_object_get(ts, "f16_wsum64")));
    free(in);
    free(out);
    json_decref(doc);
}

static void test_f32_to_bf16_golden(void **state) {
    (void)state;
    json_t *doc = load(FIX "quant_convert.json");
    json_t *in = json_object_get(doc, "f32_bits"), *want = json_object_get(doc, "bf16_bits");
    size_t n = json_array_size(in);
    assert_int_equal(json_array_size(want), n);
    for (size_t i = 0; i < n; i++) {
        uint32_t x = (uint32_t)json_integer_value(json_array_get(in, i));
        uint16_t w = (uint16_t)json_integer_value(json_array_get(want, i));
        uint16_t g = qnt_f32_to_bf16(u2f(x));
        /* gguf-py and ggml quieten NaNs the same way: compare all bits */
        if (g != w) fail_msg("f32 %08x (%.9g) -> bf16 %04x, want %04x", x, u2f(x), g, w);
    }
    /* every bf16 survives bf16 -> f32 -> bf16; NaNs come back quiet */
    for (uint32_t b = 0; b < 65536; b++) {
        float f = qnt_bf16_to_f32((uint16_t)b);
        assert_int_equal(f2u(f), b << 16);
        uint16_t back = qnt_f32_to_bf16(f);
        if (is_nan32(b << 16)) assert_int_equal(back, b | 0x40);
        else if (back != b) fail_msg("bf16 round trip %04x -> %04x", b, back);
    }
    json_decref(doc);
}

/* ----------------------------------------------------------- real model */

static void test_model_tensors(void **state) {
    (void)state;
    const char *path = tu_require_model();
    json_t *doc = load(FIX "quant_model.json");
    const char *want_model = json_string_value(json_object_get(doc, "model"));
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strcmp(base, want_model) != 0) {
        json_decref(doc);
        print_message("SKIP: goldens are for %s, NI_MODEL is %s\n", want_model, path);
        skip();
    }
    gguf_ctx g;
    char err[512];
    int rc = gguf_open(&g, path, err, sizeof(err));
    if (rc) fail_msg("%s", err);
    assert_int_equal(g.size, json_integer_value(json_object_get(doc, "size")));
    json_t *ts = json_object_get(doc, "tensors");
    assert_int_equal(json_array_size(ts), 3);
    int seen_types = 0;
    for (size_t i = 0; i < json_array_size(ts); i++) {
        json_t *tj = json_array_get(ts, i);
        const char *name = json_string_value(json_object_get(tj, "name"));
        const gguf_tensor *t = gguf_find_tensor(&g, name);
        assert_non_null(t);
        assert_string_equal(gguf_type_name(t->type), json_string_value(json_object_get(tj, "type")));
        seen_types |= 1 << (t->type & 31);
        size_t n = (size_t)json_integer_value(json_object_get(tj, "n"));
        assert_int_equal(t->n_elements, n);
        float *out = malloc(n * sizeof(float));
        assert_non_null(out);
        assert_int_equal(qnt_dequantize(t->type, t->data, out, n), 0);
        json_t *first = json_object_get(tj, "first64_bits");
        for (size_t k = 0; k < 64; k++) {
            uint32_t want = (uint32_t)json_integer_value(json_array_get(first, k));
            if (f2u(out[k]) != want)
                fail_msg("%s[%zu] = %g, want %g", name, k, out[k], u2f(want));
        }
        uint64_t ws = wsum_u32((const uint32_t *)(const void *)out, n);
        if (ws != hex64(json_object_get(tj, "all_wsum64")))
            fail_msg("%s: checksum of all %zu values differs from gguf-py", name, n);
        double sum = 0, want_sum = json_real_value(json_object_get(tj, "sum"));
        for (size_t k = 0; k < n; k++) sum += out[k];
        assert_true(fabs(sum - want_sum) <= 1e-6 * (1 + fabs(want_sum)));
        print_message("%s (%s, %zu values): bit-exact vs gguf-py\n", name, gguf_type_name(t->type), n);
        free(out);
    }
    assert_int_equal(seen_types, (1 << GGUF_T_Q8_0) | (1 << GGUF_T_Q4_1) | (1 << GGUF_T_F32));
    gguf_close(&g);
    json_decref(doc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_blocks_golden),
        cmocka_unit_test(test_block_layout),
        cmocka_unit_test(test_f16_all_values),
        cmocka_unit_test(test_f32_to_f16_golden),
        cmocka_unit_test(test_f32_to_f16_tie_sweep),
        cmocka_unit_test(test_f32_to_bf16_golden),
        cmocka_unit_test(test_model_tensors),
    };
    /* NI_TEST_FILTER / NI_TEST_SKIP=pattern (cmocka * ? wildcards) select tests. */
    tu_filters();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
