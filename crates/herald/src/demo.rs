//! `herald serve --demo`: a `demo` tenant with simulated workers, so the
//! dashboard moves from the first minute — jobs of tens of tasks, random
//! failures, and now and then one that stalls and later recovers. Stable
//! across restarts: numbering goes on from the last run, and jobs whose
//! simulated worker died with the previous process are cancelled, not left
//! stalled forever. Jobs not made by the simulation (the README's tour) are
//! never touched.

use crate::app::AppState;
use crate::model::job::ProgressReport;
use crate::model::task::TaskUpsert;
use crate::model::{JobStatus, TaskStatus};
use crate::rules::{Command, NewJob};
use rand::Rng;
use std::time::Duration;

/// The demo tenant's name.
pub const TENANT: &str = "demo";
/// Customers that own demo jobs.
pub const CUSTOMERS: &[&str] = &["alice", "bob"];

const KINDS: &[(&str, &[&str])] = &[
    (
        "directory-submission",
        &["Google Business", "Yelp", "Bing Places", "Apple Maps", "Facebook", "LinkedIn", "Foursquare"],
    ),
    ("site-crawl", &["/", "/pricing", "/blog", "/docs", "/about", "/careers", "/contact"]),
    ("agent-run", &["plan", "search", "read", "summarize", "draft", "review", "publish"]),
];

/// How long a simulated worker that went silent stays away (the demo's stall
/// timeout is 20 s, so its job is seen stalled, then running again).
const SILENCE: Duration = Duration::from_secs(45);

/// Starts the simulation; abort the handle to stop it.
pub fn spawn(s: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = match tidy(&s).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "could not tidy the previous demo run");
                0
            }
        };
        loop {
            n += 1;
            let s2 = s.clone();
            tokio::spawn(async move {
                if let Err(e) = simulate(&s2, n).await {
                    tracing::debug!(error = %e, "demo job ended early");
                }
            });
            // A few jobs at once so a fresh dashboard has something moving
            // within seconds, then a steadier trickle.
            let pause = if n < 4 { rand::thread_rng().gen_range(1..3) } else { rand::thread_rng().gen_range(6..14) };
            tokio::time::sleep(Duration::from_secs(pause)).await;
        }
    })
}

/// Cancels the simulated jobs a previous run left unfinished (their workers
/// died with it) and returns the highest job number used so far.
async fn tidy(s: &AppState) -> Result<u64, crate::rules::WriteError> {
    use crate::model::JobVisibility;
    use crate::store::JobFilter;
    let mut last = 0;
    let newest = s.store.jobs(TENANT, &JobVisibility::All, JobFilter { limit: 200, ..Default::default() }).await?;
    for j in &newest.items {
        last = last.max(j.metadata["demo_n"].as_u64().unwrap_or(0));
    }
    let mut left = 0;
    for status in [JobStatus::Queued, JobStatus::Running, JobStatus::Stalled] {
        let filter = JobFilter { status: Some(status), limit: 500, ..Default::default() };
        let page = s.store.jobs(TENANT, &JobVisibility::All, filter).await?;
        for j in page.items.into_iter().filter(|j| j.metadata["demo"] == true) {
            let report = ProgressReport {
                status: Some(JobStatus::Cancelled),
                error: Some("the demo restarted: this job's simulated worker is gone".into()),
                ..Default::default()
            };
            s.write(TENANT, Command::ReportProgress { job_id: j.id.clone(), report }, None).await?;
            left += 1;
        }
    }
    if left > 0 {
        tracing::info!(cancelled = left, "cancelled the unfinished jobs of the previous demo run");
    }
    Ok(last)
}

async fn simulate(s: &AppState, n: u64) -> Result<(), crate::rules::WriteError> {
    let (kind, items, owner, tasks, stall) = {
        let mut rng = rand::thread_rng();
        let (kind, items) = KINDS[rng.gen_range(0..KINDS.len())];
        let owner = CUSTOMERS[rng.gen_range(0..CUSTOMERS.len())];
        (kind, items, owner, rng.gen_range(12..40usize), n % 5 == 3)
    };
    let id = format!("demo-{}-{n}", crate::model::time::now_ms() / 1000);
    let write = |cmd| s.write(TENANT, cmd, None);
    write(Command::CreateJob(NewJob {
        id: Some(id.clone()),
        owner: Some(owner.to_string()),
        kind: Some(kind.to_string()),
        title: Some(format!("{kind} #{n} for {owner}")),
        total: Some(tasks as u64),
        status: None,
        metadata: Some(serde_json::json!({ "demo": true, "demo_n": n })),
        tasks: Vec::new(),
    }))
    .await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let report = |status, stage: &str| ProgressReport { status, stage: Some(stage.to_string()), ..Default::default() };
    write(Command::ReportProgress { job_id: id.clone(), report: report(Some(JobStatus::Running), "starting") }).await?;
    for i in 0..tasks {
        let item = format!("{} ({})", items[i % items.len()], i + 1);
        let task_id = format!("t{}", i + 1);
        let upsert = |status| TaskUpsert { id: None, name: Some(item.clone()), status: Some(status), error: None };
        write(Command::UpsertTask {
            job_id: id.clone(),
            task_id: task_id.clone(),
            upsert: upsert(TaskStatus::Running),
        })
        .await?;
        let r =
            ProgressReport { current_item: Some(item.clone()), stage: Some("processing".into()), ..Default::default() };
        write(Command::ReportProgress { job_id: id.clone(), report: r }).await?;
        if stall && i == tasks / 2 {
            // This worker goes silent: stall detection marks the job stalled;
            // its next report brings it back to running.
            tokio::time::sleep(SILENCE).await;
        }
        let (pause, failed) = {
            let mut rng = rand::thread_rng();
            (rng.gen_range(250..900), rng.gen_bool(0.12))
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let mut done = upsert(if failed { TaskStatus::Failed } else { TaskStatus::Succeeded });
        if failed {
            done.error = Some(format!("{item}: timed out waiting for the form"));
        }
        write(Command::UpsertTask { job_id: id.clone(), task_id, upsert: done }).await?;
        if failed {
            let r =
                ProgressReport { error: Some(format!("{item}: timed out waiting for the form")), ..Default::default() };
            write(Command::ReportProgress { job_id: id.clone(), report: r }).await?;
        }
        if i % 5 == 4 {
            let payload = serde_json::json!({ "url": screenshot(&item, i), "item": item });
            write(Command::AddArtifact { job_id: id.clone(), kind: "screenshot".into(), payload }).await?;
        }
    }
    let failed_many = rand::thread_rng().gen_bool(0.15);
    let final_status = if failed_many { JobStatus::Failed } else { JobStatus::Completed };
    write(Command::ReportProgress { job_id: id, report: report(Some(final_status), "done") }).await?;
    Ok(())
}

/// A small inline SVG standing in for a screenshot (the demo reaches no network).
fn screenshot(item: &str, i: usize) -> String {
    let hue = (i * 47) % 360;
    let label: String = item.chars().filter(|c| c.is_ascii_alphanumeric() || *c == ' ').collect();
    let svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='320' height='200'><rect width='320' height='200' fill='hsl({hue},60%,85%)'/>\
         <rect x='20' y='20' width='280' height='24' fill='white'/><text x='28' y='37' font-family='sans-serif' font-size='14'>{label}</text>\
         <rect x='20' y='60' width='180' height='12' fill='white'/><rect x='20' y='84' width='240' height='12' fill='white'/></svg>"
    );
    format!(
        "data:image/svg+xml,{}",
        // '%' first: the SVG's own percent signs (in `hsl()`) must not read as escapes.
        svg.replace('%', "%25").replace('#', "%23").replace('<', "%3C").replace('>', "%3E").replace(' ', "%20")
    )
}
