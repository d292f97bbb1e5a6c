//! What two or more Vispyr binaries share: config loading, logging, the
//! admin server and the shutdown signal.

pub mod admin;
pub mod app;
pub mod config;
pub mod shutdown;
pub mod telemetry;
