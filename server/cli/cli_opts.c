/*
 * cli_opts.c - option parsing shared by the generate, bench and chat
 * subcommands (their own flags stay with each command).
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Parses one sampling / engine option into sp or c. Returns 1 if consumed,
 * 0 if not a sampling option, -1 on a bad value. */
int srv_parse_sampling_opt(const char *name, const char *val, smp_params *sp) {
    char *end = NULL;
    double d = val ? strtod(val, &end) : 0;
    int ok = val && end && *end == 0;
    if (!strcmp(name, "temperature")) sp->temperature = (float)d;
    else if (!strcmp(name, "top-p")) sp->top_p = (float)d;
    else if (!strcmp(name, "top-k")) sp->top_k = (int32_t)d;
    else if (!strcmp(name, "min-p")) sp->min_p = (float)d;
    else if (!strcmp(name, "repetition-penalty")) sp->repetition_penalty = (float)d;
    else if (!strcmp(name, "presence-penalty")) sp->presence_penalty = (float)d;
    else if (!strcmp(name, "frequency-penalty")) sp->frequency_penalty = (float)d;
    else if (!strcmp(name, "seed")) {
        sp->has_seed = 1;
        sp->seed = strtoull(val ? val : "", &end, 10);
        ok = val && *val && end && *end == 0;
    } else if (!strcmp(name, "logprobs")) sp->logprobs = (int32_t)d;
    else return 0;
    return ok ? 1 : -1;
}

