/*
 * bench.c - `nanoinfer bench`: offline throughput of the engine on synthetic
 * requests (no HTTP), and the four prefix-caching experiments (--prefix).
 *
 * Throughput workload (nano-vllm / vLLM benchmark shape): N requests of
 * random token ids, prompt and output lengths uniform in the given ranges,
 * ignore_eos so every request produces exactly its output length; all are
 * submitted at t=0 and the engine is stepped until idle. Latency = finish
 * time - submit time; TTFT = first token time - submit time.
 *
 * --warmup N first runs N requests through the same engine, untimed and
 * uncounted (prompts of the workload's lengths from another seed, outputs
 * of 1..N tokens, so the batch shrinks through every decode size on the
 * way and a device backend has captured its graphs and initialised its
 * libraries before the clock starts, as a served engine has after its
 * first requests).
 *
 * Prefix experiments: requests arrive one per engine step (so earlier
 * prompts' blocks are computed and registered before later ones look them
 * up), each run on a fresh engine with the cache on and off.
 *
 * With --url the command is the serving benchmark of a running server
 * instead (server/cli/bench_http.c); nothing here runs then.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/util/util.h"
#include "cli.h"

typedef struct bench_req {
    double t_submit, t_first, t_done;
    int n_out;
    int32_t *out;      /* [cap_out] generated tokens (multi-turn experiment) */
    int cap_out;
} bench_req;

typedef struct bench_ctx {
    bench_req *r;              /* [n_req]: events of other ids (warm-up) are ignored */
    int n_done;
    int n_req;
    long out_tokens;
    int progress;
    double t0;
} bench_ctx;

static void on_event(void *ud, const eng_event *ev) {
    bench_ctx *b = ud;
    if (ev->id >= (uint64_t)b->n_req) return; /* a warm-up request */
    bench_req *q = &b->r[ev->id];
    double now = ni_now();
    if (ev->token >= 0) {
        if (q->n_out == 0) q->t_first = now;
        if (q->out && q->n_out < q->cap_out) q->out[q->n_out] = ev->token;
        q->n_out++;
        b->out_tokens++;
    }
    if (ev->finish) {
        q->t_done = now;
        b->n_done++;
        if (b->progress) {
            int w = 30, k = (int)((long)w * b->n_done / b->n_req);
            fprintf(stderr, "\r[%.*s%*s] %d/%d requests, %.1f output tok/s ", k,
                    "==============================", w - k, "", b->n_done, b->n_req,
                    b->out_tokens / (now - b->t0));
            if (b->n_done == b->n_req) fprintf(stderr, "\n");
        }
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, int n, double p) {
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    int i = (int)(p * (n - 1) + 0.5);
    return v[NI_MIN(NI_MAX(i, 0), n - 1)];
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int rand_in(uint64_t *s, int lo, int hi) {
    return lo + (int)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

static int parse_range(const char *s, int *lo, int *hi) {
    char *end;
    long a = strtol(s, &end, 10), b = a;
    if (*end == ':') b = strtol(end + 1, &end, 10);
    if (*end || a < 1 || b < a || b > 1 << 20) return -1;
    *lo = (int)a;
    *hi = (int)b;
    return 0;
}

typedef struct bench_opts {
    const char *model;
    const eng_backend *be;     /* chosen once by --device / --dtype */
    int n_req, in_lo, in_hi, out_lo, out_hi, json, prefix, prefix_n;
    int warmup;                /* --warmup: untimed requests first (throughput only) */
    uint64_t seed;
    smp_params sp;
    eng_config cfg;
} bench_opts;

static void usage(void) {
    fprintf(stderr,
            "usage: nanoinfer bench --model M [options]\n"
            "       nanoinfer bench --url URL [options]   serving benchmark of a running server\n"
            "                                             (nanoinfer bench --url URL --help)\n"
            "  --num-requests N       requests (default 256)\n"
            "  --input-len A:B        prompt length uniform in [A, B] (default 100:1024)\n"
            "  --output-len A:B       output length uniform in [A, B] (default 100:1024)\n"
            "  --seed S               workload seed (default 0)\n"
            "  --warmup N             N untimed requests first (outputs of 1..N tokens: every\n"
            "                         decode batch size up to N; default 0)\n"
            "  --max-num-seqs N       running sequences (default 256)\n"
            "  --max-batched-tokens N tokens per step (default 2048)\n"
            "  --prefill-chunk N      prompt tokens per sequence per step (default 512)\n"
            "  --kv-blocks N          KV pool blocks (default: 1 GiB of KV)\n"
            "  --threads N            CPU threads (default: all cores)\n"
            "  --tensor-parallel-size N  shard every layer over N ranks (default 1: none;\n"
            "                         CPU: fp32 weights, the ranks in one process)\n"
            "  --device D             auto (default: CUDA when a GPU is visible), cpu, cuda\n"
            "  --dtype T              bf16 (GPU default) or fp32\n"
            "  --kv-cache-dtype T     KV cache: auto (the compute dtype), bf16, fp8 (E4M3;\n"
            "                         CUDA with bf16: twice the KV blocks per byte)\n"
            "  --quant Q              weights: auto (default: the file's own precision), fp32,\n"
            "                         int8 or q4 (4-bit, CPU)\n"
            "  --gpu-memory-utilization F  fraction of GPU memory for weights + KV (0.9)\n"
            "  --no-prefix-cache      disable prefix caching\n"
            "  --temperature T ...    sampling flags as in generate (default greedy)\n"
            "  --json                 print results as one JSON object\n"
            "  --prefix               run the four prefix-caching experiments instead\n"
            "  --prefix-requests N    requests per prefix experiment (default 16)\n");
}

/* The warm-up of --warmup: w requests (ids n, n+1, ...: on_event ignores
 * them) of random prompts with the workload's lengths (seed ^ a constant,
 * so not the timed prompts: the prefix cache cannot serve those), request i
 * generating i + 1 tokens, stepped until idle. Returns 0 or -1. */
static int warm_up(eng_engine *e, const mdl_model *m, const bench_opts *o, int n, int w) {
    const int max_ctx = o->cfg.max_seq_len ? o->cfg.max_seq_len : m->cfg.max_seq_len;
    uint64_t s = o->seed ^ 0x77a2b3c4d5e6f708ull;
    int32_t *p = malloc((size_t)o->in_hi * sizeof(int32_t));
    if (!p) return -1;
    for (int i = 0; i < w; i++) {
        int np = rand_in(&s, o->in_lo, o->in_hi);
        const int no = NI_MIN(i + 1, NI_MAX(1, max_ctx - np));
        if (np + no > max_ctx) np = NI_MAX(1, max_ctx - no);
        for (int k = 0; k < np; k++) p[k] = rand_in(&s, 0, m->cfg.vocab_size - 1);
        eng_request rq = {.id = (uint64_t)(n + i), .prompt = p, .n_prompt = np, .sp = o->sp,
                          .max_tokens = no, .n = 1, .ignore_eos = 1,
                          .fallback_seed = o->seed + (uint64_t)(n + i)};
        eng_error ee;
        if (eng_add(e, &rq, &ee)) { /* the engine copies the prompt */
            fprintf(stderr, "error: warm-up request %d: %s\n", i, ee.msg);
            free(p);
            return -1;
        }
    }
    free(p);
    int live;
    while ((live = eng_step(e)) > 0) {}
    if (live < 0) fprintf(stderr, "error: warm-up step failed: %s\n", ni_strerror(live));
    return live < 0 ? -1 : 0;
}

/* a - b for the counters a run accumulates (the warm-up's taken out). */
static void stats_minus(eng_stats *a, const eng_stats *b) {
    a->n_preemptions -= b->n_preemptions;
    a->prompt_tokens -= b->prompt_tokens;
    a->generated_tokens -= b->generated_tokens;
    a->steps -= b->steps;
    a->grammar_masks -= b->grammar_masks;
    a->grammar_seconds -= b->grammar_seconds;
    a->step_seconds -= b->step_seconds;
    a->backend_seconds -= b->backend_seconds;
}

/* Runs one engine over the given prompts; arrival: all at once (stagger = 0)
 * or one per step; warmup requests first (warm_up). Fills b->r timings.
 * Returns elapsed seconds or < 0. */
static double run_engine(const mdl_model *m, const bench_opts *o, int prefix_cache,
                         int32_t **prompts, const int *n_prompt, const int *n_out, int n,
                         int stagger, int warmup, bench_ctx *b, eng_stats *st_out) {
    eng_config cfg = o->cfg;
    cfg.prefix_cache = prefix_cache;
    eng_engine *e = NULL;
    char err[512];
    if (eng_init(&e, m, o->be, &cfg, on_event, b, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    b->n_done = 0;
    b->out_tokens = 0;
    b->n_req = n;
    eng_stats w0 = {0};
    if (warmup > 0) {
        if (warm_up(e, m, o, n, warmup)) {
            eng_free(e);
            return -1;
        }
        eng_get_stats(e, &w0);
    }
    b->t0 = ni_now();
    int next = 0;
    do {
        while (next < n) {
            eng_request rq = {.id = (uint64_t)next, .prompt = prompts[next],
                              .n_prompt = n_prompt[next], .sp = o->sp, .max_tokens = n_out[next],
                              .n = 1, .ignore_eos = 1, .fallback_seed = o->seed + (uint64_t)next};
            b->r[next].t_submit = ni_now();
            b->r[next].n_out = 0;
            eng_error ee;
            if (eng_add(e, &rq, &ee)) {
                fprintf(stderr, "error: request %d: %s\n", next, ee.msg);
                eng_free(e);
                return -1;
            }
            next++;
            if (stagger) break;
        }
        int live = eng_step(e);
        if (live < 0) {
            fprintf(stderr, "error: engine step failed: %s\n", ni_strerror(live));
            eng_free(e);
            return -1;
        }
        if (live == 0 && next == n) break;
    } while (1);
    double el = ni_now() - b->t0;
    if (st_out) {
        eng_get_stats(e, st_out);
        stats_minus(st_out, &w0);
    }
    eng_free(e);
    return el;
}

static int throughput(const mdl_model *m, bench_opts *o) {
    int n = o->n_req;
    int32_t **prompts = calloc((size_t)n, sizeof(int32_t *));
    int *np = calloc((size_t)n, sizeof(int)), *no = calloc((size_t)n, sizeof(int));
    bench_ctx b = {.r = calloc((size_t)n, sizeof(bench_req)), .progress = isatty(2) && !o->json};
    double *lat = calloc((size_t)n, sizeof(double)), *ttft = calloc((size_t)n, sizeof(double));
    double *tpot = calloc((size_t)n, sizeof(double));
    if (!prompts || !np || !no || !b.r || !lat || !ttft || !tpot) return 1;
    uint64_t s = o->seed;
    long in_total = 0, out_total = 0;
    int max_ctx = o->cfg.max_seq_len ? o->cfg.max_seq_len : m->cfg.max_seq_len;
    for (int i = 0; i < n; i++) {
        np[i] = rand_in(&s, o->in_lo, o->in_hi);
        no[i] = rand_in(&s, o->out_lo, o->out_hi);
        if (np[i] + no[i] > max_ctx) no[i] = NI_MAX(1, max_ctx - np[i]);
        prompts[i] = malloc((size_t)np[i] * sizeof(int32_t));
        if (!prompts[i]) return 1;
        for (int k = 0; k < np[i]; k++) prompts[i][k] = rand_in(&s, 0, m->cfg.vocab_size - 1);
        in_total += np[i];
        out_total += no[i];
    }
    eng_stats st;
    double el = run_engine(m, o, o->cfg.prefix_cache, prompts, np, no, n, 0, o->warmup, &b, &st);
    if (el < 0) return 1;
    long got = 0;
    int n_tp = 0; /* requests with >= 2 output tokens: the ones with a TPOT */
    for (int i = 0; i < n; i++) {
        lat[i] = b.r[i].t_done - b.r[i].t_submit;
        ttft[i] = b.r[i].t_first - b.r[i].t_submit;
        got += b.r[i].n_out;
        /* time per output token after the first: the decode rate of one
         * request, free of its prefill and queueing (vLLM's TPOT) */
        if (b.r[i].n_out > 1)
            tpot[n_tp++] = (b.r[i].t_done - b.r[i].t_first) / (b.r[i].n_out - 1);
    }
    double mean = 0, mttft = 0, mtpot = 0;
    for (int i = 0; i < n; i++) mean += lat[i] / n, mttft += ttft[i] / n;
    for (int i = 0; i < n_tp; i++) mtpot += tpot[i] / n_tp;
    double p50 = pct(lat, n, 0.5), p99 = pct(lat, n, 0.99), t50 = pct(ttft, n, 0.5),
           t99 = pct(ttft, n, 0.99);
    const double tp50 = n_tp ? pct(tpot, n_tp, 0.5) : 0, tp99 = n_tp ? pct(tpot, n_tp, 0.99) : 0;
    if (got != out_total) fprintf(stderr, "warning: %ld output tokens, expected %ld\n", got, out_total);
    /* engine time per step: inside the backend (device waits), and the rest */
    const double per = st.steps ? 1e3 / (double)st.steps : 0;
    const double backend_ms = st.backend_seconds * per;
    const double host_ms = (st.step_seconds - st.backend_seconds) * per;
    if (o->json) {
        printf("{\"model\":\"%s\",\"requests\":%d,\"input_tokens\":%ld,\"output_tokens\":%ld,"
               "\"elapsed_s\":%.3f,\"requests_per_s\":%.4f,\"output_tokens_per_s\":%.2f,"
               "\"total_tokens_per_s\":%.2f,\"latency_mean_s\":%.3f,\"latency_p50_s\":%.3f,"
               "\"latency_p99_s\":%.3f,\"ttft_mean_s\":%.3f,\"ttft_p50_s\":%.3f,"
               "\"ttft_p99_s\":%.3f,\"tpot_mean_ms\":%.4f,\"tpot_p50_ms\":%.4f,"
               "\"tpot_p99_ms\":%.4f,\"backend\":\"%s\",\"preemptions\":%llu,\"steps\":%llu,\"max_num_seqs\":%d,"
               "\"kv_blocks\":%d,\"step_host_ms\":%.4f,\"step_backend_ms\":%.4f}\n",
               m->name, n, in_total, got, el, n / el, got / el, (in_total + got) / el, mean, p50,
               p99, mttft, t50, t99, mtpot * 1e3, tp50 * 1e3, tp99 * 1e3, o->be->name, (unsigned long long)st.n_preemptions,
               (unsigned long long)st.steps, o->cfg.max_num_seqs, st.kv.blocks_total,
               host_ms, backend_ms);
    } else {
        printf("model %s, %d requests, %ld prompt + %ld output tokens, %.2f s\n", m->name, n,
               in_total, got, el);
        printf("throughput: %.3f requests/s, %.1f output tokens/s, %.1f total tokens/s\n", n / el,
               got / el, (in_total + got) / el);
        printf("latency: mean %.2f s, p50 %.2f s, p99 %.2f s; TTFT mean %.2f s, p50 %.2f s, "
               "p99 %.2f s\n", mean, p50, p99, mttft, t50, t99);
        if (n_tp)
            printf("time per output token after the first: mean %.3f ms (%.1f tokens/s per "
                   "request), p50 %.3f ms, p99 %.3f ms\n",
                   mtpot * 1e3, 1.0 / mtpot, tp50 * 1e3, tp99 * 1e3);
        printf("engine: %s backend, %llu steps, %llu preemptions, %d KV blocks; per step "
               "%.3f ms in the backend, %.3f ms of engine host work\n",
               o->be->name, (unsigned long long)st.steps, (unsigned long long)st.n_preemptions,
               st.kv.blocks_total, backend_ms, host_ms);
    }
    for (int i = 0; i < n; i++) free(prompts[i]);
    free(prompts); free(np); free(no); free(b.r); free(lat); free(ttft); free(tpot);
    return 0;
}

/* The four prefix-caching experiments. */
static int prefix_experiments(const mdl_model *m, bench_opts *o) {
    /* TURN is large enough that prefill, which the cache saves, outweighs the
     * 16 decode steps per turn, which it cannot. */
    /* Sizes fit the context (--max-model-len, else the model's): a 512-token
     * model gets a 240-token base. The multi-turn history restarts from a
     * fresh base conversation when the next turn would not fit (#10: 64
     * requests once grew the prompt to 13,616 tokens). */
    const int ctx = o->cfg.max_seq_len > 0 && o->cfg.max_seq_len < m->cfg.max_seq_len
                        ? o->cfg.max_seq_len
                        : m->cfg.max_seq_len;
    const int n = o->prefix_n, OUT = 16, P = NI_MIN(512, (ctx - OUT) / 2), SYS = P * 3 / 4;
    const int TURN = NI_MIN(192, NI_MAX(1, (ctx - P - 2 * OUT) / 4));
    if (P < 8) {
        fprintf(stderr, "error: the context (%d tokens) is too short for the prefix experiments\n",
                ctx);
        return 1;
    }
    int restarts = 0;
    const char *names[4] = {"identical prompt", "shared system prompt", "no shared prefix",
                            "growing multi-turn"};
    int32_t **prompts = calloc((size_t)n, sizeof(int32_t *));
    int *np = calloc((size_t)n, sizeof(int)), *no = calloc((size_t)n, sizeof(int));
    bench_ctx b = {.r = calloc((size_t)n, sizeof(bench_req))};
    int cap = ctx + 16; /* a prompt never exceeds the context */
    for (int i = 0; i < n; i++) {
        prompts[i] = malloc((size_t)cap * sizeof(int32_t));
        b.r[i].out = malloc(OUT * sizeof(int32_t));
        b.r[i].cap_out = OUT;
        if (!prompts[i] || !b.r[i].out) return 1;
        no[i] = OUT;
    }
    if (o->json) printf("[");
    for (int ex = 0; ex < 4; ex++) {
        double t[2] = {0, 0}, hit = 0;
        for (int on = 1; on >= 0; on--) {
            uint64_t s = o->seed + 17 * (uint64_t)ex;
            int32_t base[1024];
            for (int k = 0; k < P; k++) base[k] = rand_in(&s, 0, m->cfg.vocab_size - 1);
            eng_stats st;
            double el = 0;
            if (ex < 3) {
                for (int i = 0; i < n; i++) {
                    np[i] = P;
                    for (int k = 0; k < P; k++) {
                        int shared = ex == 0 || (ex == 1 && k < SYS);
                        prompts[i][k] = shared ? base[k] : rand_in(&s, 0, m->cfg.vocab_size - 1);
                    }
                }
                el = run_engine(m, o, on, prompts, np, no, n, 1, 0, &b, &st);
                if (el < 0) return 1;
            } else {
                /* Turn i = turn i-1's prompt + its actual reply + TURN new user
                 * tokens, run one after another on one engine. */
                eng_config cfg = o->cfg;
                cfg.prefix_cache = on;
                eng_engine *e = NULL;
                char err[512];
                if (eng_init(&e, m, o->be, &cfg, on_event, &b, err, sizeof err)) {
                    fprintf(stderr, "error: %s\n", err);
                    return 1;
                }
                double t0 = ni_now();
                b.n_req = n;
                for (int i = 0; i < n; i++) {
                    if (i == 0) {
                        np[0] = P;
                        memcpy(prompts[0], base, (size_t)P * sizeof(int32_t));
                    } else if (np[i - 1] + 2 * OUT + TURN > ctx) {
                        /* a new conversation: its first turn is a fresh base */
                        restarts += on;
                        np[i] = P;
                        for (int k = 0; k < P; k++)
                            prompts[i][k] = rand_in(&s, 0, m->cfg.vocab_size - 1);
                    } else {
                        int len = np[i - 1];
                        memcpy(prompts[i], prompts[i - 1], (size_t)len * sizeof(int32_t));
                        memcpy(prompts[i] + len, b.r[i - 1].out, OUT * sizeof(int32_t));
                        len += OUT;
                        for (int k = 0; k < TURN; k++)
                            prompts[i][len++] = rand_in(&s, 0, m->cfg.vocab_size - 1);
                        np[i] = len;
                    }
                    eng_request rq = {.id = (uint64_t)i, .prompt = prompts[i], .n_prompt = np[i],
                                      .sp = o->sp, .max_tokens = OUT, .n = 1, .ignore_eos = 1};
                    b.r[i].n_out = 0;
                    b.r[i].t_submit = ni_now();
                    eng_error ee;
                    if (eng_add(e, &rq, &ee)) {
                        fprintf(stderr, "error: %s\n", ee.msg);
                        eng_free(e);
                        return 1;
                    }
                    while (eng_step(e) > 0) {
                    }
                }
                el = ni_now() - t0;
                eng_get_stats(e, &st);
                eng_free(e);
            }
            t[on] = el;
            if (on) hit = st.kv.query_tokens ? (double)st.kv.hit_tokens / st.kv.query_tokens : 0;
        }
        if (o->json)
            printf("%s{\"experiment\":\"%s\",\"hit_rate\":%.4f,\"time_on_s\":%.3f,"
                   "\"time_off_s\":%.3f,\"speedup\":%.3f,\"restarts\":%d}", ex ? "," : "", names[ex],
                   hit, t[1], t[0], t[0] / t[1], ex == 3 ? restarts : 0);
        else
            printf("%-22s hit rate %5.1f%%  cache on %7.2f s  off %7.2f s  speedup %.2fx\n",
                   names[ex], 100 * hit, t[1], t[0], t[0] / t[1]);
        if (ex == 3 && restarts && !o->json)
            printf("%-22s %d conversation restarts (context %d tokens)\n", "", restarts, ctx);
        fflush(stdout);
    }
    if (o->json) printf("]\n");
    for (int i = 0; i < n; i++) free(prompts[i]), free(b.r[i].out);
    free(prompts); free(np); free(no); free(b.r);
    return 0;
}

int srv_cmd_bench(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--url") || !strncmp(argv[i], "--url=", 6))
            return srv_cmd_bench_http(argc, argv);
    enum { O_NREQ = 256, O_IN, O_OUT, O_SEED, O_MAXSEQS, O_MAXBT, O_CHUNK, O_KVB, O_THREADS,
           O_NOPC, O_JSON, O_PREFIX, O_PREFIXN, O_SAMPLING, O_DEVICE, O_DTYPE, O_MEMU, O_QUANT,
           O_TP, O_KVDT, O_WARMUP };
    static struct option opts[] = {
        {"model", 1, 0, 'm'}, {"num-requests", 1, 0, O_NREQ}, {"input-len", 1, 0, O_IN},
        {"output-len", 1, 0, O_OUT}, {"seed", 1, 0, O_SEED}, {"max-num-seqs", 1, 0, O_MAXSEQS},
        {"max-batched-tokens", 1, 0, O_MAXBT}, {"prefill-chunk", 1, 0, O_CHUNK},
        {"kv-blocks", 1, 0, O_KVB}, {"threads", 1, 0, O_THREADS},
        {"no-prefix-cache", 0, 0, O_NOPC}, {"json", 0, 0, O_JSON}, {"prefix", 0, 0, O_PREFIX},
        {"prefix-requests", 1, 0, O_PREFIXN}, {"temperature", 1, 0, O_SAMPLING},
        {"top-p", 1, 0, O_SAMPLING}, {"top-k", 1, 0, O_SAMPLING}, {"min-p", 1, 0, O_SAMPLING},
        {"device", 1, 0, O_DEVICE}, {"dtype", 1, 0, O_DTYPE},
        {"gpu-memory-utilization", 1, 0, O_MEMU}, {"quant", 1, 0, O_QUANT},
        {"tensor-parallel-size", 1, 0, O_TP}, {"kv-cache-dtype", 1, 0, O_KVDT},
        {"warmup", 1, 0, O_WARMUP},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *device = NULL, *dtype = NULL;
    bench_opts o = {.n_req = 256, .in_lo = 100, .in_hi = 1024, .out_lo = 100, .out_hi = 1024,
                    .prefix_n = 16};
    o.sp = smp_params_default();
    o.sp.temperature = 0;
    eng_config_default(&o.cfg);
    o.cfg.quant = ENG_QUANT_AUTO; /* the file's own precision, as generate and serve */
    int c, idx = 0, bad = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:h", opts, &idx)) != -1) {
        switch (c) {
        case 'm': o.model = optarg; break;
        case O_NREQ: bad |= (o.n_req = atoi(optarg)) < 1; break;
        case O_IN: bad |= parse_range(optarg, &o.in_lo, &o.in_hi); break;
        case O_OUT: bad |= parse_range(optarg, &o.out_lo, &o.out_hi); break;
        case O_SEED: o.seed = strtoull(optarg, NULL, 10); break;
        case O_MAXSEQS: bad |= (o.cfg.max_num_seqs = atoi(optarg)) < 1; break;
        case O_MAXBT: bad |= (o.cfg.max_batched_tokens = atoi(optarg)) < 1; break;
        case O_CHUNK: bad |= (o.cfg.prefill_chunk = atoi(optarg)) < 1; break;
        case O_KVB: bad |= (o.cfg.n_blocks = atoi(optarg)) < 1; break;
        case O_THREADS: bad |= (o.cfg.n_threads = atoi(optarg)) < 0; break;
        case O_NOPC: o.cfg.prefix_cache = 0; break;
        case O_JSON: o.json = 1; break;
        case O_PREFIX: o.prefix = 1; break;
        case O_PREFIXN: bad |= (o.prefix_n = atoi(optarg)) < 2; break;
        case O_SAMPLING: bad |= srv_parse_sampling_opt(opts[idx].name, optarg, &o.sp) != 1; break;
        case O_DEVICE: device = optarg; break;
        case O_DTYPE: dtype = optarg; break;
        case O_QUANT: bad |= eng_quant_parse(optarg, &o.cfg.quant) != 0; break;
        case O_KVDT: bad |= eng_kv_dtype_parse(optarg, &o.cfg.kv_dtype) != 0; break;
        case O_TP: bad |= (o.cfg.tp = atoi(optarg)) < 1 || o.cfg.tp > ENG_TP_MAX; break;
        case O_WARMUP: bad |= (o.warmup = atoi(optarg)) < 0 || o.warmup > 65536; break;
        case O_MEMU: o.cfg.mem_util = atof(optarg); bad |= !(o.cfg.mem_util > 0 && o.cfg.mem_util <= 1); break;
        case 'h': usage(); return 0;
        default: usage(); return 2;
        }
    }
    char berr[256];
    if (!bad && !(o.be = eng_backend_select(device, dtype, berr, sizeof berr))) {
        fprintf(stderr, "error: %s\n", berr);
        return 2;
    }
    eng_dtype_parse(dtype, &o.cfg.dtype); /* validated by eng_backend_select */
    if (bad || !o.model) {
        fprintf(stderr, "error: bad or missing option (need --model)\n");
        usage();
        return 2;
    }
    mdl_model m;
    char err[512];
    if (mdl_load(&m, o.model, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    int rc = o.prefix ? prefix_experiments(&m, &o) : throughput(&m, &o);
    mdl_free(&m);
    return rc;
}
