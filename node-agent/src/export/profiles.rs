//! One attributed [`Batch`] as an OTLP `ExportProfilesServiceRequest`
//! (profiles v1development of OTLP v1.10.0): one `ResourceProfiles` per
//! process target, all sharing one `ProfilesDictionary`.
//!
//! Shape, as Pyroscope 1.21 reads it (`pkg/ingester/otlp`):
//! - sample type `samples`/`count`, period type `cpu`/`nanoseconds`, period
//!   `1e9 / frequency_hz`: Pyroscope names this `process_cpu` and multiplies
//!   each value by the period, so the stored total is CPU nanoseconds.
//! - resource attributes become series labels (`.` turned into `_`).
//! - one location per distinct frame, one line pointing at its function
//!   (name + file); mapping 0. Locations carry `frame.kind`
//!   (`kernel|native|js|node_internal|node_modules`), the semantic
//!   convention `profile.frame.type` (`kernel|native|v8js`) and, for npm
//!   code, `frame.package`.
//! - stacks leaf first, as the sampler hands them over.
//! - each sample also carries the `frame.kind` of its leaf frame: Pyroscope
//!   keeps sample attributes (not location ones) as series labels, so
//!   `{frame_kind="node_internal"}` selects the CPU spent in Node.js itself.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::profiles::v1development::{
    Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesDictionary,
    ResourceProfiles, Sample as OtlpSample, ScopeProfiles, Stack, ValueType,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::attribution::Target;
use crate::stack::{Batch, Frame, FrameKind, Sample};

pub const FRAME_KIND: &str = "frame.kind";
pub const FRAME_TYPE: &str = "profile.frame.type";
pub const FRAME_PACKAGE: &str = "frame.package";
/// Pyroscope's profile type ID of what is sent here, for queries.
pub const PYROSCOPE_PROFILE_TYPE: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";

/// The request and how many profiles it holds (what OTLP partial success counts).
pub fn request(
    batch: &Batch,
    groups: &[(Target, Vec<&Sample>)],
) -> (ExportProfilesServiceRequest, u64) {
    let mut dict = Dictionary::new();
    let sample_type = dict.value_type("samples", "count");
    let period_type = dict.value_type("cpu", "nanoseconds");
    let period = period_ns(batch.frequency_hz);
    let time_unix_nano = unix_nanos(batch.start);
    let duration_nano = batch
        .end
        .duration_since(batch.start)
        .map_or(0, |d| d.as_nanos() as u64);
    let scope = InstrumentationScope {
        name: "vispyr-node-agent".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    };
    let resource_profiles = groups
        .iter()
        .map(|(target, samples)| {
            // Two processes of one target (e.g. cluster workers) may share stacks.
            let mut counts: Vec<(i32, i64, Vec<i32>)> = Vec::new();
            let mut by_stack: HashMap<i32, usize> = HashMap::new();
            for sample in samples {
                let stack = dict.stack(&sample.frames);
                let count = i64::try_from(sample.count).unwrap_or(i64::MAX);
                match by_stack.get(&stack) {
                    Some(&i) => counts[i].1 = counts[i].1.saturating_add(count),
                    None => {
                        by_stack.insert(stack, counts.len());
                        let leaf_kind = sample
                            .frames
                            .first()
                            .map(|leaf| dict.attribute(FRAME_KIND, leaf.kind.as_str()));
                        counts.push((stack, count, leaf_kind.into_iter().collect()));
                    }
                }
            }
            let profile = Profile {
                sample_type: Some(sample_type),
                samples: counts
                    .into_iter()
                    .map(|(stack_index, count, attribute_indices)| OtlpSample {
                        stack_index,
                        values: vec![count],
                        attribute_indices,
                        ..Default::default()
                    })
                    .collect(),
                time_unix_nano,
                duration_nano,
                period_type: Some(period_type),
                period,
                ..Default::default()
            };
            ResourceProfiles {
                resource: Some(Resource {
                    attributes: target
                        .attributes()
                        .map(|(key, value)| string_attribute(key, value))
                        .collect(),
                    ..Default::default()
                }),
                scope_profiles: vec![ScopeProfiles {
                    scope: Some(scope.clone()),
                    profiles: vec![profile],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect::<Vec<_>>();
    let profiles = resource_profiles.len() as u64;
    (
        ExportProfilesServiceRequest {
            resource_profiles,
            dictionary: Some(dict.finish()),
        },
        profiles,
    )
}

/// CPU nanoseconds one sample stands for.
pub fn period_ns(frequency_hz: u64) -> i64 {
    (1_000_000_000 / frequency_hz.max(1)).max(1) as i64
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    // Plain keys: Pyroscope reads `key`, not `key_strindex`, on resources.
    KeyValue {
        key: key.to_owned(),
        value: Some(string_value(value)),
        key_strindex: 0,
    }
}

fn string_value(value: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(value.to_owned())),
    }
}

/// The semantic-convention frame type of a kind.
fn frame_type(kind: FrameKind) -> &'static str {
    match kind {
        FrameKind::Kernel => "kernel",
        FrameKind::Native => "native",
        FrameKind::Js | FrameKind::NodeInternal | FrameKind::NodeModules => "v8js",
    }
}

/// Interning tables; every table starts with its zero value, as OTLP requires.
struct Dictionary {
    tables: ProfilesDictionary,
    strings: HashMap<String, i32>,
    functions: HashMap<(i32, i32), i32>,
    locations: HashMap<(i32, Vec<i32>), i32>,
    frames: HashMap<Frame, i32>,
    attributes: HashMap<(i32, String), i32>,
    stacks: HashMap<Vec<i32>, i32>,
}

impl Dictionary {
    fn new() -> Self {
        let mut dict = Dictionary {
            tables: ProfilesDictionary {
                mapping_table: vec![Mapping::default()],
                location_table: vec![Location::default()],
                function_table: vec![Function::default()],
                link_table: vec![Link::default()],
                string_table: Vec::new(),
                attribute_table: vec![KeyValueAndUnit::default()],
                stack_table: vec![Stack::default()],
            },
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            frames: HashMap::new(),
            attributes: HashMap::new(),
            stacks: HashMap::new(),
        };
        dict.string("");
        dict
    }

    fn finish(self) -> ProfilesDictionary {
        self.tables
    }

    fn string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.tables.string_table.len() as i32;
        self.tables.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            type_strindex: self.string(kind),
            unit_strindex: self.string(unit),
        }
    }

    fn attribute(&mut self, key: &str, value: &str) -> i32 {
        let key_strindex = self.string(key);
        let id = (key_strindex, value.to_owned());
        if let Some(&i) = self.attributes.get(&id) {
            return i;
        }
        let i = self.tables.attribute_table.len() as i32;
        self.tables.attribute_table.push(KeyValueAndUnit {
            key_strindex,
            value: Some(string_value(value)),
            unit_strindex: 0,
        });
        self.attributes.insert(id, i);
        i
    }

    fn function(&mut self, frame: &Frame) -> i32 {
        let name = self.string(&frame.function);
        let file = frame.file.as_deref().map_or(0, |f| self.string(f));
        *self.functions.entry((name, file)).or_insert_with(|| {
            let i = self.tables.function_table.len() as i32;
            self.tables.function_table.push(Function {
                name_strindex: name,
                system_name_strindex: name,
                filename_strindex: file,
                start_line: 0,
            });
            i
        })
    }

    fn location(&mut self, frame: &Frame) -> i32 {
        // Most frames recur in many stacks: one hash of the frame instead of
        // interning its strings and attributes again.
        if let Some(&i) = self.frames.get(frame) {
            return i;
        }
        let function_index = self.function(frame);
        let mut attributes = vec![
            self.attribute(FRAME_KIND, frame.kind.as_str()),
            self.attribute(FRAME_TYPE, frame_type(frame.kind)),
        ];
        if let Some(package) = &frame.package {
            attributes.push(self.attribute(FRAME_PACKAGE, package));
        }
        let id = (function_index, attributes);
        let i = match self.locations.get(&id) {
            Some(&i) => i,
            None => {
                let i = self.tables.location_table.len() as i32;
                self.tables.location_table.push(Location {
                    mapping_index: 0,
                    address: 0,
                    lines: vec![Line {
                        function_index,
                        line: 0,
                        column: 0,
                    }],
                    attribute_indices: id.1.clone(),
                });
                self.locations.insert(id, i);
                i
            }
        };
        self.frames.insert(frame.clone(), i);
        i
    }

    fn stack(&mut self, frames: &[Frame]) -> i32 {
        let locations: Vec<i32> = frames.iter().map(|f| self.location(f)).collect();
        // No frames at all is the zero stack itself.
        if locations.is_empty() {
            return 0;
        }
        if let Some(&i) = self.stacks.get(&locations) {
            return i;
        }
        let i = self.tables.stack_table.len() as i32;
        self.tables.stack_table.push(Stack {
            location_indices: locations.clone(),
        });
        self.stacks.insert(locations, i);
        i
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::attribution::{Attributor, Config};

    fn frame(kind: FrameKind, function: &str, package: Option<&str>) -> Frame {
        Frame {
            kind,
            function: Arc::from(function),
            file: Some(Arc::from("/app/index.js")),
            package: package.map(Arc::from),
        }
    }

    #[tokio::test]
    async fn dictionary_is_shared_and_stacks_merge() {
        let hot = vec![
            frame(FrameKind::Kernel, "do_syscall_64", None),
            frame(FrameKind::NodeModules, "parse", Some("qs")),
            frame(FrameKind::Js, "main", None),
        ];
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let pid = std::process::id();
        let batch = Batch {
            start,
            end: start + Duration::from_secs(10),
            frequency_hz: 100,
            samples: vec![
                Sample {
                    pid,
                    frames: hot.clone(),
                    count: 3,
                },
                Sample {
                    pid,
                    frames: hot.clone(),
                    count: 4,
                },
                Sample {
                    pid,
                    frames: hot[1..].to_vec(),
                    count: 1,
                },
            ],
        };
        let mut attributor = Attributor::new(&Config::default(), None);
        let groups = attributor.attribute(&batch);
        let (req, profiles) = request(&batch, &groups);
        assert_eq!(profiles, 1);
        let dict = req.dictionary.unwrap();
        let s = |i: i32| dict.string_table[i as usize].as_str();
        assert_eq!(s(0), "");
        // Zero values first, then 3 locations, 2 stacks.
        assert_eq!(dict.location_table.len(), 4);
        assert_eq!(dict.stack_table.len(), 3);
        let profile = &req.resource_profiles[0].scope_profiles[0].profiles[0];
        assert_eq!(profile.period, 10_000_000);
        assert_eq!(profile.duration_nano, 10_000_000_000);
        let st = profile.sample_type.unwrap();
        let pt = profile.period_type.unwrap();
        assert_eq!(
            (s(st.type_strindex), s(st.unit_strindex)),
            ("samples", "count")
        );
        assert_eq!(
            (s(pt.type_strindex), s(pt.unit_strindex)),
            ("cpu", "nanoseconds")
        );
        let values: Vec<i64> = profile.samples.iter().map(|x| x.values[0]).collect();
        assert_eq!(values, vec![7, 1]);
        // The leaf of the first stack is the kernel frame, tagged as such.
        let stack = &dict.stack_table[profile.samples[0].stack_index as usize];
        let leaf = &dict.location_table[stack.location_indices[0] as usize];
        let f = &dict.function_table[leaf.lines[0].function_index as usize];
        assert_eq!(s(f.name_strindex), "do_syscall_64");
        let attrs: Vec<(&str, String)> = leaf
            .attribute_indices
            .iter()
            .map(|&i| {
                let a = &dict.attribute_table[i as usize];
                let v = match &a.value.as_ref().unwrap().value {
                    Some(any_value::Value::StringValue(v)) => v.clone(),
                    other => panic!("{other:?}"),
                };
                (s(a.key_strindex), v)
            })
            .collect();
        assert_eq!(
            attrs,
            vec![
                (FRAME_KIND, "kernel".to_owned()),
                (FRAME_TYPE, "kernel".to_owned())
            ]
        );
        let npm = &dict.location_table[stack.location_indices[1] as usize];
        assert_eq!(npm.attribute_indices.len(), 3);
        // Outside Kubernetes: the process name is the service.
        let resource = req.resource_profiles[0].resource.as_ref().unwrap();
        let service = resource
            .attributes
            .iter()
            .find(|a| a.key == "service.name")
            .unwrap();
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(
            service.value.as_ref().unwrap().value,
            Some(any_value::Value::StringValue(comm.trim().to_owned()))
        );
    }
}
