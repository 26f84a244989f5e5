// history.js - the last 15 minutes of the server's metrics, as
// GET /v1/metrics/history gives them (docs/console.md): fetched whole when
// the page opens, then only the samples after the last one, every 2 s.
// A series missing from an answer was all zeros there.
'use strict';

import { get } from './api.js';

const CAP = 900;
const ZERO = new Set(['rate', 'value', 'count']); // the others (mean, p50...) are null when empty

export class History {
  constructor() {
    this.t = [];
    this.series = new Map();
  }

  merge(doc) {
    const before = this.t.length;
    const added = doc.t.length;
    if (!added) return;
    this.t.push(...doc.t);
    const seen = new Set();
    for (const s of doc.series) {
      const key = s.name + '|' + JSON.stringify(s.labels);
      seen.add(key);
      let mine = this.series.get(key);
      if (!mine) {
        mine = { name: s.name, type: s.type, labels: s.labels, data: {} };
        for (const f of Object.keys(s)) {
          if (Array.isArray(s[f])) mine.data[f] = new Array(before).fill(ZERO.has(f) ? 0 : null);
        }
        this.series.set(key, mine);
      }
      for (const f of Object.keys(mine.data)) mine.data[f].push(...(s[f] || new Array(added).fill(null)));
    }
    for (const [key, mine] of this.series) {
      if (seen.has(key)) continue;
      for (const f of Object.keys(mine.data)) mine.data[f].push(...new Array(added).fill(ZERO.has(f) ? 0 : null));
    }
    const drop = this.t.length - CAP;
    if (drop > 0) {
      this.t.splice(0, drop);
      for (const mine of this.series.values()) for (const f of Object.keys(mine.data)) mine.data[f].splice(0, drop);
    }
  }

  async poll() {
    const since = this.t.length ? this.t[this.t.length - 1] : 0;
    const r = await get('/v1/metrics/history' + (since ? '?since=' + since : ''));
    this.merge(r.body);
  }

  of(name, filter) {
    const out = [];
    for (const s of this.series.values()) if (s.name === name && (!filter || filter(s.labels || {}, s))) out.push(s);
    return out;
  }

  // Sums field over the series of `name` that pass filter, grouped by
  // group(labels) (a string); nulls count as 0. Map(group -> values).
  sum(name, field, filter, group) {
    const out = new Map();
    for (const s of this.of(name, filter)) {
      const g = group ? group(s.labels || {}) : '';
      let acc = out.get(g);
      if (!acc) out.set(g, (acc = new Array(this.t.length).fill(0)));
      const v = s.data[field];
      for (let i = 0; i < acc.length; i++) acc[i] += v[i] || 0;
    }
    return out;
  }

  // The last value of an array that is not null (for tiles).
  static last(values) {
    for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
    return null;
  }

  // The events a rate (per second) stands for over the window: each sample
  // times the seconds since the one before (samples are about 1 s apart).
  events(rates) {
    let n = 0;
    for (let i = 0; i < rates.length; i++) {
      const dt = i ? (this.t[i] - this.t[i - 1]) / 1000 : 1;
      n += (rates[i] || 0) * dt;
    }
    return n;
  }

  // The sum of per-sample counts (a histogram's observations).
  static total(values) { return values.reduce((a, v) => a + (v || 0), 0); }
}

// a / b elementwise, null where b is 0.
export function ratio(a, b) { return a.map((v, i) => (b[i] ? v / b[i] : null)); }
