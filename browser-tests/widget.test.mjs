// Browser tests for the widget (/widget.js, /demo) and the agent console (/console).
//
// Starts the real gateway binary on 127.0.0.1:0 with a temporary config and the memory
// store, learns its address from the `listening on http://ADDR` log line, and drives
// Debian's Chromium through playwright-core. Every wait is bounded and waits for a real
// condition (an element, a text, a request); nothing sleeps and hopes.
//
// Run: cd browser-tests && npm ci && node --test
// Env: CONFAB_BIN (gateway binary), CHROMIUM (browser, default /usr/bin/chromium).
// The assets are compiled into the binary: rebuild it after changing gateway/assets/.
// (Serving them with page.route instead does not work: Chromium treats a route-fulfilled
// document as public and blocks its WebSocket to 127.0.0.1 by Local Network Access rules.)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { chromium } from 'playwright-core';
import { CHROME_ARGS, START_TIMEOUT, WAIT, agentJwt, docShot, reportCspViolations, shot, startGateway } from './harness.mjs';

const PK = 'pk_live_0123456789abcdef0123456789abcdef';
const PK_OFF = 'pk_live_fedcba9876543210fedcba9876543210';
const AGENT_SECRET = 'browser-tests-agent-secret-3f9a1c';
const AGENT_SECRET_OFF = 'browser-tests-agent-secret-offline-77d2';
const SERVER_KEY = 'browser-tests-server-key-5b1e';
const PK_TEAM = 'pk_live_0000000000000000000000000000beef';
const AGENT_SECRET_TEAM = 'browser-tests-agent-secret-team-41aa';
// The triage tenant answers a conversation's first message automatically (a bot message
// with meta.mode "flow"); its visitors are mostly driven over the HTTP API.
const PK_TRIAGE = 'pk_live_00000000000000000000000000007a9e';
const AGENT_SECRET_TRIAGE = 'browser-tests-agent-secret-triage-8c3d';
const AUTO_REPLY = 'Thanks for writing! An agent will be with you shortly.';

const LIMITS = `
[tenants.rate_limits]
sessions_per_hour_per_ip = 10000
messages_per_hour_per_ip = 10000
messages_per_minute_per_session = 1000
config_per_minute_per_ip = 10000
polls_per_minute_per_session = 10000
events_per_minute_per_session = 10000
`;

const CONFIG = `
allowed_origins = []
session_secret = "browser-tests-session-secret-0123456789abcdef"

[[tenants]]
id = "demo"
name = "Demo Inc"
public_key = "${PK}"
agent_secret = "${AGENT_SECRET}"
server_key = "${SERVER_KEY}"
greeting = "Hi there! How can we help?"
require_init_challenge = true
min_elapsed_ms = 800
telemetry_sample_rate = 1.0

[tenants.branding]
primary_color = "#10A37F"
position = "bottom-right"
label = "Chat with us"

[tenants.availability]
mode = "always"
${LIMITS}
__WEBHOOKS__
[[tenants.intents]]
name = "billing"
display_label = "Billing question"
examples = ["Where is my invoice?"]

[[tenants.quick_questions]]
question = "What are your prices?"
page_type = "pricing"
intent_name = "billing"

[[tenants]]
id = "after-hours"
name = "After Hours Ltd"
public_key = "${PK_OFF}"
agent_secret = "${AGENT_SECRET_OFF}"
server_key = "browser-tests-server-key-offline"
greeting = "Hello!"
require_init_challenge = true
min_elapsed_ms = 800

[tenants.branding]
primary_color = "#5B21B6"
position = "bottom-left"
label = "Contact us"

[tenants.availability]
mode = "offline"
${LIMITS}
[[tenants]]
id = "team"
name = "Team Co"
public_key = "${PK_TEAM}"
agent_secret = "${AGENT_SECRET_TEAM}"
server_key = "browser-tests-server-key-team"
min_elapsed_ms = 800

[tenants.availability]
mode = "always"
require_agent = true
${LIMITS}
[[tenants]]
id = "triage"
name = "Triage Co"
public_key = "${PK_TRIAGE}"
agent_secret = "${AGENT_SECRET_TRIAGE}"
server_key = "browser-tests-server-key-triage"
greeting = "Hello from Triage Co"
auto_reply = "${AUTO_REPLY}"
require_init_challenge = false
min_elapsed_ms = 0
${LIMITS}`;

// ---------------------------------------------------------------- helpers

let gw, browser, hostServer, HOST; // HOST: a second loopback origin serving host pages
const HOOK_SECRET = 'browser-tests-webhook-secret-9c2e';
let hookServer, hookUrl, hookStatus = 200; // the demo tenant's webhook receiver and what it answers
const hookHits = [];
const hostPages = new Map();
const pageErrors = [];

async function newPage(opts = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'en-US', ...opts });
  ctx.setDefaultTimeout(WAIT);
  await ctx.addInitScript(reportCspViolations);
  const page = await ctx.newPage();
  watch(page);
  return page;
}
function watch(page) {
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !/Failed to load resource|WebSocket/.test(m.text())) pageErrors.push(`${page.url()}: console: ${m.text()}`); });
}

/** A host page on a foreign origin with the widget tag pointing at the gateway. */
function hostPage(pk, { css = '', extra = '' } = {}) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Shop host page</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>${css}</style></head>
<body><h1>Shop</h1><p>Some host content.</p><div class="box">A host div</div>${extra}
<script src="${gw.url}/widget.js" data-pk="${pk}" defer></script></body></html>`;
}
/** Host pages live on their own origin (another port), so the widget runs cross-origin. */
function serveHost(path, html) { hostPages.set(path, html); }
function startHostServer() {
  hostServer = createServer((req, res) => {
    const html = hostPages.get(new URL(req.url, 'http://x').pathname);
    res.writeHead(html ? 200 : 404, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(html || 'not found');
  });
  return new Promise((ok) => hostServer.listen(0, '127.0.0.1', () => { HOST = `http://127.0.0.1:${hostServer.address().port}`; ok(); }));
}

/** Widget handles: Playwright CSS locators pierce the open shadow root. */
function widget(page) {
  return {
    launcher: page.locator('confab-widget .launch'),
    panel: page.locator('confab-widget .panel'),
    input: page.locator('confab-widget .compose textarea'),
    typing: page.locator('confab-widget .typing'),
    badge: page.locator('confab-widget .badge'),
    confirmed: page.locator('confab-widget .msg[data-id]'),
    mine: (text) => page.locator('confab-widget .msg.me[data-id]', { hasText: text }),
    fromAgent: (text) => page.locator('confab-widget .msg.agent[data-id]', { hasText: text }),
  };
}
async function openWidget(page) {
  const w = widget(page);
  await w.launcher.waitFor({ state: 'visible' });
  if (!(await w.panel.isVisible())) await w.launcher.click();
  await w.panel.waitFor({ state: 'visible' });
  return w;
}
async function sendFromWidget(page, text) {
  const w = widget(page);
  await w.input.fill(text);
  await w.input.press('Enter');
  await w.mine(text).waitFor();
}
/** Ids and texts of the confirmed messages the widget shows, in order. */
function widgetMessages(page) {
  return page.evaluate(() => Array.from(document.querySelector('confab-widget').shadowRoot.querySelectorAll('.msg[data-id]'))
    .map((e) => ({ id: e.getAttribute('data-id'), text: e.querySelector('.body').textContent })));
}
async function openConsole(jwt) {
  const page = await newPage();
  await page.goto(`${gw.url}/console#token=${jwt}`);
  await page.locator('#conn', { hasText: 'live' }).waitFor();
  return page;
}
function convItem(consolePage, text) {
  return consolePage.locator('#convs [data-conv-id]', { hasText: text });
}
async function consoleReply(consolePage, text) {
  await consolePage.locator('#replyText').fill(text);
  await consolePage.locator('#replyText').press('Enter');
  await consolePage.locator('#msgs .msg.out[data-id]', { hasText: text }).waitFor();
}
async function api(method, path, body, token) {
  const r = await fetch(gw.url + path, {
    method, headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: body ? JSON.stringify(body) : undefined, signal: AbortSignal.timeout(WAIT),
  });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : null };
}

/** A webhook receiver: checks each delivery's signature, answers `hookStatus`. */
function startHookServer() {
  hookServer = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const sig = Object.fromEntries(String(req.headers['x-confab-signature'] || '').split(',').map((p) => p.split('=', 2)));
      const expected = createHmac('sha256', HOOK_SECRET).update(`${sig.t}.`).update(body).digest('hex');
      hookHits.push({ ok: sig.v1 === expected, status: hookStatus, body: body.toString() });
      res.writeHead(hookStatus); res.end();
    });
  });
  return new Promise((ok) => hookServer.listen(0, '127.0.0.1', () => { hookUrl = `http://127.0.0.1:${hookServer.address().port}/confab-events`; ok(); }));
}

before(async () => {
  await startHookServer();
  gw = await startGateway(CONFIG.replace('__WEBHOOKS__', `[[tenants.webhooks]]\nurl = "${hookUrl}"\nsecret = "${HOOK_SECRET}"\n`), 'gateway');
  await startHostServer();
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: CHROME_ARGS, timeout: START_TIMEOUT });
});
after(async () => {
  if (browser) await browser.close();
  if (gw) await gw.stop();
  if (hostServer) hostServer.close();
  if (hookServer) hookServer.close();
});

// ---------------------------------------------------------------- scenarios

test('gateway serves the widget, the demo page and the console', { timeout: 30_000 }, async () => {
  const js = await fetch(`${gw.url}/widget.js`, { signal: AbortSignal.timeout(WAIT) });
  assert.equal(js.status, 200, 'GET /widget.js');
  assert.match(js.headers.get('content-type') || '', /javascript/);
  assert.ok((await js.text()).length <= 64 * 1024, 'widget.js stays within 64 KB');
  const demo = await fetch(`${gw.url}/demo`, { signal: AbortSignal.timeout(WAIT) });
  assert.equal(demo.status, 200, 'GET /demo');
  const html = await demo.text();
  assert.match(html, new RegExp(`data-pk="${PK}"`), 'the demo page carries the tenant public key');
  const con = await fetch(`${gw.url}/console`, { signal: AbortSignal.timeout(WAIT) });
  assert.equal(con.status, 200, 'GET /console');
  assert.match(con.headers.get('content-type') || '', /text\/html/);
});

test('the pages\' Content-Security-Policy blocks nothing they use', { timeout: 60_000 }, async () => {
  const jwtCsp = agentJwt(AGENT_SECRET, 'demo', 'agent-csp', 'CSP Agent');
  const agentPage = await newPage();
  const res = await agentPage.goto(`${gw.url}/console#token=${jwtCsp}`);
  const csp = res.headers()['content-security-policy'] || '';
  assert.match(csp, /script-src 'self'/, 'the console has a CSP');
  assert.match(csp, /frame-ancestors 'none'/);
  await agentPage.locator('#conn', { hasText: 'live' }).waitFor(); // fetch and WebSocket allowed
  const page = await newPage();
  const demo = await page.goto(`${gw.url}/demo`);
  assert.match(demo.headers()['content-security-policy'] || '', /script-src 'self'/, 'the demo page has a CSP');
  await page.locator('#open-chat').click(); // the page's own script drives the widget
  const w = widget(page);
  await w.panel.waitFor({ state: 'visible' });
  await sendFromWidget(page, 'Hello under a strict CSP');
  await convItem(agentPage, 'Hello under a strict CSP').click();
  await consoleReply(agentPage, 'Answered under a strict CSP');
  await w.fromAgent('Answered under a strict CSP').waitFor();
  // The widget styles its shadow root: the launcher is a styled pill, not a bare button.
  assert.equal(await w.launcher.evaluate((e) => getComputedStyle(e).position), 'fixed');
  for (const p of [agentPage, page]) {
    assert.deepEqual(await p.evaluate(() => window.__cspViolations || []), [], `no CSP violation on ${p.url()}`);
  }
  await agentPage.context().close();
  await page.context().close();
});

let visitor;      // the demo visitor page, reused by the reload scenario
let agent;        // the console page of the demo tenant
const jwt = agentJwt(AGENT_SECRET, 'demo', 'agent-alice', 'Alice Agent');

test('visitor and agent chat live: message, typing both ways, reply, unread badge, close', { timeout: 120_000 }, async () => {
  agent = await openConsole(jwt);
  visitor = await newPage();
  const telemetry = [];
  visitor.on('request', (r) => { if (r.method() === 'POST' && new URL(r.url()).pathname === '/v1/events') telemetry.push(r.postDataJSON()); });
  await visitor.goto(`${gw.url}/demo?utm_source=browser-test&utm_campaign=issue6`);
  const w = widget(visitor);
  await w.launcher.waitFor({ state: 'visible' });
  assert.match(await w.launcher.innerText(), /Chat with us/);
  await shot(visitor, '01-demo-launcher');

  await openWidget(visitor);
  await visitor.locator('confab-widget .greeting', { hasText: 'Hi there! How can we help?' }).waitFor();
  await visitor.locator('confab-widget .chip', { hasText: 'Billing question' }).waitFor();
  await visitor.locator('confab-widget .chip', { hasText: 'What are your prices?' }).waitFor();
  assert.equal(await visitor.evaluate(() => document.querySelector('confab-widget').shadowRoot.activeElement?.tagName), 'TEXTAREA', 'opening focuses the composer');
  await shot(visitor, '02-demo-open');

  const first = 'Hello from the browser test';
  const messageEvent = visitor.waitForRequest((r) => r.url().endsWith('/v1/events') && /"MESSAGE"/.test(r.postData() || ''));
  await sendFromWidget(visitor, first);
  await shot(visitor, '03-visitor-sent');
  // OPEN happened before the session existed: queued, then sent with it (sample rate 1.0).
  await messageEvent;
  assert.ok(telemetry.some((e) => e.type === 'OPEN'), `OPEN telemetry, got ${JSON.stringify(telemetry)}`);

  // The console lists the new conversation live and shows the message.
  await convItem(agent, first).waitFor();
  await convItem(agent, first).click();
  await agent.locator('#msgs .msg.in[data-id]', { hasText: first }).waitFor();
  const ctx = agent.locator('#ctx');
  await ctx.locator('dd', { hasText: '/demo?utm_source=browser-test' }).waitFor();
  await ctx.getByText('en-US', { exact: true }).waitFor();
  await ctx.getByText('issue6', { exact: true }).waitFor();

  // Agent typing reaches the visitor.
  await agent.locator('#replyText').pressSequentially('On it', { delay: 20 });
  await w.typing.filter({ hasText: /typing/ }).waitFor({ state: 'visible' });
  assert.match(await w.typing.innerText(), /Alice Agent is typing/);
  await shot(visitor, '04-visitor-sees-agent-typing');

  // Visitor typing reaches the agent.
  await w.input.pressSequentially('and one more thing', { delay: 20 });
  await agent.locator('#typing', { hasText: 'Visitor is typing' }).waitFor();
  await shot(agent, '05-console-conversation-visitor-typing');
  await w.input.fill('');

  const reply = 'Hi! Alice here, happy to help.';
  await consoleReply(agent, reply);
  await w.fromAgent(reply).waitFor();
  await w.typing.waitFor({ state: 'hidden' });
  await shot(visitor, '06-visitor-sees-agent-reply');

  // The visitor's chips disappear once they have written; chips send as messages.
  assert.equal(await visitor.locator('confab-widget .chip').count(), 0);

  // Unread badge while closed; Escape closes and gives focus back to the launcher.
  await w.input.press('Escape');
  await w.panel.waitFor({ state: 'hidden' });
  assert.equal(await visitor.evaluate(() => document.querySelector('confab-widget').shadowRoot.activeElement?.className), 'launch');
  await consoleReply(agent, 'Are you still there?');
  await w.badge.filter({ hasText: '1' }).waitFor({ state: 'visible' });
  await shot(visitor, '07-launcher-unread-badge');
  await w.launcher.press('Enter');
  await w.panel.waitFor({ state: 'visible' });
  await w.badge.waitFor({ state: 'hidden' });
  await w.fromAgent('Are you still there?').waitFor();

  // Unread counts in the console for a conversation that is not open.
  const second = await newPage();
  await second.goto(`${gw.url}/demo`);
  await openWidget(second);
  await sendFromWidget(second, 'A second visitor says hi');
  await convItem(agent, 'A second visitor says hi').locator('.unread', { hasText: '1' }).waitFor();
  await second.context().close();

  // Custom tenant events reach the console feed (and only once).
  const ev = await api('POST', '/v1/tenant/events', { type: 'campaign:progress', data: { sent: 42, campaign: 'spring' } }, SERVER_KEY);
  assert.equal(ev.status, 202, JSON.stringify(ev.json));
  await agent.locator('#events li', { hasText: 'campaign:progress' }).waitFor();
  assert.equal(await agent.locator('#events li', { hasText: 'campaign:progress' }).count(), 1);

  // Close from the console; the visitor is told; a reply reopens it.
  await agent.locator('#closeBtn').click();
  await agent.locator('#cstatus', { hasText: 'closed' }).waitFor();
  await visitor.locator('confab-widget .note', { hasText: 'closed' }).waitFor();
  await shot(agent, '08-console-closed-with-events');
  await consoleReply(agent, 'Reopening with a reply');
  await agent.locator('#cstatus', { hasText: 'open' }).waitFor();
  await w.fromAgent('Reopening with a reply').waitFor();
});

test('reload and a second tab keep the history, with no duplicates', { timeout: 90_000 }, async () => {
  assert.ok(visitor, 'needs the live chat scenario');
  const before = await widgetMessages(visitor);
  assert.ok(before.length >= 4, `expected the earlier conversation, got ${before.length}`);
  await visitor.reload();
  const w = widget(visitor);
  await w.panel.waitFor({ state: 'visible' }); // the panel stays open across the reload
  await w.confirmed.nth(before.length - 1).waitFor();
  const afterReload = await widgetMessages(visitor);
  assert.deepEqual(afterReload, before, 'same messages, same order, after a reload');
  await shot(visitor, '09-after-reload');

  // Second tab of the same browser: same conversation, live in both, no duplicates.
  const tab2 = await visitor.context().newPage();
  watch(tab2);
  await tab2.goto(`${gw.url}/demo`);
  const w2 = await openWidget(tab2);
  await w2.confirmed.nth(before.length - 1).waitFor();
  await sendFromWidget(tab2, 'Written in the second tab');
  await w.mine('Written in the second tab').waitFor();
  await consoleReply(agent, 'Seen in both tabs');
  await w.fromAgent('Seen in both tabs').waitFor();
  await w2.fromAgent('Seen in both tabs').waitFor();
  const a = await widgetMessages(visitor), b = await widgetMessages(tab2);
  assert.deepEqual(a, b, 'both tabs show the same conversation');
  assert.equal(new Set(a.map((m) => m.id)).size, a.length, 'no duplicate ids');
  assert.equal(a.length, before.length + 2);
  await tab2.close();

  // The agent sees each message exactly once too.
  const ids = await agent.locator('#msgs .msg[data-id]').evaluateAll((els) => els.map((e) => e.getAttribute('data-id')));
  assert.equal(new Set(ids).size, ids.length, 'console shows no duplicates');

  // A rejected session token (401 / close 4401) is renewed with the stored visitor token:
  // same visitor, same conversation, same history.
  const key = `confab:${PK}`;
  const stored = await visitor.evaluate((k) => JSON.parse(localStorage.getItem(k)), key);
  await visitor.evaluate(([k, v]) => localStorage.setItem(k, JSON.stringify(v)), [key, { ...stored, sessionToken: stored.sessionToken.slice(0, -4) + 'AAAA' }]);
  const renewed = visitor.waitForResponse((r) => r.url().endsWith('/v1/sessions') && r.request().method() === 'POST');
  await visitor.reload();
  const resp = await renewed;
  assert.equal(resp.status(), 201);
  const body = await resp.json();
  assert.equal(body.resumed, true, 'the same visitor is resumed');
  assert.equal(body.conversationId, stored.conversationId);
  await w.confirmed.nth(a.length - 1).waitFor();
  assert.deepEqual(await widgetMessages(visitor), a, 'history intact after renewing the session');
  await consoleReply(agent, 'After the renewal');
  await w.fromAgent('After the renewal').waitFor();
});

test('with WebSockets blocked, visitor and console fall back to long-polling both ways', { timeout: 120_000 }, async () => {
  let visitorUpgrades = 0, consoleUpgrades = 0;
  const agentPage = await newPage();
  await agentPage.routeWebSocket(/\/v1\/tenant\/ws/, (ws) => { consoleUpgrades++; ws.close({ code: 1011, reason: 'blocked by test' }); });
  const polls = [];
  agentPage.on('request', (r) => { if (r.url().includes('/v1/tenant/events')) polls.push(r.url()); });
  await agentPage.goto(`${gw.url}/console#token=${jwt}`);
  await agentPage.locator('#conn', { hasText: 'polling' }).waitFor();

  const page = await newPage();
  await page.routeWebSocket(/\/v1\/visitor\/ws/, (ws) => { visitorUpgrades++; ws.close({ code: 1011, reason: 'blocked by test' }); });
  const vpolls = [];
  page.on('request', (r) => { if (/\/v1\/messages\?.*wait=/.test(r.url())) vpolls.push(r.url()); });
  const sends = [];
  page.on('request', (r) => { if (r.method() === 'POST' && r.url().endsWith('/v1/messages')) sends.push(r.url()); });
  await page.goto(`${gw.url}/demo`);
  const w = await openWidget(page);
  const text = 'Sent without WebSockets';
  await sendFromWidget(page, text);
  assert.ok(sends.length >= 1, 'the message went over POST /v1/messages');

  await convItem(agentPage, text).waitFor();
  await convItem(agentPage, text).click();
  await agentPage.locator('#msgs .msg.in[data-id]', { hasText: text }).waitFor();
  await shot(agentPage, '11-polling-console');
  await consoleReply(agentPage, 'Reply delivered by long-polling');
  await w.fromAgent('Reply delivered by long-polling').waitFor();
  await shot(page, '10-polling-visitor');

  // A send whose answer is lost after the server stored it, then a send that never arrives
  // and is retried by hand: one clientMessageId per message, no duplicates either way.
  const posts = [];
  await page.route((u) => u.pathname === '/v1/messages', async (route) => {
    if (route.request().method() !== 'POST') return route.continue();
    posts.push(route.request().postDataJSON());
    if (posts.length === 1) { await route.fetch(); return route.abort('failed'); }
    if (posts.length === 2) return route.abort('failed');
    return route.continue();
  });
  await w.input.fill('Stored but the answer was lost');
  await w.input.press('Enter');
  await w.mine('Stored but the answer was lost').waitFor();
  await w.input.fill('Lost on the way, retried');
  await w.input.press('Enter');
  const retry = page.locator('confab-widget .msg.failed .retry');
  await retry.waitFor();
  await shot(page, '10b-polling-send-failed');
  await retry.click();
  await w.mine('Lost on the way, retried').waitFor();
  assert.equal(posts[1].clientMessageId, posts[2].clientMessageId, 'the retry reuses the clientMessageId');
  assert.ok(posts.slice(0, 2).every((p, i, all) => i === 0 || p.clientMessageId !== all[0].clientMessageId), 'each message has its own id');
  await agentPage.locator('#msgs .msg.in[data-id]', { hasText: 'Lost on the way, retried' }).waitFor();
  for (const t of ['Stored but the answer was lost', 'Lost on the way, retried']) {
    assert.equal(await page.locator('confab-widget .msg.me', { hasText: t }).count(), 1, `one "${t}" in the widget`);
    assert.equal(await agentPage.locator('#msgs .msg.in', { hasText: t }).count(), 1, `one "${t}" in the console`);
  }

  assert.ok(visitorUpgrades >= 1, 'the widget tried the WebSocket first');
  assert.ok(consoleUpgrades >= 1, 'the console tried the WebSocket first');
  assert.ok(vpolls.some((u) => /after=/.test(u)), 'the widget long-polls with a cursor');
  assert.ok(polls.length >= 1, 'the console polls /v1/tenant/events');
  const msgs = await widgetMessages(page);
  assert.equal(new Set(msgs.map((m) => m.id)).size, msgs.length, 'no duplicates');
  await page.context().close();
  await agentPage.context().close();
});

test('dropped sockets resume from the last id / offset; a hidden tab catches up on return', { timeout: 120_000 }, async () => {
  let blocked = false;
  const auths = { visitor: [], agent: [] }, live = {};
  // Proxy both channels through the test so it can cut them and read the auth frames.
  const proxy = (name) => (ws) => {
    if (blocked) return ws.close({ code: 1011, reason: 'blocked by test' });
    const server = ws.connectToServer();
    live[name] = { ws, server };
    ws.onMessage((m) => { if (/"type":"auth"/.test(m)) auths[name].push(JSON.parse(m)); server.send(m); });
  };
  const agentPage = await newPage();
  await agentPage.routeWebSocket(/\/v1\/tenant\/ws/, proxy('agent'));
  await agentPage.route((u) => u.pathname === '/v1/tenant/events', (r) => (blocked ? r.abort() : r.continue()));
  await agentPage.goto(`${gw.url}/console#token=${jwt}`);
  await agentPage.locator('#conn', { hasText: 'live' }).waitFor();

  const page = await newPage();
  await page.routeWebSocket(/\/v1\/visitor\/ws/, proxy('visitor'));
  await page.route((u) => u.pathname === '/v1/messages' && u.searchParams.has('wait'), (r) => (blocked ? r.abort() : r.continue()));
  await page.goto(`${gw.url}/demo`);
  const w = await openWidget(page);
  await sendFromWidget(page, 'Before the connection drops');
  await convItem(agentPage, 'Before the connection drops').click();
  await agentPage.locator('#msgs .msg.in[data-id]', { hasText: 'Before the connection drops' }).waitFor();
  const lastBefore = (await widgetMessages(page)).at(-1);
  const conversationId = await page.evaluate((k) => JSON.parse(localStorage.getItem(k)).conversationId, `confab:${PK}`);

  // Cut both sockets, keep them (and the polling fallback) down, hide the visitor's tab.
  blocked = true;
  const setHidden = (h) => page.evaluate((hidden) => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (hidden ? 'hidden' : 'visible') });
    document.dispatchEvent(new Event('visibilitychange'));
  }, h);
  await setHidden(true);
  for (const n of ['visitor', 'agent']) { await live[n].ws.close({ code: 4000, reason: 'cut by test' }); await live[n].server.close(); }
  const agentAuthsBefore = auths.agent.length;
  await agentPage.locator('#conn:not(.live)').waitFor();

  const missed = ['Missed while away, one', 'Missed while away, two'];
  for (const t of missed) {
    const r = await api('POST', `/v1/tenant/conversations/${conversationId}/messages`, { message: t, clientMessageId: `bt-${t}` }, jwt);
    assert.equal(r.status, 201, JSON.stringify(r.json));
  }

  // Back: the visitor tab reconnects at once (not at the next backoff step) and catches up.
  blocked = false;
  await setHidden(false);
  for (const t of missed) await w.fromAgent(t).waitFor();
  const msgs = await widgetMessages(page);
  assert.deepEqual(msgs.slice(-2).map((m) => m.text), missed, 'in order, after the last seen');
  assert.equal(new Set(msgs.map((m) => m.id)).size, msgs.length, 'no duplicates');
  assert.equal(auths.visitor.at(-1).after, lastBefore.id, 'the widget resumed from the last id it saw');
  await shot(page, '18-resumed-after-drop');

  // The console resumes from its last offset and shows each message once.
  for (const t of missed) await agentPage.locator('#msgs .msg[data-id]', { hasText: t }).waitFor();
  await agentPage.locator('#conn', { hasText: 'live' }).waitFor({ timeout: 40_000 });
  assert.ok(auths.agent.length > agentAuthsBefore && auths.agent.at(-1).after, 'the console resumed with an offset');
  for (const t of missed) assert.equal(await agentPage.locator('#msgs .msg', { hasText: t }).count(), 1);
  await page.context().close();
  await agentPage.context().close();
});

test('offline tenant: contact form starts a conversation that reaches the console', { timeout: 90_000 }, async () => {
  const offJwt = agentJwt(AGENT_SECRET_OFF, 'after-hours', 'agent-bob', 'Bob Night');
  const agentPage = await openConsole(offJwt);
  const page = await newPage();
  // Behave like an insecure context without crypto.randomUUID: the widget's fallback ids are used.
  await page.addInitScript(() => { delete Crypto.prototype.randomUUID; });
  serveHost('/contact.html', hostPage(PK_OFF));
  await page.goto(`${HOST}/contact.html`);
  const w = widget(page);
  await w.launcher.waitFor({ state: 'visible' });
  assert.match(await w.launcher.innerText(), /Contact us/);
  const box = await w.launcher.boundingBox();
  assert.ok(box.x < 200, `bottom-left position, launcher at x=${box.x}`);
  await w.launcher.click();
  const form = page.locator('confab-widget form.contact');
  await form.waitFor({ state: 'visible' });
  assert.equal(await page.locator('confab-widget .compose').isVisible(), false, 'no chat composer while offline');
  await shot(page, '12-offline-contact-form');

  // Bad email is caught before any request.
  await form.locator('input[name=name]').fill('Dana Visitor');
  await form.locator('input[name=email]').fill('not-an-email');
  await form.locator('textarea[name=message]').fill('Please call me back about my order #1234.');
  await form.locator('button[type=submit]').click();
  await form.locator('.err', { hasText: 'valid email' }).waitFor();
  await form.locator('input[name=email]').fill('dana@example.com');
  await form.locator('button[type=submit]').click();
  await form.waitFor({ state: 'hidden' });
  await w.mine('Please call me back').waitFor();
  await shot(page, '13-offline-submitted');

  await convItem(agentPage, 'Dana Visitor').waitFor();
  await convItem(agentPage, 'Dana Visitor').click();
  await agentPage.locator('#msgs .msg.in[data-id]', { hasText: 'Please call me back' }).waitFor();
  await agentPage.locator('#ctx dd', { hasText: 'dana@example.com' }).waitFor();
  await shot(agentPage, '14-offline-console');
  await page.context().close();
  await agentPage.context().close();
});

test('hostile host-page CSS does not change the widget', { timeout: 90_000 }, async () => {
  const hostile = `* { all: unset; color: red !important; font-size: 40px !important; font-family: "Comic Sans MS", cursive !important; }
    div { display: none !important; } button { background: yellow !important; border: 5px solid blue !important; padding: 30px !important; }
    textarea, input { width: 10px !important; } section { display: none !important; }
    confab-widget { display: none !important; opacity: 0 !important; transform: scale(.3) !important; }
    :root { font-size: 50px !important; } svg { width: 300px !important; }`;
  const measure = (page) => page.evaluate(() => {
    const host = document.querySelector('confab-widget'), root = host.shadowRoot;
    const pick = (sel) => {
      const e = root.querySelector(sel), cs = getComputedStyle(e), r = e.getBoundingClientRect();
      return { box: [r.x, r.y, r.width, r.height].map(Math.round), font: cs.fontSize, family: cs.fontFamily, color: cs.color, bg: cs.backgroundColor, display: cs.display };
    };
    return { host: getComputedStyle(host).display, launcher: pick('.launch'), panel: pick('.panel'), input: pick('.compose textarea'),
      send: pick('.send'), greeting: pick('.greeting') };
  });
  const results = {};
  for (const [name, css] of [['plain', ''], ['hostile', hostile]]) {
    const page = await newPage();
    serveHost(`/${name}.html`, hostPage(PK, { css }));
    await page.goto(`${HOST}/${name}.html`);
    const w = widget(page);
    await w.launcher.waitFor({ state: 'visible' });
    await shot(page, `15-${name}-closed`);
    // The opaque middle of the pill: its round corners show whatever the host page draws.
    const lb = await w.launcher.boundingBox();
    const launcherPng = await page.screenshot({ clip: { x: lb.x + 26, y: lb.y + 6, width: lb.width - 52, height: lb.height - 12 } });
    await w.launcher.click();
    await w.panel.waitFor({ state: 'visible' });
    await page.locator('confab-widget .greeting').waitFor();
    // Measured once the panel's opening transition and the fonts are done: mid-transition,
    // a box can sit a pixel off.
    await page.evaluate(() => Promise.all([document.fonts.ready,
      ...document.querySelector('confab-widget').shadowRoot.getAnimations().map((a) => a.finished)]));
    await shot(page, `16-${name}-open`);
    results[name] = { ...(await measure(page)), launcherPng };
    await page.context().close();
  }
  const { launcherPng: a, ...plain } = results.plain;
  const { launcherPng: b, ...hostileM } = results.hostile;
  assert.deepEqual(hostileM, plain, 'computed styles and boxes inside the widget are identical');
  assert.equal(plain.launcher.font, '14px');
  assert.ok(a.equals(b), 'the launcher renders pixel-identical on both pages');
});

test('phone width: full-screen panel, keyboard only', { timeout: 60_000 }, async () => {
  const page = await newPage({ viewport: { width: 375, height: 700 }, isMobile: true, hasTouch: true });
  await page.goto(`${gw.url}/demo`);
  const w = widget(page);
  await w.launcher.waitFor({ state: 'visible' });
  await w.launcher.focus();
  await page.keyboard.press('Enter');
  await w.panel.waitFor({ state: 'visible' });
  const box = await w.panel.boundingBox();
  assert.deepEqual([box.x, box.y, box.width, box.height].map(Math.round), [0, 0, 375, 700], 'the panel fills the screen');
  await page.keyboard.type('Typed on a phone');
  await page.keyboard.press('Enter');
  await w.mine('Typed on a phone').waitFor();
  await shot(page, '17-phone-open');
  for (let i = 0; i < 8; i++) { // Tab cycles inside the full-screen panel
    await page.keyboard.press(i % 3 ? 'Tab' : 'Shift+Tab');
    const inside = await page.evaluate(() => {
      const r = document.querySelector('confab-widget').shadowRoot;
      return !!r.activeElement && r.querySelector('.panel').contains(r.activeElement);
    });
    assert.ok(inside, `focus stays in the panel after ${i + 1} Tab presses`);
  }
  await page.keyboard.press('Escape');
  await w.panel.waitFor({ state: 'hidden' });
  await page.context().close();
});

test('require_agent: the widget\'s status line follows the team, live', { timeout: 90_000 }, async () => {
  const page = await newPage();
  serveHost('/team.html', hostPage(PK_TEAM));
  await page.goto(`${HOST}/team.html`);
  const w = await openWidget(page);
  const status = page.locator('confab-widget .sub');
  await status.filter({ hasText: 'Away — we\'ll reply by email' }).waitFor();
  // Nobody online: the contact form starts the conversation.
  const form = page.locator('confab-widget form.contact');
  await form.locator('input[name=name]').fill('Erin Early');
  await form.locator('input[name=email]').fill('erin@example.com');
  await form.locator('textarea[name=message]').fill('Anyone there?');
  await form.locator('button[type=submit]').click();
  await w.mine('Anyone there?').waitFor();
  // An agent signs in: the open widget turns "Online" without a reload.
  const agentPage = await openConsole(agentJwt(AGENT_SECRET_TEAM, 'team', 'agent-tess', 'Tess Team'));
  await status.filter({ hasText: /^Online$/ }).waitFor({ timeout: WAIT });
  await agentPage.locator('#team li', { hasText: 'Tess Team (you)' }).waitFor();
  // A colleague joins and is listed; then Tess steps away, the colleague stays.
  const colleague = await openConsole(agentJwt(AGENT_SECRET_TEAM, 'team', 'agent-uma', 'Uma Team'));
  await agentPage.locator('#team li', { hasText: 'Uma Team' }).waitFor();
  await colleague.locator('#team li', { hasText: 'Tess Team' }).waitFor();
  await shot(agentPage, '22-console-team-online');
  await colleague.context().close();
  await agentPage.locator('#team li', { hasText: 'Uma Team' }).waitFor({ state: 'detached' });
  await agentPage.locator('#awayBtn').click();
  await agentPage.locator('#team li.away', { hasText: 'Tess Team' }).waitFor();
  await status.filter({ hasText: 'Away — we\'ll reply by email' }).waitFor({ timeout: WAIT });
  await shot(page, '23-widget-team-away');
  await agentPage.locator('#awayBtn').click();
  await status.filter({ hasText: /^Online$/ }).waitFor({ timeout: WAIT });
  await agentPage.context().close();
  await page.context().close();
});

test('the console shows the webhooks\' delivery state with the server key', { timeout: 90_000 }, async () => {
  hookStatus = 503;
  const page = await openConsole(agentJwt(AGENT_SECRET, 'demo', 'agent-hooks', 'Hook Agent'));
  assert.equal((await api('POST', '/v1/tenant/events', { type: 'campaign:progress', data: { n: 1 } }, SERVER_KEY)).status, 202);
  // A wrong key is refused and forgotten.
  await page.locator('#whKey').fill('not-the-server-key');
  await page.locator('#whForm button[type=submit]').click();
  await page.locator('#whErr', { hasText: /invalid|credential/i }).waitFor({ timeout: WAIT });
  await page.locator('#whForm').waitFor({ state: 'visible' });
  await page.locator('#whKey').fill(SERVER_KEY);
  await page.locator('#whForm button[type=submit]').click();
  const item = page.locator('#webhooks li', { hasText: hookUrl });
  await item.waitFor({ timeout: WAIT });
  await page.locator('#webhooks .st.failing').waitFor({ timeout: 20_000 }); // refreshed every 5 s
  assert.match(await item.innerText(), /HTTP 503/);
  await shot(page, '20-console-webhook-failing');
  hookStatus = 200;
  await page.locator('#webhooks .st:not(.failing)', { hasText: 'ok' }).waitFor({ timeout: 40_000 });
  assert.ok(hookHits.length > 0 && hookHits.every((h) => h.ok), 'every delivery was signed with the secret');
  assert.ok(hookHits.some((h) => h.status === 200 && /campaign:progress/.test(h.body)), 'the event was delivered');
  await shot(page, '21-console-webhook-ok');
  await page.context().close();
});

// ---------------------------------------------------------------- triage in the console (issue 14)

const triageJwt = agentJwt(AGENT_SECRET_TRIAGE, 'triage', 'agent-tina', 'Tina Triage');

/** A visitor of the triage tenant over the HTTP API (no browser); `say` sends as them. */
async function apiVisitor(extra = {}) {
  const r = await api('POST', '/v1/sessions', { publicKey: PK_TRIAGE, botSignals: { elapsedMs: 5000 }, ...extra });
  assert.equal(r.status, 201, JSON.stringify(r.json));
  const v = r.json;
  v.say = async (text) => {
    const m = await api('POST', '/v1/messages', { message: text, clientMessageId: randomUUID() }, v.sessionToken);
    assert.equal(m.status, 201, JSON.stringify(m.json));
    return m.json.messageId;
  };
  return v;
}
/** A conversation's first message, then (long-polled, as the visitor) its automatic reply. */
async function firstMessage(v, text) {
  const id = await v.say(text);
  const r = await api('GET', `/v1/messages?after=${encodeURIComponent(id)}&wait=10`, null, v.sessionToken);
  assert.ok(r.json.messages.some((m) => m.author.kind === 'bot' && m.meta?.mode === 'flow' && m.body === AUTO_REPLY),
    `the auto-reply follows, got ${JSON.stringify(r.json)}`);
}
/** A conversation's item in the console's list, whatever its preview says. */
function convById(page, id) { return page.locator(`#convs [data-conv-id="${id}"]`); }
/** The console's list order, restricted to `ids`. */
async function listOrder(page, ids) {
  const all = await page.locator('#convs [data-conv-id]').evaluateAll((els) => els.map((e) => e.getAttribute('data-conv-id')));
  return all.filter((id) => ids.includes(id));
}
function setHidden(page, hidden) {
  return page.evaluate((h) => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
}
/** Init script: records every Notification the page makes and every tone it starts. */
function recordAlerts() {
  window.__notes = []; window.__tones = 0;
  const Real = window.Notification;
  function Recorded(title, opts) {
    window.__notes.push({ title, body: opts && opts.body, tag: opts && opts.tag });
    try { return new Real(title, opts); } catch (e) { return { close() {} }; }
  }
  Object.defineProperty(Recorded, 'permission', { get: () => Real.permission });
  Recorded.requestPermission = (cb) => Real.requestPermission(cb);
  window.Notification = Recorded;
  const start = OscillatorNode.prototype.start;
  OscillatorNode.prototype.start = function (...a) { window.__tones++; return start.apply(this, a); };
}

test('triage: previews skip the auto-reply, waiting visitors show for how long, sort by waiting', { timeout: 120_000 }, async () => {
  const a = await apiVisitor(), b = await apiVisitor({ contact: { name: 'Nora Lindqvist' } }), c = await apiVisitor();
  await firstMessage(a, 'Where is my parcel? (A)');
  await firstMessage(b, 'Do you ship to Norway? (B)');
  await firstMessage(c, 'Can I pay by card? (C)');
  const carl = agentJwt(AGENT_SECRET_TRIAGE, 'triage', 'agent-carl', 'Carl Colleague');
  const r = await api('POST', `/v1/tenant/conversations/${c.conversationId}/messages`, { message: 'Yes, every major card.', clientMessageId: randomUUID() }, carl);
  assert.equal(r.status, 201, JSON.stringify(r.json));
  // Over HTTP the last message of A and B is the automatic reply; of C, Carl's answer.
  const listed = (await api('GET', '/v1/tenant/conversations?limit=200', null, triageJwt)).json.conversations;
  const auto = listed.filter((x) => x.lastMessage?.author.kind === 'bot' && x.lastMessage.meta?.mode === 'flow').map((x) => x.id);
  assert.ok(auto.includes(a.conversationId) && auto.includes(b.conversationId) && !auto.includes(c.conversationId), 'the test exercises the HTTP path');

  const page = await newPage();
  const looked = [];
  page.on('request', (q) => {
    const m = /\/v1\/tenant\/conversations\/([^/?]+)\/messages\?(.*)$/.exec(q.url());
    if (m && q.method() === 'GET') looked.push({ id: decodeURIComponent(m[1]), q: new URLSearchParams(m[2]) });
  });
  await page.goto(`${gw.url}/console#token=${triageJwt}`);
  await page.locator('#conn', { hasText: 'live' }).waitFor();
  await convItem(page, 'Where is my parcel? (A)').waitFor();
  await convItem(page, 'Do you ship to Norway? (B)').waitFor();
  await convItem(page, 'Yes, every major card.').waitFor();
  const [itemA, itemB, itemC] = [a, b, c].map((v) => convById(page, v.conversationId));
  assert.equal(await page.locator('#convs [data-conv-id]', { hasText: AUTO_REPLY }).count(), 0, 'no preview shows the auto-reply');
  assert.equal(await itemA.locator('.snip').innerText(), 'Where is my parcel? (A)');
  assert.equal(await itemC.locator('.snip').innerText(), 'Carl Colleague: Yes, every major card.');
  assert.equal(await itemB.locator('.who').innerText(), 'Nora Lindqvist');
  // Only the conversations whose last message is automatic were looked into, a few messages each.
  assert.ok(looked.some((l) => l.id === a.conversationId) && looked.some((l) => l.id === b.conversationId), JSON.stringify(looked));
  for (const l of looked) {
    assert.ok(auto.includes(l.id), `history fetched for ${l.id}, whose last message is not automatic`);
    assert.ok(+l.q.get('limit') <= 10 && l.q.get('since'), `a small window: ${l.q}`);
  }

  // A and B wait (the auto-reply does not end a wait); Carl answered C.
  await itemA.locator('.wait', { hasText: /^waiting <1m$/ }).waitFor();
  await itemB.locator('.wait').waitFor();
  assert.equal(await itemC.locator('.wait').count(), 0, 'an agent answered C');
  const ids = [a, b, c].map((v) => v.conversationId);
  assert.deepEqual(await listOrder(page, ids), [ids[2], ids[1], ids[0]], 'most recently updated first by default');
  await page.locator('#sort').selectOption('waiting');
  assert.deepEqual(await listOrder(page, ids), ids, 'longest waiting first, then the others');

  // Live: D writes while the console is open; the auto-reply that follows leaves the preview alone.
  const d = await apiVisitor();
  await firstMessage(d, 'A live question (D)');
  const itemD = convItem(page, 'A live question (D)');
  await itemD.click();
  await page.locator('#msgs .msg.bot[data-id]', { hasText: AUTO_REPLY }).waitFor(); // the console has it
  assert.equal(await itemD.locator('.snip').innerText(), 'A live question (D)');
  await itemD.locator('.wait').waitFor();
  ids.push(d.conversationId);
  assert.deepEqual(await listOrder(page, ids), [ids[0], ids[1], ids[3], ids[2]], 'D waits the shortest');
  await itemA.click();
  await page.locator('#msgs .msg.in[data-id]', { hasText: '(A)' }).waitFor();
  await docShot(page, '30-console-triage', 'console-triage.png');

  // An agent's reply ends the wait.
  await consoleReply(page, 'Your parcel left our warehouse this morning.');
  await itemA.locator('.wait').waitFor({ state: 'detached' });
  assert.equal(await itemA.locator('.snip').innerText(), 'You: Your parcel left our warehouse this morning.');
  assert.deepEqual(await listOrder(page, ids), [ids[1], ids[3], ids[0], ids[2]], 'the waiting (B, D), then the others by recency (A, C)');

  // The waiting time counts on by itself (refreshed every 30 s): six minutes later, B shows it.
  const later = await newPage();
  await later.clock.install();
  await later.goto(`${gw.url}/console#token=${triageJwt}`);
  await later.locator('#conn', { hasText: 'live' }).waitFor();
  const laterB = convItem(later, 'Do you ship to Norway? (B)');
  await laterB.locator('.wait', { hasText: /^waiting (<1m|[1-4]m)$/ }).waitFor();
  await later.clock.fastForward('06:00');
  await laterB.locator('.wait.long', { hasText: /^waiting [6-9]m$/ }).waitFor();
  await later.context().close();
  await page.context().close();
});

test('triage: desktop notifications and a sound, once opted in, never for the conversation on screen', { timeout: 120_000 }, async () => {
  const page = await newPage();
  await page.context().grantPermissions(['notifications'], { origin: gw.url });
  await page.addInitScript(recordAlerts);
  await page.goto(`${gw.url}/console#token=${triageJwt}`);
  await page.locator('#conn', { hasText: 'live' }).waitFor();
  const notes = (conv) => page.evaluate((tag) => window.__notes.filter((n) => !tag || n.tag === tag), conv && `confab:${conv.conversationId}`);

  // Permission granted but no opt-in yet: nothing.
  const e = await apiVisitor();
  await e.say('Before opting in (E)');
  await convItem(page, 'Before opting in (E)').waitFor();
  assert.deepEqual(await notes(), []);
  await page.locator('#notifyBtn', { hasText: 'Notify me' }).click();
  await page.locator('#notifyBtn[aria-pressed="true"]', { hasText: 'Notifications on' }).waitFor();
  await page.locator('#soundBtn', { hasText: 'Sound off' }).click();
  await page.locator('#soundBtn[aria-pressed="true"]', { hasText: 'Sound on' }).waitFor();
  await page.waitForFunction(() => window.__tones === 1); // a sample of the tone
  await convItem(page, 'Before opting in (E)').click();
  await page.locator('#msgs .msg.in[data-id]', { hasText: '(E)' }).waitFor();

  // Another conversation: notified (its start and its message), with a tone.
  const f = await apiVisitor();
  await f.say('Hello from elsewhere (F)');
  await page.waitForFunction(() => window.__notes.some((n) => n.body === 'Hello from elsewhere (F)'));
  assert.ok((await notes(f)).some((n) => n.title === 'New conversation'), JSON.stringify(await notes()));
  await page.waitForFunction(() => window.__tones >= 2);
  await shot(page, '31-console-notified');

  // The conversation on screen: no notification while the tab is visible…
  await e.say('Still there? (E)');
  await page.locator('#msgs .msg.in[data-id]', { hasText: 'Still there? (E)' }).waitFor();
  assert.deepEqual(await notes(e), [], 'nothing for the conversation the agent is looking at');
  // …but one when the tab is hidden.
  await setHidden(page, true);
  await e.say('Anyone? (E, tab hidden)');
  await page.waitForFunction(() => window.__notes.some((n) => n.body === 'Anyone? (E, tab hidden)'));
  await setHidden(page, false);

  // Both preferences survive a reload; the sound can be turned off again.
  await page.reload();
  await page.locator('#conn', { hasText: 'live' }).waitFor();
  await page.locator('#notifyBtn', { hasText: 'Notifications on' }).waitFor();
  await page.locator('#soundBtn', { hasText: 'Sound on' }).click();
  await page.locator('#soundBtn[aria-pressed="false"]', { hasText: 'Sound off' }).waitFor();
  assert.equal(await page.evaluate(() => localStorage.getItem('confab.console.sound')), '0');
  await page.context().close();
});

test('triage: a closed conversation stays in view, with Undo; Reopen', { timeout: 90_000 }, async () => {
  const g = await apiVisitor();
  await firstMessage(g, 'Close me, then think again (G)');
  const page = await openConsole(triageJwt);
  const item = convItem(page, '(G)');
  await item.click();
  await page.locator('#cstatus', { hasText: 'open' }).waitFor();
  const toast = page.locator('#toast');
  const status = async () => (await api('GET', `/v1/tenant/conversations/${g.conversationId}`, null, triageJwt)).json.status;

  await page.locator('#closeBtn').click();
  await page.locator('#cstatus', { hasText: 'closed' }).waitFor();
  await toast.filter({ hasText: 'Conversation closed — Undo' }).waitFor();
  // Still listed under "Open": dimmed, struck through, tagged "closed".
  await page.locator('#convs li.gone', { hasText: '(G)' }).locator('.tag', { hasText: 'closed' }).waitFor();
  await page.locator('#reopenBtn').waitFor();
  await shot(page, '32-console-closed-undo');
  await page.locator('#undoBtn').click();
  await page.locator('#cstatus', { hasText: 'open' }).waitFor();
  await toast.waitFor({ state: 'hidden' });
  await page.locator('#convs li:not(.gone)', { hasText: '(G)' }).waitFor();
  assert.equal(await status(), 'open', 'Undo reopened it');

  // Closed again: the toast leaves by itself; Reopen works without it.
  await page.locator('#closeBtn').click();
  await toast.waitFor({ state: 'visible' });
  await toast.waitFor({ state: 'hidden', timeout: 12_000 });
  assert.equal(await status(), 'closed');
  await page.locator('#reopenBtn').click();
  await page.locator('#cstatus', { hasText: 'open' }).waitFor();
  await page.locator('#closeBtn').waitFor();
  assert.equal(await status(), 'open', 'Reopen reopened it');

  // A closed conversation is listed under "Closed", and leaves "Open" once the filter changes.
  await page.locator('#closeBtn').click();
  await page.locator('#cstatus', { hasText: 'closed' }).waitFor();
  await page.locator('.filters [data-f="closed"]').click();
  await page.locator('#convs li:not(.gone)', { hasText: '(G)' }).waitFor();
  await page.locator('.filters [data-f="open"]').click();
  await item.waitFor({ state: 'detached' });
  await page.context().close();
});

test('triage: visitors without a name get a friendly one, the same after a reload and for everyone', { timeout: 60_000 }, async () => {
  const v = await apiVisitor();
  await firstMessage(v, 'Who am I to you? (H)');
  const page = await openConsole(triageJwt);
  const who = convItem(page, '(H)').locator('.who');
  await who.waitFor();
  const name = await who.innerText();
  assert.match(name, /^[A-Z][a-z]+ [A-Z][a-z]+$/, `a two-word name, got "${name}"`);
  await page.reload();
  await page.locator('#conn', { hasText: 'live' }).waitFor();
  await who.waitFor();
  assert.equal(await who.innerText(), name, 'the same name after a reload');
  const other = await openConsole(agentJwt(AGENT_SECRET_TRIAGE, 'triage', 'agent-omar', 'Omar Other'));
  await convItem(other, '(H)').click();
  await other.locator('#ctitle', { hasText: name }).waitFor();
  await other.locator('#msgs .msg.in .a', { hasText: name }).first().waitFor();
  await other.context().close();
  await page.context().close();
});

test('triage: the console at phone width — list, conversation, back; nothing overflows', { timeout: 90_000 }, async () => {
  const v = await apiVisitor({ contact: { name: 'Pat Phone', email: 'pat@example.com' } });
  await firstMessage(v, 'Writing to a phone-sized console (P)');
  const page = await newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  await page.goto(`${gw.url}/console#token=${triageJwt}`);
  await page.locator('#conn', { hasText: 'live' }).waitFor();
  const fits = async (where) => {
    const [sw, iw] = await page.evaluate(() => [document.documentElement.scrollWidth, innerWidth]);
    assert.ok(sw <= iw, `${where}: nothing overflows horizontally (scrollWidth ${sw}, innerWidth ${iw})`);
  };
  await convItem(page, '(P)').waitFor();
  const item = convById(page, v.conversationId);
  assert.equal(await page.locator('#conv').isVisible(), false, 'the list first');
  assert.equal(await page.locator('.side').isVisible(), false, 'no details panel');
  await fits('list');
  await shot(page, '33-console-phone-list');

  await item.click();
  await page.locator('#backBtn').waitFor({ state: 'visible' });
  await page.locator('#msgs .msg.in[data-id]', { hasText: '(P)' }).waitFor();
  assert.equal(await page.locator('#convs').isVisible(), false, 'the conversation is a screen of its own');
  await consoleReply(page, 'Hi Pat! Tracking is at https://example.com/track — it updates hourly.');
  const box = await page.locator('#replyText').boundingBox();
  assert.ok(box.x >= 0 && box.x + box.width <= 390 && box.width >= 200, `a usable reply box: ${JSON.stringify(box)}`);
  await fits('conversation');
  await docShot(page, '34-console-phone-conversation', 'console-phone.png');

  await page.locator('#detailsBtn').click(); // the details behind a toggle
  await page.locator('#ctx dd', { hasText: 'pat@example.com' }).waitFor();
  await fits('details');
  await page.locator('#sideClose').click();
  await page.locator('.side').waitFor({ state: 'hidden' });

  await page.locator('#backBtn').click();
  await item.waitFor({ state: 'visible' });
  assert.equal(await page.locator('#conv').isVisible(), false);
  await fits('back on the list');
  await page.context().close();
});

test('triage: keyboard — j/k move through the list, Enter goes to the reply box, Escape leaves it, ? helps', { timeout: 90_000 }, async () => {
  for (const t of ['Keys one (K1)', 'Keys two (K2)', 'Keys three (K3)']) await firstMessage(await apiVisitor(), t);
  const page = await openConsole(triageJwt);
  for (const t of ['(K1)', '(K2)', '(K3)']) await convItem(page, t).waitFor();
  await page.locator('#keys', { hasText: 'Enter' }).waitFor();
  const order = await page.locator('#convs [data-conv-id]').evaluateAll((els) => els.map((e) => e.getAttribute('data-conv-id')));
  const at = (i) => page.locator(`#convs [aria-current="true"][data-conv-id="${order[i]}"]`).waitFor();

  await page.keyboard.press('j');
  await at(0);
  await page.locator('#conv').waitFor();
  await page.keyboard.press('j');
  await at(1);
  await page.keyboard.press('j');
  await at(2);
  await page.keyboard.press('k');
  await at(1);
  const title = await page.locator(`#convs [data-conv-id="${order[1]}"] .who`).innerText();
  await page.locator('#ctitle', { hasText: title }).waitFor();

  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.activeElement?.id === 'replyText');
  await page.keyboard.type('just typing jk');
  assert.equal(await page.locator('#replyText').inputValue(), 'just typing jk', 'j and k type in the reply box');
  await at(1);
  await page.keyboard.press('Escape');
  await page.waitForFunction((id) => document.activeElement?.getAttribute('data-conv-id') === id, order[1]);
  await page.keyboard.press('j');
  await at(2);

  await page.keyboard.press('?');
  await page.locator('#help').waitFor({ state: 'visible' });
  await shot(page, '35-console-shortcuts');
  await page.keyboard.press('Escape');
  await page.locator('#help').waitFor({ state: 'hidden' });
  await page.context().close();
});

test('links in messages are clickable and safe, in the widget and the console; the widget input is 16px', { timeout: 90_000 }, async () => {
  const agentPage = await openConsole(triageJwt);
  const page = await newPage();
  serveHost('/links.html', hostPage(PK_TRIAGE));
  await page.goto(`${HOST}/links.html`);
  const w = await openWidget(page);
  assert.equal(await w.input.evaluate((e) => getComputedStyle(e).fontSize), '16px', 'phones do not zoom into the composer');

  const text = 'Order docs: https://example.com/orders?id=42. Not a link: javascript:alert(1) — nor this, but www.example.org!';
  await sendFromWidget(page, text);
  const expected = [
    { href: 'https://example.com/orders?id=42', text: 'https://example.com/orders?id=42' },
    { href: 'https://www.example.org', text: 'www.example.org' },
  ].map((l) => ({ ...l, rel: 'noopener noreferrer nofollow', target: '_blank' }));
  const check = async (body, where) => {
    const links = await body.locator('a').evaluateAll((as) => as.map((a) => ({ href: a.getAttribute('href'), text: a.textContent, rel: a.rel, target: a.target })));
    assert.deepEqual(links, expected, where);
    assert.equal(await body.evaluate((e) => e.textContent), text, `${where}: the text reads as written`);
    assert.equal(await body.locator('a[href^="javascript"], script').count(), 0);
  };
  await check(w.mine('Order docs').locator('.body'), 'widget');

  await convItem(agentPage, 'Order docs').click();
  const inConsole = agentPage.locator('#msgs .msg.in[data-id]', { hasText: 'Order docs' });
  await inConsole.waitFor();
  await check(inConsole.locator('.b'), 'console');
  await consoleReply(agentPage, 'See www.example.net/faq, it helps.');
  const reply = w.fromAgent('See www.example.net/faq').locator('a');
  await reply.waitFor();
  assert.equal(await reply.getAttribute('href'), 'https://www.example.net/faq');
  assert.equal(await reply.getAttribute('rel'), 'noopener noreferrer nofollow');
  assert.equal(await reply.innerText(), 'www.example.net/faq');
  await shot(page, '36-widget-links');
  await shot(agentPage, '37-console-links');
  await agentPage.context().close();
  await page.context().close();
});

test('read receipts: unread counts come from the server; opening a conversation shows "Seen" in the widget', { timeout: 90_000 }, async () => {
  const jwt = agentJwt(AGENT_SECRET, 'demo', 'reader-1', 'Rita Reader');
  const v = await newPage();
  await v.goto(`${gw.url}/demo`);
  const w = await openWidget(v);
  const text = 'Is anybody reading this?';
  await sendFromWidget(v, text);
  await sendFromWidget(v, 'Second line, still unread');
  const seen = v.locator('confab-widget .seen');
  assert.equal(await seen.count(), 0, 'nothing is seen before an agent opens it');

  // A console opened later shows the true count (the server's unreadByAgent), after a reload too.
  let c = await openConsole(jwt);
  await convItem(c, 'Second line').locator('.unread', { hasText: '2' }).waitFor();
  await c.reload();
  await c.locator('#conn', { hasText: 'live' }).waitFor();
  await convItem(c, 'Second line').locator('.unread', { hasText: '2' }).waitFor();

  // Opening it marks it read: the widget shows "Seen" under the visitor's last message.
  await convItem(c, 'Second line').click();
  await c.locator('#msgs .msg.in[data-id]', { hasText: 'Second line' }).waitFor();
  await seen.waitFor({ state: 'visible' });
  const after = await v.evaluate(() => {
    const s = document.querySelector('confab-widget').shadowRoot.querySelector('.seen');
    return s.previousElementSibling && s.previousElementSibling.textContent;
  });
  assert.match(after, /Second line, still unread/);
  await shot(v, '30-widget-seen');
  await convItem(c, 'Second line').locator('.unread').waitFor({ state: 'detached' });

  // The next visitor message is unread again ("Seen" stays on the message that was read).
  await sendFromWidget(v, 'Third, after you looked');
  await v.locator('confab-widget .seen').waitFor();
  const conv = await api('GET', '/v1/tenant/conversations?limit=50', null, jwt);
  const mine = conv.json.conversations.find((x) => x.lastMessage && x.lastMessage.body === 'Third, after you looked');
  assert.ok(mine, 'the conversation is listed');
  // The console has it open and visible: it reads the new message at once.
  await c.locator('#msgs .msg.in[data-id]', { hasText: 'Third, after you looked' }).waitFor();
  await c.waitForFunction(async ([id, token]) => {
    const r = await fetch(`/v1/tenant/conversations/${id}`, { headers: { Authorization: `Bearer ${token}` } });
    return (await r.json()).unreadByAgent === 0;
  }, [mine.id, jwt], { timeout: WAIT, polling: 200 });
  await v.locator('confab-widget .msg.me[data-id]', { hasText: 'Third, after you looked' }).locator('xpath=following-sibling::*[1][contains(@class,"seen")]').waitFor();

  // After a reload the widget learns the agents' cursor from `ready`.
  await v.reload();
  await openWidget(v);
  await w.mine('Third, after you looked').waitFor();
  await v.locator('confab-widget .seen').waitFor({ state: 'visible' });
  await c.context().close();
  await v.context().close();
});

test('no JavaScript errors in any page', () => {
  assert.deepEqual(pageErrors, []);
});
