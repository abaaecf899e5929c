// Broadcast and presence between two clients (current realtime-js, vsn 2.0.0:
// broadcasts travel as binary frames), and Supabase's REST broadcast.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { RealtimeClient } from '@supabase/realtime-js'
import { Herald, token, anonKey, subscribed, Inbox, sleep } from '../../test-support/herald.mjs'

function client(h, sub) {
  const rt = new RealtimeClient(`ws://127.0.0.1:${h.port}/realtime/v1`, { params: { apikey: anonKey() } })
  rt.setAuth(token(sub, 'authenticated'))
  return rt
}

test('broadcast between two clients, with self and ack', async (t) => {
  const h = await Herald.start()
  const a = client(h, 'alice')
  const b = client(h, 'bob')
  t.after(async () => {
    await a.disconnect()
    await b.disconnect()
    await h.stop()
  })
  const aGot = new Inbox()
  const bGot = new Inbox()
  const ca = a.channel('room1', { config: { broadcast: { self: true, ack: true } } }).on('broadcast', { event: 'cursor' }, aGot.push)
  const cb = b.channel('room1').on('broadcast', { event: 'cursor' }, bGot.push).on('broadcast', { event: 'other' }, bGot.push)
  await subscribed(ca)
  await subscribed(cb)
  assert.equal(await ca.send({ type: 'broadcast', event: 'cursor', payload: { x: 1, name: 'Zoë ✓' } }), 'ok', 'acked')
  const got = await bGot.until((m) => m.event === 'cursor')
  assert.deepEqual(got, { type: 'broadcast', event: 'cursor', payload: { x: 1, name: 'Zoë ✓' } })
  await aGot.until((m) => m.payload.x === 1, 5000, 'own message (self: true)')
  // Without self, the sender does not hear itself.
  assert.equal(await cb.send({ type: 'broadcast', event: 'cursor', payload: { x: 2 } }), 'ok')
  await aGot.until((m) => m.payload.x === 2)
  await sleep(200)
  assert.equal(bGot.items.filter((m) => m.payload.x === 2).length, 0)

  // REST broadcast in Supabase's body shape reaches the room.
  const r = await fetch(`${h.url}/realtime/v1/api/broadcast`, {
    method: 'POST',
    headers: { apikey: anonKey(), authorization: `Bearer ${token('svc', 'service_role')}`, 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ topic: 'room1', event: 'other', payload: { from: 'rest' } }] }),
  })
  assert.equal(r.status, 202)
  await bGot.until((m) => m.event === 'other' && m.payload.from === 'rest')
})

test('presence: track, sync, join and leave between two clients', async (t) => {
  const h = await Herald.start()
  const a = client(h, 'alice')
  const b = client(h, 'bob')
  t.after(async () => {
    await a.disconnect()
    await h.stop()
  })
  const aEvents = new Inbox()
  const ca = a
    .channel('lobby')
    .on('presence', { event: 'sync' }, () => aEvents.push({ sync: ca.presenceState() }))
    .on('presence', { event: 'join' }, (p) => aEvents.push({ join: p }))
    .on('presence', { event: 'leave' }, (p) => aEvents.push({ leave: p }))
  await subscribed(ca)
  assert.equal(await ca.track({ status: 'online' }), 'ok')
  await aEvents.until((e) => e.sync && e.sync.alice, 5000, 'alice in her own state')

  const cb = b.channel('lobby').on('presence', { event: 'sync' }, () => {})
  await subscribed(cb)
  assert.equal(await cb.track({ status: 'away' }), 'ok')
  const j = await aEvents.until((e) => e.join && e.join.key === 'bob', 5000, 'bob joins')
  assert.equal(j.join.newPresences[0].status, 'away')
  assert.ok(j.join.newPresences[0].presence_ref, 'metas carry a ref')
  const s = await aEvents.until((e) => e.sync && e.sync.bob)
  assert.deepEqual(Object.keys(s.sync).sort(), ['alice', 'bob'])
  assert.ok(Object.keys(cb.presenceState()).includes('alice'), 'bob got the state with alice')

  // Bob's socket goes away: his presence leaves.
  await b.disconnect()
  const l = await aEvents.until((e) => e.leave && e.leave.key === 'bob', 5000, 'bob leaves')
  assert.equal(l.leave.leftPresences[0].status, 'away')
})
