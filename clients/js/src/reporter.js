// The worker side: reporting a job's progress over the HTTP API.

import { HeraldError, errorFromResponse } from './errors.js';
import { backoffDelay, baseUrl, randomId, sleep } from './util.js';

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
