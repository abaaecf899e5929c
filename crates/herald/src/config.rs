//! Configuration of `herald serve`. Precedence, highest first: command-line
//! flags, `HERALD_*` environment variables, the `herald.toml` file, defaults.

use crate::app::Limits;
use crate::store::sqlite::Durability;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The flags of the commands beside `serve` that read the local setup
/// (`token`, `key create`, `tail`): where the config, the database and the
/// JWT secret are. The rest of `serve`'s flags would only clutter their help.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LocalArgs {
    /// Config file [default: ./herald.toml when it exists].
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database: a SQLite file, or a PostgreSQL URL [default: ./herald.db].
    #[arg(long, env = "HERALD_DB")]
    pub db: Option<String>,
    /// HS256 secret for JWTs [default: the development secret kept beside the database].
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Claim holding the tenant [default: tenant].
    #[arg(long, env = "HERALD_TENANT_CLAIM")]
    pub tenant_claim: Option<String>,
    /// Claim holding the role [default: role].
    #[arg(long, env = "HERALD_ROLE_CLAIM")]
    pub role_claim: Option<String>,
}

impl From<LocalArgs> for ServeArgs {
    fn from(a: LocalArgs) -> ServeArgs {
        ServeArgs {
            config: a.config,
            db: a.db,
            jwt_secret: a.jwt_secret,
            tenant_claim: a.tenant_claim,
            role_claim: a.role_claim,
            ..ServeArgs::default()
        }
    }
}

/// Which browser origins may call Herald's HTTP routes (CORS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cors {
    /// No CORS headers: only same-origin pages (and non-browser clients).
    #[default]
    Off,
    /// Any origin (`*`): for development.
    Any,
    /// These origins, exactly (`scheme://host[:port]`).
    Origins(Vec<String>),
}

impl Cors {
    fn parse(list: Vec<String>) -> Result<Cors, ConfigError> {
        // Browsers send origins in lowercase, without a trailing slash.
        let list: Vec<String> = list
            .into_iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        if list.is_empty() {
            return Ok(Cors::Off);
        }
        if list.iter().any(|o| o == "*") {
            if list.len() > 1 {
                return Err(ConfigError::Invalid("--cors-origins: `*` allows every origin; give it alone".into()));
            }
            return Ok(Cors::Any);
        }
        for o in &list {
            let well_formed = o.split_once("://").is_some_and(|(scheme, host)| {
                matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/') && o.is_ascii()
            });
            if !well_formed {
                return Err(ConfigError::Invalid(format!(
                    "--cors-origins: {o:?} is not an origin; expected scheme://host[:port] (no path), or `*`"
                )));
            }
        }
        Ok(Cors::Origins(list))
    }
}

/// Flags (and their environment variables) of `herald serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Config file [default: ./herald.toml when it exists].
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:4000].
    #[arg(long, env = "HERALD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Database: a SQLite file, or a PostgreSQL URL (postgres://user:pass@host:port/db) [default: ./herald.db].
    #[arg(long, env = "HERALD_DB")]
    pub db: Option<String>,
    /// HS256 secret for JWTs [default: a development secret kept beside the database].
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// JWKS file with RS256/ES256 public keys.
    #[arg(long, env = "HERALD_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Claim holding the tenant; dots reach into objects [default: tenant].
    #[arg(long, env = "HERALD_TENANT_CLAIM")]
    pub tenant_claim: Option<String>,
    /// Claim holding the role [default: role].
    #[arg(long, env = "HERALD_ROLE_CLAIM")]
    pub role_claim: Option<String>,
    /// full: fsync every commit; normal: survive a crash of Herald, not of the machine [default: full].
    #[arg(long, env = "HERALD_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// A running job with no report for this long becomes stalled [default: 5m].
    #[arg(long, env = "HERALD_STALL_TIMEOUT", value_parser = parse_duration)]
    pub stall_timeout: Option<Duration>,
    /// How long events stay in the log for resume [default: 7d].
    #[arg(long, env = "HERALD_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// Largest request body, e.g. 1MiB [default: 1MiB].
    #[arg(long, env = "HERALD_BODY_LIMIT", value_parser = parse_size)]
    pub body_limit: Option<usize>,
    /// Largest WebSocket message [default: 64KiB].
    #[arg(long, env = "HERALD_WS_MAX_MESSAGE", value_parser = parse_size)]
    pub ws_max_message: Option<usize>,
    /// Subscriptions per connection [default: 100].
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// postgres_changes bindings per Phoenix channel [default: 100].
    #[arg(long, env = "HERALD_MAX_BINDINGS")]
    pub max_bindings: Option<usize>,
    /// Hub topics one connection may receive, over all its subscriptions,
    /// channels and bindings [default: 1000].
    #[arg(long, env = "HERALD_MAX_TOPICS_PER_CONNECTION")]
    pub max_topics_per_connection: Option<usize>,
    /// Messages per second per connection [default: 100].
    #[arg(long, env = "HERALD_MESSAGES_PER_SECOND")]
    pub messages_per_second: Option<u32>,
    /// Connections per tenant, 0 for no limit [default: 0].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_TENANT")]
    pub max_connections_per_tenant: Option<u64>,
    /// Bytes one job output stream keeps; its oldest chunks go past it, e.g. 16MiB [default: 16MiB].
    #[arg(long, env = "HERALD_STREAM_MAX_BYTES", value_parser = parse_size)]
    pub stream_max_bytes: Option<usize>,
    /// Queued deliveries per connection before it is cut off as slow [default: 4096].
    #[arg(long, env = "HERALD_OUTBOX_CAPACITY")]
    pub outbox_capacity: Option<usize>,
    /// Ping interval for idle connections [default: 20s].
    #[arg(long, env = "HERALD_HEARTBEAT_INTERVAL", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Silence after which a connection is dropped as dead [default: 60s].
    #[arg(long, env = "HERALD_HEARTBEAT_TIMEOUT", value_parser = parse_duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// Open TCP connections (HTTP, WebSocket, SSE) on this node; 0 = as many as the open-files limit allows [default: 0].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Time a connection has to send a complete request head, from opening or from its previous response [default: 10s].
    #[arg(long, env = "HERALD_HEADER_TIMEOUT", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// An HTTP connection on which no byte moves either way for this long is closed [default: 120s].
    #[arg(long, env = "HERALD_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// text or json [default: text].
    #[arg(long, env = "HERALD_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Run as one node of a cluster: the broker that carries room broadcasts,
    /// presence and node heartbeats between nodes, `redis://host:6379` or
    /// `nats://host:4222` (needs --db postgres://...; the nodes of one cluster
    /// share its database).
    #[arg(long, env = "HERALD_CLUSTER")]
    pub cluster: Option<String>,
    /// Origins whose pages may call the HTTP API, SSE and long-poll from the
    /// browser (CORS), comma-separated (`https://app.example.com`), or `*` for
    /// any (development) [default: none; WebSockets need no CORS].
    #[arg(long, env = "HERALD_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// Start a demo tenant with simulated workers.
    #[arg(long, env = "HERALD_DEMO")]
    pub demo: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The `herald.toml` file: the same settings as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    db: Option<String>,
    jwt_secret: Option<String>,
    jwks_file: Option<PathBuf>,
    tenant_claim: Option<String>,
    role_claim: Option<String>,
    durability: Option<Durability>,
    stall_timeout: Option<String>,
    retention: Option<String>,
    body_limit: Option<String>,
    ws_max_message: Option<String>,
    max_subscriptions: Option<usize>,
    max_bindings: Option<usize>,
    max_topics_per_connection: Option<usize>,
    messages_per_second: Option<u32>,
    max_connections_per_tenant: Option<u64>,
    outbox_capacity: Option<usize>,
    stream_max_bytes: Option<String>,
    heartbeat_interval: Option<String>,
    heartbeat_timeout: Option<String>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    log_format: Option<LogFormat>,
    cluster: Option<String>,
    cors_origins: Option<Vec<String>>,
    demo: Option<bool>,
    /// The tenant of captured rows whose table names no tenant column.
    default_tenant: Option<String>,
    #[serde(default)]
    capture: Vec<CaptureSpec>,
}

/// A `[[capture]]` entry: an application table whose changes Herald streams
/// (PostgreSQL only).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    /// `schema.table`.
    pub table: String,
    /// The column naming the row's tenant; without it every row is `default_tenant`'s.
    pub tenant_column: Option<String>,
    /// This table's tenant when it has no tenant column (overrides the top-level one).
    pub default_tenant: Option<String>,
    /// Customers read only rows whose column equals their sub.
    pub owner_column: Option<String>,
}

impl CaptureSpec {
    /// `(schema, table)`.
    pub fn parts(&self) -> Option<(&str, &str)> {
        let (schema, table) = self.table.split_once('.')?;
        (!schema.is_empty() && !table.is_empty() && !table.contains('.')).then_some((schema, table))
    }
}

/// Where Herald keeps its data.
#[derive(Clone)]
pub enum Database {
    /// The embedded store: one SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (it may hold a password: print [`Database`] instead).
    Postgres(String),
}

impl Database {
    /// `postgres://` and `postgresql://` URLs are PostgreSQL; anything else is a file.
    pub fn parse(s: &str) -> Database {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Database::Postgres(s.to_string())
        } else {
            Database::Sqlite(PathBuf::from(s))
        }
    }
}

/// Shows a URL without its password.
impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => match crate::store::postgres::PgUrl::parse(url) {
                Ok(u) => f.write_str(&u.display),
                Err(_) => f.write_str("postgres://(unreadable URL)"),
            },
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub db: Database,
    pub jwt_secret: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub tenant_claim: String,
    pub role_claim: String,
    pub durability: Durability,
    pub stall_timeout: Duration,
    pub retention: Duration,
    pub max_connections_per_tenant: u64,
    /// Open TCP connections on this node; 0 for no limit.
    pub max_connections: usize,
    /// Time to send a complete request head (from opening, or from the previous response).
    pub header_timeout: Duration,
    /// An HTTP connection with no byte moving either way for this long is closed.
    pub idle_timeout: Duration,
    pub log_format: LogFormat,
    /// The cluster's broker, if this node is one of several.
    pub cluster: Option<crate::broker::BrokerUrl>,
    /// Which browser origins may call the HTTP routes (CORS).
    pub cors: Cors,
    pub demo: bool,
    pub limits: Limits,
    /// Application tables to stream (PostgreSQL only), with tenants resolved.
    pub capture: Vec<CaptureSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, String),
    /// A setting that parses but cannot work, e.g. a heartbeat interval of 0.
    #[error("{0}")]
    Invalid(String),
}

/// Defaults of the connection limits of the listener. Connections: 0 = as
/// many as the open-files limit allows (raised to the hard limit at start),
/// so `accept` never fails with EMFILE and the ones over it get a 503.
pub const DEFAULT_MAX_CONNECTIONS: usize = 0;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

impl Config {
    /// Defaults only: what tests start from.
    pub fn for_tests(db: &Path) -> Config {
        Config::resolve(ServeArgs { db: Some(db.display().to_string()), ..Default::default() })
            .expect("defaults are valid")
    }

    /// Merges flags and environment (already in `args`) over the file over defaults.
    pub fn resolve(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None if Path::new("herald.toml").exists() => load_file(Path::new("herald.toml"))?,
            None => FileConfig::default(),
        };
        let dur = |flag: Option<Duration>,
                   file: &Option<String>,
                   name: &str,
                   default: Duration|
         -> Result<Duration, ConfigError> {
            match (flag, file) {
                (Some(d), _) => Ok(d),
                (None, Some(s)) => parse_duration(s).map_err(|e| ConfigError::Parse(name.into(), e)),
                (None, None) => Ok(default),
            }
        };
        let size =
            |flag: Option<usize>, file: &Option<String>, name: &str, default: usize| -> Result<usize, ConfigError> {
                match (flag, file) {
                    (Some(d), _) => Ok(d),
                    (None, Some(s)) => parse_size(s).map_err(|e| ConfigError::Parse(name.into(), e)),
                    (None, None) => Ok(default),
                }
            };
        let d = Limits::default();
        let limits = Limits {
            body_limit: size(args.body_limit, &file.body_limit, "body_limit", d.body_limit)?,
            ws_max_message: size(args.ws_max_message, &file.ws_max_message, "ws_max_message", d.ws_max_message)?,
            max_subscriptions: args.max_subscriptions.or(file.max_subscriptions).unwrap_or(d.max_subscriptions),
            max_bindings: args.max_bindings.or(file.max_bindings).unwrap_or(d.max_bindings),
            max_topics_per_connection: args
                .max_topics_per_connection
                .or(file.max_topics_per_connection)
                .unwrap_or(d.max_topics_per_connection),
            messages_per_second: args.messages_per_second.or(file.messages_per_second).unwrap_or(d.messages_per_second),
            outbox_capacity: args.outbox_capacity.or(file.outbox_capacity).unwrap_or(d.outbox_capacity),
            heartbeat_interval: dur(
                args.heartbeat_interval,
                &file.heartbeat_interval,
                "heartbeat_interval",
                d.heartbeat_interval,
            )?,
            heartbeat_timeout: dur(
                args.heartbeat_timeout,
                &file.heartbeat_timeout,
                "heartbeat_timeout",
                d.heartbeat_timeout,
            )?,
            max_poll_wait: d.max_poll_wait,
            sse_keepalive: d.sse_keepalive,
            stream_max_bytes: size(
                args.stream_max_bytes,
                &file.stream_max_bytes,
                "stream_max_bytes",
                d.stream_max_bytes as usize,
            )? as u64,
        };
        let config = Config {
            listen: args.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4000))),
            db: Database::parse(&args.db.or(file.db).unwrap_or_else(|| "herald.db".into())),
            jwt_secret: args.jwt_secret.or(file.jwt_secret).filter(|s| !s.is_empty()),
            jwks_file: args.jwks_file.or(file.jwks_file),
            tenant_claim: args.tenant_claim.or(file.tenant_claim).unwrap_or_else(|| "tenant".into()),
            role_claim: args.role_claim.or(file.role_claim).unwrap_or_else(|| "role".into()),
            durability: args.durability.or(file.durability).unwrap_or(Durability::Full),
            // The demo's stalling worker should be noticed while someone watches.
            stall_timeout: dur(
                args.stall_timeout,
                &file.stall_timeout,
                "stall_timeout",
                Duration::from_secs(if args.demo || file.demo == Some(true) { 20 } else { 300 }),
            )?,
            retention: dur(args.retention, &file.retention, "retention", Duration::from_secs(7 * 24 * 3600))?,
            max_connections_per_tenant: args
                .max_connections_per_tenant
                .or(file.max_connections_per_tenant)
                .unwrap_or(0),
            max_connections: args.max_connections.or(file.max_connections).unwrap_or(DEFAULT_MAX_CONNECTIONS),
            header_timeout: dur(args.header_timeout, &file.header_timeout, "header_timeout", DEFAULT_HEADER_TIMEOUT)?,
            idle_timeout: dur(args.idle_timeout, &file.idle_timeout, "idle_timeout", DEFAULT_IDLE_TIMEOUT)?,
            log_format: args.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            cluster: match args.cluster.or(file.cluster).filter(|c| !c.is_empty()) {
                Some(url) => Some(crate::broker::BrokerUrl::parse(&url).map_err(|e| {
                    ConfigError::Invalid(format!("--cluster (HERALD_CLUSTER, cluster in the config file): {e}"))
                })?),
                None => None,
            },
            cors: Cors::parse(args.cors_origins.or(file.cors_origins).unwrap_or_default())?,
            demo: args.demo || file.demo.unwrap_or(false),
            limits,
            capture: file
                .capture
                .into_iter()
                .map(|mut c| {
                    c.default_tenant = c.default_tenant.or_else(|| file.default_tenant.clone());
                    c
                })
                .collect(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that parse but cannot work: a zero interval, timeout,
    /// size or capacity would panic a timer, drop every connection at once or
    /// refuse everything. (0 is meaningful only where it is documented as "no
    /// limit": `messages_per_second`, `max_connections`, `max_connections_per_tenant`.)
    fn validate(&self) -> Result<(), ConfigError> {
        for c in &self.capture {
            let what = format!("[[capture]] table = {:?}", c.table);
            if c.parts().is_none() {
                return Err(ConfigError::Invalid(format!("{what}: name the table as schema.table")));
            }
            if c.tenant_column.is_none() && c.default_tenant.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "{what}: set tenant_column, or default_tenant (in the entry or at the top of the file)"
                )));
            }
            if c.parts().is_some_and(|(schema, _)| schema == "herald") {
                return Err(ConfigError::Invalid(format!("{what}: Herald's own tables stream already")));
            }
            if matches!(self.db, Database::Sqlite(_)) {
                return Err(ConfigError::Invalid(format!("{what}: capturing tables needs --db postgres://...")));
            }
        }
        if self.cluster.is_some() && matches!(self.db, Database::Sqlite(_)) {
            return Err(ConfigError::Invalid(
                "--cluster needs --db postgres://...: the nodes of a cluster share the database and its log".into(),
            ));
        }
        let l = &self.limits;
        let invalid = |name: &str, why: String| {
            let flag = name.replace('_', "-");
            let env = name.to_ascii_uppercase();
            Err(ConfigError::Invalid(format!("--{flag} (HERALD_{env}, {name} in the config file) {why}")))
        };
        for (name, d) in [
            ("stall_timeout", self.stall_timeout),
            ("retention", self.retention),
            ("heartbeat_interval", l.heartbeat_interval),
            ("heartbeat_timeout", l.heartbeat_timeout),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return invalid(name, "must be longer than 0, e.g. 30s".into());
            }
        }
        for (name, n) in [
            ("body_limit", l.body_limit),
            ("ws_max_message", l.ws_max_message),
            ("max_subscriptions", l.max_subscriptions),
            ("max_bindings", l.max_bindings),
            ("max_topics_per_connection", l.max_topics_per_connection),
            ("outbox_capacity", l.outbox_capacity),
            ("stream_max_bytes", l.stream_max_bytes as usize),
        ] {
            if n == 0 {
                return invalid(name, "must be at least 1".into());
            }
        }
        if l.heartbeat_timeout < l.heartbeat_interval {
            return invalid(
                "heartbeat_timeout",
                format!(
                    "({:?}) must be at least --heartbeat-interval ({:?}), or every quiet connection is dropped before its first ping is answered",
                    l.heartbeat_timeout, l.heartbeat_interval
                ),
            );
        }
        if self.idle_timeout <= l.max_poll_wait {
            return invalid(
                "idle_timeout",
                format!(
                    "({:?}) must be longer than the longest long-poll wait ({:?}), during which nothing moves",
                    self.idle_timeout, l.max_poll_wait
                ),
            );
        }
        Ok(())
    }

    /// The HS256 secret: configured, or a development secret kept beside the
    /// database (made on first use). Returns whether it was generated now.
    pub fn resolve_secret(&mut self) -> Result<Option<PathBuf>, ConfigError> {
        if self.jwt_secret.is_some() || self.jwks_file.is_some() {
            return Ok(None);
        }
        let path = match &self.db {
            Database::Sqlite(file) => {
                let mut name = file.as_os_str().to_owned();
                name.push(".jwt-secret");
                PathBuf::from(name)
            }
            // No file beside a server database: the working directory keeps it.
            Database::Postgres(_) => PathBuf::from("herald-postgres.jwt-secret"),
        };
        let shown = path.display().to_string();
        if let Ok(existing) = std::fs::read_to_string(&path) {
            self.jwt_secret = Some(existing.trim().to_string());
            return Ok(Some(path));
        }
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&path, &secret).map_err(|e| ConfigError::Read(shown, e))?;
        self.jwt_secret = Some(secret);
        Ok(Some(path))
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(shown.clone(), e))?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse(shown, e.to_string()))
}

/// The longest duration any setting takes: about a century.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses `250ms`, `30s`, `5m`, `2h`, `7d`, or plain seconds (at most about a century).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 250ms"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => return Err(format!("unknown duration unit {other:?}; use ms, s, m, h or d")),
    };
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("{s:?} is longer than 100 years")),
    }
}

/// Parses `512`, `64KiB`, `1MiB`, `1MB`, `2GiB` into bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("{s:?} is not a size like 64KiB or 1MiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?}; use KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert!(parse_size("lots").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    /// Zero intervals, timeouts, sizes and capacities are refused with a
    /// message naming the setting; zero where it means "no limit" is accepted.
    #[test]
    fn settings_that_cannot_work_are_refused() {
        let refused = |args: ServeArgs, names: &str| {
            let err = Config::resolve(args).unwrap_err().to_string();
            assert!(err.contains(names), "{err}");
        };
        let zero = Some(Duration::ZERO);
        refused(ServeArgs { heartbeat_interval: zero, ..Default::default() }, "--heartbeat-interval");
        refused(ServeArgs { heartbeat_timeout: zero, ..Default::default() }, "--heartbeat-timeout");
        refused(ServeArgs { stall_timeout: zero, ..Default::default() }, "--stall-timeout");
        refused(ServeArgs { retention: zero, ..Default::default() }, "--retention");
        refused(ServeArgs { header_timeout: zero, ..Default::default() }, "--header-timeout");
        refused(ServeArgs { idle_timeout: Some(Duration::from_secs(30)), ..Default::default() }, "--idle-timeout");
        refused(ServeArgs { outbox_capacity: Some(0), ..Default::default() }, "--outbox-capacity");
        refused(ServeArgs { max_subscriptions: Some(0), ..Default::default() }, "--max-subscriptions");
        refused(ServeArgs { body_limit: Some(0), ..Default::default() }, "--body-limit");
        refused(ServeArgs { ws_max_message: Some(0), ..Default::default() }, "--ws-max-message");
        // A cluster shares its database: not a SQLite file.
        refused(
            ServeArgs { cluster: Some("redis://127.0.0.1:6379".into()), ..Default::default() },
            "--cluster needs --db postgres",
        );
        let pg = Some("postgres://herald@127.0.0.1/herald".to_string());
        refused(
            ServeArgs { db: pg.clone(), cluster: Some("kafka://x:9092".into()), ..Default::default() },
            "--cluster",
        );
        let ok =
            Config::resolve(ServeArgs { db: pg, cluster: Some("nats://127.0.0.1:4222".into()), ..Default::default() });
        assert!(ok.is_ok(), "{ok:?}");
        refused(
            ServeArgs {
                heartbeat_interval: Some(Duration::from_secs(30)),
                heartbeat_timeout: Some(Duration::from_secs(10)),
                ..Default::default()
            },
            "--heartbeat-timeout",
        );
        let c = Config::resolve(ServeArgs {
            messages_per_second: Some(0),
            max_connections: Some(0),
            max_connections_per_tenant: Some(0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((c.limits.messages_per_second, c.max_connections), (0, 0));
        let d = Config::resolve(ServeArgs::default()).unwrap();
        assert_eq!(
            (d.max_connections, d.header_timeout, d.idle_timeout),
            (DEFAULT_MAX_CONNECTIONS, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT)
        );
    }

    #[test]
    fn the_example_config_file_parses() {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../herald.example.toml");
        let c = Config::resolve(ServeArgs { config: Some(example), ..Default::default() }).unwrap();
        assert_eq!(c.stall_timeout, Duration::from_secs(300));
        assert_eq!(c.limits.body_limit, 1 << 20);
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("herald-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("herald.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:5000\"\nstall_timeout = \"10s\"\nrole_claim = \"r\"\n").unwrap();
        let c = Config::resolve(ServeArgs {
            config: Some(file.clone()),
            listen: Some("127.0.0.1:6000".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.stall_timeout, Duration::from_secs(10));
        assert_eq!(c.role_claim, "r");
        assert_eq!(c.tenant_claim, "tenant");
        std::fs::write(&file, "no_such_setting = 1\n").unwrap();
        let err = Config::resolve(ServeArgs { config: Some(file), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("no_such_setting"), "{err}");
    }
}
