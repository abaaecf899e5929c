// The inspector (#/inspect, admin and staff): this node's live connections of
// the tenant by transport, how far behind each one is, topics and their
// subscribers, presence per room, why recent connections ended, and a form
// that sends a test broadcast. Reads GET /v1/admin/inspect every 2 s; rates
// are the difference between two reads.

const EVERY_MS = 2000;

export function renderInspector(ui) {
  const { app, $, esc } = ui;
  const main = $('#main');
  main.innerHTML = `
    <section class="page-head"><h1>Inspector</h1><div id="insp-summary" class="summary"></div></section>
    <p class="muted insp-note" id="insp-note">Live connections of this tenant on the node serving this page, read every 2 s.</p>
    <section class="card"><h2>Connections <small class="muted" id="insp-by-transport"></small></h2><div id="insp-conns"><p class="muted pad">Loading…</p></div></section>
    <div class="insp-grid">
      <section class="card"><h2>Topics</h2><div id="insp-topics"></div></section>
      <section class="card"><h2>Presence</h2><div id="insp-presence"></div></section>
    </div>
    <div class="insp-grid">
      <section class="card"><h2>Recent errors</h2><div id="insp-errors"></div></section>
      <section class="card"><h2>Recent closes</h2><div id="insp-closes"></div></section>
    </div>
    <section class="card"><h2>Send a test broadcast</h2>
      <form id="insp-bc" class="row">
        <label>To <select id="bc-kind"><option value="topic">room</option><option value="user">user</option><option value="tenant">whole tenant</option></select></label>
        <label class="grow" id="bc-target-wrap">Name <input id="bc-target" placeholder="room:lobby or a user's sub" value="room:inspector"></label>
        <label>Event <input id="bc-event" value="test" maxlength="256"></label>
        <label class="grow">Payload (JSON) <input id="bc-payload" value='{"hello":"from the inspector"}'></label>
        <button class="primary" type="submit">Send</button>
      </form>
      <p class="muted" id="bc-result"></p>
    </section>`;

  let last = null;
  let timer = null;
  const view = {
    _closed: false,
    close() {
      this._closed = true;
      clearTimeout(timer);
    },
  };
  app.view = view;

  const tick = async () => {
    if (view._closed) return;
    try {
      const now = await app.client.request('GET', '/v1/admin/inspect');
      if (view._closed) return;
      paint(ui, now, last);
      last = { at: Date.now(), data: now };
    } catch (e) {
      if (!view._closed) $('#insp-conns').innerHTML = `<p class="error-box">${esc(e.message)}</p>`;
    }
    if (!view._closed) timer = setTimeout(tick, EVERY_MS);
  };
  tick();

  $('#bc-kind').addEventListener('change', (e) => {
    $('#bc-target-wrap').hidden = e.target.value === 'tenant';
    $('#bc-target').placeholder = e.target.value === 'user' ? "a user's sub" : 'room:lobby';
  });
  $('#insp-bc').addEventListener('submit', async (e) => {
    e.preventDefault();
    const kind = $('#bc-kind').value;
    let payload;
    try {
      payload = JSON.parse($('#bc-payload').value || 'null');
    } catch (err) {
      $('#bc-result').textContent = `The payload is not JSON: ${err.message}`;
      return;
    }
    const body = { event: $('#bc-event').value.trim(), payload };
    if (kind === 'tenant') body.tenant = true;
    else body[kind] = $('#bc-target').value.trim();
    try {
      const r = await app.client.request('POST', '/v1/broadcast', body);
      $('#bc-result').textContent = `Sent: ${r.delivered} connection${r.delivered === 1 ? '' : 's'} on this node received it.`;
    } catch (err) {
      $('#bc-result').textContent = `Refused: ${err.message}`;
    }
  });
}

function paint({ $, esc, ago, duration }, now, last) {
  const t = now.totals;
  const secs = last ? (Date.now() - last.at) / 1000 : 0;
  const rate = (a, b) => (last && secs > 0 ? Math.max(0, (a - b) / secs) : null);
  const fmt = (r) => (r == null ? '…' : r >= 10 ? Math.round(r).toLocaleString() : r.toFixed(1));
  const deliveries = last ? rate(t.queued, last.data.totals.queued) : null;
  const events = last ? rate(now.head, last.data.head) : null;
  $('#insp-summary').innerHTML = [
    ['connections', t.connections],
    ['subscriptions', t.subscriptions],
    ['deliveries/s', fmt(deliveries)],
    ['waiting', t.waiting],
    ['conflated', t.conflated],
    ['log events/s', fmt(events)],
    ['resumes replayed', t.delivery.resumes_replayed],
    ['resumes resynced', t.delivery.resumes_resynced],
    ['slow consumers cut off', t.delivery.slow_consumers],
  ]
    .map(([k, v]) => `<div class="stat" data-stat="${esc(k)}"><b>${esc(v)}</b><span>${esc(k)}</span></div>`)
    .join('');
  $('#insp-by-transport').textContent = Object.entries(t.by_transport)
    .map(([k, v]) => `${k} ${v}`)
    .join(' · ');
  $('#insp-note').textContent =
    `Live connections of this tenant on the node serving this page${now.nodes > 1 ? ` (one of ${now.nodes} nodes)` : ''}, read every 2 s. Log head: ${now.head}.`;

  const prev = new Map(last ? last.data.connections.map((c) => [c.id, c]) : []);
  $('#insp-conns').innerHTML = now.connections.length
    ? `<table class="insp"><thead><tr><th>Transport</th><th>Who</th><th>Connected</th><th>Topics</th><th>Deliveries/s</th><th>Delivered</th><th>Waiting</th><th>Lag</th><th title="progress ticks superseded by newer ones while it was behind">Conflated</th></tr></thead><tbody>${now.connections
        .map((c) => {
          const p = prev.get(c.id);
          const r = p && secs > 0 ? Math.max(0, (c.queued - p.queued) / secs) : null;
          const behind = c.lag > 0 || c.waiting > 0;
          return `<tr data-conn="${c.id}" data-transport="${esc(c.transport)}" class="${behind ? 'behind' : ''}">
            <td><span class="chip t-${esc(c.transport)}">${esc(c.transport)}</span></td>
            <td><b>${esc(c.sub)}</b> <small class="muted">${esc(c.role)}</small></td>
            <td data-ago="${esc(c.connected_at)}">${ago(c.connected_at)}</td>
            <td>${c.topics}</td><td>${fmt(r)}</td><td>${c.queued.toLocaleString()}</td>
            <td class="${c.waiting ? 'warn' : ''}">${c.waiting}</td>
            <td class="${c.lag ? 'warn' : ''}" title="log positions between the newest event queued for it and the newest it took">${c.lag}</td>
            <td>${c.conflated.toLocaleString()}</td></tr>`;
        })
        .join('')}</tbody></table>`
    : '<p class="muted pad">No live connections.</p>';

  $('#insp-topics').innerHTML = now.topics.length
    ? `<table class="insp"><thead><tr><th>Topic</th><th>Subscribers</th></tr></thead><tbody>${now.topics
        .map((x) => `<tr data-topic="${esc(x.topic)}"><td><code>${esc(x.topic)}</code></td><td>${x.subscribers}</td></tr>`)
        .join('')}</tbody></table>`
    : '<p class="muted pad">No subscriptions.</p>';

  $('#insp-presence').innerHTML = now.presence.length
    ? now.presence
        .map(
          (r) => `<div class="insp-room" data-room="${esc(r.room)}"><code>${esc(r.room)}</code> ${Object.entries(r.members)
            .map(([k, n]) => `<span class="avatar" title="${esc(k)}: ${n} connection${n === 1 ? '' : 's'}">${esc(k.slice(0, 2))}</span> <small>${esc(k)}</small>`)
            .join(' ')}</div>`,
        )
        .join('')
    : '<p class="muted pad">Nobody present in any room.</p>';

  $('#insp-errors').innerHTML = now.errors.length
    ? `<table class="insp"><thead><tr><th>When</th><th>Who</th><th>Code</th><th>Message</th></tr></thead><tbody>${now.errors
        .map(
          (e) => `<tr data-code="${esc(e.code)}"><td data-ago="${esc(e.at)}">${ago(e.at)}</td><td>${esc(e.sub)} <small class="muted">${esc(e.transport)}</small></td>
            <td><span class="chip s-failed">${esc(e.code)}</span></td><td class="muted">${esc(e.message)}</td></tr>`,
        )
        .join('')}</tbody></table>`
    : '<p class="muted pad">No errors.</p>';

  $('#insp-closes').innerHTML = now.closes.length
    ? `<table class="insp"><thead><tr><th>When</th><th>Transport</th><th>Who</th><th>Reason</th><th>Lived</th><th>Message</th></tr></thead><tbody>${now.closes
        .map(
          (c) => `<tr data-reason="${esc(c.reason)}"><td data-ago="${esc(c.at)}">${ago(c.at)}</td><td>${esc(c.transport)}</td><td>${esc(c.sub)}</td>
            <td><span class="chip ${c.reason === 'client' || c.reason === 'shutting_down' ? 's-queued' : 's-failed'}">${esc(c.reason)}${c.code ? ` ${c.code}` : ''}</span></td>
            <td>${duration(c.lived_ms)}</td><td class="muted">${esc(c.message)}</td></tr>`,
        )
        .join('')}</tbody></table>`
    : '<p class="muted pad">No connection has ended yet.</p>';
}
