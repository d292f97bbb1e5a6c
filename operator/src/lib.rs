//! The Vispyr operator: the `VispyrInstrumentation` CRD and the Node.js
//! injection applied by its mutating admission webhook.
//!
//! [`inject::mutate`] is a pure function (pod + namespace + instrumentations ->
//! [`inject::Outcome`]); the webhook server and the controller call it.

pub mod certs;
pub mod controller;
pub mod crd;
pub mod inject;
pub mod leader;
pub mod namespaces;
pub mod service;
pub mod webhook;

use std::path::PathBuf;

/// Errors of this library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API")]
    Kube(#[from] kube::Error),
    #[error("generating the webhook certificate")]
    Certificate(#[from] rcgen::Error),
    #[error("webhook TLS: {0}")]
    Tls(String),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] vispyr_common::admin::AdminError),
    /// The leader's cache of injected pods ended (its watch was dropped).
    #[error("the cache of injected pods is closed")]
    PodCacheClosed,
    /// The CRD could not be rendered as YAML.
    #[error("rendering the CustomResourceDefinition as YAML")]
    CrdYaml(#[source] serde_yaml::Error),
    /// A generated file could not be written.
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
