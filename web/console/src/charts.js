// charts.js - time-series charts (uPlot): one per card, redrawn from the
// history on every poll; a chart whose set of lines changes is rebuilt.
'use strict';

import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { el } from './dom.js';

const COLORS = ['#1f6feb', '#cf222e', '#1a7f37', '#9a6700', '#8250df', '#bf3989', '#0a7d91', '#57606a'];

export class Chart {
  constructor(parent, title, { unit = '', note = '' } = {}) {
    this.box = el('div', { class: 'plot' });
    this.empty = el('p', { class: 'empty' }, 'no data yet');
    this.card = el('div', { class: 'card', 'data-chart': title },
      el('h3', {}, title), note ? el('p', { class: 'legend-note' }, note) : null, this.empty, this.box);
    parent.append(this.card);
    this.unit = unit;
    this.plot = null;
    this.names = null;
  }

  // lines: [{label, values}] aligned with t (ms since the epoch).
  update(t, lines) {
    const shown = lines.filter((l) => l.values.some((v) => v !== null && v !== 0));
    this.empty.hidden = shown.length > 0;
    this.card.dataset.lines = String(shown.length);
    const names = shown.map((l) => l.label).join('\u0000');
    if (!shown.length) {
      if (this.plot) this.plot.destroy();
      this.plot = null;
      this.names = null;
      return;
    }
    const data = [t.map((x) => x / 1000), ...shown.map((l) => l.values)];
    if (this.plot && names === this.names) {
      this.plot.setData(data);
      return;
    }
    if (this.plot) this.plot.destroy();
    const unit = this.unit;
    this.names = names;
    this.plot = new uPlot({
      width: Math.max(320, this.card.clientWidth - 24),
      height: 200,
      series: [{}, ...shown.map((l, i) => ({
        label: l.label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
        value: (u, v) => (v === null || v === undefined ? '–' : fmtUnit(v, unit)),
      }))],
      axes: [{}, { values: (u, vals) => vals.map((v) => fmtUnit(v, unit)), size: 80 }],
      scales: { x: { time: true } },
      legend: { live: true },
    }, data, this.box);
  }
}

function fmtUnit(v, unit) {
  if (unit === 's') return v >= 1 ? v.toPrecision(3) + ' s' : (v * 1000).toPrecision(3) + ' ms';
  if (unit === '%') return (v * 100).toPrecision(3) + ' %';
  if (unit === '$') return '$' + v.toPrecision(3);
  return Number(v.toPrecision(3)) + (unit ? ' ' + unit : '');
}
