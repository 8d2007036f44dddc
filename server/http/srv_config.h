/*
 * srv_config.h - configuration of `nanoinfer serve`: one table of keys shared
 * by the config file (`key = value` lines, # comments) and the command line
 * (`--key value`, `--key=value`, booleans as bare `--key`). Aliases (backend
 * for device) are accepted wherever their key is.
 *
 * Precedence: built-in defaults < the file named by --config < flags (in
 * argv order) < nothing else (the sampling defaults rank between the model's
 * recommendation and the request: srv_config_sampling), except api-key, which falls back to the
 * NANOINFER_API_KEY environment variable when neither file nor flags set it
 * (so secrets can stay out of argv and world-readable files).
 * srv_config_validate() checks every value and cross-field rule once at
 * start and names the offending key; the server never re-validates.
 *
 * Threads: plain data, filled on the main thread before any other starts.
 */
#ifndef NI_SRV_CONFIG_H
#define NI_SRV_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "engine/backend/sampler.h"
#include "engine/model/model.h"

#define SRV_CFG_STR 4096

/* The default sampling options (serve --temperature ...), as bits of
 * srv_config.sampling_set: which of them the file or the command line gave. */
enum srv_smp_opt {
    SRV_SMP_TEMPERATURE = 1 << 0,
    SRV_SMP_TOP_K = 1 << 1,
    SRV_SMP_TOP_P = 1 << 2,
    SRV_SMP_MIN_P = 1 << 3,
    SRV_SMP_REPETITION_PENALTY = 1 << 4,
};

typedef struct srv_config {
    char model[SRV_CFG_STR];     /* .gguf file or HF directory (required) */
    char served_model_name[256]; /* "" = the model's name */
    char host[256];              /* bind address (IPv4/IPv6 literal or name) */
    int port;                    /* 0 = any free port (logged) */
    char api_key[512];           /* "" = no authentication */
    long long max_body;          /* request body bytes */
    int max_queue;               /* requests waiting beyond max_num_seqs before 429 */
    int max_num_seqs;
    int max_batched_tokens;
    int prefill_chunk;
    int kv_blocks; /* 0 = engine default */
    int block_size;
    int max_model_len; /* 0 = the model's context */
    int no_prefix_cache;
    int no_webui;             /* 1 = no web chat page at / (srv_web.h) */
    int threads;              /* 0 = all cores */
    int tensor_parallel_size; /* tensor-parallel ranks (eng_config.tp), 1 = none */
    double shutdown_timeout;  /* seconds */
    int log_level;            /* enum srv_log_level */
    int max_tokens_default;
    long long max_stream_buffer; /* bytes buffered per connection before a slow reader is cut */
    int max_connections;
    double idle_timeout;           /* seconds an idle keep-alive connection stays open */
    int max_connections_per_ip;    /* 0 = no limit (MHD_OPTION_PER_IP_CONNECTION_LIMIT) */
    double header_timeout;         /* seconds from a request's start (the connection's, or the
                                    * end of the previous request) to the end of its headers;
                                    * 0 = none; nginx's client_header_timeout */
    double body_timeout;           /* seconds from the end of the headers to the end of the
                                    * body; 0 = none; nginx's client_body_timeout, but total */
    double request_timeout;        /* deprecated: setting it sets both of the above */
    double health_timeout;         /* engine heartbeat age that makes /health fail */
    char chat_template[32];        /* "auto" or a chat.h style name */
    char reasoning_parser[16];     /* "auto" (qwen3 for the Qwen3 template, else none), "none",
                                    * "qwen3", "deepseek_r1" (srv_reasoning.h) */
    char backend[16];              /* key device (alias backend): "auto", "cpu" or "cuda" */
    char dtype[8];                 /* "auto", "bf16" or "fp32" */
    char quant[8];                 /* "auto", "fp32", "int8" or "q4" (eng_quant_parse) */
    char kv_cache_dtype[12];       /* "auto", "bf16", "fp8" or "fp8_e4m3" (eng_kv_dtype_parse) */
    double gpu_memory_utilization; /* fraction of GPU memory (KV pool sizing) */
    /* default sampling of requests that do not set a parameter; each only
     * when its bit is in sampling_set (else the model's, else the built-in) */
    double temperature, top_p, min_p, repetition_penalty;
    int top_k;
    unsigned sampling_set; /* enum srv_smp_opt bits */
    int api_key_from_env;  /* informational: api_key came from the environment */
} srv_config;

/* Fills c with the documented defaults (see srv_config_usage). */
void srv_config_default(srv_config *c);

/* Sets one key (without leading dashes; '_' and '-' are equivalent; an alias
 * such as backend for device sets the same field) from its text value. val
 * may be NULL only for boolean keys (= true). Returns 0, or NI_ENOTFOUND
 * (unknown key) / NI_EINVAL (value does not parse or is out of range) with a
 * message naming the key. */
int srv_config_set(srv_config *c, const char *key, const char *val, char *err, size_t errlen);

/* Applies every `key = value` line of a config file. Blank lines and lines
 * starting with # are ignored; values may be double-quoted. Returns 0 or a
 * negative code with "path:line: message" in err. */
int srv_config_load_file(srv_config *c, const char *path, char *err, size_t errlen);

/* Parses argv[1..argc) of `serve`: --config FILE is applied first (wherever it
 * appears), then every other flag in order. Sets *help for --help/-h and
 * *check for --check-config. Returns 0 or a negative code with a message. */
int srv_config_parse_args(srv_config *c, int argc, char **argv, int *help, int *check, char *err,
                          size_t errlen);

/* Checks ranges and cross-field rules (model path exists, prefill-chunk <=
 * max-batched-tokens, ...). Returns 0 or NI_EINVAL with a message. */
int srv_config_validate(const srv_config *c, char *err, size_t errlen);

/* Prints the option list with defaults (the `serve --help` text). */
void srv_config_usage(FILE *f);

/* The config keys, in usage order: i in [0, srv_config_n_keys()); NULL past the end. */
size_t srv_config_n_keys(void);
const char *srv_config_key_name(size_t i);

/* Logs the effective configuration at info level (api-key masked). */
void srv_config_log(const srv_config *c);

/* The default sampling parameters of requests, resolved once the model is
 * loaded. Precedence per parameter: the request (applied later, by
 * srv_api_parse_gen) > the serve option (file or command line, sampling_set)
 * > the model's recommendation (m, may be NULL) > the built-in default
 * (smp_params_default: OpenAI's temperature 1, top_p 1, top_k off, ...). A
 * model value outside the sampler's range is not used (the line says so).
 * Fills *out and writes one log line into line ("sampling defaults:
 * temperature=0.2 (model generation_config.json) top_k=-1 (built-in) ...",
 * truncated to cap). */
void srv_config_sampling(const srv_config *c, const mdl_sampling_defaults *m, smp_params *out,
                         char *line, size_t cap);

#endif
