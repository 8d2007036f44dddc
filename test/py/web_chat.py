#!/usr/bin/env python3
"""web_chat.py - the built-in web chat page (GET /) in a real browser.

Headless Chromium driven by Selenium against `nanoinfer serve` with the real
model (NI_MODEL, default models/SmolLM2-135M-Instruct.Q4_1.gguf; CPU backend,
the file's own 4-bit weights) on 127.0.0.1, a free port read from the
"listening on" log line, and --api-key, so every API call the page makes
must carry the key. Checks, in order:
  http      the page, app.js, app.css: Content-Type, ETag + 304 on
            If-None-Match, the exact Content-Security-Policy, nosniff, served
            without the key while /v1/models needs it; HEAD; POST -> 405;
            the sources hold no innerHTML/eval/inline script or style and no
            external URL; --no-webui and the config key no-webui = true -> 404
  auth      the page meets the 401 and asks for the key; the key goes to
            sessionStorage and the model name appears
  keyboard  Shift+Enter is a new line, Enter sends, Tab gives a visible focus ring
  chat      two turns (the second carries the first: the prompt grows in the
            access log), a finished reply with tokens/s shown; screenshot
            $BUILD/web/chat.png
  stop      New conversation, a long reply (max tokens 2000) that streams and
            grows; Stop aborts the fetch: /metrics counts a disconnect abort,
            nothing is left in flight and nanoinfer_kv_blocks_used is back to 0
  reload    the conversations, the stopped reply and the key survive a reload
  xss       `<img src=x onerror=alert(1)>` typed by the user and planted as a
            model reply (with a javascript: link, a <script>, raw HTML in a
            code block and a table) is shown as text: no <img>/<script> node,
            no javascript: href, no alert, Markdown still rendered
  phone     at 390x844: no horizontal scroll, the drawer opens and closes
            (Escape), the composer is on screen; $BUILD/web/chat-phone.png
  console   no CSP violation or script error in the browser console
Without Chromium, chromedriver or Selenium it skips saying why, except with
CI=true, where it fails. Prints one line per failure and a summary; exit 1 on
any failure. Run from the repository root: python3 test/py/web_chat.py
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

BUILD = os.environ.get("BUILD", "build")
BIN = os.path.join(BUILD, "nanoinfer")
MODEL = os.environ.get("NI_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf")
TINY = "test/models/tiny-llama3"
OUT_DIR = os.path.join(BUILD, "web")
KEY = "web-test-key-0123"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
XSS = "<img src=x onerror=alert(1)>"


def unavailable(why):
    if os.environ.get("CI") == "true":
        print(f"FAIL: {why} (CI=true: the browser test must run; scripts/install-deps.sh installs it)")
        sys.exit(1)
    print(f"SKIP: {why}; the web chat browser test did not run (scripts/install-deps.sh installs it)")
    sys.exit(0)


try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException, TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:
    unavailable(f"the Python selenium package is missing ({e}; Debian: python3-selenium)")
CHROME = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.access(p, os.X_OK)), None)
if not CHROME:
    unavailable("no chromium browser found (Debian: chromium)")
if not DRIVER:
    unavailable("no chromedriver found (Debian: chromium-driver)")

passed = 0
failed = 0


def check(what, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}" + (f" ({detail})" if detail else ""), flush=True)
    return ok


def note(msg):
    print(f"  {msg}", flush=True)


class Server:
    """A `nanoinfer serve` child on 127.0.0.1 and a free port."""

    def __init__(self, name, *args, healthy=True):
        self.log = tempfile.NamedTemporaryFile(prefix=f"ni_web_{name}_", suffix=".log", delete=False)
        self.proc = subprocess.Popen([BIN, "serve", "--port", "0", *args], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        self.port = None
        while time.time() < deadline and self.port is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {name} exited: {self.read_log()}")
            m = re.search(r"listening on http://[^\s]*:(\d+)", self.read_log())
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.05)
        if self.port is None:
            raise RuntimeError(f"server {name} did not start: {self.read_log()}")
        self.url = f"http://127.0.0.1:{self.port}"
        while healthy and time.time() < deadline:
            if self.get("/health")[0] == 200:
                return
            time.sleep(0.05)
        if healthy:
            raise RuntimeError(f"server {name} never became healthy: {self.read_log()}")

    def read_log(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def request(self, method, path, headers=None, body=None):
        """-> (status, headers dict with lower-case names, body bytes)"""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
        except OSError as e:
            return 0, {}, str(e).encode()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def metric(self, name):
        _, _, body = self.get("/metrics")
        for line in body.decode().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == name:
                return float(parts[1])
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        if failed:
            print(f"  server log kept: {self.log.name}")
        else:
            os.unlink(self.log.name)


# ---------------------------------------------------------------- http


def check_http(srv):
    st, h, body = srv.get("/")
    check("GET / is 200", st == 200, st)
    check("GET / is the page", b"<title>NanoInfer chat</title>" in body)
    check("GET / Content-Type", h.get("content-type") == "text/html; charset=utf-8", h.get("content-type"))
    check("GET / Content-Security-Policy", h.get("content-security-policy") == CSP,
          h.get("content-security-policy"))
    check("GET / X-Content-Type-Options: nosniff", h.get("x-content-type-options") == "nosniff")
    check("GET / Cache-Control: no-cache", h.get("cache-control") == "no-cache", h.get("cache-control"))
    etag = h.get("etag", "")
    check("GET / strong ETag", re.fullmatch(r'"[0-9a-f]{16}"', etag) is not None, etag)
    st2, _, body2 = srv.get("/index.html")
    check("GET /index.html is the same page", st2 == 200 and body2 == body)
    st3, h3, body3 = srv.get("/", headers={"If-None-Match": etag})
    check("If-None-Match: the ETag -> 304 without a body", st3 == 304 and body3 == b"", st3)
    check("304 repeats the ETag", h3.get("etag") == etag)
    st4, _, _ = srv.get("/", headers={"If-None-Match": 'W/"0000000000000000", ' + etag})
    check("If-None-Match list (weak + ours) -> 304", st4 == 304, st4)
    st5, _, _ = srv.get("/", headers={"If-None-Match": '"0000000000000000"'})
    check("If-None-Match: another tag -> 200", st5 == 200, st5)
    st, h, js = srv.get("/app.js")
    check("GET /app.js", st == 200 and h.get("content-type") == "text/javascript; charset=utf-8",
          f"{st} {h.get('content-type')}")
    check("/app.js has the CSP and nosniff",
          h.get("content-security-policy") == CSP and h.get("x-content-type-options") == "nosniff")
    check("/app.js ETag differs from the page's", h.get("etag") not in (None, etag))
    st, h, css = srv.get("/app.css")
    check("GET /app.css", st == 200 and h.get("content-type") == "text/css; charset=utf-8",
          f"{st} {h.get('content-type')}")
    st, h, _ = srv.get("/favicon.svg")
    check("GET /favicon.svg", st == 200 and h.get("content-type") == "image/svg+xml", st)
    st, h, b = srv.request("HEAD", "/")
    check("HEAD / 200, no body", st == 200 and b == b"", st)
    st, h, _ = srv.request("POST", "/", body=b"{}")
    check("POST / -> 405 Allow: GET, HEAD", st == 405 and h.get("allow") == "GET, HEAD", st)
    st, _, _ = srv.get("/app.js/")
    check("GET /app.js/ -> 404", st == 404, st)
    st, _, _ = srv.get("/v1/models")
    check("the API still needs the key (/v1/models 401)", st == 401, st)
    st, _, _ = srv.get("/v1/models", headers={"Authorization": "Bearer " + KEY})
    check("/v1/models with the key 200", st == 200, st)
    # the sources: DOM built from nodes only, nothing inline, nothing external
    src = js.decode()
    for bad in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                "new Function", "setAttribute('style'", 'setAttribute("style"'):
        check(f"app.js never uses {bad}", bad not in src)
    html = body.decode()
    check("index.html: no inline script", re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None)
    check("index.html: no style attribute or element",
          re.search(r"\sstyle\s*=|<style", html, re.I) is None)
    check("index.html: no inline event handler", re.search(r"\son[a-z]+\s*=", html, re.I) is None)
    for name, text in (("index.html", html), ("app.css", css.decode()), ("app.js", src)):
        ext = re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""",
                         text, re.I)
        check(f"{name}: no external resource", not ext, ext)


def check_no_webui():
    srv = Server("nowebui", "--model", TINY, "--no-webui")
    try:
        for path in ("/", "/index.html", "/app.js"):
            st, h, body = srv.get(path)
            try:
                err = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                err = None
            check(f"--no-webui: GET {path} -> 404 JSON", st == 404 and err is not None
                  and h.get("content-type") == "application/json", st)
        check("--no-webui: the API still answers", srv.get("/v1/models")[0] == 200)
        check("--no-webui: config line says webui=off", "webui=off" in srv.read_log())
    finally:
        srv.stop()
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write("no-webui = true\n")
    srv = Server("nowebui_conf", "--config", f.name, "--model", TINY)
    try:
        check("config key no-webui = true: GET / -> 404", srv.get("/")[0] == 404)
    finally:
        srv.stop()
        os.unlink(f.name)
    out = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True).stdout
    check("serve --help lists --no-webui", "--no-webui" in out)


# ---------------------------------------------------------------- browser


def make_driver():
    o = webdriver.ChromeOptions()
    o.binary_location = CHROME
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,900", "--no-first-run", "--disable-extensions",
              "--disable-background-networking", "--force-device-scale-factor=1"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=o)


def wait(d, cond, timeout, what):
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.05).until(lambda _: cond())
    except TimeoutException:
        check(what, False, f"timed out after {timeout}s")
        return None


def js(d, script, *args):
    return d.execute_script(script, *args)


def assistant_text(d):
    return js(d, "const m = document.querySelectorAll('#transcript .msg.assistant .content');"
                 "return m.length ? m[m.length - 1].textContent : null;")


def is_busy(d):
    return js(d, "return !document.getElementById('stop').hidden;")


def open_settings(d):
    if not d.find_element(By.ID, "settings").is_displayed():
        d.find_element(By.ID, "settings-toggle").click()


def close_settings(d):
    if d.find_element(By.ID, "settings").is_displayed():
        d.find_element(By.ID, "settings-toggle").click()


def set_field(d, el_id, value):
    open_settings(d)
    e = d.find_element(By.ID, el_id)
    e.clear()
    e.send_keys(str(value))
    js(d, "arguments[0].dispatchEvent(new Event('change'))", e)


def send(d, text):
    box = d.find_element(By.ID, "input")
    box.click()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def wait_reply_done(d, timeout, what):
    wait(d, lambda: not is_busy(d), timeout, what)
    errs = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#transcript .msg.assistant .err")]
    text = assistant_text(d) or ""
    check(what + ": a reply without error", text and not errs, errs)
    return text


def chat_prompts(srv):
    """prompt token counts of the finished chat requests, from the access log"""
    return [int(m) for m in re.findall(r'"POST /v1/chat/completions" 200 prompt=(\d+)', srv.read_log())]


def run_browser(srv, model_id):
    os.makedirs(OUT_DIR, exist_ok=True)
    d = make_driver()
    try:
        d.get(srv.url + "/")
        # ---- auth: the page meets the 401 and asks for the key
        wait(d, lambda: d.find_element(By.ID, "auth").is_displayed(), 15, "the key prompt appears on 401")
        check("model pill says a key is needed", d.find_element(By.ID, "model").text == "API key needed",
              d.find_element(By.ID, "model").text)
        key = d.find_element(By.ID, "api-key")
        check("the key field has focus", d.switch_to.active_element == key)
        key.send_keys(KEY + Keys.ENTER)
        wait(d, lambda: d.find_element(By.ID, "model").text == model_id, 15, "model name shown after the key")
        check("key kept in sessionStorage", js(d, "return sessionStorage.getItem('nanoinfer.apiKey')") == KEY)
        check("key not in localStorage", KEY not in (js(d, "return JSON.stringify(localStorage)") or ""))
        check("key prompt hidden again", not d.find_element(By.ID, "auth").is_displayed())

        # ---- keyboard: Shift+Enter is a new line, Enter sends
        box = d.find_element(By.ID, "input")
        box.click()
        box.send_keys("line one", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "line two")
        check("Shift+Enter inserts a new line", box.get_attribute("value") == "line one\nline two",
              repr(box.get_attribute("value")))
        check("Shift+Enter does not send", not d.find_elements(By.CSS_SELECTOR, "#transcript .msg"))
        js(d, "arguments[0].value = ''", box)
        box.send_keys(Keys.TAB)
        focus = js(d, "const e = document.activeElement; const s = getComputedStyle(e);"
                      "return [e.id, s.outlineStyle, s.outlineWidth];")
        check("Tab moves focus to Send with a visible ring", focus[0] == "send" and focus[1] == "solid"
              and focus[2] not in ("0px", ""), focus)

        # ---- chat: two turns, finished replies, tokens/s
        open_settings(d)
        check("defaults prefilled (0.7 / 1 / 512)",
              [d.find_element(By.ID, i).get_attribute("value") for i in ("temperature", "top-p", "max-tokens")]
              == ["0.7", "1", "512"])
        set_field(d, "temperature", 0)
        set_field(d, "max-tokens", 64)
        close_settings(d)
        send(d, "What is the capital of France?")
        wait(d, lambda: d.find_elements(By.CSS_SELECTOR, "#transcript .msg.user"), 5, "user message shown")
        check("Enter sent the message", d.find_element(By.ID, "input").get_attribute("value") == "")
        r1 = wait_reply_done(d, 60, "first reply finishes")
        check("first reply names Paris", "Paris" in r1, r1[:200])
        stats = d.find_element(By.ID, "stats").text
        check("tokens/s of the last reply shown", re.fullmatch(r"\d+\.\d tok/s", stats) is not None, stats)
        meta = d.find_elements(By.CSS_SELECTOR, "#transcript .msg.assistant .meta")[-1].text
        check("reply meta: tokens, tok/s, first token", re.search(r"\d+ tokens · [\d.]+ tok/s · first token", meta)
              is not None, meta)
        note(f"reply 1 ({stats}): {r1[:80]!r}")
        set_field(d, "max-tokens", 200)
        close_settings(d)
        send(d, "Write a Python function that returns the sum of a list of numbers.")
        r2 = wait_reply_done(d, 90, "second reply finishes")
        p = chat_prompts(srv)
        check("turn 2 carries turn 1 (prompt tokens grow)", len(p) >= 2 and p[-1] > p[-2] + 10, p)
        n_code = len(d.find_elements(By.CSS_SELECTOR, "#transcript .codeblock pre code"))
        note(f"reply 2 ({d.find_element(By.ID, 'stats').text}, {n_code} code block(s)): {r2[:80]!r}")
        js(d, "document.activeElement.blur()")
        d.save_screenshot(os.path.join(OUT_DIR, "chat.png"))
        check("screenshot saved", os.path.getsize(os.path.join(OUT_DIR, "chat.png")) > 10000)

        # ---- stop: a long reply, aborted mid-stream
        d.find_element(By.ID, "new-chat").click()
        check("New conversation empties the transcript", not d.find_elements(By.CSS_SELECTOR, "#transcript .msg"))
        aborted0 = srv.metric('nanoinfer_requests_aborted_total{reason="disconnect"}') or 0
        open_settings(d)
        set_field(d, "temperature", 0.8)
        set_field(d, "max-tokens", 2000)
        close_settings(d)
        send(d, "Write a very long story about a dragon who learns to program computers.")
        wait(d, lambda: (assistant_text(d) or "") != "", 30, "streamed text appears")
        lengths = [len(assistant_text(d) or "")]
        t_end = time.time() + 20
        while time.time() < t_end and len(lengths) < 4 and is_busy(d):
            time.sleep(0.1)
            n = len(assistant_text(d) or "")
            if n > lengths[-1]:
                lengths.append(n)
        check("streamed text grows while generating", len(lengths) >= 4, lengths)
        check("Stop shown while streaming", d.find_element(By.ID, "stop").is_displayed())
        inflight = srv.metric("nanoinfer_requests_in_flight")
        used = srv.metric("nanoinfer_kv_blocks_used")
        check("the request is in flight with KV blocks held", inflight == 1 and (used or 0) > 0,
              f"in flight {inflight}, blocks {used}")
        if is_busy(d):
            d.find_element(By.ID, "stop").click()
        wait(d, lambda: not is_busy(d), 5, "Stop ends the reply")
        stopped_len = len(assistant_text(d) or "")
        t0 = time.time()
        while time.time() - t0 < 10:
            if srv.metric("nanoinfer_requests_in_flight") == 0 and srv.metric("nanoinfer_kv_blocks_used") == 0:
                break
            time.sleep(0.05)
        freed = time.time() - t0
        check("after Stop no request is in flight", srv.metric("nanoinfer_requests_in_flight") == 0)
        check("after Stop nanoinfer_kv_blocks_used is 0", srv.metric("nanoinfer_kv_blocks_used") == 0)
        aborted = srv.metric('nanoinfer_requests_aborted_total{reason="disconnect"}') or 0
        check("after Stop the server counted a disconnect abort", aborted == aborted0 + 1, f"{aborted0} -> {aborted}")
        check("the reply is marked stopped",
              "stopped" in d.find_elements(By.CSS_SELECTOR, "#transcript .msg.assistant .meta")[-1].text)
        time.sleep(0.5)
        check("no text arrives after Stop", len(assistant_text(d) or "") == stopped_len)
        note(f"stop: streamed lengths {lengths}, {stopped_len} chars kept, KV freed within {freed:.2f}s")

        # ---- reload: conversations, the stopped reply and the key survive
        d.refresh()
        wait(d, lambda: d.find_element(By.ID, "model").text == model_id, 15, "model name after reload (key kept)")
        check("no key prompt after reload", not d.find_element(By.ID, "auth").is_displayed())
        users = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#transcript .msg.user")]
        check("reload restores the current conversation", users and "dragon" in users[0], users)
        check("reload keeps the stopped reply", len(assistant_text(d) or "") == stopped_len)
        titles = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#conv-list .open-conv")]
        check("both conversations listed", len(titles) == 2 and any("France" in t for t in titles), titles)
        for e in d.find_elements(By.CSS_SELECTOR, "#conv-list .open-conv"):
            if "France" in e.text:
                e.click()
                break
        check("the first conversation reopens with its replies",
              len(d.find_elements(By.CSS_SELECTOR, "#transcript .msg.assistant")) == 2
              and "Paris" in d.find_element(By.ID, "transcript").text)

        # ---- xss: typed by the user, and as a model reply
        d.find_element(By.ID, "new-chat").click()
        open_settings(d)
        set_field(d, "temperature", 0)
        set_field(d, "max-tokens", 48)
        close_settings(d)
        send(d, "Repeat exactly: " + XSS)
        reply = wait_reply_done(d, 60, "the echo reply finishes")
        user_el = d.find_elements(By.CSS_SELECTOR, "#transcript .msg.user .content")[-1]
        check("the payload typed by the user is shown as text", user_el.is_displayed() and XSS in user_el.text,
              user_el.text)
        note(f"model reply to the payload: {reply[:100]!r}")
        if XSS in reply:  # the model echoed it: its reply shows it as text too
            bot = d.find_elements(By.CSS_SELECTOR, "#transcript .msg.assistant .content")[-1]
            check("the payload echoed by the model is shown as text", XSS in bot.text, bot.text)
        check("no <img> in the transcript (user payload)", not d.find_elements(By.CSS_SELECTOR, "#transcript img"))
        planted = ("Here it is: " + XSS + "\n\n**bold** and [click](javascript:alert(1)) and "
                   "[ok](https://example.com/a?b=1) <script>window.__xss = 1</script>\n\n"
                   "```html\n<img src=x onerror=alert(2)>\n```\n\n| a | b |\n|---|---|\n| <b>x</b> | `y` |\n")
        js(d, """
            const s = JSON.parse(localStorage.getItem('nanoinfer.chat.v1'));
            s.convs.unshift({id: 'planted', title: 'planted reply', system: '', updated: Date.now() + 1000,
                             messages: [{role: 'user', content: 'hi'}, {role: 'assistant', content: arguments[0]}]});
            s.current = 'planted';
            localStorage.setItem('nanoinfer.chat.v1', JSON.stringify(s));""", planted)
        d.refresh()
        wait(d, lambda: d.find_elements(By.CSS_SELECTOR, "#transcript .msg.assistant"), 10, "planted reply shown")
        tr = d.find_element(By.ID, "transcript")
        check("planted reply: the payload is visible as text", XSS in tr.text, tr.text[:200])
        for sel in ("img", "script", "iframe", "object", "embed", "svg", "b"):
            check(f"planted reply: no <{sel}> element", not tr.find_elements(By.CSS_SELECTOR, sel))
        hrefs = [a.get_attribute("href") for a in tr.find_elements(By.CSS_SELECTOR, "a")]
        check("planted reply: only the https link is a link", hrefs == ["https://example.com/a?b=1"], hrefs)
        check("planted reply: Markdown bold rendered", [e.text for e in tr.find_elements(By.CSS_SELECTOR, "strong")]
              == ["bold"])
        code = [e.text for e in tr.find_elements(By.CSS_SELECTOR, ".codeblock pre code")]
        check("planted reply: code block holds the raw HTML as text", code == ["<img src=x onerror=alert(2)>"], code)
        check("planted reply: table rendered", len(tr.find_elements(By.CSS_SELECTOR, "table td")) == 2)
        check("planted reply: no script ran", js(d, "return window.__xss === undefined"))
        try:
            d.switch_to.alert
            check("no alert() fired", False)
        except NoAlertPresentException:
            check("no alert() fired", True)

        # ---- phone width
        d.set_window_size(390, 844)
        d.refresh()
        wait(d, lambda: d.find_element(By.ID, "model").text == model_id, 15, "page at phone width")
        dims = js(d, "return [document.documentElement.scrollWidth, window.innerWidth]")
        check("phone width: no horizontal scrolling", dims[0] <= dims[1], dims)
        check("phone width: the drawer is closed", js(d, "return document.getElementById('sidebar')"
                                                         ".getBoundingClientRect().right <= 0"))
        menu = d.find_element(By.ID, "menu")
        check("phone width: menu button shown", menu.is_displayed())
        menu.click()
        wait(d, lambda: js(d, "return document.getElementById('sidebar').getBoundingClientRect().left >= 0"), 3,
             "phone width: the drawer opens")
        d.switch_to.active_element.send_keys(Keys.ESCAPE)
        wait(d, lambda: js(d, "return document.getElementById('sidebar').getBoundingClientRect().right <= 0"), 3,
             "phone width: Escape closes the drawer")
        check("phone width: composer on screen", js(d, "const r = document.getElementById('composer')"
                                                       ".getBoundingClientRect(); return r.bottom <= innerHeight"
                                                       " && r.top > 0"))
        for e in d.find_elements(By.CSS_SELECTOR, "#conv-list .open-conv"):
            if "France" in e.get_attribute("textContent"):
                js(d, "arguments[0].click()", e)
                break
        js(d, "document.getElementById('transcript').scrollTop = 1e9; document.activeElement.blur()")
        d.save_screenshot(os.path.join(OUT_DIR, "chat-phone.png"))

        # ---- console: no CSP violation, no script error
        logs = d.get_log("browser")
        bad = [e["message"] for e in logs if re.search(r"Content.Security.Policy|Refused to|Uncaught|TypeError",
                                                       e["message"], re.I)]
        check("browser console: no CSP violation or script error", not bad, bad[:3])
    finally:
        d.quit()


def main():
    if not os.access(BIN, os.X_OK):
        print(f"FAIL: {BIN} is not built")
        return 1
    if not os.path.isfile(MODEL):
        unavailable(f"{MODEL} is missing (make model)")
    t0 = time.time()
    check_no_webui()
    # fp32: the reference weights, which answer the France question with Paris
    # (the file's own 4-bit kernels start it "L'Étoile", as llama.cpp does)
    srv = Server("real", "--model", MODEL, "--device", "cpu", "--quant", "fp32", "--api-key", KEY)
    try:
        st, _, body = srv.get("/v1/models", headers={"Authorization": "Bearer " + KEY})
        model_id = json.loads(body)["data"][0]["id"]
        check_http(srv)
        run_browser(srv, model_id)
        check("KV blocks idle at the end", srv.metric("nanoinfer_kv_blocks_used") == 0)
    except Exception as e:  # a WebDriver error, a missing element: a failure, with its trace
        traceback.print_exc()
        check("the browser session ran to the end", False, f"{type(e).__name__}: {str(e).splitlines()[0]}")
    finally:
        srv.stop()
    print(f"web_chat: {passed} passed, {failed} failed ({time.time() - t0:.1f}s; screenshots in {OUT_DIR}/)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
