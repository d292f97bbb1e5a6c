//! The config files the Helm chart renders (its golden renders, which the
//! chart tests keep equal to `helm template`) load in the binaries they are
//! written for, with the loader those binaries use: a key the chart sets and
//! the binary does not know fails here, not in a crash-looping pod.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use vispyr_common::config;

fn golden_renders() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/vispyr/tests/golden");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden renders in {}", dir.display());
    files
}

/// The `key` entries of every ConfigMap in `render`.
fn config_files(render: &Path, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(render).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .filter(|doc| doc["kind"] == "ConfigMap")
        .filter_map(|doc| doc["data"][key].as_str().map(str::to_owned))
        .collect()
}

/// Loads every `key` file of every render as `T`, with the environment the
/// chart's pod spec adds; returns how many it loaded.
fn load_all<T: DeserializeOwned>(key: &str, env_prefix: &str, env: &[(&str, &str)]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let mut loaded = 0;
    for render in golden_renders() {
        for (n, text) in config_files(&render, key).into_iter().enumerate() {
            let file = dir.path().join(format!("{n}-{key}"));
            std::fs::write(&file, &text).unwrap();
            let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            if let Err(e) = config::load::<T, _>(Some(&file), env_prefix, env, &[]) {
                panic!("{key} of {}: {e}\n{text}", render.display());
            }
            loaded += 1;
        }
    }
    loaded
}

#[test]
fn the_charts_gateway_config_loads_in_the_gateway() {
    let loaded = load_all::<vispyr_gateway::Config>(
        "gateway.yaml",
        "VISPYR_GATEWAY_",
        &[("VISPYR_GATEWAY_RING__ADVERTISE", "10.0.0.7:4319")],
    );
    assert!(loaded >= 4, "gateway configs loaded: {loaded}");
}

#[test]
fn the_charts_node_agent_config_loads_in_the_node_agent() {
    let loaded = load_all::<vispyr_node_agent::config::Config>(
        "node-agent.yaml",
        "VISPYR_NODE_AGENT_",
        &[("VISPYR_NODE_AGENT_ATTRIBUTION__NODE_NAME", "node-1")],
    );
    assert!(loaded >= 3, "node-agent configs loaded: {loaded}");
}
