// Seed 004's job monitor on the published socket.io-client, unchanged: only
// Herald's URL and a token. A worker drives a job through the seed's stages
// over the HTTP API; the monitor receives every event in order with its jobId,
// over WebSocket and over HTTP long-polling only. Other tenants and other
// customers receive nothing; bad tokens and unknown jobs get their errors.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { io } from 'socket.io-client'
import { Herald, token, sleep } from '../../test-support/herald.mjs'
import { monitor, connected, emitAck, driveSeedJob, SEED_SEQUENCE } from '../support/socketio.mjs'

let h
before(async () => {
  h = await Herald.start()
})
after(async () => {
  await h?.stop()
})

for (const transports of [['websocket'], ['polling']]) {
  test(`seed 004 monitor over ${transports[0]}: every event in order with its jobId`, async () => {
    const id = `seed-${transports[0]}`
    const worker = token('crawler', 'worker')
    const [status] = await h.api('POST', '/v1/jobs', worker, { id, owner: 'alice', title: 'Label run', kind: 'crawl' })
    assert.equal(status, 201)

    const alice = monitor(h.url, token('alice', 'customer'), { transports })
    const bob = monitor(h.url, token('bob', 'customer'), { transports })
    const staffElsewhere = monitor(h.url, token('eve', 'staff', { tenant: 'globex' }), { transports })
    try {
      await Promise.all([connected(alice), connected(bob), connected(staffElsewhere)])
      assert.equal(alice.io.engine.transport.name, transports[0])
      assert.deepEqual(await emitAck(alice, 'job:subscribe', id), { ok: true })
      // Another customer may not know the job exists; another tenant neither.
      const refused = await emitAck(bob, 'job:subscribe', id)
      assert.equal(refused.ok, false)
      assert.equal(refused.error.code, 'not_found')
      assert.equal((await emitAck(staffElsewhere, 'job:subscribe', id)).error.code, 'not_found')
      // Their own feeds stay silent too.
      assert.deepEqual(await emitAck(bob, 'jobs:subscribe'), { ok: true })
      assert.deepEqual(await emitAck(staffElsewhere, 'jobs:subscribe'), { ok: true })

      await driveSeedJob(h, worker, id)
      await alice.inbox.until((e) => e.name === 'job:completed', 10000, 'job:completed')
      const names = alice.inbox.items.map((e) => e.name)
      assert.deepEqual(names, SEED_SEQUENCE)
      for (const e of alice.inbox.items) assert.equal(e.data.jobId, id, `${e.name} carries jobId`)
      // Offsets (log positions) increase, and the payloads are Herald's rows.
      const offsets = alice.inbox.items.map((e) => Number(e.offset))
      for (let i = 1; i < offsets.length; i++) assert.ok(offsets[i] >= offsets[i - 1], `offsets ${offsets}`)
      const progress = alice.inbox.items.filter((e) => e.name === 'job:progress').map((e) => [e.data.stage, e.data.progress])
      assert.deepEqual(progress, [['crawling', 25], ['processing-ocr', 50], ['matching', 75], ['rendering', 90]])
      const shot = alice.inbox.items.find((e) => e.name === 'screenshot:captured')
      assert.equal(shot.data.kind, 'screenshot:captured')
      assert.equal(shot.data.payload.page, 1)
      const done = alice.inbox.items.at(-1)
      assert.equal(done.data.status, 'completed')

      await sleep(300)
      assert.deepEqual(bob.inbox.items, [], 'another customer receives nothing')
      assert.deepEqual(staffElsewhere.inbox.items, [], 'another tenant receives nothing')
    } finally {
      for (const s of [alice, bob, staffElsewhere]) s.disconnect()
    }
  })
}

test('staff get the tenant feed; customers their own jobs; notifications reach their user', async () => {
  const worker = token('crawler', 'worker')
  const staff = monitor(h.url, token('sam', 'staff'))
  const carol = monitor(h.url, token('carol', 'customer'))
  try {
    await Promise.all([connected(staff), connected(carol)])
    assert.deepEqual(await emitAck(staff, 'jobs:subscribe'), { ok: true })
    assert.deepEqual(await emitAck(carol, 'jobs:subscribe'), { ok: true })
    assert.deepEqual(await emitAck(carol, 'notifications:subscribe'), { ok: true })
    await h.api('POST', '/v1/jobs', worker, { id: 'feed-carol', owner: 'carol' })
    await h.api('POST', '/v1/jobs', worker, { id: 'feed-dave', owner: 'dave' })
    // The feeds carry jobs; a job's tasks and artifacts come with its own subscription.
    await carol.inbox.until((e) => e.name === 'job:created', 5000, 'carol job:created')
    assert.deepEqual(await emitAck(carol, 'job:subscribe', 'feed-carol'), { ok: true })
    await h.api('PUT', '/v1/jobs/feed-carol/tasks/t1', worker, { status: 'running' })
    await h.api('POST', '/v1/jobs/feed-carol/artifacts', worker, { kind: 'report', payload: { rows: 3 } })
    await h.api('POST', '/v1/jobs/feed-carol/progress', worker, { status: 'failed', error: 'proxy refused' })

    await staff.inbox.until((e) => e.name === 'job:failed' && e.data.jobId === 'feed-carol', 8000, 'staff job:failed')
    const staffCreated = staff.inbox.items.filter((e) => e.name === 'job:created').map((e) => e.data.jobId)
    assert.deepEqual(staffCreated, ['feed-carol', 'feed-dave'])

    await carol.inbox.until((e) => e.name === 'notification', 8000, 'carol notification')
    const carolJobs = new Set(carol.inbox.items.filter((e) => e.name.startsWith('job:')).map((e) => e.data.jobId))
    assert.deepEqual([...carolJobs], ['feed-carol'], 'a customer sees only her own jobs')
    const names = carol.inbox.items.map((e) => e.name)
    for (const want of ['job:created', 'task:created', 'artifact:created', 'job:failed', 'notification']) {
      assert.ok(names.includes(want), `carol got ${want}: ${names}`)
    }
    // On both her feed and the job's subscription, an event still arrives once.
    assert.equal(names.filter((n) => n === 'job:failed').length, 1)
    const note = carol.inbox.items.find((e) => e.name === 'notification')
    assert.equal(note.data.recipient, 'carol')
  } finally {
    staff.disconnect()
    carol.disconnect()
  }
})

test('bad, expired and missing tokens are connect_error with the reason', async () => {
  const attempt = (auth, opts = {}) =>
    new Promise((resolve) => {
      const s = io(h.url, { auth, reconnection: false, ...opts })
      s.once('connect', () => {
        s.disconnect()
        resolve({ connected: true })
      })
      s.once('connect_error', (err) => {
        s.disconnect()
        resolve({ message: err.message, code: err.data?.code })
      })
    })
  const bad = await attempt({ token: token('alice', 'customer').slice(0, -3) + 'xyz' })
  assert.equal(bad.code, 'invalid_token')
  assert.match(bad.message, /invalid token/)
  const expired = await attempt({ token: token('alice', 'customer', { ttl: -60 }) })
  assert.equal(expired.code, 'token_expired')
  assert.match(expired.message, /expired/)
  const missing = await attempt({})
  assert.equal(missing.code, 'unauthorized')
  // ?token= works for clients that cannot send auth.
  const viaQuery = await attempt({}, { query: { token: token('alice', 'customer') } })
  assert.deepEqual(viaQuery, { connected: true })
})

test('unknown jobs, unknown events and bad arguments get their codes', async () => {
  const s = monitor(h.url, token('sam', 'staff'))
  try {
    await connected(s)
    const missing = await emitAck(s, 'job:subscribe', 'no-such-job')
    assert.deepEqual(missing.error.code, 'not_found')
    assert.equal((await emitAck(s, 'job:subscribe', 'bad id with spaces')).error.code, 'invalid_topic')
    assert.equal((await emitAck(s, 'job:subscribe', 42)).error.code, 'invalid_event')
    assert.equal((await emitAck(s, 'dance')).error.code, 'unknown_event')
    assert.equal((await emitAck(s, 'job:unsubscribe', 'never')).error.code, 'not_subscribed')
    // Without an ack, the refusal arrives as herald:error.
    s.emit('dance')
    const err = await s.inbox.until((e) => e.name === 'herald:error', 5000, 'herald:error')
    assert.equal(err.data.code, 'unknown_event')
    // Binary attachments are refused, and the connection lives on.
    const bin = await emitAck(s, 'upload', Buffer.from([1, 2, 3]))
    assert.equal(bin.error.code, 'binary_not_supported')
    assert.ok(s.connected)
    assert.equal((await emitAck(s, 'jobs:subscribe')).ok, true)
  } finally {
    s.disconnect()
  }
})

test('a token that expires while connected ends the connection with its reason', async () => {
  const s = monitor(h.url, token('alice', 'customer', { ttl: 2 }))
  const reasons = []
  s.on('herald:disconnect', (why) => reasons.push(why))
  try {
    await connected(s)
    const reason = await new Promise((resolve) => s.once('disconnect', resolve))
    assert.equal(reason, 'io server disconnect', 'the client does not reconnect by itself')
    assert.equal(reasons[0]?.reason, 'token_expired')
    assert.equal(reasons[0]?.reconnect, true)
  } finally {
    s.disconnect()
  }
})

test('rooms: join with presence, broadcast to the others, nothing across tenants', async () => {
  const a = monitor(h.url, token('ann', 'staff'))
  const b = monitor(h.url, token('ben', 'staff'))
  const other = monitor(h.url, token('ann', 'staff', { tenant: 'globex' }))
  try {
    await Promise.all([connected(a), connected(b), connected(other)])
    assert.equal((await emitAck(b, 'room:join', 'ops')).ok, true)
    assert.equal((await emitAck(other, 'room:join', 'ops')).ok, true)
    const joined = await emitAck(a, 'room:join', 'ops', { viewing: 'queue' })
    assert.equal(joined.ok, true)
    assert.ok(joined.presence.ann, `presence has ann: ${JSON.stringify(joined.presence)}`)
    const diff = await b.inbox.until((e) => e.name === 'presence:diff', 5000, 'presence:diff')
    assert.equal(diff.data.room, 'ops')
    assert.ok(diff.data.joins.ann)

    const sent = await emitAck(a, 'room:broadcast', 'ops', 'cursor', { x: 1 })
    assert.equal(sent.ok, true)
    const got = await b.inbox.until((e) => e.name === 'room:broadcast', 5000, 'room:broadcast')
    assert.deepEqual(got.data, { room: 'ops', event: 'cursor', data: { x: 1 }, from: 'ann' })
    assert.equal(got.offset, undefined, 'room messages carry no offset')
    await sleep(200)
    assert.equal(a.inbox.items.filter((e) => e.name === 'room:broadcast').length, 0, 'no echo to the sender')
    assert.deepEqual(other.inbox.items, [], 'another tenant`s room of the same name hears nothing')
  } finally {
    for (const s of [a, b, other]) s.disconnect()
  }
})

for (const transports of [['websocket'], ['polling']]) {
  test(`over ${transports[0]}, an oversized packet ends only its own connection; a flood gets rate_limited`, async () => {
    const big = monitor(h.url, token('sam', 'staff'), { transports, reconnection: false })
    const bystander = monitor(h.url, token('sam', 'staff'), { transports })
    const flood = monitor(h.url, token('sam', 'staff'), { transports })
    try {
      await Promise.all([connected(big), connected(bystander), connected(flood)])
      const gone = new Promise((r) => big.once('disconnect', r))
      big.emit('room:broadcast', 'ops', 'huge', 'x'.repeat(70 * 1024))
      assert.match(await gone, /^transport (close|error)$/)
      assert.deepEqual(await emitAck(bystander, 'jobs:subscribe'), { ok: true })

      // 100 packets a second, bursts of 200: the rest are dropped, with one error a second.
      for (let i = 0; i < 400; i++) flood.emit('jobs:subscribe')
      const err = await flood.inbox.until((e) => e.name === 'herald:error' && e.data.code === 'rate_limited', 5000, 'rate_limited')
      assert.match(err.data.message, /messages per second/)
      assert.ok(flood.connected, 'a short flood is not closed')
    } finally {
      for (const s of [big, bystander, flood]) s.disconnect()
    }
  })
}

test('task:updated, job:cancelled and job:stalled arrive under their names, with jobId', async () => {
  const fast = await Herald.start(['--stall-timeout', '1s'])
  const staff = monitor(fast.url, token('sam', 'staff'))
  try {
    await connected(staff)
    assert.deepEqual(await emitAck(staff, 'jobs:subscribe'), { ok: true })
    const worker = token('crawler', 'worker')
    await fast.api('POST', '/v1/jobs', worker, { id: 'quiet', status: 'running' })
    await fast.api('POST', '/v1/jobs', worker, { id: 'dropped', status: 'running' })
    assert.deepEqual(await emitAck(staff, 'job:subscribe', 'dropped'), { ok: true })
    await fast.api('PUT', '/v1/jobs/dropped/tasks/t1', worker, { status: 'running' })
    await fast.api('PUT', '/v1/jobs/dropped/tasks/t1', worker, { status: 'succeeded' })
    await fast.api('POST', '/v1/jobs/dropped/progress', worker, { status: 'cancelled' })
    const task = await staff.inbox.until((e) => e.name === 'task:updated', 8000, 'task:updated')
    assert.equal(task.data.jobId, 'dropped')
    const cancelled = await staff.inbox.until((e) => e.name === 'job:cancelled', 8000, 'job:cancelled')
    assert.equal(cancelled.data.jobId, 'dropped')
    const stalled = await staff.inbox.until((e) => e.name === 'job:stalled' && e.data.jobId === 'quiet', 10000, 'job:stalled')
    assert.equal(stalled.data.status, 'stalled')
  } finally {
    staff.disconnect()
    await fast.stop()
  }
})
