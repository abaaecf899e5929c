// An older realtime-js (2.11.x) that speaks serializer 1.0.0 (JSON objects):
// postgres_changes, broadcast and presence work the same.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { RealtimeClient } from '@supabase/realtime-js'
import { Herald, token, anonKey, subscribed, Inbox } from '../../test-support/herald.mjs'

// Its ESM build has extensionless imports only bundlers resolve; load the CommonJS one.
const { RealtimeClient: LegacyClient } = createRequire(import.meta.url)('realtime-js-v1')
const worker = token('worker-1', 'worker')

test('realtime-js 2.11 (vsn 1.0.0): changes, broadcast to a 2.0.0 client, presence', async (t) => {
  const h = await Herald.start()
  const legacy = new LegacyClient(`ws://127.0.0.1:${h.port}/realtime/v1`, { params: { apikey: anonKey() } })
  const current = new RealtimeClient(`ws://127.0.0.1:${h.port}/realtime/v1`, { params: { apikey: anonKey() } })
  t.after(async () => {
    legacy.disconnect()
    await current.disconnect()
    await h.stop()
  })
  assert.match(legacy.endpointURL(), /vsn=1\.0\.0/)
  await legacy.setAuth(token('sam', 'staff'))
  current.setAuth(token('alice', 'authenticated'))
  await h.api('POST', '/v1/jobs', worker, { id: 'v1-job', owner: 'alice' })

  const changes = new Inbox()
  const chat = new Inbox()
  const presence = new Inbox()
  const ch = legacy
    .channel('ops')
    .on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'jobs', filter: 'id=eq.v1-job' }, changes.push)
    .on('broadcast', { event: 'note' }, chat.push)
    .on('presence', { event: 'sync' }, () => presence.push(ch.presenceState()))
  await subscribed(ch)
  await h.api('POST', '/v1/jobs/v1-job/progress', worker, { status: 'running', stage: 'crawl' })
  const c = await changes.until((p) => p.new.stage === 'crawl')
  assert.equal(c.eventType, 'UPDATE')
  assert.equal(c.new.owner, 'alice')

  // A 2.0.0 client's binary broadcast reaches the 1.0.0 client as JSON.
  const other = current.channel('ops')
  await subscribed(other)
  await other.send({ type: 'broadcast', event: 'note', payload: { text: 'hi from v2' } })
  const m = await chat.until((x) => x.payload.text === 'hi from v2')
  assert.equal(m.event, 'note')

  assert.equal(await ch.track({ role: 'staff' }), 'ok')
  const s = await presence.until((st) => st.sam)
  assert.equal(s.sam[0].role, 'staff')
})
