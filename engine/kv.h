/*
 * kv.h - paged KV cache block manager with prefix caching (vLLM-style).
 *
 * The manager hands out physical KV block ids; it never owns KV memory (the
 * backend does, see backend.h). A sequence's block table maps logical block i
 * (positions [i*block_size, (i+1)*block_size)) to a physical block id; the
 * table is an int32_t row usable directly (memcpy) as a row of
 * eng_batch.block_tables.
 *
 * Block states (every block is in exactly one):
 *   USED       refcount > 0 (held by >= 1 sequence table); in no list;
 *   FREE       refcount 0, not cached; in the free list;
 *   EVICTABLE  refcount 0, cached (still holds valid KV and its hash entry);
 *              in the evictable LRU list, oldest release first.
 * Allocation takes FREE blocks first, then evicts the least recently
 * released EVICTABLE block (dropping its hash entry, counted in
 * stats.evictions). Both lists are intrusive doubly-linked lists over block
 * indices, so alloc / release / revive are O(1).
 *
 * Prefix caching: a FULL block whose KV has been computed (kv_seq_commit) is
 * registered in an open-addressing hash table (sized once at init, capacity a
 * power of two >= 2*n_blocks, linear probing, backward-shift deletion) under
 * the chained hash h_i = hash(h_{i-1}, tokens of block i), h_{-1} = 0.
 * A lookup hit is confirmed exactly, never by the hash alone: the cached
 * block's stored token ids must equal the block's tokens AND its parent must
 * be the very block matched one level up (each registration gets a unique,
 * never reused 64-bit uid; a cached block stores its parent's uid). So two
 * equal blocks under different prefixes never match even if every hash
 * collides (config.hash_fn is the test hook to force collisions). When a
 * sequence commits a block whose (hash, parent, tokens) is already cached
 * under another id (two sequences computed the same prefix concurrently), the
 * new block is not registered (it returns to the free list when released);
 * the sequence continues its chain from the existing one.
 *
 * Fully cached prompts: kv_seq_alloc_prompt only matches the first
 * (n_prompt-1)/block_size full blocks, i.e. the full blocks that lie entirely
 * before the last prompt token (vLLM v1's rule). The last prompt token is then
 * always in a block the sequence owns alone, so the engine recomputes it (it
 * needs its logits) without ever writing into a shared or cached block and
 * without a block copy at admission. Cost: when n_prompt is a multiple of
 * block_size and every block hits, n_cached = n_prompt - block_size (the last
 * block is recomputed, <= block_size tokens) instead of n_prompt - 1.
 *
 * Invariants (checked by kv_check):
 *   - refcount[b] == number of live sequence tables containing b; a table
 *     never holds the same block twice;
 *   - free + evictable + used == n_blocks; list membership matches state;
 *   - a block is in the hash table iff it is cached; cached blocks are full,
 *     computed, never written again (shared or cached blocks are read-only:
 *     kv_seq_reserve copies-on-write before any write);
 *   - for every sequence, blocks holding positions >= n_computed are
 *     uncached; with caching on, n_hashed == n_computed / block_size.
 *
 * Memory: everything is allocated by kv_init, except each sequence's block
 * table, allocated once by kv_seq_init at its full capacity
 * (max_blocks_per_seq = ceil(max_seq_len / block_size)) so that nothing in
 * the step loop allocates. Sequences (struct kv_seq) are owned by the caller,
 * must stay at a fixed address between kv_seq_init and kv_seq_destroy (the
 * manager links live sequences for kv_check) and are not thread-safe: one
 * thread (the engine loop) drives a manager.
 */
#ifndef NI_KV_H
#define NI_KV_H

#include <stddef.h>
#include <stdint.h>

#define KV_DEFAULT_BLOCK_SIZE 16

/* Chained block hash: hash of a block given its parent's hash (0 for the
 * first block) and its n token ids. Must be a pure function. */
typedef uint64_t (*kv_hash_fn)(uint64_t parent, const int32_t *tokens, int n);

typedef struct kv_config {
    int n_blocks;            /* pool size in blocks (> 0), same as the backend's */
    int block_size;          /* tokens per block; 0 = KV_DEFAULT_BLOCK_SIZE */
    int max_seq_len;         /* max tokens per sequence; 0 = n_blocks * block_size */
    int enable_prefix_cache; /* 0 = never hash, register or look up blocks */
    kv_hash_fn hash_fn;      /* NULL = kv_hash_default; test hook (force collisions) */
} kv_config;

/* Counters for /metrics. Cumulative counters only grow; gauges are now. */
typedef struct kv_stats {
    uint64_t prefix_queries;  /* successful kv_seq_alloc_prompt calls with caching on */
    uint64_t query_tokens;    /* sum of their n_prompt */
    uint64_t hit_tokens;      /* sum of their n_cached */
    uint64_t evictions;       /* cached unreferenced blocks dropped to be reused */
    int blocks_total;         /* n_blocks */
    int blocks_used;          /* refcount > 0 */
    int blocks_free;          /* refcount 0, uncached */
    int blocks_evictable;     /* refcount 0, cached (reusable prefix) */
    int blocks_cached;        /* in the hash table (used or evictable) */
    int n_seqs;               /* live sequences (kv_seq_init'ed, not destroyed) */
} kv_stats;

/* Copy-on-write order returned by kv_seq_reserve: the caller must have the
 * backend copy block src into dst (eng_backend.copy_block) before the next
 * forward call that uses the table. src = dst = -1 when there is nothing to copy. */
typedef struct kv_copy {
    int32_t src;
    int32_t dst;
} kv_copy;

typedef struct kv_mgr kv_mgr;

/* A sequence's KV state. Owned by the caller; fields are read-only outside
 * kv.c. Fixed address while live (see the header comment). */
typedef struct kv_seq {
    int32_t *table;      /* [max_blocks_per_seq] physical block ids; the first
                            n_blocks are valid, later entries unspecified; owned
                            by the manager (kv_seq_init allocates, kv_seq_destroy
                            frees) */
    int n_blocks;        /* blocks in the table: positions < n_blocks*block_size are covered */
    int n_computed;      /* tokens [0, n_computed) have their KV written */
    int n_hashed;        /* leading full blocks whose chained hash is known */
    uint64_t last_hash;  /* chained hash of block n_hashed-1 (0 if n_hashed == 0) */
    uint64_t last_uid;   /* private: uid of the cached block equal to block n_hashed-1 */
    struct kv_seq *prev_live, *next_live; /* private: live-sequence list */
    int live;            /* private: 1 between kv_seq_init and kv_seq_destroy */
} kv_seq;

/* Default hash: 64-bit FNV-1a over the parent hash then the token ids, with a
 * murmur3 finalizer for well-mixed low bits. */
uint64_t kv_hash_default(uint64_t parent, const int32_t *tokens, int n);

/* Creates a manager. Returns 0 and *out, NI_EINVAL for a bad config, or
 * NI_ENOMEM. The caller frees it with kv_free. */
int kv_init(kv_mgr **out, const kv_config *c);

/* Frees the manager (NULL ok). Live sequences must be destroyed first (their
 * tables are freed by kv_seq_destroy, not here). */
void kv_free(kv_mgr *kv);

int kv_block_size(const kv_mgr *kv);
/* Capacity of every sequence table = the row stride to use for eng_batch. */
int kv_max_blocks_per_seq(const kv_mgr *kv);
int kv_prefix_cache_enabled(const kv_mgr *kv);

/* Prepares a caller-owned *s that is not live (any prior contents ignored):
 * empty table of max_blocks_per_seq entries, linked into the live list.
 * Returns 0 or NI_ENOMEM. The only allocation outside kv_init. */
int kv_seq_init(kv_mgr *kv, kv_seq *s);

/* Releases every block of s (refcounts--, last block first, so a released
 * sequence's tail is evicted before its prefix) and empties it: n_blocks =
 * n_computed = n_hashed = 0. s stays initialized (preemption by recompute,
 * abort). Never fails. */
void kv_seq_reset(kv_mgr *kv, kv_seq *s);

/* kv_seq_reset, then frees the table and unlinks s. s may be kv_seq_init'ed
 * again. No-op on a sequence that is not live. */
void kv_seq_destroy(kv_mgr *kv, kv_seq *s);

/* Admits a prompt into an EMPTY sequence s: attaches the longest cached
 * prefix (full blocks only, at most (n_prompt-1)/block_size of them: see
 * "Fully cached prompts"), then allocates blocks so the table covers all
 * n_prompt tokens. Sets s->n_computed = *n_cached = hit blocks * block_size
 * (<= n_prompt - 1); the engine computes tokens [*n_cached, n_prompt).
 * tokens[n_prompt] is only read here (not kept). Returns 0; NI_ENOMEM when
 * the pool cannot supply the blocks (nothing changed: no refcount, LRU order
 * or counter moved); NI_ERANGE if n_prompt exceeds max_seq_len; NI_EINVAL if
 * s is not empty or n_prompt < 1. */
int kv_seq_alloc_prompt(kv_mgr *kv, kv_seq *s, const int32_t *tokens, int n_prompt,
                        int *n_cached);

/* Read-only admission query for kv_seq_alloc_prompt(tokens, n_prompt): returns
 * the number of blocks it would take from the allocatable pool (new blocks
 * plus cached-unreferenced hits it would revive); *n_cached (may be NULL) gets
 * the cached token count it would report. Changes nothing, counts nothing. */
int kv_prompt_blocks_needed(const kv_mgr *kv, const int32_t *tokens, int n_prompt,
                            int *n_cached);

/* Makes s writable for tokens [s->n_computed, n_tokens): grows the table to
 * cover n_tokens and replaces every shared block (refcount > 1) in that range
 * with a fresh one (copy-on-write; the old block keeps its other holders).
 * Only the block containing position n_computed can hold valid KV that must
 * be preserved (when n_computed % block_size != 0); for it *cow (may be NULL
 * only if the caller knows no copy can arise) gets {src, dst} and the caller
 * must copy it with the backend before the next forward; otherwise *cow =
 * {-1, -1}. Shared blocks past it are swapped without a copy. Returns 0;
 * NI_ENOMEM without any state change; NI_ERANGE if n_tokens > max_seq_len. */
int kv_seq_reserve(kv_mgr *kv, kv_seq *s, int n_tokens, kv_copy *cow);

/* Blocks kv_seq_reserve(s, n_tokens) would take from the pool (new + CoW).
 * Returns >= 0, or NI_ERANGE if n_tokens > max_seq_len. */
int kv_blocks_needed(const kv_mgr *kv, const kv_seq *s, int n_tokens);

/* Blocks allocatable right now: free + evictable. */
int kv_num_allocatable(const kv_mgr *kv);

/* 1 if kv_seq_reserve(s, n_tokens) would succeed now, else 0. */
int kv_can_reserve(const kv_mgr *kv, const kv_seq *s, int n_tokens);

/* 1 if kv_seq_alloc_prompt(tokens, n_prompt) would succeed now, else 0. */
int kv_can_alloc_prompt(const kv_mgr *kv, const int32_t *tokens, int n_prompt);

/* Records that tokens [0, n) of s now have their KV computed (n >=
 * s->n_computed, n <= s->n_blocks * block_size). With caching on, every block
 * that became full is hashed and registered in the prefix cache (or chained
 * to an identical cached block). tokens[0..n) are the sequence's tokens (only
 * read; may be NULL with caching off). Returns 0 or NI_EINVAL. */
int kv_seq_commit(kv_mgr *kv, kv_seq *s, const int32_t *tokens, int n);

/* Makes the EMPTY live sequence dst share every block of src (refcount++),
 * with src's n_computed and hash chain (n>1 parallel sampling). Takes no
 * block from the pool; the first write into a shared block goes through
 * kv_seq_reserve's copy-on-write. Returns 0 or NI_EINVAL (dst not empty, or
 * dst == src). */
int kv_seq_fork(kv_mgr *kv, const kv_seq *src, kv_seq *dst);

/* Fills *st with the counters and gauges. */
void kv_get_stats(const kv_mgr *kv, kv_stats *st);

/* Debug: refcount of block b (-1 if out of range) and whether it is cached. */
int kv_block_refcount(const kv_mgr *kv, int b);
int kv_block_is_cached(const kv_mgr *kv, int b);

/* Debug consistency check of every invariant listed above (O(n_blocks +
 * table entries), allocates scratch memory). Returns 0, NI_EINVAL with a
 * message in err on the first violation found, or NI_ENOMEM. */
int kv_check(const kv_mgr *kv, char *err, size_t errlen);

#endif
