#!/usr/bin/env bash
# e2e_web.sh - the built-in web chat page (GET /) in headless Chromium, driven
# by Selenium: test/py/web_chat.py (it starts and kills its own servers on
# loopback; its docstring lists what it checks). Screenshots of the page go to
# $BUILD/web/.
# Needs chromium, chromium-driver and python3-selenium (scripts/install-deps.sh).
# The Python that has selenium is used: python3, else Debian's /usr/bin/python3
# (python3 may be another interpreter, e.g. pyenv's, that cannot see the Debian
# package). Without them the test skips saying why; with CI=true it fails.
set -u
cd "$(dirname "$0")/.." || exit 1
export BUILD=${BUILD:-build}
PY=python3
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import selenium' 2>/dev/null; then PY=$p; break; fi
done
exec "$PY" test/py/web_chat.py
