//! From events to answers. Per device: activation windows (interactions), heartbeats and
//! unexpected upload (see `activation`), marker-framed trials (see `frames`), and the names
//! of destinations (see `names`). The live agent and replay feed one `Session` the same
//! events and snippets, so they agree by construction.

use std::collections::BTreeMap;

use echo_common::{Event, Snippet, DIR_UPLOAD, EVENT_APP_DATA, EVENT_MARKER};
use serde::{Deserialize, Serialize};

use crate::{
    activation::{Interaction, Params, Reason, Tracker, Unexpected},
    clock::Clock,
    events::Item,
    frames::{Frame, FrameCutter, Trial, Upload},
    markers::{MarkerSpec, Role},
    names::{self, Groups, NameTable, NO_GROUP},
    replay::addr_ip,
};

/// What the session is told besides events.
#[derive(Debug, Clone)]
pub struct Config {
    /// Marker addresses by slot (the order given to the programs).
    pub markers: Vec<MarkerSpec>,
    /// Arm names assigned to frames in rotation.
    pub arms: Vec<String>,
    pub params: Params,
    /// Destination groups by name suffix (`--group`).
    pub groups: Groups,
    /// Spans (epoch seconds) the microphone was muted, for every device: replay's stand-in
    /// for the live API's mute switch.
    pub muted: Vec<(f64, f64)>,
    /// How long a frame waits for `response_start` after `command_end`, and for
    /// `response_end` after `response_start`.
    pub response_timeout: std::time::Duration,
}

/// `Config::response_timeout` unless told otherwise (`--response-timeout`).
pub const DEFAULT_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Default for Config {
    fn default() -> Self {
        Config {
            markers: Vec::new(),
            arms: Vec::new(),
            params: Params::default(),
            groups: Groups::default(),
            muted: Vec::new(),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }
}

/// One line of the interaction log, and one result of the session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Interaction(Interaction),
    Frame(Frame),
    Unexpected(Unexpected),
    /// The microphone state was set (through the API) at `at` (epoch seconds).
    Muted { device: String, muted: bool, at: f64 },
}

pub struct DeviceState {
    pub name: String,
    pub tracker: Tracker,
    cutter: FrameCutter,
}

pub struct Session {
    config: Config,
    clock: Clock,
    /// By the programs' device index.
    devices: BTreeMap<u8, DeviceState>,
    /// Epoch seconds of the latest ping per marker role.
    pub marker_last: BTreeMap<Role, f64>,
    pub names: NameTable,
    /// The programs' count of dropped events, as last told (`events_dropped`).
    dropped: u64,
    records: Vec<Record>,
    /// Time of the latest marker event: app-data events that follow it (in ring order) are
    /// timed no earlier.
    marker_ns: u64,
}

impl Session {
    /// `devices`: (index in the programs, name, index of the device's next frame).
    pub fn new(config: Config, clock: Clock, devices: &[(u8, String, usize)]) -> Self {
        let devices = devices
            .iter()
            .map(|(i, name, next_frame)| {
                let state = DeviceState {
                    name: name.clone(),
                    tracker: Tracker::new(name, config.params, &config.groups, clock),
                    cutter: FrameCutter::new(name, &config.arms, &config.groups, clock, *next_frame, config.response_timeout),
                };
                (*i, state)
            })
            .collect();
        let mut s = Session { config, clock, devices, marker_last: BTreeMap::new(), names: NameTable::default(), dropped: 0, records: Vec::new(), marker_ns: 0 };
        let to_ns = |t: f64| (t.max(0.0) * 1e9).min(u64::MAX as f64) as u64;
        let mut switches: Vec<(u64, bool)> = s.config.muted.iter().flat_map(|&(a, b)| [(to_ns(a), true), (to_ns(b), false)]).collect();
        switches.sort();
        for d in s.devices.values_mut() {
            switches.iter().for_each(|&(t, m)| d.tracker.set_muted(t, m));
        }
        s
    }

    pub fn item(&mut self, item: &Item) {
        match item {
            Item::Event(e) => self.event(e),
            Item::Snippet(s) => self.snippet(s),
        }
    }

    /// Names the snippet teaches, for its device.
    pub fn snippet(&mut self, s: &Snippet) {
        if !self.devices.contains_key(&s.device) {
            return;
        }
        for l in names::learn(s) {
            self.names.learn(s.device, l, s.ts_ns);
        }
    }

    pub fn event(&mut self, e: &Event) {
        match e.kind {
            EVENT_MARKER => {
                let Some(role) = self.config.markers.get(e.marker as usize).map(|m| m.role) else { return };
                self.marker_ns = self.marker_ns.max(e.ts_ns);
                self.marker_last.insert(role, self.clock.secs(e.ts_ns));
                for d in self.devices.values_mut() {
                    d.tracker.marker(e.ts_ns, role);
                    d.cutter.marker(e.ts_ns, role);
                }
            }
            EVENT_APP_DATA => {
                let Some(d) = self.devices.get_mut(&e.device) else { return };
                // Live, app data is timed by the coarse clock (up to a tick behind a marker's
                // precise one): bytes the programs saw after a marker count after it.
                let ts_ns = e.ts_ns.max(self.marker_ns);
                let dest = addr_ip(&e.addr, e.family);
                self.names.touch(e.device, dest, ts_ns);
                if e.direction == DIR_UPLOAD {
                    let group = self.names.get(e.device, &dest).map_or(NO_GROUP, |n| self.config.groups.of(&n.name));
                    let u = Upload { ts_ns, dest, bytes: e.bytes as u64, group };
                    d.tracker.upload(u, e.records as u64);
                    d.cutter.upload(&u);
                } else {
                    d.tracker.download(ts_ns, e.bytes as u64, e.records as u64);
                    d.cutter.download(ts_ns, e.bytes as u64);
                }
            }
            _ => {}
        }
    }

    /// The programs' running count of events dropped for want of ring-buffer room: when it
    /// grows, every window and frame open now may miss events and is marked degraded.
    pub fn events_dropped(&mut self, total: u64) {
        if total > self.dropped {
            self.devices.values_mut().for_each(|d| {
                d.tracker.degrade();
                d.cutter.degrade();
            });
        }
        self.dropped = self.dropped.max(total);
    }

    /// Advances every device's time to `now_ns` (windows close without traffic).
    pub fn tick(&mut self, now_ns: u64) {
        self.devices.values_mut().for_each(|d| {
            d.tracker.tick(now_ns);
            d.cutter.tick(now_ns);
        });
        self.names.sweep(now_ns);
    }

    /// Sets a device's microphone state from `now_ns` on, and records the switch; false for
    /// an unknown device.
    pub fn set_muted(&mut self, name: &str, now_ns: u64, muted: bool) -> bool {
        if !self.restore_muted(name, now_ns, muted) {
            return false;
        }
        self.records.push(Record::Muted { device: name.to_string(), muted, at: self.clock.secs(now_ns) });
        true
    }

    /// The device's next frame belongs to `trial` (an experiment runner's announcement);
    /// false for an unknown device.
    pub fn announce(&mut self, name: &str, trial: Trial) -> bool {
        let Some(d) = self.devices.values_mut().find(|d| d.name == name) else { return false };
        d.cutter.announce(trial);
        true
    }

    /// Sets a device's microphone state without recording it (the state read back from the
    /// log at start); false for an unknown device.
    pub fn restore_muted(&mut self, name: &str, now_ns: u64, muted: bool) -> bool {
        let Some(d) = self.devices.values_mut().find(|d| d.name == name) else { return false };
        d.tracker.set_muted(now_ns, muted);
        true
    }

    /// Closes every open window and run (end of a replay, or shutdown).
    pub fn finish(&mut self) {
        self.devices.values_mut().for_each(|d| {
            d.tracker.finish();
            d.cutter.finish();
        });
    }

    /// Results since the last call, in the order they were completed per kind.
    pub fn take(&mut self) -> Vec<Record> {
        let mut out = std::mem::take(&mut self.records);
        for (&i, d) in self.devices.iter_mut() {
            for mut x in d.tracker.done.drain(..) {
                x.top_destination_name = name_of(&self.names, i, x.top_destination);
                out.push(Record::Interaction(x));
            }
            out.extend(d.tracker.unexpected.drain(..).map(Record::Unexpected));
            for mut f in d.cutter.done.drain(..) {
                f.top_destination_name = name_of(&self.names, i, f.top_destination);
                out.push(Record::Frame(f));
            }
        }
        out
    }

    pub fn devices(&self) -> impl Iterator<Item = &DeviceState> {
        self.devices.values()
    }

    /// Devices with their index in the programs.
    pub fn indexed_devices(&self) -> impl Iterator<Item = (u8, &DeviceState)> {
        self.devices.iter().map(|(i, d)| (*i, d))
    }

    pub fn device(&self, index: u8) -> Option<&DeviceState> {
        self.devices.get(&index)
    }
}

/// The name of a window's or frame's top destination, as known when it closed.
fn name_of(names: &NameTable, device: u8, ip: Option<std::net::IpAddr>) -> Option<String> {
    names.get(device, &ip?).map(|e| e.name.clone())
}

impl DeviceState {
    pub fn unexpected_bytes(&self, reason: Reason) -> u64 {
        self.tracker.unexpected_bytes[reason as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use echo_common::FAMILY_V4;

    /// Live, app data carries the coarse clock, up to a tick behind the markers' precise one:
    /// an upload the programs saw right after `command_start` (ring-buffered after it) but
    /// timed 2 ms before it still belongs to the frame, and one before the marker does not.
    #[test]
    fn app_data_after_a_marker_is_never_timed_before_it() {
        let markers = ["10.0.0.1=command_start", "10.0.0.2=command_end"].iter().map(|m| m.parse().unwrap()).collect();
        let mut s = Session::new(Config { markers, ..Config::default() }, Clock::Capture, &[(0, "echo".into(), 0)]);
        let ms = 1_000_000u64;
        let marker = |slot: u8, t: u64| Event { ts_ns: t, kind: EVENT_MARKER, marker: slot, ..Event::default() };
        let upload = |t: u64, bytes: u32| Event { ts_ns: t, kind: EVENT_APP_DATA, addr: [10, 9, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], bytes, records: 1, port: 443, family: FAMILY_V4, ..Event::default() };
        for e in [upload(995 * ms, 7), marker(0, 1_000 * ms), upload(998 * ms, 500), upload(1_200 * ms, 40), marker(1, 2_000 * ms)] {
            s.event(&e);
        }
        s.finish();
        let frames: Vec<(u64, f64)> = s.take().into_iter().filter_map(|r| if let Record::Frame(f) = r { Some((f.upload_bytes, f.start)) } else { None }).collect();
        assert_eq!(frames, [(540, 1.0)]);
    }
}
