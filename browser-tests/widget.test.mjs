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
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync, createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const ART = join(HERE, 'artifacts');
mkdirSync(ART, { recursive: true });

const PK = 'pk_live_0123456789abcdef0123456789abcdef';
const PK_OFF = 'pk_live_fedcba9876543210fedcba9876543210';
const AGENT_SECRET = 'browser-tests-agent-secret-3f9a1c';
const AGENT_SECRET_OFF = 'browser-tests-agent-secret-offline-77d2';
const SERVER_KEY = 'browser-tests-server-key-5b1e';
const PK_TEAM = 'pk_live_0000000000000000000000000000beef';
const AGENT_SECRET_TEAM = 'browser-tests-agent-secret-team-41aa';
const WAIT = 15_000;                // default bound for every single wait
const START_TIMEOUT = 60_000;       // gateway start-up bound

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
${LIMITS}`;

// ---------------------------------------------------------------- helpers

function findBinary() {
  if (process.env.CONFAB_BIN) return resolve(process.env.CONFAB_BIN);
  const found = ['release', 'debug']
    .map((p) => resolve(HERE, '..', 'target', p, 'confab'))
    .filter((p) => existsSync(p))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (!found.length) throw new Error('gateway binary not found: set CONFAB_BIN or build target/{release,debug}/confab');
  return found[0];
}

/** Spawns the gateway; resolves once it logs `listening on http://ADDR`. */
function startGateway(configText, name) {
  const dir = mkdtempSync(join(tmpdir(), 'confab-bt-'));
  const cfg = join(dir, 'confab.toml');
  writeFileSync(cfg, configText);
  const bin = findBinary();
  const proc = spawn(bin, ['--config', cfg, '--listen', '127.0.0.1:0', '--store', 'memory'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1', RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  const log = createWriteStream(join(ART, `${name}.log`));
  return new Promise((resolveStart, rejectStart) => {
    let buf = '';
    const timer = setTimeout(() => fail(new Error(`gateway did not log "listening on" within ${START_TIMEOUT} ms:\n${buf.slice(-3000)}`)), START_TIMEOUT);
    const fail = (e) => { clearTimeout(timer); proc.kill('SIGKILL'); rejectStart(e); };
    const onData = (chunk) => {
      log.write(chunk);
      if (!timer) return;
      buf += chunk.toString().replace(/\x1b\[[0-9;]*m/g, '');
      const m = /listening on (https?:\/\/[^\s"',]+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        const url = m[1].replace(/\/$/, '');
        resolveStart({
          url, proc,
          stop: () => new Promise((done) => {
            if (proc.exitCode !== null) { rmSync(dir, { recursive: true, force: true }); return done(); }
            const k = setTimeout(() => proc.kill('SIGKILL'), 10_000);
            proc.once('exit', () => { clearTimeout(k); rmSync(dir, { recursive: true, force: true }); log.end(); done(); });
            proc.kill('SIGTERM');
          }),
        });
      }
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    proc.once('error', fail);
    proc.once('exit', (code) => fail(new Error(`gateway exited early (code ${code}):\n${buf.slice(-3000)}`)));
  });
}

function b64url(x) { return Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url'); }
/** An HS256 agent JWT, signed the way a tenant's backend would. */
function agentJwt(secret, tenant, sub, name) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ sub, tenant, name, exp: Math.floor(Date.now() / 1000) + 3600 });
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

const CHROME_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic'];

let gw, browser, hostServer, HOST; // HOST: a second loopback origin serving host pages
const HOOK_SECRET = 'browser-tests-webhook-secret-9c2e';
let hookServer, hookUrl, hookStatus = 200; // the demo tenant's webhook receiver and what it answers
const hookHits = [];
const hostPages = new Map();
const pageErrors = [];

// Every page reports Content-Security-Policy violations (a blocked script, style, socket or
// handler) as a console error that `watch` collects. Init scripts run outside the page's CSP.
function reportCspViolations() {
  document.addEventListener('securitypolicyviolation', (e) => {
    (window.__cspViolations = window.__cspViolations || []).push(`${e.violatedDirective} ${e.blockedURI}`);
    console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'} (${e.sourceFile}:${e.lineNumber})`);
  });
}
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
async function shot(page, name) { await page.screenshot({ path: join(ART, `${name}.png`) }); }

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
  assert.ok((await js.text()).length <= 40 * 1024, 'widget.js stays within 40 KB');
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

test('no JavaScript errors in any page', () => {
  assert.deepEqual(pageErrors, []);
});
