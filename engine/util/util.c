/*
 * util.c - see util.h. No state; every function is thread-safe.
 */
#define _POSIX_C_SOURCE 200809L
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *ni_strerror(int err) {
    switch (err) {
    case NI_OK: return "success";
    case NI_ENOMEM: return "out of memory";
    case NI_EIO: return "I/O error";
    case NI_EFORMAT: return "malformed file";
    case NI_EUNSUPPORTED: return "unsupported";
    case NI_EINVAL: return "invalid argument";
    case NI_ERANGE: return "out of range";
    case NI_ENOTFOUND: return "not found";
    default: return "unknown error";
    }
}

int ni_fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        /* one line whatever a file put in the names it quotes (found by
         * fuzz_gguf: an architecture string holding a newline) */
        for (char *p = err; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
    }
    return code;
}

double ni_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int ni_read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NI_EIO;
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return NI_EIO; }
    long n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) { fclose(f); return NI_EIO; }
    char *buf = malloc((size_t)n + 1);
    if (!buf) { fclose(f); return NI_ENOMEM; }
    if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); fclose(f); return NI_EIO; }
    fclose(f);
    buf[n] = 0;
    *out = buf;
    if (len) *len = (size_t)n;
    return 0;
}

int ni_map_file(const char *path, size_t min_size, const char *what, void **map, size_t *size,
                char *err, size_t errlen) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ni_fail(err, errlen, NI_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ni_fail(err, errlen, NI_EIO, "%s: not a regular file", path);
    }
    if ((size_t)st.st_size < min_size || st.st_size == 0) {
        close(fd);
        return ni_fail(err, errlen, NI_EFORMAT, "%s: file too small to be %s (%lld bytes)", path,
                       what, (long long)st.st_size);
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return ni_fail(err, errlen, NI_EIO, "%s: mmap failed", path);
    *map = m;
    *size = (size_t)st.st_size;
    return 0;
}
