// Compact frames (herald.v1c) are what the client asks for by default: the
// same events, broadcasts and presence as with JSON frames (`compact: false`),
// in fewer bytes on the wire.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '../src/index.js';
import { expandCompact } from '../src/transports/websocket.js';
import { Server, token, waitFor } from './harness.mjs';

const TENANT = 'acme';
const worker = token('worker-1', TENANT, 'worker');
const staff = token('sam', TENANT, 'staff');
const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

/** A WebSocket that records the subprotocol chosen and the raw text of every frame. */
function recording() {
  const log = { protocol: null, frames: [] };
  class Rec extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      this.addEventListener('open', () => (log.protocol = this.protocol));
      this.addEventListener('message', (m) => log.frames.push(String(m.data)));
    }
  }
  return { WebSocket: Rec, log };
}

test('compact by default, JSON on request: the same deliveries either way, compact ones smaller', async () => {
  const s = await Server.start('compact');
  cleanup.push(() => s.stop());
  await s.api(worker, 'POST', '/v1/jobs', { id: 'j', status: 'running' });
  const seen = {};
  const logs = {};
  for (const [name, compact] of [['compact', undefined], ['json', false]]) {
    const rec = recording();
    const c = createClient({ url: s.url, token: staff, WebSocket: rec.WebSocket, ...(compact === false ? { compact } : {}) });
    cleanup.push(() => c.close());
    const got = [];
    c.subscribe('job:j', { onEvent: (e) => got.push(e) });
    c.subscribe('room:r', { onBroadcast: (b) => got.push(b) });
    seen[name] = got;
    logs[name] = rec.log;
    await waitFor(() => c.status === 'connected', `${name} connected`);
  }
  await waitFor(() => logs.compact.frames.filter((f) => f.includes('"ack"')).length >= 2 && logs.json.frames.filter((f) => f.includes('"ack"')).length >= 2, 'subscribed');
  assert.equal(logs.compact.protocol, 'herald.v1c');
  assert.equal(logs.json.protocol, 'herald.v1');
  await s.api(worker, 'POST', '/v1/jobs/j/progress', { stage: 'half', progress: 50 });
  await s.api(staff, 'POST', '/v1/broadcast', { topic: 'room:r', event: 'typing', payload: { field: 'title' } });
  await waitFor(() => seen.compact.length >= 2 && seen.json.length >= 2, 'both got the event and the broadcast');
  // Times are the same instant; JSON frames spell them as the server formats
  // them ("…11.82Z"), compact ones as epoch ms that the client turns into ISO text ("…11.820Z").
  const instant = (list) => list.map((d) => (d.time ? { ...d, time: Date.parse(d.time) } : d));
  assert.deepEqual(instant(seen.compact), instant(seen.json), 'the app sees the same deliveries');
  const arrays = logs.compact.frames.filter((f) => f.startsWith('['));
  assert.equal(arrays.length, 2, logs.compact.frames.join('\n'));
  const objects = logs.json.frames.filter((f) => f.includes('"op":"event"') || f.includes('"op":"broadcast"'));
  for (let i = 0; i < 2; i++) assert.ok(arrays[i].length < objects[i].length, `${arrays[i]} vs ${objects[i]}`);
  assert.equal(expandCompact([9, 'x']), null, 'a tag of a newer server is skipped');
});
