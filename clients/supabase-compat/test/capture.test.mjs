// Seed 001 on PostgreSQL: an application's own table (agent_tasks), written
// with plain SQL, watched with the unmodified supabase-js — filtered by agent,
// each user seeing only their rows.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createClient } from '@supabase/supabase-js'
import { Herald, token, anonKey, subscribed, Inbox, sleep, psql, freshDatabase } from '../../test-support/herald.mjs'

test('psql INSERT/UPDATE/DELETE on a captured table reach supabase-js under row policies (seed 001)', async (t) => {
  let h
  const pg = await freshDatabase(t, 'capture', () => h?.stop())
  const db = pg.name
  psql(db, `CREATE TABLE public.agent_tasks (
    id bigserial PRIMARY KEY, org_id text NOT NULL, user_id text NOT NULL,
    agent_id int NOT NULL, title text NOT NULL, status text NOT NULL DEFAULT 'pending')`)
  h = await Herald.start([], { db: pg.url })
  // The capture is declared in the config file: restart with it.
  writeFileSync(join(h.dir, 'herald.toml'), '[[capture]]\ntable = "public.agent_tasks"\ntenant_column = "org_id"\nowner_column = "user_id"\n')
  h.extra = ['--config', join(h.dir, 'herald.toml')]
  await h.restart()

  const staff = createClient(h.url, anonKey(), { accessToken: async () => token('sam', 'staff') })
  const alice = createClient(h.url, anonKey(), { accessToken: async () => token('alice', 'authenticated') })
  t.after(async () => {
    await staff.removeAllChannels()
    await alice.removeAllChannels()
  })
  // As on Supabase: resolve the accessToken callback before joining, or the join is anonymous.
  await staff.realtime.setAuth()
  await alice.realtime.setAuth()
  const seen = { staff: new Inbox(), alice: new Inbox() }
  const agent7 = { event: '*', schema: 'public', table: 'agent_tasks', filter: 'agent_id=eq.7' }
  const s1 = staff.channel('agent-7').on('postgres_changes', agent7, seen.staff.push)
  const a1 = alice.channel('agent-7').on('postgres_changes', agent7, seen.alice.push)
  assert.equal(await subscribed(s1), 'SUBSCRIBED')
  assert.equal(await subscribed(a1), 'SUBSCRIBED')
  // A filter on a column the table lacks is refused, naming it.
  const bad = alice.channel('bad').on('postgres_changes', { event: '*', schema: 'public', table: 'agent_tasks', filter: 'agent=eq.7' }, () => {})
  await assert.rejects(subscribed(bad), /column "agent" does not exist in public\.agent_tasks/)
  await alice.removeChannel(bad)

  psql(db, `INSERT INTO public.agent_tasks (org_id, user_id, agent_id, title) VALUES ('acme', 'alice', 7, 'a1')`)
  psql(db, `INSERT INTO public.agent_tasks (org_id, user_id, agent_id, title) VALUES ('acme', 'bob', 7, 'b1')`)
  psql(db, `INSERT INTO public.agent_tasks (org_id, user_id, agent_id, title) VALUES ('acme', 'alice', 8, 'a8')`)
  psql(db, `INSERT INTO public.agent_tasks (org_id, user_id, agent_id, title) VALUES ('globex', 'alice', 7, 'g1')`)
  psql(db, `UPDATE public.agent_tasks SET status = 'running' WHERE title = 'a1'`)
  psql(db, `DELETE FROM public.agent_tasks WHERE title = 'b1'`)

  await seen.staff.until((p) => p.eventType === 'DELETE', 8000, 'the delete reaching staff')
  const staffSaw = seen.staff.items.map((p) => `${p.eventType}:${p.new.title ?? p.old.title}`)
  assert.deepEqual(staffSaw, ['INSERT:a1', 'INSERT:b1', 'UPDATE:a1', 'DELETE:b1'])
  const update = seen.staff.items[2]
  assert.equal(update.new.status, 'running')
  assert.equal(update.old.status, 'pending', 'UPDATE carries the old row')
  assert.equal(update.new.agent_id, 7, 'an int column arrives as a number')
  assert.equal(seen.staff.items[3].old.user_id, 'bob', 'DELETE carries the deleted row')

  await seen.alice.until((p) => p.eventType === 'UPDATE', 8000, 'the update reaching alice')
  await sleep(300)
  const aliceSaw = seen.alice.items.map((p) => `${p.eventType}:${p.new.title ?? p.old.title}`)
  assert.deepEqual(aliceSaw, ['INSERT:a1', 'UPDATE:a1'], 'alice sees her own rows of her tenant only')
})
