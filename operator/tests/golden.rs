//! Golden files for the Node.js injection: `tests/golden/<case>/` holds
//!
//! - `pod.yaml`: the pod being created;
//! - `namespace.yaml` (optional): its namespace, else a bare one named after the pod's;
//! - `instrumentation.yaml` (optional): the VispyrInstrumentations of the cluster, one YAML document each;
//! - what [`mutate`] must produce: `patched.yaml`, the pod after its JSON patch is
//!   applied (plus `warnings.txt` when it warns), or `outcome.txt` when it does not patch.
//!
//! `VISPYR_UPDATE_GOLDEN=1 cargo test -p vispyr-operator --test golden` rewrites
//! the expected files; review the diff, the golden files are the specification.
//! Every patched case is also checked for what no golden file shows at a
//! glance: the patch applies, the result is a pod, injecting it again does
//! nothing, and every `$(VAR)` Vispyr wrote refers to a variable defined before it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Namespace, Pod};
use serde::Deserialize;
use serde_json::Value;
use vispyr_operator::crd::VispyrInstrumentation;
use vispyr_operator::inject::{Outcome, mutate};

const UPDATE_ENV: &str = "VISPYR_UPDATE_GOLDEN";
const PATCHED: &str = "patched.yaml";
const WARNINGS: &str = "warnings.txt";
const OUTCOME: &str = "outcome.txt";
/// Admission warnings longer than this may be truncated by the apiserver.
const MAX_WARNING: usize = 256;

#[test]
fn golden() {
    let update = std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden case in {}", root.display());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let name = case.file_name().unwrap().to_string_lossy().into_owned();
            run(case, update)
                .err()
                .map(|e| format!("--- case {name}:\n{e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed (run `{UPDATE_ENV}=1 cargo test -p vispyr-operator --test golden` \
         to rewrite them, then review the diff):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn run(case: &Path, update: bool) -> Result<(), String> {
    let pod_text = read(&case.join("pod.yaml"))?.ok_or("pod.yaml is missing")?;
    let pod_value: Value = serde_yaml::from_str(&pod_text).map_err(|e| format!("pod.yaml: {e}"))?;
    let pod: Pod =
        serde_json::from_value(pod_value.clone()).map_err(|e| format!("pod.yaml: {e}"))?;
    let namespace = match read(&case.join("namespace.yaml"))? {
        Some(text) => serde_yaml::from_str(&text).map_err(|e| format!("namespace.yaml: {e}"))?,
        None => {
            let mut namespace = Namespace::default();
            namespace.metadata.name = Some(
                pod.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            );
            namespace
        }
    };
    let instrumentations = instrumentations(case)?;

    let outcome = mutate(&pod, &namespace, instrumentations.as_slice());
    let mut expected = Vec::new();
    match &outcome {
        Outcome::Patched(injection) => {
            let mut patched = pod_value;
            json_patch::patch(&mut patched, &injection.patch)
                .map_err(|e| format!("the patch does not apply: {e}"))?;
            let patched_pod: Pod = serde_json::from_value(patched.clone())
                .map_err(|e| format!("the patched pod is no Pod: {e}"))?;
            let again = mutate(&patched_pod, &namespace, instrumentations.as_slice());
            if !matches!(again, Outcome::AlreadyInjected { .. }) {
                return Err(format!(
                    "injecting the patched pod again gives {again}, not \"already injected\""
                ));
            }
            check_references(&patched_pod)?;
            if let Some(long) = injection.warnings.iter().find(|w| w.len() > MAX_WARNING) {
                return Err(format!(
                    "warning longer than {MAX_WARNING} characters (the apiserver may cut it): {long}"
                ));
            }
            expected.push((PATCHED, Some(yaml(&patched)?)));
            let warnings =
                (!injection.warnings.is_empty()).then(|| injection.warnings.join("\n") + "\n");
            expected.push((WARNINGS, warnings));
            expected.push((OUTCOME, None));
        }
        other => {
            expected.push((PATCHED, None));
            expected.push((WARNINGS, None));
            expected.push((OUTCOME, Some(format!("{other}\n"))));
        }
    }

    let mut errors = Vec::new();
    for (file, want) in expected {
        let path = case.join(file);
        let have = read(&path)?;
        if have == want {
            continue;
        }
        if update {
            match &want {
                Some(text) => fs::write(&path, text),
                None => fs::remove_file(&path),
            }
            .map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!("updated {}", path.display());
            continue;
        }
        errors.push(match (have, want) {
            (None, Some(_)) => format!("{file} is missing (outcome: {outcome})"),
            (Some(_), None) => format!("{file} is not expected (outcome: {outcome})"),
            (Some(have), Some(want)) => format!("{file} differs:\n{}", diff(&have, &want)),
            (None, None) => unreachable!("equal"),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

fn instrumentations(case: &Path) -> Result<Vec<Arc<VispyrInstrumentation>>, String> {
    let Some(text) = read(&case.join("instrumentation.yaml"))? else {
        return Ok(Vec::new());
    };
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            VispyrInstrumentation::deserialize(document)
                .map(Arc::new)
                .map_err(|e| format!("instrumentation.yaml: {e}"))
        })
        .collect()
}

fn read(path: &Path) -> Result<Option<String>, String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// YAML with keys sorted at every level, whatever serde_json's map order.
fn yaml(value: &Value) -> Result<String, String> {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&map[k])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_yaml::to_string(&sorted(value)).map_err(|e| e.to_string())
}

/// The lines that differ, with their line numbers (`-` golden, `+` actual).
fn diff(have: &str, want: &str) -> String {
    let (have, want): (Vec<&str>, Vec<&str>) = (have.lines().collect(), want.lines().collect());
    let mut out = Vec::new();
    for i in 0..have.len().max(want.len()) {
        let (h, w) = (have.get(i), want.get(i));
        if h != w {
            if let Some(h) = h {
                out.push(format!("{:>4} - {h}", i + 1));
            }
            if let Some(w) = w {
                out.push(format!("{:>4} + {w}", i + 1));
            }
        }
        if out.len() > 40 {
            out.push("...".into());
            break;
        }
    }
    out.join("\n")
}

/// Every `$(VAR)` in a literal env value names a variable defined earlier in
/// the container's env, or is `$(NODE_OPTIONS)` in NODE_OPTIONS with envFrom
/// present (resolved from envFrom by the kubelet, ignored by Node otherwise).
fn check_references(pod: &Pod) -> Result<(), String> {
    let containers: Vec<&Container> = pod.spec.iter().flat_map(|s| s.containers.iter()).collect();
    for container in containers {
        let env = container.env.as_deref().unwrap_or_default();
        let has_env_from = container.env_from.as_ref().is_some_and(|e| !e.is_empty());
        for (i, var) in env.iter().enumerate() {
            for reference in references(var.value.as_deref().unwrap_or_default()) {
                let earlier = env[..i].iter().any(|e| e.name == reference);
                let from_env_from =
                    has_env_from && reference == var.name && reference == "NODE_OPTIONS";
                if !earlier && !from_env_from {
                    return Err(format!(
                        "container {}: {} refers to $({reference}), which is not defined before it",
                        container.name, var.name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The `$(VAR)` references Kubernetes expands in `value` (`$$` escapes).
fn references(value: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            rest = escaped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            found.push(&inner[..end]);
            rest = &inner[end + 1..];
        } else {
            rest = after;
        }
    }
    found
}
