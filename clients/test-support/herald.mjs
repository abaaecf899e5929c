// Shared by the client compatibility suites (supabase-compat, socketio-compat).
// Starts the real Herald binary per test (temp --db, free port) and helps talk
// to it: HS256 tokens signed here, the worker HTTP API, and waiting helpers.
import { spawn, execFileSync } from 'node:child_process'
import { createHmac } from 'node:crypto'
import { mkdtempSync, rmSync, openSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

export const SECRET = 'supabase-compat-test-secret'
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const BIN = process.env.HERALD_BIN || join(ROOT, 'target', 'debug', 'herald')

const b64url = (b) => Buffer.from(b).toString('base64url')

/** Signs an HS256 JWT with the test secret. */
export function sign(claims, secret = SECRET) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))
  const body = b64url(JSON.stringify(claims))
  const sig = createHmac('sha256', secret).update(`${header}.${body}`).digest('base64url')
  return `${header}.${body}.${sig}`
}

const now = () => Math.floor(Date.now() / 1000)

/** A Supabase-style user token: role authenticated, staff, service_role... */
export function token(sub, role, { tenant = 'acme', ttl = 3600 } = {}) {
  return sign({ sub, role, tenant, iat: now(), exp: now() + ttl })
}

/** Supabase's public anon key, as a project would hand it out. */
export function anonKey(tenant = 'acme') {
  return sign({ role: 'anon', tenant, iss: 'supabase', iat: now(), exp: now() + 3600 })
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** A Herald process; `restart()` kills it with SIGKILL and starts it again on the same port and database. */
export class Herald {
  /** `db`: a PostgreSQL URL instead of a SQLite file in a temporary directory. */
  static async start(extra = [], { db } = {}) {
    const h = new Herald()
    h.dir = mkdtempSync(join(tmpdir(), 'herald-client-test-'))
    h.port = await freePort()
    h.extra = extra
    h.db = db
    await h.spawn()
    return h
  }

  get url() {
    return `http://127.0.0.1:${this.port}`
  }

  async spawn() {
    const log = openSync(join(this.dir, 'server.log'), 'a')
    this.proc = spawn(
      BIN,
      ['serve', '--listen', `127.0.0.1:${this.port}`, '--db', this.db ?? join(this.dir, 'herald.db'), ...this.extra],
      { env: { ...process.env, HERALD_JWT_SECRET: SECRET, HERALD_LOG: 'info' }, stdio: ['ignore', 'ignore', log] },
    )
    const deadline = Date.now() + 20000
    while (Date.now() < deadline) {
      try {
        const r = await fetch(`${this.url}/readyz`)
        if (r.ok) return
      } catch {}
      await sleep(50)
    }
    throw new Error('herald did not become ready')
  }

  async kill9() {
    if (!this.proc) return
    const p = this.proc
    this.proc = null
    const exited = new Promise((r) => p.once('exit', r))
    p.kill('SIGKILL')
    await exited
  }

  async restart() {
    await this.kill9()
    await this.spawn()
  }

  async stop() {
    await this.kill9()
    rmSync(this.dir, { recursive: true, force: true })
  }

  /** Calls the HTTP API; returns [status, body]. */
  async api(method, path, tok, body) {
    const r = await fetch(`${this.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
    const text = await r.text()
    let json
    try {
      json = JSON.parse(text)
    } catch {
      json = text
    }
    return [r.status, json]
  }
}

/** Resolves with the subscribe status once it is one of `want` (rejects on errors). */
export function subscribed(channel, want = 'SUBSCRIBED') {
  return new Promise((resolve, reject) => {
    channel.subscribe((status, err) => {
      if (status === want) resolve(status)
      else if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT') reject(err ?? new Error(status))
    })
  })
}

/** Collects callback payloads and waits for them. */
export class Inbox {
  constructor() {
    this.items = []
    this.waiters = []
  }
  push = (x) => {
    this.items.push(x)
    for (const w of this.waiters.splice(0)) w()
  }
  async until(pred, ms = 8000, what = 'condition') {
    const deadline = Date.now() + ms
    for (;;) {
      const hit = this.items.find(pred)
      if (hit !== undefined) return hit
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.items).slice(0, 2000)}`)
      await new Promise((r) => {
        const t = setTimeout(r, left)
        this.waiters.push(() => {
          clearTimeout(t)
          r()
        })
      })
    }
  }
}

export const PG = 'postgres://postgres@127.0.0.1:5432'

/** Runs SQL with psql against database `db` of the local PostgreSQL; returns its output. */
export const psql = (db, sql) =>
  execFileSync('psql', ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', `${PG}/${db}`, '-c', sql]).toString().trim()

/**
 * A fresh PostgreSQL database for one test, dropped (with the replication
 * slots Herald made in it) when the test ends; returns its URL. `stop` runs
 * first: the Herald processes using it.
 */
export async function freshDatabase(t, name, stop) {
  const db = `herald_test_js_${name}_${process.pid}`
  psql('postgres', `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`)
  psql('postgres', `CREATE DATABASE ${db}`)
  t.after(async () => {
    await stop()
    for (let i = 0; i < 50; i++) {
      const left = psql('postgres', `SELECT count(*) FROM (SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '${db}' AND NOT active) d; SELECT count(*) FROM pg_replication_slots WHERE database = '${db}'`)
      if (left.endsWith('0')) break
      await sleep(100)
    }
    psql('postgres', `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`)
  })
  return { name: db, url: `${PG}/${db}` }
}

/**
 * A TCP proxy in front of Herald: `cut()` drops every connection through it
 * and refuses new ones until `restore()` — a network cut.
 */
export async function cuttableProxy(targetPort) {
  const { createServer, connect } = await import('node:net')
  const sockets = new Set()
  let down = false
  let target = targetPort
  const server = createServer((client) => {
    if (down) return client.destroy()
    const upstream = connect(target, '127.0.0.1')
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on('error', () => {})
      s.on('close', () => {
        sockets.delete(s)
        client.destroy()
        upstream.destroy()
      })
    }
    client.pipe(upstream)
    upstream.pipe(client)
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const cut = () => {
    down = true
    for (const s of sockets) s.destroy()
  }
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut,
    /** Lets connections through again, to `port` if given (another node). */
    restore(port) {
      if (port) target = port
      down = false
    },
    close() {
      const closed = new Promise((r) => server.close(r))
      cut()
      return closed
    },
  }
}
