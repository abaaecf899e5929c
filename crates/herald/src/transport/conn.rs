//! Connection plumbing shared by the WebSocket protocols (native and Phoenix):
//! reading frames, the message rate limit, heartbeats, batched writes from the
//! outbox, and the closing handshake. The protocols differ in their frames, not
//! in how a connection is kept alive, limited, fed and closed.
//!
//! Everything here lives inside the connection's one task: an idle connection
//! costs only what this state and its session hold, so it is kept small.

use crate::hub::{Delivery, Inbox, OverflowSignal};
use crate::session::CloseReason;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The halves of a real WebSocket.
pub type Sink = SplitSink<WebSocket, Message>;
pub type Stream = SplitStream<WebSocket>;

/// Where a session writes its frames: a WebSocket, or a channel in a unit test.
pub trait WsSink: futures_util::Sink<Message, Error = axum::Error> + Unpin + Send {}
impl<T: futures_util::Sink<Message, Error = axum::Error> + Unpin + Send> WsSink for T {}

/// Where a session reads the client's frames from.
pub trait WsStream: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin + Send {}
impl<T: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin + Send> WsStream for T {}

/// The most a WebSocket codec reads of one message, before authentication or
/// anything else: four times the configured limit. A message a little over the
/// limit is still read and answered with a `frame_too_large` error; a larger
/// one breaks the connection (1009) without ever being buffered whole.
pub fn codec_max_message(limits: &crate::app::Limits) -> usize {
    limits.ws_max_message.saturating_mul(4)
}

/// Resolves when a connection must end whatever it is doing: the server is
/// shutting down (checked first), or its send queue overflowed.
pub async fn interrupted(shutdown: &mut tokio::sync::watch::Receiver<bool>, overflow: &OverflowSignal) -> CloseReason {
    tokio::select! {
        biased;
        _ = crate::app::shutting_down(shutdown) => CloseReason::ShuttingDown,
        _ = overflow.overflowed() => CloseReason::SlowConsumer,
    }
}

/// Deliveries written per flush.
pub const WRITE_BATCH: usize = 256;
/// Time the last frames and the client's close frame have to cross when closing.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A data frame from the client.
pub enum Frame {
    Text(Utf8Bytes),
    Binary(Bytes),
}

/// What one read from the socket amounts to.
pub enum Read {
    Frame(Frame),
    /// A ping or a pong: only a sign of life.
    Control,
    /// The socket ended; `clean` when the client sent a close frame.
    Closed {
        clean: bool,
    },
}

/// Classifies the result of `stream.next()`.
pub fn read(msg: Option<Result<Message, axum::Error>>) -> Read {
    match msg {
        Some(Ok(Message::Text(t))) => Read::Frame(Frame::Text(t)),
        Some(Ok(Message::Binary(b))) => Read::Frame(Frame::Binary(b)),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Read::Control,
        Some(Ok(Message::Close(_))) => Read::Closed { clean: true },
        Some(Err(_)) | None => Read::Closed { clean: false },
    }
}

/// The verdict of the rate limit on one inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: handle the message.
    Allow,
    /// Over the limit: drop the message and tell the client (at most once a second).
    Warn,
    /// Over the limit: drop the message silently; the client was told recently.
    Drop,
    /// Over the limit for longer than the protocol tolerates: close the connection.
    Close,
}

/// Token bucket on inbound messages: `per_second` refill, bursts up to twice
/// that; `per_second` 0 means no limit. Excess messages are dropped, with a
/// warning at most once a second so a flood does not turn into a flood of
/// errors back.
///
/// A flood is measured as an episode of excess, not as an unbroken run of
/// drops: it starts with the first dropped message and lasts until the client
/// leaves a whole second of its allowance unused. The tokens that refill during
/// a flood let a few messages through, and those do not end it; a client that
/// keeps sending faster than the limit stays in the episode, and once it is
/// older than `close_after` the next dropped message closes the connection.
#[derive(Debug)]
pub struct RateLimit {
    /// Refill per second; 0 for no limit.
    per_second: f64,
    tokens: f64,
    at: Instant,
    warned_at: Option<Instant>,
    /// When the current episode of excess began.
    flooding_since: Option<Instant>,
    /// How long an episode of excess is tolerated; `None` never closes.
    close_after: Option<Duration>,
}

impl RateLimit {
    pub fn new(per_second: u32, close_after: Option<Duration>) -> Self {
        let per_second = f64::from(per_second);
        RateLimit {
            per_second,
            tokens: per_second * 2.0,
            at: Instant::now(),
            warned_at: None,
            flooding_since: None,
            close_after,
        }
    }

    /// Takes a token for one inbound message.
    pub fn check(&mut self) -> Verdict {
        if self.per_second == 0.0 {
            return Verdict::Allow;
        }
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Verdict {
        let burst = self.per_second * 2.0;
        self.tokens = (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * self.per_second).min(burst);
        self.at = now;
        // A second of allowance left over, besides this message's token: the
        // client has been under the limit for a while, the excess is over.
        if self.tokens >= (self.per_second + 1.0).min(burst) {
            self.flooding_since = None;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        let since = *self.flooding_since.get_or_insert(now);
        if self.close_after.is_some_and(|limit| now.saturating_duration_since(since) > limit) {
            return Verdict::Close;
        }
        if self.warned_at.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1)) {
            self.warned_at = Some(now);
            return Verdict::Warn;
        }
        Verdict::Drop
    }
}

/// Heartbeats: a ping every interval, and the connection is dead once nothing
/// (pongs included) has come from the client within the timeout.
pub struct Heartbeat {
    interval: tokio::time::Interval,
    timeout: Duration,
    last_seen: Instant,
}

impl Heartbeat {
    /// Starts counting; the first beat is one interval away.
    pub fn new(every: Duration, timeout: Duration) -> Self {
        let start = tokio::time::Instant::now() + every;
        let mut interval = tokio::time::interval_at(start, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Heartbeat { interval, timeout, last_seen: Instant::now() }
    }

    /// Something arrived from the client.
    pub fn seen(&mut self) {
        self.last_seen = Instant::now();
    }

    /// Waits for the next beat; false when the client has been silent too long.
    pub async fn beat(&mut self) -> bool {
        self.interval.tick().await;
        self.last_seen.elapsed() <= self.timeout
    }

    /// Waits for the next beat and pings the client. `Err(Some(_))`: the client
    /// has been silent too long; `Err(None)`: the socket is gone.
    pub async fn ping(&mut self, sink: &mut impl WsSink) -> Result<(), Option<CloseReason>> {
        if !self.beat().await {
            return Err(Some(CloseReason::HeartbeatTimeout));
        }
        sink.send(Message::Ping(Default::default())).await.map_err(|_| None)
    }
}

/// The deliveries taken from the outbox in one go, written with one flush.
///
/// The buffer starts empty and `recv_many` grows it as needed (up to a batch):
/// an idle watcher never pays for one, a busy connection keeps what it grew to.
#[derive(Default)]
pub struct Batch {
    buf: Vec<Arc<Delivery>>,
    /// Batches taken so far: one in 16 records its latency. A per-connection
    /// count keeps the sampling off any counter shared between cores.
    taken: u32,
}

impl Batch {
    /// Waits for deliveries and takes those queued, up to a batch (never 0: a
    /// queue is read until its connection ends; callers' 0 checks are a guard).
    pub async fn recv(&mut self, inbox: &mut Inbox) -> usize {
        inbox.recv_many(&mut self.buf, WRITE_BATCH).await
    }

    /// Empties the batch, sampling the queueing latency of its first delivery.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Arc<Delivery>> {
        self.taken = self.taken.wrapping_add(1);
        if self.taken % 16 == 1 {
            if let Some(first) = self.buf.first() {
                first.record_latency();
            }
        }
        self.buf.drain(..)
    }
}

/// How writing a batch ended.
pub enum Written {
    Sent,
    /// The socket failed: the client is gone.
    Failed,
    /// The outbox overflowed while the write was waiting on a slow client, or
    /// the client took nothing for [`WRITE_TIMEOUT`].
    Overflowed,
}

/// Longest a batch may wait for a client to take its bytes. While a write
/// waits, the connection reads nothing; a client that is not reading either
/// would otherwise hold both ends forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes frames with one flush. A client too slow to take them also lets its
/// outbox overflow; racing the signal closes it then instead of waiting on it.
/// A write not done within [`WRITE_TIMEOUT`] counts as overflowed too.
pub async fn write(
    sink: &mut impl WsSink,
    frames: impl IntoIterator<Item = Message>,
    overflow: &OverflowSignal,
) -> Written {
    let write = async {
        for f in frames {
            sink.feed(f).await?;
        }
        sink.flush().await
    };
    // Biased, write first: a write that completes on its first poll (the usual
    // case) never registers the timeout's timer.
    tokio::select! {
        biased;
        r = write => if r.is_ok() { Written::Sent } else { Written::Failed },
        _ = overflow.overflowed() => Written::Overflowed,
        _ = tokio::time::sleep(WRITE_TIMEOUT) => Written::Overflowed,
    }
}

/// Closes from the server side: `last` (a goodbye, if the protocol has one) and
/// the close frame, then the closing handshake. Reading on until the client's
/// close frame matters: dropping the socket while the client still sends would
/// reset it, and the client could lose the last frames and the close code.
pub async fn close(sink: &mut impl WsSink, stream: &mut impl WsStream, last: Option<Utf8Bytes>, reason: CloseReason) {
    let frames = async {
        if let Some(text) = last {
            sink.send(Message::Text(text)).await?;
        }
        sink.send(Message::Close(Some(CloseFrame { code: reason.code(), reason: Utf8Bytes::from(reason.name()) })))
            .await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, frames).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Sleeps until the epoch-milliseconds time `at` (a live list's next expiry).
pub async fn sleep_until_ms(at: i64) {
    let wait = (at - crate::model::time::now_ms()).max(0) as u64;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `rate` messages a second for `secs` seconds of simulated time;
    /// returns the verdicts' counts and when the first `Close` came.
    fn flood(limit: &mut RateLimit, start: Instant, rate: u32, secs: u32) -> (usize, usize, Option<Duration>) {
        let (mut allowed, mut dropped) = (0, 0);
        for i in 0..rate * secs {
            let at = Duration::from_secs_f64(f64::from(i) / f64::from(rate));
            match limit.check_at(start + at) {
                Verdict::Allow => allowed += 1,
                Verdict::Warn | Verdict::Drop => dropped += 1,
                Verdict::Close => return (allowed, dropped, Some(at)),
            }
        }
        (allowed, dropped, None)
    }

    #[test]
    fn a_flood_closes_even_though_refills_let_some_messages_through() {
        let mut limit = RateLimit::new(5, Some(Duration::from_secs(10)));
        let start = limit.at;
        let (allowed, dropped, closed) = flood(&mut limit, start, 1000, 20);
        let closed = closed.expect("closed");
        assert!(closed > Duration::from_secs(10) && closed < Duration::from_secs(11), "{closed:?}");
        assert!(allowed > 50, "refills let messages through: {allowed}");
        assert!(dropped > 9000, "{dropped}");
        // Just above the limit is a flood too.
        let mut limit = RateLimit::new(5, Some(Duration::from_secs(10)));
        let start = limit.at;
        assert!(flood(&mut limit, start, 6, 60).2.is_some());
    }

    #[test]
    fn bursts_and_a_steady_rate_within_the_limit_never_close() {
        let mut limit = RateLimit::new(5, Some(Duration::from_secs(10)));
        let mut start = limit.at;
        for _ in 0..10 {
            // A burst of 30 (20 dropped), then a pause of 3 s: each burst is a new episode.
            for i in 0..30 {
                assert_ne!(limit.check_at(start + Duration::from_millis(i)), Verdict::Close);
            }
            start += Duration::from_secs(3);
        }
        let mut limit = RateLimit::new(5, Some(Duration::from_secs(10)));
        let start = limit.at;
        assert_eq!(flood(&mut limit, start, 5, 60), (300, 0, None));
        // Without a tolerance it never closes.
        let mut limit = RateLimit::new(5, None);
        let start = limit.at;
        assert!(flood(&mut limit, start, 1000, 20).2.is_none());
    }

    #[test]
    fn zero_per_second_means_no_limit() {
        let mut limit = RateLimit::new(0, Some(Duration::from_secs(1)));
        assert!((0..100_000).all(|_| limit.check() == Verdict::Allow));
    }
}
