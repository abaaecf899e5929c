// Seeds 000 and 003: postgres_changes with the current realtime-js (vsn 2.0.0)
// and supabase-js, as a staff dashboard and a customer portal use them.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { RealtimeClient } from '@supabase/realtime-js'
import { createClient } from '@supabase/supabase-js'
import { Herald, token, anonKey, subscribed, Inbox, sleep } from '../../test-support/herald.mjs'

const worker = token('worker-1', 'worker')

function realtime(h, userToken) {
  const rt = new RealtimeClient(`ws://127.0.0.1:${h.port}/realtime/v1`, { params: { apikey: anonKey() } })
  if (userToken) rt.setAuth(userToken)
  return rt
}

test('a customer follows one job by id=eq filter while the worker API moves it (seed 000)', async (t) => {
  const h = await Herald.start()
  const rt = realtime(h, token('alice', 'authenticated'))
  t.after(async () => {
    await rt.disconnect()
    await h.stop()
  })
  await h.api('POST', '/v1/jobs', worker, { id: 'job-123', owner: 'alice', title: 'Directory run', total: 2 })
  const got = new Inbox()
  const ch = rt
    .channel('job-job-123')
    .on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'jobs', filter: 'id=eq.job-123' }, got.push)
  assert.equal(await subscribed(ch), 'SUBSCRIBED')
  assert.equal(ch.bindings.postgres_changes.length, 1)
  assert.equal(typeof ch.bindings.postgres_changes[0].id, 'number', 'the server echoed an id for the binding')

  await h.api('POST', '/v1/jobs/job-123/progress', worker, { status: 'running', current_item: 'Google My Business' })
  await h.api('POST', '/v1/jobs/job-123/progress', worker, { succeeded: 1, failed: 0 })
  await h.api('POST', '/v1/jobs/job-123/progress', worker, { succeeded: 2, status: 'completed' })
  const done = await got.until((p) => p.new.status === 'completed', 8000, 'completion')
  assert.equal(done.schema, 'public')
  assert.equal(done.table, 'jobs')
  assert.equal(done.eventType, 'UPDATE')
  assert.equal(done.new.id, 'job-123')
  assert.equal(done.new.succeeded, 2)
  assert.equal(done.new.progress, 100)
  assert.equal(done.old.id, 'job-123')
  assert.ok(!Number.isNaN(Date.parse(done.commit_timestamp)))
  const running = got.items.find((p) => p.new.status === 'running')
  assert.equal(running.new.current_item, 'Google My Business')
  // In commit order, each row newer than the one before.
  const versions = got.items.map((p) => p.new.version)
  assert.deepEqual(versions, [...versions].sort((a, b) => a - b))
  assert.ok(got.items.every((p) => p.eventType === 'UPDATE'), 'an UPDATE binding gets no INSERT')
})

test('staff watch the whole table through supabase-js; customers see only their own rows', async (t) => {
  const h = await Herald.start()
  const staff = createClient(h.url, anonKey(), { accessToken: async () => token('sam', 'staff') })
  const alice = createClient(h.url, anonKey(), { accessToken: async () => token('alice', 'authenticated') })
  t.after(async () => {
    await staff.removeAllChannels()
    await alice.removeAllChannels()
    await h.stop()
  })
  // As on Supabase, a channel joined before the accessToken callback resolved
  // would join with the anon key; resolve it first.
  await staff.realtime.setAuth()
  await alice.realtime.setAuth()
  const staffGot = new Inbox()
  const aliceGot = new Inbox()
  const aliceSpy = new Inbox()
  await subscribed(
    staff.channel('all-jobs').on('postgres_changes', { event: '*', schema: 'public', table: 'jobs' }, staffGot.push),
  )
  await subscribed(
    alice
      .channel('my-jobs')
      .on('postgres_changes', { event: '*', schema: 'public', table: 'jobs' }, aliceGot.push)
      .on('postgres_changes', { event: '*', schema: 'public', table: 'jobs', filter: 'id=eq.bob-job' }, aliceSpy.push),
  )
  await h.api('POST', '/v1/jobs', worker, { id: 'bob-job', owner: 'bob' })
  await h.api('POST', '/v1/jobs', worker, { id: 'alice-job', owner: 'alice' })
  await h.api('POST', '/v1/jobs/bob-job/progress', worker, { status: 'running' })
  await h.api('POST', '/v1/jobs/alice-job/progress', worker, { status: 'running' })

  await staffGot.until((p) => p.new.id === 'alice-job' && p.eventType === 'UPDATE', 8000, 'staff: alice-job update')
  assert.ok(staffGot.items.some((p) => p.new.id === 'bob-job' && p.eventType === 'INSERT'), 'staff saw the insert')
  await aliceGot.until((p) => p.new.id === 'alice-job' && p.new.status === 'running', 8000, 'alice: own job')
  await sleep(300)
  assert.ok(aliceGot.items.every((p) => p.new.owner === 'alice'), JSON.stringify(aliceGot.items))
  assert.equal(aliceSpy.items.length, 0, "a filter on another customer's job gets nothing")

  // A customer may not listen to someone else's notifications.
  const denied = alice
    .channel('bob-notes')
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'notifications', filter: 'recipient=eq.bob' }, () => {})
  await assert.rejects(subscribed(denied), /forbidden/)
  await alice.removeChannel(denied)
})

test('notifications and tasks (seeds 001, 003): per-user and per-job tables with filters', async (t) => {
  const h = await Herald.start()
  const rt = realtime(h, token('alice', 'authenticated'))
  t.after(async () => {
    await rt.disconnect()
    await h.stop()
  })
  await h.api('POST', '/v1/jobs', worker, { id: 'scan-1', owner: 'alice', title: 'Scan', tasks: [{ id: 'a' }, { id: 'b' }] })
  const notes = new Inbox()
  const tasks = new Inbox()
  const failed = new Inbox()
  await subscribed(
    rt
      .channel('alice-live')
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'notifications', filter: 'recipient=eq.alice' }, notes.push)
      .on('postgres_changes', { event: '*', schema: 'public', table: 'tasks', filter: 'job_id=eq.scan-1' }, tasks.push)
      .on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'tasks', filter: 'job_id=eq.scan-1,status=in.(failed,skipped)' }, failed.push),
  )
  await h.api('PUT', '/v1/jobs/scan-1/tasks/a', worker, { status: 'running' })
  await h.api('PUT', '/v1/jobs/scan-1/tasks/a', worker, { status: 'succeeded' })
  await h.api('PUT', '/v1/jobs/scan-1/tasks/b', worker, { status: 'failed', error: 'timeout' })
  await h.api('POST', '/v1/jobs/scan-1/progress', worker, { status: 'completed' })
  const n = await notes.until((p) => p.new.recipient === 'alice', 8000, 'job notification')
  assert.equal(n.table, 'notifications')
  assert.equal(n.eventType, 'INSERT')
  assert.match(n.new.title, /Scan/)
  assert.equal(n.new.read, false)
  await tasks.until((p) => p.new.id === 'b' && p.new.status === 'failed', 8000, 'task b failed')
  assert.ok(tasks.items.some((p) => p.new.id === 'a' && p.new.status === 'succeeded'))
  await failed.until((p) => p.new.id === 'b')
  assert.ok(failed.items.every((p) => ['failed', 'skipped'].includes(p.new.status)), JSON.stringify(failed.items))
})

test('filters: neq, lt, gte and in, evaluated on the row', async (t) => {
  const h = await Herald.start()
  const rt = realtime(h, token('sam', 'staff'))
  t.after(async () => {
    await rt.disconnect()
    await h.stop()
  })
  const inbox = { neq: new Inbox(), lt: new Inbox(), gte: new Inbox(), in: new Inbox() }
  const ch = rt.channel('filters')
  ch.on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'jobs', filter: 'status=neq.running' }, inbox.neq.push)
  ch.on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'jobs', filter: 'progress=lt.50' }, inbox.lt.push)
  ch.on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'jobs', filter: 'progress=gte.50' }, inbox.gte.push)
  ch.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'jobs', filter: 'id=in.(f1,f3)' }, inbox.in.push)
  await subscribed(ch)
  for (const id of ['f1', 'f2', 'f3']) await h.api('POST', '/v1/jobs', worker, { id, total: 4 })
  await h.api('POST', '/v1/jobs/f1/progress', worker, { status: 'running', succeeded: 1 })
  await h.api('POST', '/v1/jobs/f1/progress', worker, { succeeded: 3 })
  await h.api('POST', '/v1/jobs/f1/progress', worker, { succeeded: 4, status: 'completed' })
  await inbox.neq.until((p) => p.new.status === 'completed')
  await inbox.gte.until((p) => p.new.status === 'completed')
  await inbox.in.until((p) => p.new.id === 'f3')
  await sleep(200)
  assert.ok(inbox.neq.items.every((p) => p.new.status !== 'running'))
  assert.deepEqual(inbox.lt.items.map((p) => p.new.progress), [25])
  assert.deepEqual(inbox.gte.items.map((p) => p.new.progress), [75, 100])
  assert.deepEqual(inbox.in.items.map((p) => p.new.id).sort(), ['f1', 'f3'])
})
