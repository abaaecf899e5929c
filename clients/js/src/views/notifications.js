// My notifications with an unread count (`client.notifications`).

import { View } from './view.js';
import { HeraldError } from '../errors.js';

/** My notifications with an unread count. See `HeraldClient.notifications`. */
export class NotificationsView extends View {
  constructor(client, opts = {}) {
    super();
    this.client = client;
    this.items = [];
    this.unreadCount = 0;
    this._buffer = [];
    this._limit = opts.limit ?? 50;
    this._start(opts.sub);
  }

  get value() {
    return { items: this.items, unreadCount: this.unreadCount };
  }

  async _start(sub) {
    try {
      if (!sub) {
        await this.client.token();
        sub = this.client.identity && this.client.identity.sub;
      }
      if (!sub) throw new HeraldError('invalid_token', 'notifications(): the token names no `sub`; pass { sub }');
      if (this._closed) return;
      this.sub = sub;
      this._sub = this.client.subscribe(`user:${sub}`, {
        onEvent: (ev) => (this.loading ? this._buffer.push(ev) : this._apply(ev, true)),
        onResync: () => this._load(),
        onError: (err) => {
          this.error = err;
          this._changed();
        },
      });
      await this._load();
    } catch (e) {
      this.error = e;
      this.loading = false;
      this._changed();
    }
  }

  async _load() {
    const page = await this.client.request('GET', `/v1/notifications?limit=${this._limit}`);
    if (this._closed) return;
    this.items = page.notifications || [];
    this.unreadCount = page.unread_count || 0;
    this._loaded();
  }

  _apply(ev, notify) {
    const n = ev.data;
    if (!n || !n.id) return;
    const i = this.items.findIndex((x) => x.id === n.id);
    const before = i >= 0 ? this.items[i] : null;
    if (ev.type === 'notification.created') {
      if (before) return; // already in the snapshot
      this.items = [n, ...this.items].slice(0, this._limit);
      if (!n.read) this.unreadCount += 1;
      if (notify) this.emit('notification', n);
    } else if (ev.type === 'notification.read') {
      if (before) {
        if (!before.read && n.read) this.unreadCount = Math.max(0, this.unreadCount - 1);
        this.items = this.items.map((x) => (x.id === n.id ? n : x));
      } else if (n.read) {
        // Older than our page; it was counted as unread by the server.
        this.unreadCount = Math.max(0, this.unreadCount - 1);
      }
    }
    if (notify) this._changed();
  }

  /** Marks one notification read. */
  async markRead(id) {
    const n = await this.client.request('POST', `/v1/notifications/${encodeURIComponent(id)}/read`);
    // The event follows too; applying the answer now makes the UI instant.
    this._apply({ type: 'notification.read', data: n }, true);
    return n;
  }

  /** Marks all my notifications read. */
  async markAllRead() {
    const r = await this.client.request('POST', '/v1/notifications/read-all');
    this.items = this.items.map((x) => ({ ...x, read: true }));
    this.unreadCount = 0;
    this._changed();
    return r;
  }
}
