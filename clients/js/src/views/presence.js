// Presence: who is in a room. The state as the server sends it
// (`presence_state`, then `presence_diff`s; docs/PROTOCOL.md), and the view
// over it (`client.presence`).

import { View } from './view.js';
import { roomTopic } from '../util.js';

/** A copy of a `presence_state`: `{ [sub]: { metas: [...] } }`. */
export function clonePresence(state) {
  const out = {};
  for (const [sub, v] of Object.entries(state || {})) out[sub] = { metas: [...((v && v.metas) || [])] };
  return out;
}

/** Applies a `presence_diff` to a state in place. */
export function applyPresenceDiff(state, { joins, leaves }) {
  for (const [sub, v] of Object.entries(leaves || {})) {
    const refs = new Set(((v && v.metas) || []).map((m) => m.phx_ref));
    if (!state[sub]) continue;
    state[sub].metas = state[sub].metas.filter((m) => !refs.has(m.phx_ref));
    if (state[sub].metas.length === 0) delete state[sub];
  }
  for (const [sub, v] of Object.entries(joins || {})) {
    if (!state[sub]) state[sub] = { metas: [] };
    const known = new Set(state[sub].metas.map((m) => m.phx_ref));
    for (const m of (v && v.metas) || []) if (!known.has(m.phx_ref)) state[sub].metas.push(m);
  }
}

/** Who is in a room. See `HeraldClient.presence`. */
export class PresenceView extends View {
  constructor(client, room, meta) {
    super();
    this.client = client;
    this.topic = roomTopic(room);
    this.state = {};
    this.loading = false;
    this._sub = client.subscribe(this.topic, {
      onPresence: (state) => {
        this.state = state;
        this._changed();
      },
      onBroadcast: (msg) => this.emit('broadcast', msg),
      onError: (err) => {
        this.error = err;
        this._changed();
      },
    });
    this._ts = client._topics.get(this.topic);
    if (meta) this.set(meta);
  }

  get value() {
    return this.list();
  }

  /** One entry per connection: `{ sub, ...meta }`. */
  list() {
    const out = [];
    for (const [sub, v] of Object.entries(this.state)) for (const m of v.metas) out.push({ ...m, sub });
    return out;
  }

  /** Distinct `sub`s present. */
  members() {
    return Object.keys(this.state);
  }

  /** Sets this connection's meta in the room (kept across reconnects). */
  async set(meta) {
    this._ts.meta = meta || {};
    const t = this.client._transport;
    if (t && t.kind === 'websocket' && t.ready) return t.setPresence(this._ts);
    return null; // sent when the WebSocket (re)connects
  }

  /** Publishes to this room. */
  broadcast(event, data) {
    return this.client.broadcast(this.topic, event, data);
  }
}
