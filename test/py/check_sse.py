#!/usr/bin/env python3
"""check_sse.py FILE [--usage] [--n N] [--chat] - validates a raw SSE body from the server.

Every event must be exactly `data: <payload>` followed by a blank line ("\\n\\n"),
each payload but the last must be a JSON object, the last must be [DONE], and
nothing may follow it. With --usage the event before [DONE] must carry usage
with empty choices. Every choice index 0..N-1 must end with exactly one
finish_reason. With --chat, each choice's first delta (and no later one) must carry
role "assistant". Prints the concatenated text per choice; exits 1 on a violation.
"""
import json
import sys


def fail(msg):
    print("SSE violation:", msg)
    sys.exit(1)


def main():
    path = sys.argv[1]
    want_usage = "--usage" in sys.argv
    chat = "--chat" in sys.argv
    n = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 1
    raw = open(path, "rb").read().decode("utf-8")
    if not raw.endswith("\n\n"):
        fail("body does not end with a blank line")
    events = raw[:-2].split("\n\n")
    if events[-1] != "data: [DONE]":
        fail("last event is not [DONE]: %r" % events[-1][:80])
    objs = []
    for ev in events[:-1]:
        if not ev.startswith("data: ") or "\n" in ev:
            fail("bad event framing: %r" % ev[:80])
        try:
            o = json.loads(ev[6:])
        except ValueError as e:
            fail("payload is not JSON (%s): %r" % (e, ev[:80]))
        if not isinstance(o, dict):
            fail("payload is not an object")
        objs.append(o)
    if not objs:
        fail("no data events")
    ids = {o.get("id") for o in objs}
    if len(ids) != 1:
        fail("chunks carry different ids: %s" % ids)
    obj_name = "chat.completion.chunk" if chat else "text_completion"
    text = {i: "" for i in range(n)}
    finishes = {i: [] for i in range(n)}
    seen = set()
    for o in objs:
        if o.get("object") != obj_name:
            fail("object is %r, want %r" % (o.get("object"), obj_name))
        for c in o["choices"]:
            i = c["index"]
            if i not in text:
                fail("unexpected choice index %d" % i)
            if chat and (c["delta"].get("role") == "assistant") != (i not in seen):
                fail("choice %d: role must come in its first delta only" % i)
            seen.add(i)
            text[i] += (c["delta"].get("content") or "") if chat else c["text"]
            if c["finish_reason"] is not None:
                finishes[i].append(c["finish_reason"])
    for i in range(n):
        if len(finishes[i]) != 1:
            fail("choice %d has finish reasons %s" % (i, finishes[i]))
    if want_usage:
        last = objs[-1]
        if last["choices"] != [] or not isinstance(last.get("usage"), dict):
            fail("no usage chunk before [DONE]")
        u = last["usage"]
        if u["total_tokens"] != u["prompt_tokens"] + u["completion_tokens"]:
            fail("usage does not add up: %s" % u)
    print(json.dumps({"text": text, "finish": {i: f[0] for i, f in finishes.items()},
                      "usage": objs[-1].get("usage")}))


main()
