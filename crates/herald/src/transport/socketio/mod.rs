//! Socket.IO v4 at `/socket.io/`: what `socket.io-client` speaks, over
//! Engine.IO v4 (WebSocket and HTTP long-polling, with upgrade). engineioxide
//! runs Engine.IO; the Socket.IO layer is Herald's own, because what matters
//! here is Herald's: the hub's shared frames, the session core's
//! authorization and limits, and recovery backed by the log (see
//! docs/SOCKETIO.md for why socketioxide's layer could not give those).

pub mod events;
pub mod packet;
pub mod recovery;
pub mod session;

use crate::app::AppState;
use bytes::Bytes;
use engineioxide::config::EngineIoConfig;
use engineioxide::handler::EngineIoHandler;
use engineioxide::service::EngineIoService;
use engineioxide::{DisconnectReason, Str};
use session::{EioSocket, SocketData};
use std::sync::Arc;
use std::time::Duration;

/// The path `socket.io-client` asks for by default.
pub const PATH: &str = "/socket.io/";

/// Packets an Engine.IO socket may buffer for its client (a polling client
/// empties the buffer at each request).
const ENGINE_BUFFER: usize = 1024;

/// Engine.IO's events, handed to each connection's task.
pub struct Handler {
    s: AppState,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("socketio::Handler")
    }
}

impl EngineIoHandler for Handler {
    type Data = SocketData;

    fn on_connect(self: Arc<Self>, socket: Arc<EioSocket>) {
        metrics::counter!("herald_socketio_connections_total", "transport" => format!("{:?}", socket.transport_type()))
            .increment(1);
        session::start(self.s.clone(), socket);
    }

    fn on_disconnect(&self, _socket: Arc<EioSocket>, _reason: DisconnectReason) {
        // The connection's task sees the socket close and gives everything back.
    }

    fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<EioSocket>) {
        if let Err(why) = socket.data.forward(&socket, msg) {
            tracing::debug!(why = why.name(), "closing a Socket.IO connection that cannot take a packet");
            if why != session::Refused::Ended {
                metrics::counter!("herald_socketio_closes_total", "reason" => why.name()).increment(1);
            }
            socket.close(DisconnectReason::PacketParsingError);
        }
    }

    fn on_binary(self: &Arc<Self>, _data: Bytes, socket: Arc<EioSocket>) {
        // Attachments of a binary packet, which was already refused.
        let _ = socket;
    }
}

/// The Engine.IO service for the router, configured from Herald's limits.
pub fn service(s: &AppState) -> EngineIoService<Handler> {
    let l = &s.limits;
    // Engine.IO's ping timeout is the wait for a pong after a ping; Herald's
    // heartbeat timeout is the whole silence allowed.
    let ping_timeout = l.heartbeat_timeout.saturating_sub(l.heartbeat_interval).max(Duration::from_secs(1));
    // A Socket.IO message is an Engine.IO packet type byte more than its text.
    let max = l.ws_max_message + 16;
    let config = EngineIoConfig::builder()
        .req_path(PATH.trim_end_matches('/'))
        .ping_interval(l.heartbeat_interval)
        .ping_timeout(ping_timeout)
        .max_payload(max as u64)
        .ws_max_message_size(max)
        .ws_max_frame_size(max)
        .max_buffer_size(ENGINE_BUFFER)
        // Client messages are small; as on the native endpoint, an idle
        // connection should not hold a large read buffer.
        .ws_read_buffer_size(1024)
        .build();
    EngineIoService::with_config(Arc::new(Handler { s: s.clone() }), config)
}
