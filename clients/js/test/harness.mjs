// Test helpers: the real `herald` binary on a free port with its own
// database (like crates/herald/tests/harness.rs), JWTs signed with the test
// secret, and a tiny HTTP proxy that can refuse WebSocket upgrades or SSE.
import { spawn } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, openSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = process.env.HERALD_BIN || path.join(ROOT, 'target/debug/herald');
export const SECRET = 'js-test-secret-please-change';

if (typeof globalThis.WebSocket !== 'function') {
  throw new Error('these tests need a global WebSocket: Node 22+, or Node 20 with --experimental-websocket');
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const b64url = (x) => Buffer.from(x).toString('base64url');

/** An HS256 JWT for the test secret (or `secret`), as `herald token` would mint it. */
export function token(sub, tenant, role, ttlSeconds = 3600, secret = SECRET) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ sub, tenant, role, iat: now, exp: now + ttlSeconds }));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

function serverEnv() {
  const env = { ...process.env, HERALD_JWT_SECRET: SECRET };
  // Settings of the developer's shell must not leak into the test server.
  for (const k of Object.keys(env)) if (k.startsWith('HERALD_') && k !== 'HERALD_JWT_SECRET') delete env[k];
  return env;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; fails with `what` after `ms`. */
export async function waitFor(fn, what, ms = 20000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last && last.stack ? last.stack : JSON.stringify(last)})`);
    await sleep(50);
  }
}

/** A running server; `kill9()` and `restart()` keep the port and database. */
export class Server {
  static async start(name, args = []) {
    const dir = mkdtempSync(path.join(tmpdir(), `herald-js-${name}-`));
    const s = new Server(dir, args, await freePort());
    await s.spawn();
    return s;
  }

  constructor(dir, args, port) {
    this.dir = dir;
    this.args = args;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
  }

  async spawn() {
    const log = openSync(path.join(this.dir, 'server.log'), 'a');
    this.child = spawn(
      BIN,
      ['serve', '--listen', `127.0.0.1:${this.port}`, '--db', path.join(this.dir, 'herald.db'), ...this.args],
      { env: serverEnv(), cwd: this.dir, stdio: ['ignore', 'ignore', log] },
    );
    const deadline = Date.now() + 20000;
    for (;;) {
      try {
        const r = await fetch(`${this.url}/readyz`);
        if (r.ok) return;
      } catch {
        // not listening yet
      }
      if (this.child.exitCode != null || Date.now() > deadline) {
        throw new Error(`server did not become ready; log:\n${this.log()}`);
      }
      await sleep(50);
    }
  }

  log() {
    try {
      return readFileSync(path.join(this.dir, 'server.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** SIGKILL: no flush, no goodbye. */
  async kill9() {
    const c = this.child;
    if (!c || c.exitCode != null) return;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await gone;
  }

  async restart() {
    await this.kill9();
    await this.spawn();
  }

  async stop() {
    await this.kill9();
    rmSync(this.dir, { recursive: true, force: true });
  }

  async api(tok, method, p, body, headers = {}) {
    const res = await fetch(this.url + p, {
      method,
      headers: { Authorization: `Bearer ${tok}`, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = text;
    }
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return json;
  }

  /** Every event of `topic` in the log, in order. */
  async log_events(tok, topic) {
    const out = [];
    let since = 0;
    for (;;) {
      const page = await this.api(tok, 'GET', `/v1/events?topic=${encodeURIComponent(topic)}&since=${since}&limit=1000`);
      out.push(...page.events);
      if (page.events.length < 1000) return out;
      since = page.next;
    }
  }
}

/**
 * A reverse proxy in front of a server. `block` may hold 'websocket' (upgrades
 * are refused with 403, like a corporate proxy) and 'sse' (streams get 502).
 * `failOnce(pathPrefix)` forwards the next matching request but answers the
 * client 502, as if the response had been lost. `freeze()` / `thaw()` stop
 * and restart the traffic of open WebSockets and SSE streams (a reader that
 * stops reading); `drop()` breaks the open ones and, with `hold`, keeps new
 * WebSocket handshakes waiting until `release()` (a network outage).
 */
export async function startProxy(target, block = []) {
  const port = await freePort();
  const t = new URL(target);
  const state = { block: new Set(block), failNext: [], requests: [], upgrades: 0, tunnels: [], frozen: [], streams: new Set(), held: [], hold: false };
  const sockets = new Set(); // every upgraded socket, to end them on close
  // Event streams: /v1/sse, /v1/sse/jobs and a job output stream's /v1/jobs/{id}/streams/{name}/sse.
  const isSse = (url) => url.startsWith('/v1/sse') || /^\/v1\/jobs\/[^/?]+\/streams\/[^/?]+\/sse(\?|$)/.test(url);
  const server = http.createServer((req, res) => {
    state.requests.push(`${req.method} ${req.url}`);
    if (state.block.has('sse') && isSse(req.url)) {
      res.writeHead(502, { 'Content-Type': 'text/plain' });
      return res.end('bad gateway: streaming not allowed here');
    }
    if (isSse(req.url)) {
      const stream = { res, up: null };
      state.streams.add(stream);
      res.on('close', () => state.streams.delete(stream));
      res.stream = stream;
    }
    const i = state.failNext.findIndex((p) => req.url.startsWith(p));
    const lose = i >= 0 ? state.failNext.splice(i, 1)[0] : null;
    const up = http.request(
      { host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers },
      (r) => {
        if (lose) {
          r.resume();
          r.on('end', () => {
            res.writeHead(502);
            res.end('lost');
          });
          return;
        }
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
        if (res.stream) res.stream.up = r;
        // When the server dies mid-stream, so does the client's stream, as
        // with any real proxy.
        r.on('aborted', () => res.destroy());
        r.on('error', () => res.destroy());
      },
    );
    up.on('error', () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    req.pipe(up);
    res.on('close', () => up.destroy());
  });
  server.on('upgrade', (req, socket, head) => {
    state.upgrades += 1;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    if (state.block.has('websocket')) {
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    if (state.hold) {
      state.held.push(() => tunnel(req, socket, head));
      return;
    }
    tunnel(req, socket, head);
  });
  const tunnel = (req, socket, head) => {
    if (socket.destroyed) return;
    const up = net.connect(Number(t.port), t.hostname, () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let k = 0; k < req.rawHeaders.length; k += 2) raw += `${req.rawHeaders[k]}: ${req.rawHeaders[k + 1]}\r\n`;
      up.write(raw + '\r\n');
      if (head && head.length) up.write(head);
      up.pipe(socket).pipe(up);
      state.tunnels.push({ socket, up });
      socket.on('close', () => up.destroy());
    });
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
  };
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${port}`,
    state,
    failOnce: (prefix) => state.failNext.push(prefix),
    /** Open WebSockets go silent both ways, TCP still up: a dead connection nobody closed. */
    freeze: () => {
      for (const tun of state.tunnels.splice(0)) {
        const { socket, up } = tun;
        up.unpipe(socket);
        socket.unpipe(up);
        up.pause();
        socket.pause();
        state.frozen.push(tun);
      }
      for (const st of state.streams) {
        if (!st.up) continue;
        st.up.unpipe(st.res);
        st.up.pause();
        st.frozen = true;
      }
    },
    /** Undoes `freeze()`: what waited flows on. */
    thaw: () => {
      for (const tun of state.frozen.splice(0)) {
        tun.up.pipe(tun.socket);
        tun.socket.pipe(tun.up);
        tun.up.resume();
        tun.socket.resume();
        state.tunnels.push(tun);
      }
      for (const st of state.streams) {
        if (!st.frozen) continue;
        st.frozen = false;
        st.up.pipe(st.res);
        st.up.resume();
      }
    },
    /** Breaks every open WebSocket and SSE stream (no close frame, no goodbye). */
    drop: () => {
      for (const { socket, up } of [...state.tunnels.splice(0), ...state.frozen.splice(0)]) {
        socket.destroy();
        up.destroy();
      }
      for (const st of state.streams) st.res.destroy();
    },
    /** Lets the WebSocket handshakes kept waiting by `hold` through. */
    release: () => {
      state.hold = false;
      for (const go of state.held.splice(0)) go();
    },
    close: () => new Promise((r) => {
      for (const s of sockets) s.destroy();
      server.closeAllConnections?.();
      server.close(() => r());
    }),
  };
}

export const uid = () => randomUUID().slice(0, 8);

/** Where the browser tests keep their screenshots. */
export const SHOTS = path.join(ROOT, 'artifacts/screenshots');

/**
 * Headless Debian Chromium (/usr/bin/chromium, or $CHROMIUM) driven by
 * playwright-core; Playwright's own browser download is never used.
 */
export async function launchChromium() {
  const { chromium } = await import('playwright-core');
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!existsSync(executablePath)) throw new Error(`${executablePath} is missing: scripts/test-js.sh installs it`);
  mkdirSync(SHOTS, { recursive: true });
  return chromium.launch({
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
  });
}
