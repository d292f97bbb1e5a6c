//! vispyr-node-agent: the eBPF CPU profiler and host metrics of one node.

pub mod attribution;
pub mod config;
pub mod export;
pub mod hostmetrics;
pub mod metrics;
pub mod sampler;
pub mod service;
pub mod stack;
pub mod symbolize;
