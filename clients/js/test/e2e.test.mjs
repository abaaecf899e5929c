// The dashboard end to end in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core; Playwright's own browser download is never used).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Server, startProxy, token, waitFor, uid, launchChromium, SHOTS } from './harness.mjs';

const TENANT = 'demo';
const worker = token('worker-e2e', TENANT, 'worker');
const staff = token('sam', TENANT, 'staff');

let browser;
let server;
before(async () => {
  browser = await launchChromium();
  server = await Server.start('e2e', ['--demo']);
});
after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

const pageErrors = [];

async function signedInPage(label, base = server.url) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  // Record desktop notifications: the user has allowed them.
  await ctx.addInitScript(() => {
    window.__desktop = [];
    window.Notification = class {
      static permission = 'granted';
      static requestPermission() {
        return Promise.resolve('granted');
      }
      constructor(title, options) {
        window.__desktop.push({ title, body: options && options.body });
      }
    };
  });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => pageErrors.push(`[${label}] ${e.stack || e}`));
  await page.goto(base + '/');
  await page.getByRole('button', { name: label }).click();
  await page.locator('#conn[data-status="connected"]').waitFor();
  return page;
}

const api = (tok, method, p, body) => server.api(tok, method, p, body);

test('customer watches a job to 100% through a server kill, with notification, presence, and only her jobs', async () => {
  const id = `e2e-${uid()}`;
  const title = `Directory run ${id}`;
  const tasks = Array.from({ length: 6 }, (_, i) => ({ id: `t${i + 1}`, name: `Directory ${i + 1}` }));
  const alice = await signedInPage('Customer (alice)');

  await api(worker, 'POST', '/v1/jobs', { id, owner: 'alice', title, kind: 'directory-submission', status: 'running', tasks });
  const row = alice.locator(`a.job[data-job-id="${id}"]`);
  await row.waitFor();

  // A customer's page lists only her jobs, while the demo keeps making bob's.
  await waitFor(async () => (await api(staff, 'GET', '/v1/jobs?owner=bob&limit=1')).jobs.length > 0, 'a job of bob');
  await alice.waitForTimeout(500);
  const shown = await alice.locator('a.job').evaluateAll((els) => els.map((e) => e.dataset.jobId));
  assert.ok(shown.length >= 1);
  for (const jid of shown) {
    const j = await api(staff, 'GET', `/v1/jobs/${encodeURIComponent(jid)}`);
    assert.equal(j.owner, 'alice', `alice's page shows ${jid} of ${j.owner}`);
  }
  await alice.screenshot({ path: path.join(SHOTS, 'customer-view.png') });

  // And a job of bob's is "not found" even by its URL.
  const bobs = (await api(staff, 'GET', '/v1/jobs?owner=bob&limit=1')).jobs[0];
  await alice.goto(`${server.url}/#/job/${encodeURIComponent(bobs.id)}`);
  await alice.getByText('Job not found').waitFor();
  assert.equal(await alice.locator(`[data-job-id="${bobs.id}"]`).count(), 0);

  await alice.goto(`${server.url}/#/`);
  await row.click();
  await alice.locator(`.job-head[data-job-id="${id}"]`).waitFor();

  // Staff opens the same job: both show up in its room's presence.
  const sam = await signedInPage('Staff (sam)');
  await sam.goto(`${server.url}/#/job/${encodeURIComponent(id)}`);
  await alice.locator('#watchers .avatar[data-sub="sam"]').waitFor();
  await sam.locator('#watchers .avatar[data-sub="alice"]').waitFor();

  for (const t of tasks.slice(0, 2)) await api(worker, 'PUT', `/v1/jobs/${id}/tasks/${t.id}`, { status: 'succeeded' });
  await alice.locator('.job-head .bar[data-progress="33"]').waitFor();

  // The server dies: the page says so, and catches up after the restart.
  await server.kill9();
  await alice.locator('#conn[data-status="reconnecting"]').waitFor();
  assert.match(await alice.locator('#conn-text').textContent(), /Reconnecting/);
  await server.spawn();
  await api(worker, 'PUT', `/v1/jobs/${id}/tasks/t3`, { status: 'failed', error: 'captcha not solved' });
  await api(worker, 'POST', `/v1/jobs/${id}/progress`, { stage: 'verifying', current_item: 'Directory 4', error: 'Directory 3: captcha not solved' });
  const shot = 'data:image/svg+xml,' + encodeURIComponent("<svg xmlns='http://www.w3.org/2000/svg' width='320' height='200'><rect width='320' height='200' fill='#c7d2fe'/><text x='20' y='100' font-size='28'>listing live</text></svg>");
  await api(worker, 'POST', `/v1/jobs/${id}/artifacts`, { kind: 'screenshot', payload: { url: shot, item: 'Directory 2' } });
  await alice.locator('#conn[data-status="connected"]').waitFor({ timeout: 30000 });
  assert.match(await alice.locator('#conn-text').textContent(), /Live/);
  for (const t of tasks.slice(3)) await api(worker, 'PUT', `/v1/jobs/${id}/tasks/${t.id}`, { status: 'succeeded' });
  await api(worker, 'POST', `/v1/jobs/${id}/progress`, { status: 'completed', stage: 'done' });

  await alice.locator('.job-head .bar[data-progress="100"]').waitFor();
  await alice.locator('.job-head[data-status="completed"]').waitFor();
  await alice.locator('.toast', { hasText: 'completed' }).first().waitFor();
  await waitFor(async () => Number(await alice.locator('#bell-count').textContent()) >= 1, 'the bell counts it');
  const desktop = await alice.evaluate(() => window.__desktop);
  assert.ok(desktop.some((d) => d.title === `${title} completed`), `desktop notifications: ${JSON.stringify(desktop)}`);
  await alice.locator('.shot img').first().waitFor();
  assert.ok(await alice.locator('.shot img').first().evaluate((img) => img.complete && img.naturalWidth > 0), 'the screenshot thumbnail renders');

  // Every event of the job is on the timeline once, including those written while the page was away.
  const log = await server.log_events(staff, `job:${id}`);
  await waitFor(async () => (await alice.locator('#timeline li').count()) === log.length, `timeline of ${log.length} events`);
  const positions = await alice.locator('#timeline li').evaluateAll((els) => els.map((e) => Number(e.dataset.position)));
  assert.deepEqual(positions.reverse(), log.map((e) => e.position));
  await alice.locator('.task[data-task-id="t3"] .chip', { hasText: 'failed' }).waitFor();
  await alice.screenshot({ path: path.join(SHOTS, 'job-page.png'), fullPage: true });

  // Mark as read from the bell.
  await alice.locator('#bell').click();
  // The completion reads as a success at a glance (a stall would read as a warning).
  const done = alice.locator('li.note.lvl-success', { hasText: `${title} completed` });
  await done.waitFor();
  assert.equal(await done.locator('b').evaluate((b) => getComputedStyle(b, '::before').content), '"✓"');
  await alice.screenshot({ path: path.join(SHOTS, 'bell-panel.png') });
  await alice.locator('#read-all').click();
  await alice.locator('#bell-count').waitFor({ state: 'hidden' });

  // Staff view: live list with the demo's jobs moving.
  await sam.goto(`${server.url}/#/`);
  await sam.locator('#active a.job').first().waitFor();
  await sam.locator('#f-status').selectOption('all');
  await sam.locator(`a.job[data-job-id="${id}"][data-status="completed"]`).waitFor();
  await sam.locator('#f-status').selectOption('active');
  await sam.waitForTimeout(1500);
  await sam.screenshot({ path: path.join(SHOTS, 'staff-view.png'), fullPage: true });
  const statuses = await sam.locator('#active a.job').evaluateAll((els) => els.map((e) => e.dataset.status));
  assert.ok(statuses.every((s) => ['queued', 'running', 'stalled'].includes(s)), `active filter: ${statuses}`);
});

test('signing in with a pasted token, and a bad one is refused', async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(server.url + '/');
  const signedOut = async () => {
    // Nothing of the signed-in shell shows while signed out.
    for (const id of ['#nav', '#conn', '#bell-wrap', '#who', '#signout']) {
      assert.equal(await page.locator(id).isVisible(), false, `${id} is hidden while signed out`);
    }
  };
  await signedOut();
  await page.locator('#token-input').fill('not a token');
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.getByText('does not look like a token').waitFor();
  // Well-formed but refused: told why before entering, and still signed out.
  await page.locator('#token-input').fill(token('bob', TENANT, 'customer', 3600, 'some-other-secret'));
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.getByText("not signed with this server's secret").waitFor();
  await signedOut();
  await page.screenshot({ path: path.join(SHOTS, 'sign-in-refused.png') });
  await page.locator('#token-input').fill(token('bob', TENANT, 'customer', -10));
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.getByText('This token has expired').waitFor();
  await signedOut();
  await page.locator('#token-input').fill(token('bob', TENANT, 'customer'));
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.locator('#conn[data-status="connected"]').waitFor();
  assert.match(await page.locator('#who').textContent(), /bob · customer/);
  await page.locator('a.job').first().waitFor({ timeout: 30000 });
  const owners = await page.locator('a.job').evaluateAll((els) => els.map((e) => e.dataset.jobId));
  for (const jid of owners) assert.equal((await api(staff, 'GET', `/v1/jobs/${encodeURIComponent(jid)}`)).owner, 'bob');
  await ctx.close();
});

test('behind a proxy that refuses WebSockets the dashboard stays live over SSE', async () => {
  const proxy = await startProxy(server.url, ['websocket']);
  try {
    const sam = await signedInPage('Staff (sam)', proxy.url);
    await waitFor(async () => /Live \(SSE\)/.test(await sam.locator('#conn-text').textContent()), 'Live (SSE)');
    const id = `sse-${uid()}`;
    await api(worker, 'POST', '/v1/jobs', { id, owner: 'bob', title: `Via SSE ${id}`, status: 'running', total: 4 });
    await sam.locator(`a.job[data-job-id="${id}"]`).waitFor();
    await api(worker, 'POST', `/v1/jobs/${id}/progress`, { succeeded: 2 });
    await sam.locator(`a.job[data-job-id="${id}"] .bar[data-progress="50"]`).waitFor();
    assert.ok(proxy.state.upgrades >= 1, 'the WebSocket was tried first');
    await sam.context().close();
  } finally {
    await proxy.close();
  }
});

test('an outage is not calm: banner, stale data without ETAs, Offline after its bound, and Retry now', async () => {
  // A server of its own: this test kills it for a while.
  const own = await Server.start('e2e-outage');
  try {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    page.on('pageerror', (e) => pageErrors.push(`[outage] ${e.stack || e}`));
    await page.goto(own.url + '/');
    await page.locator('#token-input').fill(token('sam', TENANT, 'staff'));
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.locator('#conn[data-status="connected"]').waitFor();
    const id = `eta-${uid()}`;
    await own.api(worker, 'POST', '/v1/jobs', { id, owner: 'bob', title: `Crawl ${id}`, status: 'running', total: 10 });
    await own.api(worker, 'POST', `/v1/jobs/${id}/progress`, { succeeded: 4 });
    const row = page.locator(`a.job[data-job-id="${id}"]`);
    await waitFor(async () => /ETA/.test(await row.textContent()), 'an ETA while live');
    assert.equal(await page.locator('#outage').isVisible(), false, 'no banner while live');

    await own.kill9();
    await page.locator('#outage[data-state="reconnecting"]').waitFor();
    assert.match(await page.locator('#outage-text').textContent(), /Connection lost.*out of date/);
    assert.ok(await page.evaluate(() => document.body.classList.contains('stale')), 'the data is marked stale');
    await waitFor(async () => !/ETA/.test(await row.textContent()), 'no ETA while the data is stale');
    await page.screenshot({ path: path.join(SHOTS, 'outage-reconnecting.png') });
    await page.locator('#outage[data-state="offline"]').waitFor({ timeout: 20000 });
    assert.equal(await page.locator('#conn-text').textContent(), 'Offline');
    await page.screenshot({ path: path.join(SHOTS, 'outage-offline.png') });

    // Back: a change made meanwhile is caught up; Retry now does not wait out the backoff.
    await own.spawn();
    await own.api(worker, 'POST', `/v1/jobs/${id}/progress`, { succeeded: 8 });
    await page.locator('#retry-now').click();
    await page.locator('#outage[data-state="back"]').waitFor({ timeout: 10000 });
    assert.match(await page.locator('#outage-text').textContent(), /Back online/);
    assert.equal(await page.evaluate(() => document.body.classList.contains('stale')), false);
    await row.locator('.bar[data-progress="80"]').waitFor();
    await waitFor(async () => /ETA/.test(await row.textContent()), 'the ETA is back');
    await page.screenshot({ path: path.join(SHOTS, 'outage-back.png') });
    await ctx.close();
  } finally {
    await own.stop();
  }
});

test('the inspector shows live connections, topics, presence, closes, and sends a test broadcast', async () => {
  const id = `insp-${uid()}`;
  await api(worker, 'POST', '/v1/jobs', { id, owner: 'alice', title: `Inspected ${id}`, status: 'running', total: 5 });
  const alice = await signedInPage('Customer (alice)');
  await alice.goto(`${server.url}/#/job/${encodeURIComponent(id)}`);
  await alice.locator(`.job-head[data-job-id="${id}"]`).waitFor();
  const sam = await signedInPage('Staff (sam)');
  await sam.locator('#nav-inspect').click();
  const aliceRow = sam.locator('#insp-conns tr[data-transport="websocket"]', { hasText: 'alice' });
  await aliceRow.first().waitFor();
  await sam.locator(`#insp-topics tr[data-topic="job:${id}"]`).waitFor();
  await sam.locator(`#insp-presence .insp-room[data-room="room:job:${id}"]`, { hasText: 'alice' }).waitFor();
  // Rates come from two reads.
  await waitFor(async () => /\d/.test(await sam.locator('[data-stat="deliveries/s"] b').textContent()), 'a delivery rate');
  // Resume hits and misses and cut-offs, as counted for the tenant.
  for (const stat of ['resumes replayed', 'resumes resynced', 'slow consumers cut off']) {
    assert.match(await sam.locator(`[data-stat="${stat}"] b`).textContent(), /^\d[\d,]*$/, stat);
  }

  // A test broadcast to the job's room reaches alice's page.
  await sam.locator('#bc-target').fill(`room:job:${id}`);
  await sam.getByRole('button', { name: 'Send' }).click();
  await waitFor(async () => /Sent: 1 connection/.test(await sam.locator('#bc-result').textContent()), 'the broadcast reached 1');
  await sam.screenshot({ path: path.join(SHOTS, 'inspector.png'), fullPage: true });

  // alice leaves: her connection moves to the recent closes, as the client's doing.
  await alice.context().close();
  await sam.locator('#insp-closes tr[data-reason="client"]', { hasText: 'alice' }).first().waitFor({ timeout: 10000 });
  // Customers have no inspector.
  const bob = await signedInPage('Customer (bob)');
  assert.equal(await bob.locator('#nav-inspect').isVisible(), false);
  await bob.context().close();
  await sam.context().close();
});

test('an admin creates, rotates and revokes API keys from the dashboard; a revoked key is refused at once', async () => {
  const ada = await signedInPage('Admin (ada)');
  await ada.locator('#nav-keys').click();
  await ada.locator('#key-form').waitFor();
  const name = `fleet-${uid()}`;
  await ada.locator('#key-name').fill(name);
  await ada.getByRole('button', { name: 'Create key' }).click();
  const key = (await ada.locator('#new-key-token').textContent()).trim();
  assert.match(key, /^hk_[0-9a-f]{12}_[0-9a-f]{64}$/);
  const id = key.slice(3, 15);
  const row = ada.locator(`tr[data-key="${id}"]`);
  await row.locator('text=active').waitFor();
  await ada.screenshot({ path: path.join(SHOTS, 'keys-created.png'), fullPage: true });

  // The key works for a worker until it is revoked, then is refused at once.
  const jobId = `key-${uid()}`;
  await api(key, 'POST', '/v1/jobs', { id: jobId, owner: 'bob', status: 'running' });
  ada.once('dialog', (d) => d.accept());
  await row.locator('button.revoke').click();
  await ada.locator(`tr[data-key="${id}"][data-status="revoked"]`).waitFor();
  await assert.rejects(api(key, 'POST', `/v1/jobs/${jobId}/progress`, { stage: 'late' }), /401.*key_revoked/);

  // Rotation with a grace period: a new key is shown once, the old one is "expiring".
  await ada.locator('#key-name').fill(`${name}-b`);
  await ada.getByRole('button', { name: 'Create key' }).click();
  const shownKey = async () => (await ada.locator('#new-key-token').textContent()).trim();
  await waitFor(async () => (await shownKey()) !== key, 'the second key shown');
  const keyB = await shownKey();
  const idB = keyB.slice(3, 15);
  const rowB = ada.locator(`tr[data-key="${idB}"]`);
  await rowB.locator('select.grace').selectOption('3600');
  await rowB.locator('button.rotate').click();
  await ada.locator(`tr[data-key="${idB}"][data-status="expiring"]`).waitFor();
  await waitFor(async () => (await shownKey()) !== keyB, 'the rotated key shown');
  const rotated = await shownKey();
  assert.notEqual(rotated, keyB);
  await api(keyB, 'POST', `/v1/jobs/${jobId}-b/progress`, {}).catch((e) => assert.match(String(e), /404/, 'the old key still authenticates'));
  await api(rotated, 'POST', '/v1/jobs', { id: `${jobId}-b`, owner: 'bob' });
  await ada.screenshot({ path: path.join(SHOTS, 'keys-page.png'), fullPage: true });
  // Staff see no keys page.
  const sam = await signedInPage('Staff (sam)');
  assert.equal(await sam.locator('#nav-keys').isVisible(), false);
  await sam.context().close();
  await ada.context().close();
});

test('the API reference at /docs renders the server\'s OpenAPI document, with examples and a filter', async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => pageErrors.push(`[docs] ${e.stack || e}`));
  const external = [];
  page.on('request', (r) => {
    if (!r.url().startsWith(server.url)) external.push(r.url());
  });
  await page.goto(server.url + '/docs');
  const create = page.locator('article.op#post-v1-jobs');
  await create.waitFor();
  assert.match(await create.textContent(), /Create a job/);
  assert.match(await create.locator('pre.example').textContent(), /"crawl-42"/);
  // Herald's own API first, the Supabase-compatible endpoints last.
  const headings = await page.locator('.docs-tag h2').allTextContents();
  assert.equal(headings[0], 'Jobs');
  assert.equal(headings[headings.length - 1], 'Supabase compatibility');
  await page.screenshot({ path: path.join(SHOTS, 'api-docs.png') });
  await page.locator('#docs-filter').fill('revoke an api key');
  await waitFor(async () => (await page.locator('article.op:not([hidden])').count()) === 1, 'one operation left');
  assert.equal(await page.locator('article.op:not([hidden]) h3 code').textContent(), '/v1/admin/keys/{id}');
  assert.deepEqual(external, [], 'no request leaves the server');
  await ctx.close();
});

test('no script errors on any page', () => {
  assert.deepEqual(pageErrors, []);
});
