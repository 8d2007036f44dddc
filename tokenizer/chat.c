/*
 * chat.c - chat template detection and rendering (see chat.h).
 *
 * Each style is a direct C transcription of its reference Jinja template
 * (sources in scripts/gen_chat_golden.py), restricted to plain string
 * contents. Output goes through a growable buffer (sbuf) whose first
 * allocation failure is sticky: later appends are no-ops and the render
 * returns NI_ENOMEM, so no path writes past an allocation. Validation of
 * every message (non-NULL role and content, known role, the style's role
 * order) happens before anything is rendered, so render_* may assume n >= 1.
 */
#include "chat.h"

#include <stdlib.h>
#include <string.h>

#include "engine/util/util.h"

#define SMOLLM_DEFAULT_SYSTEM "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_UNKNOWN };

static int role_id(const char *r) {
    if (!strcmp(r, "system")) return ROLE_SYSTEM;
    if (!strcmp(r, "user")) return ROLE_USER;
    if (!strcmp(r, "assistant")) return ROLE_ASSISTANT;
    return ROLE_UNKNOWN;
}

/* ---- growable output buffer ---- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (n > SIZE_MAX - b->len - 1) { b->oom = 1; return; }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap = cap > SIZE_MAX / 2 ? b->len + n + 1 : cap * 2;
        char *q = realloc(b->p, cap);
        if (!q) { b->oom = 1; return; }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

/* ---- Python str.strip() semantics on UTF-8 ---- */

/* Bytes of the whitespace code point starting at s[0..n), or 0. Python's
 * str.isspace(): \t\n\v\f\r, \x1c-\x1f, space, U+0085, U+00A0, U+1680,
 * U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000. */
static size_t ws_fwd(const unsigned char *s, size_t n) {
    if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20))) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (n >= 3) {
        if (s[0] == 0xe1 && s[1] == 0x9a && s[2] == 0x80) return 3;
        if (s[0] == 0xe2 && s[1] == 0x80 &&
            ((s[2] >= 0x80 && s[2] <= 0x8a) || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf))
            return 3;
        if (s[0] == 0xe2 && s[1] == 0x81 && s[2] == 0x9f) return 3;
        if (s[0] == 0xe3 && s[1] == 0x80 && s[2] == 0x80) return 3;
    }
    return 0;
}

/* Bytes of the whitespace code point ending at s[n-1], or 0. The encodings
 * above end in distinct byte ranges (ASCII vs continuation bytes), and each
 * multi-byte one starts with a lead byte, so matching the tail is unambiguous. */
static size_t ws_back(const unsigned char *s, size_t n) {
    if (n >= 1 && s[n - 1] < 0x80) return ws_fwd(s + n - 1, 1);
    if (n >= 2 && ws_fwd(s + n - 2, 2) == 2) return 2;
    if (n >= 3 && ws_fwd(s + n - 3, 3) == 3) return 3;
    return 0;
}

/* Appends s[0..n) with leading/trailing whitespace removed (Python strip()). */
static void sb_strip(sbuf *b, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t a = 0, k;
    while (a < n && (k = ws_fwd(u + a, n - a))) a += k;
    while (n > a && (k = ws_back(u + a, n - a))) n -= k;
    sb_add(b, s + a, n - a);
}

/* ---- detection ---- */

int chat_detect_strict(const char *t) {
    if (!t || !*t) return NI_ENOTFOUND;
    if (strstr(t, "<|im_start|>")) {
        if (strstr(t, SMOLLM_DEFAULT_SYSTEM)) return CHAT_STYLE_CHATML_SMOLLM;
        if (strstr(t, "</think>") || strstr(t, "reasoning_content")) return CHAT_STYLE_QWEN3;
        return CHAT_STYLE_CHATML;
    }
    if (strstr(t, "<|start_header_id|>") && strstr(t, "<|end_header_id|>")) return CHAT_STYLE_LLAMA3;
    if (strstr(t, "<<SYS>>") && strstr(t, "[INST]")) return CHAT_STYLE_LLAMA2;
    if (strstr(t, "<|user|>") && strstr(t, "<|assistant|>") && !strstr(t, "<|end|>"))
        return CHAT_STYLE_ZEPHYR;
    return NI_ENOTFOUND;
}

int chat_detect(const char *t) {
    int s = chat_detect_strict(t);
    return s < 0 ? CHAT_STYLE_CHATML : s;
}

/* ---- styles ---- */

static void render_chatml(sbuf *b, const chat_msg *m, int n, int gen, int smollm) {
    for (int i = 0; i < n; i++) {
        if (smollm && i == 0 && strcmp(m[0].role, "system"))
            sb_str(b, "<|im_start|>system\n" SMOLLM_DEFAULT_SYSTEM "<|im_end|>\n");
        sb_str(b, "<|im_start|>");
        sb_str(b, m[i].role);
        sb_str(b, "\n");
        sb_str(b, m[i].content);
        sb_str(b, "<|im_end|>\n");
    }
    if (gen) sb_str(b, "<|im_start|>assistant\n");
}

static int starts_with(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }
static int ends_with(const char *s, const char *p) {
    size_t n = strlen(s), k = strlen(p);
    return n >= k && !memcmp(s + n - k, p, k);
}

/* Last occurrence of needle in s[0..n), or NULL. */
static const char *find_last(const char *s, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = n >= k ? n - k + 1 : 0; i-- > 0;)
        if (!memcmp(s + i, needle, k)) return s + i;
    return NULL;
}

static void render_qwen3(sbuf *b, const chat_msg *m, int n, int gen, int enable_thinking) {
    if (role_id(m[0].role) == ROLE_SYSTEM) {
        sb_str(b, "<|im_start|>system\n");
        sb_str(b, m[0].content);
        sb_str(b, "<|im_end|>\n");
    }
    /* Last user message that is not a wrapped tool response; n-1 if none. */
    int last_query = n - 1;
    for (int i = n - 1; i >= 0; i--) {
        if (role_id(m[i].role) == ROLE_USER &&
            !(starts_with(m[i].content, "<tool_response>") &&
              ends_with(m[i].content, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        int r = role_id(m[i].role);
        if (r == ROLE_USER || (r == ROLE_SYSTEM && i > 0)) {
            sb_str(b, "<|im_start|>");
            sb_str(b, m[i].role);
            sb_str(b, "\n");
            sb_str(b, m[i].content);
            sb_str(b, "<|im_end|>\n");
        } else if (r == ROLE_ASSISTANT) {
            const char *c = m[i].content;
            size_t clen = strlen(c);
            const char *content = c, *reason = "";
            size_t content_len = clen, reason_len = 0;
            const char *end_think = strstr(c, "</think>");
            if (end_think) {
                /* content = c.split('</think>')[-1].lstrip('\n') */
                const char *last = find_last(c, clen, "</think>");
                content = last + 8;
                content_len = (size_t)(c + clen - content);
                while (content_len && *content == '\n') content++, content_len--;
                /* reasoning = c.split('</think>')[0].rstrip('\n')
                 *              .split('<think>')[-1].lstrip('\n') */
                reason = c;
                reason_len = (size_t)(end_think - c);
                while (reason_len && reason[reason_len - 1] == '\n') reason_len--;
                const char *open = find_last(reason, reason_len, "<think>");
                if (open) {
                    reason_len -= (size_t)(open + 7 - reason);
                    reason = open + 7;
                }
                while (reason_len && *reason == '\n') reason++, reason_len--;
            }
            sb_str(b, "<|im_start|>assistant\n");
            if (i > last_query && (i == n - 1 || reason_len)) {
                /* reasoning.strip('\n') (its leading '\n' are already gone) */
                while (reason_len && reason[reason_len - 1] == '\n') reason_len--;
                while (content_len && *content == '\n') content++, content_len--;
                sb_str(b, "<think>\n");
                sb_add(b, reason, reason_len);
                sb_str(b, "\n</think>\n\n");
            }
            sb_add(b, content, content_len);
            sb_str(b, "<|im_end|>\n");
        }
    }
    if (gen) sb_str(b, "<|im_start|>assistant\n");
    if (gen && enable_thinking == 0) sb_str(b, "<think>\n\n</think>\n\n");
}

static void render_llama3(sbuf *b, const chat_msg *m, int n, int gen) {
    for (int i = 0; i < n; i++) {
        if (i == 0) sb_str(b, "<|begin_of_text|>");
        sb_str(b, "<|start_header_id|>");
        sb_str(b, m[i].role);
        sb_str(b, "<|end_header_id|>\n\n");
        sb_strip(b, m[i].content, strlen(m[i].content));
        sb_str(b, "<|eot_id|>");
    }
    if (gen) sb_str(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Llama-2 role order: [system] user (assistant user)* [assistant]. */
static int llama2_check(const chat_msg *m, int n) {
    int start = role_id(m[0].role) == ROLE_SYSTEM;
    for (int i = start; i < n; i++)
        if (role_id(m[i].role) != ((i - start) % 2 == 0 ? ROLE_USER : ROLE_ASSISTANT))
            return NI_EINVAL;
    return 0;
}

static void render_llama2(sbuf *b, const chat_msg *m, int n) {
    int start = role_id(m[0].role) == ROLE_SYSTEM;
    for (int i = start; i < n; i++) {
        if (role_id(m[i].role) == ROLE_USER) {
            sb_str(b, "<s>[INST] ");
            if (i == start && start) {
                /* strip('<<SYS>>\n' + system + '\n<</SYS>>\n\n' + content) */
                sbuf t = {0};
                sb_str(&t, "<<SYS>>\n");
                sb_str(&t, m[0].content);
                sb_str(&t, "\n<</SYS>>\n\n");
                sb_str(&t, m[i].content);
                if (t.oom) b->oom = 1;
                else sb_strip(b, t.p, t.len);
                free(t.p);
            } else {
                sb_strip(b, m[i].content, strlen(m[i].content));
            }
            sb_str(b, " [/INST]");
        } else {
            sb_str(b, " ");
            sb_strip(b, m[i].content, strlen(m[i].content));
            sb_str(b, " </s>");
        }
    }
}

static void render_zephyr(sbuf *b, const chat_msg *m, int n, int gen) {
    for (int i = 0; i < n; i++) {
        sb_str(b, "<|");
        sb_str(b, m[i].role);
        sb_str(b, "|>\n");
        sb_str(b, m[i].content);
        sb_str(b, "</s>\n");
    }
    if (gen) sb_str(b, "<|assistant|>\n");
}

int chat_render(int style, const chat_msg *msgs, int n, int add_generation_prompt, char **out) {
    const chat_opts o = {.add_generation_prompt = add_generation_prompt, .enable_thinking = -1};
    return chat_render_opts(style, msgs, n, &o, out);
}

int chat_render_opts(int style, const chat_msg *msgs, int n, const chat_opts *o, char **out) {
    if (!out) return NI_EINVAL;
    *out = NULL;
    if (!o) return NI_EINVAL;
    const int add_generation_prompt = o->add_generation_prompt;
    /* n == 0: transformers' apply_chat_template refuses an empty conversation. */
    if (style < 0 || style >= CHAT_STYLE_COUNT || n <= 0 || !msgs) return NI_EINVAL;
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content || role_id(msgs[i].role) == ROLE_UNKNOWN)
            return NI_EINVAL;
    if (style == CHAT_STYLE_LLAMA2 && llama2_check(msgs, n)) return NI_EINVAL;

    sbuf b = {0};
    sb_add(&b, "", 0); /* an empty render (LLAMA2, system message only) is "", not NULL */
    switch (style) {
    case CHAT_STYLE_CHATML: render_chatml(&b, msgs, n, add_generation_prompt, 0); break;
    case CHAT_STYLE_CHATML_SMOLLM: render_chatml(&b, msgs, n, add_generation_prompt, 1); break;
    case CHAT_STYLE_QWEN3:
        render_qwen3(&b, msgs, n, add_generation_prompt, o->enable_thinking);
        break;
    case CHAT_STYLE_LLAMA3: render_llama3(&b, msgs, n, add_generation_prompt); break;
    case CHAT_STYLE_LLAMA2: render_llama2(&b, msgs, n); break;
    case CHAT_STYLE_ZEPHYR: render_zephyr(&b, msgs, n, add_generation_prompt); break;
    }
    if (b.oom) {
        free(b.p);
        return NI_ENOMEM;
    }
    *out = b.p;
    return 0;
}

const char *chat_bos_text(int style) {
    switch (style) {
    case CHAT_STYLE_LLAMA3: return "<|begin_of_text|>";
    case CHAT_STYLE_LLAMA2: return "<s>";
    default: return NULL;
    }
}

int chat_has_bos_text(int style, const char *rendered) {
    const char *bos = chat_bos_text(style);
    return bos && rendered && starts_with(rendered, bos);
}

static const char *const style_names[CHAT_STYLE_COUNT] = {
    [CHAT_STYLE_CHATML] = "chatml", [CHAT_STYLE_CHATML_SMOLLM] = "chatml-smollm",
    [CHAT_STYLE_QWEN3] = "qwen3",   [CHAT_STYLE_LLAMA3] = "llama3",
    [CHAT_STYLE_LLAMA2] = "llama2", [CHAT_STYLE_ZEPHYR] = "zephyr",
};

const char *chat_style_name(int style) {
    return style >= 0 && style < CHAT_STYLE_COUNT ? style_names[style] : "unknown";
}

int chat_style_from_name(const char *name) {
    if (!name) return NI_ENOTFOUND;
    for (int i = 0; i < CHAT_STYLE_COUNT; i++)
        if (!strcmp(name, style_names[i])) return i;
    return NI_ENOTFOUND;
}
