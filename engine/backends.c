/*
 * backends.c - choosing a backend once, by name, so that the engine and every
 * front end (generate, bench, serve) stay unaware of CUDA; and the one place
 * the backend settings are read from the environment (eng_backend_config_env);
 * and the fault-injection wrapper tests use to make a backend fail on cue
 * (NI_DEBUG_FAULT, see eng_backend_select), so the engine's and the server's
 * error paths run on the CPU backend without the engine knowing.
 */
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/backend/backend.h"
#include "engine/util/util.h"
#ifdef NI_USE_CUDA
#include "cuda/cu.h"
#endif

int eng_quant_parse(const char *name, eng_quant *out) {
    static const struct {
        const char *name;
        eng_quant q;
    } names[] = {{"auto", ENG_QUANT_AUTO}, {"fp32", ENG_QUANT_NONE}, {"none", ENG_QUANT_NONE},
                 {"int8", ENG_QUANT_INT8}, {"q4", ENG_QUANT_Q4}};
    for (size_t i = 0; name && i < NI_ARRAY_LEN(names); i++)
        if (!strcmp(name, names[i].name)) {
            *out = names[i].q;
            return 0;
        }
    return NI_EINVAL;
}

const char *eng_quant_name(eng_quant q) {
    switch (q) {
    case ENG_QUANT_AUTO: return "auto";
    case ENG_QUANT_NONE: return "fp32";
    case ENG_QUANT_INT8: return "int8";
    case ENG_QUANT_Q4: return "q4";
    }
    return "?";
}

int eng_dtype_parse(const char *name, eng_dtype *out) {
    if (!name)
        *out = ENG_DTYPE_DEFAULT;
    else if (!strcmp(name, "bf16"))
        *out = ENG_DTYPE_BF16;
    else if (!strcmp(name, "fp32"))
        *out = ENG_DTYPE_FP32;
    else
        return NI_EINVAL;
    return 0;
}

int eng_kv_dtype_parse(const char *name, eng_kv_dtype *out) {
    if (!name || !strcmp(name, "auto"))
        *out = ENG_KV_AUTO;
    else if (!strcmp(name, "bf16"))
        *out = ENG_KV_BF16;
    else if (!strcmp(name, "fp8") || !strcmp(name, "fp8_e4m3"))
        *out = ENG_KV_FP8;
    else
        return NI_EINVAL;
    return 0;
}

const char *eng_kv_dtype_name(eng_kv_dtype k) {
    switch (k) {
    case ENG_KV_AUTO: return "auto";
    case ENG_KV_BF16: return "bf16";
    case ENG_KV_FP8: return "fp8";
    }
    return "?";
}

/* ---- fault injection (NI_DEBUG_FAULT) ---------------------------------------- */

/* One plan per process: the wrapped table, which forward() calls fail
 * (1-based, [first, last]) and with what. */
static struct {
    eng_backend table;        /* the real backend's, forward replaced */
    const eng_backend *real;
    long first, last;
    int code;
    long step_us; /* NI_DEBUG_STEP_US: sleep this long before every forward */
    atomic_long calls;
} fault;

static int fault_forward(void *ctx, const eng_batch *b, float *logits) {
    const long k = atomic_fetch_add(&fault.calls, 1) + 1;
    if (fault.step_us > 0) {
        const struct timespec ts = {fault.step_us / 1000000, (fault.step_us % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
    if (k >= fault.first && k <= fault.last) return fault.code;
    return fault.real->forward(ctx, b, logits);
}

/* Parses "forward:N[-M][:eio|:enomem]" into the plan. eio (the default) is
 * a lost device: calls N..M fail, every later one too when -M is left out
 * (a CUDA error is sticky); enomem is transient: N..M, or N alone. */
static int fault_parse(const char *v, char *err, size_t errlen) {
    char kind[16] = "eio";
    long first = 0, last = -1;
    int used = 0;
    const char *p = v;
    if (strncmp(p, "forward:", 8)) goto bad;
    p += 8;
    if (sscanf(p, "%ld%n", &first, &used) != 1 || first < 1) goto bad;
    p += used;
    if (*p == '-') {
        if (sscanf(p + 1, "%ld%n", &last, &used) != 1 || last < first) goto bad;
        p += 1 + used;
    }
    if (*p == ':') {
        size_t n = strlen(p + 1);
        if (n == 0 || n >= sizeof kind) goto bad;
        memcpy(kind, p + 1, n + 1);
    } else if (*p) {
        goto bad;
    }
    if (!strcmp(kind, "eio"))
        fault.code = NI_EIO;
    else if (!strcmp(kind, "enomem"))
        fault.code = NI_ENOMEM;
    else
        goto bad;
    fault.first = first;
    fault.last = last >= 0 ? last : fault.code == NI_EIO ? LONG_MAX : first;
    return 0;
bad:
    return ni_fail(err, errlen, NI_EINVAL,
                   "NI_DEBUG_FAULT=%s: must be forward:N[-M][:eio|:enomem] (N >= 1)", v);
}

/* be, or be behind the NI_DEBUG_FAULT wrapper when that variable is set
 * (NULL with a message when it is malformed). */
static const eng_backend *with_faults(const eng_backend *be, char *err, size_t errlen) {
    const char *v = getenv("NI_DEBUG_FAULT"), *d = getenv("NI_DEBUG_STEP_US");
    const int has_fault = v && *v, has_delay = d && *d;
    if (!has_fault && !has_delay) return be;
    fault.first = 1;
    fault.last = 0; /* no call fails unless NI_DEBUG_FAULT says so */
    fault.step_us = 0;
    if (has_fault && fault_parse(v, err, errlen)) return NULL;
    if (has_delay) {
        char *end = NULL;
        errno = 0;
        const long us = strtol(d, &end, 10);
        if (errno || end == d || *end || us < 0 || us > 10000000) {
            ni_fail(err, errlen, NI_EINVAL, "NI_DEBUG_STEP_US=%s: must be 0..10000000", d);
            return NULL;
        }
        fault.step_us = us;
    }
    fault.real = be;
    fault.table = *be;
    fault.table.forward = fault_forward;
    atomic_store(&fault.calls, 0);
    return &fault.table;
}

const eng_backend *eng_backend_select(const char *device, const char *dtype, char *err,
                                      size_t errlen) {
    if (!device) device = "auto";
    int want_cuda = !strcmp(device, "cuda");
    if (!want_cuda && strcmp(device, "cpu") && strcmp(device, "auto")) {
        ni_fail(err, errlen, NI_EINVAL, "device: '%s' is not one of auto, cpu, cuda", device);
        return NULL;
    }
    eng_dtype dt;
    if (eng_dtype_parse(dtype, &dt)) {
        ni_fail(err, errlen, NI_EINVAL, "dtype: '%s' is not one of bf16, fp32", dtype);
        return NULL;
    }
#ifdef NI_USE_CUDA
    if (strcmp(device, "cpu") && cu_device_count() > 0)
        return with_faults(&eng_backend_cuda, err, errlen);
    if (want_cuda) {
        ni_fail(err, errlen, NI_EUNSUPPORTED, "device: cuda requested but no GPU is visible");
        return NULL;
    }
#else
    if (want_cuda) {
        ni_fail(err, errlen, NI_EUNSUPPORTED,
                "device: this build has no CUDA backend (USE_CUDA=0)");
        return NULL;
    }
#endif
    if (dt == ENG_DTYPE_BF16) {
        ni_fail(err, errlen, NI_EUNSUPPORTED, "dtype: the CPU backend computes in fp32 only");
        return NULL;
    }
    return with_faults(&eng_backend_cpu, err, errlen);
}

/* ---- the environment ------------------------------------------------------- */

/* The value of variable name when set and non-empty, else NULL. */
static const char *env_value(const char *name) {
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* *out = the whole decimal integer s when it is in [0, INT_MAX]; else
 * NI_EINVAL with a message naming variable name. */
static int env_count(const char *name, const char *s, int *out, char *err, size_t errlen) {
    char *end = NULL;
    errno = 0;
    const long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > INT_MAX)
        return ni_fail(err, errlen, NI_EINVAL, "%s=%s: must be an integer >= 0", name, s);
    *out = (int)v;
    return 0;
}

/* A 0|1 switch read only while *field is still at its default 0: *field = 1
 * when the value is `sets` ("0" for a "no_" setting, "1" for an opt-in). */
static int env_switch(const char *name, const char *sets, int *field, char *err,
                      size_t errlen) {
    const char *v;
    if (*field != 0 || !(v = env_value(name))) return 0;
    if (strcmp(v, "0") && strcmp(v, "1"))
        return ni_fail(err, errlen, NI_EINVAL, "%s=%s: must be 0 or 1", name, v);
    *field = !strcmp(v, sets);
    return 0;
}

static int env_off(const char *name, int *off, char *err, size_t errlen) {
    return env_switch(name, "0", off, err, errlen);
}

int eng_backend_config_env(eng_backend_config *c, const eng_backend *be, char *err, size_t errlen) {
    if (!c || !be) return ni_fail(err, errlen, NI_EINVAL, "backend settings: NULL argument");
    if (!be->name || strcmp(be->name, "cuda")) return 0;
    const char *v;
    if (c->dtype == ENG_DTYPE_DEFAULT && (v = env_value("NI_CUDA_DTYPE")) &&
        eng_dtype_parse(v, &c->dtype))
        return ni_fail(err, errlen, NI_EINVAL, "NI_CUDA_DTYPE=%s: must be bf16 or fp32", v);
    if (c->kv_dtype == ENG_KV_AUTO && (v = env_value("NI_CUDA_KV_DTYPE")) &&
        eng_kv_dtype_parse(v, &c->kv_dtype))
        return ni_fail(err, errlen, NI_EINVAL,
                       "NI_CUDA_KV_DTYPE=%s: must be auto, bf16, fp8 or fp8_e4m3", v);
    int rc;
    if (c->device_index < 0 && (v = env_value("NI_CUDA_DEVICE")) &&
        (rc = env_count("NI_CUDA_DEVICE", v, &c->device_index, err, errlen)))
        return rc;
    if (c->quant == 0 && (v = env_value("NI_CUDA_QUANT"))) {
        if (!strcmp(v, "int8") || !strcmp(v, "1"))
            c->quant = 1;
        else if (strcmp(v, "none") && strcmp(v, "0"))
            return ni_fail(err, errlen, NI_EINVAL, "NI_CUDA_QUANT=%s: must be int8 or none", v);
    }
    if (c->graphs == ENG_GRAPHS_DEFAULT && (v = env_value("NI_CUDA_GRAPHS"))) {
        if (!strcmp(v, "1") || !strcmp(v, "on"))
            c->graphs = ENG_GRAPHS_ON;
        else if (!strcmp(v, "0") || !strcmp(v, "off"))
            c->graphs = ENG_GRAPHS_OFF;
        else if (!strcmp(v, "eager"))
            c->graphs = ENG_GRAPHS_EAGER;
        else
            return ni_fail(err, errlen, NI_EINVAL, "NI_CUDA_GRAPHS=%s: must be 0, 1 or eager", v);
    }
    if (c->att_splits == 0 && (v = env_value("NI_CUDA_ATT_SPLITS")) &&
        (rc = env_count("NI_CUDA_ATT_SPLITS", v, &c->att_splits, err, errlen)))
        return rc;
    if (c->att_kernel == 0 && (v = env_value("NI_CUDA_ATT"))) {
        if (!strcmp(v, "auto"))
            c->att_kernel = 0;
        else if (!strcmp(v, "simt"))
            c->att_kernel = 1;
        else if (!strcmp(v, "tc"))
            c->att_kernel = 2;
        else
            return ni_fail(err, errlen, NI_EINVAL, "NI_CUDA_ATT=%s: must be auto, simt or tc", v);
    }
    if ((rc = env_off("NI_CUDA_GEMV", &c->no_gemv, err, errlen))) return rc;
    if ((rc = env_off("NI_CUDA_PDL", &c->no_pdl, err, errlen)) ||
        (rc = env_off("NI_CUDA_FUSE_ROPE", &c->no_fuse_rope, err, errlen)) ||
        (rc = env_off("NI_CUDA_ATT_LAT", &c->no_att_lat, err, errlen)) ||
        (rc = env_switch("NI_CUDA_ATT_STAGE", "1", &c->att_stage, err, errlen)) ||
        (rc = env_switch("NI_CUDA_PERSIST", "1", &c->persist, err, errlen)))
        return rc;
    if (c->profile == 0 && (v = env_value("NI_CUDA_PROFILE"))) c->profile = strcmp(v, "0") != 0;
    return 0;
}
