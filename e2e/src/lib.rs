//! The Vispyr test harness: real upstream components on loopback, each with
//! free ports and a temp dir of its own, gone when their handle drops.
//!
//! - [`TestCluster`]: etcd + kube-apiserver (RBAC, service accounts, admission
//!   webhooks) and a `kube::Client` for it.
//! - [`NodeCluster`]: the same control plane plus controller-manager,
//!   scheduler, containerd and a kubelet: pods really run (root only).
//! - [`Backends`]: Prometheus, Tempo and Pyroscope, with query helpers.
//! - [`NodeExporter`]: the reference for the node-agent's host metrics.
//! - [`dashboards`]: the queries Vispyr's Grafana dashboards send.
//! - [`demo`]: Vispyr installed with Helm on a `NodeCluster`, with the demo app.

mod backends;
mod cluster;
pub mod dashboards;
pub mod demo;
mod error;
mod eventually;
pub mod fixtures;
pub mod golden;
mod node;
mod pki;
pub mod process;
mod tools;

pub use backends::{
    Backends, Flamegraph, NodeExporter, Prometheus, PrometheusApi, Pyroscope, PyroscopeApi, Tempo,
    TempoApi, TraceSpan,
};
pub use cluster::{TestCluster, assert_allowed, assert_forbidden};
pub use error::Error;
pub use eventually::eventually;
pub use node::{NODE_NAME, NodeCluster};
pub use tools::{helm, tool};
