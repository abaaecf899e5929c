//! The fan-out path: one committed event handed to N subscriber queues, and
//! every connection's writer taking its frame (serialized once, then shared).
//! `cargo bench -p herald --bench fanout`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::hub::{outbox, Delivery, Hub, Inbox, Payload, TopicKey};
use herald::model::event::EventType;
use herald::model::Event;
use herald::transport::ws::frames;
use serde_json::value::RawValue;
use std::hint::black_box;
use std::sync::Arc;

fn event() -> Arc<Event> {
    let row = r#"{"id":"job-1","kind":"crawl","title":"Crawl example.com","owner":"alice","status":"running",
        "total":200,"succeeded":120,"failed":3,"progress":61.5,"stage":"fetch","current_item":"/pricing",
        "metadata":{"region":"eu"},"errors":[],"version":124,"created_at":"2026-11-23T10:00:00.000Z",
        "updated_at":"2026-11-23T10:04:05.123Z","started_at":"2026-11-23T10:00:01.000Z","finished_at":null}"#;
    Arc::new(Event {
        position: herald::model::Position::from_u64(1),
        tenant: Arc::from("acme"),
        kind: EventType::JobUpdated,
        topics: vec!["job:job-1".into()],
        job_id: Some("job-1".into()),
        owner: Some("alice".into()),
        data: Arc::from(RawValue::from_string(row.replace('\n', "")).expect("valid json")),
        time: 1_795_000_000_000,
        old: None,
        table: None,
        row: Default::default(),
    })
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut group = c.benchmark_group("fanout");
    for n in [1_000usize, 10_000] {
        let hub = Hub::new(0);
        let key = TopicKey::new("acme", "job:job-1");
        let mut inboxes: Vec<Inbox> = (0..n)
            .map(|_| {
                let (tx, rx) = outbox(hub.next_id(), 4096);
                hub.subscribe(&key, tx);
                rx
            })
            .collect();
        let ev = event();
        let mut buf = Vec::with_capacity(64);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("deliver_and_frame", n), &n, |b, _| {
            b.iter(|| {
                let d = Delivery::new(Arc::clone(&ev.tenant), Arc::clone(&key.topic), Payload::Event(Arc::clone(&ev)));
                black_box(hub.deliver(d));
                rt.block_on(async {
                    for inbox in inboxes.iter_mut() {
                        inbox.recv_many(&mut buf, 64).await;
                        for d in buf.drain(..) {
                            black_box(frames::delivery(&d));
                        }
                    }
                });
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
