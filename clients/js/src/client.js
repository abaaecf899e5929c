// The client: one connection (see connection.js) carrying every
// subscription, with resume cursors, token refresh, the HTTP API, and the
// live views (views/) opened over it.

import { HeraldError, errorFromResponse } from './errors.js';
import { Emitter, call } from './emitter.js';
import { baseUrl, decodeToken, identityOf, isRoom, roomTopic } from './util.js';
import { TRANSPORTS } from './transports/index.js';
import { Connection } from './connection.js';
import { JobView } from './views/job.js';
import { JobsView } from './views/jobs.js';
import { JobListView } from './views/joblist.js';
import { NotificationsView } from './views/notifications.js';
import { PresenceView, applyPresenceDiff, clonePresence } from './views/presence.js';
import { JobStreamView } from './views/stream.js';

/** Connection states, in the order a healthy client goes through them. */
export const STATUSES = Object.freeze(['connecting', 'connected', 'reconnecting', 'offline', 'error']);

/**
 * A Herald client (`createClient(options)` makes one). Nothing connects
 * until the first subscription (or `connect()`); then one connection carries
 * every subscription.
 */
export class HeraldClient extends Emitter {
  constructor(options = {}) {
    super();
    if (!options.token && !options.getToken) {
      throw new HeraldError('invalid_option', 'createClient: give `token` or `getToken`');
    }
    // One server, or the nodes of a cluster: a connection that fails or drops
    // tries the next one (positions are the cluster's, so resume works anywhere).
    const urls = Array.isArray(options.url) ? options.url : [options.url];
    if (urls.length === 0) throw new HeraldError('invalid_option', 'createClient: `url` is an empty list');
    this.urls = urls.map((u) => baseUrl(u));
    this._urlIndex = 0;
    this.options = {
      transports: options.transports || TRANSPORTS,
      heartbeatMs: options.heartbeatMs,
      compact: options.compact ?? true,
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
    this._lists = new Map(); // list name -> ListState (live job lists, views/joblist.js)
    this._listSeq = 0;
    this._streams = new Map(); // stream topic -> StreamState: one subscription for every view of a job output stream
    this._status = 'connecting';
    this._connection = new Connection(this);
    this._started = false;
    this._closed = false;
    this._headHint = null; // the highest position seen on any topic: a valid cursor for any topic
    this._refreshTimer = null;
    this.lastEventAt = null;
    this.identity = this._token ? identityOf(this._token) : null;
    this._onOnline = () => this._connection.nudge();
    this._onOffline = () => this._setStatus('offline');
    if (typeof window !== 'undefined' && window.addEventListener) {
      window.addEventListener('online', this._onOnline);
      window.addEventListener('offline', this._onOffline);
    }
  }

  /** The server (node) in use now. */
  get url() {
    return this.urls[this._urlIndex];
  }

  /** Moves on to the next node of the list, if there is more than one. */
  _nextUrl() {
    if (this.urls.length > 1) this._urlIndex = (this._urlIndex + 1) % this.urls.length;
  }

  /** `connecting | connected | reconnecting | offline | error` */
  get status() {
    return this._status;
  }

  /** The transport in use: `websocket`, `sse`, `longpoll`, or null. */
  get transport() {
    return this._transport ? this._transport.kind : null;
  }

  /** The transport object carrying the subscriptions, or null. */
  get _transport() {
    return this._connection.transport;
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
      this._connection.run();
    }
    return this;
  }

  /** Closes the connection and ends every subscription. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._refreshTimer);
    this._connection.stop();
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
        const err = new HeraldError('forbidden', `subscription to ${topic} ended: the new token does not allow it`);
        if (this._streams.has(topic)) this._streamFailed(topic, err);
        else this._topicFailed(topic, err);
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

  /** Tries to reconnect now rather than at the end of the backoff ("retry now"). */
  retryNow() {
    this._connection.nudge();
  }

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

  /** Whether the server answers HTTP: tells a refused transport from a server that is down. */
  async _serverReachable() {
    try {
      const res = await this._fetch(this.url + '/healthz', { cache: 'no-store' });
      return res.ok;
    } catch {
      return false;
    }
  }

  // ------------------------------------------------------------ subscriptions

  /**
   * Subscribes to a topic (`job:<id>`, `jobs`, `jobs:owner:<sub>`,
   * `user:<sub>`, `room:<name>`). Each event reaches `onEvent` once, in
   * position order, across reconnects and transport changes.
   *
   * handlers: { since?, conflate?, onEvent?, onResync?, onError?, onBroadcast?, onPresence? }
   *
   * `conflate: false` asks the server for every progress tick even when the
   * connection is behind (docs/PROTOCOL.md, "Conflation when behind"); it
   * holds for the topic as long as this client is subscribed to it.
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
        conflate: handlers.conflate === false ? false : undefined,
      };
      this._topics.set(topic, ts);
      if (this._transport) this._transport.add(ts);
    } else if (handlers.conflate === false && ts.conflate !== false && !ts.room) {
      // The topic is held with conflation: subscribe again without it (from
      // the topic's position, so nothing is lost or repeated).
      ts.conflate = false;
      if (this._transport) {
        this._transport.remove(ts);
        this._transport.add(ts);
      }
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
    const topic = roomTopic(room);
    const t = this._transport;
    if (t && t.kind === 'websocket' && t.ready) {
      return t.request({ op: 'pub', topic, event, data });
    }
    // Without a WebSocket, the HTTP endpoint (not open to customers).
    return this.request('POST', '/v1/broadcast', { topic, event, payload: data });
  }

  /** Calls `fn({event, data, from, topic})` for each broadcast in a room. */
  onBroadcast(room, fn) {
    const topic = roomTopic(room);
    const sub = this.subscribe(topic, { onBroadcast: fn });
    return () => sub.unsubscribe();
  }

  // ------------------------------------------------------------ live views

  /**
   * Watches one job: a REST snapshot of the job, its tasks and artifacts,
   * then every event applied as it comes. `{ history: true }` also replays
   * the job's past events into `view.events` (a timeline).
   */
  watchJob(id, opts) {
    return new JobView(this, id, opts);
  }

  /**
   * A live, filtered list of jobs: `query` is `{ status, kind, owner, tag,
   * updatedWithin }` (all optional, all must match). The server keeps it:
   * a snapshot, then each job that enters, changes or leaves.
   * opts: { max?, limit? } (see views/joblist.js).
   */
  jobList(query, opts) {
    return new JobListView(this, query, opts);
  }

  /**
   * Watches a list of jobs: the tenant's, or one owner's (`{ owner }`),
   * narrowed by the `jobList` query fields. A live list when the server can
   * hold it; past the server's bound, the `jobs` topic over a REST page as
   * before lists existed (`limit`, default 200). `view.jobs` leaves out the
   * oldest finished jobs past `max` (default 500).
   */
  watchJobs(opts) {
    return new JobsView(this, opts);
  }

  /** My notifications and their unread count, with markRead / markAllRead. */
  notifications(opts) {
    return new NotificationsView(this, opts);
  }

  /** Joins a room's presence (with `meta`, this connection shows up in it). */
  presence(room, meta) {
    return new PresenceView(this, room, meta);
  }

  /**
   * Follows a job's output stream `name` (log lines, LLM tokens, JSON
   * records): the chunks from `offset` (default 0; `null`: from the end),
   * then live, each once and in order across reconnects and transports.
   * `view.chunks` keeps the newest `max` (default 5,000).
   */
  jobStream(jobId, name, opts) {
    return new JobStreamView(this, jobId, name, opts);
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

  // ------------------------------------------------------------ live job lists (used by views/joblist.js and transports)

  /** A fresh list name, unique within this client. */
  _listName() {
    this._listSeq += 1;
    return `l${this._listSeq}`;
  }

  /** Holds a list (`{ name, query, view }`) on every connection from now on. */
  _addList(ls) {
    if (this._closed) throw new HeraldError('closed', 'this client was closed');
    this._lists.set(ls.name, ls);
    if (this._transport) this._transport.addList(ls);
    this.connect();
  }

  _removeList(ls) {
    if (this._lists.get(ls.name) !== ls) return;
    this._lists.delete(ls.name);
    if (this._transport) this._transport.removeList(ls);
  }

  /**
   * A list's `snapshot` or `change` from `transport`. Only the transport
   * carrying the subscriptions is heard: during a switch the old one may
   * still deliver, but the new one resumed from what the view held when it
   * took the list over, so the old one's news would only be applied twice
   * or, worse, out of order.
   */
  _listIn(transport, name, kind, msg) {
    if (transport !== this._transport) return;
    const ls = this._lists.get(name);
    this.lastEventAt = Date.now();
    if (msg.position != null) this._headHint = Math.max(this._headHint ?? 0, msg.position);
    if (!ls) return;
    if (kind === 'snapshot') ls.view._listSnapshot(msg.jobs || []);
    else ls.view._listChange(msg);
  }

  _listAcked(name, ack) {
    if (ack && ack.position != null) this._headHint = Math.max(this._headHint ?? 0, ack.position);
  }

  /** The server ended a list (invalid_query, list_too_large, ...). */
  _listFailed(name, err) {
    const ls = this._lists.get(name);
    if (!ls) return;
    this._lists.delete(name);
    if (this._transport) this._transport.removeList(ls, true);
    ls.view._listFailed(err);
  }

  // ------------------------------------------------------------ job output streams (used by views/stream.js and transports)
  //
  // A stream's resume cursor is an offset (chunks counted from 0), not a log
  // position: streams are kept apart from `_topics`, whose dedupe by
  // position would mangle them. One StreamState per stream, `{ topic, jobId,
  // name, views, restarting }`, subscribed from the lowest `end` of its
  // views; each view cuts what it holds already.

  /** Holds `view`'s stream on every connection from now on. */
  _addStreamView(view) {
    if (this._closed) throw new HeraldError('closed', 'this client was closed');
    let ss = this._streams.get(view.topic);
    if (!ss) {
      ss = { topic: view.topic, jobId: view.jobId, name: view.name, views: new Set([view]), restarting: false };
      this._streams.set(ss.topic, ss);
      if (this._transport) this._transport.addStream(ss);
    } else {
      // A second view of a stream already followed: unless it starts at or
      // past every other view, subscribe again from its offset (the others
      // cut the repeats).
      const ends = [...ss.views].map((v) => v.end);
      ss.views.add(view);
      const ahead = view.end != null && ends.every((e) => e != null && view.end >= e);
      if (!ahead) this._restartStream(ss);
    }
    this.connect();
  }

  _removeStreamView(view) {
    const ss = this._streams.get(view.topic);
    if (!ss || !ss.views.delete(view) || ss.views.size) return;
    this._streams.delete(ss.topic);
    if (this._transport) this._transport.removeStream(ss);
  }

  /** Subscribes to the stream again, from its views' lowest offset. */
  _restartStream(ss) {
    if (this._streams.get(ss.topic) !== ss) return;
    const t = this._transport;
    if (t) t.restartStream(ss);
  }

  /** The subscription of a stream is in place (a WebSocket ack, a page read); `end` is the stream's end now. */
  _streamAcked(transport, topic, end) {
    if (transport !== this._transport) return;
    const ss = this._streams.get(topic);
    if (!ss) return;
    ss.restarting = false;
    for (const v of [...ss.views]) v._acked(end);
  }

  /** Chunks of a stream from `offset` on, from `transport`. */
  _chunksIn(transport, topic, offset, chunks) {
    // Only the transport carrying the subscriptions: during a switch the
    // old one may still deliver what the new one resumes from.
    if (transport !== this._transport) return;
    this.lastEventAt = Date.now();
    const ss = this._streams.get(topic);
    if (!ss || typeof offset !== 'number') return;
    let gap = false;
    for (const v of [...ss.views]) if (v._chunksIn(offset, chunks) === 'gap') gap = true;
    // A batch past what a view holds: never sent by the server, but if it
    // were, reading again from the view's offset fills the hole.
    if (gap && !ss.restarting) this._restartStream(ss);
  }

  _streamTruncated(transport, topic, from, to) {
    if (transport !== this._transport) return;
    const ss = this._streams.get(topic);
    if (ss) for (const v of [...ss.views]) v._truncatedIn(from, to);
  }

  /** The server refused or ended a stream's subscription (not_found, forbidden, ...). */
  _streamFailed(topic, err) {
    const ss = this._streams.get(topic);
    if (!ss) return;
    this._streams.delete(topic);
    if (this._transport) this._transport.removeStream(ss, true);
    for (const v of [...ss.views]) v._failed(err);
  }

  // ------------------------------------------------------------ connection (see connection.js)

  _setStatus(status, detail) {
    if (this._status === status) return;
    this._status = status;
    this.emit('status', status, detail);
  }

  /** A transport is up (ignored unless it is the one carrying the subscriptions). */
  _established(transport) {
    this._connection.established(transport);
  }
}
