// A list of jobs, the tenant's or one owner's, kept up to date
// (`client.watchJobs`): a live job list (views/joblist.js) with the
// watchJobs defaults, and the way it worked before lists for a list the
// server will not hold.

import { JobListView } from './joblist.js';

/** A list of jobs kept up to date. See `HeraldClient.watchJobs`. */
export class JobsView extends JobListView {
  /**
   * opts: the jobList query fields (`owner`, `status`, `kind`, `tag`,
   * `updatedWithin`), `max` (default 500: `jobs` leaves out the oldest
   * finished jobs past it) and `limit` (default 200: the REST page when
   * the view follows the topic instead of a list).
   */
  constructor(client, opts = {}) {
    const { limit, max, ...query } = opts;
    // Unnarrowed (the whole tenant, or all of one owner's jobs), a server-side
    // list would send every job in its snapshot: follow the topic over the
    // newest `limit` jobs instead, as watchJobs always did.
    const narrowed = ['status', 'kind', 'tag', 'updatedWithin'].some((k) => query[k] != null && query[k] !== '');
    super(client, query, { max: max ?? 500, limit: limit ?? 200, standIn: !narrowed });
    this.opts = opts;
    /** The topic the view follows when it cannot have a list (long-poll, a list too large). */
    this.topic = query.owner ? `jobs:owner:${query.owner}` : 'jobs';
  }

  _listFailed(err) {
    if (err.code === 'list_too_large' && !this._closed) {
      // More jobs than a server-side list may hold (e.g. the whole tenant's):
      // the topic and the newest `limit` jobs, as watchJobs did before lists.
      this._ls.emulated = true;
      this._listEmulate();
      return;
    }
    super._listFailed(err);
  }
}
