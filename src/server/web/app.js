// mpass web page: one small script over the prompt API (docs/api.md). No framework, no CDN.
//
// Every request carries the bearer token the user saved (kept in localStorage). Images and the
// event stream need the token too, so they are fetched with fetch() rather than <img src> and
// EventSource (neither can send an Authorization header, and a token in a URL ends up in logs).
'use strict';

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = 'mpass.token';
const EXAMPLE = `a quiet street cafe at dusk, warm lights
BREAK film photo, detailed
BREAK a woman in a red coat
num_images=1
steps=20
w=512
h=512
`;

// ---- API ----------------------------------------------------------------------------------------

function token() { return localStorage.getItem(TOKEN_KEY) || ''; }

async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + token() };
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) { headers['Content-Type'] = 'application/json'; payload = JSON.stringify(body); }
  const res = await fetch(path, { method, headers, body: payload });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
  if (!res.ok) {
    const err = new Error((data && data.error) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

// The image URLs of a prompt object are absolute; fetch them with the token and show object URLs.
const objectUrls = new Map();
async function authedImage(url) {
  if (objectUrls.has(url)) return objectUrls.get(url);
  const res = await fetch(url, { headers: { Authorization: 'Bearer ' + token() } });
  if (!res.ok) throw new Error(`${url}: ${res.status}`);
  const u = URL.createObjectURL(await res.blob());
  objectUrls.set(url, u);
  return u;
}

// Server-Sent Events over fetch: calls onEvent(name, data) until the stream ends or stop() is called.
function subscribe(path, onEvent) {
  const ctl = new AbortController();
  (async () => {
    const res = await fetch(path, { headers: { Authorization: 'Bearer ' + token(), Accept: 'text/event-stream' }, signal: ctl.signal });
    if (!res.ok || !res.body) return;
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let name = 'message', data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) name = line.slice(6).trim();
          else if (line.startsWith('data:')) data += line.slice(5).trim();
        }
        if (!data) continue;
        let parsed;
        try { parsed = JSON.parse(data); } catch (_) { parsed = data; }
        onEvent(name, parsed);
      }
    }
  })().catch(() => {});
  return () => ctl.abort();
}

// ---- small helpers ------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function banner(msg) {
  const b = $('#banner');
  b.textContent = msg || '';
  b.hidden = !msg;
}

function fmtTime(iso) { return iso ? new Date(iso).toLocaleString() : ''; }

function fmtDuration(s) {
  if (!(s >= 0)) return '';
  s = Math.round(s);
  const m = Math.floor(s / 60), r = s % 60;
  return `${m}:${String(r).padStart(2, '0')}`;
}

// A progress report as "image 1/2 · person 1 · step 3/20 · 1.23 s/it · ETA 0:25" and a fraction.
// A prompt object's `progress` is the job's fraction done; the stream's pass/step events carry the
// whole report.
function describeProgress(p) {
  if (typeof p === 'number') return { text: '', fraction: Math.max(0, Math.min(1, p)) };
  if (!p || typeof p !== 'object') return { text: '', fraction: 0 };
  const parts = [];
  if (p.n_images > 1) parts.push(`image ${p.image + 1}/${p.n_images}`);
  if (p.pass) parts.push(p.pass);
  if (p.n_steps > 0) parts.push(`step ${p.step}/${p.n_steps}`);
  if (p.sec_per_it > 0) parts.push(`${p.sec_per_it.toFixed(2)} s/it`);
  if (p.eta_seconds >= 0 && p.n_steps > 0) parts.push(`ETA ${fmtDuration(p.eta_seconds)}`);
  const fraction = typeof p.fraction === 'number' ? p.fraction : p.n_steps > 0 ? p.step / p.n_steps : 0;
  return { text: parts.join(' · '), fraction: Math.max(0, Math.min(1, fraction)) };
}

function bar(fraction) { return el('span', { class: 'bar' }, el('span', { style: `width:${(fraction * 100).toFixed(1)}%` })); }

const ACTIVE = new Set(['queued', 'running']);
const STEP_EVENTS = new Set(['pass', 'step']);

// ---- views --------------------------------------------------------------------------------------

let leaveView = () => {};

const views = {
  async new() {
    const doc = $('#doc');
    if (!doc.value) doc.value = localStorage.getItem('mpass.draft') || EXAMPLE;
    schedulePlan();
    try {
      const tunes = await api('GET', '/tunes');
      const sel = $('#tune');
      const keep = sel.value;
      sel.replaceChildren(el('option', { value: '' }, 'none (base model)'));
      for (const t of tunes) sel.append(el('option', { value: t.id }, `${t.id} — ${t.title} (${t.model_type})`));
      sel.value = keep;
    } catch (e) { if (e.status === 401) banner('Enter your token above.'); }
  },

  async jobs() {
    const body = $('#jobs');
    body.replaceChildren();
    const stops = [];
    let offset = 0;
    const load = async () => {
      const list = await api('GET', `/prompts?limit=30&offset=${offset}`);
      offset += list.length;
      $('#more-jobs').hidden = list.length < 30;
      for (const p of list) {
        const status = el('span', { class: `status ${p.status}` }, p.status);
        const prog = el('td', {});
        const row = el('tr', { 'data-id': p.id },
          el('td', {}, el('a', { href: `#/jobs/${p.id}` }, p.id)), el('td', {}, status), prog,
          el('td', {}, fmtTime(p.created_at)), el('td', { class: 'prompt', title: p.text }, p.text));
        body.append(row);
        showRowProgress(prog, p);
        if (ACTIVE.has(p.status)) {
          stops.push(subscribe(`/prompts/${p.id}/events`, (name, data) => {
            if (STEP_EVENTS.has(name)) { showRowProgress(prog, { status: 'running', progress: data }); return; }
            if (data && data.status) {
              status.textContent = data.status;
              status.className = `status ${data.status}`;
              showRowProgress(prog, { status: data.status, progress: data.progress ?? 0 });
            }
          }));
        }
      }
    };
    $('#more-jobs').onclick = () => load().catch((e) => banner(e.message));
    await load();
    leaveView = () => stops.forEach((s) => s());
  },

  async job(id) {
    $('#job-id').textContent = id;
    $('#job-images').replaceChildren();
    $('#job-sheets').replaceChildren();
    $('#job-error').hidden = true;
    const p = await api('GET', `/prompts/${id}`);
    await showJob(p);
    if (ACTIVE.has(p.status)) {
      // pass/step events carry progress; status events (queued, running, done, failed, cancelled)
      // carry only the new status, so the whole prompt object is fetched again.
      const stop = subscribe(`/prompts/${id}/events`, async (name, data) => {
        if (STEP_EVENTS.has(name)) showJobProgress(data);
        else await showJob(await api('GET', `/prompts/${id}`));
      });
      leaveView = stop;
    }
    $('#job-cancel').onclick = async () => {
      try { await api('DELETE', `/prompts/${id}`); } catch (e) { banner(e.message); }
    };
  },

  async tunes() {
    const body = $('#tunes');
    body.replaceChildren();
    for (const t of await api('GET', '/tunes')) {
      const del = el('button', { type: 'button', class: 'secondary', onclick: async () => {
        try { await api('DELETE', `/tunes/${t.id}`); views.tunes(); } catch (e) { banner(e.message); }
      } }, 'Delete');
      body.append(el('tr', {}, el('td', {}, t.id), el('td', {}, t.title), el('td', {}, t.name), el('td', {}, t.token),
        el('td', {}, t.model_type), el('td', {}, t.branch), el('td', {}, del)));
    }
  },
};

function showRowProgress(td, p) {
  td.replaceChildren();
  if (p.status === 'done') { td.append(bar(1)); return; }
  if (!ACTIVE.has(p.status)) return;
  const d = describeProgress(p.progress);
  td.append(bar(d.fraction), ' ', el('span', { class: 'muted' }, d.text || p.status));
}

function showJobProgress(progress) {
  const d = describeProgress(progress);
  $('#job-progress').replaceChildren(bar(d.fraction), ' ', d.text);
}

async function showJob(p) {
  const st = $('#job-status');
  st.textContent = p.status;
  st.className = `status ${p.status}`;
  $('#job-cancel').hidden = !ACTIVE.has(p.status);
  $('#job-doc').textContent = p.text + (p.negative_prompt ? `\nnegative_prompt=${p.negative_prompt}` : '');
  if (ACTIVE.has(p.status)) showJobProgress(p.progress);
  else $('#job-progress').replaceChildren((p.finished_at ? `finished ${fmtTime(p.finished_at)}` : '') +
    (p.expired_at ? ` — images removed ${fmtTime(p.expired_at)} (the server's retention period)` : ''));
  if (p.fail_message) { $('#job-error').textContent = p.fail_message; $('#job-error').hidden = false; }
  await fillImages($('#job-images'), p.images || [], 'image');
  const sheets = p.contact_sheets || [];
  $('#job-sheets-title').hidden = sheets.length === 0;
  await fillImages($('#job-sheets'), sheets, 'contact sheet');
  const passes = p.passes || [];
  $('#job-passes-table').hidden = passes.length === 0;
  $('#job-passes').replaceChildren(...passes.map((q) => el('tr', {},
    el('td', {}, (q.image ?? 0) + 1), el('td', {}, q.pass), el('td', { class: 'prompt', title: q.prompt || '' }, q.prompt || ''),
    el('td', {}, (q.loras || []).map((l) => `${l.id}:${l.weight}`).join(', ')), el('td', {}, q.seed),
    el('td', {}, q.width && q.height ? `${q.width}×${q.height}` : ''), el('td', {}, q.seconds !== undefined ? q.seconds.toFixed(1) : ''))));
  const warnings = [...(p.warnings || []), ...(p.skipped || []).map((s) => `skipped ${s.step}: ${s.reason}`)];
  $('#job-warnings').replaceChildren(...warnings.map((w) => el('li', {}, w)));
}

async function fillImages(box, urls, what) {
  if (box.childElementCount === urls.length) return;
  box.replaceChildren();
  for (const [i, url] of urls.entries()) {
    const img = el('img', { alt: `${what} ${i + 1}`, 'data-src': url });
    box.append(el('a', { href: '#', onclick: (ev) => { ev.preventDefault(); window.open(img.src); } }, img));
    authedImage(url).then((u) => { img.src = u; }).catch((e) => banner(e.message));
  }
}

// ---- the new-job form: live plan, submit --------------------------------------------------------

let planTimer = 0;
function schedulePlan() {
  clearTimeout(planTimer);
  planTimer = setTimeout(showPlan, 350);
}

async function showPlan() {
  const box = $('#plan');
  const text = $('#doc').value;
  localStorage.setItem('mpass.draft', text);
  if (!text.trim()) { box.textContent = 'Type a document to see its passes.'; return; }
  try {
    const res = await api('POST', '/prompts/plan', { prompt: { text } });
    const plan = res.plan;
    const items = [];
    for (const img of plan.images || []) {
      for (const q of img.passes || []) {
        items.push(`image ${img.index + 1} · ${q.kind === 'person' ? `person ${q.person}` : 'scene'} (${q.mode}) · seed ${q.seed}` +
          (q.adapters && q.adapters.length ? ` · ${q.adapters.map((a) => `${a.type}:${a.id}:${a.weight}`).join(' ')}` : '') +
          ` — ${q.prompt}`);
      }
    }
    for (const s of plan.post || []) items.push(`post · ${s.step}${s.scale ? ` ×${s.scale}` : ''}`);
    const warnings = res.warnings || [];
    box.className = 'plan';
    const size = plan.final_size ? el('div', { class: 'muted' }, `final size ${plan.final_size.w}×${plan.final_size.h}`) : null;
    box.replaceChildren(el('ol', {}, ...items.map((t) => el('li', {}, t))), ...(size ? [size] : []),
      ...warnings.map((w) => el('div', { class: 'muted' }, `warning: ${w}`)));
  } catch (e) {
    box.className = 'plan error';
    box.textContent = e.message;
  }
}

async function submitJob(ev) {
  ev.preventDefault();
  const state = $('#submit-state');
  const tune = $('#tune').value;
  const file = $('#input-image').files[0];
  const path = tune ? `/tunes/${encodeURIComponent(tune)}/prompts` : '/prompts';
  let body;
  if (file) {
    body = new FormData();
    body.append('prompt[text]', $('#doc').value);
    body.append('prompt[input_image]', file);
  } else {
    body = { prompt: { text: $('#doc').value } };
  }
  $('#submit').disabled = true;
  state.textContent = 'submitting…';
  try {
    const p = await api('POST', path, body);
    state.textContent = '';
    location.hash = `#/jobs/${p.id}`;
  } catch (e) {
    state.textContent = '';
    banner(e.message);
  } finally {
    $('#submit').disabled = false;
  }
}

async function submitTune(ev) {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const body = new FormData();
  for (const [k, v] of form.entries()) body.append(`tune[${k}]`, v);
  $('#tune-state').textContent = 'uploading…';
  try {
    const t = await api('POST', '/tunes', body);
    $('#tune-state').textContent = `registered tune ${t.id}`;
    ev.target.reset();
    views.tunes();
  } catch (e) {
    $('#tune-state').textContent = '';
    banner(e.message);
  }
}

// ---- routing ------------------------------------------------------------------------------------

async function route() {
  leaveView();
  leaveView = () => {};
  banner('');
  const [, name = 'new', id] = location.hash.replace(/^#\/?/, '#/').split('/');
  const view = name === 'jobs' && id ? 'job' : name in views ? name : 'new';
  document.querySelectorAll('.view').forEach((s) => { s.hidden = s.id !== `view-${view}`; });
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.dataset.nav === (view === 'job' ? 'jobs' : view)));
  if (!token() && view !== 'new') { banner('Enter your token above.'); return; }
  try { await views[view](id); } catch (e) { banner(e.status === 401 ? 'The token was refused: enter a valid one above.' : e.message); }
}

function init() {
  $('#token').value = token();
  $('#token-state').textContent = token() ? 'saved' : '';
  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    localStorage.setItem(TOKEN_KEY, $('#token').value.trim());
    $('#token-state').textContent = 'saved';
    route();
  });
  $('#doc').addEventListener('input', schedulePlan);
  $('#job-form').addEventListener('submit', submitJob);
  $('#tune-form').addEventListener('submit', submitTune);
  window.addEventListener('hashchange', route);
  route();
}

init();
