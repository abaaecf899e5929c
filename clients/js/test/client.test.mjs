// The client against the real server binary: resume across SIGKILL,
// fallback transports, token refresh, exactly-once ordered delivery, the
// live views and the worker's ProgressReporter.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient, ProgressReporter } from '../src/index.js';
import { Server, startProxy, token, waitFor, sleep, uid } from './harness.mjs';

const TENANT = 'acme';
const worker = token('worker-1', TENANT, 'worker');
const staff = token('sam', TENANT, 'staff');
const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

async function server(name, args) {
  const s = await Server.start(name, args);
  cleanup.push(() => s.stop());
  return s;
}

function client(opts) {
  const c = createClient({ backoff: { initialMs: 100, maxMs: 1000 }, ...opts });
  if (process.env.DEBUG_HERALD) {
    const t0 = Date.now();
    c.onStatus((st, d) => console.error(`+${Date.now() - t0}ms status ${st} ${d ? d.code || d : ''} via ${c.transport}`));
    c.on('fallback', (f) => console.error(`+${Date.now() - t0}ms fallback ${f.from} -> ${f.to}`));
  }
  cleanup.push(() => c.close());
  return c;
}

/** Subscribes and records what the application sees. */
function record(c, topic, opts = {}) {
  const seen = [];
  const errors = [];
  const sub = c.subscribe(topic, { ...opts, onEvent: (e) => seen.push(e), onError: (e) => errors.push(e) });
  return { seen, errors, sub };
}

function assertExactlyTheLog(seen, log, what) {
  const got = seen.map((e) => e.position);
  const want = log.map((e) => e.position);
  assert.deepEqual(got, want, `${what}: the application saw exactly the log's events, in order, once each`);
  for (const e of seen) assert.equal(typeof e.type, 'string');
}

async function makeJob(s, id, extra = {}) {
  return s.api(worker, 'POST', '/v1/jobs', { id, owner: 'alice', title: `job ${id}`, ...extra });
}

const progress = (s, id, n) => s.api(worker, 'POST', `/v1/jobs/${id}/progress`, { status: 'running', succeeded: n, total: 1000 });

test('resumes after the server is SIGKILLed and restarted: every event once, in order', async () => {
  const s = await server('kill');
  const id = `k-${uid()}`;
  await makeJob(s, id);
  const c = client({ url: s.url, token: staff });
  const statuses = [];
  c.onStatus((st) => statuses.push(st));
  const r = record(c, `job:${id}`, { since: 0 });
  await waitFor(() => c.status === 'connected' && r.seen.length === 1, 'connected with the creation replayed');
  assert.equal(c.transport, 'websocket');
  for (let i = 1; i <= 15; i++) await progress(s, id, i);
  await waitFor(() => r.seen.length === 16, 'live events');

  await s.kill9();
  await waitFor(() => c.status === 'reconnecting', 'status reconnecting after the kill');
  await s.spawn();
  // Written while the client is still backing off: it must get them by resuming.
  for (let i = 16; i <= 30; i++) await progress(s, id, i);
  await waitFor(() => c.status === 'connected', 'connected again');
  for (let i = 31; i <= 40; i++) await progress(s, id, i);
  const log = await s.log_events(staff, `job:${id}`);
  assert.equal(log.length, 41);
  await waitFor(() => r.seen.length >= 41, 'all 41 events');
  await sleep(300); // a duplicate would show up here
  assertExactlyTheLog(r.seen, log, 'after SIGKILL');
  assert.equal(r.seen.at(-1).data.succeeded, 40);
  assert.deepEqual(statuses.slice(0, 3), ['connected', 'reconnecting', 'connected']);
});

test('falls back to SSE when a proxy refuses WebSocket upgrades, and resumes there', async () => {
  const s = await server('sse');
  const proxy = await startProxy(s.url, ['websocket']);
  cleanup.push(() => proxy.close());
  const id = `s-${uid()}`;
  await makeJob(s, id);
  const c = client({ url: proxy.url, token: staff });
  const fallbacks = [];
  c.on('fallback', (f) => fallbacks.push(`${f.from}->${f.to}`));
  const r = record(c, `job:${id}`, { since: 0 });
  const all = record(c, 'jobs');
  await waitFor(() => c.status === 'connected', 'connected');
  assert.equal(c.transport, 'sse');
  assert.deepEqual(fallbacks, ['websocket->sse']);
  assert.ok(proxy.state.upgrades >= 1, 'the WebSocket was tried first');
  for (let i = 1; i <= 10; i++) await progress(s, id, i);
  await waitFor(() => r.seen.length === 11, 'events over SSE');

  await s.kill9();
  await waitFor(() => c.status === 'reconnecting', 'reconnecting');
  await s.spawn();
  for (let i = 11; i <= 20; i++) await progress(s, id, i);
  await waitFor(() => c.status === 'connected', 'connected again');
  await progress(s, id, 21);
  const log = await s.log_events(staff, `job:${id}`);
  await waitFor(() => r.seen.length >= log.length, 'every event');
  await sleep(300);
  assertExactlyTheLog(r.seen, log, 'SSE');
  assert.equal(c.transport, 'sse');
  // The `jobs` stream got the job's updates too, under its own topic.
  assert.ok(all.seen.length >= 20 && all.seen.every((e) => e.topic === 'jobs'), `jobs topic: ${all.seen.length}`);
});

test('falls back to long-poll when neither WebSocket nor SSE get through', async () => {
  const s = await server('poll');
  const proxy = await startProxy(s.url, ['websocket', 'sse']);
  cleanup.push(() => proxy.close());
  const id = `p-${uid()}`;
  await makeJob(s, id);
  const c = client({ url: proxy.url, token: staff, pollWaitSeconds: 5 });
  const fallbacks = [];
  c.on('fallback', (f) => fallbacks.push(`${f.from}->${f.to}`));
  const r = record(c, `job:${id}`, { since: 0 });
  await waitFor(() => c.status === 'connected', 'connected');
  assert.equal(c.transport, 'longpoll');
  assert.deepEqual(fallbacks, ['websocket->sse', 'sse->longpoll']);
  for (let i = 1; i <= 10; i++) await progress(s, id, i);
  await s.kill9();
  await waitFor(() => c.status === 'reconnecting', 'reconnecting');
  await s.spawn();
  for (let i = 11; i <= 20; i++) await progress(s, id, i);
  const log = await s.log_events(staff, `job:${id}`);
  await waitFor(() => r.seen.length >= log.length, 'every event');
  await sleep(300);
  assertExactlyTheLog(r.seen, log, 'long-poll');
  assert.ok(proxy.state.requests.some((q) => q.startsWith('GET /v1/events?')), 'polled /v1/events');
});

test('moves back to the WebSocket once it gets through again, without losing or repeating events', async () => {
  const s = await server('back');
  const proxy = await startProxy(s.url, ['websocket']);
  cleanup.push(() => proxy.close());
  const id = `b-${uid()}`;
  await makeJob(s, id);
  const c = client({ url: proxy.url, token: staff, wsRetryMs: 1500 });
  const r = record(c, `job:${id}`, { since: 0 });
  await waitFor(() => c.status === 'connected' && c.transport === 'sse', 'on SSE');
  for (let i = 1; i <= 5; i++) await progress(s, id, i);
  proxy.state.block.delete('websocket');
  await waitFor(() => c.transport === 'websocket', 'back on the WebSocket');
  for (let i = 6; i <= 10; i++) await progress(s, id, i);
  const log = await s.log_events(staff, `job:${id}`);
  await waitFor(() => r.seen.length >= log.length, 'every event');
  await sleep(300);
  assertExactlyTheLog(r.seen, log, 'switch back');
  assert.equal(c.status, 'connected');
});

test('a silent connection is declared dead by heartbeats and replaced, missing nothing', async () => {
  const s = await server('heartbeat');
  const proxy = await startProxy(s.url);
  cleanup.push(() => proxy.close());
  const id = `h-${uid()}`;
  await makeJob(s, id);
  const c = client({ url: proxy.url, token: staff, heartbeatMs: 300 });
  let welcomes = 0;
  c.on('welcome', () => (welcomes += 1));
  const r = record(c, `job:${id}`, { since: 0 });
  await waitFor(() => c.status === 'connected' && r.seen.length === 1, 'connected');
  proxy.freeze();
  for (let i = 1; i <= 5; i++) await progress(s, id, i);
  await waitFor(() => welcomes === 2, 'a second connection after the first went silent');
  await progress(s, id, 6);
  const log = await s.log_events(staff, `job:${id}`);
  await waitFor(() => r.seen.length >= log.length, 'every event');
  await sleep(300);
  assertExactlyTheLog(r.seen, log, 'heartbeat');
});

test('overlapping deliveries (two transports during a switch, a replay) reach the application once', async () => {
  const s = await server('dedupe');
  const c = client({ url: s.url, token: staff });
  const r = record(c, 'jobs', { since: 4 });
  const ev = (position) => ({ op: 'event', topic: 'jobs', position, type: 'job.updated', data: { id: 'x', version: position } });
  for (const p of [3, 5, 6, 6, 5, 7, 4, 8]) c._deliver('jobs', ev(p));
  assert.deepEqual(r.seen.map((e) => e.position), [5, 6, 7, 8]);
  assert.equal(r.sub.position, 8);
});

test('a resync replaces the state of a job view with its snapshot', async () => {
  const s = await server('resync');
  const id = `y-${uid()}`;
  await makeJob(s, id, { status: 'running' });
  const c = client({ url: s.url, token: staff });
  const view = c.watchJob(id);
  await waitFor(() => !view.loading && c.status === 'connected', 'loaded');
  // What the server sends when `since` is older than retention (docs/PROTOCOL.md).
  const snapshot = { job: { ...view.job, version: view.job.version + 5, progress: 70, stage: 'resynced' }, tasks: [{ id: 'z', status: 'running', updated_at: new Date().toISOString() }] };
  c._resync(`job:${id}`, 99999, snapshot);
  assert.equal(view.job.stage, 'resynced');
  assert.deepEqual(view.tasks.map((t) => t.id), ['z']);
  assert.equal(c.subscribe(`job:${id}`).position, 99999, 'the cursor moves to the snapshot position');
});

test('refreshes the token on the open connection before it expires', async () => {
  const s = await server('refresh');
  const id = `r-${uid()}`;
  await makeJob(s, id);
  let minted = 0;
  const c = client({
    url: s.url,
    getToken: async () => {
      minted += 1;
      return token('sam', TENANT, 'staff', 4);
    },
  });
  let welcomes = 0;
  c.on('welcome', () => (welcomes += 1));
  const refreshed = [];
  c.on('token', (t) => refreshed.push(t));
  const r = record(c, `job:${id}`);
  await waitFor(() => c.status === 'connected' && r.sub.position != null, 'connected');
  // Outlive the first token (4 s) by a margin: without `refresh` the server closes with 4002.
  await waitFor(() => refreshed.length >= 2, 'two refreshes', 15000);
  await sleep(1500);
  await progress(s, id, 7);
  await waitFor(() => r.seen.length === 1, 'an event after the first token expired');
  assert.equal(welcomes, 1, 'one connection throughout: refreshed in place');
  assert.ok(minted >= 3);
  assert.ok(refreshed.every((t) => typeof t.expiresAt === 'number'));
  assert.equal(c.status, 'connected');

  // A token for someone else is refused and the old one stays in force.
  await assert.rejects(c.setToken(token('mallory', TENANT, 'staff')), (e) => e.code === 'invalid_token');
  await progress(s, id, 8);
  await waitFor(() => r.seen.length === 2, 'still delivering');
});

test('a customer loses a subscription the refreshed token no longer allows', async () => {
  const s = await server('drop');
  const c = client({ url: s.url, token: staff });
  const r = record(c, 'jobs');
  await waitFor(() => c.status === 'connected' && r.sub.position != null, 'subscribed');
  // Same sub, lesser role: `jobs` is for staff only.
  const ack = await c.setToken(token('sam', TENANT, 'customer'));
  assert.deepEqual(ack.dropped, ['jobs']);
  await waitFor(() => r.errors.length === 1, 'onError');
  assert.equal(r.errors[0].code, 'forbidden');
});

test('watchJob and watchJobs: REST snapshot, then events; customers see only their own jobs', async () => {
  const s = await server('views');
  const a = `a-${uid()}`;
  const b = `b-${uid()}`;
  await makeJob(s, a, { status: 'running', tasks: [{ id: 't1' }, { id: 't2' }] });
  await s.api(worker, 'POST', '/v1/jobs', { id: b, owner: 'bob', title: 'bob job' });
  await s.api(worker, 'PUT', `/v1/jobs/${a}/tasks/t1`, { status: 'succeeded' });
  const alice = client({ url: s.url, token: token('alice', TENANT, 'customer') });
  const job = alice.watchJob(a);
  const mine = alice.watchJobs({ owner: 'alice' });
  await waitFor(() => !job.loading && !mine.loading, 'loaded');
  assert.equal(job.job.succeeded, 1);
  assert.deepEqual(mine.jobs.map((j) => j.id), [a]);
  const updates = [];
  const iter = (async () => {
    for await (const j of job) {
      updates.push(j.status);
      if (j.status === 'completed') break;
    }
  })();
  await s.api(worker, 'PUT', `/v1/jobs/${a}/tasks/t2`, { status: 'succeeded' });
  await s.api(worker, 'POST', `/v1/jobs/${a}/artifacts`, { kind: 'screenshot', payload: { url: 'data:image/png;base64,AAAA' } });
  await s.api(worker, 'POST', `/v1/jobs/${a}/progress`, { status: 'completed' });
  await iter;
  assert.equal(job.job.progress, 100);
  assert.deepEqual(job.tasks.map((t) => t.status).sort(), ['succeeded', 'succeeded']);
  assert.equal(job.artifacts.length, 1);
  await waitFor(() => mine.jobs[0].status === 'completed', 'the list follows');

  // Bob's job: not found for alice, and never in her list.
  const other = alice.watchJob(b);
  await waitFor(() => other.error, 'error for a job she does not own');
  assert.equal(other.error.code, 'not_found');
  await s.api(worker, 'POST', `/v1/jobs/${b}/progress`, { status: 'running' });
  await sleep(300);
  assert.ok(mine.jobs.every((j) => j.owner === 'alice'));
});

test('notifications: unread count follows new ones and mark-as-read', async () => {
  const s = await server('notes');
  const c = client({ url: s.url, token: token('alice', TENANT, 'customer') });
  const n = c.notifications();
  await waitFor(() => !n.loading, 'loaded');
  assert.equal(n.unreadCount, 0);
  const id = `n-${uid()}`;
  await makeJob(s, id);
  await s.api(worker, 'POST', `/v1/jobs/${id}/progress`, { status: 'running' });
  await s.api(worker, 'POST', `/v1/jobs/${id}/progress`, { status: 'completed' });
  await s.api(staff, 'POST', '/v1/notifications', { recipient: 'alice', title: 'hello' });
  await waitFor(() => n.unreadCount === 2, 'two unread');
  assert.ok(n.items.some((x) => x.job_id === id), 'the job completion notified its owner');
  await n.markRead(n.items[0].id);
  assert.equal(n.unreadCount, 1);
  await n.markAllRead();
  await sleep(300);
  assert.equal(n.unreadCount, 0);
});

test('presence and broadcast between two connections', async () => {
  const s = await server('presence');
  const a = client({ url: s.url, token: token('alice', TENANT, 'customer') });
  const b = client({ url: s.url, token: staff });
  // A plain room: rooms named after a job (room:job:<id>) follow that job's read rules.
  const pa = a.presence('room:review', { name: 'Alice' });
  const pb = b.presence('room:review', { name: 'Sam' });
  await waitFor(() => pa.members().length === 2 && pb.members().length === 2, 'both see both');
  const got = [];
  pa.on('broadcast', (m) => got.push(m));
  await waitFor(async () => (await b.broadcast('room:review', 'typing', { field: 'title' })).delivered === 1, 'delivered');
  await waitFor(() => got.length >= 1, 'broadcast received');
  assert.deepEqual([got[0].event, got[0].from, got[0].data.field], ['typing', 'sam', 'title']);
  pb.close();
  await waitFor(() => pa.members().length === 1, 'a leave');
  assert.deepEqual(pa.members(), ['alice']);
});

test('ProgressReporter: the worker flow, retried requests never count twice, bursts coalesce', async () => {
  const s = await server('reporter');
  const proxy = await startProxy(s.url);
  cleanup.push(() => proxy.close());
  const rep = new ProgressReporter({ url: proxy.url, token: worker, backoff: { initialMs: 20, maxMs: 100 } });
  const id = `w-${uid()}`;
  await rep.jobStarted(id, { title: 'Submit to directories', owner: 'alice', total: 3 });
  const names = ['Google Business', 'Yelp', 'Bing Places'];
  for (const [i, name] of names.entries()) {
    await rep.taskStarted(id, `d${i}`, name);
    if (i === 1) await rep.taskFailed(id, `d${i}`, new Error('captcha'));
    else await rep.taskSucceeded(id, `d${i}`);
  }
  // The answer to this artifact is lost on the way back: the retry reuses the key.
  proxy.failOnce(`/v1/jobs/${id}/artifacts`);
  await rep.artifact(id, 'screenshot', { url: 'https://example.com/s.png' });
  const arts = await s.api(worker, 'GET', `/v1/jobs/${id}/artifacts`);
  assert.equal(arts.artifacts.length, 1, 'stored once despite the retry');

  const before = (await s.log_events(staff, `job:${id}`)).length;
  const burst = [];
  for (let i = 1; i <= 50; i++) burst.push(rep.progress(id, { stage: 'verifying', current_item: `item ${i}`, metadata: { [`k${i % 3}`]: i } }));
  await Promise.all(burst);
  const afterBurst = await s.log_events(staff, `job:${id}`);
  assert.equal(afterBurst.length - before, 1, 'fifty calls in one burst became one report');
  const last = afterBurst.at(-1).data;
  assert.equal(last.current_item, 'item 50');
  assert.deepEqual(last.metadata, { k0: 48, k1: 49, k2: 50 });

  await rep.jobCompleted(id);
  const job = await s.api(worker, 'GET', `/v1/jobs/${id}`);
  assert.deepEqual([job.status, job.succeeded, job.failed, job.total], ['completed', 2, 1, 3]);
  // A bad request is not retried: it fails at once with the server's code.
  await assert.rejects(rep.jobStarted(id), (e) => e.code === 'illegal_transition');
});

test('with a list of nodes, a client whose node goes away moves on to the next and resumes there', async () => {
  const s = await server('nodes');
  const id = `n-${uid()}`;
  await makeJob(s, id);
  // Node 1 is a proxy that will vanish; node 2 reaches the same log.
  const node1 = await startProxy(s.url);
  const c = client({ url: [node1.url, s.url], token: staff });
  assert.deepEqual(c.urls, [node1.url, s.url]);
  const r = record(c, `job:${id}`, { since: 0 });
  await waitFor(() => c.status === 'connected' && r.seen.length === 1, 'connected through node 1');
  assert.equal(c.url, node1.url);
  for (let i = 1; i <= 10; i++) await progress(s, id, i);
  await waitFor(() => r.seen.length === 11, 'live events through node 1');

  await node1.close();
  for (let i = 11; i <= 20; i++) await progress(s, id, i);
  await waitFor(() => c.status === 'connected' && c.url === s.url, 'connected to node 2');
  await waitFor(() => r.seen.length >= 21, 'the missed events, resumed on node 2');
  await sleep(300);
  assertExactlyTheLog(r.seen, await s.log_events(staff, `job:${id}`), 'across nodes');
});
