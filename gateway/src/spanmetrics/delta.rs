//! Series and their counts: the key a series is known by (and owned by, on
//! the ring), the counts of one interval (a delta) or since the start (the
//! owner's cumulative state), a map of them bounded in series, and the wire
//! form of a delta batch sent to a series' owner.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;

/// The maps of series and of service graph halves: keyed by label values
/// and span IDs from clients, so a hasher seeded per process (not SipHash:
/// a few % of the CPU per span) is enough, as their size is bounded anyway
/// (`max_series`, `max_pending_edges`) and a crafted collision costs the
/// sender its own series, no memory.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use bytes::Bytes;
use prost::Message;

use super::servicegraph::{Half, Side, Waiting};

/// The metric families generated from spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    SpanMetrics = 1,
    ServiceGraph = 2,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::SpanMetrics, Family::ServiceGraph];

    fn from_wire(id: u32) -> Option<Family> {
        Family::ALL.into_iter().find(|f| *f as u32 == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::SpanMetrics => "spanmetrics",
            Family::ServiceGraph => "service_graph",
        }
    }

    /// Label names, in the order of [`SeriesKey::labels`].
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            Family::SpanMetrics => &["service", "span_name", "span_kind", "status_code"],
            Family::ServiceGraph => &["client", "server", "connection_type"],
        }
    }

    /// Prometheus names of the counters, in the order of [`Value::counters`].
    pub fn counter_names(self) -> &'static [&'static str] {
        match self {
            Family::SpanMetrics => &["traces_spanmetrics_calls_total"],
            Family::ServiceGraph => &[
                "traces_service_graph_request_total",
                "traces_service_graph_request_failed_total",
            ],
        }
    }

    /// Prometheus names of the histograms, in the order of [`Value::histograms`].
    pub fn histogram_names(self) -> &'static [&'static str] {
        match self {
            Family::SpanMetrics => &["traces_spanmetrics_latency"],
            Family::ServiceGraph => &[
                "traces_service_graph_request_server_seconds",
                "traces_service_graph_request_client_seconds",
            ],
        }
    }

    fn index(self) -> usize {
        self as usize - 1
    }
}

/// Upper bounds of each family's histograms, shared by every ring member.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    pub span_metrics: Vec<f64>,
    pub service_graph: Vec<f64>,
}

impl Buckets {
    pub fn of(&self, family: Family) -> &[f64] {
        match family {
            Family::SpanMetrics => &self.span_metrics,
            Family::ServiceGraph => &self.service_graph,
        }
    }
}

/// A series: its family and label values in the family's order. No label
/// values at all is the family's overflow series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub family: Family,
    pub labels: Vec<String>,
}

impl SeriesKey {
    pub fn overflow(family: Family) -> Self {
        SeriesKey {
            family,
            labels: Vec::new(),
        }
    }

    pub fn is_overflow(&self) -> bool {
        self.labels.is_empty()
    }

    /// The bytes the ring hashes to find this series' owner: the same on
    /// every member for the same series.
    pub fn owner_key(&self) -> Vec<u8> {
        let mut key = vec![self.family as u8];
        for label in &self.labels {
            // 0xff never occurs in UTF-8: label values cannot run together.
            key.push(0xff);
            key.extend_from_slice(label.as_bytes());
        }
        key
    }
}

/// Counts of one histogram: per bucket (not cumulative, the last one is
/// +Inf) and the sum of observed values.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, bounds: &[f64], value: f64) {
        let i = bounds.partition_point(|b| *b < value);
        self.buckets[i] += 1;
        self.sum += value;
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// The counts of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub counters: Vec<u64>,
    pub histograms: Vec<Histogram>,
}

impl Value {
    pub fn zero(family: Family, buckets: &Buckets) -> Self {
        let bounds = buckets.of(family).len();
        Value {
            counters: vec![0; family.counter_names().len()],
            histograms: vec![
                Histogram {
                    buckets: vec![0; bounds + 1],
                    sum: 0.0,
                };
                family.histogram_names().len()
            ],
        }
    }

    /// Adds `other`, of the same family and buckets.
    pub fn merge(&mut self, other: &Value) {
        for (a, b) in self.counters.iter_mut().zip(&other.counters) {
            *a += b;
        }
        for (a, b) in self.histograms.iter_mut().zip(&other.histograms) {
            for (x, y) in a.buckets.iter_mut().zip(&b.buckets) {
                *x += y;
            }
            a.sum += b.sum;
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub value: Value,
    /// Milliseconds since the epoch of the last update (the owner's state).
    pub updated_ms: i64,
    /// Written to Prometheus at least once.
    pub written: bool,
}

/// Series and their counts, at most `max` series per family; beyond, counts
/// go to the family's overflow series.
pub struct SeriesMap {
    map: FastMap<SeriesKey, Entry>,
    per_family: [usize; 2],
    max: usize,
}

impl SeriesMap {
    pub fn new(max: usize) -> Self {
        SeriesMap {
            map: FastMap::default(),
            per_family: [0; 2],
            max,
        }
    }

    pub fn len(&self, family: Family) -> usize {
        self.per_family[family.index()]
    }

    /// The entry of `key`, created at zero if new; the overflow series' entry
    /// when the family is full. The flag says whether it overflowed.
    pub fn entry(&mut self, key: SeriesKey, buckets: &Buckets) -> (&mut Entry, bool) {
        let family = key.family;
        let full = self.per_family[family.index()] >= self.max;
        let (key, overflowed) = if full && !key.is_overflow() && !self.map.contains_key(&key) {
            (SeriesKey::overflow(family), true)
        } else {
            (key, false)
        };
        let entry = match self.map.entry(key) {
            MapEntry::Occupied(e) => e.into_mut(),
            MapEntry::Vacant(e) => {
                // The overflow series does not count against the limit.
                if !e.key().is_overflow() {
                    self.per_family[family.index()] += 1;
                }
                e.insert(Entry {
                    value: Value::zero(family, buckets),
                    updated_ms: 0,
                    written: false,
                })
            }
        };
        (entry, overflowed)
    }

    /// Removes the series `keep` says no to.
    pub fn retain(&mut self, mut keep: impl FnMut(&SeriesKey, &Entry) -> bool) {
        let per_family = &mut self.per_family;
        self.map.retain(|k, e| {
            let kept = keep(k, e);
            if !kept && !k.is_overflow() {
                per_family[k.family.index()] -= 1;
            }
            kept
        });
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&SeriesKey, &mut Entry)> {
        self.map.iter_mut()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SeriesKey, &Entry)> {
        self.map.iter()
    }

    pub fn into_series(self) -> impl Iterator<Item = (SeriesKey, Value)> {
        self.map.into_iter().map(|(k, e)| (k, e.value))
    }
}

/// A batch of deltas on the wire (`/vispyr.ring.v1.Ring/Deltas` carries it
/// as its opaque body).
#[derive(Clone, PartialEq, Message)]
pub struct DeltaBatch {
    #[prost(message, repeated, tag = "1")]
    pub series: Vec<SeriesDelta>,
    /// The series are the sender's whole totals of series it owned until
    /// now: the receiver continues them (they are not new series).
    #[prost(bool, tag = "2")]
    pub handover: bool,
    /// Service graph halves that waited for their other half on a member
    /// that is leaving: the receiver owns their traces and pairs them.
    #[prost(message, repeated, tag = "3")]
    pub halves: Vec<HalfDelta>,
}

#[derive(Clone, PartialEq, Message)]
pub struct HalfDelta {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    /// The client span's ID (the server span's parent).
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(bool, tag = "3")]
    pub server: bool,
    #[prost(string, tag = "4")]
    pub service: String,
    #[prost(double, tag = "5")]
    pub seconds: f64,
    #[prost(bool, tag = "6")]
    pub failed: bool,
    #[prost(bool, tag = "7")]
    pub messaging: bool,
    #[prost(string, optional, tag = "8")]
    pub peer: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SeriesDelta {
    /// [`Family`] as a number.
    #[prost(uint32, tag = "1")]
    pub family: u32,
    /// In the family's label order; none for the overflow series.
    #[prost(string, repeated, tag = "2")]
    pub labels: Vec<String>,
    #[prost(uint64, repeated, tag = "3")]
    pub counters: Vec<u64>,
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<HistogramDelta>,
}

#[derive(Clone, PartialEq, Message)]
pub struct HistogramDelta {
    /// Per bucket, the last one +Inf.
    #[prost(uint64, repeated, tag = "1")]
    pub buckets: Vec<u64>,
    #[prost(double, tag = "2")]
    pub sum: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeltaError {
    #[error("undecodable delta batch: {0}")]
    Decode(String),
    #[error("delta of unknown metric family {0}")]
    UnknownFamily(u32),
    #[error(
        "{family} delta has {got} {what}, this member has {want}: \
         ring members disagree on the span_metrics configuration"
    )]
    Shape {
        family: &'static str,
        what: &'static str,
        got: usize,
        want: usize,
    },
}

pub fn encode(series: &[(SeriesKey, Value)], handover: bool) -> Bytes {
    DeltaBatch {
        handover,
        halves: Vec::new(),
        series: series
            .iter()
            .map(|(key, value)| SeriesDelta {
                family: key.family as u32,
                labels: key.labels.clone(),
                counters: value.counters.clone(),
                histograms: value
                    .histograms
                    .iter()
                    .map(|h| HistogramDelta {
                        buckets: h.buckets.clone(),
                        sum: h.sum,
                    })
                    .collect(),
            })
            .collect(),
    }
    .encode_to_vec()
    .into()
}

/// A batch of service graph halves for the owner of their traces.
pub fn encode_halves(halves: &[Waiting]) -> Bytes {
    DeltaBatch {
        halves: halves
            .iter()
            .map(|w| HalfDelta {
                trace_id: w.id.0.to_vec(),
                span_id: w.id.1.to_vec(),
                server: w.side == Side::Server,
                service: w.half.service.clone(),
                seconds: w.half.seconds,
                failed: w.half.failed,
                messaging: w.half.messaging,
                peer: w.peer.clone(),
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

/// A batch's series, whether it is a handover, and its waiting halves.
pub type Decoded = (Vec<(SeriesKey, Value)>, bool, Vec<Waiting>);

/// Decodes a batch and checks every series has this member's shape (labels,
/// counters, histograms and their buckets).
pub fn decode(body: &[u8], buckets: &Buckets) -> Result<Decoded, DeltaError> {
    let batch = DeltaBatch::decode(body).map_err(|e| DeltaError::Decode(e.to_string()))?;
    let handover = batch.handover;
    let halves = batch
        .halves
        .into_iter()
        .map(|h| {
            let bad =
                || DeltaError::Decode("a service graph half's IDs are not 16 and 8 bytes".into());
            Ok(Waiting {
                id: (
                    h.trace_id.as_slice().try_into().map_err(|_| bad())?,
                    h.span_id.as_slice().try_into().map_err(|_| bad())?,
                ),
                side: if h.server { Side::Server } else { Side::Client },
                half: Half {
                    service: h.service,
                    seconds: h.seconds,
                    failed: h.failed,
                    messaging: h.messaging,
                },
                peer: h.peer,
            })
        })
        .collect::<Result<_, DeltaError>>()?;
    let series = batch
        .series
        .into_iter()
        .map(|s| {
            let family = Family::from_wire(s.family).ok_or(DeltaError::UnknownFamily(s.family))?;
            let shape = |what, got: usize, want: usize| {
                if got == want {
                    Ok(())
                } else {
                    Err(DeltaError::Shape {
                        family: family.name(),
                        what,
                        got,
                        want,
                    })
                }
            };
            if !s.labels.is_empty() {
                shape("labels", s.labels.len(), family.label_names().len())?;
            }
            shape("counters", s.counters.len(), family.counter_names().len())?;
            shape(
                "histograms",
                s.histograms.len(),
                family.histogram_names().len(),
            )?;
            let bounds = buckets.of(family).len() + 1;
            for h in &s.histograms {
                shape("histogram buckets", h.buckets.len(), bounds)?;
            }
            Ok((
                SeriesKey {
                    family,
                    labels: s.labels,
                },
                Value {
                    counters: s.counters,
                    histograms: s
                        .histograms
                        .into_iter()
                        .map(|h| Histogram {
                            buckets: h.buckets,
                            sum: h.sum,
                        })
                        .collect(),
                },
            ))
        })
        .collect::<Result<_, _>>()?;
    Ok((series, handover, halves))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets() -> Buckets {
        Buckets {
            span_metrics: vec![0.1, 1.0],
            service_graph: vec![1.0],
        }
    }

    #[test]
    fn a_batch_round_trips_and_a_foreign_shape_is_refused() {
        let b = buckets();
        let mut calls = Value::zero(Family::SpanMetrics, &b);
        calls.counters[0] = 3;
        calls.histograms[0].observe(&b.span_metrics, 0.1);
        calls.histograms[0].observe(&b.span_metrics, 0.5);
        calls.histograms[0].observe(&b.span_metrics, 7.0);
        assert_eq!(calls.histograms[0].buckets, [1, 1, 1]);
        let mut edge = Value::zero(Family::ServiceGraph, &b);
        edge.counters = vec![2, 1];
        let series = vec![
            (
                SeriesKey {
                    family: Family::SpanMetrics,
                    labels: vec![
                        "a".into(),
                        "GET".into(),
                        "SPAN_KIND_SERVER".into(),
                        "STATUS_CODE_UNSET".into(),
                    ],
                },
                calls,
            ),
            (SeriesKey::overflow(Family::ServiceGraph), edge),
        ];
        let body = encode(&series, true);
        let (got, handover, halves) = decode(&body, &b).unwrap();
        assert_eq!((got, handover, halves.len()), (series, true, 0));

        let other = Buckets {
            span_metrics: vec![1.0],
            ..b.clone()
        };
        let err = decode(&body, &other).unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
        assert!(matches!(
            decode(b"\xff\xff", &b),
            Err(DeltaError::Decode(_))
        ));
        let unknown = DeltaBatch {
            series: vec![SeriesDelta {
                family: 9,
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(decode(&unknown, &b), Err(DeltaError::UnknownFamily(9)));
        let short_id = DeltaBatch {
            halves: vec![HalfDelta {
                trace_id: vec![1; 15],
                span_id: vec![1; 8],
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(
            decode(&short_id, &b),
            Err(DeltaError::Decode(m)) if m.contains("16 and 8 bytes")
        ));
    }

    #[test]
    fn owner_keys_separate_label_boundaries() {
        let key = |labels: &[&str]| SeriesKey {
            family: Family::ServiceGraph,
            labels: labels.iter().map(|s| s.to_string()).collect(),
        };
        assert_ne!(
            key(&["ab", "c", ""]).owner_key(),
            key(&["a", "bc", ""]).owner_key()
        );
    }

    #[test]
    fn a_full_map_counts_new_series_into_the_overflow_series() {
        let b = buckets();
        let mut map = SeriesMap::new(1);
        let key = |s: &str| SeriesKey {
            family: Family::ServiceGraph,
            labels: vec![s.into(), "x".into(), String::new()],
        };
        assert!(!map.entry(key("a"), &b).1);
        map.entry(key("a"), &b).0.value.counters[0] += 1;
        let (e, overflowed) = map.entry(key("b"), &b);
        assert!(overflowed);
        e.value.counters[0] += 1;
        assert!(!map.entry(key("a"), &b).1, "a known series is no overflow");
        // Another family has its own limit.
        let span = SeriesKey {
            family: Family::SpanMetrics,
            labels: vec![String::new(); 4],
        };
        assert!(!map.entry(span, &b).1);
        assert_eq!(map.len(Family::ServiceGraph), 1);
        let overflow = map
            .iter()
            .find(|(k, _)| k.is_overflow())
            .map(|(_, e)| e.value.counters[0]);
        assert_eq!(overflow, Some(1));
        map.retain(|k, _| k.family == Family::SpanMetrics);
        assert_eq!(map.len(Family::ServiceGraph), 0);
    }
}
