/*
 * test_cuda_perf.c - decode-step timing of eng_backend_cuda on a real-size
 * model, to separate what the decode graphs and the fused GPU sampler each
 * save. Skipped unless NI_PERF_MODEL names a model (HF directory or GGUF)
 * and a GPU is present; reports, checks only that the modes agree.
 *
 * For each batch size S in NI_PERF_SEQS (default "1,64,256"): S sequences
 * with random prompts of NI_PERF_PROMPT tokens (default 128; prefilled in
 * 2048-token chunks), then
 * NI_PERF_STEPS (default 64) timed decode steps after 8 untimed ones (the
 * graphs are captured there), every sequence one token a step, greedy:
 *   A  NI_CUDA_GRAPHS=0, logits to the host, CPU smp_sample per row (what
 *      the engine does today without graphs);
 *   B  graphs, logits to the host, CPU smp_sample per row (the engine today);
 *   C  graphs, forward(logits = NULL) + eng_backend.sample on the device;
 *   D  graphs, forward(logits = NULL) only, no sampling (feeds token 1):
 *      the device time of a step plus launch latency;
 *   E  (with NI_PERF_PROFILE set) as B but eager with NI_CUDA_PROFILE: the
 *      backend prints its per-phase device time table to stderr.
 * test_attention_kernels (runs when NI_PERF_MODEL is unset or NI_PERF_ATT=1;
 * needs only a GPU): one decode attention launch (plus its combine) of the
 * tiled k_attention against the decode kernel of cu_att_decode.cu, BF16,
 * for the TinyLlama / Llama-3.2-1B / Qwen3-0.6B / SmolLM2-135M head shapes,
 * 1 / 4 / 64 / 256 sequences at 200, 1000 and 4000 keys of context, with the split
 * factor of the general path (from the context) and, for one sequence, of a
 * decode graph (from max_pos 32768), and the KV bytes read per second (L2 flushed
 * before every launch, so these are HBM reads); "thru": the decode kernel
 * in its throughput shape only (cu_op_att_decode_lat(0): coarse chunks);
 * "stage": as "new" with the coarse chunks staged in shared memory
 * (cu_op_att_decode_stage(1), NI_CUDA_ATT_STAGE=1).
 * test_attention_prefill_kernels (NI_PERF_ATT=1): prefill attention of one
 * 512 / 4000-token sequence, SIMT k_attention vs the tensor-core kernel,
 * TFLOP/s.
 * The greedy tokens of A, B and C must agree (the logits are identical
 * for B and C, and A differs only in the attention split-K of the
 * unpadded general path: a near tie could flip, so agreement >= 99% is
 * required between A and B, 100% between B and C).
 */
#include <math.h>
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
#include "engine/backend/sampler.h"
#include "engine/util/util.h"
#include "test_util.h"
#ifdef NI_USE_CUDA
#include "cuda/cu.h"
#include "cuda/cu_ops.h"
#endif

#ifdef NI_USE_CUDA
enum { WARM = 8, BS = 16, MAXB = 2048 };

/* prompt tokens per sequence (NI_PERF_PROMPT, 1..MAXB; default 128): the
 * decode steps then attend over g_prompt + WARM .. g_prompt + WARM + steps
 * keys (the bench workload of docs/perf.md: 128 + 256) */
static int g_prompt = 128;

typedef struct run_out {
    double ms_step;
    int32_t *toks; /* [steps][S] */
} run_out;

/* mode: 'A'..'E' as above; BF16; the rest of the environment (NI_CUDA_QUANT,
 * NI_CUDA_DEVICE, ...) mapped onto the config as eng_init does. */
static void run_mode(const mdl_model *m, int S, int steps, char mode, run_out *o) {
    const int V = m->cfg.vocab_size, total = g_prompt + WARM + steps + 1;
    const int mb = (total + BS - 1) / BS;
    eng_backend_config cf = {.n_blocks = S * mb,
                             .block_size = BS,
                             .max_batch_tokens = MAXB,
                             .max_seqs = S,
                             .dtype = ENG_DTYPE_BF16,
                             .device_index = -1,
                             .graphs = mode == 'A' ? ENG_GRAPHS_OFF : ENG_GRAPHS_ON,
                             .profile = mode == 'E'};
    void *ctx = NULL;
    char err[256] = "";
    int rc = eng_backend_config_env(&cf, &eng_backend_cuda, err, sizeof err);
    if (!rc) rc = eng_backend_cuda.init(&ctx, m, &cf, err, sizeof err);
    if (rc) fail_msg("init: %d %s", rc, err);
    int32_t *tables = malloc(sizeof(int32_t) * S * mb), *tok = malloc(sizeof(int32_t) * S);
    int32_t *flat = malloc(sizeof(int32_t) * MAXB), *ss = malloc(sizeof(int32_t) * (S + 1));
    int32_t *p0 = malloc(sizeof(int32_t) * S);
    uint8_t *want = malloc((size_t)S);
    float *lg = malloc(sizeof(float) * (size_t)S * V);
    void *scratch = malloc(smp_scratch_bytes(V));
    eng_sample_row *rows = malloc(sizeof(eng_sample_row) * S);
    smp_result *res = malloc(sizeof(smp_result) * S);
    smp_params gp = smp_params_default();
    gp.temperature = 0.0f;
    smp_state st;
    assert_int_equal(smp_state_init(&st, &gp, V, NULL, 0, 1, 0), 0);
    for (int i = 0; i < S * mb; i++) tables[i] = i;
    uint64_t z = 42;
    /* prefill: groups of MAXB / g_prompt sequences */
    const int per = MAXB / g_prompt;
    for (int s0 = 0; s0 < S; s0 += per) {
        const int n = S - s0 < per ? S - s0 : per;
        for (int i = 0; i < n; i++) {
            ss[i] = i * g_prompt;
            p0[i] = 0;
            want[i] = 1;
            for (int k = 0; k < g_prompt; k++) {
                z = z * 6364136223846793005ULL + 1442695040888963407ULL;
                flat[i * g_prompt + k] = (int32_t)((z >> 33) % (uint64_t)V);
            }
        }
        ss[n] = n * g_prompt;
        const eng_batch b = {n, n * g_prompt, flat, ss, p0, tables + (size_t)s0 * mb, mb, want};
        assert_int_equal(eng_backend_cuda.forward(ctx, &b, lg), 0);
        for (int i = 0; i < n; i++) {
            smp_result r;
            assert_int_equal(smp_sample(&st, &gp, lg + (size_t)i * V, V, scratch,
                                        smp_scratch_bytes(V), &r), 0);
            tok[s0 + i] = r.token;
        }
    }
    for (int i = 0; i < S; i++) {
        ss[i] = i;
        want[i] = 1;
        rows[i] = (eng_sample_row){i, &gp, 0.5, NULL, 0, NULL};
    }
    ss[S] = S;
    double t0 = 0;
    for (int step = 0; step < WARM + steps; step++) {
        if (step == WARM) t0 = ni_now();
        for (int i = 0; i < S; i++) p0[i] = g_prompt + step;
        const eng_batch b = {S, S, tok, ss, p0, tables, mb, want};
        if (mode == 'A' || mode == 'B' || mode == 'E') {
            assert_int_equal(eng_backend_cuda.forward(ctx, &b, lg), 0);
            for (int i = 0; i < S; i++) {
                smp_result r;
                assert_int_equal(smp_sample(&st, &gp, lg + (size_t)i * V, V, scratch,
                                            smp_scratch_bytes(V), &r), 0);
                tok[i] = r.token;
            }
        } else if (mode == 'C') {
            assert_int_equal(eng_backend_cuda.forward(ctx, &b, NULL), 0);
            assert_int_equal(eng_backend_cuda.sample(ctx, rows, S, res), 0);
            for (int i = 0; i < S; i++) tok[i] = res[i].token;
        } else {
            assert_int_equal(eng_backend_cuda.forward(ctx, &b, NULL), 0);
            for (int i = 0; i < S; i++) tok[i] = 1;
        }
        if (step >= WARM) memcpy(o->toks + (size_t)(step - WARM) * S, tok, sizeof(int32_t) * S);
    }
    /* D leaves its last step unsynchronized: a tiny forward-free sync */
    if (mode == 'D') assert_int_equal(eng_backend_cuda.sample(ctx, rows, 1, res), 0);
    o->ms_step = (ni_now() - t0) * 1e3 / steps;
    smp_state_free(&st);
    eng_backend_cuda.free(ctx);
    free(tables); free(tok); free(flat); free(ss); free(p0); free(want); free(lg);
    free(scratch); free(rows); free(res);
}
#endif

static void test_decode_steps(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    const char *path = getenv("NI_PERF_MODEL");
    if (!path) {
        printf("SKIP: set NI_PERF_MODEL=<model> on a GPU machine\n");
        skip();
        return;
    }
    mdl_model m;
    char err[512] = "";
    if (mdl_load(&m, path, err, sizeof err)) fail_msg("load %s: %s", path, err);
    if (getenv("NI_PERF_PROMPT")) {
        g_prompt = atoi(getenv("NI_PERF_PROMPT"));
        if (g_prompt < 1 || g_prompt > MAXB) fail_msg("NI_PERF_PROMPT must be 1..%d", MAXB);
    }
    const char *sv = getenv("NI_PERF_SEQS");
    const int steps = getenv("NI_PERF_STEPS") ? atoi(getenv("NI_PERF_STEPS")) : 64;
    char list[128];
    snprintf(list, sizeof list, "%s", sv ? sv : "1,64,256");
    printf("  model %s (%d layers, dim %d, vocab %d), bf16, %d-token prompts, %d timed decode "
           "steps\n",
           path,
           m.cfg.n_layers, m.cfg.dim, m.cfg.vocab_size, g_prompt, steps);
    printf("  %5s %34s %34s %34s %24s\n", "seqs", "A: no graphs, host logits + CPU",
           "B: graphs, host logits + CPU", "C: graphs + GPU sampler", "D: graphs, no sampling");
    for (char *tokp = strtok(list, ","); tokp; tokp = strtok(NULL, ",")) {
        const int S = atoi(tokp);
        if (S < 1) continue;
        run_out o[4];
        for (int k = 0; k < 4; k++) {
            o[k].toks = malloc(sizeof(int32_t) * (size_t)steps * S);
            run_mode(&m, S, steps, (char)('A' + k), &o[k]);
        }
        printf("  %5d", S);
        for (int k = 0; k < 4; k++)
            printf(" %9.3f ms/step %9.0f tok/s%s", o[k].ms_step, S * 1e3 / o[k].ms_step,
                   k < 3 ? "   " : "");
        printf("\n");
        long n = (long)steps * S, ab = 0, bc = 0;
        for (long i = 0; i < n; i++) {
            ab += o[0].toks[i] == o[1].toks[i];
            bc += o[1].toks[i] == o[2].toks[i];
        }
        printf("        greedy agreement A/B %ld/%ld, B/C %ld/%ld\n", ab, n, bc, n);
        /* a flipped near tie changes everything after it in that sequence */
        if (bc != n) fail_msg("graphs: host-sampled and device-sampled tokens differ");
        for (int k = 0; k < 4; k++) free(o[k].toks);
        if (getenv("NI_PERF_PROFILE")) { /* per-phase device time of eager padded steps */
            run_out e;
            e.toks = malloc(sizeof(int32_t) * (size_t)steps * S);
            fflush(stdout);
            run_mode(&m, S, steps, 'E', &e);
            fflush(stderr);
            printf("        E (eager + NI_CUDA_PROFILE events): %.3f ms/step\n", e.ms_step);
            free(e.toks);
        }
    }
    mdl_free(&m);
#endif
}

static void test_attention_kernels(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    const char *on = getenv("NI_PERF_ATT");
    if (on ? strcmp(on, "1") != 0 : getenv("NI_PERF_MODEL") != NULL) {
        printf("SKIP: NI_PERF_ATT=1 times the attention kernels\n");
        skip();
        return;
    }
    static const struct {
        const char *name;
        int nh, nkv, hd;
    } shapes[] = {{"TinyLlama-1.1B", 32, 4, 64},
                  {"Llama-3.2-1B", 32, 8, 64},
                  {"Qwen3-0.6B", 16, 8, 128},
                  {"SmolLM2-135M", 9, 3, 64}};
    const int seqs[] = {1, 4, 64, 256}, ctxs[] = {200, 1000, 4000}, split_ctx[] = {0, 32768};
    printf("  decode attention, bf16, block size 16, one launch + combine (us), KV GB/s; "
           "fp8: the decode kernel over an E4M3 cache (--kv-cache-dtype fp8) with 16-byte "
           "and with 8-byte loads\n");
    printf("  %-15s %5s %5s %-6s %6s %10s %10s %7s %9s %10s %10s %9s %10s %9s %10s %9s\n",
           "shape", "seqs", "ctx", "splits", "", "old us", "new us", "speedup", "new GB/s",
           "thru us", "fp8 us", "fp8 GB/s", "fp8/8B us", "8B GB/s", "stage us", "stg GB/s");
    for (size_t si = 0; si < NI_ARRAY_LEN(shapes); si++)
        for (size_t ci = 0; ci < NI_ARRAY_LEN(ctxs); ci++)
            for (size_t qi = 0; qi < NI_ARRAY_LEN(seqs); qi++)
                for (size_t pi = 0; pi < NI_ARRAY_LEN(split_ctx); pi++) {
                    const int S = seqs[qi], C = ctxs[ci];
                    if (S > 4 && split_ctx[pi]) continue; /* >= 64 sequences: never split */
                    double us[6];
                    int sp[6];
                    /* old, new, fp8 16-byte, fp8 8-byte loads, new in its throughput shape,
                     * new with the coarse chunks staged in shared memory */
                    for (int k = 0; k < 6; k++) {
                        cu_op_att_decode_fp8_wide(k != 3);
                        cu_op_att_decode_lat(k != 4); /* 4: the throughput shape */
                        cu_op_att_decode_stage(k == 5);
                        assert_int_equal(cu_op_attention_bench(S, C, shapes[si].nh,
                                                               shapes[si].nkv, shapes[si].hd, 16,
                                                               split_ctx[pi], k ? 1 : 0,
                                                               k == 2 || k == 3 ? CU_DTYPE_FP8
                                                                                : CU_DTYPE_BF16,
                                                               20, &us[k], &sp[k]),
                                         0);
                    }
                    cu_op_att_decode_fp8_wide(-1);
                    cu_op_att_decode_lat(1);
                    cu_op_att_decode_stage(0);
                    const double bytes = 2.0 * S * C * shapes[si].nkv * shapes[si].hd * 2;
                    printf("  %-15s %5d %5d %-6s %6d %10.1f %10.1f %6.2fx %9.0f %10.1f %10.1f "
                           "%9.0f %10.1f %9.0f %10.1f %9.0f\n",
                           shapes[si].name, S, C, split_ctx[pi] ? "graph" : "auto", sp[1], us[0],
                           us[1], us[0] / us[1], bytes / (us[1] * 1e3), us[4], us[2],
                           bytes / 2 / (us[2] * 1e3), us[3], bytes / 2 / (us[3] * 1e3), us[5],
                           bytes / (us[5] * 1e3));
                }
#endif
}

/* Prefill attention (NI_PERF_ATT=1, GPU only): one sequence of 512 and 4000
 * new tokens from position 0, BF16, TinyLlama (32 q / 4 kv heads, hd 64) and
 * Llama-3-8B (32 / 8, hd 128) head shapes, SIMT k_attention against the
 * tensor-core kernel (cu_op_attention_prefill_bench), and the tensor-core
 * kernel over an E4M3 cache (--kv-cache-dtype fp8: plain loads widened to
 * BF16, no cp.async); TFLOP/s of the causal attention math,
 * 4 * hd * n_heads * n (n + 1) / 2. Reports only. */
static void test_attention_prefill_kernels(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    const char *on = getenv("NI_PERF_ATT");
    if (!on || strcmp(on, "1") != 0) {
        printf("SKIP: NI_PERF_ATT=1 times the prefill attention kernels\n");
        skip();
        return;
    }
    static const struct {
        const char *name;
        int nh, nkv, hd;
    } shapes[] = {{"TinyLlama-1.1B", 32, 4, 64}, {"Llama-3-8B", 32, 8, 128}};
    const int toks[] = {512, 4000};
    printf("  prefill attention, one sequence from position 0 (us, TFLOP/s); "
           "BF16 cache on SIMT and tensor cores, E4M3 cache on tensor cores\n");
    printf("  %-15s %5s %10s %8s %10s %8s %8s %12s %8s\n", "shape", "toks", "simt us", "TF/s",
           "tc us", "TF/s", "speedup", "tc fp8 us", "TF/s");
    for (size_t si = 0; si < NI_ARRAY_LEN(shapes); si++)
        for (size_t ti = 0; ti < NI_ARRAY_LEN(toks); ti++) {
            const int n = toks[ti];
            double us[3];
            const cu_att_kernel k[3] = {CU_ATT_SIMT, CU_ATT_TC, CU_ATT_TC};
            for (int i = 0; i < 3; i++)
                assert_int_equal(cu_op_attention_prefill_bench(n, shapes[si].nh, shapes[si].nkv,
                                                               shapes[si].hd, k[i], i == 2, 10,
                                                               &us[i]),
                                 0);
            const double flop = 4.0 * shapes[si].hd * shapes[si].nh * (double)n * (n + 1) / 2;
            printf("  %-15s %5d %10.1f %8.2f %10.1f %8.2f %7.2fx %12.1f %8.2f\n", shapes[si].name,
                   n, us[0], flop / (us[0] * 1e6), us[1], flop / (us[1] * 1e6), us[0] / us[1],
                   us[2], flop / (us[2] * 1e6));
        }
#endif
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_attention_kernels),
                                       cmocka_unit_test(test_attention_prefill_kernels),
                                       cmocka_unit_test(test_decode_steps)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
