// Herald's built-in dashboard: plain JavaScript over the same client the npm
// package ships (/assets/herald-client.js is clients/js/src/index.js).
import { createClient, decodeToken } from './herald-client.js';
import { renderInspector } from './inspector.js';

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (v) =>
  String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const FINISHED = new Set(['completed', 'failed', 'cancelled']);
const ACTIVE = new Set(['queued', 'running', 'stalled']);
const SESSION_KEY = 'herald.session';

const app = {
  client: null,
  me: null, // { sub, role }
  view: null, // the live view of the current page, closed on navigation
  presence: null,
  pane: null, // the job page's live log pane, closed on navigation
  notes: null,
  lastUpdate: null,
  // Set while the live connection is down after having been up: what the page shows may be stale.
  downSince: null,
  wasLive: false,
  filters: { status: 'active', kind: '', q: '' },
};

// ------------------------------------------------------------ formatting

function ago(ts) {
  if (!ts) return '';
  const s = Math.max(0, Math.round((Date.now() - (typeof ts === 'number' ? ts : Date.parse(ts))) / 1000));
  if (s < 5) return 'just now';
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function duration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

/** Remaining time from the pace so far; none until there is a pace to go by, nor while the data is stale. */
function eta(job) {
  if (app.downSince || job.status !== 'running' || !job.started_at || !(job.progress > 0) || job.progress >= 100) return '';
  const elapsed = Date.now() - Date.parse(job.started_at);
  return '~' + duration((elapsed * (100 - job.progress)) / job.progress);
}

const pct = (p) => `${Math.round(Math.min(100, Math.max(0, Number(p) || 0)))}`;

function chip(status) {
  return `<span class="chip s-${esc(status)}">${esc(status)}</span>`;
}

function bar(job, big = false) {
  const p = pct(job.progress);
  // The done part, split: succeeded items, then the failed ones right after them.
  const failed = job.total ? Math.min(Number(p), (100 * (job.failed || 0)) / job.total) : 0;
  const ok = Number(p) - failed;
  return `<div class="bar ${big ? 'big' : ''} s-${esc(job.status)}" data-progress="${p}" role="progressbar" aria-valuenow="${p}" aria-valuemin="0" aria-valuemax="100">
    <span class="fill" style="width:${ok.toFixed(1)}%"></span><span class="fail" style="left:${ok.toFixed(1)}%;width:${failed.toFixed(1)}%"></span>
    <em>${p}%</em></div>`;
}

function counts(job) {
  const total = job.total ?? '?';
  return `<span class="ok">${job.succeeded || 0} ✓</span> <span class="${job.failed ? 'bad' : 'muted'}">${job.failed || 0} ✗</span> <span class="muted">of ${esc(total)}</span>`;
}

function safeImage(url) {
  return typeof url === 'string' && /^(https?:\/\/|data:image\/)/i.test(url) ? url : null;
}

// ------------------------------------------------------------ session

function loadSession() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
  } catch {
    return null;
  }
}

async function demoToken(sub) {
  const r = await fetch('/v1/demo/tokens', { cache: 'no-store' });
  if (!r.ok) throw new Error('demo sign-in is not available');
  const body = await r.json();
  const t = body.tokens.find((x) => x.sub === sub);
  if (!t) throw new Error(`no demo identity ${sub}`);
  return t.token;
}

function signIn(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  start(session);
}

function signOut() {
  sessionStorage.removeItem(SESSION_KEY);
  location.hash = '#/';
  location.reload();
}

// ------------------------------------------------------------ sign-in page

/** Why the server refuses `token`, in words, or null when it accepts it. */
async function checkToken(token) {
  let r;
  try {
    r = await fetch('/v1/notifications?limit=1', { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
  } catch {
    return 'The server cannot be reached; try again in a moment.';
  }
  if (r.status !== 401) return null; // accepted (a 403 is a role that reads no notifications)
  const body = await r.json().catch(() => ({}));
  const { code = 'unauthorized', message = '' } = body.error || {};
  if (code === 'token_expired') return 'This token has expired. Ask for a new one (e.g. herald token).';
  if (/signature/i.test(message)) return "This token was not signed with this server's secret.";
  if (/API key/i.test(message)) return 'This API key is not known to this server.';
  return `This server does not accept this token: ${message || code}.`;
}

async function renderSignIn(message) {
  for (const id of ['nav', 'conn', 'bell-wrap', 'who', 'signout']) $('#' + id).hidden = true;
  const main = $('#main');
  main.innerHTML = `<section class="signin card">
    <h1>Sign in</h1>
    <p class="muted">Paste a bearer token (a JWT for your tenant, e.g. from <code>herald token</code>).</p>
    ${message ? `<p class="error-box">${esc(message)}</p>` : ''}
    <form id="token-form">
      <textarea id="token-input" rows="4" placeholder="eyJhbGciOi…" spellcheck="false" autocomplete="off"></textarea>
      <button type="submit" class="primary">Sign in</button>
    </form>
    <div id="demo" hidden><h2>Demo</h2><p class="muted">This server runs with <code>--demo</code>: sign in as</p><div id="demo-buttons" class="row"></div></div>
  </section>`;
  $('#token-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const token = $('#token-input').value.trim();
    if (!decodeToken(token) && !token.startsWith('hk_')) {
      renderSignIn('That does not look like a token.');
      return;
    }
    // Asked before entering: a refused token never leaves a half-signed-in page.
    const refusal = await checkToken(token);
    if (refusal) {
      renderSignIn(refusal);
      return;
    }
    signIn({ token });
  });
  try {
    const r = await fetch('/v1/demo/tokens', { cache: 'no-store' });
    if (!r.ok) return;
    const body = await r.json();
    $('#demo').hidden = false;
    $('#demo-buttons').innerHTML = body.tokens
      .map((t) => `<button class="demo-btn" data-sub="${esc(t.sub)}">${esc(t.label)}</button>`)
      .join('');
    for (const b of main.querySelectorAll('.demo-btn')) b.addEventListener('click', () => signIn({ demo: b.dataset.sub }));
  } catch {
    // Not a demo server.
  }
}

// ------------------------------------------------------------ app shell

function start(session) {
  const opts = session.demo
    ? { getToken: () => demoToken(session.demo) } // short-lived; refreshed in place before expiry
    : { token: session.token };
  const client = createClient({ ...opts, url: location.origin });
  app.client = client;
  client.onStatus(renderConn);
  client.on('event', () => (app.lastUpdate = Date.now()));
  client.token().then(
    () => {
      app.me = client.identity || {};
      $('#who').textContent = `${app.me.sub} · ${app.me.role}`;
      for (const id of ['nav', 'conn', 'bell-wrap', 'who', 'signout']) $('#' + id).hidden = false;
      $('#nav-mine').hidden = app.me.role === 'customer';
      $('#nav-keys').hidden = app.me.role !== 'admin';
      $('#nav-inspect').hidden = !['admin', 'staff'].includes(app.me.role);
      $('#nav-home').textContent = app.me.role === 'customer' ? 'My jobs' : 'Jobs';
      startNotifications();
      route();
    },
    (e) => renderSignIn(`Sign-in failed: ${e.message}`),
  );
  client.connect();
  renderConn(client.status);
}

function renderConn(status, detail) {
  const el = $('#conn');
  el.dataset.status = status;
  const transport = app.client && app.client.transport;
  const label = {
    connected: transport && transport !== 'websocket' ? `Live (${transport === 'sse' ? 'SSE' : 'polling'})` : 'Live',
    connecting: 'Connecting…',
    reconnecting: 'Reconnecting…',
    offline: 'Offline',
    error: 'Error',
  }[status];
  $('#conn-text').textContent = label;
  el.title = detail && detail.message ? detail.message : label;
  renderOutage(status);
  if (status === 'error' && detail && ['auth_failed', 'token_expired', 'invalid_token'].includes(detail.code)) {
    toast({ level: 'error', title: 'Session ended', body: 'Your token is no longer valid. Sign in again.' });
  }
}

/** How long a connection may be down before the page says "Offline" rather than "Reconnecting". */
const OFFLINE_AFTER_MS = 10000;

/**
 * An outage is not calm: a banner says the connection is lost and what is shown
 * may be out of date, ETAs stop, the data is greyed (body.stale), and after a
 * bound it says "Offline". When the connection is back it says so, and the
 * views catch up from their positions.
 */
function renderOutage(status) {
  const banner = $('#outage');
  if (status === 'connected') {
    const was = app.downSince;
    app.wasLive = true;
    app.downSince = null;
    document.body.classList.remove('stale');
    if (was) {
      banner.dataset.state = 'back';
      $('#outage-text').textContent = `Back online after ${duration(Date.now() - was)}: caught up with everything that happened meanwhile.`;
      $('#retry-now').hidden = true;
      banner.hidden = false;
      clearTimeout(app.backTimer);
      app.backTimer = setTimeout(() => {
        if (!app.downSince) banner.hidden = true;
      }, 5000);
      if (app.repaint) app.repaint(); // ETAs come back
    }
    return;
  }
  if (!app.wasLive || !['reconnecting', 'offline', 'connecting', 'error'].includes(status)) return;
  if (!app.downSince) {
    app.downSince = Date.now();
    document.body.classList.add('stale');
    if (app.repaint) app.repaint(); // ETAs go at once
  }
  paintOutage();
}

function paintOutage() {
  if (!app.downSince) return;
  const banner = $('#outage');
  const since = new Date(app.downSince).toLocaleTimeString();
  const offline = Date.now() - app.downSince >= OFFLINE_AFTER_MS || (app.client && app.client.status === 'offline');
  banner.dataset.state = offline ? 'offline' : 'reconnecting';
  $('#outage-text').textContent = offline
    ? `Offline: the server cannot be reached since ${since}. What you see is from then and may be out of date.`
    : `Connection lost at ${since}; reconnecting… What you see may be out of date.`;
  $('#retry-now').hidden = false;
  banner.hidden = false;
  if (offline) {
    $('#conn').dataset.status = 'offline';
    $('#conn-text').textContent = 'Offline';
  }
}

$('#retry-now').addEventListener('click', () => {
  if (app.client) app.client.retryNow();
});

setInterval(() => {
  paintOutage();
  const u = $('#conn-updated');
  if (u && app.client) u.textContent = app.lastUpdate ? `updated ${ago(app.lastUpdate)}` : '';
  // ETAs and "ago" labels age between events too.
  for (const el of document.querySelectorAll('[data-ago]')) el.textContent = ago(el.dataset.ago);
}, 1000);

// ------------------------------------------------------------ notifications

function startNotifications() {
  const notes = app.client.notifications();
  app.notes = notes;
  notes.subscribe(renderBell);
  notes.on('notification', (n) => {
    toast(n);
    // A desktop notification when my job completes, fails or stalls, if the user allowed them.
    if (n.job_id && typeof Notification !== 'undefined' && Notification.permission === 'granted') {
      const desk = new Notification(n.title, { body: n.body || '', tag: n.id });
      desk.onclick = () => {
        window.focus();
        if (n.job_id) location.hash = `#/job/${encodeURIComponent(n.job_id)}`;
      };
    }
  });
  $('#bell').addEventListener('click', (e) => {
    e.stopPropagation();
    const panel = $('#bell-panel');
    panel.hidden = !panel.hidden;
    renderBell();
  });
  document.addEventListener('click', (e) => {
    if (!$('#bell-wrap').contains(e.target)) $('#bell-panel').hidden = true;
  });
}

function renderBell() {
  const n = app.notes;
  if (!n) return;
  const badge = $('#bell-count');
  badge.textContent = n.unreadCount > 99 ? '99+' : String(n.unreadCount);
  badge.hidden = n.unreadCount === 0;
  const panel = $('#bell-panel');
  if (panel.hidden) return;
  const canAsk = typeof Notification !== 'undefined' && Notification.permission === 'default';
  panel.innerHTML = `<div class="panel-head"><b>Notifications</b>
      <button class="link" id="read-all" ${n.unreadCount ? '' : 'disabled'}>Mark all read</button></div>
    ${canAsk ? '<button class="link enable" id="enable-desktop">Enable desktop notifications</button>' : ''}
    <ul class="notes">${
      n.items.length
        ? n.items
            .map(
              (x) => `<li class="note lvl-${esc(x.level)} ${x.read ? 'read' : 'unread'}" data-id="${esc(x.id)}" data-job="${esc(x.job_id || '')}">
          <b>${esc(x.title)}</b>${x.body ? `<span>${esc(x.body)}</span>` : ''}<small data-ago="${esc(x.created_at)}">${ago(x.created_at)}</small></li>`,
            )
            .join('')
        : '<li class="muted pad">Nothing yet.</li>'
    }</ul>`;
  $('#read-all').addEventListener('click', () => n.markAllRead().catch(showError));
  const enable = $('#enable-desktop');
  if (enable) enable.addEventListener('click', () => Notification.requestPermission().then(renderBell));
  for (const li of panel.querySelectorAll('.note')) {
    li.addEventListener('click', () => {
      if (li.classList.contains('unread')) n.markRead(li.dataset.id).catch(showError);
      if (li.dataset.job) location.hash = `#/job/${encodeURIComponent(li.dataset.job)}`;
    });
  }
}

function toast(n) {
  const el = document.createElement('div');
  el.className = `toast lvl-${n.level || 'info'}`;
  el.innerHTML = `<b>${esc(n.title)}</b>${n.body ? `<span>${esc(n.body)}</span>` : ''}`;
  if (n.job_id) {
    el.classList.add('clickable');
    el.addEventListener('click', () => (location.hash = `#/job/${encodeURIComponent(n.job_id)}`));
  }
  $('#toasts').prepend(el);
  setTimeout(() => el.classList.add('gone'), 7000);
  setTimeout(() => el.remove(), 7600);
}

function showError(e) {
  toast({ level: 'error', title: 'Something went wrong', body: e.message || String(e) });
}

// ------------------------------------------------------------ routing

function route() {
  if (!app.client || !app.me) return;
  if (app.view) app.view.close();
  if (app.presence) app.presence.close();
  if (app.pane) app.pane.close();
  app.view = app.presence = app.pane = null;
  const hash = location.hash || '#/';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.getAttribute('href') === hash);
  const m = hash.match(/^#\/job\/(.+)$/);
  if (m) return renderJobPage(decodeURIComponent(m[1]));
  if (hash === '#/keys' && app.me.role === 'admin') return renderKeysPage();
  if (hash === '#/inspect' && ['admin', 'staff'].includes(app.me.role)) {
    return renderInspector({ app, $, esc, ago, duration, toast, showError });
  }
  if (hash === '#/mine' || app.me.role === 'customer') return renderJobsPage(true);
  return renderJobsPage(false);
}

window.addEventListener('hashchange', route);

// ------------------------------------------------------------ API keys (admins)

const KEY_STATUS = { active: 'running', expiring: 'stalled', expired: 'cancelled', revoked: 'failed' };

function renderKeysPage() {
  const main = $('#main');
  main.innerHTML = `
    <section class="page-head"><h1>API keys</h1></section>
    <section class="card">
      <h2>New key</h2>
      <form id="key-form" class="row">
        <label class="grow">Name <input id="key-name" required maxlength="200" placeholder="e.g. crawler-fleet"></label>
        <label>Role <select id="key-role"><option value="worker">worker</option><option value="service">service</option></select></label>
        <button type="submit" class="primary">Create key</button>
      </form>
      <div id="key-secret"></div>
    </section>
    <section class="card">
      <h2>Keys of tenant ${esc(app.client.identity && app.client.identity.tenant ? app.client.identity.tenant : '')}</h2>
      <div id="keys"><p class="muted pad">Loading…</p></div>
    </section>`;
  $('#key-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const k = await app.client.request('POST', '/v1/admin/keys', { name: $('#key-name').value.trim(), role: $('#key-role').value });
      $('#key-name').value = '';
      showSecret(k, `Key ${k.id} created.`);
      loadKeys();
    } catch (err) {
      showError(err);
    }
  });
  loadKeys();
}

/** A new key's secret, shown this once. */
function showSecret(k, what) {
  $('#key-secret').innerHTML = `<div class="secret-box" id="new-key">
    <p><b>${esc(what)}</b> Copy it now: it is shown only once.</p>
    <code id="new-key-token">${esc(k.token)}</code>
    <button class="ghost dark" id="copy-key" type="button">Copy</button></div>`;
  $('#copy-key').addEventListener('click', () => navigator.clipboard && navigator.clipboard.writeText(k.token));
}

async function loadKeys() {
  let body;
  try {
    body = await app.client.request('GET', '/v1/admin/keys');
  } catch (err) {
    $('#keys').innerHTML = `<p class="error-box">${esc(err.message)}</p>`;
    return;
  }
  const rows = body.keys
    .map((k) => {
      const live = k.status === 'active' || k.status === 'expiring';
      const until = k.status === 'expiring' ? ` <small class="muted">until ${esc(new Date(k.expires_at).toLocaleString())}</small>` : '';
      return `<tr data-key="${esc(k.id)}" data-status="${esc(k.status)}">
        <td><code>${esc(k.id)}</code></td><td>${esc(k.name)}</td><td>${esc(k.role)}</td>
        <td><span class="chip s-${KEY_STATUS[k.status] || 'queued'}">${esc(k.status)}</span>${until}</td>
        <td data-ago="${esc(k.created_at)}">${ago(k.created_at)}</td>
        <td ${k.last_used_at ? `data-ago="${esc(k.last_used_at)}"` : ''}>${k.last_used_at ? ago(k.last_used_at) : '<span class="muted">never</span>'}</td>
        <td class="actions">${
          live
            ? `<select class="grace" aria-label="Old key keeps working"><option value="0">rotate now</option><option value="3600">old key works 1 h</option><option value="86400">old key works 24 h</option></select>
               <button class="ghost dark rotate">Rotate</button> <button class="danger revoke">Revoke</button>`
            : ''
        }</td></tr>`;
    })
    .join('');
  $('#keys').innerHTML = body.keys.length
    ? `<table class="keys"><thead><tr><th>ID</th><th>Name</th><th>Role</th><th>Status</th><th>Created</th><th>Last used</th><th></th></tr></thead><tbody>${rows}</tbody></table>`
    : '<p class="muted pad">No keys yet. Workers authenticate with one: create it above, or with <code>herald key create</code>.</p>';
  for (const tr of $('#keys').querySelectorAll('tr[data-key]')) {
    const id = tr.dataset.key;
    const revoke = tr.querySelector('.revoke');
    if (revoke) {
      revoke.addEventListener('click', async () => {
        if (!confirm(`Revoke key ${id}? Workers using it are refused at once and its open connections close.`)) return;
        try {
          await app.client.request('DELETE', `/v1/admin/keys/${encodeURIComponent(id)}`);
          toast({ level: 'success', title: `Key ${id} revoked` });
          loadKeys();
        } catch (err) {
          showError(err);
        }
      });
    }
    const rotate = tr.querySelector('.rotate');
    if (rotate) {
      rotate.addEventListener('click', async () => {
        const grace = Number(tr.querySelector('.grace').value);
        try {
          const k = await app.client.request('POST', `/v1/admin/keys/${encodeURIComponent(id)}/rotate`, { grace_seconds: grace });
          showSecret(k, grace ? `Key ${id} replaced by ${k.id}; the old one keeps working for ${duration(grace * 1000)}.` : `Key ${id} revoked and replaced by ${k.id}.`);
          loadKeys();
        } catch (err) {
          showError(err);
        }
      });
    }
  }
}

// ------------------------------------------------------------ job lists

function renderJobsPage(mine) {
  const staffView = !mine;
  const main = $('#main');
  main.innerHTML = `
    <section class="page-head">
      <h1>${staffView ? 'Jobs' : 'My jobs'}</h1>
      <div id="summary" class="summary"></div>
    </section>
    ${
      staffView
        ? `<section class="filters card">
      <label>Status <select id="f-status">
        ${['active', 'all', 'running', 'stalled', 'queued', 'failed', 'completed', 'cancelled']
          .map((s) => `<option value="${s}" ${app.filters.status === s ? 'selected' : ''}>${s}</option>`)
          .join('')}
      </select></label>
      <label>Kind <select id="f-kind"><option value="">any</option></select></label>
      <label class="grow">Search <input id="f-q" type="search" placeholder="title, id or owner" value="${esc(app.filters.q)}"></label>
    </section>`
        : ''
    }
    <section class="card">
      <h2>${staffView ? 'Active' : 'In progress'}</h2>
      <div id="active" class="jobs"><p class="muted pad">Loading…</p></div>
    </section>
    <section class="card">
      <h2>Recently finished</h2>
      <div id="finished" class="jobs"></div>
    </section>`;
  const view = mine ? app.client.watchJobs({ owner: app.me.sub }) : app.client.watchJobs();
  app.view = view;
  let scheduled = false;
  const paint = () => {
    scheduled = false;
    // A frame or tick may still come after navigating away.
    if (!view._closed) renderJobs(view, staffView);
  };
  view.subscribe(() => {
    app.lastUpdate = app.lastUpdate || Date.now();
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(paint);
    }
  });
  if (staffView) {
    $('#f-status').addEventListener('change', (e) => ((app.filters.status = e.target.value), paint()));
    $('#f-kind').addEventListener('change', (e) => ((app.filters.kind = e.target.value), paint()));
    $('#f-q').addEventListener('input', (e) => ((app.filters.q = e.target.value.trim().toLowerCase()), paint()));
  }
  app.repaint = paint;
  // ETAs move with the clock.
  const tick = setInterval(() => (view._closed ? clearInterval(tick) : paint()), 5000);
}

function matches(job) {
  const f = app.filters;
  if (f.kind && job.kind !== f.kind) return false;
  if (f.q) {
    const hay = `${job.title || ''} ${job.id} ${job.owner || ''}`.toLowerCase();
    if (!hay.includes(f.q)) return false;
  }
  return true;
}

function renderJobs(view, staffView) {
  if (view.error) {
    $('#active').innerHTML = `<p class="error-box">${esc(view.error.message)}</p>`;
    return;
  }
  const jobs = view.jobs;
  const st = app.filters.status;
  const filtered = staffView ? jobs.filter(matches) : jobs;
  const activeFilter = (j) =>
    !staffView || st === 'active' || st === 'all' ? ACTIVE.has(j.status) : j.status === st && ACTIVE.has(j.status);
  const finishedFilter = (j) =>
    !staffView || st === 'active' || st === 'all' ? FINISHED.has(j.status) : j.status === st && FINISHED.has(j.status);
  const active = filtered.filter(activeFilter);
  const finished = filtered.filter(finishedFilter).slice(0, st === 'active' ? 12 : 50);

  const n = (s) => jobs.filter((j) => j.status === s).length;
  $('#summary').innerHTML = [
    ['running', n('running')],
    ['stalled', n('stalled')],
    ['failed', n('failed')],
    ['completed', n('completed')],
  ]
    .map(([s, c]) => `<div class="stat s-${s}"><b>${c}</b><span>${s}</span></div>`)
    .join('');
  if (staffView) {
    const kinds = [...new Set(jobs.map((j) => j.kind).filter(Boolean))].sort();
    const sel = $('#f-kind');
    const have = [...sel.options].map((o) => o.value).slice(1);
    if (kinds.join() !== have.join()) {
      sel.innerHTML = `<option value="">any</option>` + kinds.map((k) => `<option ${k === app.filters.kind ? 'selected' : ''}>${esc(k)}</option>`).join('');
    }
  }
  $('#active').innerHTML = active.length
    ? active.map((j) => jobRow(j, staffView)).join('')
    : `<p class="muted pad">${view.loading ? 'Loading…' : 'No active jobs right now.'}</p>`;
  $('#finished').innerHTML = finished.length
    ? finished.map((j) => jobRow(j, staffView)).join('')
    : '<p class="muted pad">None yet.</p>';
}

function jobRow(j, staffView) {
  const href = `#/job/${encodeURIComponent(j.id)}`;
  const e = eta(j);
  const lastError = j.errors && j.errors.length ? j.errors[j.errors.length - 1].message : '';
  return `<a class="job s-${esc(j.status)}" href="${href}" data-job-id="${esc(j.id)}" data-status="${esc(j.status)}">
    <div class="job-main">
      <div class="job-title"><b>${esc(j.title || j.id)}</b> ${chip(j.status)}</div>
      <div class="job-sub muted">${esc(j.kind || 'job')}${staffView && j.owner ? ` · for <b>${esc(j.owner)}</b>` : ''} · <span data-ago="${esc(j.updated_at)}">${ago(j.updated_at)}</span></div>
    </div>
    <div class="job-progress">${bar(j)}<div class="job-counts">${counts(j)}${e ? ` · <span class="muted">ETA ${e}</span>` : ''}</div></div>
    <div class="job-now">
      ${j.stage ? `<span class="stage">${esc(j.stage)}</span>` : ''}
      ${j.current_item && !FINISHED.has(j.status) ? `<span class="item" title="${esc(j.current_item)}">${esc(j.current_item)}</span>` : ''}
      ${j.status === 'stalled' ? '<span class="warn">no report for a while</span>' : ''}
      ${j.status === 'failed' && lastError ? `<span class="bad" title="${esc(lastError)}">${esc(lastError)}</span>` : ''}
    </div>
  </a>`;
}

// ------------------------------------------------------------ job page

/** Tasks shown per page of the job page's task list. */
const TASK_PAGE = 50;
/** Task statuses (crates/herald-model/src/task.rs), in the order of the filter buttons. */
const TASK_STATUSES = ['failed', 'running', 'pending', 'succeeded', 'skipped'];
/** Per job: the task filter and page, and the expanded OCR texts; kept across re-renders and visits. */
const jobPages = new Map();

function jobPageState(id) {
  let s = jobPages.get(id);
  if (!s) {
    s = { filter: 'all', page: 0, shown: 0, top: false, expanded: new Set() };
    jobPages.set(id, s);
    if (jobPages.size > 50) jobPages.delete(jobPages.keys().next().value);
  }
  return s;
}

const fmtInt = (n) => Number(n || 0).toLocaleString('en-US');

function renderJobPage(id) {
  closeLightbox();
  const main = $('#main');
  // The page re-renders #job-top and #job-rest on every change of the job;
  // the log pane between them is built once and only ever appended to.
  main.innerHTML = `<p class="back"><a href="#/">← All jobs</a></p><div id="job"><div id="job-top"><p class="muted pad">Loading…</p></div><div id="job-log-slot"></div><div id="job-rest"></div></div>`;
  const view = app.client.watchJob(id, { history: true, historyLimit: 1000 });
  app.view = view;
  const ui = jobPageState(id);
  const pane = createLogPane(id, ui);
  app.pane = pane;
  $('#job-log-slot').append(pane.el);
  // Who else is looking at this job: presence in the job's room, which follows
  // the job's read rules — so it is joined once the job has loaded.
  let presence = null;
  let scheduled = false;
  const paint = () => {
    scheduled = false;
    if (view._closed) return;
    if (!presence && view.job) {
      presence = app.client.presence(`room:job:${id}`, { name: app.me.sub, role: app.me.role });
      app.presence = presence;
      presence.subscribe(later);
    }
    renderJob(view, presence, ui);
    if (view.job) pane.job(view.job);
    else if (view.error) pane.close();
  };
  const later = () => {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(paint);
    }
  };
  view.subscribe(later);
  app.repaint = later;
  // One listener for the page's controls: the page is re-rendered on every change.
  $('#job').addEventListener('click', (e) => {
    const el = e.target.closest('[data-filter], [data-page], [data-shot], [data-expand], #cancel-job');
    if (!el || view._closed || el.disabled) return;
    if (el.dataset.filter) {
      ui.filter = el.dataset.filter;
      ui.page = 0;
      ui.top = true;
    } else if (el.dataset.page) {
      const to = { first: 0, prev: ui.shown - 1, next: ui.shown + 1, last: Infinity }[el.dataset.page];
      ui.page = Math.max(0, to ?? ui.shown);
      ui.top = true;
    } else if (el.dataset.shot) {
      return openLightbox(view.artifacts, el.dataset.shot);
    } else if (el.dataset.expand) {
      const x = el.dataset.expand;
      if (ui.expanded.has(x)) ui.expanded.delete(x);
      else ui.expanded.add(x);
    } else if (el.id === 'cancel-job') {
      return confirmCancel(view.job);
    }
    paint();
  });
  const tick = setInterval(() => (view._closed ? clearInterval(tick) : later()), 5000);
  // A running job's duration counts every second, between repaints.
  const clock = setInterval(() => (view._closed ? clearInterval(clock) : tickDuration(view.job)), 1000);
}

function renderJob(view, presence, ui = jobPageState(view.id)) {
  const root = $('#job');
  const top = $('#job-top');
  const rest = $('#job-rest');
  if (!root || !top || !rest) return;
  if (view.error) {
    const nf = view.error.code === 'not_found';
    top.innerHTML = `<section class="card"><h1>${nf ? 'Job not found' : 'Cannot show this job'}</h1><p class="muted">${esc(
      nf ? 'It does not exist, or it is not yours.' : view.error.message,
    )}</p></section>`;
    rest.innerHTML = '';
    return;
  }
  const j = view.job;
  if (!j) return;
  const e = eta(j);
  const watchers = presence ? presence.members() : [];
  const taskCounts = {};
  for (const t of view.tasks) taskCounts[t.status] = (taskCounts[t.status] || 0) + 1;
  // Only the page shown is rendered, however many tasks the job has.
  const list = orderTasks(view.tasks, ui.filter);
  const pages = Math.max(1, Math.ceil(list.length / TASK_PAGE));
  const page = Math.min(ui.page, pages - 1);
  ui.shown = page;
  const from = page * TASK_PAGE;
  const shown = list.slice(from, from + TASK_PAGE);
  const took = jobDuration(j);
  const canCancel = (app.me.role === 'staff' || app.me.role === 'admin') && ACTIVE.has(j.status);
  const events = [...view.events].reverse().slice(0, 300);
  // A re-render keeps where the lists were scrolled to and which control had the focus.
  const scrolled = {};
  for (const sel of ['.tasks', '#timeline', '.errors']) {
    const el = root.querySelector(sel);
    if (el) scrolled[sel] = el.scrollTop;
  }
  const focused = focusKey(root, document.activeElement);
  top.innerHTML = `
  <section class="card job-head s-${esc(j.status)}" data-job-id="${esc(j.id)}" data-status="${esc(j.status)}">
    <div class="row between">
      <div><h1>${esc(j.title || j.id)} ${chip(j.status)}</h1>
        <p class="muted">${esc(j.kind || 'job')} · <code>${esc(j.id)}</code>${j.owner ? ` · owner <b>${esc(j.owner)}</b>` : ''}</p></div>
      <div class="head-side">
        <div class="watchers" id="watchers" title="Watching this job now">
          ${watchers.map((w) => `<span class="avatar ${w === app.me.sub ? 'me' : ''}" data-sub="${esc(w)}" title="${esc(w)}">${esc(w.slice(0, 2))}</span>`).join('')}
          <small class="muted">${watchers.length} watching</small>
        </div>
        ${canCancel ? '<button type="button" id="cancel-job" class="danger">Cancel job…</button>' : ''}
      </div>
    </div>
    ${bar(j, true)}
    <div class="facts">
      <div><span>Done</span><b>${counts(j)}</b></div>
      <div><span>Stage</span><b>${esc(j.stage || '—')}</b></div>
      <div><span>${FINISHED.has(j.status) ? 'Last item' : 'Current item'}</span><b class="clip" title="${esc(j.current_item || '')}">${esc(j.current_item || '—')}</b></div>
      <div><span>ETA</span><b>${esc(e || (j.status === 'completed' ? 'done' : '—'))}</b></div>
      <div><span>Started</span><b>${j.started_at ? `<span data-ago="${esc(j.started_at)}">${ago(j.started_at)}</span>` : '—'}</b></div>
      <div><span>${FINISHED.has(j.status) ? 'Finished' : 'Updated'}</span><b><span data-ago="${esc(j.finished_at || j.updated_at)}">${ago(j.finished_at || j.updated_at)}</span></b></div>
      <div><span>Duration</span><b title="${esc(took ? took.title : j.finished_at ? 'It never started.' : 'It has not started yet.')}"><span id="job-duration" ${took && took.running ? 'data-running' : ''}>${took ? took.text : '—'}</span>${took && took.running ? ' <small class="muted">so far</small>' : ''}</b></div>
    </div>
    ${j.status === 'stalled' ? '<p class="warn-box">This job has not reported for a while: its worker may be stuck or gone.</p>' : ''}
  </section>`;
  rest.innerHTML = `
  <div class="cols">
    <section class="card">
      <h2>Tasks <small class="muted">${fmtInt(view.tasks.length)}</small></h2>
      ${view.tasks.length ? taskFilters(taskCounts, view.tasks.length, ui.filter) + taskPager(from, shown.length, list.length, page, pages) : ''}
      <ol class="tasks">${
        shown.length
          ? shown.map(taskRow).join('')
          : `<li class="muted pad">${view.tasks.length ? `No ${esc(ui.filter)} tasks.` : 'No tasks reported.'}</li>`
      }</ol>
    </section>
    <div>
      <section class="card">
        <h2>Artifacts <small class="muted">${view.artifacts.length}</small></h2>
        ${artifactsSection(view.artifacts, ui)}
      </section>
      <section class="card">
        <h2>Errors <small class="muted">${(j.errors || []).length}</small></h2>
        <ul class="errors">${
          (j.errors || []).length
            ? [...j.errors].reverse().map((x) => `<li><small class="muted">${esc(new Date(x.at).toLocaleTimeString())}</small> ${esc(x.message)}</li>`).join('')
            : '<li class="muted pad">No errors.</li>'
        }</ul>
      </section>
    </div>
  </div>
  <section class="card">
    <h2>Live timeline <small class="muted">${view.events.length} events</small></h2>
    <ol class="timeline" id="timeline">${events.map(timelineItem).join('')}</ol>
  </section>`;
  for (const [sel, y] of Object.entries(scrolled)) {
    const el = root.querySelector(sel);
    if (el) el.scrollTop = sel === '.tasks' && ui.top ? 0 : y;
  }
  ui.top = false;
  if (focused) {
    const el = root.querySelector(focused);
    if (el && !el.disabled) el.focus();
  }
}

/** A selector for the job page's control that has the focus, to give it back after a re-render. */
function focusKey(root, el) {
  // The log pane is never re-rendered: its focus stays where it is.
  if (!el || !root.contains(el) || el.closest('#job-log')) return null;
  if (el.id) return `#${CSS.escape(el.id)}`;
  for (const k of ['filter', 'page', 'shot', 'expand']) {
    if (el.dataset[k] != null) return `[data-${k}="${CSS.escape(el.dataset[k])}"]`;
  }
  return null;
}

/** The tasks a filter shows, in order: failed ones first in the default view, then by creation. */
function orderTasks(tasks, filter) {
  const byCreation = (a, b) => (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : 0);
  if (filter !== 'all') return tasks.filter((t) => t.status === filter).sort(byCreation);
  return [...tasks].sort((a, b) => (b.status === 'failed') - (a.status === 'failed') || byCreation(a, b));
}

function taskFilters(taskCounts, total, filter) {
  const button = (key, label, n) =>
    `<button type="button" class="tf${key === filter ? ' on' : ''}" data-filter="${key}" data-count="${n}" aria-pressed="${key === filter}" ${
      n === 0 && key !== filter ? 'disabled' : ''
    }><i class="dot s-${key}"></i>${label} <b>${fmtInt(n)}</b></button>`;
  return `<div class="task-filter" role="group" aria-label="Show tasks by status">${button('all', 'All', total)}${TASK_STATUSES.map((s) =>
    button(s, s, taskCounts[s] || 0),
  ).join('')}</div>`;
}

function taskPager(from, count, total, page, pages) {
  const range = total ? `Showing ${fmtInt(from + 1)}–${fmtInt(from + count)} of ${fmtInt(total)}` : 'Showing 0 of 0';
  const nav =
    pages > 1
      ? `<span class="pager-nav">
        <button type="button" class="pg" data-page="first" aria-label="First page" ${page === 0 ? 'disabled' : ''}>«</button>
        <button type="button" class="pg" data-page="prev" ${page === 0 ? 'disabled' : ''}>‹ Prev</button>
        <span class="muted" id="task-page">Page ${fmtInt(page + 1)} of ${fmtInt(pages)}</span>
        <button type="button" class="pg" data-page="next" ${page >= pages - 1 ? 'disabled' : ''}>Next ›</button>
        <button type="button" class="pg" data-page="last" aria-label="Last page" ${page >= pages - 1 ? 'disabled' : ''}>»</button>
      </span>`
      : '';
  return `<div class="pager"><span id="task-range">${range}</span>${nav}</div>`;
}

function taskRow(t) {
  const took = t.started_at && t.finished_at ? duration(Math.max(0, Date.parse(t.finished_at) - Date.parse(t.started_at))) : '';
  const meta = [t.attempts > 1 ? `${t.attempts} attempts` : '', took].filter(Boolean).join(' · ');
  const label = t.name || t.id;
  return `<li class="task s-${esc(t.status)}" data-task-id="${esc(t.id)}" data-status="${esc(t.status)}">${chip(t.status)}<span class="clip" title="${esc(
    t.name ? `${t.name} (${t.id})` : t.id,
  )}">${esc(label)}</span><small class="muted task-meta">${esc(meta)}</small>
    ${t.error ? `<small class="bad clip task-error" title="${esc(t.error)}">${esc(t.error)}</small>` : ''}</li>`;
}

/** started_at → finished_at, or → now while the job is not finished; null before it starts. */
function jobDuration(j) {
  if (!j || !j.started_at) return null;
  const start = Date.parse(j.started_at);
  const end = j.finished_at ? Date.parse(j.finished_at) : Date.now();
  const at = (t) => new Date(t).toLocaleString();
  return {
    text: duration(Math.max(0, end - start)),
    running: !j.finished_at,
    title: j.finished_at ? `From ${at(start)} to ${at(end)}` : `Since ${at(start)}`,
  };
}

function tickDuration(j) {
  const el = document.getElementById('job-duration');
  const d = jobDuration(j);
  if (el && d && d.running && el.hasAttribute('data-running')) el.textContent = d.text;
}

// ------------------------------------------------------------ job page: the live log pane

/** Lines the log pane keeps in the document (the newest). */
const LOG_LINES = 2000;
/** How often the pane lists the job's streams (a new one appears), while the job is active; and once it is finished. */
const LOG_LIST_MS = 3000;
const LOG_LIST_FINISHED_MS = 15000;
/** Within this many pixels of the bottom, the pane follows new lines. */
const LOG_STICK_PX = 24;
/** A frame that brings more lines than this is not read out by screen readers line by line. */
const LOG_ANNOUNCE_MAX = 20;

/**
 * The job's output streams, live: the list of its streams (`GET
 * /v1/jobs/{id}/streams`, read again every few seconds, and on job changes
 * until there is one), the selected one followed with `jobStream` from
 * the newest `LOG_LINES`. Built once per visit and only appended to: the
 * job page's re-renders never touch it. Newest at the bottom; it follows
 * new lines unless the reader scrolled up ("Jump to latest" takes them back).
 */
function createLogPane(jobId, ui) {
  const el = document.createElement('section');
  el.className = 'card log-pane';
  el.id = 'job-log';
  el.hidden = true;
  el.innerHTML = `<div class="log-head">
      <h2 id="log-title">Live output <small class="muted" id="log-count"></small></h2>
      <div class="log-streams" id="log-streams" role="group" aria-label="Output streams"></div>
    </div>
    <p class="warn-box log-truncated" id="log-truncated" hidden></p>
    <div class="log-box">
      <div class="log" id="log" role="log" aria-live="polite" aria-labelledby="log-title" tabindex="0">
        <p class="log-earlier" id="log-earlier" hidden></p>
        <div class="log-lines" id="log-lines"></div>
        <p class="log-status muted" id="log-status"></p>
      </div>
      <button type="button" class="log-latest" id="log-latest" hidden>↓ Jump to latest</button>
    </div>`;
  const q = (sel) => el.querySelector(sel);
  const log = q('#log');
  const lines = q('#log-lines');
  const latest = q('#log-latest');
  const st = {
    closed: false,
    streams: [], // [{ name, floor, next_offset, ... }] as listed
    names: '', // the names the buttons were drawn for
    name: null, // the stream shown
    view: null,
    floor: 0, // the oldest offset the stream still has, as far as we know
    pending: [], // [offset, chunks] not rendered yet
    frame: 0,
    follow: true,
    unseen: 0, // lines that arrived while the reader was scrolled up
    finished: false,
    listedAt: 0,
    version: -1,
    timer: null,
  };

  const listStreams = async () => {
    st.listedAt = Date.now();
    let list;
    try {
      list = (await app.client.request('GET', `/v1/jobs/${encodeURIComponent(jobId)}/streams`)).streams || [];
    } catch {
      return; // tried again at the next tick
    }
    if (st.closed) return;
    st.streams = list;
    el.hidden = list.length === 0;
    if (!list.length) return;
    const names = list.map((x) => x.name).join('\n');
    if (names !== st.names) drawButtons(list);
    else for (const x of list) setButtonCount(x.name, x.next_offset);
    const want = list.some((x) => x.name === st.name)
      ? st.name
      : list.some((x) => x.name === ui.stream)
        ? ui.stream
        : list.some((x) => x.name === 'log')
          ? 'log'
          : list[0].name;
    if (want !== st.name) select(want);
    const mine = list.find((x) => x.name === st.name);
    if (mine && mine.floor > st.floor) {
      st.floor = mine.floor;
      paintCounts();
    }
  };

  const schedule = () => {
    clearTimeout(st.timer);
    if (st.closed) return;
    st.timer = setTimeout(async () => {
      await listStreams();
      schedule();
    }, st.finished ? LOG_LIST_FINISHED_MS : LOG_LIST_MS);
  };

  const drawButtons = (list) => {
    st.names = list.map((x) => x.name).join('\n');
    const box = q('#log-streams');
    const had = document.activeElement && box.contains(document.activeElement) ? document.activeElement.dataset.stream : null;
    box.innerHTML =
      list.length > 1
        ? list
            .map(
              (x) =>
                `<button type="button" class="tf" data-stream="${esc(x.name)}" aria-pressed="${x.name === st.name}">${esc(x.name)} <b>${fmtInt(
                  x.next_offset,
                )}</b></button>`,
            )
            .join('')
        : `<span class="muted">${esc(list[0].name)}</span>`;
    for (const b of box.querySelectorAll('[data-stream]')) b.classList.toggle('on', b.dataset.stream === st.name);
    if (had) {
      const b = box.querySelector(`[data-stream="${CSS.escape(had)}"]`);
      if (b) b.focus();
    }
  };

  const setButtonCount = (name, n) => {
    const b = el.querySelector(`[data-stream="${CSS.escape(name)}"] b`);
    if (b) b.textContent = fmtInt(n);
  };

  /** Shows stream `name`: its newest LOG_LINES, then every line as it comes. */
  const select = (name) => {
    if (st.view) st.view.close();
    cancelAnimationFrame(st.frame);
    st.frame = 0;
    st.pending = [];
    st.name = name;
    ui.stream = name;
    lines.textContent = '';
    q('#log-truncated').hidden = true;
    st.follow = true;
    st.unseen = 0;
    for (const b of el.querySelectorAll('[data-stream]')) {
      b.classList.toggle('on', b.dataset.stream === name);
      b.setAttribute('aria-pressed', String(b.dataset.stream === name));
    }
    const listed = st.streams.find((x) => x.name === name) || { floor: 0, next_offset: 0 };
    st.floor = listed.floor || 0;
    const from = Math.max(st.floor, listed.next_offset - LOG_LINES);
    const view = app.client.jobStream(jobId, name, { offset: from, max: LOG_LINES });
    st.view = view;
    log.setAttribute('aria-label', `Output of ${name}`);
    log.setAttribute('aria-busy', 'true');
    const later = () => {
      if (!st.frame) st.frame = requestAnimationFrame(flush);
    };
    view.on('chunks', (chunks, offset) => {
      st.pending.push([offset, chunks]);
      later();
    });
    view.on('truncated', ({ from: gone, to }) => {
      st.pending.push([to, null, to - gone]);
      st.floor = Math.max(st.floor, to);
      later();
    });
    view.on('change', later);
    paintCounts();
  };

  /** Renders what arrived since the last frame: appended, the oldest lines past LOG_LINES removed. */
  const flush = () => {
    st.frame = 0;
    if (st.closed) return;
    if (st.view && !st.view.loading) log.removeAttribute('aria-busy');
    if (st.pending.length) render();
    paintCounts();
  };

  const render = () => {
    const batches = st.pending;
    st.pending = [];
    let count = 0;
    for (const [, chunks] of batches) count += chunks ? chunks.length : 1;
    // A burst longer than the pane: only its newest lines are built.
    let skip = Math.max(0, count - LOG_LINES);
    const frag = document.createDocumentFragment();
    for (const [offset, chunks, dropped] of batches) {
      if (!chunks) {
        if (skip > 0) {
          skip -= 1;
          continue;
        }
        const gap = document.createElement('div');
        gap.className = 'ln gap';
        gap.dataset.offset = String(offset);
        gap.textContent = `${fmtInt(dropped)} line${dropped === 1 ? '' : 's'} dropped by the server before they could be shown`;
        frag.append(gap);
        const note = q('#log-truncated');
        note.textContent = `Some of this output is gone: the server keeps a bounded amount per stream (older lines go first, and all of it after the retention period). ${fmtInt(
          dropped,
        )} line${dropped === 1 ? ' was' : 's were'} dropped before this page could show ${dropped === 1 ? 'it' : 'them'}.`;
        note.hidden = false;
        continue;
      }
      const from = Math.min(skip, chunks.length);
      skip -= from;
      for (let i = from; i < chunks.length; i++) frag.append(logLine(chunks[i], offset + i));
    }
    log.setAttribute('aria-live', count > LOG_ANNOUNCE_MAX ? 'off' : 'polite');
    lines.append(frag);
    const extra = lines.childElementCount - LOG_LINES;
    if (extra > 0) {
      // Remove the oldest: a Range deletes a run of siblings in one go.
      const r = document.createRange();
      r.setStartBefore(lines.firstElementChild);
      r.setEndAfter(lines.children[extra - 1]);
      const height = st.follow ? 0 : log.scrollHeight;
      r.deleteContents();
      // Scrolled up: what the reader looks at stays put as lines go above
      // it (by hand: the pane has no scroll anchoring, see app.css).
      if (!st.follow) log.scrollTop -= height - log.scrollHeight;
    }
    if (st.follow) log.scrollTop = log.scrollHeight;
    else {
      st.unseen += count;
      paintLatest();
    }
  };

  /** The counts: lines in the stream, lines before the first one shown, where the pane is. */
  const paintCounts = () => {
    const v = st.view;
    if (!v) return;
    const end = v.end ?? 0;
    q('#log-count').textContent = `${fmtInt(end)} line${end === 1 ? '' : 's'}`;
    setButtonCount(st.name, end);
    const first = lines.firstElementChild ? Number(lines.firstElementChild.dataset.offset) : end;
    const earlier = Math.max(0, first - st.floor);
    const e = q('#log-earlier');
    e.hidden = earlier === 0;
    e.textContent = `${fmtInt(earlier)} earlier line${earlier === 1 ? '' : 's'} not shown`;
    const status = q('#log-status');
    status.textContent = v.error
      ? `Cannot follow this stream: ${v.error.message || v.error.code}`
      : v.loading
        ? 'Loading…'
        : end === 0
          ? 'No output yet.'
          : '';
    status.classList.toggle('bad', !!v.error);
  };

  const paintLatest = () => {
    latest.hidden = st.follow;
    latest.textContent = st.unseen ? `↓ Jump to latest (${fmtInt(st.unseen)} new)` : '↓ Jump to latest';
  };

  log.addEventListener('scroll', () => {
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight <= LOG_STICK_PX;
    if (atBottom === st.follow) return;
    st.follow = atBottom;
    if (atBottom) st.unseen = 0;
    paintLatest();
  });
  latest.addEventListener('click', () => {
    st.follow = true;
    st.unseen = 0;
    log.scrollTop = log.scrollHeight;
    paintLatest();
    log.focus();
  });
  el.addEventListener('click', (e) => {
    const b = e.target.closest('[data-stream]');
    if (b && b.dataset.stream !== st.name) select(b.dataset.stream);
  });

  listStreams().then(schedule);
  return {
    el,
    /** The job changed: a finished job's streams are listed less often. */
    job(j) {
      st.finished = FINISHED.has(j.status);
      // Until the job has a stream, a change of the job is a good time to look (a worker starting up).
      if (j.version !== st.version) {
        st.version = j.version;
        if (!st.streams.length && Date.now() - st.listedAt > 1000) listStreams();
      }
    },
    close() {
      if (st.closed) return;
      st.closed = true;
      clearTimeout(st.timer);
      cancelAnimationFrame(st.frame);
      if (st.view) st.view.close();
      st.view = null;
    },
  };
}

/** One chunk as a line: a string as text, any other JSON value as compact JSON. */
function logLine(chunk, offset) {
  const d = document.createElement('div');
  d.className = typeof chunk === 'string' ? 'ln' : 'ln json';
  d.dataset.offset = String(offset);
  d.dataset.n = String(offset + 1);
  d.textContent = typeof chunk === 'string' ? chunk : JSON.stringify(chunk);
  return d;
}

/** Staff cancel a job after confirming, optionally with a reason (kept in the job's error log). */
function confirmCancel(job) {
  if (!job || document.getElementById('cancel-dialog')) return;
  const dlg = document.createElement('dialog');
  dlg.id = 'cancel-dialog';
  dlg.className = 'modal';
  dlg.innerHTML = `<form>
    <h2>Cancel this job?</h2>
    <p><b>${esc(job.title || job.id)}</b> is ${esc(job.status)} at ${pct(job.progress)}%. Cancelling stops it for good: it becomes
      <b>cancelled</b>, its worker's next report is refused, and it cannot be resumed.${job.owner ? ` Its owner <b>${esc(job.owner)}</b> sees it at once.` : ''}</p>
    <label>Reason <small class="muted">(optional; kept in the job's error log)</small>
      <textarea name="reason" rows="3" maxlength="1024" placeholder="e.g. the customer asked to stop"></textarea></label>
    <p class="error-box" hidden></p>
    <div class="modal-actions">
      <button type="button" class="ghost dark" data-act="keep">${job.status === 'queued' ? 'Keep it queued' : 'Keep it running'}</button>
      <button type="submit" class="danger strong" data-act="confirm">Cancel job</button>
    </div>
  </form>`;
  document.body.append(dlg);
  const close = () => dlg.open && dlg.close();
  dlg.addEventListener('close', () => {
    dlg.remove();
    window.removeEventListener('hashchange', close);
  });
  window.addEventListener('hashchange', close);
  dlg.querySelector('[data-act="keep"]').addEventListener('click', close);
  dlg.querySelector('form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const go = dlg.querySelector('[data-act="confirm"]');
    const box = dlg.querySelector('.error-box');
    const reason = dlg.querySelector('textarea').value.trim();
    go.disabled = true;
    go.textContent = 'Cancelling…';
    box.hidden = true;
    try {
      await app.client.request('POST', `/v1/jobs/${encodeURIComponent(job.id)}/cancel`, reason ? { reason } : {});
      close();
      toast({ level: 'success', title: `${job.title || job.id} cancelled`, body: reason || undefined });
    } catch (err) {
      box.textContent =
        err.code === 'illegal_transition' ? 'This job has already finished: there is nothing left to cancel.' : err.message || String(err);
      box.hidden = false;
      go.disabled = false;
      go.textContent = 'Cancel job';
    }
  });
  dlg.showModal();
  dlg.querySelector('[data-act="keep"]').focus();
}

/** What kind of artifact this is: `ocr:completed` is an `ocr`, `screenshot:captured` a `screenshot`. */
const artifactBase = (a) => String(a.kind || '').toLowerCase().split(':')[0];

function artifactImage(a) {
  const p = a.payload || {};
  return safeImage(typeof p === 'string' ? p : p.url || p.screenshot || p.image);
}

/** Screenshots as thumbnails that open in the lightbox; OCR texts and labels as readable cards. */
function artifactsSection(list, ui) {
  if (!list.length) return '<p class="muted pad">None yet.</p>';
  const shots = [];
  const cards = [];
  for (const a of list) {
    const base = artifactBase(a);
    if (base === 'ocr') cards.push(ocrCard(a, ui));
    else if (base === 'label') cards.push(labelCard(a));
    else if (artifactImage(a)) shots.push(artifact(a));
    else cards.push(rawCard(a));
  }
  return `${shots.length ? `<div class="artifacts">${shots.join('')}</div>` : ''}${cards.length ? `<div class="art-cards">${cards.join('')}</div>` : ''}`;
}

function artifact(a) {
  const p = a.payload || {};
  const url = artifactImage(a);
  const caption = String(p.item || p.label || p.title || p.text || a.kind);
  return `<figure class="shot" data-artifact-id="${esc(a.id)}" data-kind="${esc(a.kind)}"><button type="button" class="shot-open" data-shot="${esc(
    a.id,
  )}" aria-label="Open ${esc(a.kind)}: ${esc(caption)}" title="Click to enlarge"><img src="${esc(url)}" alt="${esc(caption)}" loading="lazy"></button><figcaption>${esc(
    caption,
  )}</figcaption></figure>`;
}

/** At most `n` characters of `s`, and whether it was cut. */
const cut = (s, n) => (s.length > n ? s.slice(0, n) + '…' : s);

function cardHead(a, label, detail) {
  return `<header><span class="kind">${esc(label)}</span><span class="muted clip" title="${esc(detail)}">${esc(detail)}</span><small class="muted" data-ago="${esc(
    a.created_at,
  )}">${ago(a.created_at)}</small></header>`;
}

const OCR_PREVIEW = 600;

function ocrCard(a, ui) {
  const p = a.payload;
  const o = p && typeof p === 'object' && !Array.isArray(p) ? p : {};
  let text = typeof p === 'string' ? p : (o.text ?? o.ocr ?? o.content ?? o.result ?? '');
  if (Array.isArray(text)) text = text.join('\n');
  if (typeof text !== 'string') text = JSON.stringify(text, null, 1);
  const meta = [];
  if (o.page != null) meta.push(`page ${o.page}`);
  if (typeof o.confidence === 'number') meta.push(`${Math.round(o.confidence <= 1 ? o.confidence * 100 : o.confidence)}% confidence`);
  if (o.language || o.lang) meta.push(String(o.language || o.lang));
  if (o.item) meta.push(String(o.item));
  if (a.kind.toLowerCase() !== 'ocr') meta.push(a.kind);
  const img = artifactImage(a);
  const long = text.length > OCR_PREVIEW;
  const open = ui.expanded.has(a.id);
  return `<article class="art-card ocr" data-artifact-id="${esc(a.id)}" data-kind="${esc(a.kind)}">
    ${cardHead(a, 'OCR', meta.join(' · '))}
    <div class="art-body">${img ? `<button type="button" class="mini" data-shot="${esc(a.id)}" aria-label="Open the scanned image"><img src="${esc(img)}" alt="" loading="lazy"></button>` : ''}
      ${text.trim() ? `<p class="ocr-text${open ? ' open' : ''}">${esc(long && !open ? cut(text, OCR_PREVIEW) : text)}</p>` : '<p class="muted">No text recognised.</p>'}</div>
    ${long ? `<button type="button" class="link more" data-expand="${esc(a.id)}">${open ? 'Show less' : `Show all ${fmtInt(text.length)} characters`}</button>` : ''}
  </article>`;
}

function labelCard(a) {
  const p = a.payload;
  const o = p && typeof p === 'object' && !Array.isArray(p) ? p : null;
  const key = o ? ['text', 'label', 'name', 'value', 'title'].find((k) => typeof o[k] === 'string' || typeof o[k] === 'number') : null;
  const main = o ? (key ? String(o[key]) : '') : p == null ? '' : typeof p === 'object' ? JSON.stringify(p) : String(p);
  const fields = o ? Object.entries(o).filter(([k]) => k !== key) : [];
  const value = (v) => {
    if (typeof v === 'string' && /^https?:\/\//i.test(v)) {
      return `<a href="${esc(v)}" target="_blank" rel="noopener noreferrer">${esc(cut(v, 120))}</a>`;
    }
    return esc(cut(typeof v === 'string' ? v : JSON.stringify(v), 200));
  };
  return `<article class="art-card label" data-artifact-id="${esc(a.id)}" data-kind="${esc(a.kind)}">
    ${cardHead(a, 'Label', a.kind.toLowerCase() === 'label' ? '' : a.kind)}
    ${main ? `<p class="label-text">${esc(cut(main, 500))}</p>` : ''}
    ${fields.length ? `<dl class="kv">${fields.slice(0, 12).map(([k, v]) => `<dt>${esc(k)}</dt><dd>${value(v)}</dd>`).join('')}</dl>` : ''}
    ${main || fields.length ? '' : '<p class="muted">Empty label.</p>'}
  </article>`;
}

function rawCard(a) {
  const p = a.payload;
  return `<article class="art-card raw" data-artifact-id="${esc(a.id)}" data-kind="${esc(a.kind)}">
    ${cardHead(a, a.kind, '')}<pre>${esc(cut(typeof p === 'string' ? p : JSON.stringify(p, null, 1), 400))}</pre></article>`;
}

// The lightbox: one image artifact at a time over the page; Esc or a click closes it, ← → step through.
let lightbox = null;

function openLightbox(artifacts, id) {
  const shots = artifacts.filter((a) => artifactBase(a) !== 'label' && artifactImage(a));
  let i = shots.findIndex((a) => a.id === id);
  if (i < 0) return;
  closeLightbox();
  const el = document.createElement('div');
  el.id = 'lightbox';
  el.className = 'lightbox';
  el.setAttribute('role', 'dialog');
  el.setAttribute('aria-modal', 'true');
  el.setAttribute('aria-label', 'Screenshot');
  el.tabIndex = -1;
  const show = () => {
    const a = shots[i];
    const url = artifactImage(a);
    const p = a.payload || {};
    const caption = String(p.item || p.label || p.title || a.kind);
    el.dataset.artifactId = a.id;
    el.innerHTML = `<figure><img src="${esc(url)}" alt="${esc(caption)}"><figcaption><b>${esc(caption)}</b>
      <span>${esc(a.kind)} · ${esc(new Date(a.created_at).toLocaleString())}${shots.length > 1 ? ` · ${i + 1} of ${shots.length}` : ''}</span>
      ${/^https?:/i.test(url) ? `<a href="${esc(url)}" target="_blank" rel="noopener noreferrer">Open original ↗</a>` : ''}
      <small>Esc or click to close${shots.length > 1 ? ' · ← → for the others' : ''}</small></figcaption></figure>
      <button type="button" class="lb-close" aria-label="Close">×</button>
      ${shots.length > 1 ? '<button type="button" class="lb-nav prev" data-step="-1" aria-label="Previous">‹</button><button type="button" class="lb-nav next" data-step="1" aria-label="Next">›</button>' : ''}`;
  };
  const step = (d) => {
    i = (i + d + shots.length) % shots.length;
    show();
  };
  el.addEventListener('click', (e) => {
    const nav = e.target.closest('[data-step]');
    if (nav) return step(Number(nav.dataset.step));
    if (e.target.closest('a')) return; // "Open original" opens a tab and leaves the lightbox as it is
    closeLightbox();
  });
  const onKey = (e) => {
    if (e.key === 'Escape') closeLightbox();
    else if (e.key === 'ArrowLeft' && shots.length > 1) step(-1);
    else if (e.key === 'ArrowRight' && shots.length > 1) step(1);
  };
  document.addEventListener('keydown', onKey);
  window.addEventListener('hashchange', closeLightbox);
  lightbox = { el, onKey, id };
  show();
  document.body.append(el);
  document.body.classList.add('no-scroll');
  el.focus();
}

function closeLightbox() {
  if (!lightbox) return;
  const { el, onKey, id } = lightbox;
  lightbox = null;
  document.removeEventListener('keydown', onKey);
  window.removeEventListener('hashchange', closeLightbox);
  el.remove();
  document.body.classList.remove('no-scroll');
  // Back to the thumbnail it was opened from (re-rendered meanwhile, perhaps).
  const from = document.querySelector(`[data-shot="${CSS.escape(id)}"]`);
  if (from) from.focus();
}

function timelineItem(ev) {
  const d = ev.data || {};
  let what = '';
  if (ev.type.startsWith('job.')) {
    what = `${esc(d.status)} · ${pct(d.progress)}%${d.stage ? ` · ${esc(d.stage)}` : ''}${d.current_item ? ` · ${esc(d.current_item)}` : ''}`;
  } else if (ev.type.startsWith('task.')) {
    what = `${esc(d.name || d.id)} → ${esc(d.status)}${d.error ? ` · <span class="bad">${esc(d.error)}</span>` : ''}`;
  } else if (ev.type === 'artifact.created') {
    what = `${esc(d.kind)}${d.payload && d.payload.item ? ` · ${esc(d.payload.item)}` : ''}`;
  }
  const t = ev.time ? new Date(ev.time).toLocaleTimeString() : '';
  return `<li data-position="${esc(ev.position)}" class="t-${esc(ev.type.replace('.', '-'))}"><small class="muted">${esc(t)}</small><code>${esc(ev.type)}</code><span>${what}</span><small class="pos">#${esc(ev.position)}</small></li>`;
}

// ------------------------------------------------------------ boot

$('#signout').addEventListener('click', signOut);
const session = loadSession();
if (session) start(session);
else renderSignIn();
