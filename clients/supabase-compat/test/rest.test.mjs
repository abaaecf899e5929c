// Seed 001's polling fallback: supabase.from(table).select()... with the
// unmodified supabase-js against Herald's /rest/v1 (PostgREST's subset), under
// the same read rules as Herald's API and live topics.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createClient } from '@supabase/supabase-js'
import { Herald, token, anonKey, sleep } from '../../test-support/herald.mjs'

const worker = token('worker-1', 'worker')
const client = (h, tok) =>
  createClient(h.url, anonKey(), tok ? { accessToken: async () => tok } : undefined)
const poll = (sb, limit = 5) =>
  sb.from('jobs').select('*').eq('status', 'running').order('updated_at', { ascending: false }).limit(limit)

test('supabase.from(jobs) polls running jobs newest first; a customer gets only its own', async (t) => {
  const h = await Herald.start()
  t.after(() => h.stop())
  for (const [id, owner] of [['j1', 'alice'], ['j2', 'bob'], ['j3', 'alice'], ['j4', 'alice']]) {
    const [st] = await h.api('POST', '/v1/jobs', worker, { id, owner, title: `job ${id}` })
    assert.equal(st, 201)
  }
  // Distinct update times: j1 the newest, j3 never runs.
  for (const id of ['j2', 'j4', 'j1']) {
    await sleep(5)
    await h.api('POST', `/v1/jobs/${id}/progress`, worker, { status: 'running', current_item: `${id} item` })
  }

  const staff = client(h, token('sam', 'staff'))
  const { data, error, status } = await poll(staff)
  assert.equal(error, null)
  assert.equal(status, 200)
  assert.deepEqual(data.map((j) => j.id), ['j1', 'j4', 'j2'])
  // The rows are Herald's jobs exactly as its API shows them.
  const [, j1] = await h.api('GET', '/v1/jobs/j1', token('sam', 'staff'))
  assert.deepEqual(data[0], j1)
  assert.equal(data[0].current_item, 'j1 item')
  assert.deepEqual((await poll(staff, 1)).data.map((j) => j.id), ['j1'])

  const alice = client(h, token('alice', 'authenticated'))
  assert.deepEqual((await poll(alice)).data.map((j) => j.id), ['j1', 'j4'])
  // Filters only narrow what a customer sees.
  for (const spy of [
    alice.from('jobs').select('*').eq('owner', 'bob'),
    alice.from('jobs').select('*').eq('id', 'j2'),
    alice.from('jobs').select('*').in('id', ['j2', 'j3']).neq('owner', 'alice'),
  ]) {
    const r = await spy
    assert.equal(r.error, null)
    assert.deepEqual(r.data, [])
  }
  const picked = await alice.from('jobs').select('id, title').in('id', ['j2', 'j3']).order('id')
  assert.deepEqual(picked.data, [{ id: 'j3', title: 'job j3' }])
  const one = await alice.from('jobs').select('*').eq('id', 'j4').single()
  assert.equal(one.error, null)
  assert.equal(one.data.id, 'j4')
  const page = await alice.from('jobs').select('id').order('id', { ascending: false }).range(1, 2)
  assert.deepEqual(page.data, [{ id: 'j3' }, { id: 'j1' }])
})

test('notifications: each caller reads only its own, whatever it filters on', async (t) => {
  const h = await Herald.start()
  t.after(() => h.stop())
  const service = token('svc', 'service')
  for (const [recipient, title] of [['alice', 'hello alice'], ['bob', 'hello bob'], ['alice', 'again']]) {
    const [st] = await h.api('POST', '/v1/notifications', service, { recipient, title })
    assert.equal(st, 201)
  }
  const alice = client(h, token('alice', 'authenticated'))
  const mine = await alice.from('notifications').select('*').eq('read', false).order('created_at', { ascending: false })
  assert.equal(mine.error, null)
  assert.deepEqual(mine.data.map((n) => n.title).sort(), ['again', 'hello alice'])
  assert.ok(mine.data.every((n) => n.recipient === 'alice'))
  assert.deepEqual((await alice.from('notifications').select('*').eq('recipient', 'bob')).data, [])
  const staff = client(h, token('sam', 'staff'))
  assert.deepEqual((await staff.from('notifications').select('*')).data, [])
})

test('what Herald cannot answer is an error supabase-js reports, never an empty list', async (t) => {
  const h = await Herald.start()
  t.after(() => h.stop())
  await h.api('POST', '/v1/jobs', worker, { id: 'x', owner: 'alice', title: 'x' })
  const staff = client(h, token('sam', 'staff'))

  let r = await staff.from('jobs').select('*').like('title', '%x%')
  assert.equal(r.status, 400)
  assert.equal(r.error.code, 'PGRST100')
  assert.match(r.error.message, /like/)
  assert.equal(r.data, null)
  r = await staff.from('jobs').select('*').or('status.eq.running,status.eq.queued')
  assert.equal(r.error.code, 'PGRST100')
  r = await staff.from('jobs').select('*, tasks(*)')
  assert.equal(r.error.code, 'PGRST100')
  r = await staff.from('jobs').select('*').eq('customer_id', 'alice')
  assert.equal(r.status, 400)
  assert.equal(r.error.code, '42703')
  assert.equal(r.error.message, 'column jobs.customer_id does not exist')
  r = await staff.from('agent_tasks').select('*')
  assert.equal(r.status, 404)
  assert.equal(r.error.code, 'PGRST205')
  // The anon key alone reads no rows.
  r = await client(h).from('jobs').select('*')
  assert.equal(r.status, 401)
  assert.equal(r.error.code, '42501')
  // A forged token.
  r = await client(h, `${token('sam', 'staff')}x`).from('jobs').select('*')
  assert.equal(r.status, 401)
})
