//! The `herald` binary: `serve`, `token`, `key create`, `tail`, and the worker
//! commands `job ...` and `notify`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use herald::config::{Config, LocalArgs, LogFormat, ServeArgs};
use herald::worker_cli::{Connection, JobCmd, NotifyArgs};

#[derive(Parser)]
#[command(name = "herald", version, about = "Realtime server for watching background work")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Mint a development JWT signed with the configured secret.
    Token {
        #[arg(long)]
        sub: String,
        #[arg(long)]
        tenant: String,
        /// admin, staff, customer, worker or service.
        #[arg(long, default_value = "staff")]
        role: String,
        /// Lifetime, e.g. 1h or 30m.
        #[arg(long, default_value = "1h", value_parser = herald::config::parse_duration)]
        ttl: std::time::Duration,
        #[command(flatten)]
        serve: LocalArgs,
    },
    /// Manage worker API keys.
    Key {
        #[command(subcommand)]
        command: KeyCmd,
    },
    /// Print a topic's events as they arrive.
    Tail {
        /// job:<id>, jobs, jobs:owner:<sub>, user:<sub> or room:<name>.
        topic: String,
        /// Replay from this position first.
        #[arg(long)]
        since: Option<u64>,
        /// Server URL.
        #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:4000")]
        url: String,
        /// Bearer token [default: an admin token minted with the local secret].
        #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Tenant for the minted token.
        #[arg(long, default_value = "demo")]
        tenant: String,
        #[command(flatten)]
        serve: LocalArgs,
    },
    /// Report a job's progress from a script (exit codes in docs/SDKS.md).
    Job {
        #[command(subcommand)]
        command: JobCmd,
        #[command(flatten)]
        connection: Connection,
    },
    /// Send a notification to a user.
    Notify {
        #[command(flatten)]
        args: NotifyArgs,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a key; it is printed once and stored only as a hash.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// worker or service.
        #[arg(long, default_value = "worker")]
        role: String,
        #[command(flatten)]
        serve: LocalArgs,
    },
    /// List a tenant's keys: id, name, role, status, last use (never the secret).
    List {
        #[arg(long)]
        tenant: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        serve: LocalArgs,
    },
    /// Revoke a key: it stops working at once, and running servers close its
    /// open connections within a second.
    Revoke {
        /// The key's id (the 12 hex digits after `hk_`).
        id: String,
        #[command(flatten)]
        serve: LocalArgs,
    },
    /// Replace a key with a new one (same name and role), printed once; the old
    /// one is revoked, or keeps working for --grace and then expires.
    Rotate {
        id: String,
        /// How long the old key keeps working, e.g. 1h (at most 30 days).
        #[arg(long, default_value = "0s", value_parser = herald::config::parse_duration)]
        grace: std::time::Duration,
        #[command(flatten)]
        serve: LocalArgs,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn config(args: impl Into<ServeArgs>) -> Result<Config> {
    let mut config = Config::resolve(args.into())?;
    if let Some(path) = config.resolve_secret()? {
        tracing::warn!(path = %path.display(), "using a development JWT secret kept beside the database; set HERALD_JWT_SECRET in production");
    }
    Ok(config)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Cmd::Serve(args) => {
            let format = args.log_format.unwrap_or(LogFormat::Text);
            init_logging(format);
            let config = config(*args)?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("binding {}", config.listen))?;
                if let Err(e) = herald::server::run(config, listener, shutdown_signal()).await {
                    // One line, and the exit code of a setup that cannot work as given.
                    eprintln!("herald: {e}");
                    std::process::exit(2);
                }
                Ok(())
            })
        }
        Cmd::Token { sub, tenant, role, ttl, serve } => {
            if herald::auth::Role::parse(&role).is_none() {
                bail!("unknown role {role:?}; use admin, staff, customer, worker or service");
            }
            let config = config(serve)?;
            println!("{}", mint(&config, &sub, &tenant, &role, ttl.as_secs())?);
            Ok(())
        }
        Cmd::Key { command } => rt.block_on(key_command(command)),
        Cmd::Tail { topic, since, url, token, tenant, serve } => {
            let token = match token {
                Some(t) => t,
                None => mint(&config(serve)?, "herald-tail", &tenant, "admin", 24 * 3600)?,
            };
            rt.block_on(herald::tail::run(&url, &token, &topic, since))
        }
        Cmd::Job { command, connection } => {
            let code = rt.block_on(herald::worker_cli::job(&connection, command));
            std::process::exit(code)
        }
        Cmd::Notify { args, connection } => {
            let code = rt.block_on(herald::worker_cli::notify(&connection, args));
            std::process::exit(code)
        }
    }
}

/// `herald key ...`: straight against the configured database. A running
/// server sees a revoke or rotate within a second (it polls for key changes).
async fn key_command(command: KeyCmd) -> Result<()> {
    use herald::auth::keys;
    let serve = match &command {
        KeyCmd::Create { serve, .. } | KeyCmd::List { serve, .. } => serve,
        KeyCmd::Revoke { serve, .. } | KeyCmd::Rotate { serve, .. } => serve,
    };
    let config = config(serve.clone())?;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let state = herald::server::build(&config, rx)?;
    // The tenant of a key named by id, for the commands that take only the id.
    let tenant_of = |id: String| {
        let state = state.clone();
        async move {
            match state.store.api_key(&id).await? {
                Some(k) => anyhow::Ok(k.tenant),
                None => bail!("no API key {id}"),
            }
        }
    };
    let result = match command {
        KeyCmd::Create { tenant, name, role, .. } => {
            let role = match herald::auth::Role::parse(&role) {
                Some(r @ (herald::auth::Role::Worker | herald::auth::Role::Service)) => r,
                _ => bail!("an API key's role is worker or service"),
            };
            let key = keys::create(&state, &tenant, name, role).await?;
            println!("{}", key.token.unwrap_or_default());
            Ok(())
        }
        KeyCmd::List { tenant, json, .. } => {
            let list = keys::list(&state, &tenant).await?;
            if json {
                for k in &list {
                    println!("{}", serde_json::to_string(k)?);
                }
            } else {
                println!("{:<12}  {:<24}  {:<7}  {:<8}  {:<24}  LAST USED", "ID", "NAME", "ROLE", "STATUS", "CREATED");
                for k in &list {
                    let status = serde_json::to_value(k.status)?;
                    println!(
                        "{:<12}  {:<24}  {:<7}  {:<8}  {:<24}  {}",
                        k.id,
                        k.name,
                        k.role,
                        status.as_str().unwrap_or(""),
                        k.created_at,
                        k.last_used_at.as_deref().unwrap_or("never")
                    );
                }
            }
            Ok(())
        }
        KeyCmd::Revoke { id, .. } => {
            let tenant = tenant_of(id.clone()).await?;
            let key = keys::revoke(&state, &tenant, &id).await?;
            eprintln!("revoked {} ({}, tenant {})", key.id, key.name, key.tenant);
            Ok(())
        }
        KeyCmd::Rotate { id, grace, .. } => {
            let tenant = tenant_of(id.clone()).await?;
            let key = keys::rotate(&state, &tenant, &id, grace).await?;
            if grace.is_zero() {
                eprintln!("{id} is revoked; its replacement is {}", key.id);
            } else {
                eprintln!("{id} keeps working for {}s; its replacement is {}", grace.as_secs(), key.id);
            }
            println!("{}", key.token.unwrap_or_default());
            Ok(())
        }
    };
    state.store.close().await;
    result
}

fn mint(config: &Config, sub: &str, tenant: &str, role: &str, ttl: u64) -> Result<String> {
    let jwt = herald::auth::JwtVerifier::new(&herald::auth::JwtConfig {
        secret: config.jwt_secret.clone(),
        jwks_file: None,
        tenant_claim: config.tenant_claim.clone(),
        role_claim: config.role_claim.clone(),
        leeway_secs: 0,
    })?;
    jwt.mint(sub, tenant, role, ttl).context("no HS256 secret configured")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
