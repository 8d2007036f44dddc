/*
 * test_gguf_malformed.c - hardening of the GGUF reader (engine/format/gguf.c)
 * against malformed input.
 *
 * A corpus of malformed files built with the writer of test_gguf_writer.h
 * (bad magic/version, every truncation of the valid file, absurd counts,
 * overlong strings and arrays, bad types, bad shapes, bad offsets,
 * duplicates, bad alignment, a path that is no file, a 100k-tensor file)
 * must each fail cleanly: a negative NI_E* code, a message naming the file,
 * a zeroed context, no crash (run under ASan/UBSan too). Well-formed files
 * are in test_gguf.c.
 * Files are written into a mkdtemp() directory removed at the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/format/gguf.h"
#include "engine/util/util.h"
#include "test_util.h"
#include "test_gguf_writer.h"

/* ------------------------------------------------------------- fixtures */

/* Opens path expecting failure with code (any negative code if code == 0) and
 * a message naming the file and containing what (if non-NULL). */
static void expect_fail_path(const char *path, int code, const char *what) {
    gguf_ctx g;
    char err[512] = "";
    int rc = gguf_open(&g, path, err, sizeof(err));
    if (rc == 0) {
        gguf_close(&g);
        fail_msg("%s: opened but should have failed (%s)", path, what ? what : "");
    }
    if (code && rc != code)
        fail_msg("%s: rc %d (%s), want %d; msg: %s", path, rc, ni_strerror(rc), code, err);
    assert_true(rc < 0);
    if (!strstr(err, path)) fail_msg("message does not name the file: %s", err);
    if (what && !strstr(err, what)) fail_msg("message lacks '%s': %s", what, err);
    assert_true(is_zeroed(&g));
    gguf_close(&g); /* safe on a failed ctx */
}

static void expect_fail(const wb *b, int code, const char *what) {
    write_file(g_path, b->p, b->len);
    expect_fail_path(g_path, code, what);
}

/* --------------------------------------------------------------- corpus */

static void test_bad_magic_version(void **state) {
    (void)state;
    wb b = {0};
    layout lay;
    build_valid(&b, 3, 32, &lay);
    static const char *magics[] = {"GGUG", "gguf", "GGML", "\0\0\0\0"};
    for (size_t k = 0; k < NI_ARRAY_LEN(magics); k++) {
        memcpy(b.p, magics[k], 4);
        expect_fail(&b, NI_EFORMAT, "magic");
    }
    memcpy(b.p, "GGUF", 4);
    static const uint32_t versions[] = {0, 1, 4, 99, 0xffffffffu, 0x03000000u};
    for (size_t k = 0; k < NI_ARRAY_LEN(versions); k++) {
        memcpy(b.p + 4, &versions[k], 4);
        expect_fail(&b, NI_EUNSUPPORTED, "version");
    }
    wb_free(&b);
}

/* Every proper prefix of the valid file must fail with NI_EFORMAT. */
static void truncation_sweep(uint32_t align) {
    wb b = {0};
    layout lay;
    build_valid(&b, 3, align, &lay);
    write_file(g_path, b.p, b.len);
    for (size_t len = b.len; len-- > 0;) {
        assert_int_equal(truncate(g_path, (off_t)len), 0);
        expect_fail_path(g_path, NI_EFORMAT, NULL);
    }
    print_message("truncation sweep (alignment %u): %zu prefixes rejected\n", align, b.len);
    wb_free(&b);
}

static void test_truncated_every_offset(void **state) {
    (void)state;
    truncation_sweep(32);
    truncation_sweep(64);
}

static void test_absurd_counts(void **state) {
    (void)state;
    static const uint64_t huge[] = {UINT64_MAX, 1ull << 62, 1ull << 40, 1000000};
    for (size_t k = 0; k < NI_ARRAY_LEN(huge); k++) {
        wb b = {0};
        w_header(&b, 3, 0, huge[k]);
        w_key(&b, "k", GGUF_VT_UINT32);
        w_u32(&b, 1);
        expect_fail(&b, NI_EFORMAT, NULL);
        wb_free(&b);
        w_header(&b, 3, huge[k], 0);
        uint64_t ne = 32;
        w_tinfo(&b, "t", 1, &ne, GGUF_T_F32, 0);
        expect_fail(&b, NI_EFORMAT, NULL);
        wb_free(&b);
        w_header(&b, 3, huge[k], huge[k]);
        w_u64(&b, 0);
        expect_fail(&b, NI_EFORMAT, NULL);
        wb_free(&b);
    }
    /* One key more than the file holds: the second key's string runs off the end. */
    wb b = {0};
    w_header(&b, 3, 0, 2);
    w_key(&b, "k", GGUF_VT_UINT64);
    w_u64(&b, 1);
    w_key(&b, "", GGUF_VT_STRING);
    w_u32(&b, 0); /* half a length */
    expect_fail(&b, NI_EFORMAT, "''");
    wb_free(&b);
}

static void test_overlong_strings(void **state) {
    (void)state;
    static const uint64_t lens[] = {64, 1ull << 32, 1ull << 63, UINT64_MAX, UINT64_MAX - 7};
    for (size_t k = 0; k < NI_ARRAY_LEN(lens); k++) {
        wb b = {0};
        /* key length past EOF */
        w_header(&b, 3, 0, 1);
        w_u64(&b, lens[k]);
        wb_put(&b, "key.name.then.nothing", 21);
        expect_fail(&b, NI_EFORMAT, "truncated metadata");
        wb_free(&b);
        /* string value length past EOF */
        w_header(&b, 3, 0, 1);
        w_key(&b, "k", GGUF_VT_STRING);
        w_u64(&b, lens[k]);
        wb_put(&b, "short value", 11);
        expect_fail(&b, NI_EFORMAT, "'k'");
        wb_free(&b);
        /* one string of a string array past EOF */
        w_header(&b, 3, 0, 1);
        w_key(&b, "arr", GGUF_VT_ARRAY);
        w_u32(&b, GGUF_VT_STRING);
        w_u64(&b, 2);
        w_str(&b, "first");
        w_u64(&b, lens[k]);
        wb_put(&b, "second", 6);
        expect_fail(&b, NI_EFORMAT, "'arr'");
        wb_free(&b);
        /* tensor name past EOF */
        w_header(&b, 3, 1, 0);
        w_u64(&b, lens[k]);
        wb_put(&b, "tensor.name.and.more.bytes.here", 31);
        expect_fail(&b, NI_EFORMAT, "tensor");
        wb_free(&b);
    }
}

static void test_huge_arrays(void **state) {
    (void)state;
    static const struct {
        uint32_t type;
        uint64_t n;
    } a[] = {
        {GGUF_VT_UINT8, UINT64_MAX},
        {GGUF_VT_UINT8, 1000},
        {GGUF_VT_UINT64, 1ull << 61},       /* n * 8 wraps to 0 */
        {GGUF_VT_UINT32, (1ull << 62) + 1}, /* n * 4 wraps to 4 */
        {GGUF_VT_STRING, 1ull << 60},
        {GGUF_VT_STRING, UINT64_MAX},
        {GGUF_VT_FLOAT64, 100},
    };
    for (size_t k = 0; k < NI_ARRAY_LEN(a); k++) {
        wb b = {0};
        w_header(&b, 3, 0, 1);
        w_key(&b, "arr", GGUF_VT_ARRAY);
        w_u32(&b, a[k].type);
        w_u64(&b, a[k].n);
        for (int j = 0; j < 8; j++) w_u64(&b, 0); /* 64 bytes of elements */
        expect_fail(&b, NI_EFORMAT, "'arr'");
        wb_free(&b);
    }
}

static void test_bad_value_types(void **state) {
    (void)state;
    static const uint32_t bad[] = {13, 14, 255, 0x80000000u, 0xffffffffu};
    for (size_t k = 0; k < NI_ARRAY_LEN(bad); k++) {
        wb b = {0};
        w_header(&b, 3, 0, 1);
        w_key(&b, "k", bad[k]);
        w_u64(&b, 0);
        w_u64(&b, 0);
        expect_fail(&b, NI_EFORMAT, "'k'");
        wb_free(&b);
        /* as an array element type */
        w_header(&b, 3, 0, 1);
        w_key(&b, "arr", GGUF_VT_ARRAY);
        w_u32(&b, bad[k]);
        w_u64(&b, 1);
        w_u64(&b, 0);
        expect_fail(&b, NI_EFORMAT, "'arr'");
        wb_free(&b);
    }
    /* nested array (array of arrays), even a well-formed one */
    wb b = {0};
    w_header(&b, 3, 0, 1);
    w_key(&b, "nested", GGUF_VT_ARRAY);
    w_u32(&b, GGUF_VT_ARRAY);
    w_u64(&b, 1);
    w_u32(&b, GGUF_VT_UINT8);
    w_u64(&b, 1);
    w_u8(&b, 1);
    for (int j = 0; j < 8; j++) w_u8(&b, 0);
    expect_fail(&b, NI_EFORMAT, "'nested'");
    wb_free(&b);
    /* empty nested array is still rejected */
    w_header(&b, 3, 0, 1);
    w_key(&b, "nested", GGUF_VT_ARRAY);
    w_u32(&b, GGUF_VT_ARRAY);
    w_u64(&b, 0);
    expect_fail(&b, NI_EFORMAT, "'nested'");
    wb_free(&b);
}

static void test_duplicate_keys(void **state) {
    (void)state;
    wb b = {0};
    w_header(&b, 3, 0, 3);
    w_key(&b, "a", GGUF_VT_UINT32);
    w_u32(&b, 1);
    w_key(&b, "b", GGUF_VT_UINT32);
    w_u32(&b, 2);
    w_key(&b, "a", GGUF_VT_STRING);
    w_str(&b, "second a");
    expect_fail(&b, NI_EFORMAT, "duplicate");
    wb_free(&b);
    /* keys that share a prefix are distinct */
    gguf_ctx g;
    w_header(&b, 3, 0, 3);
    w_key(&b, "a", GGUF_VT_UINT32);
    w_u32(&b, 1);
    w_key(&b, "ab", GGUF_VT_UINT32);
    w_u32(&b, 2);
    w_key(&b, "", GGUF_VT_UINT32);
    w_u32(&b, 3);
    expect_ok(&b, &g);
    int64_t i;
    assert_int_equal(gguf_get_int(&g, "ab", &i), 0);
    assert_int_equal(i, 2);
    assert_int_equal(gguf_get_int(&g, "", &i), 0);
    assert_int_equal(i, 3);
    gguf_close(&g);
    wb_free(&b);
}

/* File with one tensor info followed by data_len bytes of data. */
static void one_tensor(wb *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                       uint64_t offset, size_t data_len) {
    w_header(b, 3, 1, 0);
    w_tinfo(b, name, n_dims, ne, type, offset);
    w_pad(b, 32);
    for (size_t k = 0; k < data_len; k++) w_u8(b, (uint8_t)k);
}

static void test_bad_tensor_shapes(void **state) {
    (void)state;
    uint64_t ne[5] = {32, 1, 1, 1, 1};
    wb b = {0};
    one_tensor(&b, "t", 0, ne, GGUF_T_F32, 0, 256);
    expect_fail(&b, NI_EFORMAT, "dims");
    wb_free(&b);
    one_tensor(&b, "t", 5, ne, GGUF_T_F32, 0, 256);
    expect_fail(&b, NI_EFORMAT, "dims");
    wb_free(&b);
    one_tensor(&b, "t", 0xffffffffu, ne, GGUF_T_F32, 0, 256);
    expect_fail(&b, NI_EFORMAT, "dims");
    wb_free(&b);
    /* a zero-size dimension, in each position */
    for (int d = 0; d < 4; d++) {
        uint64_t z[4] = {32, 2, 2, 2};
        z[d] = 0;
        one_tensor(&b, "t", 4, z, GGUF_T_F32, 0, 1024);
        expect_fail(&b, NI_EFORMAT, "shape");
        wb_free(&b);
    }
    /* absurd dims and element-count overflow */
    uint64_t big1[1] = {(1ull << 40) + 32};
    one_tensor(&b, "t", 1, big1, GGUF_T_F32, 0, 64);
    expect_fail(&b, NI_EFORMAT, "shape");
    wb_free(&b);
    uint64_t ovf[3] = {1ull << 32, 1ull << 32, 1ull << 32};
    one_tensor(&b, "t", 3, ovf, GGUF_T_F32, 0, 64);
    expect_fail(&b, NI_EFORMAT, "shape");
    wb_free(&b);
    uint64_t ovf2[4] = {1ull << 16, 1ull << 16, 1ull << 16, 1ull << 16}; /* exactly 2^64 */
    one_tensor(&b, "t", 4, ovf2, GGUF_T_F32, 0, 64);
    expect_fail(&b, NI_EFORMAT, "shape");
    wb_free(&b);
    /* element count fits, byte count overflows (2^63 elements) */
    uint64_t bytes_ovf[2] = {1ull << 40, 1ull << 23};
    one_tensor(&b, "t", 2, bytes_ovf, GGUF_T_F32, 0, 64);
    expect_fail(&b, NI_EFORMAT, "too large");
    wb_free(&b);
    one_tensor(&b, "t", 2, bytes_ovf, GGUF_T_Q8_0, 0, 64); /* 2^58 blocks * 34 B fits */
    expect_fail(&b, NI_EFORMAT, "past the end");
    wb_free(&b);
    /* huge but representable: does not fit the file */
    uint64_t big[2] = {1ull << 40, 1ull << 20};
    one_tensor(&b, "t", 2, big, GGUF_T_F16, 0, 64);
    expect_fail(&b, NI_EFORMAT, "past the end");
    wb_free(&b);
}

static void test_bad_tensor_types(void **state) {
    (void)state;
    static const uint32_t types[] = {4, 5, 6, 7, 9, 10, 12, 14, 15, 29, 31, 39, 1000, 0xffffffffu};
    uint64_t ne[1] = {64};
    for (size_t k = 0; k < NI_ARRAY_LEN(types); k++) {
        wb b = {0};
        one_tensor(&b, "t", 1, ne, types[k], 0, 1024);
        expect_fail(&b, NI_EUNSUPPORTED, "type");
        wb_free(&b);
    }
    /* rows not a multiple of the block */
    static const uint32_t qtypes[] = {GGUF_T_Q4_0, GGUF_T_Q4_1, GGUF_T_Q8_0};
    for (size_t k = 0; k < NI_ARRAY_LEN(qtypes); k++) {
        uint64_t row33[1] = {33};
        wb b = {0};
        one_tensor(&b, "t", 1, row33, qtypes[k], 0, 1024);
        expect_fail(&b, NI_EFORMAT, "multiple");
        wb_free(&b);
        /* 16 x 2 = 32 elements in total, but each row is half a block */
        uint64_t row16[2] = {16, 2};
        one_tensor(&b, "t", 2, row16, qtypes[k], 0, 1024);
        expect_fail(&b, NI_EFORMAT, "multiple");
        wb_free(&b);
    }
}

static void test_bad_tensor_offsets(void **state) {
    (void)state;
    uint64_t ne[1] = {64}; /* F32: 256 bytes */
    static const struct {
        uint64_t off;
        size_t data;
        const char *what;
    } c[] = {
        {0, 255, "past the end"},  /* one byte short */
        {32, 256, "past the end"}, /* shifted by one alignment unit */
        {1ull << 40, 256, "past the end"},
        {UINT64_MAX - 31, 256, "past the end"}, /* aligned; offset + size wraps */
        {(UINT64_MAX / 32) * 32, 256, "past the end"},
        {4, 1024, "misaligned"},
        {31, 1024, "misaligned"},
        {UINT64_MAX, 1024, "misaligned"},
    };
    for (size_t k = 0; k < NI_ARRAY_LEN(c); k++) {
        wb b = {0};
        one_tensor(&b, "t", 1, ne, GGUF_T_F32, c[k].off, c[k].data);
        expect_fail(&b, NI_EFORMAT, c[k].what);
        wb_free(&b);
    }
    /* exactly fitting at a non-zero offset is fine */
    wb b = {0};
    gguf_ctx g;
    one_tensor(&b, "t", 1, ne, GGUF_T_F32, 64, 64 + 256);
    expect_ok(&b, &g);
    assert_int_equal(g.tensors[0].nbytes, 256);
    assert_int_equal(g.tensors[0].offset, 64);
    gguf_close(&g);
    wb_free(&b);
    /* tensor infos end exactly at EOF with no room for the data section */
    w_header(&b, 3, 1, 0);
    w_tinfo(&b, "t", 1, ne, GGUF_T_F32, 0);
    expect_fail(&b, NI_EFORMAT, NULL);
    wb_free(&b);
}

static void test_duplicate_tensors(void **state) {
    (void)state;
    uint64_t ne[1] = {32};
    const char *names[][3] = {{"a", "b", "a"}, {"x", "x", "y"}, {"", "z", ""}};
    for (size_t k = 0; k < NI_ARRAY_LEN(names); k++) {
        wb b = {0};
        w_header(&b, 3, 3, 0);
        for (int t = 0; t < 3; t++) w_tinfo(&b, names[k][t], 1, ne, GGUF_T_F32, 128u * t);
        w_pad(&b, 32);
        for (int j = 0; j < 3 * 128; j++) w_u8(&b, 0);
        expect_fail(&b, NI_EFORMAT, "duplicate");
        wb_free(&b);
    }
    /* names that are prefixes of each other are distinct */
    wb b = {0};
    gguf_ctx g;
    w_header(&b, 3, 3, 0);
    w_tinfo(&b, "ab", 1, ne, GGUF_T_F32, 0);
    w_tinfo(&b, "a", 1, ne, GGUF_T_F32, 128);
    w_tinfo(&b, "abc", 1, ne, GGUF_T_F32, 256);
    w_pad(&b, 32);
    for (int j = 0; j < 3 * 128; j++) w_u8(&b, 0);
    expect_ok(&b, &g);
    assert_int_equal(gguf_find_tensor(&g, "a")->offset, 128);
    assert_int_equal(gguf_find_tensor(&g, "ab")->offset, 0);
    assert_int_equal(gguf_find_tensor(&g, "abc")->offset, 256);
    gguf_close(&g);
    wb_free(&b);
}

static void test_bad_alignment(void **state) {
    (void)state;
    static const uint32_t bad[] = {0, 3, 48, 1u << 17, 1u << 31, 0xffffffffu};
    for (size_t k = 0; k < NI_ARRAY_LEN(bad); k++) {
        wb b = {0};
        w_header(&b, 3, 0, 1);
        w_key(&b, "general.alignment", GGUF_VT_UINT32);
        w_u32(&b, bad[k]);
        expect_fail(&b, NI_EFORMAT, "alignment");
        wb_free(&b);
    }
    /* wrong value types */
    wb b = {0};
    w_header(&b, 3, 0, 1);
    w_key(&b, "general.alignment", GGUF_VT_STRING);
    w_str(&b, "32");
    expect_fail(&b, NI_EFORMAT, "alignment");
    wb_free(&b);
    w_header(&b, 3, 0, 1);
    w_key(&b, "general.alignment", GGUF_VT_FLOAT32);
    w_f32(&b, 32.0f);
    expect_fail(&b, NI_EFORMAT, "alignment");
    wb_free(&b);
    w_header(&b, 3, 0, 1);
    w_key(&b, "general.alignment", GGUF_VT_INT32);
    w_u32(&b, (uint32_t)-32);
    expect_fail(&b, NI_EFORMAT, "alignment");
    wb_free(&b);
    w_header(&b, 3, 0, 1);
    w_key(&b, "general.alignment", GGUF_VT_ARRAY);
    w_u32(&b, GGUF_VT_UINT32);
    w_u64(&b, 1);
    w_u32(&b, 32);
    expect_fail(&b, NI_EFORMAT, "alignment");
    wb_free(&b);
    /* a tensor aligned for 32 but the file says 64 */
    uint64_t ne[1] = {64};
    w_header(&b, 3, 1, 1);
    w_key(&b, "general.alignment", GGUF_VT_UINT32);
    w_u32(&b, 64);
    w_tinfo(&b, "t", 1, ne, GGUF_T_F32, 32);
    w_pad(&b, 64);
    for (int j = 0; j < 512; j++) w_u8(&b, 0);
    expect_fail(&b, NI_EFORMAT, "misaligned");
    wb_free(&b);
}

static void test_not_a_file(void **state) {
    (void)state;
    expect_fail_path(g_dir, NI_EIO, NULL); /* a directory */
    char p[256];
    snprintf(p, sizeof(p), "%s/does-not-exist.gguf", g_dir);
    expect_fail_path(p, NI_EIO, NULL);
    write_file(p, "", 0); /* empty file */
    expect_fail_path(p, NI_EFORMAT, NULL);
    unlink(p);
    /* err may be NULL or tiny */
    gguf_ctx g;
    assert_int_equal(gguf_open(&g, g_dir, NULL, 0), NI_EIO);
    char small[4];
    assert_int_equal(gguf_open(&g, g_dir, small, sizeof(small)), NI_EIO);
    assert_int_equal(small[3], 0);
}

/* Many tensors must not make validation quadratic: 100k uniquely named
 * tensors open (or fail) in well under the time limit. */
static void test_many_tensors(void **state) {
    (void)state;
    const int n = 100000;
    wb b = {0};
    uint64_t ne[1] = {8};
    w_header(&b, 3, (uint64_t)n, 0);
    char name[32];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "blk.%d.w", (i * 7919) % n); /* a permutation */
        w_tinfo(&b, name, 1, ne, GGUF_T_F32, 0);
    }
    w_pad(&b, 32);
    for (int j = 0; j < 32; j++) w_u8(&b, 0);
    gguf_ctx g;
    double t0 = ni_now();
    expect_ok(&b, &g);
    double dt = ni_now() - t0;
    print_message("100k tensors opened in %.3f s\n", dt);
    assert_int_equal(g.n_tensors, (uint64_t)n);
    assert_non_null(gguf_find_tensor(&g, "blk.99999.w"));
    gguf_close(&g);
    assert_true(dt < 5.0);
    wb_free(&b);
    /* and one duplicate at the end is still found */
    w_header(&b, 3, (uint64_t)n, 0);
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "blk.%d.w", i == n - 1 ? 12345 : i);
        w_tinfo(&b, name, 1, ne, GGUF_T_F32, 0);
    }
    w_pad(&b, 32);
    for (int j = 0; j < 32; j++) w_u8(&b, 0);
    t0 = ni_now();
    expect_fail(&b, NI_EFORMAT, "duplicate");
    assert_true(ni_now() - t0 < 5.0);
    wb_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_magic_version), cmocka_unit_test(test_truncated_every_offset),
        cmocka_unit_test(test_absurd_counts),     cmocka_unit_test(test_overlong_strings),
        cmocka_unit_test(test_huge_arrays),       cmocka_unit_test(test_bad_value_types),
        cmocka_unit_test(test_duplicate_keys),    cmocka_unit_test(test_bad_tensor_shapes),
        cmocka_unit_test(test_bad_tensor_types),  cmocka_unit_test(test_bad_tensor_offsets),
        cmocka_unit_test(test_duplicate_tensors), cmocka_unit_test(test_bad_alignment),
        cmocka_unit_test(test_not_a_file),        cmocka_unit_test(test_many_tensors),
    };
    /* NI_TEST_FILTER / NI_TEST_SKIP=pattern (cmocka * ? wildcards) select tests. */
    tu_filters();
    return cmocka_run_group_tests(tests, setup, teardown);
}
