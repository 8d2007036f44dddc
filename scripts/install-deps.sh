#!/usr/bin/env bash
# Installs the Debian packages NanoInfer builds against, only those missing.
# Idempotent; uses sudo when not root. Used by `make deps` and .ci/run.
set -euo pipefail
pkgs=(build-essential pkg-config libmicrohttpd-dev libuv1-dev libjansson-dev libpcre2-dev
      libsentencepiece-dev libcmocka-dev libopenblas-dev curl unzip python3 python3-pip
      python3-venv wrk jq chromium chromium-driver python3-selenium nginx
      clang libclang-rt-dev valgrind)
# clang + libclang-rt-dev: `make fuzz` (libFuzzer, libclang_rt.fuzzer*.a is in
# Debian 12's libclang-rt-14-dev, which libclang-rt-dev pulls in); valgrind:
# `make valgrind` (scripts/valgrind.sh).
# chromium + chromium-driver + python3-selenium: the browser test of the web
# chat page (test/e2e_web.sh); Debian 12 packages Selenium 4.8 as python3-selenium.
# nginx: test/e2e_replicas.sh runs its own nginx from a temporary directory; the
# system service the package starts is stopped and disabled below.
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
# Installing nginx starts (and enables) its service on port 80; nothing here
# needs it, so a freshly installed one is stopped and disabled again.
if [[ " ${missing[*]} " == *" nginx "* ]]; then
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now nginx.service >/dev/null 2>&1 || true
  else
    $SUDO service nginx stop >/dev/null 2>&1 || true
    $SUDO update-rc.d nginx disable >/dev/null 2>&1 || true
  fi
fi
