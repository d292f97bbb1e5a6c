use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(thiserror::Error)]
pub enum Error {
    #[error("{name} is not in {dir}: run `make tools` to build the pinned upstream tools")]
    MissingTool { name: String, dir: PathBuf },
    #[error("{name} is not installed: run e2e/cluster/deps.sh (make deps)")]
    MissingSystemTool { name: String },
    #[error("a node cluster runs containerd and a kubelet, which need root")]
    NotRoot,
    #[error("the node cluster left traces on the host:\n{}", .0.join("\n"))]
    Leftovers(Vec<String>),
    #[error("starting {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{name} exited ({status}); its last log lines:\n{log}")]
    Exited {
        name: String,
        status: String,
        log: String,
    },
    #[error("{name} not ready after {after:?}; its last log lines:\n{log}")]
    NotReady {
        name: String,
        after: Duration,
        log: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("HTTP {what}: {source}")]
    Http {
        what: String,
        source: reqwest::Error,
    },
    #[error("{what}: {message}")]
    Backend { what: String, message: String },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn http(what: impl Into<String>, source: reqwest::Error) -> Self {
        Self::Http {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn backend(what: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Backend {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// Tests report errors through `expect`, which prints `Debug`: make that the
/// readable message, with the tool's log lines on lines of their own.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
