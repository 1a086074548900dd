// Shared by the browser test files: the gateway process, agent tokens, Chromium's flags,
// screenshots. Each test file starts its own gateway and browser (`npm test` runs the files
// one after the other).

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { copyFileSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
export const ART = join(HERE, 'artifacts');
mkdirSync(ART, { recursive: true });

export const WAIT = 15_000;                // default bound for every single wait
export const START_TIMEOUT = 60_000;       // gateway start-up bound

export function findBinary() {
  if (process.env.CONFAB_BIN) return resolve(process.env.CONFAB_BIN);
  const found = ['release', 'debug']
    .map((p) => resolve(HERE, '..', 'target', p, 'confab'))
    .filter((p) => existsSync(p))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (!found.length) throw new Error('gateway binary not found: set CONFAB_BIN or build target/{release,debug}/confab');
  return found[0];
}

/** Spawns the gateway; resolves once it logs `listening on http://ADDR`. */
export function startGateway(configText, name) {
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

export function b64url(x) { return Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url'); }
/** An HS256 agent JWT, signed the way a tenant's backend would. */
export function agentJwt(secret, tenant, sub, name) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ sub, tenant, name, exp: Math.floor(Date.now() / 1000) + 3600 });
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

export const CHROME_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic'];

// Every page reports Content-Security-Policy violations (a blocked script, style, socket or
// handler) as a console error that `watch` collects. Init scripts run outside the page's CSP.
export function reportCspViolations() {
  document.addEventListener('securitypolicyviolation', (e) => {
    (window.__cspViolations = window.__cspViolations || []).push(`${e.violatedDirective} ${e.blockedURI}`);
    console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'} (${e.sourceFile}:${e.lineNumber})`);
  });
}

export async function shot(page, name) { await page.screenshot({ path: join(ART, `${name}.png`) }); }
/** A screenshot the README shows: saved with `shot`, then copied into docs/. */
export async function docShot(page, name, docName) {
  await shot(page, name);
  copyFileSync(join(ART, `${name}.png`), resolve(HERE, '..', 'docs', docName));
}
