// The React hooks against the real server, rendered with react-test-renderer:
// live values, and no subscription left behind after unmount.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import React from 'react';
import TestRenderer from 'react-test-renderer';
import { createClient } from '../src/index.js';
import { HeraldProvider, useJob, useJobs, useJobStream, useNotifications, usePresence, useConnectionStatus } from '../react.js';
import { Server, token, waitFor, uid } from './harness.mjs';

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const { act } = TestRenderer;
const h = React.createElement;
const worker = token('w', 'acme', 'worker');
const staff = token('sam', 'acme', 'staff');

let server;
let stalling;
let streaming;
after(async () => {
  if (server) await server.stop();
  if (stalling) await stalling.stop();
  if (streaming) await streaming.stop();
});

test('hooks follow the server live and clean up on unmount', async () => {
  server = await Server.start('react');
  const id = `r-${uid()}`;
  await server.api(worker, 'POST', '/v1/jobs', { id, owner: 'alice', status: 'running', tasks: [{ id: 'a' }, { id: 'b' }] });
  const client = createClient({ url: server.url, token: token('alice', 'acme', 'customer'), backoff: { initialMs: 100 } });
  // Native connections hold tenant-wide and per-user inboxes without subscribing: count from there.
  client.connect();
  await waitFor(() => client.status === 'connected', 'connected');
  const subscriptions = async () => (await server.api(staff, 'GET', '/v1/stats')).tenant.subscriptions;
  const baseline = await subscriptions();
  const seen = {};
  function Probe() {
    seen.job = useJob(id);
    seen.jobs = useJobs({ owner: 'alice' });
    seen.notes = useNotifications();
    seen.presence = usePresence('room:react', { page: 'probe' });
    seen.conn = useConnectionStatus();
    return h('span', null, seen.job.job ? `${seen.job.job.progress}%` : 'loading');
  }
  let renderer;
  await act(async () => {
    renderer = TestRenderer.create(h(HeraldProvider, { client }, h(Probe)));
  });
  const settle = (what, fn) =>
    waitFor(async () => {
      await act(async () => {
        await new Promise((r) => setTimeout(r, 30));
      });
      return fn();
    }, what);

  await settle('connected and loaded', () => seen.conn.status === 'connected' && seen.job.job && !seen.jobs.loading);
  assert.equal(seen.conn.transport, 'websocket');
  assert.deepEqual(seen.jobs.jobs.map((j) => j.id), [id]);
  await settle('in the room', () => seen.presence.members.includes('alice'));

  await server.api(worker, 'PUT', `/v1/jobs/${id}/tasks/a`, { status: 'succeeded' });
  await settle('50%', () => renderer.toJSON().children[0] === '50%');
  assert.equal(seen.job.tasks.find((t) => t.id === 'a').status, 'succeeded');
  await server.api(worker, 'PUT', `/v1/jobs/${id}/tasks/b`, { status: 'succeeded' });
  await server.api(worker, 'POST', `/v1/jobs/${id}/progress`, { status: 'completed' });
  await settle('completed, notified', () => seen.job.job.status === 'completed' && seen.notes.unreadCount === 1);
  assert.equal(seen.jobs.jobs[0].status, 'completed');
  await act(async () => {
    await seen.notes.markAllRead();
  });
  assert.equal(seen.notes.unreadCount, 0);

  // Unmount: every view closes, every topic and list is released. (useJobs
  // of all of an owner's jobs follows the jobs:owner topic, not a list.)
  assert.equal(client._topics.size, 4);
  assert.equal(await subscriptions(), baseline + 4, 'job, jobs:owner, user and room on the server');
  await act(async () => renderer.unmount());
  assert.equal(client._topics.size, 0, `left subscribed: ${[...client._topics.keys()]}`);
  assert.equal(client._lists.size, 0, `lists left: ${[...client._lists.keys()]}`);
  await waitFor(async () => (await subscriptions()) === baseline, 'the server to drop the subscriptions');
  client.close();
});

test('useJobs with a list of statuses renders the live list, and inline queries do not reopen it', async () => {
  // Running jobs without a report for a second become stalled: still in the list.
  stalling = await Server.start('react-list', ['--stall-timeout', '1s']);
  const s = stalling;
  const make = (id, status, extra = {}) => s.api(worker, 'POST', '/v1/jobs', { id, owner: 'alice', kind: 'crawl', status, ...extra });
  await make('j1', 'running');
  await make('j2', 'queued');
  await make('j3', 'running', { kind: 'mail' });
  const client = createClient({ url: s.url, token: staff, backoff: { initialMs: 100 } });
  let renders = 0;
  function Active() {
    renders += 1;
    // A new array and object on every render: compared by value, so one list throughout.
    const { jobs, loading, error } = useJobs({ status: ['running', 'stalled'], kind: 'crawl', tag: {} });
    if (error) return h('p', null, `error ${error.code}`);
    if (loading) return h('p', null, 'loading');
    return h('ul', null, jobs.map((j) => h('li', { key: j.id }, `${j.id}:${j.status}`)));
  }
  let renderer;
  await act(async () => {
    renderer = TestRenderer.create(h(HeraldProvider, { client }, h(Active)));
  });
  const items = () => {
    const tree = renderer.toJSON();
    return tree && tree.type === 'ul' ? (tree.children || []).map((li) => li.children.join('')) : tree && tree.children;
  };
  const settle = (what, fn) =>
    waitFor(async () => {
      await act(async () => {
        await new Promise((r) => setTimeout(r, 30));
      });
      return fn();
    }, what);
  await settle('the list', () => JSON.stringify(items()) === JSON.stringify(['j1:running']));
  const name = [...client._lists.keys()][0];
  await s.api(worker, 'POST', '/v1/jobs/j2/progress', { status: 'running' });
  await settle('j2 in', () => items().length === 2 && items()[0] === 'j2:running');
  await settle('both stalled, still listed', () => JSON.stringify([...items()].sort()) === JSON.stringify(['j1:stalled', 'j2:stalled']));
  await s.api(worker, 'POST', '/v1/jobs/j1/progress', { status: 'completed' });
  await settle('j1 out', () => JSON.stringify(items()) === JSON.stringify(['j2:stalled']));
  const truth = (await s.api(staff, 'GET', '/v1/jobs?kind=crawl')).jobs.filter((j) => ['running', 'stalled'].includes(j.status));
  assert.deepEqual(items(), truth.map((j) => `${j.id}:${j.status}`));
  assert.ok(renders > 3);
  assert.deepEqual([...client._lists.keys()], [name], 'the same list across renders');
  await act(async () => renderer.unmount());
  assert.equal(client._lists.size, 0);
  client.close();
});

test('useJobStream renders a job output stream live, keeps the newest `max`, and lets go on unmount', async () => {
  streaming = await Server.start('react-stream');
  const s = streaming;
  const id = `log-${uid()}`;
  await s.api(worker, 'POST', '/v1/jobs', { id, owner: 'alice', status: 'running' });
  await s.api(worker, 'POST', `/v1/jobs/${id}/streams/log`, { chunks: ['one', 'two'] });
  const client = createClient({ url: s.url, token: token('alice', 'acme', 'customer'), backoff: { initialMs: 100 } });
  const seen = {};
  function Log({ name }) {
    const stream = useJobStream(id, name, { max: 3 });
    seen.stream = stream;
    if (stream.error) return h('p', null, `error ${stream.error.code}`);
    if (stream.loading) return h('p', null, 'loading');
    return h('pre', null, `${stream.offset}-${stream.end}: ${stream.chunks.map((c) => (typeof c === 'string' ? c : JSON.stringify(c))).join('|')}`);
  }
  let renderer;
  await act(async () => {
    renderer = TestRenderer.create(h(HeraldProvider, { client }, h(Log, { name: 'log' })));
  });
  const text = () => renderer.toJSON().children.join('');
  const settle = (what, fn) =>
    waitFor(async () => {
      await act(async () => {
        await new Promise((r) => setTimeout(r, 30));
      });
      return fn();
    }, what);
  await settle('the stored chunks', () => text() === '0-2: one|two');
  const arrays = new Set([seen.stream.chunks]);
  await s.api(worker, 'POST', `/v1/jobs/${id}/streams/log`, { chunks: ['three', { token: 'four' }] });
  await settle('live chunks, the newest 3', () => text() === '1-4: two|three|{"token":"four"}');
  arrays.add(seen.stream.chunks);
  assert.equal(arrays.size, 2, 'a new array on change (React sees it)');
  // Another stream of the job: the hook follows its arguments.
  await s.api(worker, 'POST', `/v1/jobs/${id}/streams/tokens`, { chunks: ['Hel', 'lo'] });
  await act(async () => renderer.update(h(HeraldProvider, { client }, h(Log, { name: 'tokens' }))));
  await settle('the other stream', () => text() === '0-2: Hel|lo');
  assert.deepEqual([...client._streams.keys()], [`stream:${id}:tokens`]);
  await act(async () => renderer.update(h(HeraldProvider, { client }, h(Log, { name: 'bad name' }))));
  await settle('a bad name is an error to render', () => text() === 'error invalid_field');
  await act(async () => renderer.update(h(HeraldProvider, { client }, h(Log, { name: 'log' }))));
  await settle('back', () => text() === '1-4: two|three|{"token":"four"}');
  await act(async () => renderer.unmount());
  assert.equal(client._streams.size, 0);
  client.close();
});
