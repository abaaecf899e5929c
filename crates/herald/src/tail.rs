//! `herald tail`: a terminal client of the native protocol that prints a
//! topic's events as they arrive, reconnecting and resuming where it left off.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Follows `topic` until interrupted.
pub async fn run(url: &str, token: &str, topic: &str, since: Option<u64>) -> anyhow::Result<()> {
    let ws_url = format!("{}/v1/ws", url.trim_end_matches('/').replacen("http", "ws", 1));
    let mut since = since;
    let mut backoff = Duration::from_millis(250);
    loop {
        match follow(&ws_url, token, topic, &mut since).await {
            Ok(Some(reason)) if !reason.1 => anyhow::bail!("server closed the connection: {}", reason.0),
            Ok(_) => {}
            Err(e) => eprintln!("connection lost: {e}"),
        }
        eprintln!("reconnecting in {backoff:?}...");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One connection; returns the goodbye reason and whether to reconnect.
async fn follow(
    ws_url: &str,
    token: &str,
    topic: &str,
    since: &mut Option<u64>,
) -> anyhow::Result<Option<(String, bool)>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    ws.send(Message::text(json!({ "op": "auth", "token": token, "id": "auth" }).to_string())).await?;
    let mut sub = json!({ "op": "sub", "topic": topic, "id": "sub" });
    if let Some(s) = since {
        sub["since"] = json!(*s);
    }
    ws.send(Message::text(sub.to_string())).await?;
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let v: Value = serde_json::from_str(&text)?;
        match v["op"].as_str() {
            Some("event") => {
                *since = v["position"].as_u64().or(*since);
                println!(
                    "{} #{} {} {}",
                    v["time"].as_str().unwrap_or(""),
                    v["position"],
                    v["type"].as_str().unwrap_or(""),
                    v["data"]
                );
            }
            Some("error") => {
                eprintln!("error {}: {}", v["code"].as_str().unwrap_or(""), v["message"].as_str().unwrap_or(""));
                if v["id"] == "sub" || v["id"] == "auth" {
                    return Ok(Some((v["code"].as_str().unwrap_or("error").to_string(), false)));
                }
            }
            Some("goodbye") => {
                let reconnect = v["reconnect"].as_bool().unwrap_or(false);
                return Ok(Some((v["reason"].as_str().unwrap_or("").to_string(), reconnect)));
            }
            Some("resync") => {
                *since = v["position"].as_u64();
                println!("resync at #{}: {}", v["position"], v["snapshot"]);
            }
            Some("welcome") | Some("ack") | Some("pong") => {}
            _ => println!("{text}"),
        }
    }
    Ok(None)
}
