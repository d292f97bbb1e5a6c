//! vispyr-node-agent: the eBPF CPU profiler and host metrics of one node.

pub mod hostmetrics;
pub mod stack;
