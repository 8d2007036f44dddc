/*
 * fuzz_chat.c - the chat template renderer: the first byte picks the style
 * and the generation prompt, the rest is messages "role\0content\0..." (any
 * bytes); rendering either refuses (bad role, no message) or returns a
 * NUL-terminated string; no crash, leak or overflow. (Contents are not
 * searched for: some templates trim them, as HF's do.)
 */
#include <string.h>

#include "fuzz_util.h"
#include "tokenizer/chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n < 1 || n > 8192) return 0;
    const int style = data[0] % CHAT_STYLE_COUNT, gen = data[0] >> 7;
    char *buf = malloc(n + 1);
    if (!buf) return 0;
    memcpy(buf, data + 1, n - 1);
    buf[n - 1] = 0;
    chat_msg msgs[16];
    int nm = 0;
    for (size_t i = 0; i < n - 1 && nm < 16;) {
        const char *role = buf + i;
        i += strlen(role) + 1;
        if (i >= n - 1) break;
        const char *content = buf + i;
        i += strlen(content) + 1;
        msgs[nm++] = (chat_msg){.role = role, .content = content};
    }
    char *out = NULL;
    if (chat_render(style, msgs, nm, gen, &out) == 0) {
        if (!out) __builtin_trap();
        free(out);
    }
    free(buf);
    return 0;
}
