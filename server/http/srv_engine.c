/*
 * srv_engine.c - the engine side of `nanoinfer serve` (srv_server.c has the
 * overview, srv_internal.h the shared state).
 *
 * Engine thread: loads the model, then loops
 *   while (running) { heartbeat; n = eng_step(); publish stats;
 *                     if (n == 0) eng_wait_work(50 ms); }
 * It never touches HTTP state. Every iteration it publishes an eng_stats
 * snapshot (under snap_mu) and a heartbeat (atomic) for /metrics and /health,
 * so the loop never calls into the engine for them.
 *
 * Engine -> loop: on_engine_event runs on the engine thread and copies each
 * event into a mutex-protected queue (its pointers are only valid during the
 * call), then calls uv_async_send. Async sends coalesce, so srv_on_async
 * drains EVERYTHING queued per wake-up; it swaps the queue for an empty one
 * under the lock, so the engine never waits while the loop writes responses.
 * The queues have a fixed size (srv_evq.h): when the loop falls behind, the
 * engine thread waits for its drain rather than lose an event.
 *
 * Applying events (loop thread): an event finds its srv_gen by request id,
 * never through a pointer the engine holds, so a late event for a freed
 * request is dropped. Streaming requests get SSE chunks appended, others
 * accumulate text and logprobs; once every choice reported a finish the
 * generation is done for the engine and its response completed.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "tokenizer/chat.h"
#include "engine/backend/backend.h"
#include "engine/engine.h"
#include "engine/model/model.h"
#include "engine/util/util.h"
#include "srv_api.h"
#include "srv_internal.h"
#include "srv_log.h"
#include "srv_metrics.h"
#include "srv_util.h"

/* After a fatal engine error, how long the server still answers (503, so
 * that health probes and load balancers see why) before it exits 1. */
#define FATAL_LINGER_S 2.0

/* ================= engine thread ================= */

/* Events and text bytes each of the two event queues holds (allocated once,
 * at start): a full queue makes the engine thread wait for the loop's drain. */
#define EVQ_EVENTS 4096
#define EVQ_TEXT ((size_t)1 << 20)

static void notify_loop(srv_server *s);
static void publish_stats(srv_server *s);

/* Engine thread: copy the event (its pointers are only valid during the call).
 * Never drops it while the server runs: a full queue waits for the loop
 * (srv_evq.h), since a lost finish would leak its request for good.
 * A finish publishes the statistics first: a client that reads /metrics after
 * its response must see its request's work (the step's own publish comes only
 * after eng_step returns, so a fast client read the step before: one grammar
 * mask short in e2e_structured). */
static void on_engine_event(void *ud, const eng_event *ev) {
    srv_server *s = ud;
    const double t = ni_now();
    if (ev->finish != ENG_FINISH_NONE) publish_stats(s);
    for (;;) {
        pthread_mutex_lock(&s->evq_mu);
        int rc = srv_evq_push(&s->evq, ev, t);
        if (rc && !atomic_load_explicit(&s->running, memory_order_acquire)) {
            s->evq.lost++; /* stopping: nobody drains any more */
            rc = 0;
        }
        pthread_mutex_unlock(&s->evq_mu);
        notify_loop(s);
        if (!rc) return;
        struct timespec ts = {0, 200000}; /* 0.2 ms: rare, a burst the loop has not taken yet */
        nanosleep(&ts, NULL);
    }
}

/* Engine thread, before the model loads: both queues at their fixed size. */
static int evq_alloc(srv_server *s) {
    pthread_mutex_lock(&s->evq_mu);
    int rc = srv_evq_alloc(&s->evq, EVQ_EVENTS, EVQ_TEXT);
    if (!rc) rc = srv_evq_alloc(&s->evq_loop, EVQ_EVENTS, EVQ_TEXT);
    pthread_mutex_unlock(&s->evq_mu);
    return rc;
}

static void publish_stats(srv_server *s) {
    eng_stats st;
    eng_get_stats(s->eng, &st);
    pthread_mutex_lock(&s->snap_mu);
    s->snap = st;
    s->snap_valid = 1;
    pthread_mutex_unlock(&s->snap_mu);
}

static void heartbeat(srv_server *s) {
    atomic_store_explicit(&s->heartbeat_us, (long long)(ni_now() * 1e6), memory_order_relaxed);
}

/* Wakes the loop, unless it is stopping: a shutdown that gave up waiting
 * for this thread (srv_server.c, ENGINE_JOIN_S) may have closed the handle. */
static void notify_loop(srv_server *s) {
    if (atomic_load_explicit(&s->running, memory_order_acquire)) uv_async_send(&s->async);
}

void *srv_engine_main(void *arg) {
    srv_server *s = arg;
    char err[512];
    double t0 = ni_now();
    heartbeat(s);
    int rc = evq_alloc(s);
    if (rc) ni_fail(err, sizeof err, rc, "out of memory for the engine event queues");
    if (!rc) rc = mdl_load(&s->model, s->cfg.model, err, sizeof err);
    if (!rc && !s->model.tok)
        rc = ni_fail(err, sizeof err, NI_EFORMAT, "%s: the model has no tokenizer", s->cfg.model);
    if (!rc) {
        eng_config ec;
        eng_config_default(&ec);
        ec.max_num_seqs = s->cfg.max_num_seqs;
        ec.max_batched_tokens = s->cfg.max_batched_tokens;
        ec.prefill_chunk = s->cfg.prefill_chunk;
        ec.block_size = s->cfg.block_size;
        ec.n_blocks = s->cfg.kv_blocks;
        ec.prefix_cache = !s->cfg.no_prefix_cache;
        ec.n_threads = s->cfg.threads;
        ec.tp = s->cfg.tensor_parallel_size;
        eng_quant_parse(s->cfg.quant, &ec.quant); /* validated with the config */
        eng_kv_dtype_parse(s->cfg.kv_cache_dtype, &ec.kv_dtype); /* validated with the config */
        ec.max_seq_len = s->cfg.max_model_len;
        ec.mem_util = s->cfg.gpu_memory_utilization;
        const char *dtype = strcmp(s->cfg.dtype, "auto") ? s->cfg.dtype : NULL;
        s->backend = eng_backend_select(s->cfg.backend, dtype, err, sizeof err);
        if (s->backend) eng_dtype_parse(dtype, &ec.dtype); /* validated by eng_backend_select */
        rc = s->backend ? eng_init(&s->eng, &s->model, s->backend, &ec, on_engine_event, s, err,
                                   sizeof err)
                        : NI_EINVAL;
    }
    if (rc) {
        snprintf(s->fail_msg, sizeof s->fail_msg, "%s", err);
        atomic_store_explicit(&s->state, ST_FAILED, memory_order_release);
        notify_loop(s);
        return NULL;
    }
    s->load_seconds = ni_now() - t0;
    char desc[256];
    srv_log(SRV_LOG_INFO, "engine: %s", eng_describe(s->eng, desc, sizeof desc));
    publish_stats(s);
    atomic_store_explicit(&s->state, ST_READY, memory_order_release);
    notify_loop(s);
    while (atomic_load_explicit(&s->running, memory_order_acquire)) {
        heartbeat(s);
        int n = eng_step(s->eng);
        publish_stats(s);
        const int fatal = eng_fatal_error(s->eng);
        if (fatal && !atomic_load_explicit(&s->engine_fatal, memory_order_relaxed)) {
            /* engine.h's policy: the device is gone; the loop drains and exits 1 */
            srv_log(SRV_LOG_ERROR,
                    "engine: the backend failed for good (%s: device lost or unusable); failing "
                    "every request, draining and exiting so that the service is restarted",
                    ni_strerror(fatal));
            atomic_store_explicit(&s->engine_fatal, fatal, memory_order_release);
            notify_loop(s);
        } else if (n < 0 && !fatal) {
            srv_log(SRV_LOG_ERROR, "engine step failed: %s (the batch's requests failed)",
                    ni_strerror(n));
        }
        if (n == 0 || fatal) eng_wait_work(s->eng, 50); /* a failed engine has nothing to run */
    }
    return NULL;
}

/* ================= snapshot readers (loop thread) ================= */

int srv_is_ready(srv_server *s) {
    return atomic_load_explicit(&s->state, memory_order_acquire) == ST_READY && s->ready_seen;
}

/* 1 when the engine loop is alive: heartbeat younger than health-timeout. */
int srv_engine_alive(srv_server *s) {
    double hb = (double)atomic_load_explicit(&s->heartbeat_us, memory_order_relaxed) / 1e6;
    return ni_now() - hb <= s->cfg.health_timeout;
}

int srv_get_snapshot(srv_server *s, eng_stats *st) {
    pthread_mutex_lock(&s->snap_mu);
    int ok = s->snap_valid;
    if (ok) *st = s->snap;
    pthread_mutex_unlock(&s->snap_mu);
    return ok;
}

void srv_fill_api_ctx(srv_server *s) {
    eng_stats st;
    if (srv_get_snapshot(s, &st)) s->api.kv_tokens = st.kv.blocks_total * s->cfg.block_size;
}

/* ================= generations and their events (loop thread) ================= */

static srv_gen *gen_find(srv_server *s, uint64_t id) {
    for (srv_gen *g = s->gens[id & (GEN_BUCKETS - 1)]; g; g = g->hnext)
        if (g->id == id) return g;
    return NULL;
}

void srv_gen_free(srv_server *s, srv_gen *g) {
    srv_gen **pp = &s->gens[g->id & (GEN_BUCKETS - 1)];
    while (*pp && *pp != g) pp = &(*pp)->hnext;
    if (*pp) *pp = g->hnext;
    if (g->engine_live) {
        s->n_live_gens--;
        s->metrics.requests_in_flight--;
    }
    for (int i = 0; i < ENG_MAX_N; i++) {
        srv_buf_free(&g->ch[i].text);
        srv_buf_free(&g->ch[i].reasoning);
        srv_tool_stream_free(&g->ch[i].ts);
        srv_lp_free(&g->ch[i].lp);
    }
    srv_gen_req_free(&g->rq);
    free(g);
}

void srv_gen_abort(srv_server *s, srv_gen *g, int reason) {
    if (!g->engine_live || g->abort_sent) return;
    g->abort_sent = 1;
    s->metrics.aborted[reason]++;
    if (s->eng) eng_abort(s->eng, g->id);
}

/* All choices finished: the engine holds nothing of g any more. */
static void gen_engine_done(srv_server *s, srv_gen *g) {
    g->engine_live = 0;
    s->n_live_gens--;
    /* an engine that fails every request is not healthy (see handle_health) */
    if (g->any_error) s->failing_streak++;
    else if (!g->abort_sent && !g->shutdown_abort) s->failing_streak = 0;
    s->metrics.requests_in_flight--;
    if (!g->shutdown_abort && !g->abort_sent)
        srv_hist_observe(&s->metrics.e2e, ni_now() - g->t_arrival);
    srv_conn *c = g->conn;
    if (!c) {
        srv_gen_free(s, g);
        return;
    }
    c->prompt_tokens = g->n_prompt;
    c->completion_tokens = g->completion_tokens;
    if (c->kill) return;
    if (g->rq.stream) {
        if (g->any_error) {
            srv_api_error e;
            srv_api_fail(&e, 500, NULL, "generation failed inside the engine (see the server log)");
            srv_conn_sse(c, srv_api_error_json(&e));
        }
        if (g->rq.include_usage && !c->kill) {
            json_t *o = srv_api_envelope(g->rq.kind, 1, g->rid, g->created, s->model_name);
            if (o) {
                json_object_set_new(o, "choices", json_array());
                json_object_set_new(o, "usage",
                                    srv_api_usage(g->n_prompt, g->completion_tokens, g->n_cached));
            }
            srv_conn_sse(c, o);
        }
        if (!c->kill) {
            if (srv_sse_done(&c->out) == NI_ERANGE) srv_conn_kill(c, SRV_ABORT_SLOW_READER);
            c->out_done = 1;
            srv_conn_resume(c);
        }
    } else {
        srv_build_final(s, g, c);
        srv_conn_resume(c);
    }
}

/* Splits an event's text (and, at the finish, what the parser held back)
 * into reasoning and content. Returns 0 or NI_ENOMEM. */
static int split_text(srv_choice *ch, const ev_rec *ev, const char *text, srv_buf *reasoning,
                      srv_buf *content) {
    int rc = srv_reasoning_feed(&ch->rp, text, (size_t)NI_MAX(ev->text_len, 0), reasoning, content);
    if (!rc && ev->finish) rc = srv_reasoning_flush(&ch->rp, reasoning, content);
    return rc;
}

static void stream_event(srv_server *s, srv_gen *g, int index, const ev_rec *ev, const char *text) {
    srv_conn *c = g->conn;
    srv_choice *chs = &g->ch[index];
    json_t *lp = NULL;
    srv_stream_open(g, index);
    if (c->kill) return;
    if (ev->has_lp && ev->token >= 0) {
        srv_lp_add(&chs->lp, s->model.tok, &ev->lp);
        lp = srv_lp_take(&chs->lp);
    }
    /* delta.reasoning_content inside the think block, then delta.content; with
     * tools, the content goes through the tool-call parser first */
    srv_buf r = {0}, t = {0};
    int rc = 0;
    if (g->rq.reasoning) rc = split_text(chs, ev, text, &r, &t);
    else rc = srv_buf_append(&t, text, (size_t)NI_MAX(ev->text_len, 0));
    srv_tool_call calls[SRV_TOOLS_MAX_CALLS];
    int n_calls = 0;
    char *tc_content = NULL;
    size_t tc_len = 0;
    if (!rc && g->rq.tools.n > 0) {
        rc = srv_tool_stream_push(&chs->ts, srv_buf_ptr(&t), srv_buf_size(&t), ev->finish != 0,
                                  &tc_content, &tc_len, calls,
                                  &n_calls);
        srv_buf_free(&t);
        if (!rc && tc_len) rc = srv_buf_append(&t, tc_content, tc_len);
        free(tc_content);
    }
    if (rc) {
        json_decref(lp);
        srv_buf_free(&r);
        srv_buf_free(&t);
        for (int k = 0; k < n_calls; k++) srv_tool_call_free(&calls[k]);
        srv_conn_kill(c, SRV_ABORT_DISCONNECT);
        return;
    }
    if (srv_buf_size(&r) || srv_buf_size(&t) || lp) {
        json_t *ch = srv_api_choice(g->rq.kind, 1, index, srv_buf_size(&t) ? srv_buf_ptr(&t) : NULL,
                                    srv_buf_size(&t), 0, lp, NULL);
        if (g->rq.reasoning) ch = srv_api_choice_reasoning(ch, 1, srv_buf_ptr(&r), srv_buf_size(&r), 0);
        srv_conn_sse(c, srv_stream_chunk(g, ch, g->rq.include_usage));
    }
    srv_buf_free(&r);
    srv_buf_free(&t);
    if (n_calls > 0 && !c->kill) { /* each call whole, in one delta.tool_calls chunk */
        char ids[SRV_TOOLS_MAX_CALLS][32];
        const char *ptrs[SRV_TOOLS_MAX_CALLS];
        srv_tool_ids(s, ids, ptrs, n_calls);
        json_t *ch = srv_api_choice(g->rq.kind, 1, index, NULL, 0, 0, NULL, NULL);
        ch = srv_api_choice_tool_calls(ch, 1, calls, ptrs, n_calls, chs->n_calls);
        srv_conn_sse(c, srv_stream_chunk(g, ch, g->rq.include_usage));
        chs->n_calls += n_calls;
    }
    for (int k = 0; k < n_calls; k++) srv_tool_call_free(&calls[k]);
    if (ev->finish && !c->kill) {
        const char *finish = chs->n_calls > 0 && ev->finish == ENG_FINISH_STOP
                                 ? "tool_calls"
                                 : srv_api_finish_reason(ev->finish);
        srv_conn_sse(c, srv_stream_chunk(g, srv_api_choice(g->rq.kind, 1, index, NULL, 0, 0, NULL,
                                                           finish),
                                         g->rq.include_usage));
    }
}

static void handle_event(srv_server *s, const ev_rec *ev, const char *text) {
    srv_gen *g = gen_find(s, ev->id);
    if (!g || !g->engine_live || ev->index < 0 || ev->index >= g->rq.n) return;
    srv_choice *ch = &g->ch[ev->index];
    if (ev->index > 0) g->forked_seen = 1;
    g->n_prompt = ev->n_prompt;
    g->n_cached = ev->n_cached;
    ch->n_gen = ev->n_generated;
    if (ev->token >= 0) {
        s->metrics.generation_tokens++;
        if (g->t_first == 0) {
            g->t_first = ev->t;
            srv_hist_observe(&s->metrics.ttft, ev->t - g->t_arrival);
        } else if (ch->t_last > 0) {
            srv_hist_observe(&s->metrics.itl, ev->t - ch->t_last);
        }
        ch->t_last = ev->t;
    }
    srv_conn *c = g->conn;
    if (c && !c->kill) {
        if (g->rq.stream) {
            stream_event(s, g, ev->index, ev, text);
        } else {
            if (g->rq.reasoning
                    ? split_text(ch, ev, text, &ch->reasoning, &ch->text)
                    : ev->text_len > 0 && srv_buf_append(&ch->text, text, (size_t)ev->text_len))
                srv_conn_kill(c, SRV_ABORT_DISCONNECT);
            if (ev->has_lp && ev->token >= 0) srv_lp_add(&ch->lp, s->model.tok, &ev->lp);
        }
    }
    if (ev->finish) {
        ch->finish = ev->finish;
        g->n_finished++;
        g->completion_tokens += ev->n_generated;
        if (ev->finish >= 0 && ev->finish < 5) s->metrics.finished[ev->finish]++;
        if (ev->finish == ENG_FINISH_ERROR && !g->any_error) {
            g->any_error = 1;
            s->metrics.engine_errors[srv_engerr_kind_of(ev->error)]++;
            srv_log(SRV_LOG_ERROR, "%s: generation failed in the engine: %s%s", g->rid,
                    ni_strerror(ev->error),
                    ev->error == NI_ERANGE ? " (no finite logit: NaN/Inf in the model's output; "
                                             "check the weights)"
                                           : "");
        }
        int unforked_end = (ev->finish == ENG_FINISH_ABORT || ev->finish == ENG_FINISH_ERROR) &&
                           ev->index == 0 && g->rq.n > 1 && !g->forked_seen;
        if (g->n_finished >= g->rq.n || unforked_end) gen_engine_done(s, g);
    }
}

/* ================= model loaded, events drained (loop thread) ================= */

static void on_ready(srv_server *s) {
    s->ready_seen = 1;
    const mdl_model *m = &s->model;
    snprintf(s->model_name, sizeof s->model_name, "%s",
             s->cfg.served_model_name[0] ? s->cfg.served_model_name : m->name);
    int style;
    if (strcmp(s->cfg.chat_template, "auto")) {
        style = chat_style_from_name(s->cfg.chat_template);
    } else {
        style = chat_detect_strict(m->chat_template);
        if (style < 0) {
            srv_log(SRV_LOG_WARN,
                    "the model has %s chat template; chat requests use ChatML "
                    "(set chat-template to choose)",
                    m->chat_template ? "an unrecognised" : "no");
            style = CHAT_STYLE_CHATML;
        }
    }
    s->api.tok = m->tok;
    s->api.chat_style = style;
    s->api.vocab = m->cfg.vocab_size;
    s->api.max_seq_len = eng_max_seq_len(s->eng);
    s->api.max_tokens_default = s->cfg.max_tokens_default;
    s->api.max_n = NI_MIN(ENG_MAX_N, s->cfg.max_num_seqs);
    s->api.model_name = s->model_name;
    s->api.model_path = s->cfg.model;
    s->api.reasoning_parser =
        !strcmp(s->cfg.reasoning_parser, "auto")
            ? (style == CHAT_STYLE_QWEN3 ? SRV_REASONING_QWEN3 : SRV_REASONING_NONE)
            : srv_reasoning_parser_from_name(s->cfg.reasoning_parser);
    char line[1024];
    srv_config_sampling(&s->cfg, &m->sampling, &s->sp_default, line, sizeof line);
    s->api.sp_default = &s->sp_default;
    srv_log(SRV_LOG_INFO, "%s", line);
    srv_fill_api_ctx(s);
    srv_log(SRV_LOG_INFO,
            "model %s loaded in %.2fs: %d layers, vocab %d, context %d, chat template %s, "
            "reasoning parser %s, backend %s, KV pool %d tokens (kv-cache-dtype %s); ready",
            s->model_name, s->load_seconds, m->cfg.n_layers, m->cfg.vocab_size, s->api.max_seq_len,
            chat_style_name(style), srv_reasoning_parser_name(s->api.reasoning_parser),
            s->backend->name, s->api.kv_tokens, s->cfg.kv_cache_dtype);
}

void srv_on_async(uv_async_t *h) {
    srv_server *s = h->data;
    int st = atomic_load_explicit(&s->state, memory_order_acquire);
    if (st == ST_READY && !s->ready_seen) on_ready(s);
    if (st == ST_FAILED && !s->fail_seen) {
        s->fail_seen = 1;
        srv_log(SRV_LOG_ERROR, "cannot load the model: %s", s->fail_msg);
        s->exit_code = 1;
        srv_schedule_stop(s);
    }
    if (atomic_load_explicit(&s->engine_fatal, memory_order_acquire) && !s->fatal_seen) {
        s->fatal_seen = 1;
        s->exit_code = 1; /* so that systemd / Docker restart the server */
        srv_drain(s, "engine failed", FATAL_LINGER_S);
    }
    pthread_mutex_lock(&s->evq_mu);
    ev_queue tmp = s->evq;
    s->evq = s->evq_loop;
    s->evq_loop = tmp;
    pthread_mutex_unlock(&s->evq_mu);
    ev_queue *q = &s->evq_loop;
    if (q->cut) {
        srv_log(SRV_LOG_ERROR, "%llu engine events had text over %zu bytes: cut",
                (unsigned long long)q->cut, q->text_cap);
        q->cut = 0;
    }
    for (size_t i = 0; i < q->n; i++) handle_event(s, &q->v[i], q->text + q->v[i].text_off);
    srv_evq_clear(q);
    if (s->need_run) srv_mhd_run(s);
    if (s->draining) srv_check_drained(s);
}
