/*
 * util.h - error codes, assertions and small helpers shared by every module.
 *
 * Design: library code never exits. Functions return 0 on success or a
 * negative NI_E* code; loaders additionally write a one-line human message
 * (naming the file and the problem) into a caller-provided buffer. Only
 * main() turns an error into an exit status. Invariants (conditions that can
 * only fail through a bug in NanoInfer, never through user input) go through
 * NI_ASSERT, which aborts with file:line in every build type.
 */
#ifndef NI_UTIL_H
#define NI_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum ni_err {
    NI_OK = 0,
    NI_ENOMEM = -1,        /* allocation failed */
    NI_EIO = -2,           /* open/read/mmap failed */
    NI_EFORMAT = -3,       /* malformed or truncated file */
    NI_EUNSUPPORTED = -4,  /* valid but not supported (type, arch, version) */
    NI_EINVAL = -5,        /* invalid argument */
    NI_ERANGE = -6,        /* value out of range / buffer too small */
    NI_ENOTFOUND = -7,     /* key, tensor or file missing */
};

/* Returns a static string describing a NI_E* code (never NULL). */
const char *ni_strerror(int err);

/* Writes a formatted message into err (if err && errlen) and returns code.
 * Lets loaders write `return ni_fail(err, errlen, NI_EFORMAT, "%s: ...", path)`.
 * The message is always one line: control bytes (from quoted file content,
 * say) become '?'. */
int ni_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define NI_ASSERT(cond)                                                         \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                     \
            abort();                                                            \
        }                                                                       \
    } while (0)

#define NI_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define NI_MIN(a, b) ((a) < (b) ? (a) : (b))
#define NI_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Monotonic clock in seconds. */
double ni_now(void);

/* Reads a whole file into a NUL-terminated heap buffer (caller frees).
 * Returns 0 or a negative NI_E* code; *len gets the size without the NUL. */
int ni_read_file(const char *path, char **out, size_t *len);

/* Maps the regular file at path read-only (private mapping). Files smaller
 * than min_size are rejected with NI_EFORMAT ("too small to be <what>").
 * Returns 0 with *map and *size, or a negative code with a message naming
 * the file. Unmap with munmap(*map, *size). */
int ni_map_file(const char *path, size_t min_size, const char *what, void **map, size_t *size,
                char *err, size_t errlen);

#endif
