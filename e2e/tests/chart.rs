//! The Helm chart as a whole (the operator's own RBAC is tested by
//! operator/tests/chart.rs): it lints, renders exactly the reviewed golden
//! files, installs with helm and every render is accepted by a real
//! apiserver, each component's ServiceAccount can do its job and nothing
//! more, its Grafana files are config/grafana, every dashboard query returns
//! data in a real Prometheus and Pyroscope fed like the pipeline feeds them,
//! and the README documents every value of the schema.
//!
//! `make chart-golden` rewrites the golden renders, the README's values
//! section and the chart's copy of config/grafana.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authorization::v1::SelfSubjectRulesReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, ListParams, PostParams, WatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Deserialize;
use serde_json::{Value, json};
use vispyr_e2e::dashboards::{
    Query, Subject, dashboards, datasources, queries, tempo_datasource, without_data,
};
use vispyr_e2e::fixtures::cpu_profile;
use vispyr_e2e::{
    NodeExporter, Prometheus, Pyroscope, TestCluster, assert_allowed, assert_forbidden, eventually,
    golden,
};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const NAMESPACE: &str = "vispyr-system";
const KUBE_VERSION: &str = "1.36.3";

fn chart() -> PathBuf {
    Path::new(ROOT).join("charts/vispyr")
}

/// Value combinations rendered to `charts/vispyr/tests/golden/<name>.yaml`.
const CASES: &[(&str, &[&str])] = &[
    ("default", &[]),
    (
        "external-backends",
        &[
            "tempo.enabled=false",
            "tempo.external.otlpGrpcEndpoint=http://tempo.tracing:4317",
            "tempo.external.queryUrl=http://tempo.tracing:3200",
            "prometheus.enabled=false",
            "prometheus.external.remoteWriteUrl=http://prometheus.monitoring:9090/api/v1/write",
            "prometheus.external.queryUrl=http://prometheus.monitoring:9090",
            "pyroscope.enabled=false",
            "pyroscope.external.url=http://pyroscope.profiling:4040",
        ],
    ),
    (
        "autoscaling-persistence",
        &[
            "gateway.autoscaling.enabled=true",
            "tempo.persistence.enabled=true",
            "prometheus.persistence.enabled=true",
            "prometheus.retentionSize=15GB",
            "pyroscope.persistence.enabled=true",
            "grafana.persistence.enabled=true",
            "grafana.adminSecret=grafana-admin",
            "grafana.anonymousRole=None",
        ],
    ),
    (
        "minimal",
        &[
            "instrumentation.enabled=false",
            "gateway.ringPeers={gateway-0.example:4319,gateway-1.example:4319}",
            "gateway.podDisruptionBudget.enabled=false",
            "nodeAgent.extraCapabilities={DAC_READ_SEARCH}",
            "grafana.enabled=false",
        ],
    ),
];

fn helm(args: &[&str]) -> Result<String, String> {
    vispyr_e2e::helm(args).map_err(|e| e.to_string())
}

/// `helm template` of the chart with `sets`, in the release namespace.
fn render(sets: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut args = vec![
        "template",
        "vispyr",
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    helm(&args)
}

/// The objects of a multi-document YAML stream, empty documents left out.
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("helm renders valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

#[test]
fn chart_lints_for_every_case() {
    let chart = chart();
    for (name, sets) in CASES {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        for set in *sets {
            args.extend(["--set", set]);
        }
        if let Err(e) = helm(&args) {
            panic!("case {name}: {e}");
        }
    }
}

#[test]
fn renders_match_the_golden_files() {
    let dir = chart().join("tests/golden");
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|(name, sets)| {
            render(sets)
                .and_then(|text| golden::check(&dir.join(format!("{name}.yaml")), &text))
                .err()
        })
        .collect();
    assert!(
        failures.is_empty(),
        "run `make chart-golden` and review the diff:\n{}",
        failures.join("\n")
    );
}

#[test]
fn disabled_backend_without_endpoint_is_refused_by_name() {
    for (set, key) in [
        // Helm stops at the first missing key, whichever template needs it first.
        ("tempo.enabled=false", "set tempo.external."),
        ("prometheus.enabled=false", "set prometheus.external."),
        ("pyroscope.enabled=false", "set pyroscope.external.url"),
    ] {
        let err = render(&[set]).expect_err(set);
        assert!(err.contains(key), "{set}: {err}");
    }
    let err = render(&[
        "gateway.autoscaling.enabled=true",
        "gateway.autoscaling.minReplicas=9",
    ])
    .expect_err("min above max");
    assert!(err.contains("minReplicas"), "{err}");
    let err = render(&["nodeAgent.extraCapabilities={SYS_MODULE}"]).expect_err("capability");
    assert!(err.contains("extraCapabilities"), "{err}");
}

#[test]
fn node_agent_is_never_privileged_and_mounts_the_host_read_only() {
    let objects = objects(&render(&[]).unwrap());
    let ds = find(&objects, "DaemonSet", "vispyr-node-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert!(pod["hostNetwork"].is_null(), "no host network");
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let added: BTreeSet<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        added,
        BTreeSet::from([
            "BPF",
            "PERFMON",
            "SYS_PTRACE",
            "CHECKPOINT_RESTORE",
            "SYSLOG"
        ])
    );
    for mount in container["volumeMounts"].as_array().unwrap() {
        assert_eq!(mount["readOnly"], true, "{mount}");
    }
    // Every other Vispyr and backend container runs as non-root with nothing.
    for o in &objects {
        if !matches!(o["kind"].as_str(), Some("Deployment")) {
            continue;
        }
        let pod = &o["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"], true,
            "{}",
            o["metadata"]["name"]
        );
        for c in pod["containers"].as_array().unwrap() {
            assert_eq!(
                c["securityContext"]["readOnlyRootFilesystem"], true,
                "{}",
                c["name"]
            );
            assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        }
    }
}

/// Every in-cluster URL the default render configures (the gateway's
/// exporters, the node agent's exporter, Grafana's datasources, the default
/// instrumentation's endpoint) names a Service of the render on a port it
/// exposes, and the gateway's ring names the headless Service of its pods.
#[test]
fn every_configured_address_is_a_rendered_service() {
    let text = render(&[]).unwrap();
    let objects = objects(&text);
    let suffix = format!(".{NAMESPACE}.svc:");
    let mut urls = BTreeSet::new();
    for (at, _) in text.match_indices("http://") {
        let rest = &text[at + "http://".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "-.:".contains(c)))
            .unwrap_or(rest.len());
        if let Some((service, port)) = rest[..end].split_once(&suffix) {
            urls.insert((service.to_string(), port.to_string()));
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("vispyr-gateway", "4317"),
        ("vispyr-gateway", "4318"),
        ("vispyr-tempo", "4317"),
        ("vispyr-tempo", "3200"),
        ("vispyr-prometheus", "9090"),
        ("vispyr-pyroscope", "4040"),
    ]
    .iter()
    .map(|(s, p)| (s.to_string(), p.to_string()))
    .collect();
    assert_eq!(urls, expected);
    for (service, port) in &urls {
        let svc = find(&objects, "Service", service);
        let ports: Vec<String> = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].to_string())
            .collect();
        assert!(
            ports.contains(port),
            "{service} does not expose {port}: {ports:?}"
        );
    }
    let config: Value = serde_yaml::from_str(
        find(&objects, "ConfigMap", "vispyr-gateway")["data"]["gateway.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let ring = find(
        &objects,
        "Service",
        config["ring"]["service"].as_str().unwrap(),
    );
    assert_eq!(ring["spec"]["clusterIP"], "None");
    assert_eq!(ring["spec"]["ports"][0]["name"], "ring");
    let gateway = find(&objects, "Deployment", "vispyr-gateway");
    assert_eq!(
        ring["spec"]["selector"], gateway["spec"]["selector"]["matchLabels"],
        "the ring Service selects the gateway pods"
    );
}

/// The chart carries a copy of config/grafana (Helm reads files inside the
/// chart only); the copy must be exact.
#[test]
fn charts_grafana_files_are_config_grafana() {
    let source = Path::new(ROOT).join("config/grafana");
    let copy = chart().join("files/grafana");
    let (a, b) = (tree(&source), tree(&copy));
    assert!(!a.is_empty(), "{} is empty", source.display());
    assert!(
        a == b,
        "charts/vispyr/files/grafana differs from config/grafana: run `make chart-golden`"
    );
}

/// Relative path -> content of every file below `dir`.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn readme_documents_every_value_of_the_schema() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap())
            .expect("values.schema.json is JSON");
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .expect("values.yaml is YAML");
    let table = values_table(&schema, &values).unwrap_or_else(|e| panic!("{e}"));
    let path = chart().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap_or_default();
    let (begin, end) = (
        "<!-- values: begin (generated) -->\n",
        "<!-- values: end -->",
    );
    let (head, tail) = match (readme.find(begin), readme.find(end)) {
        (Some(b), Some(e)) if b < e => (&readme[..b], &readme[e..]),
        _ => panic!("{} lacks the markers {begin:?} and {end:?}", path.display()),
    };
    let expected = format!("{head}{begin}{table}{tail}");
    golden::check(&path, &expected)
        .unwrap_or_else(|e| panic!("{e}; run `make chart-golden` to regenerate it"));
}

/// A Markdown section per top-level key and a row per leaf: key, type,
/// default (from values.yaml) and the schema's description, which is required.
fn values_table(schema: &Value, values: &Value) -> Result<String, String> {
    let mut out = String::new();
    for (key, prop) in schema["properties"]
        .as_object()
        .ok_or("schema has no properties")?
    {
        let prop = resolve(schema, prop);
        let description = prop["description"]
            .as_str()
            .ok_or(format!("{key} has no description"))?;
        out += &format!(
            "### `{key}`\n\n{description}\n\n| Key | Type | Default | Description |\n|---|---|---|---|\n"
        );
        rows(schema, key, prop, &values[key], &mut out)?;
        out += "\n";
    }
    Ok(out)
}

fn rows(
    schema: &Value,
    path: &str,
    prop: &Value,
    value: &Value,
    out: &mut String,
) -> Result<(), String> {
    for (key, child) in prop["properties"].as_object().into_iter().flatten() {
        let full = format!("{path}.{key}");
        let resolved = resolve(schema, child);
        if resolved["properties"].is_object() {
            rows(schema, &full, resolved, &value[key], out)?;
            continue;
        }
        // A description next to a $ref is more specific than the target's.
        let description = child["description"]
            .as_str()
            .or(resolved["description"].as_str())
            .ok_or(format!("{full} has no description in values.schema.json"))?;
        let default = match &value[key] {
            Value::Null => String::new(),
            v => format!("`{}`", serde_json::to_string(v).unwrap()),
        };
        *out += &format!(
            "| `{full}` | {} | {} | {} |\n",
            type_of(resolved),
            default.replace('|', "\\|"),
            description.replace('|', "\\|")
        );
    }
    Ok(())
}

fn resolve<'a>(schema: &'a Value, prop: &'a Value) -> &'a Value {
    match prop["$ref"].as_str().and_then(|r| r.strip_prefix("#/")) {
        Some(pointer) => schema.pointer(&format!("/{pointer}")).unwrap_or(prop),
        None => prop,
    }
}

fn type_of(prop: &Value) -> String {
    if let Some(values) = prop["enum"].as_array() {
        return values
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", ");
    }
    match &prop["type"] {
        Value::String(t) if t == "array" => match prop["items"]["enum"].as_array() {
            Some(_) => format!("list of {}", type_of(&prop["items"])),
            None => format!(
                "list of {}",
                prop["items"]["type"].as_str().unwrap_or("any")
            ),
        },
        Value::String(t) => t.clone(),
        _ => "string".into(),
    }
}

/// The service the fixtures describe.
const SUBJECT: Subject = Subject {
    service: "checkout",
    span_name: "GET /cart",
};

#[test]
fn dashboards_have_unique_uids_and_provisioned_datasources() {
    let all = dashboards();
    assert_eq!(all.len(), 6, "one dashboard per view");
    let uids: BTreeSet<&str> = all
        .iter()
        .map(|(_, d)| d["uid"].as_str().unwrap())
        .collect();
    assert_eq!(uids.len(), all.len(), "dashboard uids are unique");
    // Datasource checks run inside.
    let all = queries(&SUBJECT);
    assert!(
        all.iter()
            .filter(|(_, q)| matches!(q, Query::PromQL(_)))
            .count()
            > 40
    );
    assert!(
        all.iter()
            .filter(|(_, q)| matches!(q, Query::Profiles(_)))
            .count()
            >= 3
    );
}

/// Series of every metric the dashboards read, labelled as the pipeline
/// writes them: span metrics and service graph as the gateway computes them,
/// Node.js metrics as its OTLP conversion names them (job = service.name,
/// instance = service.instance.id), and what the chart's Prometheus scrapes
/// from the Vispyr pods (job "vispyr", component, pod, node). Each value is
/// the factor, doubled in a second write.
const FIXTURE: &str = r#"
traces_spanmetrics_calls_total{service="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET"} 10
traces_spanmetrics_calls_total{service="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR"} 1
traces_spanmetrics_latency_bucket{service="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET",le="0.1"} 8
traces_spanmetrics_latency_bucket{service="checkout",span_name="GET /cart",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET",le="+Inf"} 10
traces_service_graph_request_total{client="frontend",server="checkout"} 10
traces_service_graph_request_failed_total{client="frontend",server="checkout"} 1
traces_service_graph_request_server_seconds_bucket{client="frontend",server="checkout",le="+Inf"} 10
traces_service_graph_request_client_seconds_bucket{client="frontend",server="checkout",le="+Inf"} 10
nodejs_eventloop_utilization_ratio{job="checkout",instance="pod-1"} 0.1
nodejs_eventloop_delay_p50_seconds{job="checkout",instance="pod-1"} 0.01
nodejs_eventloop_delay_p90_seconds{job="checkout",instance="pod-1"} 0.02
nodejs_eventloop_delay_p99_seconds{job="checkout",instance="pod-1"} 0.03
nodejs_eventloop_delay_max_seconds{job="checkout",instance="pod-1"} 0.04
v8js_memory_heap_used_bytes{job="checkout",instance="pod-1",v8js_heap_space_name="old_space"} 1e6
v8js_memory_heap_space_size_bytes{job="checkout",instance="pod-1",v8js_heap_space_name="old_space"} 1e8
v8js_gc_duration_seconds_sum{job="checkout",instance="pod-1",v8js_gc_type="major"} 0.5
v8js_gc_duration_seconds_count{job="checkout",instance="pod-1",v8js_gc_type="major"} 5
node_cpu_seconds_total{node="node-1",cpu="0",mode="idle"} 50
node_cpu_seconds_total{node="node-1",cpu="0",mode="user"} 10
node_memory_MemAvailable_bytes{node="node-1"} 1e9
node_memory_MemTotal_bytes{node="node-1"} 4e9
node_load1{node="node-1"} 0.5
node_filesystem_avail_bytes{node="node-1",mountpoint="/",fstype="ext4",device="/dev/sda1"} 1e9
node_filesystem_size_bytes{node="node-1",mountpoint="/",fstype="ext4",device="/dev/sda1"} 4e9
node_disk_read_bytes_total{node="node-1",device="sda"} 1e6
node_disk_written_bytes_total{node="node-1",device="sda"} 1e6
node_network_receive_bytes_total{node="node-1",device="eth0"} 1e6
node_network_transmit_bytes_total{node="node-1",device="eth0"} 1e6
up{job="vispyr",component="gateway",pod="gw-0"} 1
vispyr_build_info{job="vispyr",component="gateway",pod="gw-0",version="0.1.0"} 1
vispyr_gateway_receiver_accepted_items_total{pod="gw-0",signal="traces",transport="grpc"} 100
vispyr_gateway_receiver_refused_requests_total{pod="gw-0",signal="traces",transport="grpc",reason="too_large"} 1
vispyr_gateway_not_exported_items_total{pod="gw-0",signal="logs"} 1
vispyr_gateway_exporter_sent_spans_total{pod="gw-0",exporter="tempo"} 100
vispyr_gateway_exporter_retried_spans_total{pod="gw-0",exporter="tempo"} 1
vispyr_gateway_exporter_dropped_spans_total{pod="gw-0",exporter="tempo"} 1
vispyr_gateway_exporter_queue_spans{pod="gw-0",exporter="tempo"} 10
vispyr_gateway_exporter_queue_capacity_spans{pod="gw-0",exporter="tempo"} 1000
vispyr_gateway_exporter_sent_samples_total{pod="gw-0",exporter="prometheus"} 100
vispyr_gateway_exporter_retried_samples_total{pod="gw-0",exporter="prometheus"} 1
vispyr_gateway_exporter_dropped_samples_total{pod="gw-0",exporter="prometheus"} 1
vispyr_gateway_exporter_queue_samples{pod="gw-0",exporter="prometheus"} 10
vispyr_gateway_exporter_queue_capacity_samples{pod="gw-0",exporter="prometheus"} 1000
vispyr_gateway_exporter_sent_profiles_total{pod="gw-0",exporter="pyroscope"} 100
vispyr_gateway_exporter_retried_profiles_total{pod="gw-0",exporter="pyroscope"} 1
vispyr_gateway_exporter_dropped_profiles_total{pod="gw-0",exporter="pyroscope"} 1
vispyr_gateway_exporter_queue_profiles{pod="gw-0",exporter="pyroscope"} 10
vispyr_gateway_exporter_queue_capacity_profiles{pod="gw-0",exporter="pyroscope"} 1000
vispyr_gateway_ring_members{pod="gw-0"} 2
vispyr_gateway_ring_routed_spans_total{pod="gw-0",owner="remote"} 10
vispyr_gateway_ring_forward_errors_total{pod="gw-0",reason="unreachable"} 1
vispyr_gateway_ring_membership_changes_total{pod="gw-0"} 1
vispyr_node_agent_profiler_samples_total{node="node-1"} 99
vispyr_node_agent_profiler_samples_dropped_total{node="node-1"} 1
vispyr_node_agent_profiler_stack_collisions_total{node="node-1",stack="user"} 1
vispyr_node_agent_profiler_stack_errors_total{node="node-1",stack="kernel"} 1
vispyr_node_agent_exporter_sent_items_total{node="node-1",signal="profiles"} 10
vispyr_node_agent_exporter_dropped_items_total{node="node-1",signal="profiles",reason="buffer_full"} 1
vispyr_operator_admissions_total{pod="op-0",outcome="injected"} 5
vispyr_operator_admission_duration_seconds_bucket{pod="op-0",le="+Inf"} 5
vispyr_operator_reconciles_total{pod="op-0"} 5
vispyr_operator_reconcile_errors_total{pod="op-0"} 1
"#;

/// `name{k="v",...} factor` lines; values hold no `"`.
fn parse_fixture() -> Vec<(BTreeMap<String, String>, f64)> {
    FIXTURE
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (name, rest) = line.split_once('{').expect("name{labels} factor");
            let (labels, factor) = rest.rsplit_once("} ").expect("name{labels} factor");
            let mut set: BTreeMap<String, String> = labels
                .split("\",")
                .map(|pair| {
                    let (k, v) = pair.split_once("=\"").expect("k=\"v\"");
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            set.insert("__name__".into(), name.to_string());
            (set, factor.parse().expect("a number"))
        })
        .collect()
}

/// Writes the fixture twice, a minute apart, so that rates have two points.
async fn write_fixture(prometheus: &Prometheus) {
    let series = parse_fixture();
    let now = SystemTime::now();
    for (at, times) in [(now - Duration::from_secs(60), 1.0), (now, 2.0)] {
        let samples: Vec<_> = series.iter().map(|(l, f)| (l.clone(), f * times)).collect();
        prometheus
            .remote_write_at(&samples, at)
            .await
            .expect("fixture written");
    }
}

/// Every query goes to a real Prometheus, started with the chart's own
/// prometheus.yml (so that file loads too), or to a real Pyroscope. No
/// query may fail to parse, and every PromQL query returns data from series
/// shaped as the pipeline writes them (a wrong name, label or join fails).
#[tokio::test]
async fn every_dashboard_query_runs_in_the_real_backends() {
    let rendered = objects(&render(&[]).unwrap());
    let config = find(&rendered, "ConfigMap", "vispyr-prometheus")["data"]["prometheus.yml"]
        .as_str()
        .unwrap()
        .to_string();
    let (prometheus, pyroscope) =
        tokio::try_join!(Prometheus::start_with_config(&config), Pyroscope::start())
            .expect("Prometheus (with the chart's config) and Pyroscope start");
    write_fixture(&prometheus).await;
    // A profile as the node agent sends it, the leaf frame's kind on each sample.
    let since = SystemTime::now() - Duration::from_secs(3600);
    pyroscope
        .push_otlp(&cpu_profile(
            &[
                ("service.name", SUBJECT.service),
                ("k8s.pod.name", "checkout-1"),
            ],
            &[("frame.kind", "js")],
            3,
        ))
        .await
        .expect("profile pushed");
    let frame_kinds = eventually(Duration::from_secs(30), || async {
        let values = pyroscope
            .label_values("frame_kind")
            .await
            .map_err(|e| e.to_string())?;
        if values.is_empty() {
            Err("the profile is not queryable yet".to_string())
        } else {
            Ok(values)
        }
    })
    .await
    .expect("a frame_kind label in Pyroscope");
    assert_eq!(frame_kinds, ["js"]);
    // Tempo's traces-to-profiles maps span attributes to these label names.
    let (_, file) = datasources();
    for tag in tempo_datasource(&file)["jsonData"]["tracesToProfiles"]["tags"]
        .as_array()
        .unwrap()
    {
        let label = tag["value"].as_str().unwrap();
        let values = pyroscope.label_values(label).await.unwrap();
        assert!(
            !values.is_empty(),
            "traces-to-profiles label {label} is not in Pyroscope"
        );
    }
    let failures = without_data(&queries(&SUBJECT), &prometheus, &pyroscope, since).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The Nodes dashboard reads what node_exporter exposes, under the same
/// names (the node agent mirrors them): every `node_*` metric it queries is
/// served by the real node_exporter on this machine.
#[tokio::test]
async fn nodes_dashboard_reads_node_exporter_names() {
    let exporter = NodeExporter::start().await.expect("node_exporter starts");
    let url = exporter.metrics_url();
    let http = reqwest::Client::new();
    let body = http.get(url).send().await.unwrap().text().await.unwrap();
    let served: BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let queried: BTreeSet<String> = queries(&SUBJECT)
        .into_iter()
        .filter(|(what, _)| what.starts_with("node-host.json"))
        .filter_map(|(_, q)| match q {
            Query::PromQL(q) => Some(q),
            Query::Profiles(_) => None,
        })
        .flat_map(|q| {
            q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("node_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(queried.len() >= 10, "{queried:?}");
    let missing: Vec<_> = queried
        .iter()
        .filter(|m| !served.contains(m.as_str()))
        .collect();
    assert!(missing.is_empty(), "not node_exporter names: {missing:?}");
}

const SA_GROUPS: [&str; 3] = [
    "system:serviceaccounts",
    "system:serviceaccounts:vispyr-system",
    "system:authenticated",
];

#[tokio::test]
async fn every_render_applies_and_each_component_has_only_its_rbac() {
    let cluster = TestCluster::start().await.expect("control plane starts");
    let admin = cluster.client();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    // What a user does: helm installs the CRDs first, then the rest, and
    // prints NOTES.txt, whose instructions are checked below against what
    // was installed.
    let notes = helm(&[
        "install",
        "vispyr",
        chart().to_str().unwrap(),
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        cluster.kubeconfig().to_str().unwrap(),
    ])
    .unwrap();
    for line in [
        "kubectl -n vispyr-system port-forward svc/vispyr-grafana 3000:3000",
        "vispyr.io/inject-nodejs: \"vispyr-system/default\"",
    ] {
        assert!(notes.contains(line), "NOTES lack {line:?}:\n{notes}");
    }

    // Helm created the CRD before the VispyrInstrumentation NOTES names.
    let instrumentations = Api::<DynamicObject>::namespaced_with(
        admin.clone(),
        NAMESPACE,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "vispyr.io",
            "v1alpha1",
            "VispyrInstrumentation",
        )),
    );
    instrumentations
        .get("default")
        .await
        .expect("helm installed the default VispyrInstrumentation");
    // Helm keeps the CRDs; the rest goes, so that the renders below are
    // applied by one field manager (a volume helm created as emptyDir and
    // kubectl applies as a claim would otherwise have both sources).
    helm(&[
        "uninstall",
        "vispyr",
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        cluster.kubeconfig().to_str().unwrap(),
    ])
    .unwrap();

    // Every case's render, applied server-side.
    // The default last, so that what is checked below is the default install.
    for (name, sets) in CASES.iter().rev() {
        let file = cluster.dir().join(format!("{name}.yaml"));
        std::fs::write(&file, render(sets).unwrap()).unwrap();
        if let Err(e) = cluster.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            file.to_str().unwrap(),
        ]) {
            panic!("case {name}: {e}");
        }
    }

    let sa = |name: &str| format!("system:serviceaccount:{NAMESPACE}:vispyr-{name}");
    let gateway = cluster.client_as(&sa("gateway"), &SA_GROUPS).await.unwrap();
    let agent = cluster
        .client_as(&sa("node-agent"), &SA_GROUPS)
        .await
        .unwrap();
    let prometheus = cluster
        .client_as(&sa("prometheus"), &SA_GROUPS)
        .await
        .unwrap();
    let grafana = cluster.client_as(&sa("grafana"), &SA_GROUPS).await.unwrap();
    let lp = ListParams::default();

    let grafana_svc = Api::<Service>::namespaced(admin.clone(), NAMESPACE)
        .get("vispyr-grafana")
        .await
        .unwrap();
    assert_eq!(grafana_svc.spec.unwrap().ports.unwrap()[0].port, 3000);
    let instrumentation = instrumentations
        .get("default")
        .await
        .expect("the default VispyrInstrumentation NOTES names");
    assert_eq!(
        instrumentation.data["spec"]["exporter"]["endpoint"],
        "http://vispyr-gateway.vispyr-system.svc:4318"
    );

    // Gateway: the ring's EndpointSlices of its namespace, nothing else.
    assert_allowed(
        "gateway lists EndpointSlices of its namespace",
        Api::<EndpointSlice>::namespaced(gateway.clone(), NAMESPACE)
            .list(&lp)
            .await,
    );
    assert_allowed(
        "gateway watches EndpointSlices of its namespace",
        Api::<EndpointSlice>::namespaced(gateway.clone(), NAMESPACE)
            .watch(
                &WatchParams::default().labels("kubernetes.io/service-name=vispyr-gateway-ring"),
                "0",
            )
            .await,
    );
    assert_forbidden(
        "gateway lists EndpointSlices elsewhere",
        Api::<EndpointSlice>::namespaced(gateway.clone(), "default")
            .list(&lp)
            .await,
    );
    assert_forbidden(
        "gateway reads Secrets",
        Api::<Secret>::namespaced(gateway.clone(), NAMESPACE)
            .list(&lp)
            .await,
    );
    assert_forbidden(
        "gateway reads pods",
        Api::<Pod>::namespaced(gateway.clone(), NAMESPACE)
            .list(&lp)
            .await,
    );

    // Node agent: reads pods (of its node), writes nothing, no Secrets.
    assert_allowed(
        "node agent lists pods of every namespace",
        Api::<Pod>::all(agent.clone())
            .list(&ListParams::default().fields("spec.nodeName=node-1"))
            .await,
    );
    assert_allowed(
        "node agent watches pods of its node",
        Api::<Pod>::all(agent.clone())
            .watch(&WatchParams::default().fields("spec.nodeName=node-1"), "0")
            .await,
    );
    assert_forbidden(
        "node agent deletes a pod",
        Api::<Pod>::namespaced(agent.clone(), "default")
            .delete("x", &Default::default())
            .await,
    );
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    assert_forbidden(
        "node agent creates a ConfigMap",
        Api::<ConfigMap>::namespaced(agent.clone(), NAMESPACE)
            .create(&PostParams::default(), &cm)
            .await,
    );
    assert_forbidden(
        "node agent reads Secrets",
        Api::<Secret>::all(agent.clone()).list(&lp).await,
    );

    // Prometheus: discovers the pods of the release namespace only.
    assert_allowed(
        "prometheus lists pods of its namespace",
        Api::<Pod>::namespaced(prometheus.clone(), NAMESPACE)
            .list(&lp)
            .await,
    );
    assert_forbidden(
        "prometheus lists pods elsewhere",
        Api::<Pod>::namespaced(prometheus.clone(), "default")
            .list(&lp)
            .await,
    );

    // Grafana, like Tempo and Pyroscope, has no API access at all.
    assert_forbidden(
        "grafana lists ConfigMaps",
        Api::<ConfigMap>::namespaced(grafana.clone(), NAMESPACE)
            .list(&lp)
            .await,
    );

    // None of them may change anything, anywhere: the apiserver's own
    // summary of each identity's rules holds no verb but get/list/watch.
    for (name, client) in [
        ("gateway", &gateway),
        ("node-agent", &agent),
        ("prometheus", &prometheus),
        ("grafana", &grafana),
    ] {
        for namespace in [NAMESPACE, "default"] {
            let writes = write_rules(client, namespace).await;
            assert!(
                writes.is_empty(),
                "{name} may write in {namespace}: {writes:?}"
            );
        }
    }
}

/// Resource rules of the client's identity in `namespace` that allow more
/// than reading, leaving out the self-review APIs every user may call.
async fn write_rules(client: &kube::Client, namespace: &str) -> Vec<String> {
    let review: SelfSubjectRulesReview =
        serde_json::from_value(json!({"spec": {"namespace": namespace}})).unwrap();
    let status = Api::<SelfSubjectRulesReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("a rules review")
        .status
        .expect("with a status");
    assert!(!status.incomplete, "{status:?}");
    status
        .resource_rules
        .into_iter()
        .filter(|rule| {
            let groups = rule.api_groups.clone().unwrap_or_default();
            !groups
                .iter()
                .all(|g| g == "authorization.k8s.io" || g == "authentication.k8s.io")
        })
        .filter(|rule| {
            rule.verbs
                .iter()
                .any(|v| !matches!(v.as_str(), "get" | "list" | "watch"))
        })
        .map(|rule| {
            format!(
                "{:?} {:?} {:?}",
                rule.verbs, rule.api_groups, rule.resources
            )
        })
        .collect()
}
