//! The profiler's self metrics, served at `:9100/metrics` with a
//! `vispyr_node_agent_profiler_` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::sampler::CounterDeltas;
use crate::symbolize::Stats;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StackLabels {
    /// `user` or `kernel`.
    pub stack: &'static str,
}

const USER: StackLabels = StackLabels { stack: "user" };
const KERNEL: StackLabels = StackLabels { stack: "kernel" };

#[derive(Debug, Clone)]
pub struct ProfilerMetrics {
    pub samples: Counter,
    pub samples_dropped: Counter,
    pub stack_collisions: Family<StackLabels, Counter>,
    pub stack_errors: Family<StackLabels, Counter>,
    pub drain_seconds: Histogram,
    pub symbolize_seconds: Histogram,
    pub symbol_lookups: Family<StackLabels, Counter>,
    pub symbol_misses: Family<StackLabels, Counter>,
    pub processes_unreadable: Counter,
    pub native_resolved: Counter,
    pub native_files: Counter,
    pub batches_dropped: Counter,
}

impl ProfilerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ProfilerMetrics {
            samples: Counter::default(),
            samples_dropped: Counter::default(),
            stack_collisions: Family::default(),
            stack_errors: Family::default(),
            // 100 µs .. ~3 s
            drain_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            symbolize_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            symbol_lookups: Family::default(),
            symbol_misses: Family::default(),
            processes_unreadable: Counter::default(),
            native_resolved: Counter::default(),
            native_files: Counter::default(),
            batches_dropped: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("vispyr_node_agent_profiler");
        r.register(
            "samples",
            "CPU samples recorded by the eBPF program",
            m.samples.clone(),
        );
        r.register(
            "samples_dropped",
            "Samples dropped because the counts map was full (raise profiling.counts_entries)",
            m.samples_dropped.clone(),
        );
        r.register(
            "stack_collisions",
            "Samples whose stack hashed to an id taken by another stack (raise profiling.stacks_entries)",
            m.stack_collisions.clone(),
        );
        r.register(
            "stack_errors",
            "Samples whose stack could not be recorded for another reason",
            m.stack_errors.clone(),
        );
        r.register(
            "drain_duration_seconds",
            "Time to swap and empty the eBPF maps",
            m.drain_seconds.clone(),
        );
        r.register(
            "symbolize_duration_seconds",
            "Time to name the frames of one drain",
            m.symbolize_seconds.clone(),
        );
        r.register(
            "symbol_lookups",
            "Distinct addresses looked up, per drain and process",
            m.symbol_lookups.clone(),
        );
        r.register(
            "symbol_misses",
            "Addresses left unnamed",
            m.symbol_misses.clone(),
        );
        r.register(
            "processes_unreadable",
            "Processes whose binaries could not be read at symbolization (most often: exited)",
            m.processes_unreadable.clone(),
        );
        r.register(
            "native_symbols_resolved",
            "Native addresses named from the binaries: not cached from an earlier drain",
            m.native_resolved.clone(),
        );
        r.register(
            "native_files_read",
            "Binaries opened to name native addresses, counted once per drain",
            m.native_files.clone(),
        );
        r.register(
            "batches_dropped",
            "Batches dropped because the exporter's queue was full",
            m.batches_dropped.clone(),
        );
        m
    }

    pub fn record_drain(&self, c: &CounterDeltas) {
        self.samples.inc_by(c.samples);
        self.samples_dropped.inc_by(c.counts_full);
        self.stack_collisions
            .get_or_create(&USER)
            .inc_by(c.user_collisions);
        self.stack_collisions
            .get_or_create(&KERNEL)
            .inc_by(c.kernel_collisions);
        self.stack_errors.get_or_create(&USER).inc_by(c.user_errors);
    }

    pub fn record_symbolization(&self, s: &Stats) {
        self.symbol_lookups
            .get_or_create(&USER)
            .inc_by(s.user_addresses);
        self.symbol_lookups
            .get_or_create(&KERNEL)
            .inc_by(s.kernel_addresses);
        self.symbol_misses
            .get_or_create(&USER)
            .inc_by(s.user_misses);
        self.symbol_misses
            .get_or_create(&KERNEL)
            .inc_by(s.kernel_misses);
        self.processes_unreadable.inc_by(s.processes_unreadable);
        self.native_resolved.inc_by(s.native_resolved);
        self.native_files.inc_by(s.native_files);
    }
}
