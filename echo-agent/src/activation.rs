//! Activation windows: turning a device's app-data events into voice interactions.
//!
//! A window opens when the device's app-data upload within `activation_window` reaches
//! `activation_bytes`; it starts at the first of those uploads and closes once `idle_gap`
//! passes without app-data upload. The defaults come from the published measurements: an
//! Echo command uploads ~45 kB within a few seconds, and a per-device threshold of ~12 kB in
//! one second of upload separated activations from idle traffic; heartbeats (a ~100-byte
//! record every 30 s, a ~99-byte one every 90 s) never come near it. Uploads that age out of
//! the activation window without opening one count as background.

use std::{collections::VecDeque, net::IpAddr, time::Duration};

use serde::Serialize;

use crate::{
    frames::{secs, top_destination, Upload},
    markers::Role,
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    pub activation_bytes: u64,
    pub activation_window: Duration,
    pub idle_gap: Duration,
}

impl Default for Params {
    fn default() -> Self {
        Params { activation_bytes: 12_000, activation_window: Duration::from_secs(1), idle_gap: Duration::from_secs(2) }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interaction {
    pub device: String,
    /// Seconds in the events' clock (capture time in replay).
    pub start: f64,
    pub end: f64,
    pub duration: f64,
    pub top_destination: Option<IpAddr>,
    pub top_destination_upload_bytes: u64,
    pub upload_bytes: u64,
    pub download_bytes: u64,
    pub upload_records: u64,
    pub download_records: u64,
    /// Marker pings seen while the window was open: (time, role).
    pub markers: Vec<(f64, &'static str)>,
}

struct Open {
    uploads: Vec<Upload>,
    upload_records: u64,
    download_bytes: u64,
    download_records: u64,
    markers: Vec<(f64, &'static str)>,
    last_upload: u64,
}

/// One device's windows.
pub struct Tracker {
    params: Params,
    device: String,
    /// Uploads not (yet) part of a window, within the activation window: (event, records).
    recent: VecDeque<(Upload, u64)>,
    open: Option<Open>,
    pub background_bytes: u64,
    pub done: Vec<Interaction>,
}

impl Tracker {
    pub fn new(device: &str, params: Params) -> Self {
        Tracker { params, device: device.to_string(), recent: VecDeque::new(), open: None, background_bytes: 0, done: Vec::new() }
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Advances time to `now`: closes the window after the idle gap, and moves uploads older
    /// than the activation window to the background.
    pub fn tick(&mut self, now: u64) {
        if let Some(o) = &self.open {
            if now.saturating_sub(o.last_upload) > self.params.idle_gap.as_nanos() as u64 {
                self.close();
            }
        }
        let window = self.params.activation_window.as_nanos() as u64;
        while let Some((u, _)) = self.recent.front() {
            if now.saturating_sub(u.ts_ns) <= window {
                break;
            }
            self.background_bytes += u.bytes;
            self.recent.pop_front();
        }
    }

    pub fn upload(&mut self, u: Upload, records: u64) {
        self.tick(u.ts_ns);
        if let Some(o) = &mut self.open {
            o.uploads.push(u);
            o.upload_records += records;
            o.last_upload = u.ts_ns;
            return;
        }
        self.recent.push_back((u, records));
        let total: u64 = self.recent.iter().map(|(u, _)| u.bytes).sum();
        if total >= self.params.activation_bytes {
            let recent = std::mem::take(&mut self.recent);
            self.open = Some(Open {
                upload_records: recent.iter().map(|(_, r)| r).sum(),
                uploads: recent.into_iter().map(|(u, _)| u).collect(),
                download_bytes: 0,
                download_records: 0,
                markers: Vec::new(),
                last_upload: u.ts_ns,
            });
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
            o.markers.push((secs(ts_ns), role.name()));
        }
    }

    /// Closes the open window now (end of a replay, or shutdown).
    pub fn finish(&mut self) {
        self.close();
        self.background_bytes += self.recent.drain(..).map(|(u, _)| u.bytes).sum::<u64>();
    }

    fn close(&mut self) {
        let Some(o) = self.open.take() else { return };
        let start = o.uploads.first().map(|u| u.ts_ns).unwrap_or(o.last_upload);
        let (top, top_bytes) = top_destination(o.uploads.iter());
        self.done.push(Interaction {
            device: self.device.clone(),
            start: secs(start),
            end: secs(o.last_upload),
            duration: secs(o.last_upload - start),
            top_destination: top,
            top_destination_upload_bytes: top_bytes,
            upload_bytes: o.uploads.iter().map(|u| u.bytes).sum(),
            download_bytes: o.download_bytes,
            upload_records: o.upload_records,
            download_records: o.download_records,
            markers: o.markers,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn up(ms: u64, bytes: u64) -> Upload {
        Upload { ts_ns: ms * MS, dest: "10.0.0.1".parse().unwrap(), bytes }
    }

    #[test]
    fn heartbeats_stay_background_and_a_command_opens_one_window() {
        let mut t = Tracker::new("echo", Params::default());
        // Heartbeats: 100 B every 30 s.
        for i in 0..4 {
            t.upload(up(i * 30_000, 100), 1);
        }
        // A command at 200 s: 30 segments of 1,500 B, 50 ms apart (45 kB in 1.5 s).
        for i in 0..30 {
            t.upload(up(200_000 + i * 50, 1_500), 1);
        }
        t.download(202_000 * MS, 20_000, 2);
        t.marker(202_500 * MS, Role::ResponseStart);
        t.upload(up(210_000, 100), 1); // the next heartbeat, after the idle gap
        t.finish();
        assert_eq!(t.done.len(), 1);
        let i = &t.done[0];
        assert_eq!((i.start, i.end), (200.0, 201.45));
        assert_eq!((i.upload_bytes, i.upload_records, i.download_bytes), (45_000, 30, 20_000));
        assert_eq!(i.markers, vec![(202.5, "response_start")]);
        assert_eq!(t.background_bytes, 500);
    }

    #[test]
    fn a_pause_longer_than_the_idle_gap_splits() {
        let mut t = Tracker::new("echo", Params::default());
        for start in [0, 10_000] {
            for i in 0..10 {
                t.upload(up(start + i * 10, 2_000), 1);
            }
        }
        t.finish();
        assert_eq!(t.done.iter().map(|i| i.upload_bytes).collect::<Vec<_>>(), vec![20_000, 20_000]);
        assert_eq!(t.background_bytes, 0);
    }
}
