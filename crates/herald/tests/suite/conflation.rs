//! Conflation instead of cut-off: a subscriber that stops reading while a job
//! moves thousands of times is not disconnected; when it reads again it gets
//! the final state, every status change and every non-tick event, in order, in
//! far fewer frames. One that opted out (`conflate: false`) gets every tick or
//! is cut off as before.

use crate::harness::{create_job, token, Server, Ws};
use serde_json::{json, Value};
use std::time::Duration;

const TICKS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_gets_the_final_state_and_every_status_change_in_few_frames() {
    let s = Server::start("conflation", &[]).await;
    let worker = token("w", "acme", "worker");
    let staff = token("sam", "acme", "staff");
    create_job(&s, &worker, json!({"id": "busy", "owner": "alice", "total": TICKS})).await;

    let mut lazy = Ws::connect_small_buffer(&s.ws_url(), &staff).await;
    lazy.sub("job:busy", None).await;
    let mut strict = Ws::connect_small_buffer(&s.ws_url(), &staff).await;
    let ack = strict.request(json!({"op": "sub", "topic": "job:busy", "conflate": false})).await;
    assert_eq!(ack["op"], "ack", "{ack}");
    // Neither reads from here on, until the job is done.

    let (st, _) = s.post(&worker, "/v1/jobs/busy/progress", json!({"status": "running"})).await;
    assert_eq!(st, 200);
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (http, base, worker) = (s.http.clone(), s.url("/v1/jobs/busy"), worker.clone());
            let written = std::sync::Arc::clone(&written);
            tokio::spawn(async move {
                for i in (w..TICKS).step_by(8) {
                    if i == TICKS / 2 {
                        // A task failure in the middle: never conflated away.
                        let r = http
                            .put(format!("{base}/tasks/t-mid"))
                            .bearer_auth(&worker)
                            .json(&json!({"status": "failed", "error": "mid-way failure"}))
                            .send()
                            .await
                            .unwrap();
                        assert!(r.status().is_success());
                    }
                    let r = http
                        .post(format!("{base}/progress"))
                        .bearer_auth(&worker)
                        .json(&json!({"stage": format!("tick {i}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut driver = {
        let (http, url, worker) = (s.http.clone(), s.url("/v1/jobs/busy/progress"), worker.clone());
        tokio::spawn(async move {
            for w in writers {
                w.await.unwrap();
            }
            let r = http.post(url).bearer_auth(&worker).json(&json!({"status": "completed", "stage": "done"})).send();
            assert_eq!(r.await.unwrap().status(), 200);
        })
    };
    // The reader pauses until the job is done, but not past 25 s: a connection
    // whose writes wait 30 s is cut off as dead (PROTOCOL.md), and a loaded
    // machine may take longer than that to make 10,000 moves.
    let done_in_pause = tokio::time::timeout(Duration::from_secs(25), &mut driver).await.is_ok();
    let written_in_pause = written.load(std::sync::atomic::Ordering::Relaxed);

    // The lazy subscriber reads now: still connected, the whole story in order.
    let mut frames: Vec<Value> = Vec::new();
    loop {
        let Some(v) = lazy.next(Duration::from_secs(20)).await else {
            panic!("stream ended or went silent after {} frames (close: {:?})", frames.len(), lazy.close);
        };
        if v["op"] != "event" {
            continue;
        }
        let done = v["type"] == "job.completed";
        frames.push(v);
        if done {
            break;
        }
    }
    let positions: Vec<u64> = frames.iter().map(|f| f["position"].as_u64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions in order");
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    let mut changes: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"].as_str().unwrap().starts_with("job."))
        .map(|f| f["data"]["status"].as_str().unwrap())
        .collect();
    changes.dedup();
    // The job's creation (queued) may still have been on its way when the subscription began.
    if changes.first() == Some(&"queued") {
        changes.remove(0);
    }
    assert_eq!(changes, ["running", "completed"], "every status, in order");
    assert!(kinds.contains(&"task.created") || kinds.contains(&"task.updated"), "the task failure came: {kinds:?}");
    let last = frames.last().unwrap();
    assert_eq!(last["data"]["stage"], "done", "the final state");
    let ticks = kinds.iter().filter(|k| **k == "job.updated").count();
    let bytes: usize = frames.iter().map(|f| f.to_string().len()).sum();
    eprintln!("conflation: {} frames, {bytes} bytes ({ticks} ticks) for {TICKS} ticks", frames.len());
    // Ticks made while it read were sent as they came; those of the pause conflate.
    let allowed = (TICKS - written_in_pause) + written_in_pause / 2;
    assert!(ticks < allowed, "far fewer frames than ticks: {ticks} of {TICKS} ({written_in_pause} in the pause)");
    if !done_in_pause {
        driver.await.unwrap();
    }
    assert!(lazy.close.is_none(), "not disconnected");

    // The strict one got every tick, or was cut off as a slow consumer (its
    // close frame may not get through the congested socket: the server's record says).
    let mut got = 0;
    let mut completed = false;
    while let Some(v) = strict.next(Duration::from_secs(10)).await {
        if v["op"] == "event" && v["type"] == "job.updated" {
            got += 1;
        }
        if v["op"] == "event" && v["type"] == "job.completed" {
            completed = true;
            break;
        }
    }
    eprintln!("conflate: false: {got} ticks, completed {completed}, close {:?}", strict.close);
    if completed {
        assert!(got >= TICKS, "every tick: {got}");
    } else {
        let (_, v) = s.get(&token("ada", "acme", "admin"), "/v1/admin/inspect").await;
        let closes = v["closes"].as_array().unwrap();
        assert!(closes.iter().any(|c| c["reason"] == "slow_consumer" && c["code"] == 4008), "{closes:?}");
        assert!(v["totals"]["delivery"]["slow_consumers"].as_u64().unwrap() >= 1, "{}", v["totals"]);
    }

    // The inspector and /metrics count what was conflated.
    let (_, v) = s.get(&token("ada", "acme", "admin"), "/v1/admin/inspect").await;
    let conflated: u64 = v["connections"].as_array().unwrap().iter().filter_map(|c| c["conflated"].as_u64()).sum();
    assert!(conflated as usize >= TICKS / 2, "{}", v["connections"]);
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = metrics.lines().find(|l| l.starts_with("herald_conflated_total")).expect("herald_conflated_total");
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n as u64 >= conflated, "{line}");
}
