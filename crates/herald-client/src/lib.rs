//! Rust SDK for Herald: report a job's
//! progress and output streams from a worker, and watch jobs live with resume.
//!
//! ```no_run
//! use herald_client::{Client, JobStart, Reporter};
//!
//! # async fn run() -> Result<(), herald_client::Error> {
//! let client = Client::new("http://127.0.0.1:8080", std::env::var("HERALD_TOKEN").unwrap_or_default())?;
//! let reporter = Reporter::new(client.clone());
//! // Queued and sent in order by a background task; await a receipt for Herald's answer.
//! let _ = reporter.job_started("crawl-42", JobStart { title: Some("Crawl".into()), total: Some(2), ..Default::default() });
//! let _ = reporter.task_started("crawl-42", "page-1", Some("https://example.com"));
//! let _ = reporter.task_succeeded("crawl-42", "page-1");
//! reporter.job_completed("crawl-42").await?;
//!
//! // An output stream (log lines, LLM tokens): chunks go in batches, one append each.
//! let log = reporter.stream("crawl-42", "log");
//! log.write("fetched /pricing")?;
//! log.close().await?;
//! let page = client.read_stream("crawl-42", "log", 0, 1000, std::time::Duration::ZERO).await?;
//! assert_eq!(page.chunks[0], "fetched /pricing");
//!
//! let mut watch = client.watch_job("crawl-42", None);
//! while let Ok(update) = watch.next().await {
//!     println!("{update:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! The wire types (`Job`, `Task`, `ProgressReport`, ...) are the server's own,
//! from `herald-model`, re-exported here.

pub mod client;
pub mod error;
pub mod reporter;
pub mod stream;
pub mod watch;

pub use client::{Client, ClientBuilder, EventPage, Retry};
pub use error::{Error, Result};
pub use herald_model as model;
pub use herald_model::{
    Artifact, CreateJob, CreateNotification, Job, JobStatus, Level, NewArtifact, Notification, Position,
    ProgressReport, Task, TaskStatus, TaskUpsert, WireEvent,
};
pub use reporter::{Answer, JobStart, Receipt, Reporter, ReporterOptions, StreamWriter};
pub use stream::{Appended, ChunkPage, StreamInfo};
pub use watch::{Update, Watch};
