//! Opening client WebSockets from several loopback source addresses, so one
//! machine can hold more connections than one address has ephemeral ports.

use anyhow::{anyhow, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// `http://127.0.0.1:4000` → `127.0.0.1:4000` and `ws://127.0.0.1:4000`.
pub fn server_addr(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or_else(|| anyhow!("--url must be http://host:port"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr =
        hostport.parse().with_context(|| format!("--url host must be an ip:port, got {hostport}"))?;
    Ok((addr, format!("ws://{hostport}")))
}

/// The source address of the `i`-th connection: 127.0.0.2, .3, ... round-robin.
pub fn source_for(i: usize, sources: u8) -> IpAddr {
    let n = sources.max(1) as usize;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % n) as u8))
}

/// Small buffers: the load tool holds up to 100k sockets in one process.
fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(0)
}

/// Connects `ws_base + path` from `source`, with optional extra headers.
pub async fn connect(addr: SocketAddr, ws_base: &str, path: &str, source: IpAddr) -> anyhow::Result<Ws> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(source, 0)).with_context(|| format!("bind {source}"))?;
    let stream = sock.connect(addr).await.with_context(|| format!("connect {addr} from {source}"))?;
    stream.set_nodelay(true)?;
    let req = format!("{ws_base}{path}").into_client_request()?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config()))
        .await
        .with_context(|| format!("websocket handshake {path}"))?;
    Ok(ws)
}
