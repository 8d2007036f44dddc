/*
 * fuzz_tok.c - encode -> decode on both tokenizer kinds (byte-level BPE:
 * tiny-llama3; SentencePiece: tiny-llama2). Byte-level BPE must round-trip
 * any valid UTF-8 text exactly (special tokens not parsed); both must take
 * any bytes without crashing.
 */
#include <string.h>

#include "fuzz_util.h"
#include "tokenizer/tok.h"

static mdl_model g_bpe, g_spm;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fz_load(&g_bpe, "test/models/tiny-llama3");
    fz_load(&g_spm, "test/models/tiny-llama2");
    return 0;
}

/* 1 when s[0..n) is valid UTF-8 without NUL. */
static int valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!len || c == 0 || i + len > n) return 0;
        uint32_t cp = len == 1 ? c : c & (0x7f >> len);
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += (size_t)len;
    }
    return 1;
}

static void one(const tok_tokenizer *t, const uint8_t *data, size_t n, int check) {
    static int32_t ids[8192];
    static char out[65536];
    for (int special = 0; special <= 1; special++) {
        int k = tok_encode(t, (const char *)data, n, 0, special, ids, 8192);
        if (k < 0 || k > 8192) continue;
        int m = tok_decode(t, ids, k, out, sizeof out);
        if (check && !special && (m != (int)n || memcmp(out, data, n))) __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n > 4096) return 0;
    one(g_bpe.tok, data, n, valid_utf8(data, n));
    one(g_spm.tok, data, n, 0);
    return 0;
}
