// Live job lists (`client.jobList`, `watchJobs`) against the real server
// binary: a snapshot, then jobs entering, changing in and leaving the list
// as they move over the HTTP API; a resume over the WebSocket that brings
// only the difference; SSE and long-poll ending with the same list; a
// customer's lists; and `conflate: false` reaching the server.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '../src/index.js';
import { expandCompact } from '../src/transports/websocket.js';
import { Server, startProxy, token, waitFor, sleep } from './harness.mjs';

const TENANT = 'acme';
const worker = token('worker-1', TENANT, 'worker');
const staff = token('sam', TENANT, 'staff');
const admin = token('ada', TENANT, 'admin');
const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

async function server(name, args) {
  const s = await Server.start(name, args);
  cleanup.push(() => s.stop());
  return s;
}

async function proxyFor(s, block) {
  const p = await startProxy(s.url, block);
  cleanup.push(() => p.close());
  return p;
}

function client(opts) {
  const c = createClient({ backoff: { initialMs: 100, maxMs: 1000 }, ...opts });
  cleanup.push(() => c.close());
  return c;
}

const create = (s, id, extra = {}) => s.api(worker, 'POST', '/v1/jobs', { id, owner: 'alice', kind: 'crawl', title: `job ${id}`, ...extra });
const report = (s, id, body) => s.api(worker, 'POST', `/v1/jobs/${id}/progress`, body);

/** The enter / update / leave events of a view, as `[type, id, status]` (a leave: the job's status now, or null). */
function record(view) {
  const seen = [];
  view.on('enter', (j) => seen.push(['enter', j.id, j.status]));
  view.on('update', (j) => seen.push(['update', j.id, j.status]));
  view.on('leave', (l) => seen.push(['leave', l.id, l.job ? l.job.status : null]));
  return seen;
}

/** Every job `tok` may see (GET /v1/jobs, paged), those passing `keep`, in a list's order. */
async function truth(s, tok, keep) {
  const all = [];
  let cursor = null;
  do {
    const page = await s.api(tok, 'GET', `/v1/jobs?limit=500${cursor ? `&cursor=${cursor}` : ''}`);
    all.push(...page.jobs);
    cursor = page.next_cursor;
  } while (cursor);
  return all.filter(keep).sort((a, b) => Date.parse(b.updated_at) - Date.parse(a.updated_at) || (a.id < b.id ? -1 : 1));
}

const idsAndVersions = (jobs) => jobs.map((j) => `${j.id}@${j.version}`);

/** Waits until the view holds exactly what the server says (ids, versions, order). */
async function untilTruth(view, s, tok, keep, what) {
  let want;
  await waitFor(async () => {
    want = idsAndVersions(await truth(s, tok, keep));
    return JSON.stringify(idsAndVersions(view.jobs)) === JSON.stringify(want);
  }, `${what}: the view equals GET /v1/jobs (view ${JSON.stringify(idsAndVersions(view.jobs))}, server ${JSON.stringify(want)})`);
}

/** A WebSocket that records the frames the client sends and receives. */
function spyingWebSocket() {
  const sent = [];
  const received = [];
  class SpyWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      // Compact frames (the client's default) read as the JSON frames they stand for.
      this.addEventListener('message', (m) => {
        const f = JSON.parse(m.data);
        received.push(Array.isArray(f) ? expandCompact(f) : f);
      });
    }
    send(data) {
      sent.push(JSON.parse(data));
      return super.send(data);
    }
  }
  return { WebSocket: SpyWebSocket, sent, received };
}

const ACTIVE = ['running', 'stalled'];
const isActiveProdCrawl = (j) => ACTIVE.includes(j.status) && j.kind === 'crawl' && j.metadata && j.metadata.env === 'prod';

test('a list over the WebSocket: a snapshot, then jobs entering, changing and leaving as they move', async () => {
  const s = await server('list');
  await create(s, 'a', { status: 'running', metadata: { env: 'prod' } });
  await create(s, 'b', { status: 'queued', metadata: { env: 'prod' } });
  await create(s, 'c', { kind: 'mail', status: 'running', metadata: { env: 'prod' } });
  await create(s, 'd', { status: 'running', metadata: { env: 'dev' } });
  const c = client({ url: s.url, token: staff });
  const view = c.jobList({ status: ACTIVE, kind: 'crawl', tag: { env: 'prod' } });
  const seen = record(view);
  await waitFor(() => !view.loading, 'the snapshot');
  assert.equal(c.transport, 'websocket');
  assert.equal(view.error, null);
  assert.deepEqual(view.jobs.map((j) => j.id), ['a']);
  assert.deepEqual(seen, [], 'the first snapshot fires no per-job events');

  await report(s, 'b', { status: 'running' }); // enters
  await waitFor(() => seen.length === 1, 'b entering');
  await report(s, 'a', { succeeded: 3, total: 10 }); // changes in the list
  await waitFor(() => seen.length === 2, 'a updating');
  await report(s, 'a', { status: 'completed' }); // leaves, completed
  await report(s, 'd', { metadata: { env: 'prod' } }); // its tag now matches: enters
  await create(s, 'e', { status: 'running', metadata: { env: 'prod' } }); // created matching: enters
  await s.api(staff, 'POST', '/v1/jobs/b/cancel', { reason: 'not needed' }); // leaves, cancelled
  await report(s, 'c', { succeeded: 1 }); // another kind: nothing
  await waitFor(() => seen.length >= 6, 'six changes');
  await sleep(300); // anything else would show up here
  assert.deepEqual(seen, [
    ['enter', 'b', 'running'],
    ['update', 'a', 'running'],
    ['leave', 'a', 'completed'],
    ['enter', 'd', 'running'],
    ['enter', 'e', 'running'],
    ['leave', 'b', 'cancelled'],
  ]);
  assert.equal(view.jobs.find((j) => j.id === 'd').metadata.env, 'prod');
  await untilTruth(view, s, staff, isActiveProdCrawl, 'after the moves');

  // `updatedWithin`: a job that is not updated again ages out, and leaves with its id only.
  const recent = c.jobList({ kind: 'report', updatedWithin: 2 });
  const aged = record(recent);
  await waitFor(() => !recent.loading, 'the second list');
  await create(s, 'r', { kind: 'report', status: 'running' });
  await waitFor(() => aged.length === 1, 'r entering');
  await waitFor(() => aged.length === 2, 'r ageing out', 10000);
  assert.deepEqual(aged, [['enter', 'r', 'running'], ['leave', 'r', null]]);
  assert.deepEqual(recent.jobs, []);

  // Closing a view ends its list on the server: its changes stop.
  view.close();
  assert.equal(c._lists.has(view.name), false);
  await create(s, 'f', { status: 'running', metadata: { env: 'prod' } });
  await sleep(300);
  assert.equal(seen.length, 6);
});

test('after the connection drops, the list resumes with have: only the difference comes back', async () => {
  const s = await server('list-resume');
  const proxy = await proxyFor(s);
  for (let i = 0; i < 12; i++) await create(s, `r${i}`, { status: 'running', total: 10 });
  await create(s, 'q', { status: 'queued' });
  const spy = spyingWebSocket();
  const c = client({ url: proxy.url, token: staff, WebSocket: spy.WebSocket });
  const view = c.jobList({ status: 'running' });
  await waitFor(() => !view.loading && c.status === 'connected', 'the snapshot');
  assert.equal(view.jobs.length, 12);
  const seen = record(view);
  const held = Object.fromEntries(view.jobs.map((j) => [j.id, j.version]));

  // The network goes away; meanwhile jobs move.
  proxy.state.hold = true;
  proxy.drop();
  await waitFor(() => c.status === 'reconnecting', 'reconnecting');
  const sentMark = spy.sent.length;
  const recvMark = spy.received.length;
  await report(s, 'r0', { status: 'completed' });
  await report(s, 'r1', { status: 'failed', error: 'boom' });
  await report(s, 'r2', { succeeded: 5 });
  await report(s, 'q', { status: 'running' });
  await create(s, 'new', { status: 'running' });
  proxy.release();
  await waitFor(() => c.status === 'connected', 'connected again');
  await waitFor(() => seen.length >= 5, 'the difference');
  await sleep(500);

  const relisted = spy.sent.slice(sentMark).filter((f) => f.op === 'list');
  assert.equal(relisted.length, 1, 'listed once on the new connection');
  assert.deepEqual(relisted[0].have, held, 'have: the ids and versions the view held');
  const back = spy.received.slice(recvMark).filter((f) => f.list === view.name);
  assert.ok(!back.some((f) => f.op === 'list_snapshot'), 'no snapshot');
  const changes = back.filter((f) => f.op === 'list_change').map((f) => `${f.change} ${f.id ?? f.job.id}`);
  assert.deepEqual(changes.sort(), ['enter new', 'enter q', 'leave r0', 'leave r1', 'update r2'], 'only the difference');
  assert.deepEqual(seen.map((e) => `${e[0]} ${e[1]}`).sort(), ['enter new', 'enter q', 'leave r0', 'leave r1', 'update r2']);
  await untilTruth(view, s, staff, (j) => j.status === 'running', 'after the resume');
  const resumeLeaves = seen.filter((e) => e[0] === 'leave');

  // A restart of the server (kill -9): listed again with have, nothing changed, nothing comes.
  const recvMark2 = spy.received.length;
  await s.kill9();
  await waitFor(() => c.status === 'reconnecting', 'reconnecting after the kill');
  await s.spawn();
  await waitFor(() => c.status === 'connected', 'connected after the restart');
  await waitFor(() => spy.received.slice(recvMark2).some((f) => f.op === 'ack' && f.list === view.name), 'the list acked');
  await sleep(300);
  assert.deepEqual(spy.received.slice(recvMark2).filter((f) => f.list === view.name).map((f) => f.op), ['ack']);
  assert.equal(seen.length, 5);
  await report(s, 'r3', { succeeded: 1 });
  await waitFor(() => seen.length === 6, 'live again');
  assert.deepEqual(seen[5], ['update', 'r3', 'running']);
  await untilTruth(view, s, staff, (j) => j.status === 'running', 'after the restart');

  // PROTOCOL.md: a resume's `leave` has `id` only when the job is gone from
  // the store; r0 and r1 are still there, so the app can tell why they left.
  assert.deepEqual(resumeLeaves.sort(), [['leave', 'r0', 'completed'], ['leave', 'r1', 'failed']], 'a resume\'s leave carries the job as it is now');
});

test('over SSE the list ends the same, and a reconnect\'s fresh snapshot is turned into enter/update/leave', async () => {
  const s = await server('list-sse');
  const proxy = await proxyFor(s);
  for (let i = 0; i < 5; i++) await create(s, `x${i}`, { status: 'running', metadata: { env: 'prod' } });
  await create(s, 'y', { status: 'queued', metadata: { env: 'prod' } });
  const c = client({ url: proxy.url, token: staff, transports: ['sse'] });
  const view = c.jobList({ status: ACTIVE, kind: 'crawl', tag: { env: 'prod' } });
  const seen = record(view);
  await waitFor(() => !view.loading && c.status === 'connected', 'the snapshot');
  assert.equal(c.transport, 'sse');
  assert.ok(
    proxy.state.requests.some((r) => r.startsWith('GET /v1/sse/jobs?') && decodeURIComponent(r).includes('status=running,stalled') && decodeURIComponent(r).includes('tag=env:prod')),
    proxy.state.requests.join('\n'),
  );
  assert.equal(view.jobs.length, 5);

  await report(s, 'x0', { status: 'completed' });
  await report(s, 'y', { status: 'running' });
  await report(s, 'x1', { succeeded: 2 });
  await waitFor(() => seen.length === 3, 'three live changes');
  assert.deepEqual(seen, [['leave', 'x0', 'completed'], ['enter', 'y', 'running'], ['update', 'x1', 'running']]);

  // The stream breaks and stays away while jobs move; the next one's snapshot replaces the list.
  proxy.state.block.add('sse');
  proxy.drop();
  await waitFor(() => c.status === 'reconnecting', 'reconnecting');
  await report(s, 'x2', { status: 'failed', error: 'boom' });
  await create(s, 'z', { status: 'running', metadata: { env: 'prod' } });
  await report(s, 'x3', { succeeded: 4 });
  proxy.state.block.delete('sse');
  await waitFor(() => c.status === 'connected' && seen.length >= 6, 'the fresh snapshot');
  await sleep(300);
  // A snapshot does not say why a job left: `job` is null.
  assert.deepEqual(seen.slice(3).map((e) => e.join(' ')).sort(), ['enter z running', 'leave x2 ', 'update x3 running']);
  await untilTruth(view, s, staff, isActiveProdCrawl, 'over SSE');

  // The WebSocket's list of the same query is the same list.
  const ws = client({ url: s.url, token: staff });
  const same = ws.jobList({ status: ACTIVE, kind: 'crawl', tag: { env: 'prod' } });
  await waitFor(() => !same.loading, 'the WebSocket list');
  assert.equal(ws.transport, 'websocket');
  assert.deepEqual(idsAndVersions(same.jobs), idsAndVersions(view.jobs));
});

test('a customer\'s lists hold only their own jobs, on every transport', async () => {
  const s = await server('list-customer');
  await create(s, 'a1', { owner: 'alice', status: 'running' });
  await create(s, 'a2', { owner: 'alice', status: 'queued' });
  await create(s, 'b1', { owner: 'bob', status: 'running' });
  await create(s, 'b2', { owner: 'bob', status: 'running' });
  const alice = token('alice', TENANT, 'customer');
  const overWs = client({ url: s.url, token: alice });
  const overSse = client({ url: s.url, token: alice, transports: ['sse'] });
  const overPoll = client({ url: s.url, token: alice, transports: ['longpoll'], pollWaitSeconds: 2 });
  const views = {
    mine: overWs.jobList({}),
    running: overWs.jobList({ status: 'running' }),
    sse: overSse.jobList({}),
    poll: overPoll.watchJobs(),
  };
  await waitFor(() => Object.values(views).every((v) => !v.loading), 'every list loaded');
  for (const [name, v] of Object.entries(views)) assert.equal(v.error, null, `${name}: ${v.error && v.error.message}`);
  assert.deepEqual(views.mine.jobs.map((j) => j.id).sort(), ['a1', 'a2']);
  assert.deepEqual(views.running.jobs.map((j) => j.id), ['a1']);

  await report(s, 'b1', { status: 'completed' });
  await create(s, 'b3', { owner: 'bob', status: 'running' });
  await report(s, 'a2', { status: 'running' });
  await create(s, 'a3', { owner: 'alice', status: 'running' });
  await report(s, 'b2', { succeeded: 1 });
  const hers = (j) => j.owner === 'alice';
  for (const [name, v] of Object.entries(views)) {
    const keep = name === 'running' ? (j) => hers(j) && j.status === 'running' : hers;
    await untilTruth(v, s, staff, keep, name);
    assert.ok(v.jobs.every(hers), `${name}: only alice's jobs`);
  }
  assert.equal(overPoll.transport, 'longpoll');
});

test('a customer naming another owner is refused on both transports (PROTOCOL.md: "another owner is forbidden")', async () => {
  const s = await server('list-owner');
  await create(s, 'a1', { owner: 'alice', status: 'running' });
  await create(s, 'b1', { owner: 'bob', status: 'running' });
  const alice = token('alice', TENANT, 'customer');
  const views = {
    websocket: client({ url: s.url, token: alice }).jobList({ owner: 'bob' }),
    sse: client({ url: s.url, token: alice, transports: ['sse'] }).jobList({ owner: 'bob' }),
  };
  await waitFor(() => Object.values(views).every((v) => !v.loading), 'both lists');
  for (const [name, v] of Object.entries(views)) {
    assert.equal(v.error && v.error.code, 'forbidden', name);
    assert.deepEqual(v.jobs, [], name);
  }
  // Without an owner, her own jobs.
  const mine = client({ url: s.url, token: alice }).jobList({});
  await waitFor(() => !mine.loading, 'her list');
  assert.deepEqual(mine.jobs.map((j) => j.id), ['a1']);
});

test('on long-poll the view stands in with the jobs topic, then hands over to the WebSocket with have', async () => {
  const s = await server('list-poll');
  const proxy = await proxyFor(s, ['websocket', 'sse']);
  for (let i = 0; i < 4; i++) await create(s, `p${i}`, { status: 'running' });
  await create(s, 'q', { status: 'queued' });
  const spy = spyingWebSocket();
  const c = client({ url: proxy.url, token: staff, pollWaitSeconds: 2, wsRetryMs: 1500, WebSocket: spy.WebSocket });
  const view = c.jobList({ status: 'running' });
  const seen = record(view);
  await waitFor(() => !view.loading && c.status === 'connected', 'loaded');
  assert.equal(c.transport, 'longpoll');
  assert.equal(view.jobs.length, 4);
  await report(s, 'p0', { status: 'completed' });
  await report(s, 'q', { status: 'running' });
  await report(s, 'p1', { succeeded: 1, total: 2 });
  await create(s, 'n', { status: 'running' });
  await waitFor(() => seen.length >= 4, 'four changes');
  assert.deepEqual(seen, [['leave', 'p0', 'completed'], ['enter', 'q', 'running'], ['update', 'p1', 'running'], ['enter', 'n', 'running']]);
  await untilTruth(view, s, staff, (j) => j.status === 'running', 'on long-poll');

  // The WebSocket gets through again: the list moves onto it, resuming with what the view holds.
  const held = Object.fromEntries(view.jobs.map((j) => [j.id, j.version]));
  proxy.state.block.delete('websocket');
  await waitFor(() => c.transport === 'websocket', 'back on the WebSocket');
  await waitFor(() => spy.sent.some((f) => f.op === 'list'), 'the list on the WebSocket');
  assert.deepEqual(spy.sent.find((f) => f.op === 'list').have, held);
  await waitFor(() => !c._topics.has('jobs'), 'the stand-in topic released');
  await report(s, 'p2', { status: 'cancelled' });
  await waitFor(() => seen.length === 5, 'live over the WebSocket');
  assert.deepEqual(seen[4], ['leave', 'p2', 'cancelled']);
  await untilTruth(view, s, staff, (j) => j.status === 'running', 'on the WebSocket');
  // The stand-in's topic was never subscribed on the WebSocket: no unsub was sent for it.
  const { errors } = await s.api(admin, 'GET', '/v1/admin/inspect');
  assert.deepEqual(errors.map((e) => e.code), [], 'no frame refused');
});

test('watchJobs keeps its shape: the tenant\'s or an owner\'s jobs, newest first, live', async () => {
  const s = await server('list-watch');
  await create(s, 'w1', { owner: 'alice', status: 'running' });
  await create(s, 'w2', { owner: 'bob', status: 'queued' });
  const c = client({ url: s.url, token: staff });
  const all = c.watchJobs();
  const bobs = c.watchJobs({ owner: 'bob' });
  const running = c.watchJobs({ status: 'running' });
  await waitFor(() => !all.loading && !bobs.loading && !running.loading, 'loaded');
  assert.deepEqual(all.jobs.map((j) => j.id), ['w2', 'w1']);
  assert.deepEqual(bobs.jobs.map((j) => j.id), ['w2']);
  assert.deepEqual(running.jobs.map((j) => j.id), ['w1']);
  assert.deepEqual([all.topic, bobs.topic], ['jobs', 'jobs:owner:bob']);
  // Narrowed, a server-side list; the whole tenant or all of an owner's jobs
  // follow their topic over a REST page (a snapshot would carry every job).
  assert.deepEqual([...c._topics.keys()].sort(), ['jobs', 'jobs:owner:bob']);
  assert.deepEqual([all, bobs, running].map((v) => v._ls.emulated), [true, true, false]);
  await report(s, 'w2', { status: 'running' });
  await waitFor(() => running.jobs.length === 2 && all.jobs[0].id === 'w2' && all.jobs[0].status === 'running', 'w2 running');
  await report(s, 'w1', { status: 'completed' });
  await waitFor(() => running.jobs.length === 1 && all.jobs.find((j) => j.id === 'w1').status === 'completed', 'w1 completed');
  assert.deepEqual(running.jobs.map((j) => j.id), ['w2']);
});

test('conflate: false reaches the server: a subscriber that falls behind still gets every tick, over WebSocket and SSE', async () => {
  const s = await server('conflate');
  const proxy = await proxyFor(s);
  await create(s, 'busy', { status: 'running' });
  const subscriber = (transport, conflate) => {
    const c = client({ url: proxy.url, token: staff, transports: [transport] });
    const got = [];
    const sub = c.subscribe('job:busy', { conflate, onEvent: (e) => got.push(e) });
    return { c, got, sub };
  };
  const lazyWs = subscriber('websocket', undefined);
  const strictWs = subscriber('websocket', false);
  const lazySse = subscriber('sse', undefined);
  const strictSse = subscriber('sse', false);
  const all = [lazyWs, strictWs, lazySse, strictSse];
  // Connected means acked on the WebSocket, and the stream open on SSE.
  await waitFor(() => all.every((x) => x.c.status === 'connected' && (x.c.transport === 'sse' || x.sub.position != null)), 'all subscribed');
  assert.ok(proxy.state.requests.some((r) => r.startsWith('GET /v1/sse?') && r.includes('conflate=false')), 'the SSE URL says conflate=false');
  assert.equal(proxy.state.requests.filter((r) => r.includes('conflate=false')).length, 1, 'only the strict one');

  // Nobody reads while the job ticks with a large row: the connections fall behind.
  proxy.freeze();
  const TICKS = 120;
  const blob = 'x'.repeat(30000);
  for (let i = 0; i < TICKS; i++) await report(s, 'busy', { stage: `tick ${i}`, metadata: { blob: `${i}${blob}` } });
  await report(s, 'busy', { status: 'completed' });
  proxy.thaw();
  const done = (x) => x.got.some((e) => e.type === 'job.completed');
  await waitFor(() => all.every(done), 'everyone got the completion', 60000);
  const ticks = (x) => x.got.filter((e) => e.type === 'job.updated' && e.data.stage && e.data.stage.startsWith('tick')).length;
  const counts = Object.fromEntries(Object.entries({ lazyWs, strictWs, lazySse, strictSse }).map(([k, x]) => [k, ticks(x)]));
  // Without conflate:false the server lets newer ticks replace queued ones; with it, every tick arrives.
  assert.equal(counts.strictWs, TICKS, JSON.stringify(counts));
  assert.equal(counts.strictSse, TICKS, JSON.stringify(counts));
  // The lazy WebSocket falls behind for sure; an SSE stream's buffers (a
  // channel, the socket's) may hold all 3.6 MB, so it may keep up: not asserted.
  assert.ok(counts.lazyWs < TICKS, `the lazy one was conflated (so it did fall behind): ${JSON.stringify(counts)}`);
  for (const x of all) assert.equal(x.got.at(-1).data.status, 'completed');
  const inspect = await s.api(admin, 'GET', '/v1/admin/inspect');
  assert.ok(inspect.totals.conflated > 0, JSON.stringify(inspect.totals));
});
