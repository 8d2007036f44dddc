#!/usr/bin/env python3
"""test_openai.py - the official `openai` Python client against `nanoinfer serve`.

Starts the server itself (tiny-llama3 test model, loopback, a free port read
from the "listening on" log line), runs the client's completions and chat
APIs streaming and not, and checks usage, stop, seed reproducibility, n > 1,
logprobs (both formats), echo, defaults and error mapping. The server is
killed at the end, also on failure. Run from the repository root:

    python3 test/py/test_openai.py [-v]

Environment: BUILD (default build) selects build/nanoinfer.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import openai

BIN = os.path.join(os.environ.get("BUILD", "build"), "nanoinfer")
MODEL_DIR = "test/models/tiny-llama3"


class Server:
    """A `nanoinfer serve` child process on 127.0.0.1 and a free port."""

    def __init__(self, *args, start_timeout=30, log_prefix="ni_openai_"):
        self.log = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False)
        self.proc = subprocess.Popen([BIN, "serve", "--port", "0", *args], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + start_timeout
        self.port = None
        while time.time() < deadline and self.port is None:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.read_log())
            m = re.search(r"listening on http://[^\s]*:(\d+)\s", self.read_log())
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.05)
        if self.port is None:
            raise RuntimeError("server did not start: " + self.read_log())
        self.url = f"http://127.0.0.1:{self.port}"
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("server never became healthy: " + self.read_log())

    def read_log(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def post(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.log.name)


SRV = None


def setUpModule():
    global SRV
    SRV = Server("--model", MODEL_DIR, "--kv-blocks", "1024", "--served-model-name", "tiny")


def tearDownModule():
    if SRV:
        SRV.stop()


class OpenAITest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = openai.OpenAI(base_url=SRV.url + "/v1", api_key="unused", max_retries=0, timeout=60)

    def complete(self, **kw):
        kw.setdefault("model", "tiny")
        return self.c.completions.create(**kw)

    def chat(self, **kw):
        kw.setdefault("model", "tiny")
        return self.c.chat.completions.create(**kw)

    def test_models(self):
        models = self.c.models.list().data
        self.assertEqual([m.id for m in models], ["tiny"])
        self.assertEqual(models[0].object, "model")
        self.assertEqual(self.c.models.retrieve("tiny").id, "tiny")

    def test_completion_usage_and_length(self):
        r = self.complete(prompt="hello world", max_tokens=7, extra_body={"ignore_eos": True})
        self.assertTrue(r.id.startswith("cmpl-"))
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(r.model, "tiny")
        self.assertEqual(len(r.choices), 1)
        self.assertEqual(r.choices[0].finish_reason, "length")
        n_prompt = SRV.post("/tokenize", {"prompt": "hello world"})["count"]
        self.assertEqual(r.usage.prompt_tokens, n_prompt)
        self.assertEqual(r.usage.completion_tokens, 7)
        self.assertEqual(r.usage.total_tokens, n_prompt + 7)

    def test_completion_stream_matches(self):
        kw = dict(prompt="stream me", max_tokens=12, temperature=0.9, seed=11, extra_body={"ignore_eos": True})
        whole = self.complete(**kw)
        chunks = list(self.complete(stream=True, stream_options={"include_usage": True}, **kw))
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        self.assertEqual(text, whole.choices[0].text)
        finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        self.assertEqual(finishes, ["length"])
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 12)
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)
        self.assertTrue(all(ch.id == chunks[0].id for ch in chunks))

    def test_seed_reproducibility(self):
        kw = dict(prompt="The seed", max_tokens=16, temperature=1.0, extra_body={"ignore_eos": True})
        a = self.complete(seed=1234, **kw).choices[0].text
        b = self.complete(seed=1234, **kw).choices[0].text
        self.assertEqual(a, b)
        others = {self.complete(seed=s, **kw).choices[0].text for s in (1, 2, 3)}
        self.assertGreater(len(others | {a}), 1, "different seeds never changed the output")

    def test_stop(self):
        base = self.complete(prompt="stop test", max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
        text = base.choices[0].text
        # a stop string from the middle of the greedy output (printable, not at the start)
        k = next((i for i in range(4, len(text) - 2) if text[i:i + 2].isprintable() and text[i:i + 2].strip()), None)
        if k is None:
            self.skipTest("greedy output has no printable span for a stop string: %r" % text)
        stop = text[k:k + 2]
        r = self.complete(prompt="stop test", max_tokens=24, temperature=0, stop=[stop],
                          extra_body={"ignore_eos": True})
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.choices[0].text, text[:text.find(stop)])
        self.assertNotIn(stop, r.choices[0].text)

    def test_n2(self):
        r = self.complete(prompt="two samples", max_tokens=5, n=2, temperature=1.0, seed=5,
                          extra_body={"ignore_eos": True})
        self.assertEqual(sorted(c.index for c in r.choices), [0, 1])
        self.assertEqual(r.usage.completion_tokens, 10)
        chunks = list(self.complete(prompt="two samples", max_tokens=5, n=2, temperature=1.0, seed=5, stream=True,
                                    extra_body={"ignore_eos": True}))
        by_index = {0: "", 1: ""}
        for ch in chunks:
            for c in ch.choices:
                by_index[c.index] += c.text
        self.assertEqual(by_index, {c.index: c.text for c in r.choices})

    def test_completion_logprobs(self):
        r = self.complete(prompt="logprobs", max_tokens=6, logprobs=3, extra_body={"ignore_eos": True})
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 6)
        self.assertEqual(len(lp.token_logprobs), 6)
        self.assertEqual(len(lp.top_logprobs), 6)
        self.assertEqual(len(lp.text_offset), 6)
        self.assertTrue(all(x <= 0 for x in lp.token_logprobs))
        self.assertTrue(all(1 <= len(t) <= 3 for t in lp.top_logprobs))
        self.assertEqual(lp.text_offset, sorted(lp.text_offset))
        # greedy: the chosen token is the most likely one
        g = self.complete(prompt="logprobs", max_tokens=3, logprobs=1, temperature=0).choices[0].logprobs
        for tok, lpv, top in zip(g.tokens, g.token_logprobs, g.top_logprobs):
            self.assertAlmostEqual(max(top.values()), lpv, places=4)

    def test_echo(self):
        r = self.complete(prompt="echo this", max_tokens=3, echo=True, extra_body={"ignore_eos": True})
        self.assertTrue(r.choices[0].text.startswith("echo this"))
        r2 = self.complete(prompt=[[5, 6, 7]], max_tokens=2)
        self.assertEqual(r2.usage.prompt_tokens, 3)

    def test_default_max_tokens_is_rest_of_context(self):
        r = self.complete(prompt="x", temperature=0, extra_body={"ignore_eos": True})
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.prompt_tokens + r.usage.completion_tokens, 512)

    def test_chat(self):
        msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}]
        r = self.chat(messages=msgs, max_tokens=8, temperature=0.7, seed=3)
        self.assertTrue(r.id.startswith("chatcmpl-"))
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        n_prompt = SRV.post("/tokenize", {"messages": msgs})["count"]
        self.assertEqual(r.usage.prompt_tokens, n_prompt)
        stream = list(self.chat(messages=msgs, max_tokens=8, temperature=0.7, seed=3, stream=True,
                                stream_options={"include_usage": True}))
        self.assertEqual(stream[0].choices[0].delta.role, "assistant")
        self.assertEqual(stream[0].object, "chat.completion.chunk")
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        self.assertEqual(text, r.choices[0].message.content)
        self.assertEqual(stream[-1].choices, [])
        self.assertEqual(stream[-1].usage.completion_tokens, r.usage.completion_tokens)

    def test_chat_multi_turn_and_parts(self):
        msgs = [{"role": "user", "content": [{"type": "text", "text": "first"}]},
                {"role": "assistant", "content": "reply"},
                {"role": "user", "content": "second"}]
        r = self.chat(messages=msgs, max_completion_tokens=4, extra_body={"ignore_eos": True})
        self.assertEqual(r.usage.completion_tokens, 4)
        self.assertEqual(r.choices[0].finish_reason, "length")

    def test_chat_logprobs(self):
        r = self.chat(messages=[{"role": "user", "content": "lp"}], max_tokens=4, logprobs=True, top_logprobs=2,
                      extra_body={"ignore_eos": True})
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), 4)
        for item in content:
            self.assertLessEqual(item.logprob, 0)
            self.assertEqual(len(item.top_logprobs), 2)
            self.assertIsInstance(item.bytes, list)
        chunks = list(self.chat(messages=[{"role": "user", "content": "lp"}], max_tokens=4, logprobs=True,
                                top_logprobs=2, stream=True, extra_body={"ignore_eos": True}))
        streamed = [i for ch in chunks if ch.choices and ch.choices[0].logprobs
                    for i in ch.choices[0].logprobs.content]
        self.assertEqual(len(streamed), 4)

    def test_chat_n2_stop_token_ids(self):
        r = self.chat(messages=[{"role": "user", "content": "n"}], max_tokens=3, n=2,
                      extra_body={"ignore_eos": True, "top_k": 5, "min_p": 0.01, "repetition_penalty": 1.1})
        self.assertEqual(len(r.choices), 2)
        # stop_token_ids: stop on whatever greedy picks first
        g = self.complete(prompt="sti", max_tokens=1, temperature=0, logprobs=0)
        first = SRV.post("/tokenize", {"prompt": g.choices[0].text, "add_special_tokens": False})["tokens"]
        if len(first) == 1:
            r = self.complete(prompt="sti", max_tokens=5, temperature=0, extra_body={"stop_token_ids": first})
            self.assertEqual(r.choices[0].finish_reason, "stop")
            self.assertEqual(r.usage.completion_tokens, 1)

    def test_logit_bias_forces_token(self):
        tok = SRV.post("/tokenize", {"prompt": "a", "add_special_tokens": False})["tokens"][-1]
        r = self.complete(prompt="bias", max_tokens=4, temperature=1.0, logit_bias={str(tok): 100},
                          logprobs=0, extra_body={"ignore_eos": True})
        ids = SRV.post("/tokenize", {"prompt": r.choices[0].text, "add_special_tokens": False})["tokens"]
        self.assertTrue(all(i == tok for i in ids), (ids, tok))

    def test_errors(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            self.complete(prompt="x", temperature=-1)
        self.assertEqual(cm.exception.status_code, 400)
        self.assertEqual(cm.exception.body["param"], "temperature")
        with self.assertRaises(openai.BadRequestError) as cm:
            self.complete(prompt="x", max_tokens=100000)
        self.assertEqual(cm.exception.body["param"], "max_tokens")
        with self.assertRaises(openai.BadRequestError) as cm:
            self.chat(messages=[{"role": "user", "content": "x"}], top_logprobs=3)
        self.assertEqual(cm.exception.body["param"], "top_logprobs")
        with self.assertRaises(openai.NotFoundError):
            self.complete(model="no-such-model", prompt="x")
        with self.assertRaises(openai.BadRequestError):
            self.complete(prompt="x", suffix="y")
        with self.assertRaises(openai.BadRequestError):
            self.chat(messages=[])


class AuthTest(unittest.TestCase):
    def test_api_key(self):
        srv = Server("--model", MODEL_DIR, "--kv-blocks", "256", "--api-key", "s3cret")
        try:
            bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
            with self.assertRaises(openai.AuthenticationError):
                bad.models.list()
            with self.assertRaises(openai.AuthenticationError):
                bad.completions.create(model="tiny-llama3", prompt="x", max_tokens=1)
            good = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
            r = good.completions.create(model="tiny-llama3", prompt="x", max_tokens=1)
            self.assertEqual(r.usage.completion_tokens, 1)
        finally:
            srv.stop()


if __name__ == "__main__":
    unittest.main()
