/*
 * gr_match.c - the vocabulary trie and the lazily built automaton that gives
 * a token mask per step.
 *
 * Parser stacks are hash-consed nodes (pos, parent): pos is the grammar
 * element to match next, parent the node to continue with when the
 * alternative ends (-1: the start rule). A reference whose next element is
 * END passes its own parent on (a tail call), so right recursion - every
 * repetition - does not grow the stack. Expanding a node follows references
 * and alternative ends until byte sets are on top (each node at most once per
 * expansion, by a generation stamp); the result, sorted, is a state, interned
 * with its accept flag (a stack emptied: the bytes so far are a sentence).
 *
 * Transitions (state, byte) -> state are memoised in an open-addressing table,
 * so the matcher becomes a DFA over the states it has met. A token mask walks
 * the vocabulary trie in preorder from the state: one transition per trie
 * node, skipping a whole subtree as soon as its prefix is dead, marking the
 * tokens that end at live nodes. Masks are cached per state (the cache is
 * dropped wholesale when it is full: masks can always be recomputed).
 *
 * Memory: every table grows by doubling and the sum is held under mem_cap;
 * reaching it is an error for the request (NI_ENOMEM), never a crash. The
 * tables live as long as the matcher (one request).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/util/util.h"
#include "gr_internal.h"

#define GR_UNSET ((gr_state)-3) /* m->start not computed yet */

/* ---- vocabulary trie ---- */

struct gr_vocab {
    int n_tokens;
    char *data;
    uint32_t *off;       /* [n_tokens + 1]: bytes of token t are data[off[t] .. off[t+1]) */
    uint8_t *is_end;     /* [n_tokens] */
    int32_t *ends;
    int n_ends;
    int n_nodes;         /* trie in preorder */
    uint8_t *byte;       /* [n_nodes] the byte on the edge into the node */
    uint8_t *depth;      /* [n_nodes] 1 .. 255 */
    uint32_t *sub_end;   /* [n_nodes] first node after the subtree */
    uint32_t *tok_off;   /* [n_nodes + 1] tokens ending at node i: toks[tok_off[i] .. [i+1]) */
    int32_t *toks;
};

static const gr_vocab *sort_vocab; /* qsort context (vocab building is single-threaded) */

static int cmp_tok(const void *a, const void *b) {
    const gr_vocab *v = sort_vocab;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = v->off[x + 1] - v->off[x], ly = v->off[y + 1] - v->off[y];
    int c = memcmp(v->data + v->off[x], v->data + v->off[y], NI_MIN(lx, ly));
    if (c) return c;
    if (lx != ly) return lx < ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

void gr_vocab_free(gr_vocab *v) {
    if (!v) return;
    free(v->data);
    free(v->off);
    free(v->is_end);
    free(v->ends);
    free(v->byte);
    free(v->depth);
    free(v->sub_end);
    free(v->tok_off);
    free(v->toks);
    free(v);
}

int gr_vocab_new(gr_vocab **out, int n_tokens, const char *const *bytes, const size_t *lens,
                 const int32_t *ends, int n_ends) {
    *out = NULL;
    if (n_tokens < 1 || n_ends < 0) return NI_EINVAL;
    gr_vocab *v = calloc(1, sizeof *v);
    if (!v) return NI_ENOMEM;
    size_t total = 0;
    for (int t = 0; t < n_tokens; t++) total += lens[t] <= 255 ? lens[t] : 0;
    v->n_tokens = n_tokens;
    v->data = malloc(total + 1);
    v->off = malloc(((size_t)n_tokens + 1) * sizeof *v->off);
    v->is_end = calloc((size_t)n_tokens, 1);
    v->ends = malloc((size_t)NI_MAX(n_ends, 1) * sizeof *v->ends);
    int32_t *order = malloc((size_t)n_tokens * sizeof *order);
    /* at most one node per byte of every token */
    v->byte = malloc(total + 1);
    v->depth = malloc(total + 1);
    v->sub_end = malloc((total + 1) * sizeof *v->sub_end);
    v->tok_off = malloc((total + 2) * sizeof *v->tok_off);
    v->toks = malloc((size_t)n_tokens * sizeof *v->toks);
    if (!v->data || !v->off || !v->is_end || !v->ends || !order || !v->byte || !v->depth ||
        !v->sub_end || !v->tok_off || !v->toks) {
        free(order);
        gr_vocab_free(v);
        return NI_ENOMEM;
    }
    for (int i = 0; i < n_ends; i++) {
        if (ends[i] < 0 || ends[i] >= n_tokens) {
            free(order);
            gr_vocab_free(v);
            return NI_EINVAL;
        }
        v->ends[v->n_ends++] = ends[i];
        v->is_end[ends[i]] = 1;
    }
    size_t at = 0;
    int n_order = 0;
    for (int t = 0; t < n_tokens; t++) {
        v->off[t] = (uint32_t)at;
        if (lens[t] == 0 || lens[t] > 255 || v->is_end[t]) continue; /* never in the trie */
        memcpy(v->data + at, bytes[t], lens[t]);
        at += lens[t];
        order[n_order++] = t;
    }
    v->off[n_tokens] = (uint32_t)at;
    sort_vocab = v;
    qsort(order, (size_t)n_order, sizeof *order, cmp_tok);
    uint32_t path[256];
    int cur = 0, n_toks = 0; /* depth of the last node on the path */
    const char *prev = NULL;
    uint32_t prev_len = 0;
    for (int k = 0; k < n_order; k++) {
        int t = order[k];
        const char *s = v->data + v->off[t];
        uint32_t len = v->off[t + 1] - v->off[t], l = 0;
        while (prev && l < len && l < prev_len && s[l] == prev[l]) l++;
        for (; cur > (int)l; cur--) v->sub_end[path[cur]] = (uint32_t)v->n_nodes;
        for (uint32_t d = l + 1; d <= len; d++) {
            int i = v->n_nodes++;
            v->byte[i] = (uint8_t)s[d - 1];
            v->depth[i] = (uint8_t)d;
            v->tok_off[i] = (uint32_t)n_toks;
            path[d] = (uint32_t)i;
        }
        cur = (int)len;
        v->toks[n_toks++] = t;
        prev = s;
        prev_len = len;
    }
    for (; cur > 0; cur--) v->sub_end[path[cur]] = (uint32_t)v->n_nodes;
    v->tok_off[v->n_nodes] = (uint32_t)n_toks;
    free(order);
    *out = v;
    return 0;
}

int gr_vocab_size(const gr_vocab *v) { return v->n_tokens; }
int gr_vocab_nodes(const gr_vocab *v) { return v->n_nodes; }

/* ---- matcher ---- */

typedef struct gr_node {
    uint32_t pos;
    int32_t parent;
} gr_node;

typedef struct gr_st {
    uint32_t off, n; /* items[off .. off+n): sorted node ids */
    int32_t mask;    /* mask slot or -1 */
    uint8_t accept;
} gr_st;

typedef struct gr_tr {
    int64_t key; /* state * 256 + byte, -1 empty */
    int32_t val;
} gr_tr;

struct gr_matcher {
    const gr_grammar *g;
    const gr_vocab *v;
    size_t cap_bytes;
    gr_node *nodes;
    uint32_t *visit; /* [cap_nodes] generation stamps */
    int n_nodes, cap_nodes;
    int32_t *node_hash;
    uint32_t node_hash_cap;
    gr_st *st;
    int n_st, cap_st;
    int32_t *items;
    size_t n_items, cap_items;
    int32_t *st_hash;
    uint32_t st_hash_cap;
    gr_tr *tr;
    uint32_t tr_cap, tr_used;
    uint32_t *masks;
    int n_masks, max_masks, words;
    int32_t *tmp;
    int n_tmp, cap_tmp;
    uint32_t gen;
    int accept;
    int start;
    int err; /* the NI_E* code behind the last GR_ERROR */
};

static gr_state set_err(gr_matcher *m, int code) {
    m->err = code;
    return GR_ERROR;
}

static size_t bytes_used(const gr_matcher *m) {
    return (size_t)m->cap_nodes * (sizeof(gr_node) + sizeof(uint32_t)) +
           (size_t)m->node_hash_cap * sizeof(int32_t) + (size_t)m->cap_st * sizeof(gr_st) +
           m->cap_items * sizeof(int32_t) + (size_t)m->st_hash_cap * sizeof(int32_t) +
           (size_t)m->tr_cap * sizeof(gr_tr) +
           (size_t)m->n_masks * (size_t)m->words * sizeof(uint32_t) +
           (size_t)m->cap_tmp * sizeof(int32_t);
}

size_t gr_matcher_bytes(const gr_matcher *m) { return bytes_used(m); }

/* Grows *p (n elements of size sz) to at least need; NI_ENOMEM past the cap. */
static int grow(gr_matcher *m, void **p, size_t sz, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    if (bytes_used(m) + (nc - *cap) * sz > m->cap_bytes) return NI_ENOMEM;
    void *q = realloc(*p, nc * sz);
    if (!q) return NI_ENOMEM;
    *p = q;
    *cap = nc;
    return 0;
}

static uint32_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (uint32_t)x;
}

/* Rebuilds an open-addressing index table of ids after growth. */
static int rehash(gr_matcher *m, int32_t **tab, uint32_t *cap, int n, int is_state) {
    uint32_t nc = *cap ? *cap * 2 : 1024;
    while ((uint64_t)n * 2 >= nc) nc *= 2;
    if (bytes_used(m) + ((size_t)nc - *cap) * sizeof(int32_t) > m->cap_bytes) return NI_ENOMEM;
    int32_t *t = malloc((size_t)nc * sizeof *t);
    if (!t) return NI_ENOMEM;
    for (uint32_t i = 0; i < nc; i++) t[i] = -1;
    for (int i = 0; i < n; i++) {
        uint32_t h;
        if (is_state) {
            uint64_t x = m->st[i].accept;
            for (uint32_t k = 0; k < m->st[i].n; k++)
                x = x * 0x9E3779B97F4A7C15ull + (uint64_t)m->items[m->st[i].off + k];
            h = mix(x);
        } else {
            h = mix(((uint64_t)m->nodes[i].pos << 32) ^ (uint32_t)m->nodes[i].parent);
        }
        uint32_t k = h & (nc - 1);
        while (t[k] >= 0) k = (k + 1) & (nc - 1);
        t[k] = i;
    }
    free(*tab);
    *tab = t;
    *cap = nc;
    return 0;
}

/* The node (pos, parent), created when new. Returns its id or < 0. */
static int32_t intern_node(gr_matcher *m, uint32_t pos, int32_t parent) {
    if ((uint64_t)(m->n_nodes + 1) * 2 > m->node_hash_cap) {
        int rc = rehash(m, &m->node_hash, &m->node_hash_cap, m->n_nodes, 0);
        if (rc) return rc;
    }
    uint32_t mask = m->node_hash_cap - 1;
    uint32_t k = mix(((uint64_t)pos << 32) ^ (uint32_t)parent) & mask;
    for (; m->node_hash[k] >= 0; k = (k + 1) & mask) {
        const gr_node *n = &m->nodes[m->node_hash[k]];
        if (n->pos == pos && n->parent == parent) return m->node_hash[k];
    }
    if (m->n_nodes == m->cap_nodes) {
        size_t cap = (size_t)m->cap_nodes, cap2 = cap;
        int rc = grow(m, (void **)&m->nodes, sizeof(gr_node), &cap, cap + 1);
        if (!rc) rc = grow(m, (void **)&m->visit, sizeof(uint32_t), &cap2, cap);
        if (rc) return rc;
        m->cap_nodes = (int)cap;
    }
    int32_t id = m->n_nodes++;
    m->nodes[id] = (gr_node){pos, parent};
    m->visit[id] = 0;
    m->node_hash[k] = id;
    return id;
}

static int tmp_push(gr_matcher *m, int32_t id) {
    if (m->n_tmp == m->cap_tmp) {
        size_t cap = (size_t)m->cap_tmp;
        int rc = grow(m, (void **)&m->tmp, sizeof(int32_t), &cap, cap + 1);
        if (rc) return rc;
        m->cap_tmp = (int)cap;
    }
    m->tmp[m->n_tmp++] = id;
    return 0;
}

/* Expands node id into m->tmp (byte-set tops) and m->accept. Recursion only
 * through references; alternative ends pop in a loop. depth bounds the
 * reference nesting (the grammar has no left recursion, so it is finite). */
static int expand(gr_matcher *m, int32_t id, int depth) {
    const gr_grammar *g = m->g;
    for (;;) {
        if (m->visit[id] == m->gen) return 0;
        m->visit[id] = m->gen;
        uint32_t pos = m->nodes[id].pos, e = g->elems[pos];
        int32_t parent = m->nodes[id].parent;
        switch (GR_KIND(e)) {
        case GR_K_SET: return tmp_push(m, id);
        case GR_K_END:
            if (parent < 0) {
                m->accept = 1;
                return 0;
            }
            id = parent;
            continue;
        default: {
            if (depth > 10000) return NI_ERANGE;
            int32_t cont = parent;
            if (GR_KIND(g->elems[pos + 1]) != GR_K_END) {
                cont = intern_node(m, pos + 1, parent);
                if (cont < 0) return cont;
            }
            uint32_t r = GR_ARG(e);
            for (int32_t a = g->alt_off[r]; a < g->alt_off[r + 1]; a++) {
                int32_t c = intern_node(m, (uint32_t)g->alt_pos[a], cont);
                if (c < 0) return c;
                int rc = expand(m, c, depth + 1);
                if (rc) return rc;
            }
            return 0;
        }
        }
    }
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

/* Interns the state (m->tmp, m->accept). Returns its id, GR_DEAD, or < GR_DEAD. */
static gr_state intern_state(gr_matcher *m) {
    if (m->n_tmp == 0 && !m->accept) return GR_DEAD;
    /* an accepting state with no items has n_tmp == 0 and m->tmp may still be
     * NULL: qsort/memcmp/memcpy must not see a NULL pointer even for 0 bytes
     * (C11 7.1.4, and UBSan's nonnull check) */
    if (m->n_tmp > 1) qsort(m->tmp, (size_t)m->n_tmp, sizeof *m->tmp, cmp_i32);
    int n = 0;
    for (int i = 0; i < m->n_tmp; i++)
        if (n == 0 || m->tmp[n - 1] != m->tmp[i]) m->tmp[n++] = m->tmp[i];
    m->n_tmp = n;
    if ((uint64_t)(m->n_st + 1) * 2 > m->st_hash_cap) {
        int rc = rehash(m, &m->st_hash, &m->st_hash_cap, m->n_st, 1);
        if (rc) return set_err(m, rc);
    }
    uint64_t x = (uint64_t)m->accept;
    for (int k = 0; k < n; k++) x = x * 0x9E3779B97F4A7C15ull + (uint64_t)m->tmp[k];
    uint32_t mask = m->st_hash_cap - 1, k = mix(x) & mask;
    for (; m->st_hash[k] >= 0; k = (k + 1) & mask) {
        const gr_st *s = &m->st[m->st_hash[k]];
        if (s->accept == m->accept && s->n == (uint32_t)n &&
            (n == 0 || memcmp(m->items + s->off, m->tmp, (size_t)n * sizeof(int32_t)) == 0))
            return m->st_hash[k];
    }
    size_t cap = (size_t)m->cap_st;
    int rc = grow(m, (void **)&m->st, sizeof(gr_st), &cap, (size_t)m->n_st + 1);
    if (!rc) {
        m->cap_st = (int)cap;
        rc = grow(m, (void **)&m->items, sizeof(int32_t), &m->cap_items, m->n_items + (size_t)n);
    }
    if (rc) return set_err(m, rc);
    gr_state id = m->n_st++;
    m->st[id] = (gr_st){(uint32_t)m->n_items, (uint32_t)n, -1, (uint8_t)m->accept};
    if (n > 0) memcpy(m->items + m->n_items, m->tmp, (size_t)n * sizeof(int32_t));
    m->n_items += (size_t)n;
    m->st_hash[k] = id;
    return id;
}

/* The state after byte c in state s (memoised). */
static gr_state step(gr_matcher *m, gr_state s, uint8_t c) {
    int64_t key = (int64_t)s * 256 + c;
    if ((uint64_t)(m->tr_used + 1) * 2 > m->tr_cap) {
        uint32_t nc = m->tr_cap ? m->tr_cap * 2 : 4096;
        if (bytes_used(m) + ((size_t)nc - m->tr_cap) * sizeof(gr_tr) > m->cap_bytes)
            return set_err(m, NI_ENOMEM);
        gr_tr *t = malloc((size_t)nc * sizeof *t);
        if (!t) return set_err(m, NI_ENOMEM);
        for (uint32_t i = 0; i < nc; i++) t[i].key = -1;
        for (uint32_t i = 0; i < m->tr_cap; i++) {
            if (m->tr[i].key < 0) continue;
            uint32_t k = mix((uint64_t)m->tr[i].key) & (nc - 1);
            while (t[k].key >= 0) k = (k + 1) & (nc - 1);
            t[k] = m->tr[i];
        }
        free(m->tr);
        m->tr = t;
        m->tr_cap = nc;
    }
    uint32_t mask = m->tr_cap - 1, k = mix((uint64_t)key) & mask;
    for (; m->tr[k].key >= 0; k = (k + 1) & mask)
        if (m->tr[k].key == key) return m->tr[k].val;
    const gr_st st = m->st[s];
    const gr_grammar *g = m->g;
    m->gen++;
    m->n_tmp = 0;
    m->accept = 0;
    for (uint32_t i = 0; i < st.n; i++) {
        const gr_node nd = m->nodes[m->items[st.off + i]];
        if (!GR_HAS(g->sets[GR_ARG(g->elems[nd.pos])], c)) continue;
        int32_t nx = intern_node(m, nd.pos + 1, nd.parent);
        if (nx < 0) return set_err(m, nx);
        int rc = expand(m, nx, 0);
        if (rc) return set_err(m, rc);
    }
    gr_state r = intern_state(m);
    if (r == GR_ERROR) return r;
    m->tr[k] = (gr_tr){key, r}; /* k is still free: nothing was inserted in tr since */
    m->tr_used++;
    return r;
}

int gr_matcher_new(gr_matcher **out, const gr_grammar *g, const gr_vocab *v, size_t mem_cap) {
    gr_matcher *m = calloc(1, sizeof *m);
    if (!m) return NI_ENOMEM;
    m->g = g;
    m->v = v;
    m->cap_bytes = mem_cap ? mem_cap : (size_t)256 << 20;
    m->words = (v->n_tokens + 31) / 32;
    size_t mask_bytes = (size_t)m->words * sizeof(uint32_t);
    m->max_masks = (int)NI_MIN((size_t)256, NI_MAX((size_t)1, m->cap_bytes / 4 / mask_bytes));
    m->masks = malloc((size_t)m->max_masks * mask_bytes);
    m->start = GR_UNSET;
    if (!m->masks) {
        free(m);
        return NI_ENOMEM;
    }
    *out = m;
    return 0;
}

void gr_matcher_free(gr_matcher *m) {
    if (!m) return;
    free(m->nodes);
    free(m->visit);
    free(m->node_hash);
    free(m->st);
    free(m->items);
    free(m->st_hash);
    free(m->tr);
    free(m->masks);
    free(m->tmp);
    free(m);
}

gr_state gr_matcher_start(gr_matcher *m) {
    if (m->start != GR_UNSET) return m->start;
    const gr_grammar *g = m->g;
    m->gen++;
    m->n_tmp = 0;
    m->accept = 0;
    for (int32_t a = g->alt_off[g->root]; a < g->alt_off[g->root + 1]; a++) {
        int32_t c = intern_node(m, (uint32_t)g->alt_pos[a], -1);
        if (c < 0) return set_err(m, c);
        int rc = expand(m, c, 0);
        if (rc) return set_err(m, rc);
    }
    gr_state s = intern_state(m);
    if (s != GR_ERROR) m->start = s;
    return s;
}

gr_state gr_matcher_feed(gr_matcher *m, gr_state s, const char *bytes, size_t len) {
    for (size_t i = 0; i < len && s >= 0; i++) s = step(m, s, (uint8_t)bytes[i]);
    return s;
}

gr_state gr_matcher_next(gr_matcher *m, gr_state s, int32_t tok) {
    const gr_vocab *v = m->v;
    if (s < 0 || tok < 0 || tok >= v->n_tokens) return GR_DEAD;
    if (v->is_end[tok]) return m->st[s].accept ? s : GR_DEAD;
    uint32_t len = v->off[tok + 1] - v->off[tok];
    if (len == 0) return GR_DEAD;
    return gr_matcher_feed(m, s, v->data + v->off[tok], len);
}

int gr_matcher_error(const gr_matcher *m) { return m->err; }

int gr_matcher_accepting(const gr_matcher *m, gr_state s) {
    return s >= 0 && s < m->n_st && m->st[s].accept;
}

int gr_matcher_finished(const gr_matcher *m, gr_state s) {
    return s >= 0 && s < m->n_st && m->st[s].accept && m->st[s].n == 0;
}

int gr_matcher_mask(gr_matcher *m, gr_state s, const uint32_t **allow) {
    if (s < 0 || s >= m->n_st) return NI_EINVAL;
    if (m->st[s].mask >= 0) {
        *allow = m->masks + (size_t)m->st[s].mask * (size_t)m->words;
        return 0;
    }
    if (m->n_masks == m->max_masks) { /* full: forget every cached mask */
        for (int i = 0; i < m->n_st; i++) m->st[i].mask = -1;
        m->n_masks = 0;
    }
    int slot = m->n_masks;
    uint32_t *w = m->masks + (size_t)slot * (size_t)m->words;
    memset(w, 0, (size_t)m->words * sizeof *w);
    const gr_vocab *v = m->v;
    gr_state cur[257];
    cur[0] = s;
    for (int i = 0; i < v->n_nodes;) {
        int d = v->depth[i];
        gr_state n = step(m, cur[d - 1], v->byte[i]);
        if (n == GR_ERROR) return m->err;
        if (n == GR_DEAD) {
            i = (int)v->sub_end[i];
            continue;
        }
        cur[d] = n;
        for (uint32_t k = v->tok_off[i]; k < v->tok_off[i + 1]; k++) {
            int32_t t = v->toks[k];
            w[t >> 5] |= 1u << (t & 31);
        }
        i++;
    }
    if (m->st[s].accept)
        for (int i = 0; i < v->n_ends; i++) w[v->ends[i] >> 5] |= 1u << (v->ends[i] & 31);
    m->st[s].mask = slot;
    m->n_masks++;
    *allow = w;
    return 0;
}

void gr_apply_mask(float *logits, int vocab, const uint32_t *allow) {
    for (int w = 0; w < (vocab + 31) / 32; w++) {
        uint32_t bits = allow[w];
        if (bits == 0xFFFFFFFFu) continue;
        for (int b = 0; b < 32; b++) {
            int t = w * 32 + b;
            if (t < vocab && !((bits >> b) & 1)) logits[t] = -INFINITY;
        }
    }
}
