// The worker side: reporting a job's progress over the HTTP API, and writing
// its output streams (StreamWriter, below).

import { HeraldError, errorFromResponse } from './errors.js';
import { STREAM_NAME, backoffDelay, baseUrl, randomId, sleep, utf8Length } from './util.js';

/** Largest chunk, as JSON (the server's bound). */
const CHUNK_MAX_BYTES = 64 * 1024;
/** Most chunks in one append (the server's bound). */
const APPEND_MAX_CHUNKS = 10000;
/** An append is sent once its chunks pass this many bytes, well within the server's 1 MiB body limit. */
const APPEND_MAX_BYTES = 512 * 1024;

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
    this.streamBatch = Math.min(APPEND_MAX_CHUNKS, Math.max(1, options.streamBatch ?? 1000));
    this.streamLingerMs = options.streamLingerMs ?? 100;
    this._queues = new Map(); // job id -> promise chain
    this._pending = new Map(); // job id -> { report, timer, waiters }
    this._writers = new Map(); // job id -> Set of open StreamWriters
  }

  async _tokenValue(fresh) {
    if (this._getToken && (fresh || !this._token)) this._token = await this._getToken();
    return this._token;
  }

  /** One request with retries. 4xx other than 408/429 are not retried. */
  send(method, path, body) {
    return this._sendText(method, path, body === undefined ? undefined : JSON.stringify(body));
  }

  /** `send` with the JSON body already serialized. */
  async _sendText(method, path, body) {
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
          body,
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

  /**
   * Runs `fn` after everything queued before for the same job, and after
   * the chunks its stream writers hold now (a task, an artifact or a status
   * change comes after the output written before it).
   */
  _enqueue(jobId, fn) {
    this._flushStreams(jobId);
    return this._chain(jobId, fn);
  }

  /** Runs `fn` after everything queued before for the same job. */
  _chain(jobId, fn) {
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
    // Progress does not split the batches of the job's streams.
    const done = this._chain(jobId, () => this.send('POST', this._path(jobId, '/progress'), p.report));
    done.then((r) => p.waiters.forEach((w) => w.resolve(r)), (e) => p.waiters.forEach((w) => w.reject(e)));
    return done.catch(() => {});
  }

  /** Sends coalesced progress and stream chunks now and waits for everything queued (for one job, or all). */
  async flush(jobId) {
    const ids = jobId ? [jobId] : [...new Set([...this._pending.keys(), ...this._queues.keys(), ...this._writers.keys()])];
    for (const id of ids) this._flushStreams(id);
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

  /**
   * A writer of the job's output stream `name` (log lines, LLM tokens, JSON
   * records; created by its first append). `write(chunk)` queues a chunk;
   * chunks travel in batches, one append each: once `batch` chunks (default
   * `streamBatch`, 1,000) or 512 KiB are queued, `lingerMs` (default
   * `streamLingerMs`, 100 ms) after the first, or at `flush()` / `close()`.
   */
  stream(jobId, name, opts = {}) {
    if (typeof jobId !== 'string' || !jobId) throw new HeraldError('invalid_option', 'stream: give a job id');
    if (typeof name !== 'string' || !STREAM_NAME.test(name)) {
      throw new HeraldError('invalid_option', `stream: invalid stream name ${JSON.stringify(name)} (1–64 of A-Z a-z 0-9 _ . -)`);
    }
    const w = new StreamWriter(this, jobId, name, opts);
    let set = this._writers.get(jobId);
    if (!set) this._writers.set(jobId, (set = new Set()));
    set.add(w);
    return w;
  }

  /** Sends the chunks the job's stream writers hold now (queued after what came before). */
  _flushStreams(jobId) {
    const set = this._writers.get(jobId);
    if (set) for (const w of set) w._send();
  }

  _forget(w) {
    const set = this._writers.get(w.jobId);
    if (!set) return;
    set.delete(w);
    if (!set.size) this._writers.delete(w.jobId);
  }
}

/** A batch of chunks on its way: one append, one promise for all its chunks. */
function newBatch() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A writer's caller may ignore what write() returns: its failure comes
  // back from flush() and close(), never as an unhandled rejection.
  promise.catch(() => {});
  return { json: [], bytes: 0, promise, resolve, reject, timer: null };
}

/**
 * Writes one job output stream through a ProgressReporter (from
 * `reporter.stream(jobId, name)`). Chunks keep their order; each append is
 * one request, retried under its own Idempotency-Key, in the job's queue of
 * reports, so every chunk is stored once and in order. When an append fails
 * for good, no later chunk is sent past the hole: `flush()`, `close()` and
 * every later `write()` throw its error.
 */
export class StreamWriter {
  constructor(reporter, jobId, name, opts = {}) {
    this.reporter = reporter;
    this.jobId = jobId;
    this.name = name;
    this.batch = Math.min(APPEND_MAX_CHUNKS, Math.max(1, opts.batch ?? reporter.streamBatch));
    this.lingerMs = opts.lingerMs ?? reporter.streamLingerMs;
    /** The error of the append that failed for good, or null. */
    this.failure = null;
    this.closed = false;
    /** Appends sent and answered. */
    this.appends = 0;
    this._path = `/v1/jobs/${encodeURIComponent(jobId)}/streams/${encodeURIComponent(name)}`;
    this._batch = null;
    this._last = Promise.resolve();
  }

  /**
   * Queues one chunk: any JSON value (a string for a line or a token, an
   * object for a record) of at most 64 KiB as JSON; throws at once for one
   * that is not, after close(), and after a failed append. Resolves with the
   * answer of the append it travels in, `{ stream, first_offset,
   * next_offset, floor }` (shared by its batch); need not be awaited.
   */
  write(chunk) {
    if (this.failure) throw this.failure;
    if (this.closed) throw new HeraldError('closed', `stream ${this.name} of job ${this.jobId} is closed`);
    const json = JSON.stringify(chunk);
    if (json === undefined) throw new HeraldError('invalid_chunk', 'a chunk is a JSON value (not undefined or a function)');
    const bytes = json.length * 3 <= CHUNK_MAX_BYTES ? json.length : utf8Length(json);
    if (bytes > CHUNK_MAX_BYTES) {
      throw new HeraldError('invalid_chunk', `a chunk is at most ${CHUNK_MAX_BYTES} bytes as JSON; this one is ${bytes}`);
    }
    let b = this._batch;
    if (b && b.bytes + bytes + 1 > APPEND_MAX_BYTES) {
      this._send();
      b = null;
    }
    if (!b) {
      b = this._batch = newBatch();
      b.timer = setTimeout(() => this._send(), this.lingerMs);
    }
    b.json.push(json);
    b.bytes += bytes + 1;
    const { promise } = b;
    if (b.json.length >= this.batch) this._send();
    return promise;
  }

  /** Sends the batch being filled (if any) now; resolves when every append so far was answered. */
  _send() {
    const b = this._batch;
    if (!b) return this._last;
    this._batch = null;
    clearTimeout(b.timer);
    const r = this.reporter;
    const body = `{"chunks":[${b.json.join(',')}]}`;
    const sent = r._chain(this.jobId, () => {
      // Never past a hole: after a failed append the later ones are not sent.
      if (this.failure) throw this.failure;
      return r._sendText('POST', this._path, body);
    });
    const settled = sent.then(
      (res) => {
        this.appends += 1;
        b.resolve(res);
      },
      (err) => {
        if (!this.failure) this.failure = err;
        b.reject(err);
      },
    );
    this._last = settled;
    return settled;
  }

  /** Sends what is queued now and waits until every append was answered; throws a failed append's error. */
  async flush() {
    await this._send();
    if (this.failure) throw this.failure;
  }

  /** Flushes; later writes throw `closed`. */
  async close() {
    this.closed = true;
    try {
      await this.flush();
    } finally {
      this.reporter._forget(this);
    }
  }
}
