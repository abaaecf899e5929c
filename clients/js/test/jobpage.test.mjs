// The dashboard's job page at scale, in headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core): 1,200 tasks filtered by
// status and paged (failed first), live updates that keep the page, the total
// duration, staff cancelling a job, the screenshot lightbox, and OCR and label
// artifacts as readable cards (GitHub issue 15, item 6).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Server, token, waitFor, uid, launchChromium, SHOTS } from './harness.mjs';

const TENANT = 'acme';
const worker = token('worker-1', TENANT, 'worker');
const staff = token('sam', TENANT, 'staff');
const alice = token('alice', TENANT, 'customer');

let browser;
let server;
before(async () => {
  browser = await launchChromium();
  server = await Server.start('jobpage');
});
after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

const pageErrors = [];
const api = (tok, method, p, body) => server.api(tok, method, p, body);

/** A page signed in with a pasted token. */
async function signedInPage(tok, label) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => pageErrors.push(`[${label}] ${e.stack || e}`));
  await page.goto(server.url + '/');
  await page.locator('#token-input').fill(tok);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#conn[data-status="connected"]').waitFor();
  return page;
}

async function openJob(page, id) {
  await page.goto(`${server.url}/#/job/${encodeURIComponent(id)}`);
  await page.locator(`.job-head[data-job-id="${id}"]`).waitFor();
}

const rowIds = (page) => page.locator('.tasks li.task').evaluateAll((els) => els.map((e) => e.dataset.taskId));
const rangeText = (page) => page.locator('#task-range').textContent();
const fmt = (n) => n.toLocaleString('en-US');

// 1,200 tasks: every 25th failed, every 50th from the first running, every 7th
// skipped, every 3rd succeeded, the rest pending.
const N = 1200;
const statusOf = (i) =>
  i % 25 === 0 ? 'failed' : i % 50 === 1 ? 'running' : i % 7 === 0 ? 'skipped' : i % 3 === 0 ? 'succeeded' : 'pending';
const TASKS = Array.from({ length: N }, (_, k) => {
  const i = k + 1;
  const t = { id: `t${i}`, name: `Directory ${i}`, status: statusOf(i) };
  if (t.status === 'failed') t.error = `Directory ${i}: captcha not solved`;
  return t;
});

/** What the page should list: failed first, then creation order (all created at once: the given order). */
function expectedOrder(tasks, filter = 'all') {
  if (filter !== 'all') return tasks.filter((t) => t.status === filter).map((t) => t.id);
  return [...tasks.filter((t) => t.status === 'failed'), ...tasks.filter((t) => t.status !== 'failed')].map((t) => t.id);
}

function countsOf(tasks) {
  const c = { all: tasks.length, failed: 0, running: 0, pending: 0, succeeded: 0, skipped: 0 };
  for (const t of tasks) c[t.status] += 1;
  return c;
}

async function assertCounts(page, tasks) {
  const want = countsOf(tasks);
  const got = await page
    .locator('.task-filter [data-filter]')
    .evaluateAll((els) => Object.fromEntries(els.map((e) => [e.dataset.filter, { n: Number(e.dataset.count), text: e.textContent.trim() }])));
  assert.deepEqual(Object.keys(got), ['all', 'failed', 'running', 'pending', 'succeeded', 'skipped']);
  for (const [k, n] of Object.entries(want)) {
    assert.equal(got[k].n, n, `count of ${k}`);
    assert.ok(got[k].text.endsWith(fmt(n)), `the ${k} button says ${fmt(n)}: ${got[k].text}`);
  }
}

let bigJob;

test('1,200 tasks: failed first, counts per status, pages of 50, filters, and live updates that keep the page', async () => {
  bigJob = `big-${uid()}`;
  const started = Date.now();
  await api(worker, 'POST', '/v1/jobs', { id: bigJob, owner: 'alice', title: 'Submit to 1,200 directories', kind: 'directory-submission', status: 'running', tasks: TASKS });
  const sam = await signedInPage(staff, 'sam');
  await openJob(sam, bigJob);
  await waitFor(async () => (await rangeText(sam)) === `Showing 1–50 of ${fmt(N)}`, 'the first page');
  const tasks = TASKS.map((t) => ({ ...t }));

  // The default view: failed tasks first, only one page of rows in the document.
  await assertCounts(sam, tasks);
  assert.equal(await sam.locator('.task-filter [data-filter="all"]').getAttribute('aria-pressed'), 'true');
  let order = expectedOrder(tasks);
  assert.deepEqual(await rowIds(sam), order.slice(0, 50));
  assert.equal(await sam.locator('.tasks li.task[data-status="failed"]').count(), 48);
  assert.equal(await sam.locator('#task-page').textContent(), 'Page 1 of 24');
  assert.ok(await sam.locator('[data-page="prev"]').isDisabled());
  await sam.locator('.task[data-task-id="t25"] .task-error', { hasText: 'captcha not solved' }).waitFor();
  await sam.screenshot({ path: path.join(SHOTS, 'job-page-tasks.png'), fullPage: true });

  // Paging: next, last, first.
  const t0 = Date.now();
  await sam.locator('[data-page="next"]').click();
  await waitFor(async () => (await rangeText(sam)) === `Showing 51–100 of ${fmt(N)}`, 'page 2');
  const pageTurn = Date.now() - t0;
  assert.deepEqual(await rowIds(sam), order.slice(50, 100));
  assert.equal(await sam.locator('.tasks li.task').count(), 50, 'only the page shown is rendered');
  await sam.locator('[data-page="last"]').click();
  await waitFor(async () => (await rangeText(sam)) === `Showing 1,151–1,200 of ${fmt(N)}`, 'the last page');
  assert.deepEqual(await rowIds(sam), order.slice(1150));
  assert.ok(await sam.locator('[data-page="next"]').isDisabled());
  await sam.locator('[data-page="first"]').click();
  await waitFor(async () => (await rangeText(sam)) === `Showing 1–50 of ${fmt(N)}`, 'back on page 1');

  // Filters: failed fits one page (no pager); pending pages on its own.
  await sam.locator('[data-filter="failed"]').click();
  await waitFor(async () => (await rangeText(sam)) === 'Showing 1–48 of 48', 'the failed filter');
  assert.deepEqual(await rowIds(sam), expectedOrder(tasks, 'failed'));
  assert.equal(await sam.locator('[data-page]').count(), 0, 'one page: no pager buttons');
  const pending = expectedOrder(tasks, 'pending');
  await sam.locator('[data-filter="pending"]').click();
  await waitFor(async () => (await rangeText(sam)) === `Showing 1–50 of ${fmt(pending.length)}`, 'the pending filter');
  await sam.locator('[data-page="next"]').click();
  await waitFor(async () => (await rangeText(sam)) === `Showing 51–100 of ${fmt(pending.length)}`, 'pending, page 2');
  assert.deepEqual(await rowIds(sam), pending.slice(50, 100));

  // Live updates while on page 2 of the default view: the page stays, the rows and counts follow.
  await sam.locator('[data-filter="all"]').click();
  await waitFor(async () => (await rangeText(sam)) === `Showing 1–50 of ${fmt(N)}`, 'all, page 1');
  await sam.locator('[data-page="next"]').click();
  await waitFor(async () => (await rangeText(sam)) === `Showing 51–100 of ${fmt(N)}`, 'all, page 2');
  const onPage2 = order.slice(50, 100).map((id) => tasks.find((t) => t.id === id)).find((t) => t.status === 'pending');
  await api(worker, 'PUT', `/v1/jobs/${bigJob}/tasks/${onPage2.id}`, { status: 'running' });
  onPage2.status = 'running';
  await sam.locator(`.task[data-task-id="${onPage2.id}"][data-status="running"]`).waitFor();
  assert.equal(await rangeText(sam), `Showing 51–100 of ${fmt(N)}`);
  const newlyFailed = tasks.find((t) => t.id === 't1199');
  await api(worker, 'PUT', `/v1/jobs/${bigJob}/tasks/t1199`, { status: 'failed', error: 'timed out' });
  newlyFailed.status = 'failed';
  await waitFor(async () => (await sam.locator('[data-filter="failed"]').getAttribute('data-count')) === '49', 'the failed count follows');
  assert.equal(await rangeText(sam), `Showing 51–100 of ${fmt(N)}`, 'still page 2 after live updates');
  assert.equal(await sam.locator('#task-page').textContent(), 'Page 2 of 24');
  await assertCounts(sam, tasks);
  order = expectedOrder(tasks);
  assert.deepEqual(await rowIds(sam), order.slice(50, 100), 'page 2 of the new order');
  // A job-level change repaints the whole page: the page still stays.
  await api(worker, 'POST', `/v1/jobs/${bigJob}/progress`, { stage: 'submitting', current_item: 'Directory 1199' });
  await sam.locator('.facts b', { hasText: 'submitting' }).waitFor();
  assert.equal(await rangeText(sam), `Showing 51–100 of ${fmt(N)}`);

  // The total duration counts while the job runs.
  const dur = sam.locator('#job-duration');
  assert.equal(await dur.getAttribute('data-running'), '');
  const first = await dur.textContent();
  assert.match(first, /^\d+(s|m \d+s)$/);
  const elapsed = Math.round((Date.now() - started) / 1000);
  assert.ok(parseInt(first, 10) <= elapsed + 2, `duration ${first} within the ${elapsed}s since the job started`);
  await waitFor(async () => (await dur.textContent()) !== first, 'the duration ticks');
  assert.ok(pageTurn < 5000, `turning a page took ${pageTurn} ms`);
  console.log(`# turning a page of 1,200 tasks: ${pageTurn} ms (click to rendered)`);
  await sam.context().close();
});

test('staff cancel a running job after confirming; a customer has no cancel button', async () => {
  assert.ok(bigJob, 'runs after the tasks test');
  const id = bigJob;
  const sam = await signedInPage(staff, 'sam');
  const al = await signedInPage(alice, 'alice');
  await openJob(al, id);
  await openJob(sam, id);
  assert.equal(await al.locator('#cancel-job').count(), 0, 'customers get no cancel button');
  assert.equal(await al.locator('.job-head[data-status="running"]').count(), 1);

  // Dismissing the dialog changes nothing.
  await sam.locator('#cancel-job').click();
  const dialog = sam.locator('#cancel-dialog');
  await dialog.waitFor();
  assert.match(await dialog.textContent(), /Submit to 1,200 directories/);
  await dialog.getByRole('button', { name: 'Keep it running' }).click();
  await dialog.waitFor({ state: 'detached' });
  assert.equal((await api(staff, 'GET', `/v1/jobs/${id}`)).status, 'running');
  // Nor does Esc.
  await sam.locator('#cancel-job').click();
  await dialog.waitFor();
  await sam.keyboard.press('Escape');
  await dialog.waitFor({ state: 'detached' });
  assert.equal((await api(staff, 'GET', `/v1/jobs/${id}`)).status, 'running');

  // Confirmed, with a reason: cancelled on the page, for the customer too, and over the API.
  await sam.locator('#cancel-job').click();
  await dialog.waitFor();
  await dialog.locator('textarea').fill('customer asked to stop');
  await sam.screenshot({ path: path.join(SHOTS, 'job-page-cancel-confirm.png') });
  await dialog.getByRole('button', { name: 'Cancel job' }).click();
  await dialog.waitFor({ state: 'detached' });
  await sam.locator(`.job-head[data-status="cancelled"]`).waitFor();
  await al.locator(`.job-head[data-status="cancelled"]`).waitFor();
  const job = await api(staff, 'GET', `/v1/jobs/${id}`);
  assert.equal(job.status, 'cancelled');
  assert.ok(job.finished_at);
  assert.equal(job.errors.at(-1).message, 'cancelled by sam: customer asked to stop');
  await sam.locator('.errors li', { hasText: 'cancelled by sam: customer asked to stop' }).waitFor();
  assert.equal(await sam.locator('#cancel-job').count(), 0, 'nothing left to cancel');
  await sam.locator('.toast', { hasText: 'cancelled' }).first().waitFor();

  // The duration stops at finished_at.
  const dur = sam.locator('#job-duration');
  assert.equal(await dur.getAttribute('data-running'), null);
  const want = Math.round((Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000);
  const shown = await dur.textContent();
  const secs = /^(\d+)s$/.test(shown) ? Number(shown.slice(0, -1)) : (([, m, s]) => Number(m) * 60 + Number(s))(shown.match(/^(\d+)m (\d+)s$/));
  assert.equal(secs, want, `duration ${shown}`);
  await sam.waitForTimeout(1200);
  assert.equal(await dur.textContent(), shown, 'a finished job no longer counts');
  await sam.screenshot({ path: path.join(SHOTS, 'job-page-cancelled.png') });
  await sam.context().close();
  await al.context().close();
});

const svg = (text, fill) =>
  'data:image/svg+xml,' +
  encodeURIComponent(
    `<svg xmlns='http://www.w3.org/2000/svg' width='1280' height='800'><rect width='1280' height='800' fill='${fill}'/><text x='80' y='420' font-size='72' font-family='sans-serif'>${text}</text></svg>`,
  );

/** A label card's fields, as an object (the server keeps a payload's keys sorted). */
async function fields(card) {
  const [keys, values] = [await card.locator('dt').allInnerTexts(), await card.locator('dd').allInnerTexts()];
  return Object.fromEntries(keys.map((k, i) => [k, values[i]]));
}

test('screenshots open in a lightbox; OCR and label artifacts read as cards', async () => {
  const id = `art-${uid()}`;
  await api(worker, 'POST', '/v1/jobs', { id, title: 'Label run', status: 'running', tasks: [{ id: 'p1' }, { id: 'p2' }] });
  const shot1 = svg('product page 1', '#c7d2fe');
  const shot2 = svg('product page 2', '#bbf7d0');
  await api(worker, 'POST', `/v1/jobs/${id}/artifacts`, { kind: 'screenshot', payload: { url: shot1, item: 'Product page 1' } });
  await api(worker, 'POST', `/v1/jobs/${id}/artifacts`, { kind: 'screenshot:captured', payload: { url: shot2, page: 2, item: 'Product page 2' } });
  const ocrText = 'SKU 1234\nAcme Widget — 250 ml\nBest before 2027-03';
  await api(worker, 'POST', `/v1/jobs/${id}/artifacts`, { kind: 'ocr', payload: { page: 1, text: ocrText, confidence: 0.93 } });
  const longText = Array.from({ length: 60 }, (_, i) => `line ${i + 1} of the scanned page`).join('\n');
  await api(worker, 'POST', `/v1/jobs/${id}/artifacts`, { kind: 'ocr:completed', payload: { page: 2, text: longText } });
  await api(worker, 'POST', `/v1/jobs/${id}/artifacts`, { kind: 'label', payload: { text: 'Acme Widget 250 ml', sku: '1234', pdf: 'https://cdn.example/labels/1234.pdf' } });
  await api(worker, 'POST', `/v1/jobs/${id}/artifacts`, { kind: 'label:generated', payload: { sku: '5678', pdf: 'labels/5678.pdf' } });

  const sam = await signedInPage(staff, 'sam');
  await openJob(sam, id);
  await sam.locator('.shot img').nth(1).waitFor();

  // OCR: the text itself, with its page and confidence; no JSON.
  const ocr = sam.locator('.art-card.ocr[data-kind="ocr"]');
  assert.equal(await ocr.locator('.ocr-text').innerText(), ocrText);
  assert.match(await ocr.locator('header').innerText(), /page 1 · 93% confidence/);
  assert.doesNotMatch(await ocr.innerText(), /[{}"]/);
  // A long text shows its start and expands; the expansion survives live updates.
  const long = sam.locator('.art-card.ocr[data-kind="ocr:completed"]');
  assert.ok((await long.locator('.ocr-text').innerText()).length < longText.length);
  await long.getByRole('button', { name: /Show all/ }).click();
  await waitFor(async () => (await long.locator('.ocr-text').innerText()) === longText, 'the whole text');
  // Labels: the label's text large, its other fields as a list; a URL is a link.
  const label = sam.locator('.art-card.label[data-kind="label"]');
  assert.equal(await label.locator('.label-text').innerText(), 'Acme Widget 250 ml');
  assert.deepEqual(await fields(label), { sku: '1234', pdf: 'https://cdn.example/labels/1234.pdf' });
  assert.equal(await label.locator('dd a').getAttribute('href'), 'https://cdn.example/labels/1234.pdf');
  const generated = sam.locator('.art-card.label[data-kind="label:generated"]');
  assert.deepEqual(await fields(generated), { sku: '5678', pdf: 'labels/5678.pdf' });
  assert.doesNotMatch(await generated.innerText(), /[{}"]/);

  // The lightbox: a thumbnail opens the full image; Esc closes it.
  await sam.locator('.shot-open').first().click();
  const box = sam.locator('#lightbox');
  await box.waitFor();
  const img = box.locator('img');
  assert.equal(await img.getAttribute('src'), shot1);
  await waitFor(() => img.evaluate((el) => el.complete && el.naturalWidth === 1280), 'the full image loads');
  const size = await img.boundingBox();
  assert.ok(size.width > 600, `the image is shown large: ${JSON.stringify(size)}`);
  assert.match(await box.innerText(), /Product page 1/);
  // A live update under it leaves it open; the OCR text stays expanded.
  await api(worker, 'POST', `/v1/jobs/${id}/progress`, { stage: 'rendering labels' });
  await sam.locator('.facts b', { hasText: 'rendering labels' }).waitFor();
  assert.equal(await box.count(), 1);
  await sam.screenshot({ path: path.join(SHOTS, 'job-page-lightbox.png') });
  await sam.keyboard.press('ArrowRight');
  await waitFor(async () => (await img.getAttribute('src')) === shot2, 'the next screenshot');
  await sam.keyboard.press('Escape');
  await box.waitFor({ state: 'detached' });
  assert.equal(await long.locator('.ocr-text').innerText(), longText, 'still expanded');
  // A click closes it too.
  await sam.locator('.shot-open').nth(1).click();
  await box.waitFor();
  assert.equal(await img.getAttribute('src'), shot2);
  await box.click({ position: { x: 400, y: 10 } }); // the backdrop, above the image
  await box.waitFor({ state: 'detached' });
  await sam.screenshot({ path: path.join(SHOTS, 'job-page-artifacts.png'), fullPage: true });
  await sam.context().close();
});

test('no page errors', () => {
  assert.deepEqual(pageErrors, []);
});
