/*! Confab chat widget. Self-contained, no dependencies, no build step.
 * Embed: <script src="https://HOST/widget.js" data-pk="pk_live_…" defer></script>
 * Optional attributes: data-api (API base URL, default: this script's origin),
 * data-page-type (filters quick questions by pageType).
 * Host API: window.Confab.open() / .close() / .toggle() / .isOpen(). */
(function () {
  'use strict';
  var W = window, D = document;
  if (W.Confab && W.Confab.version) return;
  var T0 = Date.now();
  var me = D.currentScript;
  if (!me || !me.getAttribute('data-pk')) {
    var tags = D.querySelectorAll('script[data-pk]');
    me = tags[tags.length - 1];
  }
  if (!me) return;
  var PK = me.getAttribute('data-pk');
  var API = (me.getAttribute('data-api') || new URL(me.src || location.href, location.href).origin).replace(/\/+$/, '');
  var PAGE_TYPE = me.getAttribute('data-page-type');
  var KEY = 'confab:' + PK, SKEY = 'confab:tab:' + PK;
  var MIN_ELAPSED = 800, TYPING_EVERY = 2000, TYPING_SHOW = 4000, PING_EVERY = 20000;
  var noop = function () {};

  // ---- persistence: localStorage is shared by tabs (identity, session, cursors);
  // sessionStorage is per tab (outbox, panel open), so tabs never clobber each other's outbox.
  function rd(s, k) { try { return JSON.parse(s.getItem(k)) || {}; } catch (e) { return {}; } }
  function wr(s, k, v) { try { s.setItem(k, JSON.stringify(v)); } catch (e) { /* private mode */ } }
  var LS = null, SS = null;
  try { LS = W.localStorage; SS = W.sessionStorage; } catch (e) { /* storage blocked */ }
  var st = LS ? rd(LS, KEY) : {};   // visitorToken, sessionToken, expiresAt, conversationId, lastId, readId
  var tab = SS ? rd(SS, SKEY) : {}; // out: [{c, t, i, a}], open
  tab.out = tab.out || [];
  function save() { if (LS) wr(LS, KEY, st); }
  function saveTab() { if (SS) wr(SS, SKEY, { out: tab.out.map(function (p) { return { c: p.c, t: p.t, i: p.i, a: p.a }; }), open: tab.open }); }

  function uuid() {
    try { if (W.crypto && crypto.randomUUID) return crypto.randomUUID(); } catch (e) { /* insecure context */ }
    var b = new Uint8Array(16), i, x = '';
    if (W.crypto && crypto.getRandomValues) crypto.getRandomValues(b);
    else for (i = 0; i < 16; i++) b[i] = Math.random() * 256 | 0;
    b[6] = b[6] & 15 | 64; b[8] = b[8] & 63 | 128;
    for (i = 0; i < 16; i++) x += (b[i] + 256).toString(16).slice(1);
    return x.slice(0, 8) + '-' + x.slice(8, 12) + '-' + x.slice(12, 16) + '-' + x.slice(16, 20) + '-' + x.slice(20);
  }
  function delay(ms) { return new Promise(function (r) { setTimeout(r, Math.max(0, ms)); }); }
  function jitter(ms) { return ms / 2 + Math.random() * ms / 2; }
  function enc(s) { return encodeURIComponent(s); }

  // ---- HTTP
  function req(method, path, body, auth, signal) {
    var hd = {};
    if (body) hd['Content-Type'] = 'application/json';
    if (auth) hd.Authorization = 'Bearer ' + st.sessionToken;
    return fetch(API + path, { method: method, headers: hd, body: body ? JSON.stringify(body) : undefined,
      signal: signal, credentials: 'omit', cache: 'no-store' }).then(function (r) {
      return r.text().then(function (t) {
        var j = null;
        try { j = t ? JSON.parse(t) : null; } catch (e) { /* not json */ }
        if (!r.ok) {
          var er = (j && j.error) || {}, e = new Error(er.message || 'HTTP ' + r.status);
          e.status = r.status; e.code = er.code; e.retryAfter = +r.headers.get('Retry-After') || 0;
          throw e;
        }
        return j || {};
      });
    });
  }
  // Authenticated call; a 401 renews the session (same visitor) and retries once.
  function authed(method, path, body, signal) {
    return ensureSession().then(function () {
      return req(method, path, body, true, signal).catch(function (e) {
        if (e.status !== 401) throw e;
        dropSession();
        return ensureSession().then(function () { return req(method, path, body, true, signal); });
      });
    });
  }

  // ---- config and session
  var cfg = null, challenge = null, sessP = null, sampleRate = 1, maxLen = 10000;
  function getConfig() {
    return req('GET', '/v1/config?pk=' + enc(PK)).then(function (c) {
      challenge = c.initChallenge || null;
      if (typeof c.minElapsedMs === 'number') MIN_ELAPSED = c.minElapsedMs;
      return c;
    });
  }
  function hasSession() { return !!st.sessionToken && !(st.expiresAt && Date.parse(st.expiresAt) - Date.now() < 30000); }
  function dropSession() { st.sessionToken = null; st.expiresAt = null; save(); }
  function utm() {
    var q = new URLSearchParams(location.search), u = {}, n = 0;
    ['source', 'medium', 'campaign', 'term', 'content'].forEach(function (k) {
      var v = q.get('utm_' + k);
      if (v) { u[k] = v.slice(0, 200); n++; }
    });
    return n ? u : undefined;
  }
  function ensureSession(extra) {
    if (!extra && hasSession()) return Promise.resolve();
    if (sessP) return extra ? sessP.then(function () { return ensureSession(extra); }) : sessP;
    var other = LS ? rd(LS, KEY) : {}; // another tab may have started one meanwhile
    if (!extra && other.sessionToken && other.sessionToken !== st.sessionToken) {
      adopt(other);
      if (hasSession()) return Promise.resolve();
    }
    sessP = startSession(extra, 0).then(function (r) {
      sessP = null;
      var changed = st.conversationId && st.conversationId !== r.conversationId;
      st.visitorToken = r.visitorToken; st.sessionToken = r.sessionToken; st.expiresAt = r.expiresAt;
      st.conversationId = r.conversationId;
      if (changed) resetConversation();
      setHandler(r.handler);
      save();
      telQ.splice(0).forEach(function (ev) { postEvent(ev); });
      if (!ws && !polling) setTimeout(boot); // a new or renewed session: (re)start the transport
      return r;
    }, function (e) { sessP = null; throw e; });
    return sessP;
  }
  function startSession(extra, attempt) {
    var c = challenge;
    challenge = null; // single use
    var chP = c && Date.parse(c.expiresAt) - Date.now() > 15000 ? Promise.resolve(c)
      : getConfig().then(function () { var x = challenge; challenge = null; return x; });
    return chP.then(function (ch) {
      // The server rejects sessions started faster than the tenant's minimum.
      return delay(MIN_ELAPSED + 60 - (Date.now() - T0)).then(function () {
        var loc = navigator.language, body = {
          publicKey: PK, initChallenge: ch ? ch.token : undefined,
          visitorToken: st.visitorToken || undefined,
          locale: loc && loc.length <= 16 ? loc : undefined,
          visitorContext: { pageUrl: location.href, referrer: D.referrer || undefined, pageTitle: D.title || undefined, utm: utm() },
          botSignals: { honeypot: hp.value, elapsedMs: Date.now() - T0 }
        }, k;
        for (k in extra || {}) body[k] = extra[k];
        return req('POST', '/v1/sessions', body);
      });
    }).catch(function (e) {
      if (attempt < 2 && (e.code === 'invalid_challenge' || (e.code === 'bot_suspected' && !hp.value))) {
        return delay(e.code === 'bot_suspected' ? 2000 * (attempt + 1) : 0).then(function () { return startSession(extra, attempt + 1); });
      }
      throw e;
    });
  }
  function adopt(o) {
    var changed = o.conversationId && st.conversationId && o.conversationId !== st.conversationId;
    ['visitorToken', 'sessionToken', 'expiresAt', 'conversationId', 'readId', 'handler'].forEach(function (k) { st[k] = o[k]; });
    if (changed) resetConversation();
  }

  // ---- telemetry (sampled; queued until a session exists)
  var telQ = [];
  function postEvent(ev) { req('POST', '/v1/events', ev, true).catch(noop); }
  function tel(type, data, force) {
    if (!force && !(Math.random() < sampleRate)) return;
    var ev = { type: type, data: data || {} };
    if (hasSession()) postEvent(ev);
    else if (telQ.length < 20) telQ.push(ev);
  }

  // ---- DOM
  function h(tag, cls, text, attrs) {
    var e = D.createElement(tag), k;
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    for (k in attrs || {}) e.setAttribute(k, attrs[k]);
    return e;
  }
  function svg(d) {
    var s = D.createElementNS('http://www.w3.org/2000/svg', 'svg'), p = D.createElementNS('http://www.w3.org/2000/svg', 'path');
    s.setAttribute('viewBox', '0 0 24 24'); s.setAttribute('aria-hidden', 'true'); s.setAttribute('focusable', 'false');
    p.setAttribute('d', d); p.setAttribute('fill', 'currentColor'); s.appendChild(p);
    return s;
  }
  var ICON_CHAT = 'M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z';
  var ICON_SEND = 'M3 20l18-8L3 4v6l12 2-12 2z';
  var ICON_X = 'M6.4 5 5 6.4 10.6 12 5 17.6 6.4 19l5.6-5.6 5.6 5.6 1.4-1.4-5.6-5.6L19 6.4 17.6 5 12 10.6z';
  var ICON_CLIP = 'M16.5 6v11.5a4 4 0 0 1-8 0V5a2.5 2.5 0 0 1 5 0v10.5a1 1 0 0 1-2 0V6H10v9.5a2.5 2.5 0 0 0 5 0V5a4 4 0 0 0-8 0v12.5a5.5 5.5 0 0 0 11 0V6z';
  var ICON_FILE = 'M6 2h8l6 6v12a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2zm7 1.5V9h5.5z';

  var CSS = [
    ':host{all:initial!important;display:block!important;position:fixed!important;z-index:2147483000!important;',
    'width:0!important;height:0!important;bottom:0!important;right:0!important;top:auto!important;left:auto!important;',
    'visibility:visible!important;opacity:1!important;transform:none!important;filter:none!important;contain:none!important}',
    '*,*::before,*::after{box-sizing:border-box}',
    '.cf{--p:#10A37F;--on:#fff;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;',
    'letter-spacing:normal;text-align:left;direction:ltr;-webkit-font-smoothing:antialiased}',
    'button,input,textarea{font:inherit;color:inherit;margin:0}',
    'button{cursor:pointer;border:0;background:none;padding:0}',
    'button:focus-visible,input:focus-visible,textarea:focus-visible{outline:2px solid var(--p);outline-offset:2px}',
    '[hidden]{display:none!important}',
    '.launch{position:fixed;bottom:20px;right:20px;display:flex;align-items:center;gap:8px;height:52px;padding:0 20px 0 16px;',
    'border-radius:26px;background:var(--p);color:var(--on);font-weight:600;box-shadow:0 6px 24px rgba(0,0,0,.22);transition:transform .15s}',
    '.launch:hover{transform:translateY(-1px)}',
    '.launch svg{width:24px;height:24px}',
    '.left .launch,.left .panel{right:auto;left:20px}',
    '.badge{position:absolute;top:-6px;right:-4px;min-width:22px;height:22px;padding:0 6px;border-radius:11px;background:#d1242f;color:#fff;',
    'font-size:12px;line-height:22px;text-align:center;border:2px solid #fff}',
    '.panel{position:fixed;bottom:88px;right:20px;width:370px;height:580px;max-height:calc(100vh - 108px);display:flex;flex-direction:column;',
    'background:#fff;border-radius:14px;overflow:hidden;box-shadow:0 12px 48px rgba(0,0,0,.25)}',
    '.head{display:flex;align-items:center;gap:10px;padding:14px 14px 14px 16px;background:var(--p);color:var(--on)}',
    '.head img{width:34px;height:34px;border-radius:50%;object-fit:cover;background:#fff}',
    '.ttl{flex:1;min-width:0}.name{font-weight:700;font-size:16px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}',
    '.sub{font-size:12px;opacity:.9}.sub::before{content:"";display:inline-block;width:8px;height:8px;border-radius:50%;background:#4ade80;margin-right:6px}',
    '.sub.off::before{background:#cbd5e1}',
    '.x{width:34px;height:34px;border-radius:8px;display:grid;place-items:center;color:var(--on)}.x:hover{background:rgba(255,255,255,.18)}',
    '.x svg{width:20px;height:20px}',
    '.log{flex:1;overflow-y:auto;padding:16px 14px 8px;background:#f6f7f9;display:flex;flex-direction:column;gap:8px}',
    '.msg{max-width:82%;padding:8px 12px;border-radius:14px;background:#fff;border:1px solid #e4e6ea;align-self:flex-start;',
    'white-space:pre-wrap;overflow-wrap:anywhere;border-bottom-left-radius:4px}',
    '.msg.me{align-self:flex-end;background:var(--p);color:var(--on);border-color:transparent;border-radius:14px;border-bottom-right-radius:4px}',
    '.msg.bot{background:#eef2ff;border-color:#dfe4fb}',
    '.ai{margin-left:5px;padding:0 4px;border-radius:4px;background:#dfe4fb;color:#3b4aa8;font-size:9px;vertical-align:1px}',
    '.dots i{display:inline-block;width:7px;height:7px;margin:5px 2px 3px;border-radius:50%;background:#8b93a7;animation:cfd 1.2s infinite}',
    '.dots i:nth-child(2){animation-delay:.2s}.dots i:nth-child(3){animation-delay:.4s}@keyframes cfd{0%,60%,100%{opacity:.3}30%{opacity:1}}',
    '@media (prefers-reduced-motion:reduce){.dots i{animation:none}}',
    '.acts{display:flex;flex-wrap:wrap;gap:6px;padding:6px 14px 2px;background:#f6f7f9}',
    '.act{padding:4px 10px;border-radius:14px;border:1px solid #d0d7de;background:#fff;font-size:12px;color:#1f2328;text-decoration:none}',
    '.act:hover{border-color:var(--p)}',
    '.draft .body::after{content:"\u258d";opacity:.5}',
    '.msg.system{align-self:center;background:none;border:0;color:#6b7280;font-size:12px;text-align:center;max-width:92%}',
    '.who{font-size:11px;font-weight:600;color:#6b7280;margin-bottom:2px}',
    '.meta{font-size:10px;opacity:.7;margin-top:2px;text-align:right}',
    '.seen{align-self:flex-end;font-size:11px;color:#6b7280;margin-top:-4px}',
    '.msg.pending{opacity:.75}.msg.failed{opacity:1;background:#fff;color:#1f2328;border:1px solid #d1242f}',
    '.retry{display:block;margin-top:4px;font-size:12px;color:#d1242f;text-decoration:underline}',
    '.chips{display:flex;flex-wrap:wrap;gap:6px;padding:6px 14px 2px;background:#f6f7f9}',
    '.chip{padding:6px 12px;border-radius:16px;border:1px solid var(--p);color:var(--p);background:#fff;font-size:13px}',
    '.chip:hover{background:var(--p);color:var(--on)}.chip:disabled{opacity:.5;cursor:default}',
    '.typing{padding:2px 16px 6px;font-size:12px;color:#6b7280;background:#f6f7f9;font-style:italic}',
    '.note{padding:6px 14px;font-size:12px;color:#6b7280;background:#fff8e6;border-top:1px solid #f4e4b5}',
    '.compose{display:flex;gap:8px;align-items:flex-end;padding:10px 12px;border-top:1px solid #e4e6ea;background:#fff}',
    '.compose textarea{flex:1;resize:none;border:1px solid #d0d7de;border-radius:10px;padding:8px 12px;min-height:40px;max-height:120px;background:#fff}',
    // 16px: phones zoom into any smaller field on focus.
    '.compose textarea,.contact input,.contact textarea{font-size:16px;line-height:1.35}',
    '.msg a{color:inherit;text-decoration:underline}',
    '.send{width:40px;height:40px;border-radius:10px;background:var(--p);color:var(--on);display:grid;place-items:center}',
    '.send svg{width:20px;height:20px}',
    '.clip{width:40px;height:40px;border-radius:10px;display:grid;place-items:center;color:#57606a}.clip:hover{background:#f0f2f5}.clip svg{width:22px;height:22px}',
    '.tray{display:flex;flex-wrap:wrap;gap:6px;padding:8px 12px 0;background:#fff;border-top:1px solid #e4e6ea}',
    '.up{display:flex;align-items:center;gap:6px;max-width:100%;padding:3px 4px 3px 10px;border:1px solid #d0d7de;border-radius:8px;font-size:12px}',
    '.up span,.file span{overflow:hidden;text-overflow:ellipsis;white-space:nowrap;max-width:170px}.up small,.file small{opacity:.7;white-space:nowrap}',
    '.up progress{width:56px;height:6px;accent-color:var(--p)}.up.ok{border-color:var(--p)}',
    '.up button{width:22px;height:22px;border-radius:6px;display:grid;place-items:center}.up button:hover{background:#f0f2f5}.up svg{width:14px;height:14px}',
    '.ferr{padding:6px 14px 0;font-size:12px;color:#d1242f;background:#fff}',
    '.panel.drop::after{content:"Drop files to send";position:absolute;inset:0;display:grid;place-items:center;background:rgba(255,255,255,.88);',
    'border:2px dashed var(--p);border-radius:inherit;font-weight:600;color:var(--p);pointer-events:none}',
    '.att{display:flex;flex-direction:column;align-items:flex-start;gap:4px;margin:2px 0}',
    '.thumb{display:block;border-radius:8px;overflow:hidden;background:#fff}.thumb img{display:block;max-width:100%;max-height:180px;min-width:24px;min-height:24px}',
    '.file{display:flex;align-items:center;gap:6px;max-width:100%;padding:6px 10px;border-radius:8px;background:rgba(0,0,0,.07);font-size:13px;text-decoration:none!important}',
    '.file svg{width:16px;height:16px;flex:none}',
    '.contact{flex:1;overflow-y:auto;padding:16px;display:flex;flex-direction:column;gap:10px}',
    '.contact p{margin:0;color:#4b5563}.contact label{display:flex;flex-direction:column;gap:4px;font-size:13px;font-weight:600}',
    '.contact input,.contact textarea{border:1px solid #d0d7de;border-radius:8px;padding:8px 10px;font-weight:400;background:#fff}',
    '.contact textarea{min-height:90px;resize:vertical}',
    '.submit{padding:10px;border-radius:8px;background:var(--p);color:var(--on);font-weight:600}',
    '.err{color:#d1242f;font-size:13px}',
    '.hp{position:absolute!important;left:-9999px;width:1px;height:1px;opacity:0}',
    '@media (max-width:480px){.panel,.left .panel{inset:0;width:100%;height:100%;max-height:none;border-radius:0}',
    '.open .launch{display:none}.launch .lbl{display:none}.launch{padding:0 14px}}'
  ].join('');

  var host = h('confab-widget', null, null, { 'data-confab': '' });
  var root = host.attachShadow ? host.attachShadow({ mode: 'open' }) : host;
  var cf = h('div', 'cf');
  var launch = h('button', 'launch', null, { type: 'button', 'aria-expanded': 'false', 'aria-controls': 'cf-panel' });
  var lbl = h('span', 'lbl');
  var badge = h('span', 'badge', null, { hidden: '', 'aria-hidden': 'true' });
  launch.appendChild(svg(ICON_CHAT)); launch.appendChild(lbl); launch.appendChild(badge);
  var panel = h('section', 'panel', null, { id: 'cf-panel', role: 'dialog', hidden: '' });
  var head = h('div', 'head'), ttl = h('div', 'ttl'), nameEl = h('div', 'name'), sub = h('div', 'sub');
  var xBtn = h('button', 'x', null, { type: 'button', 'aria-label': 'Close chat' });
  xBtn.appendChild(svg(ICON_X));
  ttl.appendChild(nameEl); ttl.appendChild(sub); head.appendChild(ttl); head.appendChild(xBtn);
  var log = h('div', 'log', null, { role: 'log', 'aria-live': 'polite', 'aria-relevant': 'additions', tabindex: '0', 'aria-label': 'Messages' });
  var chips = h('div', 'chips', null, { hidden: '' });
  var typingEl = h('div', 'typing', null, { hidden: '', 'aria-live': 'polite' });
  var note = h('div', 'note', null, { hidden: '', role: 'status' });
  var acts = h('div', 'acts', null, { hidden: '' }), talkBtn = h('button', 'act', 'Talk to a person', { type: 'button' });
  var callEl = h('button', 'act', 'Call us', { type: 'button' });
  acts.appendChild(talkBtn); acts.appendChild(callEl);
  var compose = h('form', 'compose', null, { novalidate: '' });
  var input = h('textarea', null, null, { rows: '1', placeholder: 'Type a message…', 'aria-label': 'Message' });
  var sendBtn = h('button', 'send', null, { type: 'submit', 'aria-label': 'Send message' });
  sendBtn.appendChild(svg(ICON_SEND));
  var clip = h('button', 'clip', null, { type: 'button', 'aria-label': 'Attach files', title: 'Attach files' });
  clip.appendChild(svg(ICON_CLIP));
  var fileIn = h('input', null, null, { type: 'file', multiple: '', hidden: '', tabindex: '-1', 'aria-hidden': 'true' });
  compose.appendChild(clip); compose.appendChild(input); compose.appendChild(sendBtn); compose.appendChild(fileIn);
  var tray = h('div', 'tray', null, { hidden: '', role: 'list', 'aria-label': 'Files to send' });
  var ferr = h('div', 'ferr', null, { hidden: '', role: 'alert' });
  var hp = h('input', 'hp', null, { type: 'text', name: 'website', tabindex: '-1', autocomplete: 'off', 'aria-hidden': 'true' });
  var contact = h('form', 'contact', null, { hidden: '', novalidate: '' });
  panel.appendChild(head); panel.appendChild(log); panel.appendChild(chips); panel.appendChild(typingEl);
  panel.appendChild(note); panel.appendChild(acts); panel.appendChild(ferr); panel.appendChild(tray); panel.appendChild(compose); panel.appendChild(contact); panel.appendChild(hp);
  cf.appendChild(launch); cf.appendChild(panel);
  var styleEl = h('style', null, CSS);
  root.appendChild(styleEl); root.appendChild(cf);

  function field(label, tag, attrs) {
    var l = h('label', null, label), i = h(tag, null, null, attrs);
    l.appendChild(i); contact.appendChild(l);
    return i;
  }
  var cIntro = h('p'); contact.appendChild(cIntro);
  var cName = field('Name', 'input', { type: 'text', name: 'name', autocomplete: 'name', maxlength: '200', required: '' });
  var cEmail = field('Email', 'input', { type: 'email', name: 'email', autocomplete: 'email', required: '' });
  var cMsg = field('Message', 'textarea', { name: 'message', required: '' });
  var cErr = h('div', 'err', null, { role: 'alert' });
  var cSubmit = h('button', 'submit', 'Send message', { type: 'submit' });
  contact.appendChild(cErr); contact.appendChild(cSubmit);

  // ---- state
  var isOpen = false, order = [], seen = {}, pending = {}, status = 'open', offline = false, greetEl = null;
  // Read receipts: the newest message an agent has read (server-side cursor), the "Seen"
  // line under the visitor's last message up to it, and the newest read we reported.
  var agentRead = null, seenEl = null, reported = null;
  // Assistants: who answers now (the conversation's `handler`), the config's `assistant`,
  // the drafts of streamed replies by streamId, and the "typing" dots while a reply is awaited.
  var handler = null, asst = null, asstName = '', team = 'Chat', drafts = {}, dotsEl = null, dotsT = 0;

  function fmtTime(ts) {
    var d = new Date(ts);
    return isNaN(d) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }
  function scrollDown() { log.scrollTop = log.scrollHeight; }
  function bubble(kind, body, name, ts, ai, atts) {
    var el = h('div', 'msg ' + (kind === 'visitor' ? 'me' : kind)), w;
    if (name && kind !== 'visitor' && kind !== 'system') {
      el.appendChild(w = h('div', 'who', name));
      if (ai) w.appendChild(h('span', 'ai', 'AI', { title: 'Automated assistant' }));
    }
    el.appendChild(linkify(h('div', 'body'), body));
    if (atts && atts.length) el.appendChild(attList(atts));
    if (ts && kind !== 'system') el.appendChild(h('div', 'meta', fmtTime(ts)));
    return el;
  }
  // Links: only http(s) URLs (www. → https), as DOM nodes (never HTML); trailing
  // punctuation stays text, so does anything else (javascript:, …).
  function linkify(el, text) {
    text = String(text == null ? '' : text);
    var re = /\b(?:https?:\/\/|www\.)[^\s<>"]+/gi, at = 0, m, u, href;
    while ((m = re.exec(text))) {
      u = m[0];
      while (/[.,;:!?'\])}*]$/.test(u) && !(/\)$/.test(u) && u.split('(').length >= u.split(')').length)) u = u.slice(0, -1);
      href = /^www\./i.test(u) ? 'https://' + u : u;
      try { if (!/^https?:$/.test(new URL(href).protocol) || /^[a-z]+:\/\/$/i.test(u)) continue; } catch (e) { continue; }
      if (m.index > at) el.appendChild(D.createTextNode(text.slice(at, m.index)));
      el.appendChild(h('a', null, u, { href: href, target: '_blank', rel: 'noopener noreferrer nofollow' }));
      re.lastIndex = at = m.index + u.length;
    }
    if (at < text.length) el.appendChild(D.createTextNode(text.slice(at)));
    return el;
  }
  // Resume point: the newest message this page has rendered (history is always loaded
  // first, so it never skips what another tab saw but this one did not).
  function cursor() { return order.length ? order[order.length - 1] : null; }
  // Stored messages go before the visitor's pending ones and the dots.
  function anchor() { return log.querySelector('.pending,.wait'); }
  function resetConversation() {
    order.forEach(function (id) { var e = seen[id]; if (e && e.parentNode) e.parentNode.removeChild(e); });
    order = []; seen = {}; st.lastId = null; st.readId = null; st.handler = null; agentRead = reported = null; renderSeen();
    dropDrafts(); hideDots(); ups.slice().forEach(dropUp);
    renderChips(); updateBadge();
  }

  // Adds one stored message; messages arrive in conversation order from every source
  // (history, WebSocket replay and live, long-poll), so dedupe by id is enough.
  function addMessage(m) {
    if (!m || !m.id || seen[m.id]) return;
    if (st.conversationId && m.conversationId && m.conversationId !== st.conversationId) return;
    var a = m.author || {}, kind = a.kind || 'system', p = m.clientMessageId && pending[m.clientMessageId];
    // The safe fallback reads as a note from the team, not as the assistant.
    var meta = m.meta || {}, fb = kind === 'bot' && meta.mode === 'safe_fallback';
    if (kind === 'visitor') {
      if (!p) for (var c in pending) if (pending[c].id === m.id) p = pending[c];
      if (p) dropPending(p);
    } else if (kind === 'bot') {
      if (fb) dropDrafts(); else { dropDraft(meta.streamId); asstName = a.name || asstName; renderSub(); }
      if (meta.streamId && !fb) drafts[meta.streamId] = {}; // done: a late delta makes no new draft
    } else if (kind === 'agent' && note.getAttribute('data-k') === 'handoff') showNote('');
    var el = bubble(fb ? 'agent' : kind, m.body, fb ? team : a.name, m.createdAt, kind === 'bot' && !fb, m.attachments);
    if (fb) el.classList.add('fallback');
    el.setAttribute('data-id', m.id);
    seen[m.id] = el; order.push(m.id);
    log.insertBefore(el, anchor());
    st.lastId = m.id;
    if (kind !== 'visitor') { hideTyping(); hideDots(); }
    else renderChips();
    if (status === 'closed') setStatus('open');
    markRead(); save(); updateBadge(); renderSeen(); scrollDown();
  }
  function markRead() {
    if (isOpen && !D.hidden && order.length && st.readId !== order[order.length - 1]) { st.readId = order[order.length - 1]; save(); }
    reportRead();
  }
  function seqOf(id) { var m = /_(\d+)$/.exec(id || ''); return m ? +m[1] : 0; }
  // Tells the server what the visitor has seen: only replies (the visitor has read its own
  // messages), only forward, over the socket when it is up.
  function reportRead() {
    var id = st.readId;
    if (!id || !seen[id] || seen[id].classList.contains('me') || seqOf(id) <= seqOf(reported)) return;
    reported = id;
    if (wsReady) wsSend({ type: 'read', messageId: id });
    else authed('POST', '/v1/read', { messageId: id }).catch(noop);
  }
  function setAgentRead(id) {
    if (id && seqOf(id) > seqOf(agentRead)) { agentRead = id; renderSeen(); }
  }
  // "Seen" under the visitor's last message an agent has read.
  function renderSeen() {
    var at = null, n = seqOf(agentRead), i = order.length - 1;
    for (; n && i >= 0 && !at; i--) if (seqOf(order[i]) <= n && seen[order[i]].classList.contains('me')) at = seen[order[i]];
    if (!at) { if (seenEl && seenEl.parentNode) seenEl.parentNode.removeChild(seenEl); return; }
    if (!seenEl) seenEl = h('div', 'seen', 'Seen');
    if (at.nextSibling !== seenEl) log.insertBefore(seenEl, at.nextSibling);
  }
  function unread() {
    var n = 0, i = order.length - 1;
    for (; i >= 0 && order[i] !== st.readId; i--) if (!seen[order[i]].classList.contains('me')) n++;
    return n;
  }
  function updateBadge() {
    var n = isOpen ? 0 : unread();
    badge.textContent = n > 9 ? '9+' : String(n);
    badge.hidden = !n;
    launch.setAttribute('aria-label', (lbl.textContent || 'Chat') + (n ? ' (' + n + ' unread)' : ''));
  }
  function setStatus(s) {
    status = s;
    if (s === 'closed') showNote('This conversation was closed. Send a message to reopen it.', 'closed');
    else if (note.getAttribute('data-k') === 'closed') showNote('');
  }
  function showNote(t, k) { note.textContent = t; note.hidden = !t; note.setAttribute('data-k', k || ''); }

  // ---- typing
  var typingT = 0, lastTypingSent = 0, lastTypingTel = 0;
  function showTyping(author) {
    typingEl.textContent = ((author && author.name) || (author && author.kind === 'bot' ? 'Assistant' : 'Agent')) + ' is typing…';
    typingEl.hidden = false;
    clearTimeout(typingT);
    typingT = setTimeout(hideTyping, TYPING_SHOW);
  }
  function hideTyping() { clearTimeout(typingT); typingEl.hidden = true; }
  function onInput() {
    input.style.height = 'auto';
    input.style.height = Math.min(120, input.scrollHeight + 2) + 'px';
    var now = Date.now();
    if (!input.value.trim() || !hasSession() || now - lastTypingSent < TYPING_EVERY) return;
    lastTypingSent = now;
    if (wsReady) wsSend({ type: 'typing' });
    else tel('TYPING', { via: 'events' }, true); // forwarded to agents as `typing`
    if (wsReady && now - lastTypingTel > 30000) { lastTypingTel = now; tel('TYPING', {}); }
  }

  // ---- assistants: a reply streams into a draft (by streamId) that its stored message
  // replaces; drafts are never stored, so a reload shows only stored messages.
  function onDelta(d) {
    if (!d || !d.streamId || d.conversationId !== st.conversationId) return;
    var x = drafts[d.streamId];
    if (x && !x.el) return x.dead && showDots(); // done, or its start was missed (a reconnect): wait for the whole
    hideDots(); hideTyping();
    if (!x) {
      x = drafts[d.streamId] = { t: '', el: bubble('bot', '', (d.author && d.author.name) || asstName, null, 1) };
      x.el.classList.add('draft'); x.el.setAttribute('aria-hidden', 'true'); // read out once stored
      log.insertBefore(x.el, anchor());
    }
    x.el.lastChild.textContent = x.t += d.delta || '';
    clearTimeout(x.tm); x.tm = setTimeout(function () { dropDraft(d.streamId); }, 60000);
    scrollDown();
  }
  function dropDraft(sid) {
    var x = drafts[sid];
    if (!x) return;
    clearTimeout(x.tm); delete drafts[sid];
    if (x.el && x.el.parentNode) x.el.parentNode.removeChild(x.el);
  }
  function dropDrafts(dead) { Object.keys(drafts).forEach(function (s) { var l = drafts[s].el; dropDraft(s); if (dead && l) drafts[s] = { dead: 1 }; }); }
  function showDots() {
    if (!dotsEl) {
      dotsEl = bubble('bot', '', asstName, null, 1);
      dotsEl.className = 'msg bot wait';
      dotsEl.lastChild.className = 'dots';
      dotsEl.lastChild.setAttribute('aria-label', (asstName || 'Assistant') + ' is typing');
      for (var i = 0; i < 3; i++) dotsEl.lastChild.appendChild(h('i'));
    }
    log.appendChild(dotsEl); scrollDown();
    clearTimeout(dotsT); dotsT = setTimeout(hideDots, 60000);
  }
  function hideDots() { clearTimeout(dotsT); if (dotsEl && dotsEl.parentNode) log.removeChild(dotsEl); }
  function setHandler(v) {
    if (!v) return;
    handler = st.handler = v; save();
    if (v !== 'bot') { hideDots(); dropDrafts(); }
    renderActs(); renderSub();
  }
  function renderActs() {
    talkBtn.hidden = handler !== 'bot';
    callEl.hidden = !(asst && asst.voice);
    acts.hidden = !contact.hidden || (talkBtn.hidden && callEl.hidden);
  }
  talkBtn.onclick = function () {
    talkBtn.disabled = true;
    authed('POST', '/v1/handoff', {}).then(function (c) {
      setHandler((c && c.handler) || 'human');
      showNote('A person from our team will reply here.', 'handoff');
    }, function (e) { showNote(e.message || 'Please try again.'); }).then(function () { talkBtn.disabled = false; });
  };
  callEl.onclick = function () {
    var b = callEl;
    b.disabled = true;
    authed('POST', '/v1/voice', {}).then(function (r) {
      var n = String(r.phoneNumber || ''), a = h('a', 'act call', 'Call ' + n, { href: 'tel:' + n.replace(/[^\d+]/g, '') });
      acts.replaceChild(a, b); callEl = a; renderActs();
    }, function (e) { b.disabled = false; showNote(e.message || 'Calls are unavailable right now.'); });
  };

  // ---- outgoing messages: one clientMessageId per message, reused by every retry
  function sendText(text, intent, atts) {
    text = String(text || '').trim();
    if (!text && !(atts && atts.length)) return;
    if (text.length > maxLen) { showNote('Message is too long (max ' + maxLen + ' characters).'); return; }
    var p = { c: uuid(), t: text, i: intent || undefined, a: atts && atts.length ? atts : undefined };
    tab.out.push(p); saveTab();
    renderPending(p); deliver(p);
    if (handler === 'bot') showDots();
    tel('MESSAGE', { length: text.length });
    renderChips();
  }
  function renderPending(p) {
    p.el = bubble('visitor', p.t, null, null, 0, p.a);
    p.el.classList.add('pending');
    p.el.setAttribute('data-client-id', p.c);
    pending[p.c] = p;
    log.appendChild(p.el); scrollDown();
  }
  function setPendingState(p, state, err) {
    p.state = state;
    p.el.classList.toggle('failed', state === 'failed');
    var old = p.el.querySelector('.retry, .meta');
    if (old) p.el.removeChild(old);
    if (state === 'failed') {
      var b = h('button', 'retry', (err ? err + ' — ' : 'Not sent — ') + 'Retry', { type: 'button' });
      b.onclick = function () { deliver(p); };
      p.el.appendChild(b);
    } else p.el.appendChild(h('div', 'meta', state === 'sent' ? 'Sent' : 'Sending…'));
  }
  function dropPending(p) {
    clearTimeout(p.timer);
    delete pending[p.c];
    if (p.el && p.el.parentNode) p.el.parentNode.removeChild(p.el);
    tab.out = tab.out.filter(function (q) { return q !== p; }); saveTab();
  }
  function deliver(p) {
    setPendingState(p, 'sending');
    ensureSession().then(function () {
      if (wsReady) {
        p.ws = true;
        wsSend({ type: 'message', message: p.t, clientMessageId: p.c, intent: p.i, attachments: ids(p) });
        clearTimeout(p.timer);
        p.timer = setTimeout(function () { httpSend(p); }, 8000); // no ack: retry over HTTP (idempotent)
      } else httpSend(p);
    }).catch(function (e) { failed(p, e); });
  }
  function ids(p) { return p.a && p.a.map(function (a) { return a.id; }); }
  function httpSend(p) {
    clearTimeout(p.timer); p.ws = false;
    if (!pending[p.c]) return;
    authed('POST', '/v1/messages', { message: p.t, clientMessageId: p.c, intent: p.i, attachments: ids(p),
      meta: { pageUrl: location.href, pageTitle: D.title || undefined, locale: navigator.language || undefined } })
      .then(function (r) { acked(p, r.messageId); }, function (e) { failed(p, e); });
  }
  function acked(p, id) {
    if (!p || !pending[p.c]) return;
    clearTimeout(p.timer); p.ws = false; p.id = id;
    tab.out = tab.out.filter(function (q) { return q !== p; }); saveTab();
    if (seen[id]) dropPending(p); else setPendingState(p, 'sent');
  }
  function failed(p, e) {
    if (!pending[p.c]) return;
    clearTimeout(p.timer); p.ws = false;
    p.net = !e || !e.status || e.status >= 500;
    var msg = e && e.code === 'rate_limited' ? 'Too many requests' : e && e.status === 422 ? (e.message || 'Invalid message') : '';
    setPendingState(p, 'failed', msg);
    tel('ERROR', { where: 'send', code: (e && e.code) || 'network' });
  }

  // ---- transport: WebSocket first, long-polling fallback, jittered exponential backoff
  var ws = null, wsReady = false, wsTries = 0, wsTimer = 0, pingT = 0, pongT = 0;
  var polling = false, pollAbort = null, pollErrs = 0, pollTimer = 0;
  function wsSend(f) { try { ws.send(JSON.stringify(f)); } catch (e) { /* closing */ } }
  function connect() {
    clearTimeout(wsTimer);
    if (ws || !hasSession() || !W.WebSocket) { if (!W.WebSocket) startPolling(); return; }
    var s, ready = false, after = null;
    // pk: this widget's allowlist decides the upgrade, not any tenant's of the deployment.
    try { s = new WebSocket(API.replace(/^http/, 'ws') + '/v1/visitor/ws?pk=' + enc(PK)); } catch (e) { startPolling(); return retryLater(); }
    ws = s;
    var guard = setTimeout(function () { if (!ready) kill(s); }, 10000);
    s.onopen = function () {
      var f = { type: 'auth', token: st.sessionToken };
      after = cursor();
      if (after) f.after = after;
      s.send(JSON.stringify(f));
    };
    s.onmessage = function (ev) {
      var f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      clearTimeout(pongT);
      if (f.type === 'ready') {
        ready = true; clearTimeout(guard);
        setAgentRead(f.agentLastReadId); setHandler(f.handler);
        if (f.visitorLastReadId && seqOf(f.visitorLastReadId) > seqOf(reported)) reported = f.visitorLastReadId;
        wsReady = true; wsTries = 0; reportRead();
        stopPolling(); startPing(); setNet();
        if (!after) catchUp(); // nothing to resume from: fetch anything stored before we subscribed
        for (var c in pending) if (pending[c].state === 'failed' && pending[c].net) deliver(pending[c]);
      } else onFrame(f);
    };
    s.onclose = function (ev) {
      clearTimeout(guard);
      if (ws !== s) return;
      lost();
      if (ev.code === 4401) { dropSession(); ensureSession().then(connect, retryLater); return; } // same visitor, new token
      if (!ready) startPolling(); // the upgrade itself fails: carry on over HTTP
      retryLater();
    };
  }
  function kill(s) { // abandon a socket without waiting for a closing handshake
    if (ws !== s) return;
    lost();
    s.onclose = s.onmessage = null;
    try { s.close(); } catch (e) { /* ignore */ }
    startPolling(); retryLater();
  }
  function lost() {
    ws = null; wsReady = false; stopPing(); setNet(); dropDrafts(1);
    for (var c in pending) if (pending[c].ws) httpSend(pending[c]); // unacked: resend over HTTP, same id
  }
  function retryLater() {
    clearTimeout(wsTimer);
    wsTimer = setTimeout(connect, jitter(Math.min(30000, 1000 * Math.pow(2, wsTries++))));
  }
  function startPing() {
    stopPing();
    if (D.hidden) return; // heartbeats pause in hidden tabs
    pingT = setInterval(ping, PING_EVERY);
  }
  function ping() {
    if (!wsReady) return;
    var s = ws;
    wsSend({ type: 'ping' });
    clearTimeout(pongT);
    pongT = setTimeout(function () { kill(s); }, 10000);
  }
  function stopPing() { clearInterval(pingT); clearTimeout(pongT); }
  function onFrame(f) {
    var d = f.data;
    if (f.type === 'message:new') addMessage(d);
    else if (f.type === 'message:delta') onDelta(d);
    else if (f.type === 'typing') { if (d && d.author && d.author.kind !== 'visitor') showTyping(d.author); }
    else if (f.type === 'conversation:updated') { if (d && d.status && d.status !== status) setStatus(d.status); if (d) setHandler(d.handler); }
    else if (f.type === 'availability') { if (d) setAvailable(d.isAvailable !== false); }
    else if (f.type === 'conversation:read') { if (d && d.reader === 'agent') setAgentRead(d.messageId); }
    else if (f.type === 'ack') acked(pending[f.clientMessageId], f.messageId);
    else if (f.type === 'error' && f.code !== 'invalid_frame') {
      // Errors do not name the message: fail the oldest one still waiting for its ack.
      for (var c in pending) if (pending[c].ws) { failed(pending[c], { status: f.code === 'rate_limited' ? 429 : 422, code: f.code, message: f.message }); break; }
    }
  }
  function startPolling() {
    if (polling || !hasSession()) return;
    polling = true; pollErrs = 0;
    poll();
  }
  function stopPolling() {
    polling = false; clearTimeout(pollTimer);
    if (pollAbort) pollAbort.abort();
    pollAbort = null;
  }
  function poll() {
    if (!polling) return;
    var ac = W.AbortController ? new AbortController() : null, t = Date.now();
    pollAbort = ac;
    authed('GET', '/v1/messages?limit=200&wait=25' + (cursor() ? '&after=' + enc(cursor()) : ''), null, ac && ac.signal)
      .then(function (r) {
        if (!polling || pollAbort !== ac) return;
        pollErrs = 0; setNet();
        (r.messages || []).forEach(function (m) {
          addMessage(m);
          // No conversation:updated without the socket: an agent's reply or the fallback means people answer.
          var k = m.author && m.author.kind;
          if (k === 'agent' || (k === 'bot' && m.meta && m.meta.mode === 'safe_fallback')) setHandler('human');
        });
        for (var c in pending) if (pending[c].state === 'failed' && pending[c].net) deliver(pending[c]);
        pollTimer = setTimeout(poll, r.hasMore ? 0 : Math.max(0, 1000 - (Date.now() - t)));
      }, function (e) {
        if (!polling || pollAbort !== ac) return;
        pollErrs++; setNet();
        pollTimer = setTimeout(poll, e.retryAfter ? e.retryAfter * 1000 : jitter(Math.min(30000, 1000 * Math.pow(2, pollErrs))));
      });
  }
  function setNet() {
    var down = !wsReady && (!polling || pollErrs > 0) && hasSession();
    if (down && !note.textContent) showNote('Reconnecting…', 'net');
    if (!down && note.getAttribute('data-k') === 'net') showNote('');
  }
  // History: oldest first, paged with `after` while hasMore.
  function catchUp() {
    function page() {
      return authed('GET', '/v1/messages?limit=200' + (cursor() ? '&after=' + enc(cursor()) : '')).then(function (r) {
        var ms = r.messages || [];
        ms.forEach(addMessage);
        if (r.hasMore && ms.length) return page();
      });
    }
    return page();
  }
  function boot() {
    if (!hasSession()) return;
    catchUp().catch(noop).then(connect);
  }

  // ---- panel
  function open() {
    if (isOpen) return;
    isOpen = true; tab.open = true; saveTab();
    panel.hidden = false; cf.classList.add('open');
    launch.setAttribute('aria-expanded', 'true');
    markRead(); updateBadge(); scrollDown();
    (contact.hidden ? input : cName).focus();
    tel('OPEN');
  }
  function close() {
    if (!isOpen) return;
    isOpen = false; tab.open = false; saveTab();
    panel.hidden = true; cf.classList.remove('open');
    launch.setAttribute('aria-expanded', 'false');
    var had = root.activeElement;
    updateBadge();
    if (had) launch.focus();
    tel('CLOSE');
  }
  launch.onclick = function () { if (isOpen) close(); else open(); };
  xBtn.onclick = close;
  panel.addEventListener('keydown', function (e) {
    if (e.key === 'Escape') { e.preventDefault(); close(); return; }
    // Full-screen on phones: keep Tab inside the panel, as a modal dialog would.
    if (e.key !== 'Tab' || !W.matchMedia || !W.matchMedia('(max-width:480px)').matches) return;
    var f = Array.prototype.filter.call(panel.querySelectorAll('button,textarea,input:not(.hp),[tabindex="0"]'),
      function (x) { return !x.disabled && x.getClientRects().length; });
    var first = f[0], last = f[f.length - 1], at = root.activeElement;
    if (e.shiftKey ? at === first : at === last) { e.preventDefault(); (e.shiftKey ? last : first).focus(); }
  });
  input.addEventListener('input', onInput);
  input.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
  });
  compose.onsubmit = function (e) { e.preventDefault(); submit(); };
  // Files still uploading: the message leaves when they are done (without those that failed).
  function submit() {
    var t = input.value;
    if (!t.trim() && !ups.length) return;
    if (ups.some(function (u) { return !u.a; })) {
      if (!sendBtn.disabled) {
        sendBtn.disabled = true;
        Promise.all(ups.map(function (u) { return u.p; })).then(function () { sendBtn.disabled = false; submit(); });
      }
      return;
    }
    var atts = ups.map(function (u) { return u.a; });
    ups.slice().forEach(dropUp); fileErr('');
    input.value = ''; onInput();
    sendText(t, null, atts);
  }

  // ---- attachments: a file uploads as soon as it is picked, dropped or pasted (progress in
  // the tray above the composer); the message names the ids. Received files show as
  // thumbnails (raster images, through the signed link) or download chips.
  var IMG = /^image\/(png|jpeg|gif|webp)$/, maxBytes = 0, types = null, ups = [], dragN = 0;
  function fmtSize(n) { return n < 1024 ? n + ' B' : n < 1048576 ? Math.round(n / 1024) + ' KB' : (n / 1048576).toFixed(1).replace(/\.0$/, '') + ' MB'; }
  function fileErr(t) { ferr.textContent = t; ferr.hidden = !t; }
  function typeOk(t) { return !types || !t || types.indexOf(t) >= 0 || (/^text\/(?!html|xml)|json$/.test(t) && types.indexOf('text/plain') >= 0); }
  function addFiles(list) {
    var errs = [];
    Array.prototype.forEach.call(list || [], function (f) {
      var q = '\u201c' + f.name + '\u201d ', e = ups.length >= 10 ? 'Up to 10 files per message: ' + q + 'was not added.'
        : maxBytes && f.size > maxBytes ? q + 'is too large (' + fmtSize(f.size) + '; the limit is ' + fmtSize(maxBytes) + ').'
        : !typeOk(f.type) ? q + 'cannot be sent: this type of file (' + f.type + ') is not allowed.'
        : !f.size ? q + 'is empty.' : '';
      if (e) errs.push(e); else upload(f);
    });
    fileErr(errs.join(' '));
  }
  function upload(f) {
    var u = { f: f, el: h('div', 'up', null, { role: 'listitem' }), bar: h('progress', null, null, { max: '100', value: '0', 'aria-label': 'Uploading ' + f.name }) };
    var x = h('button', null, null, { type: 'button', 'aria-label': 'Remove ' + f.name, title: 'Remove' });
    x.appendChild(svg(ICON_X));
    x.onclick = function () { dropUp(u); input.focus(); };
    u.el.appendChild(h('span', null, f.name, { title: f.name })); u.el.appendChild(h('small', null, fmtSize(f.size)));
    u.el.appendChild(u.bar); u.el.appendChild(x);
    ups.push(u); tray.appendChild(u.el); tray.hidden = false;
    u.p = ensureSession().then(function () { return xhrUp(u); }).then(function (a) {
      u.a = a; u.bar.hidden = true; u.el.classList.add('ok');
    }, function (e) {
      if (ups.indexOf(u) < 0) return; // removed
      dropUp(u);
      fileErr('\u201c' + f.name + '\u201d was not sent: ' + (e.status === 413 ? 'it is too large' + (maxBytes ? ' (the limit is ' + fmtSize(maxBytes) + ')' : '') + '.'
        : e.status === 415 ? 'this type of file is not allowed.' : e.status === 429 ? 'too many uploads, please try again later.' : e.message || 'the upload failed.'));
      tel('ERROR', { where: 'upload', code: e.code || 'network' });
    });
  }
  // A raw-body upload over XMLHttpRequest (fetch reports no upload progress); a 401 renews
  // the session once.
  function xhrUp(u, again) {
    return new Promise(function (ok, ko) {
      var x = u.x = new XMLHttpRequest();
      x.open('POST', API + '/v1/attachments?filename=' + enc(u.f.name));
      x.setRequestHeader('Authorization', 'Bearer ' + st.sessionToken);
      x.upload.onprogress = function (e) { if (e.lengthComputable) u.bar.value = Math.round(100 * e.loaded / e.total); };
      x.onload = function () {
        var j = null, er, e;
        try { j = JSON.parse(x.responseText); } catch (e2) { /* not json */ }
        if (x.status === 201 && j && j.id) return ok(j);
        er = (j && j.error) || {}; e = new Error(er.message || 'HTTP ' + x.status); e.status = x.status; e.code = er.code;
        ko(e);
      };
      x.onerror = x.onabort = function () { ko(new Error('the connection failed.')); };
      x.send(u.f);
    }).catch(function (e) {
      if (e.status !== 401 || again) throw e;
      dropSession();
      return ensureSession().then(function () { return xhrUp(u, 1); });
    });
  }
  function dropUp(u) {
    ups = ups.filter(function (v) { return v !== u; });
    if (u.x && !u.a) u.x.abort();
    if (u.el.parentNode) tray.removeChild(u.el);
    tray.hidden = !ups.length;
  }
  function attList(as) {
    var box = h('div', 'att');
    as.forEach(function (a) {
      var url = a.url ? API + a.url : '', l, img;
      if (IMG.test(a.contentType) && url) {
        url += (/\?/.test(url) ? '&' : '?') + 'disposition=inline';
        l = h('a', 'thumb', null, { href: url, target: '_blank', rel: 'noopener noreferrer', title: a.filename });
        l.appendChild(img = h('img', null, null, { src: url, alt: a.filename }));
        img.onload = function () { if (log.scrollHeight - log.scrollTop - log.clientHeight < img.offsetHeight + 80) scrollDown(); };
      } else {
        l = h(url ? 'a' : 'span', 'file', null, url ? { href: url, target: '_blank', rel: 'noopener noreferrer', download: a.filename } : {});
        l.appendChild(svg(ICON_FILE)); l.appendChild(h('span', null, a.filename)); l.appendChild(h('small', null, fmtSize(a.size || 0)));
        l.setAttribute('aria-label', 'Download ' + a.filename + ', ' + fmtSize(a.size || 0));
      }
      box.appendChild(l);
    });
    return box;
  }
  clip.onclick = function () { fileErr(''); fileIn.click(); };
  fileIn.onchange = function () { addFiles(fileIn.files); fileIn.value = ''; };
  input.addEventListener('paste', function (e) {
    var fs = e.clipboardData && e.clipboardData.files;
    if (fs && fs.length && !clip.hidden) { e.preventDefault(); addFiles(fs); }
  });
  function dragged(e) { var t = e.dataTransfer && e.dataTransfer.types; return !compose.hidden && !clip.hidden && !!t && Array.prototype.indexOf.call(t, 'Files') >= 0; }
  panel.addEventListener('dragenter', function (e) { if (dragged(e)) { dragN++; panel.classList.add('drop'); } });
  panel.addEventListener('dragleave', function () { if (dragN && !--dragN) panel.classList.remove('drop'); });
  panel.addEventListener('dragover', function (e) { if (dragged(e)) { e.preventDefault(); e.dataTransfer.dropEffect = 'copy'; } });
  panel.addEventListener('drop', function (e) {
    dragN = 0; panel.classList.remove('drop');
    if (dragged(e)) { e.preventDefault(); addFiles(e.dataTransfer.files); }
  });
  contact.onsubmit = function (e) {
    e.preventDefault();
    cErr.textContent = '';
    var name = cName.value.trim(), email = cEmail.value.trim(), msg = cMsg.value.trim();
    if (!name || !msg || !/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(email)) { cErr.textContent = 'Please enter your name, a valid email and a message.'; return; }
    cSubmit.disabled = true;
    ensureSession({ contact: { name: name, email: email }, message: msg }).then(function () {
      contact.hidden = true; compose.hidden = false; log.hidden = false;
      showNote('Thanks! We received your message and will reply by email or here.');
      input.focus();
      tel('MESSAGE', { length: msg.length, contact: true });
    }, function (e) {
      cErr.textContent = e.message || 'Could not send. Please try again.';
      tel('ERROR', { where: 'contact', code: e.code || 'network' });
    }).then(function () { cSubmit.disabled = false; });
  };

  function renderChips() {
    while (chips.firstChild) chips.removeChild(chips.firstChild);
    var mine = order.some(function (id) { return seen[id].classList.contains('me'); }) || Object.keys(pending).length;
    if (!cfg || mine || !contact.hidden) { chips.hidden = true; return; }
    var items = []; // [text, intent name]: a chip sends its intent along
    (cfg.intents || []).forEach(function (it) {
      var t = it.displayLabel || it.display_label || it.name;
      if (t) items.push([t, it.name]);
    });
    (cfg.quickQuestions || []).forEach(function (q) {
      var pt = q.pageType || q.page_type;
      if (q.question && (!PAGE_TYPE || !pt || pt === 'general' || pt === PAGE_TYPE)) items.push([q.question, q.intentName || q.intent_name]);
    });
    items.forEach(function (x) {
      var b = h('button', 'chip', x[0], { type: 'button' });
      b.onclick = function () { sendText(x[0], x[1]); };
      chips.appendChild(b);
    });
    chips.hidden = !items.length;
  }

  function applyConfig(c) {
    cfg = c;
    var b = c.branding || {}, col = b.primaryColor;
    if (typeof col === 'string' && /^#([0-9a-f]{3}|[0-9a-f]{6})$/i.test(col)) {
      cf.style.setProperty('--p', col);
      var x = col.length === 4 ? col.replace(/[0-9a-f]/gi, '$&$&').slice(1) : col.slice(1);
      var lum = (0.299 * parseInt(x.slice(0, 2), 16) + 0.587 * parseInt(x.slice(2, 4), 16) + 0.114 * parseInt(x.slice(4, 6), 16)) / 255;
      cf.style.setProperty('--on', lum > 0.62 ? '#111' : '#fff');
    }
    if (b.position === 'bottom-left') cf.classList.add('left');
    lbl.textContent = b.label || 'Chat with us';
    var tname = team = (c.tenant && c.tenant.name) || 'Chat';
    asst = c.assistant || null; asstName = (asst && asst.name) || '';
    nameEl.textContent = tname;
    panel.setAttribute('aria-label', 'Chat with ' + tname);
    if (b.logo && /^(https?:|data:image\/)/.test(b.logo)) {
      var img = h('img', null, null, { src: b.logo, alt: '' });
      head.insertBefore(img, ttl);
    }
    setAvailable(c.isAvailable !== false);
    sampleRate = c.telemetry && typeof c.telemetry.sampleRate === 'number' ? c.telemetry.sampleRate : 1;
    var L = c.limits || {};
    maxLen = L.maxMessageLength || maxLen;
    maxBytes = L.maxAttachmentBytes || 0; types = L.attachmentTypes || null;
    if (types) fileIn.setAttribute('accept', types.join(','));
    clip.hidden = !!types && !types.length;
    input.setAttribute('maxlength', String(maxLen));
    cMsg.setAttribute('maxlength', String(maxLen));
    if (c.greeting) {
      greetEl = bubble('bot', c.greeting, tname);
      greetEl.classList.add('greeting');
      log.insertBefore(greetEl, log.firstChild);
    }
    // Offline and no conversation yet: a contact form instead of the chat (unless an assistant answers).
    var form = offline && !st.conversationId && !asst;
    contact.hidden = !form; compose.hidden = form; log.hidden = form;
    cIntro.textContent = (c.greeting ? c.greeting + ' ' : '') + 'We\'re offline right now. Leave your details and we\'ll get back to you.';
    if (offline && !form && !asst) showNote('We\'re offline right now — we\'ll reply as soon as we\'re back.');
    setHandler(st.conversationId && st.handler || (asst ? 'bot' : 'human'));
    renderChips(); updateBadge();
  }

  // The status line tells the truth: with `require_agent`, "Online" means an agent is
  // online now; the gateway sends `availability` frames when that changes.
  function setAvailable(yes) { offline = !yes; renderSub(); }
  function renderSub() {
    var bot = handler === 'bot' && asstName;
    sub.textContent = bot ? asstName + ' · AI assistant' : offline ? 'Away — we\'ll reply by email' : 'Online';
    sub.classList.toggle('off', offline && !bot);
  }

  function start(tries) {
    getConfig().then(function (c) {
      applyConfig(c);
      (D.body || D.documentElement).appendChild(host);
      tab.out.forEach(function (p) { renderPending(p); }); // survived a reload: resend with the same id
      if (tab.out.length) tab.out.forEach(deliver);
      if (tab.open || wantOpen) open();
      if (hasSession()) boot();
      else if (st.visitorToken && st.conversationId) ensureSession().catch(noop); // expired: resume same visitor
    }, function (e) {
      if (e.status === 404 || e.status === 422) { if (W.console) console.warn('Confab: ' + e.message); return; }
      if (tries < 5) setTimeout(function () { start(tries + 1); }, jitter(2000 * Math.pow(2, tries)));
    });
  }

  D.addEventListener('visibilitychange', function () {
    if (D.hidden) { stopPing(); return; }
    markRead(); updateBadge();
    if (wsReady) { startPing(); ping(); } // verify the socket survived the pause
    else if (hasSession()) { wsTries = 0; connect(); } // catch up now, not at the next backoff tick
  });
  W.addEventListener('online', function () { if (!wsReady && hasSession()) { wsTries = 0; connect(); } });
  W.addEventListener('storage', function (e) {
    if (e.key !== KEY || !e.newValue) return;
    var o = rd(LS, KEY), had = hasSession();
    if (o.sessionToken && o.sessionToken !== st.sessionToken) {
      adopt(o);
      if (!had && hasSession()) {
        contact.hidden = true; compose.hidden = false; log.hidden = false;
        boot();
      }
    } else if (o.readId && o.readId !== st.readId && seen[o.readId]) { st.readId = o.readId; updateBadge(); }
  });

  var wantOpen = false;
  W.Confab = {
    version: '1',
    open: function () { if (cfg) open(); else wantOpen = true; },
    close: function () { wantOpen = false; close(); },
    toggle: function () { if (isOpen) close(); else W.Confab.open(); },
    isOpen: function () { return isOpen; },
    send: function (t) { sendText(t); }
  };
  start(0);
})();
