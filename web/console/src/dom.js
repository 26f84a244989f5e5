// dom.js - building the page from data. Every value that comes from the
// server is put in as text (textContent, attribute values), never parsed as
// HTML, so a label named <img src=x onerror=...> shows as those characters.
'use strict';

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

let noticeTimer = null;
// A message under the header: kind "error" stays until replaced, "info" fades.
export function notice(message, kind = 'info') {
  const n = document.getElementById('notice');
  n.className = kind;
  n.textContent = message;
  n.hidden = !message;
  clearTimeout(noticeTimer);
  if (kind === 'info' && message) noticeTimer = setTimeout(() => { n.hidden = true; }, 4000);
}

export function table(headers, rows, numeric = []) {
  return el('table', {},
    el('thead', {}, el('tr', {}, headers.map((h, i) => el('th', { class: numeric.includes(i) ? 'num' : null }, h)))),
    el('tbody', {}, rows.length ? rows.map((r) => el('tr', {}, r.map((c, i) =>
      el('td', { class: numeric.includes(i) ? 'num' : null }, c))))
      : el('tr', {}, el('td', { colspan: headers.length, class: 'empty' }, 'nothing yet'))));
}

export function fmt(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en');
  return Number(v.toPrecision(digits)).toString();
}

export function ms(seconds) { return seconds === null || seconds === undefined ? '–' : fmt(seconds * 1000) + ' ms'; }
export function pct(v) { return v === null || v === undefined || Number.isNaN(v) ? '–' : fmt(v * 100) + ' %'; }
