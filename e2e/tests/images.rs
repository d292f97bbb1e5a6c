//! The image builder (e2e/images/build.sh), without containerd: layers are
//! reproducible, and a wrong image name is refused by name.

use std::path::Path;
use std::process::{Command, Output};

fn build(cache: &Path, images: &[&str]) -> Output {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build.sh"))
        .args(images)
        .env("CACHE", cache)
        .output()
        .expect("bash runs")
}

/// `image <ref> <manifest digest> <bytes> <seconds>` for each image built.
fn digests(out: &Output) -> Vec<(String, String)> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            (f.next() == Some("image"))
                .then(|| (f.next().unwrap().into(), f.next().unwrap().into()))
        })
        .collect()
}

#[test]
fn the_same_sources_give_the_same_digests() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = digests(&build(a.path(), &["pause", "hello"]));
    let second = digests(&build(b.path(), &["pause", "hello"]));
    assert_eq!(
        first.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["vispyr.local/pause:dev", "vispyr.local/hello:dev"]
    );
    assert_eq!(first, second);
    assert!(a.path().join("images/hello.tar").is_file());
}

#[test]
fn an_unknown_image_is_refused_by_name() {
    let cache = tempfile::tempdir().unwrap();
    let out = build(cache.path(), &["hello", "grafana"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown image 'grafana'"), "{err}");
    assert!(
        !cache.path().join("images/hello.tar").exists(),
        "nothing is built"
    );
}
