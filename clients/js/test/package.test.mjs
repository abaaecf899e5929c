// The npm package as a user gets it: `npm pack` (which builds dist/ through
// `prepack`), the tarball installed into a scratch project, and from there:
// `import` and `require()` from Node, TypeScript (node16 and bundler
// resolution, ESM and CommonJS files), a bundler, the React subpath with React
// as a peer, and the installed package's ProgressReporter and HeraldClient
// against the real server.
//
// Nothing here needs the network (npm runs with --offline): the package has no
// dependencies, and React and its types are installed from the dev copy's
// node_modules.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BIN, Server, token, uid } from './harness.mjs';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..'); // clients/js
const pkgJson = JSON.parse(readFileSync(path.join(PKG, 'package.json'), 'utf8'));
const TSC = path.join(PKG, 'node_modules/typescript/bin/tsc');
// --offline: nothing here may need the network (the package has no dependencies,
// React is installed from the dev copy's node_modules).
const NPM_INSTALL = ['--offline', '--no-audit', '--no-fund'];

/** The directories of the dev copy's `names` and of everything they depend on. */
function devClosure(names) {
  const dirs = new Map();
  const visit = (name) => {
    if (dirs.has(name)) return;
    const dir = path.join(PKG, 'node_modules', name);
    dirs.set(name, dir);
    const { dependencies = {} } = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8'));
    for (const dep of Object.keys(dependencies)) visit(dep);
  };
  names.forEach(visit);
  return [...dirs.values()];
}

let tmp; // holds the tarball and the scratch project
let app; // the scratch project
let tarball;
let packed; // `npm pack --json` output for the package
const cleanup = [];

/** The environment for npm and node in the scratch project: none of the npm
 * variables of an enclosing `npm test` (they could point npm at clients/js). */
function env() {
  const e = { ...process.env };
  for (const k of Object.keys(e)) {
    if (/^npm_/i.test(k) && !/^npm_config_(cache|userconfig|globalconfig|registry)$/i.test(k)) delete e[k];
  }
  return e;
}

function run(cmd, args, cwd, what = `${cmd} ${args.join(' ')}`) {
  const r = spawnSync(cmd, args, { cwd, env: env(), encoding: 'utf8', timeout: 170000 });
  if (r.error) throw r.error;
  assert.equal(r.status, 0, `${what} (in ${cwd}) exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

const npm = (args, cwd) => run(process.platform === 'win32' ? 'npm.cmd' : 'npm', args, cwd, `npm ${args.join(' ')}`);

// Node 20 has a global WebSocket only behind a flag: pass it on to the scripts.
const nodeFlags = process.execArgv.filter((a) => a === '--experimental-websocket');

/** Runs `file` (written into the scratch project) with node; its stdout, parsed as JSON. */
function node(file, source, extraEnv = {}) {
  writeFileSync(path.join(app, file), source);
  const r = spawnSync(process.execPath, [...nodeFlags, file], {
    cwd: app,
    env: { ...env(), ...extraEnv },
    encoding: 'utf8',
    timeout: 120000,
  });
  assert.equal(r.status, 0, `node ${file} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(r.stdout);
}

before(() => {
  tmp = mkdtempSync(path.join(tmpdir(), 'herald-js-package-'));
  // `npm pack` runs `prepack` (build.mjs) first, as `npm publish` would.
  const out = npm(['pack', '--pack-destination', tmp, '--json'], PKG);
  packed = JSON.parse(out.slice(out.indexOf('[')))[0];
  tarball = path.join(tmp, packed.filename);
  app = path.join(tmp, 'app');
  mkdirSync(app);
  writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'scratch-app', version: '0.0.0', private: true }, null, 2));
});

after(async () => {
  for (const f of cleanup.reverse()) await f();
  if (tmp && !process.env.KEEP_SCRATCH) rmSync(tmp, { recursive: true, force: true });
});

test('npm pack ships the ES modules, the CommonJS build, the types and the README, and nothing else', () => {
  const files = packed.files.map((f) => f.path).sort();
  const allowed = /^(package\.json|README\.md|react\.js|react\.d\.ts|src\/[\w/]+\.(js|d\.ts)|dist\/(index|react)\.(cjs|d\.cts))$/;
  for (const f of files) assert.match(f, allowed, `unexpected file in the tarball: ${f}`);
  const srcFiles = (dir) =>
    readdirSync(path.join(PKG, dir), { withFileTypes: true }).flatMap((d) =>
      d.isDirectory() ? srcFiles(`${dir}/${d.name}`) : [`${dir}/${d.name}`]);
  for (const f of [...srcFiles('src'), 'package.json', 'README.md', 'react.js', 'react.d.ts',
    'dist/index.cjs', 'dist/index.d.cts', 'dist/react.cjs', 'dist/react.d.cts']) {
    assert.ok(files.includes(f), `${f} is missing from the tarball`);
  }
  assert.equal(packed.name, '@herald/client');
  assert.equal(pkgJson.license, 'Apache-2.0');
});

test('the tarball installs into a fresh project without React, and Node imports it', () => {
  npm(['install', tarball, ...NPM_INSTALL], app);
  const installed = path.join(app, 'node_modules/@herald/client');
  assert.deepEqual(JSON.parse(readFileSync(path.join(installed, 'package.json'), 'utf8')).version, pkgJson.version);

  // ESM: the source modules themselves.
  const esm = node('esm.mjs', `
    import * as herald from '@herald/client';
    import { HeraldClient, ProgressReporter, createClient, HeraldError, TRANSPORTS } from '@herald/client';
    const c = createClient({ url: 'http://127.0.0.1:1', token: 'x' });
    const r = new ProgressReporter({ url: 'http://127.0.0.1:1', token: 'x' });
    console.log(JSON.stringify({
      resolved: import.meta.resolve('@herald/client'),
      exports: Object.keys(herald).sort(),
      client: c instanceof HeraldClient && c.status,
      reporter: typeof r.jobStarted,
      error: new HeraldError('forbidden', 'no') instanceof Error,
      transports: TRANSPORTS,
    }));
  `);
  assert.match(esm.resolved, /node_modules\/@herald\/client\/src\/index\.js$/);
  assert.equal(esm.client, 'connecting');
  assert.equal(esm.reporter, 'function');
  assert.equal(esm.error, true);
  assert.deepEqual(esm.transports, ['websocket', 'sse', 'longpoll']);
  for (const name of ['HeraldClient', 'ProgressReporter', 'createClient', 'HeraldError', 'JobView', 'JobStreamView', 'StreamWriter', 'STATUSES']) {
    assert.ok(esm.exports.includes(name), `ESM export ${name}`);
  }

  // CommonJS: dist/index.cjs, the same exports. React is an optional peer:
  // the main entry never needs it, the /react subpath says it is missing.
  const cjs = node('cjs.cjs', `
    const herald = require('@herald/client');
    const { HeraldClient, ProgressReporter, createClient } = herald;
    const c = createClient({ url: 'http://127.0.0.1:1', token: 'x' });
    let reactError = null;
    try { require('@herald/client/react'); } catch (e) { reactError = e.code + ' ' + e.message.split('\\n')[0]; }
    console.log(JSON.stringify({
      resolved: require.resolve('@herald/client'),
      exports: Object.keys(herald).sort(),
      client: c instanceof HeraldClient && c.status,
      reporter: typeof new ProgressReporter({ url: 'http://127.0.0.1:1', token: 'x' }).artifact,
      version: require('@herald/client/package.json').version,
      reactError,
    }));
  `);
  assert.match(cjs.resolved, /node_modules\/@herald\/client\/dist\/index\.cjs$/);
  assert.deepEqual(cjs.exports, esm.exports, 'require() and import give the same names');
  assert.equal(cjs.client, 'connecting');
  assert.equal(cjs.reporter, 'function');
  assert.equal(cjs.version, pkgJson.version);
  assert.match(cjs.reactError, /^MODULE_NOT_FOUND .*'react'/);
});

test('a bundler bundles the installed package (ES modules, tree-shaken) and the bundle runs', async () => {
  const esbuild = await import(path.join(PKG, 'node_modules/esbuild/lib/main.js'));
  writeFileSync(path.join(app, 'entry.mjs'), `
    import { createClient, ProgressReporter } from '@herald/client';
    const c = createClient({ url: 'http://127.0.0.1:1', token: 'x', transports: ['sse'] });
    console.log(JSON.stringify({ status: c.status, reporter: typeof ProgressReporter }));
  `);
  writeFileSync(path.join(app, 'worker.mjs'), `
    import { ProgressReporter } from '@herald/client';
    console.log(JSON.stringify({ reporter: typeof new ProgressReporter({ url: 'http://127.0.0.1:1', token: 'x' }).progress }));
  `);
  const res = await esbuild.build({
    absWorkingDir: app,
    entryPoints: ['entry.mjs', 'worker.mjs'],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    outdir: 'bundle',
    outExtension: { '.js': '.mjs' },
    metafile: true,
    logLevel: 'silent',
  });
  assert.deepEqual(res.errors, []);
  const inputs = Object.keys(res.metafile.inputs);
  assert.ok(inputs.some((i) => i.startsWith('node_modules/@herald/client/src/')), `bundled the ES modules: ${inputs}`);
  assert.ok(!inputs.some((i) => i.includes('/dist/')), `not the CommonJS build: ${inputs}`);

  const out = node('bundle/entry.mjs', readFileSync(path.join(app, 'bundle/entry.mjs'), 'utf8'));
  assert.equal(out.status, 'connecting');
  assert.equal(out.reporter, 'function');
  const worker = readFileSync(path.join(app, 'bundle/worker.mjs'), 'utf8');
  assert.deepEqual(node('bundle/worker.mjs', worker), { reporter: 'function' });
  // sideEffects: false holds: a worker that only reports progress carries no
  // transport code (the WebSocket subprotocol is in the client's bundle only).
  assert.match(readFileSync(path.join(app, 'bundle/entry.mjs'), 'utf8'), /herald\.v1/);
  assert.doesNotMatch(worker, /herald\.v1/, 'the transports were tree-shaken from worker.mjs');
});

test("the installed package's ProgressReporter reports a job and its HeraldClient receives it live", async () => {
  assert.ok(existsSync(BIN), `no server binary at ${BIN}: cargo build -p herald, or set HERALD_BIN`);
  const s = await Server.start('package');
  cleanup.push(() => s.stop());
  const id = `pkg-${uid()}`;
  const out = node('live.mjs', `
    import { createClient, ProgressReporter } from '@herald/client';
    const { URL_, STAFF, WORKER, JOB } = process.env;
    const client = createClient({ url: URL_, token: STAFF, backoff: { initialMs: 100, maxMs: 1000 } });
    const seen = [];
    let done;
    const finished = new Promise((r) => (done = r));
    const deadline = setTimeout(() => { console.error('timed out; seen', JSON.stringify(seen)); process.exit(2); }, 30000);
    client.subscribe('jobs', {
      onEvent: (e) => {
        if (e.data && (e.data.id === JOB || e.data.job_id === JOB)) seen.push(e.type);
        if (e.type === 'job.completed' && e.data && e.data.id === JOB) done();
      },
      onError: (e) => { console.error('subscription error', e); process.exit(3); },
    });
    await new Promise((r) => { if (client.status === 'connected') r(); else client.onStatus((s) => s === 'connected' && r()); });

    const reporter = new ProgressReporter({ url: URL_, token: WORKER });
    await reporter.jobStarted(JOB, { title: 'from the npm tarball', owner: 'alice', total: 2 });
    for (const t of ['a', 'b']) {
      await reporter.taskStarted(JOB, t, 'task ' + t);
      await reporter.taskSucceeded(JOB, t);
    }
    await reporter.jobCompleted(JOB);
    await finished;

    const view = client.watchJob(JOB);
    const job = await new Promise((r) => view.subscribe((j) => j && j.status === 'completed' && r(j)));
    const result = { seen, transport: client.transport, job: [job.status, job.succeeded, job.total], tasks: view.tasks.length };
    view.close();
    client.close();
    clearTimeout(deadline);
    console.log(JSON.stringify(result));
  `, {
    URL_: s.url,
    STAFF: token('sam', 'acme', 'staff'),
    WORKER: token('worker-1', 'acme', 'worker'),
    JOB: id,
  });
  assert.equal(out.transport, 'websocket');
  assert.equal(out.seen[0], 'job.created', `events: ${out.seen}`);
  assert.equal(out.seen.at(-1), 'job.completed', `events: ${out.seen}`);
  assert.deepEqual(out.job, ['completed', 2, 2]);
  assert.equal(out.tasks, 2);
  const log = await s.log_events(token('sam', 'acme', 'staff'), `job:${id}`);
  assert.equal(log.at(-1).type, 'job.completed');
});

test('with React installed, the /react subpath works from import and require()', () => {
  // React is a peer dependency: the app installs it, here the dev copy's React
  // and its types (with what they depend on) as copies (--install-links).
  npm(['install', ...devClosure(['react', '@types/react']), '--install-links', ...NPM_INSTALL], app);

  const esm = node('react.mjs', `
    import React from 'react';
    import { createRequire } from 'node:module';
    import { createClient } from '@herald/client';
    import * as hooks from '@herald/client/react';
    const client = createClient({ url: 'http://127.0.0.1:1', token: 'x' });
    const el = hooks.HeraldProvider({ client, children: null });
    console.log(JSON.stringify({
      resolved: import.meta.resolve('@herald/client/react'),
      exports: Object.keys(hooks).sort(),
      element: React.isValidElement(el),
      sameReact: createRequire(import.meta.resolve('@herald/client/react')).resolve('react') === createRequire(import.meta.url).resolve('react'),
    }));
  `);
  assert.match(esm.resolved, /node_modules\/@herald\/client\/react\.js$/);
  assert.deepEqual(esm.exports, ['HeraldProvider', 'useConnectionStatus', 'useHeraldClient', 'useJob', 'useJobStream', 'useJobs', 'useNotifications', 'usePresence']);
  assert.equal(esm.element, true, 'HeraldProvider makes a React element');
  assert.equal(esm.sameReact, true, "the package uses the app's React (a peer, not a copy of its own)");

  const cjs = node('react.cjs', `
    const React = require('react');
    const { createClient } = require('@herald/client');
    const hooks = require('@herald/client/react');
    const el = hooks.HeraldProvider({ client: createClient({ url: 'http://127.0.0.1:1', token: 'x' }), children: null });
    console.log(JSON.stringify({
      resolved: require.resolve('@herald/client/react'),
      exports: Object.keys(hooks).filter((k) => k !== '__esModule').sort(),
      element: React.isValidElement(el),
      sameReact: require.resolve('react', { paths: [require('path').dirname(require.resolve('@herald/client/react'))] }) === require.resolve('react'),
    }));
  `);
  assert.match(cjs.resolved, /node_modules\/@herald\/client\/dist\/react\.cjs$/);
  assert.deepEqual(cjs.exports, esm.exports);
  assert.equal(cjs.element, true);
  assert.equal(cjs.sameReact, true);
});

test('TypeScript type-checks the installed package: node16 (ESM and CommonJS files) and bundler resolution', () => {
  const usage = (header) => `${header}
const herald = createClient({ url: 'http://127.0.0.1:4000', getToken: async () => 'token' });
const status: Status = herald.status;
const sub = herald.subscribe('job:1', { since: 5, onEvent: (e: HeraldEvent) => console.log(e.position, e.type) });
const pos: number | null = sub.position;
herald.watchJob('1').subscribe((job: Job | null) => console.log(job?.progress));
const reporter = new ProgressReporter({ url: 'http://127.0.0.1:4000', token: 'hk_x_y' });
void reporter.jobStarted('j', { title: 't', total: 3 }).catch((e: unknown) => e instanceof HeraldError && e.code);
function View({ id }: { id: string }) {
  const { job, tasks, loading } = useJob(id);
  const { status: s } = useConnectionStatus();
  return loading ? s : \`\${job?.title} \${tasks.length}\`;
}
const provider = HeraldProvider({ client: herald, children: null });
// @ts-expect-error: the types are real, not any
const wrong: number = herald.status;
export { status, pos, View, provider, wrong };
`;
  const imports = `import { createClient, ProgressReporter, HeraldError, type Status, type HeraldEvent, type Job } from '@herald/client';
import { useJob, useConnectionStatus, HeraldProvider } from '@herald/client/react';`;
  writeFileSync(path.join(app, 'esm.mts'), usage(imports));
  writeFileSync(path.join(app, 'cjs.cts'), usage(imports)); // compiles to require(): the "require" types
  writeFileSync(path.join(app, 'app.ts'), usage(imports));
  const compilerOptions = { strict: true, noEmit: true, target: 'ES2020', lib: ['ES2020', 'DOM'], types: [], skipLibCheck: false };
  writeFileSync(path.join(app, 'tsconfig.node16.json'), JSON.stringify({
    compilerOptions: { ...compilerOptions, module: 'Node16', moduleResolution: 'Node16' },
    files: ['esm.mts', 'cjs.cts'],
  }));
  writeFileSync(path.join(app, 'tsconfig.bundler.json'), JSON.stringify({
    compilerOptions: { ...compilerOptions, module: 'ESNext', moduleResolution: 'Bundler' },
    files: ['app.ts'],
  }));

  const listed = (config) => run(process.execPath, [TSC, '-p', config, '--listFiles'], app, `tsc -p ${config}`)
    .split('\n').map((l) => l.trim()).filter((l) => l.includes('@herald/client'));
  const node16 = listed('tsconfig.node16.json');
  for (const f of ['src/index.d.ts', 'react.d.ts', 'dist/index.d.cts', 'dist/react.d.cts']) {
    assert.ok(node16.some((l) => l.endsWith(`node_modules/@herald/client/${f}`)), `node16 resolution used ${f}: ${node16}`);
  }
  const bundler = listed('tsconfig.bundler.json');
  assert.ok(bundler.some((l) => l.endsWith('node_modules/@herald/client/src/index.d.ts')), `bundler: ${bundler}`);
  assert.ok(!bundler.some((l) => l.includes('/dist/')), `bundler resolution takes the ESM types: ${bundler}`);
});
