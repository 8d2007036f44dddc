/*
 * gguf.c - GGUF reader (see gguf.h).
 *
 * Parsing walks a cursor over the mapping; every read goes through cur_need(),
 * which fails the parse if fewer bytes remain than requested, so no field can
 * point outside the file. Counts are checked against the bytes that remain
 * before arrays are allocated (an element takes at least one byte on disk), so
 * an absurd count cannot trigger a huge allocation. Tensor extents are checked
 * with overflow-safe arithmetic against the data section. Duplicate keys and
 * duplicate tensor names are rejected (sort-based, O(n log n)).
 */
#include "gguf.h"

#include <stddef.h>
#include <string.h>
#include <sys/mman.h>

#include "quant.h"
#include "engine/util/util.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_MAX_DIMS 4

/* printf arguments for a gguf_str under "%.*s": at most 200 bytes, so a huge
 * (>= 2 GiB) name can neither turn the precision negative nor flood err. */
#define NAME(s) (int)NI_MIN((s).len, 200), (s).ptr

typedef struct cursor {
    const uint8_t *base;
    uint64_t size;
    uint64_t off;
} cursor;

static int cur_need(const cursor *c, uint64_t n) { return n <= c->size - c->off; }

static int cur_read(cursor *c, void *dst, uint64_t n) {
    if (!cur_need(c, n)) return 0;
    memcpy(dst, c->base + c->off, n);
    c->off += n;
    return 1;
}

static int cur_str(cursor *c, gguf_str *s) {
    uint64_t len;
    if (!cur_read(c, &len, 8) || !cur_need(c, len)) return 0;
    s->len = len;
    s->ptr = (const char *)c->base + c->off;
    c->off += len;
    return 1;
}

static uint64_t vtype_size(uint32_t t) {
    switch (t) {
    case GGUF_VT_UINT8: case GGUF_VT_INT8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_UINT16: case GGUF_VT_INT16: return 2;
    case GGUF_VT_UINT32: case GGUF_VT_INT32: case GGUF_VT_FLOAT32: return 4;
    case GGUF_VT_UINT64: case GGUF_VT_INT64: case GGUF_VT_FLOAT64: return 8;
    default: return 0;
    }
}

/* Reads one scalar of type t into kv->v. */
static int read_scalar(cursor *c, uint32_t t, gguf_kv *kv) {
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
            float f32; uint64_t u64; int64_t i64; double f64; } x;
    if (t == GGUF_VT_STRING) return cur_str(c, &kv->v.str);
    uint64_t n = vtype_size(t);
    if (!n || !cur_read(c, &x, n)) return 0;
    switch (t) {
    case GGUF_VT_UINT8: case GGUF_VT_BOOL: kv->v.u64 = x.u8; break;
    case GGUF_VT_INT8: kv->v.i64 = x.i8; break;
    case GGUF_VT_UINT16: kv->v.u64 = x.u16; break;
    case GGUF_VT_INT16: kv->v.i64 = x.i16; break;
    case GGUF_VT_UINT32: kv->v.u64 = x.u32; break;
    case GGUF_VT_INT32: kv->v.i64 = x.i32; break;
    case GGUF_VT_FLOAT32: kv->v.f64 = x.f32; break;
    case GGUF_VT_UINT64: kv->v.u64 = x.u64; break;
    case GGUF_VT_INT64: kv->v.i64 = x.i64; break;
    case GGUF_VT_FLOAT64: kv->v.f64 = x.f64; break;
    }
    return 1;
}

static int is_signed(uint32_t t) {
    return t == GGUF_VT_INT8 || t == GGUF_VT_INT16 || t == GGUF_VT_INT32 || t == GGUF_VT_INT64;
}
static int is_unsigned(uint32_t t) {
    return t == GGUF_VT_UINT8 || t == GGUF_VT_UINT16 || t == GGUF_VT_UINT32 ||
           t == GGUF_VT_UINT64 || t == GGUF_VT_BOOL;
}

/* qsort order on gguf_str pointers: by length, then bytes. */
static int str_ptr_cmp(const void *a, const void *b) {
    const gguf_str *x = *(const gguf_str *const *)a, *y = *(const gguf_str *const *)b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->len ? memcmp(x->ptr, y->ptr, x->len) : 0;
}

/* Looks for two equal strings among n records of `stride` bytes, each holding
 * a gguf_str at byte offset `off`. Sorting keeps this O(n log n): a file with
 * many names cannot make opening quadratic. Returns 1 with *dup set, 0 when
 * all differ, or -1 when out of memory. */
static int find_duplicate(const void *recs, uint64_t n, size_t stride, size_t off,
                          const gguf_str **dup) {
    if (n < 2) return 0;
    const gguf_str **v = malloc(n * sizeof(*v));
    if (!v) return -1;
    for (uint64_t i = 0; i < n; i++)
        v[i] = (const gguf_str *)((const uint8_t *)recs + i * stride + off);
    qsort(v, n, sizeof(*v), str_ptr_cmp);
    int found = 0;
    for (uint64_t i = 1; i < n && !found; i++)
        if (!str_ptr_cmp(&v[i - 1], &v[i])) {
            *dup = v[i];
            found = 1;
        }
    free(v);
    return found;
}

/* Header: magic, version, counts. Allocates the kv and tensor arrays once
 * the counts are known to fit the file. */
static int parse_header(gguf_ctx *g, cursor *c, uint64_t *n_tensors, uint64_t *n_kv, char *err,
                        size_t errlen) {
    const char *p = g->path;
    uint32_t magic;
    if (!cur_read(c, &magic, 4))
        return ni_fail(err, errlen, NI_EFORMAT, "%s: file too small to be GGUF", p);
    if (magic != GGUF_MAGIC)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: not a GGUF file (bad magic)", p);
    if (!cur_read(c, &g->version, 4))
        return ni_fail(err, errlen, NI_EFORMAT, "%s: truncated header", p);
    if (g->version != 2 && g->version != 3)
        return ni_fail(err, errlen, NI_EUNSUPPORTED, "%s: unsupported GGUF version %u", p,
                       g->version);
    if (!cur_read(c, n_tensors, 8) || !cur_read(c, n_kv, 8))
        return ni_fail(err, errlen, NI_EFORMAT, "%s: truncated header", p);
    /* Every kv takes >= 12 bytes, every tensor info >= 24: reject absurd counts early
     * (together they must fit the rest of the file). */
    uint64_t rest = c->size - c->off;
    if (*n_kv > rest / 12 || *n_tensors > (rest - *n_kv * 12) / 24)
        return ni_fail(err, errlen, NI_EFORMAT,
                       "%s: absurd counts (%llu tensors, %llu metadata keys) for a %zu-byte file",
                       p, (unsigned long long)*n_tensors, (unsigned long long)*n_kv, g->size);
    g->kv = calloc(*n_kv ? *n_kv : 1, sizeof(gguf_kv));
    g->tensors = calloc(*n_tensors ? *n_tensors : 1, sizeof(gguf_tensor));
    if (!g->kv || !g->tensors) return ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory", p);
    return 0;
}

/* The value of an array kv (type and count already read): strings are
 * indexed, other element types are referenced in place. */
static int parse_array(gguf_ctx *g, cursor *c, gguf_kv *kv, char *err, size_t errlen) {
    const char *p = g->path;
    if (kv->arr_type == GGUF_VT_STRING) {
        if (kv->arr_n > (c->size - c->off) / 8)
            return ni_fail(err, errlen, NI_EFORMAT, "%s: array '%.*s' overruns the file", p,
                           NAME(kv->key));
        kv->arr_strs = malloc((kv->arr_n ? kv->arr_n : 1) * sizeof(gguf_str));
        if (!kv->arr_strs) return ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory", p);
        for (uint64_t j = 0; j < kv->arr_n; j++)
            if (!cur_str(c, &kv->arr_strs[j]))
                return ni_fail(err, errlen, NI_EFORMAT, "%s: truncated string array '%.*s'", p,
                               NAME(kv->key));
        return 0;
    }
    uint64_t es = vtype_size(kv->arr_type);
    if (!es)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: array '%.*s' has invalid element type %u", p,
                       NAME(kv->key), kv->arr_type);
    if (kv->arr_n > (c->size - c->off) / es)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: array '%.*s' overruns the file", p,
                       NAME(kv->key));
    kv->arr_data = c->base + c->off;
    c->off += kv->arr_n * es;
    return 0;
}

/* The metadata section: n_kv keys with their values, no duplicate key, and a
 * valid general.alignment when present (default 32). */
static int parse_kvs(gguf_ctx *g, cursor *c, uint64_t n_kv, char *err, size_t errlen) {
    const char *p = g->path;
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        if (!cur_str(c, &kv->key) || !cur_read(c, &kv->type, 4))
            return ni_fail(err, errlen, NI_EFORMAT, "%s: truncated metadata (key %llu)", p,
                           (unsigned long long)i);
        g->n_kv = i + 1; /* so gguf_close frees arr_strs of parsed entries */
        if (kv->type == GGUF_VT_ARRAY) {
            if (!cur_read(c, &kv->arr_type, 4) || !cur_read(c, &kv->arr_n, 8))
                return ni_fail(err, errlen, NI_EFORMAT, "%s: truncated array '%.*s'", p,
                               NAME(kv->key));
            int rc = parse_array(g, c, kv, err, errlen);
            if (rc) return rc;
        } else if (!read_scalar(c, kv->type, kv)) {
            return ni_fail(err, errlen, NI_EFORMAT, "%s: bad or truncated value for key '%.*s'",
                           p, NAME(kv->key));
        }
    }
    const gguf_str *dup;
    int rc = find_duplicate(g->kv, n_kv, sizeof(gguf_kv), offsetof(gguf_kv, key), &dup);
    if (rc < 0) return ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory", p);
    if (rc)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: duplicate metadata key '%.*s'", p, NAME(*dup));
    g->alignment = 32;
    const gguf_kv *al = gguf_find(g, "general.alignment");
    if (al) {
        if (!is_unsigned(al->type) || al->v.u64 == 0 || (al->v.u64 & (al->v.u64 - 1)) ||
            al->v.u64 > 65536)
            return ni_fail(err, errlen, NI_EFORMAT, "%s: invalid general.alignment", p);
        g->alignment = al->v.u64;
    }
    return 0;
}

/* One tensor info: name, shape (1..4 dims, no zero or absurd extent), a
 * supported type whose block divides the rows, and its byte size. */
static int parse_tensor_info(gguf_ctx *g, cursor *c, gguf_tensor *t, uint64_t i, char *err,
                             size_t errlen) {
    const char *p = g->path;
    if (!cur_str(c, &t->name) || !cur_read(c, &t->n_dims, 4))
        return ni_fail(err, errlen, NI_EFORMAT, "%s: truncated tensor info %llu", p,
                       (unsigned long long)i);
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: tensor '%.*s' has %u dims", p, NAME(t->name),
                       t->n_dims);
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    if (!cur_read(c, t->ne, 8ull * t->n_dims) || !cur_read(c, &t->type, 4) ||
        !cur_read(c, &t->offset, 8))
        return ni_fail(err, errlen, NI_EFORMAT, "%s: truncated tensor info '%.*s'", p,
                       NAME(t->name));
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (t->ne[d] == 0 || t->ne[d] > (1ull << 40) || n > UINT64_MAX / t->ne[d])
            return ni_fail(err, errlen, NI_EFORMAT, "%s: tensor '%.*s' has absurd shape", p,
                           NAME(t->name));
        n *= t->ne[d];
    }
    t->n_elements = n;
    if (!qnt_block_elems(t->type))
        return ni_fail(err, errlen, NI_EUNSUPPORTED, "%s: tensor '%.*s' has unsupported type %u",
                       p, NAME(t->name), t->type);
    if (t->ne[0] % (uint64_t)qnt_block_elems(t->type))
        return ni_fail(err, errlen, NI_EFORMAT,
                       "%s: tensor '%.*s' row length %llu is not a multiple of the %s block", p,
                       NAME(t->name), (unsigned long long)t->ne[0], gguf_type_name(t->type));
    if (qnt_nbytes(t->type, n, &t->nbytes) != 0)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: tensor '%.*s' is too large", p,
                       NAME(t->name));
    return 0;
}

/* The data section starts at the next alignment boundary; every tensor must
 * be aligned and lie inside the file. */
static int place_tensors(gguf_ctx *g, const cursor *c, uint64_t n_tensors, char *err,
                         size_t errlen) {
    const char *p = g->path;
    uint64_t data = (c->off + g->alignment - 1) / g->alignment * g->alignment;
    if (n_tensors > 0 && data > g->size)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: truncated before tensor data", p);
    g->data_offset = data;
    for (uint64_t i = 0; i < n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        uint64_t avail = g->size - data;
        if (t->offset % g->alignment)
            return ni_fail(err, errlen, NI_EFORMAT, "%s: tensor '%.*s' is misaligned", p,
                           NAME(t->name));
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return ni_fail(err, errlen, NI_EFORMAT,
                           "%s: tensor '%.*s' extends past the end of the file (truncated?)", p,
                           NAME(t->name));
        t->data = (const uint8_t *)g->map + data + t->offset;
    }
    return 0;
}

/* The whole file, in its on-disk order: header, metadata, tensor infos, data. */
static int parse(gguf_ctx *g, char *err, size_t errlen) {
    cursor c = {g->map, g->size, 0};
    uint64_t n_tensors = 0, n_kv = 0;
    int rc = parse_header(g, &c, &n_tensors, &n_kv, err, errlen);
    if (!rc) rc = parse_kvs(g, &c, n_kv, err, errlen);
    for (uint64_t i = 0; !rc && i < n_tensors; i++) {
        rc = parse_tensor_info(g, &c, &g->tensors[i], i, err, errlen);
        if (!rc) g->n_tensors = i + 1;
    }
    if (rc) return rc;
    const gguf_str *dup;
    rc = find_duplicate(g->tensors, n_tensors, sizeof(gguf_tensor), offsetof(gguf_tensor, name),
                        &dup);
    if (rc < 0) return ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory", g->path);
    if (rc)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: duplicate tensor '%.*s'", g->path,
                       NAME(*dup));
    return place_tensors(g, &c, n_tensors, err, errlen);
}

int gguf_open(gguf_ctx *g, const char *path, char *err, size_t errlen) {
    memset(g, 0, sizeof(*g));
    void *map;
    size_t size;
    int rc = ni_map_file(path, 24, "GGUF", &map, &size, err, errlen);
    if (rc) return rc;
    g->map = map;
    g->size = size;
    g->path = strdup(path);
    if (!g->path) {
        gguf_close(g);
        return ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory", path);
    }
    rc = parse(g, err, errlen);
    if (rc) gguf_close(g);
    return rc;
}

void gguf_close(gguf_ctx *g) {
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++) free(g->kv[i].arr_strs);
    free(g->kv);
    free(g->tensors);
    if (g->map) munmap(g->map, g->size);
    free(g->path);
    memset(g, 0, sizeof(*g));
}

int gguf_str_eq(gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && !memcmp(s.ptr, c, n);
}

const gguf_kv *gguf_find(const gguf_ctx *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (gguf_str_eq(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

int gguf_get_int(const gguf_ctx *g, const char *key, int64_t *out) {
    const gguf_kv *kv = gguf_find(g, key);
    if (!kv) return NI_ENOTFOUND;
    if (is_signed(kv->type)) *out = kv->v.i64;
    else if (is_unsigned(kv->type) && kv->v.u64 <= (uint64_t)INT64_MAX) *out = (int64_t)kv->v.u64;
    else return NI_EFORMAT;
    return 0;
}

int gguf_get_float(const gguf_ctx *g, const char *key, double *out) {
    const gguf_kv *kv = gguf_find(g, key);
    if (!kv) return NI_ENOTFOUND;
    if (kv->type == GGUF_VT_FLOAT32 || kv->type == GGUF_VT_FLOAT64) *out = kv->v.f64;
    else if (is_signed(kv->type)) *out = (double)kv->v.i64;
    else if (is_unsigned(kv->type)) *out = (double)kv->v.u64;
    else return NI_EFORMAT;
    return 0;
}

int gguf_get_str(const gguf_ctx *g, const char *key, gguf_str *out) {
    const gguf_kv *kv = gguf_find(g, key);
    if (!kv) return NI_ENOTFOUND;
    if (kv->type != GGUF_VT_STRING) return NI_EFORMAT;
    *out = kv->v.str;
    return 0;
}

const gguf_kv *gguf_get_arr(const gguf_ctx *g, const char *key, uint32_t elem_type) {
    const gguf_kv *kv = gguf_find(g, key);
    if (!kv || kv->type != GGUF_VT_ARRAY || kv->arr_type != elem_type) return NULL;
    return kv;
}

const gguf_tensor *gguf_find_tensor(const gguf_ctx *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (gguf_str_eq(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

const char *gguf_type_name(uint32_t type) {
    switch (type) {
    case GGUF_T_F32: return "F32";
    case GGUF_T_F16: return "F16";
    case GGUF_T_Q4_0: return "Q4_0";
    case GGUF_T_Q4_1: return "Q4_1";
    case GGUF_T_Q8_0: return "Q8_0";
    case GGUF_T_BF16: return "BF16";
    default: return "unknown";
    }
}
