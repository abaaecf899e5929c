// A list of jobs, the tenant's or one owner's, kept up to date (`client.watchJobs`).

import { View } from './view.js';
import { time } from '../util.js';

/** A list of jobs kept up to date. See `HeraldClient.watchJobs`. */
export class JobsView extends View {
  constructor(client, opts = {}) {
    super();
    this.client = client;
    this.opts = opts;
    this._jobs = new Map();
    this._buffer = [];
    this._max = opts.max ?? 500;
    this.jobs = [];
    const topic = opts.owner ? `jobs:owner:${opts.owner}` : 'jobs';
    this.topic = topic;
    this._sub = client.subscribe(topic, {
      onEvent: (ev) => (this.loading ? this._buffer.push(ev) : this._apply(ev, true)),
      onResync: ({ snapshot }) => {
        if (snapshot && snapshot.jobs) {
          this._jobs = new Map(snapshot.jobs.map((j) => [j.id, j]));
          this._sync();
          this._changed();
        } else this._load();
      },
      onError: (err) => {
        this.error = err;
        this.loading = false;
        this._changed();
      },
    });
    this._load();
  }

  get value() {
    return this.jobs;
  }

  async _load() {
    try {
      const q = new URLSearchParams({ limit: String(Math.min(this.opts.limit ?? 200, 500)) });
      if (this.opts.owner) q.set('owner', this.opts.owner);
      if (this.opts.status) q.set('status', this.opts.status);
      if (this.opts.kind) q.set('kind', this.opts.kind);
      const page = await this.client.request('GET', `/v1/jobs?${q}`);
      if (this._closed) return;
      for (const j of page.jobs || []) this._set(j);
      this._loaded();
    } catch (e) {
      this.error = e;
      this.loading = false;
      this._changed();
    }
  }

  _set(job) {
    if (this.opts.status && job.status !== this.opts.status) {
      this._jobs.delete(job.id);
      return;
    }
    if (this.opts.kind && job.kind !== this.opts.kind) return;
    const old = this._jobs.get(job.id);
    if (!old || (job.version ?? 0) >= (old.version ?? 0)) this._jobs.set(job.id, job);
  }

  _apply(ev, notify) {
    if (!ev.type.startsWith('job.')) return; // task and artifact events do not change the list
    this._set(ev.data);
    this._sync();
    if (notify) this._changed();
  }

  _sync() {
    let list = [...this._jobs.values()].sort((a, b) => time(b.updated_at) - time(a.updated_at));
    if (list.length > this._max) {
      // Forget the oldest finished jobs first; running ones stay watched.
      const drop = new Set(list.filter((j) => ['completed', 'failed', 'cancelled'].includes(j.status)).slice(-(list.length - this._max)).map((j) => j.id));
      for (const id of drop) this._jobs.delete(id);
      list = list.filter((j) => !drop.has(j.id));
    }
    this.jobs = list;
  }
}
