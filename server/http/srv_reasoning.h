/*
 * srv_reasoning.h - splits a reasoning model's generated text into its
 * thinking (`reasoning_content`) and its answer (`content`), as vLLM's
 * --reasoning-parser does for chat completions.
 *
 * Parsers (vLLM's names):
 *   qwen3        Qwen3: the output may open with <think> (after whitespace, at
 *                most 16 bytes of it); what follows up to </think> is reasoning,
 *                the rest content. An output that does not open with <think>
 *                (enable_thinking false, or a model that skips it) is all
 *                content.
 *   deepseek_r1  DeepSeek-R1: the chat template already opened the think block,
 *                so the output is reasoning up to </think> (a leading <think>
 *                is dropped if the model writes one), then content.
 *   none         everything is content, tags included.
 * The tags themselves are dropped; nothing else is (the "\n\n" after
 * </think> stays at the start of content, as vLLM returns it). After
 * </think> the text is content verbatim: later tags are not parsed. A think
 * block the output never closes (max_tokens inside it) stays reasoning.
 *
 * Streaming: text arrives in pieces split anywhere, also inside a tag or a
 * UTF-8 sequence. The parser is a byte state machine that holds back only
 * the bytes that may still turn out to be a tag (at most 23: the leading
 * whitespace and "<think" / "</think"), so the concatenation of everything
 * it emits is the same however the text was split, and
 * srv_reasoning_flush releases what is held at the end.
 *
 * Pure: no allocation of its own (output goes to the caller's srv_bufs), no
 * global state. One srv_reasoning per generated sequence.
 */
#ifndef NI_SRV_REASONING_H
#define NI_SRV_REASONING_H

#include <stddef.h>

#include "srv_util.h"

enum srv_reasoning_parser {
    SRV_REASONING_NONE = 0,
    SRV_REASONING_QWEN3 = 1,
    SRV_REASONING_DEEPSEEK_R1 = 2,
};

#define SRV_REASONING_HOLD 32 /* >= 16 whitespace bytes + strlen("</think>") */

typedef struct srv_reasoning {
    int parser;                    /* enum srv_reasoning_parser */
    int state;                     /* private: start, thinking, content */
    int n_ws;                      /* start: leading whitespace bytes held */
    int match;                     /* bytes of the current tag matched (held after n_ws) */
    char held[SRV_REASONING_HOLD]; /* n_ws + match bytes not yet emitted */
} srv_reasoning;

/* The parser called name ("none", "qwen3", "deepseek_r1"), or NI_ENOTFOUND. */
int srv_reasoning_parser_from_name(const char *name);

/* The name of parser p ("none", "qwen3", "deepseek_r1"), or "unknown". */
const char *srv_reasoning_parser_name(int p);

/* Starts a sequence's output with parser p (enum srv_reasoning_parser). */
void srv_reasoning_init(srv_reasoning *r, int p);

/* Feeds the next len bytes of generated text: the reasoning part is appended
 * to *reasoning, the content part to *content (bytes that may be a tag are
 * held back). Returns 0, or srv_buf_append's error (the output is then
 * incomplete). */
int srv_reasoning_feed(srv_reasoning *r, const char *text, size_t len, srv_buf *reasoning,
                       srv_buf *content);

/* The output ended: appends the held bytes where they belong (a tag cut off
 * at the end is text). r may be fed again only after srv_reasoning_init.
 * Returns 0 or srv_buf_append's error. */
int srv_reasoning_flush(srv_reasoning *r, srv_buf *reasoning, srv_buf *content);

/* 1 while the output is inside the think block (the next text is reasoning). */
int srv_reasoning_thinking(const srv_reasoning *r);

#endif
