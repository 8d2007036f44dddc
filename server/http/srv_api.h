/*
 * srv_api.h - the OpenAI-compatible request/response layer: JSON bodies of
 * /v1/completions, /v1/chat/completions, /tokenize and /detokenize in,
 * engine requests and JSON objects (whole responses, SSE chunks, errors) out.
 *
 * Design: pure functions over jansson values and the tokenizer; no HTTP,
 * libuv or engine calls, so every rule is unit-tested without a socket
 * (test/test_srv_api.c). Semantics follow the OpenAI API; where OpenAI is
 * silent or stricter, vLLM's OpenAI server decides (e.g. top_k, min_p,
 * repetition_penalty, ignore_eos, stop_token_ids; logprobs up to 20 as in
 * vLLM; completions prompts are tokenized like HF `tokenizer(prompt)`: BOS
 * when the model wants it, special-token text parsed).
 *
 * Validation: every parameter is type-checked and range-checked here, and a
 * failure names it in srv_api_error.param (400). null means "absent" for
 * every optional parameter, as in the OpenAI API. Unknown keys are ignored;
 * known-but-unsupported features (suffix, tools, prompt logprobs via echo +
 * logprobs, batched prompts, non-text content parts,
 * min_tokens) are refused with a 400 saying so, never silently dropped.
 * Chat requests may carry chat_template_kwargs {"enable_thinking": bool}
 * (vLLM's, passed to the template: chat_opts; also on /tokenize) and
 * "reasoning_format" (llama-server's: "none" leaves <think> blocks inline
 * in content, "auto" / "deepseek" split them out by the server's
 * --reasoning-parser).
 *
 * Threads: called on the loop thread only (the tokenizer is thread-safe).
 */
#ifndef NI_SRV_API_H
#define NI_SRV_API_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "tokenizer/tok.h"
#include "srv_reasoning.h"
#include "srv_tools.h"
#include "srv_util.h"

enum srv_api_kind { SRV_API_COMPLETION = 0, SRV_API_CHAT = 1 };

#define SRV_API_MAX_LOGPROBS 20 /* completions logprobs / chat top_logprobs */
#define SRV_API_MAX_LOGIT_BIAS 1024
#define SRV_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(8))

/* What the parser needs to know about the served model. Borrowed pointers. */
typedef struct srv_api_ctx {
    const tok_tokenizer *tok;
    int chat_style; /* enum chat_style */
    int vocab;
    int max_seq_len;        /* the engine's context length */
    int kv_tokens;          /* KV pool capacity in tokens (0: unknown, not checked) */
    int max_tokens_default; /* max_tokens when absent (further capped by context) */
    int max_n;              /* largest n accepted (<= ENG_MAX_N) */
    const char *model_name; /* served id */
    const char *model_path; /* also accepted as "model" */
    int reasoning_parser;   /* enum srv_reasoning_parser for chat output (resolved) */
    const smp_params *sp_default; /* sampling of parameters a request leaves out (serve
                                   * options > model > built-in: srv_config_sampling);
                                   * NULL: smp_params_default() */
} srv_api_ctx;

/* An error in OpenAI format: {"error":{"message","type","param","code"}}. */
typedef struct srv_api_error {
    int status;       /* HTTP status */
    const char *type; /* static: "invalid_request_error", ... */
    const char *code; /* static or NULL */
    char param[64];   /* "" -> null */
    char message[512];
} srv_api_error;

/* Fills e (status, type from the status, param may be NULL) and returns -1. */
int srv_api_fail(srv_api_error *e, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The error as a new JSON object (NULL on allocation failure). */
json_t *srv_api_error_json(const srv_api_error *e);

/* A validated generation request. Owns its arrays (srv_gen_req_free). */
typedef struct srv_gen_req {
    int kind; /* enum srv_api_kind */
    int stream, include_usage, echo;
    int n;
    int max_tokens; /* resolved (default applied), >= 1 */
    int logprobs;   /* -1 off; else alternatives per token (0..20) */
    smp_params sp;  /* sp.logit_bias points into bias */
    smp_logit_bias *bias;
    char *stop[ENG_MAX_STOP];
    int n_stop;
    int32_t stop_ids[ENG_MAX_STOP_IDS];
    int n_stop_ids;
    int ignore_eos;
    int reasoning;   /* enum srv_reasoning_parser splitting the output (chat only): the
                      * server's, or NONE for "reasoning_format": "none" */
    int32_t *prompt; /* [n_prompt] token ids */
    int n_prompt;
    char *echo_text; /* completions + echo: the prompt as text */
    size_t echo_len;
    gr_grammar *grammar; /* structured output (srv_guided.h) or the tool_choice grammar, or NULL */
    srv_tools tools;     /* chat: the request's tools (tools.n == 0: none, or tool_choice none) */
} srv_gen_req;

/* Parses and validates a /v1/completions (kind COMPLETION) or
 * /v1/chat/completions (kind CHAT) body, applies the chat template and
 * tokenizes the prompt. Returns 0 with *out filled, or -1 with *err (400 for
 * bad input, 404 for an unknown model; *out is then empty). */
int srv_api_parse_gen(const srv_api_ctx *ctx, int kind, const json_t *body, srv_gen_req *out,
                      srv_api_error *err);

/* Frees what r owns and zeroes it (safe on a zeroed request). */
void srv_gen_req_free(srv_gen_req *r);

/* The engine request for r (borrows r's arrays: r must outlive eng_add;
 * moves r->grammar into it, since eng_add takes the grammar over). */
void srv_gen_req_to_eng(srv_gen_req *r, uint64_t id, void *user, uint64_t fallback_seed,
                        eng_request *out);

/* POST /tokenize: {"prompt": str, "add_special_tokens"?: bool} or
 * {"messages": [...], "add_generation_prompt"?: bool} -> {"count", "max_model_len",
 * "tokens"}. Returns the response object, or NULL with *err. */
json_t *srv_api_tokenize(const srv_api_ctx *ctx, const json_t *body, srv_api_error *err);

/* POST /detokenize: {"tokens": [ids]} -> {"prompt": text}. NULL with *err. */
json_t *srv_api_detokenize(const srv_api_ctx *ctx, const json_t *body, srv_api_error *err);

/* A JSON string from arbitrary bytes (invalid UTF-8 replaced by U+FFFD).
 * NULL only on allocation failure. */
json_t *srv_json_stringn(const char *s, size_t n);

/* OpenAI's finish_reason string for an enum eng_finish (NULL for NONE). */
const char *srv_api_finish_reason(int finish);

/* Logprobs of one choice in the endpoint's format, built token by token:
 * completions {"tokens","token_logprobs","top_logprobs","text_offset"},
 * chat {"content":[{"token","logprob","bytes","top_logprobs"}],"refusal":null}.
 * obj is created on the first add and handed out by srv_lp_take (streaming
 * takes one per chunk; non-streaming once at the end); text_offset keeps
 * running across takes. */
typedef struct srv_lp {
    int kind;
    json_t *obj;
    size_t text_offset;
} srv_lp;

/* Adds one generated token with its logprob result. Returns 0 or NI_ENOMEM. */
int srv_lp_add(srv_lp *l, const tok_tokenizer *tok, const smp_result *r);
/* Returns the accumulated object (caller owns; NULL when nothing was added). */
json_t *srv_lp_take(srv_lp *l);
void srv_lp_free(srv_lp *l);

/* {"prompt_tokens","completion_tokens","total_tokens","prompt_tokens_details":{"cached_tokens"}} */
json_t *srv_api_usage(int prompt_tokens, int completion_tokens, int cached_tokens);

/* Common envelope: {"id","object","created","model"} with the object name
 * for kind and chunk-ness ("text_completion", "chat.completion",
 * "chat.completion.chunk"). */
json_t *srv_api_envelope(int kind, int chunk, const char *id, long long created, const char *model);

/* One choice. Non-streaming: completions {"index","text","logprobs",
 * "finish_reason"}, chat {"index","message":{"role","content"},"logprobs",
 * "finish_reason"}. Streaming (chunk=1): completions the same with the delta
 * text; chat {"index","delta":{["role":"assistant",]["content"]},"logprobs",
 * "finish_reason"} (role when with_role; content omitted when text is NULL).
 * logprobs is stolen (NULL -> null); finish NULL -> null. */
json_t *srv_api_choice(int kind, int chunk, int index, const char *text, size_t len, int with_role,
                       json_t *logprobs, const char *finish);

/* Adds tool calls (srv_tools) to a chat choice: non-streaming message.tool_calls
 * [{id, type, function {name, arguments}}] (an empty content becomes null);
 * streaming delta.tool_calls with "index" first_index + i. Returns choice. */
json_t *srv_api_choice_tool_calls(json_t *choice, int chunk, const srv_tool_call *calls,
                                  const char *const *ids, int n, int first_index);

/* Adds a chat choice's reasoning (srv_reasoning split) to what srv_api_choice
 * built. Non-streaming (chunk 0): message.reasoning_content = the text, null
 * when len is 0, and message.content becomes null when content_empty (vLLM's
 * shape). Streaming: delta.reasoning_content when len > 0. Returns choice
 * (NULL stays NULL). */
json_t *srv_api_choice_reasoning(json_t *choice, int chunk, const char *reasoning, size_t len,
                                 int content_empty);

/* Appends `data: <compact JSON>\n\n` for obj to out. Returns srv_buf's code
 * (NI_ENOMEM also when obj cannot be serialised). */
int srv_sse_event(srv_buf *out, const json_t *obj);

/* Appends the terminating `data: [DONE]\n\n`. */
int srv_sse_done(srv_buf *out);

/* Token text for logprobs: the token's raw bytes when valid UTF-8, else
 * "bytes:\xNN..." (OpenAI's convention). Appends to out. */
int srv_api_token_str(const tok_tokenizer *tok, int32_t id, srv_buf *out);

#endif
