//! `herald-bench`: drives a running Herald (or a peer server) over its real
//! protocols and prints a table plus JSON. See BENCHMARKS.md for the method.

mod capture;
mod churn;
mod conn;
mod fanout;
mod idle;
mod ingest;
mod report;
mod resume;
mod soak;
mod streams;
mod target;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "herald-bench", version, about = "Load tool for Herald and its peers")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every workload shares.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Base URL of the server under test.
    #[arg(long, global = true, default_value = "http://127.0.0.1:4000")]
    pub url: String,
    /// Nodes of a cluster the subscribers connect to, round-robin
    /// (comma-separated base URLs); publishers and setup use --url.
    #[arg(long, global = true, value_delimiter = ',')]
    pub subscribe_urls: Vec<String>,
    /// Which server speaks at --url.
    #[arg(long, global = true, value_enum, default_value = "herald")]
    pub target: target::Kind,
    /// HS256 secret the server was started with, to mint tokens.
    #[arg(long, global = true, env = "HERALD_JWT_SECRET", default_value = "bench-secret")]
    pub secret: String,
    /// Tenant the load runs in.
    #[arg(long, global = true, default_value = "bench")]
    pub tenant: String,
    /// Spread client connections over this many source addresses 127.0.0.2.., so
    /// ephemeral ports do not run out past ~28k connections.
    #[arg(long, global = true, default_value_t = 8)]
    pub sources: u8,
    /// Connections opened at once while ramping up.
    #[arg(long, global = true, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Server PID, to read its resident memory from /proc.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Append the result as one JSON line to this file.
    #[arg(long, global = true)]
    pub json_out: Option<PathBuf>,
    /// A label stored with the result (e.g. a commit or a change being measured).
    #[arg(long, global = true, default_value = "")]
    pub label: String,
    /// Frames Herald's native subscribers ask for: `json` (herald.v1) or
    /// `compact` (herald.v1c, positional arrays).
    #[arg(long, global = true, value_enum, default_value = "json")]
    pub encoding: target::Encoding,
    /// Pad each published payload to about this many bytes (0: the bare
    /// `bench_seq` and `bench_t`, about 45 bytes).
    #[arg(long, global = true, default_value_t = 0)]
    pub payload_bytes: usize,
    /// What the reference writes per delivery: Herald's JSON broadcast frame,
    /// its compact one, or the bare payload (the floor of any protocol).
    #[arg(long, global = true, value_enum, default_value = "herald")]
    pub reference_frame: target::ReferenceFrame,
}

impl Common {
    /// The server subscriber `i` connects to.
    pub fn subscriber_url(&self, i: usize) -> &str {
        match self.subscribe_urls.len() {
            0 => &self.url,
            n => &self.subscribe_urls[i % n],
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N subscribers on one topic; publishers report progress (HTTP) or broadcast (WebSocket).
    Fanout(fanout::Args),
    /// N subscribers each on their own job; M workers reporting round-robin.
    Topics(fanout::TopicsArgs),
    /// Server memory per idle subscribed connection.
    Idle(idle::Args),
    /// Durable progress reports per second at several worker counts.
    Ingest(ingest::Args),
    /// Time for one client to catch up on missed events.
    Resume(resume::Args),
    /// Connects + subscribes per second.
    Churn(churn::Args),
    /// SQL commit → subscriber: rows INSERTed into a table Herald captures (PostgreSQL).
    Capture(capture::Args),
    /// Chunks per second one job output stream sustains, and append → reader latency.
    Streams(streams::Args),
    /// Long steady mix for leak hunting: churn over every transport plus paced ingest (bench/soak.sh).
    Soak(soak::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    target::configure(&cli.common);
    let result = match cli.cmd {
        Cmd::Fanout(a) => fanout::run(&cli.common, a).await?,
        Cmd::Topics(a) => fanout::run_topics(&cli.common, a).await?,
        Cmd::Idle(a) => idle::run(&cli.common, a).await?,
        Cmd::Ingest(a) => ingest::run(&cli.common, a).await?,
        Cmd::Resume(a) => resume::run(&cli.common, a).await?,
        Cmd::Churn(a) => churn::run(&cli.common, a).await?,
        Cmd::Capture(a) => capture::run(&cli.common, a).await?,
        Cmd::Soak(a) => soak::run(&cli.common, a).await?,
        Cmd::Streams(a) => streams::run(&cli.common, a).await?,
    };
    report::emit(&cli.common, result)
}
