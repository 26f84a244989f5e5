// main.js - the operator console (GET /ui): the tabs, the API key form, and
// one poll loop: every 2 s the metrics history since the last sample, every
// 5 s the models; the open view redraws from them. Nothing runs while the
// tab is hidden, and every request is one short fetch, so a console left
// open holds nothing on the server between polls.
'use strict';

import '../console.css';
import { el, clear, notice } from './dom.js';
import { get, getKey, setKey } from './api.js';
import { History } from './history.js';
import * as live from './views/live.js';
import * as models from './views/models.js';
import * as drift from './views/drift.js';
import * as tryit from './views/try.js';
import * as jobs from './views/jobs.js';
import * as gateway from './views/gateway.js';

const VIEWS = { live, models, drift, try: tryit, jobs, gateway };
const ctx = { history: new History(), models: [], modelsError: '', reloadModels };
let current = null;
let polls = 0;

async function reloadModels() {
  try {
    ctx.models = (await get('/v1/models')).body.data.filter((m) => m.versions);
    ctx.modelsError = '';
  } catch (e) {
    ctx.models = [];
    ctx.modelsError = e.message;
  }
  if (current && current.refresh) current.refresh(ctx);
}

function show() {
  const name = (location.hash || '#live').slice(1);
  const view = VIEWS[name] || live;
  for (const a of document.querySelectorAll('#tabs a')) a.classList.toggle('active', a.getAttribute('href') === '#' + name);
  const root = clear(document.getElementById('view'));
  root.dataset.view = name;
  current = view;
  view.mount(root, ctx);
  if (view.refresh) view.refresh(ctx);
}

async function tick() {
  if (document.hidden) return;
  polls++;
  try {
    await ctx.history.poll();
    document.body.dataset.samples = String(ctx.history.t.length);
    if (polls % 3 === 1) await reloadModels();
    if (current === jobs && polls % 2 === 0) await jobs.load();
    if (current === gateway && polls % 2 === 0) await gateway.load();
    if (current && current.refresh) current.refresh(ctx);
    const n = document.getElementById('notice');
    if (n.classList.contains('error') && n.dataset.source === 'poll') notice('');
  } catch (e) {
    notice(e.message, 'error');
    document.getElementById('notice').dataset.source = 'poll';
  }
}

async function start() {
  const key = document.getElementById('key');
  key.value = getKey();
  document.getElementById('keyform').addEventListener('submit', (e) => {
    e.preventDefault();
    setKey(key.value.trim());
    ctx.history = new History();
    polls = 0; // the next tick reloads the models too
    notice(key.value ? 'using the key for this browser session' : 'no key');
    show();
    tick();
  });
  document.getElementById('forget').addEventListener('click', () => {
    key.value = '';
    setKey('');
    notice('key forgotten');
  });
  try {
    const h = (await get('/health')).body;
    document.getElementById('server').textContent = 'version ' + h.version + ' · ' + h.status;
  } catch (e) {
    notice(e.message, 'error');
  }
  window.addEventListener('hashchange', show);
  show();
  await tick();
  setInterval(tick, 2000);
}

start();
