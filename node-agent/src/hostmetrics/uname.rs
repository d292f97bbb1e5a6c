//! uname(2) as `node_uname_info`. It names the UTS namespace we run in,
//! which is the host's in a hostNetwork pod, as for node_exporter.

use std::ffi::CStr;
use std::io;

use super::{Error, Family, HostMetrics, Kind};

pub(super) fn read(_: &HostMetrics) -> Result<Vec<Family>, Error> {
    // SAFETY: uname(2) fills the zeroed struct, whose fields it leaves
    // NUL-terminated.
    let name = unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return Err(Error::Read {
                path: "uname(2)".into(),
                source: io::Error::last_os_error(),
            });
        }
        name
    };
    // SAFETY: each field is a NUL-terminated array (see above).
    let field = |f: &[libc::c_char]| {
        unsafe { CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    Ok(vec![
        Family::new(
            Kind::Gauge,
            "node_uname_info",
            "Labeled system information as provided by the uname system call.",
        )
        .with(
            vec![
                ("sysname", field(&name.sysname)),
                ("release", field(&name.release)),
                ("version", field(&name.version)),
                ("machine", field(&name.machine)),
                ("nodename", field(&name.nodename)),
                ("domainname", field(&name.domainname)),
            ],
            1.0,
        ),
    ])
}
