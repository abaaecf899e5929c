//! Every process's change feed on PostgreSQL: it follows `herald.events` by
//! position. The sequencer appends in position order and commits one append
//! at a time, so reading "after the last position seen" never skips an event.
//! It is woken by the local sequencer, by `NOTIFY herald_events` from another
//! process's sequencer, and at the latest every [`POLL`].

use super::read::{event_of, EVENT_COLUMNS};
use crate::feed::ChangeFeed;
use crate::model::Event;
use crate::store::StoreError;
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The longest a tail waits without a wake-up before it looks anyway.
const POLL: Duration = Duration::from_millis(500);
/// Most events handed to the hub at once.
const BATCH: i64 = 1000;

pub struct LogTail {
    pool: Pool,
    /// The last position handed over; `None` until the head at start is known.
    last: Option<i64>,
    wake: Arc<Notify>,
    /// The log's floor rose above `last`: changes were lost (a lost slot).
    gap: bool,
}

impl LogTail {
    /// Starts following the log from its head, woken by `appended` and by the
    /// other processes' notifications.
    pub fn start(pool: Pool, config: tokio_postgres::Config, appended: Arc<Notify>) -> LogTail {
        tokio::spawn(listen(config, Arc::clone(&appended)));
        LogTail { pool, last: None, wake: appended, gap: false }
    }

    async fn read(&mut self) -> Result<Vec<Event>, StoreError> {
        let c = super::read::conn(&self.pool).await?;
        let last = match self.last {
            Some(last) => last,
            None => {
                let (head, _) = super::read::head_and_floor(&c).await?;
                let head = head.get() as i64;
                self.last = Some(head);
                head
            }
        };
        // Retention keeps the floor below the head; above what this tail
        // handed over, it means the sequencer lost changes and moved on.
        let (_, floor) = super::read::head_and_floor(&c).await?;
        let floor = floor.get() as i64;
        if floor > last {
            self.last = Some(floor);
            self.gap = true;
            return Ok(Vec::new());
        }
        let statement = c
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS},
                        ARRAY(SELECT topic FROM herald.event_topics t
                              WHERE t.tenant = e.tenant AND t.position = e.position),
                        e.tenant
                 FROM herald.events e WHERE e.position > $1 ORDER BY e.position LIMIT $2"
            ))
            .await?;
        let rows = c.query(&statement, &[&last, &BATCH]).await?;
        let mut events = Vec::with_capacity(rows.len());
        let mut tenant: Option<Arc<str>> = None;
        for r in &rows {
            let t: &str = r.get(9);
            // Consecutive events of one tenant share its name.
            let shared = match &tenant {
                Some(shared) if &**shared == t => Arc::clone(shared),
                _ => Arc::from(t),
            };
            tenant = Some(Arc::clone(&shared));
            events.push(event_of(r, shared)?);
        }
        if let Some(e) = events.last() {
            self.last = Some(e.position.get() as i64);
        }
        Ok(events)
    }
}

impl ChangeFeed for LogTail {
    fn take_gap(&mut self) -> bool {
        std::mem::take(&mut self.gap)
    }

    async fn next_batch(&mut self) -> Option<Vec<Event>> {
        loop {
            match self.read().await {
                Ok(events) if !events.is_empty() || self.gap => return Some(events),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reading the log failed; trying again"),
            }
            let _ = tokio::time::timeout(POLL, self.wake.notified()).await;
        }
    }
}

/// Wakes the tail on every `NOTIFY herald_events`, reconnecting as needed.
async fn listen(config: tokio_postgres::Config, wake: Arc<Notify>) {
    loop {
        if let Err(e) = listen_once(&config, &wake).await {
            tracing::debug!(error = %e, "the log listener reconnects");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_once(config: &tokio_postgres::Config, wake: &Notify) -> Result<(), StoreError> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen = client.batch_execute("LISTEN herald_events");
    tokio::pin!(listen);
    // The connection must be driven while LISTEN runs.
    loop {
        tokio::select! {
            done = &mut listen => { done?; break; }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
    while let Some(message) = messages.next().await {
        if let tokio_postgres::AsyncMessage::Notification(_) = message? {
            wake.notify_one();
        }
    }
    Ok(())
}
