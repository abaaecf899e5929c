//! A notification for one recipient.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Level {
    #[default]
    Info,
    Success,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Notification {
    pub id: String,
    /// The `sub` this notification is for.
    pub recipient: String,
    pub level: Level,
    pub title: String,
    pub body: Option<String>,
    pub link: Option<String>,
    /// The job that caused it, for notifications Herald creates itself.
    pub job_id: Option<String>,
    pub read: bool,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    #[serde(with = "crate::time::rfc3339_opt")]
    pub read_at: Option<i64>,
}
