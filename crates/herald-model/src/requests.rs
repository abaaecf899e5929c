//! Bodies of the worker API's writes, as the server reads them and the SDKs
//! write them: one definition for both sides.

use crate::job::JobStatus;
use crate::notification::Level;
use crate::task::TaskUpsert;
use serde::{Deserialize, Serialize};

/// Body of `POST /v1/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"id": "crawl-42", "owner": "alice", "kind": "site-crawl", "title": "Crawl example.com", "total": 120, "status": "running", "metadata": {"site": "example.com"}, "tasks": [{"id": "home", "name": "/"}, {"id": "pricing", "name": "/pricing"}]})))]
pub struct CreateJob {
    /// Caller-chosen id; a UUIDv7 is made when absent.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_.:-]{1,128}$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The `sub` of the customer who owns (and may watch) the job.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_.:-]{1,128}$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// `queued` (default) or `running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskUpsert>>,
}

/// Body of `POST /v1/jobs/{id}/artifacts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"kind": "screenshot", "payload": {"url": "https://files.example.com/crawl-42/pricing.png", "item": "/pricing"}})))]
pub struct NewArtifact {
    /// What it is: `screenshot`, `ocr`, `label`...
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
}

/// Body of `POST /v1/notifications`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"recipient": "alice", "level": "success", "title": "Your crawl finished", "body": "118 of 120 pages fetched", "link": "/jobs/crawl-42"})))]
pub struct CreateNotification {
    /// The `sub` it is for.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_.:-]{1,128}$"))]
    pub recipient: String,
    #[serde(default)]
    pub level: Level,
    /// 1–1024 bytes.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 1024))]
    pub title: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 16384))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 2048))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}
