//! adjtimex(2), read only: the kernel's clock discipline (NTP sync state,
//! offset, error bounds, PPS), as node_exporter's `timex` collector exports it.

use std::io;

use super::{Error, Family, HostMetrics, Kind};

/// adjtimex's return value when the clock is not synchronized.
const TIME_ERROR: libc::c_int = 5;
/// `status` bit: offsets and jitter are in nanoseconds, not microseconds.
const STA_NANO: libc::c_int = 0x2000;
/// Frequencies are in ppm with a 16-bit fraction.
const PPM16FRAC: f64 = 1_000_000.0 * 65536.0;
const MICRO: f64 = 1e6;
const NANO: f64 = 1e9;

pub(super) fn read(_: &HostMetrics) -> Result<Vec<Family>, Error> {
    // SAFETY: with `modes` 0 adjtimex only fills the zeroed struct.
    let (state, t) = unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut t);
        if state < 0 {
            return Err(Error::Read {
                path: "adjtimex(2)".into(),
                source: io::Error::last_os_error(),
            });
        }
        (state, t)
    };
    let fine = if t.status & STA_NANO != 0 {
        NANO
    } else {
        MICRO
    };
    let values: [(&str, Kind, &str, f64); 17] = [
        (
            "sync_status",
            Kind::Gauge,
            "Is clock synchronized to a reliable server (1 = yes, 0 = no).",
            if state == TIME_ERROR { 0.0 } else { 1.0 },
        ),
        (
            "offset_seconds",
            Kind::Gauge,
            "Time offset in between local system and reference clock.",
            t.offset as f64 / fine,
        ),
        (
            "frequency_adjustment_ratio",
            Kind::Gauge,
            "Local clock frequency adjustment.",
            1.0 + t.freq as f64 / PPM16FRAC,
        ),
        (
            "maxerror_seconds",
            Kind::Gauge,
            "Maximum error in seconds.",
            t.maxerror as f64 / MICRO,
        ),
        (
            "estimated_error_seconds",
            Kind::Gauge,
            "Estimated error in seconds.",
            t.esterror as f64 / MICRO,
        ),
        (
            "status",
            Kind::Gauge,
            "Value of the status array bits.",
            t.status as f64,
        ),
        (
            "loop_time_constant",
            Kind::Gauge,
            "Phase-locked loop time constant.",
            t.constant as f64,
        ),
        (
            "tick_seconds",
            Kind::Gauge,
            "Seconds between clock ticks.",
            t.tick as f64 / MICRO,
        ),
        (
            "pps_frequency_hertz",
            Kind::Gauge,
            "Pulse per second frequency.",
            t.ppsfreq as f64 / PPM16FRAC,
        ),
        (
            "pps_jitter_seconds",
            Kind::Gauge,
            "Pulse per second jitter.",
            t.jitter as f64 / fine,
        ),
        (
            "pps_shift_seconds",
            Kind::Gauge,
            "Pulse per second interval duration.",
            t.shift as f64,
        ),
        (
            "pps_stability_hertz",
            Kind::Gauge,
            "Pulse per second stability, average of recent frequency changes.",
            t.stabil as f64 / PPM16FRAC,
        ),
        (
            "pps_jitter_total",
            Kind::Counter,
            "Pulse per second count of jitter limit exceeded events.",
            t.jitcnt as f64,
        ),
        (
            "pps_calibration_total",
            Kind::Counter,
            "Pulse per second count of calibration intervals.",
            t.calcnt as f64,
        ),
        (
            "pps_error_total",
            Kind::Counter,
            "Pulse per second count of calibration errors.",
            t.errcnt as f64,
        ),
        (
            "pps_stability_exceeded_total",
            Kind::Counter,
            "Pulse per second count of stability limit exceeded events.",
            t.stbcnt as f64,
        ),
        (
            "tai_offset_seconds",
            Kind::Gauge,
            "International Atomic Time (TAI) offset.",
            t.tai as f64,
        ),
    ];
    Ok(values
        .into_iter()
        .map(|(name, kind, help, value)| {
            Family::single(kind, format!("node_timex_{name}"), help, value)
        })
        .collect())
}
