// @herald/client — the JavaScript client for Herald (docs/CLIENT.md).
//
// Plain ES modules, no dependencies, ES2020. Works in browsers and in Node
// 18+ (pass a `WebSocket` implementation where the runtime has none). This
// directory is both the npm package and, embedded in the server binary, the
// dashboard's client (/assets/herald-client/index.js). The modules:
//
//   client.js        HeraldClient: subscriptions, resume cursors, tokens, HTTP
//   connection.js    one transport at a time: reconnect, fallback, way back
//   transports/      websocket.js; stream.js (SSE and long-poll); index.js
//   views/           the live views: job, joblist (live job lists), jobs,
//                    notifications, presence, stream (job output streams)
//   reporter.js      ProgressReporter and its StreamWriter, the worker side
//   errors.js, emitter.js, util.js

import { HeraldClient } from './client.js';

export { HeraldClient, STATUSES } from './client.js';
export { TRANSPORTS } from './transports/index.js';
export { HeraldError } from './errors.js';
export { backoffDelay, decodeToken } from './util.js';
export { JobView } from './views/job.js';
export { JobsView } from './views/jobs.js';
export { JobListView } from './views/joblist.js';
export { NotificationsView } from './views/notifications.js';
export { PresenceView } from './views/presence.js';
export { JobStreamView } from './views/stream.js';
export { ProgressReporter, StreamWriter } from './reporter.js';

/**
 * Creates a client. Nothing connects until the first subscription (or
 * `connect()`); then one connection carries every subscription.
 */
export function createClient(options) {
  return new HeraldClient(options);
}
