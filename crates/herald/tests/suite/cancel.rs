//! Issue 15, item 6: `POST /v1/jobs/{id}/cancel`. Staff (and admins, workers,
//! services) of the job's tenant cancel a queued, running or stalled job
//! through the normal write path: the answer, the stored job, the event log
//! and a live subscriber all say `cancelled`; the worker's next write is
//! refused. Refused cancellations (customer, other tenant, finished job,
//! oversize reason) write nothing.

use super::core_flow::{all_events, code, head_of, types};
use crate::harness::{create_job, token, Server};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

fn cancel_path(id: &str) -> String {
    format!("/v1/jobs/{id}/cancel")
}

/// The newest entry of a job's error log.
fn last_error(job: &Value) -> &str {
    job["errors"].as_array().and_then(|e| e.last()).and_then(|e| e["message"].as_str()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_cancels_a_running_job_and_everyone_watching_sees_it() {
    let s = Server::start("cancel-flow", &[]).await;
    let worker = token("worker-1", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    let alice = token("alice", "acme", "customer");
    let id = create_job(
        &s,
        &worker,
        json!({"id": "crawl-1", "owner": "alice", "title": "Crawl", "status": "running",
               "tasks": [{"id": "a", "status": "succeeded"}, {"id": "b", "status": "running"}, {"id": "c"}]}),
    )
    .await;

    // The owner watches the job live.
    let mut ws = s.ws(&alice).await;
    ws.sub(&format!("job:{id}"), None).await;

    let (st, job) = s.post(&staff, &cancel_path(&id), json!({"reason": "customer asked to stop"})).await;
    assert_eq!(st, 200, "{job}");
    assert_eq!(job["id"], "crawl-1");
    assert_eq!(job["status"], "cancelled");
    assert!(!job["finished_at"].is_null(), "a cancelled job is finished: {job}");
    assert_eq!(last_error(&job), "cancelled by sam: customer asked to stop");

    // Stored so: the job reads back cancelled.
    let (st, read) = s.get(&staff, &format!("/v1/jobs/{id}")).await;
    assert_eq!(st, 200);
    assert_eq!(read["status"], "cancelled");
    assert_eq!(read["version"], job["version"]);

    // The log holds the change as the job's newest event, with the job as its data.
    let log = all_events(&s, &staff, &format!("job:{id}")).await;
    let last = log.last().expect("events");
    assert_eq!(last["type"], "job.cancelled", "{:?}", types(&log));
    assert_eq!(last["data"]["status"], "cancelled");
    assert_eq!(last["data"]["version"], job["version"]);
    assert_eq!(types(&log).iter().filter(|t| **t == "job.cancelled").count(), 1);

    // And the subscriber saw it live.
    let seen = ws.events(1, Duration::from_secs(10)).await;
    assert_eq!(seen.len(), 1, "the owner's subscription got the cancellation");
    assert_eq!(seen[0]["type"], "job.cancelled", "{seen:?}");
    assert_eq!(seen[0]["data"]["status"], "cancelled");
    assert_eq!(seen[0]["position"], last["position"]);

    // The worker learns on its next write: the job is finished.
    let (st, body) = s.post(&worker, &format!("/v1/jobs/{id}/progress"), json!({"stage": "still going"})).await;
    assert_eq!((st, code(&body)), (409, "illegal_transition"), "{body}");
    let (st, body) = s.put(&worker, &format!("/v1/jobs/{id}/tasks/c"), json!({"status": "running"})).await;
    assert_eq!((st, code(&body)), (409, "job_finished"), "{body}");

    // Cancelling again is an illegal transition, like any move out of a finished state.
    let (st, body) = s.post(&staff, &cancel_path(&id), json!({})).await;
    assert_eq!((st, code(&body)), (409, "illegal_transition"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_cancellations_write_nothing() {
    let s = Server::start("cancel-refused", &[]).await;
    let worker = token("worker-1", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    let alice = token("alice", "acme", "customer");
    let id = create_job(&s, &worker, json!({"id": "keep-1", "owner": "alice", "status": "running"})).await;
    let done = create_job(&s, &worker, json!({"id": "done-1", "owner": "alice", "status": "running"})).await;
    let (st, _) = s.post(&worker, &format!("/v1/jobs/{done}/progress"), json!({"status": "completed"})).await;
    assert_eq!(st, 200);
    let (_, before) = s.get(&staff, &format!("/v1/jobs/{id}")).await;
    let (_, done_before) = s.get(&staff, &format!("/v1/jobs/{done}")).await;
    let head = head_of(&s, &staff, &format!("job:{id}")).await;
    let done_head = head_of(&s, &staff, &format!("job:{done}")).await;

    // A customer may not cancel, not even her own job.
    let (st, body) = s.post(&alice, &cancel_path(&id), json!({"reason": "stop"})).await;
    assert_eq!((st, code(&body)), (403, "forbidden"), "{body}");
    let (st, body) = s.send(Method::POST, &alice, &cancel_path(&id), None, None).await;
    assert_eq!((st, code(&body)), (403, "forbidden"), "{body}");

    // Another tenant's staff does not even learn that the job exists.
    let (st, body) = s.post(&token("sam", "globex", "staff"), &cancel_path(&id), json!({})).await;
    assert_eq!((st, code(&body)), (404, "not_found"), "{body}");
    let (st, body) = s.post(&staff, &cancel_path("no-such-job"), json!({})).await;
    assert_eq!((st, code(&body)), (404, "not_found"), "{body}");

    // A finished job stays as it is.
    let (st, body) = s.post(&staff, &cancel_path(&done), json!({"reason": "too late"})).await;
    assert_eq!((st, code(&body)), (409, "illegal_transition"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("completed"), "{body}");

    // A reason over 1024 bytes, or a field that is not there, is refused before anything is written.
    let (st, body) = s.post(&staff, &cancel_path(&id), json!({"reason": "x".repeat(1025)})).await;
    assert_eq!((st, code(&body)), (422, "invalid_field"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").starts_with("reason"), "{body}");
    let (st, body) = s.post(&staff, &cancel_path(&id), json!({"why": "no"})).await;
    assert_eq!((st, code(&body)), (422, "invalid_field"), "{body}");
    let (st, body) = s.post(&staff, &cancel_path(&id), json!({"reason": 7})).await;
    assert_eq!((st, code(&body)), (422, "invalid_field"), "{body}");
    let (st, body) = s.post(&staff, &cancel_path("bad id!"), json!({})).await;
    assert_eq!((st, code(&body)), (400, "invalid_id"), "{body}");

    // Nothing changed: same version, same status, no new event.
    let (_, after) = s.get(&staff, &format!("/v1/jobs/{id}")).await;
    assert_eq!(after, before, "a refused cancellation changed the job");
    assert_eq!(after["status"], "running");
    let (_, done_after) = s.get(&staff, &format!("/v1/jobs/{done}")).await;
    assert_eq!(done_after, done_before);
    assert_eq!(head_of(&s, &staff, &format!("job:{id}")).await, head, "a refused cancellation logged an event");
    assert_eq!(head_of(&s, &staff, &format!("job:{done}")).await, done_head);

    // A reason of exactly 1024 bytes is fine.
    let (st, job) = s.post(&staff, &cancel_path(&id), json!({"reason": "y".repeat(1024)})).await;
    assert_eq!(st, 200, "{job}");
    assert_eq!(job["status"], "cancelled");
    assert!(last_error(&job).ends_with(&"y".repeat(1024)), "{}", last_error(&job));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_cancel_what_and_retries_are_safe() {
    let s = Server::start("cancel-roles", &[]).await;
    let worker = token("worker-1", "acme", "worker");
    let staff = token("sam", "acme", "staff");

    // A queued job, with no body at all: cancelled, the log says by whom.
    let queued = create_job(&s, &worker, json!({"id": "q-1"})).await;
    let (st, job) = s.send(Method::POST, &staff, &cancel_path(&queued), None, None).await;
    assert_eq!(st, 200, "{job}");
    assert_eq!(job["status"], "cancelled");
    assert_eq!(last_error(&job), "cancelled by sam");

    // A JSON `null` is no reason either; a body that is not JSON is refused and writes nothing.
    let nulled = create_job(&s, &worker, json!({"id": "n-1", "status": "running"})).await;
    let raw = s.http.post(s.url(&cancel_path(&nulled))).bearer_auth(&staff);
    let resp = raw.header("Content-Type", "text/plain").body("stop please").send().await.expect("request");
    assert_eq!(resp.status().as_u16(), 415);
    let (st, job) = s.send(Method::POST, &staff, &cancel_path(&nulled), Some(Value::Null), None).await;
    assert_eq!((st, job["status"].as_str()), (200, Some("cancelled")), "{job}");
    assert_eq!(last_error(&job), "cancelled by sam");

    // A stalled job (a running one whose worker went quiet) can be cancelled too.
    let stalled = create_job(&s, &worker, json!({"id": "s-1", "status": "running"})).await;
    let (st, _) = s.post(&worker, &format!("/v1/jobs/{stalled}/progress"), json!({"status": "stalled"})).await;
    assert_eq!(st, 200);
    let (st, job) = s.post(&staff, &cancel_path(&stalled), json!({})).await;
    assert_eq!((st, job["status"].as_str()), (200, Some("cancelled")), "{job}");

    // Admins, workers and services of the tenant may cancel as well.
    for (i, role) in ["admin", "worker", "service"].into_iter().enumerate() {
        let id = create_job(&s, &worker, json!({"id": format!("r-{i}"), "status": "running"})).await;
        let (st, job) = s.post(&token("someone", "acme", role), &cancel_path(&id), json!({"reason": role})).await;
        assert_eq!((st, job["status"].as_str()), (200, Some("cancelled")), "{role}: {job}");
    }

    // An Idempotency-Key makes a retry answer the first cancellation instead of 409.
    let id = create_job(&s, &worker, json!({"id": "idem-1", "status": "running"})).await;
    let body = Some(json!({"reason": "dup"}));
    let (st, first) = s.send(Method::POST, &staff, &cancel_path(&id), body.clone(), Some("cancel-1")).await;
    assert_eq!(st, 200, "{first}");
    let (st, again) = s.send(Method::POST, &staff, &cancel_path(&id), body, Some("cancel-1")).await;
    assert_eq!((st, &again), (200, &first));
    let log = all_events(&s, &staff, &format!("job:{id}")).await;
    assert_eq!(types(&log).iter().filter(|t| **t == "job.cancelled").count(), 1, "{:?}", types(&log));
}
