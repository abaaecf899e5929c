// React hooks for @herald/client (docs/CLIENT.md). `react` is a peer
// dependency; every hook opens its live view on mount and closes it on
// unmount (or when its arguments change).
import { createContext, createElement, useContext, useEffect, useMemo, useState, useCallback } from 'react';

const HeraldContext = createContext(null);

/** Makes `client` the default for the hooks below. */
export function HeraldProvider({ client, children }) {
  return createElement(HeraldContext.Provider, { value: client }, children);
}

/** The client from the options, else from <HeraldProvider>. */
export function useHeraldClient(client) {
  const fromContext = useContext(HeraldContext);
  const c = client || fromContext;
  if (!c) throw new Error('@herald/client/react: wrap the tree in <HeraldProvider client={...}> or pass { client }');
  return c;
}

function useView(client, open, deps, read) {
  const [state, setState] = useState(() => ({ loading: true, error: null, ...read(null) }));
  useEffect(() => {
    let view;
    try {
      view = open(client);
    } catch (e) {
      // A bad argument (an unknown query field, say): an error to render, not a crash.
      setState({ loading: false, error: e, ...read(null) });
      return undefined;
    }
    if (!view) {
      setState({ loading: false, error: null, ...read(null) });
      return undefined;
    }
    const update = () => setState({ loading: view.loading, error: view.error, ...read(view) });
    const off = view.on('change', update);
    update();
    return () => {
      off();
      view.close();
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, ...deps]);
  return state;
}

/** `{ job, tasks, artifacts, events, loading, error }` for one job, live. */
export function useJob(id, options = {}) {
  const client = useHeraldClient(options.client);
  const history = !!options.history;
  return useView(
    client,
    (c) => (id ? c.watchJob(id, { history, historyLimit: options.historyLimit }) : null),
    [id, history],
    (v) => ({ job: v ? v.job : null, tasks: v ? v.tasks : [], artifacts: v ? [...v.artifacts] : [], events: v ? [...v.events] : [] }),
  );
}

/**
 * `{ jobs, loading, error }`: a live job list (`client.watchJobs`), most
 * recently updated first. Options: the query (`status` — one or a list —,
 * `kind`, `owner`, `tag`, `updatedWithin` in seconds) and `max`, `limit`;
 * none: every job the token may see.
 */
export function useJobs(options = {}) {
  const client = useHeraldClient(options.client);
  const { owner, status, kind, tag, updatedWithin, limit, max } = options;
  // By value: `{ status: ['running'] }` written inline is a new array on every render.
  const key = JSON.stringify({ owner, status, kind, tag, updatedWithin, limit, max });
  return useView(client, (c) => c.watchJobs(JSON.parse(key)), [key], (v) => ({
    jobs: v ? v.jobs : [],
  }));
}

/**
 * `{ chunks, end, offset, truncated, loading, error }`: a job's output stream
 * (`client.jobStream`), live. `chunks` is a new array on every change and
 * keeps the newest `max` (default 5,000); `offset` is the first one's, `end`
 * the next offset. Options: `offset` (default 0; `null`: from the end), `max`.
 */
export function useJobStream(jobId, name, options = {}) {
  const client = useHeraldClient(options.client);
  const offset = options.offset === undefined ? 0 : options.offset;
  const max = options.max;
  return useView(
    client,
    (c) => (jobId && name ? c.jobStream(jobId, name, { offset, max }) : null),
    [jobId, name, offset, max],
    (v) => ({
      chunks: v ? v.chunks : [],
      end: v ? v.end : null,
      offset: v ? v.offset : null,
      truncated: v ? v.truncated : null,
    }),
  );
}

/** `{ items, unreadCount, loading, error, markRead, markAllRead }` for the signed-in user. */
export function useNotifications(options = {}) {
  const client = useHeraldClient(options.client);
  const [view, setView] = useState(null);
  const state = useView(
    client,
    (c) => {
      const v = c.notifications({ sub: options.sub, limit: options.limit });
      setView(v);
      return v;
    },
    [options.sub, options.limit],
    (v) => ({ items: v ? v.items : [], unreadCount: v ? v.unreadCount : 0 }),
  );
  const markRead = useCallback((id) => (view ? view.markRead(id) : Promise.reject(new Error('not ready'))), [view]);
  const markAllRead = useCallback(() => (view ? view.markAllRead() : Promise.reject(new Error('not ready'))), [view]);
  return { ...state, markRead, markAllRead };
}

/** `{ members, list, state, broadcast }` for a room; with `meta`, this connection is in it. */
export function usePresence(room, meta, options = {}) {
  const client = useHeraldClient(options.client);
  const metaKey = meta ? JSON.stringify(meta) : '';
  const state = useView(
    client,
    (c) => (room ? c.presence(room, metaKey ? JSON.parse(metaKey) : undefined) : null),
    [room, metaKey],
    (v) => ({ members: v ? v.members() : [], list: v ? v.list() : [], state: v ? v.state : {} }),
  );
  const broadcast = useCallback((event, data) => client.broadcast(room, event, data), [client, room]);
  return useMemo(() => ({ ...state, loading: false, broadcast }), [state, broadcast]);
}

/** `{ status, transport, lastEventAt }`, re-rendered on every change of status. */
export function useConnectionStatus(options = {}) {
  const client = useHeraldClient(options.client);
  const read = () => ({ status: client.status, transport: client.transport, lastEventAt: client.lastEventAt });
  const [state, setState] = useState(read);
  useEffect(() => {
    const update = () => setState(read());
    const offStatus = client.onStatus(update);
    const offEvent = client.on('event', update);
    update();
    return () => {
      offStatus();
      offEvent();
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client]);
  return state;
}
