/*
 * fuzz_safetensors.c - the safetensors reader (st_open_file) on arbitrary
 * bytes, through an in-memory file. Every input must be refused with a
 * one-line message or open; an opened file's tensors must be well formed:
 * data inside the mapping, nbytes = n_elements * element size matching the
 * shape, n_dims within ST_MAX_DIMS, names findable with st_find. Failures
 * (__builtin_trap), besides crashes, leaks, overflows and hangs: any of
 * those violated.
 */
#include <string.h>

#include "engine/format/safetensors.h"
#include "fuzz_util.h"

static void check_open(const st_set *s) {
    if (s->n_shards != 1) __builtin_trap();
    const uint8_t *lo = s->shards[0].map, *hi = lo + s->shards[0].size;
    for (int i = 0; i < s->n_tensors; i++) {
        const st_tensor *t = &s->tensors[i];
        if (t->n_dims < 0 || t->n_dims > ST_MAX_DIMS || t->shard != 0) __builtin_trap();
        uint64_t ne = 1;
        for (int d = 0; d < t->n_dims; d++) ne *= t->shape[d];
        if (ne != t->n_elements) __builtin_trap();
        const uint8_t *p = t->data;
        if (p < lo + 8 || p > hi || t->nbytes > (uint64_t)(hi - p)) __builtin_trap();
        if (t->n_elements ? t->nbytes % t->n_elements : t->nbytes) __builtin_trap();
        if (st_find(s, t->name) != t) __builtin_trap();
        if (!memchr(t->dtype, 0, sizeof t->dtype)) __builtin_trap();
        if (t->nbytes) {
            volatile uint8_t x = p[0];
            x = p[t->nbytes - 1]; /* ASan: both ends readable */
            (void)x;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    char path[64], err[512];
    int fd = fz_memfile(data, n, path, sizeof path);
    if (fd < 0) return 0;
    st_set s;
    memset(&s, 0, sizeof s);
    err[0] = 0;
    int rc = st_open_file(&s, path, err, sizeof err);
    if (rc == 0)
        check_open(&s);
    else if (rc > 0 || !err[0] || strchr(err, '\n'))
        __builtin_trap();
    st_close(&s);
    close(fd);
    return 0;
}
