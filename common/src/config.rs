//! Layered configuration for every binary: serde defaults < YAML file <
//! environment < `--set` flags.
//!
//! The layers are merged as one `serde_yaml::Value` tree and deserialized
//! once, so "no config at all" works as long as the binary's config struct
//! (and each nested struct) carries `#[serde(default)]`. Every leaf remembers
//! which layer set it, so a bad value is reported with its key path and the
//! file, variable or flag to fix.
//!
//! Override values (env and `--set`) are read as YAML scalars: `true`, `42`,
//! `1.5` and `null` get their types, a quoted value is the string inside the
//! quotes, a flow collection (`[a, b]`, `{k: v}`) is a collection, and
//! anything else is kept verbatim as a string (so `a # b` keeps its `# b`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use crate::telemetry::LogFormat;

/// sysexits.h EX_USAGE: the process was started with a configuration it
/// cannot run with.
pub(crate) const EX_USAGE: u8 = 64;

/// Flags every Vispyr binary accepts; `#[command(flatten)]` it into the CLI.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// YAML config file; without it, built-in defaults apply.
    #[arg(long, value_name = "PATH", env = "VISPYR_CONFIG")]
    pub config: Option<PathBuf>,

    /// Override one config key, e.g. `--set exporters.tempo.endpoint=http://tempo:4317`.
    /// Repeatable; wins over the file and the environment.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// Log line format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, env = "VISPYR_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter directives (tracing EnvFilter syntax); RUST_LOG wins when set.
    #[arg(
        long,
        value_name = "FILTER",
        default_value = "info",
        env = "VISPYR_LOG"
    )]
    pub log_level: String,
}

impl CommonArgs {
    /// Loads the binary's config from `--config`, the process environment
    /// (variables starting with `env_prefix`, e.g. `VISPYR_GATEWAY_`) and `--set`.
    pub fn load<T: DeserializeOwned>(&self, env_prefix: &str) -> Result<T, ConfigError> {
        let env = prefixed_process_env(env_prefix)?;
        load(self.config.as_deref(), env_prefix, env, &self.set)
    }
}

/// Where a config value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    /// The variable's name.
    Env(String),
    /// The key of a `--set`; the value is left out because it may be a secret.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Flag(key) => write!(f, "flag --set {key}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} is not valid YAML", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("config file {}: the top level must be a mapping", path.display())]
    NotAMapping { path: PathBuf },
    #[error("--set {arg:?}: expected KEY=VALUE")]
    MalformedSet { arg: String },
    #[error("{origin}: {key:?} is not a valid key (empty segment)")]
    InvalidKey { key: String, origin: Origin },
    #[error("{origin}: cannot set {key} because {parent} is not a mapping")]
    NotAMappingAt {
        key: String,
        parent: String,
        origin: Origin,
    },
    #[error("environment variable {var} is not valid UTF-8")]
    NotUnicode { var: String },
    #[error("{path}: {message}{}", origin.as_ref().map(|o| format!(" (set by {o})")).unwrap_or_default())]
    Invalid {
        path: String,
        message: String,
        origin: Option<Origin>,
    },
}

impl ConfigError {
    /// Every variant means "fix the configuration", hence one code.
    pub fn exit_code(&self) -> u8 {
        EX_USAGE
    }
}

/// Merges the layers and deserializes `T`. `env` may hold unrelated
/// variables; only those starting with `env_prefix` are used, with the rest
/// of the name split on `__` and lower-cased into a key path.
pub fn load<T, I>(
    file: Option<&Path>,
    env_prefix: &str,
    env: I,
    sets: &[String],
) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    I: IntoIterator<Item = (String, String)>,
{
    let mut layers = match file {
        Some(path) => Layers::from_file(path)?,
        None => Layers::default(),
    };

    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(var, _)| var.starts_with(env_prefix))
        .collect();
    // Process env order is arbitrary; sorting makes clashes resolve the same way every run.
    env.sort();
    for (var, raw) in env {
        let key = var[env_prefix.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        layers.set(key, &raw, Origin::Env(var))?;
    }

    for arg in sets {
        let (key, raw) = arg
            .split_once('=')
            .ok_or_else(|| ConfigError::MalformedSet { arg: arg.clone() })?;
        let path = key.split('.').map(str::to_owned).collect();
        layers.set(path, raw, Origin::Flag(key.to_owned()))?;
    }

    layers.deserialize()
}

fn prefixed_process_env(prefix: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = Vec::new();
    for (var, value) in std::env::vars_os() {
        let lossy = var.to_string_lossy();
        if !lossy.starts_with(prefix) {
            continue;
        }
        let var_name = lossy.into_owned();
        match (var.into_string(), value.into_string()) {
            (Ok(var), Ok(value)) => env.push((var, value)),
            _ => return Err(ConfigError::NotUnicode { var: var_name }),
        }
    }
    Ok(env)
}

struct Set {
    origin: Origin,
    /// The override's text, kept while its typed reading is not a string, so
    /// a string field set to `42` or `true` can fall back to the text.
    raw: Option<String>,
}

struct Layers {
    tree: Value,
    /// Key path of each leaf -> who set it.
    origins: BTreeMap<Vec<String>, Set>,
}

impl Default for Layers {
    fn default() -> Self {
        Layers {
            tree: Value::Mapping(Mapping::new()),
            origins: BTreeMap::new(),
        }
    }
}

impl Layers {
    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let tree = match serde_yaml::from_str(&text) {
            // An empty file (or one with only comments) is an empty config.
            Ok(Value::Null) => Value::Mapping(Mapping::new()),
            Ok(tree @ Value::Mapping(_)) => tree,
            Ok(_) => {
                return Err(ConfigError::NotAMapping {
                    path: path.to_owned(),
                });
            }
            Err(source) => {
                return Err(ConfigError::Parse {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut layers = Layers {
            tree,
            origins: BTreeMap::new(),
        };
        let origin = Origin::File(path.to_owned());
        record_leaves(&layers.tree, &mut Vec::new(), &origin, &mut layers.origins);
        Ok(layers)
    }

    fn set(&mut self, key: Vec<String>, raw: &str, origin: Origin) -> Result<(), ConfigError> {
        if key.iter().any(String::is_empty) {
            return Err(ConfigError::InvalidKey {
                key: key.join("."),
                origin,
            });
        }
        let mut node = &mut self.tree;
        for (depth, segment) in key.iter().enumerate() {
            if node.is_null() {
                // A null (e.g. `tempo:` with nothing after it) only becomes a
                // mapping here, so whoever set it no longer explains the value.
                self.origins.remove(&key[..depth]);
                *node = Value::Mapping(Mapping::new());
            }
            let Value::Mapping(map) = node else {
                return Err(ConfigError::NotAMappingAt {
                    key: key.join("."),
                    parent: key[..depth].join("."),
                    origin,
                });
            };
            node = map
                .entry(Value::String(segment.clone()))
                .or_insert(Value::Null);
        }
        let value = parse_override(raw);
        let raw = (!value.is_string()).then(|| raw.to_owned());
        *node = value;
        self.origins.retain(|path, _| !path.starts_with(&key));
        self.origins.insert(key, Set { origin, raw });
        Ok(())
    }

    fn deserialize<T: DeserializeOwned>(mut self) -> Result<T, ConfigError> {
        // The override whose text was just substituted, with the error its
        // typed reading caused: if the text fails at the same place too, the
        // typed error is the more useful one to report.
        let mut retried: Option<(Vec<String>, ConfigError)> = None;
        loop {
            let err = match serde_path_to_error::deserialize(self.tree.clone()) {
                Ok(config) => return Ok(config),
                Err(err) => err,
            };
            let key = key_of(err.path());
            let error = ConfigError::Invalid {
                // serde_path_to_error writes the root as ".", which reads as a typo.
                path: if key.is_empty() {
                    "top level".to_owned()
                } else {
                    err.path().to_string()
                },
                message: err.into_inner().to_string(),
                origin: self.origin_of(&key),
            };
            if let Some((at, first)) = retried.take()
                && at == key
            {
                return Err(first);
            }
            let raw = self.origins.get_mut(&key).and_then(|set| set.raw.take());
            match (raw, leaf_mut(&mut self.tree, &key)) {
                (Some(raw), Some(leaf)) => {
                    *leaf = Value::String(raw);
                    retried = Some((key, error));
                }
                _ => return Err(error),
            }
        }
    }

    /// The layer that set this key; for an error inside a sequence or flow
    /// collection, the nearest ancestor that was set as a whole; for an error
    /// about a mapping (an unknown key, a missing field), a layer that set
    /// something in it. The root is left out of the last case: everything
    /// is below it.
    fn origin_of(&self, key: &[String]) -> Option<Origin> {
        let set = (0..=key.len())
            .rev()
            .find_map(|len| self.origins.get(&key[..len]));
        let set = set.or_else(|| {
            let (path, set) = self.origins.range(key.to_vec()..).next()?;
            (!key.is_empty() && path.starts_with(key)).then_some(set)
        });
        set.map(|set| set.origin.clone())
    }
}

fn record_leaves(
    node: &Value,
    path: &mut Vec<String>,
    origin: &Origin,
    origins: &mut BTreeMap<Vec<String>, Set>,
) {
    match node {
        Value::Mapping(map) if !map.is_empty() && map.keys().all(Value::is_string) => {
            for (key, child) in map {
                path.push(key.as_str().unwrap_or_default().to_owned());
                record_leaves(child, path, origin, origins);
                path.pop();
            }
        }
        // The root is no leaf: an empty file sets nothing.
        _ if path.is_empty() => {}
        _ => {
            origins.insert(
                path.clone(),
                Set {
                    origin: origin.clone(),
                    raw: None,
                },
            );
        }
    }
}

fn parse_override(raw: &str) -> Value {
    let trimmed = raw.trim();
    match serde_yaml::from_str::<Value>(raw) {
        Ok(value @ (Value::Bool(_) | Value::Number(_))) => value,
        Ok(Value::Null) if matches!(trimmed, "~" | "null" | "Null" | "NULL") => Value::Null,
        Ok(value @ Value::String(_)) if trimmed.starts_with(['"', '\'']) => value,
        Ok(value @ (Value::Sequence(_) | Value::Mapping(_))) if trimmed.starts_with(['[', '{']) => {
            value
        }
        _ => Value::String(raw.to_owned()),
    }
}

fn key_of(path: &serde_path_to_error::Path) -> Vec<String> {
    path.iter()
        .map(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => index.to_string(),
            other => other.to_string(),
        })
        .collect()
}

fn leaf_mut<'a>(tree: &'a mut Value, key: &[String]) -> Option<&'a mut Value> {
    key.iter()
        .try_fold(tree, |node, segment| node.get_mut(segment.as_str()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use clap::Parser;
    use serde::Deserialize;

    use super::*;

    const PREFIX: &str = "VISPYR_TEST_";

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        name: String,
        port: u16,
        debug: bool,
        ratio: f64,
        peers: Vec<String>,
        exporters: Exporters,
    }

    impl Default for Sample {
        fn default() -> Self {
            Sample {
                name: "vispyr".into(),
                port: 8888,
                debug: false,
                ratio: 0.5,
                peers: Vec::new(),
                exporters: Exporters::default(),
            }
        }
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Exporters {
        tempo: Endpoint,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Endpoint {
        endpoint: String,
        timeout_ms: u64,
    }

    impl Default for Endpoint {
        fn default() -> Self {
            Endpoint {
                endpoint: "http://localhost:4317".into(),
                timeout_ms: 1000,
            }
        }
    }

    fn file(yaml: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(yaml.as_bytes()).unwrap();
        file
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sets(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn nothing_given_means_defaults() {
        let config: Sample = load(None, PREFIX, env(&[]), &[]).unwrap();
        assert_eq!(config, Sample::default());
    }

    #[test]
    fn empty_file_means_defaults() {
        let file = file("# nothing here\n");
        let config: Sample = load(Some(file.path()), PREFIX, env(&[]), &[]).unwrap();
        assert_eq!(config, Sample::default());
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        let file = file(
            "name: from-file\nport: 1000\nexporters:\n  tempo:\n    endpoint: http://file:4317\n",
        );
        let env = env(&[
            ("VISPYR_TEST_PORT", "2000"),
            ("VISPYR_TEST_EXPORTERS__TEMPO__ENDPOINT", "http://env:4317"),
            ("VISPYR_OTHER_PORT", "9"),
            ("PATH", "/usr/bin"),
        ]);
        let config: Sample = load(
            Some(file.path()),
            PREFIX,
            env,
            &sets(&["exporters.tempo.endpoint=http://flag:4317"]),
        )
        .unwrap();
        assert_eq!(
            config,
            Sample {
                name: "from-file".into(),
                port: 2000,
                exporters: Exporters {
                    tempo: Endpoint {
                        endpoint: "http://flag:4317".into(),
                        timeout_ms: 1000,
                    },
                },
                ..Sample::default()
            }
        );
    }

    #[test]
    fn later_flags_win() {
        let config: Sample = load(None, PREFIX, env(&[]), &sets(&["port=1", "port=2"])).unwrap();
        assert_eq!(config.port, 2);
    }

    #[test]
    fn overrides_are_typed_as_yaml_scalars() {
        let config: Sample = load(
            None,
            PREFIX,
            env(&[("VISPYR_TEST_DEBUG", "true")]),
            &sets(&[
                "ratio=1.5",
                "port=42",
                "peers=[a:4319, b:4319]",
                "exporters.tempo.endpoint=http://tempo:4317 # not a comment",
            ]),
        )
        .unwrap();
        assert!(config.debug);
        assert_eq!(config.ratio, 1.5);
        assert_eq!(config.port, 42);
        assert_eq!(config.peers, ["a:4319", "b:4319"]);
        assert_eq!(
            config.exporters.tempo.endpoint,
            "http://tempo:4317 # not a comment"
        );
    }

    #[test]
    fn typed_override_falls_back_to_its_text_for_a_string_field() {
        let config: Sample = load(
            None,
            PREFIX,
            env(&[("VISPYR_TEST_NAME", "007.10")]),
            &sets(&["exporters.tempo.endpoint=true"]),
        )
        .unwrap();
        assert_eq!(config.name, "007.10");
        assert_eq!(config.exporters.tempo.endpoint, "true");

        let config: Sample = load(None, PREFIX, env(&[]), &sets(&["name=1.10"])).unwrap();
        assert_eq!(config.name, "1.10", "the text, not the float's rendering");
    }

    #[test]
    fn scalar_parsing() {
        assert_eq!(parse_override("true"), Value::Bool(true));
        assert_eq!(parse_override("42"), Value::from(42));
        assert_eq!(parse_override("1.5"), Value::from(1.5));
        assert_eq!(parse_override("~"), Value::Null);
        assert_eq!(parse_override(""), Value::from(""));
        assert_eq!(parse_override("'42'"), Value::from("42"));
        assert_eq!(parse_override("a: b"), Value::from("a: b"));
        assert_eq!(parse_override("- a"), Value::from("- a"));
        assert_eq!(parse_override("#x"), Value::from("#x"));
        assert_eq!(
            parse_override("[1, x]"),
            Value::Sequence(vec![Value::from(1), Value::from("x")])
        );
    }

    #[test]
    fn error_names_the_key_path_and_the_env_var() {
        let err = load::<Sample, _>(
            None,
            PREFIX,
            env(&[("VISPYR_TEST_EXPORTERS__TEMPO__TIMEOUT_MS", "soon")]),
            &[],
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("exporters.tempo.timeout_ms: invalid type: string \"soon\""),
            "{message}"
        );
        assert!(
            message.ends_with("(set by env VISPYR_TEST_EXPORTERS__TEMPO__TIMEOUT_MS)"),
            "{message}"
        );
        assert_eq!(err.exit_code(), 64);
    }

    #[test]
    fn error_names_the_file() {
        let file = file("exporters:\n  tempo:\n    timeout_ms: [1]\n");
        let err = load::<Sample, _>(Some(file.path()), PREFIX, env(&[]), &[]).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("exporters.tempo.timeout_ms: invalid type: sequence"),
            "{message}"
        );
        assert!(
            message.ends_with(&format!("(set by file {})", file.path().display())),
            "{message}"
        );
    }

    #[test]
    fn error_inside_a_sequence_names_who_set_the_sequence() {
        let err =
            load::<Sample, _>(None, PREFIX, env(&[]), &sets(&["peers=[a, [b]]"])).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("peers[1]: invalid type"), "{message}");
        assert!(message.ends_with("(set by flag --set peers)"), "{message}");
    }

    #[test]
    fn out_of_range_number_reports_the_number_not_its_text() {
        let err = load::<Sample, _>(None, PREFIX, env(&[]), &sets(&["port=70000"])).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("port: invalid value: integer `70000`"),
            "{message}"
        );
        assert!(message.ends_with("(set by flag --set port)"), "{message}");
    }

    #[test]
    fn unknown_key_names_the_flag() {
        let err = load::<Sample, _>(
            None,
            PREFIX,
            env(&[]),
            &sets(&["exporters.tmepo.endpoint=x"]),
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("exporters.tmepo: unknown field `tmepo`"),
            "{message}"
        );
        assert!(
            message.ends_with("(set by flag --set exporters.tmepo.endpoint)"),
            "{message}"
        );
    }

    #[test]
    fn missing_required_field_at_the_top_blames_no_layer() {
        #[derive(Debug, Deserialize)]
        struct Required {
            #[expect(dead_code, reason = "only its absence matters")]
            name: String,
        }
        let file = file("");
        let err = load::<Required, _>(Some(file.path()), PREFIX, env(&[]), &[]).unwrap_err();
        assert_eq!(err.to_string(), "top level: missing field `name`");
    }

    #[test]
    fn missing_config_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.yaml");
        let err = load::<Sample, _>(Some(&path), PREFIX, env(&[]), &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(err.exit_code(), 64);
    }

    #[test]
    fn non_mapping_file_is_rejected() {
        let file = file("- a\n- b\n");
        let err = load::<Sample, _>(Some(file.path()), PREFIX, env(&[]), &[]).unwrap_err();
        assert!(matches!(err, ConfigError::NotAMapping { .. }), "{err:?}");
    }

    #[test]
    fn set_without_equals_is_rejected() {
        let err = load::<Sample, _>(None, PREFIX, env(&[]), &sets(&["port"])).unwrap_err();
        assert!(
            matches!(err, ConfigError::MalformedSet { ref arg } if arg == "port"),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 64);
    }

    #[test]
    fn empty_key_segment_is_rejected() {
        let err = load::<Sample, _>(None, PREFIX, env(&[]), &sets(&["exporters..endpoint=x"]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::InvalidKey { .. }), "{err:?}");
    }

    #[test]
    fn setting_below_a_scalar_is_rejected() {
        let file = file("name: x\n");
        let err = load::<Sample, _>(
            Some(file.path()),
            PREFIX,
            env(&[]),
            &sets(&["name.first=y"]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "flag --set name.first: cannot set name.first because name is not a mapping"
        );
    }

    #[test]
    fn setting_below_a_null_replaces_it() {
        let file = file("exporters:\n  tempo:\n");
        let config: Sample = load(
            Some(file.path()),
            PREFIX,
            env(&[("VISPYR_TEST_EXPORTERS__TEMPO__TIMEOUT_MS", "5")]),
            &[],
        )
        .unwrap();
        assert_eq!(config.exporters.tempo.timeout_ms, 5);
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn common_args_parse() {
        let cli = Cli::try_parse_from([
            "bin",
            "--config",
            "/etc/vispyr.yaml",
            "--set",
            "a=1",
            "--set",
            "b=2",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.common.config, Some(PathBuf::from("/etc/vispyr.yaml")));
        assert_eq!(cli.common.set, ["a=1", "b=2"]);
        assert_eq!(cli.common.log_format, LogFormat::Json);
        assert_eq!(cli.common.log_level, "info");
    }
}
