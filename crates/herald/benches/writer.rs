//! The group-commit writer: progress reports through the real SQLite store,
//! one at a time and 100 in flight (which the writer commits together).
//! `cargo bench -p herald --bench writer`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::feed::ChangeFeed;
use herald::rules::{write, Command};
use herald::store::sqlite::{Durability, SqliteStore};
use herald::store::Writer;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Opens a store whose committed events are taken and dropped (no hub here).
fn open(rt: &tokio::runtime::Runtime, durability: Durability, tag: &str) -> SqliteStore {
    let dir = std::env::temp_dir().join(format!("herald-bench-writer-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (store, mut feed) = SqliteStore::open(&dir.join("bench.db"), durability).expect("open store");
    rt.spawn(async move { while feed.next_batch().await.is_some() {} });
    store
}

fn report(n: u64) -> Command {
    Command::ReportProgress {
        job_id: "bench-job".into(),
        report: serde_json::from_value(json!({"succeeded": n, "current_item": format!("item-{n}")})).expect("report"),
    }
}

fn writer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("writer");
    group.measurement_time(Duration::from_secs(5));
    for (durability, tag) in [(Durability::Full, "fsync"), (Durability::Normal, "normal")] {
        let store = Arc::new(open(&rt, durability, tag));
        rt.block_on(async {
            let job = serde_json::from_value(
                json!({"id": "bench-job", "total": 1_000_000_000u64, "status": "running", "tasks": []}),
            )
            .expect("job");
            write(&*store, "bench", Command::CreateJob(job), None).await.expect("create job");
        });
        for in_flight in [1u64, 100] {
            group.throughput(Throughput::Elements(in_flight));
            group.bench_with_input(BenchmarkId::new(tag, in_flight), &in_flight, |b, &k| {
                let mut n = 0u64;
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            let mut batch = Vec::with_capacity(k as usize);
                            for _ in 0..k {
                                n += 1;
                                let store = Arc::clone(&store);
                                let cmd = report(n);
                                batch.push(tokio::spawn(async move { write(&*store, "bench", cmd, None).await }));
                            }
                            for h in batch {
                                h.await.expect("join").expect("write");
                            }
                        }
                        start.elapsed()
                    })
                })
            });
        }
        rt.block_on(store.close());
    }
    group.finish();
}

criterion_group!(benches, writer);
criterion_main!(benches);
