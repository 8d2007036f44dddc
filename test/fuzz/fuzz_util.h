/*
 * fuzz_util.h - shared by the libFuzzer targets in test/fuzz (make fuzz):
 * loading a committed tiny model once per process, and writing an input to
 * a file the loaders can open (they take paths).
 */
#ifndef NI_FUZZ_UTIL_H
#define NI_FUZZ_UTIL_H


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/model/model.h"

/* Loads dir into *m or aborts (a fuzz target without its model is broken). */
static inline void fz_load(mdl_model *m, const char *dir) {
    char err[512];
    if (mdl_load(m, dir, err, sizeof err)) {
        fprintf(stderr, "fuzz: cannot load %s: %s\n", dir, err);
        abort();
    }
}

/* An anonymous in-memory file holding data; its path in path. Returns the
 * fd (close it after use) or -1. */
static inline int fz_memfile(const uint8_t *data, size_t n, char *path, size_t cap) {
    int fd = memfd_create("fuzz", 0);
    if (fd < 0) return -1;
    if (n && write(fd, data, n) != (ssize_t)n) {
        close(fd);
        return -1;
    }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
