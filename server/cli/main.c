/*
 * main.c - the nanoinfer command line: one binary, subcommands.
 *
 *   nanoinfer generate --model M --prompt P [--max-tokens N] [--temperature 0] [--chat]
 *   nanoinfer serve --model M [--host H] [--port P] [--config FILE]   (srv_server.c)
 *   nanoinfer chat [--url U]                                          (srv_chat.c)
 *   nanoinfer tokenize --model M [--no-special] "text"
 *   nanoinfer info --model M
 *
 * This is the only place that turns errors into exit codes: 0 success,
 * 1 runtime/model error (one line on stderr), 2 usage error.
 */
#include <getopt.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/backend/backend.h"
#include "engine/engine.h"
#include "cli.h"
#include "tokenizer/chat.h"
#include "engine/model/model.h"
#include "engine/util/util.h"
#include "tokenizer/tok.h"

#define NI_VERSION "0.1.0"

static void usage(FILE *f) {
    fprintf(f,
            "nanoinfer " NI_VERSION " - a small LLM inference server\n\n"
            "usage: nanoinfer <command> [options]\n\n"
            "commands:\n"
            "  generate  --model M --prompt P [--max-tokens N] [--chat] [--system S]\n"
            "            [--temperature T (default 0: greedy)] [--top-p P] [--top-k K] [--min-p P] [--seed S]\n"
            "            [--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F]\n"
            "            [--stop STR]... [--logprobs N] [--ignore-eos] [--threads T] [--ids]\n"
            "            [--device auto|cpu|cuda] [--dtype bf16|fp32] [--quant auto|fp32|int8|q4]\n"
            "            [--kv-cache-dtype auto|bf16|fp8] [--tensor-parallel-size N]\n"
            "  bench     --model M [--num-requests N] [--input-len A:B] [--output-len A:B]\n"
            "            [--max-num-seqs N] [--kv-blocks N] [--json] [--prefix] (see bench --help)\n"
            "  bench     --url URL [--endpoint completions|chat] [--concurrency 1,4,16]\n"
            "            [--request-rate R] [--num-prompts N] [--input-len N] [--output-len N]\n"
            "            [--json FILE] (serving benchmark of a running OpenAI-compatible\n"
            "            server; see bench --url URL --help)\n"
            "  serve     --model M [--host H] [--port P] [--config FILE] (OpenAI-compatible\n"
            "            HTTP server; see serve --help)\n"
            "  chat      [--url http://127.0.0.1:8000] (interactive chat with a running server;\n"
            "            see chat --help)\n"
            "  tokenize  --model M [--no-special] [--bos] TEXT\n"
            "  info      --model M\n\n"
            "M is a .gguf file or a Hugging Face model directory.\n");
}

static int load_model(mdl_model *m, const char *path) {
    char err[512];
    if (!path) {
        fprintf(stderr, "error: --model is required\n");
        return 2;
    }
    if (mdl_load(m, path, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    return 0;
}

/* Encodes text into a heap array; returns count or negative. */
static int encode_alloc(const tok_tokenizer *t, const char *text, int add_bos, int special,
                        int32_t **out) {
    size_t len = strlen(text);
    int cap = (int)NI_MIN(len + 16, (size_t)1 << 28);
    int32_t *ids = malloc((size_t)cap * sizeof(int32_t));
    if (!ids) return NI_ENOMEM;
    int n = tok_encode(t, text, len, add_bos, special, ids, cap);
    if (n > cap) {
        int32_t *p = realloc(ids, (size_t)n * sizeof(int32_t));
        if (!p) { free(ids); return NI_ENOMEM; }
        ids = p;
        n = tok_encode(t, text, len, add_bos, special, ids, n);
    }
    if (n < 0) { free(ids); return n; }
    *out = ids;
    return n;
}

static int cmd_tokenize(int argc, char **argv) {
    static struct option opts[] = {{"model", 1, 0, 'm'}, {"no-special", 0, 0, 'n'},
                                   {"bos", 0, 0, 'b'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    const char *model = NULL;
    int special = 1, bos = 0, c;
    while ((c = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'n': special = 0; break;
        case 'b': bos = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) { usage(stderr); return 2; }
    mdl_model m;
    int rc = load_model(&m, model);
    if (rc) return rc;
    int32_t *ids;
    int n = encode_alloc(m.tok, argv[optind], bos, special, &ids);
    if (n < 0) {
        fprintf(stderr, "error: tokenize: %s\n", ni_strerror(n));
        mdl_free(&m);
        return 1;
    }
    for (int i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
    printf("\n");
    free(ids);
    mdl_free(&m);
    return 0;
}

static int cmd_info(int argc, char **argv) {
    const char *model = NULL;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
    mdl_model m;
    int rc = load_model(&m, model);
    if (rc) return rc;
    const mdl_config *c = &m.cfg;
    printf("name: %s\narch: %s\nlayers: %d\ndim: %d\nffn: %d\nheads: %d (kv %d, head_dim %d)\n"
           "vocab: %d\ncontext: %d\nrope: theta %g, %s pairs%s\ntied embeddings: %d\n"
           "parameters: %zu\nchat template: %s\n",
           m.name, c->arch == MDL_ARCH_QWEN3 ? "qwen3" : "llama", c->n_layers, c->dim,
           c->hidden_dim, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size, c->max_seq_len,
           c->rope_theta, c->rope_interleaved ? "interleaved" : "half-split",
           c->rope_scaling == MDL_ROPE_LLAMA3 ? ", llama3 scaling" : "", c->tied_embeddings,
           m.w.arena_floats, m.chat_template ? chat_style_name(chat_detect(m.chat_template)) : "none");
    const mdl_sampling_defaults *sd = &m.sampling;
    printf("sampling defaults: %s", sd->source ? sd->source : "none (the server's built-in apply)");
    if (sd->has_temperature) printf(" temperature=%g", (double)sd->temperature);
    if (sd->has_top_k) printf(" top_k=%d", sd->top_k);
    if (sd->has_top_p) printf(" top_p=%g", (double)sd->top_p);
    if (sd->has_min_p) printf(" min_p=%g", (double)sd->min_p);
    if (sd->has_repetition_penalty)
        printf(" repetition_penalty=%g", (double)sd->repetition_penalty);
    printf("\n");
    mdl_free(&m);
    return 0;
}

typedef struct gen_state {
    const tok_tokenizer *tok;
    int print_ids;
    int finish;
    int error; /* the NI_E* code of an ENG_FINISH_ERROR event */
    int n_gen;
    int32_t first_tok;
    double t_first; /* when the first token came; unset (0) while n_gen == 0 */
} gen_state;

static void gen_on_event(void *ud, const eng_event *ev) {
    gen_state *g = ud;
    if (ev->token >= 0 && g->n_gen++ == 0) g->t_first = ni_now();
    if (g->print_ids && ev->token >= 0) fprintf(stderr, "%d ", ev->token);
    if (ev->text_len) fwrite(ev->text, 1, (size_t)ev->text_len, stdout);
    if (ev->lp) {
        fprintf(stderr, "[%d logprob %.4f:", ev->token, ev->lp->logprob);
        for (int i = 0; i < ev->lp->n_top; i++)
            fprintf(stderr, " %d=%.4f", ev->lp->top[i].token, ev->lp->top[i].logprob);
        fprintf(stderr, "]\n");
    }
    fflush(stdout);
    if (ev->finish) g->finish = ev->finish;
    if (ev->finish == ENG_FINISH_ERROR) g->error = ev->error;
}

/* The command line of `nanoinfer generate`. */
typedef struct gen_args {
    const char *model, *prompt, *system, *device, *dtype, *quant, *kv_dtype;
    int max_tokens, chat, threads, ignore_eos, print_ids, tp;
    cli_list stop;
    smp_params sp;
} gen_args;

#define GA(f) offsetof(gen_args, f)
static const cli_opt g_gen_opts[] = {
    {"model", 'm', CLI_OPT_STR, GA(model), 0, 0, NULL, "M", ".gguf file or HF model directory"},
    {"prompt", 'p', CLI_OPT_STR, GA(prompt), 0, 0, NULL, "TEXT", "the prompt (required)"},
    {"max-tokens", 'n', CLI_OPT_INT, GA(max_tokens), 1, 1 << 20, NULL, "N", "tokens to generate (64)"},
    {"chat", 0, CLI_OPT_FLAG, GA(chat), 0, 0, NULL, NULL, "apply the model's chat template"},
    {"system", 0, CLI_OPT_STR, GA(system), 0, 0, NULL, "TEXT", "system message (with --chat)"},
    {"threads", 0, CLI_OPT_INT, GA(threads), 0, 1024, NULL, "T", "CPU threads (0: every core)"},
    {"ignore-eos", 0, CLI_OPT_FLAG, GA(ignore_eos), 0, 0, NULL, NULL, "do not stop at EOS"},
    {"ids", 0, CLI_OPT_FLAG, GA(print_ids), 0, 0, NULL, NULL, "print prompt and output ids"},
    {"stop", 0, CLI_OPT_LIST, GA(stop), 0, ENG_MAX_STOP, NULL, "STR", "stop string (repeatable)"},
    {"temperature", 0, CLI_OPT_SAMPLING, GA(sp), 0, 0, NULL, "T", "0 (default): greedy"},
    {"top-p", 0, CLI_OPT_SAMPLING, GA(sp), 0, 0, NULL, "P", "nucleus sampling mass"},
    {"top-k", 0, CLI_OPT_SAMPLING, GA(sp), 0, 0, NULL, "K", "keep the K most likely tokens"},
    {"min-p", 0, CLI_OPT_SAMPLING, GA(sp), 0, 0, NULL, "P", "drop tokens below P x the top one"},
    {"seed", 0, CLI_OPT_SAMPLING, GA(sp), 0, 0, NULL, "S", "sampling seed"},
    {"repetition-penalty", 0, CLI_OPT_SAMPLING, GA(sp), 0, 0, NULL, "R", "penalty on seen tokens"},
    {"presence-penalty", 0, CLI_OPT_SAMPLING, GA(sp), 0, 0, NULL, "P", "OpenAI presence penalty"},
    {"frequency-penalty", 0, CLI_OPT_SAMPLING, GA(sp), 0, 0, NULL, "F", "OpenAI frequency penalty"},
    {"logprobs", 0, CLI_OPT_SAMPLING, GA(sp), 0, 0, NULL, "N", "print the top N logprobs per token"},
    {"device", 0, CLI_OPT_STR, GA(device), 0, 0, NULL, "D", "auto (default), cpu, cuda"},
    {"dtype", 0, CLI_OPT_STR, GA(dtype), 0, 0, NULL, "T", "bf16 (GPU default) or fp32"},
    {"quant", 0, CLI_OPT_STR, GA(quant), 0, 0, NULL, "Q",
     "weights: auto (default: the file's own precision), fp32, int8, q4"},
    {"kv-cache-dtype", 0, CLI_OPT_STR, GA(kv_dtype), 0, 0, NULL, "T",
     "KV cache: auto (default: the compute dtype), bf16, fp8 (E4M3, scale 1; CUDA + bf16)"},
    {"tensor-parallel-size", 0, CLI_OPT_INT, GA(tp), 1, ENG_TP_MAX, NULL, "N",
     "shard every layer over N ranks (1: none; CPU: fp32 weights, in one process)"},
};
#undef GA

/* Fills a from argv. Returns 0, or the exit status (0 after --help, 2). */
static int gen_parse(int argc, char **argv, gen_args *a, eng_quant *quant, int *done) {
    memset(a, 0, sizeof *a);
    a->max_tokens = 64;
    a->tp = 1;
    a->sp = smp_params_default();
    a->sp.temperature = 0; /* generate is for reproducible one-shot runs: greedy unless asked */
    *done = 1;
    int r = cli_parse(g_gen_opts, NI_ARRAY_LEN(g_gen_opts), a, argc, argv, NULL);
    if (r == 1) {
        printf("usage: nanoinfer generate --model M --prompt TEXT [options]\n\n");
        cli_usage_opts(stdout, g_gen_opts, NI_ARRAY_LEN(g_gen_opts));
        return 0;
    }
    if (r) return 2;
    if (!a->prompt || !a->model) {
        fprintf(stderr, "error: generate needs --model and --prompt\n");
        return 2;
    }
    *quant = ENG_QUANT_AUTO;
    if (a->quant && eng_quant_parse(a->quant, quant)) {
        fprintf(stderr, "error: --quant must be auto, fp32, int8 or q4\n");
        return 2;
    }
    eng_kv_dtype kv;
    if (eng_kv_dtype_parse(a->kv_dtype, &kv)) {
        fprintf(stderr, "error: --kv-cache-dtype must be auto, bf16, fp8 or fp8_e4m3\n");
        return 2;
    }
    *done = 0;
    return 0;
}

/* The prompt's token ids (chat template applied with --chat) into *ids.
 * Returns the count (> 0), or -1 after printing the error. */
static int gen_prompt_ids(const mdl_model *m, const gen_args *a, int32_t **ids) {
    char *text = NULL;
    int add_bos = tok_add_bos(m->tok), special = 0, rc;
    if (a->chat) {
        chat_msg msgs[2];
        int n = 0;
        if (a->system) msgs[n++] = (chat_msg){.role = "system", .content = a->system};
        msgs[n++] = (chat_msg){.role = "user", .content = a->prompt};
        int style = chat_detect(m->chat_template);
        if ((rc = chat_render(style, msgs, n, 1, &text))) {
            fprintf(stderr, "error: chat template: %s\n", ni_strerror(rc));
            return -1;
        }
        special = 1;
        add_bos = add_bos && !chat_has_bos_text(style, text);
    }
    int n_prompt = encode_alloc(m->tok, text ? text : a->prompt, add_bos, special, ids);
    free(text);
    if (n_prompt <= 0) {
        fprintf(stderr, "error: prompt encodes to no tokens\n");
        return -1;
    }
    if (a->print_ids) {
        fprintf(stderr, "prompt ids:");
        for (int i = 0; i < n_prompt; i++) fprintf(stderr, " %d", (*ids)[i]);
        fprintf(stderr, "\n");
    }
    return n_prompt;
}

/* An engine sized for one request of n_prompt + max_tokens tokens. */
static int gen_engine(eng_engine **e, const mdl_model *m, const eng_backend *be, const gen_args *a,
                      eng_quant quant, int n_prompt, gen_state *g) {
    eng_config cfg;
    eng_config_default(&cfg);
    cfg.n_threads = a->threads;
    cfg.tp = a->tp;
    cfg.quant = quant;
    eng_dtype_parse(a->dtype, &cfg.dtype);          /* validated by eng_backend_select */
    eng_kv_dtype_parse(a->kv_dtype, &cfg.kv_dtype); /* validated by gen_parse */
    cfg.max_num_seqs = 1;
    cfg.max_batched_tokens = NI_MAX(n_prompt, 16);
    cfg.prefill_chunk = cfg.max_batched_tokens;
    cfg.max_seq_len = NI_MIN(n_prompt + a->max_tokens, m->cfg.max_seq_len);
    cfg.n_blocks = (cfg.max_seq_len + cfg.block_size - 1) / cfg.block_size;
    cfg.prefix_cache = 0;
    char err[512];
    int rc = eng_init(e, m, be, &cfg, gen_on_event, g, err, sizeof err);
    if (rc) fprintf(stderr, "error: %s\n", err);
    return rc;
}

static int cmd_generate(int argc, char **argv) {
    gen_args a;
    eng_quant quant;
    int done, rc = gen_parse(argc, argv, &a, &quant, &done);
    if (done) return rc;
    char berr[256];
    const eng_backend *be = eng_backend_select(a.device, a.dtype, berr, sizeof berr);
    if (!be) {
        fprintf(stderr, "error: %s\n", berr);
        return 2;
    }
    mdl_model m;
    if ((rc = load_model(&m, a.model))) return rc;
    int32_t *ids = NULL;
    const int n_prompt = gen_prompt_ids(&m, &a, &ids);
    gen_state g = {.tok = m.tok, .print_ids = a.print_ids};
    eng_engine *e = NULL;
    if (n_prompt < 0 || gen_engine(&e, &m, be, &a, quant, n_prompt, &g)) {
        free(ids);
        mdl_free(&m);
        return 1;
    }
    char desc[256];
    fprintf(stderr, "[%s]\n", eng_describe(e, desc, sizeof desc));
    eng_request rq = {0};
    rq.sp = a.sp;
    rq.n = 1;
    rq.ignore_eos = a.ignore_eos;
    for (int i = 0; i < a.stop.n; i++) rq.stop[rq.n_stop++] = a.stop.v[i];
    rq.prompt = ids;
    rq.n_prompt = n_prompt;
    rq.max_tokens = NI_MIN(a.max_tokens, eng_max_seq_len(e) - n_prompt);
    rq.fallback_seed = (uint64_t)(ni_now() * 1e9);
    eng_error ee;
    if (rq.max_tokens < 1 || (rc = eng_add(e, &rq, &ee))) {
        fprintf(stderr, "error: %s\n", rq.max_tokens < 1 ? "prompt fills the context" : ee.msg);
        eng_free(e);
        free(ids);
        mdl_free(&m);
        return 1;
    }
    double t0 = ni_now();
    while ((rc = eng_step(e)) > 0) {
    }
    double t1 = ni_now();
    printf("\n");
    int failed = rc < 0 || g.finish == ENG_FINISH_ERROR;
    if (failed) {
        int code = rc < 0 ? rc : g.error;
        fprintf(stderr, "error: generation failed after %d tokens: %s%s\n", g.n_gen,
                ni_strerror(code),
                code == NI_ERANGE ? " (no finite logit: NaN/Inf in the model's output; check the "
                                    "weights)"
                                  : "");
    } else if (g.n_gen > 0) {
        /* t_first is set by the first token only: with none there is no
         * prefill time to print (it read as minus the uptime) */
        fprintf(stderr,
                "[%d prompt tokens, prefill %.1f ms (%.1f tok/s); %d generated, decode %.2f "
                "tok/s]\n",
                n_prompt, (g.t_first - t0) * 1e3, n_prompt / (g.t_first - t0), g.n_gen,
                g.n_gen > 1 ? (g.n_gen - 1) / (t1 - g.t_first) : 0.0);
    }
    eng_free(e);
    free(ids);
    mdl_free(&m);
    return failed;
}

/* OpenBLAS picks its kernels and OpenMP its idle policy from the environment
 * when the libraries load, before main runs. OpenBLAS 0.3.21 does not
 * recognise recent Xeons and falls back to its Prescott (SSE3) kernels (about
 * 2x slower); libgomp, which only the model loader's dequantization uses (the
 * forward pass runs on engine/cpu/cpu_pool), would leave its idle threads
 * spinning after the load. So, unless the user set them, set both and
 * re-execute once. */
static void tune_runtime_env(char **argv) {
    if (getenv("NI_RUNTIME_ENV")) return;
    setenv("NI_RUNTIME_ENV", "1", 1);
    int changed = 0;
    __builtin_cpu_init();
    if (!getenv("OPENBLAS_CORETYPE")) {
        const char *ct = __builtin_cpu_supports("avx512bf16") ? "Cooperlake"
                         : __builtin_cpu_supports("avx512f")  ? "SkylakeX"
                         : __builtin_cpu_supports("avx2")     ? "Haswell"
                                                              : NULL;
        if (ct) changed = !setenv("OPENBLAS_CORETYPE", ct, 1);
    }
    if (!getenv("OMP_WAIT_POLICY")) changed |= !setenv("OMP_WAIT_POLICY", "passive", 1);
    if (changed) execv("/proc/self/exe", argv); /* on failure, run as we are */
}

int main(int argc, char **argv) {
    tune_runtime_env(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "info")) return cmd_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("nanoinfer %s\n", NI_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "bench")) return srv_cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve")) return srv_cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "chat")) return srv_cmd_chat(argc - 1, argv + 1);
    fprintf(stderr, "error: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
