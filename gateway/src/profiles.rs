//! Profiles to Pyroscope: each client request is forwarded as it came, one
//! OTLP/HTTP request each (never merged: every request carries its own
//! dictionary, which the profiles' indices point into), to Pyroscope's OTLP
//! ingest at `<endpoint>/v1development/profiles`.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use crate::config::ProfilesExporter;
use crate::http_exporter::{HttpExporter, HttpExporterError};
use crate::otlp::{Profiles, Signal};
use crate::queue::Queue;

/// Encoded `ExportProfilesServiceRequest`s, weighed in profiles.
pub type ProfileQueue = Queue<Bytes>;

/// Batches are single requests: see the module doc.
pub const BATCH: u64 = 1;

pub fn exporter(
    config: &ProfilesExporter,
    endpoint: &str,
) -> Result<HttpExporter, HttpExporterError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/x-protobuf"),
    );
    let url = format!("{}{}", endpoint.trim_end_matches('/'), Profiles::HTTP_PATH);
    HttpExporter::new(
        "profiles",
        "exporters.profiles.endpoint",
        &url,
        headers,
        config.retry(),
    )
}

/// The body of a batch of [`BATCH`] request.
pub fn encode(mut batch: Vec<Bytes>) -> Bytes {
    batch.pop().unwrap_or_default()
}
