//! Topics: what a client subscribes to, and where changes are routed.

/// A parsed topic name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `job:<id>` — one job, its tasks and artifacts.
    Job(String),
    /// `jobs` — every job of the tenant.
    Jobs,
    /// `jobs:owner:<sub>` — the jobs one customer owns.
    JobsOwner(String),
    /// `user:<sub>` — one user's notifications.
    User(String),
    /// `room:<name>` — broadcast and presence, memory only.
    Room(String),
    /// `table:<schema>.<name>` — changes of a captured table;
    /// `table:<schema>.<name>:owner:<sub>` — those of rows `sub` owns.
    Table { schema: String, name: String, owner: Option<String> },
    /// `stream:<job id>:<name>` — the chunks appended to one output stream of a
    /// job (its own offsets, not log positions).
    Stream { job: String, name: String },
}

pub use herald_model::stream::validate_stream_name;

impl Topic {
    /// Parses a topic, or says what is wrong with it.
    pub fn parse(s: &str) -> Result<Topic, String> {
        let check = |what: &str, v: &str| -> Result<String, String> {
            crate::model::ids::validate_id(v).map_err(|m| format!("{what} {m}"))?;
            Ok(v.to_string())
        };
        if s == "jobs" {
            return Ok(Topic::Jobs);
        }
        if let Some(sub) = s.strip_prefix("jobs:owner:") {
            return Ok(Topic::JobsOwner(check("owner", sub)?));
        }
        if let Some(id) = s.strip_prefix("job:") {
            return Ok(Topic::Job(check("job id", id)?));
        }
        if let Some(rest) = s.strip_prefix("stream:") {
            let Some((job, name)) = rest.rsplit_once(':') else {
                return Err(format!("stream topic {s:?}: expected stream:<job id>:<name>"));
            };
            validate_stream_name(name)?;
            return Ok(Topic::Stream { job: check("job id", job)?, name: name.to_string() });
        }
        if let Some(sub) = s.strip_prefix("user:") {
            return Ok(Topic::User(check("user", sub)?));
        }
        if let Some(name) = s.strip_prefix("room:") {
            return Ok(Topic::Room(check("room name", name)?));
        }
        if let Some(rest) = s.strip_prefix("table:") {
            let (table, owner) = match rest.split_once(":owner:") {
                Some((t, o)) => (t, Some(check("owner", o)?)),
                None => (rest, None),
            };
            let ident =
                |v: &str| !v.is_empty() && v.len() <= 63 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            return match table.split_once('.') {
                Some((schema, name)) if ident(schema) && ident(name) => {
                    Ok(Topic::Table { schema: schema.to_string(), name: name.to_string(), owner })
                }
                _ => Err(format!("table topic {s:?}: expected table:<schema>.<table>[:owner:<sub>]")),
            };
        }
        Err(format!(
            "unknown topic {s:?}; expected job:<id>, jobs, jobs:owner:<sub>, user:<sub>, room:<name>, stream:<job id>:<name> or table:<schema>.<table>"
        ))
    }

    /// Rooms are ephemeral: no log, no resume.
    pub fn is_room(&self) -> bool {
        matches!(self, Topic::Room(_))
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topic::Job(id) => write!(f, "job:{id}"),
            Topic::Jobs => f.write_str("jobs"),
            Topic::JobsOwner(s) => write!(f, "jobs:owner:{s}"),
            Topic::User(s) => write!(f, "user:{s}"),
            Topic::Room(n) => write!(f, "room:{n}"),
            Topic::Table { schema, name, owner: None } => write!(f, "table:{schema}.{name}"),
            Topic::Table { schema, name, owner: Some(o) } => write!(f, "table:{schema}.{name}:owner:{o}"),
            Topic::Stream { job, name } => write!(f, "stream:{job}:{name}"),
        }
    }
}

// Routing: which topics a change or a broadcast goes to. Written once here,
// used by the rules that append events and by the transports that join them.

/// The topics an event about a job goes to.
pub fn job_topics(job_id: &str, owner: Option<&str>, whole_tenant: bool) -> Vec<String> {
    let mut t = vec![format!("job:{job_id}")];
    if whole_tenant {
        t.push("jobs".to_string());
        if let Some(o) = owner {
            t.push(format!("jobs:owner:{o}"));
        }
    }
    t
}

/// The topic of one user's notifications.
pub fn user_topic(sub: &str) -> String {
    format!("user:{sub}")
}

/// The topic every native connection joins for tenant-wide broadcasts.
pub const TENANT_TOPIC: &str = "tenant";

/// The topic every native connection of a user joins for broadcasts to that user.
pub fn inbox_topic(sub: &str) -> String {
    format!("inbox:{sub}")
}

#[cfg(test)]
mod tests {
    use super::Topic;

    #[test]
    fn parses_every_kind_and_round_trips() {
        for s in [
            "job:abc",
            "jobs",
            "jobs:owner:u1",
            "user:u1",
            "room:lobby",
            "table:public.t_1",
            "table:app.x:owner:u1",
            "stream:a:b:log",
        ] {
            assert_eq!(Topic::parse(s).unwrap().to_string(), s);
        }
        assert!(Topic::parse("job:").is_err());
        assert!(Topic::parse("nope").is_err());
        assert_eq!(Topic::parse("stream:a:b:log").unwrap(), Topic::Stream { job: "a:b".into(), name: "log".into() });
        assert!(Topic::parse("stream:job").is_err());
        assert!(Topic::parse("stream:job:bad name").is_err());
        assert!(Topic::parse("user:a b").is_err());
    }
}
