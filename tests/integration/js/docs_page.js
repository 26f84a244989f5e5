// docs_page.js BASE_URL SCREENSHOT API_KEY
// Opens GET /docs in chromium as a user would and reports, as one JSON line:
// the page's title, how many operations Swagger UI drew, what "Try it out"
// on GET /v1/models answered without a key and after "Authorize" with
// API_KEY, and every console error, exception or CSP violation on the way.
// Saves a screenshot. Used by tests/integration/test_docs_page.py.
'use strict';
const { openPage, report, run } = require('./browser');

async function tryModels(page) {
  const op = page.locator('#operations-default-get_v1_models');
  if (!(await op.locator('.opblock-body').count())) await op.locator('.opblock-summary').click();
  const tryIt = op.locator('button.try-out__btn');
  if ((await tryIt.textContent()).trim() === 'Try it out') await tryIt.click();
  await op.locator('button.execute').click();
  const status = op.locator('.live-responses-table .response .response-col_status');
  await status.first().waitFor({ timeout: 30000 });
  const code = (await status.first().textContent()).trim();
  await op.locator('button.btn-clear').click();
  return code;
}

run(async () => {
  const [base, shot, key] = process.argv.slice(2);
  const { browser, page, problems } = await openPage();
  const res = await page.goto(base + '/docs', { waitUntil: 'load' });
  await page.locator('.opblock').first().waitFor({ timeout: 30000 });
  await page.waitForFunction(() => document.querySelectorAll('.opblock').length > 30, null, { timeout: 30000 });
  const title = (await page.locator('.info .title').textContent()).trim();
  const operations = await page.locator('.opblock').count();
  const withoutKey = await tryModels(page);
  await page.locator('button.authorize').first().click();
  const dialog = page.locator('.dialog-ux');
  await dialog.locator('input').first().fill(key);
  await dialog.locator('button.authorize').first().click();
  await dialog.locator('button.btn-done').first().click();
  const withKey = await tryModels(page);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: shot, fullPage: false });
  report({ status: res.status(), csp: res.headers()['content-security-policy'] || null, title, operations,
           withoutKey, withKey, problems });
  await browser.close();
});
