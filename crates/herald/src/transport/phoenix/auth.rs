//! Supabase credentials mapped onto Herald principals, and each
//! `postgres_changes` binding onto the Herald topics that may feed it.
//!
//! | token role | Herald role | sees |
//! |---|---|---|
//! | `service_role` | service | every row of its tenant (notifications: anyone's, by `recipient` filter) |
//! | `authenticated` | customer | jobs it owns (`owner` = `sub`), their tasks and artifacts, its notifications |
//! | `admin`, `staff`, `worker`, `service`, `customer` | the same | as on the native protocol |
//! | `anon` | — | may open the socket (it is Supabase's `apikey`), may not join a channel |

use super::changes::{BindingSpec, Op, OwnTable, Table};
use crate::app::AppState;
use crate::auth::{apikey, AuthError, Principal, Role};
use crate::hub::index::index_topic;
use crate::model::table::exact_text_type;
use crate::model::CapturedTable;
use crate::session::authorize;

/// Who presented a token.
#[derive(Debug, Clone)]
pub enum Credential {
    User(Principal),
    /// Supabase's public `anon` key: tenant, if the key names one.
    Anon {
        tenant: Option<String>,
    },
}

impl Credential {
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Credential::User(p) => Some(&p.tenant),
            Credential::Anon { tenant } => tenant.as_deref(),
        }
    }
}

/// Verifies an `apikey` or `access_token`.
pub async fn identify(s: &AppState, token: &str) -> Result<Credential, AuthError> {
    if apikey::parse(token).is_some() {
        return s.auth.authenticate(token).await.map(Credential::User);
    }
    let claims = s.auth.jwt.verify_claims(token)?;
    if s.auth.jwt.role_name(&claims) == Some("anon") {
        return Ok(Credential::Anon { tenant: s.auth.jwt.tenant_of(&claims) });
    }
    s.auth.jwt.verify(token).map(Credential::User)
}

/// A refusal, worded for the join reply.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The Herald topics whose events may satisfy `spec` for `p`, each authorized as
/// a native subscription would be. Tasks and artifacts are routed per job, so
/// their bindings name the jobs (`job_id=eq.<id>` or `job_id=in.(...)`).
pub async fn topics_for(s: &AppState, p: &Principal, spec: &BindingSpec) -> Result<Vec<String>, Refused> {
    let mut topics = Vec::new();
    // Index topics, and the table topics that authorize them.
    let (mut indexed, mut bases) = (Vec::new(), Vec::new());
    let explicit = spec.table.is_some();
    for table in &spec.tables {
        match table {
            Table::Own(OwnTable::Jobs) => topics.extend(job_topics(p, spec)),
            Table::Own(OwnTable::Tasks | OwnTable::Artifacts) => match spec.equals("job_id") {
                Some(ids) => topics.extend(ids.into_iter().map(|id| format!("job:{id}"))),
                None if explicit => {
                    return Err(Refused(format!(
                        "{} is routed per job: filter it with job_id=eq.<id> or job_id=in.(<ids>)",
                        table.key()
                    )));
                }
                None => {}
            },
            Table::Own(OwnTable::Notifications) => match spec.equals("recipient") {
                Some(subs) => topics.extend(subs.into_iter().map(|u| format!("user:{u}"))),
                None => topics.push(format!("user:{}", p.sub)),
            },
            Table::Captured(t) => match (&t.owner_column, p.role) {
                // Customers listen on their own rows, whatever the filter says.
                (Some(_), Role::Customer) => topics.push(t.owner_topic(&p.sub)),
                (Some(column), _) if spec.equals(column).is_some() => {
                    topics.extend(spec.equals(column).unwrap_or_default().iter().map(|o| t.owner_topic(o)))
                }
                // The whole table's rows are theirs to read: an equality filter
                // narrows through the hub's index instead of per-event checks.
                _ => match indexable(t, spec) {
                    Some((column, values)) => {
                        bases.push(t.topic());
                        indexed.extend(values.iter().map(|v| index_topic(&t.topic(), column, v)));
                    }
                    None => topics.push(t.topic()),
                },
            },
        }
    }
    // Each id is a hub subscription and an access check: bound them like channels.
    if topics.len() + indexed.len() > s.limits.max_subscriptions {
        return Err(Refused(format!(
            "too_many_subscriptions: a binding may name at most {} ids",
            s.limits.max_subscriptions
        )));
    }
    topics.sort();
    topics.dedup();
    bases.sort();
    bases.dedup();
    for t in topics.iter().chain(&bases) {
        authorize(s, p, t).await.map_err(|e| Refused(format!("{}: {}", e.code, e.message)))?;
    }
    topics.extend(indexed);
    topics.sort();
    topics.dedup();
    Ok(topics)
}

/// The first equality filter of `spec` the hub can route by text: a column
/// whose values have one spelling (text, integers, booleans, uuids), with the
/// filter's values spelled as the row's would be. `None`: the table topic and
/// per-event checks.
fn indexable<'a>(t: &CapturedTable, spec: &'a BindingSpec) -> Option<(&'a str, Vec<String>)> {
    spec.conditions.iter().filter(|c| matches!(c.op, Op::Eq | Op::In)).find_map(|c| {
        let type_name = t.column(&c.column)?.type_name.as_str();
        if !exact_text_type(type_name) {
            return None;
        }
        let values: Option<Vec<String>> = c
            .values
            .iter()
            .map(|v| match type_name {
                "int2" | "int4" | "int8" => v.parse::<i64>().ok().map(|n| n.to_string()),
                "bool" => matches!(v.as_str(), "true" | "false").then(|| v.clone()),
                _ => Some(v.clone()),
            })
            .collect();
        Some((c.column.as_str(), values?))
    })
}

/// The narrowest topic carrying the job rows `spec` can match: one job by id
/// (staff), one owner's jobs, or the whole tenant. Customers always listen on
/// their own `jobs:owner:<sub>`, so a job created later is seen too and no
/// other customer's row can reach them.
fn job_topics(p: &Principal, spec: &BindingSpec) -> Vec<String> {
    if p.role == Role::Customer {
        return vec![format!("jobs:owner:{}", p.sub)];
    }
    if let Some(ids) = spec.equals("id") {
        return ids.into_iter().map(|id| format!("job:{id}")).collect();
    }
    if let Some(owners) = spec.equals("owner") {
        return owners.into_iter().map(|o| format!("jobs:owner:{o}")).collect();
    }
    vec!["jobs".to_string()]
}
