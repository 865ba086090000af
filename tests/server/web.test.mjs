// The web page in a real browser: headless Chromium driven over the DevTools protocol.
//
// Starts `mpass serve` on a free loopback port with the tiny golden model, opens the page, enters the
// token, submits a document, waits until the job is done and its image and contact sheet are shown,
// and saves a screenshot under <build>/test-output/web/. Chromium is driven through
// --remote-debugging-pipe (JSON messages separated by NUL on fds 3 and 4), so the test needs no npm
// package: Node's own test runner and child_process are enough.
//
// Environment (set by CTest): MPASS_BINARY_DIR (the mpass binary), MPASS_SHARED (golden data),
// MPASS_SOURCE_DIR (models/ with the fetched vision models); CHROMIUM overrides the browser binary.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, symlinkSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

const BIN = join(process.env.MPASS_BINARY_DIR || 'build', 'mpass');
const SHARED = process.env.MPASS_SHARED || '../shared';
const OUT = join(process.env.MPASS_BINARY_DIR || 'build', 'test-output', 'web');
const CHROMIUM = process.env.CHROMIUM || 'chromium';
const TIMEOUT_MS = 240_000;

// ---- a minimal DevTools-protocol client over the pipe --------------------------------------------
class Browser {
  constructor(profile) {
    this.proc = spawn(CHROMIUM, ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
      '--no-first-run', '--window-size=1280,1400', '--remote-debugging-pipe', `--user-data-dir=${profile}`, 'about:blank'],
      { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
    this.stderr = '';
    this.proc.stdio[2].on('data', (d) => { this.stderr = (this.stderr + d).slice(-4000); });
    this.next = 0;
    this.pending = new Map();
    this.buf = '';
    this.proc.stdio[4].on('data', (d) => {
      this.buf += d.toString();
      for (let i; (i = this.buf.indexOf('\0')) >= 0;) {
        const msg = JSON.parse(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 1);
        const p = this.pending.get(msg.id);
        if (!p) continue;
        this.pending.delete(msg.id);
        if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message}`));
        else p.resolve(msg.result);
      }
    });
  }
  send(method, params = {}, sessionId) {
    const id = ++this.next;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, method });
      this.proc.stdio[3].write(JSON.stringify({ id, method, params, sessionId }) + '\0');
    });
  }
  async open(url) {
    const { targetId } = await this.send('Target.createTarget', { url: 'about:blank' });
    const { sessionId } = await this.send('Target.attachToTarget', { targetId, flatten: true });
    this.session = sessionId;
    await this.send('Page.enable', {}, sessionId);
    await this.send('Runtime.enable', {}, sessionId);
    await this.send('Page.navigate', { url }, sessionId);
  }
  // Evaluate an expression in the page; promises are awaited, the value comes back as JSON.
  async eval(expression) {
    const r = await this.send('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true }, this.session);
    if (r.exceptionDetails) throw new Error(`page: ${r.exceptionDetails.exception?.description || r.exceptionDetails.text}`);
    return r.result.value;
  }
  // Poll an expression until it is truthy; returns its value.
  async waitFor(expression, what, ms = TIMEOUT_MS) {
    const until = Date.now() + ms;
    for (;;) {
      const v = await this.eval(expression).catch(() => undefined);
      if (v) return v;
      if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  async screenshot(path) {
    const { data } = await this.send('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true }, this.session);
    writeFileSync(path, Buffer.from(data, 'base64'));
  }
  // Resolves once the browser has exited, so its profile folder can be removed.
  close() {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return Promise.resolve();
    const gone = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill('SIGKILL');
    return gone;
  }
}

// ---- the server ---------------------------------------------------------------------------------
function startServer(dataDir, modelsDir) {
  const proc = spawn(BIN, ['--threads', '2', 'serve', '--listen', '127.0.0.1:0', '--data', dataDir, '--models', modelsDir],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stderr.on('data', (d) => { log = (log + d).slice(-8000); });
  const url = new Promise((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout });
    rl.on('line', (line) => { const m = line.match(/https?:\/\/[^\s]+/); if (m) resolve(m[0].replace(/\/$/, '')); });
    proc.on('exit', (code) => reject(new Error(`mpass serve exited (${code}) before listening:\n${log}`)));
  });
  return { proc, url, log: () => log };
}

test('the page runs a job end to end in headless Chromium', { timeout: TIMEOUT_MS + 60_000 }, async () => {
  assert.ok(existsSync(BIN), `${BIN} not built`);
  const tiny = join(SHARED, 'golden', 'tiny');
  assert.ok(existsSync(join(tiny, 'tiny.safetensors')), `golden model missing under ${tiny}`);
  const root = mkdtempSync(join(tmpdir(), 'mpass-web-'));
  const models = join(root, 'models');
  mkdirSync(join(models, 'checkpoints'), { recursive: true });
  symlinkSync(resolve(tiny, 'tiny.safetensors'), join(models, 'checkpoints', 'tiny.safetensors'));
  symlinkSync(resolve(tiny, 'tiny.json'), join(models, 'checkpoints', 'tiny.json'));
  mkdirSync(OUT, { recursive: true });
  const data = join(root, 'data');
  const tok = execFileSync(BIN, ['token', 'add', 'web', '--data', data], { encoding: 'utf8' }).trim().split(/\s+/).pop();
  assert.match(tok, /^\S{16,}$/, 'mpass token add prints the new token');

  const server = startServer(data, models);
  const browser = new Browser(join(root, 'chromium'));
  try {
    const url = await server.url;
    await browser.open(url + '/');
    await browser.waitFor(`document.readyState === 'complete' && !!document.querySelector('#token')`, 'the page');

    // The token, entered once and kept by the page.
    await browser.eval(`(() => { const t = document.querySelector('#token'); t.value = ${JSON.stringify(tok)};
      document.querySelector('#token-form').requestSubmit(); return true; })()`);
    assert.equal(await browser.eval(`localStorage.getItem('mpass.token')`), tok);

    // A small document; the live plan shows its scene pass before we submit.
    const doc = 'a red apple on a wooden table\nsteps=3\nw=64\nh=64\nseed=7\n';
    await browser.eval(`(() => { const d = document.querySelector('#doc'); d.value = ${JSON.stringify(doc)};
      d.dispatchEvent(new Event('input')); return true; })()`);
    const plan = await browser.waitFor(`(() => { const li = document.querySelector('#plan li'); return li && li.textContent; })()`, 'the live plan');
    assert.match(plan, /scene/);
    assert.match(plan, /seed 7/);
    await browser.screenshot(join(OUT, 'new.png'));

    await browser.eval(`document.querySelector('#job-form').requestSubmit(), true`);
    const jobId = await browser.waitFor(`(location.hash.match(/^#\\/jobs\\/(.+)$/) || [])[1]`, 'the job page');
    assert.ok(jobId);

    // Progress reaches done; the image and the contact sheet of the passes are shown.
    await browser.waitFor(`document.querySelector('#job-status').textContent === 'done' ||
      (['failed','cancelled'].includes(document.querySelector('#job-status').textContent) && 'x')`, 'the job to finish');
    assert.equal(await browser.eval(`document.querySelector('#job-status').textContent`), 'done',
      await browser.eval(`document.querySelector('#job-error').textContent`));
    await browser.waitFor(`[...document.querySelectorAll('#job-images img')].some((i) => i.complete && i.naturalWidth > 0)`, 'the image');
    await browser.waitFor(`[...document.querySelectorAll('#job-sheets img')].some((i) => i.complete && i.naturalWidth > 0)`, 'the contact sheet');
    assert.equal(await browser.eval(`document.querySelector('#job-images img').naturalWidth`), 64);
    assert.ok(await browser.eval(`document.querySelectorAll('#job-passes tr').length`) >= 1, 'passes table');
    await browser.screenshot(join(OUT, 'job.png'));

    // The job list shows it as done.
    await browser.eval(`location.hash = '#/jobs', true`);
    await browser.waitFor(`!!document.querySelector('#jobs tr[data-id="${jobId}"] .status.done')`, 'the job list');
    await browser.screenshot(join(OUT, 'jobs.png'));
  } catch (e) {
    e.message += `\n--- mpass serve log ---\n${server.log()}\n--- chromium ---\n${browser.stderr}`;
    throw e;
  } finally {
    await browser.close();
    server.proc.kill('SIGTERM');
    await new Promise((r) => { server.proc.once('exit', r); setTimeout(r, 5000); });
    rmSync(root, { recursive: true, force: true, maxRetries: 5 });
  }
});
