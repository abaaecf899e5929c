//! The wire between nodes: one Redis pub/sub channel, or one NATS subject,
//! that every node of a cluster publishes to and listens on. Messages are
//! opaque bytes here (`cluster.rs` gives them meaning) and travel at most
//! once: what an outage of the broker loses, `cluster.rs` repairs (presence
//! snapshots on reconnect) or never needed (events travel through the log).

use super::BrokerUrl;
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;

/// Wait between attempts to reach the broker.
const RETRY: Duration = Duration::from_secs(1);
/// Messages waiting to be sent; past it new ones are dropped (and counted).
pub const OUTBOX: usize = 4096;

/// What the bus hands to the cluster.
#[derive(Debug)]
pub enum Incoming {
    /// (Re)connected and listening: anything may have been missed before.
    Connected,
    Message(Bytes),
}

/// Starts the bus: returns the sender of outgoing messages and the receiver
/// of incoming ones (this node's own included). Runs until both are dropped.
pub fn start(url: &BrokerUrl, channel: &str) -> Result<(mpsc::Sender<Bytes>, mpsc::Receiver<Incoming>), String> {
    let (out_tx, out_rx) = mpsc::channel(OUTBOX);
    let (in_tx, in_rx) = mpsc::channel(OUTBOX);
    match url {
        BrokerUrl::Redis(u) => {
            let client = redis::Client::open(u.as_str()).map_err(|e| format!("{url}: {e}"))?;
            tokio::spawn(redis_writer(client.clone(), channel.to_string(), out_rx, url.to_string()));
            tokio::spawn(redis_reader(client, channel.to_string(), in_tx, url.to_string()));
        }
        BrokerUrl::Nats(u) => {
            u.parse::<async_nats::ServerAddr>().map_err(|e| format!("{url}: {e}"))?;
            tokio::spawn(nats(u.clone(), channel.to_string(), out_rx, in_tx, url.to_string()));
        }
    }
    Ok((out_tx, in_rx))
}

async fn redis_writer(client: redis::Client, channel: String, mut rx: mpsc::Receiver<Bytes>, shown: String) {
    let mut warned = false;
    loop {
        let mut conn = match client.get_multiplexed_async_connection().await {
            Ok(c) => c,
            Err(e) => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(broker = %shown, error = %e, "cannot reach the cluster broker; retrying every second");
                }
                if rx.is_closed() {
                    return;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        warned = false;
        loop {
            let Some(msg) = rx.recv().await else { return };
            let sent: redis::RedisResult<i64> =
                redis::cmd("PUBLISH").arg(&channel).arg(&msg[..]).query_async(&mut conn).await;
            if let Err(e) = sent {
                metrics::counter!("herald_cluster_dropped_total").increment(1);
                tracing::warn!(broker = %shown, error = %e, "publishing to the cluster broker failed; reconnecting");
                break;
            }
        }
    }
}

async fn redis_reader(client: redis::Client, channel: String, tx: mpsc::Sender<Incoming>, shown: String) {
    let mut warned = false;
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    warned = false;
                    if tx.send(Incoming::Connected).await.is_err() {
                        return;
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let bytes = Bytes::copy_from_slice(msg.get_payload_bytes());
                        if tx.send(Incoming::Message(bytes)).await.is_err() {
                            return;
                        }
                    }
                    tracing::warn!(broker = %shown, "lost the cluster broker's subscription; reconnecting");
                }
                Err(e) => tracing::warn!(broker = %shown, error = %e, "subscribing on the cluster broker failed"),
            },
            Err(e) => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(broker = %shown, error = %e, "cannot reach the cluster broker; retrying every second");
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// NATS: the client reconnects by itself (and resubscribes); each
/// (re)connection is reported so the cluster resynchronizes.
async fn nats(url: String, subject: String, mut rx: mpsc::Receiver<Bytes>, tx: mpsc::Sender<Incoming>, shown: String) {
    let events = tx.clone();
    let logged = shown.clone();
    let options = async_nats::ConnectOptions::new().retry_on_initial_connect().max_reconnects(None).event_callback(
        move |event| {
            let (events, logged) = (events.clone(), logged.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        let _ = events.send(Incoming::Connected).await;
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(broker = %logged, "lost the cluster broker; reconnecting");
                    }
                    _ => {}
                }
            }
        },
    );
    let client = match options.connect(url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(broker = %shown, error = %e, "the cluster broker's client could not start");
            return;
        }
    };
    let mut sub = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(broker = %shown, error = %e, "subscribing on the cluster broker failed");
            return;
        }
    };
    let publisher = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if let Err(e) = publisher.publish(subject.clone(), msg).await {
                metrics::counter!("herald_cluster_dropped_total").increment(1);
                tracing::debug!(error = %e, "publishing to the cluster broker failed");
            }
        }
    });
    while let Some(m) = sub.next().await {
        if tx.send(Incoming::Message(m.payload)).await.is_err() {
            return;
        }
    }
}
