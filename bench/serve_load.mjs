// Load bench for `mpass serve` (issue 13): 200 submissions from 20 concurrent clients against the
// tiny model, then every accepted job followed to its end. Prints figures; asserts only what must
// hold whatever the machine (nothing accepted is lost, nothing runs twice), not timings.
//
//   node bench/serve_load.mjs [--bin build/mpass] [--shared ../shared] [--clients 20] [--jobs 200]
//                             [--max-queued 60] [--rss-bound-mb 1024] [--steps 10] [--size 128]
//
// Prints: accepted / 429 / other, submit latency, GET latency p50/p99 while jobs run, server peak
// RSS (VmHWM), jobs done per minute, and whether every accepted job ended done exactly once.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, symlinkSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) =>
  (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const BIN = resolve(args.bin || 'build/mpass');
const SHARED = resolve(args.shared || process.env.MPASS_SHARED || '../shared');
const CLIENTS = +(args.clients || 20), JOBS = +(args.jobs || 200), MAX_QUEUED = +(args['max-queued'] || 60);
const RSS_BOUND_MB = +(args['rss-bound-mb'] || 1024);
// Jobs big enough that the queue is still running while GET latency is probed (5 s).
const STEPS = +(args.steps || 10), SIZE = +(args.size || 128);

const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : NaN; };
const ms = (x) => `${x.toFixed(1)} ms`;
const sleep = (t) => new Promise((r) => setTimeout(r, t));

function rssKb(pid, field) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`${field}:\\s+(\\d+)`));
  return m ? +m[1] : 0;
}

async function main() {
  if (!existsSync(BIN)) throw new Error(`${BIN} not built`);
  const root = mkdtempSync(join(tmpdir(), 'mpass-load-'));
  const models = join(root, 'models'), data = join(root, 'data');
  mkdirSync(join(models, 'checkpoints'), { recursive: true });
  for (const f of ['tiny.safetensors', 'tiny.json']) symlinkSync(join(SHARED, 'golden', 'tiny', f), join(models, 'checkpoints', f));
  const token = execFileSync(BIN, ['token', 'add', 'load', '--data', data], { encoding: 'utf8' }).trim().split(/\s+/).pop();
  const server = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--data', data, '--models', models, '--quiet',
    '--max-queued', String(MAX_QUEUED)], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const base = await new Promise((res, rej) => {
      createInterface({ input: server.stdout }).on('line', (l) => { const m = l.match(/https?:\/\/\S+/); if (m) res(m[0].replace(/\/$/, '')); });
      server.on('exit', (c) => rej(new Error(`mpass serve exited (${c})`)));
    });
    const headers = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' };
    const doc = (i) => `a lighthouse on a cliff, study ${i}\nsteps=${STEPS}\nw=${SIZE}\nh=${SIZE}\nseed=${i}\n`;

    // 20 clients submit 200 jobs between them; each 429 is the quota rule answering.
    const accepted = [], codes = {}, submitMs = [];
    let next = 0, peakRss = 0;
    const rssTimer = setInterval(() => { try { peakRss = Math.max(peakRss, rssKb(server.pid, 'VmRSS')); } catch (_) {} }, 100);
    const t0 = performance.now();
    await Promise.all(Array.from({ length: CLIENTS }, async () => {
      for (let i; (i = next++) < JOBS;) {
        const t = performance.now();
        const r = await fetch(`${base}/prompts`, { method: 'POST', headers, body: JSON.stringify({ prompt: { text: doc(i) } }) });
        submitMs.push(performance.now() - t);
        codes[r.status] = (codes[r.status] || 0) + 1;
        const body = await r.json();
        if (r.status === 201) accepted.push(body.id);
        else if (r.status !== 429) throw new Error(`submission ${i}: ${r.status} ${JSON.stringify(body)}`);
      }
    }));
    const submitS = (performance.now() - t0) / 1000;

    // GET latency while the worker runs jobs.
    const getMs = [];
    const probeUntil = performance.now() + 5000;
    let busyAtEnd = false;
    while (performance.now() < probeUntil) {
      const id = accepted[Math.floor(Math.random() * accepted.length)];
      const t = performance.now();
      const r = await fetch(`${base}/prompts/${id}`, { headers });
      await r.json();
      getMs.push(performance.now() - t);
    }
    {
      const page = await (await fetch(`${base}/prompts?limit=120`, { headers })).json();
      busyAtEnd = page.some((p) => p.status === 'running' || p.status === 'queued');
    }

    // Follow every accepted job to its end.
    const t1 = performance.now();
    let finished = new Map();
    for (let deadline = Date.now() + 30 * 60_000; Date.now() < deadline;) {
      finished = new Map();
      for (let off = 0; ; off += 120) {
        const page = await (await fetch(`${base}/prompts?limit=120&offset=${off}`, { headers })).json();
        for (const p of page) finished.set(p.id, p);
        if (page.length < 120) break;
      }
      if (accepted.every((id) => ['done', 'failed', 'cancelled'].includes(finished.get(id)?.status))) break;
      await sleep(500);
    }
    const runS = (performance.now() - t1) / 1000;
    clearInterval(rssTimer);
    const hwm = rssKb(server.pid, 'VmHWM');
    const done = accepted.filter((id) => finished.get(id)?.status === 'done');
    const lost = accepted.filter((id) => !finished.has(id));
    const notDone = accepted.filter((id) => finished.has(id) && finished.get(id).status !== 'done');
    const twice = done.filter((id) => (finished.get(id).images || []).length !== 1 || finished.get(id).attempts !== 1);
    const unique = new Set(accepted).size === accepted.length;

    const cpu = (readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) || [])[1];
    console.log(`mpass serve load bench · ${new Date().toISOString()} · ${cpu} · ${cpus().length} CPUs`);
    console.log(`submissions     ${JOBS} from ${CLIENTS} clients in ${submitS.toFixed(2)} s: ` +
      Object.entries(codes).map(([c, n]) => `${n}×${c}`).join(', ') + ` (quota ${MAX_QUEUED} queued per token)`);
    console.log(`submit latency  p50 ${ms(pct(submitMs, 0.5))}  p99 ${ms(pct(submitMs, 0.99))}`);
    console.log(`GET while busy  ${getMs.length} requests  p50 ${ms(pct(getMs, 0.5))}  p99 ${ms(pct(getMs, 0.99))}  (target p99 < 50 ms; ${busyAtEnd ? 'jobs were still running when the probe ended' : 'WARNING: the queue emptied during the probe'})`);
    console.log(`jobs            ${done.length}/${accepted.length} done in ${runS.toFixed(1)} s after the last submission ` +
      `(${(done.length / (submitS + runS) * 60).toFixed(1)} jobs/min on the tiny model)`);
    console.log(`server RSS      peak ${(Math.max(peakRss, hwm) / 1024).toFixed(0)} MB (bound ${RSS_BOUND_MB} MB)`);
    console.log(`integrity       lost ${lost.length}, not done ${notDone.length}, run more than once ${twice.length}, ids unique ${unique}`);
    const ok = lost.length === 0 && notDone.length === 0 && twice.length === 0 && unique && Math.max(peakRss, hwm) / 1024 < RSS_BOUND_MB;
    console.log(ok ? 'OK' : 'FAILED');
    process.exitCode = ok ? 0 : 1;
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => { server.once('exit', r); setTimeout(r, 5000); });
    rmSync(root, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(`serve_load: ${e.message}`); process.exitCode = 1; });
