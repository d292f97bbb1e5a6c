//! V8's perf maps (`--perf-basic-prof*`): one `<start> <size> <symbol>` line
//! per JIT-compiled function, appended as the process compiles code. Read
//! through `/proc/<pid>/root` so a container's `/tmp` is the one seen, and
//! named with the pid inside the container's pid namespace. Cached per
//! process, with the file kept open: a drain checks its size, and parses
//! only the bytes appended since the last read.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::js;
use super::process::gone;
use crate::stack::Frame;

/// Drains a process may go unsampled before its map is forgotten.
const KEEP_UNUSED_DRAINS: u64 = 6;

#[derive(Default)]
pub struct PerfMaps {
    maps: HashMap<u32, Entry>,
    generation: u64,
}

struct Entry {
    /// Where the map is or would be; read from `/proc/<pid>/status` once.
    path: PathBuf,
    /// `None` while the process has no map (not Node.js with the flags,
    /// or not yet written).
    map: Option<PerfMap>,
    last_used: u64,
}

struct PerfMap {
    file: File,
    read_len: u64,
    /// An incomplete last line, finished by the next read.
    partial: Vec<u8>,
    /// start -> (end, symbol). A later entry for the same start replaces an
    /// earlier one: V8 reuses code space after a GC.
    entries: BTreeMap<u64, (u64, Box<str>)>,
    /// Frames built so far, by entry start.
    frames: HashMap<u64, Frame>,
}

impl PerfMaps {
    /// Starts a drain: maps of processes not seen for a while are dropped.
    pub fn next_generation(&mut self) {
        self.generation += 1;
        let horizon = self.generation.saturating_sub(KEEP_UNUSED_DRAINS);
        self.maps.retain(|_, m| m.last_used >= horizon);
    }

    /// Drops what is known of `pid`'s map: it runs another program now.
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
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
        let entry = match self.maps.entry(pid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => match path(pid)? {
                Some(path) => e.insert(Entry {
                    path,
                    map: None,
                    last_used: 0,
                }),
                None => return Ok(false),
            },
        };
        entry.last_used = self.generation;
        if entry.map.is_none() {
            match File::open(&entry.path) {
                Ok(file) => entry.map = Some(PerfMap::new(file)),
                Err(e) if gone(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        let Some(map) = &mut entry.map else {
            return Ok(false);
        };
        let meta = map.file.metadata()?;
        if meta.nlink() == 0 {
            // Deleted: whoever writes a map at this path now is another
            // process, or the same one starting over.
            entry.map = None;
            return Ok(false);
        }
        if meta.len() < map.read_len {
            // Truncated: written afresh.
            map.clear();
        }
        if meta.len() > map.read_len {
            map.file.seek(SeekFrom::Start(map.read_len))?;
            let mut appended = Vec::with_capacity((meta.len() - map.read_len) as usize);
            map.file.read_to_end(&mut appended)?;
            map.read_len += appended.len() as u64;
            map.append(&appended);
        }
        Ok(true)
    }

    /// The JavaScript frame at `addr` of `pid`, if its map has one.
    pub fn lookup(&mut self, pid: u32, addr: u64) -> Option<Frame> {
        let map = self.maps.get_mut(&pid)?.map.as_mut()?;
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
    fn new(file: File) -> Self {
        PerfMap {
            file,
            read_len: 0,
            partial: Vec::new(),
            entries: BTreeMap::new(),
            frames: HashMap::new(),
        }
    }

    fn clear(&mut self) {
        self.read_len = 0;
        self.partial.clear();
        self.entries.clear();
        self.frames.clear();
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

    /// A map already read, of a file that stays as it is.
    fn entry(map: PerfMap) -> Entry {
        Entry {
            path: PathBuf::new(),
            map: Some(map),
            last_used: 0,
        }
    }

    #[test]
    fn appends_across_partial_lines_and_later_entries_win() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut map = PerfMap::new(file.reopen().unwrap());
        map.append(b"100 10 JS:~old /a.js:1:1\n200 1");
        assert_eq!(map.entries.len(), 1);
        map.append(b"0 JS:*second /a.js:2:1\n100 8 JS:*new /a.js:3:1\n");
        assert_eq!(map.entries.len(), 2);
        let mut maps = PerfMaps::default();
        maps.maps.insert(1, entry(map));
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
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut map = PerfMap::new(file.reopen().unwrap());
        map.append(b"100 10 JS:*last /a.js:1:1\n");
        maps.maps.insert(pid, entry(map));
        assert!(maps.refresh(pid));
        assert_eq!(&*maps.lookup(pid, 0x101).unwrap().function, "last");
        for _ in 0..=KEEP_UNUSED_DRAINS {
            maps.next_generation();
        }
        assert!(!maps.refresh(pid), "forgotten after a while");
    }

    #[test]
    fn reads_only_what_was_appended_and_starts_over_when_rewritten() {
        // Our own pid: the map path resolves through /proc/self's root.
        let pid = std::process::id();
        let path = path(pid).unwrap().unwrap();
        let mut maps = PerfMaps::default();
        assert!(!maps.refresh(pid), "no map yet");
        std::fs::write(&path, "1000 10 JS:*first /a.js:1:1\n").unwrap();
        assert!(maps.refresh(pid), "a map written since is found");
        assert_eq!(&*maps.lookup(pid, 0x1001).unwrap().function, "first");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"2000 10 JS:*second /a.js:2:1\n").unwrap();
        assert!(maps.refresh(pid));
        let read_len = maps.maps[&pid].map.as_ref().unwrap().read_len;
        assert_eq!(read_len, std::fs::metadata(&path).unwrap().len());
        assert_eq!(&*maps.lookup(pid, 0x2001).unwrap().function, "second");

        // Truncated and written again (V8 opens it with "w"): read afresh.
        std::fs::write(&path, "3000 10 JS:*third /a.js:3:1\n").unwrap();
        assert!(maps.refresh(pid));
        assert_eq!(&*maps.lookup(pid, 0x3001).unwrap().function, "third");
        assert!(
            maps.lookup(pid, 0x1001).is_none(),
            "the old entries are gone"
        );

        // Deleted and written anew: the new file is read.
        std::fs::remove_file(&path).unwrap();
        assert!(!maps.refresh(pid));
        assert!(maps.lookup(pid, 0x3001).is_none());
        std::fs::write(&path, "4000 10 JS:*fourth /a.js:4:1\n").unwrap();
        assert!(maps.refresh(pid));
        assert_eq!(&*maps.lookup(pid, 0x4001).unwrap().function, "fourth");

        // Forgotten (the pid runs another program): nothing is left.
        maps.forget(pid);
        assert!(maps.lookup(pid, 0x4001).is_none());
        std::fs::remove_file(&path).unwrap();
        assert!(!maps.refresh(pid));
    }
}
