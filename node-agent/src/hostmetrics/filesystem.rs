//! Mounted filesystems (from the host's mountinfo) and their sizes (from
//! statfs below the host's root), as node_exporter's `filesystem` collector
//! exports them.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use super::{Error, Family, HostMetrics, Kind, Malformed, read_host_view};

/// node_exporter's `--collector.filesystem.mount-points-exclude` default.
pub(super) const DEFAULT_MOUNT_POINTS_EXCLUDE: &str =
    "^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)";
/// node_exporter's `--collector.filesystem.fs-types-exclude` default.
pub(super) const DEFAULT_FS_TYPES_EXCLUDE: &str = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|erofs|sysfs|tracefs)$";

/// How long statfs may take before the mount counts as stuck (a hung NFS
/// server, say), node_exporter's `--collector.filesystem.mount-timeout`.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(5);
/// node_exporter's `device_error` for a stuck mount.
const TIMEOUT_ERROR: &str = "mountpoint timeout";

/// Mount points whose statfs has not returned yet. They are reported as
/// failed, without another statfs piling up behind the first, until it
/// returns; a scrape never waits on them longer than [`MOUNT_TIMEOUT`].
#[derive(Debug, Default, Clone)]
pub(super) struct StuckMounts(Arc<Mutex<HashSet<String>>>);

impl StuckMounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // The set stays consistent whatever panicked while holding it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One line of mountinfo.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    device: String,
    mount_point: String,
    fs_type: String,
    major: String,
    minor: String,
    read_only: bool,
}

/// What statfs says, in node_exporter's units.
#[derive(Debug)]
struct Usage {
    size: f64,
    free: f64,
    avail: f64,
    files: f64,
    files_free: f64,
}

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    let mounts = read_host_view(metrics, "mountinfo", parse)?;
    let rootfs = metrics.rootfs_path.as_path();
    Ok(families(mounts, metrics, |mount_point| {
        let path = rootfs.join(mount_point.trim_start_matches('/'));
        bounded(
            &metrics.stuck_mounts,
            mount_point,
            MOUNT_TIMEOUT,
            move || statfs(&path),
        )
    }))
}

/// Runs `statfs` on a thread of its own and waits `timeout` at most; the
/// error is the text node_exporter puts in `device_error`.
fn bounded(
    stuck: &StuckMounts,
    mount_point: &str,
    timeout: Duration,
    statfs: impl FnOnce() -> io::Result<Usage> + Send + 'static,
) -> Result<Usage, String> {
    if stuck.lock().contains(mount_point) {
        return Err(TIMEOUT_ERROR.to_owned());
    }
    let (done, result) = mpsc::channel();
    let (unstick, name) = (stuck.clone(), mount_point.to_owned());
    let spawned = std::thread::Builder::new()
        .name("statfs".to_owned())
        .spawn(move || {
            let usage = statfs();
            // Under the lock, so that a timeout either sees the result or
            // has marked the mount before this unmarks it.
            let mut stuck = unstick.lock();
            stuck.remove(&name);
            let _ = done.send(usage);
        });
    if let Err(err) = spawned {
        return Err(errno_text(&err));
    }
    let usage = match result.recv_timeout(timeout) {
        Ok(usage) => usage,
        Err(_) => {
            let mut marked = stuck.lock();
            match result.try_recv() {
                Ok(usage) => usage,
                Err(_) => {
                    marked.insert(mount_point.to_owned());
                    tracing::warn!(
                        mount_point,
                        ?timeout,
                        "statfs hangs; reporting the mount as failed until it returns"
                    );
                    return Err(TIMEOUT_ERROR.to_owned());
                }
            }
        }
    };
    usage.map_err(|err| errno_text(&err))
}

fn families(
    mounts: Vec<Mount>,
    metrics: &HostMetrics,
    statfs: impl Fn(&str) -> Result<Usage, String>,
) -> Vec<Family> {
    let family = |name, help| Family::new(Kind::Gauge, name, help);
    let mut device_error = family(
        "node_filesystem_device_error",
        "Whether an error occurred while getting statistics for the given device.",
    );
    let mut readonly = family("node_filesystem_readonly", "Filesystem read-only status.");
    let mut size = family("node_filesystem_size_bytes", "Filesystem size in bytes.");
    let mut free = family(
        "node_filesystem_free_bytes",
        "Filesystem free space in bytes.",
    );
    let mut avail = family(
        "node_filesystem_avail_bytes",
        "Filesystem space available to non-root users in bytes.",
    );
    let mut files = family("node_filesystem_files", "Filesystem total file nodes.");
    let mut files_free = family(
        "node_filesystem_files_free",
        "Filesystem total free file nodes.",
    );
    let mut mount_info = family(
        "node_filesystem_mount_info",
        "Filesystem mount information.",
    );
    // Always 0 on Linux, but node_exporter exports it there too.
    let mut purgeable = family(
        "node_filesystem_purgeable_bytes",
        "Filesystem space available including purgeable space (MacOS specific).",
    );

    let rootfs = metrics.rootfs_path.to_string_lossy();
    let mut seen = HashSet::new();
    for mut mount in mounts {
        mount.mount_point = strip_rootfs(&rootfs, mount.mount_point);
        if metrics.mount_points_exclude.matches(&mount.mount_point)
            || metrics.fs_types_exclude.matches(&mount.fs_type)
        {
            continue;
        }
        let usage = statfs(&mount.mount_point);
        let error = usage.as_ref().err().cloned().unwrap_or_default();
        // A filesystem mounted twice at one place is reported once.
        if !seen.insert((
            mount.device.clone(),
            mount.mount_point.clone(),
            mount.fs_type.clone(),
            error.clone(),
        )) {
            continue;
        }
        let labels = vec![
            ("device", mount.device.clone()),
            ("mountpoint", mount.mount_point.clone()),
            ("fstype", mount.fs_type.clone()),
            ("device_error", error),
        ];
        device_error.push(labels.clone(), if usage.is_err() { 1.0 } else { 0.0 });
        readonly.push(labels.clone(), if mount.read_only { 1.0 } else { 0.0 });
        let Ok(usage) = usage else { continue };
        size.push(labels.clone(), usage.size);
        free.push(labels.clone(), usage.free);
        avail.push(labels.clone(), usage.avail);
        files.push(labels.clone(), usage.files);
        files_free.push(labels.clone(), usage.files_free);
        purgeable.push(labels, 0.0);
        mount_info.push(
            vec![
                ("device", mount.device),
                ("major", mount.major),
                ("minor", mount.minor),
                ("mountpoint", mount.mount_point),
            ],
            1.0,
        );
    }
    vec![
        device_error,
        readonly,
        size,
        free,
        avail,
        files,
        files_free,
        mount_info,
        purgeable,
    ]
}

/// Mount points as the host sees them when we read our own mountinfo with
/// the host's root mounted below `rootfs` (node_exporter's rootfsStripPrefix).
fn strip_rootfs(rootfs: &str, mount_point: String) -> String {
    if rootfs == "/" {
        return mount_point;
    }
    match mount_point.strip_prefix(rootfs) {
        Some("") => "/".to_owned(),
        Some(rest) => rest.to_owned(),
        None => mount_point,
    }
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse(text: &str) -> Result<Vec<Mount>, Malformed> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-");
            let (Some(separator), true) = (separator, fields.len() >= 9) else {
                return Err(Malformed(format!("not a mountinfo line: {line:?}")));
            };
            let (before, after) = (&fields[..separator], &fields[separator + 1..]);
            let ([_, _, dev, _, mount_point, options, ..], [fs_type, device, rest @ ..]) =
                (before, after)
            else {
                return Err(Malformed(format!("not a mountinfo line: {line:?}")));
            };
            let (major, minor) = dev
                .split_once(':')
                .ok_or_else(|| Malformed(format!("bad major:minor {dev:?}")))?;
            let super_options = rest.first().copied().unwrap_or_default();
            let read_only = options.split(',').any(|o| o == "ro")
                || super_options
                    .split(',')
                    .any(|o| o == "ro" || o == "emergency_ro");
            Ok(Mount {
                // node_exporter decodes only these two of the kernel's octal escapes.
                mount_point: mount_point.replace("\\040", " ").replace("\\011", "\t"),
                device: (*device).to_owned(),
                fs_type: (*fs_type).to_owned(),
                major: major.to_owned(),
                minor: minor.to_owned(),
                read_only,
            })
        })
        .collect()
}

fn statfs(path: &Path) -> io::Result<Usage> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs(2) writes only into `buf`, which is large enough for
    // struct statfs; `path` is a NUL-terminated string that outlives the call.
    let buf = unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        if libc::statfs(path.as_ptr(), &mut buf) != 0 {
            return Err(io::Error::last_os_error());
        }
        buf
    };
    let block = buf.f_bsize as f64;
    Ok(Usage {
        size: buf.f_blocks as f64 * block,
        free: buf.f_bfree as f64 * block,
        avail: buf.f_bavail as f64 * block,
        files: buf.f_files as f64,
        files_free: buf.f_ffree as f64,
    })
}

/// The error text node_exporter puts in `device_error`: Go's errno string,
/// which is strerror(3) starting in lower case (`permission denied`).
fn errno_text(err: &io::Error) -> String {
    let text = err.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};
    use crate::hostmetrics::{Config, HostMetrics};

    fn labels<'a>(
        device: &'a str,
        mount_point: &'a str,
        fs_type: &'a str,
        error: &'a str,
    ) -> [(&'a str, &'a str); 4] {
        [
            ("device", device),
            ("mountpoint", mount_point),
            ("fstype", fs_type),
            ("device_error", error),
        ]
    }

    #[test]
    fn reads_a_real_mountinfo_with_node_exporter_exclusions() {
        let mounts =
            parse(&std::fs::read_to_string(fixture_metrics().proc("1/mountinfo")).unwrap())
                .unwrap();
        assert_eq!(mounts.len(), 23);
        let fake_usage = |mount_point: &str| match mount_point {
            "/mnt/bind" => Err("permission denied".to_owned()),
            _ => Ok(Usage {
                size: 100.0,
                free: 50.0,
                avail: 40.0,
                files: 10.0,
                files_free: 5.0,
            }),
        };
        let families = families(mounts, &fixture_metrics(), fake_usage);
        let points: Vec<&str> = families[0]
            .samples
            .iter()
            .map(|s| s.labels[1].1.as_str())
            .collect();
        // /proc, /sys, /dev..., cgroups and the docker overlay are excluded.
        assert_eq!(
            points,
            ["/", "/mnt/readonly", "/mnt/with space", "/mnt/bind"]
        );
        let root = labels("/dev/vda", "/", "ext4", "");
        assert_eq!(value(&families, "node_filesystem_size_bytes", &root), 100.0);
        assert_eq!(value(&families, "node_filesystem_avail_bytes", &root), 40.0);
        assert_eq!(value(&families, "node_filesystem_files_free", &root), 5.0);
        assert_eq!(value(&families, "node_filesystem_readonly", &root), 0.0);
        assert_eq!(
            value(
                &families,
                "node_filesystem_readonly",
                &labels("none", "/mnt/readonly", "tmpfs", "")
            ),
            1.0
        );
        assert_eq!(
            value(
                &families,
                "node_filesystem_mount_info",
                &[
                    ("device", "/dev/vda"),
                    ("major", "254"),
                    ("minor", "0"),
                    ("mountpoint", "/")
                ]
            ),
            1.0
        );
        // A mount statfs fails on has only the error and read-only series.
        let denied = labels("/dev/vda", "/mnt/bind", "ext4", "permission denied");
        assert_eq!(
            value(&families, "node_filesystem_device_error", &denied),
            1.0
        );
        assert_eq!(value(&families, "node_filesystem_readonly", &denied), 0.0);
        assert!(
            families[2]
                .samples
                .iter()
                .all(|s| s.labels[1].1 != "/mnt/bind")
        );
    }

    #[test]
    fn statfs_reads_the_real_root_below_rootfs() {
        let metrics = HostMetrics::new(&Config {
            proc_path: fixture_metrics().proc_path,
            ..Config::default()
        })
        .unwrap();
        let families = read(&metrics).unwrap();
        let root = labels("/dev/vda", "/", "ext4", "");
        assert!(value(&families, "node_filesystem_size_bytes", &root) > 0.0);
        // The fixture's other mounts do not exist here: statfs says so.
        let missing = labels(
            "none",
            "/mnt/readonly",
            "tmpfs",
            "no such file or directory",
        );
        assert_eq!(
            value(&families, "node_filesystem_device_error", &missing),
            1.0
        );
    }

    #[test]
    fn a_hung_statfs_is_reported_stuck_until_it_returns() {
        let stuck = StuckMounts::default();
        let (release, hung) = mpsc::channel::<()>();
        let usage = || {
            Ok(Usage {
                size: 1.0,
                free: 1.0,
                avail: 1.0,
                files: 1.0,
                files_free: 1.0,
            })
        };
        let hang = move || {
            let _ = hung.recv();
            usage()
        };
        let short = Duration::from_millis(50);
        assert_eq!(
            bounded(&stuck, "/nfs", short, hang).unwrap_err(),
            TIMEOUT_ERROR
        );
        // Still hung: no second statfs is started for it.
        let second = || -> io::Result<Usage> { panic!("statfs started on a stuck mount") };
        assert_eq!(
            bounded(&stuck, "/nfs", short, second).unwrap_err(),
            TIMEOUT_ERROR
        );
        assert!(bounded(&stuck, "/other", short, usage).is_ok());

        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stuck.lock().contains("/nfs") {
            assert!(
                std::time::Instant::now() < deadline,
                "the returned statfs never unmarked its mount"
            );
            std::thread::yield_now();
        }
        assert!(bounded(&stuck, "/nfs", short, usage).is_ok());
        let denied = || Err(io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(
            bounded(&stuck, "/nfs", short, denied).unwrap_err(),
            "permission denied"
        );
    }

    #[test]
    fn rootfs_prefix_is_stripped_and_bad_lines_are_errors() {
        assert_eq!(strip_rootfs("/host/root", "/host/root".into()), "/");
        assert_eq!(strip_rootfs("/host/root", "/host/root/var".into()), "/var");
        assert_eq!(strip_rootfs("/", "/var".into()), "/var");
        assert!(parse("1 2 3\n").unwrap_err().0.contains("1 2 3"));
        assert!(
            parse("1 2 x / / rw - ext4 /dev/sda rw\n")
                .unwrap_err()
                .0
                .contains("major:minor")
        );
    }
}
