//! Activation windows: turning a device's app-data events into voice interactions, and
//! telling heartbeats from upload that should not happen.
//!
//! A window opens when the device's app-data upload within `activation_window` reaches
//! `activation_bytes`; it starts at the first of those uploads and closes once `idle_gap`
//! passes without app-data upload. The defaults come from the published measurements: an
//! Echo command uploads ~45 kB within a few seconds, and a per-device threshold of ~12 kB in
//! one second of upload separated activations from idle traffic; heartbeats (a ~100-byte
//! record every 30 s, a ~99-byte one every 90 s) never come near it.
//!
//! Every uploaded byte ends up in exactly one place: an interaction, the background
//! (heartbeats, see `heartbeats`), or unexpected upload outside any interaction. While the
//! microphone is muted, everything but heartbeats is also unexpected (reason "muted"),
//! windows included; outside windows it is counted as muted rather than outside_interaction.

use std::{
    collections::VecDeque,
    net::IpAddr,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    clock::Clock,
    frames::{DestSums, Upload},
    heartbeats::{HeartbeatParams, Heartbeats},
    markers::Role,
    names::Groups,
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    pub activation_bytes: u64,
    pub activation_window: Duration,
    pub idle_gap: Duration,
    pub heartbeat: HeartbeatParams,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            activation_bytes: 12_000,
            activation_window: Duration::from_secs(1),
            idle_gap: Duration::from_secs(2),
            heartbeat: HeartbeatParams::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub device: String,
    /// Epoch seconds (capture time in replay).
    pub start: f64,
    pub end: f64,
    pub duration: f64,
    pub top_destination: Option<IpAddr>,
    pub top_destination_upload_bytes: u64,
    /// The top destination's name (SNI or DNS) when known.
    #[serde(default)]
    pub top_destination_name: Option<String>,
    /// The group (`--group`) that received the most upload, and how much.
    #[serde(default)]
    pub top_group: Option<String>,
    #[serde(default)]
    pub top_group_upload_bytes: u64,
    pub upload_bytes: u64,
    pub download_bytes: u64,
    pub upload_records: u64,
    pub download_records: u64,
    /// Marker pings seen while the window was open: (time, role).
    pub markers: Vec<(f64, String)>,
    /// Whether the microphone was muted during any of its uploads.
    pub muted: bool,
    /// Events were dropped (ring buffer full) while it was open: its byte and record counts
    /// may be short and its end early; the per-destination counters stay exact.
    #[serde(default)]
    pub degraded: bool,
}

/// Why upload was unexpected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Above the heartbeat pattern while the microphone was muted.
    Muted,
    /// Above the heartbeat pattern outside any interaction.
    OutsideInteraction,
}

impl Reason {
    pub const ALL: [Reason; 2] = [Reason::Muted, Reason::OutsideInteraction];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Muted => "muted",
            Reason::OutsideInteraction => "outside_interaction",
        }
    }
}

/// A run of unexpected uploads with no pause longer than the idle gap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unexpected {
    pub device: String,
    pub reason: Reason,
    pub start: f64,
    pub end: f64,
    pub bytes: u64,
    pub uploads: u64,
}

struct Episode {
    start: u64,
    last: u64,
    bytes: u64,
    uploads: u64,
}

/// An open window. Uploads are summed per destination as they come, so a window open for
/// hours (a long upload) holds one entry per destination, not one per event.
struct Open {
    start: u64,
    sums: DestSums,
    upload_bytes: u64,
    upload_records: u64,
    download_bytes: u64,
    download_records: u64,
    markers: Vec<(f64, String)>,
    last_upload: u64,
    muted: bool,
    degraded: bool,
}

/// Mute switches, oldest first; `before` is the state before the first kept one.
#[derive(Default)]
struct MuteLog {
    before: bool,
    changes: VecDeque<(u64, bool)>,
}

/// Mute switches kept: enough to judge uploads up to the activation window behind.
const MAX_MUTE_CHANGES: usize = 64;

impl MuteLog {
    fn set(&mut self, ts: u64, muted: bool) {
        if self.changes.len() == MAX_MUTE_CHANGES {
            self.before = self.changes.pop_front().expect("full").1;
        }
        self.changes.push_back((ts, muted));
    }

    fn at(&self, ts: u64) -> bool {
        self.changes.iter().take_while(|(t, _)| *t <= ts).last().map_or(self.before, |c| c.1)
    }

    fn now(&self) -> bool {
        self.changes.back().map_or(self.before, |c| c.1)
    }
}

/// One device's windows and upload classes.
pub struct Tracker {
    params: Params,
    groups: Groups,
    clock: Clock,
    device: String,
    /// Uploads not (yet) part of a window, within the activation window: (event, records).
    recent: VecDeque<(Upload, u64)>,
    open: Option<Open>,
    heartbeats: Heartbeats,
    mute: MuteLog,
    episodes: [Option<Episode>; 2],
    pub background_bytes: u64,
    /// Unexpected upload bytes by `Reason` (index as in `Reason::ALL`).
    pub unexpected_bytes: [u64; 2],
    /// Closed interactions and unexpected runs, for the caller to take.
    pub done: Vec<Interaction>,
    pub unexpected: Vec<Unexpected>,
}

impl Tracker {
    pub fn new(device: &str, params: Params, groups: &Groups, clock: Clock) -> Self {
        Tracker {
            params,
            groups: groups.clone(),
            clock,
            device: device.to_string(),
            recent: VecDeque::new(),
            open: None,
            heartbeats: Heartbeats::default(),
            mute: MuteLog::default(),
            episodes: [None, None],
            background_bytes: 0,
            unexpected_bytes: [0; 2],
            done: Vec::new(),
            unexpected: Vec::new(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    pub fn muted(&self) -> bool {
        self.mute.now()
    }

    /// Records the microphone state from `ts` on.
    pub fn set_muted(&mut self, ts: u64, muted: bool) {
        self.mute.set(ts, muted);
    }

    /// Advances time to `now`: closes the window and unexpected runs after the idle gap, and
    /// classifies uploads older than the activation window that opened none.
    pub fn tick(&mut self, now: u64) {
        let gap = self.params.idle_gap.as_nanos() as u64;
        if self.open.as_ref().is_some_and(|o| now.saturating_sub(o.last_upload) > gap) {
            self.close();
        }
        let window = self.params.activation_window.as_nanos() as u64;
        while self.recent.front().is_some_and(|(u, _)| now.saturating_sub(u.ts_ns) > window) {
            let (u, records) = self.recent.pop_front().expect("checked");
            self.outside(u, records);
        }
        // A run ends once no upload still waiting to be classified could continue it.
        for reason in Reason::ALL {
            if self.episodes[reason as usize].as_ref().is_some_and(|e| now.saturating_sub(e.last) > gap + window) {
                self.end_episode(reason);
            }
        }
    }

    pub fn upload(&mut self, u: Upload, records: u64) {
        self.tick(u.ts_ns);
        if self.open.is_some() {
            self.into_window(u, records);
            return;
        }
        self.recent.push_back((u, records));
        let total: u64 = self.recent.iter().map(|(u, _)| u.bytes).sum();
        if total >= self.params.activation_bytes {
            self.open = Some(Open {
                start: self.recent.front().map_or(u.ts_ns, |(first, _)| first.ts_ns),
                sums: DestSums::default(),
                upload_bytes: 0,
                upload_records: 0,
                download_bytes: 0,
                download_records: 0,
                markers: Vec::new(),
                last_upload: u.ts_ns,
                muted: false,
                degraded: false,
            });
            for (u, r) in std::mem::take(&mut self.recent) {
                self.into_window(u, r);
            }
        }
    }

    pub fn download(&mut self, ts_ns: u64, bytes: u64, records: u64) {
        self.tick(ts_ns);
        if let Some(o) = &mut self.open {
            o.download_bytes += bytes;
            o.download_records += records;
        }
    }

    pub fn marker(&mut self, ts_ns: u64, role: Role) {
        self.tick(ts_ns);
        if let Some(o) = &mut self.open {
            o.markers.push((self.clock.secs(ts_ns), role.name().to_string()));
        }
    }

    /// Events were lost: the open window, if any, is degraded.
    pub fn degrade(&mut self) {
        if let Some(o) = &mut self.open {
            o.degraded = true;
        }
    }

    /// Closes everything open now (end of a replay, or shutdown).
    pub fn finish(&mut self) {
        self.close();
        for (u, r) in std::mem::take(&mut self.recent) {
            self.outside(u, r);
        }
        for reason in Reason::ALL {
            self.end_episode(reason);
        }
    }

    fn into_window(&mut self, u: Upload, records: u64) {
        let muted = self.mute.at(u.ts_ns);
        if muted {
            self.unexpected_upload(Reason::Muted, &u);
        }
        let o = self.open.as_mut().expect("a window is open");
        o.muted |= muted;
        o.sums.add(&u);
        o.upload_bytes += u.bytes;
        o.upload_records += records;
        o.last_upload = u.ts_ns;
    }

    /// An upload that opened no window: a heartbeat, or unexpected.
    fn outside(&mut self, u: Upload, records: u64) {
        if self.heartbeats.fits(&self.params.heartbeat, u.ts_ns, u.bytes, records) {
            self.background_bytes += u.bytes;
        } else if self.mute.at(u.ts_ns) {
            self.unexpected_upload(Reason::Muted, &u);
        } else {
            self.unexpected_upload(Reason::OutsideInteraction, &u);
        }
    }

    fn unexpected_upload(&mut self, reason: Reason, u: &Upload) {
        self.unexpected_bytes[reason as usize] += u.bytes;
        let gap = self.params.idle_gap.as_nanos() as u64;
        if self.episodes[reason as usize].as_ref().is_some_and(|e| u.ts_ns.saturating_sub(e.last) > gap) {
            self.end_episode(reason);
        }
        let e = self.episodes[reason as usize].get_or_insert(Episode { start: u.ts_ns, last: u.ts_ns, bytes: 0, uploads: 0 });
        e.last = e.last.max(u.ts_ns);
        e.bytes += u.bytes;
        e.uploads += 1;
    }

    fn end_episode(&mut self, reason: Reason) {
        let Some(e) = self.episodes[reason as usize].take() else { return };
        self.unexpected.push(Unexpected {
            device: self.device.clone(),
            reason,
            start: self.clock.secs(e.start),
            end: self.clock.secs(e.last),
            bytes: e.bytes,
            uploads: e.uploads,
        });
    }

    fn close(&mut self) {
        let Some(o) = self.open.take() else { return };
        let start = o.start;
        let top = o.sums.top(&self.groups);
        self.done.push(Interaction {
            device: self.device.clone(),
            start: self.clock.secs(start),
            end: self.clock.secs(o.last_upload),
            duration: (o.last_upload - start) as f64 / 1e9,
            top_destination: top.destination,
            top_destination_upload_bytes: top.destination_bytes,
            top_destination_name: None,
            top_group: top.group,
            top_group_upload_bytes: top.group_bytes,
            upload_bytes: o.upload_bytes,
            download_bytes: o.download_bytes,
            upload_records: o.upload_records,
            download_records: o.download_records,
            markers: o.markers,
            muted: o.muted,
            degraded: o.degraded,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn up(ms: u64, bytes: u64) -> Upload {
        Upload { ts_ns: ms * MS, dest: "10.0.0.1".parse().unwrap(), bytes, group: crate::names::NO_GROUP }
    }

    fn tracker() -> Tracker {
        Tracker::new("echo", Params::default(), &Groups::default(), Clock::Capture)
    }

    #[test]
    fn heartbeats_stay_background_and_a_command_opens_one_window() {
        let mut t = tracker();
        // Heartbeats: 95 B every 30 s.
        for i in 0..4 {
            t.upload(up(i * 30_000, 95), 1);
        }
        // A command at 200 s: 30 segments of 1,500 B, 50 ms apart (45 kB in 1.5 s).
        for i in 0..30 {
            t.upload(up(200_000 + i * 50, 1_500), 1);
        }
        t.download(202_000 * MS, 20_000, 2);
        t.marker(202_500 * MS, Role::ResponseStart);
        t.upload(up(210_000, 95), 1); // the next heartbeat, after the idle gap
        t.finish();
        assert_eq!(t.done.len(), 1);
        let i = &t.done[0];
        assert_eq!((i.start, i.end), (200.0, 201.45));
        assert_eq!((i.upload_bytes, i.upload_records, i.download_bytes, i.muted), (45_000, 30, 20_000, false));
        assert_eq!(i.markers, vec![(202.5, "response_start".to_string())]);
        assert_eq!(t.background_bytes, 475);
        assert_eq!(t.unexpected_bytes, [0, 0]);
        assert!(t.unexpected.is_empty());
    }

    #[test]
    fn a_pause_longer_than_the_idle_gap_splits() {
        let mut t = tracker();
        for start in [0, 10_000] {
            for i in 0..10 {
                t.upload(up(start + i * 10, 2_000), 1);
            }
        }
        t.finish();
        assert_eq!(t.done.iter().map(|i| i.upload_bytes).collect::<Vec<_>>(), vec![20_000, 20_000]);
        assert_eq!(t.background_bytes, 0);
    }

    #[test]
    fn lost_events_degrade_the_open_window_only() {
        let mut t = tracker();
        for start in [1_000, 10_000] {
            for i in 0..10 {
                t.upload(up(start + i * 10, 2_000), 1);
            }
            if start == 1_000 {
                t.degrade(); // events lost while the first window is open
                t.tick(5_000 * MS);
                t.degrade(); // and while none is
            }
        }
        t.finish();
        assert_eq!(t.done.iter().map(|i| (i.upload_bytes, i.degraded)).collect::<Vec<_>>(), vec![(20_000, true), (20_000, false)]);
    }

    #[test]
    fn muted_and_outside_uploads_are_unexpected() {
        let mut t = tracker();
        // A trickle below the activation threshold: 800 B every 200 ms for 2 s.
        for i in 0..10 {
            t.upload(up(1_000 + i * 200, 800), 1);
        }
        // Muted at 20 s: a heartbeat (fits), then a 20 kB burst that opens a window.
        t.set_muted(20_000 * MS, true);
        t.upload(up(25_000, 95), 1);
        for i in 0..10 {
            t.upload(up(30_000 + i * 20, 2_000), 1);
        }
        t.set_muted(40_000 * MS, false);
        t.upload(up(41_000, 3_000), 2); // unmuted, outside: outside_interaction
        t.finish();
        assert_eq!(t.background_bytes, 95);
        assert_eq!(t.unexpected_bytes, [20_000, 8_000 + 3_000]);
        assert_eq!(t.done.len(), 1);
        assert!(t.done[0].muted);
        let runs: Vec<_> = t.unexpected.iter().map(|u| (u.reason, u.start, u.end, u.bytes, u.uploads)).collect();
        assert_eq!(
            runs,
            vec![
                (Reason::OutsideInteraction, 1.0, 2.8, 8_000, 10),
                (Reason::Muted, 30.0, 30.18, 20_000, 10),
                (Reason::OutsideInteraction, 41.0, 41.0, 3_000, 1),
            ]
        );
    }
}
