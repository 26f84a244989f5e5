// drift.js - "Drift": per version of a model, how its answers move over
// time: the share of each predicted label, the confidence of the predicted
// label, shadow agreement and the cascade's escalation rate; so an A/B
// split or a new version can be judged from here.
'use strict';

import { Chart } from '../charts.js';
import { el, clear, fmt, pct, table } from '../dom.js';
import { ratio } from '../history.js';

let charts, modelSel, summary, ctxRef;

export function mount(root, ctx) {
  ctxRef = ctx;
  modelSel = el('select', { id: 'drift-model', onchange: () => refresh(ctxRef) });
  summary = el('div', { class: 'card' });
  const grid = el('div', { class: 'grid' });
  root.append(el('div', { class: 'row' }, el('label', { for: 'drift-model' }, 'Model'), modelSel), summary, grid);
  charts = {
    labels: new Chart(grid, 'Predicted labels (share of texts)', { unit: '%' }),
    confidence: new Chart(grid, 'Confidence of the predicted label (mean, p50)', { unit: '%' }),
    shadow: new Chart(grid, 'Shadow agreement', { unit: '%', note: 'texts on which the shadow version gave the same label' }),
    cascade: new Chart(grid, 'Cascade escalations', { unit: '%', note: 'share of texts sent on to the second version' }),
  };
}

export function refresh(ctx) {
  ctxRef = ctx;
  const { history: h, models } = ctx;
  const names = (models || []).filter((m) => m.versions).map((m) => m.name);
  const current = modelSel.value;
  if ([...modelSel.options].map((o) => o.value).join('\n') !== names.join('\n')) {
    clear(modelSel);
    for (const n of names) modelSel.append(el('option', { value: n }, n));
    if (names.includes(current)) modelSel.value = current;
  }
  const model = modelSel.value;
  const t = h.t;
  const mine = (l) => l.model === model;
  const perVersion = h.sum('aiserve_predictions_total', 'rate', mine, (l) => l.version);
  const perLabel = h.sum('aiserve_predictions_total', 'rate', mine, (l) => l.version + '\u0000' + l.label);
  charts.labels.update(t, [...perLabel].sort().map(([k, v]) => {
    const [version, label] = k.split('\u0000');
    return { label: 'v' + version + ' ' + label, values: ratio(v, perVersion.get(version)) };
  }));
  const conf = h.of('aiserve_prediction_confidence', mine);
  charts.confidence.update(t, conf.flatMap((s) => [
    { label: 'v' + s.labels.version + ' mean', values: s.data.mean },
    { label: 'v' + s.labels.version + ' p50', values: s.data.p50 }]));
  const agree = h.sum('aiserve_shadow_predictions_total', 'rate', (l) => mine(l) && l.result === 'agree', (l) => l.version);
  const compared = h.sum('aiserve_shadow_predictions_total', 'rate', (l) => mine(l) && l.result !== 'error', (l) => l.version);
  charts.shadow.update(t, [...agree].map(([v, a]) => ({ label: 'v' + v, values: ratio(a, compared.get(v)) })));
  const esc = h.sum('aiserve_cascade_texts_total', 'rate', (l) => mine(l) && l.result === 'escalated').get('');
  const cascaded = h.sum('aiserve_cascade_texts_total', 'rate', (l) => mine(l) && l.result !== 'error').get('');
  charts.cascade.update(t, esc ? [{ label: model, values: ratio(esc, cascaded) }] : []);

  // Over the whole window, per version.
  const rows = [...perVersion.keys()].sort().map((v) => {
    const total = Math.round(h.events(perVersion.get(v)));
    const shares = [...perLabel].filter(([k]) => k.startsWith(v + '\u0000'))
      .map(([k, vals]) => k.split('\u0000')[1] + ' ' + pct(total ? h.events(vals) / total : null)).join(', ');
    const c = conf.find((s) => s.labels.version === v);
    let n = 0, sum = 0;
    if (c) c.data.count.forEach((k, i) => { if (k && c.data.mean[i] !== null) { n += k; sum += k * c.data.mean[i]; } });
    const ag = agree.get(v), cm = compared.get(v);
    return [v, fmt(total), shares, pct(n ? sum / n : null),
      cm && h.events(cm) ? pct(h.events(ag) / h.events(cm)) : '–'];
  });
  summary.dataset.model = model;
  clear(summary).append(el('h3', {}, 'Last 15 minutes'),
    table(['version', 'texts', 'labels', 'mean confidence', 'shadow agreement'], rows, [1]));
}
