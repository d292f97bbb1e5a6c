//! Telemetry as Vispyr's components send it, for tests that feed a backend.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::profiles::v1development::{
    Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesDictionary,
    ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// The three functions of [`cpu_profile`]'s stack, root first.
pub const CPU_PROFILE_FUNCTIONS: [&str; 3] = ["main", "handle_request", "compute_hash"];

/// A string attribute.
pub fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// One CPU profile under a resource with `resource` attributes: `count`
/// samples (carrying `sample_attributes`) of main > handle_request >
/// compute_hash, at 100 Hz, as the node agent sends them (samples/count with
/// a cpu/nanoseconds period, which Pyroscope turns into nanoseconds).
pub fn cpu_profile(
    resource: &[(&str, &str)],
    sample_attributes: &[(&str, &str)],
    count: i64,
) -> ExportProfilesServiceRequest {
    let mut strings = vec!["", "samples", "count", "cpu", "nanoseconds", "app.js"];
    strings.extend(CPU_PROFILE_FUNCTIONS);
    let s = |x: &str| strings.iter().position(|y| *y == x).unwrap() as i32;
    let function = |name: &str| Function {
        name_strindex: s(name),
        filename_strindex: s("app.js"),
        ..Default::default()
    };
    let location = |function_index: i32| Location {
        mapping_index: 0,
        lines: vec![Line {
            function_index,
            line: 10 * i64::from(function_index),
            column: 0,
        }],
        ..Default::default()
    };
    // Attribute keys are string-table entries too.
    let mut string_table: Vec<String> = strings.iter().map(|x| x.to_string()).collect();
    let mut attribute_table = vec![KeyValueAndUnit::default()];
    for (key, value) in sample_attributes {
        attribute_table.push(KeyValueAndUnit {
            key_strindex: string_table.len() as i32,
            value: string_attr(key, value).value,
            unit_strindex: 0,
        });
        string_table.push(key.to_string());
    }
    // Index 0 of every table is the zero value, as the OTLP spec requires.
    let dictionary = ProfilesDictionary {
        string_table,
        mapping_table: vec![Mapping::default()],
        function_table: std::iter::once(Function::default())
            .chain(CPU_PROFILE_FUNCTIONS.iter().map(|f| function(f)))
            .collect(),
        location_table: vec![Location::default(), location(1), location(2), location(3)],
        // Leaf first, as in pprof.
        stack_table: vec![
            Stack::default(),
            Stack {
                location_indices: vec![3, 2, 1],
            },
        ],
        link_table: vec![Link::default()],
        attribute_table,
    };
    let profile = Profile {
        sample_type: Some(ValueType {
            type_strindex: s("samples"),
            unit_strindex: s("count"),
        }),
        period_type: Some(ValueType {
            type_strindex: s("cpu"),
            unit_strindex: s("nanoseconds"),
        }),
        period: 10_000_000,
        time_unix_nano: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
        duration_nano: 10_000_000_000,
        samples: vec![Sample {
            stack_index: 1,
            values: vec![count],
            attribute_indices: (1..=sample_attributes.len() as i32).collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            resource: Some(Resource {
                attributes: resource.iter().map(|(k, v)| string_attr(k, v)).collect(),
                ..Default::default()
            }),
            scope_profiles: vec![ScopeProfiles {
                profiles: vec![profile],
                ..Default::default()
            }],
            ..Default::default()
        }],
        dictionary: Some(dictionary),
    }
}
