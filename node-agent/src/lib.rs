//! vispyr-node-agent: the eBPF CPU profiler and host metrics of one node.

pub mod attribution;
pub mod export;
pub mod stack;
