// The React hooks against the real server, rendered with react-test-renderer:
// live values, and no subscription left behind after unmount.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import React from 'react';
import TestRenderer from 'react-test-renderer';
import { createClient } from '../src/index.js';
import { HeraldProvider, useJob, useJobs, useNotifications, usePresence, useConnectionStatus } from '../react.js';
import { Server, token, waitFor, uid } from './harness.mjs';

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const { act } = TestRenderer;
const h = React.createElement;
const worker = token('w', 'acme', 'worker');
const staff = token('sam', 'acme', 'staff');

let server;
after(async () => server && server.stop());

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

  // Unmount: every view closes, every topic is released.
  assert.equal(client._topics.size, 4);
  assert.equal(await subscriptions(), baseline + 4, 'job, jobs:owner, user and room on the server');
  await act(async () => renderer.unmount());
  assert.equal(client._topics.size, 0, `left subscribed: ${[...client._topics.keys()]}`);
  await waitFor(async () => (await subscriptions()) === baseline, 'the server to drop the subscriptions');
  client.close();
});
