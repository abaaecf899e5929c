//! `GET /rest/v1/<table>`: the PostgREST reads supabase-js sends for a polling
//! fallback. Rows are exactly those the caller's live topics would carry,
//! whatever filter it sends; what Herald cannot answer is an error in
//! PostgREST's shape, never an empty list. Captured tables need PostgreSQL;
//! Herald's own tables are served on both stores.

use crate::harness::{create_job, on_postgres, psql, token, Server};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Answers of `/rest/v1`: status, body, `Content-Range`.
struct Rest<'a> {
    s: &'a Server,
    /// `apikey` header (supabase-js sends the anon key).
    apikey: Option<String>,
    /// `Authorization: Bearer`.
    bearer: Option<String>,
    profile: Option<&'a str>,
    accept: Option<&'a str>,
}

impl<'a> Rest<'a> {
    /// As supabase-js signed in: the anon key as `apikey`, the user's JWT as bearer.
    fn user(s: &'a Server, tok: &str) -> Rest<'a> {
        Rest { s, apikey: Some(anon_key()), bearer: Some(tok.to_string()), profile: None, accept: None }
    }

    fn profile(mut self, schema: &'a str) -> Rest<'a> {
        self.profile = Some(schema);
        self
    }

    async fn get(&self, path_and_query: &str) -> (u16, Value, Option<String>) {
        let mut req = self.s.http.get(self.s.url(&format!("/rest/v1/{path_and_query}")));
        if let Some(k) = &self.apikey {
            req = req.header("apikey", k);
        }
        if let Some(b) = &self.bearer {
            req = req.bearer_auth(b);
        }
        if let Some(p) = self.profile {
            req = req.header("Accept-Profile", p);
        }
        if let Some(a) = self.accept {
            req = req.header("Accept", a);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let range = resp.headers().get("content-range").map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), range)
    }

    /// The rows of a query that must succeed.
    async fn rows(&self, path_and_query: &str) -> Vec<Value> {
        let (st, body, _) = self.get(path_and_query).await;
        assert_eq!(st, 200, "{path_and_query}: {body}");
        body.as_array().unwrap_or_else(|| panic!("{path_and_query}: not a list: {body}")).clone()
    }

    /// A query that must fail: its status and PostgREST error body.
    async fn refused(&self, path_and_query: &str) -> (u16, Value) {
        let (st, body, _) = self.get(path_and_query).await;
        assert_ne!(st, 200, "{path_and_query} was answered: {body}");
        for field in ["code", "message", "details", "hint"] {
            assert!(body.get(field).is_some(), "{path_and_query}: PostgREST's error has {field}: {body}");
        }
        (st, body)
    }
}

/// Supabase's public anon key for tenant acme.
fn anon_key() -> String {
    token("anon", "acme", "anon")
}

fn field(rows: &[Value], name: &str) -> Vec<String> {
    rows.iter()
        .map(|r| match &r[name] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        })
        .collect()
}

fn set(rows: &[Value], name: &str) -> BTreeSet<String> {
    field(rows, name).into_iter().collect()
}

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
CREATE TABLE public.announcements (id int PRIMARY KEY, body text NOT NULL);
CREATE TABLE public.notifications (id int PRIMARY KEY, org_id text NOT NULL, user_id text NOT NULL, body text);
CREATE SCHEMA monitoring;
CREATE TABLE monitoring.signal_alerts (id int PRIMARY KEY, org_id text NOT NULL, level text NOT NULL);
INSERT INTO public.agent_tasks (org_id, user_id, agent_id, title, status) VALUES
    ('acme', 'alice', 7, 'a1', 'pending'),
    ('acme', 'alice', 8, 'a2', 'running'),
    ('acme', 'alice', 9, 'a3', 'running'),
    ('acme', 'bob', 7, 'b1', 'running'),
    ('acme', NULL, 6, 'n1', 'running'),
    ('globex', 'alice', 7, 'g1', 'running');
INSERT INTO public.announcements VALUES (1, 'hello'), (2, 'world');
INSERT INTO public.notifications VALUES
    (1, 'acme', 'alice', 'app note for alice'), (2, 'acme', 'bob', 'app note for bob');
INSERT INTO monitoring.signal_alerts VALUES (1, 'acme', 'high'), (2, 'globex', 'low');";

const CONFIG: &str = r#"
default_tenant = "acme"

[[capture]]
table = "public.agent_tasks"
tenant_column = "org_id"
owner_column = "user_id"

[[capture]]
table = "public.announcements"

[[capture]]
table = "public.notifications"
tenant_column = "org_id"
owner_column = "user_id"

[[capture]]
table = "monitoring.signal_alerts"
tenant_column = "org_id"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_v1_reads_of_a_captured_table_see_only_what_the_row_policies_allow() {
    if !on_postgres() {
        return;
    }
    let s = Server::start_pg_app("rest-capture", APP_SQL, CONFIG, &[]).await;
    let alice = Rest::user(&s, &token("alice", "acme", "customer"));
    let supa_alice = Rest::user(&s, &token("alice", "acme", "authenticated"));
    let staff = Rest::user(&s, &token("sam", "acme", "staff"));
    let globex = Rest { apikey: None, ..Rest::user(&s, &token("gina", "globex", "staff")) };
    let initech = Rest { apikey: None, ..Rest::user(&s, &token("ian", "initech", "admin")) };

    // A customer sees its own rows, whatever it filters on.
    let all = ["a1", "a2", "a3"].map(String::from).into_iter().collect::<BTreeSet<_>>();
    assert_eq!(set(&alice.rows("agent_tasks?select=*").await, "title"), all);
    assert_eq!(set(&supa_alice.rows("agent_tasks?select=*").await, "title"), all, "authenticated is a customer");
    for spy in [
        "agent_tasks?select=*&user_id=eq.bob",
        "agent_tasks?select=*&org_id=eq.globex",
        "agent_tasks?select=*&user_id=is.null",
        "agent_tasks?select=*&title=in.(b1,g1,n1)",
        "agent_tasks?select=*&user_id=neq.alice",
    ] {
        assert_eq!(alice.rows(spy).await, Vec::<Value>::new(), "{spy}");
    }
    // Staff see the tenant's rows, other tenants nothing of acme's.
    let rows = staff.rows("agent_tasks?select=*&order=id.asc").await;
    assert_eq!(field(&rows, "title"), ["a1", "a2", "a3", "b1", "n1"]);
    assert_eq!(rows[0]["agent_id"], 7, "values keep their types: {}", rows[0]);
    assert_eq!(rows[0]["details"], json!({}));
    assert_eq!(field(&globex.rows("agent_tasks?select=*").await, "title"), ["g1"]);
    assert_eq!(globex.rows("agent_tasks?select=*&org_id=eq.acme").await, Vec::<Value>::new());
    assert_eq!(initech.rows("agent_tasks?select=*").await, Vec::<Value>::new());

    // eq, in, gt, is, order, limit, offset, select: the right rows in the right order.
    let q = |query: &'static str| {
        let staff = &staff;
        async move { field(&staff.rows(query).await, "title") }
    };
    assert_eq!(q("agent_tasks?select=*&status=eq.running&order=agent_id.desc&limit=2").await, ["a3", "a2"]);
    assert_eq!(q("agent_tasks?select=*&agent_id=in.(7,9)&order=title.asc").await, ["a1", "a3", "b1"]);
    assert_eq!(q("agent_tasks?agent_id=gt.7&agent_id=lte.9&order=agent_id.asc").await, ["a2", "a3"]);
    assert_eq!(q("agent_tasks?agent_id=gte.8&status=neq.pending&order=title.desc").await, ["a3", "a2"]);
    assert_eq!(q("agent_tasks?user_id=is.null").await, ["n1"]);
    assert_eq!(q("agent_tasks?order=user_id.asc.nullsfirst,agent_id.desc&limit=3").await, ["n1", "a3", "a2"]);
    assert_eq!(q("agent_tasks?order=user_id.desc,title.asc&limit=2").await, ["n1", "b1"], "NULLs first in desc");
    assert_eq!(q("agent_tasks?order=id.asc&offset=1&limit=2").await, ["a2", "a3"]);
    assert_eq!(q("agent_tasks?title=in.()").await, Vec::<String>::new());
    let (_, _, range) = staff.get("agent_tasks?order=id.asc&offset=1&limit=2").await;
    assert_eq!(range.as_deref(), Some("1-2/*"));
    let picked = staff.rows("agent_tasks?select=title,agent_id&title=eq.a2").await;
    assert_eq!(picked, [json!({"title": "a2", "agent_id": 8})]);

    // A table without an owner column: every row of its (default) tenant.
    assert_eq!(set(&alice.rows("announcements?select=*").await, "body").len(), 2);
    assert_eq!(globex.rows("announcements?select=*").await, Vec::<Value>::new());

    // Another schema by Accept-Profile; not under public.
    let (st, _) = staff.refused("signal_alerts?select=*").await;
    assert_eq!(st, 404);
    let alerts = Rest::user(&s, &token("sam", "acme", "staff")).profile("monitoring");
    assert_eq!(field(&alerts.rows("signal_alerts?select=*").await, "level"), ["high"]);

    // The application's public.notifications wins under public; Herald's stays under herald.
    let worker = token("w", "acme", "service");
    let (st, v) = s.post(&worker, "/v1/notifications", json!({"recipient": "alice", "title": "herald note"})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(field(&alice.rows("notifications?select=*").await, "body"), ["app note for alice"]);
    let herald_alice = Rest::user(&s, &token("alice", "acme", "customer")).profile("herald");
    assert_eq!(field(&herald_alice.rows("notifications?select=*").await, "title"), ["herald note"]);

    // What Herald cannot answer is refused in PostgREST's shape.
    let (st, e) = staff.refused("agent_tasks?select=*&title=like.*a*").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("PGRST100")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("`like`"), "{e}");
    let (st, e) = staff.refused("agent_tasks?or=(status.eq.running,agent_id.eq.7)").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("PGRST100")), "{e}");
    let (st, e) = staff.refused("agent_tasks?select=*,agents(*)").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("PGRST100")), "{e}");
    let (st, e) = staff.refused("agent_tasks?select=*&nope=eq.1").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("42703")), "{e}");
    assert_eq!(e["message"], "column agent_tasks.nope does not exist");
    let (st, e) = staff.refused("agent_tasks?order=nope.desc").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("42703")), "{e}");
    let (st, e) = staff.refused("agent_tasks?agent_id=gt.many").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("22P02")), "{e}");
    let (st, e) = staff.refused("nothing?select=*").await;
    assert_eq!((st, e["code"].as_str()), (404, Some("PGRST205")), "{e}");
    assert_eq!(e["message"], "Could not find the table 'public.nothing' in the schema cache");
    let (st, e) = Rest::user(&s, &token("sam", "acme", "staff")).profile("nowhere").refused("agent_tasks").await;
    assert_eq!((st, e["code"].as_str()), (406, Some("PGRST106")), "{e}");
    // No credentials; the anon key alone (a guest reads no rows); a forged token.
    let nobody = Rest { apikey: None, bearer: None, ..Rest::user(&s, "") };
    let (st, e) = nobody.refused("agent_tasks?select=*").await;
    assert_eq!((st, e["code"].as_str()), (401, Some("PGRST302")), "{e}");
    let guest = Rest { bearer: None, ..Rest::user(&s, "") };
    let (st, e) = guest.refused("agent_tasks?select=*").await;
    assert_eq!((st, e["code"].as_str()), (401, Some("42501")), "{e}");
    let guest_as_supabase_js = Rest { bearer: Some(anon_key()), ..Rest::user(&s, "") };
    let (st, _) = guest_as_supabase_js.refused("agent_tasks?select=*").await;
    assert_eq!(st, 401);
    let forged = Rest::user(&s, &format!("{}x", token("sam", "acme", "staff")));
    let (st, e) = forged.refused("agent_tasks?select=*").await;
    assert_eq!((st, e["code"].as_str()), (401, Some("PGRST301")), "{e}");
    // An apikey of one tenant with a user token of another.
    let mixed = Rest::user(&s, &token("gina", "globex", "staff"));
    let (st, _) = mixed.refused("agent_tasks?select=*").await;
    assert_eq!(st, 401);
    // Rows changed by hand are read as they are now.
    psql(s.pg_db(), "UPDATE public.agent_tasks SET status = 'done' WHERE title = 'a1'");
    assert_eq!(field(&alice.rows("agent_tasks?status=eq.done").await, "title"), ["a1"]);
}

/// Jobs of two customers and notifications of two users, written through the API.
async fn herald_rows(s: &Server) {
    let worker = token("w", "acme", "worker");
    for (id, owner) in [("j1", "alice"), ("j2", "bob"), ("j3", "alice")] {
        let tasks = json!([{"id": format!("{id}-t1")}, {"id": format!("{id}-t2")}]);
        create_job(s, &worker, json!({"id": id, "owner": owner, "title": format!("job {id}"), "tasks": tasks})).await;
    }
    let globex = token("w", "globex", "worker");
    create_job(s, &globex, json!({"id": "g1", "owner": "alice", "status": "running"})).await;
    // Distinct update times, j1 the latest: j3 stays queued.
    for id in ["j2", "j1"] {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (st, v) = s.post(&worker, &format!("/v1/jobs/{id}/progress"), json!({"status": "running"})).await;
        assert_eq!(st, 200, "{v}");
    }
    let service = token("svc", "acme", "service");
    for (recipient, title) in [("alice", "for alice"), ("bob", "for bob")] {
        let (st, v) = s.post(&service, "/v1/notifications", json!({"recipient": recipient, "title": title})).await;
        assert_eq!(st, 201, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_v1_serves_heralds_jobs_and_notifications_as_the_api_does_to_whom_the_api_does() {
    let s = Server::start("rest-herald", &[]).await;
    herald_rows(&s).await;
    let alice_tok = token("alice", "acme", "customer");
    let alice = Rest::user(&s, &alice_tok);
    let staff_tok = token("sam", "acme", "staff");
    let staff = Rest::user(&s, &staff_tok);
    let admin = Rest::user(&s, &token("root", "acme", "admin"));
    let globex = Rest { apikey: None, ..Rest::user(&s, &token("gina", "globex", "staff")) };

    // What supabase.from('jobs').select('*').eq('status','running')
    //     .order('updated_at', {ascending: false}).limit(5) sends.
    let polled = "jobs?select=*&status=eq.running&order=updated_at.desc&limit=5";
    let rows = staff.rows(polled).await;
    assert_eq!(field(&rows, "id"), ["j1", "j2"]);
    // Each row is the job exactly as GET /v1/jobs/{id} shows it.
    let (st, j1) = s.get(&staff_tok, "/v1/jobs/j1").await;
    assert_eq!(st, 200);
    assert_eq!(rows[0], j1);
    assert!(rows[0]["updated_at"].as_str().unwrap().ends_with('Z'), "times are RFC 3339: {}", rows[0]);

    // A customer: its own jobs, whatever it filters on.
    assert_eq!(field(&alice.rows(polled).await, "id"), ["j1"]);
    assert_eq!(set(&alice.rows("jobs?select=*").await, "id"), ["j1", "j3"].map(String::from).into());
    for spy in ["jobs?owner=eq.bob", "jobs?id=eq.j2", "jobs?id=in.(j2,g1)", "jobs?tenant=eq.globex"] {
        assert_eq!(alice.rows(spy).await, Vec::<Value>::new(), "{spy}");
    }
    // Their tasks only, through the job's owner.
    let tasks = alice.rows("tasks?select=job_id,id&order=id.asc").await;
    assert_eq!(field(&tasks, "id"), ["j1-t1", "j1-t2", "j3-t1", "j3-t2"]);
    assert_eq!(alice.rows("tasks?job_id=eq.j2").await, Vec::<Value>::new());
    assert_eq!(staff.rows("tasks?job_id=eq.j2").await.len(), 2);
    // Another tenant sees nothing of acme's.
    assert_eq!(field(&globex.rows("jobs?select=*").await, "id"), ["g1"]);
    assert_eq!(globex.rows("jobs?id=eq.j1").await, Vec::<Value>::new());

    // Notifications: only the caller's own, whatever its role.
    let mine = alice.rows("notifications?select=*").await;
    assert_eq!(field(&mine, "title"), ["for alice"]);
    let (_, listed) = s.get(&alice_tok, "/v1/notifications").await;
    assert_eq!(mine[0], listed["notifications"][0], "as GET /v1/notifications shows it");
    assert_eq!(alice.rows("notifications?recipient=eq.bob").await, Vec::<Value>::new());
    assert_eq!(staff.rows("notifications?select=*").await, Vec::<Value>::new());
    assert_eq!(admin.rows("notifications?recipient=eq.bob").await, Vec::<Value>::new());
    assert_eq!(field(&alice.rows("notifications?read=is.false").await, "title"), ["for alice"]);
    assert_eq!(alice.rows("notifications?read=eq.true").await, Vec::<Value>::new());

    // Operators on Herald's columns: in, numbers, booleans, times (RFC 3339), nulls.
    let ids = |rows: Vec<Value>| field(&rows, "id");
    assert_eq!(ids(staff.rows("jobs?id=in.(j1,j3)&order=id.desc").await), ["j3", "j1"]);
    assert_eq!(ids(staff.rows("jobs?version=gte.2&order=id.asc").await), ["j1", "j2"]);
    assert_eq!(ids(staff.rows("jobs?total=eq.2&status=neq.running").await), ["j3"]);
    assert_eq!(ids(staff.rows("jobs?started_at=is.null").await), ["j3"]);
    assert_eq!(ids(staff.rows("jobs?counts_reported=is.false&order=id.asc&limit=1").await), ["j1"]);
    assert_eq!(ids(staff.rows("jobs?progress=lt.50.5&order=id.asc&offset=2").await), ["j3"]);
    let j2 = &rows[1];
    let after_j2 = format!("jobs?updated_at=gt.{}", j2["updated_at"].as_str().unwrap());
    assert_eq!(ids(staff.rows(&after_j2).await), ["j1"]);
    assert_eq!(ids(staff.rows(&format!("jobs?updated_at=eq.{}", j2["updated_at"].as_str().unwrap())).await), ["j2"]);
    assert_eq!(ids(staff.rows("jobs?order=started_at.desc.nullslast,id.asc").await), ["j1", "j2", "j3"]);
    assert_eq!(ids(staff.rows("jobs?order=started_at.desc,id.asc").await), ["j3", "j1", "j2"], "NULLs first in desc");
    let picked = staff.rows("jobs?select=id,owner&id=eq.j2").await;
    assert_eq!(picked, [json!({"id": "j2", "owner": "bob"})]);
    // Under the herald schema too; one object when asked for one.
    let herald = Rest::user(&s, &staff_tok).profile("herald");
    assert_eq!(ids(herald.rows("jobs?id=eq.j3").await), ["j3"]);
    let single = Rest { accept: Some("application/vnd.pgrst.object+json"), ..Rest::user(&s, &staff_tok) };
    let (st, one, _) = single.get("jobs?id=eq.j1").await;
    assert_eq!((st, &one["id"]), (200, &json!("j1")), "{one}");
    let (st, e) = single.refused("jobs?status=eq.running").await;
    assert_eq!((st, e["code"].as_str()), (406, Some("PGRST116")), "{e}");

    // Refusals name what is wrong.
    let (st, e) = staff.refused("jobs?updated_at=gt.yesterday").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("22007")), "{e}");
    let (st, e) = staff.refused("jobs?version=eq.two").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("22P02")), "{e}");
    let (st, e) = staff.refused("jobs?metadata=eq.x").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("PGRST100")), "{e}");
    let (st, e) = staff.refused("jobs?title=ilike.*job*").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("PGRST100")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("`ilike`"), "{e}");
    let (st, e) = staff.refused("jobs?id=not.eq.j1").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("PGRST100")), "{e}");
    let (st, e) = staff.refused("jobs?customer_id=eq.alice").await;
    assert_eq!(
        (st, e["code"].as_str(), e["message"].as_str()),
        (400, Some("42703"), Some("column jobs.customer_id does not exist"))
    );
    let (st, e) = staff.refused("jobs?title=is.true").await;
    assert_eq!((st, e["code"].as_str()), (400, Some("42804")), "{e}");
    let (st, e) = staff.refused("agent_tasks?select=*").await;
    assert_eq!((st, e["code"].as_str()), (404, Some("PGRST205")), "{e}");
    let (st, e) = Rest { bearer: None, ..Rest::user(&s, "") }.refused("jobs?select=*").await;
    assert_eq!((st, e["code"].as_str()), (401, Some("42501")), "the anon key reads no rows: {e}");
    let (st, _) = Rest { bearer: None, apikey: None, ..Rest::user(&s, "") }.refused("jobs?select=*").await;
    assert_eq!(st, 401);
}
