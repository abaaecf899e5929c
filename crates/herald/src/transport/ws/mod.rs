//! Herald's native WebSocket protocol at `/v1/ws` (docs/PROTOCOL.md).

pub mod frames;
pub mod session;

use crate::app::AppState;
use crate::transport::conn::codec_max_message;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;

/// The subprotocol name; a client may also offer `bearer.<token>` to authenticate.
pub const SUBPROTOCOL: &str = "herald.v1";
/// The same protocol with compact frames (`frames::Encoding::Compact`); chosen
/// over `herald.v1` when a client offers both.
pub const SUBPROTOCOL_COMPACT: &str = "herald.v1c";

#[derive(serde::Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    /// `compact`: compact frames, for clients that cannot offer subprotocols.
    encoding: Option<String>,
}

pub async fn upgrade(
    State(s): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<WsQuery>,
    mut ws: WebSocketUpgrade,
) -> Response {
    let mut token = q.token;
    let mut offered = (false, false);
    if let Some(protocols) = headers.get("sec-websocket-protocol").and_then(|v| v.to_str().ok()) {
        for proto in protocols.split(',').map(str::trim) {
            if proto == SUBPROTOCOL {
                offered.0 = true;
            } else if proto == SUBPROTOCOL_COMPACT {
                offered.1 = true;
            } else if let Some(t) = proto.strip_prefix("bearer.") {
                token = Some(t.to_string());
            }
        }
    }
    let mut encoding = match q.encoding.as_deref() {
        Some("compact") => frames::Encoding::Compact,
        _ => frames::Encoding::Json,
    };
    if offered.1 {
        ws.set_selected_protocol(HeaderValue::from_static(SUBPROTOCOL_COMPACT));
        encoding = frames::Encoding::Compact;
    } else if offered.0 {
        ws.set_selected_protocol(HeaderValue::from_static(SUBPROTOCOL));
    }
    let initial = match token {
        Some(t) => Some(s.auth.authenticate(&t).await),
        None => None,
    };
    // Small buffers: most connections are idle watchers, and tungstenite's
    // 128 KiB default read buffer would dominate their memory.
    ws.read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(codec_max_message(&s.limits))
        .max_frame_size(codec_max_message(&s.limits))
        .on_upgrade(move |socket| session::run(socket, s, initial, encoding))
}
