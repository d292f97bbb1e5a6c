//! The Vispyr operator: the `VispyrInstrumentation` CRD and the Node.js
//! injection applied by its mutating admission webhook.
//!
//! [`inject::mutate`] is a pure function (pod + namespace + instrumentations ->
//! [`inject::Outcome`]); the webhook server and the controller call it.

pub mod crd;
pub mod inject;

use std::path::PathBuf;

/// Errors of this library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
