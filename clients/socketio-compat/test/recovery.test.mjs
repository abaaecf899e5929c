// Connection-state recovery backed by Herald's log: a socket.io-client that
// comes back after a network cut, or after the server was killed with -9 and
// restarted, gets `socket.recovered === true` and every event it missed, in
// order, once — over WebSocket and over long-polling. Socket.IO's own
// recovery keeps two minutes in one process's memory and loses it on restart.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { io } from 'socket.io-client'
import { Herald, token, sleep, freshDatabase } from '../../test-support/herald.mjs'
import { monitor, connected, emitAck, cuttableProxy } from '../support/socketio.mjs'

let h
before(async () => {
  h = await Herald.start()
})
after(async () => {
  await h?.stop()
})

const worker = token('crawler', 'worker')

async function step(id, n, node = h) {
  const [status, body] = await node.api('POST', `/v1/jobs/${id}/progress`, worker, { stage: `step-${n}`, succeeded: n })
  assert.equal(status, 200, JSON.stringify(body))
}

/** Every job:updated stage the socket saw, checking offsets never repeat or go back. */
function stages(socket) {
  const updates = socket.inbox.items.filter((e) => e.name === 'job:updated')
  const offsets = updates.map((e) => Number(e.offset))
  for (let i = 1; i < offsets.length; i++) assert.ok(offsets[i] > offsets[i - 1], `offsets in order, once: ${offsets}`)
  return updates.map((e) => e.data.stage)
}

const until = async (pred, ms, what) => {
  const deadline = Date.now() + ms
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

for (const transports of [['websocket'], ['polling']]) {
  const kind = transports[0]

  test(`recovery over ${kind} after a network cut: recovered, nothing missed, nothing twice`, async () => {
    const id = `cut-${kind}`
    await h.api('POST', '/v1/jobs', worker, { id, owner: 'alice', status: 'running' })
    // Through a proxy that can cut the network; the worker writes while the
    // client is away.
    const net = await cuttableProxy(h.port)
    const s = monitor(net.url, token('alice', 'customer'), { transports })
    try {
      await connected(s)
      assert.equal(s.recovered, false)
      assert.deepEqual(await emitAck(s, 'job:subscribe', id), { ok: true })
      await step(id, 1)
      await s.inbox.until((e) => e.data?.stage === 'step-1', 5000, 'step-1')

      const gone = new Promise((r) => s.once('disconnect', r))
      net.cut()
      assert.match(await gone, /^transport (close|error)$/)
      for (let n = 2; n <= 6; n++) await step(id, n)
      assert.ok(!s.connected, 'the writes happened while the client was away')
      net.restore()

      await until(() => s.connected, 10000, 'reconnect after the cut')
      assert.equal(s.recovered, true)
      await s.inbox.until((e) => e.data?.stage === 'step-6', 5000, 'step-6 after recovery')
      await step(id, 7)
      await s.inbox.until((e) => e.data?.stage === 'step-7', 5000, 'step-7 live after recovery')
      assert.deepEqual(stages(s), ['step-1', 'step-2', 'step-3', 'step-4', 'step-5', 'step-6', 'step-7'])
    } finally {
      s.disconnect()
      await net.close()
    }
  })

  test(`recovery over ${kind} after kill -9 and restart: the session is in the database`, async () => {
    const id = `kill-${kind}`
    await h.api('POST', '/v1/jobs', worker, { id, owner: 'alice', status: 'running' })
    const s = monitor(h.url, token('alice', 'customer'), {
      transports, reconnectionDelay: 2500, reconnectionDelayMax: 2500, randomizationFactor: 0,
    })
    const notifications = []
    s.on('notification', (n) => notifications.push(n))
    try {
      await connected(s)
      assert.deepEqual(await emitAck(s, 'job:subscribe', id), { ok: true })
      assert.deepEqual(await emitAck(s, 'notifications:subscribe'), { ok: true })
      await step(id, 1)
      await s.inbox.until((e) => e.data?.stage === 'step-1', 5000, 'step-1')

      const gone = new Promise((r) => s.once('disconnect', r))
      await h.restart()
      await gone
      // Written after the restart, before the client is back.
      for (let n = 2; n <= 5; n++) await step(id, n)
      await h.api('POST', '/v1/notifications', token('ops', 'service'), { recipient: 'alice', level: 'info', title: 'while away' })
      assert.ok(!s.connected, 'the writes happened while the client was away')

      await until(() => s.connected, 15000, 'reconnect after restart')
      assert.equal(s.recovered, true)
      await s.inbox.until((e) => e.data?.stage === 'step-5', 5000, 'step-5 after recovery')
      await s.inbox.until((e) => e.name === 'notification' && e.data.title === 'while away', 5000, 'notification')
      await step(id, 6)
      await s.inbox.until((e) => e.data?.stage === 'step-6', 5000, 'step-6 live')
      assert.deepEqual(stages(s), ['step-1', 'step-2', 'step-3', 'step-4', 'step-5', 'step-6'])
      assert.equal(notifications.filter((n) => n.title === 'while away').length, 1)
    } finally {
      s.disconnect()
    }
  })
}

test('a session id is no key: another user who presents it starts afresh and sees nothing', async () => {
  const id = 'pid-theft'
  await h.api('POST', '/v1/jobs', worker, { id, owner: 'alice', status: 'running' })
  const alice = monitor(h.url, token('alice', 'customer'))
  try {
    await connected(alice)
    assert.deepEqual(await emitAck(alice, 'job:subscribe', id), { ok: true })
    const pid = alice._pid
    assert.ok(pid, 'the server gave a session id')
    await step(id, 1)
    await alice.inbox.until((e) => e.data?.stage === 'step-1', 5000, 'alice step-1')

    // Bob presents Alice's session id and an offset before her events.
    const bob = monitor(h.url, token('bob', 'customer'), { auth: { token: token('bob', 'customer'), pid, offset: '0' } })
    try {
      await connected(bob)
      assert.equal(bob.recovered, false)
      assert.notEqual(bob._pid, pid)
      await step(id, 2)
      await alice.inbox.until((e) => e.data?.stage === 'step-2', 5000, 'alice step-2')
      await sleep(200)
      assert.deepEqual(bob.inbox.items, [], 'bob receives nothing of alice`s')
    } finally {
      bob.disconnect()
    }
  } finally {
    alice.disconnect()
  }
})

test('an unknown session id starts a new session, as Socket.IO does', async () => {
  const s = io(h.url, { auth: { token: token('alice', 'customer'), pid: 'no-such-session', offset: '1' }, reconnection: false })
  try {
    await connected(s)
    assert.equal(s.recovered, false)
    assert.notEqual(s._pid, 'no-such-session')
  } finally {
    s.disconnect()
  }
})

test('on PostgreSQL, a client cut from one node recovers on another: sessions are shared', async (t) => {
  const nodes = []
  const pg = await freshDatabase(t, 'sio', async () => {
    for (const n of nodes) await n.stop()
  })
  nodes.push(await Herald.start([], { db: pg.url }))
  nodes.push(await Herald.start([], { db: pg.url }))
  const [a, b] = nodes
  const id = 'two-nodes'
  const [status] = await a.api('POST', '/v1/jobs', worker, { id, owner: 'alice', status: 'running' })
  assert.equal(status, 201)
  const net = await cuttableProxy(a.port)
  const s = monitor(net.url, token('alice', 'customer'))
  try {
    await connected(s)
    assert.deepEqual(await emitAck(s, 'job:subscribe', id), { ok: true })
    await step(id, 1, a)
    await s.inbox.until((e) => e.data?.stage === 'step-1', 10000, 'step-1 on node A')

    const gone = new Promise((r) => s.once('disconnect', r))
    net.cut()
    await gone
    // Written through node A while the client is away, then it reaches node B.
    for (let n = 2; n <= 4; n++) await step(id, n, a)
    net.restore(b.port)
    await until(() => s.connected, 10000, 'reconnect to node B')
    assert.equal(s.recovered, true)
    await s.inbox.until((e) => e.data?.stage === 'step-4', 10000, 'step-4 after recovery on node B')
    await step(id, 5, a)
    await s.inbox.until((e) => e.data?.stage === 'step-5', 10000, 'step-5 live on node B')
    assert.deepEqual(stages(s), ['step-1', 'step-2', 'step-3', 'step-4', 'step-5'])
  } finally {
    s.disconnect()
    await net.close()
  }
})
