// socket.io-client helpers shared by the Socket.IO suites: a recording
// monitor, connection and ack helpers, and seed 004's worker.
import assert from 'node:assert/strict'
import { io } from 'socket.io-client'
import { Inbox } from '../../test-support/herald.mjs'
export { cuttableProxy } from '../../test-support/herald.mjs'

/** The events a job monitor listens to (seed 004's list plus Herald's own). */
const JOB_EVENTS = [
  'job:created', 'job:updated', 'job:progress', 'job:completed', 'job:failed', 'job:cancelled', 'job:stalled',
  'task:created', 'task:updated', 'artifact:created', 'screenshot:captured', 'ocr:completed', 'label:generated',
  'notification', 'room:broadcast', 'presence:diff', 'herald:error',
]

/** Connects socket.io-client with `auth: { token }` and records every event it gets. */
export function monitor(url, tok, opts = {}) {
  const socket = io(url, { auth: { token: tok }, reconnectionDelay: 200, reconnectionDelayMax: 500, ...opts })
  const inbox = new Inbox()
  for (const name of JOB_EVENTS) socket.on(name, (data, offset) => inbox.push({ name, data, offset }))
  socket.inbox = inbox
  return socket
}

export function connected(socket) {
  return new Promise((resolve, reject) => {
    if (socket.connected) return resolve()
    socket.once('connect', resolve)
    socket.once('connect_error', reject)
  })
}

export const emitAck = (socket, ...args) => socket.timeout(5000).emitWithAck(...args)

/** Seed 004's worker: crawl, screenshots, OCR, matching, rendering, labels, done. */
export async function driveSeedJob(h, worker, id) {
  const post = async (path, body) => {
    const [status, json] = await h.api('POST', `/v1/jobs/${id}${path}`, worker, body)
    assert.ok(status < 300, `${path}: ${status} ${JSON.stringify(json)}`)
  }
  await post('/progress', { status: 'running', stage: 'crawling', progress: 25 })
  await post('/artifacts', { kind: 'screenshot:captured', payload: { url: 'https://shop.example/p/1', page: 1 } })
  await post('/artifacts', { kind: 'screenshot:captured', payload: { url: 'https://shop.example/p/2', page: 2 } })
  await post('/progress', { stage: 'processing-ocr', progress: 50 })
  await post('/artifacts', { kind: 'ocr:completed', payload: { page: 1, text: 'SKU 1234' } })
  await post('/progress', { stage: 'matching', progress: 75 })
  await post('/progress', { stage: 'rendering', progress: 90 })
  await post('/artifacts', { kind: 'label:generated', payload: { sku: '1234', pdf: 'labels/1234.pdf' } })
  await post('/progress', { status: 'completed', progress: 100 })
}

/** The event names the monitor of one seed job receives, in order. */
export const SEED_SEQUENCE = [
  'job:updated', 'job:progress', // running, crawling
  'screenshot:captured', 'screenshot:captured',
  'job:updated', 'job:progress', // processing-ocr
  'ocr:completed',
  'job:updated', 'job:progress', // matching
  'job:updated', 'job:progress', // rendering
  'label:generated',
  'job:completed',
]


