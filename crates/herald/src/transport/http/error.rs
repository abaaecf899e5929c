//! One error shape for the whole API: `{"error":{"code":"...","message":"..."}}`.

use crate::auth::AuthError;
use crate::rules::WriteError;
use crate::store::{StoreError, StoreErrorKind};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An API error with a stable `code`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn invalid_field(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", format!("{field}: {message}"))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (status, code) = match e.kind {
            StoreErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            StoreErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            StoreErrorKind::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            StoreErrorKind::Retryable | StoreErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            StoreErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, source = ?e.source, "store error");
        }
        ApiError::new(status, code, e.to_string())
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let (status, code) = match &e {
            WriteError::Store(e) => return ApiError::from(e.clone()),
            WriteError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            WriteError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            WriteError::IllegalTransition { .. } => (StatusCode::CONFLICT, "illegal_transition"),
            WriteError::JobFinished(_) => (StatusCode::CONFLICT, "job_finished"),
            WriteError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            WriteError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "job_too_large"),
            WriteError::IdempotencyMismatch => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<crate::session::SessionError> for ApiError {
    fn from(e: crate::session::SessionError) -> Self {
        use crate::session::Refusal;
        let status = match e.kind {
            Refusal::Invalid => StatusCode::BAD_REQUEST,
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden => StatusCode::FORBIDDEN,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Limit => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code, e.message)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match e {
            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// The error body, for the OpenAPI document.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `illegal_transition`.
    pub code: String,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Answers unknown routes in the API's error shape.
pub async fn not_found_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// Answers a known route called with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}
