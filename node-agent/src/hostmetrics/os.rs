//! The host's os-release (below the host's root), as node_exporter's `os`
//! collector exports it.

use std::collections::HashMap;
use std::io;

use super::{Error, Family, HostMetrics, Kind, Malformed, read_parsed};

/// (os-release key, label), in node_exporter's label order.
const INFO: [(&str, &str); 12] = [
    ("BUILD_ID", "build_id"),
    ("ID", "id"),
    ("ID_LIKE", "id_like"),
    ("IMAGE_ID", "image_id"),
    ("IMAGE_VERSION", "image_version"),
    ("NAME", "name"),
    ("PRETTY_NAME", "pretty_name"),
    ("VARIANT", "variant"),
    ("VARIANT_ID", "variant_id"),
    ("VERSION", "version"),
    ("VERSION_CODENAME", "version_codename"),
    ("VERSION_ID", "version_id"),
];

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    for file in ["etc/os-release", "usr/lib/os-release"] {
        match read_parsed(&metrics.rootfs_path.join(file), parse) {
            Ok(release) => return Ok(families(&release)),
            Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    // A distroless host has neither.
    Ok(Vec::new())
}

fn families(release: &HashMap<String, String>) -> Vec<Family> {
    let field = |key: &str| release.get(key).cloned().unwrap_or_default();
    let labels = INFO
        .iter()
        .map(|(key, label)| (*label, field(key)))
        .collect();
    let mut families = vec![Family::new(
        Kind::Gauge,
        "node_os_info",
        "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, image_version, name, pretty_name, variant, variant_id, version, version_codename, version_id.",
    )
    .with(labels, 1.0)];
    if let Some(version) = major_minor(&field("VERSION_ID")).filter(|v| *v > 0.0) {
        families.push(
            Family::new(
                Kind::Gauge,
                "node_os_version",
                "Metric containing the major.minor part of the OS version.",
            )
            .with(
                vec![
                    ("id", field("ID")),
                    ("id_like", field("ID_LIKE")),
                    ("name", field("NAME")),
                ],
                version,
            ),
        );
    }
    families
}

/// `22.04.3` is 22.04, `12` is 12 (node_exporter's `^[0-9]+\.?[0-9]*`).
fn major_minor(version: &str) -> Option<f64> {
    let integer = version.chars().take_while(char::is_ascii_digit).count();
    if integer == 0 {
        return None;
    }
    let rest = &version[integer..];
    let fraction = rest.strip_prefix('.').map_or(0, |r| {
        1 + r.chars().take_while(char::is_ascii_digit).count()
    });
    version[..integer + fraction]
        .trim_end_matches('.')
        .parse()
        .ok()
}

/// `KEY=value` lines, values optionally in single or double quotes with
/// shell backslash escapes (os-release(5)).
fn parse(text: &str) -> Result<HashMap<String, String>, Malformed> {
    let mut release = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| Malformed(format!("not KEY=value: {line:?}")))?;
        let value = match value.as_bytes().first() {
            Some(b'\'') => value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .ok_or_else(|| Malformed(format!("{key}: unterminated quote")))?
                .to_owned(),
            Some(b'"') => {
                let inner = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .ok_or_else(|| Malformed(format!("{key}: unterminated quote")))?;
                let mut unescaped = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => unescaped.extend(chars.next()),
                        c => unescaped.push(c),
                    }
                }
                unescaped
            }
            _ => value.to_owned(),
        };
        release.insert(key.to_owned(), value);
    }
    Ok(release)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_a_real_os_release_below_rootfs() {
        let families = read(&fixture_metrics()).unwrap();
        let info = &families[0].samples[0].labels;
        assert!(info.contains(&("id", "debian".to_owned())), "{info:?}");
        assert!(info.contains(&("pretty_name", "Debian GNU/Linux 12 (bookworm)".to_owned())));
        assert!(info.contains(&("build_id", String::new())));
        assert_eq!(
            value(
                &families,
                "node_os_version",
                &[
                    ("id", "debian"),
                    ("id_like", ""),
                    ("name", "Debian GNU/Linux")
                ]
            ),
            12.0
        );
    }

    #[test]
    fn versions_quotes_and_escapes() {
        assert_eq!(major_minor("22.04.3"), Some(22.04));
        assert_eq!(major_minor("12"), Some(12.0));
        assert_eq!(major_minor("7."), Some(7.0));
        assert_eq!(major_minor("rolling"), None);
        let release = parse("# c\nNAME='A B'\nPRETTY_NAME=\"say \\\"hi\\\"\"\nID=x\n").unwrap();
        assert_eq!(release["NAME"], "A B");
        assert_eq!(release["PRETTY_NAME"], "say \"hi\"");
        assert_eq!(release["ID"], "x");
        assert!(parse("NAME=\"open\n").unwrap_err().0.contains("NAME"));
        assert!(parse("garbage\n").is_err());
    }
}
