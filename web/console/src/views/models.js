// models.js - "Models": every model and version (state, load time, weights
// hash, labels) with its traffic split, aliases, shadow and cascade, and
// the admin actions on them (an API key with scope admin).
'use strict';

import { el, clear, fmt, notice } from '../dom.js';
import { put, post, del, enc } from '../api.js';

let root, shown = '', reload;

export function mount(r, ctx) {
  root = r;
  shown = '';
  reload = ctx.reloadModels;
  refresh(ctx);
}

async function act(what, fn) {
  try {
    await fn();
    notice(what + ': done');
  } catch (e) {
    notice(what + ': ' + e.message, 'error');
  }
  await reload();
}

export function refresh(ctx) {
  const models = ctx.models || [];
  const sig = JSON.stringify(models);
  if (sig === shown) return;
  if (root.contains(document.activeElement) && document.activeElement.matches('input, select')) return;
  shown = sig;
  clear(root);
  if (!models.length) root.append(el('p', { class: 'empty' }, ctx.modelsError || 'no models'));
  for (const m of models) if (m.versions) root.append(modelCard(m));
}

function versionOptions(m, selected) {
  return m.versions.map((v) => el('option', { value: v.version, selected: v.version === selected }, v.version));
}

function modelCard(m) {
  const base = '/admin/models/' + enc(m.name);
  const rows = m.versions.map((v) => el('tr', { 'data-version': v.version },
    el('td', {}, v.version),
    el('td', { class: 'state-' + v.state }, v.state, v.error ? ' — ' + v.error : ''),
    el('td', {}, v.architecture || ''),
    el('td', {}, (v.labels || []).join(', ')),
    el('td', {}, v.dtype || ''),
    el('td', { class: 'num' }, v.parameters ? fmt(v.parameters / 1e6) + ' M' : ''),
    el('td', { class: 'num' }, v.load_seconds !== undefined ? fmt(v.load_seconds) + ' s' : ''),
    el('td', { class: 'mono', title: v.sha256 || '' }, v.sha256 ? v.sha256.slice(0, 12) + '…' : '–'),
    el('td', {},
      el('button', { onclick: () => act('load ' + m.name + '@' + v.version,
        () => post(base + '/versions/' + enc(v.version) + '/load')) }, 'Load'), ' ',
      el('button', { onclick: () => act('unload ' + m.name + '@' + v.version,
        () => post(base + '/versions/' + enc(v.version) + '/unload')) }, 'Unload'))));

  // Traffic split: a percentage per version, or none (the newest answers).
  const split = {};
  const traffic = el('form', { class: 'row', 'data-form': 'traffic', onsubmit: (e) => {
    e.preventDefault();
    const body = {};
    for (const [v, input] of Object.entries(split)) if (input.value !== '' && Number(input.value) > 0) body[v] = Number(input.value);
    act('traffic of ' + m.name, () => put(base + '/traffic', body));
  } }, 'Traffic split:', m.versions.map((v) => {
    split[v.version] = el('input', { type: 'number', min: 0, max: 100, step: 1, size: 4, name: 'v' + v.version,
      value: m.traffic && m.traffic[v.version] !== undefined ? m.traffic[v.version] : '' });
    return el('label', {}, ' ' + v.version + ': ', split[v.version], ' %');
  }), el('button', { type: 'submit' }, 'Set split'),
  el('button', { type: 'button', onclick: () => act('traffic of ' + m.name, () => put(base + '/traffic', {})) }, 'Clear'));

  const aliasName = el('input', { placeholder: 'alias', size: 12, name: 'alias' });
  const aliasVersion = el('select', { name: 'alias-version' }, versionOptions(m));
  const aliases = el('div', {},
    el('div', { class: 'row' }, 'Aliases:', Object.keys(m.aliases || {}).length ? null : el('span', { class: 'muted' }, 'none'),
      Object.entries(m.aliases || {}).map(([a, v]) => el('span', {}, ' ', el('code', {}, a + ' → ' + v), ' ',
        el('button', { onclick: () => act('alias ' + a, () => del(base + '/aliases/' + enc(a))) }, '×')))),
    el('form', { class: 'row', onsubmit: (e) => {
      e.preventDefault();
      act('alias ' + aliasName.value, () => put(base + '/aliases/' + enc(aliasName.value), { version: Number(aliasVersion.value) }));
    } }, aliasName, ' → ', aliasVersion, el('button', { type: 'submit' }, 'Set alias')));

  const sh = m.shadow || {};
  const shVersion = el('select', { name: 'shadow-version' }, versionOptions(m, sh.version));
  const shPercent = el('input', { type: 'number', min: 1, max: 100, size: 4, name: 'shadow-percent', value: sh.percent || 10 });
  const shadow = el('form', { class: 'row', onsubmit: (e) => {
    e.preventDefault();
    act('shadow of ' + m.name, () => put(base + '/shadow', { version: Number(shVersion.value), percent: Number(shPercent.value) }));
  } }, 'Shadow:', el('span', { class: 'muted' }, m.shadow ? ' version ' + sh.version + ' on ' + sh.percent + ' % ' : ' off '),
  shVersion, shPercent, '%', el('button', { type: 'submit' }, 'Set shadow'),
  el('button', { type: 'button', onclick: () => act('shadow of ' + m.name, () => put(base + '/shadow', {})) }, 'Off'));

  const c = m.cascade || {};
  const cFirst = el('select', { name: 'cascade-first' }, versionOptions(m, c.first));
  const cThen = el('select', { name: 'cascade-then' }, versionOptions(m, c.then));
  const cThreshold = el('input', { type: 'number', min: 0, max: 1, step: 0.01, size: 5, name: 'cascade-threshold', value: c.threshold || 0.9 });
  const cascade = el('form', { class: 'row', onsubmit: (e) => {
    e.preventDefault();
    act('cascade of ' + m.name, () => put(base + '/cascade',
      { first: Number(cFirst.value), then: Number(cThen.value), threshold: Number(cThreshold.value) }));
  } }, 'Cascade:', el('span', { class: 'muted' }, m.cascade ? ' ' + c.first + ' then ' + c.then + ' below ' + c.threshold + ' ' : ' off '),
  cFirst, ' then ', cThen, ' below confidence ', cThreshold, el('button', { type: 'submit' }, 'Set cascade'),
  el('button', { type: 'button', onclick: () => act('cascade of ' + m.name, () => put(base + '/cascade', {})) }, 'Off'));

  return el('div', { class: 'card', 'data-model': m.name },
    el('h3', {}, m.name, m.default ? el('span', { class: 'muted' }, ' (default)') : null),
    el('table', {}, el('thead', {}, el('tr', {}, ['version', 'state', 'architecture', 'labels', 'dtype', 'parameters',
      'load time', 'weights sha256', ''].map((h) => el('th', {}, h)))), el('tbody', {}, rows)),
    traffic, aliases, shadow, cascade);
}
