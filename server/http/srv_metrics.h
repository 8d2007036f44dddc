/*
 * srv_metrics.h - Prometheus metrics of the server (text exposition format
 * 0.0.4): our own series, every name prefixed nanoinfer_, and the same data
 * again under vLLM's names (vllm:..., labels model_name and engine), so
 * dashboards and autoscalers written for vLLM work unchanged (docs/metrics.md
 * has the mapping).
 *
 * Design: counters and histograms live in one srv_metrics owned by the loop
 * thread, which is the only writer and reader (HTTP statuses, token events
 * and latencies are all observed there). Engine gauges come from an
 * eng_stats snapshot that the engine thread publishes after every step; the
 * caller passes that copy to srv_metrics_render. Nothing here locks.
 */
#ifndef NI_SRV_METRICS_H
#define NI_SRV_METRICS_H

#include <stdint.h>

#include "engine/engine.h"
#include "srv_util.h"

#define SRV_HIST_MAX_BUCKETS 32

/* A cumulative histogram with fixed upper bounds (seconds). */
typedef struct srv_hist {
    const double *bounds; /* ascending; +Inf is implicit */
    int n_bounds;
    uint64_t counts[SRV_HIST_MAX_BUCKETS + 1]; /* per bucket, not cumulative */
    double sum;
    uint64_t count;
} srv_hist;

/* Why the engine ended a generation with an error (the kind label of
 * nanoinfer_engine_errors_total): srv_engerr_kind maps the engine's code. */
typedef enum srv_engerr_kind {
    SRV_ENGERR_NAN,     /* NI_ERANGE: no finite logit (NaN / Inf in the model's output) */
    SRV_ENGERR_OOM,     /* NI_ENOMEM: out of memory (host or device) */
    SRV_ENGERR_BACKEND, /* NI_EIO: the backend failed (a CUDA error, a lost device) */
    SRV_ENGERR_OTHER,
    SRV_ENGERR_N
} srv_engerr_kind;

/* The kind of an engine error code (a negative NI_E* value). */
srv_engerr_kind srv_engerr_kind_of(int err);

enum srv_abort_reason {
    SRV_ABORT_DISCONNECT = 0,
    SRV_ABORT_SLOW_READER = 1,
    SRV_ABORT_SHUTDOWN = 2,
    SRV_ABORT_N = 3
};

typedef struct srv_metrics {
    uint64_t responses[600];       /* by HTTP status code */
    uint64_t gen_requests[2];      /* accepted, by kind (completions, chat) */
    uint64_t finished[5];          /* sequences by enum eng_finish */
    uint64_t aborted[SRV_ABORT_N]; /* requests aborted by the server, by reason */
    uint64_t prompt_tokens;        /* prompt tokens of accepted requests */
    uint64_t generation_tokens;    /* tokens streamed back */
    int connections;               /* open HTTP connections (gauge) */
    uint64_t request_timeouts;     /* connections cut off by header/body-timeout (counter) */
    uint64_t connections_evicted;  /* closed at max-connections to make room (counter) */
    uint64_t engine_errors[SRV_ENGERR_N]; /* generations the engine ended with an error,
                                           * by kind (counter) */
    int requests_in_flight;        /* accepted generation requests not finished (gauge) */
    srv_hist ttft, itl, e2e;
} srv_metrics;

/* Zeroes m and attaches the default bucket layouts. */
void srv_metrics_init(srv_metrics *m);

/* Adds one observation (seconds; negative values count as 0). */
void srv_hist_observe(srv_hist *h, double v);

/* Counts one HTTP response with this status (ignored outside 100..599). */
void srv_metrics_response(srv_metrics *m, int status);

/* Appends the whole exposition to out: our counters and histograms, and
 * the engine gauges/counters from st (NULL while the model loads).
 * health is 1 when /health would answer 200. Returns srv_buf's code. */
int srv_metrics_render(const srv_metrics *m, const eng_stats *st, int model_loaded, int health, srv_buf *out);

/* Appends the vLLM-named series (vllm:num_requests_running, ...,
 * vllm:time_to_first_token_seconds histogram, ...), each labelled
 * model_name="<model_name>" (escaped as the format requires) and engine="0"
 * as vLLM's V1 engine writes them. The values are those of the nanoinfer_
 * series (same counters, same histograms). Nothing while st is NULL (the
 * model loads). Returns srv_buf's code. */
int srv_metrics_render_vllm(const srv_metrics *m, const eng_stats *st, const char *model_name,
                            srv_buf *out);

#endif
