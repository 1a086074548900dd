// Browser tests for assistants (issue 11) in the widget and the agent console.
//
// The gateway (the real binary, see harness.mjs) answers the "shop" tenant's visitors with
// an assistant of kind "openai" whose upstream is a fake OpenAI-compatible Chat Completions
// server started here on 127.0.0.1:0: it streams Server-Sent Events chunks
// (`data: {"choices":[{"delta":{"content":"…"}}]}` a few tens of ms apart, then a usage
// chunk and `data: [DONE]`), records what it was asked, and can hold a reply half-way
// until the test lets it go on, or cut the connection mid-stream (the fallback case),
// depending on the visitor's words.
//
// Run: cd browser-tests && node --test --test-name-pattern=assistant   (or npm test: all files)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { chromium } from 'playwright-core';
import { CHROME_ARGS, START_TIMEOUT, WAIT, agentJwt, docShot, reportCspViolations, shot, startGateway } from './harness.mjs';

const PK = 'pk_live_0000000000000000000000000000a5a5';
const AGENT_SECRET = 'browser-tests-agent-secret-assistants-6e1f';
// The "night" tenant's assistant answers only while nobody of the team is online.
const PK_NIGHT = 'pk_live_0000000000000000000000000000b6b6';
const AGENT_SECRET_NIGHT = 'browser-tests-agent-secret-night-2d7a';
const TENANT_NAME = 'Mugs & Co';
const SYSTEM_PROMPT = 'You are Ava, the assistant of Mugs & Co. Answer briefly.';
const FALLBACK = 'Sorry, our assistant cannot answer right now. A person from our team will reply here.';
const PHONE = '+14165559999';
const BILLING_DESCRIPTION = 'Invoices, refunds and payment methods';
// The held reply, in two parts: the first streams when the test opens the first gate, the
// rest when it opens the second.
const HELD_1 = ['Hello', '! We', ' sell hand', 'made mugs'];
const HELD_2 = [' and tea', 'pots', ', shipped', ' worldwide.'];
const HELD = HELD_1.concat(HELD_2).join('');
const CUT = ['Let me', ' check our'];  // streamed before the upstream drops the connection
// What the visitor writes decides what the upstream does.
const HOLD_Q = 'What do you sell?';          // the held reply
const CUT_Q = 'Where is my order #1042?';    // a reply cut off mid-stream

const LIMITS = `
[tenants.rate_limits]
sessions_per_hour_per_ip = 10000
messages_per_hour_per_ip = 10000
messages_per_minute_per_session = 1000
config_per_minute_per_ip = 10000
polls_per_minute_per_session = 10000
events_per_minute_per_session = 10000
`;

// The first tenant is the one /demo embeds.
const config = (upstreamUrl) => `
allowed_origins = []
session_secret = "browser-tests-session-secret-assistants-0123456789"

[[tenants]]
id = "shop"
name = "${TENANT_NAME}"
public_key = "${PK}"
agent_secret = "${AGENT_SECRET}"
server_key = "browser-tests-server-key-assistants"
greeting = "Hi! Ava answers right away; a person can take over any time."
require_init_challenge = true
min_elapsed_ms = 800

[tenants.availability]
mode = "always"
${LIMITS}
[[tenants.intents]]
name = "billing"
display_label = "Billing question"
description = "${BILLING_DESCRIPTION}"

[[tenants.intents]]
name = "shipping"
display_label = "Shipping"
description = "Delivery times and countries"

[[tenants.quick_questions]]
question = "Do you ship abroad?"
intent_name = "shipping"

[[tenants.assistants]]
id = "ava"
name = "Ava"
kind = "openai"
url = "${upstreamUrl}"
api_key = "sk-browser-tests-fake"
model = "fake-model"
system_prompt = "${SYSTEM_PROMPT}"
timeout_secs = 20
fallback_message = "${FALLBACK}"
phone_number = "${PHONE}"

[[tenants]]
id = "night"
name = "Night Owls"
public_key = "${PK_NIGHT}"
agent_secret = "${AGENT_SECRET_NIGHT}"
server_key = "browser-tests-server-key-night"
min_elapsed_ms = 800

[tenants.availability]
mode = "always"
require_agent = true
${LIMITS}
[[tenants.assistants]]
id = "nova"
name = "Nova"
kind = "openai"
url = "${upstreamUrl}"
model = "fake-model"
answers = "when_unavailable"
timeout_secs = 20
`;

// ---------------------------------------------------------------- the fake upstream

const calls = [];      // every request body the upstream received, in order
const holdWaiters = []; // tests waiting for the next held request
function deferred() { let resolve; const promise = new Promise((r) => { resolve = r; }); return { promise, resolve }; }
/** Resolves with the gates `{ first, rest }` of the next held request once it arrives. */
function expectHold() { const d = deferred(); holdWaiters.push(d); return d.promise; }
const lastUser = (body) => [...(body.messages || [])].reverse().find((m) => m.role === 'user')?.content || '';
const callFor = (text) => calls.find((b) => lastUser(b).includes(text));

let upstream, upstreamUrl;
function startUpstream() {
  upstream = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      if (req.method !== 'POST' || req.url !== '/v1/chat/completions') { res.writeHead(404); res.end(); return; }
      let body;
      try { body = JSON.parse(Buffer.concat(chunks).toString()); } catch { res.writeHead(400); res.end(); return; }
      body.authorization = req.headers.authorization;
      calls.push(body);
      const text = lastUser(body);
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
      const id = `chatcmpl-${calls.length}`, created = Math.floor(Date.now() / 1000);
      const chunk = (delta, finish = null) => res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: 'fake-model', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`);
      const pause = (ms) => new Promise((r) => setTimeout(r, ms));
      const stream = async (pieces) => { for (const p of pieces) { chunk({ content: p }); await pause(40); } };
      chunk({ role: 'assistant', content: '' }); // as OpenAI starts a stream
      if (text.includes(HOLD_Q)) {
        const gates = { first: deferred(), rest: deferred() };
        holdWaiters.shift()?.resolve(gates);
        await gates.first.promise;
        await stream(HELD_1);
        await gates.rest.promise;
        await stream(HELD_2);
      } else if (text.includes(CUT_Q)) {
        await stream(CUT);
        res.destroy(); // mid-stream: no [DONE]
        return;
      } else {
        await stream(['Happy', ' to help', ' with "', text.slice(0, 40), '".']);
      }
      chunk({}, 'stop');
      res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: 'fake-model', choices: [], usage: { prompt_tokens: 30, completion_tokens: 12, total_tokens: 42 } })}\n\n`);
      res.end('data: [DONE]\n\n');
    });
  });
  return new Promise((ok) => upstream.listen(0, '127.0.0.1', () => {
    upstreamUrl = `http://127.0.0.1:${upstream.address().port}/v1/chat/completions`;
    ok();
  }));
}

// ---------------------------------------------------------------- helpers

let gw, browser, hostServer, HOST; // HOST: another loopback origin serving the night tenant's page
const pageErrors = [];
const jwt = agentJwt(AGENT_SECRET, 'shop', 'agent-ana', 'Ana Agent');

async function newPage(opts = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'en-US', ...opts });
  ctx.setDefaultTimeout(WAIT);
  await ctx.addInitScript(reportCspViolations);
  const page = await ctx.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !/Failed to load resource|WebSocket/.test(m.text())) pageErrors.push(`${page.url()}: console: ${m.text()}`); });
  return page;
}
/** A visitor on /demo (the shop tenant's widget), panel open. */
async function openVisitor(opts) {
  const page = await newPage(opts);
  await page.goto(`${gw.url}/demo`);
  const w = widget(page);
  await w.launcher.waitFor({ state: 'visible' });
  await w.launcher.click();
  await w.panel.waitFor({ state: 'visible' });
  return { page, w };
}
function widget(page) {
  const q = (sel, opts) => page.locator(`confab-widget ${sel}`, opts);
  return {
    launcher: q('.launch'),
    panel: q('.panel'),
    input: q('.compose textarea'),
    status: q('.sub'),
    talk: q('.acts button', { hasText: 'Talk to a person' }),
    call: q('.acts button', { hasText: 'Call us' }),
    dots: q('.msg.wait .dots'),
    drafts: q('.msg.draft'),
    botMessages: q('.msg.bot[data-id]'),
    bot: (text) => q('.msg.bot[data-id]', { hasText: text }),
    mine: (text) => q('.msg.me[data-id]', { hasText: text }),
    fromAgent: (text) => q('.msg.agent[data-id]', { hasText: text }),
    note: q('.note'),
  };
}
async function send(page, text) {
  const w = widget(page);
  await w.input.fill(text);
  await w.input.press('Enter');
  await w.mine(text).waitFor();
}
function conversationId(page) {
  return page.evaluate((pk) => JSON.parse(localStorage.getItem(`confab:${pk}`)).conversationId, PK);
}
async function openConsole() {
  const page = await newPage();
  await page.goto(`${gw.url}/console#token=${jwt}`);
  await page.locator('#conn', { hasText: 'live' }).waitFor();
  return page;
}
const convItem = (page, id) => page.locator(`#convs [data-conv-id="${id}"]`);
async function api(method, path, body) {
  const r = await fetch(gw.url + path, {
    method, headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${jwt}` },
    body: body ? JSON.stringify(body) : undefined, signal: AbortSignal.timeout(WAIT),
  });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : null };
}
async function history(id) {
  const r = await api('GET', `/v1/tenant/conversations/${id}/messages?limit=200`);
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json.messages;
}
/** The console's handler label and buttons agree with `handler`. */
async function consoleShows(page, handler) {
  if (handler === 'bot') {
    await page.locator('#chandler.bot', { hasText: /^Bot/ }).waitFor();
    await page.locator('#takeBtn').waitFor({ state: 'visible' });
    await page.locator('#giveBtn').waitFor({ state: 'hidden' });
  } else {
    await page.locator('#chandler.human', { hasText: 'Human' }).waitFor();
    await page.locator('#giveBtn').waitFor({ state: 'visible' });
    await page.locator('#takeBtn').waitFor({ state: 'hidden' });
  }
}

function startHostServer() {
  hostServer = createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Night Owls</title></head>
<body><h1>Night Owls</h1><script src="${gw.url}/widget.js" data-pk="${PK_NIGHT}" defer></script></body></html>`);
  });
  return new Promise((ok) => hostServer.listen(0, '127.0.0.1', () => { HOST = `http://127.0.0.1:${hostServer.address().port}`; ok(); }));
}

before(async () => {
  await startUpstream();
  gw = await startGateway(config(upstreamUrl), 'assistants-gateway');
  await startHostServer();
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: CHROME_ARGS, timeout: START_TIMEOUT });
});
after(async () => {
  for (const w of holdWaiters) w.resolve({ first: deferred(), rest: deferred() });
  if (browser) await browser.close();
  if (gw) await gw.stop();
  if (upstream) { upstream.closeAllConnections(); upstream.close(); }
  if (hostServer) hostServer.close();
});

// ---------------------------------------------------------------- scenarios

test('assistant: a reply streams live into the widget and the console, then is one stored bot message', { timeout: 120_000 }, async () => {
  const agent = await openConsole();
  const { page: v, w } = await openVisitor();
  const cfg = await (await fetch(`${gw.url}/v1/config?pk=${PK}`, { signal: AbortSignal.timeout(WAIT) })).json();
  assert.deepEqual(cfg.assistant, { id: 'ava', name: 'Ava', voice: true }, 'GET /v1/config names the assistant');
  await w.status.filter({ hasText: 'Ava · AI assistant' }).waitFor();
  await w.talk.waitFor({ state: 'visible' });
  await w.call.waitFor({ state: 'visible' });

  // The visitor writes; until the first piece arrives the widget shows Ava "typing".
  const held = expectHold();
  const question = HOLD_Q;
  await send(v, question);
  const gates = await held;
  await w.dots.waitFor({ state: 'visible' });
  await shot(v, 'a01-widget-waiting-for-the-assistant');
  const id = await conversationId(v);

  // The console: a Bot badge in the list and the header, Take over offered.
  const item = convItem(agent, id);
  await item.locator('.tag.bot', { hasText: 'Bot' }).waitFor();
  await item.click();
  await agent.locator('#msgs .msg.in[data-id]', { hasText: question }).waitFor();
  await consoleShows(agent, 'bot');

  // Every text the widget's draft shows, in order.
  await v.evaluate(() => {
    const root = document.querySelector('confab-widget').shadowRoot, seen = window.__draftTexts = [];
    new MutationObserver(() => {
      const t = root.querySelector('.msg.draft .body')?.textContent;
      if (t && seen[seen.length - 1] !== t) seen.push(t);
    }).observe(root, { subtree: true, childList: true, characterData: true });
  });

  // The first part streams: a draft in both, the dots gone.
  gates.first.resolve();
  const draft = w.drafts.filter({ hasText: HELD_1.join('') });
  await draft.waitFor();
  await w.dots.waitFor({ state: 'detached' });
  assert.equal(await w.drafts.count(), 1, 'one draft');
  assert.equal(await draft.locator('.who').evaluate((e) => e.textContent), 'AvaAI', 'the draft is Ava\'s, marked AI');
  await agent.locator('#msgs .msg.draft', { hasText: HELD_1.join('') }).waitFor();
  await item.locator('.styping', { hasText: 'Ava is replying' }).waitFor();
  await docShot(v, 'a02-widget-streaming', 'widget-assistant.png');
  await docShot(agent, 'a03-console-streaming', 'console-assistant.png');

  // The rest: the draft grows into the whole reply, which the stored message replaces.
  gates.rest.resolve();
  await w.bot(HELD).waitFor();
  await w.drafts.first().waitFor({ state: 'detached' });
  assert.equal(await w.bot('handmade mugs').count(), 1, 'exactly one bot bubble');
  assert.equal(await w.bot(HELD).locator('.body').innerText(), HELD);
  assert.equal(await w.bot(HELD).locator('.ai').innerText(), 'AI', 'bot messages carry the AI marker');
  const texts = await v.evaluate(() => window.__draftTexts);
  assert.ok(texts.length >= 4, `the draft grew piece by piece: ${JSON.stringify(texts)}`);
  texts.forEach((t, i) => {
    assert.ok(HELD.startsWith(t), `each draft is the start of the reply: ${JSON.stringify(t)}`);
    if (i) assert.ok(t.length > texts[i - 1].length, `and longer than the one before: ${JSON.stringify(texts)}`);
  });
  await agent.locator('#msgs .msg.bot[data-id]', { hasText: HELD }).waitFor();
  await agent.locator('#msgs .msg.draft').waitFor({ state: 'detached' });
  assert.equal(await agent.locator('#msgs .msg', { hasText: 'handmade mugs' }).count(), 1, 'one message in the console');
  await item.locator('.styping').waitFor({ state: 'detached' });
  await agent.locator('#chandler', { hasText: 'Bot · Ava' }).waitFor(); // learnt from Ava's messages
  await shot(v, 'a04-widget-reply-stored');

  // What was stored, and what the upstream was asked.
  const reply = (await history(id)).find((m) => m.author.kind === 'bot');
  assert.deepEqual(reply.author, { kind: 'bot', id: 'ava', name: 'Ava' });
  assert.equal(reply.body, HELD);
  assert.equal(reply.meta.mode, 'ai');
  assert.equal(typeof reply.meta.streamId, 'string');
  assert.equal(await w.bot(HELD).getAttribute('data-id'), reply.id);
  const call = callFor(question);
  assert.equal(call.model, 'fake-model');
  assert.equal(call.stream, true);
  assert.equal(call.authorization, 'Bearer sk-browser-tests-fake');
  assert.equal(call.messages[0].role, 'system');
  assert.match(call.messages[0].content, /You are Ava, the assistant of Mugs & Co/);

  // Drafts never survive a reload: the stored reply, once.
  await v.reload();
  await w.launcher.waitFor({ state: 'visible' });
  if (!(await w.panel.isVisible())) await w.launcher.click();
  await w.bot(HELD).waitFor();
  assert.equal(await w.botMessages.count(), 1);
  assert.equal(await w.drafts.count(), 0);
  await w.status.filter({ hasText: 'Ava · AI assistant' }).waitFor();
  await agent.context().close();
  await v.context().close();
});

test('assistant: intent chips and quick questions send their intent, and the assistant hears it', { timeout: 90_000 }, async () => {
  const { page: v, w } = await openVisitor();
  const chip = v.locator('confab-widget .chip', { hasText: 'Billing question' });
  await chip.click();
  await w.mine('Billing question').waitFor();
  await w.bot('Happy to help with "Billing question"').waitFor();
  const id = await conversationId(v);
  const sent = (await history(id)).find((m) => m.author.kind === 'visitor');
  assert.equal(sent.intent, 'billing', 'the message carries the chip\'s intent');
  const call = callFor('Billing question');
  assert.ok(call, 'the upstream was asked');
  assert.match(call.messages[0].content, new RegExp(BILLING_DESCRIPTION), 'the system prompt names the intent');
  await v.context().close();

  // A quick question sends its intentName — this time over the WebSocket: the session and
  // the socket are up first ("Call us" starts them), then the chip is clicked.
  const other = await openVisitor();
  const framesSent = [];
  const socketReady = new Promise((ok) => other.page.on('websocket', (ws) => {
    ws.on('framesent', (f) => framesSent.push(String(f.payload)));
    ws.on('framereceived', (f) => { if (/"type":"ready"/.test(String(f.payload))) ok(); });
  }));
  await other.w.call.click();
  await other.page.locator('confab-widget a.call').waitFor();
  await socketReady;
  await other.page.locator('confab-widget .chip', { hasText: 'Do you ship abroad?' }).click();
  await other.w.bot('Happy to help with "Do you ship abroad?"').waitFor();
  const sent2 = (await history(await conversationId(other.page))).find((m) => m.author.kind === 'visitor');
  assert.equal(sent2.intent, 'shipping');
  const frame = framesSent.map((f) => JSON.parse(f)).find((f) => f.type === 'message');
  assert.deepEqual([frame.message, frame.intent], ['Do you ship abroad?', 'shipping'], 'sent over the socket with its intent');
  assert.match(callFor('Do you ship abroad?').messages[0].content, /Delivery times and countries/);
  await other.page.context().close();
});

test('assistant: "Talk to a person" hands over; the console takes over and gives back', { timeout: 120_000 }, async () => {
  const agent = await openConsole();
  const { page: v, w } = await openVisitor();
  await send(v, 'Hi Ava, a first question');
  await w.bot('Happy to help with "Hi Ava, a first question"').waitFor();
  const id = await conversationId(v);
  const item = convItem(agent, id);
  await item.locator('.tag.bot').waitFor();
  await item.click();
  await consoleShows(agent, 'bot');

  // The visitor asks for a person: the action goes away, people answer.
  await w.talk.click();
  await w.talk.waitFor({ state: 'hidden' });
  await w.note.filter({ hasText: 'A person from our team will reply here.' }).waitFor();
  await w.status.filter({ hasText: /^Online$/ }).waitFor();
  await consoleShows(agent, 'human');
  await item.locator('.tag.bot').waitFor({ state: 'detached' });
  assert.equal((await api('GET', `/v1/tenant/conversations/${id}`)).json.handler, 'human');
  await shot(v, 'a05-widget-handed-over');

  // The bot stays quiet: no dots, no upstream call; a person replies.
  const quiet = 'Still there? A person, please';
  const before = calls.length;
  await send(v, quiet);
  assert.equal(await w.dots.count(), 0, 'no "typing" dots for people');
  await agent.locator('#msgs .msg.in[data-id]', { hasText: quiet }).waitFor();
  await agent.locator('#replyText').fill('Ana here, how can I help?');
  await agent.locator('#replyText').press('Enter');
  await w.fromAgent('Ana here').waitFor();
  await w.note.waitFor({ state: 'hidden' });
  await v.waitForTimeout(1000); // a bot reply would be under way by now: give it a moment to show
  assert.equal(calls.length, before, 'the upstream was not asked');
  assert.equal(await w.botMessages.count(), 1, 'no bot reply after the handoff');

  // Give back to the bot: the widget offers a person again, and Ava answers.
  await agent.locator('#giveBtn').click();
  await consoleShows(agent, 'bot');
  await item.locator('.tag.bot').waitFor();
  await w.talk.waitFor({ state: 'visible' });
  await w.status.filter({ hasText: 'Ava · AI assistant' }).waitFor();
  await send(v, 'Back to you, Ava');
  await w.bot('Happy to help with "Back to you, Ava"').waitFor();
  await shot(agent, 'a06-console-given-back');

  // An agent's reply takes the conversation over…
  await agent.locator('#replyText').fill('Ana again: I will take it from here.');
  await agent.locator('#replyText').press('Enter');
  await w.fromAgent('Ana again').waitFor();
  await consoleShows(agent, 'human');
  await w.talk.waitFor({ state: 'hidden' });
  await w.status.filter({ hasText: /^Online$/ }).waitFor();

  // …and so does Take over, after a Give back.
  await agent.locator('#giveBtn').click();
  await consoleShows(agent, 'bot');
  await w.talk.waitFor({ state: 'visible' });
  await agent.locator('#takeBtn').click();
  await consoleShows(agent, 'human');
  await w.talk.waitFor({ state: 'hidden' });
  await w.status.filter({ hasText: /^Online$/ }).waitFor();
  assert.equal((await api('GET', `/v1/tenant/conversations/${id}`)).json.handler, 'human');
  await agent.context().close();
  await v.context().close();
});

test('assistant: "Call us" asks for a call and shows the number', { timeout: 60_000 }, async () => {
  const agent = await openConsole();
  const { page: v, w } = await openVisitor();
  await w.call.click();
  const link = v.locator('confab-widget a.call');
  await link.waitFor();
  assert.equal(await link.getAttribute('href'), `tel:${PHONE}`);
  assert.equal(await link.innerText(), `Call ${PHONE}`);
  await w.call.waitFor({ state: 'detached' });
  await shot(v, 'a07-widget-call-us');
  // The team hears of it (the console's event feed).
  await agent.locator('#events li', { hasText: 'voice:requested' }).filter({ hasText: PHONE }).waitFor();
  await agent.context().close();
  await v.context().close();
});

test('assistant: when the upstream fails mid-reply, the visitor gets the fallback from the team and people take over', { timeout: 90_000 }, async () => {
  const agent = await openConsole();
  const { page: v, w } = await openVisitor();
  const question = CUT_Q;
  await send(v, question);
  const id = await conversationId(v);
  await convItem(agent, id).click();
  const fallback = v.locator('confab-widget .msg.fallback[data-id]', { hasText: FALLBACK });
  await fallback.waitFor();
  // It reads as a note from the team: the team's name, no AI marker; the partial reply is gone.
  assert.equal(await fallback.locator('.who').innerText(), TENANT_NAME);
  assert.equal(await fallback.locator('.ai').count(), 0);
  assert.equal(await w.drafts.count(), 0, 'the partial reply is discarded');
  assert.equal(await v.locator('confab-widget .msg', { hasText: CUT.join('') }).count(), 0);
  await w.talk.waitFor({ state: 'hidden' });
  await w.status.filter({ hasText: /^Online$/ }).waitFor();
  await shot(v, 'a08-widget-fallback');

  await agent.locator('#msgs .msg.bot[data-id]', { hasText: FALLBACK }).locator('.m', { hasText: 'safe_fallback' }).waitFor();
  await consoleShows(agent, 'human');
  await agent.locator('#msgs .msg.draft').waitFor({ state: 'detached' });
  const msgs = await history(id);
  assert.deepEqual(msgs.map((m) => [m.author.kind, m.body]), [['visitor', question], ['bot', FALLBACK]], 'nothing partial is stored');
  assert.equal(msgs[1].meta.mode, 'safe_fallback');
  await agent.context().close();
  await v.context().close();
});

test('assistant: with WebSockets blocked the reply arrives whole by long-polling, and a fallback hands over', { timeout: 90_000 }, async () => {
  const page = await newPage();
  await page.routeWebSocket(/\/v1\/visitor\/ws/, (ws) => ws.close());
  await page.goto(`${gw.url}/demo`);
  const w = widget(page);
  await w.launcher.click();
  await w.panel.waitFor({ state: 'visible' });
  await send(page, 'Polling along');
  await w.bot('Happy to help with "Polling along"').waitFor();
  assert.equal(await w.drafts.count(), 0);
  await w.talk.waitFor({ state: 'visible' });
  // No conversation:updated without the socket: the fallback itself tells the widget.
  await send(page, CUT_Q);
  await page.locator('confab-widget .msg.fallback[data-id]', { hasText: FALLBACK }).waitFor();
  await w.talk.waitFor({ state: 'hidden' });
  await w.status.filter({ hasText: /^Online$/ }).waitFor();
  await w.dots.waitFor({ state: 'detached' });
  await page.context().close();
});

test('assistant: "when_unavailable" — the assistant answers while nobody is online, until a person takes over', { timeout: 120_000 }, async () => {
  const nightJwt = agentJwt(AGENT_SECRET_NIGHT, 'night', 'agent-nia', 'Nia Night');
  const openNight = async () => {
    const page = await newPage();
    await page.goto(`${HOST}/night.html`);
    const w = widget(page);
    await w.launcher.click();
    await w.panel.waitFor({ state: 'visible' });
    return { page, w };
  };
  // Nobody of the team is online: Nova answers.
  const a = await openNight();
  await a.w.status.filter({ hasText: 'Nova · AI assistant' }).waitFor();
  await send(a.page, 'Anyone awake?');
  await a.w.bot('Happy to help with "Anyone awake?"').waitFor();
  await a.w.talk.waitFor({ state: 'visible' });
  await a.w.call.waitFor({ state: 'hidden' }); // no phone_number

  // An agent comes online: the conversation stays with Nova until the agent takes it.
  const agent = await newPage();
  await agent.goto(`${gw.url}/console#token=${nightJwt}`);
  await agent.locator('#conn', { hasText: 'live' }).waitFor();
  const id = await a.page.evaluate((pk) => JSON.parse(localStorage.getItem(`confab:${pk}`)).conversationId, PK_NIGHT);
  const item = convItem(agent, id);
  await item.locator('.tag.bot').waitFor();
  await item.click();
  await agent.locator('#chandler', { hasText: 'Bot · Nova' }).waitFor();
  await a.w.status.filter({ hasText: 'Nova · AI assistant' }).waitFor();
  await agent.locator('#takeBtn').click();
  await consoleShows(agent, 'human');
  await a.w.status.filter({ hasText: /^Online$/ }).waitFor();
  await a.w.talk.waitFor({ state: 'hidden' });

  // A new visitor while the agent is online: people answer (the session says so, whatever
  // a cached config said), Nova is not asked.
  const b = await openNight();
  const before = calls.length;
  await send(b.page, 'Hello, day shift?');
  await b.w.status.filter({ hasText: /^Online$/ }).waitFor();
  await b.w.talk.waitFor({ state: 'hidden' });
  await b.w.dots.waitFor({ state: 'detached' });
  const bid = await b.page.evaluate((pk) => JSON.parse(localStorage.getItem(`confab:${pk}`)).conversationId, PK_NIGHT);
  await convItem(agent, bid).click();
  await agent.locator('#msgs .msg.in[data-id]', { hasText: 'Hello, day shift?' }).waitFor();
  await consoleShows(agent, 'human');
  await convItem(agent, bid).locator('.tag.wait').waitFor(); // a person owes the answer
  assert.equal(calls.length, before, 'the assistant was not asked');
  await shot(agent, 'a09-console-night-shift');
  for (const p of [a.page, b.page, agent]) await p.context().close();
});

// The widget keeps the handler it last heard of in localStorage; a change it did not hear
// (the tab was closed) reaches it with the visitor channel's `ready` frame, which must carry
// the conversation's `handler` (an addition to the SPEC's `ready`).
test('assistant: a widget opened again learns who answers now from the ready frame', { timeout: 60_000 }, async () => {
  const { page: v, w } = await openVisitor();
  await send(v, 'Hello, quick one');
  await w.bot('Happy to help with "Hello, quick one"').waitFor();
  const id = await conversationId(v);
  const ctx = v.context();
  await v.close();
  assert.equal((await api('POST', `/v1/tenant/conversations/${id}/handler`, { handler: 'human' })).status, 200);
  const again = await ctx.newPage();
  await again.goto(`${gw.url}/demo`);
  const w2 = widget(again);
  await w2.launcher.click();
  await w2.mine('Hello, quick one').waitFor();
  await w2.status.filter({ hasText: /^Online$/ }).waitFor();
  await w2.talk.waitFor({ state: 'hidden' });
  await ctx.close();
});

test('assistant pages: no JavaScript errors, no CSP violations', () => {
  assert.deepEqual(pageErrors, []);
});
