// Browser tests for attachments (issue 12) in the widget and the agent console.
//
// Real files go through the real gateway (see harness.mjs): a PNG made here with zlib and a
// minimal valid PDF. The visitor attaches them with the paper-clip's file input, by
// pasting and by dropping (synthetic DataTransfer events), sees upload progress, sends; the
// console shows the image as a thumbnail that loads and the PDF as a chip whose link
// downloads; an agent sends a PNG back that the visitor sees as a thumbnail. The tenant's
// limits (`[tenants.attachments] max_bytes`) are small, so a too-large file and a file of a
// type outside `allowed_types` are refused before any upload, and a file that only the
// server can tell apart (HTML named .txt) is refused after it, and nothing is sent.
//
// Run: cd browser-tests && node --test --test-name-pattern=attachments

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { deflateSync, crc32 } from 'node:zlib';
import { chromium } from 'playwright-core';
import { CHROME_ARGS, START_TIMEOUT, WAIT, agentJwt, docShot, reportCspViolations, shot, startGateway } from './harness.mjs';

const PK = 'pk_live_00000000000000000000000000000f11';
const AGENT_SECRET = 'browser-tests-agent-secret-files-90ab';
const MAX_BYTES = 64 * 1024;

const CONFIG = `
allowed_origins = []
session_secret = "browser-tests-session-secret-files-0123456789"

[[tenants]]
id = "files"
name = "Paper Co"
public_key = "${PK}"
agent_secret = "${AGENT_SECRET}"
server_key = "browser-tests-server-key-files"
greeting = "Hi! Send us a screenshot or a document."
require_init_challenge = true
min_elapsed_ms = 800

[tenants.availability]
mode = "always"

[tenants.attachments]
max_bytes = ${MAX_BYTES}
allowed_types = ["image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"]

[tenants.rate_limits]
sessions_per_hour_per_ip = 10000
messages_per_hour_per_ip = 10000
messages_per_minute_per_session = 1000
config_per_minute_per_ip = 10000
polls_per_minute_per_session = 10000
events_per_minute_per_session = 10000
uploads_per_hour_per_session = 1000
`;

// ---------------------------------------------------------------- real files

/** A valid RGB PNG of w×h pixels: a diagonal gradient from `from` to `to` (RGB triples). */
function png(w, h, from, to) {
  const chunk = (type, data) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4); crc.writeUInt32BE(crc32(td) >>> 0);
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; ihdr[9] = 2; // 8 bits, truecolour
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    const row = y * (w * 3 + 1);
    raw[row] = 0; // filter: none
    for (let x = 0; x < w; x++) {
      const t = (x / w + y / h) / 2;
      for (let c = 0; c < 3; c++) raw[row + 1 + x * 3 + c] = Math.round(from[c] + (to[c] - from[c]) * t);
    }
  }
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}
/** A minimal valid one-page PDF (with a correct cross-reference table) saying `text`. */
function pdf(text) {
  const content = `BT /F1 24 Tf 72 720 Td (${text}) Tj ET`;
  const objs = [
    '<< /Type /Catalog /Pages 2 0 R >>',
    '<< /Type /Pages /Kids [3 0 R] /Count 1 >>',
    '<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>',
    `<< /Length ${content.length} >>\nstream\n${content}\nendstream`,
    '<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>',
  ];
  let out = '%PDF-1.4\n';
  const offsets = objs.map((o, i) => { const at = out.length; out += `${i + 1} 0 obj\n${o}\nendobj\n`; return at; });
  const xref = out.length;
  out += `xref\n0 ${objs.length + 1}\n0000000000 65535 f \n${offsets.map((o) => `${String(o).padStart(10, '0')} 00000 n \n`).join('')}`;
  out += `trailer\n<< /Size ${objs.length + 1} /Root 1 0 R >>\nstartxref\n${xref}\n%%EOF\n`;
  return Buffer.from(out, 'latin1');
}

const SCREENSHOT = png(160, 100, [16, 163, 127], [59, 74, 168]);   // the visitor's screenshot
const INVOICE = pdf('Invoice 1042');                                 // the visitor's PDF
const LABEL = png(120, 80, [245, 158, 11], [209, 36, 47]);           // the agent's reply
const PASTED = png(64, 64, [99, 102, 241], [236, 72, 153]);          // pasted into the widget
const DROPPED = png(48, 48, [20, 20, 20], [200, 200, 200]);          // dropped on the console
const BIG = Buffer.concat([png(8, 8, [0, 0, 0], [255, 255, 255]), Buffer.alloc(2 * MAX_BYTES)]); // over max_bytes
// Slow enough (with the throttled upload below) to watch progress and send while uploading.
const SLOW = Buffer.concat([png(32, 32, [0, 128, 255], [255, 255, 0]), Buffer.alloc(40 * 1024)]);

// ---------------------------------------------------------------- helpers

let gw, browser;
const pageErrors = [];
const jwt = agentJwt(AGENT_SECRET, 'files', 'agent-fay', 'Fay Agent');

async function newPage() {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'en-US' });
  ctx.setDefaultTimeout(WAIT);
  await ctx.addInitScript(reportCspViolations);
  const page = await ctx.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !/Failed to load resource|WebSocket/.test(m.text())) pageErrors.push(`${page.url()}: console: ${m.text()}`); });
  return page;
}
function widget(page) {
  const q = (sel, opts) => page.locator(`confab-widget ${sel}`, opts);
  return {
    launcher: q('.launch'),
    panel: q('.panel'),
    input: q('.compose textarea'),
    clip: q('.compose .clip'),
    fileInput: q('.compose input[type=file]'),
    send: q('.compose .send'),
    tray: q('.tray'),
    upload: (name) => q('.tray .up', { hasText: name }),
    ready: (name) => q('.tray .up.ok', { hasText: name }),  // uploaded
    error: q('.ferr'),
    mine: (text) => q('.msg.me[data-id]', { hasText: text }),
    fromAgent: (text) => q('.msg.agent[data-id]', { hasText: text }),
    messages: q('.msg[data-id]'),
  };
}
async function openVisitor() {
  const page = await newPage();
  await page.goto(`${gw.url}/demo`);
  const w = widget(page);
  await w.launcher.waitFor({ state: 'visible' });
  await w.launcher.click();
  await w.panel.waitFor({ state: 'visible' });
  return { page, w };
}
async function openConsole() {
  const page = await newPage();
  await page.goto(`${gw.url}/console#token=${jwt}`);
  await page.locator('#conn', { hasText: 'live' }).waitFor();
  return page;
}
function conversationId(page) {
  return page.evaluate((pk) => JSON.parse(localStorage.getItem(`confab:${pk}`)).conversationId, PK);
}
async function history(id) {
  const r = await fetch(`${gw.url}/v1/tenant/conversations/${id}/messages?limit=200`, { headers: { Authorization: `Bearer ${jwt}` }, signal: AbortSignal.timeout(WAIT) });
  assert.equal(r.status, 200);
  return (await r.json()).messages;
}
/** Waits until the image has loaded and returns its natural size. */
async function loaded(img) {
  await img.waitFor();
  await img.evaluate((e) => e.complete && e.naturalWidth ? null : new Promise((ok, ko) => { e.onload = ok; e.onerror = () => ko(new Error(`${e.src} did not load`)); }));
  return img.evaluate((e) => ({ w: e.naturalWidth, h: e.naturalHeight, src: e.src }));
}
/** GETs a link without any credential (a signed link needs none). */
async function download(url) {
  const r = await fetch(url, { signal: AbortSignal.timeout(WAIT) });
  return { status: r.status, type: r.headers.get('content-type'), disposition: r.headers.get('content-disposition'), body: Buffer.from(await r.arrayBuffer()) };
}
/** Dispatches a synthetic paste (target: a textarea) or drop (target: a drop zone) of files. */
function syntheticFiles(locator, kind, files) {
  return locator.evaluate((target, { kind, files }) => {
    const dt = new DataTransfer();
    for (const f of files) dt.items.add(new File([Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0))], f.name, { type: f.type }));
    if (kind === 'paste') { target.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true, composed: true })); return; }
    for (const type of ['dragenter', 'dragover', 'drop']) target.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true, composed: true }));
  }, { kind, files: files.map((f) => ({ ...f, b64: f.buffer.toString('base64') })) });
}
const uploads = (page) => {
  const seen = [];
  page.on('request', (r) => { if (r.method() === 'POST' && /\/attachments(\?|$)/.test(new URL(r.url()).pathname + '?')) seen.push(r.url()); });
  return seen;
};

before(async () => {
  gw = await startGateway(CONFIG, 'attachments-gateway');
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: CHROME_ARGS, timeout: START_TIMEOUT });
});
after(async () => {
  if (browser) await browser.close();
  if (gw) await gw.stop();
});

// ---------------------------------------------------------------- scenarios

let visitor, agent, convId;

test('attachments: the visitor sends a PNG and a PDF; the console shows a thumbnail and a chip that downloads', { timeout: 120_000 }, async () => {
  const cfg = await (await fetch(`${gw.url}/v1/config?pk=${PK}`, { signal: AbortSignal.timeout(WAIT) })).json();
  assert.equal(cfg.limits.maxAttachmentBytes, MAX_BYTES, 'GET /v1/config serves the attachment limits');
  assert.ok(cfg.limits.attachmentTypes.includes('application/pdf'));

  agent = await openConsole();
  ({ page: visitor } = await openVisitor());
  const w = widget(visitor);
  const up = uploads(visitor);
  assert.equal(await w.clip.getAttribute('aria-label'), 'Attach files');
  assert.match(await w.fileInput.getAttribute('accept'), /application\/pdf/, 'the picker offers the allowed types');

  // The paper-clip's file input: both files upload at once and wait in the tray.
  await w.fileInput.setInputFiles([
    { name: 'screenshot.png', mimeType: 'image/png', buffer: SCREENSHOT },
    { name: 'invoice-1042.pdf', mimeType: 'application/pdf', buffer: INVOICE },
  ]);
  await w.ready('screenshot.png').waitFor();
  await w.ready('invoice-1042.pdf').waitFor();
  assert.equal(up.length, 2, 'one upload per file');
  assert.match(await w.upload('invoice-1042.pdf').innerText(), /KB|B/, 'the chip shows the size');
  await w.upload('invoice-1042.pdf').getByRole('button', { name: 'Remove invoice-1042.pdf' }).waitFor();
  await shot(visitor, 'f01-widget-files-in-the-tray');

  const text = 'Here is my screenshot and the invoice';
  await w.input.fill(text);
  await w.input.press('Enter');
  const mine = w.mine(text);
  await mine.waitFor();
  await w.tray.waitFor({ state: 'hidden' });
  const vthumb = await loaded(mine.locator('.thumb img'));
  assert.deepEqual([vthumb.w, vthumb.h], [160, 100], 'the visitor sees its own thumbnail');
  assert.match(vthumb.src, /disposition=inline/);
  await mine.locator('a.file', { hasText: 'invoice-1042.pdf' }).waitFor();
  convId = await conversationId(visitor);

  // Stored with both attachments, in order.
  const [m] = (await history(convId)).filter((x) => x.body === text);
  assert.deepEqual(m.attachments.map((a) => [a.filename, a.contentType, a.size]),
    [['screenshot.png', 'image/png', SCREENSHOT.length], ['invoice-1042.pdf', 'application/pdf', INVOICE.length]]);

  // The console: the image as a thumbnail that loads, the PDF as a chip whose link downloads.
  await agent.locator(`#convs [data-conv-id="${convId}"]`).click();
  const inMsg = agent.locator('#msgs .msg.in[data-id]', { hasText: text });
  await inMsg.waitFor();
  const athumb = await loaded(inMsg.locator('.thumb img'));
  assert.deepEqual([athumb.w, athumb.h], [160, 100], 'the console\'s thumbnail loads');
  assert.equal(await inMsg.locator('.thumb img').getAttribute('alt'), 'screenshot.png');
  const chip = inMsg.locator('a.file', { hasText: 'invoice-1042.pdf' });
  await chip.waitFor();
  assert.match(await chip.innerText(), /\d+(\.\d)? (B|KB)/, 'the chip shows the size');
  const href = await chip.evaluate((a) => a.href);
  const got = await download(href);
  assert.equal(got.status, 200, 'the PDF link downloads');
  assert.equal(got.type, 'application/pdf');
  assert.match(got.disposition, /^attachment;.*invoice-1042\.pdf/);
  assert.ok(got.body.equals(INVOICE), 'the same bytes');
  // Clicking it downloads the file in the browser too.
  const [dl] = await Promise.all([agent.waitForEvent('download'), chip.click()]);
  assert.equal(dl.suggestedFilename(), 'invoice-1042.pdf');
  // The widget's chip links the same file.
  const vgot = await download(await mine.locator('a.file').evaluate((a) => a.href));
  assert.equal(vgot.status, 200);
  assert.ok(vgot.body.equals(INVOICE));
  await shot(agent, 'f02-console-thumbnail-and-chip');
});

test('attachments: an agent sends a PNG back; the visitor sees the thumbnail, live and after a reload', { timeout: 120_000 }, async () => {
  assert.ok(agent && visitor, 'runs after the first scenario');
  const w = widget(visitor);
  // Through the console's paper-clip, by keyboard: Tab from the reply box backwards to it.
  await agent.locator('#replyText').focus();
  await agent.keyboard.press('Shift+Tab');
  assert.equal(await agent.evaluate(() => document.activeElement.id), 'attachBtn', 'the paper-clip is next to the reply box');
  // Opened with a click: a key press on it under load sometimes did not reach the button in
  // time for the chooser event (the keyboard path is the focus check above).
  const [chooser] = await Promise.all([agent.waitForEvent('filechooser'), agent.locator('#attachBtn').click()]);
  await chooser.setFiles({ name: 'return-label.png', mimeType: 'image/png', buffer: LABEL });
  await agent.locator('#tray .up.ok', { hasText: 'return-label.png' }).waitFor();
  const reply = 'Your return label is attached';
  await agent.locator('#replyText').fill(reply);
  await agent.locator('#replyText').press('Enter');
  const out = agent.locator('#msgs .msg.out[data-id]', { hasText: reply });
  await out.waitFor();
  await agent.locator('#tray').waitFor({ state: 'hidden' });
  assert.equal((await loaded(out.locator('.thumb img'))).w, 120);

  // Live in the widget (WebSocket frame).
  const got = w.fromAgent(reply);
  await got.waitFor();
  const t = await loaded(got.locator('.thumb img'));
  assert.deepEqual([t.w, t.h], [120, 80], 'the visitor\'s thumbnail loads');
  await docShot(visitor, 'f03-widget-thumbnails', 'widget-attachments.png');

  // From history after a reload: fresh signed links, the same thumbnails and chip.
  await visitor.reload();
  await w.launcher.waitFor({ state: 'visible' });
  if (!(await w.panel.isVisible())) await w.launcher.click();
  assert.equal((await loaded(w.fromAgent(reply).locator('.thumb img'))).w, 120);
  assert.equal((await loaded(w.mine('Here is my screenshot').locator('.thumb img'))).w, 160);
  await w.mine('Here is my screenshot').locator('a.file', { hasText: 'invoice-1042.pdf' }).waitFor();
});

test('attachments: paste in the widget and drop on the console send files without text; progress shows while a file uploads', { timeout: 120_000 }, async () => {
  assert.ok(agent && visitor, 'runs after the first scenario');
  const w = widget(visitor);
  // Paste an image into the composer and send it alone.
  await syntheticFiles(w.input, 'paste', [{ name: 'pasted.png', type: 'image/png', buffer: PASTED }]);
  await w.ready('pasted.png').waitFor();
  await w.input.press('Enter');
  const only = visitor.locator('confab-widget .msg.me[data-id]').filter({ has: visitor.locator('img[alt="pasted.png"]') });
  await only.waitFor();
  assert.equal(await only.locator('.body').innerText(), '', 'no text');
  assert.equal((await loaded(only.locator('img'))).w, 64);
  const inMsg = agent.locator('#msgs .msg.in[data-id]').filter({ has: agent.locator('img[alt="pasted.png"]') });
  assert.equal((await loaded(inMsg.locator('img'))).w, 64, 'the console shows the pasted image');
  await agent.locator(`#convs [data-conv-id="${convId}"] .snip`, { hasText: 'pasted.png' }).waitFor();

  // Drop an image on the console's conversation and send it alone.
  await syntheticFiles(agent.locator('#conv'), 'drop', [{ name: 'dropped.png', type: 'image/png', buffer: DROPPED }]);
  await agent.locator('#tray .up.ok', { hasText: 'dropped.png' }).waitFor();
  await agent.locator('#sendBtn').click();
  await w.messages.filter({ has: visitor.locator('img[alt="dropped.png"]') }).waitFor();
  assert.equal((await loaded(w.messages.filter({ has: visitor.locator('img[alt="dropped.png"]') }).locator('img'))).w, 48);

  // A slow upload: the progress bar moves, and Send waits for the file.
  const cdp = await visitor.context().newCDPSession(visitor);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 20, downloadThroughput: -1, uploadThroughput: 16 * 1024 });
  const values = [];
  await visitor.exposeFunction('__progress', (v) => values.push(v));
  await w.fileInput.setInputFiles({ name: 'slow.png', mimeType: 'image/png', buffer: SLOW });
  await w.upload('slow.png').locator('progress').waitFor();
  await w.upload('slow.png').locator('progress').evaluate((p) => new MutationObserver(() => window.__progress(+p.value)).observe(p, { attributes: true }));
  const caption = 'Sent while it uploaded';
  await w.input.fill(caption);
  await w.input.press('Enter');
  assert.equal(await w.send.isDisabled(), true, 'Send waits for the upload');
  const slow = w.mine(caption);
  await slow.waitFor({ timeout: 30_000 });
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  assert.ok(values.some((v) => v > 0 && v < 100), `progress between 0 and 100, got ${JSON.stringify(values)}`);
  assert.equal((await loaded(slow.locator('img[alt="slow.png"]'))).w, 32);
  assert.equal(await w.send.isDisabled(), false);
});

test('attachments: a too-large file, a type not allowed, and a file the server refuses show errors and send nothing', { timeout: 120_000 }, async () => {
  const { page, w } = await openVisitor();
  const up = uploads(page);
  await page.locator('confab-widget .greeting').waitFor();

  // Refused before uploading: over max_bytes, and a type outside allowed_types.
  await w.fileInput.setInputFiles({ name: 'huge.png', mimeType: 'image/png', buffer: BIG });
  await w.error.filter({ hasText: /huge\.png.*too large \(128 KB; the limit is 64 KB\)/ }).waitFor();
  await w.fileInput.setInputFiles({ name: 'drawing.svg', mimeType: 'image/svg+xml', buffer: Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>') });
  await w.error.filter({ hasText: /drawing\.svg.*not allowed/ }).waitFor();
  assert.equal(await w.error.getAttribute('role'), 'alert', 'read out');
  assert.equal(await w.tray.isHidden(), true, 'nothing waits in the tray');
  await shot(page, 'f04-widget-refused-before-upload');
  assert.deepEqual(up, [], 'no upload was attempted');

  // Refused by the server after uploading: HTML named .txt sniffs as text/html (415).
  await w.fileInput.setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('<!doctype html><html><body><script>alert(1)</script></body></html>') });
  await w.error.filter({ hasText: /notes\.txt.*not sent.*type of file is not allowed/ }).waitFor();
  assert.equal(up.length, 1, 'this one was uploaded, and refused');
  assert.equal(await w.tray.isHidden(), true);
  // Nothing to send: Enter with an empty composer sends nothing.
  await w.input.press('Enter');
  await shot(page, 'f05-widget-refused-by-the-server');
  assert.equal(await page.locator('confab-widget .msg.me').count(), 0, 'no message');
  const id = await page.evaluate((pk) => (JSON.parse(localStorage.getItem(`confab:${pk}`)) || {}).conversationId, PK);
  if (id) assert.deepEqual((await history(id)).filter((m) => m.author.kind === 'visitor'), [], 'nothing stored');

  // A file removed from the tray is not sent with the message.
  await w.fileInput.setInputFiles({ name: 'keep.png', mimeType: 'image/png', buffer: PASTED });
  await w.fileInput.setInputFiles({ name: 'oops.png', mimeType: 'image/png', buffer: LABEL });
  await w.ready('oops.png').waitFor();
  await w.upload('oops.png').getByRole('button', { name: 'Remove oops.png' }).click();
  await w.upload('oops.png').waitFor({ state: 'detached' });
  await w.ready('keep.png').waitFor();
  await w.input.fill('Only one file');
  await w.input.press('Enter');
  await w.mine('Only one file').locator('img[alt="keep.png"]').waitFor();
  const cid = await conversationId(page);
  const [m] = (await history(cid)).filter((x) => x.body === 'Only one file');
  assert.deepEqual(m.attachments.map((a) => a.filename), ['keep.png']);
  await page.context().close();
});

test('attachments: without WebSockets files go over POST /v1/messages and the agent\'s reply by HTTP, and arrive by long-polling', { timeout: 120_000 }, async () => {
  const agentPage = await newPage();
  await agentPage.routeWebSocket(/\/v1\/tenant\/ws/, (ws) => ws.close({ code: 1011, reason: 'blocked by test' }));
  await agentPage.goto(`${gw.url}/console#token=${jwt}`);
  await agentPage.locator('#conn', { hasText: 'polling' }).waitFor();
  const page = await newPage();
  await page.routeWebSocket(/\/v1\/visitor\/ws/, (ws) => ws.close({ code: 1011, reason: 'blocked by test' }));
  const sends = [];
  page.on('request', (r) => { if (r.method() === 'POST' && new URL(r.url()).pathname === '/v1/messages') sends.push(r.postDataJSON()); });
  await page.goto(`${gw.url}/demo`);
  const w = widget(page);
  await w.launcher.click();
  await w.fileInput.setInputFiles({ name: 'polled.pdf', mimeType: 'application/pdf', buffer: pdf('Polled') });
  await w.ready('polled.pdf').waitFor();
  await w.input.fill('A PDF without sockets');
  await w.input.press('Enter');
  await w.mine('A PDF without sockets').waitFor();
  assert.equal(sends.length, 1);
  assert.equal(sends[0].attachments.length, 1, 'POST /v1/messages names the upload');
  const id = await conversationId(page);
  await agentPage.locator(`#convs [data-conv-id="${id}"]`).click();
  const inMsg = agentPage.locator('#msgs .msg.in[data-id]', { hasText: 'A PDF without sockets' });
  await inMsg.locator('a.file', { hasText: 'polled.pdf' }).waitFor();
  assert.equal((await download(await inMsg.locator('a.file').evaluate((a) => a.href))).status, 200);

  const replies = [];
  agentPage.on('request', (r) => { if (r.method() === 'POST' && /\/v1\/tenant\/conversations\/[^/]+\/messages$/.test(r.url())) replies.push(r.postDataJSON()); });
  await agentPage.locator('#fileIn').setInputFiles({ name: 'polled-label.png', mimeType: 'image/png', buffer: LABEL });
  await agentPage.locator('#tray .up.ok', { hasText: 'polled-label.png' }).waitFor();
  await agentPage.locator('#sendBtn').click();
  const got = w.messages.filter({ has: page.locator('img[alt="polled-label.png"]') });
  assert.equal((await loaded(got.locator('img'))).w, 120, 'the visitor sees the thumbnail by long-polling');
  assert.equal(replies.length, 1);
  assert.equal(replies[0].message, '', 'a reply with a file and no text');
  assert.equal(replies[0].attachments.length, 1);
  await agentPage.context().close();
  await page.context().close();
});

test('attachments: no JavaScript errors and no CSP violations', async () => {
  for (const p of [visitor, agent].filter(Boolean)) {
    assert.deepEqual(await p.evaluate(() => window.__cspViolations || []), [], `no CSP violation on ${p.url()}`);
  }
  assert.deepEqual(pageErrors, []);
});
