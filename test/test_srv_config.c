/*
 * test_srv_config.c - `nanoinfer serve` configuration: documented defaults,
 * every value type (ints, sizes with suffixes, seconds, booleans, levels,
 * styles), range errors naming the key, config-file syntax with line numbers,
 * flag-over-file precedence, the NANOINFER_API_KEY fallback, cross-field
 * validation, the device key and its backend alias, the default sampling
 * options and their precedence over the model's recommendation
 * (srv_config_sampling), and that the shipped conf/nanoinfer.conf parses.
 * Links the server library (libnanoinfer_srv.a).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/util/util.h"
#include "server/http/srv_config.h"
#include "server/http/srv_log.h"

static char g_tmp[256];

static const char *write_tmp(const char *text) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/ni_test_conf_%d.conf", (int)getpid());
    FILE *f = fopen(g_tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return g_tmp;
}

static void test_defaults(void **state) {
    (void)state;
    srv_config c;
    srv_config_default(&c);
    assert_string_equal(c.host, "127.0.0.1");
    assert_int_equal(c.port, 8000);
    assert_int_equal(c.max_body, 1 << 20);
    assert_int_equal(c.max_queue, 256);
    assert_int_equal(c.max_num_seqs, 256);
    assert_int_equal(c.max_batched_tokens, 2048);
    assert_int_equal(c.prefill_chunk, 512);
    assert_int_equal(c.kv_blocks, 0);
    assert_int_equal(c.block_size, 16);
    assert_int_equal(c.no_prefix_cache, 0);
    assert_int_equal(c.no_webui, 0); /* the page is on by default */
    assert_int_equal(c.threads, 0);
    assert_int_equal(c.tensor_parallel_size, 1);
    assert_float_equal(c.shutdown_timeout, 30, 0);
    assert_int_equal(c.log_level, SRV_LOG_INFO);
    assert_int_equal(c.max_tokens_default, 4096);
    assert_int_equal(c.max_stream_buffer, 4 << 20);
    assert_string_equal(c.chat_template, "auto");
    assert_string_equal(c.backend, "auto");
    assert_string_equal(c.model, "");
    assert_string_equal(c.api_key, "");
}

static void test_values(void **state) {
    (void)state;
    srv_config c;
    srv_config_default(&c);
    char err[256];
    assert_int_equal(srv_config_set(&c, "max-body", "64KiB", err, sizeof err), 0);
    assert_int_equal(c.max_body, 65536);
    assert_int_equal(srv_config_set(&c, "max_body", "2m", err, sizeof err), 0); /* '_' == '-' */
    assert_int_equal(c.max_body, 2 << 20);
    assert_int_equal(srv_config_set(&c, "max-body", "1 GiB", err, sizeof err), 0);
    assert_int_equal(c.max_body, 1 << 30);
    assert_int_equal(srv_config_set(&c, "max-body", "5000", err, sizeof err), 0);
    assert_int_equal(c.max_body, 5000);
    assert_int_equal(srv_config_set(&c, "shutdown-timeout", "2.5", err, sizeof err), 0);
    assert_float_equal(c.shutdown_timeout, 2.5, 0);
    assert_int_equal(srv_config_set(&c, "no-prefix-cache", NULL, err, sizeof err), 0);
    assert_int_equal(c.no_prefix_cache, 1);
    assert_int_equal(srv_config_set(&c, "no-prefix-cache", "false", err, sizeof err), 0);
    assert_int_equal(c.no_prefix_cache, 0);
    assert_int_equal(srv_config_set(&c, "no-webui", NULL, err, sizeof err), 0); /* --no-webui */
    assert_int_equal(c.no_webui, 1);
    assert_int_equal(srv_config_set(&c, "no_webui", "false", err, sizeof err), 0);
    assert_int_equal(c.no_webui, 0);
    assert_int_equal(srv_config_set(&c, "log-level", "DEBUG", err, sizeof err), 0);
    assert_int_equal(c.log_level, SRV_LOG_DEBUG);
    assert_int_equal(srv_config_set(&c, "chat-template", "llama3", err, sizeof err), 0);
    assert_int_equal(srv_config_set(&c, "port", "0", err, sizeof err), 0);

    static const struct {
        const char *k, *v, *needle;
    } bad[] = {
        {"port", "70000", "port"},
        {"port", "80x", "port"},
        {"port", "", "port"},
        {"max-num-seqs", "0", "max-num-seqs"},
        {"max-body", "10", "max-body"},
        {"max-body", "1TiB", "max-body"},
        {"max-body", "12q", "max-body"},
        {"threads", "1.5", "threads"},
        {"tensor-parallel-size", "0", "tensor-parallel-size"},
        {"tensor-parallel-size", "257", "tensor-parallel-size"},
        {"tensor_parallel_size", "two", "tensor-parallel-size"},
        {"shutdown-timeout", "-1", "shutdown-timeout"},
        {"log-level", "loud", "log-level"},
        {"no-prefix-cache", "maybe", "no-prefix-cache"},
        {"chat-template", "jinja", "chat-template"},
        {"backend", "tpu", "backend"},
        {"nonsense", "1", "nonsense"},
        {"max-queue", "-1", "max-queue"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        if (srv_config_set(&c, bad[i].k, bad[i].v, err, sizeof err) == 0)
            fail_msg("%s = '%s' accepted", bad[i].k, bad[i].v);
        if (!strstr(err, bad[i].needle)) fail_msg("message for %s does not name it: %s", bad[i].k, err);
    }
    char longv[600];
    memset(longv, 'k', sizeof longv - 1);
    longv[sizeof longv - 1] = 0;
    assert_int_not_equal(srv_config_set(&c, "api-key", longv, err, sizeof err), 0);
    assert_int_not_equal(srv_config_set(&c, "port", NULL, err, sizeof err), 0);
}

static void test_file(void **state) {
    (void)state;
    srv_config c;
    srv_config_default(&c);
    char err[512];
    const char *p = write_tmp("# comment\n\n  port = 9001  \nhost=\"0.0.0.0\"\nmax-body = 2MiB\n"
                              "   # indented comment\nno-prefix-cache = true\nserved-model-name = \n");
    assert_int_equal(srv_config_load_file(&c, p, err, sizeof err), 0);
    assert_int_equal(c.port, 9001);
    assert_string_equal(c.host, "0.0.0.0");
    assert_int_equal(c.max_body, 2 << 20);
    assert_int_equal(c.no_prefix_cache, 1);
    assert_string_equal(c.served_model_name, "");

    p = write_tmp("port = 1\nthis line has no equals\n");
    assert_int_not_equal(srv_config_load_file(&c, p, err, sizeof err), 0);
    assert_non_null(strstr(err, ":2:"));
    p = write_tmp("port = 1\n\nmax-queue = lots\n");
    assert_int_not_equal(srv_config_load_file(&c, p, err, sizeof err), 0);
    assert_non_null(strstr(err, ":3: max-queue"));
    p = write_tmp("bogus-key = 1\n");
    assert_int_not_equal(srv_config_load_file(&c, p, err, sizeof err), 0);
    assert_non_null(strstr(err, "bogus-key"));
    assert_int_not_equal(srv_config_load_file(&c, "/nonexistent/nanoinfer.conf", err, sizeof err), 0);
    assert_non_null(strstr(err, "/nonexistent/nanoinfer.conf"));
    unlink(g_tmp);
}

static void test_args(void **state) {
    (void)state;
    srv_config c;
    char err[512];
    int help, check;
    const char *p = write_tmp("port = 9001\nmodel = test/models/tiny-llama2\nthreads = 2\n");
    /* --config is applied first, wherever it appears; flags override it in order */
    char *argv[] = {
        "serve",          "--port", "9002", "--config", (char *)p, "--threads=1", "--no-prefix-cache",
        "--check-config", NULL};
    srv_config_default(&c);
    unsetenv("NANOINFER_API_KEY");
    assert_int_equal(srv_config_parse_args(&c, 8, argv, &help, &check, err, sizeof err), 0);
    assert_int_equal(c.port, 9002);
    assert_int_equal(c.threads, 1);
    assert_int_equal(c.no_prefix_cache, 1);
    assert_string_equal(c.model, "test/models/tiny-llama2");
    assert_int_equal(check, 1);
    assert_int_equal(help, 0);
    assert_int_equal(srv_config_validate(&c, err, sizeof err), 0);
    assert_string_equal(c.api_key, "");

    /* the environment supplies the API key only when nothing else did */
    setenv("NANOINFER_API_KEY", "from-env", 1);
    char *argv2[] = {"serve", "--model", "test/models/tiny-llama2", NULL};
    srv_config_default(&c);
    assert_int_equal(srv_config_parse_args(&c, 3, argv2, &help, &check, err, sizeof err), 0);
    assert_string_equal(c.api_key, "from-env");
    assert_int_equal(c.api_key_from_env, 1);
    char *argv3[] = {"serve", "--api-key", "flag", NULL};
    srv_config_default(&c);
    assert_int_equal(srv_config_parse_args(&c, 3, argv3, &help, &check, err, sizeof err), 0);
    assert_string_equal(c.api_key, "flag");
    unsetenv("NANOINFER_API_KEY");

    char *bad1[] = {"serve", "positional", NULL};
    char *bad2[] = {"serve", "--port", NULL};
    char *bad3[] = {"serve", "--frobnicate", "1", NULL};
    char *bad4[] = {"serve", "--config", "/nonexistent.conf", NULL};
    char *hlp[] = {"serve", "--help", NULL};
    srv_config_default(&c);
    assert_int_not_equal(srv_config_parse_args(&c, 2, bad1, &help, &check, err, sizeof err), 0);
    assert_int_not_equal(srv_config_parse_args(&c, 2, bad2, &help, &check, err, sizeof err), 0);
    assert_int_not_equal(srv_config_parse_args(&c, 3, bad3, &help, &check, err, sizeof err), 0);
    assert_non_null(strstr(err, "frobnicate"));
    assert_int_not_equal(srv_config_parse_args(&c, 3, bad4, &help, &check, err, sizeof err), 0);
    assert_int_equal(srv_config_parse_args(&c, 2, hlp, &help, &check, err, sizeof err), 0);
    assert_int_equal(help, 1);
    unlink(g_tmp);
}

static void test_validate(void **state) {
    (void)state;
    srv_config c;
    char err[512];
    srv_config_default(&c);
    assert_int_not_equal(srv_config_validate(&c, err, sizeof err), 0);
    assert_non_null(strstr(err, "model"));
    snprintf(c.model, sizeof c.model, "/nonexistent/model.gguf");
    assert_int_not_equal(srv_config_validate(&c, err, sizeof err), 0);
    assert_non_null(strstr(err, "/nonexistent/model.gguf"));
    snprintf(c.model, sizeof c.model, "test/models/tiny-llama2");
    assert_int_equal(srv_config_validate(&c, err, sizeof err), 0);
    c.prefill_chunk = 4096;
    assert_int_not_equal(srv_config_validate(&c, err, sizeof err), 0);
    assert_non_null(strstr(err, "prefill-chunk"));
    c.prefill_chunk = 512;
    c.max_num_seqs = 4000;
    assert_int_not_equal(srv_config_validate(&c, err, sizeof err), 0);
    assert_non_null(strstr(err, "max-num-seqs"));
    c.max_num_seqs = 16;
    snprintf(c.api_key, sizeof c.api_key, "has space");
    assert_int_not_equal(srv_config_validate(&c, err, sizeof err), 0);
    assert_non_null(strstr(err, "api-key"));
    c.api_key[0] = 0;
    /* --kv-cache-dtype: vLLM's names (fp8_e4m3 an alias of fp8); anything else refused */
    assert_string_equal(c.kv_cache_dtype, "auto");
    static const char *const kv_ok[] = {"auto", "bf16", "fp8", "fp8_e4m3"};
    for (size_t i = 0; i < NI_ARRAY_LEN(kv_ok); i++) {
        snprintf(c.kv_cache_dtype, sizeof c.kv_cache_dtype, "%s", kv_ok[i]);
        if (srv_config_validate(&c, err, sizeof err))
            fail_msg("kv-cache-dtype %s refused: %s", kv_ok[i], err);
    }
    snprintf(c.kv_cache_dtype, sizeof c.kv_cache_dtype, "fp8_e5m2");
    assert_int_not_equal(srv_config_validate(&c, err, sizeof err), 0);
    assert_non_null(strstr(err, "kv-cache-dtype"));
}

/* The line must contain want; prints both on failure. */
static void expect_in(const char *line, const char *want) {
    if (!strstr(line, want)) fail_msg("'%s' not in: %s", want, line);
}

#define EXPECT_F(what, got, want)                                                                  \
    do {                                                                                           \
        if ((double)(got) != (double)(want))                                                       \
            fail_msg("%s: got %.9g, want %.9g", what, (double)(got), (double)(want));              \
    } while (0)

/* Default sampling: option (file or flag) > model > built-in, per parameter. */
static void test_sampling(void **state) {
    (void)state;
    srv_config c;
    smp_params sp;
    char line[1024], err[512];
    srv_config_default(&c);
    assert_int_equal(c.sampling_set, 0);
    /* nothing anywhere: OpenAI's defaults */
    srv_config_sampling(&c, NULL, &sp, line, sizeof line);
    printf("  %s\n", line);
    EXPECT_F("temperature", sp.temperature, 1);
    EXPECT_F("top_p", sp.top_p, 1);
    EXPECT_F("top_k", sp.top_k, -1);
    EXPECT_F("min_p", sp.min_p, 0);
    EXPECT_F("repetition_penalty", sp.repetition_penalty, 1);
    expect_in(line, "sampling defaults: temperature=1 (built-in)");
    expect_in(line, "model: recommends none");
    /* the model recommends; one value is out of the sampler's range */
    mdl_sampling_defaults m = {.has_temperature = 1,
                               .temperature = 0.2f,
                               .has_top_p = 1,
                               .top_p = 0.9f,
                               .has_top_k = 1,
                               .top_k = 20,
                               .has_min_p = 1,
                               .min_p = 2.0f,
                               .source = "generation_config.json"};
    srv_config_sampling(&c, &m, &sp, line, sizeof line);
    printf("  %s\n", line);
    EXPECT_F("temperature (model)", sp.temperature, 0.2f);
    EXPECT_F("top_p (model)", sp.top_p, 0.9f);
    EXPECT_F("top_k (model)", sp.top_k, 20);
    EXPECT_F("min_p (model's is out of range)", sp.min_p, 0);
    EXPECT_F("repetition_penalty (built-in)", sp.repetition_penalty, 1);
    expect_in(line, "temperature=0.2 (model)");
    expect_in(line, "min_p=0 (built-in)");
    expect_in(line, "model: generation_config.json");
    expect_in(line, "ignored the model's min_p=2");
    /* options from a file and flags win over the model */
    const char *file = write_tmp("temperature = 0\nrepetition-penalty = 1.2\n");
    char *argv[] = {"serve", "--config", (char *)file, "--top-k=5", "--min-p", "0.05"};
    int help, check;
    assert_int_equal(srv_config_parse_args(&c, 6, argv, &help, &check, err, sizeof err), 0);
    unlink(file);
    assert_int_equal(c.sampling_set, SRV_SMP_TEMPERATURE | SRV_SMP_REPETITION_PENALTY |
                                         SRV_SMP_TOP_K | SRV_SMP_MIN_P);
    srv_config_sampling(&c, &m, &sp, line, sizeof line);
    printf("  %s\n", line);
    EXPECT_F("temperature (option 0 over model 0.2)", sp.temperature, 0);
    EXPECT_F("top_p (model)", sp.top_p, 0.9f);
    EXPECT_F("top_k (option)", sp.top_k, 5);
    EXPECT_F("min_p (option)", sp.min_p, 0.05f);
    EXPECT_F("repetition_penalty (option)", sp.repetition_penalty, 1.2f);
    expect_in(line, "temperature=0 (option)");
    expect_in(line, "top_p=0.9 (model)");
    /* ranges: the table's, then the sampler's open bounds in validate */
    snprintf(c.model, sizeof c.model, "test/models/tiny-llama2");
    assert_int_equal(srv_config_validate(&c, err, sizeof err), 0);
    assert_int_equal(srv_config_set(&c, "temperature", "101", err, sizeof err), NI_EINVAL);
    expect_in(err, "temperature");
    assert_int_equal(srv_config_set(&c, "top-k", "-2", err, sizeof err), NI_EINVAL);
    expect_in(err, "top-k");
    assert_int_equal(srv_config_set(&c, "top_p", "0", err, sizeof err), 0);
    assert_int_equal(srv_config_validate(&c, err, sizeof err), NI_EINVAL);
    printf("  %s\n", err);
    expect_in(err, "top-p: 0 is out of range (0, 1]");
    assert_int_equal(srv_config_set(&c, "top-p", "1", err, sizeof err), 0);
    assert_int_equal(srv_config_set(&c, "repetition-penalty", "0", err, sizeof err), 0);
    assert_int_equal(srv_config_validate(&c, err, sizeof err), NI_EINVAL);
    expect_in(err, "repetition-penalty");
}

/* device is the key (as generate/bench --device); backend stays an alias of the same field. */
static void test_device_alias(void **state) {
    (void)state;
    srv_config c, ref;
    char err[512];
    int help, check;
    unsetenv("NANOINFER_API_KEY");
    srv_config_default(&ref);
    assert_int_equal(srv_config_set(&ref, "device", "cpu", err, sizeof err), 0);
    assert_string_equal(ref.backend, "cpu");

    char *dev[] = {"serve", "--device", "cpu", NULL};
    srv_config_default(&c);
    assert_int_equal(srv_config_parse_args(&c, 3, dev, &help, &check, err, sizeof err), 0);
    assert_memory_equal(&c, &ref, sizeof c);
    char *dev_eq[] = {"serve", "--device=cpu", NULL};
    srv_config_default(&c);
    assert_int_equal(srv_config_parse_args(&c, 2, dev_eq, &help, &check, err, sizeof err), 0);
    assert_memory_equal(&c, &ref, sizeof c);
    char *alias[] = {"serve", "--backend", "cpu", NULL};
    srv_config_default(&c);
    assert_int_equal(srv_config_parse_args(&c, 3, alias, &help, &check, err, sizeof err), 0);
    assert_memory_equal(&c, &ref, sizeof c);
    srv_config_default(&c);
    assert_int_equal(srv_config_load_file(&c, write_tmp("backend = cpu\n"), err, sizeof err), 0);
    assert_memory_equal(&c, &ref, sizeof c);
    srv_config_default(&c);
    assert_int_equal(srv_config_load_file(&c, write_tmp("device = cpu\n"), err, sizeof err), 0);
    assert_memory_equal(&c, &ref, sizeof c);
    /* the later spelling wins, whichever it is: one field */
    char *both[] = {"serve", "--device", "cuda", "--backend", "cpu", NULL};
    srv_config_default(&c);
    assert_int_equal(srv_config_parse_args(&c, 5, both, &help, &check, err, sizeof err), 0);
    assert_string_equal(c.backend, "cpu");
    unlink(g_tmp);

    /* a bad value is refused, naming the key as spelt */
    char *bad[] = {"serve", "--device", "gpu", NULL};
    srv_config_default(&c);
    err[0] = 0;
    assert_int_not_equal(srv_config_parse_args(&c, 3, bad, &help, &check, err, sizeof err), 0);
    if (!strstr(err, "device")) fail_msg("--device gpu: message does not name device: %s", err);
    assert_string_equal(c.backend, "auto");
    err[0] = 0;
    assert_int_not_equal(srv_config_set(&c, "device", "gpu", err, sizeof err), 0);
    assert_non_null(strstr(err, "device"));
    char *missing[] = {"serve", "--device", NULL};
    assert_int_not_equal(srv_config_parse_args(&c, 2, missing, &help, &check, err, sizeof err), 0);
    assert_non_null(strstr(err, "device"));
    /* tensor parallelism: CPU yes, CUDA refused with the reason (either build) */
    snprintf(c.model, sizeof c.model, "test/models/tiny-llama2");
    assert_int_equal(srv_config_set(&c, "tensor-parallel-size", "2", err, sizeof err), 0);
    assert_int_equal(c.tensor_parallel_size, 2);
    assert_int_equal(srv_config_set(&c, "device", "cpu", err, sizeof err), 0);
    assert_int_equal(srv_config_validate(&c, err, sizeof err), 0);
    assert_int_equal(srv_config_set(&c, "device", "cuda", err, sizeof err), 0);
    assert_int_not_equal(srv_config_validate(&c, err, sizeof err), 0);
    if (!strstr(err, "tensor-parallel-size") || !strstr(err, "NCCL"))
        fail_msg("tp 2 on cuda: %s", err);
    c.tensor_parallel_size = 1;
#ifndef NI_USE_CUDA
    snprintf(c.model, sizeof c.model, "test/models/tiny-llama2");
    assert_int_equal(srv_config_set(&c, "device", "cuda", err, sizeof err), 0);
    assert_int_not_equal(srv_config_validate(&c, err, sizeof err), 0);
    assert_non_null(strstr(err, "device"));
#endif

    /* --help documents device and names the alias */
    FILE *f = tmpfile();
    assert_non_null(f);
    srv_config_usage(f);
    long n = ftell(f);
    rewind(f);
    char *buf = calloc(1, (size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    assert_non_null(strstr(buf, "--device DEVICE"));
    assert_non_null(strstr(buf, "--backend"));
    free(buf);
}

static void test_shipped_conf(void **state) {
    (void)state;
    srv_config c;
    char err[512];
    srv_config_default(&c);
    assert_int_equal(srv_config_load_file(&c, "conf/nanoinfer.conf", err, sizeof err), 0);
    /* the shipped file restates the defaults (plus a deployment model path) */
    srv_config d;
    srv_config_default(&d);
    memcpy(d.model, c.model, sizeof d.model);
    assert_memory_equal(&c, &d, sizeof c);
    /* usage mentions every key */
    FILE *f = tmpfile();
    srv_config_usage(f);
    long n = ftell(f);
    rewind(f);
    char *buf = calloc(1, (size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    assert_true(srv_config_n_keys() > 10);
    assert_null(srv_config_key_name(srv_config_n_keys()));
    for (size_t i = 0; i < srv_config_n_keys(); i++) {
        char flag[80];
        snprintf(flag, sizeof flag, "--%s", srv_config_key_name(i));
        if (!strstr(buf, flag)) fail_msg("usage lacks %s", flag);
    }
    free(buf);
}

static void test_log_levels(void **state) {
    (void)state;
    assert_int_equal(srv_log_level_from_name("warning"), SRV_LOG_WARN);
    assert_int_equal(srv_log_level_from_name("Error"), SRV_LOG_ERROR);
    assert_int_equal(srv_log_level_from_name("x"), -1);
    srv_log_set_level(SRV_LOG_WARN);
    assert_true(srv_log_enabled(SRV_LOG_ERROR));
    assert_false(srv_log_enabled(SRV_LOG_INFO));
    srv_log_set_level(SRV_LOG_INFO);
    assert_string_equal(srv_log_level_name(SRV_LOG_DEBUG), "debug");
}

/* The connection deadlines and limits (issue 14): header-timeout and
 * body-timeout default to 30 and 60 s; the deprecated request-timeout sets
 * both (and a later key still wins); the per-address limit defaults to off. */
static void test_connection_limits(void **state) {
    (void)state;
    srv_config c;
    char err[256];
    srv_config_default(&c);
    assert_float_equal(c.header_timeout, 30, 0);
    assert_float_equal(c.body_timeout, 60, 0);
    assert_float_equal(c.idle_timeout, 60, 0);
    assert_int_equal(c.max_connections, 1024);
    assert_int_equal(c.max_connections_per_ip, 0);
    assert_int_equal(srv_config_set(&c, "request-timeout", "5", err, sizeof err), 0);
    assert_float_equal(c.header_timeout, 5, 0);
    assert_float_equal(c.body_timeout, 5, 0);
    assert_int_equal(srv_config_set(&c, "header_timeout", "2.5", err, sizeof err), 0);
    assert_float_equal(c.header_timeout, 2.5, 0);
    assert_float_equal(c.body_timeout, 5, 0);
    srv_config_default(&c);
    assert_int_equal(
        srv_config_load_file(&c, write_tmp("body-timeout = 7\nrequest-timeout = 0\n"), err,
                             sizeof err),
        0);
    assert_float_equal(c.header_timeout, 0, 0); /* 0: no limit, for both */
    assert_float_equal(c.body_timeout, 0, 0);
    assert_int_equal(srv_config_set(&c, "max-connections-per-ip", "8", err, sizeof err), 0);
    assert_int_equal(c.max_connections_per_ip, 8);
    assert_int_not_equal(srv_config_set(&c, "max-connections-per-ip", "-1", err, sizeof err), 0);
    assert_int_not_equal(srv_config_set(&c, "body-timeout", "-1", err, sizeof err), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),     cmocka_unit_test(test_values),
        cmocka_unit_test(test_file),         cmocka_unit_test(test_args),
        cmocka_unit_test(test_validate),     cmocka_unit_test(test_device_alias),
        cmocka_unit_test(test_shipped_conf), cmocka_unit_test(test_log_levels),
        cmocka_unit_test(test_sampling),     cmocka_unit_test(test_connection_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
