// NanoInfer web chat: one page, no dependencies, served by `nanoinfer serve` at /.
//
// Talks to the server's own OpenAI-compatible API (URLs relative to the page, so
// a reverse proxy may serve it under a path prefix): GET /v1/models for the model
// name and context length, POST /v1/chat/completions with stream: true, read as
// a ReadableStream of SSE `data:` lines. Stop aborts the fetch (AbortController);
// the server sees the closed connection, aborts the request and frees its KV
// blocks. With --api-key every API call carries `Authorization: Bearer KEY`; the
// key is asked for on a 401 and kept in sessionStorage (this tab only).
// Conversations and sampling settings live in localStorage.
//
// Model output is untrusted: it is rendered by a small Markdown renderer that
// builds DOM nodes with createElement/textContent only (no HTML parsing), links
// only to http(s)/mailto, never creates images, and is served under a CSP that
// allows no inline script or style.
(function () {
  'use strict';

  const LS_KEY = 'nanoinfer.chat.v1';
  const SS_KEY = 'nanoinfer.apiKey';
  // The server does not publish sampling defaults; these are the page's own.
  const DEFAULTS = Object.freeze({ temperature: 0.7, top_p: 1, max_tokens: 512 });
  const MAX_CONVS = 100;
  const MAX_TEXT = 1 << 20; // characters kept per stored message
  const MAX_DEPTH = 12; // nesting of Markdown blocks (quotes, lists)

  const $ = (id) => document.getElementById(id);
  const ui = {
    sidebar: $('sidebar'), scrim: $('scrim'), menu: $('menu'), newChat: $('new-chat'),
    list: $('conv-list'), model: $('model'), stats: $('stats'),
    settingsToggle: $('settings-toggle'), settings: $('settings'), system: $('system'),
    temperature: $('temperature'), topP: $('top-p'), maxTokens: $('max-tokens'),
    resetSettings: $('reset-settings'), auth: $('auth'), authMsg: $('auth-msg'),
    apiKey: $('api-key'), apiKeySave: $('api-key-save'), transcript: $('transcript'),
    input: $('input'), send: $('send'), stop: $('stop'),
  };

  let state = loadState();
  let model = { id: null, maxLen: null };
  let busy = null; // the reply being streamed: { conv, msg, controller, contentEl, metaEl }
  let renderTimer = 0;

  // ---------------- storage ----------------

  function str(x, max) { return typeof x === 'string' ? x.slice(0, max) : ''; }
  function num(x, lo, hi, def) {
    const v = typeof x === 'number' ? x : parseFloat(x);
    return Number.isFinite(v) && v >= lo && v <= hi ? v : def;
  }
  function cleanSettings(s) {
    s = s && typeof s === 'object' ? s : {};
    return {
      temperature: num(s.temperature, 0, 2, DEFAULTS.temperature),
      top_p: num(s.top_p, 0, 1, DEFAULTS.top_p),
      max_tokens: Math.round(num(s.max_tokens, 1, 1 << 24, DEFAULTS.max_tokens)),
    };
  }
  function cleanMsg(m) {
    if (!m || (m.role !== 'user' && m.role !== 'assistant')) return null;
    const out = { role: m.role, content: str(m.content, MAX_TEXT) };
    if (m.error) out.error = str(m.error, 2000);
    if (m.stopped || m.pending) out.stopped = true; // a reply cut by a reload counts as stopped
    if (m.stats && typeof m.stats === 'object') {
      out.stats = {
        tokens: num(m.stats.tokens, 0, 1e9, 0), tps: num(m.stats.tps, 0, 1e9, 0),
        ttft: num(m.stats.ttft, 0, 1e9, 0), finish: str(m.stats.finish, 32),
      };
    }
    return out;
  }
  function cleanConv(c) {
    if (!c || typeof c !== 'object' || typeof c.id !== 'string' || !Array.isArray(c.messages)) return null;
    return {
      id: c.id.slice(0, 64), title: str(c.title, 200) || 'New conversation',
      system: str(c.system, MAX_TEXT), updated: num(c.updated, 0, 1e15, 0),
      messages: c.messages.map(cleanMsg).filter(Boolean),
    };
  }
  function loadState() {
    let s = null;
    try { s = JSON.parse(localStorage.getItem(LS_KEY) || 'null'); } catch (e) { s = null; }
    const st = { current: null, convs: [], settings: cleanSettings(null) };
    if (s && typeof s === 'object') {
      if (Array.isArray(s.convs)) st.convs = s.convs.slice(0, MAX_CONVS).map(cleanConv).filter(Boolean);
      if (typeof s.current === 'string') st.current = s.current;
      st.settings = cleanSettings(s.settings);
    }
    return st;
  }
  function saveState() {
    // empty conversations other than the current one are not worth keeping
    state.convs = state.convs.filter((c) => c.messages.length || c.id === state.current);
    state.convs.sort((a, b) => b.updated - a.updated);
    if (state.convs.length > MAX_CONVS) state.convs.length = MAX_CONVS;
    try {
      localStorage.setItem(LS_KEY, JSON.stringify(state));
    } catch (e) {
      ui.stats.textContent = 'not saved: ' + e.message;
    }
  }

  // ---------------- conversations ----------------

  function newId() {
    const a = new Uint32Array(2);
    crypto.getRandomValues(a);
    return Date.now().toString(36) + '-' + a[0].toString(36) + a[1].toString(36);
  }
  function currentConv() { return state.convs.find((c) => c.id === state.current) || null; }
  function newConv() {
    const prev = currentConv();
    const c = { id: newId(), title: 'New conversation', system: prev ? prev.system : '', updated: Date.now(), messages: [] };
    state.convs.unshift(c);
    state.current = c.id;
    return c;
  }
  function ensureConv() { return currentConv() || newConv(); }

  function selectConv(id) {
    state.current = id;
    saveState();
    closeSidebar();
    renderAll();
    ui.input.focus();
  }
  function deleteConv(id) {
    if (busy && busy.conv.id === id) busy.controller.abort();
    state.convs = state.convs.filter((c) => c.id !== id);
    if (state.current === id) state.current = state.convs.length ? state.convs[0].id : null;
    saveState();
    renderAll();
  }

  // ---------------- API ----------------

  function authHeaders() {
    let k = null;
    try { k = sessionStorage.getItem(SS_KEY); } catch (e) { k = null; }
    return k ? { Authorization: 'Bearer ' + k } : {};
  }
  async function errorText(r) {
    try {
      const j = await r.json();
      if (j && j.error && typeof j.error.message === 'string') return j.error.message;
    } catch (e) { /* not JSON */ }
    return 'HTTP ' + r.status;
  }
  function showAuth(msg) {
    ui.authMsg.textContent = msg;
    ui.auth.hidden = false;
    ui.apiKey.focus();
  }
  function saveKey() {
    const k = ui.apiKey.value.trim();
    if (!k) { ui.apiKey.focus(); return; }
    try { sessionStorage.setItem(SS_KEY, k); } catch (e) { /* private mode: this page load only */ }
    ui.apiKey.value = '';
    ui.auth.hidden = true;
    loadModel();
    ui.input.focus();
  }

  let modelRetry = 0;
  async function loadModel() {
    clearTimeout(modelRetry);
    let r;
    try {
      r = await fetch('v1/models', { headers: authHeaders(), cache: 'no-store' });
    } catch (e) {
      ui.model.textContent = 'server unreachable';
      modelRetry = setTimeout(loadModel, 3000);
      return;
    }
    if (r.status === 401) {
      try { sessionStorage.removeItem(SS_KEY); } catch (e) { /* ignore */ }
      ui.model.textContent = 'API key needed';
      showAuth(Object.keys(authHeaders()).length ? 'The API key was not accepted; enter it again.'
        : 'This server requires an API key (sent as Authorization: Bearer).');
      return;
    }
    if (!r.ok) {
      ui.model.textContent = await errorText(r);
      modelRetry = setTimeout(loadModel, 3000);
      return;
    }
    let card = null;
    try { card = (await r.json()).data[0]; } catch (e) { card = null; }
    if (!card || typeof card.id !== 'string') { ui.model.textContent = 'no model'; return; }
    model = { id: card.id, maxLen: Number.isInteger(card.max_model_len) ? card.max_model_len : null };
    ui.model.textContent = model.id;
    ui.model.title = 'served model' + (model.maxLen ? ', context ' + model.maxLen + ' tokens' : '');
    if (model.maxLen) ui.maxTokens.max = String(model.maxLen);
    else modelRetry = setTimeout(loadModel, 1000); // still loading: the context length comes later
  }

  function requestMessages(conv, upto) {
    const out = [];
    if (conv.system.trim()) out.push({ role: 'system', content: conv.system });
    for (const m of conv.messages.slice(0, upto)) {
      if (m.role === 'assistant' && !m.content) continue; // failed replies
      out.push({ role: m.role, content: m.content });
    }
    return out;
  }

  async function send() {
    const text = ui.input.value;
    if (busy || !text.trim()) return;
    readSettings(true);
    const conv = ensureConv();
    if (!conv.messages.length) conv.title = text.trim().replace(/\s+/g, ' ').slice(0, 60);
    const user = { role: 'user', content: text };
    const msg = { role: 'assistant', content: '', pending: true };
    conv.messages.push(user, msg);
    conv.updated = Date.now();
    ui.input.value = '';
    autosize();
    const controller = new AbortController();
    busy = { conv, msg, controller, contentEl: null, metaEl: null };
    setBusy(true);
    saveState();
    renderAll();
    scrollToEnd();

    const s = state.settings;
    const body = {
      messages: requestMessages(conv, conv.messages.length - 1),
      stream: true,
      stream_options: { include_usage: true },
      temperature: s.temperature,
      top_p: s.top_p,
      max_tokens: s.max_tokens,
    };
    if (model.id) body.model = model.id;
    const t0 = performance.now();
    let tFirst = 0, tLast = 0, chunks = 0, usage = null, finish = null, needKey = false;
    try {
      const r = await fetch('v1/chat/completions', {
        method: 'POST',
        headers: Object.assign({ 'Content-Type': 'application/json' }, authHeaders()),
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (r.status === 401) {
        needKey = true;
      } else if (!r.ok) {
        msg.error = await errorText(r);
      } else {
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        let done = false;
        while (!done) {
          const chunk = await reader.read();
          if (chunk.done) break;
          buf += dec.decode(chunk.value, { stream: true });
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            let line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (line.endsWith('\r')) line = line.slice(0, -1);
            if (!line.startsWith('data:')) continue;
            const data = line.slice(5).trim();
            if (data === '[DONE]') { done = true; break; }
            let ev;
            try { ev = JSON.parse(data); } catch (e) { continue; }
            if (ev.error) { msg.error = String(ev.error.message || 'error'); continue; }
            const ch = Array.isArray(ev.choices) ? ev.choices[0] : null;
            const delta = ch && ch.delta ? ch.delta.content : null;
            if (typeof delta === 'string' && delta) {
              const now = performance.now();
              if (!chunks) tFirst = now;
              tLast = now;
              chunks++;
              msg.content += delta;
              scheduleRender();
            }
            if (ch && ch.finish_reason) finish = ch.finish_reason;
            if (ev.usage) usage = ev.usage;
          }
        }
        if (!done && !msg.error) msg.error = 'the stream ended early';
      }
    } catch (e) {
      if (e.name === 'AbortError') msg.stopped = true;
      else msg.error = 'request failed: ' + e.message;
    }
    delete msg.pending;
    if (needKey) {
      // nothing was generated: take the turn back and ask for the key
      conv.messages.splice(conv.messages.indexOf(user), 2);
      if (!conv.messages.length) conv.title = 'New conversation';
      ui.input.value = text;
      autosize();
      try { sessionStorage.removeItem(SS_KEY); } catch (e) { /* ignore */ }
      showAuth('This server requires an API key; enter it, then send again.');
    } else if (chunks) {
      const tokens = usage && Number.isInteger(usage.completion_tokens) ? usage.completion_tokens : chunks;
      const span = (tLast - tFirst) / 1000;
      msg.stats = {
        tokens,
        tps: tokens > 1 && span > 0 ? (tokens - 1) / span : 0,
        ttft: (tFirst - t0) / 1000,
        finish: msg.stopped ? 'stopped' : finish || '',
      };
    }
    conv.updated = Date.now();
    busy = null;
    setBusy(false);
    saveState();
    renderAll();
    if (!needKey) ui.input.focus();
  }

  function stop() { if (busy) busy.controller.abort(); }

  function setBusy(on) {
    ui.send.hidden = on;
    ui.stop.hidden = !on;
    ui.transcript.setAttribute('aria-busy', String(on));
  }

  // ---------------- settings ----------------

  // Reads the sampling fields (an empty or invalid one means its default); show
  // writes the normalised values back (on send, not while the user types).
  function readSettings(show) {
    state.settings = cleanSettings({
      temperature: ui.temperature.value, top_p: ui.topP.value, max_tokens: ui.maxTokens.value,
    });
    if (model.maxLen && state.settings.max_tokens > model.maxLen) state.settings.max_tokens = model.maxLen;
    if (show) showSettings();
  }
  function showSettings() {
    ui.temperature.value = String(state.settings.temperature);
    ui.topP.value = String(state.settings.top_p);
    ui.maxTokens.value = String(state.settings.max_tokens);
    const c = currentConv();
    ui.system.value = c ? c.system : ui.system.value;
  }

  // ---------------- rendering ----------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function renderAll() {
    renderList();
    renderTranscript();
    showSettings();
    const last = lastStats();
    ui.stats.textContent = last ? fmtRate(last) : '';
  }

  function lastStats() {
    const c = currentConv();
    if (!c) return null;
    for (let i = c.messages.length - 1; i >= 0; i--) if (c.messages[i].stats) return c.messages[i].stats;
    return null;
  }
  function fmtRate(st) { return st.tps ? st.tps.toFixed(1) + ' tok/s' : st.tokens + ' tokens'; }
  function fmtStats(st) {
    const parts = [st.tokens + (st.tokens === 1 ? ' token' : ' tokens')];
    if (st.tps) parts.push(st.tps.toFixed(1) + ' tok/s');
    parts.push('first token ' + st.ttft.toFixed(2) + ' s');
    if (st.finish === 'length') parts.push('max tokens reached');
    else if (st.finish === 'stopped') parts.push('stopped');
    return parts.join(' \u00b7 ');
  }

  function renderList() {
    const frag = document.createDocumentFragment();
    for (const c of state.convs) {
      if (!c.messages.length && c.id !== state.current) continue;
      const li = el('li');
      const open = el('button', 'open-conv', c.title);
      open.type = 'button';
      open.title = c.title;
      if (c.id === state.current) open.setAttribute('aria-current', 'true');
      open.addEventListener('click', () => selectConv(c.id));
      const del = el('button', 'del-conv', '\u00d7');
      del.type = 'button';
      del.title = 'Delete this conversation';
      del.setAttribute('aria-label', 'Delete conversation: ' + c.title);
      del.addEventListener('click', () => deleteConv(c.id));
      li.append(open, del);
      frag.appendChild(li);
    }
    ui.list.replaceChildren(frag);
  }

  function renderTranscript() {
    const c = currentConv();
    const frag = document.createDocumentFragment();
    if (!c || (!c.messages.length && !c.system)) {
      const p = el('p', 'empty', 'Ask anything. Replies stream from ' + (model.id || 'the served model') +
        '; Settings holds the system prompt and sampling controls.');
      frag.appendChild(p);
    }
    if (c) for (const m of c.messages) frag.appendChild(renderMsg(m));
    ui.transcript.replaceChildren(frag);
  }

  function renderMsg(m) {
    const box = el('div', 'msg ' + m.role + (m.pending ? ' pending' : ''));
    box.appendChild(el('div', 'role', m.role === 'user' ? 'You' : 'Assistant'));
    const content = el('div', 'content');
    if (m.role === 'user') content.textContent = m.content; // shown as typed
    else renderMarkdown(m.content, content);
    box.appendChild(content);
    const meta = el('div', 'meta');
    if (m.stats) meta.textContent = fmtStats(m.stats);
    else if (m.stopped) meta.textContent = 'stopped';
    box.appendChild(meta);
    if (m.error) box.appendChild(el('div', 'err', m.error));
    if (busy && busy.msg === m) { busy.contentEl = content; busy.metaEl = meta; }
    return box;
  }

  function scheduleRender() {
    if (renderTimer) return;
    renderTimer = setTimeout(() => {
      renderTimer = 0;
      if (!busy || !busy.contentEl || !busy.contentEl.isConnected) return;
      const stick = nearEnd();
      const frag = document.createDocumentFragment();
      renderMarkdown(busy.msg.content, frag);
      busy.contentEl.replaceChildren(frag);
      if (stick) scrollToEnd();
    }, 33);
  }

  function nearEnd() {
    const t = ui.transcript;
    return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
  }
  function scrollToEnd() { ui.transcript.scrollTop = ui.transcript.scrollHeight; }

  // ---------------- Markdown (safe: DOM nodes only) ----------------

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
  const HR = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const QUOTE = /^ {0,3}> ?/;
  const LIST = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

  function renderMarkdown(src, parent) {
    renderBlocks(String(src).replace(/\r\n?/g, '\n').split('\n'), parent, 0);
  }

  function startsBlock(line, next) {
    return FENCE.test(line) || HEADING.test(line) || HR.test(line) || QUOTE.test(line) ||
      (LIST.test(line) && LIST.exec(line)[1].length <= 3) ||
      (line.includes('|') && next !== undefined && TABLE_SEP.test(next) && next.includes('-'));
  }

  function renderBlocks(lines, parent, depth) {
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) { i++; continue; }
      let m;
      if (depth >= MAX_DEPTH) { // too deep: the rest as plain text
        parent.appendChild(el('p', '', lines.slice(i).join('\n')));
        return;
      }
      if ((m = FENCE.exec(line))) {
        const close = new RegExp('^ {0,3}' + (m[1][0] === '`' ? '`' : '~') + '{' + m[1].length + ',}\\s*$');
        const body = [];
        i++;
        while (i < lines.length && !close.test(lines[i])) body.push(lines[i++]);
        i++; // the closing fence (absent while a reply is still streaming)
        parent.appendChild(codeBlock(body.join('\n'), m[2]));
        continue;
      }
      if ((m = HEADING.exec(line))) {
        const h = el('h' + m[1].length);
        inline(m[2], h);
        parent.appendChild(h);
        i++;
        continue;
      }
      if (HR.test(line)) { parent.appendChild(el('hr')); i++; continue; }
      if (QUOTE.test(line)) {
        const inner = [];
        while (i < lines.length && lines[i].trim() && (QUOTE.test(lines[i]) || !startsBlock(lines[i], lines[i + 1]))) {
          inner.push(lines[i].replace(QUOTE, ''));
          i++;
        }
        const bq = el('blockquote');
        renderBlocks(inner, bq, depth + 1);
        parent.appendChild(bq);
        continue;
      }
      if ((m = LIST.exec(line)) && m[1].length <= 3) { i = renderList_(lines, i, parent, depth); continue; }
      if (line.includes('|') && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes('-')) {
        i = renderTable(lines, i, parent);
        continue;
      }
      const para = [line];
      i++;
      while (i < lines.length && lines[i].trim() && !startsBlock(lines[i], lines[i + 1])) para.push(lines[i++]);
      const p = el('p');
      inline(para.join('\n'), p);
      parent.appendChild(p);
    }
  }

  function renderList_(lines, i, parent, depth) {
    const first = LIST.exec(lines[i]);
    const base = first[1].length;
    const ordered = /\d/.test(first[2][0]);
    const list = el(ordered ? 'ol' : 'ul');
    if (ordered) {
      const start = parseInt(first[2], 10);
      if (start !== 1 && Number.isFinite(start)) list.start = start;
    }
    let item = null;
    const flush = () => {
      if (!item) return;
      const li = el('li');
      if (item.length === 1) inline(item[0], li);
      else renderBlocks(item, li, depth + 1);
      list.appendChild(li);
      item = null;
    };
    while (i < lines.length) {
      const line = lines[i];
      const m = LIST.exec(line);
      if (m && m[1].length <= base + 1 && /\d/.test(m[2][0]) === ordered) {
        flush();
        item = [m[3]];
        i++;
        continue;
      }
      if (!line.trim()) {
        // a blank line continues the list only when more of it follows
        const next = lines[i + 1];
        if (next === undefined) break;
        const nm = LIST.exec(next);
        const indent = next.length - next.trimStart().length;
        if ((nm && nm[1].length <= base + 1 && /\d/.test(nm[2][0]) === ordered) || (next.trim() && indent > base)) {
          if (item) item.push('');
          i++;
          continue;
        }
        break;
      }
      const indent = line.length - line.trimStart().length;
      if (indent > base) { // belongs to the item (nested list, continuation)
        item.push(line.slice(Math.min(indent, base + 2)));
        i++;
        continue;
      }
      if (!startsBlock(line, lines[i + 1])) { item[item.length - 1] += '\n' + line; i++; continue; }
      break;
    }
    flush();
    parent.appendChild(list);
    return i;
  }

  function splitRow(line) {
    let s = line.trim();
    if (s.startsWith('|')) s = s.slice(1);
    if (s.endsWith('|') && !s.endsWith('\\|')) s = s.slice(0, -1);
    return s.split(/(?<!\\)\|/).map((c) => c.trim());
  }

  function renderTable(lines, i, parent) {
    const head = splitRow(lines[i]);
    const align = splitRow(lines[i + 1]).map((c) =>
      c.startsWith(':') && c.endsWith(':') ? 'center' : c.endsWith(':') ? 'right' : '');
    const wrap = el('div', 'table-wrap');
    const table = el('table');
    const thead = el('thead');
    const tr = el('tr');
    head.forEach((c, k) => { const th = el('th', align[k] ? 'al-' + align[k] : ''); inline(c, th); tr.appendChild(th); });
    thead.appendChild(tr);
    table.appendChild(thead);
    const tbody = el('tbody');
    i += 2;
    while (i < lines.length && lines[i].trim() && lines[i].includes('|')) {
      const row = el('tr');
      const cells = splitRow(lines[i]);
      for (let k = 0; k < head.length; k++) {
        const td = el('td', align[k] ? 'al-' + align[k] : '');
        inline(cells[k] || '', td);
        row.appendChild(td);
      }
      tbody.appendChild(row);
      i++;
    }
    table.appendChild(tbody);
    wrap.appendChild(table);
    parent.appendChild(wrap);
    return i;
  }

  function codeBlock(text, lang) {
    const box = el('div', 'codeblock');
    const head = el('div', 'code-head');
    head.appendChild(el('span', 'lang', lang || 'code'));
    const copy = el('button', '', 'Copy');
    copy.type = 'button';
    copy.setAttribute('aria-label', 'Copy code');
    copy.addEventListener('click', () => copyText(text, copy));
    head.appendChild(copy);
    const pre = el('pre');
    const code = el('code', '', text);
    pre.appendChild(code);
    box.append(head, pre);
    return box;
  }

  function copyText(text, btn) {
    const done = (ok) => {
      btn.textContent = ok ? 'Copied' : 'Copy failed';
      setTimeout(() => { btn.textContent = 'Copy'; }, 1200);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(() => done(true), () => done(false));
      return;
    }
    const ta = el('textarea', 'offscreen');
    ta.value = text;
    document.body.appendChild(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
    ta.remove();
    done(ok);
  }

  // inline spans, in priority order; each alternative's groups are read below
  const INLINE = new RegExp([
    '\\\\([\\\\`*_{}\\[\\]()#+\\-.!~|<>])', // 1 escaped character
    '(`+)([\\s\\S]*?[^`])\\2(?!`)', // 2, 3 code span
    '\\*\\*([^\\s*](?:[\\s\\S]*?[^\\s])?)\\*\\*', // 4 strong
    '(?<![A-Za-z0-9_])__([^\\s_](?:[\\s\\S]*?[^\\s])?)__(?![A-Za-z0-9_])', // 5 strong
    '\\*([^\\s*](?:[^*\\n]*[^\\s*])?)\\*', // 6 emphasis
    '(?<![A-Za-z0-9_])_([^\\s_](?:[^_\\n]*[^\\s_])?)_(?![A-Za-z0-9_])', // 7 emphasis
    '~~([^\\s~](?:[\\s\\S]*?[^\\s~])?)~~', // 8 strikethrough
    '\\[([^\\[\\]\\n]+)\\]\\(\\s*<?([^\\s<>()]+)>?(?:\\s+"[^"\\n]*")?\\s*\\)', // 9, 10 link
    '<((?:https?|mailto):[^\\s<>]+)>', // 11 autolink
    '((?:https?:\\/\\/)[^\\s<>()\\[\\]]*[^\\s<>()\\[\\].,;:!?\'"*_~])', // 12 bare URL
  ].join('|'), 'g');

  function safeHref(u) {
    if (!/^(https?:\/\/|mailto:)/i.test(u)) return null; // no javascript:, data:, relative
    try {
      const url = new URL(u);
      return url.protocol === 'http:' || url.protocol === 'https:' || url.protocol === 'mailto:' ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function link(href, label, parent, depth) {
    const safe = safeHref(href);
    if (!safe) { text(label === href ? href : label, parent); return; }
    const a = el('a');
    a.href = safe;
    a.rel = 'noopener noreferrer nofollow';
    a.target = '_blank';
    if (label === href) a.textContent = label;
    else inline(label, a, depth + 1);
    parent.appendChild(a);
  }

  function text(s, parent) {
    const parts = s.split('\n');
    parts.forEach((p, k) => {
      if (k) parent.appendChild(el('br'));
      if (p) parent.appendChild(document.createTextNode(p));
    });
  }

  function inline(src, parent, depth) {
    depth = depth || 0;
    if (depth > MAX_DEPTH) { text(src, parent); return; }
    const re = new RegExp(INLINE.source, 'g');
    let last = 0;
    let m;
    while ((m = re.exec(src))) {
      if (m.index > last) text(src.slice(last, m.index), parent);
      last = re.lastIndex;
      if (m[1] !== undefined) text(m[1], parent);
      else if (m[2] !== undefined) parent.appendChild(el('code', '', m[3].replace(/\n/g, ' ')));
      else if (m[4] !== undefined || m[5] !== undefined) {
        const b = el('strong');
        inline(m[4] !== undefined ? m[4] : m[5], b, depth + 1);
        parent.appendChild(b);
      } else if (m[6] !== undefined || m[7] !== undefined) {
        const e = el('em');
        inline(m[6] !== undefined ? m[6] : m[7], e, depth + 1);
        parent.appendChild(e);
      } else if (m[8] !== undefined) {
        const d = el('del');
        inline(m[8], d, depth + 1);
        parent.appendChild(d);
      } else if (m[9] !== undefined) link(m[10], m[9], parent, depth);
      else if (m[11] !== undefined) link(m[11], m[11], parent, depth);
      else if (m[12] !== undefined) link(m[12], m[12], parent, depth);
    }
    if (last < src.length) text(src.slice(last), parent);
  }

  // ---------------- wiring ----------------

  function autosize() {
    const t = ui.input;
    t.style.height = 'auto';
    t.style.height = Math.min(t.scrollHeight + 2, Math.round(window.innerHeight * 0.4)) + 'px';
  }
  function openSidebar() {
    ui.sidebar.classList.add('open');
    ui.scrim.hidden = false;
    ui.menu.setAttribute('aria-expanded', 'true');
    ui.newChat.focus();
  }
  function closeSidebar() {
    if (!ui.sidebar.classList.contains('open')) return;
    ui.sidebar.classList.remove('open');
    ui.scrim.hidden = true;
    ui.menu.setAttribute('aria-expanded', 'false');
  }

  ui.input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      send();
    }
  });
  ui.input.addEventListener('input', autosize);
  ui.send.addEventListener('click', send);
  ui.stop.addEventListener('click', () => { stop(); ui.input.focus(); });
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    if (busy) { e.preventDefault(); stop(); } else closeSidebar();
  });
  ui.newChat.addEventListener('click', () => {
    const c = currentConv();
    if (!c || c.messages.length) newConv();
    saveState();
    closeSidebar();
    renderAll();
    ui.input.focus();
  });
  ui.menu.addEventListener('click', () => (ui.sidebar.classList.contains('open') ? closeSidebar() : openSidebar()));
  ui.scrim.addEventListener('click', closeSidebar);
  ui.settingsToggle.addEventListener('click', () => {
    ui.settings.hidden = !ui.settings.hidden;
    ui.settingsToggle.setAttribute('aria-expanded', String(!ui.settings.hidden));
    if (!ui.settings.hidden) ui.system.focus();
  });
  ui.system.addEventListener('input', () => {
    const c = ensureConv();
    c.system = ui.system.value;
    saveState();
  });
  for (const inp of [ui.temperature, ui.topP, ui.maxTokens]) {
    inp.addEventListener('change', () => { readSettings(false); saveState(); });
  }
  ui.resetSettings.addEventListener('click', () => {
    state.settings = cleanSettings(null);
    showSettings();
    saveState();
  });
  ui.apiKeySave.addEventListener('click', saveKey);
  ui.apiKey.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); saveKey(); }
  });
  window.addEventListener('pagehide', () => { if (busy) saveState(); });
  window.addEventListener('storage', (e) => { // another tab changed the conversations
    if (e.key !== LS_KEY || busy) return;
    state = loadState();
    renderAll();
  });

  // the keyboard hint fits the placeholder on wide screens only
  const narrow = window.matchMedia('(max-width: 720px)');
  const placeholder = () => {
    ui.input.placeholder = narrow.matches ? 'Message' : 'Message (Enter sends, Shift+Enter new line, Esc stops)';
    autosize();
  };
  narrow.addEventListener('change', placeholder);
  placeholder();

  if (!currentConv() && state.convs.length) state.current = state.convs[0].id;
  renderAll();
  loadModel();
  ui.input.focus();
})();
