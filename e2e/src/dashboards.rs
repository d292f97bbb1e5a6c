//! Vispyr's Grafana provisioning (`config/grafana`) as the queries Grafana
//! would send: every dashboard panel and query variable, and the Tempo
//! datasource's traces-to-metrics links, with Grafana's variables filled in.
//! The chart test runs them on series shaped as the pipeline writes them; the
//! end-to-end test runs them on what the live pipeline wrote.
//!
//! Tempo panels are checked for their datasource only: the service map is
//! built by Grafana from the `traces_service_graph_*` series, whose queries
//! are here, and a TraceQL search needs Tempo >= 2.0 (the harness runs 1.5,
//! the newest the Go module registry serves).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::{PrometheusApi, PyroscopeApi};

/// The profile type every profiles panel and variable reads.
pub const CPU_PROFILE: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";

const DATASOURCES: &str = "config/grafana/provisioning/datasources/vispyr.yaml";

/// What single-valued variables and the traces-to-metrics link stand for.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// `service.name` of the service looked at.
    pub service: &'a str,
    /// A span name of that service (traces-to-metrics starts from a span).
    pub span_name: &'a str,
}

/// A query a dashboard sends, variables interpolated.
#[derive(Debug, Clone)]
pub enum Query {
    PromQL(String),
    /// A Pyroscope label selector of [`CPU_PROFILE`].
    Profiles(String),
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// uid -> type of the provisioned datasources, and the whole file.
pub fn datasources() -> (BTreeMap<String, String>, Value) {
    let file: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join(DATASOURCES)).unwrap())
            .expect("datasources file is YAML");
    let by_uid = file["datasources"]
        .as_array()
        .expect("a datasources list")
        .iter()
        .map(|d| {
            (
                d["uid"]
                    .as_str()
                    .expect("every datasource has a uid")
                    .to_string(),
                d["type"].as_str().expect("and a type").to_string(),
            )
        })
        .collect();
    (by_uid, file)
}

/// The provisioned Tempo datasource.
pub fn tempo_datasource(file: &Value) -> &Value {
    file["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "tempo")
        .expect("a Tempo datasource")
}

/// (file name, JSON) of every dashboard, by name.
pub fn dashboards() -> Vec<(String, Value)> {
    let dir = root().join("config/grafana/dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"));
            (name, json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel, the panels of rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Grafana's variables replaced as Grafana would with "All" selected (the
/// variable's allValue) or, for a single-valued variable, the subject's
/// service; an undeclared variable is an error.
fn interpolate(
    query: &str,
    declared: &BTreeMap<String, String>,
    subject: &Subject,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = query;
    while let Some(at) = rest.find('$') {
        out += &rest[..at];
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let close = braced.find('}').ok_or(format!("unclosed ${{ in {query}"))?;
            let inner = &braced[..close];
            (inner.split(':').next().unwrap_or_default(), close + 2)
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..len], len)
        };
        match name {
            "__rate_interval" | "__interval" | "__range" => out += "5m",
            // Tempo's traces-to-metrics: the span's tags as matchers.
            "__tags" => out += &format!("service=\"{}\"", subject.service),
            "__span.name" => out += subject.span_name,
            n => {
                out += declared
                    .get(n)
                    .ok_or(format!("undeclared variable ${n} in {query}"))?
            }
        }
        rest = &after[len..];
    }
    out += rest;
    Ok(out)
}

/// Every query of every dashboard panel and variable, and of the Tempo
/// datasource's traces-to-metrics links, each with where it is. Panics on a
/// dashboard that refers to a datasource not provisioned, or has a panel of
/// a type or with a query this cannot check.
pub fn queries(subject: &Subject) -> Vec<(String, Query)> {
    let (sources, file) = datasources();
    let mut out = Vec::new();
    for (name, dashboard) in dashboards() {
        let vars = dashboard["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let declared: BTreeMap<String, String> = vars
            .iter()
            .map(|v| {
                let value = v["allValue"].as_str().unwrap_or(subject.service);
                (v["name"].as_str().unwrap().to_string(), value.to_string())
            })
            .collect();
        let interpolate = |text: &str| {
            interpolate(text, &declared, subject).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let check_source = |what: &str, ds: &Value| {
            let uid = ds["uid"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: {what} has no datasource uid"));
            let kind = sources
                .get(uid)
                .unwrap_or_else(|| panic!("{name}: {what} uses datasource {uid}, not provisioned"));
            assert_eq!(ds["type"].as_str(), Some(kind.as_str()), "{name}: {what}");
            uid.to_string()
        };
        for var in &vars {
            if var["type"] != "query" {
                continue;
            }
            let what = format!("variable {}", var["name"]);
            match check_source(&what, &var["datasource"]).as_str() {
                "vispyr-prometheus" => {
                    // label_values(<selector>, <label>): the selector is PromQL.
                    let q = var["query"].as_str().unwrap();
                    let inner = q
                        .strip_prefix("label_values(")
                        .and_then(|s| s.rsplit_once(','))
                        .map(|(sel, _)| sel)
                        .unwrap_or_else(|| panic!("{name}: {what}: unexpected query {q}"));
                    out.push((format!("{name} {what}"), Query::PromQL(interpolate(inner))));
                }
                "vispyr-pyroscope" => {
                    assert_eq!(var["query"]["profileTypeId"], CPU_PROFILE, "{name}: {what}");
                    assert!(var["query"]["labelName"].is_string(), "{name}: {what}");
                }
                other => panic!("{name}: {what}: no check for variables of {other}"),
            }
        }
        let mut ids = BTreeSet::new();
        const PANEL_TYPES: [&str; 6] = [
            "row",
            "timeseries",
            "table",
            "stat",
            "nodeGraph",
            "flamegraph",
        ];
        for panel in panels(&dashboard) {
            assert!(
                ids.insert(panel["id"].as_i64().unwrap()),
                "{name}: duplicate panel id"
            );
            let kind = panel["type"].as_str().unwrap_or_default();
            assert!(PANEL_TYPES.contains(&kind), "{name}: panel type {kind:?}");
            if kind == "row" {
                continue;
            }
            let what = format!("panel {}", panel["title"]);
            check_source(&what, &panel["datasource"]);
            let targets = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: {what} has no targets"));
            assert!(!targets.is_empty(), "{name}: {what} has no query");
            for target in targets {
                let field = |key: &str| {
                    interpolate(
                        target[key]
                            .as_str()
                            .unwrap_or_else(|| panic!("{name}: {what}: no {key}")),
                    )
                };
                let query = match check_source(&what, &target["datasource"]).as_str() {
                    "vispyr-prometheus" => Query::PromQL(field("expr")),
                    "vispyr-pyroscope" => {
                        assert_eq!(target["profileTypeId"], CPU_PROFILE, "{name}: {what}");
                        Query::Profiles(field("labelSelector"))
                    }
                    _ => continue,
                };
                out.push((format!("{name} {what}"), query));
            }
        }
    }
    let tempo = tempo_datasource(&file);
    for key in ["serviceMap", "tracesToMetrics"] {
        assert_eq!(
            tempo["jsonData"][key]["datasourceUid"], "vispyr-prometheus",
            "{key}"
        );
    }
    assert_eq!(
        tempo["jsonData"]["tracesToProfiles"]["datasourceUid"],
        "vispyr-pyroscope"
    );
    for q in tempo["jsonData"]["tracesToMetrics"]["queries"]
        .as_array()
        .unwrap()
    {
        // The provisioning file escapes a literal $ as $$.
        let query = q["query"].as_str().unwrap().replace("$$", "$");
        out.push((
            format!("Tempo traces-to-metrics {}", q["name"]),
            Query::PromQL(interpolate(&query, &BTreeMap::new(), subject).unwrap()),
        ));
    }
    out
}

/// The queries that fail or return no data, each with why: PromQL must
/// return at least one series, a profile selector samples since `since`.
pub async fn without_data(
    queries: &[(String, Query)],
    prometheus: &PrometheusApi,
    pyroscope: &PyroscopeApi,
    since: SystemTime,
) -> Vec<String> {
    let until = SystemTime::now() + Duration::from_secs(60);
    let mut failures = Vec::new();
    for (what, query) in queries {
        let result = match query {
            Query::PromQL(q) => match prometheus.query(q).await {
                Ok(series) if series.is_empty() => Err(format!("no data for {q}")),
                other => other.map(drop).map_err(|e| e.to_string()),
            },
            Query::Profiles(selector) => {
                match pyroscope
                    .merged_profile(CPU_PROFILE, selector, since, until)
                    .await
                {
                    Ok(graph) if graph.total == 0 => Err(format!("no data for {selector}")),
                    other => other.map(drop).map_err(|e| e.to_string()),
                }
            }
        };
        if let Err(e) = result {
            failures.push(format!("{what}: {e}"));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_filled_as_grafana_fills_them() {
        let declared = BTreeMap::from([("service".to_string(), ".*".to_string())]);
        let subject = Subject {
            service: "checkout",
            span_name: "GET /cart",
        };
        assert_eq!(
            interpolate(
                r#"rate(x{service=~"${service:regex}", span_name="${__span.name}"}[$__rate_interval]) and y{$__tags}"#,
                &declared,
                &subject
            )
            .unwrap(),
            r#"rate(x{service=~".*", span_name="GET /cart"}[5m]) and y{service="checkout"}"#
        );
        assert!(
            interpolate("x{a=\"$nope\"}", &declared, &subject)
                .unwrap_err()
                .contains("undeclared variable $nope")
        );
    }
}
