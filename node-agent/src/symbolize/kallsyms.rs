//! Kernel frames named from `/proc/kallsyms`: the text symbols, sorted by
//! address, names stored in one string so 100k+ symbols cost a few MiB.

use std::io;
use std::sync::Arc;

use crate::stack::{Frame, FrameKind};

pub const PATH: &str = "/proc/kallsyms";

pub struct Kallsyms {
    /// (address, offset of the name in `names`, its length, module index + 1 or 0).
    symbols: Vec<(u64, u32, u16, u16)>,
    names: String,
    modules: Vec<Arc<str>>,
}

impl Kallsyms {
    pub fn load() -> io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(PATH)?))
    }

    pub fn parse(text: &str) -> Self {
        let mut k = Kallsyms {
            symbols: Vec::new(),
            names: String::new(),
            modules: Vec::new(),
        };
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            // Zero when kptr_restrict hides addresses: nothing to look up.
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 || name.len() > usize::from(u16::MAX) {
                continue;
            }
            let module = match parts.next() {
                Some(m) => {
                    let m = m.trim_start_matches('[').trim_end_matches(']');
                    if k.modules.last().is_none_or(|last| &**last != m) {
                        k.modules.push(Arc::from(m));
                    }
                    k.modules.len() as u16
                }
                None => 0,
            };
            let Ok(offset) = u32::try_from(k.names.len()) else {
                break;
            };
            k.names.push_str(name);
            k.symbols.push((addr, offset, name.len() as u16, module));
        }
        k.symbols.sort_by_key(|s| s.0);
        // Grown by doubling: up to half of each would be slack for good.
        k.symbols.shrink_to_fit();
        k.names.shrink_to_fit();
        k
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The function containing `addr`: the closest symbol at or below it.
    pub fn lookup(&self, addr: u64) -> Option<Frame> {
        let i = self
            .symbols
            .partition_point(|s| s.0 <= addr)
            .checked_sub(1)?;
        let (_, offset, len, module) = self.symbols[i];
        let name = &self.names[offset as usize..offset as usize + usize::from(len)];
        Some(Frame {
            kind: FrameKind::Kernel,
            function: Arc::from(name),
            file: module
                .checked_sub(1)
                .map(|m| self.modules[usize::from(m)].clone()),
            package: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81001000 t do_syscall_64
ffffffff81002000 D some_data
ffffffff81003000 T schedule
ffffffffc0201000 t nf_hook\t[nf_tables]
";

    #[test]
    fn finds_the_enclosing_text_symbol() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(
            &*k.lookup(0xffffffff81001234).unwrap().function,
            "do_syscall_64"
        );
        // Data symbols are skipped, so the text before them covers the gap.
        assert_eq!(
            &*k.lookup(0xffffffff81002100).unwrap().function,
            "do_syscall_64"
        );
        let f = k.lookup(0xffffffffc0201010).unwrap();
        assert_eq!(
            (&*f.function, f.file.as_deref()),
            ("nf_hook", Some("nf_tables"))
        );
        assert_eq!(f.kind, FrameKind::Kernel);
        assert!(k.lookup(0x1000).is_none());
    }

    #[test]
    fn hidden_addresses_leave_it_empty() {
        let k = Kallsyms::parse("0000000000000000 T _stext\n0000000000000000 t x\n");
        assert!(k.is_empty());
    }
}
