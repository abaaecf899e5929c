//! Supabase Realtime compatibility: the Phoenix-channels endpoint the unmodified
//! `@supabase/realtime-js` client speaks (serializers 1.0.0 and 2.0.0), and the
//! REST broadcast endpoint. See docs/SUPABASE.md.

pub mod auth;
pub mod changes;
pub mod channel;
pub mod codec;
pub mod rest;
pub mod resume;
pub mod session;

use crate::app::AppState;
use crate::transport::conn::codec_max_message;
use crate::transport::http::error::ApiError;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::sync::Arc;

pub use resume::ResumeBook;

/// Shared state of the Phoenix endpoint; added to the router as an extension.
#[derive(Clone)]
pub struct Phoenix {
    pub book: Arc<ResumeBook>,
}

impl Phoenix {
    /// Makes the endpoint's state and, inside a runtime, records the log head at
    /// startup (the resume point of clients that reconnect after a restart).
    pub fn new(state: &AppState) -> Phoenix {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Phoenix { book: Arc::new(ResumeBook::default()) };
        };
        // In a cluster a client may come back on another node: the book is shared through the store.
        let book = Arc::new(if state.broker.is_clustered() {
            let _entered = rt.enter();
            ResumeBook::shared(state.clone())
        } else {
            ResumeBook::default()
        });
        rt.spawn(session::record_startup_head(state.clone(), Arc::clone(&book)));
        Phoenix { book }
    }
}

#[derive(serde::Deserialize)]
pub struct SocketQuery {
    apikey: Option<String>,
    vsn: Option<String>,
}

/// `GET /realtime/v1/websocket` and `/socket/websocket`.
pub async fn upgrade(
    State(s): State<AppState>,
    Extension(phx): Extension<Phoenix>,
    headers: HeaderMap,
    Query(q): Query<SocketQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let vsn = match codec::Vsn::parse(q.vsn.as_deref()) {
        Ok(v) => v,
        Err(m) => return ApiError::bad_request("invalid_query", m).into_response(),
    };
    let key = q.apikey.or_else(|| headers.get("apikey").and_then(|v| v.to_str().ok()).map(str::to_string));
    let Some(key) = key else {
        return ApiError::from(crate::auth::AuthError::Missing).into_response();
    };
    let credential = match auth::identify(&s, &key).await {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let guard = match credential.tenant() {
        Some(t) => match s.hub.connect(t) {
            Ok(g) => Some(g),
            Err(e) => {
                return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", e.to_string())
                    .into_response();
            }
        },
        None => None,
    };
    let opening = session::Opening { vsn, credential, guard };
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(codec_max_message(&s.limits))
        .max_frame_size(codec_max_message(&s.limits))
        .on_upgrade(move |socket| session::run(socket, s, phx.book, opening))
}
