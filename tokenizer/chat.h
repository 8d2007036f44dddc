/*
 * chat.h - chat templates rendered in C (no Jinja).
 *
 * Design: a model ships its chat template as Jinja source (GGUF
 * `tokenizer.chat_template`, HF tokenizer_config.json `chat_template`). We do
 * not evaluate Jinja; chat_detect() recognises the template family from
 * marker strings in that source, and chat_render() reproduces, byte for byte,
 * what transformers' apply_chat_template(tokenize=False) gives for that
 * family's reference template on plain {role, content} messages
 * (test/fixtures/chat_golden.json holds the goldens and the template sources;
 * scripts/gen_chat_golden.py regenerates them):
 *
 *   CHATML         <|im_start|>role\ncontent<|im_end|>\n ... [<|im_start|>assistant\n]
 *   CHATML_SMOLLM  ChatML; if the first message is not "system", a default system
 *                  message "You are a helpful AI assistant named SmolLM, trained by
 *                  Hugging Face" comes first (SmolLM2-Instruct's template)
 *   QWEN3          ChatML without a default system; assistant turns after the last
 *                  user query get <think>..</think> blocks, earlier ones lose theirs
 *                  (Qwen3's template, no tools; enable_thinking false adds an empty
 *                  <think></think> block to the generation prompt: chat_opts)
 *   LLAMA3         <|begin_of_text|> before the first message, then
 *                  <|start_header_id|>role<|end_header_id|>\n\ntrim(content)<|eot_id|>
 *                  [<|start_header_id|>assistant<|end_header_id|>\n\n]
 *   LLAMA2         <s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nuser [/INST] answer </s><s>[INST] ...
 *                  (contents strip()ped; no generation prompt exists or is added)
 *   ZEPHYR         <|system|>\n..</s>\n<|user|>\n..</s>\n<|assistant|>\n..</s>\n[<|assistant|>\n]
 *
 * "trim"/"strip" follow Python's str.strip(): every Unicode whitespace code
 * point (UTF-8 encoded) at either end is removed.
 *
 * Roles: only "system", "user" and "assistant" are accepted; any other role
 * (including "tool") is NI_EINVAL. An empty conversation is NI_EINVAL (as
 * apply_chat_template refuses it), and so is every conversation the reference
 * template raises on (LLAMA2: roles not alternating user/assistant after an
 * optional leading system message); LLAMA2 also rejects a non-leading system
 * message, which the reference template would silently drop. A LLAMA2
 * conversation of only a system message renders as "" (as the reference).
 *
 * BOS: LLAMA3 and LLAMA2 output contains the BOS token as text
 * ("<|begin_of_text|>", "<s>"), every style contains special-token text
 * (<|im_start|>, </s>, ...). The caller must therefore encode the rendered
 * prompt with parse_special=1, and with add_bos=0 when chat_has_bos_text()
 * says the text already starts with BOS (else add_bos = tok_add_bos(tok)),
 * so that BOS is neither doubled nor missing.
 *
 * All functions are pure and thread-safe.
 */
#ifndef NI_CHAT_H
#define NI_CHAT_H

#include <stddef.h>

enum chat_style {
    CHAT_STYLE_CHATML = 0,
    CHAT_STYLE_CHATML_SMOLLM = 1,
    CHAT_STYLE_QWEN3 = 2,
    CHAT_STYLE_LLAMA3 = 3,
    CHAT_STYLE_LLAMA2 = 4,
    CHAT_STYLE_ZEPHYR = 5,
    CHAT_STYLE_COUNT = 6,
};

typedef struct chat_msg {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* UTF-8, NUL-terminated; may be "" */
} chat_msg;

/* Detects the style of a Jinja chat template source. Returns a chat_style;
 * CHAT_STYLE_CHATML when template_src is NULL, empty or not recognised. */
int chat_detect(const char *template_src);

/* Like chat_detect(), but returns NI_ENOTFOUND instead of falling back to
 * ChatML when template_src is NULL or not recognised (so callers can warn). */
int chat_detect_strict(const char *template_src);

/* Renders msgs[0..n) in style into a NUL-terminated heap string *out (caller
 * frees). add_generation_prompt != 0 appends the assistant header where the
 * style has one. Returns 0, NI_EINVAL (bad style, NULL argument, n < 1, unknown
 * role, or a conversation the template rejects; *out is then NULL) or
 * NI_ENOMEM. Equals chat_render_opts with enable_thinking undefined. */
int chat_render(int style, const chat_msg *msgs, int n, int add_generation_prompt, char **out);

/* The template variables beyond the messages (HF apply_chat_template's
 * add_generation_prompt and chat_template_kwargs). */
typedef struct chat_opts {
    int add_generation_prompt;
    int enable_thinking; /* -1: undefined (the template's default), 0: false, 1: true.
                          * Only QWEN3 reads it: false appends the empty think block
                          * "<think>\n\n</think>\n\n" after the generation prompt, as
                          * Qwen3's template does (true renders like undefined) */
} chat_opts;

/* chat_render with the variables of o (non-NULL); same returns. */
int chat_render_opts(int style, const chat_msg *msgs, int n, const chat_opts *o, char **out);

/* The BOS token text the style writes itself ("<|begin_of_text|>", "<s>"), or
 * NULL when the style never writes BOS. */
const char *chat_bos_text(int style);

/* 1 if rendered (chat_render output for style) starts with the style's BOS
 * text: encode it with add_bos=0 then. 0 otherwise. */
int chat_has_bos_text(int style, const char *rendered);

/* Short name of a style ("chatml", "chatml-smollm", "qwen3", "llama3",
 * "llama2", "zephyr"), or "unknown". */
const char *chat_style_name(int style);

/* Style from its short name (as chat_style_name gives), or NI_ENOTFOUND. */
int chat_style_from_name(const char *name);

#endif
