//! Authorization rules, in one place: who may read which topic and write what.

use super::{Principal, Role};
use crate::model::Topic;

/// Whether `p` may write jobs, tasks and artifacts.
pub fn can_write_jobs(p: &Principal) -> bool {
    matches!(p.role, Role::Worker | Role::Service | Role::Admin)
}

/// Whether `p` may cancel a job of its tenant: whoever may write jobs, and staff.
pub fn can_cancel_jobs(p: &Principal) -> bool {
    can_write_jobs(p) || p.role == Role::Staff
}

/// Whether `p` may send broadcasts and set presence in a room.
pub fn can_publish_room(p: &Principal) -> bool {
    let _ = p;
    true
}

/// Whether `p` may read `topic`. `job_owner` is the owner of the job a `job:<id>`
/// topic names: `Some(owner)` if the job exists in p's tenant, `None` if it does not.
/// A customer may not subscribe to a job that does not (yet) exist.
pub fn can_read_topic(p: &Principal, topic: &Topic, job_owner: Option<Option<&str>>) -> bool {
    match (p.role, topic) {
        (_, Topic::Room(_)) => true,
        (_, Topic::User(sub)) => sub.as_str() == &*p.sub || matches!(p.role, Role::Admin | Role::Service),
        (Role::Customer, Topic::Jobs) => false,
        (Role::Customer, Topic::JobsOwner(sub)) => sub.as_str() == &*p.sub,
        (Role::Customer, Topic::Job(_)) => matches!(job_owner, Some(Some(o)) if o == &*p.sub),
        // A job's output streams follow the job's rules.
        (Role::Customer, Topic::Stream { .. }) => matches!(job_owner, Some(Some(o)) if o == &*p.sub),
        (_, Topic::Jobs | Topic::JobsOwner(_) | Topic::Job(_) | Topic::Stream { .. }) => true,
        // Whether the table has an owner column is the session's check (it knows the catalog).
        (Role::Customer, Topic::Table { owner: Some(sub), .. }) => sub.as_str() == &*p.sub,
        (_, Topic::Table { .. }) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn p(role: Role, sub: &str) -> Principal {
        Principal { sub: Arc::from(sub), tenant: Arc::from("t"), role, exp: None, key: None }
    }

    #[test]
    fn customers_read_only_what_they_own() {
        let c = p(Role::Customer, "alice");
        assert!(can_read_topic(&c, &Topic::JobsOwner("alice".into()), None));
        assert!(!can_read_topic(&c, &Topic::JobsOwner("bob".into()), None));
        assert!(!can_read_topic(&c, &Topic::Jobs, None));
        assert!(can_read_topic(&c, &Topic::Job("j".into()), Some(Some("alice"))));
        assert!(!can_read_topic(&c, &Topic::Job("j".into()), Some(Some("bob"))));
        assert!(!can_read_topic(&c, &Topic::Job("j".into()), Some(None)));
        assert!(!can_read_topic(&c, &Topic::Job("j".into()), None));
        assert!(can_read_topic(&c, &Topic::User("alice".into()), None));
        assert!(!can_read_topic(&c, &Topic::User("bob".into()), None));
    }

    #[test]
    fn staff_read_the_tenant_but_not_others_notifications() {
        let s = p(Role::Staff, "sam");
        assert!(can_read_topic(&s, &Topic::Jobs, None));
        assert!(can_read_topic(&s, &Topic::Job("j".into()), Some(Some("bob"))));
        assert!(!can_read_topic(&s, &Topic::User("bob".into()), None));
        assert!(can_read_topic(&p(Role::Admin, "a"), &Topic::User("bob".into()), None));
    }
}
