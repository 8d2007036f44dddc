/*
 * test_gguf.c - the GGUF reader (engine/format/gguf.c) on well-formed files.
 *
 * The valid file of test_gguf_writer.h (one kv of every value type plus
 * string/numeric/empty arrays, tensors of every supported storage type) must
 * parse with exact values under every version and alignment, trailing bytes
 * allowed; a file without tensors or keys opens too. Then the real default
 * model (NI_MODEL) and the shared vocab files open with the values the
 * python gguf package reads; those tests skip, saying why, when absent. The
 * malformed corpus is in test_gguf_malformed.c.
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
#include "test_gguf_writer.h"

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
    assert_int_equal(gguf_get_int(g, "t.u8", &i), 0);
    assert_int_equal(i, 200);
    assert_int_equal(gguf_get_int(g, "t.i8", &i), 0);
    assert_int_equal(i, -5);
    assert_int_equal(gguf_get_int(g, "t.u16", &i), 0);
    assert_int_equal(i, 65535);
    assert_int_equal(gguf_get_int(g, "t.i16", &i), 0);
    assert_int_equal(i, -300);
    assert_int_equal(gguf_get_int(g, "t.u32", &i), 0);
    assert_int_equal(i, 4000000000ll);
    assert_int_equal(gguf_get_int(g, "t.i32", &i), 0);
    assert_int_equal(i, -2000000000ll);
    assert_int_equal(gguf_get_int(g, "t.bool", &i), 0);
    assert_int_equal(i, 1);
    assert_int_equal(gguf_get_int(g, "t.i64", &i), 0);
    assert_true(i == INT64_MIN);
    /* u64 max does not fit an int64: a format error, not a wrapped value */
    assert_int_equal(gguf_get_int(g, "t.u64", &i), NI_EFORMAT);
    assert_int_equal(gguf_find(g, "t.u64")->v.u64, UINT64_MAX);
    assert_int_equal(gguf_get_float(g, "t.f32", &f), 0);
    assert_true(f == 0.25);
    assert_int_equal(gguf_get_float(g, "t.f64", &f), 0);
    assert_true(f == 3.141592653589793);
    assert_int_equal(gguf_get_float(g, "t.i16", &f), 0);
    assert_true(f == -300.0);
    assert_int_equal(gguf_get_float(g, "t.u32", &f), 0);
    assert_true(f == 4000000000.0);
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
    assert_int_equal(u[0], 1);
    assert_int_equal(u[1], 2);
    assert_int_equal(u[2], 3);
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
            if (((const uint8_t *)gt->data)[k] != tbyte(t, k))
                fail_msg("tensor %d byte %llu", t, (unsigned long long)k);
    }
    assert_null(gguf_find_tensor(g, "f3"));
    assert_null(gguf_find_tensor(g, "f32x"));
    assert_null(gguf_find_tensor(g, ""));
}

static void test_valid_file(void **state) {
    (void)state;
    static const struct {
        uint32_t version, align;
    } v[] = {
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
        assert_int_equal(gguf_get_int(&g, "llama.block_count", &i), 0);
        assert_int_equal(i, 30);
        assert_int_equal(gguf_get_int(&g, "llama.embedding_length", &i), 0);
        assert_int_equal(i, 576);
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
        print_message("NI_MODEL=%s: only generic checks (exact values are for SmolLM2 Q4_1)\n",
                      path);
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
        cmocka_unit_test(test_valid_file), cmocka_unit_test(test_minimal_files),
        cmocka_unit_test(test_real_model), cmocka_unit_test(test_shared_vocab),
        cmocka_unit_test(test_type_names),
    };
    /* NI_TEST_FILTER / NI_TEST_SKIP=pattern (cmocka * ? wildcards) select tests. */
    tu_filters();
    return cmocka_run_group_tests(tests, setup, teardown);
}
