/*
 * fuzz_http_head.c - srv_head_check, the server's check of a connection's
 * first request head (server/http/srv_head.h), on arbitrary bytes with the
 * max_body taken from the input's first byte: no crash, no read past the
 * input, every verdict well formed (a known status and a message, or a head
 * end inside the input), and arrival order respected: a prefix that is
 * refused stays refused with more bytes, and a prefix that passes passes
 * with the same head length with more bytes, or is refused for its first
 * chunk-size line only (judged once it is in).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/http/srv_head.h"

static void well_formed(enum srv_head_verdict v, const srv_head_info *h, const char *p, size_t n) {
    if (v == SRV_HEAD_BAD) {
        int st = h->status;
        if (!(st == 400 || st == 413 || st == 414 || st == 431 || st == 501 || st == 505) ||
            !h->msg[0])
            __builtin_trap();
    } else if (v == SRV_HEAD_OK) {
        if (h->head_len < 2 || h->head_len > n || p[h->head_len - 1] != '\n') __builtin_trap();
    } else if (v != SRV_HEAD_MORE) {
        __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n < 1) return 0;
    const long long max_body = data[0] < 128 ? data[0] * 1000ll : (1ll << ((data[0] - 128) % 62));
    n--;
    /* an exact-size copy: ASan sees any read past the input */
    char *p = malloc(n ? n : 1);
    if (!p) return 0;
    memcpy(p, data + 1, n);
    srv_head_info full, h;
    enum srv_head_verdict vf = srv_head_check(p, n, max_body, &full);
    well_formed(vf, &full, p, n);
    size_t cuts[3] = {n / 2, n ? n - 1 : 0, vf == SRV_HEAD_OK ? full.head_len : n / 3};
    for (int i = 0; i < 3; i++) {
        if (cuts[i] >= n) continue;
        enum srv_head_verdict v = srv_head_check(p, cuts[i], max_body, &h);
        well_formed(v, &h, p, cuts[i]);
        if (v == SRV_HEAD_BAD && vf != SRV_HEAD_BAD) __builtin_trap();
        if (v == SRV_HEAD_OK && vf == SRV_HEAD_OK && h.head_len != full.head_len) __builtin_trap();
        if (v == SRV_HEAD_OK && vf == SRV_HEAD_BAD && !h.chunked) __builtin_trap();
        if (v == SRV_HEAD_OK && vf == SRV_HEAD_MORE) __builtin_trap();
    }
    free(p);
    return 0;
}
