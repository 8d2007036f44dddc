#!/usr/bin/env python3
"""test_structured.py - structured outputs end to end, with the official `openai`
client and `jsonschema` (Draft 2020-12, formats checked).

Starts its own `nanoinfer serve` processes (loopback, a free port read from the
"listening on" log line) and checks:
  - the real model (NI_MODEL, default models/SmolLM2-135M-Instruct.Q4_1.gguf):
    every schema of test/data/schemas.json through chat.completions with
    response_format json_schema (strict), temperature 0.7, a fixed seed,
    max_tokens 512, 16 requests at a time: every reply that ends with "stop"
    parses and validates; "length" is allowed for at most 10 % of the corpus
    (listed when over); one grammar mask per generated token in /metrics.
    Also json_object (with and without a schema), streaming, n=3 at
    temperature 1, a stop string JSON cannot contain, max_tokens=3 -> "length",
    guided_choice / guided_regex / guided_grammar (GBNF) and structured_outputs
    on /v1/completions, guided_json on chat, /metrics mask counters.
  - test/models/tiny-llama3 (random weights: adversarial token walks): every
    corpus schema plus edge-case schemas via completions guided_json, n=4,
    temperature 1.0, max_tokens 256, on a KV pool small enough to preempt:
    every "stop" choice validates; streamed text equals the non-streamed text.
  - every entry of test/data/bad_schemas.json: a 400 naming the expected
    param (and, where listed, the keyword and JSON pointer in the message),
    answered within 2 s (wall clock: a limit, not a benchmark).
test_documented_number_exclusive_minimum_0 fails on purpose: gr_schema.c
documents number exclusiveMinimum 0 as supported but refuses it (see there).
Without the real model file its tests skip (CI=true: fail). Run from the
repository root:

    python3 test/py/test_structured.py [-v]

Environment: BUILD (default build) selects build/nanoinfer; NI_MODEL the real
model; NI_ST_WORKERS the number of concurrent corpus requests (default 16);
NI_ST_MAX_TOKENS the corpus replies' max_tokens (default 1024: at 512 the
long schemas -- recursive trees, invoice, file system -- run out of room for
about one sampled reply in ten).
"""
import copy
import json
import os
import re
import sys
import time
import unittest
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
from jsonschema import Draft202012Validator

sys.path.insert(0, os.path.dirname(__file__))
import test_openai  # noqa: E402  (the shared server helper)

REAL_MODEL = os.environ.get("NI_MODEL") or "models/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODEL = "test/models/tiny-llama3"
DATA = "test/data"
WORKERS = int(os.environ.get("NI_ST_WORKERS", "16"))
MAX_LENGTH_SHARE = 0.10
CORPUS_MAX_TOKENS = int(os.environ.get("NI_ST_MAX_TOKENS", "1024"))


def load(name):
    with open(os.path.join(DATA, name)) as f:
        return json.load(f)["entries"]


CORPUS = load("schemas.json")
BAD = load("bad_schemas.json")


class Server(test_openai.Server):
    """test_openai's server helper, with a longer start-up allowance (the real model under
    load) and the metrics / client accessors these tests use."""

    def __init__(self, *args):
        super().__init__(*args, start_timeout=60, log_prefix="ni_structured_")

    def metrics(self):
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def client(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=600)


def schema_errors(schema, text):
    """None when text is JSON valid against schema, else why not."""
    try:
        value = json.loads(text)
    except ValueError as e:
        return f"not JSON: {e}"
    errs = sorted(Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
                  .iter_errors(value), key=lambda e: list(e.path))
    if errs:
        return "; ".join(f"{'/'.join(map(str, e.path)) or '/'}: {e.message}" for e in errs[:3])
    return None


def rf_schema(entry):
    return {"type": "json_schema", "json_schema": {"name": entry["name"], "schema": entry["schema"], "strict": True}}


def entry(name):
    return next(e for e in CORPUS if e["name"] == name)


def user(text):
    return [{"role": "user", "content": text}]


class RealModelTest(unittest.TestCase):
    """SmolLM2 (or NI_MODEL): the corpus and every parameter form.

    setUpClass sends every request of the class at once (WORKERS at a time:
    the engine batches them, which is what makes this affordable on a small
    CPU); each test then checks its own replies."""

    @classmethod
    def setUpClass(cls):
        if not os.path.isfile(REAL_MODEL):
            msg = f"{REAL_MODEL} is missing (make model)"
            if os.environ.get("CI") == "true":
                raise RuntimeError(msg)
            raise unittest.SkipTest(msg)
        cls.srv = Server("--model", REAL_MODEL, "--served-model-name", "smol",
                         "--max-num-seqs", str(max(WORKERS, 16)))
        cls.c = cls.srv.client()
        cls.m0 = cls.srv.metrics()
        cls.t0 = time.time()
        cls.pool = ThreadPoolExecutor(WORKERS)
        cls.corpus = [cls.pool.submit(cls.corpus_one, e) for e in CORPUS]
        cls.jobs = {name: cls.pool.submit(getattr(cls, "job_" + name)) for name in
                    ("json_object", "json_object_schema", "streaming", "n3", "stop_string", "max_tokens_3",
                     "choice", "choice_structured_outputs", "regex", "regex_structured_outputs", "grammar",
                     "grammar_chat", "guided_json_chat")}

    @classmethod
    def tearDownClass(cls):
        cls.pool.shutdown(wait=True, cancel_futures=True)
        cls.srv.stop()

    @classmethod
    def chat(cls, **kw):
        kw.setdefault("model", "smol")
        return cls.c.chat.completions.create(**kw)

    @classmethod
    def complete(cls, **kw):
        kw.setdefault("model", "smol")
        return cls.c.completions.create(**kw)

    @classmethod
    def corpus_one(cls, e):
        t0 = time.time()
        r = cls.chat(messages=user(e["prompt"]), response_format=rf_schema(e), max_tokens=CORPUS_MAX_TOKENS, temperature=0.7, seed=7)
        ch = r.choices[0]
        err = schema_errors(e["schema"], ch.message.content) if ch.finish_reason == "stop" else None
        return e["name"], ch.finish_reason, r.usage.completion_tokens, time.time() - t0, err, ch.message.content

    def result(self, name):
        return self.jobs[name].result()

    def test_corpus_json_schema(self):
        results = [f.result() for f in self.corpus]
        wall = time.time() - self.t0
        tokens = sum(r[2] for r in results)
        invalid = [r for r in results if r[4]]
        length = [r for r in results if r[1] == "length"]
        other = [r for r in results if r[1] not in ("stop", "length")]
        print(f"\n  corpus: {len(results)} schemas, {len(results) - len(length)} stop, {len(length)} length "
              f"({', '.join(r[0] for r in length) or '-'}), {tokens} tokens, longest {max(r[2] for r in results)}, done after {wall:.1f} s", file=sys.stderr)
        self.assertEqual(invalid, [], "\n".join(f"{n}: {err}\n  output: {txt!r}" for n, _, _, _, err, txt in invalid))
        self.assertEqual(other, [], "unexpected finish reasons")
        self.assertLessEqual(len(length), MAX_LENGTH_SHARE * len(CORPUS),
                             "too many replies hit max_tokens: " + ", ".join(r[0] for r in length))

    @classmethod
    def job_json_object(cls):
        return cls.chat(messages=user("Give the capital and the population of France as a JSON object."),
                        response_format={"type": "json_object"}, max_tokens=256, temperature=0.7, seed=1)

    @classmethod
    def job_json_object_schema(cls):  # llama-server's form: json_object with a schema
        e = entry("sentiment")
        return cls.chat(messages=user(e["prompt"]), response_format={"type": "json_object", "schema": e["schema"]},
                        max_tokens=256, temperature=0.7, seed=1)

    def test_json_object(self):
        r = self.result("json_object")
        self.assertEqual(r.choices[0].finish_reason, "stop", r.choices[0].message.content)
        self.assertIsInstance(json.loads(r.choices[0].message.content), dict)
        r = self.result("json_object_schema")
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertIsNone(schema_errors(entry("sentiment")["schema"], r.choices[0].message.content))

    @classmethod
    def job_streaming(cls):
        e = entry("weather_report")
        return list(cls.chat(messages=user(e["prompt"]), response_format=rf_schema(e), max_tokens=512,
                             temperature=0.7, seed=3, stream=True, stream_options={"include_usage": True}))

    def test_streaming(self):
        chunks = self.result("streaming")
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        self.assertEqual(finishes, ["stop"], text)
        self.assertIsNone(schema_errors(entry("weather_report")["schema"], text), text)

    @classmethod
    def job_n3(cls):
        e = entry("weather_report")
        return cls.chat(messages=user(e["prompt"]), response_format=rf_schema(e), max_tokens=512, temperature=1.0,
                        seed=11, n=3)

    def test_n3_temperature_1(self):
        r = self.result("n3")
        self.assertEqual(sorted(c.index for c in r.choices), [0, 1, 2])
        for c in r.choices:
            self.assertEqual(c.finish_reason, "stop", c.message.content)
            self.assertIsNone(schema_errors(entry("weather_report")["schema"], c.message.content), c.message.content)

    @classmethod
    def job_stop_string(cls):
        e = entry("person_profile")
        return cls.chat(messages=user(e["prompt"]), response_format=rf_schema(e), max_tokens=512, temperature=0.7,
                        seed=5, stop=["\n\n\n\n"])

    def test_stop_string_absent_from_json(self):
        r = self.result("stop_string")
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertIsNone(schema_errors(entry("person_profile")["schema"], r.choices[0].message.content))

    @classmethod
    def job_max_tokens_3(cls):
        e = entry("invoice")
        return cls.chat(messages=user(e["prompt"]), response_format=rf_schema(e), max_tokens=3, seed=1)

    def test_max_tokens_3_is_length(self):
        r = self.result("max_tokens_3")
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 3)

    CHOICES = ["yes", "no", "maybe"]

    @classmethod
    def job_choice(cls):
        return cls.complete(prompt="Is the sky blue? Answer:", max_tokens=16, temperature=1.0, seed=2, n=4,
                            extra_body={"guided_choice": cls.CHOICES})

    @classmethod
    def job_choice_structured_outputs(cls):
        return cls.complete(prompt="Pick a color:", max_tokens=16, temperature=1.0, seed=2,
                            extra_body={"structured_outputs": {"choice": ["red", "green", "blue"]}})

    def test_guided_choice(self):
        for c in self.result("choice").choices:
            self.assertEqual(c.finish_reason, "stop")
            self.assertIn(c.text, self.CHOICES)
        self.assertIn(self.result("choice_structured_outputs").choices[0].text, ["red", "green", "blue"])

    REGEXES = [(r"[0-9]{3}-[0-9]{3}-[0-9]{4}", "My phone number is "),
               (r"(Mon|Tues|Wednes|Thurs|Fri)day at ([1-9]|1[0-2]):[0-5][0-9] (am|pm)", "The meeting is on "),
               (r"[A-Z][a-z]{1,12} [A-Z][a-z]{1,12}", "The author's name is ")]

    @classmethod
    def job_regex(cls):
        return [cls.complete(prompt=prompt, max_tokens=64, temperature=0.7, seed=4, n=2,
                             extra_body={"guided_regex": regex}) for regex, prompt in cls.REGEXES]

    @classmethod
    def job_regex_structured_outputs(cls):
        return cls.complete(prompt="Zip code: ", max_tokens=16, temperature=0.7, seed=4,
                            extra_body={"structured_outputs": {"regex": "[0-9]{5}"}})

    def test_guided_regex(self):
        for (regex, _), r in zip(self.REGEXES, self.result("regex")):
            for c in r.choices:
                self.assertEqual(c.finish_reason, "stop", (regex, c.text))
                self.assertIsNotNone(re.fullmatch(regex, c.text), (regex, c.text))
        text = self.result("regex_structured_outputs").choices[0].text
        self.assertIsNotNone(re.fullmatch("[0-9]{5}", text), text)

    GBNF = ('# a yes/no or a number\n'
            'root   ::= "The answer is " answer "."\n'
            'answer ::= "yes" | "no" | number\n'
            'number ::= [1-9] [0-9]{0,2}\n')

    @classmethod
    def job_grammar(cls):
        return cls.complete(prompt="Q: How many legs does a spider have?\nA:", max_tokens=32, temperature=0.7,
                            seed=6, n=3, extra_body={"guided_grammar": cls.GBNF})

    @classmethod
    def job_grammar_chat(cls):
        return cls.chat(messages=user("List two fruits."), max_tokens=64, temperature=0.7, seed=6,
                        extra_body={"structured_outputs": {"grammar": 'root ::= fruit ", " fruit\n'
                                                                      'fruit ::= "apple" | "pear" | "plum"'}})

    def test_guided_grammar(self):
        for c in self.result("grammar").choices:
            self.assertEqual(c.finish_reason, "stop", c.text)
            self.assertIsNotNone(re.fullmatch(r"The answer is (yes|no|[1-9][0-9]{0,2})\.", c.text), c.text)
        text = self.result("grammar_chat").choices[0].message.content
        self.assertIsNotNone(re.fullmatch(r"(apple|pear|plum), (apple|pear|plum)", text), text)

    @classmethod
    def job_guided_json_chat(cls):  # vLLM's guided_json on chat, the schema as a JSON string
        e = entry("chess_move")
        return cls.chat(messages=user(e["prompt"]), max_tokens=256, temperature=0.7, seed=8,
                        extra_body={"guided_json": json.dumps(e["schema"])})

    def test_guided_json_on_chat(self):
        r = self.result("guided_json_chat")
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertIsNone(schema_errors(entry("chess_move")["schema"], r.choices[0].message.content))

    def test_metrics_count_masks(self):
        # after everything above: one mask per generated token, except that
        # the n - 1 siblings of an n > 1 request share their first one
        expect = sum(f.result()[2] for f in self.corpus)
        for name, f in self.jobs.items():
            rs = f.result()
            if name == "streaming":
                expect += rs[-1].usage.completion_tokens
                continue
            for r in rs if isinstance(rs, list) else [rs]:
                expect += r.usage.completion_tokens - (len(r.choices) - 1)
        m1 = self.srv.metrics()
        masks = m1["nanoinfer_grammar_masks_total"] - self.m0.get("nanoinfer_grammar_masks_total", 0)
        secs = m1["nanoinfer_grammar_mask_seconds_total"] - self.m0.get("nanoinfer_grammar_mask_seconds_total", 0)
        print(f"\n  masks: {masks:.0f}, mean {1e6 * secs / max(masks, 1):.0f} us each", file=sys.stderr)
        self.assertEqual(masks, expect)
        self.assertGreater(secs, 0)
        # unconstrained requests are not masked
        self.c.completions.create(model="smol", prompt="hello", max_tokens=4, extra_body={"ignore_eos": True})
        self.assertEqual(self.srv.metrics()["nanoinfer_grammar_masks_total"], m1["nanoinfer_grammar_masks_total"])


# Edge cases of the compiler for the random model (number bounds, escapes,
# unicode, tuples, additional properties, type lists, every format...).
EDGE = {
    "int_negative_range": {"type": "integer", "minimum": -15, "maximum": -3},
    "int_across_zero": {"type": "integer", "minimum": -5, "maximum": 5},
    "int_7_to_1234": {"type": "integer", "minimum": 7, "maximum": 1234},
    "int_exclusive": {"type": "integer", "exclusiveMinimum": -1, "exclusiveMaximum": 100},
    "int_large": {"type": "integer", "minimum": 999999999999, "maximum": 1000000000001},
    "int_min_only": {"type": "integer", "minimum": 95},
    "int_max_only": {"type": "integer", "maximum": -95},
    "int_fractional_bounds": {"type": "integer", "minimum": 2.5, "maximum": 7.5},
    "string_3_to_5": {"type": "string", "minLength": 3, "maxLength": 5},
    "string_exactly_4": {"type": "string", "minLength": 4, "maxLength": 4},
    "enum_escapes": {"enum": ["a\"b", "caf\u00e9", "line\nbreak", "back\\slash", "tab\t", "\u2603", ""]},
    "const_object": {"const": {"k": [1, 2, {"z": None}], "s": "x\"y"}},
    "escaped_keys": {"type": "object", "properties": {"quote\"key": {"type": "integer"}, "new\nline": {"type": "boolean"},
                                                       "\u00fcber": {"type": "null"}},
                     "required": ["quote\"key", "new\nline", "\u00fcber"], "additionalProperties": False},
    "unicode_pattern": {"type": "string", "pattern": "^[\u00e0-\u00ff\u4e00-\u4e0f]{2,4}$"},
    "pattern_unanchored": {"type": "string", "pattern": "ab+c"},
    "pattern_dot": {"type": "string", "pattern": "^.{3}$"},
    "pattern_class_escapes": {"type": "string", "pattern": "^\\d{1,8}\\.\\w\\s[^a-z]$"},
    "prefix_items": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string", "maxLength": 3},
                                                      {"type": "boolean"}]},
    "additional_properties_schema": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
                                     "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9}},
    "all_optional_no_additional": {"type": "object", "properties": {"a": {"type": "integer"},
                                                                     "b": {"type": "string", "maxLength": 2}}},
    "all_optional_additional_true": {"type": "object", "properties": {"a": {"type": "integer"}},
                                     "additionalProperties": True},
    "type_list_with_array": {"type": ["integer", "boolean", "null", "array"], "items": {"type": "integer"}, "maxItems": 2},
    "array_exactly_3": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                        "minItems": 3, "maxItems": 3},
    "array_max_0": {"type": "array", "maxItems": 0},
    "array_of_anything": {"type": "array", "maxItems": 3},
    "empty_schema": {},
    "true_schema": True,
    "number_minimum_0": {"type": "number", "minimum": 0},
    "number": {"type": "number"},
    "format_date_time": {"type": "string", "format": "date-time"},
    "format_time": {"type": "string", "format": "time"},
    "format_date": {"type": "string", "format": "date"},
    "format_uuid": {"type": "string", "format": "uuid"},
    "format_email": {"type": "string", "format": "email"},
    "format_ipv4": {"type": "string", "format": "ipv4"},
    "format_hostname": {"type": "string", "format": "hostname"},
    "anyOf_objects": {"anyOf": [
        {"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"], "additionalProperties": False},
        {"type": "object", "properties": {"b": {"const": 2}}, "required": ["b"], "additionalProperties": False}]},
    "allOf_one": {"allOf": [{"type": "integer", "minimum": 3, "maximum": 4}]},
    "ref_json_pointer": {"properties": {"a": {"type": "integer", "minimum": 1, "maximum": 2}, "b": {"$ref": "#/properties/a"}},
                         "required": ["a", "b"], "additionalProperties": False},
    "ref_escaped_pointer": {"$defs": {"a/b": {"const": "slash"}, "c~d": {"const": "tilde"}}, "type": "array",
                            "prefixItems": [{"$ref": "#/$defs/a~1b"}, {"$ref": "#/$defs/c~0d"}]},
}


class TinyModelTest(unittest.TestCase):
    """tiny-llama3: random token walks under the grammar, with preemption."""

    @classmethod
    def setUpClass(cls):
        # 96 blocks of 16 tokens: n=4 requests of up to 256 tokens run 16 at a
        # time, so sequences are preempted and recomputed mid-grammar
        cls.srv = Server("--model", TINY_MODEL, "--served-model-name", "tiny", "--kv-blocks", "96",
                         "--max-num-seqs", "64")
        cls.c = cls.srv.client()

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def walk(self, cases, seed, stream_check=False):
        def one(case):
            name, prompt, schema = case
            kw = dict(model="tiny", prompt=prompt, max_tokens=256, temperature=1.0, n=4, seed=seed,
                      extra_body={"guided_json": schema})
            r = self.c.completions.create(**kw)
            out = [(name, c.finish_reason, schema_errors(schema, c.text) if c.finish_reason == "stop" else None, c.text)
                   for c in r.choices]
            differs = []
            if stream_check:
                streamed = {}
                for ch in self.c.completions.create(stream=True, **kw):
                    for c in ch.choices:
                        streamed[c.index] = streamed.get(c.index, "") + c.text
                differs = [(name, c.index, c.text, streamed.get(c.index)) for c in r.choices
                           if streamed.get(c.index) != c.text]
            return out, differs

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, cases))
        choices = [c for out, _ in results for c in out]
        invalid = [c for c in choices if c[2]]
        self.assertEqual(invalid, [], "\n".join(f"{n}: {err}\n  output: {txt!r}" for n, _, err, txt in invalid))
        self.assertEqual([d for _, ds in results for d in ds], [], "streamed text differs")
        self.assertTrue(all(c[1] in ("stop", "length") for c in choices), {c[1] for c in choices})
        stops = sum(c[1] == "stop" for c in choices)
        self.assertGreater(stops, len(choices) // 4, "the grammar hardly ever completes")
        return stops, len(choices)

    def test_corpus_random_walks(self):
        m0 = self.srv.metrics()
        stops, n = self.walk([(e["name"], e["prompt"], e["schema"]) for e in CORPUS], seed=3)
        m1 = self.srv.metrics()
        print(f"\n  tiny corpus: {stops}/{n} choices stop; preemptions "
              f"{m1['nanoinfer_preemptions_total'] - m0.get('nanoinfer_preemptions_total', 0):.0f}", file=sys.stderr)
        self.assertGreater(m1["nanoinfer_grammar_masks_total"], m0.get("nanoinfer_grammar_masks_total", 0))
        self.assertGreater(m1["nanoinfer_preemptions_total"], m0.get("nanoinfer_preemptions_total", 0),
                           "the small KV pool no longer forces preemption: the test lost that coverage")

    def test_edge_schemas_and_streaming(self):
        cases = [(k, "x " + k, v) for k, v in EDGE.items()]
        for seed in (1, 2):
            self.walk(cases, seed=seed, stream_check=seed == 1)
        # the corpus again, streamed: same text as without streaming
        self.walk([(e["name"], e["prompt"], e["schema"]) for e in CORPUS[:16]], seed=9, stream_check=True)

    def test_greedy_and_penalties(self):
        e = entry("order")
        r = self.c.completions.create(model="tiny", prompt=e["prompt"], max_tokens=256, temperature=0,
                                      extra_body={"guided_json": e["schema"], "repetition_penalty": 1.3,
                                                  "presence_penalty": 1.0, "top_k": 5})
        c = r.choices[0]
        if c.finish_reason == "stop":
            self.assertIsNone(schema_errors(e["schema"], c.text), c.text)

    # KNOWN MISMATCH (engine/grammar/gr_schema.c): the header comment lists
    # "number: minimum 0 / exclusiveMinimum 0 only" as supported, but
    # numeric_schema refuses any exclusiveMinimum on a number
    # ("'exclusiveMinimum' on a number is not supported"). Left failing on
    # purpose until the comment or the code is fixed.
    def test_documented_number_exclusive_minimum_0(self):
        schema = {"type": "number", "exclusiveMinimum": 0}
        try:
            r = self.c.completions.create(model="tiny", prompt="x", max_tokens=32, seed=1,
                                          extra_body={"guided_json": schema})
        except openai.BadRequestError as e:
            self.fail(f"documented as supported, refused: {e.body}")
        c = r.choices[0]
        if c.finish_reason == "stop":
            self.assertIsNone(schema_errors(schema, c.text), c.text)


def generate(kind, n):
    """The large values of bad_schemas.json entries with 'generate'."""
    if kind == "nest":
        s = {"type": "string"}
        for _ in range(n):
            s = {"type": "object", "properties": {"a": s}, "required": ["a"], "additionalProperties": False}
        return s
    if kind == "enum":
        return {"enum": [f"value-{i}" for i in range(n)]}
    if kind == "props":
        return {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(n)},
                "additionalProperties": False}
    if kind == "ref_chain":
        defs = {f"a{i}": {"$ref": f"#/$defs/a{i + 1}"} for i in range(n)}
        defs[f"a{n}"] = {"type": "string"}
        return {"$defs": defs, "$ref": "#/$defs/a0"}
    if kind == "long_pattern":
        return {"type": "object", "properties": {"s": {"type": "string", "pattern": "^" + "a" * n + "$"}},
                "required": ["s"]}
    if kind == "long_regex":
        return "a" * n
    raise ValueError(kind)


class BadCorpusTest(unittest.TestCase):
    """Every bad_schemas.json entry: 400 naming the param, within 2 s."""

    @classmethod
    def setUpClass(cls):
        cls.srv = Server("--model", TINY_MODEL, "--served-model-name", "tiny", "--kv-blocks", "256")
        cls.c = cls.srv.client()

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def test_bad_corpus(self):
        self.assertGreaterEqual(len(BAD), 25)
        problems = []
        for e in BAD:
            body = copy.deepcopy(e["body"])
            g = e.get("generate")
            if g:
                d = body
                for k in g["path"][:-1]:
                    d = d[k]
                d[g["path"][-1]] = generate(g["kind"], g["n"])
            t0 = time.monotonic()
            try:
                if e["endpoint"] == "chat":
                    self.c.chat.completions.create(model="tiny", messages=user("hi"), max_tokens=4, extra_body=body)
                else:
                    self.c.completions.create(model="tiny", prompt="hi", max_tokens=4, extra_body=body)
                problems.append(f"{e['name']}: accepted (200)")
                continue
            except openai.APIStatusError as err:
                dt = time.monotonic() - t0
                status, eb = err.status_code, err.body if isinstance(err.body, dict) else {}
            msg = eb.get("message") or ""
            if status != 400:
                problems.append(f"{e['name']}: status {status}: {msg}")
            elif eb.get("param") != e["param"]:
                problems.append(f"{e['name']}: param {eb.get('param')!r}, want {e['param']!r}: {msg}")
            elif dt > 2.0:
                problems.append(f"{e['name']}: took {dt:.2f} s")
            for want in e.get("message_has", []):
                if want not in msg:
                    problems.append(f"{e['name']}: message lacks {want!r}: {msg}")
        self.assertEqual(problems, [], "\n" + "\n".join(problems))
        # the server is still fine afterwards
        r = self.c.completions.create(model="tiny", prompt="hi", max_tokens=2, extra_body={"guided_choice": ["ok"]})
        self.assertEqual(r.choices[0].text, "ok")


if __name__ == "__main__":
    unittest.main()
