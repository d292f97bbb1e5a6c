//! An exporter that POSTs batches from a [`Queue`] to one HTTP endpoint:
//! Prometheus remote write and Pyroscope's OTLP/HTTP profiles ingest.
//! Retries with exponential backoff on connection errors, timeouts, 5xx and
//! 429 (honouring `Retry-After`); any other 4xx is permanent and the batch is
//! dropped and counted.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::queue::{ExporterMetrics, Queue, RetryPolicy};

#[derive(Debug, thiserror::Error)]
pub enum HttpExporterError {
    #[error("{key} {url:?} is not an http:// or https:// URL")]
    Url { key: &'static str, url: String },
    #[error("cannot build the HTTP client for {key}")]
    Client {
        key: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

pub struct HttpExporter {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    retry: RetryPolicy,
    /// Which exporter, for logs.
    name: &'static str,
}

/// What one attempt came to.
enum Attempt {
    Sent,
    Retry(String, Option<Duration>),
    Permanent(String),
}

impl HttpExporter {
    /// `key` names the config key of `url` in errors.
    pub fn new(
        name: &'static str,
        key: &'static str,
        url: &str,
        headers: HeaderMap,
        retry: RetryPolicy,
    ) -> Result<Self, HttpExporterError> {
        let parsed = reqwest::Url::parse(url).ok();
        if !parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host()) {
            return Err(HttpExporterError::Url {
                key,
                url: url.into(),
            });
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(retry.timeout)
            .build()
            .map_err(|source| HttpExporterError::Client { key, source })?;
        Ok(HttpExporter {
            client,
            url: url.into(),
            headers,
            retry,
            name,
        })
    }

    /// Sends batches of at most `max` items (an item is never split) until
    /// the queue is closed and empty, or `abort` is cancelled (the drain ran
    /// out of time): then whatever is left is dropped and counted.
    pub async fn run<T>(
        self,
        queue: &Queue<T>,
        max: u64,
        linger: Duration,
        encode: impl Fn(Vec<T>) -> Bytes,
        abort: CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                next = queue.take(max.max(1), linger) => next,
                () = abort.cancelled() => break,
            };
            let Some((weight, batch, settle)) = next else {
                break;
            };
            let settled = self
                .send(encode(batch), weight, queue.metrics(), &abort)
                .await;
            queue.release(weight);
            settle.settle(settled);
        }
        let left = queue.discard();
        if left > 0 {
            tracing::warn!(
                exporter = self.name,
                items = left,
                "drain timed out, dropping queued items"
            );
        }
    }

    /// Sends one batch of `weight` items, retrying retryable failures;
    /// counts the outcome. `false` when it was given up while the error was
    /// still retryable.
    async fn send(
        &self,
        body: Bytes,
        weight: u64,
        metrics: &ExporterMetrics,
        abort: &CancellationToken,
    ) -> bool {
        let started = Instant::now();
        let mut backoff = self.retry.initial_backoff;
        let mut attempts = 0u32;
        loop {
            let attempt = tokio::select! {
                a = self.attempt(body.clone()) => a,
                () = abort.cancelled() => Attempt::Retry("drain timed out".into(), None),
            };
            let (message, hint) = match attempt {
                Attempt::Sent => {
                    metrics.sent.inc_by(weight);
                    return true;
                }
                Attempt::Permanent(message) => {
                    tracing::warn!(exporter = self.name, items = weight, %message,
                        "backend refused a batch (not retryable), dropping it");
                    metrics.dropped.inc_by(weight);
                    return true;
                }
                Attempt::Retry(message, hint) => (message, hint),
            };
            if abort.is_cancelled() || started.elapsed() >= self.retry.max_elapsed {
                tracing::warn!(exporter = self.name, items = weight, %message,
                    "dropping a batch the backend did not take in time");
                metrics.dropped.inc_by(weight);
                return false;
            }
            attempts += 1;
            if attempts == 1 {
                // The first failure of this batch; later attempts log at debug.
                tracing::warn!(exporter = self.name, items = weight, %message,
                    "export failed, retrying with backoff");
            }
            let delay = hint.unwrap_or(backoff).min(self.retry.max_backoff);
            tracing::debug!(exporter = self.name, items = weight, %message, ?delay, "retrying");
            metrics.retried.inc_by(weight);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = abort.cancelled() => {}
            }
            backoff = (backoff * 2).min(self.retry.max_backoff);
        }
    }

    async fn attempt(&self, body: Bytes) -> Attempt {
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(format!("{}: {e}", self.url), None),
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Sent;
        }
        let hint = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        let message = format!("{}: HTTP {status}: {}", self.url, text.trim());
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Attempt::Retry(message, hint)
        } else {
            Attempt::Permanent(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http() {
        let retry = RetryPolicy::from_millis(1, 1, 1, 1);
        for bad in ["prometheus:9090", "ftp://x/y", "http://"] {
            let err = HttpExporter::new(
                "t",
                "exporters.metrics.endpoint",
                bad,
                HeaderMap::new(),
                retry,
            )
            .err()
            .unwrap();
            assert!(
                err.to_string().contains("exporters.metrics.endpoint"),
                "{err}"
            );
        }
        assert!(
            HttpExporter::new(
                "t",
                "k",
                "http://127.0.0.1:9/api/v1/write",
                HeaderMap::new(),
                retry
            )
            .is_ok()
        );
    }
}
