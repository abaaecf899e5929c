// The transports the client can use, in the order it tries them.

import { WsTransport } from './websocket.js';
import { StreamTransport } from './stream.js';

/** Transports, in the order they are tried. */
export const TRANSPORTS = Object.freeze(['websocket', 'sse', 'longpoll']);

/**
 * A transport of `kind` for `client`. Every transport has the same shape:
 * `run()` resolves with `{ established, error?, immediate?, retryAfterMs?,
 * replaced? }` when it is over; `stop()`, `add(topicState)`,
 * `remove(topicState)`, `addList(listState)`, `removeList(listState)`,
 * `addStream(streamState)`, `removeStream(streamState)`,
 * `restartStream(streamState)` (job output streams, views/stream.js);
 * `kind`, `ready`, `adopted`, `expiresAt`.
 */
export function makeTransport(kind, client) {
  if (kind === 'websocket') return new WsTransport(client);
  if (kind === 'sse') return new StreamTransport(client, 'sse');
  return new StreamTransport(client, 'longpoll');
}
