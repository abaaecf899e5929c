// Job output streams over the unmodified socket.io-client: `stream:subscribe`
// with the next offset wanted, stored chunks then live ones; a reader cut off
// mid-way (a client disconnect, then a server kill -9) subscribes again on
// `connect` with its offset and gets every chunk exactly once, in order, over
// WebSocket and over long-polling. Refusals get their codes; a reader below
// what the stream keeps is told `stream:truncated`.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { io } from 'socket.io-client'
import { Herald, Inbox, token, sleep } from '../../test-support/herald.mjs'
import { connected, emitAck } from '../support/socketio.mjs'

let h
const worker = token('crawler', 'worker')
// Small enough for one test to push a stream past it, large enough for the others.
const STREAM_MAX_BYTES = 64 * 1024

before(async () => {
  h = await Herald.start(['--stream-max-bytes', String(STREAM_MAX_BYTES)])
})
after(async () => {
  await h?.stop()
})

async function createJob(id, owner = 'alice') {
  const [status] = await h.api('POST', '/v1/jobs', worker, { id, owner, kind: 'llm' })
  assert.equal(status, 201)
}

let appends = 0
/** Appends chunks, again with the same Idempotency-Key while the server is down or restarting. */
async function append(id, stream, chunks) {
  const key = `sio-append-${++appends}`
  for (;;) {
    let r
    try {
      r = await fetch(`${h.url}/v1/jobs/${id}/streams/${stream}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${worker}`, 'content-type': 'application/json', 'idempotency-key': key },
        body: JSON.stringify({ chunks }),
      })
    } catch {
      await sleep(100)
      continue
    }
    const body = await r.json().catch(() => null)
    if (r.status === 200) return body
    if (r.status >= 500) {
      await sleep(100)
      continue
    }
    assert.fail(`append: ${r.status} ${JSON.stringify(body)}`)
  }
}

/**
 * A reader that keeps the next offset it wants, subscribes again with it on
 * every connect (as docs/SOCKETIO.md tells), and records every chunk it is given.
 */
function reader(jobId, name, transports) {
  const socket = io(h.url, {
    auth: { token: token('alice', 'customer') },
    transports,
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
  })
  const r = { socket, next: 0, received: [], acks: [], truncated: [], errors: new Inbox(), frames: new Inbox() }
  socket.on('connect', async () => {
    try {
      r.acks.push(await emitAck(socket, 'stream:subscribe', jobId, name, r.next))
    } catch {}
  })
  socket.on('stream:chunks', (m) => {
    assert.equal(m.jobId, jobId)
    assert.equal(m.stream, name)
    // Everything Herald sends is new: a repeat or a gap is the bug this test is for.
    r.received.push({ first: m.first, count: m.chunks.length })
    r.chunks = (r.chunks ?? []).concat(m.chunks)
    r.next = m.first + m.chunks.length
    r.frames.push(m)
  })
  socket.on('stream:truncated', (m) => r.truncated.push(m))
  socket.on('herald:error', (e) => r.errors.push(e))
  return r
}

function assertContiguous(r, total) {
  let expect = 0
  for (const f of r.received) {
    assert.equal(f.first, expect, `a frame at ${f.first} where ${expect} was next: ${JSON.stringify(r.received.slice(0, 50))}`)
    expect += f.count
  }
  assert.equal(expect, total)
  assert.deepEqual(
    r.chunks,
    Array.from({ length: total }, (_, i) => `line ${i}`),
  )
}

for (const transports of [['websocket'], ['polling']]) {
  test(`a ${transports[0]} reader cut off mid-way, then across kill -9, resumes at its offset with nothing missing or twice`, async () => {
    const id = `sio-stream-${transports[0]}`
    await createJob(id)
    let written = 0
    const write = async (n) => {
      for (let b = 0; b < n; b++) {
        const chunks = Array.from({ length: 5 }, (_, i) => `line ${written + i}`)
        const res = await append(id, 'out', chunks)
        assert.equal(res.first_offset, written)
        written += chunks.length
      }
    }
    await write(20) // 100 stored before the reader comes
    const r = reader(id, 'out', transports)
    try {
      await connected(r.socket)
      await r.frames.until(() => r.next >= 100, 10000, 'the stored chunks')
      // Live appends while reading.
      await write(20)
      await r.frames.until(() => r.next >= 200, 10000, 'live chunks')
      // The client drops; appends go on; it comes back with its offset.
      r.socket.disconnect()
      await write(20)
      r.socket.connect()
      await r.frames.until(() => r.next >= 300, 10000, 'chunks missed while away')
      // The server dies mid-stream and comes back on the same database.
      const writer = write(40)
      await sleep(50)
      await h.restart()
      await writer
      await r.frames.until(() => r.next >= written, 20000, 'chunks across the restart')
      await sleep(300)
      assertContiguous(r, written)
      assert.ok(r.acks.length >= 3, `subscribed again on each connect: ${JSON.stringify(r.acks)}`)
      for (const a of r.acks) assert.equal(a.ok, true, JSON.stringify(a))
      assert.deepEqual(r.errors.items, [])
    } finally {
      r.socket.disconnect()
    }
  })
}

test('stream:subscribe refusals get their codes and write nothing', async () => {
  await createJob('sio-stream-refusals', 'alice')
  await append('sio-stream-refusals', 'out', ['a', 'b'])
  const alice = io(h.url, { auth: { token: token('alice', 'customer') }, transports: ['websocket'] })
  const bob = io(h.url, { auth: { token: token('bob', 'customer') }, transports: ['websocket'] })
  const other = io(h.url, { auth: { token: token('eve', 'staff', { tenant: 'globex' }) }, transports: ['websocket'] })
  try {
    await Promise.all([connected(alice), connected(bob), connected(other)])
    const code = async (s, ...args) => (await emitAck(s, ...args)).error?.code
    // Another customer's job and another tenant's are not found, like a missing one.
    assert.equal(await code(bob, 'stream:subscribe', 'sio-stream-refusals', 'out', 0), 'not_found')
    assert.equal(await code(other, 'stream:subscribe', 'sio-stream-refusals', 'out', 0), 'not_found')
    assert.equal(await code(alice, 'stream:subscribe', 'no-such-job', 'out', 0), 'not_found')
    assert.equal(await code(alice, 'stream:subscribe', 'sio-stream-refusals', 'bad name', 0), 'invalid_topic')
    assert.equal(await code(alice, 'stream:subscribe', 'sio-stream-refusals', 'out', 'ten'), 'invalid_event')
    assert.equal(await code(alice, 'stream:subscribe', 'sio-stream-refusals', 'out', -1), 'invalid_event')
    assert.equal(await code(alice, 'stream:subscribe', 'sio-stream-refusals'), 'invalid_event')
    assert.equal(await code(alice, 'stream:unsubscribe', 'sio-stream-refusals', 'out'), 'not_subscribed')
    // Without an offset: from the stream's end on; the ack says where that is.
    const chunks = new Inbox()
    alice.on('stream:chunks', (m) => chunks.push(m))
    assert.deepEqual(await emitAck(alice, 'stream:subscribe', 'sio-stream-refusals', 'out'), { ok: true, offset: 2 })
    assert.equal(await code(alice, 'stream:subscribe', 'sio-stream-refusals', 'out', 0), 'already_subscribed')
    await append('sio-stream-refusals', 'out', ['c'])
    const m = await chunks.until(() => true, 5000, 'the live chunk')
    assert.deepEqual(m, { jobId: 'sio-stream-refusals', stream: 'out', first: 2, chunks: ['c'] })
    assert.deepEqual(await emitAck(alice, 'stream:unsubscribe', 'sio-stream-refusals', 'out'), { ok: true })
    await append('sio-stream-refusals', 'out', ['d'])
    await sleep(300)
    assert.equal(chunks.items.length, 1, 'nothing after unsubscribing')
    // Nothing was written by the refusals: the stream holds what the worker appended.
    const [, page] = await h.api('GET', '/v1/jobs/sio-stream-refusals/streams/out?offset=0', worker)
    assert.deepEqual(page.chunks, ['a', 'b', 'c', 'd'])
  } finally {
    for (const s of [alice, bob, other]) s.disconnect()
  }
})

test('a reader below what the stream keeps is told stream:truncated, then reads from the oldest kept', async () => {
  const id = 'sio-stream-truncated'
  await createJob(id)
  // ~1 KiB chunks: 100 of them are past the 64 KiB bound, so the oldest go.
  const big = (i) => `${i}:`.padEnd(1000, 'x')
  for (let b = 0; b < 10; b++) await append(id, 'out', Array.from({ length: 10 }, (_, i) => big(b * 10 + i)))
  const s = io(h.url, { auth: { token: token('alice', 'customer') }, transports: ['websocket'] })
  const truncated = new Inbox()
  const chunks = new Inbox()
  s.on('stream:truncated', (m) => truncated.push(m))
  s.on('stream:chunks', (m) => chunks.push(m))
  try {
    await connected(s)
    assert.equal((await emitAck(s, 'stream:subscribe', id, 'out', 0)).ok, true)
    const gone = await truncated.until(() => true, 5000, 'stream:truncated')
    assert.equal(gone.jobId, id)
    assert.equal(gone.from, 0)
    assert.ok(gone.to > 0 && gone.to < 100, JSON.stringify(gone))
    await chunks.until(() => chunks.items.reduce((n, m) => n + m.chunks.length, 0) === 100 - gone.to, 5000, 'the kept chunks')
    assert.equal(chunks.items[0].first, gone.to)
    assert.ok(chunks.items[0].chunks[0].startsWith(`${gone.to}:`))
  } finally {
    s.disconnect()
  }
})
