// A job, its tasks and artifacts, kept up to date (`client.watchJob`).

import { View } from './view.js';
import { time } from '../util.js';

/** A job, its tasks and artifacts, kept up to date. See `HeraldClient.watchJob`. */
export class JobView extends View {
  constructor(client, id, opts = {}) {
    super();
    this.client = client;
    this.id = id;
    this.job = null;
    this.tasks = [];
    this.artifacts = [];
    this.events = [];
    this._tasks = new Map();
    this._historyLimit = opts.historyLimit ?? 500;
    this._buffer = [];
    this._sub = client.subscribe(`job:${id}`, {
      since: opts.history ? 0 : undefined,
      onEvent: (ev) => (this.loading ? this._buffer.push(ev) : this._apply(ev, true)),
      onResync: (r) => this._onResync(r),
      onError: (err) => this._fail(err),
    });
    this._load();
  }

  get value() {
    return this.job;
  }

  async _load() {
    try {
      const [job, tasks, artifacts] = await Promise.all([
        this.client.request('GET', `/v1/jobs/${encodeURIComponent(this.id)}`),
        this.client.request('GET', `/v1/jobs/${encodeURIComponent(this.id)}/tasks`),
        this.client.request('GET', `/v1/jobs/${encodeURIComponent(this.id)}/artifacts`),
      ]);
      if (this._closed) return;
      this._setJob(job);
      for (const t of tasks.tasks || []) this._setTask(t);
      for (const a of artifacts.artifacts || []) this._addArtifact(a);
      this._loaded();
    } catch (e) {
      this._fail(e);
    }
  }

  _fail(err) {
    this.error = err;
    this.loading = false;
    this._changed();
  }

  _setJob(job) {
    // Rows carry a version that grows with every change: an older copy
    // (a replayed event after a newer snapshot) never wins.
    if (!this.job || (job.version ?? 0) >= (this.job.version ?? 0)) this.job = job;
  }

  _setTask(task) {
    const old = this._tasks.get(task.id);
    if (!old || time(task.updated_at) >= time(old.updated_at)) this._tasks.set(task.id, task);
  }

  _addArtifact(a) {
    if (!this.artifacts.some((x) => x.id === a.id)) this.artifacts.push(a);
  }

  _sync() {
    this.tasks = [...this._tasks.values()];
  }

  _apply(ev, notify) {
    this.events.push(ev);
    if (this.events.length > this._historyLimit) this.events.splice(0, this.events.length - this._historyLimit);
    const d = ev.data || {};
    if (ev.type.startsWith('job.')) this._setJob(d);
    else if (ev.type.startsWith('task.')) this._setTask(d);
    else if (ev.type === 'artifact.created') this._addArtifact(d);
    this._sync();
    if (notify) this._changed();
  }

  async _onResync({ snapshot }) {
    // Events were lost to retention: take the snapshot (or reload) instead.
    if (snapshot && snapshot.job) {
      this.job = snapshot.job;
      this._tasks = new Map((snapshot.tasks || []).map((t) => [t.id, t]));
      this._sync();
      this._changed();
      try {
        const a = await this.client.request('GET', `/v1/jobs/${encodeURIComponent(this.id)}/artifacts`);
        for (const x of a.artifacts || []) this._addArtifact(x);
        this._changed();
      } catch (e) {
        this.client.emit('error', e);
      }
    } else {
      this.job = null;
      this._tasks.clear();
      this.loading = true;
      this._load();
    }
  }
}
