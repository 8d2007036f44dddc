/*
 * test_gguf.c - hardening tests for the GGUF reader (engine/format/gguf.c).
 *
 * A tiny GGUF writer below builds a valid file holding one kv of every value
 * type (plus string/numeric/empty arrays) and tensors of every supported
 * storage type; it must parse with exact values. Then a corpus of malformed
 * files (bad magic/version, every truncation of the valid file, absurd
 * counts, overlong strings and arrays, bad types, bad shapes, bad offsets,
 * duplicates, bad alignment, a 100k-tensor file) must each fail cleanly: a
 * negative NI_E* code, a message naming the file, a zeroed context, no crash
 * (run under ASan/UBSan too). Finally the real default model (NI_MODEL) and
 * the shared vocab files open; those tests skip, saying why, when absent.
 * Files are written into a mkdtemp() directory removed at the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/format/gguf.h"
#include "engine/format/quant.h"
#include "engine/util/util.h"
#include "test_util.h"

/* ---------------------------------------------------------------- writer */

typedef struct wb {
    uint8_t *p;
    size_t len, cap;
} wb;

static void wb_put(wb *b, const void *d, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n) cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, d, n);
    b->len += n;
}
static void wb_free(wb *b) { free(b->p); memset(b, 0, sizeof(*b)); }
static void w_u8(wb *b, uint8_t v) { wb_put(b, &v, 1); }
static void w_u16(wb *b, uint16_t v) { wb_put(b, &v, 2); }
static void w_u32(wb *b, uint32_t v) { wb_put(b, &v, 4); }
static void w_u64(wb *b, uint64_t v) { wb_put(b, &v, 8); }
static void w_f32(wb *b, float v) { wb_put(b, &v, 4); }
static void w_f64(wb *b, double v) { wb_put(b, &v, 8); }
static void w_strn(wb *b, const char *s, uint64_t n) { w_u64(b, n); wb_put(b, s, (size_t)n); }
static void w_str(wb *b, const char *s) { w_strn(b, s, strlen(s)); }
static void w_pad(wb *b, uint64_t align) { while (b->len % align) w_u8(b, 0); }
static void w_header(wb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    wb_put(b, "GGUF", 4);
    w_u32(b, version);
    w_u64(b, n_tensors);
    w_u64(b, n_kv);
}
static void w_key(wb *b, const char *key, uint32_t type) { w_str(b, key); w_u32(b, type); }
static void w_tinfo(wb *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                    uint64_t offset) {
    w_str(b, name);
    w_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims && d < 5; d++) w_u64(b, ne[d]); /* ne has >= min(n_dims, 5) */
    w_u32(b, type);
    w_u64(b, offset);
}

/* ------------------------------------------------------- the valid file */

typedef struct vt {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[4];
    uint32_t type;
    uint64_t nbytes; /* computed independently of quant.c */
} vt;

static const vt VALID_T[] = {
    {"f32", 2, {4, 2, 1, 1}, GGUF_T_F32, 8 * 4},
    {"f16", 1, {8, 1, 1, 1}, GGUF_T_F16, 8 * 2},
    {"q8_0", 2, {32, 2, 1, 1}, GGUF_T_Q8_0, 2 * 34},
    {"q4_0", 1, {64, 1, 1, 1}, GGUF_T_Q4_0, 2 * 18},
    {"blk.0.q4_1", 3, {32, 1, 1, 1}, GGUF_T_Q4_1, 20},
    {"bf16", 4, {2, 1, 3, 2}, GGUF_T_BF16, 12 * 2},
};
#define N_VALID_T ((int)NI_ARRAY_LEN(VALID_T))
#define N_VALID_KV 18 /* without general.alignment */

static uint8_t tbyte(int t, uint64_t k) { return (uint8_t)(t * 61 + k * 37 + 11); }

typedef struct layout {
    uint64_t data_offset;
    uint64_t offset[6]; /* [N_VALID_T] */
} layout;

/* Builds the valid file. align 0: no general.alignment key (default 32). */
static void build_valid(wb *b, uint32_t version, uint32_t align, layout *lay) {
    uint64_t a = align ? align : 32;
    w_header(b, version, N_VALID_T, N_VALID_KV + (align ? 1 : 0));
    w_key(b, "t.u8", GGUF_VT_UINT8); w_u8(b, 200);
    w_key(b, "t.i8", GGUF_VT_INT8); w_u8(b, (uint8_t)(int8_t)-5);
    w_key(b, "t.u16", GGUF_VT_UINT16); w_u16(b, 65535);
    w_key(b, "t.i16", GGUF_VT_INT16); w_u16(b, (uint16_t)(int16_t)-300);
    w_key(b, "t.u32", GGUF_VT_UINT32); w_u32(b, 4000000000u);
    w_key(b, "t.i32", GGUF_VT_INT32); w_u32(b, (uint32_t)(int32_t)-2000000000);
    w_key(b, "t.f32", GGUF_VT_FLOAT32); w_f32(b, 0.25f);
    w_key(b, "t.bool", GGUF_VT_BOOL); w_u8(b, 1);
    w_key(b, "t.str", GGUF_VT_STRING); w_strn(b, "hello\0world", 11);
    if (align) { w_key(b, "general.alignment", GGUF_VT_UINT32); w_u32(b, align); }
    w_key(b, "t.u64", GGUF_VT_UINT64); w_u64(b, UINT64_MAX);
    w_key(b, "t.i64", GGUF_VT_INT64); w_u64(b, (uint64_t)INT64_MIN);
    w_key(b, "t.f64", GGUF_VT_FLOAT64); w_f64(b, 3.141592653589793);
    w_key(b, "t.arr.u32", GGUF_VT_ARRAY); w_u32(b, GGUF_VT_UINT32); w_u64(b, 4);
    w_u32(b, 1); w_u32(b, 2); w_u32(b, 3); w_u32(b, 0xffffffffu);
    w_key(b, "t.arr.str", GGUF_VT_ARRAY); w_u32(b, GGUF_VT_STRING); w_u64(b, 4);
    w_str(b, "a"); w_str(b, ""); w_str(b, "ccc"); w_str(b, "\xc3\xbcn\xc3\xaf");
    w_key(b, "t.arr.f32", GGUF_VT_ARRAY); w_u32(b, GGUF_VT_FLOAT32); w_u64(b, 2);
    w_f32(b, 1.5f); w_f32(b, -2.0f);
    w_key(b, "t.arr.empty", GGUF_VT_ARRAY); w_u32(b, GGUF_VT_INT64); w_u64(b, 0);
    w_key(b, "t.arr.strempty", GGUF_VT_ARRAY); w_u32(b, GGUF_VT_STRING); w_u64(b, 0);
    w_key(b, "t.empty_str", GGUF_VT_STRING); w_str(b, "");
    /* tensor infos: offsets packed with padding to the alignment */
    uint64_t off = 0;
    for (int t = 0; t < N_VALID_T; t++) {
        off = (off + a - 1) / a * a;
        lay->offset[t] = off;
        w_tinfo(b, VALID_T[t].name, VALID_T[t].n_dims, VALID_T[t].ne, VALID_T[t].type, off);
        off += VALID_T[t].nbytes;
    }
    w_pad(b, a);
    lay->data_offset = b->len;
    /* data; the file ends exactly at the last tensor's last byte */
    for (int t = 0; t < N_VALID_T; t++) {
        while (b->len < lay->data_offset + lay->offset[t]) w_u8(b, 0);
        for (uint64_t k = 0; k < VALID_T[t].nbytes; k++) w_u8(b, tbyte(t, k));
    }
}

/* ------------------------------------------------------------- fixtures */

static char g_dir[64];
static char g_path[128];

static int setup(void **state) {
    (void)state;
    strcpy(g_dir, "/tmp/ni_test_gguf_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    snprintf(g_path, sizeof(g_path), "%s/case.gguf", g_dir);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    DIR *d = opendir(g_dir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof(p), "%s/%s", g_dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(g_dir);
    return 0;
}

static void write_file(const char *path, const void *d, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(d, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static int is_zeroed(const gguf_ctx *g) {
    static const gguf_ctx z;
    return memcmp(g, &z, sizeof(z)) == 0;
}

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
    if (code && rc != code) fail_msg("%s: rc %d (%s), want %d; msg: %s", path, rc, ni_strerror(rc), code, err);
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

static void expect_ok(const wb *b, gguf_ctx *g) {
    char err[512] = "";
    write_file(g_path, b->p, b->len);
    int rc = gguf_open(g, g_path, err, sizeof(err));
    if (rc) fail_msg("gguf_open failed: %d %s", rc, err);
}

/* ------------------------------------------------------------ valid file */

static void check_valid(const gguf_ctx *g, uint32_t version, uint32_t align, const layout *lay,
                        size_t size) {
    uint64_t a = align ? align : 32;
    assert_int_equal(g->version, version);
    assert_int_equal(g->size, size);
    assert_int_equal(g->n_kv, N_VALID_KV + (align ? 1 : 0));
    assert_int_equal(g->n_tensors, N_VALID_T);
    assert_int_equal(g->alignment, a);
    assert_int_equal(g->data_offset, lay->data_offset);
    assert_int_equal(g->data_offset % a, 0);

    int64_t i;
    double f;
    gguf_str s;
    assert_int_equal(gguf_get_int(g, "t.u8", &i), 0); assert_int_equal(i, 200);
    assert_int_equal(gguf_get_int(g, "t.i8", &i), 0); assert_int_equal(i, -5);
    assert_int_equal(gguf_get_int(g, "t.u16", &i), 0); assert_int_equal(i, 65535);
    assert_int_equal(gguf_get_int(g, "t.i16", &i), 0); assert_int_equal(i, -300);
    assert_int_equal(gguf_get_int(g, "t.u32", &i), 0); assert_int_equal(i, 4000000000ll);
    assert_int_equal(gguf_get_int(g, "t.i32", &i), 0); assert_int_equal(i, -2000000000ll);
    assert_int_equal(gguf_get_int(g, "t.bool", &i), 0); assert_int_equal(i, 1);
    assert_int_equal(gguf_get_int(g, "t.i64", &i), 0); assert_true(i == INT64_MIN);
    /* u64 max does not fit an int64: a format error, not a wrapped value */
    assert_int_equal(gguf_get_int(g, "t.u64", &i), NI_EFORMAT);
    assert_int_equal(gguf_find(g, "t.u64")->v.u64, UINT64_MAX);
    assert_int_equal(gguf_get_float(g, "t.f32", &f), 0); assert_true(f == 0.25);
    assert_int_equal(gguf_get_float(g, "t.f64", &f), 0); assert_true(f == 3.141592653589793);
    assert_int_equal(gguf_get_float(g, "t.i16", &f), 0); assert_true(f == -300.0);
    assert_int_equal(gguf_get_float(g, "t.u32", &f), 0); assert_true(f == 4000000000.0);
    assert_int_equal(gguf_get_int(g, "t.f32", &i), NI_EFORMAT);
    assert_int_equal(gguf_get_str(g, "t.str", &s), 0);
    assert_int_equal(s.len, 11);
    assert_memory_equal(s.ptr, "hello\0world", 11);
    assert_int_equal(gguf_get_str(g, "t.empty_str", &s), 0);
    assert_int_equal(s.len, 0);
    assert_int_equal(gguf_get_str(g, "t.u8", &s), NI_EFORMAT);
    assert_int_equal(gguf_get_int(g, "t.str", &i), NI_EFORMAT);
    assert_int_equal(gguf_get_float(g, "t.str", &f), NI_EFORMAT);
    assert_int_equal(gguf_get_int(g, "absent", &i), NI_ENOTFOUND);
    assert_int_equal(gguf_get_float(g, "absent", &f), NI_ENOTFOUND);
    assert_int_equal(gguf_get_str(g, "absent", &s), NI_ENOTFOUND);
    assert_null(gguf_find(g, "t.u8x"));
    assert_null(gguf_find(g, "t.u"));
    assert_null(gguf_find(g, ""));

    const gguf_kv *kv = gguf_get_arr(g, "t.arr.u32", GGUF_VT_UINT32);
    assert_non_null(kv);
    assert_int_equal(kv->arr_n, 4);
    uint32_t u[4];
    memcpy(u, kv->arr_data, sizeof(u));
    assert_int_equal(u[0], 1); assert_int_equal(u[1], 2); assert_int_equal(u[2], 3);
    assert_int_equal(u[3], 0xffffffffu);
    assert_null(gguf_get_arr(g, "t.arr.u32", GGUF_VT_INT32)); /* wrong element type */
    assert_null(gguf_get_arr(g, "t.u32", GGUF_VT_UINT32));    /* not an array */
    assert_null(gguf_get_arr(g, "absent", GGUF_VT_UINT32));
    assert_int_equal(gguf_get_int(g, "t.arr.u32", &i), NI_EFORMAT);
    kv = gguf_get_arr(g, "t.arr.str", GGUF_VT_STRING);
    assert_non_null(kv);
    assert_int_equal(kv->arr_n, 4);
    assert_non_null(kv->arr_strs);
    assert_true(gguf_str_eq(kv->arr_strs[0], "a"));
    assert_true(gguf_str_eq(kv->arr_strs[1], ""));
    assert_true(gguf_str_eq(kv->arr_strs[2], "ccc"));
    assert_true(gguf_str_eq(kv->arr_strs[3], "\xc3\xbcn\xc3\xaf"));
    assert_false(gguf_str_eq(kv->arr_strs[2], "cc"));
    assert_false(gguf_str_eq(kv->arr_strs[2], "cccc"));
    kv = gguf_get_arr(g, "t.arr.f32", GGUF_VT_FLOAT32);
    assert_non_null(kv);
    float fl[2];
    memcpy(fl, kv->arr_data, sizeof(fl));
    assert_true(fl[0] == 1.5f && fl[1] == -2.0f);
    kv = gguf_get_arr(g, "t.arr.empty", GGUF_VT_INT64);
    assert_non_null(kv);
    assert_int_equal(kv->arr_n, 0);
    kv = gguf_get_arr(g, "t.arr.strempty", GGUF_VT_STRING);
    assert_non_null(kv);
    assert_int_equal(kv->arr_n, 0);

    for (int t = 0; t < N_VALID_T; t++) {
        const gguf_tensor *gt = gguf_find_tensor(g, VALID_T[t].name);
        assert_non_null(gt);
        assert_ptr_equal(gt, &g->tensors[t]);
        assert_true(gguf_str_eq(gt->name, VALID_T[t].name));
        assert_int_equal(gt->n_dims, VALID_T[t].n_dims);
        uint64_t n = 1;
        for (int d = 0; d < 4; d++) {
            assert_int_equal(gt->ne[d], VALID_T[t].ne[d]);
            n *= VALID_T[t].ne[d];
        }
        assert_int_equal(gt->n_elements, n);
        assert_int_equal(gt->type, VALID_T[t].type);
        assert_int_equal(gt->offset, lay->offset[t]);
        assert_int_equal(gt->nbytes, VALID_T[t].nbytes);
        const uint8_t *want = (const uint8_t *)g->map + lay->data_offset + lay->offset[t];
        assert_ptr_equal(gt->data, want);
        assert_int_equal(((uintptr_t)gt->data - (uintptr_t)g->map) % a, 0);
        for (uint64_t k = 0; k < gt->nbytes; k++)
            if (((const uint8_t *)gt->data)[k] != tbyte(t, k)) fail_msg("tensor %d byte %llu", t,
                                                                      (unsigned long long)k);
    }
    assert_null(gguf_find_tensor(g, "f3"));
    assert_null(gguf_find_tensor(g, "f32x"));
    assert_null(gguf_find_tensor(g, ""));
}

static void test_valid_file(void **state) {
    (void)state;
    static const struct { uint32_t version, align; } v[] = {
        {3, 32}, {3, 0}, {2, 32}, {3, 64}, {3, 1}, {3, 8}, {3, 4096},
    };
    for (size_t k = 0; k < NI_ARRAY_LEN(v); k++) {
        wb b = {0};
        layout lay;
        build_valid(&b, v[k].version, v[k].align, &lay);
        gguf_ctx g;
        expect_ok(&b, &g);
        check_valid(&g, v[k].version, v[k].align, &lay, b.len);
        gguf_close(&g);
        assert_true(is_zeroed(&g));
        gguf_close(&g); /* double close is safe */
        /* trailing bytes after the data section are allowed */
        w_u64(&b, 0x1234);
        expect_ok(&b, &g);
        check_valid(&g, v[k].version, v[k].align, &lay, b.len);
        gguf_close(&g);
        wb_free(&b);
    }
}

/* A tensor-free, key-free file is a valid (if useless) GGUF. */
static void test_minimal_files(void **state) {
    (void)state;
    wb b = {0};
    gguf_ctx g;
    w_header(&b, 3, 0, 0);
    expect_ok(&b, &g);
    assert_int_equal(g.n_kv, 0);
    assert_int_equal(g.n_tensors, 0);
    assert_null(gguf_find(&g, "x"));
    assert_null(gguf_find_tensor(&g, "x"));
    gguf_close(&g);
    wb_free(&b);
    /* keys only, no tensors, file ends right after the last value */
    w_header(&b, 3, 0, 1);
    w_key(&b, "k", GGUF_VT_UINT8);
    w_u8(&b, 7);
    expect_ok(&b, &g);
    int64_t i;
    assert_int_equal(gguf_get_int(&g, "k", &i), 0);
    assert_int_equal(i, 7);
    gguf_close(&g);
    wb_free(&b);
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
    static const struct { uint32_t type; uint64_t n; } a[] = {
        {GGUF_VT_UINT8, UINT64_MAX},      {GGUF_VT_UINT8, 1000},
        {GGUF_VT_UINT64, 1ull << 61},     /* n * 8 wraps to 0 */
        {GGUF_VT_UINT32, (1ull << 62) + 1}, /* n * 4 wraps to 4 */
        {GGUF_VT_STRING, 1ull << 60},     {GGUF_VT_STRING, UINT64_MAX},
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
    w_key(&b, "a", GGUF_VT_UINT32); w_u32(&b, 1);
    w_key(&b, "b", GGUF_VT_UINT32); w_u32(&b, 2);
    w_key(&b, "a", GGUF_VT_STRING); w_str(&b, "second a");
    expect_fail(&b, NI_EFORMAT, "duplicate");
    wb_free(&b);
    /* keys that share a prefix are distinct */
    gguf_ctx g;
    w_header(&b, 3, 0, 3);
    w_key(&b, "a", GGUF_VT_UINT32); w_u32(&b, 1);
    w_key(&b, "ab", GGUF_VT_UINT32); w_u32(&b, 2);
    w_key(&b, "", GGUF_VT_UINT32); w_u32(&b, 3);
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
    static const struct { uint64_t off; size_t data; const char *what; } c[] = {
        {0, 255, "past the end"},           /* one byte short */
        {32, 256, "past the end"},          /* shifted by one alignment unit */
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

/* ---------------------------------------------------------- real files */

static void test_real_model(void **state) {
    (void)state;
    const char *path = tu_require_model();
    gguf_ctx g;
    char err[512];
    int rc = gguf_open(&g, path, err, sizeof(err));
    if (rc) fail_msg("%s", err);
    assert_true(g.n_tensors > 0);
    /* every tensor lies inside the mapping, aligned, with a consistent size */
    for (uint64_t i = 0; i < g.n_tensors; i++) {
        const gguf_tensor *t = &g.tensors[i];
        uint64_t nb;
        assert_int_equal(qnt_nbytes(t->type, t->n_elements, &nb), 0);
        assert_int_equal(nb, t->nbytes);
        uintptr_t off = (uintptr_t)t->data - (uintptr_t)g.map;
        assert_true(off >= g.data_offset && off + t->nbytes <= g.size);
        assert_int_equal(off % g.alignment, 0);
        assert_string_not_equal(gguf_type_name(t->type), "unknown");
    }
    gguf_str s;
    assert_int_equal(gguf_get_str(&g, "general.architecture", &s), 0);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!strcmp(base, "SmolLM2-135M-Instruct.Q4_1.gguf")) {
        /* exact values, as the python gguf package reads them */
        int64_t i;
        double f;
        assert_int_equal(g.version, 3);
        assert_int_equal(g.n_kv, 33);
        assert_int_equal(g.n_tensors, 272);
        assert_int_equal(g.alignment, 32);
        assert_int_equal(g.data_offset, 1785664);
        assert_true(gguf_str_eq(s, "llama"));
        assert_int_equal(gguf_get_int(&g, "llama.block_count", &i), 0); assert_int_equal(i, 30);
        assert_int_equal(gguf_get_int(&g, "llama.embedding_length", &i), 0); assert_int_equal(i, 576);
        assert_int_equal(gguf_get_int(&g, "llama.attention.head_count_kv", &i), 0);
        assert_int_equal(i, 3);
        assert_int_equal(gguf_get_float(&g, "llama.rope.freq_base", &f), 0);
        assert_true(f == 100000.0);
        assert_int_equal(gguf_get_float(&g, "llama.attention.layer_norm_rms_epsilon", &f), 0);
        assert_true(f == (double)1e-5f);
        assert_int_equal(gguf_get_int(&g, "tokenizer.ggml.add_bos_token", &i), 0);
        assert_int_equal(i, 0);
        assert_int_equal(gguf_get_str(&g, "tokenizer.chat_template", &s), 0);
        assert_int_equal(s.len > 100, 1);
        const gguf_kv *kv = gguf_get_arr(&g, "tokenizer.ggml.tokens", GGUF_VT_STRING);
        assert_non_null(kv);
        assert_int_equal(kv->arr_n, 49152);
        assert_true(gguf_str_eq(kv->arr_strs[1], "<|im_start|>"));
        kv = gguf_get_arr(&g, "tokenizer.ggml.merges", GGUF_VT_STRING);
        assert_non_null(kv);
        assert_int_equal(kv->arr_n, 48900);
        const gguf_tensor *t = gguf_find_tensor(&g, "token_embd.weight");
        assert_non_null(t);
        assert_int_equal(t->type, GGUF_T_Q8_0);
        assert_int_equal(t->n_dims, 2);
        assert_int_equal(t->ne[0], 576);
        assert_int_equal(t->ne[1], 49152);
        t = gguf_find_tensor(&g, "blk.0.ffn_down.weight");
        assert_non_null(t);
        assert_int_equal(t->type, GGUF_T_Q4_1);
        assert_int_equal(t->ne[0], 1536);
        assert_int_equal(t->ne[1], 576);
        t = gguf_find_tensor(&g, "blk.29.attn_norm.weight");
        assert_non_null(t);
        assert_int_equal(t->type, GGUF_T_F32);
        assert_null(gguf_find_tensor(&g, "blk.30.attn_norm.weight"));
    } else {
        print_message("NI_MODEL=%s: only generic checks (exact values are for SmolLM2 Q4_1)\n", path);
    }
    gguf_close(&g);
}

static void test_shared_vocab(void **state) {
    (void)state;
    glob_t gl;
    if (glob("../shared/vocab/*.gguf", 0, NULL, &gl) != 0 || gl.gl_pathc == 0) {
        print_message("SKIP: no ../shared/vocab/*.gguf (the shared vocab folder is absent)\n");
        skip();
    }
    for (size_t k = 0; k < gl.gl_pathc; k++) {
        const char *p = gl.gl_pathv[k];
        gguf_ctx g;
        char err[512];
        int rc = gguf_open(&g, p, err, sizeof(err));
        if (rc) fail_msg("%s", err);
        gguf_str model;
        assert_int_equal(gguf_get_str(&g, "tokenizer.ggml.model", &model), 0);
        const gguf_kv *tok = gguf_get_arr(&g, "tokenizer.ggml.tokens", GGUF_VT_STRING);
        assert_non_null(tok);
        if (strstr(p, "ggml-vocab-llama-spm.gguf")) {
            assert_true(gguf_str_eq(model, "llama"));
            assert_int_equal(tok->arr_n, 32000);
            assert_true(gguf_str_eq(tok->arr_strs[1], "<s>"));
            const gguf_kv *sc = gguf_get_arr(&g, "tokenizer.ggml.scores", GGUF_VT_FLOAT32);
            assert_non_null(sc);
            assert_int_equal(sc->arr_n, 32000);
        } else if (strstr(p, "ggml-vocab-gpt-2.gguf")) {
            assert_true(gguf_str_eq(model, "gpt2"));
            assert_int_equal(tok->arr_n, 50257);
            const gguf_kv *m = gguf_get_arr(&g, "tokenizer.ggml.merges", GGUF_VT_STRING);
            assert_non_null(m);
            assert_int_equal(m->arr_n, 50000);
        }
        print_message("%s: %llu keys, %llu tensors\n", p, (unsigned long long)g.n_kv,
                      (unsigned long long)g.n_tensors);
        gguf_close(&g);
    }
    globfree(&gl);
}

static void test_type_names(void **state) {
    (void)state;
    assert_string_equal(gguf_type_name(GGUF_T_F32), "F32");
    assert_string_equal(gguf_type_name(GGUF_T_F16), "F16");
    assert_string_equal(gguf_type_name(GGUF_T_Q4_0), "Q4_0");
    assert_string_equal(gguf_type_name(GGUF_T_Q4_1), "Q4_1");
    assert_string_equal(gguf_type_name(GGUF_T_Q8_0), "Q8_0");
    assert_string_equal(gguf_type_name(GGUF_T_BF16), "BF16");
    assert_string_equal(gguf_type_name(14), "unknown");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_file),
        cmocka_unit_test(test_minimal_files),
        cmocka_unit_test(test_bad_magic_version),
        cmocka_unit_test(test_truncated_every_offset),
        cmocka_unit_test(test_absurd_counts),
        cmocka_unit_test(test_overlong_strings),
        cmocka_unit_test(test_huge_arrays),
        cmocka_unit_test(test_bad_value_types),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_bad_tensor_shapes),
        cmocka_unit_test(test_bad_tensor_types),
        cmocka_unit_test(test_bad_tensor_offsets),
        cmocka_unit_test(test_duplicate_tensors),
        cmocka_unit_test(test_bad_alignment),
        cmocka_unit_test(test_not_a_file),
        cmocka_unit_test(test_many_tensors),
        cmocka_unit_test(test_real_model),
        cmocka_unit_test(test_shared_vocab),
        cmocka_unit_test(test_type_names),
    };
    /* NI_TEST_FILTER / NI_TEST_SKIP=pattern (cmocka * ? wildcards) select tests. */
    tu_filters();
    return cmocka_run_group_tests(tests, setup, teardown);
}
