//! Request extractors whose rejections use the API's error shape and name the
//! offending field.

use super::error::ApiError;
use crate::app::AppState;
use crate::auth::Principal;
use crate::rules::IdempotencyKey;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, StatusCode};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// The verified caller, from `Authorization: Bearer <JWT or API key>`.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(crate::auth::AuthError::Missing)?;
        Ok(Auth(state.auth.authenticate(&token).await?))
    }
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<String> {
    bearer_of(&parts.headers)
}

/// The bearer token of `Authorization` in these headers, if any.
pub fn bearer_of(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

/// A request's body within the size limit.
async fn body_bytes(req: Request, state: &AppState) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("body is larger than the limit of {} bytes", state.limits.body_limit),
            )
        } else {
            ApiError::bad_request("invalid_body", e.body_text())
        }
    })
}

/// An optional JSON body: none, an empty one or `null` is `T::default()`;
/// anything else is read as [`JsonBody`] reads it (content type, size, shape).
/// Returns the value and the digest for the idempotency fingerprint.
pub async fn optional_json_body<T: DeserializeOwned + Default>(
    s: &AppState,
    req: Request,
) -> Result<(T, String), ApiError> {
    let headers = req.headers().clone();
    let bytes = body_bytes(req, s).await?;
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
        return Ok((T::default(), String::new()));
    }
    let mut req = Request::new(axum::body::Body::from(bytes));
    *req.headers_mut() = headers;
    let b = JsonBody::<T>::from_request(req, s).await?;
    Ok((b.value, b.digest))
}

/// A JSON body: must be `application/json`, within the size limit, well-formed,
/// and of the right shape; errors name the field. Keeps a digest of the raw
/// bytes for idempotency fingerprints.
pub struct JsonBody<T> {
    pub value: T,
    pub digest: String,
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let mime = v.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            ));
        }
        let bytes = body_bytes(req, state).await?;
        // Every body is an object; serde would otherwise read a struct from an array.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') && check_json(&bytes).is_ok() {
            return Err(ApiError::invalid_field("body", "must be a JSON object"));
        }
        let value = parse_json(&bytes)?;
        Ok(JsonBody { value, digest: hex(&Sha256::digest(&bytes)) })
    }
}

/// Deepest nesting of objects and arrays a JSON body may have; the body's own
/// object is level 1. Deeper documents are refused at ingest: stored, they
/// could not be read back by parsers with a recursion limit (serde_json's is
/// 128 levels, and the event that wraps a job adds a few).
pub const MAX_JSON_DEPTH: usize = 32;

/// Parses JSON, telling malformed JSON (400 `invalid_json`) from well-formed
/// JSON of the wrong shape (422 `invalid_field`, naming the field's path), and
/// refusing documents nested deeper than [`MAX_JSON_DEPTH`] (422 `json_too_deep`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Some(at) = too_deep(bytes, MAX_JSON_DEPTH) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "json_too_deep",
            format!(
                "objects and arrays nest more than {MAX_JSON_DEPTH} levels deep (at byte {at}); \
                 the limit is {MAX_JSON_DEPTH} levels, counting the body itself"
            ),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        // A shape error may be met before a syntax error further on, and serde_json
        // reports some type mismatches (a number where an enum goes) as syntax
        // errors: which one it is depends on the whole document.
        if let Err(syntax) = check_json(bytes) {
            return syntax;
        }
        let path = e.path().to_string();
        let field = if path == "." { "body".to_string() } else { path };
        ApiError::invalid_field(&field, e.into_inner())
    })?;
    // Anything after the value (`{}}`, `{} {}`) is malformed too, not ignored.
    de.end().map_err(|e| ApiError::bad_request("invalid_json", format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Where JSON text first nests objects and arrays deeper than `max`, if it
/// does: one pass over the bytes counting brackets outside strings, before
/// anything is parsed or allocated.
pub fn too_deep(bytes: &[u8], max: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Whether `bytes` are one well-formed JSON document.
fn check_json(bytes: &[u8]) -> Result<(), ApiError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request("invalid_json", format!("malformed JSON: {e}")))
}

/// Path parameters, with errors in the API's shape: a segment that does not
/// decode (e.g. `%FF`, not UTF-8) is a bad id, 400 `invalid_id`, naming the parameter.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => {
                    ApiError::bad_request("invalid_id", format!("{key}: not valid UTF-8 once decoded"))
                }
                _ => ApiError::bad_request("invalid_id", e.body_text()),
            }),
            Err(other) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", other.body_text())),
        }
    }
}

/// Query parameters, with errors in the API's shape.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        parse_query(q).map(Query)
    }
}

/// A query string into `T`, with errors in the API's shape (`invalid_query`).
pub fn parse_query<T: DeserializeOwned>(q: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{q}").parse().map_err(|_| ApiError::bad_request("invalid_query", "bad query string"))?,
    )
    .map(|axum::extract::Query(v)| v)
    .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

/// The `Idempotency-Key` of a write, scoped to its caller and fingerprinted by
/// method, path and body.
pub fn idempotency_key(
    headers: &axum::http::HeaderMap,
    principal: &Principal,
    method: &str,
    path: &str,
    body_digest: &str,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let key = v.to_str().map_err(|_| ApiError::bad_request("invalid_header", "Idempotency-Key must be ASCII"))?;
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::bad_request("invalid_header", "Idempotency-Key must be 1 to 255 characters"));
    }
    Ok(Some(IdempotencyKey {
        sub: principal.sub.to_string(),
        key: key.to_string(),
        fingerprint: format!("{method} {path} {body_digest}"),
    }))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks a path id and says which one is wrong.
pub fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    crate::model::ids::validate_id(id).map_err(|m| ApiError::bad_request("invalid_id", format!("{what}: {m}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", r#"{"a":"#.repeat(levels - 1) + "{}", "}".repeat(levels - 1))
    }

    #[test]
    fn depth_is_counted_outside_strings() {
        assert_eq!(too_deep(nested(32).as_bytes(), 32), None);
        assert!(too_deep(nested(33).as_bytes(), 32).is_some());
        let quoted = format!(r#"{{"s":"{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        assert_eq!(too_deep(quoted.as_bytes(), 32), None, "{quoted}");
        assert!(too_deep(format!("{}{}", "[".repeat(40), "]".repeat(40)).as_bytes(), 32).is_some());
        assert!(parse_json::<serde_json::Value>(nested(32).as_bytes()).is_ok());
        let err = parse_json::<serde_json::Value>(nested(126).as_bytes()).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (422, "json_too_deep"));
        assert!(err.message.contains("32"), "{}", err.message);
    }
}
