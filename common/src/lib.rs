//! What two or more Vispyr binaries share: config loading, logging, the
//! admin server, the shutdown signal and OTLP error statuses.

pub mod admin;
pub mod app;
pub mod config;
pub mod rpc_status;
pub mod shutdown;
pub mod telemetry;
