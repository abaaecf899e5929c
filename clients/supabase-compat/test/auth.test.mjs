// Tokens: joins need a user's token, setAuth refreshes a channel's token, an
// expired token ends the channel, the anon key alone cannot read rows.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { RealtimeClient } from '@supabase/realtime-js'
import { Herald, token, anonKey, sign, subscribed, Inbox, sleep } from '../../test-support/herald.mjs'

const worker = token('worker-1', 'worker')

test('a guest channel (anon key) gets rows once setAuth brings a user token', async (t) => {
  const h = await Herald.start()
  const rt = new RealtimeClient(`ws://127.0.0.1:${h.port}/realtime/v1`, { params: { apikey: anonKey() } })
  t.after(async () => {
    await rt.disconnect()
    await h.stop()
  })
  const got = new Inbox()
  const ch = rt.channel('mine').on('postgres_changes', { event: '*', schema: 'public', table: 'jobs' }, got.push)
  await subscribed(ch)
  await h.api('POST', '/v1/jobs', worker, { id: 'before', owner: 'alice' })
  await sleep(300)
  assert.equal(got.items.length, 0, 'the anon key sees no rows')
  await rt.setAuth(token('alice', 'authenticated'))
  await sleep(200)
  await h.api('POST', '/v1/jobs', worker, { id: 'after', owner: 'alice' })
  await h.api('POST', '/v1/jobs', worker, { id: 'not-hers', owner: 'bob' })
  await got.until((p) => p.new.id === 'after')
  await sleep(200)
  assert.deepEqual(got.items.map((p) => p.new.id), ['after'])
})

test('setAuth refreshes the token; an expired token ends the channel with a system message', async (t) => {
  const h = await Herald.start()
  const rt = new RealtimeClient(`ws://127.0.0.1:${h.port}/realtime/v1`, { params: { apikey: anonKey() } })
  t.after(async () => {
    await rt.disconnect()
    await h.stop()
  })
  await rt.setAuth(token('alice', 'authenticated', { ttl: 3 }))
  const got = new Inbox()
  const system = new Inbox()
  const statuses = new Inbox()
  const ch = rt
    .channel('expiring')
    .on('postgres_changes', { event: '*', schema: 'public', table: 'jobs' }, got.push)
    .on('system', {}, system.push)
  ch.subscribe((s) => statuses.push(s))
  await statuses.until((s) => s === 'SUBSCRIBED')
  // A fresh token before expiry keeps the channel alive past the first token's exp.
  await rt.setAuth(token('alice', 'authenticated', { ttl: 3600 }))
  await sleep(3500)
  await h.api('POST', '/v1/jobs', worker, { id: 'still-live', owner: 'alice' })
  await got.until((p) => p.new.id === 'still-live', 5000, 'delivery after the first token expired')
  assert.ok(!statuses.items.includes('CLOSED'))

  // Now a short token that is not refreshed.
  const ch2 = rt.channel('short').on('system', {}, system.push)
  const st2 = new Inbox()
  rt.setAuth(token('alice', 'authenticated', { ttl: 2 }))
  await sleep(50)
  ch2.subscribe((s) => st2.push(s))
  await st2.until((s) => s === 'SUBSCRIBED')
  const sys = await system.until((m) => m.status === 'error' && /expired/i.test(m.message), 6000, 'expiry system message')
  assert.equal(sys.extension, 'system')
  await st2.until((s) => s === 'CLOSED', 3000, 'channel closed after expiry')
})

test('refused joins: bad token, another tenant, unknown table', async (t) => {
  const h = await Herald.start()
  const rt = new RealtimeClient(`ws://127.0.0.1:${h.port}/realtime/v1`, { params: { apikey: anonKey() } })
  t.after(async () => {
    await rt.disconnect()
    await h.stop()
  })
  rt.setAuth(sign({ sub: 'mallory', role: 'authenticated', tenant: 'acme', exp: 9999999999 }, 'wrong-secret'))
  await assert.rejects(subscribed(rt.channel('x').on('postgres_changes', { event: '*', schema: 'public', table: 'jobs' }, () => {})), /invalid_token/)
  rt.setAuth(token('eve', 'authenticated', { tenant: 'other' }))
  await assert.rejects(subscribed(rt.channel('y')), /tenant/)
  rt.setAuth(token('alice', 'authenticated'))
  await assert.rejects(
    subscribed(rt.channel('z').on('postgres_changes', { event: '*', schema: 'public', table: 'users' }, () => {})),
    /does not exist/,
  )
})
