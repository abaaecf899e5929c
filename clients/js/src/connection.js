// The client's connection: one transport at a time carrying every
// subscription. Runs the first usable transport, reconnects with backoff,
// falls back to SSE and long-poll when the WebSocket is refused, and moves
// back to the WebSocket as soon as it works again; until the client closes.

import { HeraldError } from './errors.js';
import { backoffDelay } from './util.js';
import { makeTransport } from './transports/index.js';

const AUTH_ERRORS = new Set(['auth_failed', 'invalid_token', 'unauthorized', 'token_expired']);

export class Connection {
  /** `client` is the HeraldClient: its options, token, status and subscriptions. */
  constructor(client) {
    this.client = client;
    /** The transport carrying the subscriptions, or null between two. */
    this.transport = null;
    this._mode = null;
    this._attempt = 0;
    this._wasConnected = false;
    this._probe = null;
    this._adoptedRun = null;
    this._wsProbeTimer = null;
    this._retryTimer = null;
    this._wake = null;
  }

  /** Ends the transport (and a WebSocket probe) and every timer; the client is closed. */
  stop() {
    clearTimeout(this._wsProbeTimer);
    clearTimeout(this._retryTimer);
    if (this._probe) this._probe.stop();
    if (this.transport) this.transport.stop();
    this.transport = null;
    if (this._wake) this._wake();
  }

  /** Retries now instead of at the end of the backoff (the browser is back online, say). */
  nudge() {
    clearTimeout(this._retryTimer);
    if (this._wake) this._wake();
  }

  /** `transport` is up: the connection is (again) healthy. */
  established(transport) {
    if (this.transport !== transport) return;
    this._wasConnected = true;
    this._attempt = 0;
    this.client._setStatus('connected');
    this.client._scheduleRefresh(transport.expiresAt);
  }

  _offline() {
    return typeof navigator !== 'undefined' && navigator.onLine === false;
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
    if (kind === 'websocket' && !this.client._WebSocket) return false;
    return this.client.options.transports.includes(kind);
  }

  _firstMode() {
    return this.client.options.transports.find((k) => this._allowed(k)) || null;
  }

  _nextMode(kind) {
    const order = this.client.options.transports;
    for (let i = order.indexOf(kind) + 1; i < order.length; i++) if (this._allowed(order[i])) return order[i];
    return null;
  }

  /** Runs one transport after another until the client is closed. */
  async run() {
    const c = this.client;
    this._mode = this._firstMode();
    if (!this._mode) {
      c._setStatus('error', new HeraldError('no_transport', 'no usable transport (no WebSocket implementation?)'));
      return;
    }
    let authFailures = 0;
    let refusals = 0;
    while (!c._closed) {
      if (this._offline()) {
        c._setStatus('offline');
      } else {
        c._setStatus(this._wasConnected ? 'reconnecting' : 'connecting');
      }
      let outcome;
      try {
        await c.token();
        const t = makeTransport(this._mode, c);
        this.transport = t;
        outcome = await t.run();
      } catch (e) {
        outcome = { established: false, error: e };
      }
      if (c._closed) break;
      if (this.transport && !this.transport.adopted) this.transport = null;
      if (outcome.replaced) {
        // A WebSocket probe took over (see _scheduleWsProbe); it runs the show now.
        outcome = await this._adoptedRun;
        if (c._closed) break;
        this.transport = null;
      }
      if (outcome.established) this._attempt = 0;

      const err = outcome.error;
      if (err && AUTH_ERRORS.has(err.code)) {
        // A fresh token may cure it; a static one cannot.
        if (c._getToken && authFailures < 3) {
          authFailures += 1;
          try {
            await c._fetchToken();
            continue;
          } catch (e) {
            c._setStatus('error', e);
            c.emit('error', e);
          }
        } else {
          c._setStatus('error', err);
          c.emit('error', err);
        }
        // Wait for setToken() (or close) before trying again.
        await this._wait(c.options.backoff.maxMs);
        continue;
      }
      if (outcome.established) authFailures = 0;

      if (outcome.established) refusals = 0;
      if (!outcome.established && this._mode !== 'longpoll' && this._nextMode(this._mode)) {
        // Refused before it worked: blocked by a proxy, or the server is down?
        // Only a refusal while the server answers HTTP counts, and only twice
        // in a row: a server that is just coming back up must not push the
        // client onto a lesser transport.
        if (await c._serverReachable()) {
          refusals += 1;
          if (refusals >= 2) {
            const next = this._nextMode(this._mode);
            c.emit('fallback', { from: this._mode, to: next, reason: err });
            if (this._mode === 'websocket') this._scheduleWsProbe();
            this._mode = next;
            refusals = 0;
          }
          continue;
        }
        refusals = 0;
      }
      // The connection failed or dropped: with several nodes, try the next one.
      c._nextUrl();
      const delay = outcome.immediate ? 0 : backoffDelay(this._attempt++, c.options.backoff.initialMs, c.options.backoff.maxMs);
      c._setStatus(this._offline() ? 'offline' : this._wasConnected ? 'reconnecting' : 'connecting', err);
      await this._wait(outcome.retryAfterMs ?? delay);
    }
  }

  /** On a fallback transport: try the WebSocket again now and then, and move
   * back to it as soon as it works. */
  _scheduleWsProbe() {
    const c = this.client;
    clearTimeout(this._wsProbeTimer);
    if (c._closed || !this._allowed('websocket')) return;
    this._wsProbeTimer = setTimeout(async () => {
      if (c._closed) return;
      const current = this.transport;
      if (!current || current.kind === 'websocket') return;
      const probe = makeTransport('websocket', c);
      // A probe subscribes the topics at once (positions make the overlap
      // harmless) but takes the job lists and streams only once adopted, below.
      probe.probing = true;
      this._probe = probe;
      let settle;
      const ready = new Promise((r) => (settle = r));
      probe.onReady = () => settle(true);
      const run = probe.run();
      run.then(() => settle(false));
      const ok = await ready;
      this._probe = null;
      if (!ok || c._closed || this.transport !== current) {
        probe.stop();
        this._scheduleWsProbe();
        return;
      }
      // Switch: the WebSocket resubscribed every topic with its position;
      // dedupe by position hides the overlap with the old transport.
      probe.adopted = true;
      this._mode = 'websocket';
      this._adoptedRun = run;
      this.transport = probe;
      current.stop({ replaced: true });
      probe.probing = false;
      probe.listAll();
      probe.streamAll();
      c.emit('fallback', { from: current.kind, to: 'websocket' });
      this.established(probe);
    }, c.options.wsRetryMs);
  }
}
