//! Golden files: expected output kept in the repository, compared byte for
//! byte, and rewritten on request (`VISPYR_UPDATE_GOLDEN=1`) so that the
//! change shows up as a diff to review.

use std::path::Path;

/// Set to `1` to rewrite golden files instead of comparing with them.
pub const UPDATE_ENV: &str = "VISPYR_UPDATE_GOLDEN";

/// Whether this run rewrites golden files.
pub fn updating() -> bool {
    std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1")
}

/// Compares `actual` with the file at `path` (a missing file differs from
/// everything); when [`updating`], writes `actual` there instead. The error
/// names the file and the first line that differs.
pub fn check(path: &Path, actual: &str) -> Result<(), String> {
    let expected = std::fs::read_to_string(path).ok();
    if expected.as_deref() == Some(actual) {
        return Ok(());
    }
    if updating() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, actual).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("updated {}", path.display());
        return Ok(());
    }
    let Some(expected) = expected else {
        return Err(format!("{} is missing", path.display()));
    };
    Err(format!(
        "{} is stale: {}",
        path.display(),
        first_difference(&expected, actual)
    ))
}

fn first_difference(expected: &str, actual: &str) -> String {
    let (mut e, mut a) = (expected.lines(), actual.lines());
    let mut line = 1;
    loop {
        match (e.next(), a.next()) {
            (Some(x), Some(y)) if x == y => line += 1,
            (None, None) => return "they differ only in line endings".into(),
            (x, y) => {
                return format!(
                    "line {line}: expected {:?}, got {:?}",
                    x.unwrap_or("<end>"),
                    y.unwrap_or("<end>")
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_first_differing_line() {
        assert_eq!(
            first_difference("a\nb\nc\n", "a\nB\nc\n"),
            "line 2: expected \"b\", got \"B\""
        );
        assert_eq!(
            first_difference("a\n", "a\nb\n"),
            "line 2: expected \"<end>\", got \"b\""
        );
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nothing.txt");
        if !updating() {
            let err = check(&path, "x").unwrap_err();
            assert!(err.contains("nothing.txt is missing"), "{err}");
        }
    }
}
