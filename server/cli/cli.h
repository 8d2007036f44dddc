/*
 * cli.h - subcommands of the nanoinfer binary implemented outside main.c
 * (serve lives in the server library: server/http/srv_server.h).
 * Each returns the process exit status (0 ok, 1 runtime error, 2 usage).
 */
#ifndef NI_CLI_H
#define NI_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "engine/backend/sampler.h"
#include "server/http/srv_server.h"

/* nanoinfer bench: offline throughput and prefix-cache experiments; with
 * --url anywhere in argv, the serving benchmark (srv_cmd_bench_http). */
int srv_cmd_bench(int argc, char **argv);

/* nanoinfer bench --url URL: the serving benchmark client of a running
 * OpenAI-compatible server (server/cli/bench_http.c). argv[0] is the
 * subcommand name. Returns 0 when every request of every run succeeded, 1 on
 * a runtime error or failed requests, 2 on a usage error, 130 when
 * interrupted (the runs so far are still reported and written). */
int srv_cmd_bench_http(int argc, char **argv);

/* nanoinfer chat: interactive terminal chat against a running server (server/cli/srv_chat.c). */
int srv_cmd_chat(int argc, char **argv);

/* Parses --NAME VAL for the sampling flags shared by generate/bench/chat
 * (temperature, top-p, top-k, min-p, repetition-penalty, presence-penalty,
 * frequency-penalty, seed, logprobs) into sp (server/cli/cli_opts.c). Returns 1 if consumed, 0 if
 * NAME is not a sampling flag, -1 when VAL does not parse. */
int srv_parse_sampling_opt(const char *name, const char *val, smp_params *sp);

/* ---- option tables (generate, chat) ----
 * A subcommand describes its options in a cli_opt table over its own options
 * struct; cli_parse fills the struct and cli_usage prints the table, so the
 * parser and --help cannot drift apart (srv_config does the same for serve). */

typedef enum cli_opt_kind {
    CLI_OPT_STR,      /* const char * at off */
    CLI_OPT_INT,      /* int at off, base 10, within [min, max] */
    CLI_OPT_FLAG,     /* int at off set to 1; takes no value */
    CLI_OPT_LIST,     /* cli_list at off: repeated option, at most CLI_LIST_MAX values */
    CLI_OPT_CHOICE,   /* int at off: index of the value in choices ("fp32|int8|q4") */
    CLI_OPT_SAMPLING, /* smp_params at off, through srv_parse_sampling_opt */
} cli_opt_kind;

#define CLI_LIST_MAX 16

typedef struct cli_list {
    const char *v[CLI_LIST_MAX];
    int n;
} cli_list;

typedef struct cli_opt {
    const char *name;    /* long name without "--" */
    char short_name;     /* -X alias, or 0 */
    cli_opt_kind kind;
    size_t off;          /* offsetof the field in the options struct */
    long min, max;       /* CLI_OPT_INT range; CLI_OPT_LIST: max = how many (<= CLI_LIST_MAX) */
    const char *choices; /* CLI_OPT_CHOICE: "a|b|c" */
    const char *arg;     /* value placeholder in usage ("N", "TEXT"); NULL for flags */
    const char *help;    /* one line */
} cli_opt;

/* Parses argv[1..argc) against opts[0..n) into the struct at dst: "--name
 * VALUE", "--name=VALUE", "-X VALUE", "--flag". Positional arguments are
 * refused. On return *seen (when not NULL) has bit i set for every option
 * opts[i] given (n <= 64). Returns 0; 1 when -h/--help was given (nothing
 * printed: the caller prints its usage); 2 after printing one "error: ..."
 * line naming the option on stderr (unknown option, missing or bad value,
 * too many list values). */
int cli_parse(const cli_opt *opts, size_t n, void *dst, int argc, char **argv, uint64_t *seen);

/* Prints one line per option ("  --name ARG   help"), -h/--help last. */
void cli_usage_opts(FILE *f, const cli_opt *opts, size_t n);

#endif
