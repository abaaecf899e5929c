//! The edge: HTTP API, WebSocket, SSE, long-poll, Supabase Realtime (Phoenix) and
//! PostgREST reads. Thin adapters from wire formats to the store and hub.

pub mod conn;
pub mod dashboard;
pub mod http;
pub mod listener;
pub mod phoenix;
pub mod postgrest;
pub mod socketio;
pub mod sse;
pub mod sse_jobs;
pub mod ws;
