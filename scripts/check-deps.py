#!/usr/bin/env python3
"""check-deps.py - every #include "..." must point down the layer order.

The order (docs/design.md, "Layout") is data-path order, lowest first. A file
belongs to the deepest layer folder that holds it; it may include its own
folder (by bare name) and the folders listed for its layer (root-relative,
e.g. "engine/util/util.h"), nothing else: no "../", no upward or sideways
include. engine/cpu and cuda are peers: neither may include the other.

Usage: scripts/check-deps.py [ROOT]   (exit 0 clean, 1 with one line per
violation: file:line: include -> why)
       scripts/check-deps.py --self-test   (a reversed include, an unknown
violation kind each, in a scratch tree: each must be reported)
"""
import os
import re
import sys

# layer folder -> folders it may include (besides itself)
UTIL = ["engine/util"]
FORMAT = UTIL + ["engine/format"]
TOKEN = FORMAT + ["tokenizer"]
GRAMMAR = TOKEN + ["engine/grammar"]
MODEL = GRAMMAR + ["engine/model"]
BACKEND = MODEL + ["engine/backend"]
ENGINE = BACKEND + ["engine/cpu", "cuda"]
HTTP = ENGINE + ["engine"]
CLI = HTTP + ["server/http"]
LAYERS = {
    "engine/util": [],
    "engine/format": UTIL,
    "tokenizer": FORMAT,
    "engine/grammar": TOKEN,
    "engine/model": GRAMMAR,
    "engine/backend": MODEL,
    "engine/cpu": BACKEND,
    "cuda": BACKEND,
    "engine": ENGINE,
    "server/http": HTTP,
    "server/cli": CLI,
    "test": CLI + ["server/cli"],
}
SOURCES = (".c", ".h", ".cc", ".cu")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def layer_of(path):
    best = None
    for d in LAYERS:
        if path == d or path.startswith(d + "/"):
            if best is None or len(d) > len(best):
                best = d
    return best


def check(root):
    bad = []
    for top in ("engine", "tokenizer", "cuda", "server", "test"):
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for name in sorted(names):
                if not name.endswith(SOURCES):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                here = os.path.dirname(rel)
                layer = layer_of(rel)
                if layer is None:
                    bad.append("%s: folder %s is in no layer (add it to LAYERS)" % (rel, here))
                    continue
                with open(full, encoding="utf-8", errors="replace") as f:
                    for ln, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        inc = m.group(1)
                        where = "%s:%d: \"%s\"" % (rel, ln, inc)
                        if ".." in inc.split("/"):
                            bad.append(where + " -> relative path; include from the root")
                            continue
                        if "/" not in inc:
                            if not os.path.exists(os.path.join(dirpath, inc)):
                                bad.append(where + " -> no such file in " + here)
                            continue
                        if not os.path.exists(os.path.join(root, inc)):
                            bad.append(where + " -> no such file")
                            continue
                        target = layer_of(inc)
                        if os.path.dirname(inc) == here or target == layer:
                            continue
                        if target not in LAYERS[layer]:
                            bad.append("%s -> %s may not include %s (layer order: docs/design.md)"
                                       % (where, layer, target))
    return bad


def self_test():
    import tempfile
    cases = {
        "upward": ("engine/format/x.c", '#include "engine/engine.h"\n'),
        "peer": ("cuda/x.cu", '#include "engine/cpu/cpu_ops.h"\n'),
        "relative": ("engine/x.c", '#include "../engine/util/util.h"\n'),
        "missing": ("tokenizer/x.c", '#include "nope.h"\n'),
    }
    stubs = ["engine/engine.h", "engine/cpu/cpu_ops.h", "engine/util/util.h", "engine/format/ok.c",
             "server/http/h.h", "server/cli/ok.c", "test/ok.c"]
    with tempfile.TemporaryDirectory() as root:
        def put(rel, text):
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as f:
                f.write(text)
        for rel in stubs:
            put(rel, "")
        put("server/cli/ok.c", '#include "server/http/h.h"\n#include "engine/engine.h"\n')
        put("test/ok.c", '#include "server/http/h.h"\n')
        if check(root):
            print("check-deps self-test: a clean tree was reported: %s" % check(root))
            return 1
        for kind, (rel, text) in cases.items():
            put(rel, text)
            got = check(root)
            if len(got) != 1 or rel not in got[0]:
                print("check-deps self-test: %s include not reported exactly once: %s" % (kind, got))
                return 1
            print("check-deps self-test: %s caught: %s" % (kind, got[0]))
            os.remove(os.path.join(root, rel))
    return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    bad = check(root)
    for b in bad:
        print(b)
    if bad:
        print("check-deps: %d include(s) against the layer order" % len(bad))
        return 1
    print("check-deps: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
