# py-env.sh - sourced by the e2e_*.sh scripts that run Python tests needing
# packages outside the standard library. `py_env MODULE...` sets PY to a
# python3 that imports every MODULE (the pip name is the module name),
# installing what is missing: pip, then pip --break-system-packages (Debian's
# externally-managed Python), then a venv under $BUILD/pyenv (which sees the
# system's packages). When none of these can provide them (no package index
# reachable) it ends the calling script: with a SKIP message and status 0, or,
# under CI=true, with a FAIL message and status 1 (CI must not skip silently).
py_env_missing() { # PYTHON MODULE... -> prints the modules PYTHON cannot import
  local py=$1 m; shift
  for m in "$@"; do "$py" -c "import $m" >/dev/null 2>&1 || printf '%s ' "$m"; done
}

py_env() {
  local venv=${BUILD:-build}/pyenv missing
  PY=python3
  missing=$(py_env_missing "$PY" "$@")
  if [ -n "$missing" ] && [ -x "$venv/bin/python" ] && [ -z "$(py_env_missing "$venv/bin/python" "$@")" ]; then
    PY=$venv/bin/python
    return 0
  fi
  if [ -n "$missing" ]; then
    echo "installing Python packages: $missing"
    # shellcheck disable=SC2086
    $PY -m pip install -q $missing >/dev/null 2>&1 ||
      $PY -m pip install -q --break-system-packages $missing >/dev/null 2>&1
    missing=$(py_env_missing "$PY" "$@")
  fi
  if [ -n "$missing" ]; then
    if [ -x "$venv/bin/python" ] || $PY -m venv --system-site-packages "$venv" >/dev/null 2>&1; then
      # shellcheck disable=SC2086
      "$venv/bin/python" -m pip install -q $(py_env_missing "$venv/bin/python" "$@") >/dev/null 2>&1
      if [ -z "$(py_env_missing "$venv/bin/python" "$@")" ]; then
        PY=$venv/bin/python
        return 0
      fi
    fi
    if [ "${CI:-}" = true ]; then
      echo "FAIL: Python packages missing and not installable (CI=true, so this is not a skip): $missing"
      exit 1
    fi
    echo "SKIP: Python packages missing and not installable (offline?): $missing"
    exit 0
  fi
  return 0
}
