/*
 * cli.h - subcommands of the nanoinfer binary implemented outside main.c
 * (serve lives in the server library: server/http/srv_server.h).
 * Each returns the process exit status (0 ok, 1 runtime error, 2 usage).
 */
#ifndef NI_CLI_H
#define NI_CLI_H

#include "engine/backend/sampler.h"
#include "server/http/srv_server.h"

/* nanoinfer bench: offline throughput and prefix-cache experiments. */
int srv_cmd_bench(int argc, char **argv);

/* nanoinfer chat: interactive terminal chat against a running server (server/cli/srv_chat.c). */
int srv_cmd_chat(int argc, char **argv);

/* Parses --NAME VAL for the sampling flags shared by generate/bench/chat
 * (temperature, top-p, top-k, min-p, repetition-penalty, presence-penalty,
 * frequency-penalty, seed, logprobs) into sp (server/cli/cli_opts.c). Returns 1 if consumed, 0 if
 * NAME is not a sampling flag, -1 when VAL does not parse. */
int srv_parse_sampling_opt(const char *name, const char *val, smp_params *sp);

#endif
