//! JSON request bodies, through `parse_json` as the `JsonBody` extractor calls
//! it (depth check, then serde with the path of a bad field, then nothing
//! after the value), into every body struct of the API; then what the handlers
//! and rules do with them: a progress report applied to jobs in each state, a
//! task upsert to tasks, a job's tasks and metadata checked as at creation.

#![no_main]

use herald::model::job::{json_size, ProgressReport, ERROR_LOG_LIMIT, METADATA_LIMIT};
use herald::model::requests::{CreateJob, CreateNotification, NewArtifact};
use herald::model::task::TaskUpsert;
use herald::model::{Job, JobStatus, Task, TaskStatus};
use herald::session::rooms::check_event_name;
use herald::transport::http::broadcast::BroadcastRequest;
use herald::transport::http::extract::{parse_json, MAX_JSON_DEPTH};
use herald::transport::phoenix::rest::SupabaseBroadcast;
use herald_fuzz::{assert_json_eq, check_topic};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const NOW: i64 = 1_761_215_400_123;

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn job(status: JobStatus) -> Job {
    Job {
        id: "j1".into(),
        tenant: "acme".into(),
        owner: Some("alice".into()),
        kind: Some("scan".into()),
        title: None,
        status,
        total: Some(20),
        succeeded: 3,
        failed: 1,
        progress: 20.0,
        stage: None,
        current_item: None,
        metadata: json!({"a": {"b": 1}, "list": [1, 2, 3]}),
        errors: vec![],
        created_at: NOW - 10_000,
        started_at: (status != JobStatus::Queued).then_some(NOW - 5_000),
        updated_at: NOW - 1_000,
        finished_at: status.is_terminal().then_some(NOW - 1_000),
        version: 7,
        counts_reported: false,
        progress_reported: false,
    }
}

fn check_report(r: &ProgressReport) {
    // What the server stores it as (the idempotency record) reads back the same.
    let text = serde_json::to_vec(r).unwrap();
    let back: ProgressReport = parse_json(&text).unwrap_or_else(|e| panic!("report does not read back: {}", e.message));
    assert_json_eq("report", &serde_json::to_value(r).unwrap(), &serde_json::to_value(&back).unwrap());

    use JobStatus::*;
    for status in [Queued, Running, Stalled, Completed, Failed, Cancelled] {
        let before = job(status);
        let mut after = before.clone();
        match after.apply_report(r, NOW) {
            Err(_) => assert_eq!(after, before, "a refused report changed the job"),
            Ok(()) => {
                assert_eq!(after.version, before.version + 1);
                assert!((0.0..=100.0).contains(&after.progress), "progress {}", after.progress);
                assert!(after.errors.len() <= ERROR_LOG_LIMIT);
                let size = json_size(&after.metadata);
                assert!(size <= METADATA_LIMIT || size <= json_size(&before.metadata));
                // The job document is stored and read back on the next change.
                let doc = serde_json::to_string(&after).unwrap();
                let read: Job = serde_json::from_str(&doc).unwrap_or_else(|e| panic!("job does not read back: {e}"));
                assert_json_eq("job", &serde_json::to_value(&after).unwrap(), &serde_json::to_value(&read).unwrap());
            }
        }
    }
}

fn check_upsert(u: &TaskUpsert) {
    let text = serde_json::to_vec(u).unwrap();
    let back: TaskUpsert = parse_json(&text).unwrap_or_else(|e| panic!("upsert does not read back: {}", e.message));
    assert_eq!(&back, u);
    for status in [TaskStatus::Pending, TaskStatus::Running, TaskStatus::Succeeded] {
        let mut t = Task::new("t1".into(), "j1".into(), NOW - 1_000);
        t.status = status;
        let before = t.clone();
        let changed = t.apply(u, NOW);
        assert_eq!(changed, t != before);
        let doc = serde_json::to_string(&t).unwrap();
        let read: Task = serde_json::from_str(&doc).unwrap_or_else(|e| panic!("task does not read back: {e}"));
        assert_eq!(read, t);
    }
}

fn check_create(c: &CreateJob) {
    use herald::model::ids::validate_id;
    if let Some(id) = &c.id {
        let _ = validate_id(id);
    }
    if let Some(o) = &c.owner {
        let _ = validate_id(o);
    }
    if let Some(m) = &c.metadata {
        let _ = json_size(m);
    }
    for (i, u) in c.tasks.iter().flatten().enumerate() {
        let id = u.id.clone().unwrap_or_else(|| (i + 1).to_string());
        let _ = validate_id(&id);
        let mut t = Task::new(id, "j1".into(), NOW);
        t.apply(u, NOW);
    }
}

fuzz_target!(|data: &[u8]| {
    // The generic document: accepted exactly when serde_json reads it and it
    // nests no deeper than the limit.
    let plain = serde_json::from_slice::<Value>(data);
    match parse_json::<Value>(data) {
        Ok(v) => {
            assert!(depth(&v) <= MAX_JSON_DEPTH, "accepted a document {} levels deep", depth(&v));
            assert_eq!(plain.as_ref().ok(), Some(&v));
        }
        Err(e) => {
            // `invalid_field` for what the grammar allows but a value cannot hold (`1e400`).
            assert!(matches!(e.code, "invalid_json" | "json_too_deep" | "invalid_field"), "{} {}", e.code, e.message);
            if let Ok(v) = &plain {
                assert!(depth(v) > MAX_JSON_DEPTH, "refused a document {} levels deep: {}", depth(v), e.message);
            }
        }
    }
    if let Ok(r) = parse_json::<ProgressReport>(data) {
        check_report(&r);
    }
    if let Ok(u) = parse_json::<TaskUpsert>(data) {
        check_upsert(&u);
    }
    if let Ok(c) = parse_json::<CreateJob>(data) {
        check_create(&c);
    }
    let _ = parse_json::<NewArtifact>(data);
    let _ = parse_json::<CreateNotification>(data);
    if let Ok(b) = parse_json::<BroadcastRequest>(data) {
        let _ = check_event_name(&b.event);
        if let Some(t) = &b.topic {
            check_topic(t);
        }
    }
    if let Ok(s) = parse_json::<SupabaseBroadcast>(data) {
        for m in &s.messages {
            let _ = check_event_name(&m.event);
        }
    }
});
