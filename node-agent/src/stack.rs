//! What the profiler hands to attribution and export: symbolized stacks with
//! a sample count, per process. The sampler and symbolizer produce these; the
//! attribution and OTLP export consume them, so this is the one shape both
//! sides agree on.

use std::sync::Arc;
use std::time::SystemTime;

/// What a frame is, so dashboards can hide or keep whole classes of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Kernel,
    Native,
    Js,
    /// JavaScript of Node.js itself (`node:internal/...`).
    NodeInternal,
    /// JavaScript from `node_modules/<package>`; the package is in `Frame::package`.
    NodeModules,
}

impl FrameKind {
    /// The value of the `frame.kind` attribute on exported frames.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Kernel => "kernel",
            FrameKind::Native => "native",
            FrameKind::Js => "js",
            FrameKind::NodeInternal => "node_internal",
            FrameKind::NodeModules => "node_modules",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    pub kind: FrameKind,
    /// Function name, demangled; `[unknown]` style placeholders are the
    /// symbolizer's business, never an empty string.
    pub function: Arc<str>,
    /// Source file or mapped object (script URL for JavaScript, ELF path for native).
    pub file: Option<Arc<str>>,
    /// npm package name for `FrameKind::NodeModules`.
    pub package: Option<Arc<str>>,
}

/// One distinct stack of one process over a drain interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Process id as the host sees it (the tgid).
    pub pid: u32,
    /// Frames leaf first: kernel frames, then user frames.
    pub frames: Vec<Frame>,
    pub count: u64,
}

/// Everything drained in one interval.
#[derive(Debug, Clone)]
pub struct Batch {
    pub start: SystemTime,
    pub end: SystemTime,
    /// Sampling frequency: each sample stands for `1e9 / frequency_hz` ns of CPU.
    pub frequency_hz: u64,
    pub samples: Vec<Sample>,
}
