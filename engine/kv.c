/*
 * kv.c - paged KV cache block manager with prefix caching. Design, block
 * states and invariants: see kv.h.
 *
 * Implementation notes:
 *   - per-block metadata lives in parallel arrays of n_blocks entries;
 *   - the free list and the evictable LRU share the prev/next link arrays
 *     (a block is in at most one list); push at the tail, pop at the head;
 *   - the prefix hash table stores block ids (-1 = empty slot) with linear
 *     probing; deletion shifts the following cluster back (no tombstones), so
 *     probe lengths never degrade; load factor <= 1/2;
 *   - every operation that can fail with NI_ENOMEM plans first (read-only)
 *     and mutates only once success is certain.
 */
#include "kv.h"

#include <string.h>

#include "engine/util/util.h"

typedef struct kv_list {
    int32_t head, tail; /* block ids, -1 when empty */
    int n;
} kv_list;

struct kv_mgr {
    int n_blocks;
    int block_size;
    int max_seq_len;
    int max_blocks_per_seq;
    int enable;
    kv_hash_fn hash_fn;

    int32_t *ref;           /* [n_blocks] number of tables holding the block */
    int32_t *prev;          /* [n_blocks] list link (free or LRU), -1 = none */
    int32_t *next;          /* [n_blocks] list link, -1 = none */
    uint8_t *cached;        /* [n_blocks] 1 iff the block is in the hash table */
    uint64_t *hash;         /* [n_blocks] chained hash (valid iff cached) */
    uint64_t *parent_hash;  /* [n_blocks] parent's chained hash (valid iff cached) */
    uint64_t *uid;          /* [n_blocks] unique registration id, 0 if uncached */
    uint64_t *parent_uid;   /* [n_blocks] uid of the parent block, 0 = first block */
    int32_t *tok;           /* [n_blocks][block_size] token ids (valid iff cached) */

    int32_t *ht;            /* [ht_cap] block id or -1: open-addressing table */
    uint32_t ht_mask;       /* ht_cap - 1, ht_cap a power of two >= 2*n_blocks */

    kv_list free_list;      /* refcount 0, uncached */
    kv_list lru;            /* refcount 0, cached; head = least recently released */
    int n_cached;           /* blocks in the hash table */
    uint64_t next_uid;      /* last uid handed out */

    kv_seq *live;           /* head of the live-sequence list */
    int n_live;

    uint64_t prefix_queries, query_tokens, hit_tokens, evictions;
};

/* ---- hashing -------------------------------------------------------------- */

uint64_t kv_hash_default(uint64_t parent, const int32_t *tokens, int n) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a offset basis */
    const uint64_t p = 0x100000001b3ULL;
    for (int i = 0; i < 8; i++) {
        h ^= (parent >> (8 * i)) & 0xff;
        h *= p;
    }
    for (int t = 0; t < n; t++) {
        const uint32_t v = (uint32_t)tokens[t];
        for (int i = 0; i < 4; i++) {
            h ^= (v >> (8 * i)) & 0xff;
            h *= p;
        }
    }
    /* murmur3 fmix64: spreads entropy into the low bits used as slot index */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* ---- intrusive lists ------------------------------------------------------ */

static void list_push_tail(kv_mgr *kv, kv_list *l, int32_t b) {
    kv->prev[b] = l->tail;
    kv->next[b] = -1;
    if (l->tail >= 0) kv->next[l->tail] = b;
    else l->head = b;
    l->tail = b;
    l->n++;
}

static void list_remove(kv_mgr *kv, kv_list *l, int32_t b) {
    const int32_t p = kv->prev[b], n = kv->next[b];
    if (p >= 0) kv->next[p] = n;
    else l->head = n;
    if (n >= 0) kv->prev[n] = p;
    else l->tail = p;
    kv->prev[b] = kv->next[b] = -1;
    l->n--;
}

static int32_t list_pop_head(kv_mgr *kv, kv_list *l) {
    const int32_t b = l->head;
    NI_ASSERT(b >= 0);
    list_remove(kv, l, b);
    return b;
}

/* ---- prefix hash table ---------------------------------------------------- */

static uint32_t ht_home(const kv_mgr *kv, uint64_t h) {
    return (uint32_t)(h ^ (h >> 32)) & kv->ht_mask;
}

/* Cached block with this exact key (hash, parent uid, token ids), or -1. */
static int32_t cache_find(const kv_mgr *kv, uint64_t h, uint64_t puid, const int32_t *toks) {
    const size_t bytes = (size_t)kv->block_size * sizeof(int32_t);
    for (uint32_t i = ht_home(kv, h);; i = (i + 1) & kv->ht_mask) {
        const int32_t c = kv->ht[i];
        if (c < 0) return -1;
        if (kv->hash[c] == h && kv->parent_uid[c] == puid &&
            memcmp(kv->tok + (size_t)c * (size_t)kv->block_size, toks, bytes) == 0)
            return c;
    }
}

static void cache_insert(kv_mgr *kv, int32_t b) {
    uint32_t i = ht_home(kv, kv->hash[b]);
    while (kv->ht[i] >= 0) i = (i + 1) & kv->ht_mask;
    kv->ht[i] = b;
    kv->cached[b] = 1;
    kv->n_cached++;
}

/* Removes cached block b from the table (backward-shift deletion). */
static void cache_remove(kv_mgr *kv, int32_t b) {
    NI_ASSERT(kv->cached[b]);
    uint32_t i = ht_home(kv, kv->hash[b]);
    while (kv->ht[i] != b) {
        NI_ASSERT(kv->ht[i] >= 0);
        i = (i + 1) & kv->ht_mask;
    }
    kv->ht[i] = -1;
    for (uint32_t j = (i + 1) & kv->ht_mask; kv->ht[j] >= 0; j = (j + 1) & kv->ht_mask) {
        const uint32_t k = ht_home(kv, kv->hash[kv->ht[j]]);
        /* entry at j may move to the hole i iff its home k is not in (i, j] cyclically */
        const int in_range = (i <= j) ? (k > i && k <= j) : (k > i || k <= j);
        if (!in_range) {
            kv->ht[i] = kv->ht[j];
            kv->ht[j] = -1;
            i = j;
        }
    }
    kv->cached[b] = 0;
    kv->uid[b] = 0;
    kv->n_cached--;
}

/* ---- block allocation ----------------------------------------------------- */

/* Takes one block: free first, else evicts the least recently released cached
 * block. The caller has checked availability. Returns it with refcount 1. */
static int32_t block_alloc(kv_mgr *kv) {
    int32_t b;
    if (kv->free_list.n > 0) {
        b = list_pop_head(kv, &kv->free_list);
    } else {
        b = list_pop_head(kv, &kv->lru);
        cache_remove(kv, b);
        kv->evictions++;
    }
    NI_ASSERT(kv->ref[b] == 0);
    kv->ref[b] = 1;
    return b;
}

static void block_decref(kv_mgr *kv, int32_t b) {
    NI_ASSERT(kv->ref[b] > 0);
    if (--kv->ref[b] == 0) list_push_tail(kv, kv->cached[b] ? &kv->lru : &kv->free_list, b);
}

/* Adds a holder to block b (a prefix hit or a fork); revives it if evictable. */
static void block_incref(kv_mgr *kv, int32_t b) {
    if (kv->ref[b] == 0) {
        NI_ASSERT(kv->cached[b]);
        list_remove(kv, &kv->lru, b);
    }
    kv->ref[b]++;
}

/* ---- init / teardown ------------------------------------------------------ */

int kv_init(kv_mgr **out, const kv_config *c) {
    if (!out || !c) return NI_EINVAL;
    *out = NULL;
    const int bs = c->block_size ? c->block_size : KV_DEFAULT_BLOCK_SIZE;
    if (c->n_blocks <= 0 || bs <= 0 || c->max_seq_len < 0) return NI_EINVAL;
    if (c->n_blocks > (1 << 28) || bs > (1 << 16)) return NI_ERANGE;
    const long long max_len = c->max_seq_len ? c->max_seq_len : (long long)c->n_blocks * bs;
    if (max_len > (1LL << 30)) return NI_ERANGE;

    kv_mgr *kv = calloc(1, sizeof(*kv));
    if (!kv) return NI_ENOMEM;
    const size_t n = (size_t)c->n_blocks;
    uint32_t cap = 1;
    while (cap < 2u * (uint32_t)c->n_blocks) cap <<= 1;

    kv->n_blocks = c->n_blocks;
    kv->block_size = bs;
    kv->max_seq_len = (int)max_len;
    kv->max_blocks_per_seq = (int)((max_len + bs - 1) / bs);
    kv->enable = c->enable_prefix_cache != 0;
    kv->hash_fn = c->hash_fn ? c->hash_fn : kv_hash_default;
    kv->ht_mask = cap - 1;
    kv->ref = calloc(n, sizeof(int32_t));
    kv->prev = malloc(n * sizeof(int32_t));
    kv->next = malloc(n * sizeof(int32_t));
    kv->cached = calloc(n, 1);
    kv->hash = calloc(n, sizeof(uint64_t));
    kv->parent_hash = calloc(n, sizeof(uint64_t));
    kv->uid = calloc(n, sizeof(uint64_t));
    kv->parent_uid = calloc(n, sizeof(uint64_t));
    kv->tok = calloc(n * (size_t)bs, sizeof(int32_t));
    kv->ht = malloc((size_t)cap * sizeof(int32_t));
    if (!kv->ref || !kv->prev || !kv->next || !kv->cached || !kv->hash || !kv->parent_hash ||
        !kv->uid || !kv->parent_uid || !kv->tok || !kv->ht) {
        kv_free(kv);
        return NI_ENOMEM;
    }
    for (uint32_t i = 0; i < cap; i++) kv->ht[i] = -1;
    kv->free_list = (kv_list){-1, -1, 0};
    kv->lru = (kv_list){-1, -1, 0};
    for (int32_t b = 0; b < c->n_blocks; b++) list_push_tail(kv, &kv->free_list, b);
    *out = kv;
    return 0;
}

void kv_free(kv_mgr *kv) {
    if (!kv) return;
    free(kv->ref);
    free(kv->prev);
    free(kv->next);
    free(kv->cached);
    free(kv->hash);
    free(kv->parent_hash);
    free(kv->uid);
    free(kv->parent_uid);
    free(kv->tok);
    free(kv->ht);
    free(kv);
}

int kv_block_size(const kv_mgr *kv) { return kv->block_size; }
int kv_max_blocks_per_seq(const kv_mgr *kv) { return kv->max_blocks_per_seq; }
int kv_prefix_cache_enabled(const kv_mgr *kv) { return kv->enable; }

/* ---- sequences ------------------------------------------------------------ */

static void seq_clear(kv_seq *s) {
    s->n_blocks = 0;
    s->n_computed = 0;
    s->n_hashed = 0;
    s->last_hash = 0;
    s->last_uid = 0;
}

int kv_seq_init(kv_mgr *kv, kv_seq *s) {
    memset(s, 0, sizeof(*s));
    s->table = malloc((size_t)kv->max_blocks_per_seq * sizeof(int32_t));
    if (!s->table) return NI_ENOMEM;
    seq_clear(s);
    s->live = 1;
    s->prev_live = NULL;
    s->next_live = kv->live;
    if (kv->live) kv->live->prev_live = s;
    kv->live = s;
    kv->n_live++;
    return 0;
}

void kv_seq_reset(kv_mgr *kv, kv_seq *s) {
    NI_ASSERT(s->live);
    for (int i = s->n_blocks - 1; i >= 0; i--) block_decref(kv, s->table[i]);
    seq_clear(s);
}

void kv_seq_destroy(kv_mgr *kv, kv_seq *s) {
    if (!s->live) return;
    kv_seq_reset(kv, s);
    if (s->prev_live) s->prev_live->next_live = s->next_live;
    else kv->live = s->next_live;
    if (s->next_live) s->next_live->prev_live = s->prev_live;
    kv->n_live--;
    free(s->table);
    s->table = NULL;
    s->prev_live = s->next_live = NULL;
    s->live = 0;
}

static int blocks_for(const kv_mgr *kv, int n_tokens) {
    return (n_tokens + kv->block_size - 1) / kv->block_size;
}

/* Read-only prefix match for a prompt. Returns the number of hit blocks
 * (<= (n_prompt-1)/block_size); writes their ids into hits (if not NULL),
 * the number of them that are evictable (would be revived) into *n_revive,
 * and the chain state after the last hit into *h_out / *uid_out. */
static int match_prefix(const kv_mgr *kv, const int32_t *tokens, int n_prompt, int32_t *hits,
                        int *n_revive, uint64_t *h_out, uint64_t *uid_out) {
    int n_hit = 0, rev = 0;
    uint64_t h = 0, puid = 0;
    if (kv->enable) {
        const int max_hit = (n_prompt - 1) / kv->block_size;
        for (int i = 0; i < max_hit; i++) {
            const int32_t *toks = tokens + (size_t)i * (size_t)kv->block_size;
            const uint64_t hi = kv->hash_fn(h, toks, kv->block_size);
            const int32_t c = cache_find(kv, hi, puid, toks);
            if (c < 0) break;
            if (hits) hits[i] = c;
            if (kv->ref[c] == 0) rev++;
            h = hi;
            puid = kv->uid[c];
            n_hit++;
        }
    }
    *n_revive = rev;
    *h_out = h;
    *uid_out = puid;
    return n_hit;
}

int kv_prompt_blocks_needed(const kv_mgr *kv, const int32_t *tokens, int n_prompt, int *n_cached) {
    if (n_prompt < 1 || !tokens) return NI_EINVAL;
    if (n_prompt > kv->max_seq_len) return NI_ERANGE;
    int rev;
    uint64_t h, u;
    const int n_hit = match_prefix(kv, tokens, n_prompt, NULL, &rev, &h, &u);
    if (n_cached) *n_cached = n_hit * kv->block_size;
    return blocks_for(kv, n_prompt) - n_hit + rev;
}

int kv_can_alloc_prompt(const kv_mgr *kv, const int32_t *tokens, int n_prompt) {
    const int need = kv_prompt_blocks_needed(kv, tokens, n_prompt, NULL);
    return need >= 0 && need <= kv_num_allocatable(kv);
}

int kv_seq_alloc_prompt(kv_mgr *kv, kv_seq *s, const int32_t *tokens, int n_prompt,
                        int *n_cached) {
    if (!s->live || s->n_blocks != 0 || s->n_computed != 0 || n_prompt < 1 || !tokens)
        return NI_EINVAL;
    if (n_prompt > kv->max_seq_len) return NI_ERANGE;
    int rev;
    uint64_t h, puid;
    /* hits are written into the (empty) table's storage: not state until n_blocks moves */
    const int n_hit = match_prefix(kv, tokens, n_prompt, s->table, &rev, &h, &puid);
    const int n_new = blocks_for(kv, n_prompt) - n_hit;
    if (n_new + rev > kv_num_allocatable(kv)) return NI_ENOMEM;

    /* revive/share the hits first so allocation below cannot evict them */
    for (int i = 0; i < n_hit; i++) block_incref(kv, s->table[i]);
    for (int i = n_hit; i < n_hit + n_new; i++) s->table[i] = block_alloc(kv);
    s->n_blocks = n_hit + n_new;
    s->n_computed = n_hit * kv->block_size;
    s->n_hashed = n_hit;
    s->last_hash = h;
    s->last_uid = puid;
    if (kv->enable) {
        kv->prefix_queries++;
        kv->query_tokens += (uint64_t)n_prompt;
        kv->hit_tokens += (uint64_t)s->n_computed;
    }
    if (n_cached) *n_cached = s->n_computed;
    return 0;
}

/* Plans kv_seq_reserve: *n_new appended blocks, *n_cow shared blocks to replace. */
static int reserve_plan(const kv_mgr *kv, const kv_seq *s, int n_tokens, int *n_new, int *n_cow) {
    if (n_tokens > kv->max_seq_len) return NI_ERANGE;
    *n_new = *n_cow = 0;
    if (n_tokens <= s->n_computed) return 0;
    const int need = blocks_for(kv, n_tokens);
    *n_new = NI_MAX(0, need - s->n_blocks);
    const int end = NI_MIN(need, s->n_blocks);
    for (int i = s->n_computed / kv->block_size; i < end; i++)
        if (kv->ref[s->table[i]] > 1) (*n_cow)++;
    return 0;
}

int kv_blocks_needed(const kv_mgr *kv, const kv_seq *s, int n_tokens) {
    int n_new, n_cow;
    const int rc = reserve_plan(kv, s, n_tokens, &n_new, &n_cow);
    return rc < 0 ? rc : n_new + n_cow;
}

int kv_can_reserve(const kv_mgr *kv, const kv_seq *s, int n_tokens) {
    const int need = kv_blocks_needed(kv, s, n_tokens);
    return need >= 0 && need <= kv_num_allocatable(kv);
}

int kv_num_allocatable(const kv_mgr *kv) { return kv->free_list.n + kv->lru.n; }

int kv_seq_reserve(kv_mgr *kv, kv_seq *s, int n_tokens, kv_copy *cow) {
    if (cow) *cow = (kv_copy){-1, -1};
    if (!s->live) return NI_EINVAL;
    int n_new, n_cow;
    const int rc = reserve_plan(kv, s, n_tokens, &n_new, &n_cow);
    if (rc < 0) return rc;
    if (n_new + n_cow > kv_num_allocatable(kv)) return NI_ENOMEM;
    if (n_tokens <= s->n_computed) return 0;

    const int bs = kv->block_size;
    const int end = NI_MIN(blocks_for(kv, n_tokens), s->n_blocks);
    for (int i = s->n_computed / bs; i < end; i++) {
        const int32_t old = s->table[i];
        NI_ASSERT(!kv->cached[old]); /* cached blocks lie entirely before n_computed */
        if (kv->ref[old] <= 1) continue;
        const int32_t fresh = block_alloc(kv);
        if (i * bs < s->n_computed) { /* holds computed positions: copy them */
            NI_ASSERT(cow != NULL);
            NI_ASSERT(cow->src < 0); /* only the block containing n_computed */
            *cow = (kv_copy){old, fresh};
        }
        block_decref(kv, old); /* stays >= 1: the other holders keep it */
        s->table[i] = fresh;
    }
    for (int i = 0; i < n_new; i++) s->table[s->n_blocks++] = block_alloc(kv);
    return 0;
}

int kv_seq_commit(kv_mgr *kv, kv_seq *s, const int32_t *tokens, int n) {
    const int bs = kv->block_size;
    if (!s->live || n < s->n_computed || n > s->n_blocks * bs) return NI_EINVAL;
    if (kv->enable && !tokens && n / bs > s->n_hashed) return NI_EINVAL;
    s->n_computed = n;
    if (!kv->enable) return 0;
    for (int i = s->n_hashed; i < n / bs; i++) {
        const int32_t b = s->table[i];
        const int32_t *toks = tokens + (size_t)i * (size_t)bs;
        const uint64_t h = kv->hash_fn(s->last_hash, toks, bs);
        const int32_t c = cache_find(kv, h, s->last_uid, toks);
        if (c >= 0) {
            /* already cached (this block via a fork, or an identical block
             * computed concurrently): chain from it, do not register b */
            s->last_uid = kv->uid[c];
        } else {
            /* a cached block is immutable and keyed by what it holds: if b is
             * cached under another key the caller passed different tokens */
            NI_ASSERT(!kv->cached[b]);
            kv->hash[b] = h;
            kv->parent_hash[b] = s->last_hash;
            kv->uid[b] = ++kv->next_uid;
            kv->parent_uid[b] = s->last_uid;
            memcpy(kv->tok + (size_t)b * (size_t)bs, toks, (size_t)bs * sizeof(int32_t));
            cache_insert(kv, b);
            s->last_uid = kv->uid[b];
        }
        s->last_hash = h;
        s->n_hashed = i + 1;
    }
    return 0;
}

int kv_seq_fork(kv_mgr *kv, const kv_seq *src, kv_seq *dst) {
    if (src == dst || !src->live || !dst->live || dst->n_blocks != 0 || dst->n_computed != 0)
        return NI_EINVAL;
    for (int i = 0; i < src->n_blocks; i++) {
        block_incref(kv, src->table[i]);
        dst->table[i] = src->table[i];
    }
    dst->n_blocks = src->n_blocks;
    dst->n_computed = src->n_computed;
    dst->n_hashed = src->n_hashed;
    dst->last_hash = src->last_hash;
    dst->last_uid = src->last_uid;
    return 0;
}

/* ---- stats / debug -------------------------------------------------------- */

void kv_get_stats(const kv_mgr *kv, kv_stats *st) {
    st->prefix_queries = kv->prefix_queries;
    st->query_tokens = kv->query_tokens;
    st->hit_tokens = kv->hit_tokens;
    st->evictions = kv->evictions;
    st->blocks_total = kv->n_blocks;
    st->blocks_free = kv->free_list.n;
    st->blocks_evictable = kv->lru.n;
    st->blocks_used = kv->n_blocks - kv->free_list.n - kv->lru.n;
    st->blocks_cached = kv->n_cached;
    st->n_seqs = kv->n_live;
}

int kv_block_refcount(const kv_mgr *kv, int b) {
    return (b >= 0 && b < kv->n_blocks) ? kv->ref[b] : -1;
}

int kv_block_is_cached(const kv_mgr *kv, int b) {
    return (b >= 0 && b < kv->n_blocks) ? kv->cached[b] : 0;
}

/* Walks list l; every member must satisfy ref 0 and cached == want_cached.
 * Marks members in seen[] (tag). Returns 0 or NI_EINVAL with a message. */
static int check_list(const kv_mgr *kv, const kv_list *l, int want_cached, uint8_t *seen,
                      uint8_t tag, const char *name, char *err, size_t errlen) {
    int n = 0;
    int32_t prev = -1;
    for (int32_t b = l->head; b >= 0; b = kv->next[b]) {
        if (b >= kv->n_blocks) return ni_fail(err, errlen, NI_EINVAL, "%s: bad id %d", name, b);
        if (seen[b]) return ni_fail(err, errlen, NI_EINVAL, "%s: block %d twice/in two lists", name, b);
        seen[b] = tag;
        if (kv->prev[b] != prev)
            return ni_fail(err, errlen, NI_EINVAL, "%s: block %d prev %d != %d", name, b,
                           kv->prev[b], prev);
        if (kv->ref[b] != 0)
            return ni_fail(err, errlen, NI_EINVAL, "%s: block %d has ref %d", name, b, kv->ref[b]);
        if (kv->cached[b] != want_cached)
            return ni_fail(err, errlen, NI_EINVAL, "%s: block %d cached=%d", name, b, kv->cached[b]);
        prev = b;
        if (++n > kv->n_blocks) return ni_fail(err, errlen, NI_EINVAL, "%s: cycle", name);
    }
    if (l->tail != prev) return ni_fail(err, errlen, NI_EINVAL, "%s: tail %d != %d", name, l->tail, prev);
    if (l->n != n) return ni_fail(err, errlen, NI_EINVAL, "%s: count %d != walked %d", name, l->n, n);
    return 0;
}

static int check_impl(const kv_mgr *kv, int32_t *refs, int32_t *stamp, uint8_t *seen, char *err,
                      size_t errlen) {
    const int bs = kv->block_size;
    /* sequences: recount references */
    int n_live = 0;
    for (const kv_seq *s = kv->live; s; s = s->next_live) {
        const int sid = ++n_live;
        if (!s->live) return ni_fail(err, errlen, NI_EINVAL, "seq %d: in live list, not live", sid);
        if (s->n_blocks < 0 || s->n_blocks > kv->max_blocks_per_seq)
            return ni_fail(err, errlen, NI_EINVAL, "seq %d: n_blocks %d", sid, s->n_blocks);
        if (s->n_computed < 0 || s->n_computed > s->n_blocks * bs)
            return ni_fail(err, errlen, NI_EINVAL, "seq %d: n_computed %d > %d blocks", sid,
                           s->n_computed, s->n_blocks);
        const int want_hashed = kv->enable ? s->n_computed / bs : 0;
        if (s->n_hashed != want_hashed)
            return ni_fail(err, errlen, NI_EINVAL, "seq %d: n_hashed %d != %d", sid, s->n_hashed,
                           want_hashed);
        for (int i = 0; i < s->n_blocks; i++) {
            const int32_t b = s->table[i];
            if (b < 0 || b >= kv->n_blocks)
                return ni_fail(err, errlen, NI_EINVAL, "seq %d: table[%d] = %d", sid, i, b);
            if (stamp[b] == sid)
                return ni_fail(err, errlen, NI_EINVAL, "seq %d: block %d twice in table", sid, b);
            stamp[b] = sid;
            refs[b]++;
            if (i >= s->n_computed / bs && kv->cached[b])
                return ni_fail(err, errlen, NI_EINVAL,
                               "seq %d: cached block %d at index %d >= computed %d", sid, b, i,
                               s->n_computed);
        }
    }
    if (n_live != kv->n_live)
        return ni_fail(err, errlen, NI_EINVAL, "live list %d != n_live %d", n_live, kv->n_live);
    for (int b = 0; b < kv->n_blocks; b++)
        if (refs[b] != kv->ref[b])
            return ni_fail(err, errlen, NI_EINVAL, "block %d: refcount %d, tables hold %d", b,
                           kv->ref[b], refs[b]);

    /* lists */
    int rc = check_list(kv, &kv->free_list, 0, seen, 1, "free list", err, errlen);
    if (rc) return rc;
    rc = check_list(kv, &kv->lru, 1, seen, 2, "evictable list", err, errlen);
    if (rc) return rc;
    int used = 0, cached = 0;
    for (int b = 0; b < kv->n_blocks; b++) {
        if (kv->ref[b] == 0 && !seen[b])
            return ni_fail(err, errlen, NI_EINVAL, "block %d: ref 0 but in no list (leak)", b);
        if (kv->ref[b] > 0) {
            used++;
            if (kv->prev[b] != -1 || kv->next[b] != -1)
                return ni_fail(err, errlen, NI_EINVAL, "block %d: used but linked", b);
        }
        if (kv->cached[b]) {
            cached++;
            if (!kv->enable) return ni_fail(err, errlen, NI_EINVAL, "block %d cached, cache off", b);
            if (kv->uid[b] == 0 || kv->uid[b] > kv->next_uid || kv->parent_uid[b] >= kv->uid[b])
                return ni_fail(err, errlen, NI_EINVAL, "block %d: bad uid %llu parent %llu", b,
                               (unsigned long long)kv->uid[b], (unsigned long long)kv->parent_uid[b]);
            const int32_t *toks = kv->tok + (size_t)b * (size_t)bs;
            if (kv->hash_fn(kv->parent_hash[b], toks, bs) != kv->hash[b])
                return ni_fail(err, errlen, NI_EINVAL, "block %d: stored hash mismatch", b);
            /* reachable from its home slot, and the first match for its key
             * (a duplicate key earlier in the probe run is caught here) */
            if (cache_find(kv, kv->hash[b], kv->parent_uid[b], toks) != b)
                return ni_fail(err, errlen, NI_EINVAL, "block %d: not found or duplicate key", b);
        } else if (kv->uid[b] != 0) {
            return ni_fail(err, errlen, NI_EINVAL, "block %d: uncached with uid", b);
        }
    }
    if (used + kv->free_list.n + kv->lru.n != kv->n_blocks)
        return ni_fail(err, errlen, NI_EINVAL, "used %d + free %d + evictable %d != %d", used,
                       kv->free_list.n, kv->lru.n, kv->n_blocks);

    /* hash table: occupancy == cached blocks, each present once */
    int occ = 0;
    memset(stamp, 0, (size_t)kv->n_blocks * sizeof(int32_t));
    for (uint32_t i = 0; i <= kv->ht_mask; i++) {
        const int32_t b = kv->ht[i];
        if (b < 0) continue;
        if (b >= kv->n_blocks || !kv->cached[b])
            return ni_fail(err, errlen, NI_EINVAL, "hash slot %u: block %d not cached", i, b);
        if (stamp[b]++) return ni_fail(err, errlen, NI_EINVAL, "hash table: block %d twice", b);
        occ++;
    }
    if (occ != cached || cached != kv->n_cached)
        return ni_fail(err, errlen, NI_EINVAL, "hash entries %d, cached flags %d, n_cached %d", occ,
                       cached, kv->n_cached);
    return 0;
}

int kv_check(const kv_mgr *kv, char *err, size_t errlen) {
    const size_t n = (size_t)kv->n_blocks;
    int32_t *refs = calloc(n, sizeof(int32_t));
    int32_t *stamp = calloc(n, sizeof(int32_t));
    uint8_t *seen = calloc(n, 1);
    int rc = NI_ENOMEM;
    if (refs && stamp && seen) rc = check_impl(kv, refs, stamp, seen, err, errlen);
    free(refs);
    free(stamp);
    free(seen);
    return rc;
}
