// console_page.js BASE SHOT_DIR ADMIN_KEY READ_KEY BIG_JOB SMALL_JOB
// Drives the operator console (GET /ui) in chromium as an operator would
// and reports what the page showed, as one JSON line (test_console.py
// asserts on it): without a key, with a key that lacks admin, then with an
// admin key through every view: live charts moving after traffic this
// script sends, a traffic split set from the page, texts tried (one model
// has a label that is HTML), a batch job cancelled and another downloaded,
// the gateway's spend and budgets left. A screenshot of each view goes to
// SHOT_DIR.
'use strict';
const fs = require('fs');
const path = require('path');
const { openPage, report, run } = require('./browser');

run(async () => {
  const [base, shots, adminKey, readKey, bigJob, smallJob] = process.argv.slice(2);
  const { browser, page, problems } = await openPage({ width: 1280, height: 900 });
  const out = { dialogs: [] };
  page.on('dialog', (d) => { out.dialogs.push(d.message()); d.dismiss(); });
  const api = (method, p, body, key) => fetch(base + p, {
    method, headers: Object.assign({ 'Content-Type': 'application/json' }, key ? { 'X-API-Key': key } : {}),
    body: body === undefined ? undefined : JSON.stringify(body) });
  const notice = async (re) => {
    await page.waitForFunction((src) => {
      const n = document.getElementById('notice');
      return !n.hidden && new RegExp(src).test(n.textContent);
    }, re.source, { timeout: 20000 });
    return page.locator('#notice').textContent();
  };
  const useKey = async (k) => { await page.fill('#key', k); await page.click('#keyform button[type=submit]'); };
  const view = async (name) => {
    await page.evaluate((n) => { location.hash = n; }, name);
    await page.waitForSelector('#view[data-view="' + name + '"]');
  };
  const chartLines = (title) => page.locator('.card[data-chart="' + title + '"]').getAttribute('data-lines');
  const waitLines = (title) => page.waitForFunction((t) => {
    const c = document.querySelector('.card[data-chart="' + t + '"]');
    return c && Number(c.dataset.lines) > 0;
  }, title, { timeout: 30000 });
  const shot = (name) => page.screenshot({ path: path.join(shots, 'console-' + name + '.png') });
  try {
    await steps();
  } catch (e) {
    await page.screenshot({ path: path.join(shots, 'console-failed.png') }).catch(() => {});
    throw new Error(e.message + '\n(the page then: ' + path.join(shots, 'console-failed.png') + '; problems: ' +
      JSON.stringify(problems) + '; notice: ' + (await page.locator('#notice').textContent().catch(() => '')) + ')');
  }
  out.problems = problems;
  report(out);
  await browser.close();

  async function steps() {

  // 1. No key: / goes to /ui, and the page says a key is needed.
  const res = await page.goto(base + '/', { waitUntil: 'load' });
  out.url = page.url();
  out.csp = res.headers()['content-security-policy'];
  out.noKey = await notice(/API key/);

  // 2. A key without admin: the split is refused, and nothing changes.
  await useKey(readKey);
  await view('models');
  await page.waitForSelector('.card[data-model="sentiment"] form[data-form="traffic"]');
  await page.fill('.card[data-model="sentiment"] input[name="v1"]', '30');
  await page.fill('.card[data-model="sentiment"] input[name="v2"]', '70');
  await page.click('.card[data-model="sentiment"] form[data-form="traffic"] button[type=submit]');
  out.readKeyNotice = await notice(/traffic of sentiment: /);
  out.trafficAfterRefusal = await (await api('GET', '/admin/models/sentiment/traffic', undefined, adminKey)).json();
  await view('gateway');
  out.readKeyBudgets = await (await page.waitForSelector('#gw-budgets p.empty')).textContent();

  // 3. The admin key: the live charts move once traffic comes.
  await useKey(adminKey);
  await view('live');
  await page.waitForFunction(() => Number(document.body.dataset.samples) > 0, null, { timeout: 20000 });
  out.linesBefore = await chartLines('Requests per second');
  for (let i = 0; i < 30; i++) {
    await api('POST', '/v1/models/sentiment/versions/' + (1 + (i % 2)) + '/predict',
      { texts: ['a fine film ' + i, 'a dull one ' + i] }, adminKey);
    await api('POST', '/v1/models/evil/predict', { text: 'what is it ' + i }, adminKey);
  }
  await waitLines('Requests per second');
  await waitLines('Texts per second');
  out.linesAfter = await chartLines('Requests per second');
  out.tiles = await page.locator('.tile').allTextContents();
  await shot('live');

  // 4. Models: a split set from the page.
  await view('models');
  await page.waitForSelector('.card[data-model="sentiment"] input[name="v1"]');
  await page.fill('.card[data-model="sentiment"] input[name="v1"]', '30');
  await page.fill('.card[data-model="sentiment"] input[name="v2"]', '70');
  await page.click('.card[data-model="sentiment"] form[data-form="traffic"] button[type=submit]');
  out.splitNotice = await notice(/traffic of sentiment: done/);
  await page.waitForFunction(() => /30/.test(document.querySelector('.card[data-model="sentiment"] input[name="v1"]').value));
  out.evilLabelsCell = await page.locator('.card[data-model="evil"] tbody td').nth(3).textContent();
  out.imagesOnModels = await page.locator('#view img').count();
  await shot('models');

  // 5. Drift.
  await view('drift');
  await page.selectOption('#drift-model', 'sentiment');
  await page.waitForSelector('.card[data-model="sentiment"] table');
  await waitLines('Predicted labels (share of texts)');
  out.driftSummary = await page.locator('.card[data-model="sentiment"] tbody').textContent();
  await waitLines('Confidence of the predicted label (mean, p50)');
  out.driftRows = await page.locator('.card table tbody tr').count();
  await shot('drift');

  // 6. Try it: the HTML label shows as text; a pinned version answers.
  await view('try');
  await page.selectOption('#try-model', 'evil');
  await page.fill('#try-texts', 'first text\nsecond text');
  await page.click('#try-send');
  await page.waitForSelector('#try-result table tbody tr');
  out.evilTry = await page.locator('#try-result tbody tr').first().locator('td').allTextContents();
  out.imagesOnTry = await page.locator('#view img').count();
  await page.selectOption('#try-model', 'sentiment');
  await page.selectOption('#try-version', '2');
  await page.fill('#try-texts', 'a gripping, beautifully made film');
  await page.click('#try-send');
  await page.waitForFunction(() => /version 2/.test((document.getElementById('try-version-answered') || {}).textContent || ''));
  out.tryVersion = await page.locator('#try-version-answered').textContent();
  out.tryCurl = await page.locator('#try-curl').textContent();
  // The same text again is answered from the cache (once the first answer
  // is stored: that may take a moment after it was sent).
  for (let i = 0; i < 20 && !/HIT/.test(out.tryCache || ''); i++) {
    const answers = Number(await page.locator('#try-result').getAttribute('data-answers'));
    await page.click('#try-send');
    await page.waitForFunction((n) => Number(document.getElementById('try-result').dataset.answers) > n, answers);
    out.tryCache = await page.locator('#try-cache').textContent();
  }
  await shot('try');

  // 7. Batch jobs: a big one cancelled, a small one downloaded.
  await view('jobs');
  await page.selectOption('#job-model', 'sentiment');
  await page.setInputFiles('#job-file', bigJob);
  await page.click('#job-submit');
  const submitted = await notice(/submitted batch_\w+/);
  out.bigJob = /batch_\w+/.exec(submitted)[0];
  const bigRow = page.locator('span[data-job="' + out.bigJob + '"]');
  await bigRow.locator('button.cancel').click({ timeout: 20000 });
  out.cancelNotice = await notice(/cancelled batch_|cancel: /);
  await page.setInputFiles('#job-file', smallJob);
  await page.click('#job-submit');
  out.smallJob = /batch_\w+/.exec(await notice(/submitted batch_\w+/))[0];
  const results = page.locator('span[data-job="' + out.smallJob + '"] button:not(.cancel)');
  await page.waitForFunction((id) => {
    const b = document.querySelector('span[data-job="' + id + '"] button');
    return b && !b.disabled;
  }, out.smallJob, { timeout: 60000 });
  const [download] = await Promise.all([page.waitForEvent('download'), results.click()]);
  const saved = path.join(shots, out.smallJob + '.jsonl');
  await download.saveAs(saved);
  out.downloaded = fs.readFileSync(saved, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  await shot('jobs');

  // 8. The gateway: spend per key after a few chat completions.
  for (let i = 0; i < 4; i++) {
    await api('POST', '/v1/chat/completions', { model: i % 2 ? 'small' : 'flaky',
      messages: [{ role: 'user', content: 'hello ' + i }] }, adminKey);
  }
  await view('gateway');
  await page.waitForFunction(() => document.querySelectorAll('#gw-costs tbody tr td.num').length > 0 &&
    [...document.querySelectorAll('#gw-breakers tbody tr')].some((tr) => tr.textContent.startsWith('flaky')),
  null, { timeout: 30000 });
  out.gatewayCosts = await page.locator('#gw-costs tbody tr').allTextContents();
  out.gatewayBreakers = await page.locator('#gw-breakers tbody tr').allTextContents();
  await page.waitForSelector('#gw-budgets tbody tr', { timeout: 30000 });
  out.gatewayBudgets = await page.locator('#gw-budgets tbody tr').allTextContents();
  await shot('gateway');
  }
});
