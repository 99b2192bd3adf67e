// Drives the node's web UI in Debian's Chromium through playwright-core (tests/tests/ui.rs
// runs it against a follower of a 3-node cluster it has filled). Exits non-zero, naming the
// step, on the first failure; writes a screenshot of each page.
//
// Env: QUIVER_UI_URL (http://host:port), QUIVER_UI_ADMIN_TOKEN, QUIVER_UI_REGISTRANT_TOKEN,
// QUIVER_UI_REVIEWER_TOKEN, QUIVER_UI_SCREENSHOTS (a folder).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const base = need('QUIVER_UI_URL');
const tokens = {
  admin: need('QUIVER_UI_ADMIN_TOKEN'),
  registrant: need('QUIVER_UI_REGISTRANT_TOKEN'),
  reviewer: need('QUIVER_UI_REVIEWER_TOKEN'),
};
const shots = need('QUIVER_UI_SCREENSHOTS');
// Generous but bounded: every wait below is for a condition, never a fixed time.
const WAIT_MS = 15000;

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const profile = mkdtempSync(join(tmpdir(), 'quiver-ui-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  viewport: { width: 1280, height: 900 },
});
context.setDefaultTimeout(WAIT_MS);
const page = context.pages()[0] ?? (await context.newPage());

// Console errors and uncaught exceptions fail the run, except the browser's note of a failed
// load for the pages this script expects to be refused (a 4xx answer), named by URL.
const problems = [];
const expectedRefusals = [
  '/ui/signin', '/ui/models/no-such-model', '/ui/models/reco-model/versions/99',
  '/ui/reviews/1/decide',
];
page.on('console', (msg) => {
  if (msg.type() !== 'error') return;
  const url = msg.location()?.url ?? '';
  const refused = msg.text().startsWith('Failed to load resource')
    && expectedRefusals.some((path) => url === base + path);
  if (!refused) problems.push(`console: ${msg.text()} (${url})`);
});
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));

let step = 'start';
const loaded = [];
async function visit(path, name) {
  step = `load ${path}`;
  const response = await page.goto(base + path);
  check(response.status() === 200, `${path} answered ${response.status()}`);
  await page.waitForLoadState('load');
  // htmx loaded and ran (its script is the page's only one).
  await page.waitForFunction(() => typeof window.htmx === 'object' && window.htmx.version.startsWith('2.0.'));
  check(problems.length === 0, `no console errors on ${path}: ${problems.join('; ')}`);
  if (name) await shot(name);
  loaded.push(path);
}

async function shot(name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

async function signIn(token) {
  step = 'sign in';
  await page.goto(base + '/ui/signin');
  await page.fill('#token', token);
  await Promise.all([page.waitForURL('**/ui/models'), page.click('button[type=submit]')]);
}

async function signOut() {
  step = 'sign out';
  await Promise.all([page.waitForURL('**/ui/signin'), page.click('form.signout button')]);
}

async function modelNames() {
  return page.$$eval('#results tr.model-row', (rows) => rows.map((r) => r.dataset.model));
}

try {
  // Without a session every page sends to the sign-in page.
  step = 'no session';
  await page.goto(base + '/ui/models');
  check(page.url().endsWith('/ui/signin'), `redirected to sign-in, at ${page.url()}`);
  await shot('signin');

  // A forged token is refused, and no session starts.
  step = 'forged token';
  await page.fill('#token', 'qvr_0123456789abcdef_0123456789abcdef0123456789abcdef');
  const [refused] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/ui/signin') && r.request().method() === 'POST'),
    page.click('button[type=submit]'),
  ]);
  check(refused.status() === 401, `forged token answered ${refused.status()}`);
  check((await page.textContent('.problem')).length > 0, 'the refusal says why');
  const again = await page.goto(base + '/ui/models');
  check(page.url().endsWith('/ui/signin'), 'still no session after a forged token');

  await signIn(tokens.admin);
  await visit('/ui/models', 'catalog');
  const all = await modelNames();
  for (const m of ['reco-model', 'ranker', 'fraud-detector', 'churn-xgb', 'markup-model']) {
    check(all.includes(m), `catalog lists ${m} (has ${all})`);
  }
  // Markup in a description is shown as text, never run or parsed.
  const description = await page.textContent('tr[data-model="markup-model"] td:last-child');
  check(description.includes('<script>alert(2)</script>'), `markup shown as text: ${description}`);
  check((await page.$$('#results img')).length === 0, 'no element from a description');

  // Typing narrows the list (htmx swaps the results in place) and keeps the query in the URL.
  step = 'search';
  await page.fill('#search', 'fraud');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#results tr.model-row')];
    return rows.length === 1 && rows[0].dataset.model === 'fraud-detector';
  });
  check(page.url().includes('q=fraud'), `the search is in the URL: ${page.url()}`);
  // A prefix matches every word it starts: "rank*" finds ranker and reco-model ("ranks").
  await page.fill('#search', 'rank*');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#results tr.model-row')].map((r) => r.dataset.model);
    return rows.join(',') === 'ranker,reco-model';
  });
  check(problems.length === 0, `no console errors while searching: ${problems.join('; ')}`);
  await shot('catalog-search');

  // The model page: versions, stages, the policy, the deployment.
  await visit('/ui/models/reco-model', 'model');
  const versions = await page.$$eval('#versions tr.version-row', (rows) => rows.map((r) => r.dataset.version));
  check(versions.join(',') === '1,2', `reco-model lists v1 and v2: ${versions}`);
  check((await page.textContent('main')).includes('policy of namespace search'), 'the policy in force is named');
  check((await page.$$('#deployments tr[data-endpoint="reco-prod"]')).length === 1, 'the deployment is listed');

  // The version page and its lineage graph: upstream (snapshot, commit, run) and impact.
  await visit('/ui/models/reco-model/versions/1', 'version');
  const entities = await page.$$eval('#lineage svg g[data-entity]', (gs) => gs.map((g) => g.dataset.entity));
  for (const e of ['version:reco-model/1', 'data:snap-47', 'code:9f1c2e', 'run:run-88', 'version:ranker/1']) {
    check(entities.includes(e), `the lineage graph shows ${e} (has ${entities})`);
  }
  check((await page.textContent('#replication')).includes('replicated state'), 'a small version lives in the state');
  const box = await page.$('#lineage svg g[data-entity="version:ranker/1"]');
  check((await box.boundingBox()).width > 0, 'the graph is rendered with a size');
  check((await page.$$('#lineage svg line')).length >= 4, 'the graph has its edges');
  // A box is a link: the impact's version opens its page.
  step = 'follow the graph';
  await Promise.all([page.waitForURL('**/ui/models/ranker/versions/1'), box.click()]);
  check((await page.textContent('h1')).includes('ranker'), 'the graph led to ranker/1');
  const copies = await page.textContent('#replication');
  check(copies.includes('Full copies on nodes 1, 2, 3'), `ranker/1's copies are placed: ${copies}`);
  await visit('/ui/lineage?entity=data%3Asnap-47', 'lineage');
  const impact = await page.$$eval('#lineage svg g[data-entity]', (gs) => gs.map((g) => g.dataset.entity));
  check(impact.includes('version:reco-model/2'), `snap-47's impact holds reco-model/2 (has ${impact})`);

  await visit('/ui/deployments', 'deployments');
  check((await page.$$('tr[data-endpoint="reco-prod"] svg.split rect')).length === 1, 'the split is drawn');
  await visit('/ui/cluster', 'cluster');
  const roles = await page.$$eval('#members tr.member-row', (rows) => rows.map((r) => r.dataset.role));
  check(roles.length === 3 && roles.filter((r) => r === 'leader').length === 1, `3 members, one leader: ${roles}`);
  await visit('/ui/audit');
  step = 'verify the audit chain';
  await page.click('text=Verify the chain on this node');
  await page.waitForSelector('#audit-ok');
  await shot('audit');

  // A model that does not exist: a 404 page naming it.
  step = 'not found';
  const missing = await page.goto(base + '/ui/models/no-such-model');
  check(missing.status() === 404, `a missing model answers ${missing.status()}`);
  check((await page.textContent('.problem')).includes('no-such-model'), 'the 404 names the model');
  await shot('not-found');
  const missingVersion = await page.goto(base + '/ui/models/reco-model/versions/99');
  check(missingVersion.status() === 404, `a missing version answers ${missingVersion.status()}`);
  await visit('/ui/models');
  await signOut();

  // The registrant may not approve the version it registered: refused, nothing changes.
  await signIn(tokens.registrant);
  await visit('/ui/reviews');
  step = 'registrant approves';
  const [denied] = await Promise.all([
    page.waitForResponse((r) => r.url().includes('/ui/reviews/1/decide')),
    page.click('tr[data-review="1"] button[value=approve]'),
  ]);
  check(denied.status() === 403 || denied.status() === 409, `registrant's approval answered ${denied.status()}`);
  await visit('/ui/models/reco-model/versions/2');
  check((await page.textContent('#stage')).trim() === 'experimental', 'still experimental after a refusal');
  await signOut();

  // A reviewer approves from the queue: the version moves to Production.
  await signIn(tokens.reviewer);
  await visit('/ui/reviews', 'reviews');
  step = 'reviewer approves';
  await page.fill('tr[data-review="1"] input[name=comment]', 'checked in the browser');
  await Promise.all([
    page.waitForURL('**/ui/models/reco-model/versions/2?review=1'),
    page.click('tr[data-review="1"] button[value=approve]'),
  ]);
  check((await page.textContent('#stage')).trim() === 'production', 'the approval promoted reco-model/2');
  check((await page.textContent('#decided')).includes('Review #1'), 'the page says which review was decided');
  check(problems.length === 0, `no console errors: ${problems.join('; ')}`);
  await shot('approved');
  await visit('/ui/reviews');
  check((await page.$$('tr[data-review="1"]')).length === 0, 'the review left the queue');

  console.log(JSON.stringify({ ok: true, pages: loaded.length, screenshots: shots }));
} catch (e) {
  try { await shot(`failed-${step.replace(/[^a-z0-9]+/gi, '-')}`); } catch {}
  console.error(`failed at step "${step}": ${e.message}`);
  if (problems.length) console.error(`console problems: ${problems.join('; ')}`);
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
