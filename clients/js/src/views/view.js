// The base of the live views: a value that a REST snapshot fills and events
// keep up to date, with change listeners and async iteration.

import { Emitter, call } from '../emitter.js';

/**
 * A subclass gets the client in its constructor, defines `value`, and calls
 * `_changed()` when it changes. One that loads a snapshot keeps the events
 * that arrive meanwhile in `_buffer` and calls `_loaded()` when the snapshot
 * is in, which applies them with `_apply(ev, false)` and `_sync()`.
 */
export class View extends Emitter {
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
