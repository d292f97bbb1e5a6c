//! The system clock, its time zone and the kernel's clock sources, as
//! node_exporter's `time` collector exports them.

use std::ffi::CStr;
use std::time::SystemTime;

use super::{Error, Family, HostMetrics, Kind, Malformed, read_parsed};

pub(super) fn read(_: &HostMetrics) -> Result<Vec<Family>, Error> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let (zone, offset) = local_zone(now.as_secs() as libc::time_t);
    Ok(vec![
        Family::single(
            Kind::Gauge,
            "node_time_seconds",
            "System time in seconds since epoch (1970).",
            now.as_secs_f64(),
        ),
        Family::new(
            Kind::Gauge,
            "node_time_zone_offset_seconds",
            "System time zone offset in seconds.",
        )
        .with(vec![("time_zone", zone)], offset as f64),
    ])
}

/// The abbreviation and UTC offset of local time (TZ, else /etc/localtime).
fn local_zone(now: libc::time_t) -> (String, i64) {
    // SAFETY: localtime_r fills the zeroed `tm` (loading the zone once), whose
    // tm_zone then points at storage the C library keeps for the process.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() || tm.tm_zone.is_null() {
            return ("UTC".to_owned(), 0);
        }
        let zone = CStr::from_ptr(tm.tm_zone).to_string_lossy().into_owned();
        (zone, tm.tm_gmtoff)
    }
}

/// `/sys/devices/system/clocksource/clocksource<N>/{available,current}_clocksource`;
/// `device` is the position among the clocksource directories, as node_exporter numbers them.
pub(super) fn clock_sources(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    let dir = metrics.sys_path.join("devices/system/clocksource");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|source| Error::Read {
            path: dir.clone(),
            source,
        })?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.strip_prefix("clocksource")
                .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    names.sort();
    let mut available = Family::new(
        Kind::Gauge,
        "node_time_clocksource_available_info",
        "Available clocksources read from '/sys/devices/system/clocksource'.",
    );
    let mut current = Family::new(
        Kind::Gauge,
        "node_time_clocksource_current_info",
        "Current clocksource read from '/sys/devices/system/clocksource'.",
    );
    for (device, name) in names.iter().enumerate() {
        let text = |file: &str| {
            read_parsed(&dir.join(name).join(file), |t| {
                Ok::<_, Malformed>(t.trim().to_owned())
            })
        };
        let labels = |source: &str| {
            vec![
                ("device", device.to_string()),
                ("clocksource", source.to_owned()),
            ]
        };
        for source in text("available_clocksource")?.split_whitespace() {
            available.push(labels(source), 1.0);
        }
        current.push(labels(&text("current_clocksource")?), 1.0);
    }
    Ok(vec![available, current])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_the_clock_and_real_clock_sources() {
        let mut families = read(&fixture_metrics()).unwrap();
        families.extend(clock_sources(&fixture_metrics()).unwrap());
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((value(&families, "node_time_seconds", &[]) - now).abs() < 60.0);
        let tsc = [("device", "0"), ("clocksource", "tsc")];
        assert_eq!(
            value(&families, "node_time_clocksource_current_info", &tsc),
            1.0
        );
        let kvm = [("device", "0"), ("clocksource", "kvm-clock")];
        assert_eq!(
            value(&families, "node_time_clocksource_available_info", &kvm),
            1.0
        );
        let current = families
            .iter()
            .find(|f| f.name == "node_time_clocksource_current_info");
        assert_eq!(current.unwrap().samples.len(), 1);
    }
}
