/*
 * srv_tools.h - tool calling for /v1/chat/completions: the request's tools,
 * the grammar that enforces tool_choice "required" or a named function, and
 * the parsers that turn the model's text into OpenAI tool_calls, whole or as
 * a stream.
 *
 * Formats (which one a model speaks follows from its chat template family):
 *   SRV_TOOLS_HERMES  ChatML family (Qwen3, Qwen2.5, SmolLM2, Hermes):
 *                       <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>
 *                     any number of blocks, text around them is content;
 *   SRV_TOOLS_LLAMA3  Llama 3.x custom tools: the whole reply is one JSON object
 *                       {"name": "f", "parameters": {...}}
 *                     (a reply that is not such an object is content).
 * tool_choice: "none" (tools are not shown to the model and nothing is parsed),
 * "auto" (the default with tools: free text, calls parsed out), "required" (at
 * least one call, enforced by the grammar), {"type": "function", "function":
 * {"name": f}} (exactly calls to f). parallel_tool_calls false allows one call.
 *
 * Threads: loop thread only. Pure: no engine, HTTP or libuv.
 */
#ifndef NI_SRV_TOOLS_H
#define NI_SRV_TOOLS_H

#include <jansson.h>
#include <stddef.h>

#include "engine/grammar/grammar.h"

typedef struct srv_api_error srv_api_error; /* srv_api.h */

#define SRV_TOOLS_MAX 128
#define SRV_TOOLS_MAX_CALLS 16 /* calls parsed out of one reply */

typedef enum srv_tool_format {
    SRV_TOOLS_HERMES = 0,
    SRV_TOOLS_LLAMA3 = 1,
} srv_tool_format;

typedef enum srv_tool_choice {
    SRV_TOOL_CHOICE_NONE = 0,
    SRV_TOOL_CHOICE_AUTO = 1,
    SRV_TOOL_CHOICE_REQUIRED = 2,
    SRV_TOOL_CHOICE_NAMED = 3,
} srv_tool_choice;

typedef struct srv_tools {
    json_t *tools; /* the validated "tools" array (a reference), or NULL */
    int n;
    srv_tool_choice choice;
    char named[72]; /* the function of SRV_TOOL_CHOICE_NAMED */
    int parallel;   /* parallel_tool_calls (default 1) */
    srv_tool_format format;
} srv_tools;

/* The format a chat style's models use (enum chat_style). */
srv_tool_format srv_tools_format_of(int chat_style);

/* Reads tools / tool_choice / parallel_tool_calls from a chat body. Returns 0
 * with *out (out->n == 0 when the request has no tools or tool_choice is
 * "none"), or -1 with err (400 naming the parameter). */
int srv_tools_parse(const json_t *body, int chat_style, srv_tools *out, srv_api_error *err);
void srv_tools_free(srv_tools *t);

/* The grammar that makes the reply a tool call (choice REQUIRED / NAMED), or
 * *out = NULL (AUTO, NONE). Returns 0, or -1 with err (a parameters schema
 * the compiler refuses: 400 naming "tools"). */
int srv_tools_grammar(const srv_tools *t, gr_grammar **out, srv_api_error *err);

/* One parsed call. name and arguments (JSON text) are heap strings. */
typedef struct srv_tool_call {
    char *name;
    char *arguments;
} srv_tool_call;

void srv_tool_call_free(srv_tool_call *c);

/* Splits a whole reply: the calls (up to SRV_TOOLS_MAX_CALLS into calls[],
 * count in *n_calls) and the content left (heap string, may be "", in
 * *content). A block that does not parse as a call to a declared function is
 * left in the content. Returns 0 or NI_ENOMEM. */
int srv_tools_extract(const srv_tools *t, const char *text, size_t len, srv_tool_call *calls,
                      int *n_calls, char **content);

/* Incremental form for streaming: feed each text delta; content that can no
 * longer belong to a call comes out at once (a possible start of a call is
 * held back), calls come out when complete. */
typedef struct srv_tool_stream {
    const srv_tools *t;
    char *buf; /* text not decided yet */
    size_t len, cap;
    int in_call;  /* HERMES: inside <tool_call> (buf: lead spaces, then the call body) */
    size_t lead;  /* HERMES: space before the tag, dropped when a call follows */
    int started;  /* LLAMA3: a non-space byte was seen */
    int json;     /* LLAMA3: the reply started with '{': buffered to the end */
} srv_tool_stream;

void srv_tool_stream_init(srv_tool_stream *s, const srv_tools *t);
void srv_tool_stream_free(srv_tool_stream *s);

/* Feeds text[0..len) (final: the reply ended, flush everything). Appends the
 * content that is now decided to *content (a heap string the caller frees,
 * NULL when none) and the completed calls to calls[*n_calls ..] (the caller
 * passes room for SRV_TOOLS_MAX_CALLS - *n_calls more). Returns 0 or NI_ENOMEM. */
int srv_tool_stream_push(srv_tool_stream *s, const char *text, size_t len, int final,
                         char **content, size_t *content_len, srv_tool_call *calls,
                         int *n_calls);

#endif
