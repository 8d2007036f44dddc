/*
 * cpu_backend.c - eng_backend_cpu: the FP32 reference forward pass for
 * LLaMA-family models (llama 2/3, SmolLM2, qwen3) over a paged KV cache.
 *
 * Design: the backend reads the model's FP32 weights in place (no copy; the
 * model must outlive it). init makes every allocation the backend will ever
 * need: one KV pool, one arena of work buffers sized for max_batch_tokens /
 * max_seqs, per-thread attention scratch, and the RoPE cos/sin tables;
 * forward allocates nothing. A forward call processes all tokens of all
 * sequences of the batch together, so every projection is one sgemm over the
 * whole batch (decode of many sequences batches into sgemm too):
 *
 *   x = embed(tokens)
 *   per layer: xb = rmsnorm(x); q,k,v = xb Wq^T, xb Wk^T, xb Wv^T
 *              (qwen3: per-head rmsnorm of q, k); rope(q, k) at each position;
 *              store k, v in the pool; att = causal GQA attention;
 *              x += att Wo^T  (residual fused as sgemm beta = 1)
 *              xb = rmsnorm(x); g = silu(xb Wg^T) * (xb Wu^T); x += g Wd^T
 *   logits: gather the last row of every sequence that wants logits,
 *           rmsnorm, one sgemm against the LM head.
 *
 * KV pool layout: [n_layers][2 (K, V)][n_blocks][block_size][kv_dim], one
 * calloc (pages are touched lazily). Bytes per block over all layers:
 * 2 * n_layers * block_size * n_kv_heads * head_dim * 4.
 *
 * Invariants: positions are < max_pos = min(cfg.max_seq_len (if > 0),
 * n_blocks * block_size); forward validates every batch field that could make
 * it index out of bounds and returns NI_EINVAL instead.
 *
 * Threads: one cpu_pool of n_threads (0 = every core the process may use,
 * the engine thread included) runs each forward call as ONE task: every
 * thread walks all layers, computing its part of each step (cpu_part: rows,
 * output columns or attention units), with cpu_pool_barrier between
 * dependent steps (~8 per layer). One hand-off per forward instead of a
 * wake-up per op; workers spin briefly after a forward and then sleep, so an
 * idle server costs no CPU. Matmul slices are single-threaded OpenBLAS calls
 * (openblas_set_num_threads(1), process wide, at init and at each forward):
 * OpenBLAS's own pthread pool stays idle, so two spinning pools never fight
 * over the cores. Every part computes fixed slices with the same arithmetic,
 * so results do not depend on the thread count.
 *
 * Speed depends a lot on the kernels OpenBLAS picks at load time: see
 * cpu_blas_core() in cpu_ops.h (OPENBLAS_CORETYPE).
 *
 * Quantized weights (config quant = 1: int8; quant = 2: 4-bit Q4_1-style
 * layers with an int8 LM head; cpu_q8.h): init also quantizes every
 * projection into backend-owned copies (the model's FP32 weights stay
 * untouched): per layer Wq|Wk|Wv stacked into one matrix, Wo, Wgate|Wup
 * stacked, Wdown, and the LM head (tok_embd when tied). Each projection's
 * input is quantized once per call (blocks of 32, into one activation buffer
 * sized at init) and the parts of one step compute every output row of the
 * stacked matrix, writing each row range straight into q/k/v (gate/up). The
 * int8 products are bit-for-bit independent of the batch composition, the
 * thread count and the SIMD path, for decode and prefill alike; embedding,
 * norms, RoPE, attention and the KV cache stay FP32.
 *
 * Tensor parallelism (config tp = N > 1, --tensor-parallel-size; FP32
 * weights only, the int8 / 4-bit paths refuse it): the Megatron sharding of
 * engine/backend/tp.h over N ranks that run inside this one forward task
 * (forward_part_tp). Each rank reads views of the model's arena (cpu_tp.h),
 * computes its query / KV heads and FFN columns into rank-local buffers and
 * its own KV planes, and its partial wo / w_down outputs are all-reduced in
 * rank order into the residual stream; the embedding and the LM head are
 * split by vocabulary. The KV pool is then [N][n_layers][2][n_blocks]
 * [block_size][kv_dim / N] (same bytes, same block ids on every rank).
 * tp = 1 is forward_part, untouched.
 */
#include <cblas.h>
#include <stdint.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "engine/backend/twins.h"
#include "cpu_ops.h"
#include "cpu_q8.h"
#include "cpu_tp.h"
#include "engine/format/gguf.h"
#include "engine/util/util.h"

/* Vocabulary columns per LM-head sgemm when logits rows must be scattered. */
#define LM_CHUNK 4096

/* Quantized copies of one layer's projections (quant = 1: int8, 2: 4-bit). */
typedef struct cpu_q8_layer {
    cpu_q8_mat qkv;     /* [q_dim + 2 * kv_dim][dim]: Wq, Wk, Wv stacked */
    cpu_q8_mat o;       /* [dim][q_dim] */
    cpu_q8_mat gate_up; /* [2 * hidden_dim][dim]: Wgate, Wup stacked */
    cpu_q8_mat down;    /* [dim][hidden_dim] */
} cpu_q8_layer;

/* One tensor-parallel rank (tp > 1): its shard, its KV planes and its
 * activations (pieces of the work arena). */
typedef struct cpu_rank {
    eng_tp_shard s;
    float *kv;        /* [n_layers][2][n_blocks][block_size][s.kv_dim] */
    float *q;         /* [max_batch_tokens][s.q_dim] */
    float *k, *v;     /* [max_batch_tokens][s.kv_dim] */
    float *att;       /* [max_batch_tokens][s.q_dim] attention output of its heads */
    float *gate, *up; /* [max_batch_tokens][s.ff_dim] */
    float *part;      /* [max_batch_tokens][dim] partial output of wo, then of w_down */
} cpu_rank;

typedef struct cpu_ctx {
    const mdl_model *m;
    mdl_config c;
    int n_blocks, block_size, max_batch_tokens, max_seqs, n_threads;
    cpu_pool *pool;         /* n_threads threads (the engine thread included) */
    int max_pos;            /* positions [0, max_pos) are allowed */
    int q_dim;              /* n_heads * head_dim */
    int kv_dim;             /* n_kv_heads * head_dim */
    int plane_kv_dim;       /* kv_dim / tp: channels of one rank's KV planes */
    size_t layer_kv_floats; /* n_blocks * block_size * plane_kv_dim: K (or V) of one layer */
    size_t block_floats;    /* block_size * plane_kv_dim */
    float *kv_pool;         /* [tp][n_layers][2][n_blocks][block_size][plane_kv_dim] */
    cpu_rope rope;          /* cos/sin [max_pos][head_dim/2] */

    size_t work_bytes;         /* bytes of the arena below */
    float *arena;              /* one allocation holding every buffer below */
    float *x;                  /* [max_batch_tokens][dim] residual stream */
    float *xb;                 /* [max_batch_tokens][dim] normed input of a sublayer */
    float *q;                  /* [max_batch_tokens][q_dim] (q .. up: tp = 1 only) */
    float *k;                  /* [max_batch_tokens][kv_dim] */
    float *v;                  /* [max_batch_tokens][kv_dim] */
    float *att;                /* [max_batch_tokens][q_dim] attention output */
    float *gate;               /* [max_batch_tokens][hidden_dim] gate, then swiglu */
    float *up;                 /* [max_batch_tokens][hidden_dim] */
    float *xl;                 /* [max_seqs][dim] last rows of sequences wanting logits */
    float *lbuf;               /* [max_seqs][lm_chunk] logits staging for scattered rows */
    int lm_chunk;              /* min(vocab_size, LM_CHUNK) */
    float *scratch;            /* [n_threads][scratch_per_thread] attention scores */
    size_t scratch_per_thread; /* cpu_attention_scratch(..., max_pos) */
    int32_t *tok_pos;          /* [max_batch_tokens] position of each batch token */
    int32_t *tok_seq;          /* [max_batch_tokens] sequence of each batch token */
    int32_t *lm_seq;           /* [max_seqs] sequences wanting logits, ascending */

    int tp;              /* tensor-parallel ranks (1: the unsharded forward_part) */
    eng_tp_plan plan;    /* their shards (engine/backend/tp.h) */
    cpu_rank *ranks;     /* [tp] (tp > 1) */
    cpu_tp_layer *tpl;   /* [n_layers][tp] weight views (tp > 1) */
    const float **parts; /* [tp] ranks[r].part, for the all-reduce (tp > 1) */

    int quant;        /* 0: FP32 weights; 1: int8 copies below; 2: 4-bit layers */
    cpu_q8_layer *ql; /* [n_layers] (quant != 0) */
    cpu_q8_mat qlm;   /* [vocab_size][dim] int8 LM head (quant != 0) */
    cpu_q8_act qa;    /* [max(max_batch_tokens, max_seqs)][max(dim, q_dim, hidden_dim)]
                       * the quantized input of the current projection */
} cpu_ctx;

/* a * b into *out unless it overflows size_t. */
static int mul_ok(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static void cpu_free(void *vctx) {
    cpu_ctx *x = vctx;
    if (!x) return;
    free(x->kv_pool);
    free(x->arena);
    free(x->tok_pos);
    free(x->tok_seq);
    free(x->lm_seq);
    free(x->ranks);
    free(x->tpl);
    free(x->parts);
    cpu_rope_free(&x->rope);
    if (x->ql)
        for (int l = 0; l < x->c.n_layers; l++) {
            cpu_q8_mat_free(&x->ql[l].qkv);
            cpu_q8_mat_free(&x->ql[l].o);
            cpu_q8_mat_free(&x->ql[l].gate_up);
            cpu_q8_mat_free(&x->ql[l].down);
        }
    free(x->ql);
    cpu_q8_mat_free(&x->qlm);
    cpu_q8_act_free(&x->qa);
    cpu_pool_free(x->pool);
    free(x);
}

static int check_model(const mdl_model *m, char *err, size_t errlen) {
    const mdl_config *c = &m->cfg;
    if (c->n_layers <= 0 || c->dim <= 0 || c->hidden_dim <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->vocab_size <= 0 || c->head_dim <= 0)
        return ni_fail(err, errlen, NI_EINVAL, "cpu backend: non-positive model size");
    if (c->n_heads % c->n_kv_heads != 0)
        return ni_fail(err, errlen, NI_EINVAL,
                       "cpu backend: n_heads %d not a multiple of n_kv_heads %d", c->n_heads,
                       c->n_kv_heads);
    if (c->head_dim % 2 != 0)
        return ni_fail(err, errlen, NI_EINVAL, "cpu backend: odd head_dim %d", c->head_dim);
    if (!(c->rope_theta > 0.0f))
        return ni_fail(err, errlen, NI_EINVAL, "cpu backend: rope_theta must be positive");
    if (c->rope_scaling == MDL_ROPE_LLAMA3 &&
        !(c->rope_factor > 0.0f && c->rope_low_freq_factor > 0.0f &&
          c->rope_high_freq_factor > 0.0f && c->rope_orig_max_pos > 0))
        return ni_fail(err, errlen, NI_EINVAL, "cpu backend: bad llama3 rope scaling parameters");
    const mdl_weights *w = &m->w;
    if (!w->tok_embd || !w->out_norm || !w->lm_head || !w->layers)
        return ni_fail(err, errlen, NI_EINVAL, "cpu backend: model weights missing");
    for (int l = 0; l < c->n_layers; l++) {
        const mdl_layer *L = &w->layers[l];
        if (!L->attn_norm || !L->wq || !L->wk || !L->wv || !L->wo || !L->ffn_norm || !L->w_gate ||
            !L->w_up || !L->w_down || (c->has_qk_norm && (!L->q_norm || !L->k_norm)))
            return ni_fail(err, errlen, NI_EINVAL, "cpu backend: layer %d weights missing", l);
    }
    return 0;
}

/* One part of quantizing every projection (rows split over the pool). */
static void quantize_part(void *vctx, int ith, int nth) {
    cpu_ctx *x = vctx;
    const cpu_part pt = {ith, nth};
    const mdl_weights *w = &x->m->w;
    const int dim = x->c.dim, hid = x->c.hidden_dim, qd = x->q_dim, kvd = x->kv_dim;
    for (int l = 0; l < x->c.n_layers; l++) {
        const mdl_layer *L = &w->layers[l];
        cpu_q8_layer *Q = &x->ql[l];
        cpu_q8_mat_set_rows(pt, &Q->qkv, 0, L->wq, qd);
        cpu_q8_mat_set_rows(pt, &Q->qkv, qd, L->wk, kvd);
        cpu_q8_mat_set_rows(pt, &Q->qkv, qd + kvd, L->wv, kvd);
        cpu_q8_mat_set_rows(pt, &Q->o, 0, L->wo, dim);
        cpu_q8_mat_set_rows(pt, &Q->gate_up, 0, L->w_gate, hid);
        cpu_q8_mat_set_rows(pt, &Q->gate_up, hid, L->w_up, hid);
        cpu_q8_mat_set_rows(pt, &Q->down, 0, L->w_down, dim);
    }
    cpu_q8_mat_set_rows(pt, &x->qlm, 0, w->lm_head, x->c.vocab_size);
}

/* quant = 1 or 2: the quantized copies of every projection (int8, or 4-bit
 * for the layers when quant = 2; the LM head is int8 in both) and the
 * activation buffer. Returns 0 or NI_ENOMEM with a message. */
static int init_q8(cpu_ctx *x, int quant, char *err, size_t errlen) {
    const mdl_config *c = &x->c;
    const int dim = c->dim, hid = c->hidden_dim, qd = x->q_dim, kvd = x->kv_dim;
    const int bits = quant == 2 ? 4 : 8;
    x->quant = quant;
    x->ql = calloc((size_t)c->n_layers, sizeof(*x->ql));
    if (!x->ql) return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: out of memory");
    for (int l = 0; l < c->n_layers; l++) {
        cpu_q8_layer *Q = &x->ql[l];
        if (cpu_q8_mat_init(&Q->qkv, qd + 2 * kvd, dim, bits) ||
            cpu_q8_mat_init(&Q->o, dim, qd, bits) ||
            cpu_q8_mat_init(&Q->gate_up, 2 * hid, dim, bits) ||
            cpu_q8_mat_init(&Q->down, dim, hid, bits))
            return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: out of memory for int8 weights");
    }
    if (cpu_q8_mat_init(&x->qlm, c->vocab_size, dim, 8))
        return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: out of memory for the int8 LM head");
    cpu_pool_run(x->pool, quantize_part, x, 0);
    const int rows = NI_MAX(x->max_batch_tokens, x->max_seqs);
    if (cpu_q8_act_init(&x->qa, rows, NI_MAX(dim, NI_MAX(qd, hid))))
        return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: out of memory for int8 activations");
    cpu_q8_select();
    return 0;
}

/* n floats of the arena at base + *off (NULL when base is NULL: measuring),
 * *off advanced by whole 64-byte lines. */
static float *carve(float *base, size_t *off, size_t n) {
    float *p = base ? base + *off : NULL;
    *off += (n + 15) & ~(size_t)15;
    return p;
}

/* Places every work buffer in the arena at base (NULL: only measures it);
 * returns the floats it takes. tp = 1 takes the buffers of the unsharded
 * pass; tp > 1 the ranks' own instead of q .. up. */
static size_t layout_work(cpu_ctx *x, float *base) {
    const size_t T = (size_t)x->max_batch_tokens, S = (size_t)x->max_seqs;
    const size_t dim = (size_t)x->c.dim, hid = (size_t)x->c.hidden_dim;
    size_t off = 0;
    x->x = carve(base, &off, T * dim);
    x->xb = carve(base, &off, T * dim);
    if (x->tp == 1) {
        x->q = carve(base, &off, T * x->q_dim);
        x->k = carve(base, &off, T * x->kv_dim);
        x->v = carve(base, &off, T * x->kv_dim);
        x->att = carve(base, &off, T * x->q_dim);
        x->gate = carve(base, &off, T * hid);
        x->up = carve(base, &off, T * hid);
    }
    x->xl = carve(base, &off, S * dim);
    x->lbuf = carve(base, &off, S * x->lm_chunk);
    x->scratch = carve(base, &off, (size_t)x->n_threads * x->scratch_per_thread);
    for (int r = 0; x->tp > 1 && r < x->tp; r++) {
        cpu_rank *R = &x->ranks[r];
        R->q = carve(base, &off, T * R->s.q_dim);
        R->k = carve(base, &off, T * R->s.kv_dim);
        R->v = carve(base, &off, T * R->s.kv_dim);
        R->att = carve(base, &off, T * R->s.q_dim);
        R->gate = carve(base, &off, T * R->s.ff_dim);
        R->up = carve(base, &off, T * R->s.ff_dim);
        R->part = carve(base, &off, T * dim);
    }
    return off;
}

/* tp > 1: the ranks' shards, weight views and KV planes (pool allocated).
 * Returns 0 or NI_ENOMEM. */
static int init_ranks(cpu_ctx *x) {
    const int N = x->tp, nl = x->c.n_layers;
    x->ranks = calloc((size_t)N, sizeof *x->ranks);
    x->tpl = calloc((size_t)nl * N, sizeof *x->tpl);
    x->parts = calloc((size_t)N, sizeof *x->parts);
    if (!x->ranks || !x->tpl || !x->parts) return NI_ENOMEM;
    for (int r = 0; r < N; r++) {
        cpu_rank *R = &x->ranks[r];
        R->s = eng_tp_shard_of(&x->plan, r);
        R->kv = x->kv_pool + (size_t)r * 2 * nl * x->layer_kv_floats;
        for (int l = 0; l < nl; l++)
            x->tpl[(size_t)l * N + r] = cpu_tp_layer_view(&x->m->w.layers[l], &x->c, &R->s);
    }
    return 0;
}

static int cpu_init(void **out, const mdl_model *m, const eng_backend_config *cf, char *err,
                    size_t errlen) {
    if (!out || !m || !cf) return ni_fail(err, errlen, NI_EINVAL, "cpu backend: NULL argument");
    *out = NULL;
    int rc = check_model(m, err, errlen);
    if (rc) return rc;
    if (cf->n_blocks <= 0 || cf->block_size <= 0 || cf->max_batch_tokens <= 0 ||
        cf->max_seqs <= 0 || cf->n_threads < 0 || cf->quant < 0 || cf->quant > 2)
        return ni_fail(err, errlen, NI_EINVAL,
                       "cpu backend: bad config (n_blocks %d, block_size %d, max_batch_tokens %d, "
                       "max_seqs %d, n_threads %d, quant %d)",
                       cf->n_blocks, cf->block_size, cf->max_batch_tokens, cf->max_seqs,
                       cf->n_threads, cf->quant);
    if (cf->kv_dtype != ENG_KV_AUTO)
        return ni_fail(err, errlen, NI_EUNSUPPORTED,
                       "kv-cache-dtype %s: the CPU backend keeps its KV cache in fp32 only (use "
                       "--kv-cache-dtype auto, or --device cuda)",
                       eng_kv_dtype_name(cf->kv_dtype));
    const int tp = cf->tp == 0 ? 1 : cf->tp;
    eng_tp_plan plan;
    if ((rc = eng_tp_plan_init(&plan, &m->cfg, tp, err, errlen))) return rc;
    if (tp > 1 && cf->quant != 0)
        return ni_fail(err, errlen, NI_EUNSUPPORTED,
                       "tensor-parallel-size %d: the CPU backend shards FP32 weights only (use "
                       "--quant fp32; its int8 and q4 paths are not sharded)",
                       tp);

    cpu_ctx *x = calloc(1, sizeof(*x));
    if (!x) return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: out of memory");
    const mdl_config *c = &m->cfg;
    x->m = m;
    x->c = *c;
    x->n_blocks = cf->n_blocks;
    x->block_size = cf->block_size;
    x->max_batch_tokens = cf->max_batch_tokens;
    x->max_seqs = cf->max_seqs;
    x->tp = tp;
    x->plan = plan;
    rc = cpu_pool_init(&x->pool, cf->n_threads, 0);
    if (rc) {
        free(x);
        return ni_fail(err, errlen, rc, "cpu backend: cannot start %d compute threads",
                       cf->n_threads);
    }
    x->n_threads = cpu_pool_threads(x->pool);
    x->q_dim = c->n_heads * c->head_dim;
    x->kv_dim = c->n_kv_heads * c->head_dim;
    x->plane_kv_dim = x->kv_dim / tp;
    int64_t max_pos = (int64_t)cf->n_blocks * cf->block_size;
    if (c->max_seq_len > 0 && c->max_seq_len < max_pos) max_pos = c->max_seq_len;
    if (max_pos > INT32_MAX) max_pos = INT32_MAX;
    x->max_pos = (int)max_pos;

    /* KV pool: one allocation (tp planes of kv_dim / tp channels). */
    size_t pool = 0;
    x->block_floats = (size_t)cf->block_size * (size_t)x->plane_kv_dim;
    if (!mul_ok(x->block_floats, (size_t)cf->n_blocks, &x->layer_kv_floats) ||
        !mul_ok(x->layer_kv_floats, 2 * (size_t)c->n_layers * (size_t)tp, &pool) ||
        !mul_ok(pool, sizeof(float), &pool)) {
        cpu_free(x);
        return ni_fail(err, errlen, NI_ERANGE, "cpu backend: KV pool size overflows");
    }
    x->kv_pool = calloc(1, pool);
    if (!x->kv_pool) {
        cpu_free(x);
        return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: cannot allocate KV pool (%zu MiB)",
                       pool >> 20);
    }
    if (tp > 1 && init_ranks(x)) {
        cpu_free(x);
        return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: out of memory");
    }

    rc = cpu_rope_init(&x->rope, c, x->max_pos);
    if (rc) {
        cpu_free(x);
        return ni_fail(err, errlen, rc, "cpu backend: cannot build RoPE tables");
    }

    /* Work buffers: one arena, every piece 64-byte aligned. The ranks' G =
     * n_heads / n_kv_heads is the model's, so is their attention scratch. */
    const size_t T = (size_t)cf->max_batch_tokens, S = (size_t)cf->max_seqs;
    x->lm_chunk = NI_MIN(c->vocab_size, LM_CHUNK);
    x->scratch_per_thread =
        cpu_attention_scratch(c->n_heads, c->n_kv_heads, c->head_dim, x->max_pos);
    const size_t total = layout_work(x, NULL);
    x->work_bytes = total * sizeof(float);
    x->arena = aligned_alloc(64, total * sizeof(float));
    x->tok_pos = malloc(T * sizeof(int32_t));
    x->tok_seq = malloc(T * sizeof(int32_t));
    x->lm_seq = malloc(S * sizeof(int32_t));
    if (!x->arena || !x->tok_pos || !x->tok_seq || !x->lm_seq) {
        cpu_free(x);
        return ni_fail(err, errlen, NI_ENOMEM, "cpu backend: cannot allocate work buffers");
    }
    memset(x->arena, 0, total * sizeof(float));
    layout_work(x, x->arena);
    for (int r = 0; r < tp && tp > 1; r++) x->parts[r] = x->ranks[r].part;

    /* Matmuls are split over our pool, each slice a single-threaded BLAS
     * call: measured 2-8x faster than OpenBLAS's own (pthread) threads, whose
     * spinning workers fight ours for the cores. */
    openblas_set_num_threads(1);
    if (cf->quant != 0 && (rc = init_q8(x, cf->quant, err, errlen))) {
        cpu_free(x);
        return rc;
    }
    *out = x;
    return 0;
}

/* The shared rules of engine/backend/twins.h, plus: logits must be given
 * when any sequence wants them (this backend writes them to the host). */
static int check_batch(const cpu_ctx *x, const eng_batch *b, const float *logits) {
    const eng_batch_limits lim = {x->max_seqs, x->max_batch_tokens, x->c.vocab_size,
                                  x->max_pos,  x->block_size,       x->n_blocks};
    int rc = eng_batch_check(b, &lim);
    if (rc) return rc;
    for (int s = 0; s < b->n_seqs; s++)
        if (b->want_logits && b->want_logits[s] && !logits) return NI_EINVAL;
    return 0;
}

/* One output segment of a stacked int8 projection: `rows` consecutive rows of
 * the matrix land in y[t][0 .. rows) (row stride ld floats). */
typedef struct q8_seg {
    float *y;
    int ld;
    int rows;
} q8_seg;

/* seg outputs (+)= x->qa W^T for this part's rows of [rb, rb + sum of seg
 * rows) of w, the segments taking those rows in order: the rows are cut into
 * nth slices of whole 16-row chunks, each part computing every token of its
 * slice. */
static void q8_project(cpu_part pt, const cpu_ctx *x, const cpu_q8_mat *w, int rb,
                       const q8_seg *seg, int n_seg, int accumulate) {
    int rows = 0;
    for (int s = 0; s < n_seg; s++) rows += seg[s].rows;
    int64_t r0, r1;
    cpu_pool_range(rows, 16, pt.ith, pt.nth, &r0, &r1);
    for (int s = 0, s0 = 0; s < n_seg; s0 += seg[s].rows, s++) {
        const int a0 = NI_MAX((int)r0, s0), a1 = NI_MIN((int)r1, s0 + seg[s].rows);
        if (a1 > a0)
            cpu_q8_gemm_range(seg[s].y + (a0 - s0), seg[s].ld, &x->qa, 0, x->qa.n, w, rb + a0,
                              rb + a1, accumulate);
    }
}

/* One forward call, as one pool task. */
typedef struct fwd_job {
    cpu_ctx *x;
    const eng_batch *b;
    float *logits;
    int n_want; /* rows of x->lm_seq */
} fwd_job;

/* This part's share of vocabulary columns [va, va + nv) of the logits of
 * the n_want rows of x->xl (normed, and quantized into x->qa when x->quant),
 * written to their sequences' rows of logits: straight when the rows are one
 * contiguous run, else LM_CHUNK columns at a time through x->lbuf. lm holds
 * the LM-head rows of those columns (FP32 path). The unsharded pass asks
 * for every column ([0, vocab)); a tensor-parallel rank for its vocabulary
 * slice, which is how the logits are all-gathered. */
static void logits_part(cpu_part pt, cpu_ctx *x, float *logits, int n_want, const float *lm, int va,
                        int nv) {
    const int V = x->c.vocab_size, dim = x->c.dim;
    if (x->lm_seq[n_want - 1] - x->lm_seq[0] == n_want - 1) {
        float *y = logits + (size_t)x->lm_seq[0] * V + va;
        if (x->quant) {
            const q8_seg seg = {y, V, nv};
            q8_project(pt, x, &x->qlm, va, &seg, 1, 0);
        } else {
            cpu_matmul_ld(pt, y, V, x->xl, lm, n_want, dim, nv, 0);
        }
        return;
    }
    int r0, r1;
    cpu_part_rows(pt, n_want, &r0, &r1);
    for (int v0 = 0; v0 < nv; v0 += x->lm_chunk) {
        const int vc = NI_MIN(x->lm_chunk, nv - v0);
        if (x->quant) {
            const q8_seg seg = {x->lbuf, vc, vc};
            q8_project(pt, x, &x->qlm, va + v0, &seg, 1, 0);
        } else {
            cpu_matmul_ld(pt, x->lbuf, vc, x->xl, lm + (size_t)v0 * dim, n_want, dim, vc, 0);
        }
        cpu_pool_barrier(x->pool);
        for (int r = r0; r < r1; r++)
            memcpy(logits + (size_t)x->lm_seq[r] * V + va + v0, x->lbuf + (size_t)r * vc,
                   (size_t)vc * sizeof(float));
        cpu_pool_barrier(x->pool); /* lbuf is rewritten by the next chunk */
    }
}

/* The last row of every sequence that wants logits into x->xl, normed
 * (and quantized into x->qa when x->quant), then a barrier. */
static void logits_rows(cpu_part pt, cpu_ctx *x, const eng_batch *b, int n_want) {
    const int dim = x->c.dim;
    int r0, r1;
    cpu_part_rows(pt, n_want, &r0, &r1); /* the rows cpu_rmsnorm below takes */
    for (int r = r0; r < r1; r++)
        memcpy(x->xl + (size_t)r * dim, x->x + (size_t)(b->seq_start[x->lm_seq[r] + 1] - 1) * dim,
               (size_t)dim * sizeof(float));
    cpu_rmsnorm(pt, x->xl, x->xl, x->m->w.out_norm, n_want, dim, x->c.norm_eps);
    if (x->quant) cpu_q8_quantize_act(pt, &x->qa, x->xl, dim, n_want, dim);
    cpu_pool_barrier(x->pool);
}

/* Part ith of nth of a forward pass. Every part walks the same steps and
 * the same barriers; between two barriers a part only reads what it wrote
 * itself (steps split by the same tokens: embed -> rmsnorm -> quantize,
 * head norms -> rope -> kv_store, swiglu -> quantize) or what every part
 * finished before the last barrier. */
static void forward_part(void *vjob, int ith, int nth) {
    const fwd_job *j = vjob;
    cpu_ctx *x = j->x;
    const eng_batch *b = j->b;
    const cpu_part pt = {ith, nth};
    cpu_pool *P = x->pool;
    const mdl_config *c = &x->c;
    const mdl_weights *w = &x->m->w;
    const int n = b->n_tokens, dim = c->dim, hd = c->head_dim, hid = c->hidden_dim;
    const float eps = c->norm_eps;
    const cpu_tok_map map = {n, x->tok_pos, x->tok_seq, b->block_tables, b->max_blocks};

    cpu_embed(pt, x->x, w->tok_embd, b->tokens, n, dim);
    for (int l = 0; l < c->n_layers; l++) {
        const mdl_layer *L = &w->layers[l];
        float *kbase = x->kv_pool + (size_t)l * 2 * x->layer_kv_floats;
        const cpu_kv_layer kv = {kbase, kbase + x->layer_kv_floats, x->block_size, x->kv_dim};
        const cpu_q8_layer *Q = x->quant ? &x->ql[l] : NULL;

        cpu_rmsnorm(pt, x->xb, x->x, L->attn_norm, n, dim, eps);
        if (Q) cpu_q8_quantize_act(pt, &x->qa, x->xb, dim, n, dim);
        cpu_pool_barrier(P);
        if (Q) {
            const q8_seg seg[3] = {{x->q, x->q_dim, x->q_dim},
                                   {x->k, x->kv_dim, x->kv_dim},
                                   {x->v, x->kv_dim, x->kv_dim}};
            q8_project(pt, x, &Q->qkv, 0, seg, 3, 0);
        } else {
            cpu_matmul(pt, x->q, x->xb, L->wq, n, dim, x->q_dim, 0);
            cpu_matmul(pt, x->k, x->xb, L->wk, n, dim, x->kv_dim, 0);
            cpu_matmul(pt, x->v, x->xb, L->wv, n, dim, x->kv_dim, 0);
        }
        cpu_pool_barrier(P);
        if (c->has_qk_norm) {
            cpu_head_rmsnorm(pt, x->q, L->q_norm, n, c->n_heads, hd, eps);
            cpu_head_rmsnorm(pt, x->k, L->k_norm, n, c->n_kv_heads, hd, eps);
        }
        cpu_rope_apply(pt, &x->rope, x->q, x->tok_pos, n, c->n_heads);
        cpu_rope_apply(pt, &x->rope, x->k, x->tok_pos, n, c->n_kv_heads);
        cpu_kv_store(pt, &kv, &map, x->k, x->v);
        cpu_pool_barrier(P);
        cpu_attention(pt, x->att, x->q, &kv, &map, c->n_heads, c->n_kv_heads, hd, x->scratch,
                      x->scratch_per_thread);
        cpu_pool_barrier(P);
        if (Q) {
            const q8_seg seg = {x->x, dim, dim};
            cpu_q8_quantize_act(pt, &x->qa, x->att, x->q_dim, n, x->q_dim);
            cpu_pool_barrier(P);
            q8_project(pt, x, &Q->o, 0, &seg, 1, 1);
        } else {
            cpu_matmul(pt, x->x, x->att, L->wo, n, x->q_dim, dim, 1);
        }
        cpu_pool_barrier(P);

        cpu_rmsnorm(pt, x->xb, x->x, L->ffn_norm, n, dim, eps);
        if (Q) cpu_q8_quantize_act(pt, &x->qa, x->xb, dim, n, dim);
        cpu_pool_barrier(P);
        if (Q) {
            const q8_seg seg[2] = {{x->gate, hid, hid}, {x->up, hid, hid}};
            q8_project(pt, x, &Q->gate_up, 0, seg, 2, 0);
        } else {
            cpu_matmul(pt, x->gate, x->xb, L->w_gate, n, dim, hid, 0);
            cpu_matmul(pt, x->up, x->xb, L->w_up, n, dim, hid, 0);
        }
        cpu_pool_barrier(P);
        cpu_swiglu(pt, x->gate, x->gate, x->up, n, hid);
        if (Q) cpu_q8_quantize_act(pt, &x->qa, x->gate, hid, n, hid);
        cpu_pool_barrier(P);
        if (Q) {
            const q8_seg seg = {x->x, dim, dim};
            q8_project(pt, x, &Q->down, 0, &seg, 1, 1);
        } else {
            cpu_matmul(pt, x->x, x->gate, L->w_down, n, hid, dim, 1);
        }
        cpu_pool_barrier(P);
    }

    /* Logits: the last row of each sequence that wants them. */
    if (j->n_want == 0) return;
    logits_rows(pt, x, b, j->n_want);
    logits_part(pt, x, j->logits, j->n_want, w->lm_head, 0, c->vocab_size);
}

/* The KV planes of layer l of rank R. */
static cpu_kv_layer rank_kv(const cpu_ctx *x, const cpu_rank *R, int l) {
    float *base = R->kv + (size_t)l * 2 * x->layer_kv_floats;
    const cpu_kv_layer kv = {base, base + x->layer_kv_floats, x->block_size, R->s.kv_dim};
    return kv;
}

/* Part ith of nth of a forward pass over tp > 1 ranks (tp.h, cpu_tp.h):
 * forward_part's steps, each taken by every rank in turn on its own
 * buffers (so the ranks of one step need no barrier between them), with the
 * all-reduce after wo and after w_down (split by tokens, like the rmsnorm
 * that follows it on the same rows) and the vocabulary-sharded embedding and
 * LM head. The same barrier discipline as forward_part. */
static void forward_part_tp(void *vjob, int ith, int nth) {
    const fwd_job *j = vjob;
    cpu_ctx *x = j->x;
    const eng_batch *b = j->b;
    const cpu_part pt = {ith, nth};
    cpu_pool *P = x->pool;
    const mdl_config *c = &x->c;
    const mdl_weights *w = &x->m->w;
    const int n = b->n_tokens, dim = c->dim, hd = c->head_dim, N = x->tp;
    const float eps = c->norm_eps;
    const cpu_tok_map map = {n, x->tok_pos, x->tok_seq, b->block_tables, b->max_blocks};

    cpu_tp_embed(pt, x->x, w->tok_embd, &x->plan, b->tokens, n, dim);
    for (int l = 0; l < c->n_layers; l++) {
        const mdl_layer *L = &w->layers[l];
        const cpu_tp_layer *TL = x->tpl + (size_t)l * N;

        /* the previous all-reduce (or the embedding) wrote this part's rows */
        cpu_rmsnorm(pt, x->xb, x->x, L->attn_norm, n, dim, eps);
        cpu_pool_barrier(P);
        for (int r = 0; r < N; r++) {
            const cpu_rank *R = &x->ranks[r];
            cpu_matmul(pt, R->q, x->xb, TL[r].wq, n, dim, R->s.q_dim, 0);
            cpu_matmul(pt, R->k, x->xb, TL[r].wk, n, dim, R->s.kv_dim, 0);
            cpu_matmul(pt, R->v, x->xb, TL[r].wv, n, dim, R->s.kv_dim, 0);
        }
        cpu_pool_barrier(P);
        for (int r = 0; r < N; r++) {
            const cpu_rank *R = &x->ranks[r];
            const cpu_kv_layer kv = rank_kv(x, R, l);
            if (c->has_qk_norm) {
                cpu_head_rmsnorm(pt, R->q, L->q_norm, n, R->s.n_heads, hd, eps);
                cpu_head_rmsnorm(pt, R->k, L->k_norm, n, R->s.n_kv_heads, hd, eps);
            }
            cpu_rope_apply(pt, &x->rope, R->q, x->tok_pos, n, R->s.n_heads);
            cpu_rope_apply(pt, &x->rope, R->k, x->tok_pos, n, R->s.n_kv_heads);
            cpu_kv_store(pt, &kv, &map, R->k, R->v);
        }
        cpu_pool_barrier(P);
        for (int r = 0; r < N; r++) {
            const cpu_rank *R = &x->ranks[r];
            const cpu_kv_layer kv = rank_kv(x, R, l);
            cpu_attention(pt, R->att, R->q, &kv, &map, R->s.n_heads, R->s.n_kv_heads, hd,
                          x->scratch, x->scratch_per_thread);
        }
        cpu_pool_barrier(P);
        for (int r = 0; r < N; r++) {
            const cpu_rank *R = &x->ranks[r];
            cpu_matmul_strided(pt, R->part, dim, R->att, R->s.q_dim, TL[r].wo, TL[r].ld_o, n,
                               R->s.q_dim, dim, 0);
        }
        cpu_pool_barrier(P);
        cpu_tp_allreduce_add(pt, x->x, x->parts, N, n, dim);
        cpu_rmsnorm(pt, x->xb, x->x, L->ffn_norm, n, dim, eps);
        cpu_pool_barrier(P);
        for (int r = 0; r < N; r++) {
            const cpu_rank *R = &x->ranks[r];
            cpu_matmul(pt, R->gate, x->xb, TL[r].w_gate, n, dim, R->s.ff_dim, 0);
            cpu_matmul(pt, R->up, x->xb, TL[r].w_up, n, dim, R->s.ff_dim, 0);
        }
        cpu_pool_barrier(P);
        for (int r = 0; r < N; r++) {
            const cpu_rank *R = &x->ranks[r];
            cpu_swiglu(pt, R->gate, R->gate, R->up, n, R->s.ff_dim);
        }
        cpu_pool_barrier(P);
        for (int r = 0; r < N; r++) {
            const cpu_rank *R = &x->ranks[r];
            cpu_matmul_strided(pt, R->part, dim, R->gate, R->s.ff_dim, TL[r].w_down, TL[r].ld_down,
                               n, R->s.ff_dim, dim, 0);
        }
        cpu_pool_barrier(P);
        cpu_tp_allreduce_add(pt, x->x, x->parts, N, n, dim);
    }
    cpu_pool_barrier(P); /* the logits rows may be any part's */

    if (j->n_want == 0) return;
    logits_rows(pt, x, b, j->n_want);
    for (int r = 0; r < N; r++) {
        const eng_tp_shard *s = &x->ranks[r].s;
        logits_part(pt, x, j->logits, j->n_want, w->lm_head + (size_t)s->vocab0 * dim, s->vocab0,
                    s->n_vocab);
    }
}

static int cpu_forward(void *vctx, const eng_batch *b, float *logits) {
    cpu_ctx *x = vctx;
    if (!x || !b) return NI_EINVAL;
    int rc = check_batch(x, b, logits);
    if (rc) return rc;
    if (b->n_tokens == 0) return 0;
    openblas_set_num_threads(1); /* cheap; guards against a later change elsewhere */

    for (int s = 0; s < b->n_seqs; s++)
        for (int i = b->seq_start[s]; i < b->seq_start[s + 1]; i++) {
            x->tok_seq[i] = s;
            x->tok_pos[i] = b->pos0[s] + (i - b->seq_start[s]);
        }
    fwd_job j = {x, b, logits, 0};
    for (int s = 0; s < b->n_seqs; s++)
        if (b->want_logits && b->want_logits[s]) x->lm_seq[j.n_want++] = s;
    cpu_pool_run(x->pool, x->tp > 1 ? forward_part_tp : forward_part, &j, 0);
    return 0;
}

static int cpu_copy_block(void *vctx, int src, int dst) {
    cpu_ctx *x = vctx;
    if (!x || src < 0 || src >= x->n_blocks || dst < 0 || dst >= x->n_blocks) return NI_EINVAL;
    if (src == dst) return 0;
    for (size_t l = 0; l < 2 * (size_t)x->c.n_layers * (size_t)x->tp; l++) { /* every plane */
        float *base = x->kv_pool + l * x->layer_kv_floats;
        memcpy(base + (size_t)dst * x->block_floats, base + (size_t)src * x->block_floats,
               x->block_floats * sizeof(float));
    }
    return 0;
}

/* The file's own precision: 4-bit files run the 4-bit kernels, Q8_0 the
 * int8 ones; 16- and 32-bit files run FP32 (the reference; this backend has
 * no 16-bit path). */
static eng_quant cpu_auto_quant(const mdl_model *m) {
    switch (m->w.src_type) {
    case GGUF_T_Q4_0:
    case GGUF_T_Q4_1: return ENG_QUANT_Q4;
    case GGUF_T_Q8_0: return ENG_QUANT_INT8;
    default: return ENG_QUANT_NONE;
    }
}

static int cpu_info(void *vctx, eng_backend_info *out) {
    const cpu_ctx *x = vctx;
    if (!x || !out) return NI_EINVAL;
    memset(out, 0, sizeof *out);
    out->quant = (eng_quant)x->quant;
    if (x->quant) {
        for (int l = 0; l < x->c.n_layers; l++)
            out->weight_bytes += cpu_q8_mat_bytes(&x->ql[l].qkv) + cpu_q8_mat_bytes(&x->ql[l].o) +
                                 cpu_q8_mat_bytes(&x->ql[l].gate_up) +
                                 cpu_q8_mat_bytes(&x->ql[l].down);
        out->weight_bytes += cpu_q8_mat_bytes(&x->qlm);
    } else {
        out->weight_bytes = x->m->w.arena_floats * sizeof(float);
    }
    out->kv_bytes = 2 * (size_t)x->c.n_layers * (size_t)x->tp * x->layer_kv_floats * sizeof(float);
    out->work_bytes = x->work_bytes;
    out->n_threads = x->n_threads;
    out->tp = x->tp;
    return 0;
}

const eng_backend eng_backend_cpu = {
    .name = "cpu",
    .init = cpu_init,
    .forward = cpu_forward,
    .copy_block = cpu_copy_block,
    .free = cpu_free,
    .auto_quant = cpu_auto_quant,
    .info = cpu_info,
};
