//! Event timestamps to wall-clock seconds. Live events carry `bpf_ktime_get_ns`
//! (CLOCK_MONOTONIC), which NTP steps do not move, so windows are measured in it and only
//! the output is converted; replayed events carry the capture's own (epoch) time.

/// How to read an event's `ts_ns`, and the clock the programs take it from, which
/// `Programs::load` fixes (`echo_common::CLOCK_KERNEL` for `Monotonic`, `CLOCK_CAPTURE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Epoch nanoseconds (replay: the capture's timestamps).
    Capture,
    /// CLOCK_MONOTONIC nanoseconds (live).
    Monotonic,
}

impl Clock {
    /// Epoch seconds of `ns`. Monotonic times are converted with today's offset between the
    /// two clocks, so a wall-clock step shows in the output but never in a duration.
    pub fn secs(self, ns: u64) -> f64 {
        match self {
            Clock::Capture => ns as f64 / 1e9,
            Clock::Monotonic => (ns as i128 + now_ns(libc::CLOCK_REALTIME) as i128 - now_ns(libc::CLOCK_MONOTONIC) as i128) as f64 / 1e9,
        }
    }
}

/// CLOCK_MONOTONIC now, in the programs' clock.
pub fn monotonic_ns() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC)
}

/// `clock` now, in nanoseconds.
pub fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_converts_to_now() {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let converted = Clock::Monotonic.secs(monotonic_ns());
        assert!((converted - wall).abs() < 0.05, "{converted} vs {wall}");
        assert_eq!(Clock::Capture.secs(1_500_000_000), 1.5);
    }
}
