#!/usr/bin/env python3
"""test_tools.py - tool calling through the official `openai` client against `nanoinfer serve`.

Two servers on loopback (free ports from the "listening on" line): the real model (NI_MODEL,
SmolLM2-135M-Instruct, ChatML family: Hermes-style <tool_call> blocks) and the tiny random Qwen3
model (test/models/tiny-qwen3: random weights, so its tool calls are adversarial token walks
that only the grammar keeps in shape). Checks:
  - tool_choice "required": finish_reason "tool_calls", every call names a declared function and
    its arguments json.loads and validate against the function's parameters (jsonschema);
    also with n = 3 at temperature 1 on the random model, streaming and not;
  - a named tool_choice calls exactly that function; parallel_tool_calls false gives one call;
  - streaming: delta.tool_calls fragments (index, id, name, arguments) reassemble to calls
    equal in shape to the non-streaming ones; the stream ends with finish_reason "tool_calls";
  - a multi-turn exchange that sends the assistant's tool_calls and a "tool" result back is
    accepted and the template renders them (the prompt grows; /tokenize agrees);
  - tool_choice "none" never returns tool_calls; tools change the prompt only when used;
  - errors: a named function not in tools, tool_choice without tools, tools on /v1/completions,
    a bad parameters schema with "required" -> 400 naming the parameter.
Run from the repository root: python3 test/py/test_tools.py [-v]
Environment: BUILD (default build), NI_MODEL.
"""
import json
import os
import sys
import unittest

import jsonschema
import openai

sys.path.insert(0, os.path.dirname(__file__))
from test_openai import Server  # noqa: E402  (the shared server helper)

REAL = os.environ.get("NI_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf")
TINY = "test/models/tiny-qwen3"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 30}},
                   "required": ["tz"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

SERVERS = {}


def setUpModule():
    SERVERS["real"] = Server("--model", REAL, "--quant", "fp32", "--served-model-name", "real")
    SERVERS["tiny"] = Server("--model", TINY, "--served-model-name", "tiny", "--kv-blocks", "1024")


def tearDownModule():
    for s in SERVERS.values():
        s.stop()


def client(name):
    return openai.OpenAI(base_url=SERVERS[name].url + "/v1", api_key="x", max_retries=0, timeout=120)


class ToolsTest(unittest.TestCase):
    def check_calls(self, calls, names=None, schemas=None):
        self.assertTrue(calls, "no tool calls")
        ids = set()
        for c in calls:
            self.assertEqual(c.type, "function")
            self.assertTrue(c.id.startswith("call_"), c.id)
            ids.add(c.id)
            schemas = schemas or SCHEMAS
            self.assertIn(c.function.name, names or schemas)
            args = json.loads(c.function.arguments)
            jsonschema.validate(args, schemas[c.function.name])
        self.assertEqual(len(ids), len(calls), "call ids must be unique")

    def ask(self, name="real", **kw):
        kw.setdefault("model", name)
        kw.setdefault("messages", [{"role": "user", "content": "What is the weather in Paris?"}])
        kw.setdefault("tools", TOOLS)
        kw.setdefault("max_tokens", 200)
        return client(name).chat.completions.create(**kw)

    def test_required(self):
        r = self.ask(tool_choice="required", temperature=0)
        ch = r.choices[0]
        self.assertEqual(ch.finish_reason, "tool_calls")
        self.check_calls(ch.message.tool_calls)
        self.assertIn(ch.message.content, (None, ""))

    def test_named_and_single(self):
        r = self.ask(tool_choice={"type": "function", "function": {"name": "get_time"}},
                     parallel_tool_calls=False, temperature=0,
                     messages=[{"role": "user", "content": "What time is it in Tokyo?"}])
        calls = r.choices[0].message.tool_calls
        self.assertEqual(len(calls), 1)
        self.check_calls(calls, ["get_time"])

    def test_random_model_n3(self):
        done = 0
        for stream in (False, True):
            # the tiny model's context is 512 tokens: one short function, a short question
            small = {"type": "function", "function": {"name": "t", "parameters": {
                "type": "object", "properties": {"z": {"enum": [1, 2]}},
                "additionalProperties": False}}}
            small_schema = {"t": small["function"]["parameters"]}
            kw = dict(tool_choice="required", n=3, temperature=1.0, seed=7, max_tokens=64, parallel_tool_calls=False,
                      tools=[small], messages=[{"role": "user", "content": "time?"}])
            if not stream:
                r = self.ask("tiny", **kw)
                self.assertEqual(len(r.choices), 3)
                for ch in r.choices:
                    if ch.finish_reason == "length":
                        continue  # a random walk may run out of tokens inside a call
                    self.assertEqual(ch.finish_reason, "tool_calls")
                    self.check_calls(ch.message.tool_calls, schemas=small_schema)
                    done += 1
            else:
                calls, finish = collect_stream(self.ask("tiny", stream=True, **kw))
                self.assertEqual(sorted(finish), [0, 1, 2])
                for i, f in finish.items():
                    if f != "length":
                        self.assertEqual(f, "tool_calls")
                        self.check_calls([as_call(c) for c in calls.get(i, [])],
                                         schemas=small_schema)
                        done += 1
        self.assertGreater(done, 0, "no random walk finished a call within max_tokens")

    def test_streaming_matches(self):
        kw = dict(tool_choice="required", temperature=0, parallel_tool_calls=False)
        whole = self.ask(**kw).choices[0].message.tool_calls
        calls, finish = collect_stream(self.ask(stream=True, **kw))
        self.assertEqual(finish, {0: "tool_calls"})
        got = [as_call(c) for c in calls[0]]
        self.assertEqual([(c.function.name, c.function.arguments) for c in got],
                         [(c.function.name, c.function.arguments) for c in whole])
        self.check_calls(got)

    def test_round_trip(self):
        first = self.ask(tool_choice="required", temperature=0, parallel_tool_calls=False)
        call = first.choices[0].message.tool_calls[0]
        msgs = [{"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call.id, "type": "function",
                     "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21, "sky": "clear"}'}]
        r = self.ask(messages=msgs, tool_choice="none", temperature=0, max_tokens=40)
        ch = r.choices[0]
        self.assertFalse(ch.message.tool_calls)
        self.assertTrue(ch.message.content)
        # the tool result is in the prompt: /tokenize renders the same conversation
        with_result = SERVERS["real"].post("/tokenize", {"messages": msgs, "tools": TOOLS})["count"]
        without = SERVERS["real"].post("/tokenize", {"messages": msgs[:1], "tools": TOOLS})["count"]
        self.assertGreater(with_result, without + 10)
        self.assertEqual(r.usage.prompt_tokens,  # tool_choice none: tools are not rendered
                         SERVERS["real"].post("/tokenize", {"messages": msgs})["count"])

    def test_none_and_prompt(self):
        plain = SERVERS["real"].post("/tokenize", {"messages": [{"role": "user", "content": "hi"}]})
        tooled = SERVERS["real"].post("/tokenize", {"messages": [{"role": "user", "content": "hi"}],
                                                    "tools": TOOLS})
        self.assertGreater(tooled["count"], plain["count"] + 50)
        r = self.ask(tool_choice="none", temperature=0, max_tokens=30)
        self.assertFalse(r.choices[0].message.tool_calls)
        self.assertNotEqual(r.choices[0].finish_reason, "tool_calls")

    def test_errors(self):
        c = client("real")
        cases = [
            (dict(tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
            (dict(tools=None, tool_choice="required"), "tool_choice"),
            (dict(tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools"),
            (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object", "properties": {"a": {"not": {}}}}}}], tool_choice="required"),
             "tools"),
        ]
        for extra, param in cases:
            kw = dict(model="real", messages=[{"role": "user", "content": "x"}], tools=TOOLS)
            kw.update(extra)
            if kw.get("tools") is None:
                kw.pop("tools")
            with self.assertRaises(openai.BadRequestError) as cm:
                c.chat.completions.create(**kw)
            self.assertEqual(cm.exception.body.get("param"), param, cm.exception.body)
        with self.assertRaises(openai.BadRequestError) as cm:
            c.completions.create(model="real", prompt="x", extra_body={"tools": TOOLS})
        self.assertEqual(cm.exception.body.get("param"), "tools")


class _Fn:
    def __init__(self, name, arguments):
        self.name, self.arguments = name, arguments


class _Call:
    def __init__(self, d):
        self.id, self.type = d["id"], d["type"]
        self.function = _Fn(d["name"], d["arguments"])


def as_call(d):
    return _Call(d)


def collect_stream(stream):
    """Reassembles delta.tool_calls by choice and call index; returns (calls, finish)."""
    calls, finish = {}, {}
    for chunk in stream:
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                lst = calls.setdefault(ch.index, [])
                while len(lst) <= tc.index:
                    lst.append({"id": None, "type": "function", "name": "", "arguments": ""})
                d = lst[tc.index]
                if tc.id:
                    d["id"] = tc.id
                if tc.function and tc.function.name:
                    d["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    d["arguments"] += tc.function.arguments
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    return calls, finish


if __name__ == "__main__":
    unittest.main()
