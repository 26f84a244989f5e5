// try.js - "Try it": send texts to a model version (the Open Inference
// Protocol route, which answers every label's probability), show the
// labels, probabilities, the version that answered, cache status and
// latency, and the same request as a curl command.
'use strict';

import { el, clear, fmt, notice, table } from '../dom.js';
import { getKey, post, enc } from '../api.js';

let modelSel, versionSel, texts, out, curl, ctxRef;

export function mount(root, ctx) {
  ctxRef = ctx;
  modelSel = el('select', { id: 'try-model', onchange: () => fillVersions(ctx) });
  versionSel = el('select', { id: 'try-version' });
  texts = el('textarea', { id: 'try-texts', placeholder: 'one text per line' }, 'a gripping, beautifully made film');
  out = el('div', { id: 'try-result' });
  curl = el('pre', { id: 'try-curl' });
  root.append(el('div', { class: 'card' },
    el('div', { class: 'row' }, el('label', { for: 'try-model' }, 'Model'), modelSel,
      el('label', { for: 'try-version' }, 'version'), versionSel),
    texts,
    el('div', { class: 'row' }, el('button', { id: 'try-send', onclick: send }, 'Send'))),
  out, el('h3', {}, 'The same request with curl'), curl);
  refresh(ctx);
}

function fillVersions(ctx) {
  const m = (ctx.models || []).find((x) => x.name === modelSel.value);
  const keep = versionSel.value;
  clear(versionSel).append(el('option', { value: '' }, 'as the server chooses'));
  if (!m) return;
  for (const v of m.versions) versionSel.append(el('option', { value: v.version }, v.version + ' (' + v.state + ')'));
  for (const a of Object.keys(m.aliases || {})) versionSel.append(el('option', { value: a }, a));
  versionSel.value = [...versionSel.options].some((o) => o.value === keep) ? keep : '';
}

export function refresh(ctx) {
  ctxRef = ctx;
  const names = (ctx.models || []).filter((m) => m.versions && m.versions.some((v) => (v.labels || []).length))
    .map((m) => m.name);
  if ([...modelSel.options].map((o) => o.value).join('\n') === names.join('\n')) return;
  const keep = modelSel.value;
  clear(modelSel);
  for (const n of names) modelSel.append(el('option', { value: n }, n));
  if (names.includes(keep)) modelSel.value = keep;
  fillVersions(ctx);
}

function request() {
  const lines = texts.value.split('\n').filter((l) => l.trim());
  const path = '/v2/models/' + enc(modelSel.value) + (versionSel.value ? '/versions/' + enc(versionSel.value) : '') + '/infer';
  const body = { inputs: [{ name: 'text', datatype: 'BYTES', shape: [lines.length], data: lines }] };
  return { path, body, lines };
}

function showCurl() {
  const { path, body } = request();
  const q = (s) => "'" + s.replace(/'/g, "'\\''") + "'";
  curl.textContent = 'curl -s ' + q(location.origin + path) + (getKey() ? ' -H "X-API-Key: $AISERVE_KEY"' : '') +
    " -H 'Content-Type: application/json' -d " + q(JSON.stringify(body));
}

async function send() {
  const { path, body, lines } = request();
  showCurl();
  if (!lines.length) { notice('write a text first', 'error'); return; }
  const t0 = performance.now();
  try {
    const r = await post(path, body);
    const ms = performance.now() - t0;
    const outputs = Object.fromEntries(r.body.outputs.map((o) => [o.name, o]));
    const m = (ctxRef.models || []).find((x) => x.name === modelSel.value);
    const version = r.body.model_version;
    const v = m && m.versions.find((x) => x.version === version);
    const labels = v ? v.labels : [];
    const k = labels.length || (outputs.probabilities ? outputs.probabilities.shape[1] : 0);
    const rows = lines.map((text, i) => [text, outputs.label.data[i],
      labels.map((l, j) => l + ' ' + fmt(outputs.probabilities.data[i * k + j], 4)).join(', ')]);
    out.dataset.answers = String(Number(out.dataset.answers || 0) + 1);
    clear(out).append(
      el('div', { class: 'row' },
        el('span', { id: 'try-version-answered' }, 'version ' + version), ' · ',
        el('span', { id: 'try-cache' }, 'cache ' + (r.headers.get('X-Cache') || '–')), ' · ',
        el('span', {}, fmt(ms) + ' ms')),
      table(['text', 'label', 'probabilities'], rows));
  } catch (e) {
    clear(out);
    notice(e.message, 'error');
  }
}
