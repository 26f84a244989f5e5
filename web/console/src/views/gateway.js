// gateway.js - "Gateway": the LLM gateway's spend per API key and per
// model, its circuit breakers, fallbacks, budget refusals and upstream
// latency, from the same history as the other views; and what the
// budgets have left now (GET /v1/gateway/budgets, polled by main.js).
'use strict';

import { Chart } from '../charts.js';
import { el, clear, fmt, table } from '../dom.js';
import { get } from '../api.js';
import { History } from '../history.js';

let charts, breakers, costs, budgets;
const STATES = ['closed', 'half-open', 'open'];

export function mount(root) {
  breakers = el('div', { class: 'card', id: 'gw-breakers' });
  costs = el('div', { class: 'card', id: 'gw-costs' });
  budgets = el('div', { class: 'card', id: 'gw-budgets' });
  const grid = el('div', { class: 'grid' });
  root.append(el('div', { class: 'grid' }, breakers, costs), el('h2', {}, 'Budgets left'), budgets,
    el('h2', {}, 'Over the last 15 minutes'), grid);
  load();
  charts = {
    cost: new Chart(grid, 'Spend per minute by model', { unit: '$' }),
    requests: new Chart(grid, 'Chat requests per second by target'),
    fallbacks: new Chart(grid, 'Fallbacks per second by reason'),
    latency: new Chart(grid, 'Upstream time (p50, p99)', { unit: 's' }),
  };
}

export function refresh({ history: h }) {
  const t = h.t;
  const gauges = h.of('aiserve_llm_breaker_state');
  const req = h.sum('aiserve_llm_requests_total', 'rate', null, (l) => l.target);
  if (!gauges.length && !req.size) {
    clear(breakers).append(el('h3', {}, 'Circuit breakers'),
      el('p', { class: 'empty' }, 'no LLM gateway traffic in the last 15 minutes (docs/gateway.md sets one up)'));
  } else {
    clear(breakers).append(el('h3', {}, 'Circuit breakers'),
      table(['model', 'state now', 'open seconds (15 min)'], gauges.map((s) => {
        const now = History.last(s.data.value) || 0;
        return [s.labels.model, el('span', { class: now ? 'state-failed' : 'state-available' }, STATES[now] || String(now)),
          fmt(s.data.value.filter((v) => v === 2).length)];
      }), [2]));
  }
  const perKeyModel = h.sum('aiserve_llm_cost_usd_total', 'rate', null, (l) => (l.key || '(none)') + '\u0000' + l.model);
  const refusals = h.sum('aiserve_llm_budget_refusals_total', 'rate', null, (l) => l.key);
  const rows = [...perKeyModel].sort().map(([k, v]) => {
    const [key, model] = k.split('\u0000');
    return [key, model, '$' + fmt(h.events(v), 4), fmt(Math.round(h.events(refusals.get(key) || [])))];
  });
  clear(costs).append(el('h3', {}, 'Spend per API key and model (last 15 minutes)'),
    table(['key', 'model', 'spent', 'budget refusals'], rows, [2, 3]));
  const perModel = h.sum('aiserve_llm_cost_usd_total', 'rate', null, (l) => l.model);
  charts.cost.update(t, [...perModel].sort().map(([m, v]) => ({ label: m, values: v.map((x) => x * 60) })));
  charts.requests.update(t, [...req].sort().map(([m, v]) => ({ label: m, values: v })));
  const fb = h.sum('aiserve_llm_fallbacks_total', 'rate', null, (l) => l.model + ' ' + l.reason);
  charts.fallbacks.update(t, [...fb].sort().map(([m, v]) => ({ label: m, values: v })));
  charts.latency.update(t, h.of('aiserve_llm_upstream_seconds', (l) => l.model).flatMap((s) => [
    { label: s.labels.model + ' p50', values: s.data.p50 }, { label: s.labels.model + ' p99', values: s.data.p99 }]));
}

// Dollars to the micro-dollar the counters hold, with at least cents.
function usd(v) {
  if (v >= 1000) return '$' + fmt(v);
  const s = v.toFixed(6).replace(/0+$/, '');
  return '$' + (s.length - s.indexOf('.') - 1 < 2 ? v.toFixed(2) : s);
}
const spentOf = (c) => (c ? usd(c.spent_usd) + ' / ' + usd(c.limit_usd) : 'no limit');
const leftOf = (c) => (c ? usd(c.left_usd) : '');

// Polled by main.js while the view is open: the key's own budget, or with
// scope admin every configured key's. The server's refusal (no gateway, a
// key without scope chat) is shown in the card.
export async function load() {
  const card = budgets;
  let rows;
  try {
    rows = (await get('/v1/gateway/budgets')).body.data;
  } catch (e) {
    clear(card).append(el('p', { class: 'empty' }, e.message));
    return;
  }
  const body = rows.length
    ? table(['key', 'daily spent / limit', 'daily left', 'monthly spent / limit', 'monthly left',
      'tokens per minute used / limit', 'tokens left'], rows.map((b) => {
      const t = b.tokens_per_minute;
      return [b.key === null ? '(requests without a key)' : b.key, spentOf(b.daily), leftOf(b.daily),
        spentOf(b.monthly), leftOf(b.monthly), t ? fmt(t.used) + ' / ' + fmt(t.limit) : 'no limit',
        t ? fmt(t.left) : ''];
    }), [1, 2, 3, 4, 5, 6])
    : el('p', { class: 'empty' }, 'no budgets configured (budgets in docs/gateway.md)');
  clear(card).append(body);
}
