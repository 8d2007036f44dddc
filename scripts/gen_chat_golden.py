#!/usr/bin/env python3
"""Writes test/fixtures/chat_golden.json: conversations rendered by the real
Jinja chat templates through transformers (apply_chat_template with
tokenize=False), the reference test/test_chat.c
compares tokenizer/chat.c against byte for byte.

Template sources (verbatim):
  chatml-smollm  the `tokenizer.chat_template` of models/SmolLM2-135M-Instruct.Q4_1.gguf,
                 rendered through transformers' tokenizer loaded from that GGUF.
  chatml         teknium/OpenHermes-2.5-Mistral-7B tokenizer_config.json, as quoted in
                 llama.cpp tests/test-chat-template.cpp.
  qwen3          Qwen/Qwen3-0.6B tokenizer_config.json, as copied into llama.cpp
                 models/templates/Qwen-Qwen3-0.6B.jinja.
  llama3         meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json (2024-05-08),
                 as quoted in guidance-ai/guidance guidance/chat.py.
  llama2         meta-llama/Llama-2-7b-chat-hf tokenizer_config.json (2024-05-08),
                 as quoted in guidance-ai/guidance guidance/chat.py.
  zephyr         HuggingFaceH4/zephyr-7b-beta tokenizer_config.json, as quoted in
                 huggingface/huggingface.js packages/jinja/test/e2e.test.js
                 (TinyLlama-1.1B-Chat uses the same template).

Every conversation is rendered in every style with add_generation_prompt
true and false. Where the template raises, the case expects an error. One
documented deviation: llama2 rejects a system message that is not first
(the reference template silently drops it at odd positions); such cases are
marked "deviation" and expect an error.

Usage: python3 scripts/gen_chat_golden.py [--gguf PATH] [--out PATH]
"""
import argparse
import json
import os
import sys


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")

LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
          "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
          "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
          "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
          "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
          "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
          "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
          "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")

QWEN3 = r'''{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}'''

SOURCES = {
    "chatml": "teknium/OpenHermes-2.5-Mistral-7B tokenizer_config.json (via llama.cpp tests/test-chat-template.cpp)",
    "chatml-smollm": "tokenizer.chat_template of the SmolLM2-135M-Instruct GGUF",
    "qwen3": "Qwen/Qwen3-0.6B tokenizer_config.json (via llama.cpp models/templates/Qwen-Qwen3-0.6B.jinja)",
    "llama3": "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json (via guidance-ai/guidance guidance/chat.py)",
    "llama2": "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json (via guidance-ai/guidance guidance/chat.py)",
    "zephyr": "HuggingFaceH4/zephyr-7b-beta tokenizer_config.json (via huggingface.js packages/jinja/test/e2e.test.js)",
}

SPECIAL = {
    "chatml": {},
    "chatml-smollm": {},  # taken from the GGUF tokenizer
    "qwen3": {"bos_token": None, "eos_token": "<|im_end|>"},
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama2": {"bos_token": "<s>", "eos_token": "</s>"},
    "zephyr": {"bos_token": "<s>", "eos_token": "</s>"},
}


def m(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = [
    ("single_user", [m("user", "Hello!")]),
    ("system_multi_turn", [m("system", "You are a pirate."), m("user", "Hi"), m("assistant", "Arr, hello."),
                           m("user", "Where is the treasure?")]),
    ("ends_with_assistant", [m("user", "What is 2+2?"), m("assistant", "4"), m("user", "And 3+3?"),
                             m("assistant", "6")]),
    ("whitespace", [m("system", "  \n Be brief.\t "), m("user", "\u00a0\u3000 padded \u2003\n"),
                    m("assistant", "\n\n  spaced answer  \n"), m("user", " x\x1c\u0085\u2028\u205f\u202f")]),
    ("not_whitespace", [m("user", "\u200b zero-width space is not whitespace \u200b"),
                        m("assistant", "\ufeffBOM\ufeff"), m("user", "\u00e9\u3001")]),
    ("unicode_and_special_text", [m("user", "\u00dcn\u00efc\u00f6d\u00e9 \u65e5\u672c\u8a9e \U0001f389 "
                                            "<|im_end|> </s> [INST] <|eot_id|>")]),
    ("empty_contents", [m("system", ""), m("user", ""), m("assistant", "")]),
    ("system_only", [m("system", "Only system.")]),
    ("empty_conversation", []),
    ("assistant_first", [m("assistant", "I start."), m("user", "ok")]),
    ("two_users", [m("user", "a"), m("user", "b")]),
    ("system_then_assistant", [m("system", "s"), m("assistant", "a")]),
    ("system_not_first", [m("user", "a"), m("assistant", "b"), m("system", "late system"), m("user", "c")]),
    ("system_not_first_even", [m("user", "a"), m("system", "late system")]),
    ("multiline_content", [m("system", "line1\nline2\n\n"), m("user", "q\n\nwith\r\nCRLF\n"),
                           m("assistant", "a\n")]),
    ("think_history", [m("user", "q1"), m("assistant", "<think>\nreason1\n</think>\n\nanswer1"),
                       m("user", "q2"), m("assistant", "<think>\nr2\n\n</think>\n\n\nanswer2\n")]),
    ("think_plain_last", [m("user", "q1"), m("assistant", "plain answer")]),
    ("think_two_assistants", [m("user", "q"), m("assistant", "<think>a</think>b"), m("assistant", "c"),
                              m("assistant", "d")]),
    ("think_nested_tags", [m("user", "q"), m("assistant", "pre<think>\nA\n</think>mid</think>\n\nend"),
                           m("user", "q2")]),
    ("think_empty_reasoning_mid", [m("user", "q"), m("assistant", "<think></think>x"),
                                   m("assistant", "\n\ny")]),
    ("tool_response_user", [m("user", "q"), m("assistant", "x"),
                            m("user", "<tool_response>\n42\n</tool_response>"), m("assistant", "final")]),
    ("only_tool_responses", [m("user", "<tool_response>r</tool_response>"), m("assistant", "<think>t</think>a")]),
]


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                                                "required": ["city"]}}}
NOW = {"type": "function", "function": {"name": "now", "description": "The time (UTC, ISO 8601) \u00e9",
                                        "parameters": {"type": "object", "properties": {}}}}


def call(name, args):
    return {"type": "function", "function": {"name": name, "arguments": args}}


def am(content, calls):
    return {"role": "assistant", "content": content, "tool_calls": calls}


# Tool use, rendered only with the templates that know tools (qwen3). Each entry:
# (name, tools, messages).
TOOL_CONVERSATIONS = [
    ("tools_question", [WEATHER, NOW], [m("user", "Weather in Paris?")]),
    ("tools_system_calls_results", [WEATHER, NOW],
     [m("system", "Be helpful."), m("user", "Weather in Oslo and the time?"),
      am("", [call("get_weather", {"city": "Oslo", "unit": "c"}), call("now", {})]),
      m("tool", "{\"temp\": 3}"), m("tool", "2026-12-02T10:00:00Z"), m("assistant", "3 C at 10:00."),
      m("user", "Thanks")]),
    ("tools_content_and_call", [WEATHER],
     [m("user", "Rome?"), am("Let me check.", [call("get_weather", {"city": "Rome"})]),
      m("tool", "sunny"), m("user", "And now?")]),
    ("history_without_tools", [],
     [m("user", "q"), am("", [call("now", {})]), m("tool", "t"), m("assistant", "done")]),
]


def load_smollm_template(gguf_path):
    """The GGUF's tokenizer.chat_template (read with gguf-py) and a tokenizer object for the
    rendering machinery: transformers' own GGUF loading when it works, else the committed
    tiny-llama3 tokenizer (apply_chat_template only needs the template and the special tokens
    passed in, so the object does not change the text)."""
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path) or ".",
                                            gguf_file=os.path.basename(gguf_path))
        return tok, tok.chat_template
    except Exception:  # transformers >= 5 needs torch to read GGUF metadata
        from gguf import GGUFReader
        f = GGUFReader(gguf_path).fields["tokenizer.chat_template"]
        src = bytes(f.parts[f.data[0]]).decode("utf-8")
        return AutoTokenizer.from_pretrained("test/models/tiny-llama3"), src


def render(style, src, msgs, gen, tok, tools=None):
    """apply_chat_template(tokenize=False) with the style's template and special tokens
    (the SmolLM2 GGUF tokenizer object only provides the machinery)."""
    try:
        kw = {} if style == "chatml-smollm" else dict(SPECIAL[style])
        return tok.apply_chat_template(msgs, chat_template=src, tokenize=False, add_generation_prompt=gen,
                                       tools=tools or None, **kw), None
    except Exception as e:  # the template raised (raise_exception, undefined access, empty chat)
        return None, f"{type(e).__name__}: {e}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="test/fixtures/chat_golden.json")
    a = ap.parse_args()
    if not os.path.exists(a.gguf):
        sys.exit(f"{a.gguf}: not found (run scripts/fetch-model.sh first)")
    smol_tok, smol_src = load_smollm_template(a.gguf)
    templates = {"chatml": CHATML, "chatml-smollm": smol_src, "qwen3": QWEN3,
                 "llama3": LLAMA3, "llama2": LLAMA2, "zephyr": ZEPHYR}
    cases = []
    for style, src in templates.items():
        for name, msgs in CONVERSATIONS:
            for gen in (True, False):
                expected, err = render(style, src, msgs, gen, smol_tok)
                case = {"name": f"{style}/{name}/{'gen' if gen else 'nogen'}", "style": style,
                        "messages": msgs, "add_generation_prompt": gen, "expected": expected}
                if err:
                    case["error"] = err
                roles = [x["role"] for x in msgs]
                if style == "llama2" and expected is not None and "system" in roles[1:]:
                    case["deviation"] = ("the template silently drops a non-leading system message; "
                                         "NanoInfer rejects it (NI_EINVAL)")
                    case["expected"] = None
                cases.append(case)
    for name, tools, msgs in TOOL_CONVERSATIONS:
        for gen in (True, False):
            expected, err = render("qwen3", QWEN3, msgs, gen, smol_tok, tools)
            if err:
                sys.exit(f"qwen3/{name}: the template raised: {err}")
            cases.append({"name": f"qwen3/{name}/{'gen' if gen else 'nogen'}", "style": "qwen3",
                          "messages": msgs, "tools": tools, "add_generation_prompt": gen,
                          "expected": expected})
    doc = {
        "generator": "scripts/gen_chat_golden.py (transformers apply_chat_template, tokenize=False)",
        "templates": {s: {"source": SOURCES[s], "template_src": t} for s, t in templates.items()},
        "cases": cases,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum(1 for c in cases if c["expected"] is None)
    print(f"{a.out}: {len(cases)} cases ({n_err} expect an error)")


if __name__ == "__main__":
    main()
