//! The change feed: how committed events reach the hub, in log order. The
//! store only commits; whatever turns commits into a stream of events (SQLite:
//! the writer's hand-off right after each commit; PostgreSQL: the logical
//! replication consumer) is a change feed, and it is the only thing that feeds
//! the hub with log events.

use crate::hub::Hub;
use crate::model::Event;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Batches of committed events waiting for the hub, bounded so a stuck hub
/// holds commits back instead of growing memory.
const FEED_CAPACITY: usize = 1024;

/// A source of committed events in position order.
pub trait ChangeFeed: Send + 'static {
    /// The next batch of committed events; `None` once the source has stopped.
    fn next_batch(&mut self) -> impl std::future::Future<Output = Option<Vec<Event>>> + Send;

    /// Whether the source lost events since the last call: every live
    /// subscriber must then resume (and resynchronise) from the log.
    fn take_gap(&mut self) -> bool {
        false
    }
}

/// Events handed over in-process right after their commit (the embedded store).
pub struct CommitFeed {
    rx: mpsc::Receiver<Vec<Event>>,
}

impl CommitFeed {
    /// The writer's end and the feed's end of the hand-off.
    pub fn channel() -> (mpsc::Sender<Vec<Event>>, CommitFeed) {
        let (tx, rx) = mpsc::channel(FEED_CAPACITY);
        (tx, CommitFeed { rx })
    }
}

impl ChangeFeed for CommitFeed {
    async fn next_batch(&mut self) -> Option<Vec<Event>> {
        self.rx.recv().await
    }
}

/// Runs `feed` into `hub` until the feed stops.
pub fn spawn(mut feed: impl ChangeFeed, hub: Arc<Hub>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(events) = feed.next_batch().await {
            if feed.take_gap() {
                let n = hub.cut_off_all();
                tracing::warn!(subscriptions = n, "the log lost changes: every live subscriber resumes and resyncs");
            }
            hub.publish_events(events);
        }
    })
}
