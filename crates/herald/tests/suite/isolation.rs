//! Guarantee 5 over HTTP: a customer reads only what it owns, staff and
//! admins their own tenant, and nothing crosses tenants — through every read
//! endpoint, with "not found" where existence must not leak.

use super::core_flow::{all_events, code};
use crate::harness::{create_job, token, Server};
use serde_json::json;
use std::collections::BTreeSet;

const TENANTS: [&str; 2] = ["t1", "t2"];
/// Jobs per tenant: (id, owner). The same ids in both tenants, owned differently.
const JOBS: [(&str, Option<&str>); 4] =
    [("j-alice", Some("alice")), ("j-bob", Some("bob")), ("j-none", None), ("shared", Some("alice"))];

/// The second tenant swaps who owns `shared`, so a leak across tenants shows.
fn owner_in(tenant: &str, id: &str, owner: Option<&'static str>) -> Option<&'static str> {
    if tenant == "t2" && id == "shared" {
        Some("bob")
    } else {
        owner
    }
}

/// Two tenants with jobs, tasks, artifacts and notifications for several people.
async fn populate(s: &Server) {
    for tenant in TENANTS {
        let worker = token("w", tenant, "worker");
        let service = token("svc", tenant, "service");
        for (id, owner) in JOBS {
            let owner = owner_in(tenant, id, owner);
            let mut body = json!({"id": id, "title": format!("{tenant}/{id}"), "status": "running"});
            if let Some(o) = owner {
                body["owner"] = json!(o);
            }
            create_job(s, &worker, body).await;
            let (st, _) = s
                .put(&worker, &format!("/v1/jobs/{id}/tasks/t-1"), json!({"name": format!("{tenant}/{id}/t-1")}))
                .await;
            assert_eq!(st, 201);
            let (st, _) = s
                .post(
                    &worker,
                    &format!("/v1/jobs/{id}/artifacts"),
                    json!({"kind": "label", "payload": {"of": format!("{tenant}/{id}")}}),
                )
                .await;
            assert_eq!(st, 201);
        }
        for (who, n) in [("alice", 2), ("bob", 1), ("sam", 1)] {
            for k in 0..n {
                let (st, _) = s
                    .post(
                        &service,
                        "/v1/notifications",
                        json!({"recipient": who, "title": format!("{tenant}:{who}:{k}")}),
                    )
                    .await;
                assert_eq!(st, 201);
            }
        }
    }
}

fn may_see_job(role: &str, sub: &str, owner: Option<&str>) -> bool {
    role != "customer" || owner == Some(sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_never_reads_another_customers_job_events_or_notifications() {
    let s = Server::start("isolation-customer", &[]).await;
    populate(&s).await;
    let alice = token("alice", "t1", "customer");
    let bob = token("bob", "t1", "customer");

    for path in [
        "/v1/jobs/j-bob",
        "/v1/jobs/j-bob/tasks",
        "/v1/jobs/j-bob/artifacts",
        "/v1/jobs/j-none",
        "/v1/jobs/j-none/tasks",
    ] {
        let (st, v) = s.get(&alice, path).await;
        assert_eq!((st, code(&v)), (404, "not_found"), "{path}: {v}");
        // Indistinguishable from a job that does not exist.
        let missing = path.replace("j-bob", "no-such-job").replace("j-none", "no-such-job");
        let (st2, v2) = s.get(&alice, &missing).await;
        assert_eq!(st2, 404);
        assert_eq!(
            v["error"]["message"].as_str().unwrap().replace("j-bob", "X").replace("j-none", "X"),
            v2["error"]["message"].as_str().unwrap().replace("no-such-job", "X")
        );
    }
    let (st, v) = s.get(&alice, "/v1/events?topic=job:j-bob").await;
    assert_eq!((st, code(&v)), (404, "not_found"), "{v}");
    let (st, v) = s.get(&alice, "/v1/events?topic=job:no-such-job").await;
    assert_eq!((st, code(&v)), (404, "not_found"), "{v}");
    for topic in ["jobs", "jobs:owner:bob", "user:bob"] {
        let (st, v) = s.get(&alice, &format!("/v1/events?topic={topic}")).await;
        assert_eq!((st, code(&v)), (403, "forbidden"), "{topic}: {v}");
        // Hidden inside a list of topics, too.
        let (st, _) = s.get(&alice, &format!("/v1/events?topic=user:alice,{topic}")).await;
        assert_eq!(st, 403, "{topic} among others");
    }
    let (st, v) = s.get(&alice, "/v1/events?topic=user:alice,job:j-alice&wait=0").await;
    assert_eq!(st, 200, "{v}");

    // Filters cannot widen what a customer sees.
    let (_, v) = s.get(&alice, "/v1/jobs?owner=bob").await;
    assert_eq!(v["jobs"], json!([]));
    let (_, v) = s.get(&alice, "/v1/jobs?limit=500").await;
    let ids: BTreeSet<&str> = v["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["j-alice", "shared"]));

    // Notifications: only one's own, and another's cannot be marked read.
    let (_, mine) = s.get(&alice, "/v1/notifications").await;
    assert_eq!(mine["notifications"].as_array().unwrap().len(), 2);
    let (_, bobs) = s.get(&bob, "/v1/notifications").await;
    let bob_note = bobs["notifications"][0]["id"].as_str().unwrap().to_string();
    let (st, v) = s.post(&alice, &format!("/v1/notifications/{bob_note}/read"), json!({})).await;
    assert_eq!((st, code(&v)), (404, "not_found"));
    let (_, bobs) = s.get(&bob, "/v1/notifications").await;
    assert_eq!(bobs["unread_count"], 1, "bob's notification is still unread");
    let (_, r) = s.post(&alice, "/v1/notifications/read-all", json!({})).await;
    assert_eq!(r["marked_read"], 2);
    let (_, bobs) = s.get(&bob, "/v1/notifications").await;
    assert_eq!(bobs["unread_count"], 1, "read-all is only one's own");

    // Staff read the whole tenant but not other people's notifications.
    let staff = token("sam", "t1", "staff");
    let (st, _) = s.get(&staff, "/v1/jobs/j-bob/tasks").await;
    assert_eq!(st, 200);
    let (st, v) = s.get(&staff, "/v1/events?topic=user:bob").await;
    assert_eq!((st, code(&v)), (403, "forbidden"));
    // A customer cannot write at all.
    let (st, v) = s.post(&alice, "/v1/jobs/j-alice/progress", json!({"stage": "mine"})).await;
    assert_eq!((st, code(&v)), (403, "forbidden"));
    let (st, v) = s.post(&alice, "/v1/notifications", json!({"recipient": "bob", "title": "hi"})).await;
    assert_eq!((st, code(&v)), (403, "forbidden"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_other() {
    let s = Server::start("isolation-tenants", &[]).await;
    populate(&s).await;
    let w3 = token("w", "t3", "worker");
    let admin3 = token("root", "t3", "admin");
    create_job(&s, &w3, json!({"id": "only-t3"})).await;

    let admin1 = token("root", "t1", "admin");
    for path in ["/v1/jobs/only-t3", "/v1/jobs/only-t3/tasks", "/v1/jobs/only-t3/artifacts"] {
        let (st, v) = s.get(&admin1, path).await;
        assert_eq!((st, code(&v)), (404, "not_found"), "{path}");
    }
    // Staff may watch a job id before it exists; another tenant's job looks exactly like none.
    let (st, other) = s.get(&admin1, "/v1/events?topic=job:only-t3").await;
    let (_, none) = s.get(&admin1, "/v1/events?topic=job:nowhere").await;
    assert_eq!((st, &other), (200, &none), "{other}");
    assert_eq!(other["events"], json!([]));
    // Writing to another tenant's job is as if it did not exist.
    let w1 = token("w", "t1", "worker");
    let (st, v) = s.post(&w1, "/v1/jobs/only-t3/progress", json!({"status": "running"})).await;
    assert_eq!((st, code(&v)), (404, "not_found"));
    let (st, _) = s.put(&w1, "/v1/jobs/only-t3/tasks/x", json!({})).await;
    assert_eq!(st, 404);
    let (st, _) = s.post(&w1, "/v1/jobs/only-t3/artifacts", json!({"kind": "k", "payload": 1})).await;
    assert_eq!(st, 404);
    let (_, job) = s.get(&admin3, "/v1/jobs/only-t3").await;
    assert_eq!((job["status"].as_str(), job["version"].as_u64()), (Some("queued"), Some(1)));

    // t3's whole log holds only t3's events; t1's tenant topic holds none of t3's.
    let t3 = all_events(&s, &admin3, "jobs").await;
    assert_eq!(t3.len(), 1);
    let t1 = all_events(&s, &admin1, "jobs").await;
    assert!(!t1.is_empty());
    assert!(t1.iter().all(|e| e["data"]["tenant"] == "t1"), "only t1 rows");
    let (_, list) = s.get(&admin3, "/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    // A notification sent in t1 to alice is not alice's in t2.
    let (_, n) = s.get(&token("alice", "t2", "customer"), "/v1/notifications").await;
    assert!(
        n["notifications"].as_array().unwrap().iter().all(|n| n["title"].as_str().unwrap().starts_with("t2:")),
        "{n}"
    );
    // Idempotency keys do not cross tenants either.
    let (st, a) = s.send(reqwest::Method::POST, &w1, "/v1/jobs", Some(json!({"kind": "k"})), Some("same-key")).await;
    assert_eq!(st, 201);
    let (st, b) = s.send(reqwest::Method::POST, &w3, "/v1/jobs", Some(json!({"kind": "k"})), Some("same-key")).await;
    assert_eq!(st, 201);
    assert_ne!(a["id"], b["id"]);
    assert_eq!(b["tenant"], "t3");
}

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_principals_read_exactly_what_the_rules_allow_through_every_endpoint() {
    let s = Server::start("isolation-property", &[]).await;
    populate(&s).await;

    // What an admin of each tenant sees is the reference for everyone allowed.
    let mut reference = std::collections::HashMap::new();
    for tenant in TENANTS {
        let admin = token("root", tenant, "admin");
        for (id, _) in JOBS {
            for suffix in ["", "/tasks", "/artifacts"] {
                let (st, v) = s.get(&admin, &format!("/v1/jobs/{id}{suffix}")).await;
                assert_eq!(st, 200);
                reference.insert((tenant, format!("{id}{suffix}")), v);
            }
            let (st, v) = s.get(&admin, &format!("/v1/events?topic=job:{id}&limit=1000")).await;
            assert_eq!(st, 200);
            assert!(v["events"].as_array().unwrap().len() >= 4, "{v}");
            reference.insert((tenant, format!("job:{id}")), v);
        }
    }

    let roles = ["admin", "staff", "customer", "worker", "service"];
    let tenants = ["t1", "t2", "t3"];
    let subs = ["alice", "bob", "sam", "mallory"];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut checked = 0;
    for _ in 0..80 {
        let (role, tenant, sub) = (*rng.pick(&roles), *rng.pick(&tenants), *rng.pick(&subs));
        let tok = token(sub, tenant, role);
        let who = format!("{role} {sub}@{tenant}");
        let tenant_has_jobs = TENANTS.contains(&tenant);

        let mut expected_ids = BTreeSet::new();
        for (id, owner) in JOBS {
            let owner = owner_in(tenant, id, owner);
            let visible = tenant_has_jobs && may_see_job(role, sub, owner);
            if visible {
                expected_ids.insert(id);
            }
            for suffix in ["", "/tasks", "/artifacts"] {
                let (st, v) = s.get(&tok, &format!("/v1/jobs/{id}{suffix}")).await;
                if visible {
                    assert_eq!(st, 200, "{who} GET {id}{suffix}: {v}");
                    assert_eq!(v, reference[&(tenant, format!("{id}{suffix}"))], "{who} sees the tenant's own row");
                } else {
                    assert_eq!((st, code(&v)), (404, "not_found"), "{who} GET {id}{suffix}: {v}");
                }
                checked += 1;
            }
            let (st, v) = s.get(&tok, &format!("/v1/events?topic=job:{id}&limit=1000")).await;
            if visible {
                assert_eq!(st, 200, "{who} events job:{id}: {v}");
                assert_eq!(v, reference[&(tenant, format!("job:{id}"))], "{who} events of job:{id}");
            } else if role != "customer" {
                // Staff may watch a job before it exists here; what they get must not
                // tell whether it exists in another tenant.
                assert_eq!(st, 200, "{who} events job:{id}: {v}");
                assert_eq!(v["events"], json!([]), "{who} events job:{id}");
            } else {
                assert_eq!((st, code(&v)), (404, "not_found"), "{who} events job:{id}: {v}");
            }
            checked += 1;
        }

        let (st, list) = s.get(&tok, "/v1/jobs?limit=500").await;
        assert_eq!(st, 200);
        let ids: BTreeSet<&str> = list["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
        assert_eq!(ids, expected_ids, "{who} lists");
        for j in list["jobs"].as_array().unwrap() {
            assert_eq!(j["tenant"], tenant);
            assert_eq!(j["title"].as_str().unwrap().split('/').next(), Some(tenant));
        }

        // Tenant-wide and per-owner topics.
        for topic in ["jobs".to_string(), "jobs:owner:alice".to_string(), "jobs:owner:bob".to_string()] {
            let allowed = role != "customer" || topic == format!("jobs:owner:{sub}");
            let (st, v) = s.get(&tok, &format!("/v1/events?topic={topic}&limit=1000")).await;
            if allowed {
                assert_eq!(st, 200, "{who} {topic}: {v}");
                for e in v["events"].as_array().unwrap() {
                    assert_eq!(e["data"]["tenant"], tenant, "{who} {topic}: {e}");
                    if let Some(o) = topic.strip_prefix("jobs:owner:") {
                        assert_eq!(e["data"]["owner"], o);
                    }
                }
                let n = v["events"].as_array().unwrap().len();
                // Each job: job.created, then job.updated when its first task set the total.
                let want = if !tenant_has_jobs {
                    0
                } else if let Some(o) = topic.strip_prefix("jobs:owner:") {
                    2 * JOBS.iter().filter(|(id, owner)| owner_in(tenant, id, *owner) == Some(o)).count()
                } else {
                    2 * JOBS.len()
                };
                assert_eq!(n, want, "{who} {topic}: two events per job");
            } else {
                assert_eq!((st, code(&v)), (403, "forbidden"), "{who} {topic}: {v}");
            }
            checked += 1;
        }

        // Notifications: one's own through the list; others' topics only for admin and service.
        let (st, n) = s.get(&tok, "/v1/notifications").await;
        assert_eq!(st, 200);
        let want = if tenant_has_jobs {
            match sub {
                "alice" => 2,
                "bob" | "sam" => 1,
                _ => 0,
            }
        } else {
            0
        };
        let notes = n["notifications"].as_array().unwrap();
        assert_eq!(notes.len(), want, "{who} notifications: {n}");
        for note in notes {
            assert_eq!(note["recipient"], sub);
            assert!(note["title"].as_str().unwrap().starts_with(&format!("{tenant}:{sub}:")), "{who}: {note}");
        }
        for other in ["alice", "bob"] {
            let allowed = other == sub || matches!(role, "admin" | "service");
            let (st, v) = s.get(&tok, &format!("/v1/events?topic=user:{other}&limit=1000")).await;
            if allowed {
                assert_eq!(st, 200, "{who} user:{other}: {v}");
                let want = if tenant_has_jobs {
                    if other == "alice" {
                        2
                    } else {
                        1
                    }
                } else {
                    0
                };
                let events = v["events"].as_array().unwrap();
                assert_eq!(events.len(), want, "{who} user:{other}");
                for e in events {
                    assert!(e["data"]["title"].as_str().unwrap().starts_with(&format!("{tenant}:{other}:")));
                }
            } else {
                assert_eq!((st, code(&v)), (403, "forbidden"), "{who} user:{other}: {v}");
            }
            checked += 1;
        }
    }
    assert!(checked > 1000, "{checked} checks");
}
