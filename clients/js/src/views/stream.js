// A job's output stream, live (`client.jobStream`): the chunks a worker
// appends — log lines, LLM tokens, JSON records — from an offset on, then as
// they come. Streams count their chunks from 0 (offsets), not log positions:
// the view holds `end`, the next offset it wants, and every (re)subscription
// asks for exactly that, over the WebSocket (`sub` with `since`), SSE
// (`/v1/jobs/{id}/streams/{name}/sse?offset=`) or long-poll (`?offset=&wait=`).
// A batch that starts below `end` is cut, one that starts past it (a gap,
// which the server never sends) makes the client subscribe again from `end`.
// Nothing is missed and nothing arrives twice.

import { View } from './view.js';
import { HeraldError } from '../errors.js';
import { STREAM_NAME } from '../util.js';
/** Chunks a view keeps in memory by default (the newest). */
export const STREAM_VIEW_MAX = 5000;

/** The topic of a job's stream on the native protocol. */
export const streamTopic = (jobId, name) => `stream:${jobId}:${name}`;

/** A job's output stream, live. See `HeraldClient.jobStream`. */
export class JobStreamView extends View {
  /**
   * opts.offset: the first offset wanted (default 0, the whole stream as far
   * as the server keeps it; `null`: from the stream's end, new chunks only).
   * opts.max: `chunks` keeps at most this many, the newest (default 5,000).
   */
  constructor(client, jobId, name, opts = {}) {
    super();
    if (typeof jobId !== 'string' || !jobId) throw new HeraldError('invalid_field', 'jobStream: give a job id');
    if (typeof name !== 'string' || !STREAM_NAME.test(name)) {
      throw new HeraldError('invalid_field', `jobStream: invalid stream name ${JSON.stringify(name)} (1–64 of A-Z a-z 0-9 _ . -)`);
    }
    const offset = opts.offset === undefined ? 0 : opts.offset;
    if (offset !== null && !(Number.isSafeInteger(offset) && offset >= 0)) {
      throw new HeraldError('invalid_field', 'jobStream: offset must be a non-negative integer, or null for the end');
    }
    const max = opts.max ?? STREAM_VIEW_MAX;
    if (!(max >= 1)) throw new HeraldError('invalid_field', 'jobStream: max must be at least 1');
    this.client = client;
    this.jobId = jobId;
    this.name = name;
    this.topic = streamTopic(jobId, name);
    /** The newest chunks received, at most `max`, oldest first: `chunks[i]` is at offset `offset + i`. A new array on every change. */
    this.chunks = [];
    /** Offset of `chunks[0]` (null until known, with `offset: null`). */
    this.offset = offset;
    /** The next offset wanted: `offset + chunks.length` (null until known). */
    this.end = offset;
    /** `{ from, to }` of the last truncation seen (chunks the server no longer had), or null. */
    this.truncated = null;
    this._max = max;
    this._target = null; // the stream's end when first subscribed: `loading` until the view reaches it
    client._addStreamView(this);
  }

  get value() {
    return this.chunks;
  }

  close() {
    if (this._closed) return;
    this.client._removeStreamView(this);
    super.close();
  }

  // ------------------------------------------------------------ from the client (one subscription feeds every view of the stream)

  /** The subscription is in place; `end` is the stream's end now. */
  _acked(end) {
    if (this._closed || end == null) return;
    if (this.end == null) this.offset = this.end = end; // `offset: null`: from here on
    if (this._target == null) this._target = end;
    if (this.loading && this.end >= this._target) {
      this.loading = false;
      this._changed();
    }
  }

  /** Chunks from `offset` on. Returns 'gap' when they start past `end` (not applied). */
  _chunksIn(offset, chunks) {
    if (this._closed || this.end == null || !Array.isArray(chunks)) return undefined;
    if (offset > this.end) return 'gap';
    const skip = this.end - offset;
    if (skip >= chunks.length) return undefined; // held already
    const fresh = skip > 0 ? chunks.slice(skip) : chunks;
    const first = this.end;
    this.end += fresh.length;
    let all = this.chunks.length ? this.chunks.concat(fresh) : fresh.slice();
    if (all.length > this._max) all = all.slice(all.length - this._max);
    this.chunks = all;
    this.offset = this.end - all.length;
    if (this.loading && this._target != null && this.end >= this._target) this.loading = false;
    this.emit('chunks', fresh, first);
    this._changed();
    return undefined;
  }

  /** Chunks `from`–`to` are gone (retention, the stream's size bound): the view goes on at `to`. */
  _truncatedIn(from, to) {
    if (this._closed || this.end == null || !(to > this.end)) return;
    // `chunks` stays one run of offsets: what was held before the hole goes too.
    this.truncated = { from: this.end, to };
    this.chunks = [];
    this.offset = this.end = to;
    if (this.loading && this._target != null && this.end >= this._target) this.loading = false;
    this.emit('truncated', { from, to });
    this._changed();
  }

  _failed(err) {
    if (this._closed) return;
    this.error = err;
    this.loading = false;
    this._changed();
  }
}

/**
 * Where a stream's subscription starts: the lowest offset its views want,
 * or null (from the stream's end) when none of them knows one yet.
 */
export function streamSince(ss) {
  let since = null;
  for (const v of ss.views) if (v.end != null && (since == null || v.end < since)) since = v.end;
  return since;
}

/** Whether a view of the stream still needs the stream's end (to start at it, or to know when it has caught up). */
export const streamNeedsEnd = (ss) => [...ss.views].some((v) => v.end == null || v._target == null);
