//! Query strings of the HTTP API, read as the server reads them: `/?<input>`
//! as a URI, then axum's `Query<T>` into each query struct (`GET /v1/events`,
//! `/v1/sse`, `GET /v1/jobs`, `GET /v1/notifications`, `/v1/ws`, the Phoenix
//! socket), then the checks the handlers make on the fields.

#![no_main]

use axum::extract::Query;
use axum::http::Uri;
use herald::model::JobStatus;
use herald::transport::http::events::PollEvents;
use herald::transport::http::jobs::ListJobs;
use herald::transport::http::notifications::ListNotifications;
use herald::transport::phoenix::SocketQuery;
use herald::transport::sse::SseQuery;
use herald::transport::ws::WsQuery;
use herald_fuzz::{check_time, check_topic};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

fn read<T: DeserializeOwned>(uri: &Uri) -> Option<T> {
    Query::<T>::try_from_uri(uri).ok().map(|Query(v)| v)
}

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else { return };
    // As the extractors do: a query that makes no URI is a 400 before serde.
    let Ok(uri) = format!("/?{q}").parse::<Uri>() else { return };

    if let Some(p) = read::<PollEvents>(&uri) {
        for t in p.topic.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            check_topic(t);
        }
    }
    let _ = read::<SseQuery>(&uri);
    if let Some(l) = read::<ListJobs>(&uri) {
        if let Some(s) = l.status.as_deref() {
            if let Some(st) = JobStatus::parse(s) {
                assert_eq!(st.as_str(), s);
            }
        }
        if let Some(t) = l.updated_after.as_deref() {
            check_time(t);
        }
        if let Some(c) = l.cursor.as_deref() {
            let _ = c.parse::<i64>();
        }
    }
    let _ = read::<ListNotifications>(&uri);
    let _ = read::<WsQuery>(&uri);
    let _ = read::<SocketQuery>(&uri);
});
