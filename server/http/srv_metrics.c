/*
 * srv_metrics.c - see srv_metrics.h. Bucket layouts follow vLLM's
 * (vllm/engine/metrics.py), extended downwards for tiny models; the vllm:
 * series share them (a histogram is rendered twice from one srv_hist).
 */
#include "srv_metrics.h"

#include <stdio.h>
#include <string.h>

#include "engine/util/util.h"

static const double g_ttft[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
                                1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double g_itl[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,  0.15, 0.2,  0.3,
                               0.4,   0.5,    0.75,  1.0,  2.5,   5.0,  7.5,   10.0, 20.0, 40.0, 80.0};
static const double g_e2e[] = {0.01, 0.05, 0.1,   0.3,   0.5,   0.8,   1.0,    1.5,
                               2.0,  2.5,  5.0,   10.0,  15.0,  20.0,  30.0,   40.0,
                               50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

static void hist_init(srv_hist *h, const double *b, int n) {
    memset(h, 0, sizeof *h);
    NI_ASSERT(n <= SRV_HIST_MAX_BUCKETS);
    h->bounds = b;
    h->n_bounds = n;
}

void srv_metrics_init(srv_metrics *m) {
    memset(m, 0, sizeof *m);
    hist_init(&m->ttft, g_ttft, (int)NI_ARRAY_LEN(g_ttft));
    hist_init(&m->itl, g_itl, (int)NI_ARRAY_LEN(g_itl));
    hist_init(&m->e2e, g_e2e, (int)NI_ARRAY_LEN(g_e2e));
}

void srv_hist_observe(srv_hist *h, double v) {
    if (!(v > 0)) v = 0; /* also NaN */
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

void srv_metrics_response(srv_metrics *m, int status) {
    if (status >= 100 && status < 600) m->responses[status]++;
}

/* Every writer below is a no-op once *rc is non-zero, so a render is a flat
 * list of calls and the first srv_buf error is kept. */
srv_engerr_kind srv_engerr_kind_of(int err) {
    switch (err) {
    case NI_ERANGE: return SRV_ENGERR_NAN;
    case NI_ENOMEM: return SRV_ENGERR_OOM;
    case NI_EIO: return SRV_ENGERR_BACKEND;
    default: return SRV_ENGERR_OTHER;
    }
}

static void head(int *rc, srv_buf *o, const char *name, const char *type, const char *help) {
    if (!*rc) *rc = srv_buf_printf(o, "# HELP nanoinfer_%s %s\n# TYPE nanoinfer_%s %s\n", name, help, name, type);
}

static void scalar(int *rc, srv_buf *o, const char *name, const char *type, const char *help, double v) {
    head(rc, o, name, type, help);
    if (!*rc) *rc = srv_buf_printf(o, "nanoinfer_%s %.17g\n", name, v);
}

static void labeled(int *rc, srv_buf *o, const char *name, const char *label, const char *value,
                    unsigned long long v) {
    if (!*rc) *rc = srv_buf_printf(o, "nanoinfer_%s{%s=\"%s\"} %llu\n", name, label, value, v);
}

static void hist(int *rc, srv_buf *o, const char *name, const char *help, const srv_hist *h) {
    head(rc, o, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; !*rc && i < h->n_bounds; i++) {
        cum += h->counts[i];
        *rc = srv_buf_printf(o, "nanoinfer_%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i],
                             (unsigned long long)cum);
    }
    cum += h->counts[h->n_bounds];
    if (!*rc)
        *rc = srv_buf_printf(o,
                             "nanoinfer_%s_bucket{le=\"+Inf\"} %llu\nnanoinfer_%s_sum %.17g\n"
                             "nanoinfer_%s_count %llu\n",
                             name, (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->count);
}

int srv_metrics_render(const srv_metrics *m, const eng_stats *st, int model_loaded, int health,
                       srv_buf *o) {
    int rc = 0;
    char code[12]; /* any int: keeps -Wformat-truncation quiet at every -O level */
    scalar(&rc, o, "model_loaded", "gauge", "1 once the model is loaded and the engine runs.", model_loaded);
    scalar(&rc, o, "healthy", "gauge", "1 when /health answers 200.", health);
    head(&rc, o, "http_requests_total", "counter", "HTTP requests answered, by response status code.");
    for (int c = 100; c < 600; c++)
        if (m->responses[c]) {
            snprintf(code, sizeof code, "%d", c);
            labeled(&rc, o, "http_requests_total", "code", code, (unsigned long long)m->responses[c]);
        }
    head(&rc, o, "generation_requests_total", "counter",
         "Generation requests accepted (queued to the engine), by endpoint.");
    labeled(&rc, o, "generation_requests_total", "endpoint", "completions", m->gen_requests[0]);
    labeled(&rc, o, "generation_requests_total", "endpoint", "chat", m->gen_requests[1]);
    static const char *const fin[] = {"none", "stop", "length", "abort", "error"};
    head(&rc, o, "sequences_finished_total", "counter", "Finished sequences, by finish reason.");
    for (int i = 1; i < 5; i++) labeled(&rc, o, "sequences_finished_total", "reason", fin[i], m->finished[i]);
    static const char *const ab[] = {"disconnect", "slow_reader", "shutdown"};
    head(&rc, o, "requests_aborted_total", "counter",
         "Requests the server aborted, by reason (client gone, client too slow, shutdown).");
    for (int i = 0; i < SRV_ABORT_N; i++) labeled(&rc, o, "requests_aborted_total", "reason", ab[i], m->aborted[i]);
    scalar(&rc, o, "requests_in_flight", "gauge", "Accepted generation requests not yet finished.",
           m->requests_in_flight);
    scalar(&rc, o, "http_connections", "gauge", "Open HTTP connections.", m->connections);
    static const char *const ek[SRV_ENGERR_N] = {"nan", "oom", "backend", "other"};
    head(&rc, o, "engine_errors_total", "counter",
         "Generations the engine ended with an error, by kind (nan: no finite logit, oom: out of "
         "memory, backend: backend failure, other).");
    for (int i = 0; i < SRV_ENGERR_N; i++)
        labeled(&rc, o, "engine_errors_total", "kind", ek[i], m->engine_errors[i]);
    scalar(&rc, o, "http_request_timeouts_total", "counter",
           "Connections closed because a request's headers or body were not received within "
           "header-timeout / body-timeout.",
           (long long)m->request_timeouts);
    scalar(&rc, o, "http_connections_evicted_total", "counter",
           "Connections waiting for their request headers that were closed at max-connections "
           "to make room for a new client.",
           (long long)m->connections_evicted);
    scalar(&rc, o, "prompt_tokens_total", "counter", "Prompt tokens of accepted requests.",
           (double)m->prompt_tokens);
    scalar(&rc, o, "generation_tokens_total", "counter", "Generated tokens.", (double)m->generation_tokens);
    hist(&rc, o, "time_to_first_token_seconds", "Time from request arrival to its first token.", &m->ttft);
    hist(&rc, o, "inter_token_latency_seconds", "Time between consecutive tokens of a sequence.", &m->itl);
    hist(&rc, o, "e2e_request_latency_seconds", "Time from request arrival to its last token.", &m->e2e);
    if (!st) return rc;
    const kv_stats *kv = &st->kv;
    scalar(&rc, o, "num_seqs_running", "gauge", "Sequences in the running batch.", st->n_running);
    scalar(&rc, o, "num_seqs_waiting", "gauge", "Sequences waiting for admission.", st->n_waiting);
    scalar(&rc, o, "kv_blocks_used", "gauge", "KV cache blocks referenced by live sequences.", kv->blocks_used);
    scalar(&rc, o, "kv_blocks_total", "gauge", "KV cache blocks in the pool.", kv->blocks_total);
    scalar(&rc, o, "kv_blocks_free", "gauge", "KV cache blocks free (not cached).", kv->blocks_free);
    scalar(&rc, o, "kv_blocks_cached", "gauge", "KV cache blocks holding a reusable prefix.", kv->blocks_cached);
    scalar(&rc, o, "kv_cache_usage_ratio", "gauge", "Fraction of KV blocks in use.",
           kv->blocks_total ? (double)kv->blocks_used / kv->blocks_total : 0.0);
    scalar(&rc, o, "prefix_cache_lookups_total", "counter", "Prompt admissions that queried the prefix cache.",
           (double)kv->prefix_queries);
    scalar(&rc, o, "prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.",
           (double)kv->query_tokens);
    scalar(&rc, o, "prefix_cache_hits_total", "counter", "Prompt tokens served by the prefix cache.",
           (double)kv->hit_tokens);
    scalar(&rc, o, "prefix_cache_evictions_total", "counter", "Cached KV blocks evicted for reuse.",
           (double)kv->evictions);
    scalar(&rc, o, "prompt_tokens_computed_total", "counter",
           "Prompt tokens the engine computed (not served by the cache; recomputation included).",
           (double)st->prompt_tokens);
    scalar(&rc, o, "engine_generated_tokens_total", "counter", "Tokens sampled by the engine.",
           (double)st->generated_tokens);
    scalar(&rc, o, "preemptions_total", "counter", "Sequences preempted (recomputed later).",
           (double)st->n_preemptions);
    scalar(&rc, o, "grammar_masks_total", "counter",
           "Token masks applied for structured output (one per constrained token).",
           (double)st->grammar_masks);
    scalar(&rc, o, "grammar_mask_seconds_total", "counter",
           "Engine-thread time spent computing and applying those masks.", st->grammar_seconds);
    scalar(&rc, o, "engine_steps_total", "counter", "Engine scheduling steps with a forward pass.",
           (double)st->steps);
    scalar(&rc, o, "engine_step_seconds_total", "counter", "Engine-thread wall time in steps.",
           st->step_seconds);
    scalar(&rc, o, "engine_backend_seconds_total", "counter",
           "Of which inside the backend (forward, sampling, block copies; device waits).",
           st->backend_seconds);
    return rc;
}

/* ---- the same data under vLLM's names ---- */

/* Label set {model_name="...",engine="0"} with the value escaped
 * (backslash, double quote, newline), into lbl. */
static void vllm_labels(const char *model, char *lbl, size_t cap) {
    size_t n = (size_t)snprintf(lbl, cap, "model_name=\"");
    for (const char *p = model ? model : ""; *p && n + 20 < cap; p++) { /* room for the rest */
        if (*p == '\\' || *p == '"') lbl[n++] = '\\';
        if (*p == '\n') {
            lbl[n++] = '\\';
            lbl[n++] = 'n';
            continue;
        }
        lbl[n++] = *p;
    }
    lbl[n] = 0;
    if (n < cap) snprintf(lbl + n, cap - n, "\",engine=\"0\"");
}

static void vhead(int *rc, srv_buf *o, const char *name, const char *type, const char *help) {
    if (!*rc)
        *rc = srv_buf_printf(o, "# HELP vllm:%s %s\n# TYPE vllm:%s %s\n", name, help, name, type);
}

/* A gauge or counter (a counter's name ends in _total, as prometheus_client writes it). */
static void vscalar(int *rc, srv_buf *o, const char *lbl, const char *name, const char *type,
                    const char *help, double v) {
    vhead(rc, o, name, type, help);
    if (!*rc) *rc = srv_buf_printf(o, "vllm:%s{%s} %.17g\n", name, lbl, v);
}

static void vhist(int *rc, srv_buf *o, const char *lbl, const char *name, const char *help,
                  const srv_hist *h) {
    vhead(rc, o, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; !*rc && i < h->n_bounds; i++) {
        cum += h->counts[i];
        *rc = srv_buf_printf(o, "vllm:%s_bucket{%s,le=\"%g\"} %llu\n", name, lbl, h->bounds[i],
                             (unsigned long long)cum);
    }
    cum += h->counts[h->n_bounds];
    if (!*rc)
        *rc = srv_buf_printf(o,
                             "vllm:%s_bucket{%s,le=\"+Inf\"} %llu\nvllm:%s_sum{%s} %.17g\n"
                             "vllm:%s_count{%s} %llu\n",
                             name, lbl, (unsigned long long)cum, name, lbl, h->sum, name, lbl,
                             (unsigned long long)h->count);
}

int srv_metrics_render_vllm(const srv_metrics *m, const eng_stats *st, const char *model_name,
                            srv_buf *o) {
    if (!st) return 0;
    int rc = 0;
    char lbl[640];
    vllm_labels(model_name, lbl, sizeof lbl);
    const kv_stats *kv = &st->kv;
    vscalar(&rc, o, lbl, "num_requests_running", "gauge",
            "Number of requests in model execution batches.", st->n_running);
    vscalar(&rc, o, lbl, "num_requests_waiting", "gauge",
            "Number of requests waiting to be processed.", st->n_waiting);
    vscalar(&rc, o, lbl, "kv_cache_usage_perc", "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            kv->blocks_total ? (double)kv->blocks_used / kv->blocks_total : 0.0);
    vscalar(&rc, o, lbl, "prefix_cache_queries_total", "counter",
            "Prefix cache queries, in terms of number of queried tokens.",
            (double)kv->query_tokens);
    vscalar(&rc, o, lbl, "prefix_cache_hits_total", "counter",
            "Prefix cache hits, in terms of number of cached tokens.", (double)kv->hit_tokens);
    vscalar(&rc, o, lbl, "num_preemptions_total", "counter",
            "Cumulative number of preemption from the engine.", (double)st->n_preemptions);
    vscalar(&rc, o, lbl, "prompt_tokens_total", "counter", "Number of prefill tokens processed.",
            (double)m->prompt_tokens);
    vscalar(&rc, o, lbl, "generation_tokens_total", "counter",
            "Number of generation tokens processed.", (double)m->generation_tokens);
    static const char *const fin[] = {"none", "stop", "length", "abort", "error"};
    vhead(&rc, o, "request_success_total", "counter",
          "Count of successfully processed requests (sequences), by finish reason.");
    for (int i = 1; i < 5 && !rc; i++)
        rc = srv_buf_printf(o, "vllm:request_success_total{%s,finished_reason=\"%s\"} %llu\n", lbl,
                            fin[i], (unsigned long long)m->finished[i]);
    vhist(&rc, o, lbl, "time_to_first_token_seconds",
          "Histogram of time to first token in seconds.", &m->ttft);
    vhist(&rc, o, lbl, "inter_token_latency_seconds",
          "Histogram of inter-token latency in seconds.", &m->itl);
    vhist(&rc, o, lbl, "time_per_output_token_seconds",
          "Histogram of time per output token in seconds (the inter-token latencies, as vLLM "
          "0.10 defines it).",
          &m->itl);
    vhist(&rc, o, lbl, "e2e_request_latency_seconds",
          "Histogram of e2e request latency in seconds.", &m->e2e);
    return rc;
}
