//! The writer thread's loop, whatever the database: take every unit of work
//! that is waiting (up to [`MAX_BATCH`]), commit them as one transaction, and
//! answer each only after that commit. A [`Batcher`] is one database's way to
//! run a batch; this module owns the queue, the hand-over and the shutdown.

use super::{StoreError, Work, WriteTx};
use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

/// Most units of work committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// How many units may wait for the writer before `submit` waits too.
const QUEUE: usize = 8192;

enum WriterMsg {
    Work(Box<dyn Work>),
    /// Finish what is queued, then stop.
    Close(oneshot::Sender<()>),
}

/// Commits a batch of units in one transaction, each in a savepoint of its own,
/// and answers every unit (`committed` or `failed`), leaving `batch` empty.
pub trait Batcher: Send + 'static {
    fn commit(&mut self, batch: &mut Vec<Box<dyn Work>>);
}

/// The submitting end of one or more writer threads.
#[derive(Clone)]
pub struct WriterHandle {
    writers: Vec<mpsc::Sender<WriterMsg>>,
}

/// Starts the writer thread `name` around `batcher`.
pub fn start(name: &str, batcher: impl Batcher) -> Result<WriterHandle, StoreError> {
    start_many(name, vec![batcher])
}

/// Starts one writer thread per batcher (each its own connection). A unit
/// goes to the writer its [`Work::shard`] picks, so the units of one job stay
/// in order on one connection and writers do not wait on each other's rows.
pub fn start_many<B: Batcher>(name: &str, batchers: Vec<B>) -> Result<WriterHandle, StoreError> {
    let mut writers = Vec::with_capacity(batchers.len());
    for (i, batcher) in batchers.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name(if i == 0 { name.to_string() } else { format!("{name}-{i}") })
            .spawn(move || run(rx, batcher))
            .map_err(|e| StoreError::caused_by(super::StoreErrorKind::Internal, "starting the writer", e))?;
        writers.push(tx);
    }
    if writers.is_empty() {
        return Err(StoreError::internal("no writer to start"));
    }
    Ok(WriterHandle { writers })
}

/// The writer has stopped: nothing more can be written.
pub fn writer_stopped() -> StoreError {
    StoreError::unavailable("the writer has stopped")
}

impl WriterHandle {
    pub fn is_closed(&self) -> bool {
        self.writers.iter().any(|w| w.is_closed())
    }
}

#[async_trait]
impl super::Writer for WriterHandle {
    async fn submit(&self, work: Box<dyn Work>) -> Result<(), StoreError> {
        let i = work.shard().map_or(0, |k| (k % self.writers.len() as u64) as usize);
        self.writers[i].send(WriterMsg::Work(work)).await.map_err(|_| writer_stopped())
    }

    async fn close(&self) {
        for writer in &self.writers {
            let (done, rx) = oneshot::channel();
            if writer.send(WriterMsg::Close(done)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }
}

/// Runs until every sender is gone or `Close` arrives.
fn run(mut rx: mpsc::Receiver<WriterMsg>, mut batcher: impl Batcher) {
    let mut batch: Vec<Box<dyn Work>> = Vec::with_capacity(MAX_BATCH);
    let mut close: Option<oneshot::Sender<()>> = None;
    while let Some(first) = rx.blocking_recv() {
        match first {
            WriterMsg::Work(w) => batch.push(w),
            WriterMsg::Close(done) => close = Some(done),
        }
        while batch.len() < MAX_BATCH && close.is_none() {
            match rx.try_recv() {
                Ok(WriterMsg::Work(w)) => batch.push(w),
                Ok(WriterMsg::Close(done)) => close = Some(done),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            batcher.commit(&mut batch);
        }
        if let Some(done) = close.take() {
            // Anything still queued behind the close is answered, not dropped.
            rx.close();
            while let Ok(msg) = rx.try_recv() {
                if let WriterMsg::Work(w) = msg {
                    batch.push(w);
                }
            }
            if !batch.is_empty() {
                batcher.commit(&mut batch);
            }
            let _ = done.send(());
            break;
        }
    }
    tracing::info!("store writer stopped");
}

/// Runs one unit against the open transaction. A bug in one unit must not take
/// the writer (and every later write) down: a panic refuses that unit alone.
pub fn run_unit(work: &mut Box<dyn Work>, tx: &mut dyn WriteTx) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work.run(tx))).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %what, "a write panicked; it is refused");
        false
    })
}

/// Answers a batch whose transaction did not commit.
pub fn fail_all(batch: &mut Vec<Box<dyn Work>>, error: StoreError) {
    for work in batch.drain(..) {
        work.failed(error.clone());
    }
}

/// Records a committed batch's figures and answers its units.
pub fn commit_all(batch: &mut Vec<Box<dyn Work>>, started: std::time::Instant) {
    metrics::histogram!("herald_commit_batch_size").record(batch.len() as f64);
    metrics::histogram!("herald_commit_seconds").record(started.elapsed().as_secs_f64());
    for work in batch.drain(..) {
        work.committed();
    }
}
