//! `GET /v1/admin/inspect`: what the dashboard's inspector shows of one tenant
//! on this node — live connections by transport with their topics and how far
//! behind each is, topics and their subscribers, presence per room, and why
//! recent connections ended. Counters are totals: the page turns them into
//! rates between two reads.

use super::error::{ApiError, ErrorBody};
use super::extract::Auth;
use crate::app::AppState;
use crate::auth::Role;
use crate::hub::registry::{Closed, DeliveryCounts, Refused};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use utoipa::ToSchema;

/// Most connections and topics listed (the busiest first); totals count them all.
const MAX_LISTED: usize = 500;
/// Recent closes listed.
const CLOSES: usize = 50;

#[derive(Serialize, ToSchema)]
pub struct Inspection {
    /// Newest position in the event log.
    pub head: u64,
    /// Nodes in the cluster (1 without one); everything below is this node's.
    pub nodes: usize,
    pub totals: InspectTotals,
    /// Live connections, the furthest behind first.
    pub connections: Vec<InspectConnection>,
    /// Topics with subscribers, the most subscribed first.
    pub topics: Vec<InspectTopic>,
    /// Rooms with anyone present (on any node), with who.
    pub presence: Vec<InspectRoom>,
    /// Connections that ended, newest first.
    pub closes: Vec<Closed>,
    /// Errors live connections were sent (refused subscriptions, bad frames), newest first.
    pub errors: Vec<Refused>,
}

#[derive(Serialize, ToSchema)]
pub struct InspectTotals {
    pub connections: usize,
    /// Connections per transport: `websocket`, `phoenix`, `socketio`, `sse`, `longpoll`.
    pub by_transport: BTreeMap<&'static str, usize>,
    pub subscriptions: usize,
    /// Deliveries queued to this tenant's live connections since they connected.
    pub queued: u64,
    /// Of those, taken off the queues to be sent.
    pub sent: u64,
    /// Waiting in queues now.
    pub waiting: u64,
    /// Progress ticks superseded while their connection was behind.
    pub conflated: u64,
    /// Resume hits and misses and slow consumers cut off, since this node started.
    pub delivery: DeliveryCounts,
}

#[derive(Serialize, ToSchema)]
pub struct InspectConnection {
    pub id: u64,
    pub transport: &'static str,
    pub sub: String,
    pub role: &'static str,
    /// RFC 3339.
    pub connected_at: String,
    /// Hub topics it receives.
    pub topics: usize,
    /// Deliveries waiting in its queue.
    pub waiting: u64,
    /// Log positions between the newest event queued for it and the newest it took.
    pub lag: u64,
    pub queued: u64,
    pub sent: u64,
    /// Progress ticks superseded by newer ones while it was behind.
    pub conflated: u64,
}

#[derive(Serialize, ToSchema)]
pub struct InspectTopic {
    pub topic: String,
    pub subscribers: usize,
}

#[derive(Serialize, ToSchema)]
pub struct InspectRoom {
    pub room: String,
    /// Presence keys (the verified `sub` of each member) and how many connections each has there.
    pub members: BTreeMap<String, usize>,
}

#[utoipa::path(get, path = "/v1/admin/inspect", tag = "admin",
    summary = "Inspect live connections",
    description = "The caller's tenant as this node sees it now: connections by transport (who, since when, topics, queue and lag), topics and their subscriber counts, presence per room, and the last 50 connections that ended with their close reason, and the last 50 errors live connections were sent. Counters are totals since each connection opened; read twice for rates. Admin and staff only.",
    responses((status = 200, body = Inspection), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn inspect(State(s): State<AppState>, Auth(p): Auth) -> Result<Response, ApiError> {
    if !matches!(p.role, Role::Admin | Role::Staff) {
        return Err(ApiError::forbidden("the inspector is for admin and staff roles"));
    }
    let head = s.store.head().await?.get();
    let (conns, closes) = s.hub.registry.of_tenant(&p.tenant, CLOSES);
    let mut totals = InspectTotals {
        connections: conns.len(),
        by_transport: BTreeMap::new(),
        subscriptions: 0,
        queued: 0,
        sent: 0,
        waiting: 0,
        conflated: 0,
        delivery: s.hub.registry.counts_of(&p.tenant),
    };
    let mut connections: Vec<InspectConnection> = conns
        .into_iter()
        .map(|(id, c)| {
            let st = &c.stats;
            let row = InspectConnection {
                id,
                transport: c.transport,
                sub: c.sub.to_string(),
                role: c.role,
                connected_at: crate::model::time::format_ms(c.connected_at),
                topics: st.topics.load(Ordering::Relaxed),
                waiting: st.waiting(),
                lag: st.lag(),
                queued: st.queued.load(Ordering::Relaxed),
                sent: st.taken.load(Ordering::Relaxed),
                conflated: st.conflated.load(Ordering::Relaxed),
            };
            *totals.by_transport.entry(c.transport).or_default() += 1;
            totals.subscriptions += row.topics;
            totals.queued += row.queued;
            totals.sent += row.sent;
            totals.waiting += row.waiting;
            totals.conflated += row.conflated;
            row
        })
        .collect();
    connections.sort_by(|a, b| (b.lag, b.waiting, a.id).cmp(&(a.lag, a.waiting, b.id)));
    connections.truncate(MAX_LISTED);
    let mut topics: Vec<InspectTopic> = s
        .hub
        .topic_counts(&p.tenant)
        .into_iter()
        .map(|(topic, subscribers)| InspectTopic { topic: topic.to_string(), subscribers })
        .collect();
    topics.sort_by(|a, b| b.subscribers.cmp(&a.subscribers).then_with(|| a.topic.cmp(&b.topic)));
    topics.truncate(MAX_LISTED);
    let presence = s
        .hub
        .presence
        .tenant_rooms(&p.tenant)
        .into_iter()
        .take(MAX_LISTED)
        .map(|room| {
            let state = s.hub.presence.state(&p.tenant, &room);
            let members = state
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v["metas"].as_array().map_or(0, Vec::len))).collect())
                .unwrap_or_default();
            InspectRoom { room, members }
        })
        .collect();
    let (_, nodes) = s.hub.cluster_counts(&p.tenant);
    let errors = s.hub.registry.errors_of(&p.tenant, CLOSES);
    let body = Inspection { head, nodes, totals, connections, topics, presence, closes, errors };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}
