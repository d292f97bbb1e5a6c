//! Prometheus 3 with the remote-write (v1) and OTLP receivers on.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use tempfile::TempDir;

use super::{
    command, http_client, json, millis, post_otlp, send, spawn_http_ready, temp_dir, write_file,
};
use crate::Error;
use crate::process::{Process, free_port};

/// No scrape jobs: tests push what they want stored. Out-of-order ingestion
/// stays off, as in a default install, so a writer that sends samples out of
/// order is caught.
/// A series' labels, `__name__` included, sorted by name.
pub type Labels = BTreeMap<String, String>;

const DEFAULT_CONFIG: &str = "global:\n  evaluation_interval: 1m\n";

pub struct Prometheus {
    // Field order is drop order: the process goes before its dir.
    process: Process,
    api: PrometheusApi,
    dir: TempDir,
}

/// The query API of a Prometheus: the harness's own (a [`Prometheus`]
/// derefs to it) or one running elsewhere, e.g. in a `NodeCluster`.
pub struct PrometheusApi {
    url: String,
    http: reqwest::Client,
}

impl std::ops::Deref for Prometheus {
    type Target = PrometheusApi;

    fn deref(&self) -> &PrometheusApi {
        &self.api
    }
}

impl Prometheus {
    /// Starts Prometheus with no scrape jobs and waits for `/-/ready`.
    pub async fn start() -> Result<Self, Error> {
        Self::start_with_config(DEFAULT_CONFIG).await
    }

    /// Starts Prometheus with `config` (prometheus.yml content), e.g. to add
    /// scrape jobs for a component under test.
    pub async fn start_with_config(config: &str) -> Result<Self, Error> {
        Self::start_at(config, free_port()).await
    }

    /// Starts Prometheus with no scrape jobs on a port chosen beforehand, e.g.
    /// one a component under test was already told to write to.
    pub async fn start_on(port: u16) -> Result<Self, Error> {
        Self::start_at(DEFAULT_CONFIG, port).await
    }

    async fn start_at(config: &str, port: u16) -> Result<Self, Error> {
        let dir = temp_dir("vispyr-prometheus-")?;
        let root = dir.path();
        let config_file = write_file(&root.join("prometheus.yml"), config)?;
        let url = format!("http://127.0.0.1:{port}");

        let mut cmd = command("prometheus", root)?;
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                root.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .arg("--web.enable-otlp-receiver");
        let (process, http) =
            spawn_http_ready("prometheus", cmd, root, &format!("{url}/-/ready")).await?;
        Ok(Self {
            process,
            api: PrometheusApi { url, http },
            dir,
        })
    }

    /// Base URL of the HTTP API and UI.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where remote write v1 (and v2) requests go.
    pub fn remote_write_url(&self) -> String {
        format!("{}/api/v1/write", self.url)
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes one sample per entry, stamped now, with remote write v1.
    /// Labels must include `__name__`; equal label sets form one series.
    pub async fn remote_write(&self, samples: &[(Labels, f64)]) -> Result<(), Error> {
        self.remote_write_at(samples, SystemTime::now()).await
    }

    /// Like [`Self::remote_write`], with an explicit timestamp.
    pub async fn remote_write_at(
        &self,
        samples: &[(Labels, f64)],
        at: SystemTime,
    ) -> Result<(), Error> {
        let body = encode_write_request(samples, millis(at));
        let req = self
            .http
            .post(self.remote_write_url())
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body);
        send("prometheus remote write", req).await?;
        Ok(())
    }

    /// Pushes OTLP metrics to Prometheus's own OTLP receiver (OTLP/HTTP,
    /// protobuf), which names series by the OpenTelemetry-to-Prometheus
    /// translation. A partial success that rejects points is an error.
    pub async fn push_otlp_metrics(
        &self,
        request: &ExportMetricsServiceRequest,
    ) -> Result<(), Error> {
        post_otlp(
            &self.http,
            "prometheus OTLP metrics push",
            format!("{}/api/v1/otlp/v1/metrics", self.url),
            request.encode_to_vec(),
            |resp: &ExportMetricsServiceResponse| {
                let p = resp.partial_success.as_ref()?;
                Some((p.rejected_data_points, p.error_message.clone()))
            },
        )
        .await
    }
}

impl PrometheusApi {
    /// The API at `url` (`http://host:9090`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            http: http_client(),
        }
    }

    /// Evaluates `promql` now (instant query): one (labels, value) per series
    /// of a vector result, or one entry with no labels for a scalar.
    pub async fn query(&self, promql: &str) -> Result<Vec<(Labels, f64)>, Error> {
        let what = format!("prometheus query {promql}");
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url),
            &[("query", promql)],
        )
        .map_err(|e| Error::backend(&what, e.to_string()))?;
        let resp = json(&what, send(&what, self.http.get(url)).await?).await?;
        parse_query_response(&resp).map_err(|m| Error::backend(&what, m))
    }
}

#[derive(Clone, PartialEq, Message)]
struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
struct Label {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(double, tag = "1")]
    value: f64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

/// A snappy-block-compressed `prometheus.WriteRequest`; labels come sorted by
/// name because a `BTreeMap` iterates in byte order, as Prometheus wants.
fn encode_write_request(samples: &[(Labels, f64)], timestamp_ms: i64) -> Vec<u8> {
    let mut series: BTreeMap<&Labels, Vec<Sample>> = BTreeMap::new();
    for (labels, value) in samples {
        series.entry(labels).or_default().push(Sample {
            value: *value,
            timestamp: timestamp_ms,
        });
    }
    let req = WriteRequest {
        timeseries: series
            .into_iter()
            .map(|(labels, samples)| TimeSeries {
                labels: labels
                    .iter()
                    .map(|(name, value)| Label {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                samples,
            })
            .collect(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("snappy compresses any input below 4 GiB")
}

fn parse_query_response(resp: &serde_json::Value) -> Result<Vec<(Labels, f64)>, String> {
    if resp["status"] != "success" {
        return Err(format!("{}: {}", resp["errorType"], resp["error"]));
    }
    let data = &resp["data"];
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("vector") => result
            .as_array()
            .ok_or("vector result is not an array")?
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .ok_or("series without a metric")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                Ok((labels, sample_value(&s["value"])?))
            })
            .collect(),
        Some("scalar") => Ok(vec![(BTreeMap::new(), sample_value(result)?)]),
        other => Err(format!("unsupported result type {other:?}: {data}")),
    }
}

/// `[<unix seconds>, "<value>"]`, the value spelled as Prometheus does.
fn sample_value(pair: &serde_json::Value) -> Result<f64, String> {
    let s = pair[1]
        .as_str()
        .ok_or_else(|| format!("bad sample {pair}"))?;
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse()
            .map_err(|e| format!("bad sample value {s:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_request_groups_series_and_sorts_labels() {
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let a = labels(&[("job", "x"), ("__name__", "m")]);
        let b = labels(&[("__name__", "m"), ("job", "y")]);
        let body = encode_write_request(&[(a.clone(), 1.0), (b, 2.0), (a, 3.0)], 42);
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let req = WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.timeseries.len(), 2);
        let first = &req.timeseries[0];
        let names: Vec<_> = first.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "job"]);
        assert_eq!(first.labels[1].value, "x");
        assert_eq!(
            first.samples,
            [
                Sample {
                    value: 1.0,
                    timestamp: 42
                },
                Sample {
                    value: 3.0,
                    timestamp: 42
                }
            ]
        );
    }

    #[test]
    fn query_response_parses_vector_scalar_and_errors() {
        let v = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "m", "a": "b"}, "value": [1.5, "2.25"]},
            {"metric": {}, "value": [1.5, "+Inf"]},
        ]}});
        let got = parse_query_response(&v).unwrap();
        assert_eq!(got[0].0["a"], "b");
        assert_eq!(got[0].1, 2.25);
        assert_eq!(got[1].1, f64::INFINITY);
        let s = serde_json::json!({"status": "success", "data": {"resultType": "scalar", "result": [1, "7"]}});
        assert_eq!(
            parse_query_response(&s).unwrap(),
            vec![(BTreeMap::new(), 7.0)]
        );
        let e =
            serde_json::json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
        assert!(
            parse_query_response(&e)
                .unwrap_err()
                .contains("parse error")
        );
    }
}
