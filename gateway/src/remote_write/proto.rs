//! `prometheus.WriteRequest` (remote write v1, `prompb/remote.proto` and
//! `types.proto`), only the fields the gateway writes; written by hand with
//! prost's derive so the build needs no protoc.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    /// Sorted by name, `__name__` included.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// In time order.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Prometheus' staleness marker: a series that has ended.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

impl TimeSeries {
    /// One series with one sample; labels are sorted here, as Prometheus
    /// requires, and `__name__` is added.
    pub fn new(name: &str, mut labels: Vec<Label>, value: f64, timestamp_ms: i64) -> Self {
        labels.push(Label {
            name: "__name__".into(),
            value: name.into(),
        });
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        TimeSeries {
            labels,
            samples: vec![Sample {
                value,
                timestamp: timestamp_ms,
            }],
        }
    }

    pub fn samples(series: &[TimeSeries]) -> u64 {
        series.iter().map(|s| s.samples.len() as u64).sum()
    }
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// The body of a remote write request: protobuf, snappy block format.
pub fn encode(timeseries: Vec<TimeSeries>) -> Vec<u8> {
    let raw = WriteRequest { timeseries }.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy compresses any input below 4 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_labels_are_sorted_with_the_name_and_the_body_round_trips() {
        let s = TimeSeries::new(
            "m_total",
            vec![Label::new("zone", "a"), Label::new("job", "x")],
            2.0,
            42,
        );
        let names: Vec<_> = s.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "job", "zone"]);
        let body = encode(vec![s.clone()]);
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let back = WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(back.timeseries, vec![s]);
    }
}
