// browser.js - what the browser tests share: Debian's chromium started
// headless through playwright-core, a page that records every console
// error, uncaught exception and Content-Security-Policy violation, and the
// one-line JSON report the Python side reads.
'use strict';
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.AISERVE_CHROMIUM || '/usr/lib/chromium/chromium';

async function openPage(viewport) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    // As root (CI) chromium needs --no-sandbox; nothing here is untrusted.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    timeout: 60000,
  });
  const page = await browser.newPage({ viewport: viewport || { width: 1280, height: 900 } });
  const problems = [];
  page.on('console', (msg) => { if (msg.type() === 'error') problems.push('console: ' + msg.text()); });
  page.on('pageerror', (e) => problems.push('exception: ' + e.message));
  page.on('requestfailed', (r) => problems.push('request failed: ' + r.url() + ' ' + (r.failure() || {}).errorText));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI);
    });
  });
  return { browser, page, problems };
}

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function run(main) {
  main().catch((e) => {
    process.stderr.write(String((e && e.stack) || e) + '\n');
    process.exit(1);
  });
}

module.exports = { openPage, report, run };
