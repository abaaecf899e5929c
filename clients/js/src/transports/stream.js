// The fallback transports over plain HTTP: Server-Sent Events (`/v1/sse`,
// `/v1/sse/jobs` for live job lists, `/v1/jobs/{id}/streams/{name}/sse` for
// job output streams) and long-poll over the event log (`/v1/events`) and
// over streams (`/v1/jobs/{id}/streams/{name}?wait=`).

import { HeraldError, errorFromResponse } from '../errors.js';
import { decodeToken } from '../util.js';
import { streamNeedsEnd, streamSince } from '../views/stream.js';

/** The `_loops` key of a list: topics never start with `@`. */
const listKey = (ls) => `@${ls.name}`;
/** The `_loops` key of a job output stream (`#stream:<job>:<name>`): apart from a topic of the same name. */
const streamKey = (ss) => `#${ss.topic}`;
/** A stream's path under the HTTP API. */
const streamPath = (ss) => `/v1/jobs/${encodeURIComponent(ss.jobId)}/streams/${encodeURIComponent(ss.name)}`;

/**
 * A list's query as `/v1/sse/jobs` parameters, or null when it cannot be
 * said there (`tag=k:v,k2:v2` has no escape for `,` in a value nor for `,`
 * or `:` in a key).
 */
export function sseListParams(query) {
  const p = new URLSearchParams();
  if (query.status) p.set('status', [].concat(query.status).join(','));
  if (query.kind != null) p.set('kind', query.kind);
  if (query.owner != null) p.set('owner', query.owner);
  if (query.tag) {
    const pairs = [];
    for (const [k, v] of Object.entries(query.tag)) {
      const text = String(v);
      if (/[,:]/.test(k) || text.includes(',')) return null;
      pairs.push(`${k}:${text}`);
    }
    if (pairs.length) p.set('tag', pairs.join(','));
  }
  if (query.updated_within != null) p.set('updated_within', String(query.updated_within));
  return p;
}

/**
 * The fallback transports. One stream (SSE) or poll loop per topic: an SSE
 * stream or a poll over several topics names each event under only one of
 * them, and the client must hand each event to every subscription it belongs
 * to. Over SSE each job list has its stream too; long-poll has no lists, so
 * their views stand in with a topic (views/joblist.js). Read-only: presence
 * needs the WebSocket, broadcasts go over HTTP.
 */
export class StreamTransport {
  constructor(client, kind) {
    this.kind = kind;
    this.client = client;
    this.ready = false;
    this.adopted = false;
    this.expiresAt = null;
    this._loops = new Map(); // topic (or listKey) -> AbortController
    this._healthy = new Set();
  }

  run() {
    return new Promise((resolve) => {
      this._resolve = resolve;
      this._stopped = false;
      this.expiresAt = (decodeToken(this.client._token) || {}).exp ?? null;
      // Lists first: on long-poll their stand-in topics join the topics below.
      for (const ls of [...this.client._lists.values()]) this.addList(ls);
      for (const ts of [...this.client._topics.values()]) this.add(ts);
      for (const ss of [...this.client._streams.values()]) this.addStream(ss);
      if (this._loops.size === 0) {
        // Nothing to stream yet: connected as soon as the server answers.
        this.client._serverReachable().then((ok) => {
          if (this._stopped || this.ready) return;
          if (!ok) return this._end({ error: new HeraldError('unreachable', 'server unreachable') });
          this.ready = true;
          this.client._established(this);
        });
      }
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
    this._drop(ts.topic);
  }

  _drop(key) {
    const ac = this._loops.get(key);
    if (ac) ac.abort();
    this._loops.delete(key);
    this._healthy.delete(key);
    this._checkReady();
  }

  addList(ls) {
    if (this._stopped || this._loops.has(listKey(ls))) return;
    const params = this.kind === 'sse' && !ls.emulated ? sseListParams(ls.query) : null;
    if (!params) {
      // Long-poll, or a query SSE cannot carry: the view follows a topic instead.
      ls.view._listEmulate();
      return;
    }
    ls.view._listClaimed();
    const ac = new AbortController();
    this._loops.set(listKey(ls), ac);
    this._sseListLoop(ls, params, ac.signal).catch((e) => this._end({ error: e }));
  }

  removeList(ls) {
    this._drop(listKey(ls));
  }

  // Job output streams: one SSE stream or poll loop each, from the offset
  // its views want (`streamSince`), read again from there on every start.

  addStream(ss) {
    const key = streamKey(ss);
    if (this._stopped || this._loops.has(key)) return;
    const ac = new AbortController();
    this._loops.set(key, ac);
    const loop = this.kind === 'sse' ? this._sseStreamLoop(ss, key, ac.signal) : this._streamPollLoop(ss, key, ac.signal);
    loop.catch((e) => this._end({ error: e }));
  }

  removeStream(ss) {
    this._drop(streamKey(ss));
  }

  restartStream(ss) {
    if (this._stopped) return;
    // The old loop is aborted: nothing it still reads reaches the views.
    this._drop(streamKey(ss));
    this.addStream(ss);
  }

  /** A refusal of a stream (its job is unknown or not ours): it ends; anything else ends this transport. */
  _streamFailed(ss, key, err) {
    if (err && err.status && [400, 403, 404, 422].includes(err.status)) {
      this._loops.delete(key);
      this._healthy.delete(key);
      this.client._streamFailed(ss.topic, err);
      this._checkReady();
      return;
    }
    this._end({ error: err });
  }

  /**
   * One read of a stream: `GET /v1/jobs/{id}/streams/{name}?offset&limit&wait`,
   * `{ offset, next, end, floor, truncated, chunks }`; null when aborted, or
   * when it failed (then `failed(err)` was called).
   */
  async _readStream(ss, key, offset, limit, wait, signal) {
    const c = this.client;
    const q = new URLSearchParams({ offset: String(offset), limit: String(limit) });
    if (wait) q.set('wait', String(wait));
    const ac2 = new AbortController();
    const abort = () => ac2.abort();
    signal.addEventListener('abort', abort, { once: true });
    const timer = setTimeout(abort, wait * 1000 + c.options.connectTimeoutMs);
    try {
      const res = await c._fetch(`${c.url}${streamPath(ss)}?${q}`, {
        headers: { Authorization: `Bearer ${c._token}` },
        cache: 'no-store',
        signal: ac2.signal,
      });
      if (!res.ok) {
        const err = await errorFromResponse(res);
        if (!signal.aborted) this._streamFailed(ss, key, err);
        return null;
      }
      const page = await res.json();
      return signal.aborted ? null : page;
    } catch (e) {
      if (!signal.aborted) this._streamFailed(ss, key, new HeraldError('disconnected', `stream read: ${e.message || e}`));
      return null;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', abort);
    }
  }

  /** The stream's end, for views that start there or wait to catch up with it (as a WebSocket ack would say). */
  async _streamEnd(ss, key, signal) {
    if (!streamNeedsEnd(ss)) return true;
    const page = await this._readStream(ss, key, streamSince(ss) ?? 0, 1, 0, signal);
    if (!page) return false;
    this.client._streamAcked(this, ss.topic, page.end);
    return true;
  }

  async _sseStreamLoop(ss, key, signal) {
    const c = this.client;
    if (!(await this._streamEnd(ss, key, signal))) return;
    const q = new URLSearchParams();
    const since = streamSince(ss);
    if (since != null) q.set('offset', String(since));
    return this._sseStream(key, `${streamPath(ss)}/sse?${q}`, signal, {
      message: (event, body) => {
        if (event === 'chunks') c._chunksIn(this, ss.topic, body.offset, body.chunks);
        else if (event === 'truncated') c._streamTruncated(this, ss.topic, body.from, body.to);
      },
      failed: (err) => this._streamFailed(ss, key, err),
    });
  }

  async _streamPollLoop(ss, key, signal) {
    const c = this.client;
    if (!(await this._streamEnd(ss, key, signal))) return;
    let offset = streamSince(ss) ?? 0;
    let first = true;
    while (!signal.aborted) {
      // `wait` only holds an answer that would be empty: catching up goes
      // page after page. The first read answers at once (the transport is up).
      const page = await this._readStream(ss, key, offset, 1000, first ? 0 : c.options.pollWaitSeconds, signal);
      first = false;
      if (!page) return;
      this._up(key);
      c._streamAcked(this, ss.topic, page.end);
      if (page.truncated) c._streamTruncated(this, ss.topic, offset, page.offset);
      if (page.chunks.length) c._chunksIn(this, ss.topic, page.offset, page.chunks);
      offset = Math.max(offset, page.next);
    }
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

  _sseLoop(ts, signal) {
    const since = this._startPosition(ts);
    const q = new URLSearchParams({ topic: ts.topic });
    if (since != null && !ts.room) q.set('since', String(since));
    if (ts.conflate === false && !ts.room) q.set('conflate', 'false');
    return this._sseStream(ts.topic, `/v1/sse?${q}`, signal, {
      message: (event, body) => this._sseMessage(ts, event, body),
      failed: (err) => this._failed(ts, err),
    });
  }

  /** A live job list over `/v1/sse/jobs`: every (re)connection starts with a
   * fresh snapshot, which replaces the list (the view works out what changed). */
  _sseListLoop(ls, params, signal) {
    const c = this.client;
    const key = listKey(ls);
    const gone = (err) => {
      this._loops.delete(key);
      this._healthy.delete(key);
      c._listFailed(ls.name, err);
      this._checkReady();
    };
    return this._sseStream(key, `/v1/sse/jobs?${params}`, signal, {
      message: (event, body) => {
        if (event === 'snapshot') c._listIn(this, ls.name, 'snapshot', body);
        else if (event === 'change') c._listIn(this, ls.name, 'change', body);
      },
      failed: (err) => {
        if (err.status === 404) {
          // A server from before live lists: the view makes do with the `jobs` topic.
          this._loops.delete(key);
          this._healthy.delete(key);
          ls.emulated = true;
          ls.view._listEmulate();
          this._checkReady();
        } else if (err.status && [400, 403, 413].includes(err.status)) gone(err);
        else this._end({ error: err });
      },
      goodbye: (g) => {
        if (g.reason !== 'list_too_large') return false;
        // The list outgrew the server's bound: it ends, the connection stays.
        gone(new HeraldError('list_too_large', 'the list grew past the server\'s bound (10,000 jobs)'));
        return true;
      },
    });
  }

  /**
   * Reads one SSE stream until it ends. `on.message(event, body)` gets each
   * message with a JSON body; `on.failed(err)` a refusal or a broken stream;
   * `on.goodbye(body)` may take a goodbye on itself (returns true), else the
   * end of the stream ends this transport and the client reconnects.
   */
  async _sseStream(key, path, signal, on) {
    const c = this.client;
    let res;
    const timeout = setTimeout(() => ac2.abort(), c.options.connectTimeoutMs);
    const ac2 = new AbortController();
    signal.addEventListener('abort', () => ac2.abort(), { once: true });
    try {
      res = await c._fetch(`${c.url}${path}`, {
        headers: { Authorization: `Bearer ${c._token}`, Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: ac2.signal,
      });
    } catch (e) {
      clearTimeout(timeout);
      if (signal.aborted) return;
      return on.failed(new HeraldError('disconnected', `SSE: ${e.message || e}`));
    }
    if (!res.ok) {
      clearTimeout(timeout);
      return on.failed(await errorFromResponse(res));
    }
    const type = res.headers.get('content-type') || '';
    if (!type.startsWith('text/event-stream') || !res.body) {
      clearTimeout(timeout);
      return on.failed(new HeraldError('bad_stream', 'SSE: not an event stream'));
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let lastRecv = Date.now();
    let first = true;
    let goodbye = null;
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
          this._up(key);
        }
        buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const m = parseSse(block);
          if (!m || signal.aborted) continue;
          if (m.event === 'goodbye') goodbye = m.body;
          else on.message(m.event, m.body);
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      return on.failed(new HeraldError('disconnected', `SSE: ${e.message || e}`));
    } finally {
      clearTimeout(timeout);
      clearInterval(watchdog);
    }
    if (signal.aborted) return;
    if (goodbye && on.goodbye && on.goodbye(goodbye)) return;
    const g = goodbye;
    const err = new HeraldError(g && g.reason === 'token_expired' ? 'token_expired' : 'disconnected', 'SSE stream ended');
    this._end({ error: err, immediate: !!(g && g.reconnect) });
  }

  _sseMessage(ts, event, body) {
    const c = this.client;
    if (event === 'resync') {
      const snap = body.snapshot ? body.snapshot[ts.topic] : null;
      c._resync(ts.topic, body.position, snap);
    } else if (event === 'broadcast') {
      c._broadcastIn({ ...body, topic: ts.topic });
    } else if (event === 'presence_diff') {
      c._presenceIn(ts.topic, null, body);
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

/** One SSE message block: `{ event, body }` with its JSON data, or null
 * (a comment, an `id:` alone, data that is not JSON). */
function parseSse(block) {
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
  if (data.length === 0) return null;
  try {
    return { event, body: JSON.parse(data.join('\n')) };
  } catch {
    return null;
  }
}
