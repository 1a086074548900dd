// The agent console's script (GET /console.js), kept out of console.html so the page's
// Content-Security-Policy can forbid inline scripts.
(function () {
  'use strict';
  var TK = 'confab.console.token', OK = 'confab.console.offset';
  var $ = function (id) { return document.getElementById(id); };
  var token = null, ws = null, wsReady = false, tries = 0, wsTimer = 0, pingT = 0, pongT = 0;
  var polling = false, pollAbort = null, pollErrs = 0, quietPoll = false;
  var offset = null;                 // last tenant event offset seen (resume point)
  var seenOff = new Set(), offQ = []; // dedupe events by offset (bounded)
  var convs = new Map();             // id -> Conversation
  var unread = {};                   // id -> the visitor's messages after the agents' read cursor
  var chats = new Map();             // id -> { ids:Set, loaded, loading, buffer:[] }
  var pending = {};                  // clientMessageId -> {c, conv, text, el, state, timer}
  var typingUntil = {};              // conversationId -> ms timestamp
  var me = null;                     // this agent's id (JWT sub, then ready.agent.id)
  var cur = null, filter = 'open', nextCursor = null, lastTypingSent = 0, typingTimer = 0;
  var realLast = {};                 // id -> newest non-automatic Message known (the preview)
  var resolved = {};                 // id -> the lastMessage id for which realLast is known current
  var lingering = new Set();         // ids that left the current filter while shown (see statusChanged)
  var sortBy = ls('confab.console.sort') === 'waiting' ? 'waiting' : 'recent';
  var drafts = {};                   // conversationId -> { streamId -> {text, el, timer} }: bot replies streaming now
  var botNames = {};                 // assistantId -> its name (from its messages and deltas)

  function ls(k, v) { try { if (v === undefined) return localStorage.getItem(k); localStorage.setItem(k, v); } catch (e) {} return null; }
  function ss(k, v) { try { if (v === undefined) return sessionStorage.getItem(k); if (v === null) sessionStorage.removeItem(k); else sessionStorage.setItem(k, v); } catch (e) {} return null; }
  function uuid() {
    if (crypto.randomUUID) try { return crypto.randomUUID(); } catch (e) {}
    var b = crypto.getRandomValues(new Uint8Array(16)), x = '';
    b[6] = b[6] & 15 | 64; b[8] = b[8] & 63 | 128;
    for (var i = 0; i < 16; i++) x += (b[i] + 256).toString(16).slice(1);
    return x.slice(0, 8) + '-' + x.slice(8, 12) + '-' + x.slice(12, 16) + '-' + x.slice(16, 20) + '-' + x.slice(20);
  }
  function el(tag, cls, text) { var e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; }
  function jitter(ms) { return ms / 2 + Math.random() * ms / 2; }
  function fmt(ts, full) {
    var d = new Date(ts);
    if (isNaN(d)) return '';
    return full || new Date().toDateString() !== d.toDateString() ? d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' })
      : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }
  function jwtClaims(t) {
    try { return JSON.parse(atob(t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))); } catch (e) { return null; }
  }

  // ---- HTTP
  function api(method, path, body, signal) {
    var h = { Authorization: 'Bearer ' + token };
    if (body) h['Content-Type'] = 'application/json';
    return fetch(path, { method: method, headers: h, body: body ? JSON.stringify(body) : undefined, signal: signal, cache: 'no-store' })
      .then(function (r) {
        return r.text().then(function (t) {
          var j = null; try { j = t ? JSON.parse(t) : null; } catch (e) {}
          if (!r.ok) {
            var er = (j && j.error) || {}, e = new Error(er.message || 'HTTP ' + r.status);
            e.status = r.status; e.code = er.code; e.retryAfter = +r.headers.get('Retry-After') || 0;
            if (r.status === 401) signOut('Token rejected (' + (er.code || 401) + '). Paste a valid agent token.');
            throw e;
          }
          return j || {};
        });
      });
  }

  // ---- sign-in
  function signIn(t) {
    t = (t || '').trim();
    if (!/^[\w-]+\.[\w-]+\.[\w-]*$/.test(t)) { $('loginErr').textContent = 'That does not look like a JWT.'; return; }
    if (t !== ss(TK)) { ss(OK, null); } // another agent/tenant: do not resume its offsets
    token = t; ss(TK, t);
    var c = jwtClaims(t) || {};
    $('agent').textContent = c.name || c.sub || '';
    me = c.sub || null;
    $('tenant').textContent = c.tenant || '';
    $('login').hidden = true; $('app').hidden = false; $('logout').hidden = false; $('awayBtn').hidden = false;
    offset = ss(OK);
    unread = {}; // the server's unreadByAgent, from the list and from events
    loadList(); // current state; the WS then resumes from the stored offset (events after it are new to us)
    connect();
    showWebhooks();
    renderAlerts();
  }
  function signOut(msg) {
    token = null; ss(TK, null); ss(OK, null); ss(WK, null); clearTimeout(whTimer);
    stopPolling(); clearTimeout(wsTimer);
    if (ws) { var s = ws; ws = null; s.onclose = null; s.close(); }
    wsReady = false; setConn('down', 'signed out');
    $('app').hidden = true; $('logout').hidden = true; $('login').hidden = false;
    $('awayBtn').hidden = true; team = {}; away = false; renderTeam(); renderAlerts();
    $('loginErr').textContent = msg || '';
  }
  $('login').onsubmit = function (e) { e.preventDefault(); signIn($('tok').value); };
  $('logout').onclick = function () { signOut(''); };

  function setConn(cls, text) { var c = $('conn'); c.className = cls; c.textContent = text; }

  // ---- conversation list (HTTP), merged with live events
  // Conversations over HTTP (most recently updated first, paged with nextCursor); merged
  // with live events by updatedAt, so the order of the two never matters.
  function loadList(cursor, resync) {
    var q = '/v1/tenant/conversations?limit=50' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : '');
    return api('GET', q).then(function (r) {
      (r.conversations || []).forEach(upsert);
      nextCursor = r.nextCursor || null;
      $('more').hidden = !nextCursor;
      renderList();
      if (resync && cur) { chats.delete(cur); openConv(cur); } // events were lost: refetch the open conversation
    }).catch(function (e) { if (e.status !== 401) setConn('down', 'load failed'); });
  }
  $('more').onclick = function () { if (nextCursor) loadList(nextCursor); };

  function upsert(c) {
    if (!c || !c.id) return;
    var old = convs.get(c.id);
    if (old && old.updatedAt > c.updatedAt) { // keep the newer state, but take flags that only move forward
      if (c.qualified) old.qualified = true;
      return;
    }
    if (old && old.lastMessage && (!c.lastMessage || old.lastMessage.createdAt > c.lastMessage.createdAt)) c.lastMessage = old.lastMessage;
    if (old) statusChanged(old, c.status);
    if (old && seqOf(old.agentLastReadId) > seqOf(c.agentLastReadId)) { c.agentLastReadId = old.agentLastReadId; c.unreadByAgent = old.unreadByAgent; }
    if (typeof c.unreadByAgent === 'number') unread[c.id] = c.unreadByAgent;
    convs.set(c.id, c);
    var lm = c.lastMessage;
    if (lm) learnBot(lm.author);
    if (lm && !isAuto(lm)) { noteReal(lm); resolved[c.id] = lm.id; }
    else if (lm && resolved[c.id] !== lm.id) queuePreview(c.id); // automatic: find the real preview
    if (c.id === cur) renderHead();
  }
  // A conversation that leaves the filter being shown (closed under "Open", reopened under
  // "Closed") does not silently vanish under the agent's eyes: it stays in place, dimmed,
  // struck through and tagged with its new status, until the agent changes the filter (or
  // reloads). The selection and j/k do not jump, and Undo / Reopen put it back as it was.
  function statusChanged(c, s) {
    if (!s || c.status === s) return;
    if (filter !== 'all' && c.status === filter) lingering.add(c.id);
    else if (s === filter) lingering.delete(c.id);
    c.status = s;
  }
  function prefix(m) {
    var a = m.author || {};
    if (a.kind === 'visitor') return '';
    return a.kind === 'agent' && a.id === me ? 'You: ' : (a.name || a.kind || '') + ': ';
  }
  function label(c) {
    return (c.contact && c.contact.name) || friendlyName(c.visitorId || c.id);
  }
  // A stable, human name for a visitor without one: two words picked by a hash (FNV-1a) of
  // the visitor id, so the same visitor is "Amber Fox" on every reload and for every agent.
  var ADJ = ['Amber', 'Azure', 'Brave', 'Bright', 'Calm', 'Clever', 'Coral', 'Crimson', 'Dapper', 'Eager', 'Gentle',
    'Golden', 'Happy', 'Indigo', 'Jolly', 'Kind', 'Lively', 'Lucky', 'Mellow', 'Misty', 'Noble', 'Olive', 'Plucky',
    'Quiet', 'Rapid', 'Rosy', 'Silver', 'Sunny', 'Swift', 'Teal', 'Velvet', 'Witty'];
  var ANIMALS = ['Badger', 'Bear', 'Beaver', 'Bison', 'Crane', 'Deer', 'Dolphin', 'Eagle', 'Falcon', 'Ferret', 'Finch',
    'Fox', 'Gecko', 'Heron', 'Ibis', 'Koala', 'Lemur', 'Lynx', 'Marten', 'Moose', 'Otter', 'Owl', 'Panda', 'Puffin',
    'Quail', 'Raven', 'Robin', 'Seal', 'Swan', 'Tiger', 'Walrus', 'Wolf'];
  function friendlyName(id) {
    var h = 2166136261, s = String(id);
    for (var i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 16777619) >>> 0; }
    return ADJ[h % ADJ.length] + ' ' + ANIMALS[(h >>> 8) % ANIMALS.length];
  }

  // ---- triage: the preview and the visitor's wait
  // Automatic messages — the flow auto-reply (a bot message with meta.mode "flow") and
  // system notes — neither make the preview nor end a visitor's wait. Everything else does:
  // the visitor, agents, and what the tenant's backend posts as a bot in other modes.
  function isAuto(m) {
    var k = m && m.author && m.author.kind;
    return k === 'system' || (k === 'bot' && !!m.meta && m.meta.mode === 'flow');
  }
  function noteReal(m) {
    if (!m || isAuto(m)) return;
    var o = realLast[m.conversationId];
    if (!o || o.createdAt <= m.createdAt) realLast[m.conversationId] = m;
  }
  // Waiting: the visitor spoke last (automatic replies aside) in an open conversation that
  // people answer (not a bot); since that message was written.
  function waitingSince(c) {
    var m = realLast[c.id];
    return c.status === 'open' && c.handler !== 'bot' && m && m.author && m.author.kind === 'visitor' ? m.createdAt : null;
  }
  function waitText(since) {
    var s = Math.max(0, (Date.now() - Date.parse(since)) / 1000), m = Math.floor(s / 60), h = Math.floor(m / 60);
    return 'waiting ' + (m < 1 ? '<1m' : h < 1 ? m + 'm' : h < 24 ? h + 'h ' + (m % 60) + 'm' : Math.floor(h / 24) + 'd');
  }
  function drawWait(b, since) {
    b.textContent = waitText(since);
    b.classList.toggle('long', Date.now() - Date.parse(since) >= 5 * 60000);
  }
  setInterval(function () {
    Array.prototype.forEach.call(document.querySelectorAll('#convs .wait[data-since]'), function (b) { drawWait(b, b.getAttribute('data-since')); });
  }, 30000);

  // Conversations loaded over HTTP whose lastMessage is automatic: fetch their last few
  // messages to find the real preview, three conversations at a time. The history API pages
  // forward only, so "the last few" are those written in the two minutes before the automatic
  // one (an auto-reply follows its visitor message within a second); only when that window
  // holds nothing real, a day, then the whole conversation (a few pages at most).
  var pq = [], pqBusy = {}, pqActive = 0;
  function queuePreview(id) {
    if (!pqBusy[id] && pq.indexOf(id) < 0) pq.push(id);
    setTimeout(pumpPreview);
  }
  function pumpPreview() {
    while (pqActive < 3 && pq.length) findPreview(pq.shift());
  }
  function findPreview(id) {
    var c = convs.get(id), last = c && c.lastMessage;
    if (!last || !isAuto(last) || resolved[id] === last.id || !token) return;
    pqActive++; pqBusy[id] = true;
    var base = '/v1/tenant/conversations/' + encodeURIComponent(id) + '/messages?limit=', t = Date.parse(last.createdAt);
    var windows = [[10, 120000], [50, 86400000], [200, 0]];
    function scan(q, pages, found) {
      return api('GET', q).then(function (r) {
        var ms = r.messages || [];
        ms.forEach(function (m) { if (!isAuto(m)) found = m; });
        if (r.hasMore && ms.length && pages > 1) return scan(base + '50&after=' + encodeURIComponent(ms[ms.length - 1].id), pages - 1, found);
        return found;
      });
    }
    function step(i) {
      var w = windows[i];
      return scan(base + w[0] + (w[1] ? '&since=' + encodeURIComponent(new Date(t - w[1]).toISOString()) : ''), 4, null)
        .then(function (m) { return m || (i + 1 < windows.length ? step(i + 1) : null); });
    }
    step(0).then(function (m) {
      noteReal(m);
      resolved[id] = last.id;
      renderList();
    }, function () {}).then(function () { pqActive--; delete pqBusy[id]; pumpPreview(); });
  }
  // The list as shown: the filter, then the sort — most recently updated first, or (sort by
  // waiting) the visitors waiting longest first, then everyone else by recency.
  function shownList() {
    var list = Array.from(convs.values()).filter(function (c) { return filter === 'all' || c.status === filter || lingering.has(c.id); });
    function recent(a, b) { return a.updatedAt < b.updatedAt ? 1 : a.updatedAt > b.updatedAt ? -1 : 0; }
    if (sortBy !== 'waiting') return list.sort(recent);
    return list.sort(function (a, b) {
      var wa = waitingSince(a), wb = waitingSince(b);
      if (wa && wb) return wa < wb ? -1 : wa > wb ? 1 : recent(a, b);
      return wa ? -1 : wb ? 1 : recent(a, b);
    });
  }
  function renderList() {
    if (toastConv && (convs.get(toastConv) || {}).status === 'open') hideToast(); // reopened meanwhile
    var ul = $('convs'), list = shownList();
    var focused = document.activeElement && ul.contains(document.activeElement) ? document.activeElement.getAttribute('data-conv-id') : null;
    ul.textContent = '';
    var total = 0;
    Object.keys(unread).forEach(function (k) { total += unread[k] || 0; });
    document.title = (total ? '(' + total + ') ' : '') + 'Confab console';
    if (!list.length) { ul.appendChild(el('li', 'muted', 'No ' + (filter === 'all' ? '' : filter + ' ') + 'conversations.')).style.padding = '12px 14px'; return; }
    list.forEach(function (c) {
      var li = el('li', lingering.has(c.id) && c.status !== filter ? 'gone' : null), b = el('button'), r1 = el('div', 'row'), r2 = el('div', 'snip');
      b.type = 'button'; b.setAttribute('data-conv-id', c.id);
      if (li.className) b.title = 'Now ' + c.status + ': listed under "' + (c.status === 'open' ? 'Open' : 'Closed') + '"';
      if (c.id === cur) b.setAttribute('aria-current', 'true');
      r1.appendChild(el('span', 'who', label(c)));
      if (c.handler === 'bot') { var bt = el('span', 'tag bot', 'Bot'); bt.title = botName(c) + ' answers this conversation'; r1.appendChild(bt); }
      if (c.qualified) r1.appendChild(el('span', 'tag q', 'qualified'));
      if (c.status === 'closed') r1.appendChild(el('span', 'tag', 'closed'));
      var since = waitingSince(c);
      if (since) {
        var w = el('span', 'tag wait');
        w.setAttribute('data-since', since); w.title = 'The visitor has been waiting for a reply since ' + fmt(since, true);
        drawWait(w, since); r1.appendChild(w);
      }
      if (unread[c.id]) { var u = el('span', 'unread', String(unread[c.id])); u.setAttribute('aria-label', unread[c.id] + ' unread'); r1.appendChild(u); }
      r1.appendChild(el('span', 'when', fmt(c.updatedAt)));
      var pm = realLast[c.id];
      if (typingUntil[c.id] > Date.now()) r2.appendChild(el('span', 'styping', 'typing…'));
      else if (streaming(c.id)) r2.appendChild(el('span', 'styping', botName(c) + ' is replying…'));
      else r2.textContent = pm ? prefix(pm) + text(pm) : pqBusy[c.id] || pq.indexOf(c.id) >= 0 ? '…' : 'No messages yet';
      b.appendChild(r1); b.appendChild(r2);
      b.onclick = function () { openConv(c.id, !narrow()); };
      li.appendChild(b); ul.appendChild(li);
      if (c.id === focused) b.focus();
    });
  }
  // A message as one line of text: its body, or the names of its files.
  function text(m) {
    var as = m.attachments || [];
    return m.body || (as.length ? (as.length > 1 ? 'Files: ' : 'File: ') + as.map(function (a) { return a.filename; }).join(', ') : '');
  }
  function narrow() { return !!window.matchMedia && window.matchMedia('(max-width: 600px)').matches; }
  Array.prototype.forEach.call(document.querySelectorAll('.filters button'), function (b) {
    b.onclick = function () {
      filter = b.getAttribute('data-f'); lingering.clear();
      Array.prototype.forEach.call(document.querySelectorAll('.filters button'), function (x) { x.setAttribute('aria-pressed', String(x === b)); });
      renderList();
    };
  });

  $('sort').value = sortBy;
  $('sort').onchange = function () { sortBy = this.value === 'waiting' ? 'waiting' : 'recent'; ls('confab.console.sort', sortBy); renderList(); };

  // ---- one conversation (on phones a screen of its own: Back returns to the list)
  function openConv(id, focusReply) {
    cur = id;
    $('app').classList.add('show-conv');
    $('empty').hidden = true; $('conv').hidden = false;
    $('msgs').textContent = ''; $('typing').textContent = '';
    renderHead(); renderList(); renderTray(); fileErr('');
    var ch = chats.get(id);
    if (!ch) { ch = { ids: new Set(), list: [], loaded: false, buffer: [] }; chats.set(id, ch); }
    ch.list.forEach(function (m) { drawMsg(m); });
    Object.keys(drafts[id] || {}).forEach(function (s) { if (drafts[id][s].el) $('msgs').appendChild(drafts[id][s].el); });
    Object.keys(pending).forEach(function (k) { var p = pending[k]; if (p.conv === id) $('msgs').appendChild(p.el); });
    scroll();
    if (!ch.loaded && !ch.loading) loadHistory(id, ch);
    else markRead(id);
    if (focusReply !== false) $('replyText').focus();
  }
  function leaveConv() {
    var id = cur;
    cur = null;
    $('app').classList.remove('show-conv'); $('app').classList.remove('show-side');
    $('conv').hidden = true; $('empty').hidden = false; $('typing').textContent = '';
    renderList(); focusItem(id);
  }
  function focusItem(id) {
    var b = id && document.querySelector('#convs [data-conv-id="' + (window.CSS && CSS.escape ? CSS.escape(id) : id) + '"]');
    if (b) { b.focus(); b.scrollIntoView({ block: 'nearest' }); }
  }
  $('backBtn').onclick = leaveConv;
  function toggleSide(on) {
    $('app').classList.toggle('show-side', on);
    $('detailsBtn').setAttribute('aria-expanded', String(on));
    if (on) $('sideClose').focus(); else if (!$('conv').hidden) $('detailsBtn').focus();
  }
  $('detailsBtn').onclick = function () { toggleSide(!$('app').classList.contains('show-side')); };
  $('sideClose').onclick = function () { toggleSide(false); };
  function loadHistory(id, ch) {
    ch.loading = true;
    var after = ch.list.length ? ch.list[ch.list.length - 1].id : null;
    function page() {
      return api('GET', '/v1/tenant/conversations/' + encodeURIComponent(id) + '/messages?limit=200' + (after ? '&after=' + encodeURIComponent(after) : ''))
        .then(function (r) {
          var ms = r.messages || [];
          ms.forEach(function (m) { settleDraft(m); addMsg(m, true); });
          if (ms.length) { after = ms[ms.length - 1].id; ms.forEach(noteReal); }
          if (r.hasMore && ms.length) return page();
        });
    }
    page().then(function () {
      ch.loaded = true; ch.loading = false;
      var buf = ch.buffer; ch.buffer = [];
      buf.forEach(function (m) { addMsg(m, true); }); // live ones that raced the history load
      markRead(id);
    }, function () { ch.loading = false; });
  }
  function addMsg(m, fromHistory) {
    var ch = chats.get(m.conversationId);
    if (!ch) return;
    if (!fromHistory && !ch.loaded) { if (ch.loading) ch.buffer.push(m); return; } // history will include it
    if (ch.ids.has(m.id)) return;
    ch.ids.add(m.id); ch.list.push(m);
    if (m.conversationId === cur) {
      var p = m.clientMessageId && pending[m.clientMessageId];
      if (p) dropPending(p);
      drawMsg(m); scroll();
      markRead(m.conversationId);
    }
  }
  function seqOf(id) { var m = /_(\d+)$/.exec(id || ''); return m ? +m[1] : 0; }
  // Read receipts: the open, visible conversation is read up to its newest message; the
  // server keeps the cursor (forward only) and tells every agent the new unread count.
  function markRead(id) {
    var ch = chats.get(id), c = convs.get(id);
    if (id !== cur || document.hidden || !ch || !ch.loaded || !ch.list.length || !c) return;
    var last = ch.list[ch.list.length - 1].id;
    if (seqOf(last) <= seqOf(c.agentLastReadId)) return;
    c.agentLastReadId = last; c.unreadByAgent = 0; unread[id] = 0; renderList();
    if (ws && wsReady) ws.send(JSON.stringify({ type: 'read', conversationId: id, messageId: last }));
    else api('POST', '/v1/tenant/conversations/' + encodeURIComponent(id) + '/read', { messageId: last }).then(upsert, function () {});
  }
  function drawMsg(m) {
    var k = (m.author && m.author.kind) || 'system';
    var d = el('div', 'msg ' + (k === 'visitor' ? 'in' : k === 'system' ? 'system' : k === 'bot' ? 'out bot' : 'out'));
    d.setAttribute('data-id', m.id);
    var c = convs.get(m.conversationId);
    if (k !== 'system') d.appendChild(el('div', 'a', (m.author && m.author.name) || (k === 'visitor' && c ? label(c) : k === 'bot' ? 'Bot' : 'Agent')));
    var as = m.attachments || [];
    d.appendChild(linkify(el('div', 'b'), m.body));
    if (as.length) d.appendChild(attList(as));
    if (k !== 'system') d.appendChild(el('div', 'm', fmt(m.createdAt) + (m.meta && m.meta.mode ? ' · ' + m.meta.mode : '')));
    var msgs = $('msgs');
    msgs.insertBefore(d, msgs.querySelector('.draft, .pending'));
  }
  function scroll() { var m = $('msgs'); m.scrollTop = m.scrollHeight; }
  function renderHead() {
    var c = convs.get(cur);
    if (!c) return;
    $('ctitle').textContent = label(c);
    $('cstatus').textContent = c.status; $('cstatus').className = 'tag ' + c.status;
    $('closeBtn').hidden = c.status !== 'open';
    $('reopenBtn').hidden = c.status === 'open';
    var bot = c.handler === 'bot';
    $('chandler').textContent = bot ? 'Bot' + (knownBot(c) ? ' · ' + knownBot(c) : '') : 'Human';
    $('chandler').className = 'tag ' + (bot ? 'bot' : 'human');
    $('takeBtn').hidden = !bot;
    $('giveBtn').hidden = bot || !c.assistantId;
    $('hint').textContent = c.status === 'closed' ? 'This conversation is closed. Replying reopens it.'
      : bot ? botName(c) + ' (bot) answers this conversation. Replying takes it over.' : '';
    var dl = $('ctx'); dl.textContent = '';
    function row(k, v) { if (v == null || v === '') return; dl.appendChild(el('dt', null, k)); dl.appendChild(el('dd', null, String(v))); }
    var vc = c.visitorContext || {}, ct = c.contact || {};
    row('Visitor', c.visitorId); row('Status', c.status); row('Qualified', c.qualified ? 'yes' : 'no');
    row('Handler', c.handler); row('Assistant', c.assistantId && (knownBot(c) ? knownBot(c) + ' (' + c.assistantId + ')' : c.assistantId));
    row('Name', ct.name); row('Email', ct.email); row('Customer', c.customerId); row('Locale', c.locale);
    row('Page', vc.pageUrl); row('Title', vc.pageTitle); row('Referrer', vc.referrer);
    if (vc.utm) Object.keys(vc.utm).forEach(function (k) { row('utm_' + k, vc.utm[k]); });
    Object.keys(c.variables || {}).forEach(function (k) { var v = c.variables[k]; row(k, typeof v === 'object' ? JSON.stringify(v) : v); });
    row('Started', fmt(c.createdAt, true)); row('Updated', fmt(c.updatedAt, true));
    dl.setAttribute('data-conv-id', c.id);
  }

  // ---- replies: one clientMessageId per reply, reused by retries (idempotent)
  // Files still uploading: the reply leaves when they are done (without those that failed).
  function sendReply() {
    var t = $('replyText').value.trim(), conv = cur, us = trays[conv] || [];
    if ((!t && !us.length) || !conv) return;
    if (us.some(function (u) { return !u.a; })) {
      if (!$('sendBtn').disabled) {
        $('sendBtn').disabled = true;
        Promise.all(us.map(function (u) { return u.p; })).then(function () { $('sendBtn').disabled = false; if (cur === conv) sendReply(); });
      }
      return;
    }
    var atts = us.map(function (u) { return u.a; });
    trays[conv] = []; renderTray(); fileErr('');
    $('replyText').value = '';
    var p = { c: uuid(), conv: conv, text: t, a: atts };
    p.el = el('div', 'msg out pending');
    p.el.setAttribute('data-client-id', p.c);
    p.el.appendChild(linkify(el('div', 'b'), t));
    if (atts.length) p.el.appendChild(attList(atts));
    pending[p.c] = p;
    $('msgs').appendChild(p.el); scroll();
    deliver(p);
  }
  function setState(p, s, err) {
    p.state = s; p.el.classList.toggle('failed', s === 'failed');
    var o = p.el.querySelector('.m, .retry'); if (o) o.remove();
    if (s === 'failed') {
      var b = el('button', 'retry', (err ? err + ' — ' : 'Not sent — ') + 'Retry'); b.type = 'button';
      b.onclick = function () { deliver(p); };
      p.el.appendChild(b);
    } else p.el.appendChild(el('div', 'm', s === 'sent' ? 'Sent' : 'Sending…'));
  }
  function deliver(p) {
    setState(p, 'sending');
    if (wsReady) {
      p.ws = true;
      ws.send(JSON.stringify({ type: 'reply', conversationId: p.conv, message: p.text, clientMessageId: p.c, attachments: ids(p) }));
      clearTimeout(p.timer);
      p.timer = setTimeout(function () { httpReply(p); }, 8000);
    } else httpReply(p);
  }
  function ids(p) { return p.a.length ? p.a.map(function (a) { return a.id; }) : undefined; }
  function httpReply(p) {
    clearTimeout(p.timer); p.ws = false;
    if (!pending[p.c]) return;
    api('POST', '/v1/tenant/conversations/' + encodeURIComponent(p.conv) + '/messages', { message: p.text, clientMessageId: p.c, attachments: ids(p) })
      .then(function (r) { acked(p, r.messageId); }, function (e) { failed(p, e.message); });
  }
  function acked(p, id) {
    if (!p || !pending[p.c]) return;
    clearTimeout(p.timer); p.ws = false; p.id = id;
    var ch = chats.get(p.conv);
    if (ch && ch.ids.has(id)) dropPending(p); else setState(p, 'sent');
  }
  function failed(p, msg) { if (!pending[p.c]) return; clearTimeout(p.timer); p.ws = false; setState(p, 'failed', msg); }
  function dropPending(p) { clearTimeout(p.timer); delete pending[p.c]; p.el.remove(); }

  $('reply').onsubmit = function (e) { e.preventDefault(); sendReply(); };
  $('replyText').addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendReply(); }
  });
  $('replyText').addEventListener('input', function () {
    var now = Date.now();
    if (!cur || !wsReady || !this.value.trim() || now - lastTypingSent < 2000) return;
    lastTypingSent = now;
    ws.send(JSON.stringify({ type: 'typing', conversationId: cur }));
  });
  // Close (with an Undo for 8 s) and Reopen; both answer the conversation as it now is.
  function setConvStatus(id, action, b) {
    if (b) b.disabled = true;
    return api('POST', '/v1/tenant/conversations/' + encodeURIComponent(id) + '/' + action)
      .then(function (c) { upsert(c); renderList(); renderHead(); return c; })
      .catch(function (e) { alert('Could not ' + action + ': ' + e.message); })
      .then(function (c) { if (b) b.disabled = false; return c; });
  }
  var toastConv = null, toastT = 0;
  $('closeBtn').onclick = function () {
    var id = cur;
    setConvStatus(id, 'close', this).then(function (c) {
      if (!c) return;
      toastConv = id; $('toast').hidden = false;
      clearTimeout(toastT); toastT = setTimeout(hideToast, 8000);
    });
  };
  $('reopenBtn').onclick = function () { setConvStatus(cur, 'reopen', this); };
  $('undoBtn').onclick = function () { var id = toastConv; hideToast(); if (id) setConvStatus(id, 'reopen'); };
  function hideToast() { clearTimeout(toastT); toastConv = null; $('toast').hidden = true; }

  // ---- attachments: a file uploads into the open conversation as soon as it is picked,
  // dropped or pasted (progress in the tray above the reply box, one tray per
  // conversation); the reply names the ids. Files show as thumbnails (raster images, through
  // the signed link) or download chips.
  var IMG = /^image\/(png|jpeg|gif|webp)$/, trays = {}, dragN = 0;
  function fmtSize(n) { return n < 1024 ? n + ' B' : n < 1048576 ? Math.round(n / 1024) + ' KB' : (n / 1048576).toFixed(1).replace(/\.0$/, '') + ' MB'; }
  function fileErr(t) { $('fileErr').textContent = t; }
  function renderTray() {
    var t = $('tray'), us = trays[cur] || [];
    t.textContent = '';
    us.forEach(function (u) { t.appendChild(u.el); });
    t.hidden = !us.length;
  }
  function addFiles(list) {
    if (!cur || !list || !list.length) return;
    var errs = [], us = trays[cur] = trays[cur] || [];
    Array.prototype.forEach.call(list, function (f) {
      if (us.length >= 10) errs.push('Up to 10 files per reply: \u201c' + f.name + '\u201d was not added.');
      else if (!f.size) errs.push('\u201c' + f.name + '\u201d is empty.');
      else upload(cur, f);
    });
    fileErr(errs.join(' ')); renderTray();
  }
  function upload(conv, f) {
    var u = { conv: conv, f: f, el: el('div', 'up'), bar: el('progress') }, x = el('button', null, '\u00d7');
    u.el.setAttribute('role', 'listitem');
    u.bar.max = 100; u.bar.value = 0; u.bar.setAttribute('aria-label', 'Uploading ' + f.name);
    x.type = 'button'; x.title = 'Remove'; x.setAttribute('aria-label', 'Remove ' + f.name);
    x.onclick = function () { dropUp(u); $('replyText').focus(); };
    var n = el('span', null, f.name); n.title = f.name;
    u.el.appendChild(n); u.el.appendChild(el('small', null, fmtSize(f.size))); u.el.appendChild(u.bar); u.el.appendChild(x);
    trays[conv].push(u);
    u.p = new Promise(function (ok, ko) {
      var r = u.x = new XMLHttpRequest();
      r.open('POST', '/v1/tenant/conversations/' + encodeURIComponent(conv) + '/attachments?filename=' + encodeURIComponent(f.name));
      r.setRequestHeader('Authorization', 'Bearer ' + token);
      r.upload.onprogress = function (e) { if (e.lengthComputable) u.bar.value = Math.round(100 * e.loaded / e.total); };
      r.onload = function () {
        var j = null; try { j = JSON.parse(r.responseText); } catch (e) {}
        if (r.status === 201 && j && j.id) return ok(j);
        var er = (j && j.error) || {}, e = new Error(er.message || 'HTTP ' + r.status); e.status = r.status;
        if (r.status === 401) signOut('Token rejected (' + (er.code || 401) + '). Paste a valid agent token.');
        ko(e);
      };
      r.onerror = r.onabort = function () { ko(new Error('the connection failed')); };
      r.send(f);
    }).then(function (a) { u.a = a; u.bar.remove(); u.el.classList.add('ok'); }, function (e) {
      if ((trays[conv] || []).indexOf(u) < 0) return; // removed
      dropUp(u);
      fileErr('\u201c' + f.name + '\u201d was not sent: ' + (e.status === 413 ? 'it is too large' : e.status === 415 ? 'this type of file is not allowed' : e.message) + '.');
    });
  }
  function dropUp(u) {
    trays[u.conv] = (trays[u.conv] || []).filter(function (v) { return v !== u; });
    if (u.x && !u.a) u.x.abort();
    if (u.conv === cur) renderTray();
  }
  function icon() { // a document
    var NS = 'http://www.w3.org/2000/svg', s = document.createElementNS(NS, 'svg'), p = document.createElementNS(NS, 'path');
    s.setAttribute('viewBox', '0 0 24 24'); s.setAttribute('aria-hidden', 'true'); s.setAttribute('class', 'fi');
    p.setAttribute('d', 'M6 2h8l6 6v12a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2zm7 1.5V9h5.5z'); p.setAttribute('fill', 'currentColor');
    s.appendChild(p); return s;
  }
  function attList(as) {
    var box = el('div', 'att');
    as.forEach(function (a) {
      var l, img;
      if (IMG.test(a.contentType) && a.url) {
        var url = a.url + (/\?/.test(a.url) ? '&' : '?') + 'disposition=inline';
        l = el('a', 'thumb'); l.href = url; l.target = '_blank'; l.rel = 'noopener noreferrer'; l.title = a.filename;
        img = el('img'); img.src = url; img.alt = a.filename;
        img.onload = function () { var m = $('msgs'); if (m.scrollHeight - m.scrollTop - m.clientHeight < img.offsetHeight + 80) scroll(); };
        l.appendChild(img);
      } else {
        l = el(a.url ? 'a' : 'span', 'file');
        if (a.url) { l.href = a.url; l.download = a.filename; l.setAttribute('aria-label', 'Download ' + a.filename + ', ' + fmtSize(a.size || 0)); }
        l.appendChild(icon()); l.appendChild(el('span', null, a.filename)); l.appendChild(el('small', null, fmtSize(a.size || 0)));
      }
      box.appendChild(l);
    });
    return box;
  }
  $('attachBtn').onclick = function () { fileErr(''); $('fileIn').click(); };
  $('fileIn').onchange = function () { addFiles(this.files); this.value = ''; };
  $('replyText').addEventListener('paste', function (e) {
    var fs = e.clipboardData && e.clipboardData.files;
    if (fs && fs.length) { e.preventDefault(); addFiles(fs); }
  });
  function dragged(e) { var t = e.dataTransfer && e.dataTransfer.types; return !!cur && !!t && Array.prototype.indexOf.call(t, 'Files') >= 0; }
  $('conv').addEventListener('dragenter', function (e) { if (dragged(e)) { dragN++; this.classList.add('drop'); } });
  $('conv').addEventListener('dragleave', function () { if (dragN && !--dragN) this.classList.remove('drop'); });
  $('conv').addEventListener('dragover', function (e) { if (dragged(e)) { e.preventDefault(); e.dataTransfer.dropEffect = 'copy'; } });
  $('conv').addEventListener('drop', function (e) {
    dragN = 0; this.classList.remove('drop');
    if (dragged(e)) { e.preventDefault(); addFiles(e.dataTransfer.files); }
  });

  // ---- assistants: who answers (handler), take over / give back, replies streaming live
  // The console learns assistants' names from their messages and deltas.
  function learnBot(a) { if (a && a.kind === 'bot' && a.id && a.name) botNames[a.id] = a.name; }
  function knownBot(c) { return c && c.assistantId && botNames[c.assistantId]; }
  function botName(c) { return knownBot(c) || 'The assistant'; }
  function setHandler(id, h, b) {
    b.disabled = true;
    api('POST', '/v1/tenant/conversations/' + encodeURIComponent(id) + '/handler', { handler: h })
      .then(function (c) { upsert(c); if (h !== 'bot') dropDrafts(id); renderList(); renderHead(); })
      .catch(function (e) { alert('Could not change who answers: ' + e.message); })
      .then(function () { b.disabled = false; });
  }
  $('takeBtn').onclick = function () { setHandler(cur, 'human', this); };
  $('giveBtn').onclick = function () { setHandler(cur, 'bot', this); };
  function streaming(id) { return Object.keys(drafts[id] || {}).some(function (s) { return drafts[id][s].el; }); }
  // A reply as it streams: a draft (by streamId) that the stored message with the same
  // meta.streamId replaces. Drafts are kept for every conversation, so one opened mid-reply
  // shows what came so far.
  function onDelta(d) {
    if (!d || !d.conversationId || !d.streamId) return;
    var ds = drafts[d.conversationId] = drafts[d.conversationId] || {}, x = ds[d.streamId], c = convs.get(d.conversationId);
    learnBot(d.author);
    if (x && !x.el) return; // its message is already here
    var fresh = !x;
    if (fresh) {
      x = ds[d.streamId] = { text: '', el: el('div', 'msg out bot draft') };
      x.el.setAttribute('data-stream-id', d.streamId);
      x.el.appendChild(el('div', 'a', (d.author && d.author.name) || botName(c)));
      x.el.appendChild(el('div', 'b'));
      x.el.appendChild(el('div', 'm', 'replying…'));
    }
    x.text += d.delta || '';
    x.el.querySelector('.b').textContent = x.text;
    clearTimeout(x.timer); x.timer = setTimeout(function () { dropDraft(d.conversationId, d.streamId); }, 60000);
    if (d.conversationId === cur) {
      if (fresh) $('msgs').insertBefore(x.el, $('msgs').querySelector('.pending'));
      scroll();
    }
    if (fresh) renderList();
  }
  function dropDraft(id, sid, keep) {
    var ds = drafts[id], x = ds && ds[sid];
    if (x) { clearTimeout(x.timer); if (x.el) x.el.remove(); }
    if (keep) (drafts[id] = ds || {})[sid] = {}; // done: a late delta makes no new draft
    else if (ds) delete ds[sid];
    if (x && x.el) renderList();
  }
  // A bot's stored message replaces its draft; the safe fallback discards every draft.
  function settleDraft(m) {
    if (!m.author || m.author.kind !== 'bot') return;
    learnBot(m.author);
    if (m.meta && m.meta.mode === 'safe_fallback') dropDrafts(m.conversationId);
    else if (m.meta && m.meta.streamId) dropDraft(m.conversationId, m.meta.streamId, true);
  }
  function dropDrafts(id) { Object.keys(drafts[id] || {}).forEach(function (s) { dropDraft(id, s); }); }

  // ---- tenant events (WS frames and HTTP polling share this path)
  function saveUnread() { renderList(); }
  // quiet: replayed while bootstrapping the polling cursor; state only, no unread counts.
  function onEvent(ev, quiet) {
    if (ev.offset != null) {
      var o = String(ev.offset);
      if (seenOff.has(o)) return;
      seenOff.add(o); offQ.push(o);
      if (offQ.length > 5000) seenOff.delete(offQ.shift());
      offset = o; ss(OK, o);
    }
    var d = ev.data, t = ev.type;
    if (t === 'conversation:new' || t === 'conversation:updated' || t === 'conversation:qualified') {
      var known = convs.has(d && d.id);
      upsert(d);
      if (d && d.handler === 'human') dropDrafts(d.id); // handed to people: the bot's reply is dropped
      renderList();
      if (t === 'conversation:new' && !known && !quiet && d && d.id) alertAgent(d.id, 'New conversation', label(d) + (d.visitorContext && d.visitorContext.pageTitle ? ' — ' + d.visitorContext.pageTitle : ''), d.createdAt);
    } else if (t === 'message:delta') {
      onDelta(d);
    } else if (t === 'message:new') {
      var c = convs.get(d.conversationId);
      settleDraft(d);
      // The assistant could not answer: people must (the handler is now human).
      if (!quiet && d.meta && d.meta.mode === 'safe_fallback') alertAgent(d.conversationId, (c ? label(c) : 'A visitor') + ' needs a person', text(d), d.createdAt);
      if (!isAuto(d)) { noteReal(d); resolved[d.conversationId] = d.id; }
      else if (realLast[d.conversationId]) resolved[d.conversationId] = d.id; // followed live: the preview stays
      if (!c) fetchConv(d.conversationId);
      else {
        if (!c.lastMessage || c.lastMessage.createdAt <= d.createdAt) c.lastMessage = d;
        if (c.updatedAt < d.createdAt) c.updatedAt = d.createdAt;
        if (d.author && (d.author.kind === 'visitor' || d.author.kind === 'agent')) statusChanged(c, 'open'); // both reopen
        if (resolved[c.id] !== c.lastMessage.id && isAuto(c.lastMessage)) queuePreview(c.id);
      }
      if (d.author && d.author.kind === 'visitor') {
        typingUntil[d.conversationId] = 0;
        if (d.conversationId === cur) $('typing').textContent = '';
        if (!quiet) unread[d.conversationId] = (unread[d.conversationId] || 0) + 1; // as the server counts; markRead clears it
        if (!quiet && !(c && c.handler === 'bot')) alertAgent(d.conversationId, c ? label(c) : 'New message', text(d), d.createdAt); // a bot answers it
      }
      addMsg(d, false);
      saveUnread();
      if (d.conversationId === cur) renderHead();
    } else if (t === 'conversation:read') {
      var rc = d && convs.get(d.conversationId);
      if (rc && d.reader === 'agent' && seqOf(d.messageId) >= seqOf(rc.agentLastReadId)) {
        rc.agentLastReadId = d.messageId; rc.unreadByAgent = d.unreadByAgent; unread[rc.id] = d.unreadByAgent; renderList();
      } else if (rc && d.reader === 'visitor') { rc.visitorLastReadId = d.messageId; if (rc.id === cur) renderHead(); }
    } else if (t === 'typing') {
      if (!d || !d.author || d.author.kind !== 'visitor') return;
      var until = Date.now() + 4000;
      typingUntil[d.conversationId] = until;
      if (d.conversationId === cur) $('typing').textContent = 'Visitor is typing…';
      renderList();
      clearTimeout(typingTimer);
      typingTimer = setTimeout(function () {
        if (cur && typingUntil[cur] <= Date.now()) $('typing').textContent = '';
        renderList();
      }, 4100);
    } else if (t && t.indexOf('conversation:') !== 0) {
      showCustom(ev);
    }
  }
  function fetchConv(id) {
    api('GET', '/v1/tenant/conversations/' + encodeURIComponent(id)).then(function (c) { upsert(c); renderList(); }).catch(function () {});
  }
  function showCustom(ev) {
    var li = el('li'), hd = el('div', 'row');
    li.setAttribute('data-offset', ev.offset || '');
    hd.appendChild(el('span', 'ty', ev.type));
    hd.appendChild(el('span', 'when', fmt(ev.createdAt || new Date().toISOString())));
    li.appendChild(hd);
    var cid = ev.conversationId || (ev.data && ev.data.conversationId);
    if (cid) { var a = el('button', null, 'conversation ' + String(cid).slice(0, 8)); a.type = 'button'; a.style.fontSize = '11px'; a.onclick = function () { openConv(cid); }; li.appendChild(a); }
    li.appendChild(el('pre', null, JSON.stringify(ev.data, null, 1)));
    var ul = $('events');
    ul.insertBefore(li, ul.firstChild);
    while (ul.children.length > 100) ul.removeChild(ul.lastChild);
  }
  function onReady(f, gaveAfter) {
    if (f.agent) { $('agent').textContent = f.agent.name || f.agent.id; me = f.agent.id; }
    if (f.tenantId) $('tenant').textContent = f.tenantId;
    if (f.recovered === false) reloadAll();
    else if (!gaveAfter) loadList(); // live-only subscription: pick up what changed before it started
  }
  function reloadAll() {
    chats.forEach(function (ch, id) { if (id !== cur) chats.delete(id); });
    loadList(null, true);
  }

  // ---- transport: WebSocket, with long-polling of /v1/tenant/events as the fallback
  function connect() {
    clearTimeout(wsTimer);
    if (ws || !token) return;
    var s, ready = false, gaveAfter = !!offset;
    try { s = new WebSocket(location.origin.replace(/^http/, 'ws') + '/v1/tenant/ws'); } catch (e) { startPolling(); return retry(); }
    ws = s;
    setConn(polling ? 'poll' : 'down', polling ? 'polling' : 'connecting…');
    var guard = setTimeout(function () { if (!ready) kill(s); }, 10000);
    s.onopen = function () {
      var a = { type: 'auth', token: token };
      if (offset) a.after = offset;
      s.send(JSON.stringify(a));
    };
    s.onmessage = function (e) {
      var f; try { f = JSON.parse(e.data); } catch (x) { return; }
      clearTimeout(pongT);
      if (f.type === 'ready') {
        ready = true; clearTimeout(guard); wsReady = true; tries = 0;
        stopPolling(); setConn('live', 'live'); startPing(); onReady(f, gaveAfter);
        team = {}; (f.agentsOnline || []).forEach(function (a) { team[a.agentId] = a; });
        if (away) s.send(JSON.stringify({ type: 'presence', status: 'away' })); // keep it across reconnects
        renderTeam();
      } else if (f.type === 'presence') {
        var a = f.data || {};
        if (a.status === 'offline') delete team[a.agentId]; else team[a.agentId] = a;
        renderTeam();
      } else if (f.type === 'ack') {
        acked(pending[f.clientMessageId], f.messageId);
      } else if (f.type === 'error') {
        for (var k in pending) if (pending[k].ws) { failed(pending[k], f.message || f.code); break; }
      } else if (f.type !== 'pong') onEvent(f);
    };
    s.onclose = function (e) {
      clearTimeout(guard);
      if (ws !== s) return;
      lost();
      if (e.code === 4401) { signOut('The server rejected the token (expired or invalid).'); return; }
      if (!ready) startPolling();
      retry();
    };
  }
  function kill(s) {
    if (ws !== s) return;
    lost(); s.onclose = s.onmessage = null;
    try { s.close(); } catch (e) {}
    startPolling(); retry();
  }
  function lost() {
    ws = null; wsReady = false; clearInterval(pingT); clearTimeout(pongT);
    setConn(polling ? 'poll' : 'down', polling ? 'polling' : 'reconnecting…');
    for (var k in pending) if (pending[k].ws) httpReply(pending[k]);
  }
  function retry() { clearTimeout(wsTimer); if (token) wsTimer = setTimeout(connect, jitter(Math.min(30000, 1000 * Math.pow(2, tries++)))); }
  function startPing() {
    clearInterval(pingT);
    pingT = setInterval(function () {
      if (!wsReady) return;
      var s = ws;
      s.send('{"type":"ping"}');
      clearTimeout(pongT);
      pongT = setTimeout(function () { kill(s); }, 10000);
    }, 20000);
  }
  function startPolling() {
    if (polling || !token) return;
    polling = true; pollErrs = 0; setConn('poll', 'polling');
    poll();
  }
  function stopPolling() { polling = false; if (pollAbort) pollAbort.abort(); pollAbort = null; }
  function poll() {
    if (!polling) return;
    var ac = new AbortController(), t0 = Date.now();
    pollAbort = ac;
    // Without a cursor the stream starts at the oldest retained event: skim it quietly
    // (no waiting, no unread counts) until caught up, the list already came over HTTP.
    if (!offset) quietPoll = true;
    api('GET', '/v1/tenant/events?limit=200&wait=' + (quietPoll ? 0 : 25) + (offset ? '&after=' + encodeURIComponent(offset) : ''), null, ac.signal)
      .then(function (r) {
        if (!polling || pollAbort !== ac) return;
        pollErrs = 0; setConn('poll', 'polling');
        if (r.recovered === false) reloadAll();
        var evs = r.events || [], q = quietPoll;
        evs.forEach(function (ev) { onEvent(ev, q); });
        if (r.nextCursor) { offset = String(r.nextCursor); ss(OK, offset); }
        var more = r.hasMore != null ? r.hasMore : evs.length >= 200;
        if (!more) quietPoll = false;
        setTimeout(poll, more ? 0 : Math.max(0, 1000 - (Date.now() - t0)));
      }, function (e) {
        if (!polling || pollAbort !== ac || e.status === 401) return;
        pollErrs++; setConn('down', 'offline');
        setTimeout(poll, e.retryAfter ? e.retryAfter * 1000 : jitter(Math.min(30000, 1000 * Math.pow(2, pollErrs))));
      });
  }
  document.addEventListener('visibilitychange', function () {
    if (document.hidden) return;
    if (!wsReady && token) { tries = 0; connect(); }
    if (cur) markRead(cur);
  });

  // ---- presence: who of the team is online; this agent may set itself away
  var team = {}, away = false;
  function renderTeam() {
    var ul = $('team'); ul.textContent = '';
    Object.keys(team).sort().forEach(function (id) {
      var a = team[id], li = el('li', a.status);
      li.title = (a.name || a.agentId) + ' — ' + a.status;
      li.textContent = (a.name || a.agentId) + (id === me ? ' (you)' : '');
      ul.appendChild(li);
    });
    $('awayBtn').textContent = away ? 'Set online' : 'Set away';
    $('awayBtn').setAttribute('aria-pressed', String(away));
  }
  $('awayBtn').onclick = function () {
    away = !away;
    if (ws && wsReady) ws.send(JSON.stringify({ type: 'presence', status: away ? 'away' : 'online' }));
    renderTeam();
  };

  // ---- webhooks: their delivery state needs the tenant's server key (GET /v1/tenant/webhooks
  // refuses agent tokens), entered by whoever operates the tenant and kept for this tab.
  var WK = 'confab.console.serverKey', whTimer = 0;
  function showWebhooks() {
    clearTimeout(whTimer);
    var key = ss(WK);
    $('whForm').hidden = !!key; $('whPanel').hidden = !key;
    if (!key || !token) return;
    fetch('/v1/tenant/webhooks', { headers: { Authorization: 'Bearer ' + key }, cache: 'no-store' })
      .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, status: r.status, j: j }; }); })
      .then(function (r) {
        if (!r.ok) {
          $('whErr').textContent = (r.j && r.j.error && r.j.error.message) || 'HTTP ' + r.status;
          if (r.status === 401 || r.status === 403) { ss(WK, null); showWebhooks(); }
          return;
        }
        $('whErr').textContent = '';
        var ul = $('webhooks'); ul.textContent = '';
        if (!r.j.webhooks.length) ul.appendChild(el('li', 'muted', 'No webhooks configured for this tenant.'));
        r.j.webhooks.forEach(function (w) {
          var li = el('li');
          var head = el('div', 'row');
          head.appendChild(el('span', 'url', w.url));
          head.appendChild(el('span', 'st' + (w.failing ? ' failing' : ''), w.failing ? 'failing' : 'ok'));
          li.appendChild(head);
          li.appendChild(el('div', 'muted', 'events: ' + (w.events ? w.events.join(', ') : 'all') + ' · position ' + w.offset + ' · lag ' + w.lag));
          var last = w.lastAttemptAt ? 'last attempt ' + fmt(w.lastAttemptAt, true) + ': ' + (w.lastError || ('HTTP ' + w.lastStatus)) : 'no attempt yet';
          li.appendChild(el('div', w.failing ? 'err' : 'muted', last));
          ul.appendChild(li);
        });
        $('whWhen').textContent = 'updated ' + fmt(Date.now(), false);
        whTimer = setTimeout(showWebhooks, 5000);
      }, function () { $('whErr').textContent = 'webhook state unavailable'; whTimer = setTimeout(showWebhooks, 10000); });
  }
  $('whForm').onsubmit = function (e) {
    e.preventDefault();
    var k = $('whKey').value.trim();
    if (!k) return;
    ss(WK, k); $('whKey').value = ''; showWebhooks();
  };
  $('whForget').onclick = function () { ss(WK, null); $('webhooks').textContent = ''; $('whErr').textContent = ''; showWebhooks(); };

  // ---- alerts: desktop notifications (after the agent opts in with the button, which asks
  // the browser's permission) and an optional short tone, for new conversations and visitor
  // messages — never for the conversation on screen while the tab is visible. Both
  // preferences are kept in localStorage.
  var NK = 'confab.console.notify', SK = 'confab.console.sound', HAS_N = 'Notification' in window;
  var actx = null, lastTone = 0;
  function notifyOn() { return HAS_N && Notification.permission === 'granted' && ls(NK) === '1'; }
  function soundOn() { return ls(SK) === '1'; }
  function renderAlerts() {
    var b = $('notifyBtn'), denied = HAS_N && Notification.permission === 'denied', on = notifyOn();
    b.hidden = !HAS_N || !token;
    b.textContent = denied ? 'Notifications blocked' : on ? 'Notifications on' : 'Notify me';
    b.title = denied ? 'Notifications are blocked for this site in the browser\'s settings' : on ? 'Click to stop desktop notifications' : 'Desktop notifications for new conversations and visitor messages';
    b.setAttribute('aria-pressed', String(on)); b.disabled = denied;
    var sb = $('soundBtn');
    sb.hidden = !token || !(window.AudioContext || window.webkitAudioContext);
    sb.textContent = soundOn() ? 'Sound on' : 'Sound off';
    sb.setAttribute('aria-pressed', String(soundOn()));
  }
  $('notifyBtn').onclick = function () {
    if (notifyOn()) { ls(NK, '0'); renderAlerts(); return; }
    // Older Safari takes a callback and returns nothing; newer browsers return a promise.
    new Promise(function (done) { var r = Notification.requestPermission(done); if (r && r.then) r.then(done); })
      .then(function (p) { if (p === 'granted') ls(NK, '1'); renderAlerts(); });
  };
  $('soundBtn').onclick = function () {
    ls(SK, soundOn() ? '0' : '1'); renderAlerts();
    if (soundOn()) tone(true); // a sample; this click also lets the page play audio
  };
  // Browsers start audio only after a user gesture: wake the context at the first one.
  ['pointerdown', 'keydown'].forEach(function (t) {
    document.addEventListener(t, function () { if (soundOn() && !actx) audio(); }, { once: true, capture: true });
  });
  function audio() {
    var A = window.AudioContext || window.webkitAudioContext;
    if (!actx && A) try { actx = new A(); } catch (e) {}
    if (actx && actx.state === 'suspended' && actx.resume) actx.resume().catch(function () {});
    return actx;
  }
  // A short two-note chime made with an oscillator: no audio file to fetch.
  function tone(sample) {
    var now = Date.now(), a;
    if ((!sample && now - lastTone < 1500) || !(a = audio())) return;
    if (!sample) lastTone = now;
    var o = a.createOscillator(), g = a.createGain(), t = a.currentTime;
    o.type = 'sine';
    o.frequency.setValueAtTime(880, t); o.frequency.setValueAtTime(1320, t + 0.09);
    g.gain.setValueAtTime(0.0001, t);
    g.gain.exponentialRampToValueAtTime(0.2, t + 0.02);
    g.gain.exponentialRampToValueAtTime(0.0001, t + 0.3);
    o.connect(g); g.connect(a.destination);
    o.start(t); o.stop(t + 0.32);
  }
  function alertAgent(id, title, body, at) {
    if (id === cur && !document.hidden) return;                 // on screen: the agent sees it
    if (at && Date.now() - Date.parse(at) > 10 * 60000) return; // a replay of old events
    if (notifyOn()) {
      try {
        // One notification per conversation (tag): a burst replaces, it does not pile up.
        var n = new Notification(title, { body: String(body || '').slice(0, 200), tag: 'confab:' + id });
        n.onclick = function () { try { window.focus(); } catch (e) {} openConv(id); n.close(); };
      } catch (e) { /* e.g. Android Chrome only notifies through a service worker */ }
    }
    if (soundOn()) tone();
  }

  // ---- keyboard: j / k open the next / previous conversation of the list, Enter goes to
  // the reply box, Escape leaves it, ? shows the shortcuts. Not while typing in a field.
  document.addEventListener('keydown', function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing || $('app').hidden) return;
    var t = e.target, tag = t && t.tagName, typing = tag === 'INPUT' || tag === 'TEXTAREA' || tag === 'SELECT' || (t && t.isContentEditable);
    if (e.key === 'Escape') {
      if (!$('help').hidden) { e.preventDefault(); showHelp(false); }
      else if (t === $('replyText')) { e.preventDefault(); t.blur(); focusItem(cur); }
      else if ($('app').classList.contains('show-side')) toggleSide(false);
      return;
    }
    if (typing || !$('help').hidden && e.key !== '?') return;
    if (e.key === 'j' || e.key === 'k') {
      var list = shownList(), i = -1;
      for (var x = 0; x < list.length; x++) if (list[x].id === cur) i = x;
      var next = list[i < 0 ? 0 : Math.max(0, Math.min(list.length - 1, i + (e.key === 'j' ? 1 : -1)))];
      if (!next) return;
      e.preventDefault();
      if (next.id !== cur) openConv(next.id, false);
      focusItem(next.id);
    } else if (e.key === 'Enter' && cur && !$('conv').hidden) {
      // On a button or link Enter activates it — except on the open conversation's list item.
      if ((tag === 'BUTTON' || tag === 'A') && !(t.getAttribute('data-conv-id') === cur)) return;
      e.preventDefault(); $('replyText').focus();
    } else if (e.key === '?') {
      e.preventDefault(); showHelp($('help').hidden);
    }
  });
  function showHelp(on) {
    $('help').hidden = !on;
    if (on) $('helpClose').focus();
  }
  $('helpClose').onclick = function () { showHelp(false); };
  $('help').onclick = function (e) { if (e.target === this) showHelp(false); };

  // ---- links in messages: only http(s) URLs (and www. → https), built as DOM nodes — the
  // text is never parsed as HTML; anything else (javascript:, data:, …) stays plain text.
  var URL_RE = /\b(?:https?:\/\/|www\.)[^\s<>"]+/gi;
  function count(s, ch) { return s.split(ch).length - 1; }
  function linkify(parent, text) {
    text = String(text == null ? '' : text);
    var at = 0, m;
    URL_RE.lastIndex = 0;
    while ((m = URL_RE.exec(text))) {
      var u = m[0];
      // Trailing punctuation ends the sentence, not the link; a ")" stays when it closes a "(" of the URL.
      while (/[.,;:!?'\])}*]$/.test(u) && !(/\)$/.test(u) && count(u, '(') >= count(u, ')'))) u = u.slice(0, -1);
      var href = /^www\./i.test(u) ? 'https://' + u : u, ok = false;
      try { ok = /^https?:$/.test(new URL(href).protocol) && u.length > (/^www\./i.test(u) ? 4 : u.indexOf('//') + 2); } catch (e) {}
      if (!ok) continue;
      if (m.index > at) parent.appendChild(document.createTextNode(text.slice(at, m.index)));
      var a = document.createElement('a');
      a.href = href; a.textContent = u; a.target = '_blank'; a.rel = 'noopener noreferrer nofollow';
      parent.appendChild(a);
      at = m.index + u.length;
      URL_RE.lastIndex = at;
    }
    if (at < text.length) parent.appendChild(document.createTextNode(text.slice(at)));
    return parent;
  }

  // ---- start: token from #token=… (then removed from the address bar) or sessionStorage
  if (narrow()) $('replyText').placeholder = 'Write a reply…';
  var m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) { history.replaceState(null, '', location.pathname + location.search); signIn(decodeURIComponent(m[1])); }
  else if (ss(TK)) signIn(ss(TK));
  else $('login').hidden = false;
})();
