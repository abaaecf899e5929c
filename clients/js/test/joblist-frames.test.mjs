// Live job lists frame by frame, against a scripted WebSocket (no server):
// what the client sends on each (re)connection, how the view applies what
// comes back, and the cases a real server rarely produces on demand (a
// `have` too large for one frame, a list that outgrows the server's bound,
// a server from before lists).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '../src/index.js';
import { sseListParams } from '../src/transports/stream.js';
import { wireQuery, matchesQuery } from '../src/views/joblist.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tick = () => sleep(5);

/** A WebSocket whose server is the test: `sent` holds the client's frames, `recv` plays the server. */
function scripted() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
      setTimeout(() => {
        this.readyState = 1;
        if (this.onopen) this.onopen();
      }, 0);
    }
    send(data) {
      this.sent.push(JSON.parse(data));
    }
    close() {
      this.readyState = 3;
    }
    recv(frame) {
      if (this.onmessage) this.onmessage({ data: JSON.stringify(frame) });
    }
    welcome() {
      this.recv({ op: 'welcome', conn: sockets.length, sub: 'sam', tenant: 'acme', role: 'staff', expires_at: null, heartbeat_ms: 20000 });
    }
    /** The connection breaks (no close frame). */
    drop() {
      this.readyState = 3;
      if (this.onclose) this.onclose({ code: 1006, reason: '' });
    }
    /** Answers the client's last frame of `op` with an ack carrying `extra`. */
    ack(op, extra = {}) {
      const f = this.last(op);
      this.recv({ op: 'ack', id: f.id, ...extra });
      return f;
    }
    last(op) {
      const f = this.sent.filter((x) => x.op === op).at(-1);
      assert.ok(f, `the client sent no ${op} frame; sent: ${JSON.stringify(this.sent)}`);
      return f;
    }
  }
  return { FakeWebSocket, sockets };
}

const job = (id, version, extra = {}) => ({
  id,
  status: 'running',
  kind: 'crawl',
  owner: 'alice',
  version,
  updated_at: new Date(Date.UTC(2026, 0, 1, 0, 0, version)).toISOString(),
  ...extra,
});

function client(FakeWebSocket, extra = {}) {
  const fetchLog = [];
  const c = createClient({
    url: 'http://herald.test',
    token: 'hk_test_key',
    WebSocket: FakeWebSocket,
    backoff: { initialMs: 10, maxMs: 20 },
    fetch: async (url) => {
      fetchLog.push(String(url));
      const body = String(url).includes('/v1/jobs?') ? { jobs: [job('legacy', 1)], next_cursor: null } : {};
      return new Response(JSON.stringify(body), { status: 200, headers: { 'content-type': 'application/json' } });
    },
    ...extra,
  });
  c.fetchLog = fetchLog;
  return c;
}

/** Waits for the client's `n`th socket to be open (the server may speak from then on). */
const opened = (sockets, n) => until(() => sockets.length === n && sockets[n - 1].readyState === 1, `socket ${n} open`);

async function until(fn, what) {
  for (let i = 0; i < 200; i++) {
    if (fn()) return;
    await tick();
  }
  assert.fail(`timed out waiting for ${what}`);
}

test('a list: query on the wire, snapshot, enter/update/leave, resume with have, unlist', async () => {
  const { FakeWebSocket, sockets } = scripted();
  const c = client(FakeWebSocket);
  const view = c.jobList({ status: ['running', 'stalled'], kind: 'crawl', tag: { env: 'prod' }, updatedWithin: 3600 });
  const seen = [];
  for (const type of ['enter', 'update', 'leave']) view.on(type, (x) => seen.push([type, x.id, x.job ? x.job.status : x.status]));
  await opened(sockets, 1);
  const ws = sockets[0];
  ws.welcome();
  const frame = ws.last('list');
  assert.deepEqual(frame, {
    op: 'list',
    list: view.name,
    query: { status: ['running', 'stalled'], kind: 'crawl', tag: { env: 'prod' }, updated_within: 3600 },
    id: frame.id,
  });
  assert.equal(frame.have, undefined, 'the first listing asks for a snapshot');
  ws.ack('list', { list: view.name, position: 10, count: 2 });
  ws.recv({ op: 'list_snapshot', list: view.name, position: 10, jobs: [job('a', 1), job('b', 3)] });
  assert.equal(view.loading, false);
  assert.deepEqual(view.jobs.map((j) => j.id), ['b', 'a'], 'most recently updated first');
  assert.deepEqual(seen, [], 'the first snapshot fills the view without per-job events');

  ws.recv({ op: 'list_change', list: view.name, change: 'update', position: 11, job: job('a', 5) });
  ws.recv({ op: 'list_change', list: view.name, change: 'update', position: 11, job: job('a', 4) }); // older: ignored
  ws.recv({ op: 'list_change', list: view.name, change: 'enter', position: 12, job: job('c', 6) });
  ws.recv({ op: 'list_change', list: view.name, change: 'leave', position: 13, id: 'b', job: job('b', 7, { status: 'completed' }) });
  ws.recv({ op: 'list_change', list: 'other', change: 'enter', position: 14, job: job('x', 8) }); // not ours
  assert.deepEqual(seen, [['update', 'a', 'running'], ['enter', 'c', 'running'], ['leave', 'b', 'completed']]);
  assert.deepEqual(view.jobs.map((j) => [j.id, j.version]), [['c', 6], ['a', 5]]);

  // The connection drops: the next one lists again with what the view holds.
  ws.drop();
  await opened(sockets, 2);
  const ws2 = sockets[1];
  ws2.welcome();
  const again = ws2.last('list');
  assert.equal(again.list, view.name);
  assert.deepEqual(again.have, { a: 5, c: 6 });
  ws2.ack('list', { list: view.name, position: 20, count: 2 });
  ws2.recv({ op: 'list_change', list: view.name, change: 'leave', position: 20, id: 'c' }); // aged out: id only
  assert.deepEqual(seen.at(-1), ['leave', 'c', undefined]);
  assert.deepEqual(view.jobs.map((j) => j.id), ['a']);

  view.close();
  assert.equal(ws2.last('unlist').list, view.name);
  assert.equal(c._lists.size, 0);
  c.close();
});

test('a have too large for one frame: a fresh snapshot instead, compared with what the view held', async () => {
  const { FakeWebSocket, sockets } = scripted();
  const c = client(FakeWebSocket);
  const view = c.jobList({});
  await opened(sockets, 1);
  sockets[0].welcome();
  const many = Array.from({ length: 3000 }, (_, i) => job(`job-with-a-longish-id-${String(i).padStart(6, '0')}`, 1));
  sockets[0].recv({ op: 'list_snapshot', list: view.name, position: 1, jobs: many });
  assert.equal(view.jobs.length, 3000);
  const seen = [];
  for (const type of ['enter', 'update', 'leave']) view.on(type, (x) => seen.push([type, x.id]));
  sockets[0].drop();
  await opened(sockets, 2);
  sockets[1].welcome();
  const frame = sockets[1].last('list');
  assert.equal(frame.have, undefined, 'no have: it would pass the server\'s frame limit');
  // The snapshot replaces the list; the view says what changed.
  const now = [...many.slice(1, 2999), { ...many[5], version: 2 }, job('fresh', 9)];
  now.splice(4, 1); // many[5] appears once, in its new version
  sockets[1].recv({ op: 'list_snapshot', list: view.name, position: 2, jobs: now });
  assert.deepEqual(seen.sort(), [
    ['enter', 'fresh'],
    ['leave', many[0].id],
    ['leave', many[2999].id],
    ['update', many[5].id],
  ].sort());
  assert.equal(view.jobs.length, 2999);
  c.close();
});

test('a list that outgrows the server: jobList reports it; watchJobs of the whole tenant follows the topic', async () => {
  const { FakeWebSocket, sockets } = scripted();
  const c = client(FakeWebSocket);
  const strict = c.jobList({ kind: 'crawl' });
  const watched = c.watchJobs();
  await opened(sockets, 1);
  const ws = sockets[0];
  ws.welcome();
  const lists = ws.sent.filter((f) => f.op === 'list');
  // watchJobs of the whole tenant never asks for a list (its snapshot would be every job).
  assert.deepEqual(lists.map((f) => f.query), [{ kind: 'crawl' }]);
  // Refused while live (jobList).
  const [first] = lists;
  ws.recv({ op: 'list_snapshot', list: first.list, position: 1, jobs: [job('a', 1)] });
  ws.recv({ op: 'error', id: null, code: 'list_too_large', message: 'the list grew past 10000 jobs', list: first.list });
  await tick(); // a refused request settles a promise
  assert.equal(strict.error && strict.error.code, 'list_too_large');
  assert.ok([...c._lists.values()].every((l) => l.emulated), 'neither is a server-side list any more');
  await until(() => ws.sent.some((f) => f.op === 'sub' && f.topic === 'jobs'), 'watchJobs subscribing to jobs');
  await until(() => !watched.loading, 'the REST page');
  assert.deepEqual(watched.jobs.map((j) => j.id), ['legacy']);
  assert.ok(c.fetchLog.some((u) => u.includes('/v1/jobs?limit=200')), c.fetchLog.join('\n'));
  ws.ack('sub', { topic: 'jobs', position: 5 });
  ws.recv({ op: 'event', topic: 'jobs', position: 6, type: 'job.created', data: job('new', 2) });
  assert.deepEqual(watched.jobs.map((j) => j.id), ['new', 'legacy']);
  // A reconnect does not list it again.
  ws.drop();
  await opened(sockets, 2);
  sockets[1].welcome();
  assert.deepEqual(sockets[1].sent.map((f) => f.op), ['sub']);
  assert.equal(sockets[1].last('sub').since, 6);
  c.close();
});

test('a server from before lists (unknown_op): the view follows the jobs topic', async () => {
  const { FakeWebSocket, sockets } = scripted();
  const c = client(FakeWebSocket);
  const view = c.jobList({ status: 'running', owner: 'alice' });
  await opened(sockets, 1);
  sockets[0].welcome();
  const f = sockets[0].last('list');
  sockets[0].recv({ op: 'error', id: f.id, code: 'unknown_op', message: 'unknown op list' });
  await until(() => sockets[0].sent.some((x) => x.op === 'sub'), 'a sub');
  assert.equal(sockets[0].last('sub').topic, 'jobs:owner:alice');
  await until(() => !view.loading, 'loaded');
  assert.ok(c.fetchLog.some((u) => u.includes('/v1/jobs?') && u.includes('status=running') && u.includes('owner=alice')), c.fetchLog.join('\n'));
  c.close();
});

test('conflate: false travels in the sub frame, also when a topic already held asks for it', async () => {
  const { FakeWebSocket, sockets } = scripted();
  const c = client(FakeWebSocket);
  c.subscribe('job:1', { conflate: false });
  c.subscribe('job:2');
  await opened(sockets, 1);
  const ws = sockets[0];
  ws.welcome();
  const subs = ws.sent.filter((f) => f.op === 'sub');
  assert.deepEqual(subs.map((f) => [f.topic, f.conflate]), [['job:1', false], ['job:2', undefined]]);
  ws.recv({ op: 'ack', id: subs[1].id, topic: 'job:2', position: 40 });
  await tick();
  // A second subscriber of job:2 wants every tick: unsub, then sub again from the position.
  c.subscribe('job:2', { conflate: false });
  assert.deepEqual(ws.sent.slice(-2).map((f) => [f.op, f.topic, f.since, f.conflate]), [
    ['unsub', 'job:2', undefined, undefined],
    ['sub', 'job:2', 40, false],
  ]);
  c.close();
});

test('queries: wire form, SSE parameters, and the matcher the long-poll stand-in uses', () => {
  assert.deepEqual(wireQuery({ status: 'running,stalled', owner: undefined, tag: {}, updatedWithin: 60 }), {
    status: ['running', 'stalled'],
    updated_within: 60,
  });
  assert.throws(() => wireQuery({ updated_within: 60 }), (e) => e.code === 'invalid_query' && /updatedWithin/.test(e.message));
  assert.throws(() => createClient({ url: 'http://x', token: 't' }).jobList({ colour: 'red' }), (e) => e.code === 'invalid_query');
  const p = sseListParams(wireQuery({ status: ['running', 'stalled'], kind: 'crawl', owner: 'alice', tag: { env: 'prod', n: 4 }, updatedWithin: 3600 }));
  assert.deepEqual(Object.fromEntries(p), { status: 'running,stalled', kind: 'crawl', owner: 'alice', tag: 'env:prod,n:4', updated_within: '3600' });
  assert.equal(sseListParams(wireQuery({ tag: { note: 'a,b' } })), null, 'a comma in a tag value has no SSE spelling');
  assert.equal(sseListParams(wireQuery({ tag: { 'a:b': 'c' } })), null);
  const q = wireQuery({ status: ['running'], tag: { n: '42', ok: 'true' }, updatedWithin: 60 });
  const now = Date.parse('2026-01-01T00:01:00Z');
  const j = { status: 'running', metadata: { n: 42, ok: true }, updated_at: '2026-01-01T00:00:30Z' };
  assert.ok(matchesQuery(q, j, now));
  assert.ok(!matchesQuery(q, { ...j, status: 'queued' }, now));
  assert.ok(!matchesQuery(q, { ...j, metadata: { n: 42 } }, now));
  assert.ok(!matchesQuery(q, { ...j, metadata: { n: { v: 42 }, ok: true } }, now));
  assert.ok(!matchesQuery(q, { ...j, updated_at: '2025-12-31T23:59:00Z' }, now));
});
