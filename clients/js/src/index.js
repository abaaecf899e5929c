// @herald/client — the JavaScript client for Herald (docs/CLIENT.md).
//
// One file, no dependencies, ES2020: it is both the npm package's entry point
// and, embedded in the server binary, the dashboard's client
// (/assets/herald-client.js). Works in browsers and in Node 18+ (pass a
// `WebSocket` implementation where the runtime has none).

/** Connection states, in the order a healthy client goes through them. */
export const STATUSES = Object.freeze(['connecting', 'connected', 'reconnecting', 'offline', 'error']);

/** Transports, in the order they are tried. */
export const TRANSPORTS = Object.freeze(['websocket', 'sse', 'longpoll']);

/** An error from the server (`code` as in docs/API.md) or from the client itself. */
export class HeraldError extends Error {
  constructor(code, message, status) {
    super(message || code);
    this.name = 'HeraldError';
    this.code = code;
    this.status = status;
  }
}

// ---------------------------------------------------------------- helpers

class Emitter {
  constructor() {
    this._listeners = new Map();
  }
  on(type, fn) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }
  off(type, fn) {
    const set = this._listeners.get(type);
    if (set) set.delete(fn);
  }
  emit(type, ...args) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        // A listener's bug must not break the connection or other listeners.
        reportListenerError(e);
      }
    }
  }
}

function reportListenerError(e) {
  if (typeof console !== 'undefined') console.error('[herald] listener threw', e);
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    if (signal && signal.aborted) return resolve();
    const t = setTimeout(resolve, ms);
    if (signal) signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  });

/** Exponential backoff with "equal jitter": half fixed, half random, so a
 * crowd of clients that lost the same server does not come back in step. */
export function backoffDelay(attempt, initialMs = 500, maxMs = 30000) {
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 20));
  return Math.round(base / 2 + Math.random() * (base / 2));
}

/** Claims of a JWT, unverified (the server verifies; the client only reads
 * `sub`, `role` and `exp` to know whose topics to open and when to refresh). */
export function decodeToken(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const json =
      typeof atob === 'function'
        ? decodeURIComponent(
            Array.from(atob(padded), (c) => '%' + c.charCodeAt(0).toString(16).padStart(2, '0')).join(''),
          )
        : Buffer.from(padded, 'base64').toString('utf8');
    const claims = JSON.parse(json);
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

function baseUrl(url) {
  if (url) return String(url).replace(/\/+$/, '');
  if (typeof location !== 'undefined' && location.origin) return location.origin;
  throw new HeraldError('invalid_option', 'createClient: `url` is required outside a browser');
}

function wsUrl(base) {
  return base.replace(/^http/i, 'ws') + '/v1/ws';
}

function randomId() {
  if (typeof crypto !== 'undefined' && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + '-' + Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
}

const isRoom = (topic) => topic.startsWith('room:');
const time = (s) => (s ? Date.parse(s) || 0 : 0);

async function errorFromResponse(res) {
  let code = 'http_' + res.status;
  let message = res.statusText || code;
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not our JSON error body (a proxy's page, say): keep the status.
  }
  return new HeraldError(code, message, res.status);
}

// ---------------------------------------------------------------- client

/**
 * Creates a client. Nothing connects until the first subscription (or
 * `connect()`); then one connection carries every subscription.
 */
export function createClient(options) {
  return new HeraldClient(options);
}

export class HeraldClient extends Emitter {
  constructor(options = {}) {
    super();
    if (!options.token && !options.getToken) {
      throw new HeraldError('invalid_option', 'createClient: give `token` or `getToken`');
    }
    this.url = baseUrl(options.url);
    this.options = {
      transports: options.transports || TRANSPORTS,
      heartbeatMs: options.heartbeatMs,
      connectTimeoutMs: options.connectTimeoutMs ?? 10000,
      backoff: { initialMs: 500, maxMs: 30000, ...(options.backoff || {}) },
      wsRetryMs: options.wsRetryMs ?? 60000,
      pollWaitSeconds: options.pollWaitSeconds ?? 25,
      refreshBeforeMs: options.refreshBeforeMs ?? 60000,
    };
    for (const t of this.options.transports) {
      if (!TRANSPORTS.includes(t)) throw new HeraldError('invalid_option', `unknown transport ${t}`);
    }
    this._token = options.token || null;
    this._getToken = options.getToken || null;
    this._WebSocket = options.WebSocket || (typeof WebSocket !== 'undefined' ? WebSocket : null);
    this._fetch = options.fetch || ((...a) => fetch(...a));
    this._topics = new Map(); // topic -> TopicState
    this._status = 'connecting';
    this._transport = null;
    this._mode = null;
    this._started = false;
    this._closed = false;
    this._attempt = 0;
    this._wasConnected = false;
    this._headHint = null; // the highest position seen on any topic: a valid cursor for any topic
    this._wsProbeTimer = null;
    this._refreshTimer = null;
    this._retryTimer = null;
    this._wake = null;
    this.lastEventAt = null;
    this.identity = this._token ? identityOf(this._token) : null;
    this._onOnline = () => this._nudge();
    this._onOffline = () => this._setStatus('offline');
    if (typeof window !== 'undefined' && window.addEventListener) {
      window.addEventListener('online', this._onOnline);
      window.addEventListener('offline', this._onOffline);
    }
  }

  /** `connecting | connected | reconnecting | offline | error` */
  get status() {
    return this._status;
  }

  /** The transport in use: `websocket`, `sse`, `longpoll`, or null. */
  get transport() {
    return this._transport ? this._transport.kind : null;
  }

  /** Calls `fn(status, detail)` on every change; returns an unsubscribe function. */
  onStatus(fn) {
    return this.on('status', fn);
  }

  /** Opens the connection now instead of at the first subscription. */
  connect() {
    if (this._closed) throw new HeraldError('closed', 'this client was closed');
    if (!this._started) {
      this._started = true;
      this._loop();
    }
    return this;
  }

  /** Closes the connection and ends every subscription. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._wsProbeTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._retryTimer);
    if (this._probe) this._probe.stop();
    if (this._transport) this._transport.stop();
    this._transport = null;
    if (this._wake) this._wake();
    if (typeof window !== 'undefined' && window.removeEventListener) {
      window.removeEventListener('online', this._onOnline);
      window.removeEventListener('offline', this._onOffline);
    }
    this._setStatus('offline');
  }

  // ------------------------------------------------------------ tokens

  /** The current token, fetching one with `getToken` if there is none yet. */
  async token() {
    if (!this._token && this._getToken) await this._fetchToken();
    return this._token;
  }

  async _fetchToken() {
    const t = await this._getToken();
    if (!t) throw new HeraldError('invalid_token', 'getToken returned no token');
    this._token = t;
    this.identity = identityOf(t) || this.identity;
    return t;
  }

  /**
   * Replaces the token without reconnecting: over WebSocket with the
   * protocol's `refresh` op (subscriptions the new token no longer allows
   * end with `forbidden`); SSE and long-poll use it from their next request.
   */
  async setToken(token) {
    this._token = token;
    this.identity = identityOf(token) || this.identity;
    this._scheduleRefresh();
    const t = this._transport;
    if (t && t.kind === 'websocket' && t.ready) {
      const ack = await t.request({ op: 'refresh', token });
      for (const topic of ack.dropped || []) {
        this._topicFailed(topic, new HeraldError('forbidden', `subscription to ${topic} ended: the new token does not allow it`));
      }
      this.emit('token', { expiresAt: ack.expires_at ?? null });
      return ack;
    }
    this.emit('token', { expiresAt: (decodeToken(token) || {}).exp ?? null });
    return null;
  }

  _scheduleRefresh(expiresAt) {
    clearTimeout(this._refreshTimer);
    if (!this._getToken || this._closed) return;
    const exp = expiresAt ?? (decodeToken(this._token) || {}).exp;
    if (!exp) return;
    const left = exp * 1000 - Date.now();
    // Refresh a minute before expiry, or at 80% of a short lifetime.
    const at = Math.max(1000, left - Math.min(this.options.refreshBeforeMs, left * 0.2));
    this._refreshTimer = setTimeout(async () => {
      try {
        const t = await this._getToken();
        if (t && t !== this._token) await this.setToken(t);
        else this._scheduleRefresh();
      } catch (e) {
        this.emit('error', e);
        // Try again shortly; the server closes with 4002 if we never manage it.
        this._refreshTimer = setTimeout(() => this._scheduleRefresh(), 5000);
      }
    }, at);
  }

  // ------------------------------------------------------------ HTTP

  /** An authenticated request to the HTTP API; resolves with the JSON body. */
  async request(method, path, body, headers = {}) {
    const send = async () => {
      const token = await this.token();
      const h = { Authorization: `Bearer ${token}`, ...headers };
      if (body !== undefined) h['Content-Type'] = 'application/json';
      return this._fetch(this.url + path, {
        method,
        headers: h,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
    };
    let res = await send();
    if (res.status === 401 && this._getToken) {
      // The token may have expired just now: one retry with a fresh one.
      await this._fetchToken();
      res = await send();
    }
    if (!res.ok) throw await errorFromResponse(res);
    return res.status === 204 ? null : res.json();
  }

  // ------------------------------------------------------------ subscriptions

  /**
   * Subscribes to a topic (`job:<id>`, `jobs`, `jobs:owner:<sub>`,
   * `user:<sub>`, `room:<name>`). Each event reaches `onEvent` once, in
   * position order, across reconnects and transport changes.
   *
   * handlers: { since?, onEvent?, onResync?, onError?, onBroadcast?, onPresence? }
   */
  subscribe(topic, handlers = {}) {
    if (this._closed) throw new HeraldError('closed', 'this client was closed');
    let ts = this._topics.get(topic);
    if (!ts) {
      ts = {
        topic,
        room: isRoom(topic),
        position: handlers.since ?? null,
        handlers: new Set(),
        acked: false,
        error: null,
        presence: {},
        meta: null,
      };
      this._topics.set(topic, ts);
      if (this._transport) this._transport.add(ts);
    }
    const h = { ...handlers };
    ts.handlers.add(h);
    this.connect();
    const client = this;
    return {
      topic,
      get position() {
        return ts.position;
      },
      unsubscribe() {
        ts.handlers.delete(h);
        if (ts.handlers.size === 0 && client._topics.get(topic) === ts) {
          client._topics.delete(topic);
          if (client._transport) client._transport.remove(ts);
        }
      },
    };
  }

  /** Publishes to a room; nobody stores it. Resolves with `{delivered}`. */
  async broadcast(room, event, data = null) {
    const topic = room.startsWith('room:') ? room : `room:${room}`;
    const t = this._transport;
    if (t && t.kind === 'websocket' && t.ready) {
      return t.request({ op: 'pub', topic, event, data });
    }
    // Without a WebSocket, the HTTP endpoint (not open to customers).
    return this.request('POST', '/v1/broadcast', { topic, event, payload: data });
  }

  /** Calls `fn({event, data, from, topic})` for each broadcast in a room. */
  onBroadcast(room, fn) {
    const topic = room.startsWith('room:') ? room : `room:${room}`;
    const sub = this.subscribe(topic, { onBroadcast: fn });
    return () => sub.unsubscribe();
  }

  // ------------------------------------------------------------ delivery (used by transports)

  _deliver(topic, ev) {
    const ts = this._topics.get(topic);
    this.lastEventAt = Date.now();
    if (ev.position != null) this._headHint = Math.max(this._headHint ?? 0, ev.position);
    if (!ts) return;
    // The one place duplicates die: a replay that overlaps live delivery, two
    // transports during a switch, a retried poll.
    if (ts.position != null && ev.position <= ts.position) return;
    ts.position = ev.position;
    for (const h of [...ts.handlers]) call(h.onEvent, ev);
    this.emit('event', ev);
  }

  _resync(topic, position, snapshot) {
    const ts = this._topics.get(topic);
    this.lastEventAt = Date.now();
    if (!ts) return;
    ts.position = position;
    for (const h of [...ts.handlers]) call(h.onResync, { topic, position, snapshot });
  }

  _acked(topic, position) {
    const ts = this._topics.get(topic);
    if (!ts) return;
    ts.acked = true;
    ts.error = null;
    if (position != null) {
      this._headHint = Math.max(this._headHint ?? 0, position);
      if (ts.position == null) ts.position = position;
    }
  }

  _topicFailed(topic, err) {
    const ts = this._topics.get(topic);
    if (!ts) return;
    ts.error = err;
    this._topics.delete(topic);
    if (this._transport) this._transport.remove(ts, true);
    for (const h of [...ts.handlers]) call(h.onError, err);
  }

  _broadcastIn(msg) {
    this.lastEventAt = Date.now();
    const ts = this._topics.get(msg.topic);
    if (ts) for (const h of [...ts.handlers]) call(h.onBroadcast, msg);
    this.emit('broadcast', msg);
  }

  _presenceIn(topic, state, diff) {
    const ts = this._topics.get(topic);
    if (!ts) return;
    if (state) ts.presence = clonePresence(state);
    if (diff) applyPresenceDiff(ts.presence, diff);
    for (const h of [...ts.handlers]) call(h.onPresence, ts.presence);
  }

  // ------------------------------------------------------------ connection loop

  _setStatus(status, detail) {
    if (this._status === status) return;
    this._status = status;
    this.emit('status', status, detail);
  }

  _offline() {
    return typeof navigator !== 'undefined' && navigator.onLine === false;
  }

  _nudge() {
    clearTimeout(this._retryTimer);
    if (this._wake) this._wake();
  }

  _wait(ms) {
    return new Promise((resolve) => {
      this._wake = resolve;
      this._retryTimer = setTimeout(resolve, ms);
    }).then(() => {
      this._wake = null;
    });
  }

  _allowed(kind) {
    if (kind === 'websocket' && !this._WebSocket) return false;
    return this.options.transports.includes(kind);
  }

  _firstMode() {
    return this.options.transports.find((k) => this._allowed(k)) || null;
  }

  _nextMode(kind) {
    const order = this.options.transports;
    for (let i = order.indexOf(kind) + 1; i < order.length; i++) if (this._allowed(order[i])) return order[i];
    return null;
  }

  async _serverReachable() {
    try {
      const res = await this._fetch(this.url + '/healthz', { cache: 'no-store' });
      return res.ok;
    } catch {
      return false;
    }
  }

  /** Runs one transport after another until the client is closed. */
  async _loop() {
    this._mode = this._firstMode();
    if (!this._mode) {
      this._setStatus('error', new HeraldError('no_transport', 'no usable transport (no WebSocket implementation?)'));
      return;
    }
    let authFailures = 0;
    let refusals = 0;
    while (!this._closed) {
      if (this._offline()) {
        this._setStatus('offline');
      } else {
        this._setStatus(this._wasConnected ? 'reconnecting' : 'connecting');
      }
      let outcome;
      try {
        await this.token();
        const t = makeTransport(this._mode, this);
        this._transport = t;
        outcome = await t.run();
      } catch (e) {
        outcome = { established: false, error: e };
      }
      if (this._closed) break;
      if (this._transport && !this._transport.adopted) this._transport = null;
      if (outcome.replaced) {
        // A WebSocket probe took over (see _probeWebSocket); it runs the show now.
        outcome = await this._adoptedRun;
        if (this._closed) break;
        this._transport = null;
      }
      if (outcome.established) this._attempt = 0;

      const err = outcome.error;
      if (err && (err.code === 'auth_failed' || err.code === 'invalid_token' || err.code === 'unauthorized' || err.code === 'token_expired')) {
        // A fresh token may cure it; a static one cannot.
        if (this._getToken && authFailures < 3) {
          authFailures += 1;
          try {
            await this._fetchToken();
            continue;
          } catch (e) {
            this._setStatus('error', e);
            this.emit('error', e);
          }
        } else {
          this._setStatus('error', err);
          this.emit('error', err);
        }
        // Wait for setToken() (or close) before trying again.
        await this._wait(this.options.backoff.maxMs);
        continue;
      }
      if (outcome.established) authFailures = 0;

      if (outcome.established) refusals = 0;
      if (!outcome.established && this._mode !== 'longpoll' && this._nextMode(this._mode)) {
        // Refused before it worked: blocked by a proxy, or the server is down?
        // Only a refusal while the server answers HTTP counts, and only twice
        // in a row: a server that is just coming back up must not push the
        // client onto a lesser transport.
        if (await this._serverReachable()) {
          refusals += 1;
          if (refusals >= 2) {
            const next = this._nextMode(this._mode);
            this.emit('fallback', { from: this._mode, to: next, reason: err });
            if (this._mode === 'websocket') this._scheduleWsProbe();
            this._mode = next;
            refusals = 0;
          }
          continue;
        }
        refusals = 0;
      }
      const delay = outcome.immediate ? 0 : backoffDelay(this._attempt++, this.options.backoff.initialMs, this.options.backoff.maxMs);
      this._setStatus(this._offline() ? 'offline' : this._wasConnected ? 'reconnecting' : 'connecting', err);
      await this._wait(outcome.retryAfterMs ?? delay);
    }
  }

  _established(transport) {
    if (this._transport !== transport) return;
    this._wasConnected = true;
    this._attempt = 0;
    this._setStatus('connected');
    this._scheduleRefresh(transport.expiresAt);
  }

  /** On a fallback transport: try the WebSocket again now and then, and move
   * back to it as soon as it works. */
  _scheduleWsProbe() {
    clearTimeout(this._wsProbeTimer);
    if (this._closed || !this._allowed('websocket')) return;
    this._wsProbeTimer = setTimeout(async () => {
      if (this._closed) return;
      const current = this._transport;
      if (!current || current.kind === 'websocket') return;
      const probe = makeTransport('websocket', this);
      this._probe = probe;
      let settle;
      const ready = new Promise((r) => (settle = r));
      probe.onReady = () => settle(true);
      const run = probe.run();
      run.then(() => settle(false));
      const ok = await ready;
      this._probe = null;
      if (!ok || this._closed || this._transport !== current) {
        probe.stop();
        this._scheduleWsProbe();
        return;
      }
      // Switch: the WebSocket resubscribed every topic with its position;
      // dedupe by position hides the overlap with the old transport.
      probe.adopted = true;
      this._mode = 'websocket';
      this._adoptedRun = run;
      this._transport = probe;
      current.stop({ replaced: true });
      this.emit('fallback', { from: current.kind, to: 'websocket' });
      this._established(probe);
    }, this.options.wsRetryMs);
  }
}

function identityOf(token) {
  const c = decodeToken(token);
  if (!c) return null;
  return { sub: c.sub ?? null, role: c.role ?? null, tenant: c.tenant ?? null, exp: c.exp ?? null };
}

function call(fn, arg) {
  if (!fn) return;
  try {
    fn(arg);
  } catch (e) {
    reportListenerError(e);
  }
}

function clonePresence(state) {
  const out = {};
  for (const [sub, v] of Object.entries(state || {})) out[sub] = { metas: [...((v && v.metas) || [])] };
  return out;
}

function applyPresenceDiff(state, { joins, leaves }) {
  for (const [sub, v] of Object.entries(leaves || {})) {
    const refs = new Set(((v && v.metas) || []).map((m) => m.phx_ref));
    if (!state[sub]) continue;
    state[sub].metas = state[sub].metas.filter((m) => !refs.has(m.phx_ref));
    if (state[sub].metas.length === 0) delete state[sub];
  }
  for (const [sub, v] of Object.entries(joins || {})) {
    if (!state[sub]) state[sub] = { metas: [] };
    const known = new Set(state[sub].metas.map((m) => m.phx_ref));
    for (const m of (v && v.metas) || []) if (!known.has(m.phx_ref)) state[sub].metas.push(m);
  }
}

function makeTransport(kind, client) {
  if (kind === 'websocket') return new WsTransport(client);
  if (kind === 'sse') return new StreamTransport(client, 'sse');
  return new StreamTransport(client, 'longpoll');
}

// ---------------------------------------------------------------- WebSocket transport

class WsTransport {
  constructor(client) {
    this.kind = 'websocket';
    this.client = client;
    this.ready = false;
    this.adopted = false;
    this.expiresAt = null;
    this._nextId = 1;
    this._pending = new Map();
    this._finish = null;
    this.onReady = null;
  }

  /** Resolves when the connection is over: { established, error?, immediate?, retryAfterMs? }. */
  run() {
    const c = this.client;
    return new Promise((resolve) => {
      let settled = false;
      this._finish = (outcome) => {
        if (settled) return;
        settled = true;
        this._teardown();
        for (const p of this._pending.values()) p.reject(new HeraldError('disconnected', 'the connection closed'));
        this._pending.clear();
        resolve({ established: this.ready, ...outcome });
      };
      let ws;
      try {
        // Browsers cannot set headers on a WebSocket: the token travels as a subprotocol.
        ws = new c._WebSocket(wsUrl(c.url), ['herald.v1', `bearer.${c._token}`]);
      } catch (e) {
        this._finish({ error: e });
        return;
      }
      this.ws = ws;
      this._lastRecv = Date.now();
      this._connectTimer = setTimeout(
        () => this._finish({ error: new HeraldError('timeout', 'no welcome from the server in time') }),
        c.options.connectTimeoutMs,
      );
      ws.onmessage = (m) => this._onMessage(m);
      ws.onopen = () => {
        this._opened = true;
      };
      ws.onerror = () => {
        // After the handshake the close event follows with the details; a
        // refused handshake (a proxy's 403, say) may never get one.
        if (!this._opened) this._finish({ error: new HeraldError('refused', 'the WebSocket handshake failed') });
      };
      ws.onclose = (e) => this._onClose(e);
    });
  }

  stop(opts = {}) {
    if (this._finish) this._finish({ immediate: true, replaced: !!opts.replaced });
  }

  _teardown() {
    clearTimeout(this._connectTimer);
    clearInterval(this._heartbeat);
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
      try {
        if (this.ws.readyState <= 1) this.ws.close(1000);
      } catch {
        // Already closing.
      }
    }
  }

  _send(frame) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(frame));
  }

  request(frame) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== 1) return reject(new HeraldError('disconnected', 'not connected'));
      const id = this._nextId++;
      this._pending.set(id, { resolve, reject });
      this._send({ ...frame, id });
    });
  }

  add(ts) {
    if (!this.ready) return; // subscribed on welcome
    this._subscribe(ts);
  }

  remove(ts, alreadyGone) {
    if (!this.ready || alreadyGone) return;
    this.request({ op: 'unsub', topic: ts.topic }).catch(() => {});
  }

  _subscribe(ts) {
    const frame = ts.room && ts.meta
      ? { op: 'presence', topic: ts.topic, meta: ts.meta }
      : { op: 'sub', topic: ts.topic };
    if (!ts.room && ts.position != null) frame.since = ts.position;
    this.request(frame).then(
      (ack) => this.client._acked(ts.topic, ack.position),
      (err) => {
        if (err.code === 'disconnected') return; // resubscribed on the next connection
        if (err.code === 'unavailable' || err.code === 'too_many_subscriptions') {
          // Transient on the server's side: try again a little later.
          setTimeout(() => this.client._topics.get(ts.topic) === ts && this.ready && this._subscribe(ts), 2000);
          return;
        }
        this.client._topicFailed(ts.topic, err);
      },
    );
  }

  setPresence(ts) {
    return this.request({ op: 'presence', topic: ts.topic, meta: ts.meta || {} });
  }

  _onMessage(m) {
    this._lastRecv = Date.now();
    let msg;
    try {
      msg = JSON.parse(typeof m.data === 'string' ? m.data : String(m.data));
    } catch {
      return;
    }
    const c = this.client;
    switch (msg.op) {
      case 'welcome': {
        clearTimeout(this._connectTimer);
        this.ready = true;
        this.expiresAt = msg.expires_at ?? null;
        c.identity = { sub: msg.sub, role: msg.role, tenant: msg.tenant, exp: msg.expires_at ?? null };
        const every = c.options.heartbeatMs ?? Math.min(msg.heartbeat_ms || 20000, 20000);
        this._startHeartbeat(every);
        for (const ts of c._topics.values()) this._subscribe(ts);
        if (this.onReady) this.onReady();
        if (!this.adopted) c._established(this);
        c.emit('welcome', msg);
        break;
      }
      case 'ack':
      case 'pong': {
        const p = this._pending.get(msg.id);
        if (p) {
          this._pending.delete(msg.id);
          p.resolve(msg);
        }
        break;
      }
      case 'error': {
        const p = msg.id != null ? this._pending.get(msg.id) : null;
        const err = new HeraldError(msg.code, msg.message);
        if (p) {
          this._pending.delete(msg.id);
          p.reject(err);
        } else {
          c.emit('error', err);
        }
        break;
      }
      case 'event':
        c._deliver(msg.topic, msg);
        break;
      case 'resync':
        c._resync(msg.topic, msg.position, msg.snapshot);
        break;
      case 'broadcast':
        c._broadcastIn(msg);
        break;
      case 'presence_state':
        c._presenceIn(msg.topic, msg.state, null);
        break;
      case 'presence_diff':
        c._presenceIn(msg.topic, null, msg);
        break;
      case 'goodbye':
        this._goodbye = msg;
        break;
      default:
        break;
    }
  }

  _startHeartbeat(every) {
    clearInterval(this._heartbeat);
    // Browsers never see the server's ping frames, so the client pings in
    // its own protocol and calls the connection dead after two silent rounds.
    this._heartbeat = setInterval(() => {
      if (Date.now() - this._lastRecv > every * 2 + 1000) {
        this._finish({ error: new HeraldError('heartbeat_timeout', 'no answer from the server') });
        return;
      }
      this._send({ op: 'ping', id: this._nextId++ });
    }, every);
  }

  _onClose(e) {
    const code = e && e.code;
    const g = this._goodbye;
    const reason = (g && g.reason) || (e && e.reason) || '';
    const map = {
      4001: 'auth_failed',
      4002: 'token_expired',
      4003: 'heartbeat_timeout',
      4008: 'slow_consumer',
      4009: 'too_many_connections',
      4029: 'rate_limited',
      1001: 'shutting_down',
    };
    const err = new HeraldError(map[code] || 'disconnected', `connection closed (${code}${reason ? ' ' + reason : ''})`);
    const outcome = { error: err };
    if (code === 1001 || code === 4008 || code === 4003) outcome.immediate = true;
    if (code === 4009 || code === 4029) outcome.retryAfterMs = backoffDelay(4, 2000, 60000);
    this._finish(outcome);
  }
}

// ---------------------------------------------------------------- SSE and long-poll transports

/**
 * The fallback transports. One stream (SSE) or poll loop per topic: an SSE
 * stream or a poll over several topics names each event under only one of
 * them, and the client must hand each event to every subscription it belongs
 * to. Read-only: presence needs the WebSocket, broadcasts go over HTTP.
 */
class StreamTransport {
  constructor(client, kind) {
    this.kind = kind;
    this.client = client;
    this.ready = false;
    this.adopted = false;
    this.expiresAt = null;
    this._loops = new Map(); // topic -> AbortController
    this._healthy = new Set();
  }

  run() {
    return new Promise((resolve) => {
      this._resolve = resolve;
      this._stopped = false;
      this.expiresAt = (decodeToken(this.client._token) || {}).exp ?? null;
      const topics = [...this.client._topics.values()];
      if (topics.length === 0) {
        // Nothing to stream yet: connected as soon as the server answers.
        this.client._serverReachable().then((ok) => {
          if (this._stopped) return;
          if (!ok) return this._end({ error: new HeraldError('unreachable', 'server unreachable') });
          this.ready = true;
          this.client._established(this);
        });
      }
      for (const ts of topics) this.add(ts);
    });
  }

  stop(opts = {}) {
    this._end({ immediate: true, replaced: !!opts.replaced });
  }

  _end(outcome) {
    if (this._stopped) return;
    this._stopped = true;
    for (const ac of this._loops.values()) ac.abort();
    this._loops.clear();
    if (this._resolve) this._resolve({ established: this.ready, ...outcome });
  }

  add(ts) {
    if (this._stopped || this._loops.has(ts.topic)) return;
    if (ts.room && this.kind === 'longpoll') return; // rooms have no log to poll
    const ac = new AbortController();
    this._loops.set(ts.topic, ac);
    const loop = this.kind === 'sse' ? this._sseLoop(ts, ac.signal) : this._pollLoop(ts, ac.signal);
    loop.catch((e) => this._end({ error: e }));
  }

  remove(ts) {
    const ac = this._loops.get(ts.topic);
    if (ac) ac.abort();
    this._loops.delete(ts.topic);
    this._healthy.delete(ts.topic);
    this._checkReady();
  }

  _up(topic) {
    this._healthy.add(topic);
    this._checkReady();
  }

  _checkReady() {
    if (this._stopped || this.ready) return;
    for (const t of this._loops.keys()) if (!this._healthy.has(t)) return;
    this.ready = true;
    if (!this.adopted) this.client._established(this);
  }

  /** A failure of one topic's stream: fatal ones end the subscription, the
   * rest end this transport so the client's loop reconnects with backoff. */
  _failed(ts, err) {
    if (err && err.status && [403, 404, 400].includes(err.status)) {
      this.client._topicFailed(ts.topic, err);
      return;
    }
    this._end({ error: err });
  }

  _startPosition(ts) {
    // Positions are one sequence for the whole log, so the highest one seen
    // on any topic is a valid cursor for a topic that has none yet.
    return ts.position ?? this.client._headHint;
  }

  async _sseLoop(ts, signal) {
    const c = this.client;
    const since = this._startPosition(ts);
    const q = new URLSearchParams({ topic: ts.topic });
    if (since != null && !ts.room) q.set('since', String(since));
    let res;
    const timeout = setTimeout(() => ac2.abort(), c.options.connectTimeoutMs);
    const ac2 = new AbortController();
    signal.addEventListener('abort', () => ac2.abort(), { once: true });
    try {
      res = await c._fetch(`${c.url}/v1/sse?${q}`, {
        headers: { Authorization: `Bearer ${c._token}`, Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: ac2.signal,
      });
    } catch (e) {
      clearTimeout(timeout);
      if (signal.aborted) return;
      return this._failed(ts, new HeraldError('disconnected', `SSE: ${e.message || e}`));
    }
    if (!res.ok) {
      clearTimeout(timeout);
      return this._failed(ts, await errorFromResponse(res));
    }
    const type = res.headers.get('content-type') || '';
    if (!type.startsWith('text/event-stream') || !res.body) {
      clearTimeout(timeout);
      return this._failed(ts, new HeraldError('bad_stream', 'SSE: not an event stream'));
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let lastRecv = Date.now();
    let first = true;
    // Keep-alive comments come every 15 s; three missing ones mean the stream is dead.
    const watchdog = setInterval(() => {
      if (Date.now() - lastRecv > 50000) ac2.abort();
    }, 5000);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        lastRecv = Date.now();
        if (first) {
          first = false;
          clearTimeout(timeout);
          this._up(ts.topic);
        }
        buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          this._sseMessage(ts, block);
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      return this._failed(ts, new HeraldError('disconnected', `SSE: ${e.message || e}`));
    } finally {
      clearTimeout(timeout);
      clearInterval(watchdog);
    }
    if (signal.aborted) return;
    const g = this._goodbye;
    this._goodbye = null;
    const err = new HeraldError(g && g.reason === 'token_expired' ? 'token_expired' : 'disconnected', 'SSE stream ended');
    this._end({ error: err, immediate: !!(g && g.reconnect) });
  }

  _sseMessage(ts, block) {
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const k = line.indexOf(':');
      const field = k < 0 ? line : line.slice(0, k);
      const value = k < 0 ? '' : line.slice(k + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length === 0) return;
    let body;
    try {
      body = JSON.parse(data.join('\n'));
    } catch {
      return;
    }
    const c = this.client;
    if (event === 'resync') {
      const snap = body.snapshot ? body.snapshot[ts.topic] : null;
      c._resync(ts.topic, body.position, snap);
    } else if (event === 'broadcast') {
      c._broadcastIn({ ...body, topic: ts.topic });
    } else if (event === 'presence_diff') {
      c._presenceIn(ts.topic, null, body);
    } else if (event === 'goodbye') {
      this._goodbye = body;
    } else if (body && body.position != null) {
      // The stream names the event under the topic it asked for.
      c._deliver(ts.topic, { ...body, op: 'event', topic: ts.topic });
    }
  }

  async _pollLoop(ts, signal) {
    const c = this.client;
    let since = this._startPosition(ts);
    let discovering = since == null;
    if (discovering) since = 0;
    while (!signal.aborted) {
      // While finding the head of a topic that has no position yet, page
      // without waiting and keep the events to ourselves: "subscribe without
      // since" means live from now on.
      const wait = discovering ? 0 : c.options.pollWaitSeconds;
      const limit = discovering ? 1000 : 500;
      const q = new URLSearchParams({ topic: ts.topic, since: String(since), limit: String(limit), wait: String(wait) });
      const ac2 = new AbortController();
      const abort = () => ac2.abort();
      signal.addEventListener('abort', abort, { once: true });
      const timer = setTimeout(abort, wait * 1000 + c.options.connectTimeoutMs);
      let res;
      try {
        res = await c._fetch(`${c.url}/v1/events?${q}`, {
          headers: { Authorization: `Bearer ${c._token}` },
          cache: 'no-store',
          signal: ac2.signal,
        });
        if (!res.ok) {
          clearTimeout(timer);
          return this._failed(ts, await errorFromResponse(res));
        }
        var page = await res.json();
      } catch (e) {
        if (signal.aborted) return;
        return this._failed(ts, new HeraldError('disconnected', `long-poll: ${e.message || e}`));
      } finally {
        clearTimeout(timer);
        signal.removeEventListener('abort', abort);
      }
      if (signal.aborted) return;
      this._up(ts.topic);
      c.lastEventAt = c.lastEventAt ?? Date.now();
      if (page.resync) {
        if (!discovering) c._resync(ts.topic, page.next, null);
        since = page.next;
        ts.position = Math.max(ts.position ?? 0, page.next);
        discovering = false;
        continue;
      }
      if (discovering) {
        since = page.next;
        if (page.events.length < limit) {
          discovering = false;
          if (ts.position == null) ts.position = since;
          c._headHint = Math.max(c._headHint ?? 0, since);
        }
        continue;
      }
      for (const ev of page.events) c._deliver(ts.topic, { ...ev, op: 'event', topic: ts.topic });
      since = Math.max(since, page.next);
    }
  }
}

// ---------------------------------------------------------------- live views

class View extends Emitter {
  constructor() {
    super();
    this.loading = true;
    this.error = null;
    this._closed = false;
    this._version = 0;
  }
  _changed() {
    this._version += 1;
    this.emit('change', this.value);
    if (this._waiters) {
      const w = this._waiters;
      this._waiters = null;
      for (const r of w) r();
    }
  }
  /** Calls `fn(value)` now (when loaded) and on every change; returns an unsubscribe function. */
  subscribe(fn) {
    const off = this.on('change', fn);
    if (!this.loading || this.error) call(fn, this.value);
    return off;
  }
  /** Yields the up-to-date value after each change (coalesced when the reader is slower). */
  async *[Symbol.asyncIterator]() {
    let seen = -1;
    while (!this._closed) {
      if (this._version !== seen && (!this.loading || this.error)) {
        seen = this._version;
        yield this.value;
        continue;
      }
      await new Promise((r) => (this._waiters = [...(this._waiters || []), r]));
    }
  }
  /** The snapshot is in: apply the events that arrived while it loaded, then announce it. */
  _loaded() {
    this.loading = false;
    const buffered = this._buffer;
    this._buffer = [];
    for (const ev of buffered) this._apply(ev, false);
    if (this._sync) this._sync();
    this._changed();
  }
  close() {
    if (this._closed) return;
    this._closed = true;
    if (this._sub) this._sub.unsubscribe();
    this._changed();
    this._listeners.clear();
  }
}

/** A job, its tasks and artifacts, kept up to date. See `HeraldClient.watchJob`. */
export class JobView extends View {
  constructor(client, id, opts = {}) {
    super();
    this.client = client;
    this.id = id;
    this.job = null;
    this.tasks = [];
    this.artifacts = [];
    this.events = [];
    this._tasks = new Map();
    this._historyLimit = opts.historyLimit ?? 500;
    this._buffer = [];
    this._sub = client.subscribe(`job:${id}`, {
      since: opts.history ? 0 : undefined,
      onEvent: (ev) => (this.loading ? this._buffer.push(ev) : this._apply(ev, true)),
      onResync: (r) => this._onResync(r),
      onError: (err) => this._fail(err),
    });
    this._load();
  }

  get value() {
    return this.job;
  }

  async _load() {
    try {
      const [job, tasks, artifacts] = await Promise.all([
        this.client.request('GET', `/v1/jobs/${encodeURIComponent(this.id)}`),
        this.client.request('GET', `/v1/jobs/${encodeURIComponent(this.id)}/tasks`),
        this.client.request('GET', `/v1/jobs/${encodeURIComponent(this.id)}/artifacts`),
      ]);
      if (this._closed) return;
      this._setJob(job);
      for (const t of tasks.tasks || []) this._setTask(t);
      for (const a of artifacts.artifacts || []) this._addArtifact(a);
      this._loaded();
    } catch (e) {
      this._fail(e);
    }
  }

  _fail(err) {
    this.error = err;
    this.loading = false;
    this._changed();
  }

  _setJob(job) {
    // Rows carry a version that grows with every change: an older copy
    // (a replayed event after a newer snapshot) never wins.
    if (!this.job || (job.version ?? 0) >= (this.job.version ?? 0)) this.job = job;
  }

  _setTask(task) {
    const old = this._tasks.get(task.id);
    if (!old || time(task.updated_at) >= time(old.updated_at)) this._tasks.set(task.id, task);
  }

  _addArtifact(a) {
    if (!this.artifacts.some((x) => x.id === a.id)) this.artifacts.push(a);
  }

  _sync() {
    this.tasks = [...this._tasks.values()];
  }

  _apply(ev, notify) {
    this.events.push(ev);
    if (this.events.length > this._historyLimit) this.events.splice(0, this.events.length - this._historyLimit);
    const d = ev.data || {};
    if (ev.type.startsWith('job.')) this._setJob(d);
    else if (ev.type.startsWith('task.')) this._setTask(d);
    else if (ev.type === 'artifact.created') this._addArtifact(d);
    this._sync();
    if (notify) this._changed();
  }

  async _onResync({ snapshot }) {
    // Events were lost to retention: take the snapshot (or reload) instead.
    if (snapshot && snapshot.job) {
      this.job = snapshot.job;
      this._tasks = new Map((snapshot.tasks || []).map((t) => [t.id, t]));
      this._sync();
      this._changed();
      try {
        const a = await this.client.request('GET', `/v1/jobs/${encodeURIComponent(this.id)}/artifacts`);
        for (const x of a.artifacts || []) this._addArtifact(x);
        this._changed();
      } catch (e) {
        this.client.emit('error', e);
      }
    } else {
      this.job = null;
      this._tasks.clear();
      this.loading = true;
      this._load();
    }
  }
}

/** A list of jobs kept up to date. See `HeraldClient.watchJobs`. */
export class JobsView extends View {
  constructor(client, opts = {}) {
    super();
    this.client = client;
    this.opts = opts;
    this._jobs = new Map();
    this._buffer = [];
    this._max = opts.max ?? 500;
    this.jobs = [];
    const topic = opts.owner ? `jobs:owner:${opts.owner}` : 'jobs';
    this.topic = topic;
    this._sub = client.subscribe(topic, {
      onEvent: (ev) => (this.loading ? this._buffer.push(ev) : this._apply(ev, true)),
      onResync: ({ snapshot }) => {
        if (snapshot && snapshot.jobs) {
          this._jobs = new Map(snapshot.jobs.map((j) => [j.id, j]));
          this._sync();
          this._changed();
        } else this._load();
      },
      onError: (err) => {
        this.error = err;
        this.loading = false;
        this._changed();
      },
    });
    this._load();
  }

  get value() {
    return this.jobs;
  }

  async _load() {
    try {
      const q = new URLSearchParams({ limit: String(Math.min(this.opts.limit ?? 200, 500)) });
      if (this.opts.owner) q.set('owner', this.opts.owner);
      if (this.opts.status) q.set('status', this.opts.status);
      if (this.opts.kind) q.set('kind', this.opts.kind);
      const page = await this.client.request('GET', `/v1/jobs?${q}`);
      if (this._closed) return;
      for (const j of page.jobs || []) this._set(j);
      this._loaded();
    } catch (e) {
      this.error = e;
      this.loading = false;
      this._changed();
    }
  }

  _set(job) {
    if (this.opts.status && job.status !== this.opts.status) {
      this._jobs.delete(job.id);
      return;
    }
    if (this.opts.kind && job.kind !== this.opts.kind) return;
    const old = this._jobs.get(job.id);
    if (!old || (job.version ?? 0) >= (old.version ?? 0)) this._jobs.set(job.id, job);
  }

  _apply(ev, notify) {
    if (!ev.type.startsWith('job.')) return; // task and artifact events do not change the list
    this._set(ev.data);
    this._sync();
    if (notify) this._changed();
  }

  _sync() {
    let list = [...this._jobs.values()].sort((a, b) => time(b.updated_at) - time(a.updated_at));
    if (list.length > this._max) {
      // Forget the oldest finished jobs first; running ones stay watched.
      const drop = new Set(list.filter((j) => ['completed', 'failed', 'cancelled'].includes(j.status)).slice(-(list.length - this._max)).map((j) => j.id));
      for (const id of drop) this._jobs.delete(id);
      list = list.filter((j) => !drop.has(j.id));
    }
    this.jobs = list;
  }
}

/** My notifications with an unread count. See `HeraldClient.notifications`. */
export class NotificationsView extends View {
  constructor(client, opts = {}) {
    super();
    this.client = client;
    this.items = [];
    this.unreadCount = 0;
    this._buffer = [];
    this._limit = opts.limit ?? 50;
    this._start(opts.sub);
  }

  get value() {
    return { items: this.items, unreadCount: this.unreadCount };
  }

  async _start(sub) {
    try {
      if (!sub) {
        await this.client.token();
        sub = this.client.identity && this.client.identity.sub;
      }
      if (!sub) throw new HeraldError('invalid_token', 'notifications(): the token names no `sub`; pass { sub }');
      if (this._closed) return;
      this.sub = sub;
      this._sub = this.client.subscribe(`user:${sub}`, {
        onEvent: (ev) => (this.loading ? this._buffer.push(ev) : this._apply(ev, true)),
        onResync: () => this._load(),
        onError: (err) => {
          this.error = err;
          this._changed();
        },
      });
      await this._load();
    } catch (e) {
      this.error = e;
      this.loading = false;
      this._changed();
    }
  }

  async _load() {
    const page = await this.client.request('GET', `/v1/notifications?limit=${this._limit}`);
    if (this._closed) return;
    this.items = page.notifications || [];
    this.unreadCount = page.unread_count || 0;
    this._loaded();
  }

  _apply(ev, notify) {
    const n = ev.data;
    if (!n || !n.id) return;
    const i = this.items.findIndex((x) => x.id === n.id);
    const before = i >= 0 ? this.items[i] : null;
    if (ev.type === 'notification.created') {
      if (before) return; // already in the snapshot
      this.items = [n, ...this.items].slice(0, this._limit);
      if (!n.read) this.unreadCount += 1;
      if (notify) this.emit('notification', n);
    } else if (ev.type === 'notification.read') {
      if (before) {
        if (!before.read && n.read) this.unreadCount = Math.max(0, this.unreadCount - 1);
        this.items = this.items.map((x) => (x.id === n.id ? n : x));
      } else if (n.read) {
        // Older than our page; it was counted as unread by the server.
        this.unreadCount = Math.max(0, this.unreadCount - 1);
      }
    }
    if (notify) this._changed();
  }

  /** Marks one notification read. */
  async markRead(id) {
    const n = await this.client.request('POST', `/v1/notifications/${encodeURIComponent(id)}/read`);
    // The event follows too; applying the answer now makes the UI instant.
    this._apply({ type: 'notification.read', data: n }, true);
    return n;
  }

  /** Marks all my notifications read. */
  async markAllRead() {
    const r = await this.client.request('POST', '/v1/notifications/read-all');
    this.items = this.items.map((x) => ({ ...x, read: true }));
    this.unreadCount = 0;
    this._changed();
    return r;
  }
}

/** Who is in a room. See `HeraldClient.presence`. */
export class PresenceView extends View {
  constructor(client, room, meta) {
    super();
    this.client = client;
    this.topic = room.startsWith('room:') ? room : `room:${room}`;
    this.state = {};
    this.loading = false;
    this._sub = client.subscribe(this.topic, {
      onPresence: (state) => {
        this.state = state;
        this._changed();
      },
      onBroadcast: (msg) => this.emit('broadcast', msg),
      onError: (err) => {
        this.error = err;
        this._changed();
      },
    });
    this._ts = client._topics.get(this.topic);
    if (meta) this.set(meta);
  }

  get value() {
    return this.list();
  }

  /** One entry per connection: `{ sub, ...meta }`. */
  list() {
    const out = [];
    for (const [sub, v] of Object.entries(this.state)) for (const m of v.metas) out.push({ ...m, sub });
    return out;
  }

  /** Distinct `sub`s present. */
  members() {
    return Object.keys(this.state);
  }

  /** Sets this connection's meta in the room (kept across reconnects). */
  async set(meta) {
    this._ts.meta = meta || {};
    const t = this.client._transport;
    if (t && t.kind === 'websocket' && t.ready) return t.setPresence(this._ts);
    return null; // sent when the WebSocket (re)connects
  }

  /** Publishes to this room. */
  broadcast(event, data) {
    return this.client.broadcast(this.topic, event, data);
  }
}

Object.assign(HeraldClient.prototype, {
  /**
   * Watches one job: a REST snapshot of the job, its tasks and artifacts,
   * then every event applied as it comes. `{ history: true }` also replays
   * the job's past events into `view.events` (a timeline).
   */
  watchJob(id, opts) {
    return new JobView(this, id, opts);
  },
  /** Watches a list of jobs: the tenant's (`jobs`), or one owner's (`{ owner }`). */
  watchJobs(opts) {
    return new JobsView(this, opts);
  },
  /** My notifications and their unread count, with markRead / markAllRead. */
  notifications(opts) {
    return new NotificationsView(this, opts);
  },
  /** Joins a room's presence (with `meta`, this connection shows up in it). */
  presence(room, meta) {
    return new PresenceView(this, room, meta);
  },
});

// ---------------------------------------------------------------- worker side

/**
 * Reports a worker's progress over the HTTP API: every request retried with
 * backoff under one Idempotency-Key (so a retry never counts twice), requests
 * of one job sent in order, bursts of `progress()` coalesced into one report.
 */
export class ProgressReporter {
  constructor(options = {}) {
    if (!options.token && !options.getToken) throw new HeraldError('invalid_option', 'ProgressReporter: give `token` or `getToken`');
    this.url = baseUrl(options.url);
    this._token = options.token || null;
    this._getToken = options.getToken || null;
    this._fetch = options.fetch || ((...a) => fetch(...a));
    this.retries = options.retries ?? 5;
    this.coalesceMs = options.coalesceMs ?? 250;
    this.backoff = { initialMs: 200, maxMs: 10000, ...(options.backoff || {}) };
    this.timeoutMs = options.timeoutMs ?? 15000;
    this._queues = new Map(); // job id -> promise chain
    this._pending = new Map(); // job id -> { report, timer, waiters }
  }

  async _tokenValue(fresh) {
    if (this._getToken && (fresh || !this._token)) this._token = await this._getToken();
    return this._token;
  }

  /** One request with retries. 4xx other than 408/429 are not retried. */
  async send(method, path, body) {
    const key = randomId();
    let lastErr;
    let fresh = false;
    for (let attempt = 0; attempt <= this.retries; attempt++) {
      if (attempt > 0) await sleep(backoffDelay(attempt - 1, this.backoff.initialMs, this.backoff.maxMs));
      const ac = new AbortController();
      const timer = setTimeout(() => ac.abort(), this.timeoutMs);
      try {
        const token = await this._tokenValue(fresh);
        fresh = false;
        const res = await this._fetch(this.url + path, {
          method,
          headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json', 'Idempotency-Key': key },
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: ac.signal,
        });
        if (res.ok) return res.json();
        const err = await errorFromResponse(res);
        if (res.status === 401 && this._getToken && attempt === 0) {
          fresh = true;
          lastErr = err;
          continue;
        }
        if (res.status < 500 && res.status !== 408 && res.status !== 429) throw err;
        lastErr = err;
      } catch (e) {
        if (e instanceof HeraldError && e.status && e.status < 500 && e.status !== 408 && e.status !== 429) throw e;
        lastErr = e instanceof HeraldError ? e : new HeraldError('network', String((e && e.message) || e));
      } finally {
        clearTimeout(timer);
      }
    }
    throw lastErr;
  }

  /** Runs `fn` after everything queued before for the same job. */
  _enqueue(jobId, fn) {
    const prev = this._queues.get(jobId) || Promise.resolve();
    const next = prev.catch(() => {}).then(fn);
    this._queues.set(jobId, next);
    next.finally(() => {
      if (this._queues.get(jobId) === next) this._queues.delete(jobId);
    }).catch(() => {});
    return next;
  }

  _path(jobId, rest = '') {
    return `/v1/jobs/${encodeURIComponent(jobId)}${rest}`;
  }

  /** Creates the job (idempotent for the same body). */
  createJob(job) {
    return this._enqueue(job.id || randomId(), () => this.send('POST', '/v1/jobs', job));
  }

  /** Marks the job running, creating it first when it does not exist. */
  async jobStarted(jobId, opts = {}) {
    await this.flush(jobId);
    return this._enqueue(jobId, async () => {
      const report = { status: 'running' };
      if (opts.total != null) report.total = opts.total;
      if (opts.stage != null) report.stage = opts.stage;
      try {
        return await this.send('POST', this._path(jobId, '/progress'), report);
      } catch (e) {
        if (e.code !== 'not_found') throw e;
        const body = { id: jobId, status: 'running' };
        for (const k of ['title', 'kind', 'owner', 'total', 'metadata', 'tasks']) if (opts[k] != null) body[k] = opts[k];
        return this.send('POST', '/v1/jobs', body);
      }
    });
  }

  _task(jobId, taskId, body) {
    return this._enqueue(jobId, () => this.send('PUT', this._path(jobId, `/tasks/${encodeURIComponent(taskId)}`), body));
  }

  /** A task (a directory submission, a page, an agent step) started. */
  async taskStarted(jobId, taskId, name) {
    const body = { status: 'running' };
    if (name) body.name = name;
    const r = this._task(jobId, taskId, body);
    if (name) this.progress(jobId, { current_item: name }).catch(() => {});
    return r;
  }

  taskSucceeded(jobId, taskId) {
    return this._task(jobId, taskId, { status: 'succeeded' });
  }

  taskFailed(jobId, taskId, error) {
    const body = { status: 'failed' };
    if (error) body.error = String(error && error.message ? error.message : error);
    return this._task(jobId, taskId, body);
  }

  /**
   * Reports progress: `{ succeeded, failed, total, progress, stage,
   * current_item, metadata, error }`. Calls within `coalesceMs` merge into
   * one request (later values win; metadata merges); an `error` is never
   * merged away. Resolves when the report carrying these values was stored.
   */
  progress(jobId, report) {
    let p = this._pending.get(jobId);
    if (p && report.error != null && p.report.error != null) {
      // Two errors cannot share one report: send the first batch now.
      this._flushPending(jobId);
      p = null;
    }
    if (!p) {
      p = { report: {}, waiters: [] };
      this._pending.set(jobId, p);
      p.timer = setTimeout(() => this._flushPending(jobId), this.coalesceMs);
    }
    for (const [k, v] of Object.entries(report)) {
      if (v === undefined) continue;
      if (k === 'metadata' && p.report.metadata && v && typeof v === 'object') p.report.metadata = { ...p.report.metadata, ...v };
      else p.report[k] = v;
    }
    return new Promise((resolve, reject) => p.waiters.push({ resolve, reject }));
  }

  _flushPending(jobId) {
    const p = this._pending.get(jobId);
    if (!p) return Promise.resolve();
    this._pending.delete(jobId);
    clearTimeout(p.timer);
    const done = this._enqueue(jobId, () => this.send('POST', this._path(jobId, '/progress'), p.report));
    done.then((r) => p.waiters.forEach((w) => w.resolve(r)), (e) => p.waiters.forEach((w) => w.reject(e)));
    return done.catch(() => {});
  }

  /** Sends coalesced progress now and waits for everything queued (for one job, or all). */
  async flush(jobId) {
    const ids = jobId ? [jobId] : [...new Set([...this._pending.keys(), ...this._queues.keys()])];
    await Promise.all(ids.map((id) => this._flushPending(id)));
    await Promise.all(ids.map((id) => (this._queues.get(id) || Promise.resolve()).catch(() => {})));
  }

  async jobCompleted(jobId, opts = {}) {
    await this.flush(jobId);
    const report = { status: 'completed' };
    if (opts.stage != null) report.stage = opts.stage;
    if (opts.metadata != null) report.metadata = opts.metadata;
    return this._enqueue(jobId, () => this.send('POST', this._path(jobId, '/progress'), report));
  }

  async jobFailed(jobId, error) {
    await this.flush(jobId);
    const report = { status: 'failed' };
    if (error) report.error = String(error && error.message ? error.message : error);
    return this._enqueue(jobId, () => this.send('POST', this._path(jobId, '/progress'), report));
  }

  /** Records something the job produced (a screenshot URL, OCR text, a label). */
  artifact(jobId, kind, payload) {
    return this._enqueue(jobId, () => this.send('POST', this._path(jobId, '/artifacts'), { kind, payload }));
  }
}
