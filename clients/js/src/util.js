// Small helpers shared by the client, its transports, views and the reporter:
// backoff, tokens, URLs, ids, timestamps.

import { HeraldError } from './errors.js';

export const sleep = (ms, signal) =>
  new Promise((resolve) => {
    if (signal && signal.aborted) return resolve();
    const t = setTimeout(resolve, ms);
    if (signal) signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  });

/** Exponential backoff with "equal jitter": half fixed, half random, so a
 * crowd of clients that lost the same server does not come back in step. */
export function backoffDelay(attempt, initialMs = 500, maxMs = 30000) {
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 20));
  return Math.round(base / 2 + Math.random() * (base / 2));
}

/** Claims of a JWT, unverified (the server verifies; the client only reads
 * `sub`, `role` and `exp` to know whose topics to open and when to refresh). */
export function decodeToken(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const json =
      typeof atob === 'function'
        ? decodeURIComponent(
            Array.from(atob(padded), (c) => '%' + c.charCodeAt(0).toString(16).padStart(2, '0')).join(''),
          )
        : Buffer.from(padded, 'base64').toString('utf8');
    const claims = JSON.parse(json);
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/** Who a token says we are: `{ sub, role, tenant, exp }`, or null. */
export function identityOf(token) {
  const c = decodeToken(token);
  if (!c) return null;
  return { sub: c.sub ?? null, role: c.role ?? null, tenant: c.tenant ?? null, exp: c.exp ?? null };
}

/** The server's base URL without a trailing slash (in a browser, the page's origin by default). */
export function baseUrl(url) {
  if (url) return String(url).replace(/\/+$/, '');
  if (typeof location !== 'undefined' && location.origin) return location.origin;
  throw new HeraldError('invalid_option', 'createClient: `url` is required outside a browser');
}

export function randomId() {
  if (typeof crypto !== 'undefined' && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + '-' + Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
}

export const isRoom = (topic) => topic.startsWith('room:');

/** A job output stream's name, as the server checks it. */
export const STREAM_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

/** Bytes of `s` as UTF-8. */
export function utf8Length(s) {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) n += 1;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 2; // four bytes for the pair of two code units
        i += 1;
      } else n += 2;
    } else n += 2;
  }
  return n;
}

/** A room's topic: `room:<name>`, whether or not `room` already has the prefix. */
export const roomTopic = (room) => (isRoom(room) ? room : `room:${room}`);

/** Milliseconds since the epoch of an ISO timestamp; 0 when absent or unreadable. */
export const time = (s) => (s ? Date.parse(s) || 0 : 0);
