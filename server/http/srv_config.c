/*
 * srv_config.c - see srv_config.h. One static table describes every key: its
 * type, range, default (as text, applied through the same parser as user
 * input, so defaults and documentation cannot drift) and help line.
 */
#include "srv_config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "tokenizer/chat.h"
#include "engine/backend/backend.h"
#include "engine/backend/tp.h"
#include "engine/util/util.h"
#include "srv_log.h"
#include "srv_reasoning.h"

enum { T_STR, T_INT, T_BYTES, T_REAL, T_BOOL, T_LEVEL, T_STYLE, T_BACKEND };

typedef struct key_def {
    const char *name;
    int type;
    size_t off;
    size_t size;     /* T_STR: buffer size */
    double min, max; /* T_INT, T_BYTES, T_REAL */
    const char *def; /* default as text (NULL: empty / false) */
    const char *arg; /* metavariable in --help */
    const char *help;
} key_def;

#define F(field) offsetof(srv_config, field)
#define S(field) sizeof(((srv_config *)0)->field)

static const key_def g_keys[] = {
    {"model", T_STR, F(model), S(model), 0, 0, NULL, "PATH",
     "model: a .gguf file or a Hugging Face directory (required)"},
    {"served-model-name", T_STR, F(served_model_name), S(served_model_name), 0, 0, NULL, "NAME",
     "model id reported by /v1/models and in responses (default: the model's name)"},
    {"host", T_STR, F(host), S(host), 0, 0, "127.0.0.1", "ADDR", "address to listen on"},
    {"port", T_INT, F(port), 0, 0, 65535, "8000", "N", "TCP port (0: any free port, logged)"},
    {"api-key", T_STR, F(api_key), S(api_key), 0, 0, NULL, "KEY",
     "require 'Authorization: Bearer KEY' on /v1/*, /tokenize, /detokenize\n"
     "(default: $NANOINFER_API_KEY, else no authentication)"},
    {"no-webui", T_BOOL, F(no_webui), 0, 0, 0, NULL, NULL,
     "do not serve the web chat page at / (GET / is then 404; the API is unaffected)"},
    {"max-body", T_BYTES, F(max_body), 0, 1024, 1 << 30, "1MiB", "BYTES",
     "largest request body; larger ones get 413"},
    {"max-queue", T_INT, F(max_queue), 0, 0, 1000000, "256", "N",
     "requests allowed to wait for a slot beyond --max-num-seqs; more get 429"},
    {"max-num-seqs", T_INT, F(max_num_seqs), 0, 1, 4096, "256", "N",
     "sequences decoded together (continuous batching)"},
    {"max-batched-tokens", T_INT, F(max_batched_tokens), 0, 1, 1 << 20, "2048", "N",
     "tokens per engine step"},
    {"prefill-chunk", T_INT, F(prefill_chunk), 0, 1, 1 << 20, "512", "N",
     "prompt tokens per sequence per step (chunked prefill)"},
    {"kv-blocks", T_INT, F(kv_blocks), 0, 0, 1 << 20, "0", "N",
     "KV cache blocks (0: about 1 GiB of KV, at least one full context)"},
    {"block-size", T_INT, F(block_size), 0, 1, 1024, "16", "N", "tokens per KV block"},
    {"max-model-len", T_INT, F(max_model_len), 0, 0, 1 << 24, "0", "N",
     "context length limit (0: the model's)"},
    {"no-prefix-cache", T_BOOL, F(no_prefix_cache), 0, 0, 0, NULL, NULL,
     "disable automatic prefix caching"},
    {"threads", T_INT, F(threads), 0, 0, 1024, "0", "N", "CPU threads for compute (0: all cores)"},
    {"tensor-parallel-size", T_INT, F(tensor_parallel_size), 0, 1, ENG_TP_MAX, "1", "N",
     "shard every layer over N ranks (Megatron-style: heads, FFN columns, vocabulary);\n"
     "N must divide the model's attention heads, KV heads and FFN width. CPU backend:\n"
     "the ranks run in one process, fp32 weights only; CUDA: not built yet (needs NCCL)"},
    {"shutdown-timeout", T_REAL, F(shutdown_timeout), 0, 0, 86400, "30", "SECONDS",
     "on SIGTERM/SIGINT, how long in-flight requests may finish before they are aborted"},
    {"log-level", T_LEVEL, F(log_level), 0, 0, 0, "info", "LEVEL", "error, warn, info or debug"},
    {"max-tokens-default", T_INT, F(max_tokens_default), 0, 1, 1 << 24, "4096", "N",
     "max_tokens when a request gives none (also capped by the context left)"},
    {"max-stream-buffer", T_BYTES, F(max_stream_buffer), 0, 16384, 1 << 30, "4MiB", "BYTES",
     "output buffered per connection; a client reading slower is cut off"},
    {"max-connections", T_INT, F(max_connections), 0, 1, 1000000, "1024", "N",
     "simultaneous HTTP connections; at the limit the connection that has waited longest\n"
     "for its request headers is closed to make room for a new one"},
    {"max-connections-per-ip", T_INT, F(max_connections_per_ip), 0, 0, 1000000, "0", "N",
     "simultaneous HTTP connections from one client address (0: no limit)"},
    {"idle-timeout", T_REAL, F(idle_timeout), 0, 0, 86400, "60", "SECONDS",
     "close connections idle this long (0: never)"},
    {"header-timeout", T_REAL, F(header_timeout), 0, 0, 86400, "30", "SECONDS",
     "a client must send a request's headers within this of connecting (on a kept-alive\n"
     "connection: of its previous request's end, plus idle-timeout; 0: no limit); else 408"},
    {"body-timeout", T_REAL, F(body_timeout), 0, 0, 86400, "60", "SECONDS",
     "a client must send a request's whole body within this of its headers' end (a total,\n"
     "not an idle timer; 0: no limit); else 408"},
    {"request-timeout", T_REAL, F(request_timeout), 0, 0, 86400, NULL, "SECONDS",
     "deprecated: sets both header-timeout and body-timeout"},
    {"health-timeout", T_REAL, F(health_timeout), 0, 0.1, 86400, "20", "SECONDS",
     "/health fails when one engine step has been running longer than this"},
    {"chat-template", T_STYLE, F(chat_template), S(chat_template), 0, 0, "auto", "STYLE",
     "auto (from the model), chatml, chatml-smollm, qwen3, llama3, llama2, zephyr"},
    {"reasoning-parser", T_STR, F(reasoning_parser), S(reasoning_parser), 0, 0, "auto", "PARSER",
     "chat output of reasoning models: qwen3 or deepseek_r1 move the <think> block into\n"
     "reasoning_content, none leaves it in content; auto: qwen3 with the Qwen3 chat template,\n"
     "else none"},
    {"device", T_BACKEND, F(backend), S(backend), 0, 0, "auto", "DEVICE",
     "compute backend: auto (CUDA when built in and a GPU is present), cpu, cuda\n"
     "(as for generate and bench; --backend is an alias)"},
    {"dtype", T_STR, F(dtype), S(dtype), 0, 0, "auto", "TYPE",
     "compute precision: auto (bf16 on the GPU, fp32 on the CPU), bf16, fp32"},
    {"kv-cache-dtype", T_STR, F(kv_cache_dtype), S(kv_cache_dtype), 0, 0, "auto", "TYPE",
     "KV cache element type: auto (the compute dtype), bf16, fp8 (alias fp8_e4m3):\n"
     "E4M3 with scale 1.0, half the bytes of bf16, so twice the KV blocks (CUDA, bf16)"},
    {"quant", T_STR, F(quant), S(quant), 0, 0, "auto", "FORMAT",
     "weight format: auto (the model file's own: Q4_0/Q4_1 -> q4, Q8_0 -> int8, else fp32),\n"
     "fp32 (the reference), int8, q4 (4-bit; CPU only)"},
    {"gpu-memory-utilization", T_REAL, F(gpu_memory_utilization), 0, 0.05, 1, "0.9", "FRACTION",
     "share of GPU memory for weights, buffers and the KV cache (sizes the pool when kv-blocks is "
     "0)"},
    /* default sampling: ranges are the sampler's, checked by srv_config_validate */
    {"temperature", T_REAL, F(temperature), 0, 0, 100, NULL, "T",
     "default temperature of requests that give none (0: greedy; default: the model's\n"
     "recommendation, else 1)"},
    {"top-p", T_REAL, F(top_p), 0, 0, 1, NULL, "P",
     "default top_p, in (0, 1] (default: the model's, else 1)"},
    {"top-k", T_INT, F(top_k), 0, -1, INT32_MAX, NULL, "K",
     "default top_k (-1 or 0: off; default: the model's, else off)"},
    {"min-p", T_REAL, F(min_p), 0, 0, 1, NULL, "P", "default min_p (default: the model's, else 0)"},
    {"repetition-penalty", T_REAL, F(repetition_penalty), 0, 0, 2, NULL, "R",
     "default repetition_penalty, in (0, 2] (default: the model's, else 1)"},
};

/* Other spellings of a key, for configurations written before the rename:
 * they set the same field, and messages name the key as it was spelt. */
static const struct {
    const char *alias, *name;
} g_aliases[] = {
    {"backend", "device"}, /* serve called it backend; generate and bench say device */
};

static void norm_key(const char *in, char *out, size_t cap) {
    size_t i = 0;
    for (; in[i] && i + 1 < cap; i++)
        out[i] = in[i] == '_' ? '-' : (char)tolower((unsigned char)in[i]);
    out[i] = 0;
}

size_t srv_config_n_keys(void) { return NI_ARRAY_LEN(g_keys); }

const char *srv_config_key_name(size_t i) {
    return i < NI_ARRAY_LEN(g_keys) ? g_keys[i].name : NULL;
}

/* The definition of key (normalised, aliases resolved), or NULL; *spelt is
 * the name to use in messages: the key's, or the alias as given. */
static const key_def *find_key(const char *key, const char **spelt) {
    char k[64];
    norm_key(key, k, sizeof k);
    const char *want = k;
    *spelt = NULL;
    for (size_t i = 0; i < NI_ARRAY_LEN(g_aliases); i++)
        if (!strcmp(g_aliases[i].alias, k)) {
            want = g_aliases[i].name;
            *spelt = g_aliases[i].alias;
        }
    for (size_t i = 0; i < NI_ARRAY_LEN(g_keys); i++)
        if (!strcmp(g_keys[i].name, want)) {
            if (!*spelt) *spelt = g_keys[i].name;
            return &g_keys[i];
        }
    return NULL;
}

/* Parses "1048576", "64k", "64KiB", "4M", "1 GiB" (binary multiples). */
static int parse_bytes(const char *v, double *out) {
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || errno || !isfinite(d)) return -1;
    while (*end == ' ') end++;
    double mul = 1;
    if (*end) {
        char c = (char)tolower((unsigned char)*end);
        mul = c == 'k' ? 1024.0 : c == 'm' ? 1048576.0 : c == 'g' ? 1073741824.0 : c == 'b' ? 1 : 0;
        if (mul == 0) return -1;
        end++;
        if (c != 'b' && !strcasecmp(end, "ib"))
            end += 2;
        else if (c != 'b' && (*end == 'b' || *end == 'B'))
            end++;
        if (*end) return -1;
    }
    *out = d * mul;
    return 0;
}

static int parse_bool(const char *v, int *out) {
    if (!v || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on") ||
        !strcmp(v, "1"))
        *out = 1;
    else if (!strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off") ||
             !strcmp(v, "0"))
        *out = 0;
    else
        return -1;
    return 0;
}

static double v_temp(const smp_params *p) { return p->temperature; }
static double v_top_k(const smp_params *p) { return p->top_k; }
static double v_top_p(const smp_params *p) { return p->top_p; }
static double v_min_p(const smp_params *p) { return p->min_p; }
static double v_rep(const smp_params *p) { return p->repetition_penalty; }

/* The five default sampling parameters: option key, API (and sampler) name,
 * bit, range as the messages write it, and their value in a smp_params. */
static const struct smp_opt {
    const char *key, *api;
    unsigned bit;
    const char *range;
    double (*value)(const smp_params *);
} g_smp[] = {
    {"temperature", "temperature", SRV_SMP_TEMPERATURE, "[0, 100]", v_temp},
    {"top-k", "top_k", SRV_SMP_TOP_K, "[-1, 2^31)", v_top_k},
    {"top-p", "top_p", SRV_SMP_TOP_P, "(0, 1]", v_top_p},
    {"min-p", "min_p", SRV_SMP_MIN_P, "[0, 1]", v_min_p},
    {"repetition-penalty", "repetition_penalty", SRV_SMP_REPETITION_PENALTY, "(0, 2]", v_rep},
};

/* The enum srv_smp_opt bit of key k, 0 for the other keys. */
static unsigned smp_bit(const key_def *k) {
    for (size_t i = 0; i < NI_ARRAY_LEN(g_smp); i++)
        if (!strcmp(g_smp[i].key, k->name)) return g_smp[i].bit;
    return 0;
}

int srv_config_set(srv_config *c, const char *key, const char *val, char *err, size_t errlen) {
    const char *name;
    const key_def *k = find_key(key, &name);
    if (!k)
        return ni_fail(err, errlen, NI_ENOTFOUND, "unknown option '%s' (see serve --help)", key);
    char *base = (char *)c + k->off;
    if (!val && k->type != T_BOOL)
        return ni_fail(err, errlen, NI_EINVAL, "%s: a value is required", name);
    switch (k->type) {
    case T_STR:
    case T_STYLE:
    case T_BACKEND: {
        size_t n = strlen(val);
        if (n >= k->size)
            return ni_fail(err, errlen, NI_EINVAL, "%s: longer than %zu bytes", name, k->size - 1);
        if (k->type == T_STYLE && strcmp(val, "auto") && chat_style_from_name(val) < 0)
            return ni_fail(err, errlen, NI_EINVAL,
                           "%s: unknown style '%s' (auto, chatml, chatml-smollm, qwen3, llama3, "
                           "llama2, zephyr)",
                           name, val);
        if (k->type == T_BACKEND && strcmp(val, "auto") && strcmp(val, "cpu") &&
            strcmp(val, "cuda"))
            return ni_fail(err, errlen, NI_EINVAL, "%s: '%s' is not one of auto, cpu, cuda", name,
                           val);
        memcpy(base, val, n + 1);
        if (k->off == F(api_key)) c->api_key_from_env = 0;
        return 0;
    }
    case T_INT:
    case T_BYTES:
    case T_REAL: {
        double d;
        char *end;
        if (k->type == T_BYTES) {
            if (parse_bytes(val, &d))
                return ni_fail(err, errlen, NI_EINVAL,
                               "%s: '%s' is not a size (e.g. 1048576, 64KiB, 4MiB)", name, val);
        } else {
            errno = 0;
            d = strtod(val, &end);
            while (end && *end == ' ') end++;
            if (end == val || *end || errno || !isfinite(d))
                return ni_fail(err, errlen, NI_EINVAL, "%s: '%s' is not a number", name, val);
        }
        if (k->type != T_REAL && d != floor(d))
            return ni_fail(err, errlen, NI_EINVAL, "%s: '%s' is not an integer", name, val);
        if (d < k->min || d > k->max)
            return ni_fail(err, errlen, NI_EINVAL, "%s: %s is out of range [%.15g, %.15g]", name,
                           val, k->min, k->max);
        c->sampling_set |= smp_bit(k);
        if (k->type == T_INT)
            *(int *)base = (int)d;
        else if (k->type == T_BYTES)
            *(long long *)base = (long long)d;
        else
            *(double *)base = d;
        if (k->off == F(request_timeout)) /* the deprecated key covers both phases */
            c->header_timeout = c->body_timeout = d;
        return 0;
    }
    case T_BOOL: {
        int b;
        if (parse_bool(val, &b))
            return ni_fail(err, errlen, NI_EINVAL, "%s: '%s' is not a boolean (true/false)", name,
                           val);
        *(int *)base = b;
        return 0;
    }
    case T_LEVEL: {
        int l = srv_log_level_from_name(val);
        if (l < 0)
            return ni_fail(err, errlen, NI_EINVAL,
                           "%s: '%s' is not one of error, warn, info, debug", name, val);
        *(int *)base = l;
        return 0;
    }
    }
    return ni_fail(err, errlen, NI_EINVAL, "%s: bad key type", name);
}

void srv_config_default(srv_config *c) {
    memset(c, 0, sizeof *c);
    char err[256];
    for (size_t i = 0; i < NI_ARRAY_LEN(g_keys); i++)
        if (g_keys[i].def)
            NI_ASSERT(srv_config_set(c, g_keys[i].name, g_keys[i].def, err, sizeof err) == 0);
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    return s;
}

int srv_config_load_file(srv_config *c, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) return ni_fail(err, errlen, NI_EIO, "%s: cannot open: %s", path, strerror(errno));
    char line[SRV_CFG_STR + 256], msg[512];
    int ln = 0, rc = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        size_t n = strlen(line);
        if (n == sizeof line - 1 && line[n - 1] != '\n') {
            rc = ni_fail(err, errlen, NI_EINVAL, "%s:%d: line too long", path, ln);
            break;
        }
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = ni_fail(err, errlen, NI_EINVAL, "%s:%d: expected 'key = value'", path, ln);
            break;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        size_t vl = strlen(val);
        if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
            val[vl - 1] = 0;
            val++;
        }
        if ((rc = srv_config_set(c, key, val, msg, sizeof msg))) {
            ni_fail(err, errlen, rc, "%s:%d: %s", path, ln, msg);
            break;
        }
    }
    fclose(f);
    return rc;
}

int srv_config_parse_args(srv_config *c, int argc, char **argv, int *help, int *check, char *err,
                          size_t errlen) {
    *help = *check = 0;
    /* pass 1: --config */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *file = NULL;
        if (!strcmp(a, "--config")) {
            if (i + 1 >= argc)
                return ni_fail(err, errlen, NI_EINVAL, "config: a value is required");
            file = argv[++i];
        } else if (!strncmp(a, "--config=", 9)) {
            file = a + 9;
        }
        if (file) {
            int rc = srv_config_load_file(c, file, err, errlen);
            if (rc) return rc;
        }
    }
    /* pass 2: everything else, in order */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (!strncmp(a, "--config=", 9)) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            *help = 1;
            continue;
        }
        if (!strcmp(a, "--check-config")) {
            *check = 1;
            continue;
        }
        if (strncmp(a, "--", 2) || !a[2])
            return ni_fail(err, errlen, NI_EINVAL,
                           "unexpected argument '%s' (options are --key value)", a);
        char key[64];
        const char *eq = strchr(a + 2, '='), *val = NULL;
        size_t kl = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
        if (kl >= sizeof key) return ni_fail(err, errlen, NI_ENOTFOUND, "unknown option '%s'", a);
        memcpy(key, a + 2, kl);
        key[kl] = 0;
        const char *name;
        const key_def *k = find_key(key, &name);
        if (!k)
            return ni_fail(err, errlen, NI_ENOTFOUND, "unknown option '%s' (see serve --help)", a);
        if (eq)
            val = eq + 1;
        else if (k->type != T_BOOL) {
            if (i + 1 >= argc)
                return ni_fail(err, errlen, NI_EINVAL, "%s: a value is required", name);
            val = argv[++i];
        }
        int rc = srv_config_set(c, key, val, err, errlen);
        if (rc) return rc;
    }
    if (!c->api_key[0]) {
        const char *env = getenv("NANOINFER_API_KEY");
        if (env && *env) {
            int rc = srv_config_set(c, "api-key", env, err, errlen);
            if (rc) return rc;
            c->api_key_from_env = 1;
        }
    }
    return 0;
}

/* ---- default sampling ---- */

/* Sets parameter bit of p from the option (c) or the model (m). */
static void smp_set(smp_params *p, unsigned bit, const srv_config *c,
                    const mdl_sampling_defaults *m) {
    switch (bit) {
    case SRV_SMP_TEMPERATURE: p->temperature = c ? (float)c->temperature : m->temperature; break;
    case SRV_SMP_TOP_K: p->top_k = c ? c->top_k : m->top_k; break;
    case SRV_SMP_TOP_P: p->top_p = c ? (float)c->top_p : m->top_p; break;
    case SRV_SMP_MIN_P: p->min_p = c ? (float)c->min_p : m->min_p; break;
    default: p->repetition_penalty = c ? (float)c->repetition_penalty : m->repetition_penalty;
    }
}

static int model_has(const mdl_sampling_defaults *m, unsigned bit) {
    if (!m) return 0;
    switch (bit) {
    case SRV_SMP_TEMPERATURE: return m->has_temperature;
    case SRV_SMP_TOP_K: return m->has_top_k;
    case SRV_SMP_TOP_P: return m->has_top_p;
    case SRV_SMP_MIN_P: return m->has_min_p;
    default: return m->has_repetition_penalty;
    }
}

void srv_config_sampling(const srv_config *c, const mdl_sampling_defaults *m, smp_params *out,
                         char *line, size_t cap) {
    *out = smp_params_default();
    char buf[1024], ignored[256] = "";
    size_t n = (size_t)snprintf(buf, sizeof buf, "sampling defaults:");
    for (size_t i = 0; i < NI_ARRAY_LEN(g_smp); i++) {
        const struct smp_opt *o = &g_smp[i];
        const char *from = "built-in";
        if (c->sampling_set & o->bit) {
            smp_set(out, o->bit, c, NULL);
            from = "option";
        } else if (model_has(m, o->bit)) {
            smp_params t = *out;
            const char *bad = NULL;
            smp_set(&t, o->bit, NULL, m);
            if (smp_params_validate(&t, INT32_MAX, &bad) == 0) {
                *out = t;
                from = "model";
            } else {
                size_t k = strlen(ignored);
                snprintf(ignored + k, sizeof ignored - k, " %s=%g", o->api, o->value(&t));
            }
        }
        if (n < sizeof buf)
            n += (size_t)snprintf(buf + n, sizeof buf - n, " %s=%g (%s)", o->api, o->value(out),
                                  from);
    }
    if (n < sizeof buf)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "; model: %s",
                              m && m->source ? m->source : "recommends none");
    if (ignored[0] && n < sizeof buf)
        n += (size_t)snprintf(buf + n, sizeof buf - n,
                              "; ignored the model's%s (out of the sampler's range)", ignored);
    if (line && cap) snprintf(line, cap, "%s", buf);
}

int srv_config_validate(const srv_config *c, char *err, size_t errlen) {
    if (!c->model[0]) return ni_fail(err, errlen, NI_EINVAL, "model: required (--model PATH)");
    struct stat st;
    if (stat(c->model, &st) != 0)
        return ni_fail(err, errlen, NI_EINVAL, "model: %s: %s", c->model, strerror(errno));
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        return ni_fail(err, errlen, NI_EINVAL, "model: %s: not a file or directory", c->model);
    if (!c->host[0]) return ni_fail(err, errlen, NI_EINVAL, "host: must not be empty");
    if (c->prefill_chunk > c->max_batched_tokens)
        return ni_fail(err, errlen, NI_EINVAL,
                       "prefill-chunk (%d) must not exceed max-batched-tokens (%d)",
                       c->prefill_chunk, c->max_batched_tokens);
    if (c->max_num_seqs > c->max_batched_tokens)
        return ni_fail(err, errlen, NI_EINVAL,
                       "max-num-seqs (%d) must not exceed max-batched-tokens (%d): every running "
                       "sequence needs a token per step",
                       c->max_num_seqs, c->max_batched_tokens);
    if (c->tensor_parallel_size > 1 && !strcmp(c->backend, "cuda"))
        return ni_fail(err, errlen, NI_EINVAL, "tensor-parallel-size: %s (device = cpu runs it)",
                       ENG_TP_NO_CUDA);
#ifndef NI_USE_CUDA
    if (!strcmp(c->backend, "cuda"))
        return ni_fail(err, errlen, NI_EINVAL,
                       "device: this build has no CUDA backend (built without nvcc)");
#endif
    if (strcmp(c->reasoning_parser, "auto") &&
        srv_reasoning_parser_from_name(c->reasoning_parser) < 0)
        return ni_fail(err, errlen, NI_EINVAL,
                       "reasoning-parser: '%s' is not one of auto, none, qwen3, deepseek_r1",
                       c->reasoning_parser);
    eng_quant q;
    if (eng_quant_parse(c->quant, &q))
        return ni_fail(err, errlen, NI_EINVAL, "quant: '%s' is not one of auto, fp32, int8, q4",
                       c->quant);
    if (strcmp(c->dtype, "auto") && strcmp(c->dtype, "bf16") && strcmp(c->dtype, "fp32"))
        return ni_fail(err, errlen, NI_EINVAL, "dtype: '%s' is not one of auto, bf16, fp32",
                       c->dtype);
    eng_kv_dtype kv;
    if (eng_kv_dtype_parse(c->kv_cache_dtype, &kv))
        return ni_fail(err, errlen, NI_EINVAL,
                       "kv-cache-dtype: '%s' is not one of auto, bf16, fp8, fp8_e4m3",
                       c->kv_cache_dtype);
    for (const char *p = c->api_key; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 127)
            return ni_fail(err, errlen, NI_EINVAL, "api-key: only printable ASCII without spaces");
    /* the sampling options: the sampler's own ranges (open bounds included) */
    smp_params sp;
    srv_config_sampling(c, NULL, &sp, NULL, 0);
    const char *bad = NULL;
    if (smp_params_validate(&sp, INT32_MAX, &bad)) {
        for (size_t i = 0; i < NI_ARRAY_LEN(g_smp); i++)
            if (bad && !strcmp(bad, g_smp[i].api))
                return ni_fail(err, errlen, NI_EINVAL, "%s: %g is out of range %s", g_smp[i].key,
                               g_smp[i].value(&sp), g_smp[i].range);
        return ni_fail(err, errlen, NI_EINVAL, "sampling defaults: out of range");
    }
    return 0;
}

void srv_config_usage(FILE *f) {
    fprintf(f, "usage: nanoinfer serve --model PATH [options]\n"
               "       nanoinfer serve --config FILE [options]   (flags override the file)\n\n"
               "OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions, /v1/models,\n"
               "/tokenize, /detokenize, /health, /metrics, and a web chat page at / (--no-webui\n"
               "turns it off). Every option is also a config-file key (`key = value`, see\n"
               "conf/nanoinfer.conf).\n\n"
               "options:\n"
               "  --config FILE             read options from FILE first\n"
               "  --check-config            validate the configuration and exit\n");
    for (size_t i = 0; i < NI_ARRAY_LEN(g_keys); i++) {
        const key_def *k = &g_keys[i];
        char head[64];
        snprintf(head, sizeof head, "--%s%s%s", k->name, k->arg ? " " : "", k->arg ? k->arg : "");
        if (strlen(head) > 24)
            fprintf(f, "  %s\n  %-24s  ", head, "");
        else
            fprintf(f, "  %-24s  ", head);
        for (const char *p = k->help; *p; p++) {
            fputc(*p, f);
            if (*p == '\n') fprintf(f, "  %-24s  ", "");
        }
        if (k->def && strcmp(k->def, "0") != 0)
            fprintf(f, " (default %s)", k->def);
        else if (k->def)
            fprintf(f, " (default 0)");
        fputc('\n', f);
    }
    fprintf(f, "  -h, --help                this text\n");
}

void srv_config_log(const srv_config *c) {
    srv_log(SRV_LOG_INFO,
            "config: model=%s host=%s port=%d api-key=%s max-body=%lld max-queue=%d "
            "max-num-seqs=%d max-batched-tokens=%d prefill-chunk=%d kv-blocks=%d block-size=%d "
            "max-model-len=%d prefix-cache=%s threads=%d tensor-parallel-size=%d "
            "shutdown-timeout=%gs log-level=%s "
            "max-tokens-default=%d max-stream-buffer=%lld max-connections=%d "
            "max-connections-per-ip=%d idle-timeout=%gs header-timeout=%gs body-timeout=%gs "
            "health-timeout=%gs chat-template=%s reasoning-parser=%s device=%s webui=%s",
            c->model, c->host, c->port,
            c->api_key[0] ? (c->api_key_from_env ? "(set, from env)" : "(set)") : "(none)",
            c->max_body, c->max_queue, c->max_num_seqs, c->max_batched_tokens, c->prefill_chunk,
            c->kv_blocks, c->block_size, c->max_model_len, c->no_prefix_cache ? "off" : "on",
            c->threads, c->tensor_parallel_size, c->shutdown_timeout,
            srv_log_level_name(c->log_level), c->max_tokens_default, c->max_stream_buffer,
            c->max_connections, c->max_connections_per_ip, c->idle_timeout, c->header_timeout,
            c->body_timeout, c->health_timeout, c->chat_template,
            c->reasoning_parser, c->backend, c->no_webui ? "off" : "on");
}
