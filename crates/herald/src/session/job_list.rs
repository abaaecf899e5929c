//! Live job lists: a query over jobs, a snapshot taken atomically with the
//! live feed, then `enter` / `update` / `leave` as jobs move in, within and out
//! of it. Every transport drives the same [`JobList`]; only the frames differ.
//!
//! Why it is exact: the list joins the hub before it reads the store, and the
//! store read returns the log position its jobs reflect. Queued events at or
//! below that position are already in the snapshot; a job's `version` orders
//! the rest, so no state older than one already shown is ever applied.

use super::error::SessionError;
use super::{authorize, Cursor, Membership};
use crate::app::AppState;
use crate::auth::Principal;
use crate::hub::TopicKey;
use crate::model::{Event, Job, JobFacts, JobQuery, Position, Role};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;

/// Most jobs one list holds.
pub const MAX_LIST_JOBS: usize = 10_000;

/// How a job's place in a list changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Enter,
    Update,
    Leave,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Enter => "enter",
            ChangeKind::Update => "update",
            ChangeKind::Leave => "leave",
        }
    }
}

/// One change of a list, for a codec to frame.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: ChangeKind,
    pub position: Position,
    pub id: String,
    /// The job as it is now (an event's row, shared, not re-serialized);
    /// `None` for a job that aged out of the window or that a resume cannot show.
    pub job: Option<Arc<RawValue>>,
}

impl Change {
    /// `"change":…,"position":…,"id":…,"job":…` — the fields every wire format
    /// frames; the job's JSON is spliced in as it came, never re-serialized.
    pub fn json_fields(&self) -> String {
        let id = serde_json::to_string(&self.id).unwrap_or_default();
        let job = self.job.as_ref().map(|j| format!(r#","job":{}"#, j.get())).unwrap_or_default();
        format!(r#""change":"{}","position":{},"id":{id}{job}"#, self.kind.as_str(), self.position.get())
    }
}

/// The list outgrew [`MAX_LIST_JOBS`].
#[derive(Debug)]
pub struct TooLarge;

impl TooLarge {
    pub fn error() -> SessionError {
        SessionError::invalid(
            "list_too_large",
            format!("the query matches more than {MAX_LIST_JOBS} jobs; narrow it (status, kind, updated_within)"),
        )
    }
}

struct Member {
    version: u64,
    updated_at: i64,
}

/// One live list of one connection.
pub struct JobList {
    pub query: JobQuery,
    /// The hub topic whose job events feed the list.
    pub key: TopicKey,
    members: HashMap<String, Member>,
    /// Versions of jobs outside the list that the snapshot already reflects.
    seen: HashMap<String, u64>,
    /// Events at or below it are in the list already.
    cursor: Cursor,
    /// When the next member ages out of `updated_within`, epoch ms.
    next_expiry: Option<i64>,
}

/// A list just opened: its snapshot and the position it reflects.
pub struct Opened {
    pub list: JobList,
    pub jobs: Vec<Job>,
    pub position: Position,
}

/// Checks who may list what, and returns the query as the caller may run it
/// and the hub topic that carries its changes.
async fn scope(s: &AppState, p: &Principal, mut query: JobQuery) -> Result<(JobQuery, String), SessionError> {
    if p.role == Role::Customer {
        match query.owner.as_deref() {
            Some(o) if o != &*p.sub => {
                return Err(SessionError::forbidden(format!("customers list their own jobs only (owner {})", p.sub)))
            }
            _ => query.owner = Some(p.sub.to_string()),
        }
        let topic = format!("jobs:owner:{}", p.sub);
        authorize(s, p, &topic).await?;
        return Ok((query, topic));
    }
    authorize(s, p, "jobs").await?;
    Ok((query, "jobs".to_string()))
}

impl JobList {
    /// Joins the hub, then reads the snapshot. On an error nothing stays joined.
    pub async fn open(
        s: &AppState,
        p: &Principal,
        member: &mut Membership,
        query: JobQuery,
    ) -> Result<Opened, SessionError> {
        let (query, topic) = scope(s, p, query).await?;
        member.check_room_for(&p.tenant, [topic.as_str()])?;
        let key = member.join(&p.tenant, &topic);
        match Self::read(s, p, key.clone(), query).await {
            Ok(opened) => Ok(opened),
            Err(e) => {
                member.leave(&key);
                Err(e)
            }
        }
    }

    async fn read(s: &AppState, p: &Principal, key: TopicKey, query: JobQuery) -> Result<Opened, SessionError> {
        let now = crate::model::time::now_ms();
        // Tags are matched here, so the store is asked for a few more rows than a list holds.
        let snap = s.store.job_list(&p.tenant, &p.job_visibility(), &query, now, MAX_LIST_JOBS * 4).await?;
        if snap.truncated {
            return Err(TooLarge::error());
        }
        let jobs: Vec<Job> = snap.jobs.into_iter().filter(|j| query.matches(&JobFacts::of_job(j), now)).collect();
        if jobs.len() > MAX_LIST_JOBS {
            return Err(TooLarge::error());
        }
        let members: HashMap<String, Member> =
            jobs.iter().map(|j| (j.id.clone(), Member { version: j.version, updated_at: j.updated_at })).collect();
        let seen = snap.recent.into_iter().filter(|(id, _)| !members.contains_key(id)).collect();
        let mut list = JobList { query, key, members, seen, cursor: Cursor::at(snap.head), next_expiry: None };
        list.next_expiry = list.earliest_expiry();
        Ok(Opened { list, jobs, position: snap.head })
    }

    /// The position the list reflects.
    pub fn position(&self) -> Position {
        self.cursor.position()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// What a client holding `have` (ids and versions) lacks of the list now.
    pub fn resume(&self, jobs: &[Job], have: &HashMap<String, u64>) -> Vec<Change> {
        let position = self.position();
        let mut out = Vec::new();
        for job in jobs {
            let kind = match have.get(&job.id) {
                Some(&v) if v >= job.version => continue,
                Some(_) => ChangeKind::Update,
                None => ChangeKind::Enter,
            };
            out.push(Change { kind, position, id: job.id.clone(), job: job_json(job) });
        }
        for id in have.keys().filter(|id| !self.members.contains_key(*id)) {
            out.push(Change { kind: ChangeKind::Leave, position, id: id.clone(), job: None });
        }
        out
    }

    /// Fills in the jobs that a resume's leaves name, as they are now, so a
    /// client can tell "completed" from "cancelled" (one read per leave; a job
    /// gone from the store, or one the caller may not see, leaves with its id).
    pub async fn describe_leaves(s: &AppState, p: &Principal, changes: &mut [Change]) {
        let vis = p.job_visibility();
        for c in changes.iter_mut().filter(|c| c.kind == ChangeKind::Leave && c.job.is_none()) {
            if let Ok(Some(job)) = s.store.job(&p.tenant, &c.id).await {
                if vis.allows(job.owner.as_deref()) {
                    c.job = job_json(&job);
                }
            }
        }
    }

    /// A live event of the list's topic: the change it makes, if any.
    pub fn apply(&mut self, event: &Event, now_ms: i64) -> Result<Option<Change>, TooLarge> {
        if !event.kind.table().eq("jobs") || !self.cursor.admit(event.position) {
            return Ok(None);
        }
        let Some(job) = JobFacts::of_row(event.row()) else { return Ok(None) };
        let known = self.members.get(job.id).map(|m| m.version).or_else(|| self.seen.get(job.id).copied());
        if known.is_some_and(|v| job.version <= v) {
            return Ok(None);
        }
        // Past the snapshot's versions now: the entry has done its work.
        self.seen.remove(job.id);
        let matches = self.query.matches(&job, now_ms);
        let kind = match (self.members.contains_key(job.id), matches) {
            (true, true) => ChangeKind::Update,
            (true, false) => ChangeKind::Leave,
            (false, true) => ChangeKind::Enter,
            (false, false) => return Ok(None),
        };
        match kind {
            ChangeKind::Leave => {
                self.members.remove(job.id);
            }
            _ => {
                if kind == ChangeKind::Enter && self.members.len() >= MAX_LIST_JOBS {
                    return Err(TooLarge);
                }
                self.members.insert(job.id.to_string(), Member { version: job.version, updated_at: job.updated_at });
                if let Some(at) = self.query.expires_at(job.updated_at) {
                    self.next_expiry = Some(self.next_expiry.map_or(at, |n| n.min(at)));
                }
            }
        }
        Ok(Some(Change { kind, position: event.position, id: job.id.to_string(), job: Some(Arc::clone(&event.data)) }))
    }

    /// When the next member ages out of the window, if one can.
    pub fn next_expiry(&self) -> Option<i64> {
        self.next_expiry
    }

    /// Members that aged out of `updated_within` by `now_ms` leave.
    pub fn expire(&mut self, now_ms: i64) -> Vec<Change> {
        if self.next_expiry.is_none_or(|at| at > now_ms) {
            return Vec::new();
        }
        let position = self.position();
        let query = &self.query;
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| query.expires_at(m.updated_at).is_some_and(|at| at <= now_ms))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.members.remove(id);
        }
        self.next_expiry = self.earliest_expiry();
        gone.into_iter().map(|id| Change { kind: ChangeKind::Leave, position, id, job: None }).collect()
    }

    fn earliest_expiry(&self) -> Option<i64> {
        self.members.values().filter_map(|m| self.query.expires_at(m.updated_at)).min()
    }
}

/// A stored job as the JSON events carry.
pub fn job_json(job: &Job) -> Option<Arc<RawValue>> {
    serde_json::value::to_raw_value(job).ok().map(Arc::from)
}
