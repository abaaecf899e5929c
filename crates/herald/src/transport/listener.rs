//! The listener: accepts TCP connections and serves HTTP/1 on each with a
//! header-read timeout, an idle timeout and a cap on open connections (a
//! slowloris cannot starve everyone else), TCP_NODELAY, WebSocket upgrades, and
//! graceful shutdown that lets in-flight requests and closing handshakes finish.

use axum::Router;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits on the listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections (each TCP connection, upgraded WebSockets included); 0 for no limit.
    pub max_connections: usize,
    /// Time to send a complete request head, from opening or from the previous response.
    pub header_timeout: Duration,
    /// A connection with no byte moving either way for this long is closed
    /// (until it is upgraded: a WebSocket keeps itself alive with heartbeats).
    pub idle_timeout: Duration,
}

/// File descriptors kept for everything but client connections: the database
/// and its readers, the listener, logs, connections being refused.
const RESERVED_FDS: usize = 128;

/// The connection cap, fitted to the process's open-files limit: past that,
/// `accept` fails with EMFILE and every client waits, instead of the ones over
/// the cap being told 503 at once. The soft limit is first raised as far as
/// the hard limit allows (as Go's runtime does), so the cap usually fits.
pub fn effective_max_connections(configured: usize) -> usize {
    let want = if configured == 0 { usize::MAX } else { configured.saturating_add(RESERVED_FDS) };
    let Some(soft) = raise_open_files_limit(want) else { return configured };
    let fit = soft.saturating_sub(RESERVED_FDS).max(1);
    if configured == 0 {
        tracing::info!(
            open_files_limit = soft,
            using = fit,
            "no --max-connections: the open-files limit caps connections"
        );
        return fit;
    }
    if configured > fit {
        tracing::warn!(
            configured,
            open_files_limit = soft,
            using = fit,
            "--max-connections lowered to fit the open-files limit (raise the hard limit, ulimit -Hn)"
        );
        return fit;
    }
    configured
}

/// Raises the soft limit on open files towards `want` (at most to the hard
/// limit) and returns it; `None` when it is unlimited or unknown.
#[cfg(unix)]
fn raise_open_files_limit(want: usize) -> Option<usize> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into `lim`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let want = libc::rlim_t::try_from(want).unwrap_or(libc::RLIM_INFINITY);
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < want {
        let raised = libc::rlimit { rlim_cur: want.min(lim.rlim_max), rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads `raised`, which lives across the call. It may
        // refuse (e.g. macOS above OPEN_MAX); the limit then stays as it was.
        if raised.rlim_cur > lim.rlim_cur && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = raised.rlim_cur;
        }
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    usize::try_from(lim.rlim_cur).ok()
}

#[cfg(not(unix))]
fn raise_open_files_limit(_want: usize) -> Option<usize> {
    None
}

/// Serves HTTP/1.1 (with upgrades, for WebSockets) on `listener` until `signal`
/// resolves; then stops accepting, lets every connection finish its in-flight
/// request (`shutdown` flipping tells streams and sockets to say goodbye), and
/// returns once they have and the WebSockets have closed (or after 6 s).
///
/// Each connection must send a complete request head within `header_timeout`
/// of opening or of its previous response (slowloris), is closed after
/// `idle_timeout` with nothing moving either way, and past `max_connections`
/// new connections are answered 503 and closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: tokio::sync::watch::Receiver<bool>,
    signal: impl Future<Output = ()> + Send + 'static,
) {
    let permits = (limits.max_connections > 0).then(|| Arc::new(Semaphore::new(limits.max_connections)));
    // Refusing takes a moment (answer, then drain what the client sent); a few at a time.
    let refusals = Arc::new(Semaphore::new(64));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
    // Every connection task holds a receiver of `tasks`, every socket one of
    // `sockets` (through an upgrade too); all dropped = all finished.
    let (tasks_tx, tasks_rx) = tokio::sync::watch::channel(());
    let (sockets_tx, sockets_rx) = tokio::sync::watch::channel(());
    let mut signal = pin!(signal);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        let permit = match &permits {
            None => None,
            Some(p) => match Arc::clone(p).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    refuse(tcp, &refusals);
                    continue;
                }
            },
        };
        // Realtime frames are small and latency-bound: never let Nagle hold one back.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        limit_unsent(&tcp);
        let conn = Connection {
            http: http.clone(),
            app: app.clone(),
            idle_timeout: limits.idle_timeout,
            shutdown: shutdown.clone(),
            _task: tasks_rx.clone(),
        };
        tokio::spawn(conn.run(tcp, Held { _permit: permit, _socket: sockets_rx.clone() }));
    }
    drop(listener);
    // In-flight requests finish, however long they take (streams end on `shutdown`).
    drop(tasks_rx);
    tasks_tx.closed().await;
    // WebSockets were told goodbye when `shutdown` flipped; give their closing
    // handshakes the time they take (a bounded wait: a client may never answer).
    drop(sockets_rx);
    let _ = tokio::time::timeout(SOCKETS_GRACE, sockets_tx.closed()).await;
}

/// Longest wait at shutdown for upgraded sockets to finish their goodbyes: a
/// session sends its goodbye at once, then waits up to 5 s for the client's
/// close frame; exiting earlier could reset the connection under it.
const SOCKETS_GRACE: Duration = Duration::from_secs(6);

/// What a socket holds for as long as it lives: its place under the cap, and
/// a receiver whose drop tells shutdown it is gone.
struct Held {
    _permit: Option<OwnedSemaphorePermit>,
    _socket: tokio::sync::watch::Receiver<()>,
}

/// Most bytes a connection keeps written but unsent in the kernel.
const NOTSENT_LOWAT: libc::c_int = 64 * 1024;

/// Keeps a slow reader's backlog in Herald's queue, where a job's progress
/// ticks can supersede each other, rather than in megabytes of kernel send
/// buffer where they cannot: the socket is writable again only once its
/// unsent bytes fall under `NOTSENT_LOWAT` (what is in flight is not limited,
/// so throughput to a fast reader is not either).
fn limit_unsent(tcp: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        use std::os::fd::AsRawFd;
        let value = NOTSENT_LOWAT;
        // SAFETY: a valid socket descriptor and a c_int option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_NOTSENT_LOWAT not set");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    let _ = tcp;
}

/// One accepted connection and what it needs to be served.
struct Connection {
    http: hyper::server::conn::http1::Builder,
    app: Router,
    idle_timeout: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _task: tokio::sync::watch::Receiver<()>,
}

impl Connection {
    async fn run(mut self, tcp: TcpStream, held: Held) {
        let activity = Arc::new(Activity::new());
        let io = Tracked { inner: tcp, activity: Arc::clone(&activity), _held: held };
        let service = hyper_util::service::TowerToHyperService::new(self.app);
        let mut conn = pin!(self.http.serve_connection(hyper_util::rt::TokioIo::new(io), service).with_upgrades());
        let mut idle = pin!(tokio::time::sleep(self.idle_timeout));
        let mut stopping = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                    // Ended, or upgraded: a WebSocket keeps itself alive with
                    // heartbeats, so its reads and writes need no clock reading.
                    activity.stop();
                    break;
                }
                _ = crate::app::shutting_down(&mut self.shutdown), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = idle.as_mut() => {
                    let quiet = activity.quiet_for();
                    if quiet >= self.idle_timeout {
                        tracing::debug!(idle = ?quiet, "closing an idle connection");
                        break;
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + (self.idle_timeout - quiet));
                }
            }
        }
    }
}

/// When bytes last moved on a connection, in milliseconds since it opened.
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    /// Cleared once the HTTP connection is done (or upgraded): no more tracking.
    tracking: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity { opened: Instant::now(), last_ms: AtomicU64::new(0), tracking: true.into() }
    }

    fn touch(&self) {
        if self.tracking.load(Ordering::Relaxed) {
            self.last_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    fn stop(&self) {
        self.tracking.store(false, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        self.opened.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A connection's socket, noting when bytes move and holding its place under
/// the connection cap for as long as the socket lives (through an upgrade too).
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    _held: Held,
}

impl AsyncRead for Tracked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What a connection over the cap is told before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 91\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"server at its connection limit; retry\"}}";

/// Answers a connection over the cap with 503 and closes it. The request it
/// sent is read and discarded first (for at most a second), or closing with
/// unread data would reset the connection and lose the answer; past a few
/// refusals at a time, the connection is just closed.
fn refuse(tcp: TcpStream, refusals: &Arc<Semaphore>) {
    metrics::counter!("herald_connections_refused_total").increment(1);
    let Ok(permit) = Arc::clone(refusals).try_acquire_owned() else { return };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tcp;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            tcp.write_all(OVER_CAPACITY).await?;
            tcp.shutdown().await?;
            let mut sink = [0u8; 1024];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        drop(permit);
    });
}

/// Errors of `accept`: a connection that failed before it was taken is
/// skipped; anything else (out of file descriptors) is logged and waited out.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves a router that echoes a posted body's length, with `limits`.
    async fn start(limits: ConnLimits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let app = Router::new().route("/", axum::routing::post(|body: String| async move { body.len().to_string() }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _keep = _tx;
            serve(listener, app, limits, shutdown, async move {
                let _ = stopped.await;
            })
            .await;
        });
        (addr, stop)
    }

    /// Reads until the server closes; the bytes and how long it took.
    async fn until_closed(tcp: &mut TcpStream, limit: Duration) -> Option<(String, Duration)> {
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at((started + limit).into(), tcp.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some((String::from_utf8_lossy(&got).into_owned(), started.elapsed())),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// A request whose body never comes is closed after the idle timeout; a
    /// connection that keeps talking is not.
    #[tokio::test]
    async fn a_connection_with_nothing_moving_is_closed_after_the_idle_timeout() {
        let limits = ConnLimits {
            max_connections: 0,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_millis(400),
        };
        let (addr, _stop) = start(limits).await;
        let mut stuck = TcpStream::connect(addr).await.unwrap();
        stuck.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc").await.unwrap();
        let (_, after) = until_closed(&mut stuck, Duration::from_secs(5)).await.expect("closed");
        assert!(after >= Duration::from_millis(350) && after < Duration::from_secs(2), "{after:?}");

        // Dribbling the body faster than the idle timeout keeps the request alive to its answer.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 4\r\n\r\n").await.unwrap();
        for b in [b"a", b"b", b"c", b"d"] {
            tokio::time::sleep(Duration::from_millis(250)).await;
            slow.write_all(b).await.unwrap();
        }
        let (answer, _) = until_closed(&mut slow, Duration::from_secs(5)).await.expect("answered");
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\n4"), "{answer:?}");
    }

    /// A request head not complete within the header timeout closes the connection.
    #[tokio::test]
    async fn a_request_head_that_takes_too_long_is_cut_off() {
        let limits = ConnLimits {
            max_connections: 0,
            header_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(60),
        };
        let (addr, _stop) = start(limits).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST / HTTP/1.1\r\n").await.unwrap();
        let writer = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if tcp.write_all(b"x-a: b\r\n").await.is_err() {
                    return;
                }
            }
        };
        let started = Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        let after = started.elapsed();
        assert!(after < Duration::from_secs(2), "{after:?}");
    }

    #[test]
    fn the_over_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(super::OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
        assert_eq!(length, body.len());
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
