// live.js - "Live": what the server is doing now and over the last 15
// minutes: requests per second, latency percentiles, errors by status,
// queues and shed requests, batch sizes, cache hits; per model version.
'use strict';

import { Chart } from '../charts.js';
import { el, clear, fmt, ms, pct } from '../dom.js';
import { History, ratio } from '../history.js';

// Endpoints that are the console's and the operators' own, not traffic.
const OWN = /^\/(ui|docs|metrics|health|openapi\.json|v1\/metrics|v2\/health|$)/;
const traffic = (l) => !OWN.test(l.endpoint || '');
const version = (l) => l.model + '@' + l.version;

let charts, tiles, endpointSel, versionSel, ctxRef;

export function mount(root, ctx) {
  ctxRef = ctx;
  tiles = el('div', { class: 'tiles' });
  endpointSel = el('select', { id: 'endpoint', onchange: () => { endpointSel.dataset.chosen = '1'; refresh(ctxRef); } });
  versionSel = el('select', { id: 'version-filter', onchange: () => refresh(ctxRef) },
    el('option', { value: '' }, 'every version'));
  const grid = el('div', { class: 'grid' });
  const perVersion = el('div', { class: 'grid' });
  root.append(tiles,
    el('div', { class: 'row' }, el('label', { for: 'endpoint' }, 'Latency of'), endpointSel),
    grid,
    el('h2', {}, 'Per model version'),
    el('div', { class: 'row' }, el('label', { for: 'version-filter' }, 'Show'), versionSel),
    perVersion);
  charts = {
    rps: new Chart(grid, 'Requests per second', { note: 'by status class; the console and health checks left out' }),
    latency: new Chart(grid, 'Latency', { unit: 's', note: 'p50, p90, p99 of the endpoint above' }),
    errors: new Chart(grid, 'Errors per second', { note: 'by status code' }),
    cache: new Chart(grid, 'Cache hit ratio', { unit: '%' }),
    texts: new Chart(perVersion, 'Texts per second'),
    inference: new Chart(perVersion, 'Inference time per batch (p50, p99)', { unit: 's' }),
    queue: new Chart(perVersion, 'Queue depth and shed requests', { note: 'texts waiting; shed: 503s per second' }),
    batch: new Chart(perVersion, 'Batch size (mean texts per engine call)'),
  };
}

function options(select, values, keep) {
  const current = select.value;
  const want = [...values].sort();
  const have = [...select.options].map((o) => o.value).filter((v) => v || !keep);
  if (want.join('\n') === have.join('\n')) return;
  clear(select);
  if (keep) select.append(el('option', { value: '' }, keep));
  for (const v of want) select.append(el('option', { value: v }, v));
  if (want.includes(current) || (keep && current === '')) select.value = current;
}

function tile(name, value) {
  return el('div', { class: 'tile' }, el('div', { class: 'value' }, value), el('div', { class: 'name' }, name));
}

export function refresh(ctx) {
  ctxRef = ctx;
  const h = ctx.history;
  const t = h.t;
  // Requests by status class, over the traffic endpoints.
  const byClass = h.sum('prediction_requests_total', 'rate', traffic, (l) => l.status[0] + 'xx');
  charts.rps.update(t, [...byClass].sort().map(([c, v]) => ({ label: c, values: v })));
  const all = h.sum('prediction_requests_total', 'rate', traffic).get('') || [];
  const errs = h.sum('prediction_requests_total', 'rate', (l) => traffic(l) && l.status >= '400', (l) => l.status);
  charts.errors.update(t, [...errs].sort().map(([c, v]) => ({ label: c, values: v })));
  const errAll = h.sum('prediction_requests_total', 'rate', (l) => traffic(l) && l.status >= '500').get('') || [];

  // Latency of one endpoint (the busiest unless one is chosen).
  const eps = h.of('prediction_latency_seconds', (l) => l.endpoint && traffic(l));
  options(endpointSel, new Set(eps.map((s) => s.labels.endpoint)));
  if ((!endpointSel.value || !endpointSel.dataset.chosen) && eps.length) { // the busiest, until one is chosen
    const busiest = eps.reduce((a, b) => (History.total(b.data.count) > History.total(a.data.count) ? b : a));
    endpointSel.value = busiest.labels.endpoint;
  }
  const lat = eps.find((s) => s.labels.endpoint === endpointSel.value);
  charts.latency.update(t, lat ? ['p50', 'p90', 'p99'].map((q) => ({ label: q, values: lat.data[q] })) : []);

  const hits = h.sum('aiserve_cache_requests_total', 'rate', (l) => l.result === 'hit').get('') || [];
  const misses = h.sum('aiserve_cache_requests_total', 'rate', (l) => l.result === 'miss').get('') || [];
  charts.cache.update(t, [{ label: 'hits / (hits + misses)', values: ratio(hits, hits.map((v, i) => v + (misses[i] || 0))) }]);

  // Per version.
  const versions = new Set(h.of('aiserve_batch_size').filter((s) => s.labels).map((s) => version(s.labels)));
  options(versionSel, versions, 'every version');
  const pick = (l) => l.model !== undefined && (!versionSel.value || version(l) === versionSel.value);
  const bs = h.of('aiserve_batch_size', pick);
  charts.texts.update(t, bs.map((s) => ({ label: version(s.labels),
    values: s.data.count.map((c, i) => (c && s.data.mean[i] !== null ? c * s.data.mean[i] : 0)) })));
  charts.batch.update(t, bs.map((s) => ({ label: version(s.labels), values: s.data.mean })));
  charts.inference.update(t, h.of('aiserve_inference_seconds', pick).flatMap((s) => [
    { label: version(s.labels) + ' p50', values: s.data.p50 },
    { label: version(s.labels) + ' p99', values: s.data.p99 }]));
  const shed = h.sum('aiserve_requests_shed_total', 'rate').get('') || [];
  charts.queue.update(t, [
    ...h.of('aiserve_queue_depth', pick).map((s) => ({ label: version(s.labels), values: s.data.value })),
    { label: 'shed / s', values: shed }]);

  // Tiles: the last 10 seconds.
  const recent = (v) => { const w = v.slice(-10); return w.length ? w.reduce((a, x) => a + (x || 0), 0) / w.length : 0; };
  const inflight = h.of('aiserve_http_requests_in_flight')[0];
  clear(tiles).append(
    tile('requests / s (10 s)', fmt(recent(all))),
    tile('p99 latency of ' + (endpointSel.value || '–'), ms(lat ? History.last(lat.data.p99) : null)),
    tile('server errors (10 s)', pct(recent(all) ? recent(errAll) / recent(all) : null)),
    tile('cache hit ratio (15 min)', pct(h.events(hits) + h.events(misses)
      ? h.events(hits) / (h.events(hits) + h.events(misses)) : null)),
    tile('in flight', fmt(inflight ? History.last(inflight.data.value) : 0)),
    tile('shed (15 min)', fmt(Math.round(h.events(shed)))));
}
