/*
 * engine.h - the inference engine: continuous batching over a paged KV cache,
 * chunked prefill, prefix caching, preemption by recompute, per-request
 * sampling with stop conditions.
 *
 * Threads: eng_add() and eng_abort() may be called from any thread (they
 * push onto a mutex-protected inbox); everything else - eng_step(), the
 * scheduler state, the KV block manager, the backend - belongs to the one
 * thread that drives the engine (the engine thread in the server, the caller
 * in offline tools). Events are delivered through the callback on the
 * driving thread; the callback must not block for long (the server copies the
 * event into its own queue and signals the loop with uv_async_send).
 *
 * Scheduling (one eng_step): drain the inbox (aborts free every block of the
 * request within this step); running sequences in admission order get their
 * next chunk (1 token when decoding, up to --prefill-chunk when prefilling),
 * within --max-batched-tokens; when the pool cannot supply a block, the most
 * recently admitted running sequence is preempted (blocks released, requeued
 * at the front of the waiting queue with its generated tokens kept, so it is
 * recomputed later); then waiting sequences are admitted FCFS while
 * --max-num-seqs, the token budget and the pool allow. One backend forward
 * runs the whole mixed batch; every sequence that reached its last token is
 * sampled. A request that can never fit (prompt + max_tokens beyond the
 * model's context or the pool) is rejected by eng_add.
 *
 * n > 1: the prompt is prefilled once; when its logits arrive the sequence is
 * forked into n sequences sharing the prompt's KV blocks (copy-on-write of the
 * last partial block), each with its own RNG stream.
 */
#ifndef NI_ENGINE_H
#define NI_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/backend/backend.h"
#include "engine/backend/tp.h"
#include "kv.h"
#include "engine/model/model.h"
#include "engine/backend/sampler.h"
#include "engine/grammar/grammar.h"

#define ENG_MAX_STOP 8          /* stop strings per request */
#define ENG_MAX_STOP_LEN 256    /* bytes per stop string */
#define ENG_MAX_STOP_IDS 16     /* stop token ids per request */
#define ENG_MAX_N 16            /* parallel samples per request */

typedef struct eng_config {
    int max_num_seqs;        /* running sequences at once (default 256) */
    int max_batched_tokens;  /* tokens per forward (default 2048) */
    int prefill_chunk;       /* prompt tokens per sequence per step (default 512) */
    int block_size;          /* KV block tokens (default 16) */
    int n_blocks;            /* KV pool blocks (0: enough for max_num_seqs full contexts, capped) */
    int prefix_cache;        /* 1 (default) or 0 */
    int n_threads;           /* CPU threads (0 = all) */
    int max_seq_len;         /* 0 = the model's context length */
    eng_quant quant;         /* weight format (default ENG_QUANT_NONE, the reference;
                                AUTO: the model file's own precision, see eng_quant) */
    double mem_util;         /* with n_blocks 0, on a backend that sizes its own pool
                                (CUDA): fraction of device memory to use (default 0.9) */
    /* Backend settings, passed as they are to eng_backend_config (see there);
     * eng_init lets the environment fill those left at their default
     * (eng_backend_config_env: NI_CUDA_* with the CUDA backend). */
    eng_dtype dtype;   /* default ENG_DTYPE_DEFAULT (eng_dtype_parse of --dtype) */
    eng_kv_dtype kv_dtype; /* KV cache element type, default ENG_KV_AUTO
                              (eng_kv_dtype_parse of --kv-cache-dtype) */
    int device_index;  /* GPU ordinal, default -1 (device 0) */
    eng_graphs graphs; /* decode CUDA graphs, default ENG_GRAPHS_DEFAULT */
    int att_splits;    /* attention split-K factor, default 0 (automatic) */
    int profile;       /* per-phase device-time table, default 0 */
    int tp;            /* tensor-parallel ranks (--tensor-parallel-size), default 1 (none; 0 is 1);
                          N > 1 shards every layer over N ranks (engine/backend/tp.h): the
                          CPU backend runs them in one process (FP32 weights), the CUDA
                          backend refuses it (no NCCL path yet) */
} eng_config;

/* Fills c with the documented defaults. */
void eng_config_default(eng_config *c);

enum eng_finish {
    ENG_FINISH_NONE = 0,     /* more tokens follow */
    ENG_FINISH_STOP = 1,     /* EOS / stop token / stop string */
    ENG_FINISH_LENGTH = 2,   /* max_tokens or context reached */
    ENG_FINISH_ABORT = 3,    /* eng_abort() */
    ENG_FINISH_ERROR = 4,    /* backend or sampler failure */
};

typedef struct eng_request {
    uint64_t id;             /* caller-chosen, unique among live requests */
    void *user;              /* passed back in events */
    const int32_t *prompt;   /* [n_prompt] copied by eng_add */
    int n_prompt;
    smp_params sp;           /* logit_bias is copied by eng_add */
    int max_tokens;          /* >= 1 */
    int n;                   /* parallel samples, 1..ENG_MAX_N */
    int ignore_eos;
    int32_t stop_ids[ENG_MAX_STOP_IDS];
    int n_stop_ids;
    const char *stop[ENG_MAX_STOP];  /* copied by eng_add */
    int n_stop;
    uint64_t fallback_seed;  /* RNG seed when sp.has_seed == 0 */
    gr_grammar *grammar;     /* NULL, or the grammar every sample must follow (structured
                                output): eng_add takes it over whatever it returns (freed
                                when the request ends, or at once when refused) */
} eng_request;

typedef struct eng_event {
    uint64_t id;
    void *user;
    int index;               /* which of the n samples */
    int32_t token;           /* generated token, -1 on finish-only events and on the
                              * leading text-only pieces of a token whose text is longer
                              * than one event carries (~760 bytes; the token's own event
                              * follows with the rest) */
    const char *text;        /* newly releasable text (may be empty; never a partial
                                UTF-8 sequence nor a possible stop-string prefix) */
    int text_len;
    const smp_result *lp;    /* logprobs when requested, else NULL */
    int finish;              /* enum eng_finish */
    int n_prompt;            /* usage */
    int n_generated;
    int n_cached;            /* prompt tokens served by the prefix cache */
    int error;               /* finish == ENG_FINISH_ERROR: why, a negative NI_E* code
                                (NI_ERANGE: no finite logit, e.g. NaN weights; NI_ENOMEM;
                                NI_EIO and others: the backend failed); else 0 */
} eng_event;

typedef void (*eng_event_fn)(void *ud, const eng_event *ev);

typedef struct eng_stats {
    kv_stats kv;
    int n_running;
    int n_waiting;
    uint64_t n_preemptions;
    uint64_t prompt_tokens;      /* prompt tokens computed (not cached) */
    uint64_t generated_tokens;
    uint64_t steps;
    uint64_t grammar_masks;      /* token masks applied (constrained requests) */
    double grammar_seconds;      /* time spent computing and applying them */
    double step_seconds;         /* wall time inside eng_step */
    double backend_seconds;      /* of which inside the backend's forward / sample /
                                  * copy_block calls: on a device backend whose forward
                                  * returns before the device is done, mostly waiting for
                                  * it; step - backend is the engine's own host work per
                                  * step (scheduling, KV bookkeeping, token handling,
                                  * events), part of it overlapping the device */
} eng_stats;

typedef struct eng_engine eng_engine;

/* Creates an engine over model m (which must outlive it) and backend be.
 * Sizes and allocates the KV pool, logits and scratch buffers once; the
 * backend gets c's settings, completed from the environment by
 * eng_backend_config_env. Returns 0 or a negative NI_E* code with a message
 * (NI_EINVAL naming the variable for a bad NI_CUDA_* value). */
int eng_init(eng_engine **out, const mdl_model *m, const eng_backend *be, const eng_config *c,
             eng_event_fn fn, void *ud, char *err, size_t errlen);

/* Frees the engine; outstanding requests are dropped without events. */
void eng_free(eng_engine *e);

/* Why eng_add refused a request, as data: front ends map code and param to
 * their own error shapes (HTTP 400 with "param"), never by parsing msg. */
typedef struct eng_error {
    int code;       /* 0 or a negative NI_E* code */
    char param[32]; /* the request field at fault ("n", "stop", "top_p", ...); "" when the
                     * request as a whole is refused (context or KV pool too small) */
    char msg[256];  /* one line for people, starting with "param: " when param is set */
} eng_error;

/* Queues a request (any thread). Validates it first: returns NI_EINVAL with
 * err->param naming the parameter, NI_ERANGE when it can never fit (prompt +
 * max_tokens over the context or the KV pool), NI_ENOMEM. Returns 0 when
 * queued (err then has code 0 and empty strings). err may be NULL. */
int eng_add(eng_engine *e, const eng_request *r, eng_error *err);

/* Requests an abort (any thread); the request finishes with ENG_FINISH_ABORT
 * and its blocks are freed within the next eng_step, however many aborts are
 * pending. Unknown ids are ignored. Allocates nothing, so it cannot fail. */
void eng_abort(eng_engine *e, uint64_t id);

/* Runs one scheduling iteration on the driving thread (forward + sampling).
 * Returns the number of live requests after the step (0 = idle), or a
 * negative code on a backend failure (affected requests get ERROR events).
 * Failure policy: NI_EIO from the backend (forward, copy_block, sample) is
 * fatal - the device is lost - and sticks (eng_fatal_error): from then on
 * every step ends all live requests with it without calling the backend,
 * and returns it. Any other code (NI_ENOMEM, NI_EINVAL, NI_ERANGE) fails
 * the requests of that batch and the engine goes on. */
int eng_step(eng_engine *e);

/* The fatal backend error (NI_EIO) that made the engine unusable, or 0
 * (driving thread). A front end should report it and restart the process. */
int eng_fatal_error(const eng_engine *e);

/* Blocks (up to timeout_ms) until the inbox is non-empty; for an idle engine thread. */
void eng_wait_work(eng_engine *e, int timeout_ms);

void eng_get_stats(eng_engine *e, eng_stats *st);
const mdl_model *eng_model(const eng_engine *e);

/* What the backend holds (weight format in use, bytes of weights / KV /
 * work buffers, threads). Returns 0, or NI_EUNSUPPORTED when the backend
 * does not report it (*out then zeroed, quant = the format asked for). */
int eng_backend_info_get(const eng_engine *e, eng_backend_info *out);

/* One line for the load report: "cpu, 2 threads, weights q4 71.3 MiB (model
 * arena 513.0 MiB), KV pool 1024.0 MiB, work 9.1 MiB" (what the backend
 * reports; the backend name and weight format at least). Returns buf. */
const char *eng_describe(const eng_engine *e, char *buf, size_t cap);
int eng_max_seq_len(const eng_engine *e);

#endif
