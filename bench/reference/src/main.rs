//! The reference for Herald's fan-out target: no protocol, no auth, no
//! routing — every text frame a client sends is written, as the same shared
//! bytes, to every other connected socket. `herald-bench --target reference`
//! drives it. Usage: `herald-reference [LISTEN_ADDR]` (default 127.0.0.1:4100).

use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// A frame and the connection that sent it (which does not get it back).
type Frame = (u64, Utf8Bytes);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4100".to_string());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("reference fan-out server on {addr}");
    let (tx, _) = broadcast::channel::<Frame>(16 * 1024);
    let ids = Arc::new(AtomicU64::new(1));
    loop {
        let (stream, _) = listener.accept().await?;
        let (tx, id) = (tx.clone(), ids.fetch_add(1, Ordering::Relaxed));
        tokio::spawn(async move {
            let _ = serve(stream, tx, id).await;
        });
    }
}

async fn serve(stream: TcpStream, tx: broadcast::Sender<Frame>, id: u64) -> Result<(), Box<dyn std::error::Error>> {
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(16 * 1024);
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let mut rx = tx.subscribe();
    let (mut sink, mut source) = ws.split();
    sink.send(Message::text("ready")).await?;
    loop {
        tokio::select! {
            incoming = source.next() => match incoming {
                Some(Ok(Message::Text(t))) => { let _ = tx.send((id, t)); }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
            frame = rx.recv() => match frame {
                Ok((from, bytes)) => {
                    if from != id {
                        sink.feed(Message::Text(bytes)).await?;
                    }
                    // Write everything already queued, then flush once.
                    while let Ok((from, bytes)) = rx.try_recv() {
                        if from != id {
                            sink.feed(Message::Text(bytes)).await?;
                        }
                    }
                    sink.flush().await?;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}
