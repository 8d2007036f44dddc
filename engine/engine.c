/*
 * engine.c - scheduler and sequences (see engine.h). What a sampled token
 * means for the output (finish reasons, stop strings, which text may be
 * shown) is stop.c's; this file feeds it each token and its decoded text and
 * emits the event.
 *
 * Data layout: every live request owns 1..n sequences (eng_seq). A sequence
 * is in exactly one of two intrusive lists, `waiting` (FCFS, preempted ones
 * re-enter at the front) or `running` (admission order, so the tail is the
 * most recently admitted and the first to be preempted), until it finishes
 * and is freed. A sequence's token array holds prompt + generated tokens;
 * kv.n_computed says how many have KV in the cache, so "prefill", "decode"
 * and "recompute after preemption" are the same operation: feed
 * tokens[n_computed .. n_tokens) in chunks and sample when the last one is fed.
 *
 * Memory: the batch arrays, logits, table rows, sampler scratch and the
 * decode buffer are sized from the config at eng_init; a step allocates
 * nothing. Per request allocations (token array, sampler table; the stop
 * conditions and held text are fixed-size parts of the request and sequence
 * structs) happen when the request is queued or forked, not per token.
 */
#include "engine.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

#include "stop.h"
#include "tokenizer/tok.h"
#include "engine/util/util.h"

/* engine.h's request limits are what eng_add validates; stop.c must hold them. */
_Static_assert(ENG_MAX_STOP <= STOP_MAX_STR, "stop strings per request");
_Static_assert(ENG_MAX_STOP_LEN <= STOP_MAX_STR_LEN, "bytes per stop string");
_Static_assert(ENG_MAX_STOP_IDS <= STOP_MAX_IDS, "stop token ids per request");

/* Bytes of the decode buffer kept free by tok_stream_push for the flush that
 * may follow (tok_stream_flush needs 24). */
enum { DEC_FLUSH_ROOM = 24 };

enum { SEQ_WAITING = 0, SEQ_RUNNING = 1 };

typedef struct eng_req eng_req;

typedef struct eng_seq {
    eng_req *req;
    int index;                 /* sample index within the request */
    int state;                 /* SEQ_WAITING / SEQ_RUNNING */
    kv_seq kv;                 /* block table + n_computed */
    int32_t *tokens;           /* [cap] prompt then generated */
    int n_tokens, cap;
    int n_gen;
    smp_state smp;
    tok_stream ts;
    stop_state out;            /* decoded text not yet released */
    gr_state gs;               /* grammar state after the generated tokens (req->gm) */
    struct eng_seq *prev, *next;
} eng_seq;

struct eng_req {
    uint64_t id;
    int error;                 /* NI_E* code of an ENG_FINISH_ERROR (req_fail) */
    void *user;
    smp_params sp;
    smp_logit_bias *bias;      /* [sp.n_logit_bias] owned copy */
    int max_tokens, n;
    stop_spec stop;            /* EOS / stop ids / stop strings / limits, owned copies */
    uint64_t fallback_seed;
    int32_t *prompt;           /* [n_prompt] owned */
    int n_prompt;
    int n_cached;
    int forked;                /* n > 1: children created */
    gr_grammar *grammar;       /* owned; NULL when unconstrained */
    gr_matcher *gm;            /* over grammar, shared by the n sequences */
    int n_live;                /* sequences not finished */
    eng_seq *seqs[ENG_MAX_N];
    struct eng_req *next_live, *prev_live;
    struct eng_req *next_inbox;
    struct eng_req *next_id;   /* chain of e->by_id (under e->mu) */
    int in_index;              /* 1 while in e->by_id */
    int abort_asked;           /* eng_abort named it (under e->mu) */
    int aborting;              /* engine thread: abort_asked seen by drain_inbox */
};

/* Buckets of the id index eng_abort searches (a power of two). */
enum { ID_BUCKETS = 1024 };

typedef struct seq_list {
    eng_seq *head, *tail;
    int n;
} seq_list;

struct eng_engine {
    eng_config cfg;
    const mdl_model *m;
    const eng_backend *be;
    eng_quant quant; /* the weight format the backend was given (AUTO resolved) */
    void *bctx;
    kv_mgr *kv;
    eng_event_fn fn;
    void *ud;
    int vocab, max_seq_len, max_blocks;
    int fatal;                 /* eng_fatal_error: the sticky NI_EIO of a lost device, or 0 */
    gr_vocab *gvocab;          /* the vocabulary trie of constrained decoding */

    /* inbox (shared with other threads, under mu) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    eng_req *inbox_head, *inbox_tail;
    /* every request from eng_add until it is freed, by id: eng_abort marks
     * the request itself, so an abort needs no memory and cannot be lost */
    eng_req *by_id[ID_BUCKETS];
    int abort_pending;         /* some request has abort_asked set */

    /* engine-thread state */
    eng_req *live;             /* live requests (doubly linked) */
    int n_live;
    seq_list waiting, running;
    eng_stats st;

    /* step buffers, sized at init */
    int32_t *b_tokens;         /* [max_batched_tokens] */
    int32_t *b_start;          /* [max_num_seqs+1] */
    int32_t *b_pos0;           /* [max_num_seqs] */
    int32_t *b_tables;         /* [max_num_seqs][max_blocks] */
    uint8_t *b_want;           /* [max_num_seqs] */
    eng_seq **b_seq;           /* [max_num_seqs] sequences of the current batch; an
                                  entry is NULLed when its request ends mid-step */
    int b_n;                   /* entries of b_seq in use */
    int32_t *b_new;            /* [max_num_seqs] tokens fed per sequence */
    float *logits;             /* [max_num_seqs][vocab] */
    float *logits_tmp;         /* [vocab] per-sample copy for n > 1 */
    void *smp_scratch;         /* [smp_scratch_bytes(vocab)] */
    size_t smp_scratch_bytes;
    /* device sampling (be->sample), sized max_num_seqs * ENG_MAX_N at init */
    eng_sample_row *d_rows;    /* rows of one sample() call */
    uint32_t *d_masks;         /* [max_num_seqs][mask_words] grammar masks by batch row
                                  (be->sample_masks only) */
    int mask_words;            /* (vocab + 31) / 32 */
    eng_seq **d_seq;           /* [rows] the sequence each row samples for */
    smp_result *d_res;         /* [rows] */
    /* one token's decoded text (+ the decoder's flush), handed to stop.c.
     * tok_stream_push needs 3 * (token bytes + 8) of room, so a token over
     * 752 bytes decodes to nothing (as before, when the limit was 675..760
     * bytes depending on the text held back); no real vocabulary has one. */
    char dec[STOP_MAX_TEXT];
};

void eng_config_default(eng_config *c) {
    memset(c, 0, sizeof(*c));
    c->max_num_seqs = 256;
    c->max_batched_tokens = 2048;
    c->prefill_chunk = 512;
    c->block_size = KV_DEFAULT_BLOCK_SIZE;
    c->prefix_cache = 1;
    c->mem_util = 0.9;
    c->device_index = -1;
    c->tp = 1;
}

/* ---- lists ---- */

static void list_remove(seq_list *l, eng_seq *s) {
    if (s->prev) s->prev->next = s->next;
    else l->head = s->next;
    if (s->next) s->next->prev = s->prev;
    else l->tail = s->prev;
    s->prev = s->next = NULL;
    l->n--;
}

static void list_push_back(seq_list *l, eng_seq *s) {
    s->next = NULL;
    s->prev = l->tail;
    if (l->tail) l->tail->next = s;
    else l->head = s;
    l->tail = s;
    l->n++;
}

static void list_push_front(seq_list *l, eng_seq *s) {
    s->prev = NULL;
    s->next = l->head;
    if (l->head) l->head->prev = s;
    else l->tail = s;
    l->head = s;
    l->n++;
}

/* ---- request / sequence lifetime ---- */

static void req_free(eng_req *r) {
    if (!r) return;
    gr_matcher_free(r->gm);
    gr_grammar_free(r->grammar);
    free(r->bias);
    free(r->prompt);
    free(r);
}

/* Frees r after taking it out of the id index (any request eng_add queued). */
static void req_release(eng_engine *e, eng_req *r) {
    if (r->in_index) {
        pthread_mutex_lock(&e->mu);
        eng_req **pp = &e->by_id[r->id & (ID_BUCKETS - 1)];
        while (*pp != r) pp = &(*pp)->next_id;
        *pp = r->next_id;
        pthread_mutex_unlock(&e->mu);
    }
    req_free(r);
}

static void seq_free(eng_engine *e, eng_seq *s) {
    if (!s) return;
    kv_seq_destroy(e->kv, &s->kv);
    smp_state_free(&s->smp);
    free(s->tokens);
    free(s);
}

/* Creates a sequence with a copy of tokens[0..n); not linked anywhere. */
static eng_seq *seq_new(eng_engine *e, eng_req *r, int index, const int32_t *tokens, int n) {
    eng_seq *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->req = r;
    s->index = index;
    s->cap = r->n_prompt + r->max_tokens;
    s->tokens = malloc((size_t)s->cap * sizeof(int32_t));
    if (!s->tokens || kv_seq_init(e->kv, &s->kv) != 0) {
        free(s->tokens);
        free(s);
        return NULL;
    }
    memcpy(s->tokens, tokens, (size_t)n * sizeof(int32_t));
    s->n_tokens = n;
    if (smp_state_init(&s->smp, &r->sp, e->vocab, r->prompt, r->n_prompt, r->fallback_seed,
                       (uint32_t)index) != 0 ||
        smp_reserve(&s->smp, r->max_tokens) != 0) { /* smp_accept then cannot fail */
        seq_free(e, s);
        return NULL;
    }
    tok_stream_init(&s->ts, e->m->tok);
    stop_state_init(&s->out);
    s->gs = r->gm ? gr_matcher_start(r->gm) : GR_DEAD; /* cached since eng_add */
    r->seqs[index] = s;
    r->n_live++;
    return s;
}

static void emit(eng_engine *e, eng_seq *s, int32_t tok, const char *text, int len,
                 const smp_result *lp, int finish) {
    eng_req *r = s->req;
    eng_event ev = {.id = r->id, .user = r->user, .index = s->index, .token = tok,
                    .text = text, .text_len = len, .lp = lp, .finish = finish,
                    .n_prompt = r->n_prompt, .n_generated = s->n_gen, .n_cached = r->n_cached,
                    .error = finish == ENG_FINISH_ERROR ? (r->error ? r->error : NI_EIO) : 0};
    if (e->fn) e->fn(e->ud, &ev);
}

/* Removes s from its list and frees it; frees the request after its last sequence. */
static void seq_finish(eng_engine *e, eng_seq *s) {
    eng_req *r = s->req;
    list_remove(s->state == SEQ_RUNNING ? &e->running : &e->waiting, s);
    r->seqs[s->index] = NULL;
    seq_free(e, s);
    if (--r->n_live == 0) {
        if (r->prev_live) r->prev_live->next_live = r->next_live;
        else e->live = r->next_live;
        if (r->next_live) r->next_live->prev_live = r->prev_live;
        e->n_live--;
        req_release(e, r);
    }
}

/* Ends every sequence of r with `finish` (abort or error). */
static void req_finish_all(eng_engine *e, eng_req *r, int finish) {
    for (int i = 0; i < e->b_n; i++)
        if (e->b_seq[i] && e->b_seq[i]->req == r) e->b_seq[i] = NULL;
    int n = r->n; /* r may be freed by the last seq_finish */
    for (int i = 0; i < n; i++) {
        eng_seq *s = r->seqs[i];
        if (!s) continue;
        int last = r->n_live == 1;
        emit(e, s, -1, "", 0, NULL, finish);
        seq_finish(e, s);
        if (last) break;
    }
}

/* Ends r with ENG_FINISH_ERROR; its events carry code (the why). */
static void req_fail(eng_engine *e, eng_req *r, int code) {
    r->error = code;
    req_finish_all(e, r, ENG_FINISH_ERROR);
}

/* ---- init / add / abort ---- */

/* Builds e->gvocab: every token's bytes (special tokens: none, so never
 * admitted), the end-of-generation tokens as the grammar's end tokens. */
static int grammar_vocab(eng_engine *e) {
    const tok_tokenizer *t = e->m->tok;
    if (!t) return 0; /* no tokenizer: no constrained requests (eng_add refuses them) */
    const int n = e->vocab, nt = tok_vocab_size(t), cap = tok_max_token_bytes(t) + 1;
    int n_ends = 0, rc = NI_ENOMEM;
    char *one = malloc((size_t)cap), *data = NULL;
    const char **ptr = malloc((size_t)n * sizeof *ptr);
    size_t *lens = malloc((size_t)n * sizeof *lens), total = 0;
    int32_t *ends = malloc((size_t)n * sizeof *ends);
    if (one && ptr && lens && ends) {
        for (int i = 0; i < n; i++) { /* lengths first: the bytes go into one exact buffer */
            int k = i < nt && !tok_is_special(t, i) ? tok_token_bytes(t, i, one, (size_t)cap) : 0;
            lens[i] = k > 0 ? (size_t)k : 0;
            total += lens[i];
            if (i < nt && tok_is_eog(t, i)) ends[n_ends++] = i;
        }
        data = malloc(total + 1);
    }
    if (data) {
        size_t at = 0;
        for (int i = 0; i < n; i++) {
            ptr[i] = data + at;
            if (lens[i]) tok_token_bytes(t, i, data + at, lens[i]);
            at += lens[i];
        }
        rc = gr_vocab_new(&e->gvocab, n, ptr, lens, ends, n_ends);
    }
    free(one);
    free(data);
    free(ptr);
    free(lens);
    free(ends);
    return rc;
}

int eng_init(eng_engine **out, const mdl_model *m, const eng_backend *be, const eng_config *c,
             eng_event_fn fn, void *ud, char *err, size_t errlen) {
    *out = NULL;
    eng_config cfg = *c;
    if (cfg.max_num_seqs < 1 || cfg.max_batched_tokens < 1 || cfg.prefill_chunk < 1 ||
        cfg.block_size < 1 || cfg.block_size > 1024 || cfg.n_blocks < 0 || cfg.max_seq_len < 0)
        return ni_fail(err, errlen, NI_EINVAL, "engine: invalid configuration");
    if (cfg.tp == 0) cfg.tp = 1; /* a config not from eng_config_default */
    if (cfg.tp < 1 || cfg.tp > ENG_TP_MAX)
        return ni_fail(err, errlen, NI_EINVAL, "tensor-parallel-size %d: must be in [1, %d]",
                       cfg.tp, ENG_TP_MAX);
    if (cfg.max_seq_len == 0 || cfg.max_seq_len > m->cfg.max_seq_len)
        cfg.max_seq_len = m->cfg.max_seq_len;
    const mdl_config *mc = &m->cfg;
    size_t block_bytes = 2ull * mc->n_layers * cfg.block_size * mc->n_kv_heads * mc->head_dim * 4;
    eng_backend_config bc = {.block_size = cfg.block_size,
                             .max_batch_tokens = cfg.max_batched_tokens,
                             .max_seqs = cfg.max_num_seqs,
                             .n_threads = cfg.n_threads,
                             .quant = cfg.quant,
                             .dtype = cfg.dtype,
                             .kv_dtype = cfg.kv_dtype,
                             .device_index = cfg.device_index,
                             .graphs = cfg.graphs,
                             .att_splits = cfg.att_splits,
                             .profile = cfg.profile,
                             .tp = cfg.tp};
    if (bc.quant == ENG_QUANT_AUTO) bc.quant = be->auto_quant ? be->auto_quant(m) : ENG_QUANT_NONE;
    int rc = eng_backend_config_env(&bc, be, err, errlen); /* NI_CUDA_* fill the defaults */
    if (rc) return rc;
    if (cfg.n_blocks == 0 && be->kv_blocks_for_memory) { /* device memory decides */
        rc = be->kv_blocks_for_memory(m, &bc, cfg.mem_util > 0 ? cfg.mem_util : 0.9, &cfg.n_blocks,
                                      err, errlen);
        if (rc) return rc;
        /* more than every sequence at full context can never be used */
        long most = (long)cfg.max_num_seqs * ((cfg.max_seq_len + cfg.block_size - 1) / cfg.block_size);
        if (cfg.n_blocks > most) cfg.n_blocks = (int)most;
    }
    if (cfg.n_blocks == 0) { /* default: 1 GiB of KV, at least one full context */
        size_t nb = ((size_t)1 << 30) / block_bytes;
        size_t one = (size_t)(cfg.max_seq_len + cfg.block_size - 1) / cfg.block_size;
        cfg.n_blocks = (int)NI_MIN(NI_MAX(nb, one), (size_t)1 << 20);
    }
    eng_engine *e = calloc(1, sizeof(*e));
    if (!e) return ni_fail(err, errlen, NI_ENOMEM, "engine: out of memory");
    e->cfg = cfg;
    e->quant = bc.quant;
    e->m = m;
    e->be = be;
    e->fn = fn;
    e->ud = ud;
    e->vocab = mc->vocab_size;
    e->max_seq_len = cfg.max_seq_len;
    pthread_mutex_init(&e->mu, NULL);
    /* eng_wait_work's deadline is on the monotonic clock: a wall-clock step
     * back must not stall an idle engine (and /health with it). */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->cv, &ca);
    pthread_condattr_destroy(&ca);
    kv_config kc = {.n_blocks = cfg.n_blocks, .block_size = cfg.block_size,
                    .max_seq_len = cfg.max_seq_len, .enable_prefix_cache = cfg.prefix_cache};
    rc = kv_init(&e->kv, &kc);
    if (rc) {
        eng_free(e);
        return ni_fail(err, errlen, rc, "engine: KV block manager: %s", ni_strerror(rc));
    }
    e->max_blocks = kv_max_blocks_per_seq(e->kv);
    int S = cfg.max_num_seqs;
    e->b_tokens = malloc((size_t)cfg.max_batched_tokens * sizeof(int32_t));
    e->b_start = malloc((size_t)(S + 1) * sizeof(int32_t));
    e->b_pos0 = malloc((size_t)S * sizeof(int32_t));
    e->b_tables = malloc((size_t)S * (size_t)e->max_blocks * sizeof(int32_t));
    e->b_want = malloc((size_t)S);
    e->b_seq = malloc((size_t)S * sizeof(eng_seq *));
    e->b_new = malloc((size_t)S * sizeof(int32_t));
    e->logits = malloc((size_t)S * (size_t)e->vocab * sizeof(float));
    e->logits_tmp = malloc((size_t)e->vocab * sizeof(float));
    e->smp_scratch_bytes = smp_scratch_bytes(e->vocab);
    e->smp_scratch = malloc(e->smp_scratch_bytes);
    if (be->sample) {
        size_t R = (size_t)S * ENG_MAX_N;
        e->d_rows = malloc(R * sizeof(*e->d_rows));
        e->d_seq = malloc(R * sizeof(*e->d_seq));
        e->d_res = malloc(R * sizeof(*e->d_res));
        e->mask_words = (e->vocab + 31) / 32;
        if (be->sample_masks)
            e->d_masks = malloc((size_t)S * (size_t)e->mask_words * sizeof(uint32_t));
        if (!e->d_rows || !e->d_seq || !e->d_res || (be->sample_masks && !e->d_masks)) {
            eng_free(e);
            return ni_fail(err, errlen, NI_ENOMEM, "engine: out of memory for sampling rows");
        }
    }
    if ((rc = grammar_vocab(e))) {
        eng_free(e);
        return ni_fail(err, errlen, rc, "engine: cannot build the grammar vocabulary");
    }
    if (!e->b_tokens || !e->b_start || !e->b_pos0 || !e->b_tables || !e->b_want || !e->b_seq ||
        !e->b_new || !e->logits || !e->logits_tmp || !e->smp_scratch) {
        eng_free(e);
        return ni_fail(err, errlen, NI_ENOMEM, "engine: out of memory for step buffers");
    }
    bc.n_blocks = cfg.n_blocks;
    if ((rc = be->init(&e->bctx, m, &bc, err, errlen))) {
        eng_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

void eng_free(eng_engine *e) {
    if (!e) return;
    e->fn = NULL; /* dropped without events */
    while (e->live) req_finish_all(e, e->live, ENG_FINISH_ABORT);
    eng_req *r = e->inbox_head;
    while (r) {
        eng_req *nx = r->next_inbox;
        req_release(e, r);
        r = nx;
    }
    if (e->bctx) e->be->free(e->bctx);
    kv_free(e->kv);
    free(e->b_tokens); free(e->b_start); free(e->b_pos0); free(e->b_tables);
    free(e->b_want); free(e->b_seq); free(e->b_new); free(e->logits);
    free(e->logits_tmp); free(e->smp_scratch);
    free(e->d_rows); free(e->d_seq); free(e->d_res); free(e->d_masks);
    gr_vocab_free(e->gvocab);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

/* Fills err (when given) and returns code. param names the request field
 * at fault, or is NULL. */
static int add_fail(eng_error *err, int code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int add_fail(eng_error *err, int code, const char *param, const char *fmt, ...) {
    if (!err) return code;
    err->code = code;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

static int add_checked(eng_engine *e, const eng_request *q, gr_grammar *grammar, eng_error *err);

int eng_add(eng_engine *e, const eng_request *q, eng_error *err) {
    gr_grammar *grammar = q->grammar; /* ours from here on, whatever happens */
    int rc = add_checked(e, q, grammar, err);
    if (rc) gr_grammar_free(grammar);
    return rc;
}

static int add_checked(eng_engine *e, const eng_request *q, gr_grammar *grammar, eng_error *err) {
    if (err) memset(err, 0, sizeof *err);
    if (q->n_prompt < 1) return add_fail(err, NI_EINVAL, "prompt", "prompt: must not be empty");
    for (int i = 0; i < q->n_prompt; i++)
        if (q->prompt[i] < 0 || q->prompt[i] >= e->vocab)
            return add_fail(err, NI_EINVAL, "prompt", "prompt: token id %d out of range [0, %d)",
                           q->prompt[i], e->vocab);
    if (q->max_tokens < 1) return add_fail(err, NI_EINVAL, "max_tokens", "max_tokens: must be >= 1");
    if (q->n < 1 || q->n > ENG_MAX_N)
        return add_fail(err, NI_EINVAL, "n", "n: must be in [1, %d]", ENG_MAX_N);
    if (q->n > e->cfg.max_num_seqs)
        return add_fail(err, NI_EINVAL, "n", "n: larger than --max-num-seqs (%d)",
                       e->cfg.max_num_seqs);
    if (q->n_stop < 0 || q->n_stop > ENG_MAX_STOP)
        return add_fail(err, NI_EINVAL, "stop", "stop: at most %d stop strings", ENG_MAX_STOP);
    for (int i = 0; i < q->n_stop; i++) {
        size_t l = q->stop[i] ? strlen(q->stop[i]) : 0;
        if (l < 1 || l > ENG_MAX_STOP_LEN)
            return add_fail(err, NI_EINVAL, "stop", "stop: each string must have 1..%d bytes",
                           ENG_MAX_STOP_LEN);
    }
    if (q->n_stop_ids < 0 || q->n_stop_ids > ENG_MAX_STOP_IDS)
        return add_fail(err, NI_EINVAL, "stop_token_ids", "stop_token_ids: at most %d", ENG_MAX_STOP_IDS);
    for (int i = 0; i < q->n_stop_ids; i++)
        if (q->stop_ids[i] < 0 || q->stop_ids[i] >= e->vocab)
            return add_fail(err, NI_EINVAL, "stop_token_ids", "stop_token_ids: id out of range");
    const char *bad = NULL;
    if (smp_params_validate(&q->sp, e->vocab, &bad))
        return add_fail(err, NI_EINVAL, bad ? bad : "sampling", "%s: out of range",
                        bad ? bad : "sampling");
    long need = (long)q->n_prompt + q->max_tokens;
    if (need > e->max_seq_len)
        return add_fail(err, NI_ERANGE, NULL,
                       "prompt (%d tokens) + max_tokens (%d) exceeds the context length (%d)",
                       q->n_prompt, q->max_tokens, e->max_seq_len);
    long blocks = (need + e->cfg.block_size - 1) / e->cfg.block_size;
    if (blocks > e->cfg.n_blocks)
        return add_fail(err, NI_ERANGE, NULL,
                       "prompt + max_tokens (%ld tokens) can never fit the KV pool (%d tokens)",
                       need, e->cfg.n_blocks * e->cfg.block_size);

    if (grammar && !e->gvocab)
        return add_fail(err, NI_EUNSUPPORTED, "response_format",
                        "response_format: the model has no tokenizer to constrain");
    eng_req *r = calloc(1, sizeof(*r));
    if (!r) return add_fail(err, NI_ENOMEM, NULL, "out of memory");
    if (grammar) { /* the matcher and its start state, made here: nothing to fail later */
        if (gr_matcher_new(&r->gm, grammar, e->gvocab, 0) != 0 ||
            gr_matcher_start(r->gm) == GR_ERROR) {
            req_free(r);
            return add_fail(err, NI_ENOMEM, NULL, "out of memory for the grammar");
        }
    }
    r->id = q->id;
    r->user = q->user;
    r->sp = q->sp;
    r->max_tokens = q->max_tokens;
    r->n = q->n;
    if (stop_spec_init(&r->stop, q->max_tokens, e->max_seq_len, q->ignore_eos, q->stop_ids,
                       q->n_stop_ids, q->stop, q->n_stop) != 0) { /* validated above */
        req_free(r);
        return add_fail(err, NI_EINVAL, "stop", "stop: invalid stop conditions");
    }
    r->fallback_seed = q->fallback_seed;
    r->n_prompt = q->n_prompt;
    r->prompt = malloc((size_t)q->n_prompt * sizeof(int32_t));
    int ok = r->prompt != NULL;
    if (ok) memcpy(r->prompt, q->prompt, (size_t)q->n_prompt * sizeof(int32_t));
    if (ok && q->sp.n_logit_bias > 0) {
        r->bias = malloc((size_t)q->sp.n_logit_bias * sizeof(smp_logit_bias));
        ok = r->bias != NULL;
        if (ok) memcpy(r->bias, q->sp.logit_bias, (size_t)q->sp.n_logit_bias * sizeof(*r->bias));
        r->sp.logit_bias = r->bias;
    }
    if (!ok) {
        req_free(r);
        return add_fail(err, NI_ENOMEM, NULL, "out of memory");
    }
    r->grammar = grammar; /* freed with r from now on (eng_add frees it before) */
    pthread_mutex_lock(&e->mu);
    if (e->inbox_tail) e->inbox_tail->next_inbox = r;
    else e->inbox_head = r;
    e->inbox_tail = r;
    eng_req **b = &e->by_id[r->id & (ID_BUCKETS - 1)];
    r->next_id = *b;
    *b = r;
    r->in_index = 1;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

void eng_abort(eng_engine *e, uint64_t id) {
    pthread_mutex_lock(&e->mu);
    for (eng_req *r = e->by_id[id & (ID_BUCKETS - 1)]; r; r = r->next_id)
        if (r->id == id) {
            r->abort_asked = 1;
            e->abort_pending = 1;
            pthread_cond_signal(&e->cv);
            break;
        }
    pthread_mutex_unlock(&e->mu);
}

void eng_wait_work(eng_engine *e, int timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock e->cv waits on */
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&e->mu);
    if (!e->inbox_head && !e->abort_pending) pthread_cond_timedwait(&e->cv, &e->mu, &ts);
    pthread_mutex_unlock(&e->mu);
}

/* ---- inbox drain ---- */

static void drain_inbox(eng_engine *e) {
    pthread_mutex_lock(&e->mu);
    eng_req *r = e->inbox_head;
    e->inbox_head = e->inbox_tail = NULL;
    const int aborts = e->abort_pending;
    e->abort_pending = 0;
    pthread_mutex_unlock(&e->mu);

    while (r) {
        eng_req *nx = r->next_inbox;
        r->next_inbox = NULL;
        r->next_live = e->live;
        r->prev_live = NULL;
        if (e->live) e->live->prev_live = r;
        e->live = r;
        e->n_live++;
        eng_seq *s = seq_new(e, r, 0, r->prompt, r->n_prompt);
        if (!s) {
            /* Out of memory for this request: report it as an error. */
            eng_seq tmp = {.req = r, .index = 0};
            r->error = NI_ENOMEM;
            emit(e, &tmp, -1, "", 0, NULL, ENG_FINISH_ERROR);
            if (r->prev_live) r->prev_live->next_live = r->next_live;
            else e->live = r->next_live;
            if (r->next_live) r->next_live->prev_live = r->prev_live;
            e->n_live--;
            req_release(e, r);
        } else {
            s->state = SEQ_WAITING;
            list_push_back(&e->waiting, s);
        }
        r = nx;
    }
    if (!aborts) return;
    /* every request asked to abort, the ones just queued included: marked
     * under the lock, ended outside it (seq_finish takes it to unindex) */
    pthread_mutex_lock(&e->mu);
    for (eng_req *q = e->live; q; q = q->next_live) q->aborting = q->abort_asked;
    pthread_mutex_unlock(&e->mu);
    for (eng_req *q = e->live, *nx; q; q = nx) {
        nx = q->next_live;
        if (q->aborting) req_finish_all(e, q, ENG_FINISH_ABORT);
    }
}

/* ---- output ---- */

static int finish_of(stop_reason why) {
    switch (why) {
    case STOP_REASON_STOP:
        return ENG_FINISH_STOP;
    case STOP_REASON_LENGTH:
        return ENG_FINISH_LENGTH;
    case STOP_REASON_NONE:
        break;
    }
    return ENG_FINISH_NONE;
}

/* Appends the sampled token to s, lets stop.c decide whether s finishes and
 * what text to release, and emits the event. Returns 1 when s finished (it
 * has been freed). */
static int seq_accept_token(eng_engine *e, eng_seq *s, const smp_result *res) {
    eng_req *r = s->req;
    int32_t tok = res->token;
    const smp_result *lp = r->sp.logprobs >= 0 ? res : NULL;
    NI_ASSERT(s->n_tokens < s->cap);
    if (r->gm) { /* the mask admitted tok, so only a matcher failure can stop it here */
        gr_state ns = gr_matcher_next(r->gm, s->gs, tok);
        if (ns < 0) {
            r->error = ns == GR_ERROR ? gr_matcher_error(r->gm) : NI_EINVAL;
            emit(e, s, -1, "", 0, NULL, ENG_FINISH_ERROR);
            seq_finish(e, s);
            return 1;
        }
        s->gs = ns;
    }
    s->tokens[s->n_tokens++] = tok;
    s->n_gen++;
    e->st.generated_tokens++;
    const int arc = smp_accept(&s->smp, tok); /* reserved in seq_new: 0 unless a bug */
    if (arc) {
        r->error = arc;
        emit(e, s, -1, "", 0, NULL, ENG_FINISH_ERROR);
        seq_finish(e, s);
        return 1;
    }

    const int eog = !r->stop.ignore_eos && tok_is_eog(e->m->tok, tok);
    stop_reason why = stop_check_token(&r->stop, tok, eog, s->n_gen, s->n_tokens);
    int n = 0;
    const char *text;
    int len;
    if (why != STOP_REASON_STOP) { /* EOS and stop ids are never shown */
        /* A token's text is decoded in pieces that fit e->dec: all but the
         * last go out as text-only events (token -1), so a token of any
         * length keeps its text (one of 3,000 bytes was lost whole). */
        size_t off = 0;
        int more = 1;
        while (more) {
            const int k = tok_stream_push_part(&s->ts, tok, &off, &more, e->dec,
                                               sizeof e->dec - DEC_FLUSH_ROOM);
            if (k < 0) break; /* tok was sampled from the vocab: cannot happen */
            n = k;
            if (!more) break;
            const stop_reason w =
                stop_push_text(&s->out, &r->stop, STOP_REASON_NONE, e->dec, n, &text, &len);
            n = 0;
            if (w != STOP_REASON_NONE) { /* a stop string inside the token */
                emit(e, s, tok, text, len, lp, finish_of(w));
                seq_finish(e, s);
                return 1;
            }
            if (len) emit(e, s, -1, text, len, NULL, ENG_FINISH_NONE);
        }
    }
    /* The decoder's held-back bytes go out when s ends, a hidden EOS or stop
     * id included: an incomplete character becomes U+FFFD, as in tok_decode. */
    if (why != STOP_REASON_NONE) {
        const int k = tok_stream_flush(&s->ts, e->dec + n, sizeof e->dec - (size_t)n);
        if (k > 0) n += k;
    }
    why = stop_push_text(&s->out, &r->stop, why, e->dec, n, &text, &len);
    emit(e, s, tok, text, len, lp, finish_of(why));
    if (why != STOP_REASON_NONE) {
        seq_finish(e, s);
        return 1;
    }
    return 0;
}

/* First logits of an n > 1 request: creates its n-1 siblings, sharing s's KV
 * blocks. On failure the whole request ends with an error. */
static int fork_siblings(eng_engine *e, eng_seq *s) {
    eng_req *r = s->req;
    r->forked = 1;
    for (int i = 1; i < r->n; i++) {
        eng_seq *c = seq_new(e, r, i, s->tokens, s->n_tokens);
        if (!c || kv_seq_fork(e->kv, &s->kv, &c->kv) != 0) {
            if (c) { r->seqs[i] = NULL; r->n_live--; seq_free(e, c); }
            req_fail(e, r, NI_ENOMEM);
            return NI_ENOMEM;
        }
        c->state = SEQ_RUNNING;
        list_push_back(&e->running, c);
    }
    return 0;
}

/* Device sampling works without the penalty tables and grammar masks (not
 * exported yet). */
static int needs_host_sampling(const eng_engine *e, const eng_req *r) {
    return r->sp.repetition_penalty != 1.0f || r->sp.presence_penalty != 0.0f ||
           r->sp.frequency_penalty != 0.0f || (r->gm != NULL && !e->be->sample_masks);
}

/* The grammar mask of s's state, counted and timed for eng_stats: applied to
 * the logits row (host path, logits != NULL) or copied into dst (device path:
 * the matcher's cache may reuse its slot for a sibling before be->sample).
 * Returns 0 or the matcher's NI_E* code. */
static int grammar_mask(eng_engine *e, eng_seq *s, float *logits, uint32_t *dst) {
    const double t0 = ni_now();
    const uint32_t *allow;
    int rc = gr_matcher_mask(s->req->gm, s->gs, &allow);
    if (rc) return rc;
    if (logits) gr_apply_mask(logits, e->vocab, allow);
    else memcpy(dst, allow, (size_t)e->mask_words * sizeof *dst);
    e->st.grammar_masks++;
    e->st.grammar_seconds += ni_now() - t0;
    return 0;
}

/* Samples every want_logits row of the batch on the device in one call
 * (be->sample), forking n > 1 requests first, in the same order and with the
 * same RNG draws as the host path, then accepts the tokens. */
static int sample_on_device(eng_engine *e, int nb) {
    int nr = 0;
    for (int i = 0; i < nb; i++) {
        eng_seq *s = e->b_seq[i];
        if (!e->b_want[i] || !s) continue;
        eng_req *r = s->req;
        const uint32_t *allow = NULL;
        /* The masks are computed here, after forward() returned: a device backend
         * returns from forward(logits = NULL) without waiting for the GPU, so this
         * CPU work overlaps the forward pass; be->sample then waits for both. */
        if (r->gm) {
            uint32_t *dst = e->d_masks + (size_t)i * (size_t)e->mask_words;
            int rc = grammar_mask(e, s, NULL, dst);
            if (rc) {
                req_fail(e, r, rc);
                continue;
            }
            allow = dst;
        }
        if (r->n > 1 && !r->forked) {
            if (fork_siblings(e, s)) continue;
            for (int k = 1; k < r->n; k++) {
                eng_seq *c = r->seqs[k];
                e->d_rows[nr] = (eng_sample_row){.seq = i, .p = &r->sp,
                                                 .u = smp_next_uniform(&c->smp), .allow = allow};
                e->d_seq[nr++] = c;
            }
        }
        e->d_rows[nr] = (eng_sample_row){.seq = i, .p = &r->sp, .u = smp_next_uniform(&s->smp),
                                         .allow = allow};
        e->d_seq[nr++] = s;
    }
    if (nr == 0) return 0;
    const double t0 = ni_now();
    int rc = e->be->sample(e->bctx, e->d_rows, nr, e->d_res);
    e->st.backend_seconds += ni_now() - t0;
    for (int k = 0; k < nr; k++) {
        eng_seq *s = e->d_seq[k];
        if (!s) continue;
        if (rc == 0 && e->d_res[k].token >= 0) {
            seq_accept_token(e, s, &e->d_res[k]);
            continue;
        }
        eng_req *r = s->req; /* error: end the request, forget its other rows */
        for (int j = k; j < nr; j++)
            if (e->d_seq[j] && e->d_seq[j]->req == r) e->d_seq[j] = NULL;
        req_fail(e, r, rc ? rc : NI_ERANGE); /* token -1: no finite logit */
    }
    return rc;
}

/* Samples the next token(s) of s from logits (one row, modified). Forks the
 * n-1 siblings first when s is the unforked first sequence of an n > 1 request. */
static int sample_seq(eng_engine *e, eng_seq *s, float *logits) {
    eng_req *r = s->req;
    smp_result res;
    if (r->gm) { /* siblings not forked yet share s's state (the start) */
        int rc = grammar_mask(e, s, logits, NULL);
        if (rc) {
            req_fail(e, r, rc);
            return rc;
        }
    }
    if (r->n > 1 && !r->forked) {
        int rc = fork_siblings(e, s);
        if (rc) return rc;
        for (int i = 1; i < r->n; i++) {
            eng_seq *c = r->seqs[i];
            memcpy(e->logits_tmp, logits, (size_t)e->vocab * sizeof(float));
            if (smp_sample(&c->smp, &r->sp, e->logits_tmp, e->vocab, e->smp_scratch,
                           e->smp_scratch_bytes, &res) != 0) {
                req_fail(e, r, NI_ERANGE);
                return NI_ERANGE;
            }
            seq_accept_token(e, c, &res);
        }
    }
    if (smp_sample(&s->smp, &r->sp, logits, e->vocab, e->smp_scratch, e->smp_scratch_bytes,
                   &res) != 0) {
        req_fail(e, r, NI_ERANGE);
        return NI_ERANGE;
    }
    seq_accept_token(e, s, &res);
    return 0;
}

/* ---- scheduling ---- */

static void preempt(eng_engine *e, eng_seq *s) {
    list_remove(&e->running, s);
    kv_seq_reset(e->kv, &s->kv);
    s->state = SEQ_WAITING;
    list_push_front(&e->waiting, s);
    e->st.n_preemptions++;
}

static void batch_add(eng_engine *e, int *nb, int *nt, eng_seq *s, int n_new) {
    int i = (*nb)++;
    int c0 = s->kv.n_computed;
    e->b_seq[i] = s;
    e->b_new[i] = n_new;
    e->b_pos0[i] = c0;
    e->b_start[i] = *nt;
    memcpy(e->b_tokens + *nt, s->tokens + c0, (size_t)n_new * sizeof(int32_t));
    *nt += n_new;
    e->b_start[i + 1] = *nt;
    memcpy(e->b_tables + (size_t)i * e->max_blocks, s->kv.table,
           (size_t)s->kv.n_blocks * sizeof(int32_t));
    e->b_want[i] = (uint8_t)(c0 + n_new == s->n_tokens);
}

/* Ends every request with a row in the current batch (e->b_n rows) with
 * ENG_FINISH_ERROR, empties the batch and returns rc (a backend failure).
 * NI_EIO means the device is gone (engine.h's policy): it sticks, and every
 * live request ends with it, not only the batch's. */
static int fail_batch(eng_engine *e, int rc) {
    for (int i = 0; i < e->b_n; i++)
        if (e->b_seq[i]) req_fail(e, e->b_seq[i]->req, rc);
    e->b_n = 0;
    if (rc == NI_EIO) {
        e->fatal = rc;
        while (e->live) req_fail(e, e->live, rc);
    }
    return rc;
}

int eng_fatal_error(const eng_engine *e) { return e->fatal; }

static int step_once(eng_engine *e);

int eng_step(eng_engine *e) {
    const double t0 = ni_now();
    const int rc = step_once(e);
    e->st.step_seconds += ni_now() - t0;
    return rc;
}

/* eng_step's work (eng_step adds its wall time to the stats). */
static int step_once(eng_engine *e) {
    drain_inbox(e);
    if (e->fatal) { /* the backend is not called again */
        while (e->live) req_fail(e, e->live, e->fatal);
        return e->fatal;
    }
    const eng_config *c = &e->cfg;
    int budget = c->max_batched_tokens, nb = 0, nt = 0;

    /* 1. running sequences, oldest first */
    for (eng_seq *s = e->running.head; s && budget > 0 && nb < c->max_num_seqs;) {
        int n_new = NI_MIN(NI_MIN(s->n_tokens - s->kv.n_computed, c->prefill_chunk), budget);
        int target = s->kv.n_computed + n_new, self_preempted = 0;
        while (!kv_can_reserve(e->kv, &s->kv, target)) {
            eng_seq *victim = e->running.tail;
            if (victim == s) {
                preempt(e, s);
                self_preempted = 1;
                break;
            }
            preempt(e, victim);
        }
        if (self_preempted) break; /* s was the newest: nothing after it */
        kv_copy cow;
        if (kv_seq_reserve(e->kv, &s->kv, target, &cow) != 0) break;
        if (cow.src >= 0) {
            const double t0 = ni_now();
            const int rc = e->be->copy_block(e->bctx, cow.src, cow.dst);
            e->st.backend_seconds += ni_now() - t0;
            if (rc) { /* a device error: end s and everything batched so far */
                e->b_n = nb;
                req_fail(e, s->req, rc); /* clears its batch rows */
                return fail_batch(e, rc);
            }
        }
        batch_add(e, &nb, &nt, s, n_new);
        budget -= n_new;
        s = s->next;
    }

    /* 2. admit waiting sequences, FCFS */
    while (e->waiting.head && budget > 0 && nb < c->max_num_seqs &&
           e->running.n < c->max_num_seqs) {
        eng_seq *w = e->waiting.head;
        if (w->req->n > 1 && !w->req->forked && e->running.n + w->req->n > c->max_num_seqs &&
            e->running.n > 0)
            break; /* keep room for its siblings */
        if (!kv_can_alloc_prompt(e->kv, w->tokens, w->n_tokens)) break;
        int n_cached = 0;
        if (kv_seq_alloc_prompt(e->kv, &w->kv, w->tokens, w->n_tokens, &n_cached) != 0) break;
        if (w->index == 0 && w->n_gen == 0) w->req->n_cached = n_cached;
        list_remove(&e->waiting, w);
        w->state = SEQ_RUNNING;
        list_push_back(&e->running, w);
        int n_new = NI_MIN(NI_MIN(w->n_tokens - n_cached, c->prefill_chunk), budget);
        batch_add(e, &nb, &nt, w, n_new);
        budget -= n_new;
    }
    e->b_n = nb;
    if (nb == 0) return e->n_live;

    eng_batch b = {.n_seqs = nb, .n_tokens = nt, .tokens = e->b_tokens,
                   .seq_start = e->b_start, .pos0 = e->b_pos0, .block_tables = e->b_tables,
                   .max_blocks = e->max_blocks, .want_logits = e->b_want};
    int on_device = e->be->sample != NULL;
    for (int i = 0; i < nb && on_device; i++)
        if (e->b_want[i] && e->b_seq[i] && needs_host_sampling(e, e->b_seq[i]->req)) on_device = 0;
    const double t0 = ni_now();
    int rc = e->be->forward(e->bctx, &b, on_device ? NULL : e->logits);
    e->st.backend_seconds += ni_now() - t0;
    e->st.steps++;
    if (rc) return fail_batch(e, rc);
    /* Commit KV first for the whole batch (so forks see committed state), then sample. */
    for (int i = 0; i < nb; i++) {
        eng_seq *s = e->b_seq[i];
        if (!s) continue; /* ended by a failed commit of a sibling */
        int n = s->kv.n_computed + e->b_new[i];
        if (s->n_gen == 0) e->st.prompt_tokens += (uint64_t)e->b_new[i];
        const int crc = kv_seq_commit(e->kv, &s->kv, s->tokens, n);
        if (crc) { /* broken KV invariant: this request cannot go on */
            req_fail(e, s->req, crc);
            if (!rc) rc = crc;
        }
    }
    if (on_device) {
        const int src = sample_on_device(e, nb); /* ends the requests it fails */
        if (src == NI_EIO) return fail_batch(e, src); /* the rest of the batch too */
        if (src && !rc) rc = src;
    } else {
        for (int i = 0; i < nb; i++)
            if (e->b_want[i] && e->b_seq[i])
                sample_seq(e, e->b_seq[i], e->logits + (size_t)i * e->vocab);
    }
    e->b_n = 0;
    return rc ? rc : e->n_live;
}

void eng_get_stats(eng_engine *e, eng_stats *st) {
    *st = e->st;
    kv_get_stats(e->kv, &st->kv);
    st->n_running = e->running.n;
    st->n_waiting = e->waiting.n;
}

const mdl_model *eng_model(const eng_engine *e) { return e->m; }

const char *eng_describe(const eng_engine *e, char *buf, size_t cap) {
    eng_backend_info in;
    const double mib = 1.0 / (1 << 20);
    if (eng_backend_info_get(e, &in)) {
        snprintf(buf, cap, "%s, weights %s", e->be->name, eng_quant_name(in.quant));
        return buf;
    }
    char thr[64] = "";
    if (in.n_threads > 0) snprintf(thr, sizeof thr, ", %d threads", in.n_threads);
    if (in.tp > 1)
        snprintf(thr + strlen(thr), sizeof thr - strlen(thr), ", tensor-parallel %d", in.tp);
    const size_t arena = e->m->w.arena_floats * sizeof(float);
    char model[64] = "";
    if (in.weight_bytes != arena)
        snprintf(model, sizeof model, " (model arena %.1f MiB)", (double)arena * mib);
    snprintf(buf, cap, "%s%s, weights %s %.1f MiB%s, KV pool %.1f MiB, work %.1f MiB", e->be->name,
             thr, eng_quant_name(in.quant), (double)in.weight_bytes * mib, model,
             (double)in.kv_bytes * mib, (double)in.work_bytes * mib);
    return buf;
}

int eng_backend_info_get(const eng_engine *e, eng_backend_info *out) {
    memset(out, 0, sizeof *out);
    out->quant = e->quant;
    return e->be->info ? e->be->info(e->bctx, out) : NI_EUNSUPPORTED;
}
int eng_max_seq_len(const eng_engine *e) { return e->max_seq_len; }
