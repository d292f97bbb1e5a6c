//! Debug output: each exported profile also as a gzipped pprof file, so a
//! batch can be opened with `go tool pprof` without a backend.
//!
//! Converted from the OTLP request itself, so the file shows what was sent:
//! CPU nanoseconds per stack (count x period) and the resource attributes as
//! labels on every sample. pprof has no attributes on locations, so frame
//! kinds are in the OTLP request only.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;

#[derive(Debug, thiserror::Error)]
#[error("writing debug pprof file {}", path.display())]
pub struct PprofError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Writes one `<unix ms>-<n>-<service>.pb.gz` per profile of `request` into
/// `dir`; returns the paths written.
pub fn write(
    dir: &Path,
    request: &ExportProfilesServiceRequest,
) -> Result<Vec<PathBuf>, PprofError> {
    let Some(dict) = &request.dictionary else {
        return Ok(Vec::new());
    };
    let str_at = |i: i32| {
        dict.string_table
            .get(usize::try_from(i).unwrap_or(usize::MAX))
            .map_or("", String::as_str)
    };
    let mut written = Vec::new();
    for (n, rp) in request.resource_profiles.iter().enumerate() {
        let labels: Vec<(&str, &str)> = rp
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(v) => Some((kv.key.as_str(), v.as_str())),
                _ => None,
            })
            .collect();
        let service = labels
            .iter()
            .find(|(k, _)| *k == "service.name")
            .map_or("unknown", |(_, v)| v);
        for profile in rp.scope_profiles.iter().flat_map(|s| &s.profiles) {
            let mut out = Builder::default();
            out.string("");
            let cpu = out.string("cpu");
            let ns = out.string("nanoseconds");
            out.p.sample_type = vec![ValueType {
                r#type: cpu,
                unit: ns,
            }];
            out.p.period_type = Some(ValueType {
                r#type: cpu,
                unit: ns,
            });
            out.p.period = profile.period;
            out.p.time_nanos = profile.time_unix_nano as i64;
            out.p.duration_nanos = profile.duration_nano as i64;
            let label: Vec<Label> = labels
                .iter()
                .map(|(k, v)| Label {
                    key: out.string(k),
                    str: out.string(v),
                })
                .collect();
            for sample in &profile.samples {
                let Some(stack) = dict.stack_table.get(sample.stack_index as usize) else {
                    continue;
                };
                let location_id = stack
                    .location_indices
                    .iter()
                    .filter_map(|&l| {
                        let loc = dict.location_table.get(l as usize)?;
                        let f = dict
                            .function_table
                            .get(loc.lines.first()?.function_index as usize)?;
                        Some(out.location(l, str_at(f.name_strindex), str_at(f.filename_strindex)))
                    })
                    .collect();
                let value = sample.values.first().copied().unwrap_or(0) * profile.period.max(1);
                out.p.sample.push(PprofSample {
                    location_id,
                    value: vec![value],
                    label: label.clone(),
                });
            }
            let path = dir.join(format!(
                "{}-{n}-{}.pb.gz",
                profile.time_unix_nano / 1_000_000,
                file_safe(service)
            ));
            let io = |source| PprofError {
                path: path.clone(),
                source,
            };
            let mut gz = GzEncoder::new(Vec::new(), Compression::default());
            gz.write_all(&out.p.encode_to_vec()).map_err(io)?;
            std::fs::write(&path, gz.finish().map_err(io)?).map_err(io)?;
            written.push(path);
        }
    }
    Ok(written)
}

fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Default)]
struct Builder {
    p: PprofProfile,
    strings: std::collections::HashMap<String, i64>,
    /// OTLP location index -> pprof location ID.
    locations: std::collections::HashMap<i32, u64>,
    functions: std::collections::HashMap<(i64, i64), u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.p.string_table.len() as i64;
        self.p.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    fn location(&mut self, otlp_index: i32, name: &str, file: &str) -> u64 {
        if let Some(&id) = self.locations.get(&otlp_index) {
            return id;
        }
        let (name, filename) = (self.string(name), self.string(file));
        let next = self.p.function.len() as u64 + 1;
        let function_id = *self.functions.entry((name, filename)).or_insert(next);
        if function_id == next {
            self.p.function.push(PprofFunction {
                id: function_id,
                name,
                system_name: name,
                filename,
            });
        }
        let id = self.p.location.len() as u64 + 1;
        self.p.location.push(PprofLocation {
            id,
            line: vec![PprofLine {
                function_id,
                line: 0,
            }],
        });
        self.locations.insert(otlp_index, id);
        id
    }
}

// The parts of pprof's profile.proto written here.

#[derive(Clone, PartialEq, Message)]
struct PprofProfile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<PprofSample>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<PprofLocation>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<PprofFunction>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    period: i64,
}

#[derive(Clone, Copy, PartialEq, Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, Message)]
struct PprofSample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
struct Label {
    #[prost(int64, tag = "1")]
    key: i64,
    #[prost(int64, tag = "2")]
    str: i64,
}

#[derive(Clone, PartialEq, Message)]
struct PprofLocation {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<PprofLine>,
}

#[derive(Clone, PartialEq, Message)]
struct PprofLine {
    #[prost(uint64, tag = "1")]
    function_id: u64,
    #[prost(int64, tag = "2")]
    line: i64,
}

#[derive(Clone, PartialEq, Message)]
struct PprofFunction {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "3")]
    system_name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::attribution::{SERVICE_NAME, Target};
    use crate::export::profiles;
    use crate::stack::{Batch, Frame, FrameKind, Sample};

    #[test]
    fn writes_cpu_nanoseconds_per_stack_with_resource_labels() {
        let f = |name: &str| Frame {
            kind: FrameKind::Js,
            function: Arc::from(name),
            file: Some(Arc::from("app.js")),
            package: None,
        };
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let batch = Batch {
            start,
            end: start + Duration::from_secs(10),
            frequency_hz: 100,
            samples: vec![
                Sample {
                    pid: 1,
                    frames: vec![f("leaf"), f("main")],
                    count: 5,
                },
                Sample {
                    pid: 1,
                    frames: vec![f("main")],
                    count: 2,
                },
            ],
        };
        let target: Target = [(SERVICE_NAME, "check/out".to_owned())]
            .into_iter()
            .collect();
        let groups = vec![(target, batch.samples.iter().collect())];
        let (request, _) = profiles::request(&batch, &groups);
        let dir = tempfile::tempdir().unwrap();
        let paths = write(dir.path(), &request).unwrap();
        assert_eq!(paths.len(), 1);
        assert!(
            paths[0].ends_with("1700000000000-0-check_out.pb.gz"),
            "{paths:?}"
        );

        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&paths[0]).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        let p = PprofProfile::decode(raw.as_slice()).unwrap();
        let s = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(s(p.sample_type[0].r#type), "cpu");
        let values: Vec<i64> = p.sample.iter().map(|x| x.value[0]).collect();
        assert_eq!(values, vec![50_000_000, 20_000_000]);
        let leaf = &p.location[p.sample[0].location_id[0] as usize - 1];
        let function = &p.function[leaf.line[0].function_id as usize - 1];
        assert_eq!(s(function.name), "leaf");
        // "main" is one location shared by both samples.
        assert_eq!(p.location.len(), 2);
        let label = &p.sample[1].label[0];
        assert_eq!((s(label.key), s(label.str)), ("service.name", "check/out"));
    }
}
