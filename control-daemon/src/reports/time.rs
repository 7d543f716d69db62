//! Clocks: the datapath stamps with CLOCK_MONOTONIC at tick resolution
//! (`bpf_ktime_get_coarse_ns`: no clock-source read per packet); logs and
//! reports speak RFC 3339 UTC.

/// Nanoseconds of a clock.
fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_MONOTONIC now, in nanoseconds (the datapath's clock).
#[must_use]
pub fn monotonic_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

/// Wall-clock time now, nanoseconds since the Unix epoch.
#[must_use]
pub fn unix_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Maps monotonic timestamps to wall-clock time: `unix = monotonic + offset`,
/// measured as the middle of two wall-clock reads around one monotonic read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    /// Measure the offset now (cheap: three vDSO clock reads). Measure again now and
    /// then to follow wall-clock steps (NTP, an operator setting the clock).
    #[must_use]
    pub fn now() -> Self {
        let a = unix_ns();
        let m = clock_ns(libc::CLOCK_MONOTONIC);
        let b = unix_ns();
        Self {
            offset_ns: a + (b - a) / 2 - m,
        }
    }

    /// A fixed offset (tests).
    #[must_use]
    pub const fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Unix nanoseconds of a monotonic timestamp.
    #[must_use]
    pub fn unix_ns(&self, monotonic_ns: u64) -> i128 {
        i128::from(monotonic_ns) + self.offset_ns
    }

    /// RFC 3339 UTC of a monotonic timestamp.
    #[must_use]
    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        rfc3339(self.unix_ns(monotonic_ns))
    }
}

/// `(year, month, day)` of a day count since 1970-01-01 (proleptic Gregorian;
/// H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-03-01T12:34:56.123456Z`.
#[must_use]
pub fn rfc3339(unix_ns: i128) -> String {
    let secs = i64::try_from(unix_ns.div_euclid(1_000_000_000)).unwrap_or(0);
    let micros = unix_ns.rem_euclid(1_000_000_000) / 1000;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// RFC 3339 of Unix milliseconds.
#[must_use]
pub fn rfc3339_ms(unix_ms: u64) -> String {
    rfc3339(i128::from(unix_ms) * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (leap day of a year divisible by 400) 23:59:59.5
        assert_eq!(
            rfc3339(951_868_799_500_000_000),
            "2000-02-29T23:59:59.500000Z"
        );
        // 2024-12-31T23:59:59.999999Z and the next microsecond
        assert_eq!(
            rfc3339(1_735_689_599_999_999_000),
            "2024-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            rfc3339(1_735_689_600_000_000_000),
            "2025-01-01T00:00:00.000000Z"
        );
        assert_eq!(rfc3339(-1_000), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn monotonic_maps_to_about_now() {
        let w = WallClock::now();
        let now = unix_ns();
        let mapped = w.unix_ns(monotonic_ns());
        assert!((mapped - now).abs() < 50_000_000, "{mapped} vs {now}");
        assert_eq!(WallClock::with_offset(5).unix_ns(10), 15);
    }
}
