//! The gateway's own metrics, all under `vispyr_gateway_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::queue::ExporterMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExporterLabels {
    pub exporter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabels {
    pub signal: &'static str,
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub signal: &'static str,
    pub transport: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OwnerLabels {
    /// `local` or `remote`.
    pub owner: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardErrorLabels {
    /// One of [`Self::REASONS`].
    pub reason: &'static str,
}

impl ForwardErrorLabels {
    /// The peer left the ring.
    pub const UNREACHABLE: &'static str = "unreachable";
    /// Its answer went to the client.
    pub const REFUSED: &'static str = "refused";
    /// No owner took the spans in time.
    pub const UNPLACED: &'static str = "unplaced";
    pub const REASONS: [&'static str; 3] = [Self::UNREACHABLE, Self::REFUSED, Self::UNPLACED];
}

/// The hash ring's metrics, under `vispyr_gateway_ring_`.
#[derive(Clone, Default)]
pub struct RingMetrics {
    pub members: Gauge,
    pub changes: Counter,
    pub routed_spans: Family<OwnerLabels, Counter>,
    pub received_spans: Counter,
    pub forward_errors: Family<ForwardErrorLabels, Counter>,
}

impl RingMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ring");
        r.register(
            "members",
            "Members in this member's view of the ring (itself included while it is a member)",
            self.members.clone(),
        );
        r.register(
            "membership_changes",
            "Times this member's view of the ring changed (each moves trace ownership)",
            self.changes.clone(),
        );
        r.register(
            "routed_spans",
            "Spans received from clients, by owner: this member or another one",
            self.routed_spans.clone(),
        );
        r.register(
            "received_spans",
            "Spans other members forwarded to this one, their owner",
            self.received_spans.clone(),
        );
        r.register(
            "forward_errors",
            "Failed forwards to other members, by reason",
            self.forward_errors.clone(),
        );
    }
}

#[derive(Clone, Default)]
pub struct Metrics {
    pub accepted_items: Family<ReceiverLabels, Counter>,
    pub rejected_items: Family<ReceiverLabels, Counter>,
    pub refused_requests: Family<RefusedLabels, Counter>,
    pub not_exported_items: Family<SignalLabels, Counter>,
    pub ring: RingMetrics,
    /// Exporters counted in spans, samples and profiles.
    pub spans: ExporterFamilies,
    pub samples: ExporterFamilies,
    pub profiles: ExporterFamilies,
    pub generator: crate::spanmetrics::GeneratorMetrics,
    pub converter: crate::remote_write::ConverterMetrics,
}

/// The counters of every exporter whose items are of one unit.
#[derive(Clone, Default)]
pub struct ExporterFamilies {
    sent: Family<ExporterLabels, Counter>,
    retried: Family<ExporterLabels, Counter>,
    dropped: Family<ExporterLabels, Counter>,
    held: Family<ExporterLabels, Gauge>,
    capacity: Family<ExporterLabels, Gauge>,
}

impl ExporterFamilies {
    fn register(&self, r: &mut Registry, unit: &str) {
        let mut capitalized = unit.to_owned(); // the help text starts a sentence
        capitalized[..1].make_ascii_uppercase();
        r.register(
            format!("exporter_sent_{unit}"),
            format!("{capitalized} the backend accepted"),
            self.sent.clone(),
        );
        r.register(
            format!("exporter_retried_{unit}"),
            format!("{capitalized} whose export failed with a retryable error and was retried"),
            self.retried.clone(),
        );
        r.register(
            format!("exporter_dropped_{unit}"),
            format!(
                "Queued {unit} given up: permanent errors, rejections, retries exhausted, drain timeout"
            ),
            self.dropped.clone(),
        );
        r.register(
            format!("exporter_queue_{unit}"),
            format!("{capitalized} queued or being sent"),
            self.held.clone(),
        );
        r.register(
            format!("exporter_queue_capacity_{unit}"),
            format!("{capitalized} the queue holds at most"),
            self.capacity.clone(),
        );
    }

    /// The counters of one exporter.
    pub fn exporter(&self, exporter: &'static str) -> ExporterMetrics {
        let labels = ExporterLabels { exporter };
        ExporterMetrics {
            sent: self.sent.get_or_create(&labels).clone(),
            retried: self.retried.get_or_create(&labels).clone(),
            dropped: self.dropped.get_or_create(&labels).clone(),
            held: self.held.get_or_create(&labels).clone(),
            capacity: self.capacity.get_or_create(&labels).clone(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry` (the root one; the prefix is added here).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("vispyr_gateway");
        r.register(
            "receiver_accepted_items",
            "Spans, data points, log records or profiles accepted from clients",
            m.accepted_items.clone(),
        );
        r.register(
            "receiver_rejected_items",
            "Invalid items left out of accepted requests (reported as partial success)",
            m.rejected_items.clone(),
        );
        r.register(
            "receiver_refused_requests",
            "Requests refused as a whole, by reason",
            m.refused_requests.clone(),
        );
        r.register(
            "not_exported_items",
            "Accepted items dropped because no exporter for their signal is configured or implemented",
            m.not_exported_items.clone(),
        );
        m.spans.register(r, "spans");
        m.samples.register(r, "samples");
        m.profiles.register(r, "profiles");
        m.generator.register(r);
        m.converter.register(r);
        m.ring.register(r);
        m.start_at_zero();
        m
    }

    /// Every series of the event counters at zero, so that a dashboard
    /// reads "none refused" rather than no data before the first event.
    fn start_at_zero(&self) {
        for signal in crate::otlp::SIGNALS {
            drop(
                self.not_exported_items
                    .get_or_create(&SignalLabels { signal }),
            );
            for transport in [crate::grpc::TRANSPORT, crate::http::TRANSPORT] {
                for reason in crate::otlp::Refusal::REASONS {
                    let labels = RefusedLabels {
                        signal,
                        transport,
                        reason,
                    };
                    drop(self.refused_requests.get_or_create(&labels));
                }
            }
        }
        for reason in ForwardErrorLabels::REASONS {
            drop(
                self.ring
                    .forward_errors
                    .get_or_create(&ForwardErrorLabels { reason }),
            );
        }
    }
}
