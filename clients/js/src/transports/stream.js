// The fallback transports over plain HTTP: Server-Sent Events (`/v1/sse`)
// and long-poll over the event log (`/v1/events`).

import { HeraldError, errorFromResponse } from '../errors.js';
import { decodeToken } from '../util.js';

/**
 * The fallback transports. One stream (SSE) or poll loop per topic: an SSE
 * stream or a poll over several topics names each event under only one of
 * them, and the client must hand each event to every subscription it belongs
 * to. Read-only: presence needs the WebSocket, broadcasts go over HTTP.
 */
export class StreamTransport {
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
