#!/usr/bin/env python3
"""fuzz_requests.py PORT [N] [SEED] - random malformed and edge-case requests.

Mutates valid /v1/completions, /v1/chat/completions, /tokenize and
/detokenize bodies (wrong types, extreme numbers, deep nesting, odd unicode,
truncation, random bytes) and sends N of them (default 400) with a fixed
seed. Fails (exit 1) on any 5xx, a non-JSON error body, or a dropped
connection; prints a status histogram. Keep generation short: the server
should run a tiny model.
"""
import http.client
import json
import random
import sys

port = int(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 400
rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1234)

WEIRD = [None, True, False, 0, -1, 1, 2**31, -2**63, 2**63 - 1, 1e308, -1e308, 0.5, 1e-320, "", "x",
         "\u0000", "\ud7ff\ue000", "😀" * 10, "<|eot_id|>", [], [1], [[]], {}, {"a": 1}, "1", "NaN",
         list(range(50)), [-5], ["a", "b"], "a" * 3000]
KEYS = ["prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "seed", "stop",
        "stop_token_ids", "n", "best_of", "logprobs", "top_logprobs", "echo", "stream", "stream_options",
        "ignore_eos", "model", "suffix", "tools", "response_format", "add_generation_prompt", "tokens",
        "add_special_tokens", "user", "min_tokens"]
BASES = {
    "/v1/completions": {"prompt": "hello", "max_tokens": 4},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    "/tokenize": {"prompt": "hello"},
    "/detokenize": {"tokens": [1, 2, 3]},
}


def mutate(body):
    b = json.loads(json.dumps(body))
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        if r < 0.5:
            b[rng.choice(KEYS)] = rng.choice(WEIRD)
        elif r < 0.6 and b:
            del b[rng.choice(list(b))]
        elif r < 0.7:
            b["messages"] = [{"role": rng.choice(["user", "system", "assistant", "tool", 5, None]),
                              "content": rng.choice(WEIRD)} for _ in range(rng.randint(0, 4))]
        elif r < 0.8:
            b[rng.choice(KEYS)] = "__DEEP_%d__" % rng.choice([10, 100, 5000])  # expanded after dumps
        elif r < 0.9:
            b["logit_bias"] = {rng.choice(["1", "-1", "400", "abc", "99999999999", ""]): rng.choice(WEIRD)}
        else:
            b["stop"] = [rng.choice(["a", "", "\n", "x" * 300]) for _ in range(rng.randint(0, 10))]
    if "stream" in b and b.get("stream") is True and rng.random() < 0.5:
        b["stream_options"] = {"include_usage": rng.choice(WEIRD)}
    if rng.random() < 0.7 and isinstance(b.get("max_tokens"), int) and b["max_tokens"] > 8:
        b["max_tokens"] = 8
    return b


def raw_body(path):
    text = json.dumps(mutate(BASES[path]))
    for d in (10, 100, 5000):
        text = text.replace('"__DEEP_%d__"' % d, "[" * d + "1" + "]" * d)
    r = rng.random()
    if r < 0.05:
        return text[: rng.randint(0, len(text))].encode()  # truncated JSON
    if r < 0.08:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))  # random bytes
    return text.encode()


hist = {}
bad = 0
for i in range(n):
    path = rng.choice(list(BASES))
    body = raw_body(path)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
    except Exception as e:  # a dropped connection is a failure
        print("request %d %s %r: %s" % (i, path, body[:120], e))
        bad += 1
        continue
    finally:
        c.close()
    hist[r.status] = hist.get(r.status, 0) + 1
    if r.status >= 500:
        print("5xx for %s %r: %s" % (path, body[:200], data[:200]))
        bad += 1
    elif r.status >= 400:
        try:
            err = json.loads(data)["error"]
            assert isinstance(err["message"], str) and "param" in err and "type" in err
        except Exception:
            print("bad error body for %s %r: %r" % (path, body[:120], data[:200]))
            bad += 1
print("statuses:", dict(sorted(hist.items())))
sys.exit(1 if bad else 0)
