// The WebSocket transport: one connection for every subscription, speaking
// Herald's protocol (docs/PROTOCOL.md), with the client's own heartbeats.
// The first choice; presence and `refresh` exist only here.

import { HeraldError } from '../errors.js';
import { backoffDelay } from '../util.js';
import { streamSince } from '../views/stream.js';

function wsUrl(base) {
  return base.replace(/^http/i, 'ws') + '/v1/ws';
}

// A `list` frame carrying `have` must fit the server's frame limit
// (`--ws-max-message`, 64 KiB by default); past this a list resumes with a
// fresh snapshot instead, which the view compares with what it held.
const LIST_FRAME_MAX_BYTES = 60 * 1024;
const utf8Length = (s) => (typeof TextEncoder !== 'undefined' ? new TextEncoder().encode(s).length : s.length * 3);

/**
 * A job output stream's frame, read: `chunks` as `{ kind: 'chunks', topic,
 * offset, chunks }` (`offset` is the first chunk's), `stream_truncated` as
 * `{ kind: 'truncated', topic, from, to }`. The one place that knows their
 * shape on the wire (docs/PROTOCOL.md, "Job output streams").
 */
/**
 * A compact frame (herald.v1c, docs/PROTOCOL.md "Compact frames") as the
 * JSON frame it stands for, so everything past here reads one shape.
 */
export function expandCompact(a) {
  switch (a[0]) {
    case 0: {
      const ev = { op: 'event', topic: a[1], position: a[2], type: a[3], data: a[4], time: new Date(a[5]).toISOString() };
      if (a.length > 6) ev.old = a[6];
      return ev;
    }
    case 1:
      return { op: 'broadcast', topic: a[1], event: a[2], data: a[3], from: a[4] };
    case 2:
      return { op: 'presence_diff', topic: a[1], joins: a[2], leaves: a[3] };
    case 3:
      return { op: 'chunks', topic: a[1], offset: a[2], chunks: a[3] };
    case 4: {
      const ch = { op: 'list_change', list: a[1], change: a[2], position: a[3], id: a[4] };
      if (a.length > 5) ch.job = a[5];
      return ch;
    }
    default:
      return null; // a frame of a newer server: skipped
  }
}

export function readStreamFrame(msg) {
  if (msg.op === 'chunks') return { kind: 'chunks', topic: msg.topic, offset: msg.offset, chunks: msg.chunks };
  return { kind: 'truncated', topic: msg.topic, from: msg.from, to: msg.to };
}

export class WsTransport {
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
    /** Set while this is a probe not yet adopted by the connection: it holds no lists. */
    this.probing = false;
    this._held = new Set(); // topics subscribed on this connection
    this._heldStreams = new Set(); // job output streams subscribed on this connection
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
        // Compact frames when the server has them (herald.v1c); it picks one of the two.
        const protocols = c.options.compact ? ['herald.v1c', 'herald.v1'] : ['herald.v1'];
        ws = new c._WebSocket(wsUrl(c.url), [...protocols, `bearer.${c._token}`]);
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
    // A topic never sent on this connection (a list's long-poll stand-in
    // ending as the list moves here) needs no unsub.
    if (!this.ready || alreadyGone || !this._held.delete(ts.topic)) return;
    this.request({ op: 'unsub', topic: ts.topic }).catch(() => {});
  }

  _subscribe(ts) {
    const frame = ts.room && ts.meta
      ? { op: 'presence', topic: ts.topic, meta: ts.meta }
      : { op: 'sub', topic: ts.topic };
    if (!ts.room && ts.position != null) frame.since = ts.position;
    if (!ts.room && ts.conflate === false) frame.conflate = false;
    this._held.add(ts.topic);
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

  // Live job lists (`list` / `unlist`): sent on every connection, resuming
  // with `have` so that only the difference comes back.

  addList(ls) {
    if (this.ready && !this.probing) this._list(ls);
  }

  removeList(ls, alreadyGone) {
    if (!this.ready || this.probing || alreadyGone) return;
    this.request({ op: 'unlist', list: ls.name }).catch(() => {});
  }

  /** Takes over every list of the client (on welcome, or when a probe is adopted). */
  listAll() {
    for (const ls of [...this.client._lists.values()]) this._list(ls);
  }

  _list(ls) {
    if (ls.emulated) return ls.view._listEmulate(); // the server has no lists (see below)
    // From here on this connection speaks for the list: the view stops any
    // stand-in (long-poll) and what it holds now is what `have` says.
    ls.view._listClaimed();
    const frame = { op: 'list', list: ls.name, query: ls.query };
    const have = ls.view._listHave();
    if (have) {
      const withHave = { ...frame, have, id: this._nextId };
      if (utf8Length(JSON.stringify(withHave)) <= LIST_FRAME_MAX_BYTES) frame.have = have;
    }
    this.request(frame).then(
      (ack) => this.client._listAcked(ls.name, ack),
      (err) => {
        if (err.code === 'disconnected') return; // listed again on the next connection
        if (this.client._lists.get(ls.name) !== ls) return;
        if (err.code === 'unavailable' || err.code === 'too_many_subscriptions') {
          setTimeout(() => this.client._lists.get(ls.name) === ls && this.ready && this._list(ls), 2000);
          return;
        }
        if (err.code === 'unknown_op') {
          // A server from before live lists: the view makes do with the `jobs` topic.
          ls.emulated = true;
          ls.view._listEmulate();
          return;
        }
        this.client._listFailed(ls.name, err);
      },
    );
  }

  // Job output streams: `sub` with `since` = the next offset wanted. Like
  // lists, a probe takes them only once adopted (see connection.js).

  addStream(ss) {
    if (this.ready && !this.probing) this._subscribeStream(ss);
  }

  removeStream(ss, alreadyGone) {
    if (!this.ready || this.probing || alreadyGone || !this._heldStreams.delete(ss.topic)) return;
    this.request({ op: 'unsub', topic: ss.topic }).catch(() => {});
  }

  /** Subscribes again from the views' offset: unsub, then sub (the server takes them in order). */
  restartStream(ss) {
    if (!this.ready || this.probing) return;
    ss.restarting = true;
    if (this._heldStreams.delete(ss.topic)) this.request({ op: 'unsub', topic: ss.topic }).catch(() => {});
    this._subscribeStream(ss);
  }

  /** Takes over every stream of the client (on welcome, or when a probe is adopted). */
  streamAll() {
    for (const ss of [...this.client._streams.values()]) this._subscribeStream(ss);
  }

  _subscribeStream(ss) {
    const c = this.client;
    const frame = { op: 'sub', topic: ss.topic };
    const since = streamSince(ss);
    if (since != null) frame.since = since;
    this._heldStreams.add(ss.topic);
    this.request(frame).then(
      (ack) => c._streams.get(ss.topic) === ss && c._streamAcked(this, ss.topic, ack.offset),
      (err) => {
        if (err.code === 'disconnected' || c._streams.get(ss.topic) !== ss) return; // subscribed again on the next connection
        this._heldStreams.delete(ss.topic);
        if (err.code === 'unavailable' || err.code === 'too_many_subscriptions') {
          setTimeout(() => c._streams.get(ss.topic) === ss && this.ready && this._subscribeStream(ss), 2000);
          return;
        }
        c._streamFailed(ss.topic, err);
      },
    );
  }

  _streamIn(f) {
    const c = this.client;
    if (f.kind === 'chunks') c._chunksIn(this, f.topic, f.offset, f.chunks);
    else c._streamTruncated(this, f.topic, f.from, f.to);
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
    if (Array.isArray(msg)) msg = expandCompact(msg);
    if (!msg) return;
    const c = this.client;
    switch (msg.op) {
      case 'welcome': {
        clearTimeout(this._connectTimer);
        this.ready = true;
        this.expiresAt = msg.expires_at ?? null;
        c.identity = { sub: msg.sub, role: msg.role, tenant: msg.tenant, exp: msg.expires_at ?? null };
        const every = c.options.heartbeatMs ?? Math.min(msg.heartbeat_ms || 20000, 20000);
        this._startHeartbeat(every);
        // Lists first: taking one over may end a stand-in topic subscription
        // (long-poll), which then need not be sent at all.
        if (!this.probing) {
          this.listAll();
          this.streamAll();
        }
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
        } else if (msg.list != null && c._lists.has(msg.list)) {
          // A live list that ended (e.g. list_too_large once it grew past the bound).
          c._listFailed(msg.list, err);
        } else {
          c.emit('error', err);
        }
        break;
      }
      case 'list_snapshot':
        c._listIn(this, msg.list, 'snapshot', msg);
        break;
      case 'list_change':
        c._listIn(this, msg.list, 'change', msg);
        break;
      case 'event':
        c._deliver(msg.topic, msg);
        break;
      case 'chunks':
      case 'stream_truncated':
        this._streamIn(readStreamFrame(msg));
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
