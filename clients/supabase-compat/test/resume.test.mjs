// Beyond Supabase: a client that loses its socket — here to a kill -9 of the
// server — rejoins and gets every change it missed, from Herald's log.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { RealtimeClient } from '@supabase/realtime-js'
import { Herald, token, anonKey, Inbox, sleep } from '../../test-support/herald.mjs'

const worker = token('worker-1', 'worker')

test('reconnect after kill -9 and restart misses nothing', async (t) => {
  const h = await Herald.start()
  const rt = new RealtimeClient(`ws://127.0.0.1:${h.port}/realtime/v1`, {
    params: { apikey: anonKey() },
    reconnectAfterMs: () => 300,
  })
  t.after(async () => {
    await rt.disconnect()
    await h.stop()
  })
  await rt.setAuth(token('alice', 'authenticated'))
  await h.api('POST', '/v1/jobs', worker, { id: 'r1', owner: 'alice', total: 100 })
  const got = new Inbox()
  const statuses = new Inbox()
  rt.channel('job-r1')
    .on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'jobs', filter: 'id=eq.r1' }, got.push)
    .subscribe((s) => statuses.push(s))
  await statuses.until((s) => s === 'SUBSCRIBED')
  await h.api('POST', '/v1/jobs/r1/progress', worker, { status: 'running', succeeded: 1 })
  await got.until((p) => p.new.succeeded === 1)

  // The server dies without a goodbye and comes back on the same port and file;
  // the worker reports before the client has reconnected.
  await h.kill9()
  const restarted = h.spawn()
  await restarted
  for (let n = 2; n <= 6; n++) {
    const [st] = await h.api('POST', '/v1/jobs/r1/progress', worker, { succeeded: n })
    assert.equal(st, 200)
  }
  await got.until((p) => p.new.succeeded === 6, 15000, 'the updates made while the client was away')
  await h.api('POST', '/v1/jobs/r1/progress', worker, { succeeded: 7 })
  await got.until((p) => p.new.succeeded === 7, 8000, 'live again')
  const seen = got.items.map((p) => p.new.succeeded)
  assert.deepEqual(seen, [1, 2, 3, 4, 5, 6, 7], 'every change exactly once, in order')
})
