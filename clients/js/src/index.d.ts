// Types of @herald/client (hand-written; the runtime is src/index.js).

export type Status = 'connecting' | 'connected' | 'reconnecting' | 'offline' | 'error';
export type TransportKind = 'websocket' | 'sse' | 'longpoll';
export const STATUSES: readonly Status[];
export const TRANSPORTS: readonly TransportKind[];

export type JobStatus = 'queued' | 'running' | 'completed' | 'failed' | 'cancelled' | 'stalled';
export type TaskStatus = 'pending' | 'running' | 'succeeded' | 'failed' | 'skipped';
export type EventType =
  | 'job.created' | 'job.updated' | 'job.completed' | 'job.failed' | 'job.cancelled' | 'job.stalled'
  | 'task.created' | 'task.updated' | 'artifact.created' | 'notification.created' | 'notification.read';

export interface Job {
  id: string;
  tenant: string;
  owner: string | null;
  kind: string | null;
  title: string | null;
  status: JobStatus;
  total: number | null;
  succeeded: number;
  failed: number;
  /** 0–100 */
  progress: number;
  stage: string | null;
  current_item: string | null;
  metadata: unknown;
  errors: { at: string; message: string }[];
  created_at: string;
  started_at: string | null;
  updated_at: string;
  finished_at: string | null;
  /** Grows with every change. */
  version: number;
  counts_reported: boolean;
  progress_reported: boolean;
}

export interface Task {
  id: string;
  job_id: string;
  name: string | null;
  status: TaskStatus;
  attempts: number;
  error: string | null;
  created_at: string;
  started_at: string | null;
  updated_at: string;
  finished_at: string | null;
}

export interface Artifact {
  id: string;
  job_id: string;
  kind: string;
  payload: unknown;
  created_at?: string;
}

export interface Notification {
  id: string;
  recipient: string;
  level: 'info' | 'success' | 'warning' | 'error';
  title: string;
  body: string | null;
  link: string | null;
  job_id: string | null;
  read: boolean;
  created_at: string;
}

/** One event of the log, as the application sees it: once, in position order. */
export interface HeraldEvent<T = any> {
  topic: string;
  position: number;
  type: EventType;
  data: T;
  time: string;
}

export interface Resync {
  topic: string;
  position: number;
  /** The topic's current state, or null when the transport gives none (long-poll): reload over HTTP. */
  snapshot: any | null;
}

export interface BroadcastMessage {
  topic: string;
  event: string;
  data: unknown;
  from: string | null;
}

export type PresenceState = Record<string, { metas: Array<Record<string, unknown> & { phx_ref: string }> }>;

export class HeraldError extends Error {
  constructor(code: string, message?: string, status?: number);
  /** The server's error code (docs/API.md, docs/PROTOCOL.md) or the client's own (`disconnected`, `timeout`, ...). */
  code: string;
  /** HTTP status, when the error came from an HTTP answer. */
  status?: number;
}

export interface ClientOptions {
  /**
   * Server base URL, e.g. `https://herald.example.com` (defaults to the page's
   * origin in a browser), or the nodes of a cluster: a connection that fails
   * or drops moves on to the next, and subscriptions resume there.
   */
  url?: string | string[];
  /** A JWT or worker API key. */
  token?: string;
  /** Called for the first token and again before it expires (refreshed in place) or after an auth failure. */
  getToken?: () => Promise<string> | string;
  /** Transports to try, in order. Default: all three. */
  transports?: TransportKind[];
  /** WebSocket implementation, for runtimes without a global one. */
  WebSocket?: any;
  /** fetch implementation. Default: the global fetch. */
  fetch?: typeof fetch;
  /** Client ping interval on the WebSocket; the connection is declared dead after two silent rounds. Default: the server's heartbeat, at most 20 s. */
  heartbeatMs?: number;
  /** Ask the server for compact WebSocket frames (`herald.v1c`: positional arrays, fewer bytes per delivery). Default true. */
  compact?: boolean;
  /** How long a connection attempt may take. Default 10 s. */
  connectTimeoutMs?: number;
  /** Reconnect backoff (exponential with jitter). Default { initialMs: 500, maxMs: 30000 }. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** On SSE or long-poll: how often to try the WebSocket again. Default 60 s. */
  wsRetryMs?: number;
  /** Long-poll wait, seconds. Default 25. */
  pollWaitSeconds?: number;
  /** Refresh the token this long before it expires (at most 20% of its lifetime early). Default 60 s. */
  refreshBeforeMs?: number;
}

export interface SubscribeHandlers {
  /** Resume after this position (the events after it are replayed, then live ones). */
  since?: number;
  /**
   * `false`: every progress tick, even while the connection is behind (the
   * server otherwise lets a newer tick of a job replace one still queued).
   * Holds for the topic as long as it is subscribed. Default: conflate.
   */
  conflate?: boolean;
  onEvent?: (event: HeraldEvent) => void;
  /** The position was older than retention: take the snapshot instead of the lost events. */
  onResync?: (resync: Resync) => void;
  /** The subscription ended (e.g. `forbidden`, `not_found`). */
  onError?: (error: HeraldError) => void;
  onBroadcast?: (message: BroadcastMessage) => void;
  onPresence?: (state: PresenceState) => void;
}

export interface Subscription {
  readonly topic: string;
  /** The last position delivered (the resume cursor). */
  readonly position: number | null;
  unsubscribe(): void;
}

/** Which jobs a live list holds; every field given must match (none: every job the token may see). */
export interface JobQuery {
  /** One status or any of several. */
  status?: JobStatus | JobStatus[];
  kind?: string;
  /** Customers always get their own jobs, whatever this says. */
  owner?: string;
  /** Metadata keys and the value each must have (a number or boolean in metadata matches its text). */
  tag?: Record<string, string | number | boolean>;
  /** Seconds: `updated_at` at most this old (1 to 2,678,400). */
  updatedWithin?: number;
}

export interface JobListOptions {
  /** `jobs` leaves out the oldest finished jobs past this many. Default: none left out. */
  max?: number;
  /** On long-poll (no server-side lists): the REST page holds at most this many jobs. Default 10,000. */
  limit?: number;
}

/** A job that left a live list. */
export interface JobLeave {
  id: string;
  /** The job as it is now (e.g. `completed`), or null when it aged out of `updatedWithin` or is gone. */
  job: Job | null;
  /** The job as the list last held it. */
  previous: Job;
}

export interface JobStreamOptions {
  /** The first offset wanted: 0 (default) for the whole stream as far as the server keeps it; `null` for new chunks only, from the stream's end. */
  offset?: number | null;
  /** `chunks` keeps at most this many, the newest. Default 5,000. */
  max?: number;
}

/** Chunks `from`–`to` (exclusive) are gone: retention or the stream's size bound dropped them before they were read. */
export interface StreamTruncation {
  from: number;
  to: number;
}

/** A job output stream's append, as the server answers it. */
export interface Appended {
  stream: string;
  /** Offset of the first chunk appended. */
  first_offset: number;
  /** The offset the next chunk will get. */
  next_offset: number;
  /** The oldest offset still kept. */
  floor: number;
}

export interface Identity {
  sub: string | null;
  role: string | null;
  tenant: string | null;
  exp: number | null;
}

type Unsubscribe = () => void;

export class HeraldClient {
  constructor(options: ClientOptions);
  /** The server (node) in use now. */
  readonly url: string;
  /** Every node the client may use, in order. */
  readonly urls: string[];
  readonly status: Status;
  readonly transport: TransportKind | null;
  /** Who the token says we are (from the token's claims, then the server's `welcome`). */
  identity: Identity | null;
  /** Time (ms since the epoch) of the last event received. */
  lastEventAt: number | null;

  connect(): this;
  /** Tries to reconnect now rather than at the end of the backoff ("retry now"). */
  retryNow(): void;
  close(): void;
  token(): Promise<string>;
  /** Replaces the token without reconnecting (WebSocket `refresh`). */
  setToken(token: string): Promise<{ expires_at: number | null; dropped: string[] } | null>;
  request<T = any>(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<T>;

  subscribe(topic: string, handlers?: SubscribeHandlers): Subscription;
  broadcast(room: string, event: string, data?: unknown): Promise<{ delivered: number }>;
  onBroadcast(room: string, fn: (message: BroadcastMessage) => void): Unsubscribe;

  watchJob(id: string, options?: { history?: boolean; historyLimit?: number }): JobView;
  /** A live, filtered job list: a snapshot, then each job entering, changing in or leaving it. */
  jobList(query?: JobQuery, options?: JobListOptions): JobListView;
  /** A live job list with watchJobs' defaults (`max` 500); a list too large for the server follows the `jobs` topic instead. */
  watchJobs(options?: JobQuery & { limit?: number; max?: number }): JobsView;
  notifications(options?: { sub?: string; limit?: number }): NotificationsView;
  presence(room: string, meta?: Record<string, unknown>): PresenceView;
  /**
   * Follows a job's output stream: the chunks from `offset` (default 0),
   * then live, each once and in order across reconnects and transports.
   */
  jobStream<T = unknown>(jobId: string, name: string, options?: JobStreamOptions): JobStreamView<T>;

  onStatus(fn: (status: Status, detail?: HeraldError) => void): Unsubscribe;
  on(type: 'status', fn: (status: Status, detail?: HeraldError) => void): Unsubscribe;
  on(type: 'event', fn: (event: HeraldEvent) => void): Unsubscribe;
  on(type: 'broadcast', fn: (message: BroadcastMessage) => void): Unsubscribe;
  on(type: 'fallback', fn: (change: { from: TransportKind; to: TransportKind; reason?: HeraldError }) => void): Unsubscribe;
  on(type: 'welcome', fn: (welcome: { conn: number; sub: string; tenant: string; role: string; expires_at: number | null; heartbeat_ms: number }) => void): Unsubscribe;
  on(type: 'token', fn: (info: { expiresAt: number | null }) => void): Unsubscribe;
  on(type: 'error', fn: (error: HeraldError) => void): Unsubscribe;
  off(type: string, fn: (...args: any[]) => void): void;
}

export function createClient(options: ClientOptions): HeraldClient;

/** A live value: `subscribe(fn)` (called with the current value once loaded, then on each change) or `for await`. */
declare class View<T> implements AsyncIterable<T> {
  loading: boolean;
  error: HeraldError | null;
  readonly value: T;
  subscribe(fn: (value: T) => void): Unsubscribe;
  on(type: 'change', fn: (value: T) => void): Unsubscribe;
  close(): void;
  [Symbol.asyncIterator](): AsyncIterator<T>;
}

export class JobView extends View<Job | null> {
  readonly id: string;
  job: Job | null;
  tasks: Task[];
  artifacts: Artifact[];
  /** Events seen by this view, oldest first (with `history: true`, from the job's creation). */
  events: HeraldEvent[];
}

export class JobListView extends View<Job[]> {
  /** The list's name on the connection (`l1`, `l2`, ...). */
  readonly name: string;
  readonly query: JobQuery;
  /** The members, most recently updated first. */
  jobs: Job[];
  on(type: 'change', fn: (jobs: Job[]) => void): Unsubscribe;
  /** A job started to match (created, or moved into the query); not fired for the first snapshot. */
  on(type: 'enter', fn: (job: Job) => void): Unsubscribe;
  /** A member changed and still matches. */
  on(type: 'update', fn: (job: Job) => void): Unsubscribe;
  on(type: 'leave', fn: (leave: JobLeave) => void): Unsubscribe;
}

export class JobsView extends JobListView {
  /** The topic followed when there can be no live list (long-poll, a list too large). */
  readonly topic: string;
}

export class NotificationsView extends View<{ items: Notification[]; unreadCount: number }> {
  sub?: string;
  items: Notification[];
  unreadCount: number;
  markRead(id: string): Promise<Notification>;
  markAllRead(): Promise<{ marked_read: number }>;
  on(type: 'change', fn: (value: { items: Notification[]; unreadCount: number }) => void): Unsubscribe;
  on(type: 'notification', fn: (n: Notification) => void): Unsubscribe;
}

export class PresenceView extends View<Array<Record<string, unknown> & { sub: string }>> {
  readonly topic: string;
  state: PresenceState;
  list(): Array<Record<string, unknown> & { sub: string }>;
  members(): string[];
  set(meta: Record<string, unknown>): Promise<unknown>;
  broadcast(event: string, data?: unknown): Promise<{ delivered: number }>;
  on(type: 'change', fn: (value: Array<Record<string, unknown> & { sub: string }>) => void): Unsubscribe;
  on(type: 'broadcast', fn: (message: BroadcastMessage) => void): Unsubscribe;
}

/** A job's output stream, live (`client.jobStream`). `value` is `chunks`. */
export class JobStreamView<T = unknown> extends View<T[]> {
  readonly jobId: string;
  readonly name: string;
  /** `stream:<job>:<name>` */
  readonly topic: string;
  /** The newest chunks, at most `max`, oldest first: `chunks[i]` is at offset `offset + i`. A new array on every change. */
  chunks: T[];
  /** Offset of `chunks[0]` (null until known, with `offset: null`). */
  offset: number | null;
  /** The next offset wanted: every chunk before it was received (null until known, with `offset: null`). */
  end: number | null;
  /** The last truncation seen, or null. */
  truncated: StreamTruncation | null;
  on(type: 'change', fn: (chunks: T[]) => void): Unsubscribe;
  /** New chunks, in order, the first at `offset` (every chunk once, including those `max` leaves out of `chunks`). */
  on(type: 'chunks', fn: (chunks: T[], offset: number) => void): Unsubscribe;
  /** Chunks were dropped before this view read them; `chunks` starts again at `to`. */
  on(type: 'truncated', fn: (t: StreamTruncation) => void): Unsubscribe;
}

export interface ProgressReport {
  status?: 'running' | 'completed' | 'failed' | 'cancelled';
  total?: number;
  succeeded?: number;
  failed?: number;
  progress?: number;
  stage?: string;
  current_item?: string;
  metadata?: Record<string, unknown>;
  error?: string;
}

export interface ReporterOptions {
  url: string;
  token?: string;
  getToken?: () => Promise<string> | string;
  fetch?: typeof fetch;
  /** Retries after the first attempt, for network errors, 5xx, 408 and 429. Default 5. */
  retries?: number;
  /** Window in which progress() calls merge into one request. Default 250 ms. */
  coalesceMs?: number;
  backoff?: { initialMs?: number; maxMs?: number };
  /** Per-request timeout. Default 15 s. */
  timeoutMs?: number;
  /** Stream writers: most chunks in one append (at most 10,000). Default 1,000. */
  streamBatch?: number;
  /** Stream writers: how long a batch waits after its first chunk. Default 100 ms. */
  streamLingerMs?: number;
}

/** Writes one job output stream (`reporter.stream(jobId, name)`), in batches. */
export class StreamWriter<T = unknown> {
  readonly jobId: string;
  readonly name: string;
  /** Most chunks in one append. */
  readonly batch: number;
  readonly lingerMs: number;
  /** The error of the append that failed for good, or null. */
  failure: HeraldError | null;
  closed: boolean;
  /** Appends sent and answered so far. */
  appends: number;
  /**
   * Queues one chunk (any JSON value of at most 64 KiB as JSON; throws at once
   * otherwise, after close() and after a failed append). Resolves with the
   * answer of the append it travels in; need not be awaited.
   */
  write(chunk: T): Promise<Appended>;
  /** Sends what is queued and waits for every append; throws a failed append's error. */
  flush(): Promise<void>;
  /** Flushes; later writes throw `closed`. */
  close(): Promise<void>;
}

export class ProgressReporter {
  constructor(options: ReporterOptions);
  send<T = any>(method: string, path: string, body?: unknown): Promise<T>;
  createJob(job: { id?: string; owner?: string; title?: string; kind?: string; total?: number; status?: 'queued' | 'running'; metadata?: unknown; tasks?: { id?: string; name?: string; status?: TaskStatus }[] }): Promise<Job>;
  jobStarted(jobId: string, options?: { title?: string; kind?: string; owner?: string; total?: number; stage?: string; metadata?: unknown; tasks?: { id?: string; name?: string }[] }): Promise<Job>;
  taskStarted(jobId: string, taskId: string, name?: string): Promise<Task>;
  taskSucceeded(jobId: string, taskId: string): Promise<Task>;
  taskFailed(jobId: string, taskId: string, error?: string | Error): Promise<Task>;
  progress(jobId: string, report: ProgressReport): Promise<Job>;
  artifact(jobId: string, kind: string, payload: unknown): Promise<Artifact>;
  jobCompleted(jobId: string, options?: { stage?: string; metadata?: unknown }): Promise<Job>;
  jobFailed(jobId: string, error?: string | Error): Promise<Job>;
  /** Sends coalesced progress and stream chunks now and waits for everything queued (for one job, or all). */
  flush(jobId?: string): Promise<void>;
  /** A writer of the job's output stream `name`: batches of up to `batch` chunks, sent `lingerMs` after the first. */
  stream<T = unknown>(jobId: string, name: string, options?: { batch?: number; lingerMs?: number }): StreamWriter<T>;
}

export function backoffDelay(attempt: number, initialMs?: number, maxMs?: number): number;
export function decodeToken(token: string): Record<string, any> | null;
