//! `GET /rest/v1/<table>`: the PostgREST subset that supabase-js sends for
//! `from(t).select(...).eq(...).order(...).limit(...)`, so a page that polls
//! as a fallback to Realtime keeps its code unchanged (docs/SUPABASE.md,
//! "Polling fallback: /rest/v1").
//!
//! Tables: captured application tables (`[[capture]]`, PostgreSQL) by schema
//! (`public` unless `Accept-Profile` names another), and Herald's own `jobs`,
//! `tasks`, `artifacts`, `notifications` under `public` — unless a captured
//! table of that name takes the place — and always under `herald`. Rows are
//! those the caller's live subscriptions would carry, enforced in the store's
//! WHERE clause: a filter can only narrow them. Errors are PostgREST's shape,
//! `{code, details, hint, message}`.

pub mod parse;

use crate::app::AppState;
use crate::auth::{AuthError, Principal, Role};
use crate::store::query::{ColumnKind, IsValue, Op, Refused, RowQuery, RowSource};
use crate::store::{StoreError, StoreErrorKind};
use crate::transport::phoenix::auth::{identify, Credential};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// PostgREST's error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostgrestError {
    /// `PGRST...` for PostgREST's own errors, a SQLSTATE (`42703`, `22P02`...) for the database's.
    pub code: String,
    pub details: Option<String>,
    pub hint: Option<String>,
    pub message: String,
}

/// An error answer: a status and PostgREST's body.
#[derive(Debug, Clone)]
pub struct RestError {
    pub status: StatusCode,
    pub body: PostgrestError,
}

impl RestError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> RestError {
        RestError {
            status,
            body: PostgrestError { code: code.to_string(), details: None, hint: None, message: message.into() },
        }
    }

    fn details(mut self, details: impl Into<String>) -> RestError {
        self.body.details = Some(details.into());
        self
    }

    fn hint(mut self, hint: impl Into<String>) -> RestError {
        self.body.hint = Some(hint.into());
        self
    }

    fn bad_request(code: &str, message: impl Into<String>) -> RestError {
        RestError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn no_column(table: &str, column: &str) -> RestError {
        RestError::bad_request("42703", format!("column {table}.{column} does not exist"))
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<AuthError> for RestError {
    /// PostgREST's codes: 301 a token that does not verify, 302 no credentials, 303 an expired one.
    fn from(e: AuthError) -> RestError {
        let code = match e {
            AuthError::Missing => "PGRST302",
            AuthError::Expired => "PGRST303",
            AuthError::Invalid(_) | AuthError::Revoked | AuthError::Unavailable(_) => "PGRST301",
        };
        let message = match e {
            AuthError::Missing => "no credentials: send the apikey header and Authorization: Bearer <token>".into(),
            AuthError::Expired => "JWT expired".into(),
            other => other.to_string(),
        };
        RestError::new(StatusCode::UNAUTHORIZED, code, message)
    }
}

impl From<StoreError> for RestError {
    fn from(e: StoreError) -> RestError {
        if let Some(r) = Refused::of(&e) {
            return RestError::bad_request(&r.code, r.message.clone());
        }
        match e.kind {
            StoreErrorKind::Invalid => RestError::bad_request("22023", e.to_string()),
            StoreErrorKind::Retryable | StoreErrorKind::Unavailable => {
                RestError::new(StatusCode::SERVICE_UNAVAILABLE, "PGRST001", e.to_string())
            }
            _ => {
                tracing::error!(error = %e, source = ?e.source, "store error");
                RestError::new(StatusCode::INTERNAL_SERVER_ERROR, "XX000", e.to_string())
            }
        }
    }
}

/// What supabase-js sends: `Authorization: Bearer <the user's JWT, or the
/// anon key>` and `apikey: <the anon key>` (also accepted as `?apikey=`). The
/// bearer token decides who calls; without it the apikey does. An apikey is
/// verified like any token, and one naming a tenant must name the caller's.
async fn authenticate(s: &AppState, headers: &HeaderMap, pairs: &[(String, String)]) -> Result<Credential, RestError> {
    let bearer = crate::transport::http::extract::bearer_of(headers);
    let apikey = headers
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| pairs.iter().find(|(k, _)| k == "apikey").map(|(_, v)| v.clone()));
    let key = match &apikey {
        Some(k) => Some(identify(s, k).await?),
        None => None,
    };
    let caller = match (bearer, key) {
        (Some(b), key) if Some(&b) == apikey.as_ref() => key.ok_or(AuthError::Missing)?,
        (Some(b), key) => {
            let caller = identify(s, &b).await?;
            if let (Some(k), Some(c)) = (key.as_ref().and_then(Credential::tenant), caller.tenant()) {
                if k != c {
                    return Err(RestError::new(
                        StatusCode::UNAUTHORIZED,
                        "PGRST301",
                        "the bearer token is of another tenant than the apikey",
                    ));
                }
            }
            caller
        }
        (None, Some(key)) => key,
        (None, None) => return Err(AuthError::Missing.into()),
    };
    Ok(caller)
}

/// The table a path names in a schema. Captured tables first (so an
/// application's `public.notifications` wins under `public`); Herald's own
/// under `public` and always under `herald`.
fn resolve(s: &AppState, schema: &str, name: &str) -> Result<RowSource, RestError> {
    use crate::store::query::HeraldTable;
    if schema != "herald" {
        if let Some(t) = s.catalog.get(schema, name) {
            return Ok(RowSource::Captured(std::sync::Arc::clone(t)));
        }
    }
    if schema == "public" || schema == "herald" {
        if let Some(t) = HeraldTable::parse(name) {
            return Ok(RowSource::Herald(t));
        }
    }
    let mut schemas = vec!["public".to_string(), "herald".to_string()];
    schemas.extend(s.catalog.tables().map(|t| t.schema.clone()));
    schemas.sort();
    schemas.dedup();
    if !schemas.iter().any(|s| s == schema) {
        return Err(RestError::new(
            StatusCode::NOT_ACCEPTABLE,
            "PGRST106",
            format!("The schema must be one of the following: {}", schemas.join(", ")),
        ));
    }
    Err(RestError::new(
        StatusCode::NOT_FOUND,
        "PGRST205",
        format!("Could not find the table '{schema}.{name}' in the schema cache"),
    )
    .hint("Herald serves its jobs, tasks, artifacts and notifications, and the tables of [[capture]]"))
}

/// Whose rows `p` reads of `source`, as the live topics decide: customers their
/// own jobs (and those jobs' tasks and artifacts), and of a captured table with
/// an owner column their own rows; everyone only their own notifications.
fn owner_scope(p: &Principal, source: &RowSource) -> Option<String> {
    use crate::store::query::HeraldTable;
    let customer = p.role == Role::Customer;
    let own = match source {
        RowSource::Herald(HeraldTable::Notifications) => true,
        RowSource::Herald(_) => customer,
        RowSource::Captured(t) => customer && t.owner_column.is_some(),
    };
    own.then(|| p.sub.to_string())
}

/// Checks the columns a query names and reads its values as their columns'
/// types (Herald's tables; a captured table's values are PostgreSQL's to read).
fn check(source: &RowSource, parsed: &mut parse::Parsed) -> Result<(), RestError> {
    let table = source.name().to_string();
    let named = parsed
        .select
        .iter()
        .flatten()
        .chain(parsed.order.iter().map(|o| &o.column))
        .chain(parsed.conditions.iter().map(|c| &c.column));
    for column in named {
        if !source.has_column(column) {
            return Err(RestError::no_column(&table, column));
        }
    }
    let RowSource::Herald(t) = source else { return Ok(()) };
    for o in &parsed.order {
        if t.column(&o.column) == Some(ColumnKind::Json) {
            return Err(RestError::bad_request(
                "PGRST100",
                format!("ordering by {table}.{} (a JSON column) is not supported", o.column),
            ));
        }
    }
    for c in &mut parsed.conditions {
        let kind = t.column(&c.column).unwrap_or(ColumnKind::Text);
        match c.op {
            Op::Is(IsValue::True | IsValue::False | IsValue::Unknown) if kind != ColumnKind::Bool => {
                return Err(RestError::bad_request(
                    "42804",
                    format!("argument of IS TRUE/FALSE/UNKNOWN must be type boolean, not type {}", kind.pg_name()),
                )
                .details(format!("{table}.{}", c.column)));
            }
            Op::Is(_) => {}
            _ if kind == ColumnKind::Json => {
                return Err(RestError::bad_request(
                    "PGRST100",
                    format!(
                        "{table}.{} is a JSON column: Herald filters it with is.null and is.not_null only",
                        c.column
                    ),
                ));
            }
            _ => {
                for v in &mut c.values {
                    *v = kind.normalize(v).map_err(|r| {
                        RestError::bad_request(&r.code, r.message).details(format!("{table}.{}", c.column))
                    })?;
                }
            }
        }
    }
    Ok(())
}

/// The chosen columns of each row, in the order asked.
fn project(rows: Vec<Value>, select: &Option<Vec<String>>) -> Vec<Value> {
    let Some(columns) = select else { return rows };
    rows.into_iter()
        .map(|row| {
            let mut out = Map::with_capacity(columns.len());
            if let Value::Object(mut row) = row {
                for c in columns {
                    out.insert(c.clone(), row.remove(c).unwrap_or(Value::Null));
                }
            }
            Value::Object(out)
        })
        .collect()
}

/// Whether the client asked for one object (supabase-js `.single()`).
fn wants_object(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/vnd.pgrst.object+json"))
}

#[utoipa::path(get, path = "/rest/v1/{table}",
    summary = "Read a table (PostgREST dialect)", tag = "supabase",
    description = "Rows of a table, as PostgREST answers supabase-js's `from(table).select(...)` \
        (docs/SUPABASE.md, \"Polling fallback: /rest/v1\"): Herald's `jobs`, `tasks`, `artifacts`, \
        `notifications` and the captured tables, only the rows the caller may see. Every other query \
        parameter is a filter `<column>=<op>.<value>` with op `eq`, `neq`, `gt`, `gte`, `lt`, `lte`, \
        `in.(a,b)` or `is.null|not_null|true|false|unknown`; all must hold. supabase-js also sends \
        `apikey: <anon key>` (a header, or `?apikey=`), verified like any token: without a bearer \
        token it is the credential.",
    params(
        ("table" = String, Path, example = "jobs",
            description = "Table name, in the schema of `Accept-Profile` (default `public`)"),
        ("select" = Option<String>, Query, description = "`*` (default) or a comma list of columns"),
        ("order" = Option<String>, Query, description = "`<column>.asc|desc[.nullsfirst|.nullslast]`, comma-separated"),
        ("limit" = Option<u32>, Query, description = "At most 1000 rows (the default)"),
        ("offset" = Option<u32>, Query, description = "Rows to skip"),
        ("Accept-Profile" = Option<String>, Header,
            description = "Schema: `public` (default), `herald`, or a captured table's"),
    ),
    responses(
        (status = 200, description = "The rows (`Content-Range: <first>-<last>/*`)", body = [Object]),
        (status = 400, description = "`PGRST100`: an operator, parameter or syntax Herald does not serve; \
            `42703`: no such column; `22P02`/`22007`: a value not of the column's type", body = PostgrestError),
        (status = 401, description = "No credentials (`PGRST302`), a bad or expired token (`PGRST301`, `PGRST303`), \
            or the anon role (`42501`)", body = PostgrestError),
        (status = 404, description = "`PGRST205`: no such table", body = PostgrestError),
        (status = 406, description = "`PGRST106`: no such schema; `PGRST116`: one object asked for, not one row found",
            body = PostgrestError),
    ),
    security(("bearer" = [])))]
pub async fn read_table(
    State(s): State<AppState>,
    Path(table): Path<String>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, RestError> {
    let pairs = match query {
        Ok(Query(pairs)) => pairs,
        Err(e) => return Err(RestError::bad_request("PGRST100", format!("failed to parse the query string: {e}"))),
    };
    let caller = authenticate(&s, &headers, &pairs).await?;
    let schema = match headers.get("accept-profile") {
        None => "public",
        Some(v) => v
            .to_str()
            .map_err(|_| RestError::new(StatusCode::NOT_ACCEPTABLE, "PGRST106", "Accept-Profile: not a schema name"))?,
    };
    let source = resolve(&s, schema, &table)?;
    let Credential::User(p) = caller else {
        return Err(RestError::new(
            StatusCode::UNAUTHORIZED,
            "42501",
            format!("permission denied for table {}", source.name()),
        )
        .hint("the anon key reads no rows: sign in and send the user's token as Authorization: Bearer"));
    };
    let mut parsed =
        parse::parse(&pairs).map_err(|e| RestError::bad_request("PGRST100", e.message).details(e.details))?;
    check(&source, &mut parsed)?;
    let owner = owner_scope(&p, &source);
    let query = RowQuery {
        source,
        tenant: p.tenant.to_string(),
        owner,
        conditions: parsed.conditions,
        order: parsed.order,
        limit: parsed.limit,
        offset: parsed.offset,
    };
    let rows = project(s.store.query_rows(&query).await?, &parsed.select);
    let range = match rows.len() {
        0 => "*/*".to_string(),
        n => format!("{}-{}/*", query.offset, query.offset + n - 1),
    };
    let body = if wants_object(&headers) {
        if rows.len() != 1 {
            return Err(RestError::new(
                StatusCode::NOT_ACCEPTABLE,
                "PGRST116",
                "JSON object requested, multiple (or no) rows returned",
            )
            .details(format!("The result contains {} rows", rows.len())));
        }
        axum::Json(rows.into_iter().next().unwrap_or_default()).into_response()
    } else {
        axum::Json(rows).into_response()
    };
    let mut resp = body;
    if let Ok(v) = HeaderValue::from_str(&range) {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}
