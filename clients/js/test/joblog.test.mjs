// The dashboard job page's live log pane, in headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core): a job's output streams
// listed and followed live, lines appended as a worker writes them, auto-
// scroll that pauses when the reader scrolls up, the pane surviving the
// page's re-renders, a cap on rendered lines, a notice when the server
// dropped lines — and the latency from an append to its line on screen.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Server, startProxy, token, waitFor, sleep, uid, launchChromium, SHOTS } from './harness.mjs';

const TENANT = 'acme';
const worker = token('worker-1', TENANT, 'worker');
const staff = token('sam', TENANT, 'staff');

let browser;
let server;
before(async () => {
  browser = await launchChromium();
  server = await Server.start('joblog');
});
after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

const pageErrors = [];

/** A page of the dashboard at `base`, signed in with a pasted token. */
async function signedInPage(base, tok, label) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => pageErrors.push(`[${label}] ${e.stack || e}`));
  await page.goto(base + '/');
  await page.locator('#token-input').fill(tok);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#conn[data-status="connected"]').waitFor();
  return page;
}

async function openJob(page, base, id) {
  await page.goto(`${base}/#/job/${encodeURIComponent(id)}`);
  await page.locator(`.job-head[data-job-id="${id}"]`).waitFor();
}

const append = (s, id, name, chunks) => s.api(worker, 'POST', `/v1/jobs/${id}/streams/${name}`, { chunks });
const lineTexts = (page) => page.locator('#log-lines .ln:not(.gap)').allInnerTexts();
/** How far the log is from its bottom, in pixels. */
const fromBottom = (page) => page.locator('#log').evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight);

test('the log pane follows a job output stream live: auto-scroll, pause and jump back, re-renders, several streams', async () => {
  const id = `logs-${uid()}`;
  await server.api(worker, 'POST', '/v1/jobs', { id, title: 'Crawl with logs', status: 'running', tasks: [{ id: 't1' }, { id: 't2' }] });
  const page = await signedInPage(server.url, staff, 'sam');
  await openJob(page, server.url, id);
  // No stream yet: no pane.
  assert.equal(await page.locator('#job-log').isHidden(), true);

  // The worker starts writing: the pane shows up with the lines, strings as text, JSON compact.
  await append(server, id, 'log', ['Fetching /pricing', 'Fetching /about', { level: 'warn', msg: 'slow', ms: 1200 }]);
  await page.locator('#job-log').waitFor({ state: 'visible' });
  await waitFor(async () => (await lineTexts(page)).length === 3, 'three lines');
  // (The server stores a JSON chunk with its keys sorted.)
  assert.deepEqual(await lineTexts(page), ['Fetching /pricing', 'Fetching /about', '{"level":"warn","ms":1200,"msg":"slow"}']);
  assert.equal(await page.locator('#log').getAttribute('role'), 'log');
  assert.equal(await page.locator('#log-count').textContent(), '3 lines');

  // More than fits: the pane follows the newest line.
  for (let i = 0; i < 10; i++) await append(server, id, 'log', Array.from({ length: 20 }, (_, k) => `line ${i * 20 + k}`));
  await waitFor(async () => (await lineTexts(page)).at(-1) === 'line 199', 'line 199');
  await waitFor(async () => (await fromBottom(page)) <= 2, 'scrolled to the newest line');
  assert.equal(await page.locator('#log-latest').isHidden(), true);

  // A job update re-renders the page: the log's nodes stay as they are.
  await page.locator('#log-lines .ln').first().evaluate((el) => (el.dataset.kept = 'yes'));
  await server.api(worker, 'POST', `/v1/jobs/${id}/progress`, { stage: 'crawling', current_item: '/about' });
  await page.locator('.facts b', { hasText: 'crawling' }).waitFor();
  await server.api(worker, 'PUT', `/v1/jobs/${id}/tasks/t1`, { status: 'succeeded' });
  await page.locator('.task[data-task-id="t1"][data-status="succeeded"]').waitFor();
  assert.equal(await page.locator('#log-lines .ln[data-kept="yes"]').count(), 1, 'the same line element after re-renders');

  // The reader scrolls up: new lines no longer move the pane; "Jump to latest" says how many came.
  await page.locator('#log').hover();
  await page.mouse.wheel(0, -600);
  await waitFor(async () => (await fromBottom(page)) > 100, 'scrolled up');
  await page.locator('#log-latest').waitFor();
  const top = await page.locator('#log').evaluate((el) => el.scrollTop);
  await append(server, id, 'log', Array.from({ length: 30 }, (_, k) => `later ${k}`));
  await waitFor(async () => (await lineTexts(page)).at(-1) === 'later 29', 'the later lines');
  assert.equal(await page.locator('#log').evaluate((el) => el.scrollTop), top, 'the pane stays where the reader is');
  await waitFor(async () => (await page.locator('#log-latest').textContent()).includes('30 new'), 'the button counts the new lines');
  // Re-renders keep the place too.
  await server.api(worker, 'POST', `/v1/jobs/${id}/progress`, { stage: 'parsing' });
  await page.locator('.facts b', { hasText: 'parsing' }).waitFor();
  assert.equal(await page.locator('#log').evaluate((el) => el.scrollTop), top);
  await page.screenshot({ path: path.join(SHOTS, 'job-page-log-paused.png') });
  await page.locator('#log-latest').click();
  await waitFor(async () => (await fromBottom(page)) <= 2, 'back at the newest line');
  assert.equal(await page.locator('#log-latest').isHidden(), true);
  await append(server, id, 'log', ['followed again']);
  await waitFor(async () => (await lineTexts(page)).at(-1) === 'followed again', 'followed again');
  await waitFor(async () => (await fromBottom(page)) <= 2, 'following again');

  // A second stream shows up (listed again on job changes and every few seconds): one button per stream.
  await append(server, id, 'tokens', [{ token: 'Hel' }, { token: 'lo' }]);
  await server.api(worker, 'POST', `/v1/jobs/${id}/progress`, { stage: 'summarising' });
  const tokens = page.locator('#log-streams [data-stream="tokens"]');
  await tokens.waitFor({ timeout: 10000 });
  assert.equal(await page.locator('#log-streams [data-stream="log"]').getAttribute('aria-pressed'), 'true', 'log is shown first');
  await tokens.click();
  await waitFor(async () => JSON.stringify(await lineTexts(page)) === JSON.stringify(['{"token":"Hel"}', '{"token":"lo"}']), 'the tokens stream');
  assert.equal(await tokens.getAttribute('aria-pressed'), 'true');
  await append(server, id, 'tokens', [{ token: ' world' }]);
  await waitFor(async () => (await lineTexts(page)).length === 3, 'a live token');
  await page.locator('#log-streams [data-stream="log"]').click();
  await waitFor(async () => (await lineTexts(page)).at(-1) === 'followed again', 'back to the log');
  assert.equal((await lineTexts(page)).length, 234);
  await page.locator('#job-log').scrollIntoViewIfNeeded();
  await page.screenshot({ path: path.join(SHOTS, 'job-page-log.png') });
  await page.context().close();
});

test('only the newest 2,000 lines are in the page: "N earlier lines not shown"', async () => {
  const id = `long-${uid()}`;
  await server.api(worker, 'POST', '/v1/jobs', { id, title: 'Long log', status: 'running' });
  for (let i = 0; i < 2500; i += 500) await append(server, id, 'log', Array.from({ length: 500 }, (_, k) => `line ${i + k}`));
  const page = await signedInPage(server.url, staff, 'sam');
  await openJob(page, server.url, id);
  await waitFor(async () => (await page.locator('#log-lines .ln').count()) === 2000, '2,000 lines');
  assert.equal(await page.locator('#log-earlier').textContent(), '500 earlier lines not shown');
  assert.equal(await page.locator('#log-lines .ln').first().textContent(), 'line 500');
  // A burst larger than the pane: still the newest 2,000.
  await append(server, id, 'log', Array.from({ length: 3000 }, (_, k) => `burst ${k}`));
  await waitFor(async () => (await page.locator('#log-lines .ln').last().textContent()) === 'burst 2999', 'the burst');
  assert.equal(await page.locator('#log-lines .ln').count(), 2000);
  assert.equal(await page.locator('#log-lines .ln').first().textContent(), 'burst 1000');
  assert.equal(await page.locator('#log-earlier').textContent(), '3,500 earlier lines not shown');
  assert.equal(await page.locator('#log-count').textContent(), '5,500 lines');
  // Scrolled up into lines about to be dropped from the page: what the reader sees stays put.
  const atTop = () =>
    page.locator('#log').evaluate((el) => {
      const box = el.getBoundingClientRect();
      return document.elementFromPoint(box.left + 100, box.top + 20).closest('.ln').textContent;
    });
  await page.locator('#log').evaluate((el) => (el.scrollTop = el.scrollHeight / 2));
  await page.locator('#log-latest').waitFor();
  const reading = await atTop();
  await append(server, id, 'log', Array.from({ length: 300 }, (_, k) => `more ${k}`));
  await waitFor(async () => (await page.locator('#log-lines .ln').last().textContent()) === 'more 299', 'more lines');
  assert.equal(await page.locator('#log-lines .ln').count(), 2000);
  assert.equal(await atTop(), reading, 'the line being read stays in place');
  assert.match(await page.locator('#log-latest').textContent(), /300 new/);
  await page.context().close();
});

test('a reader cut off while the stream outgrew its bound is told what was dropped', async () => {
  const small = await Server.start('joblog-small', ['--stream-max-bytes', '16KiB']);
  const proxy = await startProxy(small.url);
  try {
    const id = `trunc-${uid()}`;
    await small.api(worker, 'POST', '/v1/jobs', { id, title: 'Chatty job', status: 'running' });
    await append(small, id, 'log', ['first line', 'second line']);
    const page = await signedInPage(proxy.url, staff, 'sam');
    await openJob(page, proxy.url, id);
    await waitFor(async () => (await lineTexts(page)).length === 2, 'the first lines');
    // The connection breaks and cannot come back for a while; meanwhile the
    // worker writes far more than the stream keeps.
    proxy.state.hold = true;
    proxy.drop();
    await page.locator('#conn:not([data-status="connected"])').waitFor();
    const line = (i) => `line ${i} ${'·'.repeat(80)}`;
    for (let i = 0; i < 600; i += 50) await append(small, id, 'log', Array.from({ length: 50 }, (_, k) => line(i + k)));
    const { streams } = await small.api(staff, 'GET', `/v1/jobs/${id}/streams`);
    const floor = streams[0].floor;
    assert.ok(floor > 2, `the oldest lines are gone: ${JSON.stringify(streams)}`);
    proxy.release();
    await page.locator('#log-truncated').waitFor({ state: 'visible', timeout: 30000 });
    assert.match(await page.locator('#log-truncated').textContent(), new RegExp(`${(floor - 2).toLocaleString('en-US')} lines were dropped`));
    await page.locator('#log-lines .ln.gap').waitFor();
    await waitFor(async () => (await lineTexts(page)).at(-1) === line(599), 'the lines the stream kept');
    const texts = await lineTexts(page);
    assert.deepEqual(texts.slice(0, 2), ['first line', 'second line']);
    assert.equal(texts[2], line(floor - 2), 'then the oldest line kept');
    assert.equal(texts.length, 2 + 600 - (floor - 2));
    await page.locator('#job-log').scrollIntoViewIfNeeded();
    await page.screenshot({ path: path.join(SHOTS, 'job-page-log-truncated.png') });
    await page.context().close();
  } finally {
    await proxy.close();
    await small.stop();
  }
});

test('latency: a worker append to its line rendered in the browser', async () => {
  const id = `latency-${uid()}`;
  await server.api(worker, 'POST', '/v1/jobs', { id, title: 'Latency', status: 'running' });
  await append(server, id, 'log', ['ready']);
  const page = await signedInPage(server.url, staff, 'sam');
  await openJob(page, server.url, id);
  await waitFor(async () => (await lineTexts(page)).length === 1, 'the pane follows the stream');
  // Each line carries its send time; the page notes when it entered the
  // document and when the frame after it began (it was painted by then).
  await page.evaluate(() => {
    window.seen = [];
    new MutationObserver((records) => {
      const at = Date.now();
      const added = [];
      for (const r of records) for (const n of r.addedNodes) if (n.classList && n.classList.contains('json')) added.push(JSON.parse(n.textContent));
      requestAnimationFrame(() => {
        const painted = Date.now();
        for (const c of added) window.seen.push({ seq: c.seq, dom: at - c.sent, paint: painted - c.sent });
      });
    }).observe(document.getElementById('log-lines'), { childList: true });
  });
  const N = 200;
  const t0 = Date.now();
  const sends = [];
  for (let i = 0; i < N; i++) {
    const due = t0 + i * 50; // 20 a second
    if (due > Date.now()) await sleep(due - Date.now());
    sends.push(append(server, id, 'log', [{ seq: i, sent: Date.now() }]));
  }
  await Promise.all(sends);
  const seen = await waitFor(async () => {
    const s = await page.evaluate(() => window.seen);
    return s.length >= N && s;
  }, 'every line rendered');
  assert.deepEqual(seen.map((s) => s.seq).sort((a, b) => a - b), Array.from({ length: N }, (_, i) => i), 'each line once');
  const pct = (xs, p) => {
    const v = [...xs].sort((a, b) => a - b);
    return v[Math.min(v.length - 1, Math.ceil((p / 100) * v.length) - 1)];
  };
  const dom = seen.map((s) => s.dom);
  const paint = seen.map((s) => s.paint);
  console.log(
    `# append → rendered, ${N} single-chunk appends at 20/s over the WebSocket: ` +
      `p50 ${pct(paint, 50)} ms, p99 ${pct(paint, 99)} ms, max ${Math.max(...paint)} ms (to the next frame after the line entered the document); ` +
      `in the document: p50 ${pct(dom, 50)} ms, p99 ${pct(dom, 99)} ms`,
  );
  await page.context().close();
});

test('no page errors', () => {
  assert.deepEqual(pageErrors, []);
});
