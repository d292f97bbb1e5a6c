//! What the pod asks for: the opt-in annotation (pod over namespace), the
//! instrumentation it names, and the containers to instrument.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Namespace, Pod};
use kube::ResourceExt;

use super::{CONTAINER_NAMES_ANNOTATION, INJECT_NODEJS_ANNOTATION, InstrumentationLookup};
use crate::crd::VispyrInstrumentation;

/// Why a pod that asked for injection is admitted unmodified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The opt-in annotation is none of the accepted forms.
    #[error(
        "{on} annotation vispyr.io/inject-nodejs={value:?} is not \"true\", \"false\", \"<name>\" or \"<namespace>/<name>\""
    )]
    InvalidInjectAnnotation { on: AnnotatedObject, value: String },
    /// The annotation names an instrumentation that does not exist.
    #[error(
        "VispyrInstrumentation {namespace}/{name}, named by the {on} annotation vispyr.io/inject-nodejs, does not exist"
    )]
    InstrumentationNotFound {
        on: AnnotatedObject,
        namespace: String,
        name: String,
    },
    /// `"true"`, but the pod's namespace has no instrumentation.
    #[error(
        "the {on} annotation vispyr.io/inject-nodejs=\"true\" asks for the VispyrInstrumentation of namespace {namespace}, which has none"
    )]
    NoInstrumentation {
        on: AnnotatedObject,
        namespace: String,
    },
    /// `"true"`, but the pod's namespace has several instrumentations.
    #[error(
        "the {on} annotation vispyr.io/inject-nodejs=\"true\" asks for the VispyrInstrumentation of namespace {namespace}, which has several ({}): name one instead",
        .names.join(", ")
    )]
    AmbiguousInstrumentation {
        on: AnnotatedObject,
        namespace: String,
        names: Vec<String>,
    },
    /// `vispyr.io/container-names` lists no name.
    #[error("pod annotation vispyr.io/container-names={value:?} names no container")]
    EmptyContainerNames { value: String },
    /// `vispyr.io/container-names` names something that is not an app container.
    #[error(
        "pod annotation vispyr.io/container-names names {name:?}, which is not an app container of this pod (its containers: {})",
        .available.join(", ")
    )]
    UnknownContainer {
        name: String,
        available: Vec<String>,
    },
    /// The pod has no spec or no container.
    #[error("the pod has no container")]
    NoContainer,
}

impl Rejection {
    /// The CamelCase `reason` of the Event recording this rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidInjectAnnotation { .. } | Self::EmptyContainerNames { .. } => {
                "InvalidAnnotation"
            }
            Self::InstrumentationNotFound { .. } | Self::NoInstrumentation { .. } => {
                "InstrumentationNotFound"
            }
            Self::AmbiguousInstrumentation { .. } => "AmbiguousInstrumentation",
            Self::UnknownContainer { .. } | Self::NoContainer => "UnknownContainer",
        }
    }
}

/// Which object carried the opt-in annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnotatedObject {
    Pod,
    Namespace(String),
}

impl fmt::Display for AnnotatedObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod => f.write_str("pod"),
            Self::Namespace(name) => write!(f, "namespace {name}"),
        }
    }
}

/// A parsed opt-in annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Request {
    /// `"true"`: the only instrumentation of the pod's namespace.
    OnlyOne { on: AnnotatedObject },
    /// `"<name>"` (namespace `None`: the pod's) or `"<namespace>/<name>"`.
    Named {
        on: AnnotatedObject,
        namespace: Option<String>,
        name: String,
    },
}

/// The opt-in annotation in effect, the pod's before the namespace's; `None`
/// when neither has one or the one in effect says `"false"`.
pub(super) fn requested(pod: &Pod, namespace: &Namespace) -> Option<Result<Request, Rejection>> {
    let parsed = match pod.annotations().get(INJECT_NODEJS_ANNOTATION) {
        Some(value) => Request::parse(AnnotatedObject::Pod, value),
        None => {
            let value = namespace.annotations().get(INJECT_NODEJS_ANNOTATION)?;
            Request::parse(AnnotatedObject::Namespace(namespace.name_any()), value)
        }
    };
    parsed.transpose()
}

impl Request {
    /// `None` for `"false"`. `true` and `false` are matched without regard to
    /// case and surrounding space.
    fn parse(on: AnnotatedObject, value: &str) -> Result<Option<Self>, Rejection> {
        let trimmed = value.trim();
        if trimmed.eq_ignore_ascii_case("false") {
            return Ok(None);
        }
        if trimmed.eq_ignore_ascii_case("true") {
            return Ok(Some(Self::OnlyOne { on }));
        }
        let (namespace, name) = match trimmed.split_once('/') {
            Some((namespace, name)) => (Some(namespace), name),
            None => (None, trimmed),
        };
        if !is_dns_subdomain(name) || namespace.is_some_and(|ns| !is_dns_label(ns)) {
            return Err(Rejection::InvalidInjectAnnotation {
                on,
                value: value.to_owned(),
            });
        }
        Ok(Some(Self::Named {
            on,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }))
    }

    /// The instrumentation this request names, for a pod of `pod_namespace`.
    pub(super) fn resolve<L>(
        self,
        pod_namespace: &str,
        lookup: &L,
    ) -> Result<Arc<VispyrInstrumentation>, Rejection>
    where
        L: InstrumentationLookup + ?Sized,
    {
        match self {
            Self::OnlyOne { on } => {
                let mut found = lookup.instrumentations_in(pod_namespace);
                match found.len() {
                    0 => Err(Rejection::NoInstrumentation {
                        on,
                        namespace: pod_namespace.to_owned(),
                    }),
                    1 => Ok(found.remove(0)),
                    _ => {
                        let mut names: Vec<String> = found.iter().map(|vi| vi.name_any()).collect();
                        names.sort();
                        Err(Rejection::AmbiguousInstrumentation {
                            on,
                            namespace: pod_namespace.to_owned(),
                            names,
                        })
                    }
                }
            }
            Self::Named {
                on,
                namespace,
                name,
            } => {
                let namespace = namespace.unwrap_or_else(|| pod_namespace.to_owned());
                lookup
                    .instrumentations_in(&namespace)
                    .into_iter()
                    .find(|vi| vi.name_any() == name)
                    .ok_or(Rejection::InstrumentationNotFound {
                        on,
                        namespace,
                        name,
                    })
            }
        }
    }
}

/// Indices into `containers` (the pod's) of those to instrument: the ones named by
/// [`CONTAINER_NAMES_ANNOTATION`], else all (init containers never are).
pub(super) fn target_containers(
    pod: &Pod,
    containers: &[Container],
) -> Result<Vec<usize>, Rejection> {
    let Some(value) = pod.annotations().get(CONTAINER_NAMES_ANNOTATION) else {
        return Ok((0..containers.len()).collect());
    };
    let names: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Err(Rejection::EmptyContainerNames {
            value: value.clone(),
        });
    }
    if let Some(unknown) = names
        .iter()
        .find(|n| !containers.iter().any(|c| c.name == **n))
    {
        return Err(Rejection::UnknownContainer {
            name: (*unknown).to_owned(),
            available: containers.iter().map(|c| c.name.clone()).collect(),
        });
    }
    Ok((0..containers.len())
        .filter(|&i| names.contains(&containers[i].name.as_str()))
        .collect())
}

/// RFC 1123 label: what a namespace name is.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what an object name is.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Option<Request>, Rejection> {
        Request::parse(AnnotatedObject::Pod, value)
    }

    #[test]
    fn parses_the_four_forms() {
        assert_eq!(parse("false"), Ok(None));
        assert_eq!(parse(" False "), Ok(None));
        assert_eq!(
            parse("TRUE"),
            Ok(Some(Request::OnlyOne {
                on: AnnotatedObject::Pod
            }))
        );
        assert_eq!(
            parse("node"),
            Ok(Some(Request::Named {
                on: AnnotatedObject::Pod,
                namespace: None,
                name: "node".into()
            }))
        );
        assert_eq!(
            parse("obs/node.v1"),
            Ok(Some(Request::Named {
                on: AnnotatedObject::Pod,
                namespace: Some("obs".into()),
                name: "node.v1".into()
            }))
        );
    }

    #[test]
    fn refuses_what_cannot_be_a_name() {
        for bad in [
            "",
            "yes please",
            "Node",
            "a/b/c",
            "/node",
            "obs/",
            "-x",
            "x.",
            "a..b",
            &"a".repeat(254),
        ] {
            assert!(
                matches!(parse(bad), Err(Rejection::InvalidInjectAnnotation { .. })),
                "{bad:?} was accepted"
            );
        }
    }
}
