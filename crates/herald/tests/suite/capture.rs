//! PostgreSQL only: application tables declared with `[[capture]]` stream
//! their INSERT, UPDATE, DELETE and TRUNCATE, written by anyone (psql here),
//! to the subscribers the row policies allow — and nobody else.

use super::sse::Sse;
use crate::harness::{on_postgres, psql, temp_dir, token, Server};
use serde_json::Value;
use std::time::Duration;

/// Seed 001's table: tasks of agents, per organisation and user.
const APP_SQL: &str = "
CREATE TABLE public.agent_tasks (
    id bigserial PRIMARY KEY,
    org_id text NOT NULL,
    user_id text,
    agent_id int NOT NULL,
    title text NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE public.announcements (id int PRIMARY KEY, body text NOT NULL);";

const CONFIG: &str = r#"
default_tenant = "acme"

[[capture]]
table = "public.agent_tasks"
tenant_column = "org_id"
owner_column = "user_id"

[[capture]]
table = "public.announcements"
"#;

async fn app_server(name: &str) -> Server {
    Server::start_pg_app(name, APP_SQL, CONFIG, &[]).await
}

/// Long-poll everything of `topic` after `since` (after the log settled).
async fn polled(s: &Server, tok: &str, topic: &str, since: u64) -> Vec<Value> {
    crate::harness::settle(s).await;
    let (st, page) = s.get(tok, &format!("/v1/events?topic={topic}&since={since}&limit=1000")).await;
    assert_eq!(st, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

fn summary(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["data"]["title"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_changes_of_a_captured_table_reach_exactly_who_may_read_them() {
    if !on_postgres() {
        return;
    }
    let s = app_server("capture").await;
    let staff = token("sam", "acme", "staff");
    let alice = token("alice", "acme", "customer");
    let bob = token("bob", "acme", "customer");
    let globex = token("gina", "globex", "staff");
    let topic = "table:public.agent_tasks";

    let mut ws_staff = s.ws(&staff).await;
    ws_staff.sub(topic, None).await;
    let mut ws_alice = s.ws(&alice).await;
    ws_alice.sub(&format!("{topic}:owner:alice"), None).await;
    let mut ws_bob = s.ws(&bob).await;
    ws_bob.sub(&format!("{topic}:owner:bob"), None).await;
    let mut ws_globex = s.ws(&globex).await;
    ws_globex.sub(topic, None).await;
    // Customers read their own rows only.
    for (tok, t, code) in [
        (&alice, topic.to_string(), "forbidden"),
        (&alice, format!("{topic}:owner:bob"), "forbidden"),
        (&staff, "table:public.nothing".to_string(), "not_found"),
        (&staff, "table:public.announcements:owner:x".to_string(), "invalid_topic"),
    ] {
        let mut ws = s.ws(tok).await;
        let r = ws.request(serde_json::json!({ "op": "sub", "topic": t })).await;
        assert_eq!(r["code"], code, "{t}: {r}");
    }
    let mut sse_alice = Sse::open(&s, &format!("topic={topic}:owner:alice&token={alice}"), None).await;

    psql(
        s.pg_db(),
        "INSERT INTO public.agent_tasks (org_id, user_id, agent_id, title) VALUES ('acme', 'alice', 7, 'a1');
         INSERT INTO public.agent_tasks (org_id, user_id, agent_id, title) VALUES ('acme', 'bob', 8, 'b1');
         INSERT INTO public.agent_tasks (org_id, user_id, agent_id, title) VALUES ('globex', 'alice', 9, 'g1');",
    );
    psql(s.pg_db(), "UPDATE public.agent_tasks SET status = 'running', title = 'a2' WHERE title = 'a1'");
    psql(s.pg_db(), "DELETE FROM public.agent_tasks WHERE title = 'b1'");

    let got = ws_staff.events(4, Duration::from_secs(10)).await;
    assert_eq!(
        summary(&got),
        [("row.inserted", "a1"), ("row.inserted", "b1"), ("row.updated", "a2"), ("row.deleted", "b1")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // An UPDATE carries the old row, a DELETE the deleted one; values keep their types.
    assert_eq!(got[2]["old"]["title"], "a1", "{}", got[2]);
    assert_eq!(got[2]["old"]["status"], "pending");
    assert_eq!(got[2]["data"]["agent_id"], 7);
    assert_eq!(got[2]["data"]["details"], serde_json::json!({}));
    assert_eq!(got[3]["data"]["user_id"], "bob");
    let positions: Vec<u64> = got.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in commit order: {positions:?}");

    let got = ws_alice.events(2, Duration::from_secs(10)).await;
    assert_eq!(summary(&got), [("row.inserted", "a1"), ("row.updated", "a2")].map(|(a, b)| (a.into(), b.into())));
    let got = ws_bob.events(2, Duration::from_secs(10)).await;
    assert_eq!(summary(&got), [("row.inserted", "b1"), ("row.deleted", "b1")].map(|(a, b)| (a.into(), b.into())));
    let got = ws_globex.events(1, Duration::from_secs(10)).await;
    assert_eq!(summary(&got), [("row.inserted".to_string(), "g1".to_string())]);
    // Nobody got anything more.
    for ws in [&mut ws_staff, &mut ws_alice, &mut ws_bob, &mut ws_globex] {
        assert!(ws.events(1, Duration::from_millis(300)).await.is_empty());
    }
    // SSE serves the same, with positions as ids.
    let first = sse_alice.next(Duration::from_secs(10)).await.expect("an SSE event");
    assert_eq!((first.event.as_str(), &first.data["data"]["title"]), ("row.inserted", &Value::from("a1")));
    let second = sse_alice.next(Duration::from_secs(10)).await.expect("an SSE event");
    assert_eq!(second.id, second.data["position"].as_u64());

    // The log serves them too, with resume.
    let all = polled(&s, &staff, topic, 0).await;
    assert_eq!(all.len(), 4);
    let after = polled(&s, &staff, topic, all[1]["position"].as_u64().unwrap()).await;
    assert_eq!(summary(&after), summary(&all[2..]));
    assert_eq!(polled(&s, &alice, &format!("{topic}:owner:alice"), 0).await.len(), 2);
    let (st, _) = s.get(&alice, &format!("/v1/events?topic={topic}")).await;
    assert_eq!(st, 403);

    // A table without tenant column belongs to the default tenant; TRUNCATE is an event.
    let mut ws_ann = s.ws(&alice).await;
    ws_ann.sub("table:public.announcements", None).await;
    psql(s.pg_db(), "INSERT INTO public.announcements VALUES (1, 'hello')");
    psql(s.pg_db(), "TRUNCATE public.announcements");
    let got = ws_ann.events(2, Duration::from_secs(10)).await;
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["row.inserted", "table.truncated"]);
    assert!(ws_globex.events(1, Duration::from_millis(300)).await.is_empty());
    // TRUNCATE of a table with tenants reaches each tenant that had rows there.
    psql(s.pg_db(), "TRUNCATE public.agent_tasks");
    let got = ws_staff.events(1, Duration::from_secs(10)).await;
    assert_eq!(got[0]["type"], "table.truncated");
    let got = ws_globex.events(1, Duration::from_secs(10)).await;
    assert_eq!(got[0]["type"], "table.truncated");
}

/// Starts herald with `config` over a database made by `setup` and expects it to refuse.
async fn refused(setup: &str, config: &str) -> String {
    let db = crate::harness::create_pg_database("capture-refused");
    psql(&db, setup);
    let dir = temp_dir("capture-refused");
    std::fs::write(dir.join("herald.toml"), config).unwrap();
    let args = [
        "--config".to_string(),
        dir.join("herald.toml").display().to_string(),
        "--db".to_string(),
        format!("{}/{db}", crate::harness::PG_BASE),
    ];
    let (code, err) = crate::harness::refused_at_startup(&dir, &args).await;
    crate::harness::drop_pg_database(&db);
    assert_eq!(code, Some(2), "{err}");
    err.lines().last().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_entry_naming_a_missing_table_or_column_fails_the_start_naming_it() {
    if !on_postgres() {
        return;
    }
    let line = refused("SELECT 1", "[[capture]]\ntable = \"public.ghost\"\ndefault_tenant = \"a\"\n").await;
    assert!(line.contains("public.ghost") && line.contains("does not exist"), "{line}");
    let line = refused(
        "CREATE TABLE public.t (id int, org text)",
        "[[capture]]\ntable = \"public.t\"\ntenant_column = \"org\"\nowner_column = \"user_id\"\n",
    )
    .await;
    assert!(line.contains("owner_column") && line.contains("user_id"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_postgres_changes_on_a_captured_table_follow_row_policies_and_filters() {
    use super::phoenix::{anon_key, join_with, Frame, Phx};
    use serde_json::json;
    if !on_postgres() {
        return;
    }
    let s = app_server("capture-phx").await;
    let alice = token("alice", "acme", "authenticated");
    let staff = token("sam", "acme", "staff");
    let changes = |frames: Vec<Frame>| -> Vec<(String, String, Value)> {
        frames
            .iter()
            .filter(|f| f.event() == "postgres_changes")
            .map(|f| {
                let d = &f.payload()["data"];
                let title = d["record"]["title"].as_str().or(d["old_record"]["title"].as_str()).unwrap_or("");
                (d["type"].as_str().unwrap().to_string(), title.to_string(), d["old_record"].clone())
            })
            .collect()
    };
    // A filter naming a column the table lacks is refused at join, naming it.
    let mut c = Phx::connect(&s, &anon_key(), true).await;
    let bad = json!([{"event": "*", "schema": "public", "table": "agent_tasks", "filter": "agent=eq.7"}]);
    let (_, reply) = c.join("realtime:bad", join_with(bad, &staff)).await;
    let reason = reply.payload()["response"]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("\"agent\"") && reason.contains("public.agent_tasks"), "{reply:?}");
    // Herald's own notifications have `recipient`, not `user_id`.
    let bad = json!([{"event": "*", "schema": "public", "table": "notifications", "filter": "user_id=eq.alice"}]);
    let (_, reply) = c.join("realtime:bad2", join_with(bad, &staff)).await;
    assert!(reply.payload()["response"]["reason"].as_str().unwrap_or_default().contains("user_id"), "{reply:?}");

    // Alice (a customer) asks for every row of agent 7; she gets her own only.
    let mut a = Phx::connect(&s, &anon_key(), true).await;
    let mine = json!([{"event": "*", "schema": "public", "table": "agent_tasks", "filter": "agent_id=eq.7"}]);
    let (_, reply) = a.join("realtime:mine", join_with(mine, &alice)).await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    // Staff asks for UPDATEs of agent 7 only.
    let mut st = Phx::connect(&s, &anon_key(), false).await;
    let updates = json!([{"event": "UPDATE", "schema": "public", "table": "agent_tasks", "filter": "agent_id=eq.7"}]);
    let (_, reply) = st.join("realtime:ops", join_with(updates, &staff)).await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");

    psql(
        s.pg_db(),
        "INSERT INTO public.agent_tasks (org_id, user_id, agent_id, title) VALUES ('acme', 'alice', 7, 'a1');
         INSERT INTO public.agent_tasks (org_id, user_id, agent_id, title) VALUES ('acme', 'bob', 7, 'b1');
         INSERT INTO public.agent_tasks (org_id, user_id, agent_id, title) VALUES ('acme', 'alice', 8, 'a8');
         UPDATE public.agent_tasks SET title = 'a2' WHERE title = 'a1';
         UPDATE public.agent_tasks SET title = 'b2' WHERE title = 'b1';
         DELETE FROM public.agent_tasks WHERE title = 'a2';",
    );
    crate::harness::settle(&s).await;
    let got = changes(a.drain(Duration::from_millis(800)).await);
    let kinds: Vec<(&str, &str)> = got.iter().map(|(k, t, _)| (k.as_str(), t.as_str())).collect();
    assert_eq!(kinds, [("INSERT", "a1"), ("UPDATE", "a2"), ("DELETE", "a2")]);
    assert_eq!(got[1].2["title"], "a1", "UPDATE carries the old row: {:?}", got[1]);
    let got = changes(st.drain(Duration::from_millis(300)).await);
    let kinds: Vec<(&str, &str)> = got.iter().map(|(k, t, _)| (k.as_str(), t.as_str())).collect();
    assert_eq!(kinds, [("UPDATE", "a2"), ("UPDATE", "b2")]);

    // Staff's equality filter is routed through the hub's index; a socket that
    // drops and rejoins gets what it missed from the log, filtered the same way.
    drop(st);
    tokio::time::sleep(Duration::from_millis(200)).await;
    psql(
        s.pg_db(),
        "UPDATE public.agent_tasks SET title = 'b3' WHERE title = 'b2';
         UPDATE public.agent_tasks SET title = 'a9' WHERE title = 'a8';",
    );
    crate::harness::settle(&s).await;
    let mut st = Phx::connect(&s, &anon_key(), false).await;
    let updates = json!([{"event": "UPDATE", "schema": "public", "table": "agent_tasks", "filter": "agent_id=eq.7"}]);
    let (_, reply) = st.join("realtime:ops", join_with(updates, &staff)).await;
    assert_eq!(reply.payload()["status"], "ok", "{reply:?}");
    psql(s.pg_db(), "UPDATE public.agent_tasks SET status = 'done' WHERE title = 'b3'");
    crate::harness::settle(&s).await;
    let got = changes(st.drain(Duration::from_millis(500)).await);
    let kinds: Vec<(&str, &str)> = got.iter().map(|(k, t, _)| (k.as_str(), t.as_str())).collect();
    assert_eq!(kinds, [("UPDATE", "b3"), ("UPDATE", "b3")], "the missed change, then the live one, agent 7 only");
}
