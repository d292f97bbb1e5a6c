//! Names in V8's perf map (`JS:*hot /app/server.js:12:5`) turned into
//! frames, with the kind a user filters on: the application's own code,
//! Node.js internals (`node:...`) or an npm package (`node_modules/<pkg>`).

use std::sync::Arc;

use crate::stack::{Frame, FrameKind};

/// A frame for one perf map symbol.
pub fn frame(symbol: &str) -> Frame {
    // V8 prefixes the code kind (`JS:`, `Eval:`, `Builtin:`, ...) and, for
    // JS, a tier marker: `~` interpreted, `^` Sparkplug, `+` Maglev, `*` TurboFan.
    let (tag, rest) = symbol.split_once(':').unwrap_or(("", symbol));
    if !matches!(tag, "JS" | "Eval" | "LazyCompile" | "Function" | "Script") {
        // Builtins, stubs and bytecode handlers are V8's own machine code.
        return Frame {
            kind: FrameKind::Native,
            function: Arc::from(symbol),
            file: None,
            package: None,
        };
    }
    let rest = rest.trim_start_matches(['~', '^', '+', '*']);
    // The location is the last word; a name may contain spaces (`get size`).
    let (name, location) = match rest.rsplit_once(' ') {
        Some((name, location)) => (name.trim(), Some(location)),
        None if looks_like_location(rest) => ("", Some(rest)),
        None => (rest, None),
    };
    let (script, position) = location.map_or((None, None), split_position);
    let function: Arc<str> = if !name.is_empty() {
        Arc::from(name)
    } else {
        match (script, position) {
            (Some(script), Some(position)) => {
                let base = script.rsplit('/').next().unwrap_or(script);
                Arc::from(format!("(anonymous {base}:{position})"))
            }
            _ => Arc::from("(anonymous)"),
        }
    };
    let (kind, package) = match script {
        Some(s) if s.starts_with("node:") => (FrameKind::NodeInternal, None),
        Some(s) => match package(s) {
            Some(p) => (FrameKind::NodeModules, Some(Arc::from(p))),
            None => (FrameKind::Js, None),
        },
        None => (FrameKind::Js, None),
    };
    Frame {
        kind,
        function,
        file: script.map(Arc::from),
        package,
    }
}

fn looks_like_location(s: &str) -> bool {
    s.starts_with('/') || s.starts_with("node:") || s.starts_with("file:")
}

/// `/app/x.js:12:5` -> (`/app/x.js`, `12`), keeping paths that contain `:`.
fn split_position(location: &str) -> (Option<&str>, Option<&str>) {
    let mut parts = location.rsplitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(col), Some(line), Some(script))
            if is_number(col) && is_number(line) && !script.is_empty() =>
        {
            (Some(script), Some(line))
        }
        _ => (Some(location), None),
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The package that owns `path`: after the last `node_modules/`, one path
/// segment, or two for a scoped package (`@scope/name`).
pub fn package(path: &str) -> Option<&str> {
    const DIR: &str = "node_modules/";
    let start = path.rfind(DIR)? + DIR.len();
    let rest = &path[start..];
    let mut segments = rest.split('/');
    let first = segments.next().filter(|s| !s.is_empty())?;
    if first.starts_with('@') {
        let second = segments.next().filter(|s| !s.is_empty())?;
        Some(&rest[..first.len() + 1 + second.len()])
    } else {
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_function() {
        let f = frame("JS:*vispyrHot /tmp/app/app.js:3:19");
        assert_eq!(f.kind, FrameKind::Js);
        assert_eq!(&*f.function, "vispyrHot");
        assert_eq!(f.file.as_deref(), Some("/tmp/app/app.js"));
        assert_eq!(f.package, None);
    }

    #[test]
    fn node_internal() {
        let f = frame("JS:~formatValue node:internal/util/inspect:793:21");
        assert_eq!(f.kind, FrameKind::NodeInternal);
        assert_eq!(&*f.function, "formatValue");
        assert_eq!(f.file.as_deref(), Some("node:internal/util/inspect"));
    }

    #[test]
    fn packages_plain_scoped_and_nested() {
        let f = frame("JS:^pkgWork /srv/node_modules/@acme/fixture/index.js:1:35");
        assert_eq!(f.kind, FrameKind::NodeModules);
        assert_eq!(f.package.as_deref(), Some("@acme/fixture"));
        let f = frame("JS:*handle /srv/node_modules/express/node_modules/router/index.js:9:1");
        assert_eq!(f.package.as_deref(), Some("router"));
        assert_eq!(package("/srv/node_modules/lodash"), Some("lodash"));
        assert_eq!(package("/srv/node_modules/@scope"), None);
        assert_eq!(package("/srv/app.js"), None);
    }

    #[test]
    fn anonymous_and_spaced_names() {
        let f = frame("JS:~ /srv/app.js:10:4");
        assert_eq!(&*f.function, "(anonymous app.js:10)");
        let f = frame("JS:~get size node:internal/streams/x:5:3");
        assert_eq!(&*f.function, "get size");
        assert_eq!(f.kind, FrameKind::NodeInternal);
    }

    #[test]
    fn v8_builtins_are_native() {
        let f = frame("Builtin:ArrayPrototypePush");
        assert_eq!(f.kind, FrameKind::Native);
        assert_eq!(&*f.function, "Builtin:ArrayPrototypePush");
    }
}
