/*
 * test_cuda_ref.c - logits dump of the CUDA backend for the comparison with
 * Hugging Face transformers made by scripts/gpu_reference.py. Skips (with the
 * reason printed) unless NI_CUDA_REF_DIR is set and a GPU is present, so the
 * ordinary test run (CI, no GPU) only sees a skip.
 *
 * Input, in $NI_CUDA_REF_DIR: model/ (an HF directory mdl_load reads) and
 * tokens.txt ("P N" then N token ids). For each dtype in NI_CUDA_REF_DTYPES
 * (default "fp32 bf16"), and for "cpu" when listed: one forward of tokens
 * [0, P) (logits of position P-1), then one decode call per token P .. N-1
 * (logits of each position), written as float32 [N-P+1][vocab] to
 * ours_<dtype>.bin. Prints the load and init times, and the prefill (timed
 * on a second, warm run of the same prompt) and per-decode-step times.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/backend/backend.h"
#include "engine/model/model.h"
#include "engine/util/util.h"
#include "test_util.h"
#ifdef NI_USE_CUDA
#include "cuda/cu.h"
#endif

#ifdef NI_USE_CUDA
/* Runs one dtype ("fp32", "bf16" or "cpu") and writes ours_<dtype>.bin. */
static void dump_one(const char *dir, const mdl_model *m, const int32_t *tok, int P, int N,
                     const char *dt) {
    const int is_cpu = !strcmp(dt, "cpu");
    const eng_backend *be = is_cpu ? &eng_backend_cpu : &eng_backend_cuda;
    const int bs = 16, n_blocks = (N + bs - 1) / bs + 1, V = m->cfg.vocab_size;
    const eng_backend_config cf = {.n_blocks = n_blocks,
                                   .block_size = bs,
                                   .max_batch_tokens = N,
                                   .max_seqs = 1,
                                   .dtype = is_cpu               ? ENG_DTYPE_DEFAULT
                                            : strcmp(dt, "fp32") ? ENG_DTYPE_BF16
                                                                 : ENG_DTYPE_FP32};
    void *ctx = NULL;
    char err[512] = "";
    double t0 = ni_now();
    int rc = be->init(&ctx, m, &cf, err, sizeof err);
    if (rc) fail_msg("%s init: %d %s", dt, rc, err);
    const double t_init = ni_now() - t0;
    int32_t *table = malloc(sizeof(int32_t) * n_blocks);
    for (int i = 0; i < n_blocks; i++) table[i] = n_blocks - 1 - i; /* not the identity */
    const int rows = N - P + 1;
    float *lg = malloc(sizeof(float) * (size_t)rows * V);
    const uint8_t want[1] = {1};
    const int32_t ss[2] = {0, P}, p0[1] = {0};
    eng_batch b = {1, P, tok, ss, p0, table, n_blocks, want};
    assert_int_equal(be->forward(ctx, &b, lg), 0); /* warm-up (module loads, cuBLAS) */
    t0 = ni_now();
    assert_int_equal(be->forward(ctx, &b, lg), 0); /* same positions: same KV, same logits */
    const double t_prefill = ni_now() - t0;
    t0 = ni_now();
    for (int i = P; i < N; i++) {
        const int32_t ss1[2] = {0, 1}, pp[1] = {i};
        const eng_batch d = {1, 1, tok + i, ss1, pp, table, n_blocks, want};
        assert_int_equal(be->forward(ctx, &d, lg + (size_t)(i - P + 1) * V), 0);
    }
    const double t_decode = ni_now() - t0;
    be->free(ctx);
    char path[4096];
    snprintf(path, sizeof path, "%s/ours_%s.bin", dir, dt);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(lg, sizeof(float), (size_t)rows * V, f), (size_t)rows * V);
    fclose(f);
    printf("  %s: init %.2f s, prefill %d tokens %.1f ms, %d decode steps %.1f ms/step -> %s\n",
           dt, t_init, P, t_prefill * 1e3, N - P, N > P ? t_decode * 1e3 / (N - P) : 0.0, path);
    free(table);
    free(lg);
}
#endif

static void test_dump_logits(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    const char *dir = getenv("NI_CUDA_REF_DIR");
    if (!dir) {
        printf("SKIP: NI_CUDA_REF_DIR not set (scripts/gpu_reference.py sets it)\n");
        skip();
        return;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/tokens.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) fail_msg("cannot open %s", path);
    int P = 0, N = 0;
    assert_int_equal(fscanf(f, "%d %d", &P, &N), 2);
    assert_true(P >= 1 && N >= P);
    int32_t *tok = malloc(sizeof(int32_t) * N);
    for (int i = 0; i < N; i++) assert_int_equal(fscanf(f, "%d", &tok[i]), 1);
    fclose(f);
    mdl_model m;
    char err[512] = "";
    snprintf(path, sizeof path, "%s/model", dir);
    double t0 = ni_now();
    const int rc = mdl_load(&m, path, err, sizeof err);
    if (rc) fail_msg("mdl_load %s: %d %s", path, rc, err);
    printf("  loaded %s in %.1f s (vocab %d, %d layers)\n", path, ni_now() - t0,
           m.cfg.vocab_size, m.cfg.n_layers);
    const char *list = getenv("NI_CUDA_REF_DTYPES");
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list ? list : "fp32 bf16");
    for (char *sv = NULL, *t = strtok_r(buf, " ,", &sv); t; t = strtok_r(NULL, " ,", &sv))
        dump_one(dir, &m, tok, P, N, t);
    mdl_free(&m);
    free(tok);
#endif
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_dump_logits)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
