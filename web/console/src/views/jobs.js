// jobs.js - "Batch jobs": the key's jobs with their progress (GET
// /v1/batch), a file submitted as a job (one text per line, or JSON Lines),
// results downloaded as JSON Lines, and cancel. An API key with scope batch.
'use strict';

import { el, clear, notice, table } from '../dom.js';
import { api, get, post, del, enc } from '../api.js';

let list, fileInput, modelSel, ctxRef;

export function mount(root, ctx) {
  ctxRef = ctx;
  fileInput = el('input', { type: 'file', id: 'job-file', accept: '.txt,.jsonl,.json,text/plain' });
  modelSel = el('select', { id: 'job-model' });
  list = el('div', { id: 'job-list' });
  root.append(el('div', { class: 'card' }, el('h3', {}, 'Submit a file'),
    el('p', { class: 'legend-note' }, 'A text file with one text per line, or JSON Lines (.jsonl): a string or {"text": ...} per line.'),
    el('div', { class: 'row' }, fileInput, el('label', { for: 'job-model' }, 'model'), modelSel,
      el('button', { id: 'job-submit', onclick: submit }, 'Submit'))),
  el('h2', {}, 'Jobs'), list);
  refresh(ctx);
  load();
}

export function refresh(ctx) {
  ctxRef = ctx;
  const names = (ctx.models || []).filter((m) => m.versions).map((m) => m.name);
  if ([...modelSel.options].map((o) => o.value).join('\n') !== names.join('\n')) {
    const keep = modelSel.value;
    clear(modelSel);
    for (const n of names) modelSel.append(el('option', { value: n }, n));
    if (names.includes(keep)) modelSel.value = keep;
  }
}

// Polled by main.js while the view is open.
export async function load() {
  try {
    const r = await get('/v1/batch?limit=50');
    clear(list).append(table(['job', 'model', 'status', 'progress', 'created', ''], r.body.data.map(row)));
  } catch (e) {
    clear(list).append(el('p', { class: 'empty' }, e.message));
  }
}

function row(j) {
  const p = j.progress || { done: 0, total: 0 };
  const bar = el('span');
  bar.style.width = (p.total ? (100 * p.done) / p.total : 0) + '%';
  const open = j.status === 'queued' || j.status === 'running';
  return [el('code', {}, j.id), j.model, j.status + (j.error ? ' — ' + j.error : ''),
    el('div', { class: 'row' }, el('div', { class: 'bar' }, bar), p.done + ' / ' + p.total),
    j.created_at || '',
    el('span', { 'data-job': j.id },
      el('button', { onclick: () => download(j.id), disabled: j.status !== 'completed' }, 'Results'), ' ',
      open ? el('button', { class: 'cancel', onclick: () => cancel(j.id) }, 'Cancel') : null)];
}

function textsOf(name, content) {
  const lines = content.split(/\r?\n/).filter((l) => l.trim());
  if (!/\.jsonl?$/i.test(name)) return lines;
  return lines.map((l, i) => {
    const v = JSON.parse(l);
    if (typeof v === 'string') return v;
    if (v && typeof v.text === 'string') return v.text;
    throw new Error('line ' + (i + 1) + ' is neither a string nor {"text": ...}');
  });
}

async function submit() {
  const f = fileInput.files[0];
  if (!f) { notice('choose a file first', 'error'); return; }
  try {
    const inputs = textsOf(f.name, await f.text());
    const r = await post('/v1/batch', { model: modelSel.value, inputs });
    notice('submitted ' + r.body.id + ' (' + inputs.length + ' texts)');
  } catch (e) {
    notice('submit: ' + e.message, 'error');
  }
  load();
}

async function cancel(id) {
  try {
    await del('/v1/batch/' + enc(id));
    notice('cancelled ' + id);
  } catch (e) {
    notice('cancel: ' + e.message, 'error');
  }
  load();
}

async function download(id) {
  try {
    const r = await api('GET', '/v1/batch/' + enc(id) + '/results', undefined, { Accept: 'application/jsonl' });
    const url = URL.createObjectURL(new Blob([r.body], { type: 'application/jsonl' }));
    const a = el('a', { href: url, download: id + '.jsonl' });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    notice('results: ' + e.message, 'error');
  }
}
