// A cluster (PostgreSQL + NATS): an unmodified realtime-js client whose
// node goes away rejoins through the same address, lands on another node, and
// still gets every change it missed. realtime-js cannot say where it stopped,
// so the nodes keep each channel's position in the shared store.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { RealtimeClient } from '@supabase/realtime-js'
import { Herald, token, anonKey, Inbox, sleep, freshDatabase, cuttableProxy } from '../../test-support/herald.mjs'

const worker = token('worker-1', 'worker')
const CLUSTER = ['--cluster', 'nats://127.0.0.1:4222']

async function twoNodes(t, name) {
  const nodes = []
  const pg = await freshDatabase(t, name, async () => {
    for (const n of nodes) await n.stop()
  })
  nodes.push(await Herald.start(CLUSTER, { db: pg.url }))
  nodes.push(await Herald.start(CLUSTER, { db: pg.url }))
  return nodes
}

/** alice's realtime-js client, through `net`, watching job `id`'s updates. */
async function watch(t, net, id) {
  const rt = new RealtimeClient(`${net.url.replace('http', 'ws')}/realtime/v1`, {
    params: { apikey: anonKey() },
    reconnectAfterMs: () => 300,
  })
  t.after(() => rt.disconnect())
  await rt.setAuth(token('alice', 'authenticated'))
  const got = new Inbox()
  const statuses = new Inbox()
  rt.channel(`job-${id}`)
    .on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'jobs', filter: `id=eq.${id}` }, got.push)
    .subscribe((s) => statuses.push(s))
  await statuses.until((s) => s === 'SUBSCRIBED')
  return got
}

const report = async (node, id, succeeded) => {
  const [status] = await node.api('POST', `/v1/jobs/${id}/progress`, worker, { succeeded })
  assert.equal(status, 200)
}

test('a channel cut from its node rejoins another and gets exactly what it missed', async (t) => {
  const [a, b] = await twoNodes(t, 'phx_cut')
  await a.api('POST', '/v1/jobs', worker, { id: 'c1', owner: 'alice', total: 100, status: 'running' })
  const net = await cuttableProxy(a.port)
  t.after(() => net.close())
  const got = await watch(t, net, 'c1')
  await report(a, 'c1', 1)
  await got.until((p) => p.new.succeeded === 1, 10000, 'update 1 on node A')

  net.cut()
  for (let n = 2; n <= 4; n++) await report(a, 'c1', n)
  net.restore(b.port)
  await got.until((p) => p.new.succeeded === 4, 15000, 'the updates made while away, replayed by node B')
  await report(a, 'c1', 5)
  await got.until((p) => p.new.succeeded === 5, 10000, 'live on node B')
  assert.deepEqual(got.items.map((p) => p.new.succeeded), [1, 2, 3, 4, 5], 'every change once, in order')
})

test('a channel whose node is killed resumes on another from its checkpoint, missing nothing', async (t) => {
  const [a, b] = await twoNodes(t, 'phx_kill')
  await a.api('POST', '/v1/jobs', worker, { id: 'k1', owner: 'alice', total: 100, status: 'running' })
  const net = await cuttableProxy(a.port)
  t.after(() => net.close())
  const got = await watch(t, net, 'k1')
  for (let n = 1; n <= 3; n++) await report(a, 'k1', n)
  await got.until((p) => p.new.succeeded === 3, 10000, 'updates 1-3 on node A')
  // Past one checkpoint interval, so node A has stored where the channel is.
  await sleep(1500)

  net.restore(b.port) // new connections go to B; the open one dies with A
  await a.kill9()
  for (let n = 4; n <= 6; n++) await report(b, 'k1', n)
  await got.until((p) => p.new.succeeded === 6, 15000, 'the updates made after A died, replayed by node B')
  await report(b, 'k1', 7)
  await got.until((p) => p.new.succeeded === 7, 10000, 'live on node B')
  assert.deepEqual(got.items.map((p) => p.new.succeeded), [1, 2, 3, 4, 5, 6, 7], 'every change once, in order')
})
