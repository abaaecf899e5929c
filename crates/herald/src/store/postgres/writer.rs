//! PostgreSQL's batches: the writer thread's connection commits units of work
//! in group transactions, each unit in a savepoint. A broken connection fails
//! the batch it broke (503 to those callers: never an acknowledgement without
//! a commit) and is made anew for the next batch.

use super::schema;
use super::tx::{PgTx, Statements};
use crate::config::CaptureSpec;
use crate::model::CapturedTable;
use crate::store::group_commit::{commit_all, fail_all, run_unit, Batcher};
use crate::store::{StoreError, StoreErrorKind, Work};
use std::time::Instant;

pub struct PgBatcher {
    config: postgres::Config,
    display: String,
    client: Option<postgres::Client>,
    statements: Statements,
}

fn connect(config: &postgres::Config, display: &str) -> Result<postgres::Client, StoreError> {
    config.connect(postgres::NoTls).map_err(|e| {
        StoreError::caused_by(StoreErrorKind::Unavailable, format!("cannot connect to PostgreSQL at {display}: {e}"), e)
    })
}

/// Connects, migrates and makes sure the replication slot exists; the writer
/// keeps the connection.
pub fn setup(
    config: &tokio_postgres::Config,
    display: &str,
    slot: &str,
    capture: &[CaptureSpec],
) -> Result<(PgBatcher, Vec<CapturedTable>), StoreError> {
    let mut config = postgres::Config::from(config.clone());
    config.application_name("herald-writer");
    let mut client = connect(&config, display)?;
    schema::migrate(&mut client)?;
    let tables = super::capture::prepare(&mut client, capture)?;
    ensure_slot(&mut client, slot)?;
    let batcher =
        PgBatcher { config, display: display.to_string(), client: Some(client), statements: Statements::default() };
    Ok((batcher, tables))
}

/// Creates the slot if it is missing. It must exist before the first write:
/// changes committed before it are not in its stream.
fn ensure_slot(client: &mut postgres::Client, slot: &str) -> Result<(), StoreError> {
    let wal_level: String = client.query_one("SHOW wal_level", &[])?.get(0);
    if wal_level != "logical" {
        return Err(StoreError::new(
            StoreErrorKind::Unavailable,
            format!(
                "PostgreSQL runs with wal_level={wal_level}; Herald needs wal_level=logical \
                 (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
            ),
        ));
    }
    if client.query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])?.is_some() {
        return Ok(());
    }
    match client.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]) {
        Ok(_) => {
            tracing::info!(slot, "created the logical replication slot");
            Ok(())
        }
        // Another Herald starting at the same moment made it.
        Err(e) if e.code() == Some(&postgres::error::SqlState::DUPLICATE_OBJECT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl PgBatcher {
    /// Another writer on the same database; it connects on its first batch.
    pub fn another(&self) -> PgBatcher {
        PgBatcher {
            config: self.config.clone(),
            display: self.display.clone(),
            client: None,
            statements: Statements::default(),
        }
    }

    fn client(&mut self) -> Result<&mut postgres::Client, StoreError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.statements = Statements::default();
            self.client = None;
            self.client = Some(connect(&self.config, &self.display)?);
            tracing::info!("the writer reconnected to PostgreSQL");
        }
        self.client.as_mut().ok_or_else(|| StoreError::unavailable("no connection"))
    }

    fn run_batch(&mut self, batch: &mut [Box<dyn Work>]) -> Result<(), StoreError> {
        let now = crate::model::time::now_ms();
        self.client()?;
        let (Some(client), statements) = (self.client.as_mut(), &mut self.statements) else {
            return Err(StoreError::unavailable("no connection"));
        };
        let mut tx = client.transaction()?;
        let mut ptx = PgTx { tx: &mut tx, statements, now };
        // One savepoint per unit, so a refused one rolls back alone. Each round
        // trip costs the whole writer: a unit's end and the next one's start
        // go together.
        let mut open = false;
        for work in batch.iter_mut() {
            ptx.tx.batch_execute(if open { "RELEASE request; SAVEPOINT request" } else { "SAVEPOINT request" })?;
            open = true;
            if !run_unit(work, &mut ptx) {
                ptx.tx.batch_execute("ROLLBACK TO request; RELEASE request")?;
                open = false;
            }
        }
        if open {
            ptx.tx.batch_execute("RELEASE request")?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl Batcher for PgBatcher {
    fn commit(&mut self, batch: &mut Vec<Box<dyn Work>>) {
        let started = Instant::now();
        match self.run_batch(batch) {
            Ok(()) => commit_all(batch, started),
            Err(e) => {
                tracing::error!(error = %e, batch = batch.len(), "commit failed; the batch is refused");
                if self.client.as_ref().is_some_and(|c| c.is_closed()) {
                    self.client = None;
                }
                fail_all(batch, e);
            }
        }
    }
}
