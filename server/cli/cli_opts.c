/*
 * cli_opts.c - option parsing shared by the subcommands: the sampling flags
 * (generate, bench, chat) and the option tables of cli.h (generate, chat).
 * Tables are data, so one loop parses every command and one prints --help.
 */
#include <errno.h>
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


static const cli_opt *find_long(const cli_opt *opts, size_t n, const char *name, size_t len) {
    for (size_t i = 0; i < n; i++)
        if (strlen(opts[i].name) == len && !strncmp(opts[i].name, name, len)) return &opts[i];
    return NULL;
}

static const cli_opt *find_short(const cli_opt *opts, size_t n, char c) {
    for (size_t i = 0; i < n; i++)
        if (opts[i].short_name && opts[i].short_name == c) return &opts[i];
    return NULL;
}

/* Index of val in "a|b|c", or -1. */
static int choice_index(const char *choices, const char *val) {
    size_t len = strlen(val);
    int idx = 0;
    for (const char *p = choices; p; idx++) {
        const char *bar = strchr(p, '|');
        size_t l = bar ? (size_t)(bar - p) : strlen(p);
        if (l == len && !strncmp(p, val, len)) return idx;
        p = bar ? bar + 1 : NULL;
    }
    return -1;
}

/* Stores val into the field of o. Returns 0, or 2 after printing the error. */
static int store(const cli_opt *o, void *dst, const char *val) {
    char *field = (char *)dst + o->off;
    switch (o->kind) {
    case CLI_OPT_STR: *(const char **)(void *)field = val; return 0;
    case CLI_OPT_FLAG: *(int *)(void *)field = 1; return 0;
    case CLI_OPT_INT: {
        char *end = NULL;
        errno = 0;
        long v = strtol(val, &end, 10);
        if (!*val || *end || errno || v < o->min || v > o->max) {
            fprintf(stderr, "error: --%s must be an integer in [%ld, %ld], not '%s'\n", o->name,
                    o->min, o->max, val);
            return 2;
        }
        *(int *)(void *)field = (int)v;
        return 0;
    }
    case CLI_OPT_LIST: {
        cli_list *l = (cli_list *)(void *)field;
        long max = o->max > 0 && o->max < CLI_LIST_MAX ? o->max : CLI_LIST_MAX;
        if (l->n >= max) {
            fprintf(stderr, "error: at most %ld --%s values\n", max, o->name);
            return 2;
        }
        l->v[l->n++] = val;
        return 0;
    }
    case CLI_OPT_CHOICE: {
        int idx = choice_index(o->choices, val);
        if (idx < 0) {
            fprintf(stderr, "error: --%s must be one of %s, not '%s'\n", o->name, o->choices, val);
            return 2;
        }
        *(int *)(void *)field = idx;
        return 0;
    }
    case CLI_OPT_SAMPLING:
        if (srv_parse_sampling_opt(o->name, val, (smp_params *)(void *)field) != 1) {
            fprintf(stderr, "error: bad value for --%s: '%s'\n", o->name, val);
            return 2;
        }
        return 0;
    }
    return 2;
}

int cli_parse(const cli_opt *opts, size_t n, void *dst, int argc, char **argv, uint64_t *seen) {
    if (seen) *seen = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        const cli_opt *o = NULL;
        const char *val = NULL;
        if (a[0] == '-' && a[1] == '-' && a[2]) {
            const char *eq = strchr(a + 2, '=');
            o = find_long(opts, n, a + 2, eq ? (size_t)(eq - a - 2) : strlen(a + 2));
            if (eq) val = eq + 1;
        } else if (a[0] == '-' && a[1] && !a[2]) {
            o = find_short(opts, n, a[1]);
        } else {
            fprintf(stderr, "error: unexpected argument '%s' (options are --name VALUE)\n", a);
            return 2;
        }
        if (!o) {
            fprintf(stderr, "error: unknown option %s\n", a);
            return 2;
        }
        if (o->kind == CLI_OPT_FLAG) {
            if (val) {
                fprintf(stderr, "error: --%s takes no value\n", o->name);
                return 2;
            }
        } else if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "error: --%s needs a value\n", o->name);
                return 2;
            }
            val = argv[++i];
        }
        if (store(o, dst, val)) return 2;
        if (seen && o - opts < 64) *seen |= 1ull << (o - opts);
    }
    return 0;
}

void cli_usage_opts(FILE *f, const cli_opt *opts, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char left[64];
        const char *arg = opts[i].arg ? opts[i].arg : opts[i].kind == CLI_OPT_CHOICE ? opts[i].choices : "";
        if (opts[i].short_name)
            snprintf(left, sizeof left, "-%c, --%s %s", opts[i].short_name, opts[i].name, arg);
        else
            snprintf(left, sizeof left, "--%s %s", opts[i].name, arg);
        fprintf(f, "  %-34s %s\n", left, opts[i].help ? opts[i].help : "");
    }
    fprintf(f, "  %-34s %s\n", "-h, --help", "this text");
}
