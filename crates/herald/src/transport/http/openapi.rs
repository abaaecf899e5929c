//! The OpenAPI document, generated from the handlers' annotations.

use super::{broadcast, error, events, inspect, jobs, keys, notifications, ops, streams};
use crate::transport::dashboard;
use crate::transport::phoenix;
use crate::transport::postgrest;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Herald", description = "Workers report progress; Herald stores it and pushes every change live. \
        WebSocket (/v1/ws) and SSE (/v1/sse) are described in docs/PROTOCOL.md."),
    paths(
        jobs::create_job, jobs::report_progress, jobs::cancel_job, jobs::upsert_task, jobs::add_artifact,
        jobs::list_jobs, jobs::get_job, jobs::list_tasks, jobs::list_artifacts,
        streams::append, streams::list, streams::read, streams::follow,
        events::poll_events,
        notifications::create, notifications::list, notifications::read_one, notifications::read_all,
        broadcast::broadcast,
        ops::healthz, ops::readyz, ops::metrics, ops::stats,
        keys::list, keys::create, keys::revoke, keys::rotate, inspect::inspect,
        dashboard::demo_tokens,
        serve, websocket, sse, sse_jobs,
        phoenix::rest::broadcast, phoenix::rest::broadcast_alias, phoenix_socket, phoenix_socket_alias,
        postgrest::read_table,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, postgrest::PostgrestError)),
    modifiers(&BearerAuth, &CommonErrors)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT or hk_ API key").build(),
            ),
        );
    }
}

/// The refusals every operation of a kind can answer (docs/API.md, "Errors"),
/// added where an operation's own annotation does not already list them:
/// 401 where it takes a bearer token; 400 where it reads path ids (`invalid_id`),
/// query parameters (`invalid_query`) or headers (`invalid_header`); and 400,
/// 413, 415 and 422 where it reads a JSON body.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for op in ops.into_iter().flatten() {
                let mut add: Vec<(&str, &str)> = Vec::new();
                let params = op.parameters.as_deref().unwrap_or_default();
                let reads = |at: ParameterIn| params.iter().any(|p| p.parameter_in == at);
                if op.request_body.is_some() {
                    add.push(("400", "`invalid_json`, `invalid_body`, or a malformed parameter"));
                    add.push(("413", "`payload_too_large`: the body is over `--body-limit`"));
                    add.push(("415", "`unsupported_media_type`: the body is not `application/json`"));
                    add.push(("422", "`invalid_field`: a field is unknown, of the wrong type or out of range"));
                }
                if reads(ParameterIn::Path) || reads(ParameterIn::Query) || reads(ParameterIn::Header) {
                    add.push(("400", "`invalid_id`, `invalid_query` or `invalid_header`: a parameter is malformed"));
                }
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    add.push(("401", "`unauthorized`, `invalid_token`, `token_expired` or `key_revoked`"));
                }
                for (status, description) in add {
                    op.responses.responses.entry(status.to_string()).or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

#[utoipa::path(get, path = "/v1/openapi.json",
    summary = "This OpenAPI document",
    description = "The HTTP API as OpenAPI 3.1, generated from the server's handlers; rendered for people at `/docs`.", tag = "operations",
    responses((status = 200, description = "This document")))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// `GET /v1/ws`, for the document only: the handler is an upgrade, not a JSON operation.
#[utoipa::path(get, path = "/v1/ws", tag = "streaming",
    description = "Native WebSocket protocol (docs/PROTOCOL.md). Authenticate with an `auth` frame, \
        `?token=`, or `Sec-WebSocket-Protocol: herald.v1, bearer.<token>`.",
    params(("token" = Option<String>, Query, description = "Bearer token, for clients that cannot set headers")),
    responses((status = 101, description = "Switching to the native WebSocket protocol"),
        (status = 401, body = error::ErrorBody)))]
#[allow(dead_code)]
fn websocket() {}

/// `GET /v1/sse`, for the document only: the handler streams `text/event-stream`.
#[utoipa::path(get, path = "/v1/sse", tag = "streaming",
    description = "Server-Sent Events for one or more topics, resumed by `Last-Event-ID` or `since`.",
    params(("topic" = String, Query, description = "One topic, or several separated by commas"),
        ("since" = Option<u64>, Query, description = "Resume after this position (`Last-Event-ID` wins)"),
        ("token" = Option<String>, Query, description = "Bearer token, for `EventSource`"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this position")),
    responses((status = 200, description = "`text/event-stream` of events"), (status = 400, body = error::ErrorBody),
        (status = 401, body = error::ErrorBody), (status = 403, body = error::ErrorBody)))]
#[allow(dead_code)]
fn sse() {}

/// `GET /v1/sse/jobs`, for the document only: a live job list as `text/event-stream`.
#[utoipa::path(get, path = "/v1/sse/jobs", tag = "streaming",
    summary = "Follow a live, filtered list of jobs (SSE)",
    description = "A `snapshot` of the jobs matching the query, then a `change` (`enter`, `update`, `leave`) \
        each time a job moves into, within or out of it (docs/PROTOCOL.md, live job lists). A reconnect \
        gets a fresh snapshot. Customers list their own jobs only.",
    params(("status" = Option<String>, Query, description = "Statuses separated by commas", example = "running,stalled"),
        ("kind" = Option<String>, Query, description = "The jobs' kind", example = "crawl"),
        ("owner" = Option<String>, Query, description = "The jobs' owner (customers: themselves)"),
        ("tag" = Option<String>, Query, description = "Metadata `key:value` pairs separated by commas", example = "env:prod"),
        ("updated_within" = Option<u64>, Query, description = "Seconds: jobs updated at most this long ago (1–2678400)"),
        ("token" = Option<String>, Query, description = "Bearer token, for `EventSource`")),
    responses((status = 200, description = "`text/event-stream`: `snapshot`, then `change` messages"),
        (status = 400, body = error::ErrorBody, description = "`invalid_query` or `list_too_large`"),
        (status = 401, body = error::ErrorBody), (status = 403, body = error::ErrorBody),
        (status = 429, body = error::ErrorBody)))]
#[allow(dead_code)]
fn sse_jobs() {}

/// `GET /realtime/v1/websocket`, for the document only: a Phoenix-channels upgrade.
#[utoipa::path(get, path = "/realtime/v1/websocket", tag = "supabase",
    description = "Supabase Realtime (Phoenix channels, serializers 1.0.0 and 2.0.0) for the unmodified \
        `@supabase/realtime-js` client (docs/SUPABASE.md).",
    params(("apikey" = String, Query, description = "A token (JWT, anon key or API key); or the `apikey` header"),
        ("vsn" = Option<String>, Query, description = "`1.0.0` (default) or `2.0.0`")),
    responses((status = 101, description = "Switching to Phoenix channels"), (status = 401, body = error::ErrorBody)))]
#[allow(dead_code)]
fn phoenix_socket() {}

/// `GET /socket/websocket`: the same endpoint at a bare Realtime server's path.
#[utoipa::path(get, path = "/socket/websocket",
    description = "The same as `/realtime/v1/websocket`, at the path self-hosted Supabase Realtime serves it.", tag = "supabase",
    params(("apikey" = String, Query, description = "A token; or the `apikey` header"),
        ("vsn" = Option<String>, Query, description = "`1.0.0` (default) or `2.0.0`")),
    responses((status = 101, description = "Switching to Phoenix channels"), (status = 401, body = error::ErrorBody)))]
#[allow(dead_code)]
fn phoenix_socket_alias() {}
