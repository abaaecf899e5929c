// Types of @herald/client/react.
import type { ReactNode, ReactElement } from 'react';
import type {
  HeraldClient, HeraldError, Job, Task, Artifact, HeraldEvent, Notification, PresenceState, Status, TransportKind, JobQuery,
  JobStreamOptions,
} from './src/index.js';

export function HeraldProvider(props: { client: HeraldClient; children?: ReactNode }): ReactElement;
export function useHeraldClient(client?: HeraldClient): HeraldClient;

interface Live {
  loading: boolean;
  error: HeraldError | null;
}

export function useJob(
  id: string | null | undefined,
  options?: { client?: HeraldClient; history?: boolean; historyLimit?: number },
): Live & { job: Job | null; tasks: Task[]; artifacts: Artifact[]; events: HeraldEvent[] };

/** A live job list (`client.watchJobs`); the query is compared by value. */
export function useJobs(options?: JobQuery & {
  client?: HeraldClient;
  /** `jobs` leaves out the oldest finished jobs past this many. Default 500. */
  max?: number;
  /** The REST page when the view cannot have a live list. Default 200. */
  limit?: number;
}): Live & { jobs: Job[] };

/**
 * A job's output stream (`client.jobStream`), live: `chunks` (a new array on
 * every change, the newest `max`), `offset` of `chunks[0]`, `end` the next
 * offset (null until known with `offset: null`), the last truncation seen.
 */
export function useJobStream<T = unknown>(
  jobId: string | null | undefined,
  name: string | null | undefined,
  options?: JobStreamOptions & { client?: HeraldClient },
): Live & { chunks: T[]; end: number | null; offset: number | null; truncated: { from: number; to: number } | null };

export function useNotifications(options?: { client?: HeraldClient; sub?: string; limit?: number }): Live & {
  items: Notification[];
  unreadCount: number;
  markRead(id: string): Promise<Notification>;
  markAllRead(): Promise<{ marked_read: number }>;
};

export function usePresence(
  room: string | null | undefined,
  meta?: Record<string, unknown>,
  options?: { client?: HeraldClient },
): Live & {
  members: string[];
  list: Array<Record<string, unknown> & { sub: string }>;
  state: PresenceState;
  broadcast(event: string, data?: unknown): Promise<{ delivered: number }>;
};

export function useConnectionStatus(options?: { client?: HeraldClient }): {
  status: Status;
  transport: TransportKind | null;
  lastEventAt: number | null;
};
