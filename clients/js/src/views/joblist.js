// A live, filtered list of jobs (`client.jobList`). The server keeps the
// list (docs/PROTOCOL.md: `list` on the WebSocket, `/v1/sse/jobs`): a
// snapshot, then each job that enters it, changes in it or leaves it. Over
// the WebSocket a reconnect resumes with `have` (what the view holds), so
// only the difference comes back; over SSE each reconnect brings a fresh
// snapshot and the view works out what changed itself. Long-poll has no
// lists: there the view stands in with a `jobs` topic and a REST page,
// filtering with the server's rules — best-effort.

import { View } from './view.js';
import { HeraldError } from '../errors.js';
import { time } from '../util.js';

const QUERY_FIELDS = ['status', 'kind', 'owner', 'tag', 'updatedWithin'];
const FINISHED = new Set(['completed', 'failed', 'cancelled']);
/** The long-poll stand-in reads at most this many jobs over REST per load. */
const STAND_IN_READ_MAX = 10000;

/**
 * A query as the protocol spells it: `updatedWithin` becomes
 * `updated_within`, a status may be one or a list (or `'a,b'`), empty
 * fields are left out. Unknown fields throw `invalid_query`.
 */
export function wireQuery(query = {}) {
  if (query === null || typeof query !== 'object' || Array.isArray(query)) {
    throw new HeraldError('invalid_query', 'jobList: the query must be an object');
  }
  const out = {};
  for (const [k, v] of Object.entries(query)) {
    if (!QUERY_FIELDS.includes(k)) {
      const hint = k === 'updated_within' ? ' (spelt updatedWithin here)' : '';
      throw new HeraldError('invalid_query', `jobList: unknown query field ${k}${hint}; known: ${QUERY_FIELDS.join(', ')}`);
    }
    if (v == null || v === '') continue;
    if (k === 'status') {
      const list = (Array.isArray(v) ? v : String(v).split(',')).map((s) => String(s).trim()).filter(Boolean);
      if (list.length) out.status = list;
    } else if (k === 'tag') {
      if (typeof v !== 'object' || Array.isArray(v)) throw new HeraldError('invalid_query', 'jobList: tag must be an object');
      if (Object.keys(v).length) out.tag = { ...v };
    } else if (k === 'updatedWithin') {
      out.updated_within = v;
    } else {
      out[k] = String(v);
    }
  }
  return out;
}

/** A metadata value as the text a tag compares with (strings, numbers and booleans; else nothing). */
function tagText(v) {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return null;
}

/** Whether `job` belongs to a list of `query` (wire form) at `now`: the server's rules, for the long-poll stand-in. */
export function matchesQuery(query, job, now = Date.now()) {
  if (query.status && !query.status.includes(job.status)) return false;
  if (query.kind != null && job.kind !== query.kind) return false;
  if (query.owner != null && job.owner !== query.owner) return false;
  if (query.updated_within != null && time(job.updated_at) < now - query.updated_within * 1000) return false;
  for (const [k, want] of Object.entries(query.tag || {})) {
    const meta = job.metadata && typeof job.metadata === 'object' ? job.metadata : {};
    if (tagText(meta[k]) !== String(want)) return false;
  }
  return true;
}

/** A live, filtered list of jobs. See `HeraldClient.jobList`. */
export class JobListView extends View {
  /**
   * opts.max: `jobs` leaves out the oldest finished jobs past this many
   * (default: none left out). opts.limit: the long-poll stand-in's REST
   * page, at most this many jobs (default 10,000). opts.standIn: use the
   * stand-in on every transport.
   */
  constructor(client, query = {}, opts = {}) {
    super();
    this.client = client;
    this.query = { ...query };
    this._wire = wireQuery(query);
    this.name = client._listName();
    /** The members, most recently updated first. */
    this.jobs = [];
    this._max = opts.max ?? Infinity;
    this._limit = opts.limit ?? STAND_IN_READ_MAX;
    this._jobs = new Map(); // id -> job: every member
    this._times = new Map(); // id -> updated_at in ms, the sort key
    this._sorted = []; // every member, in the order of `jobs`
    this._emu = null; // the long-poll stand-in, while there is one
    // opts.standIn: follow the topic over a REST page from the start (watchJobs
    // of a whole tenant, where a server-side list would carry every job).
    this._ls = { name: this.name, query: this._wire, view: this, emulated: !!opts.standIn };
    client._addList(this._ls);
  }

  get value() {
    return this.jobs;
  }

  close() {
    if (this._closed) return;
    this._stopEmulation();
    this.client._removeList(this._ls);
    super.close();
  }

  // ------------------------------------------------------------ the order of `jobs`

  /** Whether member `a` comes before `b`: more recently updated first, then by id. */
  _before(a, b) {
    const ta = this._times.get(a.id);
    const tb = this._times.get(b.id);
    return ta > tb || (ta === tb && a.id < b.id);
  }

  /** Adds or replaces a member; `jobs` stays sorted (a new array, for React's sake). */
  _put(job) {
    this._jobs.set(job.id, job);
    this._times.set(job.id, time(job.updated_at));
    const list = this._sorted.filter((j) => j.id !== job.id);
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this._before(list[mid], job)) lo = mid + 1;
      else hi = mid;
    }
    list.splice(lo, 0, job);
    this._sorted = list;
  }

  _take(id) {
    this._jobs.delete(id);
    this._times.delete(id);
    this._sorted = this._sorted.filter((j) => j.id !== id);
  }

  /** `jobs` from the members: past `max`, the oldest finished ones are left out. */
  _publish() {
    let list = this._sorted;
    if (list.length > this._max) {
      const drop = new Set(list.filter((j) => FINISHED.has(j.status)).slice(-(list.length - this._max)).map((j) => j.id));
      list = list.filter((j) => !drop.has(j.id));
      // The stand-in forgets them too, so that a long watch of the `jobs`
      // topic stays bounded (a live list has the server's bound).
      if (this._emu) for (const id of drop) this._take(id);
    }
    this.jobs = list;
  }

  // ------------------------------------------------------------ from the transports (client._listIn)

  /** What the view holds, for `have` when the WebSocket lists again; null before the first snapshot. */
  _listHave() {
    if (this.loading) return null;
    const have = {};
    for (const [id, job] of this._jobs) have[id] = job.version ?? 0;
    return have;
  }

  /** A transport that has lists now speaks for this one: the stand-in ends. */
  _listClaimed() {
    this._stopEmulation();
  }

  /**
   * The list as it is now. The first one just fills the view; a later one
   * (SSE reconnects, a WebSocket resume too large for `have`) replaces it,
   * with `enter` / `update` / `leave` for what differs.
   */
  _listSnapshot(jobs) {
    const first = this.loading;
    const next = new Map(jobs.map((j) => [j.id, j]));
    const events = [];
    if (!first) {
      for (const [id, old] of this._jobs) if (!next.has(id)) events.push(['leave', { id, job: null, previous: old }]);
      for (const job of next.values()) {
        const old = this._jobs.get(job.id);
        if (!old) events.push(['enter', job]);
        else if ((job.version ?? 0) !== (old.version ?? 0)) events.push(['update', job]);
      }
    }
    this._jobs = next;
    this._times = new Map(jobs.map((j) => [j.id, time(j.updated_at)]));
    this._sorted = [...next.values()].sort((a, b) => (this._before(a, b) ? -1 : this._before(b, a) ? 1 : 0));
    this.loading = false;
    this.error = null;
    this._publish();
    for (const [type, arg] of events) this.emit(type, arg);
    if (first || events.length) this._changed();
  }

  /** One `list_change`: `{ change: 'enter' | 'update' | 'leave', job?, id? }`. */
  _listChange(msg) {
    const job = msg.job || null;
    const id = msg.id ?? (job && job.id);
    if (id == null) return;
    const old = this._jobs.get(id);
    let type;
    let arg;
    if (msg.change === 'leave') {
      if (!old) return;
      this._take(id);
      // `job` is the job as it is now (absent when it merely aged out of updatedWithin).
      type = 'leave';
      arg = { id, job, previous: old };
    } else if (job) {
      // Versions only grow: an older or equal copy is news already applied.
      if (old && (job.version ?? 0) <= (old.version ?? 0)) return;
      this._put(job);
      type = old ? 'update' : 'enter';
      arg = job;
    } else {
      return;
    }
    this._publish();
    this.emit(type, arg);
    this._changed();
  }

  _listFailed(err) {
    this._fail(err);
  }

  _fail(err) {
    this._stopEmulation();
    this.error = err;
    this.loading = false;
    this._changed();
  }

  // ------------------------------------------------------------ the long-poll stand-in

  /**
   * No lists on this transport: follow the `jobs` topic (or the owner's)
   * over a REST page instead, as watchJobs did before lists, deciding
   * membership with the server's rules. Best-effort: `updatedWithin` ages
   * by this machine's clock, and the page holds at most `limit` jobs.
   */
  async _listEmulate() {
    if (this._emu || this._closed) return;
    const emu = { sub: null, query: this._wire, loading: true, buffer: [], seen: new Map(), timer: null };
    this._emu = emu;
    try {
      await this.client.token(); // to know who a customer is
    } catch (e) {
      if (this._emu === emu) this._fail(e);
      return;
    }
    if (this._emu !== emu) return;
    const me = this.client.identity || {};
    // Customers list their own jobs whatever `owner` says, as on the server.
    if (me.role === 'customer' && me.sub) emu.query = { ...this._wire, owner: me.sub };
    const topic = emu.query.owner != null ? `jobs:owner:${emu.query.owner}` : 'jobs';
    emu.sub = this.client.subscribe(topic, {
      onEvent: (ev) => {
        if (this._emu !== emu || !ev.type.startsWith('job.')) return; // tasks and artifacts do not move a job in a list
        if (emu.loading) emu.buffer.push(ev.data);
        else this._emuJob(emu, ev.data);
      },
      onResync: () => this._emuLoad(emu),
      onError: (err) => this._emu === emu && this._fail(err),
    });
    const w = emu.query.updated_within;
    if (w) emu.timer = setInterval(() => this._emuAge(emu), Math.min(60000, Math.max(1000, w * 100)));
    await this._emuLoad(emu);
  }

  _stopEmulation() {
    const emu = this._emu;
    if (!emu) return;
    this._emu = null;
    clearInterval(emu.timer);
    if (emu.sub) emu.sub.unsubscribe();
  }

  async _emuLoad(emu) {
    emu.loading = true;
    let jobs;
    try {
      jobs = await this._readMatching(emu.query);
    } catch (e) {
      if (this._emu === emu) this._fail(e);
      return;
    }
    if (this._emu !== emu) return;
    const buffered = emu.buffer;
    emu.buffer = [];
    for (const j of jobs) emu.seen.set(j.id, j.version ?? 0);
    this._listSnapshot(jobs);
    emu.loading = false;
    // Events that came while the page loaded may be older than it: for jobs
    // on the page the version decides; the others are read again, as an old
    // event could otherwise bring back a job that has since left.
    const again = new Set();
    for (const job of buffered) {
      if (emu.seen.has(job.id)) this._emuJob(emu, job);
      else again.add(job.id);
    }
    for (const id of again) {
      try {
        const job = await this.client.request('GET', `/v1/jobs/${encodeURIComponent(id)}`);
        if (this._emu !== emu) return;
        this._emuJob(emu, job);
      } catch {
        // Gone, or not ours to read: it is not in the list either way.
      }
    }
  }

  /** The jobs matching `query` over `GET /v1/jobs` (one status per request; tags filtered here). */
  async _readMatching(query) {
    const found = new Map();
    let read = 0;
    const after = query.updated_within != null ? new Date(Date.now() - query.updated_within * 1000).toISOString() : null;
    for (const status of query.status || [null]) {
      let cursor = null;
      do {
        const q = new URLSearchParams({ limit: String(Math.max(1, Math.min(500, this._limit - found.size))) });
        if (status) q.set('status', status);
        if (query.kind != null) q.set('kind', query.kind);
        if (query.owner != null) q.set('owner', query.owner);
        if (after) q.set('updated_after', after);
        if (cursor) q.set('cursor', cursor);
        const page = await this.client.request('GET', `/v1/jobs?${q}`);
        for (const j of page.jobs || []) if (found.size < this._limit && matchesQuery(query, j)) found.set(j.id, j);
        read += (page.jobs || []).length;
        cursor = page.next_cursor;
      } while (cursor && found.size < this._limit && read < STAND_IN_READ_MAX);
    }
    return [...found.values()];
  }

  /** A job's new state from an event or a read: enters, updates or leaves the list. */
  _emuJob(emu, job) {
    if (!job || job.id == null) return;
    const v = job.version ?? 0;
    if (emu.seen.has(job.id) && v <= emu.seen.get(job.id)) return;
    if (emu.seen.size > 50000) emu.seen = new Map([...this._jobs].map(([id, j]) => [id, j.version ?? 0]));
    emu.seen.set(job.id, v);
    const held = this._jobs.has(job.id);
    if (matchesQuery(emu.query, job)) this._listChange({ change: held ? 'update' : 'enter', job });
    else if (held) this._listChange({ change: 'leave', id: job.id, job });
  }

  /** Members older than `updatedWithin` leave, as the server would make them (with `id` only). */
  _emuAge(emu) {
    if (this._emu !== emu || emu.loading) return;
    const oldest = Date.now() - emu.query.updated_within * 1000;
    const old = [...this._times].filter(([, t]) => t < oldest).map(([id]) => id);
    for (const id of old) this._listChange({ change: 'leave', id });
  }
}
