//! Heartbeats: the small periodic uploads an idle speaker sends. Published captures of an
//! Echo show two: a 100-byte packet every 30 s and a 99-byte one every 90 s, each a single
//! TLS record. They are background, not interactions, and not suspicious.
//!
//! The rule, by size and period: an upload outside any interaction is a heartbeat when it is
//! one record of at most `max_bytes`, and no upload of exactly that size was taken as a
//! heartbeat within the last `min_interval`. So each heartbeat size may go up at most once
//! per `min_interval`; a trickle of small records faster than that (or of larger ones) is
//! above the heartbeat pattern. At most `MAX_SIZES` sizes are tracked at once, so a stream
//! of ever-new sizes cannot pass as heartbeats either.

use std::time::Duration;

/// Heartbeat sizes tracked at once. The published device has two; eight leaves room for
/// firmware differences while still bounding what can pass as background.
pub const MAX_SIZES: usize = 8;

/// A size not seen for this long is forgotten (ten times the longest published period, so
/// a missed beat or two keeps it).
pub const FORGET: Duration = Duration::from_secs(900);

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeartbeatParams {
    /// Largest single-record upload (record payload bytes) that can be a heartbeat.
    pub max_bytes: u64,
    /// Shortest interval between two heartbeats of the same size.
    pub min_interval: Duration,
}

impl Default for HeartbeatParams {
    fn default() -> Self {
        // 256 B covers both published heartbeats (100 and 99 bytes on the wire) with room;
        // 10 s is a third of the shorter published period.
        HeartbeatParams { max_bytes: 256, min_interval: Duration::from_secs(10) }
    }
}

/// The sizes seen as heartbeats and when each was last taken.
#[derive(Debug, Default)]
pub struct Heartbeats {
    last: Vec<(u64, u64)>,
}

impl Heartbeats {
    /// Whether an upload of `bytes` in `records` record headers at `ts_ns` fits the pattern;
    /// if it does, it is remembered as that size's latest beat.
    pub fn fits(&mut self, p: &HeartbeatParams, ts_ns: u64, bytes: u64, records: u64) -> bool {
        if records != 1 || bytes > p.max_bytes {
            return false;
        }
        let forget = FORGET.as_nanos() as u64;
        self.last.retain(|&(_, t)| ts_ns.saturating_sub(t) <= forget);
        if let Some((_, t)) = self.last.iter_mut().find(|(size, _)| *size == bytes) {
            let fits = ts_ns.saturating_sub(*t) >= p.min_interval.as_nanos() as u64;
            if fits {
                *t = ts_ns;
            }
            return fits;
        }
        if self.last.len() == MAX_SIZES {
            return false;
        }
        self.last.push((bytes, ts_ns));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn published_heartbeats_fit_and_a_trickle_does_not() {
        let p = HeartbeatParams::default();
        let mut h = Heartbeats::default();
        // 95 B every 30 s and 94 B every 90.8 s for ten minutes: all fit.
        let mut beats: Vec<(u64, u64)> = (0..20).map(|i| (i * 30 * S, 95)).collect();
        beats.extend((0..7).map(|i| (i * 90_820_000_000 + S / 3, 94)));
        beats.sort();
        assert!(beats.iter().all(|&(t, b)| h.fits(&p, t, b, 1)));
        // The same size once a second: one in ten fits.
        let trickle = (0..30).filter(|i| h.fits(&p, 700 * S + i * S, 95, 1)).count();
        assert_eq!(trickle, 3);
        // Too big, or not one record.
        assert!(!h.fits(&p, 800 * S, 257, 1));
        assert!(!h.fits(&p, 800 * S, 40, 0));
        assert!(!h.fits(&p, 800 * S, 200, 2));
    }

    #[test]
    fn new_sizes_are_bounded() {
        let p = HeartbeatParams::default();
        let mut h = Heartbeats::default();
        let fit = (0..20).filter(|&i| h.fits(&p, i * S, 100 + i, 1)).count();
        assert_eq!(fit, MAX_SIZES);
        // Forgotten after FORGET: room again.
        assert!(h.fits(&p, 20 * S + FORGET.as_nanos() as u64, 180, 1));
    }
}
