//! CORS for pages on other origins (`--cors-origins`): preflights answered for
//! every route, the API's headers allowed, the ones a client reads exposed.
//! WebSockets need none of it (browsers send no preflight for them).

use crate::config::Cors;
use axum::http::{header, HeaderName, HeaderValue, Method};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The layer for `cors`, or `None` when it is off.
pub fn layer(cors: &Cors) -> Option<CorsLayer> {
    let origins = match cors {
        Cors::Off => return None,
        Cors::Any => AllowOrigin::any(),
        // Checked at startup: every entry is a valid header value.
        Cors::Origins(list) => AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
                // supabase-js: its key, its client header, PostgREST's.
                HeaderName::from_static("apikey"),
                HeaderName::from_static("x-client-info"),
                HeaderName::from_static("prefer"),
                HeaderName::from_static("accept-profile"),
                HeaderName::from_static("range"),
            ])
            .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE, header::CONTENT_RANGE])
            // Browsers cap this anyway (Chromium at 2 h).
            .max_age(Duration::from_secs(3600)),
    )
}
