//! Which workload a pod belongs to, from what the pod itself carries at
//! admission: its controller owner reference (only the direct owner), its
//! labels and names. The service name follows: the `vispyr.io/service-name`
//! annotation, else the workload's name, else the pod's name.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::SERVICE_NAME_ANNOTATION;

/// Label the Deployment controller puts on its ReplicaSets' pods; the
/// ReplicaSet's name is `<deployment>-<hash>`.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Smallest minutes-since-epoch a CronJob's Job name suffix is taken for (2017-07-14).
/// Kubernetes names a CronJob's Jobs `<cronjob>-<scheduled time in minutes since
/// the epoch>`; from 25,000,000 on, a date suffix like `-20240101` (at most
/// 20,991,231 this century) is not mistaken for one.
const MIN_CRONJOB_MINUTES: u64 = 25_000_000;

/// What the webhook knows of a pod's workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Workload {
    /// `OTEL_SERVICE_NAME`; `None` when there is nothing to derive it from.
    pub service_name: Option<String>,
    /// `k8s.deployment.name` and the like, in OTEL_RESOURCE_ATTRIBUTES order.
    pub attributes: Vec<(&'static str, String)>,
}

pub(super) fn identify(pod: &Pod) -> Workload {
    let (owner_name, attributes) = owner(pod).map_or((None, Vec::new()), |(name, attributes)| {
        (Some(name), attributes)
    });
    let annotated = pod
        .annotations()
        .get(SERVICE_NAME_ANNOTATION)
        .map(|name| name.trim())
        .filter(|name| !name.is_empty())
        .map(str::to_owned);
    let pod_name = pod
        .metadata
        .name
        .clone()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            let generated = pod.metadata.generate_name.as_deref()?.trim_end_matches('-');
            (!generated.is_empty()).then(|| generated.to_owned())
        });
    Workload {
        service_name: annotated.or(owner_name).or(pod_name),
        attributes,
    }
}

/// The workload's name and attributes, from the pod's controller (else first) owner reference.
fn owner(pod: &Pod) -> Option<(String, Vec<(&'static str, String)>)> {
    let refs = pod.owner_references();
    let owner = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or(refs.first())?;
    let name = owner.name.clone();
    let found = match owner.kind.as_str() {
        "ReplicaSet" => {
            let deployment = pod
                .labels()
                .get(POD_TEMPLATE_HASH_LABEL)
                .filter(|hash| !hash.is_empty())
                .and_then(|hash| name.strip_suffix(hash.as_str())?.strip_suffix('-'))
                .filter(|deployment| !deployment.is_empty())
                .map(str::to_owned);
            let mut attributes = vec![("k8s.replicaset.name", name.clone())];
            match deployment {
                Some(deployment) => {
                    attributes.push(("k8s.deployment.name", deployment.clone()));
                    (deployment, attributes)
                }
                None => (name, attributes),
            }
        }
        "StatefulSet" => (name.clone(), vec![("k8s.statefulset.name", name)]),
        "DaemonSet" => (name.clone(), vec![("k8s.daemonset.name", name)]),
        "Job" => match cronjob_of(&name) {
            Some(cronjob) => {
                let cronjob = cronjob.to_owned();
                (
                    cronjob.clone(),
                    vec![("k8s.job.name", name), ("k8s.cronjob.name", cronjob)],
                )
            }
            None => (name.clone(), vec![("k8s.job.name", name)]),
        },
        _ => (name, Vec::new()),
    };
    Some(found)
}

/// The CronJob a Job named `job` was created by, when its name has the
/// `-<minutes since epoch>` suffix the CronJob controller gives.
fn cronjob_of(job: &str) -> Option<&str> {
    let (cronjob, suffix) = job.rsplit_once('-')?;
    let minutes: u64 = suffix.parse().ok()?;
    let canonical = suffix.bytes().all(|b| b.is_ascii_digit()) && !suffix.starts_with('0');
    (canonical && minutes >= MIN_CRONJOB_MINUTES && !cronjob.is_empty()).then_some(cronjob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cronjob_suffix_is_minutes_since_epoch() {
        assert_eq!(cronjob_of("report-29532960"), Some("report"));
        assert_eq!(
            cronjob_of("nightly-report-29532960"),
            Some("nightly-report")
        );
        assert_eq!(
            cronjob_of("backup-20240101"),
            None,
            "a date, not a schedule"
        );
        assert_eq!(cronjob_of("migrate"), None);
        assert_eq!(cronjob_of("migrate-v2"), None);
        assert_eq!(cronjob_of("-29532960"), None);
        assert_eq!(cronjob_of("x-+29532960"), None);
    }
}
