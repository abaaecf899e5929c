//! The sequencer: the one process that gives log positions.
//!
//! Every Herald process connected to the database runs this task; the one that
//! holds the session advisory lock [`SEQUENCER_LOCK`] is the leader, the
//! others wait for the lock. The leader reads committed changes from the
//! logical replication slot (pgoutput), in commit order, turns each change of
//! a streamed table into an event, and appends them to `herald.events` with
//! the next positions — so positions follow commit order, whoever committed
//! (a Herald writer on any node, or psql), and a reader paging by position
//! never skips a row still in flight. The events, the applied commit LSN and
//! the lock live on one connection: if the leader's session dies, its
//! unfinished append dies with it, and the next leader starts after the last
//! committed one. The slot is confirmed only after the events are durable; a
//! transaction replayed after a crash (LSN at or below the applied one) is
//! skipped, so nothing is sequenced twice.

use super::changes::{captured_event, own_table_event, truncated_event, LogEvent};
use super::pgoutput::{self, Message, Relation};
use super::schema::{PUBLICATION, SEQUENCER_LOCK};
use crate::model::{Catalog, EventType};
use crate::store::StoreError;
use futures_util::FutureExt;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The prefix of a logical message that asks for a fence: `SELECT
/// pg_logical_emit_message(true, 'herald.fence', '<id>')` commits in order
/// with everything else, and once the sequencer has appended everything
/// committed before it, it records `fence:<id>` in `herald.meta`. A caller
/// that sees the key knows its earlier commits are in the log.
pub const FENCE_PREFIX: &str = "herald.fence";

/// How often the leader reports its slot's lag and WAL status.
const LAG_SAMPLE: Duration = Duration::from_secs(5);

/// Most events appended in one transaction of the sequencer.
const MAX_APPEND: usize = 2048;
/// PostgreSQL's epoch (2000-01-01) in Unix milliseconds.
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// Where the sequencer connects, and the name of its slot.
#[derive(Clone)]
pub struct SequencerConfig {
    pub pg: tokio_postgres::Config,
    pub slot: String,
    /// The URL without its password, for messages.
    pub display_url: String,
    /// Application tables whose changes are events too.
    pub catalog: Arc<Catalog>,
}

/// Runs the sequencer until the process ends: waits to lead, leads until the
/// connection or the stream breaks, then tries again. `appended` wakes the
/// local log tail after each append.
pub fn spawn(config: SequencerConfig, appended: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = lead(&config, &appended).await {
                tracing::warn!(error = %e, db = %config.display_url, "sequencer stopped; trying again");
                metrics::gauge!("herald_sequencer_leader").set(0.0);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Connects with tokio-postgres, driving the connection on its own task.
pub async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

fn replication_config(config: &SequencerConfig, applied: u64) -> ReplicationConfig {
    let pg = &config.pg;
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let mut rc = ReplicationConfig::new(
        host,
        pg.get_user().unwrap_or("postgres"),
        pg.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default(),
        pg.get_dbname().unwrap_or("postgres"),
        config.slot.as_str(),
        PUBLICATION,
    )
    .with_port(pg.get_ports().first().copied().unwrap_or(5432))
    // Zero: from the slot's confirmed position.
    .with_start_lsn(Lsn(0))
    .with_status_interval(Duration::from_secs(1))
    .with_wakeup_interval(Duration::from_secs(1))
    .with_application_name("herald-sequencer");
    if applied > 0 {
        rc = rc.with_ack_lsn(Lsn(applied));
    }
    rc
}

fn replication_error(e: pgwire_replication::PgWireError) -> StoreError {
    StoreError::caused_by(crate::store::StoreErrorKind::Unavailable, format!("logical replication: {e}"), e)
}

/// One term as leader.
async fn lead(config: &SequencerConfig, appended: &Notify) -> Result<(), StoreError> {
    let mut client = connect(&config.pg).await?;
    // Wait for the lock; a session lock, so it goes with this connection.
    loop {
        let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&SEQUENCER_LOCK]).await?;
        if row.get::<_, bool>(0) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracing::info!(slot = %config.slot, "this process sequences the log");
    metrics::gauge!("herald_sequencer_leader").set(1.0);
    let applied = check_slot(&mut client, &config.slot).await?;
    let mut state = State {
        catalog: Arc::clone(&config.catalog),
        next: client
            .query_one(
                "SELECT greatest(coalesce((SELECT max(position) FROM herald.events), 0),
                                 coalesce((SELECT value::bigint FROM herald.meta WHERE key = 'floor'), 0)) + 1",
                &[],
            )
            .await?
            .get(0),
        applied,
        relations: HashMap::new(),
        open: Vec::new(),
        commit_time: 0,
        ready: Vec::new(),
        ready_lsn: 0,
        open_fences: Vec::new(),
        ready_fences: Vec::new(),
    };
    let mut stream =
        ReplicationClient::connect(replication_config(config, applied)).await.map_err(replication_error)?;
    let mut sample = tokio::time::interval(LAG_SAMPLE);
    loop {
        // Take everything already waiting, then append it as one transaction.
        let event = if state.ready_lsn <= state.applied {
            tokio::select! {
                event = stream.recv() => event,
                _ = sample.tick() => {
                    sample_slot(&client, &config.slot).await?;
                    continue;
                }
            }
        } else {
            match stream.recv().now_or_never() {
                Some(event) => event,
                None => {
                    state.append(&mut client, &stream, appended).await?;
                    continue;
                }
            }
        };
        let Some(event) = event.map_err(replication_error)? else {
            return Err(StoreError::unavailable("the replication stream ended"));
        };
        state.take(event)?;
        if state.ready.len() >= MAX_APPEND {
            state.append(&mut client, &stream, appended).await?;
        }
    }
}

/// An LSN as PostgreSQL prints it (`16/B374D848`).
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Makes sure the slot still holds every change after `applied_lsn`, and
/// returns the LSN to go on from. A slot that is missing, invalidated
/// (`wal_status = lost`, e.g. by `max_slot_wal_keep_size`) or confirmed past
/// what the log holds (made anew while Herald was away) has lost changes:
/// it is made anew, and the log's floor moves above its head, so every
/// reader — resuming or live (each tail cuts its subscribers off) — gets
/// `resync` and a fresh snapshot instead of a silent gap.
async fn check_slot(client: &mut tokio_postgres::Client, slot: &str) -> Result<u64, StoreError> {
    let applied: u64 = client
        .query_opt("SELECT value FROM herald.meta WHERE key = 'applied_lsn'", &[])
        .await?
        .and_then(|r| r.get::<_, String>(0).parse().ok())
        .unwrap_or(0);
    let row = client
        .query_opt(
            "SELECT coalesce(wal_status, ''), coalesce(confirmed_flush_lsn::text, '0/0')
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let lost = match &row {
        None => true,
        Some(r) => {
            let status: String = r.get(0);
            let confirmed = parse_lsn(r.get(1)).unwrap_or(0);
            status == "lost" || (applied > 0 && confirmed > applied)
        }
    };
    if !lost {
        return Ok(applied);
    }
    let log_existed =
        applied > 0 || client.query_one("SELECT EXISTS (SELECT 1 FROM herald.events)", &[]).await?.get::<_, bool>(0);
    if row.is_some() {
        client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await?;
    }
    let created =
        client.query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).await?;
    let from = parse_lsn(created.get(0)).unwrap_or(0);
    if !log_existed {
        return Ok(0);
    }
    tracing::error!(
        slot,
        "the replication slot lost changes (dropped, or invalidated by max_slot_wal_keep_size); made it anew: \
         every client resynchronises from a fresh snapshot"
    );
    metrics::counter!("herald_replication_slot_losses_total").increment(1);
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO herald.meta (key, value)
         SELECT 'floor', (greatest(coalesce((SELECT max(position) FROM herald.events), 0),
                                   coalesce((SELECT value::bigint FROM herald.meta WHERE key = 'floor'), 0)) + 1)::text
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[],
    )
    .await?;
    tx.execute(
        "INSERT INTO herald.meta (key, value) VALUES ('applied_lsn', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&from.to_string()],
    )
    .await?;
    tx.execute("SELECT pg_notify('herald_events', 'resync')", &[]).await?;
    tx.commit().await?;
    Ok(from)
}

/// Reports how far the slot is behind the server's WAL, and its WAL status:
/// the bytes a slot holds back are what could fill the server's disk.
async fn sample_slot(client: &tokio_postgres::Client, slot: &str) -> Result<(), StoreError> {
    let row = client
        .query_opt(
            "SELECT coalesce((pg_current_wal_lsn() - confirmed_flush_lsn)::float8, 0), coalesce(wal_status, ''),
                    coalesce(safe_wal_size::float8, -1)
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    if let Some(r) = row {
        metrics::gauge!("herald_replication_slot_lag_bytes").set(r.get::<_, f64>(0));
        let status: &str = r.get(1);
        let code = match status {
            "reserved" => 0.0,
            "extended" => 1.0,
            "unreserved" => 2.0,
            _ => 3.0,
        };
        metrics::gauge!("herald_replication_slot_wal_status").set(code);
        // -1: no max_slot_wal_keep_size, the slot may hold WAL without bound.
        metrics::gauge!("herald_replication_slot_safe_wal_bytes").set(r.get::<_, f64>(2));
    }
    Ok(())
}

struct State {
    catalog: Arc<Catalog>,
    /// The position the next event gets.
    next: i64,
    /// End LSN of the newest transaction whose events are in the log.
    applied: u64,
    relations: HashMap<u32, Relation>,
    /// Events of the transaction being read.
    open: Vec<LogEvent>,
    commit_time: i64,
    /// Events of committed transactions, not yet appended.
    ready: Vec<LogEvent>,
    ready_lsn: u64,
    /// Fences of the transaction being read, and of committed ones.
    open_fences: Vec<String>,
    ready_fences: Vec<String>,
}

impl State {
    fn take(&mut self, event: ReplicationEvent) -> Result<(), StoreError> {
        match event {
            ReplicationEvent::Begin { commit_time_micros, .. } => {
                self.open.clear();
                self.commit_time = PG_EPOCH_MS + commit_time_micros / 1000;
            }
            ReplicationEvent::XLogData { data, .. } => {
                let message = pgoutput::decode(&data)
                    .map_err(|e| StoreError::internal(format!("an unreadable replication message: {e}")))?;
                match &message {
                    Message::Relation(r) => {
                        self.relations.insert(r.id, r.clone());
                    }
                    Message::Insert { relation, .. }
                    | Message::Update { relation, .. }
                    | Message::Delete { relation, .. } => {
                        let relation = self.relations.get(relation).ok_or_else(|| {
                            StoreError::internal(format!("a change of relation {relation} came before its description"))
                        })?;
                        let event = if relation.schema == "herald" {
                            own_table_event(relation, &message, self.commit_time)?
                        } else if let Some(table) = self.catalog.get(&relation.schema, &relation.name) {
                            captured_event(table, relation, &message, self.commit_time)?
                        } else {
                            None
                        };
                        self.open.extend(event);
                    }
                    Message::Truncate { relations, .. } => {
                        for id in relations {
                            let Some(r) = self.relations.get(id) else { continue };
                            if let Some(table) = self.catalog.get(&r.schema, &r.name) {
                                self.open.push(truncated_event(table, self.commit_time));
                            }
                        }
                    }
                    _ => {}
                }
            }
            ReplicationEvent::Message { prefix, content, .. } if prefix == FENCE_PREFIX => {
                self.open_fences.push(String::from_utf8_lossy(&content).into_owned());
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                if end_lsn.0 <= self.applied {
                    // Sequenced before a restart; the slot was not confirmed yet.
                    self.open.clear();
                    self.open_fences.clear();
                } else {
                    self.ready.append(&mut self.open);
                    self.ready_fences.append(&mut self.open_fences);
                    self.ready_lsn = end_lsn.0;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Appends the ready events with the next positions, records the applied
    /// LSN in the same transaction, then confirms the slot.
    async fn append(
        &mut self,
        client: &mut tokio_postgres::Client,
        stream: &ReplicationClient,
        appended: &Notify,
    ) -> Result<(), StoreError> {
        let mut events = Vec::with_capacity(self.ready.len());
        for event in std::mem::take(&mut self.ready) {
            if event.kind == EventType::TableTruncated && event.tenant.is_empty() {
                // Announced to every tenant the table has had events in.
                let topic = event.topics.first().cloned().unwrap_or_default();
                for row in
                    client.query("SELECT DISTINCT tenant FROM herald.event_topics WHERE topic = $1", &[&topic]).await?
                {
                    events.push(LogEvent { tenant: row.get(0), ..event.clone() });
                }
            } else {
                events.push(event);
            }
        }
        let n = events.len();
        let fences = std::mem::take(&mut self.ready_fences);
        // Even a batch that announces nothing records its LSN: the slot is never
        // confirmed past `applied_lsn`, which is how a lost slot is recognised.
        let positions: Vec<i64> = (self.next..self.next + n as i64).collect();
        let mut topic_tenants = Vec::new();
        let mut topic_names = Vec::new();
        let mut topic_positions = Vec::new();
        for (event, position) in events.iter().zip(&positions) {
            for topic in &event.topics {
                topic_tenants.push(event.tenant.as_str());
                topic_names.push(topic.as_str());
                topic_positions.push(*position);
            }
        }
        let tenants: Vec<&str> = events.iter().map(|e| e.tenant.as_str()).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let job_ids: Vec<Option<&str>> = events.iter().map(|e| e.job_id.as_deref()).collect();
        let owners: Vec<Option<&str>> = events.iter().map(|e| e.owner.as_deref()).collect();
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        let olds: Vec<Option<&str>> = events.iter().map(|e| e.old.as_deref()).collect();
        let sources: Vec<Option<&str>> = events.iter().map(|e| e.table.as_deref()).collect();
        let times: Vec<i64> = events.iter().map(|e| e.time).collect();
        let lsn = self.ready_lsn.to_string();
        let tx = client.transaction().await?;
        if !fences.is_empty() {
            tx.execute(
                "INSERT INTO herald.meta (key, value) SELECT 'fence:' || f, $2 FROM unnest($1::text[]) f
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&fences, &lsn],
            )
            .await?;
        }
        tx.execute(
            "INSERT INTO herald.events (position, tenant, type, job_id, owner, data, time, old, source)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::bigint[], $8::text[], $9::text[])",
            &[&positions, &tenants, &kinds, &job_ids, &owners, &data, &times, &olds, &sources],
        )
        .await?;
        tx.execute(
            "INSERT INTO herald.event_topics (tenant, topic, position)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])",
            &[&topic_tenants, &topic_names, &topic_positions],
        )
        .await?;
        tx.execute(
            "INSERT INTO herald.meta (key, value) VALUES ('applied_lsn', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&lsn],
        )
        .await?;
        if n > 0 {
            // Other Herald processes follow the log through this.
            tx.execute("SELECT pg_notify('herald_events', $1)", &[&(self.next + n as i64 - 1).to_string()]).await?;
        }
        tx.commit().await?;
        self.next += n as i64;
        self.applied = self.ready_lsn;
        stream.update_applied_lsn(Lsn(self.ready_lsn));
        metrics::counter!("herald_events_appended_total").increment(n as u64);
        appended.notify_one();
        Ok(())
    }
}
