// The dashboard in a real browser (Debian's chromium, driven by
// puppeteer-core): run by tests/integration/test_dashboard.c, which starts
// a controller and its agents and deploys version 1 of TENANT first.
//
//   node dashboard.test.mjs API_URL TOKEN_FILE TENANT AGENTS SCREENSHOT
//
// Opens /dashboard, enters the token, waits until the page shows every
// agent and PoP; then deploys version 2 through the API (as a deploy tool
// would) and, without reloading, waits until the page shows version 2
// live on all AGENTS agents; keeps a screenshot at SCREENSHOT. Exit 0 when
// all of that holds, 1 (with the reason) when not.
import fs from 'fs';
import os from 'os';
import path from 'path';
import puppeteer from 'puppeteer-core';

const [apiUrl, tokenFile, tenant, agentsText, screenshot] = process.argv.slice(2);
const agents = Number(agentsText);
const token = fs.readFileSync(tokenFile, 'utf8').trim();
const chromium = process.env.POPCAST_CHROMIUM || '/usr/bin/chromium';
const STEP_MS = 60000; // a bound on each wait, far above what any takes

class Failure extends Error {}
function fail(msg) {
  throw new Failure(msg);
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'popcast-chromium-'));
const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  userDataDir: profile,
  // Root in CI has no sandbox; the rest keeps chromium off the network
  // (this machine has none, and retries would slow it down).
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--window-size=1400,1100'],
});
let status = 0;
try {
  const page = await browser.newPage();
  await page.setViewport({width: 1400, height: 1100});
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('response', (r) => { if (r.status() >= 400) problems.push(`${r.status()} for ${r.url()}`); });
  const res = await page.goto(`${apiUrl}/dashboard`, {waitUntil: 'load', timeout: STEP_MS});
  if (res.status() !== 200) fail(`GET /dashboard: ${res.status()}`);
  if (!(res.headers()['content-security-policy'] || '').includes("script-src 'self'"))
    fail('the page came without its Content-Security-Policy');
  await page.type('#token', token);
  await page.click('#login button');
  // Every agent, each ok, and each PoP placed on the map.
  await page.waitForFunction((n) =>
    document.querySelectorAll('#agents tbody tr[data-state="ok"]').length === n &&
    document.querySelectorAll('#pops circle').length >= 1 &&
    document.getElementById('stream').textContent === 'live',
  {timeout: STEP_MS}, agents).catch(() => fail('the page never showed every agent ok'));
  const before = await page.$eval(`#tenants tr[data-tenant="${tenant}"]`, (r) => r.dataset.live)
    .catch(() => fail(`the page does not list tenant ${tenant}`));
  if (before !== `${agents}/${agents}`) fail(`version 1 shown live on ${before}, not everywhere`);
  // A mark on the window: gone if the page reloads.
  await page.evaluate(() => { window.popcastMark = 1; });
  const up = await fetch(`${apiUrl}/v1/tenants/${tenant}/bundles`, {
    method: 'POST',
    headers: {Authorization: `Bearer ${token}`, 'Content-Type': 'text/x-lua'},
    body: "return function(req) return 'version two' end\n",
  });
  if (up.status !== 201 && up.status !== 200) fail(`deploy of version 2: ${up.status} ${await up.text()}`);
  await page.waitForFunction((t, n) => {
    const r = document.querySelector(`#tenants tr[data-tenant="${t}"]`);
    return r && r.dataset.active === '2' && r.dataset.live === `${n}/${n}`;
  }, {timeout: STEP_MS}, tenant, agents)
    .catch(async () => fail(`version 2 never shown live on every agent: ${
      await page.$eval('#tenants tbody', (b) => b.innerText).catch(() => '?')}`));
  if (await page.evaluate(() => window.popcastMark) !== 1) fail('the page reloaded');
  const events = await page.$$eval('#events li[data-type="rollout"]', (l) => l.length);
  if (events === 0) fail('no rollout event was shown');
  await page.screenshot({path: screenshot, fullPage: true});
  if (problems.length) fail(problems.join('; '));
  console.log(`dashboard test: version 2 shown live on ${agents}/${agents} agents without a reload; ` +
    `${events} rollout events; screenshot ${screenshot}`);
} catch (e) {
  console.error(`dashboard test: ${e instanceof Failure ? e.message : e.stack || e}`);
  status = 1;
} finally {
  await browser.close();
  fs.rmSync(profile, {recursive: true, force: true});
}
process.exit(status);
