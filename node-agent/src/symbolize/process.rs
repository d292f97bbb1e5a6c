//! What the symbolizer keeps per sampled process between drains: which
//! program the pid runs (so a reused pid or an `exec` starts afresh) and its
//! executable mappings (so a native address becomes a (file, offset) that
//! names the same function in every process mapping that file).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

/// One program run by one pid. A new process that reuses the pid has
/// another start time; an `exec` keeps the start time but maps a new program,
/// so its code and stack start move (with address space layout randomisation,
/// always) and the pid's cached mappings and perf map are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    start_time: u64,
    start_code: u64,
    start_stack: u64,
}

impl Identity {
    /// From `/proc/<pid>/stat`; `None` when the process is gone.
    pub fn read(pid: u32) -> io::Result<Option<Self>> {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => Ok(Self::parse(&stat)),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Fields 22 (starttime), 26 (startcode) and 28 (startstack); the
    /// command name (field 2) may hold spaces and parentheses, so fields are
    /// counted after its last `)`. The kernel shows 0 for the code and stack
    /// to a reader that may not ptrace the process: then only a reused pid
    /// is noticed.
    pub fn parse(stat: &str) -> Option<Self> {
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace();
        // `rest` starts at field 3.
        let mut field = |skip: usize| fields.nth(skip)?.parse::<u64>().ok();
        let start_time = field(19)?;
        let start_code = field(3)?;
        let start_stack = field(1)?;
        Some(Identity {
            start_time,
            start_code,
            start_stack,
        })
    }
}

/// A reading of `/proc/<pid>/...` that failed because the process exited.
pub fn gone(e: &io::Error) -> bool {
    // ESRCH: the process died between the lookup and the read.
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// A mapped file as the symbolizer's caches know it: the same key in two
/// processes is the same bytes, so a name found for one serves both. The
/// modification time and size tell a file rewritten in place (or a new file
/// on a reused inode) from the one that was named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKey {
    File {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: i64,
        mtime_nsec: i64,
    },
    /// The kernel's vDSO, the same image in every process.
    Vdso,
}

/// An executable file mapping of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub key: FileKey,
    /// The path in `/proc/<pid>/maps` (inside the process's mount
    /// namespace): what frames show as their file.
    pub path: Arc<str>,
}

impl Mapping {
    /// Where the file can be opened from this mount namespace, even when the
    /// process is in a container or the file was deleted.
    pub fn open_path(&self, pid: u32) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            self.start, self.end
        ))
    }
}

/// The executable mappings of one process, sorted by address. Anonymous
/// executable memory (JIT code) is kept as ranges with no file, so an
/// address inside it is known to be unnamed here rather than a sign that
/// the process mapped something new.
#[derive(Debug, Default)]
pub struct Maps {
    mappings: Vec<Mapping>,
    anonymous: Vec<(u64, u64)>,
}

/// Where an address of a process falls.
#[derive(Debug, PartialEq, Eq)]
pub enum Place<'a> {
    File(&'a Mapping),
    Anonymous,
    /// In no executable mapping read so far: mapped since, or bogus.
    Outside,
}

impl Maps {
    /// Reads `/proc/<pid>/maps`, and the identity of each mapped file from
    /// its `map_files` entry. `None` when the process is gone.
    pub fn read(pid: u32) -> io::Result<Option<Self>> {
        let text = match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            Ok(text) => text,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Self::parse(&text, |m| {
            let meta = std::fs::metadata(m.open_path(pid)).ok()?;
            Some(FileKey::File {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.size(),
                mtime: meta.mtime(),
                mtime_nsec: meta.mtime_nsec(),
            })
        })))
    }

    /// The executable lines of a maps file; `key` identifies a file mapping
    /// (`None`: unreadable).
    pub fn parse(text: &str, mut key: impl FnMut(&Mapping) -> Option<FileKey>) -> Self {
        let mut maps = Maps::default();
        // Consecutive mappings of one file share the stat.
        let mut last: Option<(u64, Arc<str>, Option<FileKey>)> = None;
        for line in text.lines() {
            let Some(entry) = parse_line(line) else {
                continue;
            };
            if !entry.executable() {
                continue;
            }
            let path = match entry.path {
                None => {
                    maps.anonymous.push((entry.start, entry.end));
                    continue;
                }
                Some("[vdso]") => None,
                // [vsyscall] and the like: nothing to read.
                Some(p) if !p.starts_with('/') => {
                    maps.anonymous.push((entry.start, entry.end));
                    continue;
                }
                Some(p) => Some(p.strip_suffix(" (deleted)").unwrap_or(p)),
            };
            let mut mapping = Mapping {
                start: entry.start,
                end: entry.end,
                offset: entry.offset,
                key: FileKey::Vdso,
                path: Arc::from(path.unwrap_or("[vdso]")),
            };
            if path.is_some() {
                let cached = last
                    .as_ref()
                    .filter(|(inode, p, _)| *inode == entry.inode && **p == *mapping.path);
                let file_key = match cached {
                    Some((_, path, file_key)) => {
                        mapping.path = path.clone();
                        *file_key
                    }
                    None => {
                        let file_key = key(&mapping);
                        last = Some((entry.inode, mapping.path.clone(), file_key));
                        file_key
                    }
                };
                let Some(file_key) = file_key else {
                    // Unreadable: named by nothing, and no sign of a change.
                    maps.anonymous.push((entry.start, entry.end));
                    continue;
                };
                mapping.key = file_key;
            }
            maps.mappings.push(mapping);
        }
        maps.mappings.sort_by_key(|m| m.start);
        maps.anonymous.sort_unstable();
        maps
    }

    pub fn place(&self, addr: u64) -> Place<'_> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        if let Some(m) = i.checked_sub(1).map(|i| &self.mappings[i])
            && addr < m.end
        {
            return Place::File(m);
        }
        let i = self.anonymous.partition_point(|&(start, _)| start <= addr);
        match i.checked_sub(1).map(|i| self.anonymous[i]) {
            Some((_, end)) if addr < end => Place::Anonymous,
            _ => Place::Outside,
        }
    }
}

pub(super) struct Line<'a> {
    pub start: u64,
    pub end: u64,
    /// `r-xp`: read, write, execute, private or shared.
    pub perms: &'a str,
    offset: u64,
    inode: u64,
    pub path: Option<&'a str>,
}

impl Line<'_> {
    pub fn executable(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }
}

/// `7f1c2a000000-7f1c2a1b6000 r-xp 00028000 fe:01 1835 /usr/lib/libc.so.6`
pub(super) fn parse_line(line: &str) -> Option<Line<'_>> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().map(str::trim_start).filter(|p| !p.is_empty());
    Some(Line {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_fields_after_the_command_name() {
        // Fields 3.. numbered: state(3) ... starttime(22) vsize(23) rss(24)
        // rsslim(25) startcode(26) endcode(27) startstack(28).
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615 4096 8192 140000 0 0";
        assert_eq!(
            Identity::parse(stat),
            Some(Identity {
                start_time: 987654,
                start_code: 4096,
                start_stack: 140000
            })
        );
        assert_eq!(Identity::parse("42 (x) S 1"), None);
        assert_eq!(Identity::parse("no paren"), None);
    }

    const MAPS: &str = "\
55d0c0000000-55d0c0200000 r--p 00000000 fe:01 100 /usr/bin/node
55d0c0200000-55d0c2000000 r-xp 00200000 fe:01 100 /usr/bin/node
55d0c2000000-55d0c2100000 r--p 02000000 fe:01 100 /usr/bin/node
1a2b00000000-1a2b00040000 rwxp 00000000 00:00 0 
7f0000000000-7f0000100000 r-xp 00028000 fe:01 200 /usr/lib/libc.so.6 (deleted)
7f0000200000-7f0000300000 r-xp 00000000 fe:01 300 /gone/lib.so
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn executable_mappings_by_address() {
        let mut stats = Vec::new();
        let maps = Maps::parse(MAPS, |m| {
            stats.push(m.path.to_string());
            (&*m.path != "/gone/lib.so").then_some(FileKey::File {
                dev: 1,
                ino: stats.len() as u64,
                size: 0,
                mtime: 0,
                mtime_nsec: 0,
            })
        });
        assert_eq!(
            stats,
            ["/usr/bin/node", "/usr/lib/libc.so.6", "/gone/lib.so"]
        );
        let Place::File(node) = maps.place(0x55d0c0201234) else {
            panic!("node's text");
        };
        assert_eq!(
            (&*node.path, node.offset, node.start),
            ("/usr/bin/node", 0x200000, 0x55d0c0200000)
        );
        assert_eq!(
            node.open_path(7).to_str(),
            Some("/proc/7/map_files/55d0c0200000-55d0c2000000")
        );
        let Place::File(libc) = maps.place(0x7f0000000010) else {
            panic!("libc");
        };
        assert_eq!(&*libc.path, "/usr/lib/libc.so.6");
        let Place::File(vdso) = maps.place(0x7ffd00000100) else {
            panic!("vdso");
        };
        assert_eq!(vdso.key, FileKey::Vdso);
        // JIT code, [vsyscall], an unreadable file: nothing to read them from.
        assert_eq!(maps.place(0x1a2b00000100), Place::Anonymous);
        assert_eq!(maps.place(0xffffffffff600010), Place::Anonymous);
        assert_eq!(maps.place(0x7f0000200010), Place::Anonymous);
        // Not executable, or not mapped when the maps were read.
        assert_eq!(maps.place(0x55d0c0000010), Place::Outside);
        assert_eq!(maps.place(0x10), Place::Outside);
    }

    #[test]
    fn an_exec_changes_the_identity_and_a_new_process_too() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("sh")
            .args(["-c", "read line; exec sleep 30"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let before = Identity::read(pid).unwrap().unwrap();
        assert_eq!(
            Identity::read(pid).unwrap(),
            Some(before),
            "stable while it runs"
        );
        writeln!(child.stdin.take().unwrap(), "go").unwrap();
        let comm = format!("/proc/{pid}/comm");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&comm).unwrap() != "sleep\n" {
            assert!(std::time::Instant::now() < deadline, "sh never ran sleep");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let after = Identity::read(pid).unwrap().unwrap();
        assert_eq!(after.start_time, before.start_time);
        assert_ne!(after, before, "exec maps another program");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(Identity::read(pid).unwrap(), None, "gone");
        assert!(Identity::read(std::process::id()).unwrap().is_some());
    }
}
