//! The fuzz targets' checks (gateway/fuzz, run by `make fuzz` under
//! libFuzzer) on stable: every committed seed, then random mutations of
//! them, through the same entry points. `VISPYR_UPDATE_FUZZ_SEEDS=1`
//! rewrites the seeds from the requests below.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::profiles::v1development::{
    Profile, ProfilesDictionary, ResourceProfiles, Sample, ScopeProfiles, ValueType,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
use prost::Message;
use vispyr_gateway::http::{Format, decode_http};
use vispyr_gateway::otlp::{Refusal, Routed, Traces};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("http_protobuf", checks::http_protobuf),
    ("http_json", checks::http_json),
    ("http_gzip", checks::http_gzip),
    ("grpc", |data| {
        checks::grpc(data);
    }),
    ("trace_split", checks::trace_split),
];

/// Per target: a few thousand inputs, a few seconds unoptimized.
const MUTATIONS: usize = 3000;

fn seeds_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![string("service.name", "checkout")],
        ..Default::default()
    })
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn traces() -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![0x5b; 16],
                    span_id: vec![0xee; 8],
                    parent_span_id: vec![0xab; 8],
                    name: "GET /cart".into(),
                    kind: span::SpanKind::Server as i32,
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: 1_700_000_000_050_000_000,
                    attributes: vec![string("http.route", "/cart")],
                    links: vec![span::Link {
                        trace_id: vec![0x5c; 16],
                        span_id: vec![0xef; 8],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Spans of several traces under two resources and three scopes, one with
/// an invalid span ID: what `wire::split` has to take apart.
fn mixed_traces() -> ExportTraceServiceRequest {
    let span = |trace: u8, id: u8| Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        name: format!("op {id}"),
        attributes: vec![string("http.route", "/cart")],
        ..Default::default()
    };
    let scope = |spans: Vec<Span>| ScopeSpans {
        spans,
        schema_url: "s".into(),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: resource(),
                scope_spans: vec![
                    scope(vec![span(1, 1), span(2, 2), span(1, 3), span(3, 0)]),
                    scope(vec![span(4, 4)]),
                ],
                ..Default::default()
            },
            ResourceSpans {
                resource: resource(),
                scope_spans: vec![scope(vec![span(2, 5), span(5, 6)])],
                schema_url: "r".into(),
            },
        ],
    }
}

fn metrics() -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "heap_used_bytes".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                time_unix_nano: 1_700_000_000_000_000_000,
                                value: Some(number_data_point::Value::AsDouble(1.5e6)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "http_duration_seconds".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint {
                                count: 3,
                                bucket_counts: vec![1, 2, 0],
                                explicit_bounds: vec![0.1, 1.0],
                                attributes: vec![string("http.route", "/cart")],
                                ..Default::default()
                            }],
                            aggregation_temporality: 2,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs() -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    severity_text: "INFO".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("cart loaded".into())),
                    }),
                    trace_id: vec![0x5b; 16],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn profiles() -> ExportProfilesServiceRequest {
    ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            resource: resource(),
            scope_profiles: vec![ScopeProfiles {
                profiles: vec![Profile {
                    sample_type: Some(ValueType {
                        type_strindex: 1,
                        unit_strindex: 2,
                    }),
                    samples: vec![Sample {
                        values: vec![10],
                        ..Default::default()
                    }],
                    profile_id: vec![7; 16],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        dictionary: Some(ProfilesDictionary {
            string_table: vec!["".into(), "cpu".into(), "nanoseconds".into()],
            ..Default::default()
        }),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A gRPC length-prefixed message.
fn frame(compressed: bool, message: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// 1 MiB of zeroes in about a kilobyte: far over the targets' limit.
fn bomb() -> Vec<u8> {
    gzip(&vec![0; 1 << 20])
}

/// Every seed, by target and file name: each signal's request (selector
/// byte = signal) in each encoding, plus gzip bombs.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let requests: [(&str, Vec<u8>, Vec<u8>); 4] = [
        (
            "traces",
            traces().encode_to_vec(),
            serde_json::to_vec(&traces()).unwrap(),
        ),
        (
            "metrics",
            metrics().encode_to_vec(),
            serde_json::to_vec(&metrics()).unwrap(),
        ),
        (
            "logs",
            logs().encode_to_vec(),
            serde_json::to_vec(&logs()).unwrap(),
        ),
        (
            "profiles",
            profiles().encode_to_vec(),
            serde_json::to_vec(&profiles()).unwrap(),
        ),
    ];
    let with = |selector: u8, body: &[u8]| [&[selector][..], body].concat();
    let mut seeds = Vec::new();
    for (signal, (name, proto, json)) in (0u8..).zip(requests) {
        seeds.push(("http_protobuf", name.to_owned(), with(signal, &proto)));
        seeds.push(("http_json", name.to_owned(), with(signal, &json)));
        seeds.push((
            "http_gzip",
            format!("{name}-protobuf"),
            with(signal, &gzip(&proto)),
        ));
        seeds.push((
            "http_gzip",
            format!("{name}-json"),
            with(signal | 4, &gzip(&json)),
        ));
        seeds.push(("grpc", name.to_owned(), with(signal, &frame(false, &proto))));
        seeds.push((
            "grpc",
            format!("{name}-gzip"),
            with(signal | 4, &frame(true, &gzip(&proto))),
        ));
    }
    let mixed = mixed_traces().encode_to_vec();
    seeds.push(("trace_split", "one-owner".into(), with(0, &mixed)));
    seeds.push(("trace_split", "three-owners".into(), with(2, &mixed)));
    seeds.push((
        "trace_split",
        "traces".into(),
        with(3, &traces().encode_to_vec()),
    ));
    seeds.push(("http_gzip", "bomb".into(), with(0, &bomb())));
    seeds.push(("grpc", "bomb".into(), with(4, &frame(true, &bomb()))));
    seeds
}

fn committed_seeds(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(seeds_dir(target))
        .unwrap_or_else(|e| panic!("seeds of {target}: {e}"))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn seeds_are_current() {
    let update = std::env::var_os("VISPYR_UPDATE_FUZZ_SEEDS").is_some();
    for (target, name, data) in seeds() {
        let path = seeds_dir(target).join(&name);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &data).unwrap();
        } else {
            let committed = std::fs::read(&path).unwrap_or_default();
            // gzip output may differ between flate2 back ends: compare the
            // uncompressed seeds only.
            let compressed = target == "http_gzip" || name.ends_with("gzip") || name == "bomb";
            assert!(!committed.is_empty(), "{} is missing", path.display());
            if !compressed {
                assert!(
                    committed == data,
                    "{} is stale: run with VISPYR_UPDATE_FUZZ_SEEDS=1",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn valid_requests_decode_and_bombs_are_refused() {
    for (target, run) in TARGETS {
        for seed in committed_seeds(target) {
            run(&seed);
        }
    }
    // Each seed but the bombs is a request the receivers accept.
    for (target, name, data) in seeds() {
        let code = match target {
            "grpc" => checks::grpc(&data).unwrap(),
            _ => continue,
        };
        let want = if name == "bomb" {
            tonic::Code::ResourceExhausted
        } else {
            tonic::Code::Ok
        };
        assert_eq!(code, want, "grpc seed {name}");
    }
    let traces = traces().encode_to_vec();
    let gzipped = Bytes::from(gzip(&traces));
    let decoded = decode_http::<Traces>(Format::Protobuf, Some(b"gzip"), gzipped, 1 << 12);
    assert!(matches!(decoded, Ok(Routed::Traces(encoded)) if encoded == traces));
    let bomb = decode_http::<Traces>(
        Format::Protobuf,
        Some(b"gzip"),
        bomb().into(),
        checks::LIMIT,
    );
    assert!(matches!(
        bomb,
        Err(Refusal::TooLarge { size: None, limit }) if limit == checks::LIMIT
    ));
    let json = Bytes::from_static(b"{}");
    assert!(matches!(
        decode_http::<Traces>(Format::Json, Some(b"br"), json, checks::LIMIT),
        Err(Refusal::UnsupportedEncoding(e)) if e == "br"
    ));
    // Spans of several owners: the parts are what splitting the decoded
    // request gives, for any number of owners.
    let mixed = Bytes::from(mixed_traces().encode_to_vec());
    for owners in 1..=4 {
        checks::split_like_prost(&mixed, owners);
    }
}

/// A small xorshift: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// libFuzzer-like edits: flip bits, set interesting bytes, insert, delete,
/// duplicate a range, truncate, splice another seed in.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = [0, 0x7f, 0x80, 0xff, b'"', b'{', b'[', b'0'][rng.below(8)];
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 1 => {
                let i = rng.below(len);
                let n = rng.below(len - i).max(1);
                input.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(64)).max(1);
                let copy = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, copy);
            }
            5 if len > 1 => input.truncate(rng.below(len)),
            _ if !other.is_empty() => {
                let i = rng.below(other.len());
                let n = rng.below(other.len() - i).max(1);
                let at = rng.below(len + 1);
                input.splice(at..at, other[i..i + n].iter().copied());
            }
            _ => {}
        }
    }
}

#[test]
fn random_mutations_are_refused_with_a_reason_or_decoded() {
    for (t, (target, run)) in TARGETS.into_iter().enumerate() {
        let seeds = committed_seeds(target);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ t as u64);
        for _ in 0..MUTATIONS {
            let mut input = seeds[rng.below(seeds.len())].clone();
            let other = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, &mut input, other);
            if std::panic::catch_unwind(|| run(&input)).is_err() {
                panic!("{target} failed on {input:02x?}");
            }
        }
    }
}
