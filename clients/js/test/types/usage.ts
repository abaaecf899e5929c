// Compiled (not run) by types.test.mjs: the hand-written .d.ts files must
// describe the API the way the docs use it.
import { createClient, ProgressReporter, HeraldError, JobListView, JobStreamView, StreamWriter, type Job, type JobQuery, type JobLeave, type HeraldEvent, type Status, type Appended } from '@herald/client';
import { useJob, useJobs, useJobStream, useNotifications, usePresence, useConnectionStatus, HeraldProvider } from '@herald/client/react';

const herald = createClient({ url: 'http://127.0.0.1:4000', getToken: async () => 'token', transports: ['websocket', 'sse'] });
const status: Status = herald.status;
herald.onStatus((s, detail) => console.log(s, detail?.code));
const sub = herald.subscribe('job:1', { since: 5, onEvent: (e: HeraldEvent) => console.log(e.position, e.type) });
const pos: number | null = sub.position;
sub.unsubscribe();

const view = herald.watchJob('1', { history: true });
view.subscribe((job: Job | null) => console.log(job?.progress, view.tasks.length, view.artifacts, view.events));
async function iterate() {
  for await (const job of herald.watchJob('2')) if (job?.status === 'completed') break;
  for await (const jobs of herald.watchJobs({ owner: 'alice' })) console.log(jobs.map((j) => j.id));
}
const notes = herald.notifications();
notes.on('notification', (n) => console.log(n.title, n.job_id));
void notes.markAllRead().then((r) => r.marked_read);
const room = herald.presence('room:job:1', { name: 'alice' });
console.log(room.members(), room.list()[0]?.sub);
void herald.broadcast('room:lobby', 'typing', { field: 'title' }).then((r) => r.delivered);
void herald.setToken('t').then((ack) => ack?.dropped);
herald.on('fallback', ({ from, to }) => console.log(from, to));
herald.subscribe('job:1', { conflate: false, onEvent: (e) => console.log(e.data) });

// Live job lists.
const query: JobQuery = { status: ['running', 'stalled'], kind: 'crawl', tag: { env: 'prod', n: 4 }, updatedWithin: 3600 };
const active: JobListView = herald.jobList(query, { max: 100 });
active.on('enter', (job: Job) => console.log('in', job.id, job.progress));
active.on('update', (job) => console.log(job.version));
active.on('leave', ({ id, job, previous }: JobLeave) => console.log(id, job?.status ?? 'aged out', previous.status));
active.on('change', (jobs) => console.log(jobs.length, active.jobs[0]?.updated_at, active.name, active.query.status));
const one = herald.jobList({ status: 'queued' });
one.close();
const watched = herald.watchJobs({ owner: 'alice', status: ['running', 'queued'], max: 50 });
console.log(watched.topic, watched.jobs.length);

// Job output streams.
const log: JobStreamView<string> = herald.jobStream<string>('j', 'log', { offset: 0, max: 2000 });
log.on('chunks', (chunks: string[], offset: number) => console.log(offset, chunks.join('\n')));
log.on('truncated', ({ from, to }) => console.log(`${to - from} lines dropped`));
log.subscribe((chunks) => console.log(chunks.length, log.offset, log.end, log.truncated?.to));
const tokens = herald.jobStream<{ token: string }>('j', 'tokens', { offset: null });
void (async () => {
  for await (const all of tokens) console.log(all.map((t) => t.token).join(''));
})();
tokens.close();

const reporter = new ProgressReporter({ url: 'http://127.0.0.1:4000', token: 'hk_x_y', retries: 3, streamBatch: 500, streamLingerMs: 50 });
async function writeLog() {
  const out: StreamWriter<string> = reporter.stream<string>('j', 'log', { batch: 100 });
  out.write('Fetching /pricing');
  const appended: Appended = await out.write('done');
  console.log(appended.first_offset, appended.next_offset, out.appends, out.failure?.code);
  await out.flush();
  await out.close();
  // @ts-expect-error: this writer takes strings
  out.write({ token: 'x' });
}
async function work() {
  await reporter.jobStarted('j', { title: 't', owner: 'alice', total: 3 });
  await reporter.taskStarted('j', 't1', 'Yelp');
  await reporter.taskFailed('j', 't1', new Error('captcha'));
  await reporter.progress('j', { stage: 'x', succeeded: 1 });
  const done: Job = await reporter.jobCompleted('j');
  try {
    await reporter.jobFailed('j', 'boom');
  } catch (e) {
    if (e instanceof HeraldError) console.log(e.code, e.status);
  }
  return done;
}

function Widget() {
  const { job, tasks, loading, error } = useJob('1', { history: true });
  const { jobs } = useJobs({ owner: 'alice' });
  const { jobs: crawling, loading: l2 } = useJobs({ status: ['running', 'stalled'], kind: 'crawl', tag: { env: 'prod' }, updatedWithin: 600 });
  void [crawling.map((j) => j.progress), l2];
  const { unreadCount, markRead } = useNotifications();
  const { members, broadcast } = usePresence('room:job:1', { name: 'a' });
  const { status: s, transport } = useConnectionStatus();
  const { chunks, end, offset, loading: l3, error: e3 } = useJobStream<string>('1', 'log', { max: 500 });
  const { chunks: any } = useJobStream('1', null);
  void [chunks.join('\n'), end, offset, l3, e3?.code, any.length];
  void markRead('n1');
  void broadcast('hi');
  return `${job?.progress} ${tasks.length} ${loading} ${error?.code} ${jobs.length} ${unreadCount} ${members} ${s} ${transport}`;
}
const provider = HeraldProvider({ client: herald });
export { status, pos, iterate, work, writeLog, Widget, provider };
