//! The servers the tool can drive, and how each one connects, subscribes and
//! publishes. Every payload carries `bench_seq` and `bench_t` (publish time,
//! µs since the epoch) so receivers measure latency and spot gaps.

use crate::conn::{self, Ws};
use crate::Common;
use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Herald's native protocol (`/v1/ws`).
    Herald,
    /// A Socket.IO 4 server from bench/peers/socketio (websocket transport).
    Socketio,
    /// Herald's Socket.IO endpoint (`/socket.io/`, websocket transport): rooms
    /// joined with `room:join`, published with `room:broadcast`.
    HeraldSocketio,
    /// bench/reference: a bare tokio loop writing one pre-serialized frame to every socket.
    Reference,
    /// Herald's Supabase Realtime endpoint (Phoenix vsn 2.0.0): `postgres_changes` on `public.jobs`.
    Supabase,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Json,
    Compact,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferenceFrame {
    Herald,
    Compact,
    Bare,
}

/// Run-wide settings the frame builders read (set once from the command line).
struct Settings {
    encoding: Encoding,
    pad: String,
    reference: ReferenceFrame,
}

static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();

fn settings() -> &'static Settings {
    SETTINGS.get_or_init(|| Settings {
        encoding: Encoding::Json,
        pad: String::new(),
        reference: ReferenceFrame::Herald,
    })
}

/// Takes the encoding, payload size and reference frame of this run.
pub fn configure(c: &Common) {
    // The bare payload is about 45 bytes; `"pad":"…",` adds 9 plus its length.
    let pad = "x".repeat(c.payload_bytes.saturating_sub(54));
    let _ = SETTINGS.set(Settings { encoding: c.encoding, pad, reference: c.reference_frame });
}

/// Microseconds since the epoch: the clock both publisher and receiver read.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// An HS256 token for the bench tenant.
pub fn token(c: &Common, sub: &str, role: &str) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 24 * 3600;
    let claims = json!({"sub": sub, "tenant": c.tenant, "role": role, "exp": exp});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(c.secret.as_bytes()),
    )?)
}

/// The unsigned integer after `"key":` in a frame, without parsing the JSON.
pub fn field_u64(frame: &str, key: &str) -> Option<u64> {
    let at = frame.find(key)? + key.len();
    let digits = frame[at..].bytes().take_while(u8::is_ascii_digit).count();
    frame[at..at + digits].parse().ok()
}

/// Whether a native frame's `op` is `op`, without parsing the JSON.
pub fn op_is(frame: &str, op: &str) -> bool {
    frame
        .find("\"op\":\"")
        .is_some_and(|at| frame[at + 6..].starts_with(op) && frame[at + 6 + op.len()..].starts_with('"'))
}

/// The payload a publisher sends for one event.
pub fn bench_payload(seq: u64) -> serde_json::Value {
    let pad = &settings().pad;
    if pad.is_empty() {
        json!({"bench_seq": seq, "bench_t": now_us()})
    } else {
        json!({"pad": pad, "bench_seq": seq, "bench_t": now_us()})
    }
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| anyhow!("no frame within 30 s"))?
            .ok_or_else(|| anyhow!("connection closed"))??;
        match msg {
            Message::Text(t) => return Ok(t.to_string()),
            Message::Close(c) => bail!("closed by server: {c:?}"),
            _ => {}
        }
    }
}

/// Opens connection `i` and subscribes it to `topic`; returns once the server confirmed.
pub async fn subscribe(c: &Common, i: usize, topic: &str, token: &str) -> anyhow::Result<Ws> {
    let (addr, base) = conn::server_addr(c.subscriber_url(i))?;
    let source = conn::source_for(i, c.sources);
    match c.target {
        Kind::Herald => {
            let encoding = match settings().encoding {
                Encoding::Json => "",
                Encoding::Compact => "&encoding=compact",
            };
            let mut ws = conn::connect(addr, &base, &format!("/v1/ws?token={token}{encoding}"), source).await?;
            let welcome = next_text(&mut ws).await?;
            if !welcome.contains("\"welcome\"") {
                bail!("expected welcome, got {welcome}");
            }
            let sub = json!({"op": "sub", "topic": topic, "id": 1}).to_string();
            ws.send(Message::text(sub)).await?;
            loop {
                let f = next_text(&mut ws).await?;
                if op_is(&f, "ack") {
                    return Ok(ws);
                }
                if op_is(&f, "error") {
                    bail!("subscribe refused: {f}");
                }
            }
        }
        Kind::Socketio => {
            let mut ws = conn::connect(addr, &base, "/socket.io/?EIO=4&transport=websocket", source).await?;
            let open = next_text(&mut ws).await?;
            if !open.starts_with('0') {
                bail!("expected engine.io open, got {open}");
            }
            ws.send(Message::text("40")).await?;
            loop {
                let f = next_text(&mut ws).await?;
                if f.starts_with("40") {
                    break;
                }
            }
            // Event "sub" with ack id 1; the server answers `431[...]` once joined.
            ws.send(Message::text(format!("421[\"sub\",{}]", json!(topic)))).await?;
            loop {
                let f = next_text(&mut ws).await?;
                if f.starts_with("431") {
                    return Ok(ws);
                }
                if f == "2" {
                    ws.send(Message::text("3")).await?;
                }
            }
        }
        Kind::HeraldSocketio => {
            let mut ws = socketio_connect(addr, &base, token, source).await?;
            ws.send(Message::text(format!("421[\"room:join\",{}]", json!(topic)))).await?;
            loop {
                let f = next_text(&mut ws).await?;
                if f.starts_with("431") {
                    if f.contains("\"ok\":true") {
                        return Ok(ws);
                    }
                    bail!("room:join refused: {f}");
                }
                if f == "2" {
                    ws.send(Message::text("3")).await?;
                }
            }
        }
        Kind::Supabase => {
            let path = format!("/realtime/v1/websocket?apikey={token}&vsn=2.0.0");
            let mut ws = conn::connect(addr, &base, &path, source).await?;
            // What realtime-js sends for `channel(topic).on('postgres_changes', {event: '*',
            // schema: 'public', table: 'jobs'}, ...).subscribe()`.
            let config = json!({"broadcast": {"self": false, "ack": false}, "presence": {"key": ""},
                "postgres_changes": [{"event": "*", "schema": "public", "table": "jobs"}], "private": false});
            let join = json!(["1", "1", format!("realtime:{topic}"), "phx_join",
                {"config": config, "access_token": token}]);
            ws.send(Message::text(join.to_string())).await?;
            loop {
                let f = next_text(&mut ws).await?;
                if f.contains("\"phx_reply\"") {
                    if f.contains("\"status\":\"ok\"") {
                        return Ok(ws);
                    }
                    bail!("join refused: {f}");
                }
            }
        }
        Kind::Reference => {
            let mut ws = conn::connect(addr, &base, "/", source).await?;
            let ready = next_text(&mut ws).await?;
            if ready != "ready" {
                bail!("expected ready, got {ready}");
            }
            Ok(ws)
        }
    }
}

/// A WebSocket publisher connection (no subscription).
pub async fn publisher(c: &Common, i: usize, token: &str) -> anyhow::Result<Ws> {
    let (addr, base) = conn::server_addr(&c.url)?;
    let source = conn::source_for(i, c.sources);
    match c.target {
        Kind::Supabase => bail!("the supabase target is fed by HTTP progress reports: use --publish http"),
        Kind::Herald => {
            let mut ws = conn::connect(addr, &base, &format!("/v1/ws?token={token}"), source).await?;
            next_text(&mut ws).await?;
            Ok(ws)
        }
        Kind::Socketio => {
            let mut ws = conn::connect(addr, &base, "/socket.io/?EIO=4&transport=websocket", source).await?;
            next_text(&mut ws).await?;
            ws.send(Message::text("40")).await?;
            loop {
                if next_text(&mut ws).await?.starts_with("40") {
                    return Ok(ws);
                }
            }
        }
        Kind::HeraldSocketio => socketio_connect(addr, &base, token, source).await,
        Kind::Reference => {
            let mut ws = conn::connect(addr, &base, "/", source).await?;
            next_text(&mut ws).await?;
            Ok(ws)
        }
    }
}

/// An Engine.IO WebSocket to Herald's `/socket.io/`, connected to the main
/// namespace with `auth: { token }`.
async fn socketio_connect(
    addr: std::net::SocketAddr,
    base: &str,
    token: &str,
    source: std::net::IpAddr,
) -> anyhow::Result<Ws> {
    let mut ws = conn::connect(addr, base, "/socket.io/?EIO=4&transport=websocket", source).await?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        bail!("expected engine.io open, got {open}");
    }
    ws.send(Message::text(format!("40{}", json!({ "token": token })))).await?;
    loop {
        let f = next_text(&mut ws).await?;
        if f.starts_with("40") {
            return Ok(ws);
        }
        if f.starts_with("44") {
            bail!("connect refused: {f}");
        }
    }
}

/// The frame a WebSocket publisher sends for event `seq` to `topic`.
pub fn publish_frame(kind: Kind, topic: &str, seq: u64) -> String {
    let data = bench_payload(seq);
    match kind {
        Kind::Herald => json!({"op": "pub", "topic": topic, "event": "tick", "data": data}).to_string(),
        Kind::Socketio => format!("42[\"pub\",{}]", json!({"topic": topic, "data": data})),
        Kind::HeraldSocketio => format!("42[\"room:broadcast\",{},\"tick\",{data}]", json!(topic)),
        Kind::Supabase => String::new(),
        // By default the same bytes Herald writes to each subscriber for a room
        // broadcast, so the reference moves exactly as much data per delivery.
        Kind::Reference => match settings().reference {
            ReferenceFrame::Herald => json!({"op": "broadcast", "topic": format!("room:{topic}"), "event": "tick",
                "data": data, "from": "bench-publisher"})
            .to_string(),
            ReferenceFrame::Compact => json!([1, format!("room:{topic}"), "tick", data, "bench-publisher"]).to_string(),
            ReferenceFrame::Bare => data.to_string(),
        },
    }
}
