/*
 * test_model_defaults.c - the sampling defaults mdl_load reads from a model
 * (mdl_model.sampling, engine/model/model.c):
 *   GGUF  general.sampling.{temp,top_k,top_p,min_p,penalty_repeat}, any
 *         numeric storage type (llama.cpp's converter writes f32 / u32 / i32),
 *         other general.sampling.* keys ignored; a key of the wrong type
 *         refuses the file with a message naming it;
 *   HF    generation_config.json {temperature, top_k, top_p, min_p,
 *         repetition_penalty}; null = not set; "do_sample": false = greedy
 *         (temperature 0) whatever temperature says; wrong types or broken
 *         JSON refuse the directory; no file = nothing set.
 * The GGUF cases build the tiny model of test_model_writer.h in a mkdtemp()
 * directory; the HF cases link the files of test/models/tiny-llama3 into one
 * and write generation_config.json beside them. The default model
 * (SmolLM2-135M-Instruct Q4_1) carries no sampling keys: checked too, so a
 * change of the fetched file shows here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/format/gguf.h"
#include "engine/model/model.h"
#include "engine/util/util.h"
#include "test_util.h"
#include "test_gguf_writer.h"
#include "test_model_writer.h"

#define HF_SRC "test/models/tiny-llama3"

static char g_hf[160]; /* g_dir/hf: links to HF_SRC's files + generation_config.json */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static int group_setup(void **state) {
    if (setup(state)) return -1;
    snprintf(g_path, sizeof g_path, "%s/m.gguf", g_dir);
    snprintf(g_hf, sizeof g_hf, "%s/hf", g_dir);
    if (mkdir(g_hf, 0700)) return -1;
    static const char *const files[] = {"config.json", "model.safetensors", "tokenizer.json",
                                        "tokenizer_config.json"};
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return -1;
    for (size_t i = 0; i < NI_ARRAY_LEN(files); i++) {
        char src[PATH_MAX + 128], dst[256];
        snprintf(src, sizeof src, "%s/%s/%s", cwd, HF_SRC, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", g_hf, files[i]);
        if (symlink(src, dst)) return -1;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    return nftw(g_dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

static void load_ok(const char *path, mdl_model *m) {
    char err[512] = "";
    int rc = mdl_load(m, path, err, sizeof err);
    if (rc) fail_msg("%s: should load, got %d: %s", path, rc, err);
}

/* path must be refused with NI_EFORMAT and a one-line message holding want1 and want2. */
static void load_refused(const char *path, const char *want1, const char *want2) {
    mdl_model m;
    char err[512] = "";
    int rc = mdl_load(&m, path, err, sizeof err);
    if (rc == 0) {
        mdl_free(&m);
        fail_msg("%s: loaded, but should be refused (%s)", path, want1);
    }
    printf("  refused: %s\n", err);
    if (rc != NI_EFORMAT)
        fail_msg("rc %d (%s), want NI_EFORMAT; msg: %s", rc, ni_strerror(rc), err);
    if (!strstr(err, want1)) fail_msg("message lacks '%s': %s", want1, err);
    if (want2 && !strstr(err, want2)) fail_msg("message lacks '%s': %s", want2, err);
    if (strchr(err, '\n')) fail_msg("message is more than one line: %s", err);
}

#define CHECK_F(what, got, want)                                                                   \
    do {                                                                                           \
        if ((got) != (want))                                                                       \
            fail_msg("%s: got %.9g, want %.9g", what, (double)(got), (double)(want));              \
    } while (0)

static void expect_none(const mdl_sampling_defaults *s, const char *what) {
    if (s->has_temperature || s->has_top_k || s->has_top_p || s->has_min_p ||
        s->has_repetition_penalty || s->source)
        fail_msg("%s: sampling defaults set (temp %d top_k %d top_p %d min_p %d rep %d, source %s)",
                 what, s->has_temperature, s->has_top_k, s->has_top_p, s->has_min_p,
                 s->has_repetition_penalty, s->source ? s->source : "NULL");
}

/* ------------------------------------------------------------------ GGUF */

/* Which metadata the next write_gguf appends (extra_kv has no argument). */
enum { KV_ALL, KV_SOME, KV_TEMP_STR, KV_TEMP_BOOL, KV_TOPK_FLOAT, KV_TOPP_INF };
static int g_case;

static void kv_f32(gwriter *w, const char *k, float v) {
    g_key(w, k, GGUF_VT_FLOAT32);
    w_f32(&w->kv, v);
}

static void extra_kv(gwriter *w) {
    switch (g_case) {
    case KV_ALL:
        kv_f32(w, "general.sampling.temp", 0.6f);
        g_u32(w, "general.sampling.top_k", 20);
        kv_f32(w, "general.sampling.top_p", 0.95f);
        g_key(w, "general.sampling.min_p", GGUF_VT_FLOAT64); /* any numeric type */
        w_f64(&w->kv, 0.05);
        kv_f32(w, "general.sampling.penalty_repeat", 1.1f);
        g_key(w, "general.sampling.sequence", GGUF_VT_STRING); /* not read */
        w_str(&w->kv, "penalties;top_k;top_p;temp");
        g_u32(w, "general.sampling.mirostat", 0);        /* not read */
        g_u32(w, "general.sampling.penalty_last_n", 64); /* not read */
        break;
    case KV_SOME:
        g_key(w, "general.sampling.temp", GGUF_VT_INT32); /* an integer is a number too */
        w_u32(&w->kv, 0);
        g_key(w, "general.sampling.top_k", GGUF_VT_INT32);
        w_u32(&w->kv, (uint32_t)-1);
        break;
    case KV_TEMP_STR:
        g_key(w, "general.sampling.temp", GGUF_VT_STRING);
        w_str(&w->kv, "0.7");
        break;
    case KV_TEMP_BOOL:
        g_key(w, "general.sampling.temp", GGUF_VT_BOOL);
        w_u8(&w->kv, 1);
        break;
    case KV_TOPK_FLOAT: kv_f32(w, "general.sampling.top_k", 40.0f); break;
    case KV_TOPP_INF:
        g_key(w, "general.sampling.top_p", GGUF_VT_FLOAT64);
        w_f64(&w->kv, 1e300); /* finite as a double, not as the float it becomes */
        break;
    }
}

static void write_case(int c) {
    gspec g = gspec_valid();
    g.extra_kv = extra_kv;
    g_case = c;
    write_gguf(&g);
}

static void test_gguf_none(void **state) {
    (void)state;
    mdl_model m;
    gspec g = gspec_valid();
    write_gguf(&g);
    load_ok(g_path, &m);
    expect_none(&m.sampling, "GGUF without general.sampling.*");
    mdl_free(&m);
}

static void test_gguf_all(void **state) {
    (void)state;
    mdl_model m;
    write_case(KV_ALL);
    load_ok(g_path, &m);
    const mdl_sampling_defaults *s = &m.sampling;
    assert_true(s->has_temperature && s->has_top_k && s->has_top_p && s->has_min_p &&
                s->has_repetition_penalty);
    CHECK_F("temp", s->temperature, 0.6f);
    CHECK_F("top_k", s->top_k, 20);
    CHECK_F("top_p", s->top_p, 0.95f);
    CHECK_F("min_p", s->min_p, 0.05f);
    CHECK_F("penalty_repeat", s->repetition_penalty, 1.1f);
    assert_non_null(s->source);
    assert_string_equal(s->source, "general.sampling.*");
    mdl_free(&m);

    write_case(KV_SOME);
    load_ok(g_path, &m);
    s = &m.sampling;
    assert_true(s->has_temperature && s->has_top_k);
    assert_false(s->has_top_p || s->has_min_p || s->has_repetition_penalty);
    CHECK_F("temp (int32)", s->temperature, 0.0f);
    CHECK_F("top_k (int32)", s->top_k, -1);
    mdl_free(&m);
}

static void test_gguf_bad(void **state) {
    (void)state;
    write_case(KV_TEMP_STR);
    load_refused(g_path, "general.sampling.temp", "string");
    write_case(KV_TEMP_BOOL);
    load_refused(g_path, "general.sampling.temp", "bool");
    write_case(KV_TOPK_FLOAT);
    load_refused(g_path, "general.sampling.top_k", "float32");
    write_case(KV_TOPP_INF);
    load_refused(g_path, "general.sampling.top_p", "not a finite float");
}

/* -------------------------------------------------------- Hugging Face */

static void write_gen_config(const char *text) {
    char p[256];
    snprintf(p, sizeof p, "%s/generation_config.json", g_hf);
    if (!text) {
        unlink(p);
        return;
    }
    write_file(p, text, strlen(text));
}

static void test_hf(void **state) {
    (void)state;
    mdl_model m;
    write_gen_config(NULL);
    load_ok(g_hf, &m);
    expect_none(&m.sampling, "HF directory without generation_config.json");
    mdl_free(&m);

    /* transformers' own layout: ids and version beside the sampling keys */
    write_gen_config("{\"bos_token_id\": 400, \"eos_token_id\": 404, \"do_sample\": true,"
                     " \"temperature\": 0.2, \"top_p\": 0.9, \"top_k\": 50,"
                     " \"repetition_penalty\": 1.05, \"min_p\": null,"
                     " \"transformers_version\": \"4.46.0\"}");
    load_ok(g_hf, &m);
    const mdl_sampling_defaults *s = &m.sampling;
    assert_true(s->has_temperature && s->has_top_p && s->has_top_k && s->has_repetition_penalty);
    assert_false(s->has_min_p); /* null: not set */
    CHECK_F("temperature", s->temperature, 0.2f);
    CHECK_F("top_p", s->top_p, 0.9f);
    CHECK_F("top_k", s->top_k, 50);
    CHECK_F("repetition_penalty", s->repetition_penalty, 1.05f);
    assert_non_null(s->source);
    assert_string_equal(s->source, "generation_config.json");
    mdl_free(&m);

    /* do_sample false: greedy, whatever temperature says */
    write_gen_config(
        "{\"do_sample\": false, \"temperature\": 0.7, \"min_p\": 0.1, \"top_k\": 8.0}");
    load_ok(g_hf, &m);
    s = &m.sampling;
    assert_true(s->has_temperature && s->has_min_p && s->has_top_k);
    CHECK_F("temperature (do_sample false)", s->temperature, 0.0f);
    CHECK_F("min_p", s->min_p, 0.1f);
    CHECK_F("top_k (8.0)", s->top_k, 8);
    mdl_free(&m);

    /* do_sample true alone recommends nothing */
    write_gen_config("{\"do_sample\": true, \"max_new_tokens\": 256}");
    load_ok(g_hf, &m);
    expect_none(&m.sampling, "generation_config.json without sampling keys");
    mdl_free(&m);
}

static void test_hf_bad(void **state) {
    (void)state;
    write_gen_config("{\"temperature\": \"hot\"}");
    load_refused(g_hf, "generation_config.json", "temperature");
    write_gen_config("{\"top_k\": 2.5}");
    load_refused(g_hf, "generation_config.json", "top_k");
    write_gen_config("{\"do_sample\": 1}");
    load_refused(g_hf, "generation_config.json", "do_sample");
    write_gen_config("{\"temperature\": 0.2,");
    load_refused(g_hf, "generation_config.json", "invalid JSON");
    write_gen_config("[0.2]");
    load_refused(g_hf, "generation_config.json", "not a JSON object");
    write_gen_config("{\"top_p\": 1e39}"); /* finite as a double, infinite as a float */
    load_refused(g_hf, "generation_config.json", "top_p");
    write_gen_config(NULL);
}

/* The default model file: no general.sampling.* keys (the server's built-in
 * defaults apply to it, and its start-up line says so). */
static void test_default_model(void **state) {
    (void)state;
    const char *path = tu_require_model();
    mdl_model m;
    load_ok(path, &m);
    expect_none(&m.sampling, path);
    mdl_free(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gguf_none), cmocka_unit_test(test_gguf_all),
        cmocka_unit_test(test_gguf_bad),  cmocka_unit_test(test_hf),
        cmocka_unit_test(test_hf_bad),    cmocka_unit_test(test_default_model),
    };
    tu_filters();
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
