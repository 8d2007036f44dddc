/*
 * test_gguf_writer.h - what the GGUF reader programs (test_gguf.c,
 * test_gguf_malformed.c) share: a tiny GGUF writer, the valid file built
 * with it (one kv of every value type plus string/numeric/empty arrays,
 * tensors of every supported storage type, each byte of tensor data known),
 * and the fixtures: the mkdtemp() directory the files are written into
 * (setup/teardown remove it) and the open of a file expected to succeed.
 *
 * The functions are static inline: each program uses only some of them.
 * They fail through cmocka, so they are called from inside a test function.
 */
#ifndef NI_TEST_GGUF_WRITER_H
#define NI_TEST_GGUF_WRITER_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/format/gguf.h"
#include "engine/util/util.h"

/* ---------------------------------------------------------------- writer */

typedef struct wb {
    uint8_t *p;
    size_t len, cap;
} wb;

static inline void wb_put(wb *b, const void *d, size_t n) {
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
static inline void wb_free(wb *b) {
    free(b->p);
    memset(b, 0, sizeof(*b));
}
static inline void w_u8(wb *b, uint8_t v) { wb_put(b, &v, 1); }
static inline void w_u16(wb *b, uint16_t v) { wb_put(b, &v, 2); }
static inline void w_u32(wb *b, uint32_t v) { wb_put(b, &v, 4); }
static inline void w_u64(wb *b, uint64_t v) { wb_put(b, &v, 8); }
static inline void w_f32(wb *b, float v) { wb_put(b, &v, 4); }
static inline void w_f64(wb *b, double v) { wb_put(b, &v, 8); }
static inline void w_strn(wb *b, const char *s, uint64_t n) {
    w_u64(b, n);
    wb_put(b, s, (size_t)n);
}
static inline void w_str(wb *b, const char *s) { w_strn(b, s, strlen(s)); }
static inline void w_pad(wb *b, uint64_t align) {
    while (b->len % align) w_u8(b, 0);
}
static inline void w_header(wb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    wb_put(b, "GGUF", 4);
    w_u32(b, version);
    w_u64(b, n_tensors);
    w_u64(b, n_kv);
}
static inline void w_key(wb *b, const char *key, uint32_t type) {
    w_str(b, key);
    w_u32(b, type);
}
static inline void w_tinfo(wb *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                           uint32_t type, uint64_t offset) {
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

static inline uint8_t tbyte(int t, uint64_t k) { return (uint8_t)(t * 61 + k * 37 + 11); }

typedef struct layout {
    uint64_t data_offset;
    uint64_t offset[6]; /* [N_VALID_T] */
} layout;

/* Builds the valid file. align 0: no general.alignment key (default 32). */
static inline void build_valid(wb *b, uint32_t version, uint32_t align, layout *lay) {
    uint64_t a = align ? align : 32;
    w_header(b, version, N_VALID_T, N_VALID_KV + (align ? 1 : 0));
    w_key(b, "t.u8", GGUF_VT_UINT8);
    w_u8(b, 200);
    w_key(b, "t.i8", GGUF_VT_INT8);
    w_u8(b, (uint8_t)(int8_t)-5);
    w_key(b, "t.u16", GGUF_VT_UINT16);
    w_u16(b, 65535);
    w_key(b, "t.i16", GGUF_VT_INT16);
    w_u16(b, (uint16_t)(int16_t)-300);
    w_key(b, "t.u32", GGUF_VT_UINT32);
    w_u32(b, 4000000000u);
    w_key(b, "t.i32", GGUF_VT_INT32);
    w_u32(b, (uint32_t)(int32_t)-2000000000);
    w_key(b, "t.f32", GGUF_VT_FLOAT32);
    w_f32(b, 0.25f);
    w_key(b, "t.bool", GGUF_VT_BOOL);
    w_u8(b, 1);
    w_key(b, "t.str", GGUF_VT_STRING);
    w_strn(b, "hello\0world", 11);
    if (align) {
        w_key(b, "general.alignment", GGUF_VT_UINT32);
        w_u32(b, align);
    }
    w_key(b, "t.u64", GGUF_VT_UINT64);
    w_u64(b, UINT64_MAX);
    w_key(b, "t.i64", GGUF_VT_INT64);
    w_u64(b, (uint64_t)INT64_MIN);
    w_key(b, "t.f64", GGUF_VT_FLOAT64);
    w_f64(b, 3.141592653589793);
    w_key(b, "t.arr.u32", GGUF_VT_ARRAY);
    w_u32(b, GGUF_VT_UINT32);
    w_u64(b, 4);
    w_u32(b, 1);
    w_u32(b, 2);
    w_u32(b, 3);
    w_u32(b, 0xffffffffu);
    w_key(b, "t.arr.str", GGUF_VT_ARRAY);
    w_u32(b, GGUF_VT_STRING);
    w_u64(b, 4);
    w_str(b, "a");
    w_str(b, "");
    w_str(b, "ccc");
    w_str(b, "\xc3\xbcn\xc3\xaf");
    w_key(b, "t.arr.f32", GGUF_VT_ARRAY);
    w_u32(b, GGUF_VT_FLOAT32);
    w_u64(b, 2);
    w_f32(b, 1.5f);
    w_f32(b, -2.0f);
    w_key(b, "t.arr.empty", GGUF_VT_ARRAY);
    w_u32(b, GGUF_VT_INT64);
    w_u64(b, 0);
    w_key(b, "t.arr.strempty", GGUF_VT_ARRAY);
    w_u32(b, GGUF_VT_STRING);
    w_u64(b, 0);
    w_key(b, "t.empty_str", GGUF_VT_STRING);
    w_str(b, "");
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

static inline int setup(void **state) {
    (void)state;
    strcpy(g_dir, "/tmp/ni_test_gguf_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    snprintf(g_path, sizeof(g_path), "%s/case.gguf", g_dir);
    return 0;
}

static inline int teardown(void **state) {
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

static inline void write_file(const char *path, const void *d, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(d, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static inline int is_zeroed(const gguf_ctx *g) {
    static const gguf_ctx z;
    return memcmp(g, &z, sizeof(z)) == 0;
}

static inline void expect_ok(const wb *b, gguf_ctx *g) {
    char err[512] = "";
    write_file(g_path, b->p, b->len);
    int rc = gguf_open(g, g_path, err, sizeof(err));
    if (rc) fail_msg("gguf_open failed: %d %s", rc, err);
}

#endif
