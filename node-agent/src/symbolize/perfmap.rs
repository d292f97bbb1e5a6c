//! V8's perf maps (`--perf-basic-prof*`): one `<start> <size> <symbol>` line
//! per JIT-compiled function, appended as the process compiles code. Read
//! through `/proc/<pid>/root` so a container's `/tmp` is the one seen, and
//! named with the pid inside the container's pid namespace. Cached per
//! process; only the bytes appended since the last read are parsed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::js;
use crate::stack::Frame;

/// Drains a process may go unsampled before its map is forgotten.
const KEEP_UNUSED_DRAINS: u64 = 6;

#[derive(Default)]
pub struct PerfMaps {
    maps: HashMap<u32, PerfMap>,
    generation: u64,
}

struct PerfMap {
    /// (device, inode): a new file means a new process that reused the pid.
    identity: (u64, u64),
    read_len: u64,
    /// An incomplete last line, finished by the next read.
    partial: Vec<u8>,
    /// start -> (end, symbol). A later entry for the same start replaces an
    /// earlier one: V8 reuses code space after a GC.
    entries: BTreeMap<u64, (u64, Box<str>)>,
    /// Frames built so far, by entry start.
    frames: HashMap<u64, Frame>,
    last_used: u64,
}

impl PerfMaps {
    /// Starts a drain: maps of processes not seen for a while are dropped.
    pub fn next_generation(&mut self) {
        self.generation += 1;
        let horizon = self.generation.saturating_sub(KEEP_UNUSED_DRAINS);
        self.maps.retain(|_, m| m.last_used >= horizon);
    }

    /// Brings the map of `pid` up to date; false when it has none (not a
    /// Node.js process started with the flags, or gone).
    pub fn refresh(&mut self, pid: u32) -> bool {
        match self.try_refresh(pid) {
            Ok(found) => found,
            Err(err) => {
                tracing::debug!(pid, %err, "cannot read the perf map");
                self.maps.remove(&pid);
                false
            }
        }
    }

    fn try_refresh(&mut self, pid: u32) -> io::Result<bool> {
        let Some(path) = path(pid)? else {
            // Gone since it was sampled: what was read while it lived still
            // names its last samples (and is forgotten with the generation).
            return Ok(self.maps.contains_key(&pid));
        };
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.maps.remove(&pid);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let identity = (meta.dev(), meta.ino());
        let map = self
            .maps
            .entry(pid)
            .or_insert_with(|| PerfMap::new(identity));
        if map.identity != identity || meta.len() < map.read_len {
            *map = PerfMap::new(identity);
        }
        map.last_used = self.generation;
        if meta.len() > map.read_len {
            file.seek(SeekFrom::Start(map.read_len))?;
            let mut appended = Vec::with_capacity((meta.len() - map.read_len) as usize);
            file.read_to_end(&mut appended)?;
            map.read_len += appended.len() as u64;
            map.append(&appended);
        }
        Ok(true)
    }

    /// The JavaScript frame at `addr` of `pid`, if its map has one.
    pub fn lookup(&mut self, pid: u32, addr: u64) -> Option<Frame> {
        let map = self.maps.get_mut(&pid)?;
        let (&start, (end, symbol)) = map.entries.range(..=addr).next_back()?;
        if addr >= *end {
            return None;
        }
        Some(
            map.frames
                .entry(start)
                .or_insert_with(|| js::frame(symbol))
                .clone(),
        )
    }
}

impl PerfMap {
    fn new(identity: (u64, u64)) -> Self {
        PerfMap {
            identity,
            read_len: 0,
            partial: Vec::new(),
            entries: BTreeMap::new(),
            frames: HashMap::new(),
            last_used: 0,
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let rest = self.partial.split_off(last_newline + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        for line in String::from_utf8_lossy(&complete).lines() {
            if let Some((start, end, symbol)) = parse_line(line) {
                self.frames.remove(&start);
                self.entries.insert(start, (end, symbol.into()));
            }
        }
    }
}

/// `7f0b2e7e6c40 378 JS:~hot /app/a.js:3:19` -> (start, end, symbol).
fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let mut parts = line.splitn(3, ' ');
    let start = u64::from_str_radix(parts.next()?, 16).ok()?;
    let size = u64::from_str_radix(parts.next()?, 16).ok()?;
    let symbol = parts.next()?.trim_end();
    (size > 0 && !symbol.is_empty()).then(|| (start, start.saturating_add(size), symbol))
}

/// `/proc/<pid>/root/tmp/perf-<nspid>.map`, or None when the process is gone.
fn path(pid: u32) -> io::Result<Option<PathBuf>> {
    let status = match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let nspid = ns_pid(&status).unwrap_or(pid);
    Ok(Some(PathBuf::from(format!(
        "/proc/{pid}/root/tmp/perf-{nspid}.map"
    ))))
}

/// The innermost pid namespace's pid: the last field of `NSpid:`.
fn ns_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::FrameKind;

    #[test]
    fn ns_pid_is_the_innermost() {
        assert_eq!(ns_pid("Name:\tnode\nNSpid:\t4150\t7\n"), Some(7));
        assert_eq!(ns_pid("NSpid:\t4150\n"), Some(4150));
        assert_eq!(ns_pid("Name:\tnode\n"), None);
    }

    #[test]
    fn lines() {
        assert_eq!(
            parse_line("7f0b2e7e6c40 378 JS:~hot /app/a.js:3:19"),
            Some((
                0x7f0b2e7e6c40,
                0x7f0b2e7e6c40 + 0x378,
                "JS:~hot /app/a.js:3:19"
            ))
        );
        assert_eq!(parse_line("zz 10 x"), None);
        assert_eq!(parse_line("10 0 x"), None);
        assert_eq!(parse_line("10 10"), None);
    }

    #[test]
    fn appends_across_partial_lines_and_later_entries_win() {
        let mut map = PerfMap::new((0, 0));
        map.append(b"100 10 JS:~old /a.js:1:1\n200 1");
        assert_eq!(map.entries.len(), 1);
        map.append(b"0 JS:*second /a.js:2:1\n100 8 JS:*new /a.js:3:1\n");
        assert_eq!(map.entries.len(), 2);
        let mut maps = PerfMaps::default();
        maps.maps.insert(1, map);
        assert_eq!(&*maps.lookup(1, 0x105).unwrap().function, "new");
        assert!(
            maps.lookup(1, 0x108).is_none(),
            "past the new, shorter entry"
        );
        let f = maps.lookup(1, 0x20f).unwrap();
        assert_eq!((&*f.function, f.kind), ("second", FrameKind::Js));
        assert!(maps.lookup(1, 0x50).is_none());
        assert!(maps.lookup(2, 0x105).is_none());
    }

    #[test]
    fn an_exited_process_keeps_what_was_read() {
        // Above pid_max: no such process.
        let pid = u32::MAX - 1;
        let mut maps = PerfMaps::default();
        assert!(!maps.refresh(pid));
        let mut map = PerfMap::new((0, 0));
        map.append(b"100 10 JS:*last /a.js:1:1\n");
        maps.maps.insert(pid, map);
        assert!(maps.refresh(pid));
        assert_eq!(&*maps.lookup(pid, 0x101).unwrap().function, "last");
        for _ in 0..=KEEP_UNUSED_DRAINS {
            maps.next_generation();
        }
        assert!(!maps.refresh(pid), "forgotten after a while");
    }

    #[test]
    fn reads_only_what_was_appended() {
        // Our own pid: the map path resolves through /proc/self's root.
        let pid = std::process::id();
        let path = path(pid).unwrap().unwrap();
        std::fs::write(&path, "1000 10 JS:*first /a.js:1:1\n").unwrap();
        let mut maps = PerfMaps::default();
        assert!(maps.refresh(pid));
        assert_eq!(&*maps.lookup(pid, 0x1001).unwrap().function, "first");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"2000 10 JS:*second /a.js:2:1\n").unwrap();
        assert!(maps.refresh(pid));
        assert_eq!(
            maps.maps[&pid].read_len,
            std::fs::metadata(&path).unwrap().len()
        );
        assert_eq!(&*maps.lookup(pid, 0x2001).unwrap().function, "second");
        std::fs::remove_file(&path).unwrap();
        assert!(!maps.refresh(pid));
        assert!(maps.lookup(pid, 0x1001).is_none());
    }
}
