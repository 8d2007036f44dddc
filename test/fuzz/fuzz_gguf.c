/*
 * fuzz_gguf.c - the GGUF reader and the model loader (tokenizer included)
 * on arbitrary bytes: every input must be refused with a message or load
 * cleanly; no crash, leak, overflow or hang.
 */
#include <string.h>

#include "engine/format/gguf.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    char path[64], err[512];
    int fd = fz_memfile(data, n, path, sizeof path);
    if (fd < 0) return 0;
    gguf_ctx g;
    if (gguf_open(&g, path, err, sizeof err) == 0) {
        gguf_close(&g);
        mdl_model m;
        /* the loader may also refuse: err must then be one line */
        if (mdl_load(&m, path, err, sizeof err) == 0) mdl_free(&m);
        else if (!err[0] || strchr(err, '\n')) __builtin_trap();
    }
    close(fd);
    return 0;
}
