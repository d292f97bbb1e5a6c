//! Span metrics and service graph, computed from every span accepted at its
//! trace's owner, before any sampling, in two stages so that every series
//! has exactly one writer:
//!
//! 1. each member turns the spans it observes into per-interval *deltas*,
//!    keyed by series ([`SeriesKey`]);
//! 2. at each interval, every delta goes to its series' owner
//!    ([`DeltaRouter::owner`]): merged here when the owner is this member,
//!    otherwise sent ([`DeltaRouter::send`], an encoded [`delta::DeltaBatch`])
//!    to the member that owns it, which applies it with
//!    [`Generator::receive`]. Only the owner holds the cumulative counts, and
//!    only the owner writes them to Prometheus.
//!
//! Both stages are bounded in series per family (`span_metrics.max_series`):
//! beyond, counts go to an overflow series labelled `metric_overflow="true"`.

pub mod delta;
mod render;
pub mod servicegraph;

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vispyr_common::app::BoxError;

pub use delta::{Buckets, DeltaError, Family, SeriesKey, Value};
use delta::{FastMap, SeriesMap};
use servicegraph::{Edge, EdgeStore, Half, Side, Upsert, Waiting};

use crate::config::SpanMetrics as Config;
use crate::otlp::Refusal;
use crate::pipeline::{DeltasHandler, SpanObserver};
use crate::remote_write::{SeriesQueue, TimeSeries};
use crate::wire::{Attributes, Resource, Span};

/// Who holds the cumulative state of a series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Local,
    /// A ring member, as the router names it.
    Remote(Arc<str>),
}

/// Samples per queued span metrics write, at most about.
const WRITE_CHUNK_SAMPLES: u64 = 5_000;

pub type SendFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// Where deltas go: the ring implements it; alone, [`LocalOnly`].
pub trait DeltaRouter: Send + Sync + 'static {
    /// The owner of the series whose [`SeriesKey::owner_key`] is `series_key`.
    fn owner(&self, series_key: &[u8]) -> Owner;
    /// Delivers an encoded [`delta::DeltaBatch`] to `member`, which passes it
    /// to its [`Generator::receive`]. On error the deltas are kept and routed
    /// again at the next interval.
    fn send(&self, member: &str, batch: Bytes) -> SendFuture;
}

/// A gateway without a ring owns every series.
pub struct LocalOnly;

impl DeltaRouter for LocalOnly {
    fn owner(&self, _series_key: &[u8]) -> Owner {
        Owner::Local
    }

    fn send(&self, member: &str, _batch: Bytes) -> SendFuture {
        let member = member.to_owned();
        Box::pin(async move { Err(format!("no ring: cannot send deltas to {member}").into()) })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("span_metrics.{key} must be strictly increasing finite numbers, got {got:?}")]
    Buckets { key: &'static str, got: Vec<f64> },
    #[error("span_metrics.{0} must be greater than 0")]
    Zero(&'static str),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    pub family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub family: &'static str,
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Default)]
pub struct GeneratorMetrics {
    pub spans: Counter,
    pub series: MetricFamily<FamilyLabels, Gauge>,
    pub overflow: MetricFamily<OverflowLabels, Counter>,
    pub expired_edges: Counter,
    pub dropped_edge_spans: Counter,
    pub delta_batches: MetricFamily<OutcomeLabels, Counter>,
    pub writes_skipped: Counter,
}

impl GeneratorMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "spanmetrics_spans",
            "Spans turned into span metrics and service graph edges",
            self.spans.clone(),
        );
        r.register(
            "spanmetrics_series",
            "Series this member owns and writes, by family",
            self.series.clone(),
        );
        r.register(
            "spanmetrics_overflow",
            "Series updates counted into the metric_overflow series because max_series was reached, by family and stage (delta, owner)",
            self.overflow.clone(),
        );
        r.register(
            "service_graph_expired_edges",
            "Client or server spans whose other half did not arrive within service_graph.wait_ms",
            self.expired_edges.clone(),
        );
        r.register(
            "service_graph_dropped_spans",
            "Client or server spans not paired because service_graph.max_pending_edges were waiting",
            self.dropped_edge_spans.clone(),
        );
        r.register(
            "spanmetrics_delta_batches",
            "Delta batches between ring members, by outcome (sent, send_failed, received, refused)",
            self.delta_batches.clone(),
        );
        r.register(
            "spanmetrics_writes_skipped",
            "Intervals whose cumulative series were not written because the remote write queue was full",
            self.writes_skipped.clone(),
        );
    }

    fn batch(&self, outcome: &'static str) {
        self.delta_batches
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

pub struct Generator {
    buckets: Buckets,
    interval: Duration,
    idle_ms: i64,
    /// Stage 1: this interval's deltas.
    deltas: Mutex<SeriesMap>,
    edges: Mutex<EdgeStore>,
    /// Stage 2: the series this member owns.
    owned: Mutex<Owned>,
    router: Arc<dyn DeltaRouter>,
    out: Option<Arc<SeriesQueue>>,
    max_series: usize,
    metrics: GeneratorMetrics,
}

struct Owned {
    series: SeriesMap,
    /// Timestamp of the last write: each write is later than the one before.
    last_ms: i64,
}

fn check_buckets(key: &'static str, b: &[f64]) -> Result<(), ConfigError> {
    let ok = !b.is_empty() && b.iter().all(|v| v.is_finite()) && b.windows(2).all(|w| w[0] < w[1]);
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Buckets {
            key,
            got: b.to_vec(),
        })
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Generator {
    /// `out` is where the owned series are written (none: computed, not written).
    pub fn new(
        config: &Config,
        router: Arc<dyn DeltaRouter>,
        out: Option<Arc<SeriesQueue>>,
        metrics: GeneratorMetrics,
    ) -> Result<Self, ConfigError> {
        check_buckets("latency_buckets", &config.latency_buckets)?;
        check_buckets("service_graph.buckets", &config.service_graph.buckets)?;
        for (key, value) in [
            ("interval_ms", config.interval_ms),
            ("max_series", config.max_series as u64),
            (
                "service_graph.max_pending_edges",
                config.service_graph.max_pending_edges as u64,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(key));
            }
        }
        Ok(Generator {
            buckets: Buckets {
                span_metrics: config.latency_buckets.clone(),
                service_graph: config.service_graph.buckets.clone(),
            },
            interval: Duration::from_millis(config.interval_ms),
            idle_ms: config.series_idle_ms as i64,
            deltas: Mutex::new(SeriesMap::new(config.max_series)),
            edges: Mutex::new(EdgeStore::new(
                Duration::from_millis(config.service_graph.wait_ms),
                config.service_graph.max_pending_edges,
            )),
            owned: Mutex::new(Owned {
                series: SeriesMap::new(config.max_series),
                last_ms: 0,
            }),
            router,
            out,
            max_series: config.max_series,
            metrics,
        })
    }

    /// Applies a delta batch another member sent for series this member owns
    /// (the ring's `/vispyr.ring.v1.Ring/Deltas` handler calls this); returns
    /// the number of series in it.
    pub fn receive(&self, batch: &[u8]) -> Result<usize, DeltaError> {
        let (series, handover, halves) = match delta::decode(batch, &self.buckets) {
            Ok(decoded) => decoded,
            Err(e) => {
                self.metrics.batch("refused");
                return Err(e);
            }
        };
        self.metrics.batch("received");
        let n = series.len();
        self.merge_owned(series, handover);
        if !halves.is_empty() {
            let now = Instant::now();
            let mut edges = Vec::new();
            {
                let mut store = self.lock_edges();
                for w in halves {
                    let upsert = store.upsert(w.id, w.side, w.half, w.peer, now);
                    self.paired(upsert, &mut edges);
                }
            }
            self.add_edges(&mut self.lock_deltas(), edges);
        }
        Ok(n)
    }

    /// Keeps a completed edge; counts a half the full store dropped.
    fn paired(&self, upsert: Upsert, edges: &mut Vec<Edge>) {
        match upsert {
            Upsert::Complete(edge) => edges.push(edge),
            Upsert::Waiting => {}
            Upsert::Dropped => {
                self.metrics.dropped_edge_spans.inc();
            }
        }
    }

    /// Hands the service graph halves still waiting to the new owners of
    /// their traces (this member left the ring): the other halves go there.
    async fn hand_over_halves(&self) {
        let waiting = self.lock_edges().take_waiting();
        let mut by_owner: HashMap<Arc<str>, Vec<Waiting>> = HashMap::new();
        let mut kept = 0;
        for w in waiting {
            match self.router.owner(&w.id.0) {
                Owner::Remote(member) => by_owner.entry(member).or_default().push(w),
                // Alone: no other member to pair them.
                Owner::Local => kept += 1,
            }
        }
        self.metrics.expired_edges.inc_by(kept);
        let sends = by_owner.into_iter().map(|(member, halves)| {
            let sent = self.router.send(&member, delta::encode_halves(&halves));
            async move { (sent.await, member, halves.len()) }
        });
        for (sent, member, halves) in futures::future::join_all(sends).await {
            match sent {
                Ok(()) => self.metrics.batch("sent"),
                Err(e) => {
                    self.metrics.batch("send_failed");
                    self.metrics.expired_edges.inc_by(halves as u64);
                    tracing::warn!(%member, halves, error = %e,
                        "cannot hand service graph halves to their trace's owner");
                }
            }
        }
    }

    /// Every `interval_ms` until `stop`: expire edges, route the deltas,
    /// write the owned series; then once more, so that a drain hands over
    /// what was counted.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => self.flush(Instant::now()).await,
                () = stop.cancelled() => break,
            }
        }
        self.hand_over_halves().await;
        self.flush(Instant::now()).await;
    }

    async fn flush(&self, now: Instant) {
        let (expired, virtual_edges) = self.lock_edges().expire(now);
        self.metrics.expired_edges.inc_by(expired);
        if !virtual_edges.is_empty() {
            self.add_edges(&mut self.lock_deltas(), virtual_edges);
        }
        let deltas = std::mem::replace(&mut *self.lock_deltas(), SeriesMap::new(self.max_series));
        let mut local = Vec::new();
        let mut remote: HashMap<Arc<str>, Vec<(SeriesKey, Value)>> = HashMap::new();
        for (key, value) in deltas.into_series() {
            match self.router.owner(&key.owner_key()) {
                Owner::Local => local.push((key, value)),
                Owner::Remote(member) => remote.entry(member).or_default().push((key, value)),
            }
        }
        self.merge_owned(local, false);
        // Series whose ownership moved (ring membership changed) are handed
        // over whole: the new owner continues from this total, and this
        // member stops writing them, so a series keeps one writer.
        let mut handovers: HashMap<Arc<str>, Vec<(SeriesKey, Value)>> = HashMap::new();
        self.lock_owned()
            .series
            .retain(|key, entry| match self.router.owner(&key.owner_key()) {
                Owner::Local => true,
                Owner::Remote(member) => {
                    handovers
                        .entry(member)
                        .or_default()
                        .push((key.clone(), entry.value.clone()));
                    false
                }
            });
        let batches = remote
            .into_iter()
            .map(|(m, s)| (m, s, false))
            .chain(handovers.into_iter().map(|(m, s)| (m, s, true)));
        // To every owner at once: a hung member delays the interval by one
        // forward timeout, not one per member.
        let sends = batches.map(|(member, series, handover)| {
            let sent = self.router.send(&member, delta::encode(&series, handover));
            async move { (sent.await, member, series, handover) }
        });
        for (sent, member, series, handover) in futures::future::join_all(sends).await {
            let Err(e) = sent else {
                self.metrics.batch("sent");
                continue;
            };
            self.metrics.batch("send_failed");
            tracing::warn!(%member, series = series.len(), handover, error = %e,
                "cannot send span metrics to their owner, keeping them for the next interval");
            if handover {
                // Still this member's to hand over: kept whole, tried again.
                self.merge_owned(series, true);
            } else {
                let mut deltas = self.lock_deltas();
                for (key, value) in series {
                    self.add(&mut deltas, key, 1, |v| v.merge(&value));
                }
            }
        }
        self.write();
    }

    /// Writes every owned series, cumulative, stamped now.
    fn write(&self) {
        let Some(out) = &self.out else {
            return;
        };
        let mut owned = self.lock_owned();
        let ts = now_ms().max(owned.last_ms + 1);
        owned.last_ms = ts;
        let idle = self.idle_ms;
        owned.series.retain(|_, e| ts - e.updated_ms < idle);
        for family in Family::ALL {
            self.metrics
                .series
                .get_or_create(&FamilyLabels {
                    family: family.name(),
                })
                .set(owned.series.len(family) as i64);
        }
        // In chunks: one request stays a reasonable size, and a full queue
        // skips only some series for one interval.
        let mut chunk: Vec<TimeSeries> = Vec::new();
        let mut samples = 0;
        let mut entries: Vec<&mut delta::Entry> = Vec::new();
        let mut skipped = None;
        let mut entries_iter = owned.series.iter_mut().peekable();
        while let Some((key, entry)) = entries_iter.next() {
            let before = chunk.len();
            render::series(key, entry, &self.buckets, ts, &mut chunk);
            samples += TimeSeries::samples(&chunk[before..]);
            entries.push(entry);
            if samples < WRITE_CHUNK_SAMPLES && entries_iter.peek().is_some() {
                continue;
            }
            match out.push(samples, std::mem::take(&mut chunk)) {
                Ok(()) => entries.drain(..).for_each(|e| e.written = true),
                Err(refusal) => {
                    entries.clear();
                    skipped = Some(refusal);
                }
            }
            samples = 0;
        }
        if let Some(refusal) = skipped {
            // Nothing is lost: the next interval writes the totals again.
            self.metrics.writes_skipped.inc();
            tracing::warn!(%refusal, "span metrics not (all) written this interval");
        }
    }

    /// Adds to the owned totals; `continued` series were written before
    /// (by their previous owner), so they get no initial zero.
    fn merge_owned(&self, series: Vec<(SeriesKey, Value)>, continued: bool) {
        if series.is_empty() {
            return;
        }
        let now = now_ms();
        let mut owned = self.lock_owned();
        for (key, value) in series {
            let family = key.family;
            let (entry, overflowed) = owned.series.entry(key, &self.buckets);
            entry.value.merge(&value);
            entry.updated_ms = now;
            entry.written |= continued;
            if overflowed {
                self.overflowed(family, "owner", 1);
            }
        }
    }

    /// `updates`: of the series (spans or edges) that went to the overflow.
    fn overflowed(&self, family: Family, stage: &'static str, updates: u64) {
        self.metrics
            .overflow
            .get_or_create(&OverflowLabels {
                family: family.name(),
                stage,
            })
            .inc_by(updates);
    }

    /// Applies `update`, worth `updates` spans or edges, to `key`'s delta.
    fn add(
        &self,
        deltas: &mut SeriesMap,
        key: SeriesKey,
        updates: u64,
        update: impl FnOnce(&mut Value),
    ) {
        let family = key.family;
        let (entry, overflowed) = deltas.entry(key, &self.buckets);
        update(&mut entry.value);
        if overflowed {
            self.overflowed(family, "delta", updates);
        }
    }

    fn add_edges(&self, deltas: &mut SeriesMap, edges: Vec<Edge>) {
        let bounds = &self.buckets.service_graph;
        for edge in edges {
            let key = SeriesKey {
                family: Family::ServiceGraph,
                labels: vec![edge.client, edge.server, edge.connection_type.into()],
            };
            self.add(deltas, key, 1, |v| {
                v.counters[0] += 1;
                v.counters[1] += u64::from(edge.failed);
                v.histograms[0].observe(bounds, edge.server_seconds);
                v.histograms[1].observe(bounds, edge.client_seconds);
            });
        }
    }

    fn lock_deltas(&self) -> std::sync::MutexGuard<'_, SeriesMap> {
        self.deltas.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_edges(&self) -> std::sync::MutexGuard<'_, EdgeStore> {
        self.edges.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_owned(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The name Tempo gives an enum value: its proto name, or the number.
fn kind_name(kind: i32) -> String {
    SpanKind::try_from(kind)
        .map(|k| k.as_str_name().to_owned())
        .unwrap_or_else(|_| kind.to_string())
}

fn status_name(code: i32) -> String {
    StatusCode::try_from(code)
        .map(|c| c.as_str_name().to_owned())
        .unwrap_or_else(|_| code.to_string())
}

/// A database call names its server itself (Tempo's precedence).
fn database_server(resource: &Attributes<'_>, span: &Span<'_>) -> Option<String> {
    let find = |key| span.attributes.string(key).or_else(|| resource.string(key));
    let db_name = find("db.name");
    if db_name.is_none() && find("db.system").is_none() {
        return None;
    }
    let server = find("peer.service")
        .or_else(|| find("server.address"))
        .or_else(|| {
            let host = find("network.peer.address")?;
            Some(match find("network.peer.port") {
                Some(port) => format!("{host}:{port}").into(),
                None => host,
            })
        })
        .or(db_name)?;
    Some(server.into_owned())
}

/// The name a client span gives the service it calls, for an edge whose
/// server never reports.
fn peer_name(span: &Span<'_>) -> Option<String> {
    ["peer.service", "db.name", "db.system"]
        .into_iter()
        .find_map(|key| span.attributes.string(key))
        .map(Cow::into_owned)
}

impl SpanObserver for Generator {
    fn observe(&self, resources: &[Resource<'_>]) {
        let now = Instant::now();
        let mut edges = Vec::new();
        let mut spans = 0;
        let services: Vec<Option<Cow<'_, str>>> = resources
            .iter()
            .map(|r| r.attributes.string("service.name"))
            .collect();
        {
            let mut store = self.lock_edges();
            for (resource, service) in resources.iter().zip(&services) {
                let Some(service) = service else {
                    // Tempo leaves spans of unnamed services out of the graph.
                    continue;
                };
                for span in &resource.spans {
                    let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
                    let half = || Half {
                        service: service.as_ref().to_owned(),
                        seconds: span.seconds(),
                        failed: span.status_code == StatusCode::Error as i32,
                        messaging: matches!(kind, SpanKind::Producer | SpanKind::Consumer),
                    };
                    let (Ok(trace), Ok(id), parent) = (
                        <[u8; 16]>::try_from(span.trace_id),
                        <[u8; 8]>::try_from(span.span_id),
                        <[u8; 8]>::try_from(span.parent_span_id).ok(),
                    ) else {
                        continue;
                    };
                    let upsert = match kind {
                        SpanKind::Client | SpanKind::Producer => {
                            if let Some(server) = database_server(&resource.attributes, span) {
                                let h = half();
                                edges.push(Edge {
                                    client: h.service,
                                    server,
                                    connection_type: servicegraph::DATABASE,
                                    failed: h.failed,
                                    client_seconds: h.seconds,
                                    server_seconds: h.seconds,
                                });
                                continue;
                            }
                            store.upsert((trace, id), Side::Client, half(), peer_name(span), now)
                        }
                        SpanKind::Server | SpanKind::Consumer => match parent {
                            Some(parent) => {
                                store.upsert((trace, parent), Side::Server, half(), None, now)
                            }
                            None => {
                                // A root: called from outside, by a "user".
                                let h = half();
                                edges.push(Edge {
                                    client: "user".into(),
                                    server: h.service,
                                    connection_type: servicegraph::VIRTUAL,
                                    failed: h.failed,
                                    client_seconds: 0.0,
                                    server_seconds: h.seconds,
                                });
                                continue;
                            }
                        },
                        _ => continue,
                    };
                    self.paired(upsert, &mut edges);
                }
            }
        }
        // Per request first, keyed by borrowed label values: a request holds
        // many spans of few series, so the shared deltas (and their lock)
        // see each series once, and only then is its key made.
        let bounds = &self.buckets.span_metrics;
        let mut series: FastMap<(&str, &str, i32, i32), Value> = FastMap::default();
        for (resource, service) in resources.iter().zip(&services) {
            let service = service.as_deref().unwrap_or_default();
            for span in &resource.spans {
                spans += 1;
                let value = series
                    .entry((service, span.name, span.kind, span.status_code))
                    .or_insert_with(|| Value::zero(Family::SpanMetrics, &self.buckets));
                value.counters[0] += 1;
                value.histograms[0].observe(bounds, span.seconds());
            }
        }
        let mut deltas = self.lock_deltas();
        for ((service, name, kind, status), value) in series {
            let key = SeriesKey {
                family: Family::SpanMetrics,
                labels: vec![
                    service.to_owned(),
                    name.to_owned(),
                    kind_name(kind),
                    status_name(status),
                ],
            };
            let spans = value.counters[0];
            self.add(&mut deltas, key, spans, |v| v.merge(&value));
        }
        self.add_edges(&mut deltas, edges);
        self.metrics.spans.inc_by(spans);
    }
}

/// Deltas other ring members send to this one, the owner of their series.
impl DeltasHandler for Generator {
    fn deltas(&self, body: Bytes) -> Result<(), Refusal> {
        self.receive(&body)
            .map(|_| ())
            .map_err(|e| Refusal::Malformed(format!("span metrics deltas: {e}")))
    }
}

#[cfg(test)]
mod tests;
