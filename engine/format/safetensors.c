/*
 * safetensors.c - see safetensors.h.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
 * then the data section; offsets are relative to its start.
 */
#include "safetensors.h"

#include <jansson.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gguf.h"
#include "quant.h"
#include "engine/util/util.h"

#define ST_MAX_HEADER (100u << 20) /* 100 MiB of JSON is already absurd */

static uint32_t dtype_to_type(const char *d) {
    if (!strcmp(d, "F32")) return GGUF_T_F32;
    if (!strcmp(d, "F16")) return GGUF_T_F16;
    if (!strcmp(d, "BF16")) return GGUF_T_BF16;
    return ST_TYPE_UNSUPPORTED;
}

static uint64_t dtype_size(const char *d) {
    if (!strcmp(d, "F64") || !strcmp(d, "I64") || !strcmp(d, "U64")) return 8;
    if (!strcmp(d, "F32") || !strcmp(d, "I32") || !strcmp(d, "U32")) return 4;
    if (!strcmp(d, "F16") || !strcmp(d, "BF16") || !strcmp(d, "I16") || !strcmp(d, "U16"))
        return 2;
    if (!strcmp(d, "I8") || !strcmp(d, "U8") || !strcmp(d, "BOOL") || !strncmp(d, "F8", 2))
        return 1;
    return 0;
}

static int parse_tensor(st_tensor *t, const char *name, json_t *v, uint64_t data_size,
                        const char *path, char *err, size_t errlen) {
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
           *off = json_object_get(v, "data_offsets");
    if (!json_is_string(dt) || !json_is_array(sh) || !json_is_array(off) ||
        json_array_size(off) != 2 || !json_is_integer(json_array_get(off, 0)) ||
        !json_is_integer(json_array_get(off, 1)))
        return ni_fail(err, errlen, NI_EFORMAT, "%s: tensor '%s' has a malformed header entry",
                       path, name);
    const char *d = json_string_value(dt);
    uint64_t es = dtype_size(d);
    if (!es)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: tensor '%s' has unknown dtype '%s'", path,
                       name, d);
    if (json_array_size(sh) > ST_MAX_DIMS)
        return ni_fail(err, errlen, NI_EFORMAT, "%s: tensor '%s' has too many dims", path, name);
    t->n_dims = (int)json_array_size(sh);
    uint64_t n = 1;
    for (int i = 0; i < t->n_dims; i++) {
        json_t *x = json_array_get(sh, (size_t)i);
        if (!json_is_integer(x) || json_integer_value(x) < 0 ||
            json_integer_value(x) > (json_int_t)(1ll << 40))
            return ni_fail(err, errlen, NI_EFORMAT, "%s: tensor '%s' has an invalid shape", path,
                           name);
        t->shape[i] = (uint64_t)json_integer_value(x);
        if (t->shape[i] && n > UINT64_MAX / t->shape[i])
            return ni_fail(err, errlen, NI_EFORMAT, "%s: tensor '%s' is too large", path, name);
        n *= t->shape[i];
    }
    json_int_t b = json_integer_value(json_array_get(off, 0)),
               e = json_integer_value(json_array_get(off, 1));
    if (b < 0 || e < b || (uint64_t)e > data_size)
        return ni_fail(err, errlen, NI_EFORMAT,
                       "%s: tensor '%s' data [%lld, %lld) lies outside the file (truncated?)",
                       path, name, (long long)b, (long long)e);
    /* The reference writer lays tensors out largest dtype first, so every
     * offset is a multiple of its element size; one that is not comes from
     * a broken writer or a shifted offset. */
    if ((uint64_t)b % es)
        return ni_fail(err, errlen, NI_EFORMAT,
                       "%s: tensor '%s' data offset %lld is misaligned (not a multiple of its "
                       "%llu-byte %s elements)",
                       path, name, (long long)b, (unsigned long long)es, d);
    if (n > UINT64_MAX / es || (uint64_t)(e - b) != n * es)
        return ni_fail(err, errlen, NI_EFORMAT,
                       "%s: tensor '%s' byte size does not match its shape and dtype", path, name);
    t->name = strdup(name);
    if (!t->name) return ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory", path);
    snprintf(t->dtype, sizeof t->dtype, "%s", d);
    t->type = dtype_to_type(d);
    t->n_elements = n;
    t->nbytes = (uint64_t)(e - b);
    t->data = (const void *)(uintptr_t)b; /* relative until the caller rebases it */
    return 0;
}

typedef struct span {
    uint64_t b, e;
    const char *name;
} span;

static int span_cmp(const void *x, const void *y) {
    const span *a = x, *b = y;
    if (a->b != b->b) return a->b < b->b ? -1 : 1;
    return a->e < b->e ? -1 : a->e > b->e;
}

/* The tensors t[0 .. n) of one file must tile its data section exactly, as
 * the reference reader (safetensors' validate) requires: in offset order each
 * starts where the previous one ended, and the last ends the file. Overlap
 * would alias two weights (offsets all zero read one tensor's bytes for
 * every tensor); a gap or a tail are bytes no tensor accounts for. Both mean
 * the offsets are wrong, whatever the bounds checks let through. */
static int check_tiling(const st_tensor *t, int n, const uint8_t *data, uint64_t data_size,
                        const char *path, char *err, size_t errlen) {
    span *v = malloc((size_t)(n ? n : 1) * sizeof(*v));
    if (!v) return ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) {
        v[i].b = (uint64_t)((const uint8_t *)t[i].data - data);
        v[i].e = v[i].b + t[i].nbytes;
        v[i].name = t[i].name;
    }
    qsort(v, (size_t)n, sizeof(*v), span_cmp);
    uint64_t at = 0;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        if (v[i].b < at)
            rc = ni_fail(err, errlen, NI_EFORMAT,
                         "%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap", path,
                         v[i - 1].name, (unsigned long long)v[i - 1].b,
                         (unsigned long long)v[i - 1].e, v[i].name, (unsigned long long)v[i].b,
                         (unsigned long long)v[i].e);
        else if (v[i].b > at)
            rc = ni_fail(err, errlen, NI_EFORMAT,
                         "%s: %llu-byte gap in the data before tensor '%s' at offset %llu", path,
                         (unsigned long long)(v[i].b - at), v[i].name, (unsigned long long)v[i].b);
        at = v[i].e;
    }
    if (!rc && at != data_size)
        rc = ni_fail(err, errlen, NI_EFORMAT,
                     "%s: %llu bytes after the last tensor's data (offset %llu of %llu)", path,
                     (unsigned long long)(data_size - at), (unsigned long long)at,
                     (unsigned long long)data_size);
    free(v);
    return rc;
}

int st_open_file(st_set *s, const char *path, char *err, size_t errlen) {
    void *map;
    size_t size;
    int rc0 = ni_map_file(path, 8, "safetensors", &map, &size, err, errlen);
    if (rc0) return rc0;

    st_shard *sh = realloc(s->shards, (size_t)(s->n_shards + 1) * sizeof(*sh));
    if (!sh) {
        munmap(map, size);
        return ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory", path);
    }
    s->shards = sh;
    int si = s->n_shards++;
    sh[si].map = map;
    sh[si].size = size;
    sh[si].path = strdup(path);
    if (!sh[si].path) return ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory", path);

    uint64_t hlen;
    memcpy(&hlen, map, 8);
    if (hlen > ST_MAX_HEADER || hlen > size - 8)
        return ni_fail(err, errlen, NI_EFORMAT,
                       "%s: header length %llu exceeds the file (not safetensors, or truncated)",
                       path, (unsigned long long)hlen);
    json_error_t je;
    /* Duplicate names would silently keep the last entry. */
    json_t *root = json_loadb((const char *)map + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(root)) {
        /* The usual cause is a header length off by a few bytes: say which
         * length was used and where the JSON broke. */
        int pos = root ? 0 : je.position;
        if (root) snprintf(je.text, sizeof je.text, "not an object");
        json_decref(root);
        return ni_fail(err, errlen, NI_EFORMAT,
                       "%s: the %llu-byte header is not a JSON object (%s, at byte %d)", path,
                       (unsigned long long)hlen, je.text, pos);
    }
    const uint8_t *data = (const uint8_t *)map + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;
    size_t add = json_object_size(root);
    st_tensor *ts = realloc(s->tensors, (size_t)(s->n_tensors + (int)add) * sizeof(*ts));
    if (!ts) {
        json_decref(root);
        return ni_fail(err, errlen, NI_ENOMEM, "%s: out of memory", path);
    }
    s->tensors = ts;
    const char *name;
    json_t *v;
    int rc = 0, first = s->n_tensors;
    json_object_foreach(root, name, v) {
        if (!strcmp(name, "__metadata__")) continue;
        if (st_find(s, name)) {
            rc = ni_fail(err, errlen, NI_EFORMAT, "%s: duplicate tensor '%s'", path, name);
            break;
        }
        st_tensor *t = &s->tensors[s->n_tensors];
        memset(t, 0, sizeof(*t));
        rc = parse_tensor(t, name, v, data_size, path, err, errlen);
        if (rc) break;
        t->data = data + (uintptr_t)t->data;
        t->shard = si;
        s->n_tensors++;
    }
    json_decref(root);
    if (!rc)
        rc = check_tiling(s->tensors + first, s->n_tensors - first, data, data_size, path, err,
                          errlen);
    return rc;
}

int st_open_dir(st_set *s, const char *dir, char *err, size_t errlen) {
    memset(s, 0, sizeof(*s));
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    int rc = 0;
    if (access(path, F_OK) == 0) {
        json_error_t je;
        json_t *idx = json_load_file(path, 0, &je);
        json_t *wm = json_object_get(idx, "weight_map");
        if (!json_is_object(wm)) {
            json_decref(idx);
            return ni_fail(err, errlen, NI_EFORMAT, "%s: no weight_map object (%s)", path,
                           je.text);
        }
        /* Open each distinct shard once, in first-seen order. */
        const char *name;
        json_t *v;
        json_object_foreach(wm, name, v) {
            const char *f = json_string_value(v);
            if (!f || strchr(f, '/')) {
                rc = ni_fail(err, errlen, NI_EFORMAT, "%s: bad shard name for '%s'", path, name);
                break;
            }
            char sp[4096];
            snprintf(sp, sizeof sp, "%s/%s", dir, f);
            int seen = 0;
            for (int i = 0; i < s->n_shards; i++) seen |= !strcmp(s->shards[i].path, sp);
            if (!seen && (rc = st_open_file(s, sp, err, errlen))) break;
        }
        json_decref(idx);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        rc = st_open_file(s, path, err, errlen);
    }
    if (rc) st_close(s);
    return rc;
}

const st_tensor *st_find(const st_set *s, const char *name) {
    for (int i = 0; i < s->n_tensors; i++)
        if (!strcmp(s->tensors[i].name, name)) return &s->tensors[i];
    return NULL;
}

void st_close(st_set *s) {
    for (int i = 0; i < s->n_tensors; i++) free(s->tensors[i].name);
    for (int i = 0; i < s->n_shards; i++) {
        if (s->shards[i].map) munmap(s->shards[i].map, s->shards[i].size);
        free(s->shards[i].path);
    }
    free(s->tensors);
    free(s->shards);
    memset(s, 0, sizeof(*s));
}
