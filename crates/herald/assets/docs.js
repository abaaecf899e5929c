// The HTTP API reference at /docs: renders the server's own /v1/openapi.json
// (no CDN, no framework). Operations are grouped by tag in the order the
// server lists them; request and response schemas are expanded from
// components, with the examples the document carries.

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (v) =>
  String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
// Backticks as code, the only markup the descriptions use.
const prose = (t) => esc(t).replace(/`([^`]+)`/g, '<code>$1</code>');
const METHODS = ['get', 'post', 'put', 'patch', 'delete'];
const TAG_NAMES = {
  jobs: 'Jobs',
  events: 'Event log',
  notifications: 'Notifications',
  realtime: 'Broadcast',
  streaming: 'Realtime streams',
  admin: 'Administration',
  operations: 'Operations',
  demo: 'Demo',
  supabase: 'Supabase compatibility',
};

let doc;

async function main() {
  const r = await fetch('/v1/openapi.json', { cache: 'no-store' });
  doc = await r.json();
  const ops = [];
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const m of METHODS) if (item[m]) ops.push({ path, method: m, op: item[m], id: `${m}-${path}`.replace(/[^A-Za-z0-9]+/g, '-') });
  }
  const tags = [];
  for (const o of ops) {
    const t = (o.op.tags && o.op.tags[0]) || 'other';
    if (!tags.includes(t)) tags.push(t);
  }
  $('#docs-nav').innerHTML = tags
    .map(
      (t) => `<h3>${esc(TAG_NAMES[t] || t)}</h3><ul>${ops
        .filter((o) => ((o.op.tags && o.op.tags[0]) || 'other') === t)
        .map((o) => `<li data-op="${o.id}"><a href="#${o.id}"><span class="m m-${o.method}">${o.method.toUpperCase()}</span> ${esc(o.op.summary || o.path)}</a></li>`)
        .join('')}</ul>`,
    )
    .join('');
  const info = doc.info || {};
  $('#docs-main').innerHTML =
    `<section class="docs-intro"><h1>${esc(info.title || 'API')} HTTP API <small class="muted">${esc(info.version || '')}</small></h1>
      <p>${prose(info.description || '')}</p>
      <p class="muted">Every request authenticates with <code>Authorization: Bearer &lt;token&gt;</code> (a JWT or a worker API key <code>hk_…</code>) unless marked public.
      Errors are <code>{"error":{"code","message"}}</code>. The machine-readable document: <a href="/v1/openapi.json">/v1/openapi.json</a>.</p></section>` +
    tags
      .map(
        (t) => `<section class="docs-tag"><h2>${esc(TAG_NAMES[t] || t)}</h2>${ops
          .filter((o) => ((o.op.tags && o.op.tags[0]) || 'other') === t)
          .map(operation)
          .join('')}</section>`,
      )
      .join('');
  $('#docs-filter').addEventListener('input', (e) => {
    const q = e.target.value.trim().toLowerCase();
    for (const o of ops) {
      const hit = !q || `${o.method} ${o.path} ${o.op.summary || ''} ${o.op.description || ''}`.toLowerCase().includes(q);
      $(`#${o.id}`).hidden = !hit;
      $(`li[data-op="${o.id}"]`).hidden = !hit;
    }
  });
  if (location.hash) {
    const el = document.getElementById(location.hash.slice(1));
    if (el) el.scrollIntoView();
  }
}

function operation(o) {
  const op = o.op;
  const params = op.parameters || [];
  const body = op.requestBody && op.requestBody.content && Object.entries(op.requestBody.content)[0];
  const secured = op.security && op.security.length;
  return `<article class="op" id="${o.id}">
    <h3><span class="m m-${o.method}">${o.method.toUpperCase()}</span> <code class="path">${esc(o.path)}</code> ${secured ? '' : '<span class="chip s-queued">public</span>'}</h3>
    <p class="summary"><b>${esc(op.summary || '')}</b></p>
    ${op.description ? `<p>${prose(op.description)}</p>` : ''}
    ${params.length ? `<h4>Parameters</h4><table class="insp"><thead><tr><th>Name</th><th>In</th><th>Type</th><th>Description</th></tr></thead><tbody>${params
      .map((p) => `<tr><td><code>${esc(p.name)}</code>${p.required ? ' <small class="bad">required</small>' : ''}</td><td>${esc(p.in)}</td><td>${esc(typeOf(p.schema))}</td><td>${prose(p.description || '')}</td></tr>`)
      .join('')}</tbody></table>` : ''}
    ${body ? `<h4>Request body <small class="muted">${esc(body[0])}</small></h4>${schemaBlock(body[1].schema, body[1].example)}` : ''}
    <h4>Responses</h4><table class="insp responses"><tbody>${Object.entries(op.responses || {})
      .map(([code, r]) => {
        const c = r.content && Object.values(r.content)[0];
        const name = c && c.schema ? refName(c.schema) : '';
        return `<tr><td><span class="code c${esc(code[0])}">${esc(code)}</span></td><td>${prose(r.description || '')}${name ? ` <code>${esc(name)}</code>` : ''}</td></tr>`;
      })
      .join('')}</tbody></table>
  </article>`;
}

function resolve(schema) {
  let s = schema;
  for (let i = 0; s && s.$ref && i < 10; i++) s = doc.components.schemas[s.$ref.split('/').pop()];
  return s || {};
}

function refName(schema) {
  if (schema.$ref) return schema.$ref.split('/').pop();
  if (schema.type === 'array' && schema.items) return `${refName(schema.items)}[]`;
  return schema.type || '';
}

function typeOf(schema) {
  if (!schema) return '';
  if (schema.$ref) return refName(schema);
  if (schema.oneOf) return schema.oneOf.map(typeOf).join(' | ');
  const t = Array.isArray(schema.type) ? schema.type.filter((x) => x !== 'null').join(' | ') : schema.type || 'any';
  if (t === 'array') return `${typeOf(schema.items)}[]`;
  return schema.enum ? `${t}: ${schema.enum.join(' | ')}` : t;
}

function schemaBlock(schema, example) {
  const s = resolve(schema);
  const props = Object.entries(s.properties || {});
  const required = new Set(s.required || []);
  const ex = example ?? s.example;
  return `${props.length ? `<table class="insp"><tbody>${props
    .map(([k, v]) => {
      const r = resolve(v);
      const limits = ['minLength', 'maxLength', 'minimum', 'maximum', 'maxItems', 'pattern']
        .filter((x) => v[x] !== undefined || r[x] !== undefined)
        .map((x) => `${x} ${v[x] ?? r[x]}`)
        .join(', ');
      return `<tr><td><code>${esc(k)}</code>${required.has(k) ? ' <small class="bad">required</small>' : ''}</td><td>${esc(typeOf(v))}</td><td>${prose(v.description || r.description || '')}${limits ? ` <small class="muted">(${esc(limits)})</small>` : ''}</td></tr>`;
    })
    .join('')}</tbody></table>` : ''}
    ${ex !== undefined ? `<details open><summary>Example</summary><pre class="example">${esc(JSON.stringify(ex, null, 2))}</pre></details>` : ''}`;
}

main().catch((e) => {
  $('#docs-main').innerHTML = `<p class="error-box">Cannot load /v1/openapi.json: ${esc(e.message)}</p>`;
});
