//! The environment of an instrumented container.
//!
//! Rules, in the order the variables end up in `env`:
//! - The container's own entries keep their place. Two may be edited in place:
//!   a literal `NODE_OPTIONS` gets Vispyr's flags in front of its value; a
//!   `NODE_OPTIONS` set through `valueFrom`, and any `OTEL_RESOURCE_ATTRIBUTES`,
//!   is renamed `VISPYR_ORIGINAL_<name>` (keeping its `value`/`valueFrom`) and
//!   referenced as `$(VISPYR_ORIGINAL_<name>)` by the variable Vispyr appends,
//!   which Kubernetes expands because the original comes earlier in the list.
//! - `NODE_OPTIONS` that may only come from `envFrom` (a ConfigMap or Secret the
//!   webhook cannot read): Vispyr appends `NODE_OPTIONS=<flags> $(NODE_OPTIONS)`.
//!   The kubelet resolves `envFrom` before `env`, so the reference expands to
//!   the envFrom value when there is one; when there is none it stays as the
//!   literal `$(NODE_OPTIONS)`, which Node ignores (it stops reading NODE_OPTIONS
//!   at the first word that is not an option; checked with Node 20), after
//!   Vispyr's flags. A warning says so.
//! - `OTEL_*` variables the container defines in `env` are never overridden (the
//!   sampler pair counts as one); a container `OTEL_RESOURCE_ATTRIBUTES` carrying
//!   `service.name` suppresses `OTEL_SERVICE_NAME`. Kubernetes gives `env`
//!   precedence over `envFrom`, so Vispyr's values win over an `envFrom` one: a
//!   warning names them.
//! - Then the instrumentation's extra env, the downward-API `VISPYR_POD_*` /
//!   `VISPYR_NODE_NAME`, and last `OTEL_RESOURCE_ATTRIBUTES`, which refers to them.

use std::collections::BTreeSet;
use std::fmt::Write;

use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector,
};

use super::workload::Workload;
use super::{PRELOAD_PATH, PROFILING_FLAGS};
use crate::crd::VispyrInstrumentationSpec;

const NODE_OPTIONS: &str = "NODE_OPTIONS";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const SAMPLER: &str = "OTEL_TRACES_SAMPLER";
const SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
const ORIGINAL_PREFIX: &str = "VISPYR_ORIGINAL_";

/// Downward-API variables and the resource attribute each one feeds.
const DOWNWARD: [(&str, &str, &str); 4] = [
    (
        "VISPYR_POD_NAMESPACE",
        "metadata.namespace",
        "k8s.namespace.name",
    ),
    ("VISPYR_POD_NAME", "metadata.name", "k8s.pod.name"),
    ("VISPYR_POD_UID", "metadata.uid", "k8s.pod.uid"),
    ("VISPYR_NODE_NAME", "spec.nodeName", "k8s.node.name"),
];

/// What every instrumented container of one pod gets.
pub(super) struct Settings {
    /// Vispyr's part of NODE_OPTIONS.
    node_options: String,
    /// `(name, literal value)` of the `OTEL_*` variables set when the container has not.
    otel: Vec<(&'static str, String)>,
    extra_env: Vec<EnvVar>,
    /// Encoded `key=value` resource attributes after the per-container ones.
    attributes: Vec<String>,
}

impl Settings {
    pub(super) fn new(spec: &VispyrInstrumentationSpec, workload: Workload) -> Self {
        let mut node_options = format!("--require {PRELOAD_PATH}");
        if spec.nodejs.profiling {
            node_options.push(' ');
            node_options.push_str(PROFILING_FLAGS);
        }
        let mut otel = Vec::new();
        if let Some(name) = workload.service_name {
            otel.push((SERVICE_NAME, literal(&name)));
        }
        otel.push((
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            literal(&spec.exporter.endpoint),
        ));
        if let Some(sampler) = &spec.sampler {
            otel.push((SAMPLER, sampler.kind.as_str().to_owned()));
            if let Some(argument) = &sampler.argument {
                otel.push((SAMPLER_ARG, literal(argument)));
            }
        }
        if !spec.propagators.is_empty() {
            let names: Vec<&str> = spec.propagators.iter().map(|p| p.as_str()).collect();
            otel.push(("OTEL_PROPAGATORS", names.join(",")));
        }
        let attributes = workload
            .attributes
            .iter()
            .map(|(key, value)| attribute(key, value))
            .chain(
                spec.resource_attributes
                    .iter()
                    .map(|(key, value)| attribute(key, value)),
            )
            .collect();
        Self {
            node_options,
            otel,
            extra_env: spec.nodejs.env.clone(),
            attributes,
        }
    }
}

/// Changes to one container's `env`.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Fields of existing entries to set.
    pub edits: Vec<Edit>,
    /// Entries to append, in order.
    pub appended: Vec<EnvVar>,
    pub warnings: Vec<String>,
}

/// Set `env[index].<field>` to `value`.
#[derive(Debug)]
pub(super) struct Edit {
    pub index: usize,
    pub field: &'static str,
    pub value: String,
}

pub(super) fn plan(container: &Container, settings: &Settings) -> Plan {
    let env = container.env.as_deref().unwrap_or_default();
    let defined = |name: &str| env.iter().any(|e| e.name == name);
    let last = |name: &str| env.iter().rposition(|e| e.name == name);
    let mut plan = Plan::default();

    match last(NODE_OPTIONS) {
        Some(i) if env[i].value_from.is_none() => {
            let own = env[i].value.as_deref().unwrap_or_default().trim();
            let value = if own.is_empty() {
                settings.node_options.clone()
            } else {
                format!("{} {own}", settings.node_options)
            };
            plan.edits.push(Edit {
                index: i,
                field: "value",
                value,
            });
        }
        Some(i) => {
            let original = rename_original(&mut plan, i, NODE_OPTIONS);
            plan.appended.push(literal_var(
                NODE_OPTIONS,
                format!("{} $({original})", settings.node_options),
            ));
        }
        None => {
            let sources = env_from_defining(container, &[NODE_OPTIONS]);
            if sources.is_empty() {
                plan.appended
                    .push(literal_var(NODE_OPTIONS, settings.node_options.clone()));
            } else {
                let value = format!("{} $({NODE_OPTIONS})", settings.node_options);
                plan.warnings.push(format!(
                    "container {:?}: NODE_OPTIONS may come from envFrom ({}), which the webhook cannot read; \
                     Vispyr's NODE_OPTIONS ends with $(NODE_OPTIONS) to keep that value",
                    container.name,
                    sources.join(", ")
                ));
                plan.appended.push(literal_var(NODE_OPTIONS, value));
            }
        }
    }

    let own_attributes = last(RESOURCE_ATTRIBUTES).map(|i| &env[i]);
    let names_service = own_attributes
        .and_then(|e| e.value.as_deref())
        .is_some_and(|v| {
            v.split(',').any(|kv| {
                kv.split('=')
                    .next()
                    .is_some_and(|k| k.trim() == "service.name")
            })
        });
    let own_sampler = defined(SAMPLER) || defined(SAMPLER_ARG);
    let mut set_by_vispyr = Vec::new();
    for (name, value) in &settings.otel {
        let skip = match *name {
            SERVICE_NAME => defined(name) || names_service,
            SAMPLER | SAMPLER_ARG => own_sampler,
            _ => defined(name),
        };
        if !skip {
            set_by_vispyr.push(*name);
            plan.appended.push(literal_var(name, value.clone()));
        }
    }
    for var in &settings.extra_env {
        if !defined(&var.name) {
            plan.appended.push(var.clone());
        }
    }
    for (name, field, _) in DOWNWARD {
        if !defined(name) {
            plan.appended.push(field_ref_var(name, field));
        }
    }

    let mut attributes: Vec<String> = DOWNWARD
        .iter()
        .map(|(name, _, key)| format!("{key}=$({name})"))
        .collect();
    attributes.push(attribute("k8s.container.name", &container.name));
    attributes.extend(settings.attributes.iter().cloned());
    match last(RESOURCE_ATTRIBUTES) {
        Some(i) => {
            let original = rename_original(&mut plan, i, RESOURCE_ATTRIBUTES);
            if env[i].value_from.is_some()
                || env[i]
                    .value
                    .as_deref()
                    .is_some_and(|v| !v.trim().is_empty())
            {
                attributes.push(format!("$({original})"));
            }
        }
        None => set_by_vispyr.push(RESOURCE_ATTRIBUTES),
    }
    plan.appended
        .push(literal_var(RESOURCE_ATTRIBUTES, attributes.join(",")));

    let sources = env_from_defining(container, &set_by_vispyr);
    if !sources.is_empty() {
        plan.warnings.push(format!(
            "container {:?}: Vispyr's OTEL_* variables take precedence over envFrom ({}); \
             set them in the container's env to override them",
            container.name,
            sources.join(", ")
        ));
    }
    plan
}

/// Renames `env[index]` to `VISPYR_ORIGINAL_<name>` and returns that name.
fn rename_original(plan: &mut Plan, index: usize, name: &str) -> String {
    let original = format!("{ORIGINAL_PREFIX}{name}");
    plan.edits.push(Edit {
        index,
        field: "name",
        value: original.clone(),
    });
    original
}

/// The container's envFrom sources that may define one of `names`, described
/// (`configMap app-env`): those whose prefix leaves room for it.
fn env_from_defining(container: &Container, names: &[&str]) -> Vec<String> {
    let sources = container.env_from.as_deref().unwrap_or_default();
    sources
        .iter()
        .filter(|source| {
            let prefix = source.prefix.as_deref().unwrap_or_default();
            names
                .iter()
                .any(|name| name.len() > prefix.len() && name.starts_with(prefix))
        })
        .map(describe)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn describe(source: &EnvFromSource) -> String {
    let mut described = match (&source.config_map_ref, &source.secret_ref) {
        (Some(config_map), _) => format!("configMap {}", config_map.name),
        (None, Some(secret)) => format!("secret {}", secret.name),
        (None, None) => "an envFrom source".to_owned(),
    };
    if let Some(prefix) = source.prefix.as_deref().filter(|p| !p.is_empty()) {
        let _ = write!(described, " with prefix {prefix:?}");
    }
    described
}

fn literal_var(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    }
}

fn field_ref_var(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// `s` as an env value that Kubernetes' `$(VAR)` expansion leaves unchanged.
fn literal(s: &str) -> String {
    s.replace('$', "$$")
}

/// `key=value` for OTEL_RESOURCE_ATTRIBUTES, the value percent-encoded except
/// for the characters that need no encoding (and `$`, so no expansion happens).
fn attribute(key: &str, value: &str) -> String {
    let mut out = format!("{key}=");
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:/@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_survives_dependent_variable_expansion() {
        assert_eq!(literal("svc-$(HOME)-$$"), "svc-$$(HOME)-$$$$");
    }

    #[test]
    fn attribute_values_are_percent_encoded() {
        assert_eq!(
            attribute("team", "a b,c=d/é$"),
            "team=a%20b%2Cc%3Dd/%C3%A9%24"
        );
    }
}
