//! Native protocol client frames (`/v1/ws`, docs/PROTOCOL.md): the text of one
//! WebSocket message through `parse_frame`, then the topic parser the session
//! applies to the frame's topic (and the job-list query parser to a `list`'s query).

#![no_main]

use herald::transport::ws::frames::{ClientFrame, KNOWN_OPS};
use herald::transport::ws::session::parse_frame;
use herald_fuzz::check_topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The server only reads text frames (binary ones get an error frame).
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_frame(text) {
        Ok(frame) => match &frame {
            ClientFrame::Sub { topic, .. }
            | ClientFrame::Unsub { topic, .. }
            | ClientFrame::Pub { topic, .. }
            | ClientFrame::Presence { topic, .. } => check_topic(topic),
            // A list's query goes through the same parser as the session's.
            ClientFrame::List { query: Some(q), .. } => {
                if let Ok(query) = herald::model::JobQuery::from_json(q) {
                    let _ = query.updated_after(0);
                }
            }
            ClientFrame::List { query: None, .. }
            | ClientFrame::Unlist { .. }
            | ClientFrame::Auth { .. }
            | ClientFrame::Ping { .. }
            | ClientFrame::Refresh { .. } => {}
        },
        Err((code, message, _id)) => {
            assert!(matches!(code, "invalid_json" | "invalid_frame" | "unknown_op" | "json_too_deep"), "{code}");
            if code == "json_too_deep" {
                // Refused before parsing: brackets nest past the payload limit somewhere.
                let limit = herald::transport::http::extract::MAX_JSON_DEPTH + 1;
                assert!(herald::transport::http::extract::too_deep(text.as_bytes(), limit).is_some());
            }
            assert!(!message.is_empty());
            if code == "unknown_op" {
                let op = serde_json::from_str::<serde_json::Value>(text).unwrap()["op"].as_str().unwrap().to_string();
                assert!(!KNOWN_OPS.contains(&op.as_str()));
            }
        }
    }
    // The same text as a topic name (`sub` frames carry any string there).
    check_topic(text);
});
