// Job output streams from the JavaScript client, against the real server:
// `client.jobStream` follows a stream over each transport while a worker
// appends, through dropped, frozen and lost connections, and ends with every
// chunk exactly once and in order; a truncated stream says so; the
// reporter's stream writer batches thousands of writes into a few appends,
// retried without duplicates.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient, ProgressReporter, HeraldError } from '../src/index.js';
import { Server, startProxy, token, waitFor, sleep, uid } from './harness.mjs';

const worker = token('w', 'acme', 'worker');
const staff = token('sam', 'acme', 'staff');
const alice = token('alice', 'acme', 'customer');

let server;
before(async () => {
  server = await Server.start('streams');
});
after(async () => {
  if (server) await server.stop();
});

const api = (tok, method, p, body) => server.api(tok, method, p, body);

async function newJob(prefix) {
  const id = `${prefix}-${uid()}`;
  await api(worker, 'POST', '/v1/jobs', { id, owner: 'alice', status: 'running' });
  return id;
}

/** Appends chunks `c<from>`…`c<to - 1>` in appends of `per`, pausing `pauseMs` between them; resolves with the appends' answers. */
async function appendRange(id, from, to, per, pauseMs = 0) {
  const answers = [];
  for (let i = from; i < to; i += per) {
    const end = Math.min(to, i + per);
    const chunks = Array.from({ length: end - i }, (_, k) => `c${i + k}`);
    const r = await api(worker, 'POST', `/v1/jobs/${id}/streams/log`, { chunks });
    assert.equal(r.first_offset, i, 'offsets count chunks');
    answers.push(r);
    if (pauseMs) await sleep(pauseMs);
  }
  return answers;
}

/** Every chunk a view announced, in order of arrival (its `chunks` keeps only the newest). */
function collect(view) {
  const got = [];
  view.on('chunks', (chunks, offset) => {
    assert.equal(offset, got.length, `a batch starts where the last ended (at ${got.length}, not ${offset})`);
    for (const c of chunks) got.push(c);
  });
  return got;
}

function assertExact(who, got, n) {
  assert.equal(got.length, n, `${who}: every chunk, once`);
  for (let i = 0; i < n; i++) if (got[i] !== `c${i}`) assert.fail(`${who}: chunk ${i} is ${JSON.stringify(got[i])}`);
}

/** A WebSocket that records the frames the client sends. */
function spyWebSocket(sent) {
  return class extends WebSocket {
    send(data) {
      sent.push(JSON.parse(data));
      super.send(data);
    }
  };
}

test('websocket: 20,000 chunks followed live through a dropped and a frozen connection, each once and in order', async () => {
  const id = await newJob('ws');
  const proxy = await startProxy(server.url);
  const sent = [];
  const client = createClient({
    url: proxy.url, token: alice, transports: ['websocket'], WebSocket: spyWebSocket(sent),
    heartbeatMs: 400, backoff: { initialMs: 100, maxMs: 500 },
  });
  const statuses = [];
  client.onStatus((s) => statuses.push(s));
  const view = client.jobStream(id, 'log');
  const got = collect(view);
  await waitFor(() => !view.loading && client.status === 'connected', 'subscribed');
  assert.equal(view.end, 0);
  const topic = `stream:${id}:log`;

  const N = 20000;
  const appending = appendRange(id, 0, N, 200, 15);
  // Mid-way, the connection breaks (no close frame), then later goes silent
  // (a dead connection nobody closed: the heartbeat finds it).
  await waitFor(() => view.end >= 3000, 'the first 3,000', 60000);
  proxy.drop();
  await waitFor(() => client.status === 'reconnecting', 'the drop is noticed');
  await waitFor(() => client.status === 'connected' && view.end >= 9000, '9,000 after the reconnect', 60000);
  proxy.freeze();
  await waitFor(() => client.status === 'reconnecting', 'the frozen connection is found dead', 10000);
  const answers = await appending;
  assert.equal(answers.at(-1).next_offset, N);
  await waitFor(() => view.end === N, 'all 20,000', 60000);
  await sleep(300); // nothing more comes
  assertExact('websocket', got, N);
  assert.equal(statuses.filter((s) => s === 'reconnecting').length >= 2, true, `statuses: ${statuses}`);
  // `chunks` keeps the newest 5,000 (the default `max`).
  assert.equal(view.chunks.length, 5000);
  assert.equal(view.offset, N - 5000);
  assert.equal(view.chunks[0], `c${N - 5000}`);
  assert.equal(view.chunks.at(-1), `c${N - 1}`);
  // Every (re)subscription asked for the next offset the view wanted.
  const subs = sent.filter((f) => f.op === 'sub' && f.topic === topic);
  assert.ok(subs.length >= 3, `subscribed on each connection: ${JSON.stringify(subs)}`);
  assert.equal(subs[0].since, 0);
  for (let i = 1; i < subs.length; i++) assert.ok(subs[i].since > subs[i - 1].since, `resumed further on: ${JSON.stringify(subs)}`);
  assert.ok(proxy.state.upgrades >= 3);
  console.log(`# websocket: ${N} chunks in ${answers.length} appends; subscribed with since ${subs.map((f) => f.since).join(', ')}`);
  client.close();
  await proxy.close();
});

test('sse: the per-stream event stream resumes at its offset after drops', async () => {
  const id = await newJob('sse');
  const proxy = await startProxy(server.url);
  const client = createClient({ url: proxy.url, token: alice, transports: ['sse'], backoff: { initialMs: 100, maxMs: 500 } });
  const view = client.jobStream(id, 'log');
  const got = collect(view);
  await waitFor(() => !view.loading && client.status === 'connected', 'subscribed');
  assert.equal(client.transport, 'sse');
  const N = 6000;
  const appending = appendRange(id, 0, N, 100, 10);
  await waitFor(() => view.end >= 1500, '1,500', 60000);
  proxy.drop();
  await waitFor(() => view.end >= 3500 && client.status === 'connected', '3,500 after the drop', 60000);
  proxy.drop();
  await appending;
  await waitFor(() => view.end === N, `all ${N}`, 60000);
  await sleep(300);
  assertExact('sse', got, N);
  const reads = proxy.state.requests.filter((r) => r.includes(`/v1/jobs/${id}/streams/log/sse`));
  assert.ok(reads.length >= 3, `one stream per connection: ${reads}`);
  assert.ok(reads.slice(1).every((r) => /offset=[1-9]\d*/.test(r)), `resumed at an offset: ${reads}`);
  console.log(`# sse: ${N} chunks; streams opened at ${reads.map((r) => r.match(/offset=(\d+)/)?.[1]).join(', ')}`);
  client.close();
  await proxy.close();
});

test('long-poll: a lost answer is read again from the offset, nothing twice', async () => {
  const id = await newJob('lp');
  const proxy = await startProxy(server.url);
  const client = createClient({ url: proxy.url, token: alice, transports: ['longpoll'], pollWaitSeconds: 5, backoff: { initialMs: 100, maxMs: 500 } });
  const view = client.jobStream(id, 'log');
  const got = collect(view);
  await waitFor(() => !view.loading && client.status === 'connected', 'subscribed');
  assert.equal(client.transport, 'longpoll');
  const N = 3000;
  const appending = appendRange(id, 0, N, 50, 10);
  await waitFor(() => view.end >= 800, '800', 60000);
  // The next read is answered by the server but lost on the way back.
  proxy.failOnce(`/v1/jobs/${id}/streams/log?`);
  await waitFor(() => proxy.state.failNext.length === 0, 'a read was lost');
  await waitFor(() => view.end >= 2000, '2,000 after the lost answer', 60000);
  proxy.failOnce(`/v1/jobs/${id}/streams/log?`);
  await appending;
  await waitFor(() => view.end === N, `all ${N}`, 60000);
  await sleep(300);
  assertExact('long-poll', got, N);
  const polls = proxy.state.requests.filter((r) => r.startsWith(`GET /v1/jobs/${id}/streams/log?`));
  console.log(`# long-poll: ${N} chunks in ${polls.length} reads, two answers lost`);
  client.close();
  await proxy.close();
});

test('a fallback to SSE and the way back to the WebSocket carry the stream on, nothing missed or twice', async () => {
  const id = await newJob('switch');
  const proxy = await startProxy(server.url, ['websocket']);
  const client = createClient({ url: proxy.url, token: alice, wsRetryMs: 800, backoff: { initialMs: 100, maxMs: 300 } });
  const view = client.jobStream(id, 'log');
  const got = collect(view);
  await waitFor(() => client.transport === 'sse' && client.status === 'connected' && !view.loading, 'on SSE');
  const appending = appendRange(id, 0, 4000, 100, 20);
  await waitFor(() => view.end >= 1000, '1,000 over SSE', 60000);
  proxy.state.block.delete('websocket');
  await waitFor(() => client.transport === 'websocket', 'back on the WebSocket', 60000);
  await appending;
  await waitFor(() => view.end === 4000, 'all 4,000', 60000);
  await sleep(300);
  assertExact('sse, then websocket', got, 4000);
  client.close();
  await proxy.close();
});

test('several views of one stream share a subscription; offset null starts at the end; max keeps the newest', async () => {
  const id = await newJob('views');
  await appendRange(id, 0, 500, 100);
  for (const transports of [['websocket'], ['sse'], ['longpoll']]) {
    const client = createClient({ url: server.url, token: alice, transports, backoff: { initialMs: 100 } });
    const all = client.jobStream(id, 'log', { max: 100 });
    const gotAll = collect(all);
    await waitFor(() => !all.loading, `${transports}: loaded`);
    const start = all.end;
    assert.equal(all.chunks.length, 100);
    assert.equal(all.offset, start - 100);
    // A second view from the end, a third from offset 10: one subscription between them.
    const tail = client.jobStream(id, 'log', { offset: null });
    const fromTen = client.jobStream(id, 'log', { offset: 10, max: 1e9 });
    await waitFor(() => !tail.loading && !fromTen.loading, `${transports}: the others loaded`);
    assert.equal(tail.end, start);
    assert.deepEqual(tail.chunks, []);
    assert.equal(client._streams.size, 1);
    const more = await appendRange(id, start, start + 30, 10);
    const end = more.at(-1).next_offset;
    await waitFor(() => [all, tail, fromTen].every((v) => v.end === end), `${transports}: live in every view`);
    assert.deepEqual(tail.chunks, Array.from({ length: 30 }, (_, k) => `c${start + k}`));
    assert.equal(tail.offset, start);
    assert.equal(fromTen.offset, 10);
    assert.equal(fromTen.chunks.length, end - 10);
    assert.ok(fromTen.chunks.every((c, i) => c === `c${10 + i}`));
    assertExact(`${transports}: the first view`, gotAll, end);
    all.close();
    tail.close();
    fromTen.close();
    assert.equal(client._streams.size, 0);
    client.close();
  }
});

test('a batch past what the view holds (a gap) is not applied: the view subscribes again from its offset', async () => {
  const id = await newJob('gap');
  await appendRange(id, 0, 100, 50);
  for (const transports of [['websocket'], ['sse'], ['longpoll']]) {
    const sent = [];
    const client = createClient({ url: server.url, token: alice, transports, WebSocket: spyWebSocket(sent), backoff: { initialMs: 100 } });
    const view = client.jobStream(id, 'log');
    const got = collect(view);
    await waitFor(() => !view.loading && client.status === 'connected', `${transports}: loaded`);
    const end = view.end;
    // As if a frame had come from further on (the server never sends one).
    client._chunksIn(client._transport, view.topic, end + 5, ['bogus']);
    assert.equal(view.end, end, 'not applied');
    const more = await appendRange(id, end, end + 20, 10);
    await waitFor(() => view.end === more.at(-1).next_offset, `${transports}: caught up`);
    assertExact(`${transports}: after a gap`, got, view.end);
    if (transports[0] === 'websocket') {
      const frames = sent.filter((f) => f.topic === view.topic).map((f) => `${f.op}${f.since != null ? ` ${f.since}` : ''}`);
      assert.deepEqual(frames, ['sub 0', 'unsub', `sub ${end}`]);
    }
    client.close();
  }
});

test('a stream that outgrew its bound: the view is told what was dropped and goes on from there', async () => {
  const small = await Server.start('streams-small', ['--stream-max-bytes', '4KiB']);
  try {
    const id = `trunc-${uid()}`;
    await small.api(worker, 'POST', '/v1/jobs', { id, owner: 'alice', status: 'running' });
    const line = (i) => `c${i} ${'x'.repeat(90)}`;
    for (let i = 0; i < 400; i += 10) {
      await small.api(worker, 'POST', `/v1/jobs/${id}/streams/log`, { chunks: Array.from({ length: 10 }, (_, k) => line(i + k)) });
    }
    const { streams } = await small.api(alice, 'GET', `/v1/jobs/${id}/streams`);
    const floor = streams[0].floor;
    assert.ok(floor > 0, `older chunks were dropped: ${JSON.stringify(streams)}`);
    for (const transports of [['websocket'], ['sse'], ['longpoll']]) {
      const client = createClient({ url: small.url, token: alice, transports, backoff: { initialMs: 100 } });
      const view = client.jobStream(id, 'log');
      const told = [];
      view.on('truncated', (t) => told.push(t));
      await waitFor(() => !view.loading && view.end === 400, `${transports}: loaded`);
      assert.deepEqual(told, [{ from: 0, to: floor }], `${transports}`);
      assert.deepEqual(view.truncated, { from: 0, to: floor });
      assert.equal(view.offset, floor);
      assert.deepEqual(view.chunks, Array.from({ length: 400 - floor }, (_, k) => line(floor + k)));
      client.close();
    }
  } finally {
    await small.stop();
  }
});

test('a stream of a job the reader may not see fails the view with not_found, on every transport', async () => {
  const id = `other-${uid()}`;
  await api(worker, 'POST', '/v1/jobs', { id, owner: 'bob', status: 'running' });
  for (const transports of [['websocket'], ['sse'], ['longpoll']]) {
    const client = createClient({ url: server.url, token: alice, transports, backoff: { initialMs: 100 } });
    const view = client.jobStream(id, 'log');
    await waitFor(() => view.error, `${transports}: refused`);
    assert.equal(view.error.code, 'not_found');
    assert.equal(view.loading, false);
    assert.equal(client._streams.size, 0);
    client.close();
  }
  const client = createClient({ url: server.url, token: alice });
  assert.throws(() => client.jobStream(id, 'no spaces'), (e) => e instanceof HeraldError && e.code === 'invalid_field');
  client.close();
});

/** `herald_stream_chunks_total` from /metrics. */
async function chunksMetric(s = server) {
  const text = await (await fetch(`${s.url}/metrics`)).text();
  const m = text.match(/^herald_stream_chunks_total(?:\{[^}]*\})? (\d+)/m);
  return m ? Number(m[1]) : 0;
}

/** Every chunk of a stream, read page by page. */
async function readAll(id, name, s = server) {
  const out = [];
  let offset = 0;
  for (;;) {
    const page = await s.api(alice, 'GET', `/v1/jobs/${id}/streams/${name}?offset=${offset}&limit=10000`);
    out.push(...page.chunks);
    if (page.next >= page.end) return out;
    offset = page.next;
  }
}

test('reporter.stream: 5,000 writes go as a few appends, in order, before the job completes', async () => {
  const id = await newJob('writer');
  const reporter = new ProgressReporter({ url: server.url, token: worker });
  const before = await chunksMetric();
  const out = reporter.stream(id, 'log');
  const answers = [];
  const N = 5000;
  for (let i = 0; i < N; i++) answers.push(out.write(i % 500 === 0 ? { record: i } : `c${i}`));
  await reporter.progress(id, { stage: 'writing' }); // does not split a batch
  const appends = new Set((await Promise.all(answers)).map((a) => a.first_offset));
  await out.close();
  assert.equal(out.appends, appends.size);
  assert.ok(appends.size <= 6, `5,000 writes in ${appends.size} appends`);
  console.log(`# reporter.stream: ${N} writes in ${appends.size} appends`);
  assert.equal((await chunksMetric()) - before, N, 'herald_stream_chunks_total counts each chunk once');
  const stored = await readAll(id, 'log');
  assert.equal(stored.length, N);
  stored.forEach((c, i) => assert.deepEqual(c, i % 500 === 0 ? { record: i } : `c${i}`));
  assert.throws(() => out.write('late'), (e) => e.code === 'closed');

  // Lines written just before the job completes are stored before it does.
  const tokens = reporter.stream(id, 'tokens', { lingerMs: 10000 });
  for (const t of ['Hel', 'lo', ' world']) tokens.write({ token: t });
  await reporter.jobCompleted(id);
  assert.deepEqual(await readAll(id, 'tokens'), [{ token: 'Hel' }, { token: 'lo' }, { token: ' world' }]);
  const { streams } = await api(alice, 'GET', `/v1/jobs/${id}/streams`);
  assert.deepEqual(streams.map((s) => [s.name, s.next_offset]).sort(), [['log', N], ['tokens', 3]]);
  // Over-long chunks are refused at write time.
  assert.throws(() => tokens.write('x'.repeat(70 * 1024)), (e) => e.code === 'invalid_chunk');
  await tokens.close();
});

test('reporter.stream: a lost answer is retried under the same Idempotency-Key, nothing stored twice; a refusal stops the writer', async () => {
  const id = await newJob('retry');
  const proxy = await startProxy(server.url);
  const reporter = new ProgressReporter({ url: proxy.url, token: worker, backoff: { initialMs: 50, maxMs: 200 } });
  const out = reporter.stream(id, 'log', { batch: 100 });
  proxy.failOnce(`/v1/jobs/${id}/streams/log`);
  proxy.failOnce(`/v1/jobs/${id}/streams/log`);
  for (let i = 0; i < 1000; i++) out.write(`c${i}`);
  await out.flush();
  assertExact('retried appends', await readAll(id, 'log'), 1000);
  const posts = proxy.state.requests.filter((r) => r.startsWith(`POST /v1/jobs/${id}/streams/log`));
  assert.equal(posts.length, 12, '10 appends, two of them sent twice');
  assert.equal(out.appends, 10);

  // A refused append (an unknown job) fails the writer: flush throws, later writes too.
  const gone = reporter.stream(`missing-${uid()}`, 'log');
  const w = gone.write('a');
  await assert.rejects(gone.flush(), (e) => e.code === 'not_found');
  await assert.rejects(w, (e) => e.code === 'not_found');
  assert.throws(() => gone.write('b'), (e) => e.code === 'not_found');
  await proxy.close();
});
