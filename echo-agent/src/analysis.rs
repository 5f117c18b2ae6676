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
        let mut s = Session { config, clock, devices, marker_last: BTreeMap::new(), names: NameTable::default(), dropped: 0, records: Vec::new() };
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
                self.marker_last.insert(role, self.clock.secs(e.ts_ns));
                for d in self.devices.values_mut() {
                    d.tracker.marker(e.ts_ns, role);
                    d.cutter.marker(e.ts_ns, role);
                }
            }
            EVENT_APP_DATA => {
                let Some(d) = self.devices.get_mut(&e.device) else { return };
                let dest = addr_ip(&e.addr, e.family);
                self.names.touch(e.device, dest, e.ts_ns);
                if e.direction == DIR_UPLOAD {
                    let group = self.names.get(e.device, &dest).map_or(NO_GROUP, |n| self.config.groups.of(&n.name));
                    let u = Upload { ts_ns: e.ts_ns, dest, bytes: e.bytes as u64, group };
                    d.tracker.upload(u, e.records as u64);
                    d.cutter.upload(&u);
                } else {
                    d.tracker.download(e.ts_ns, e.bytes as u64, e.records as u64);
                    d.cutter.download(e.ts_ns, e.bytes as u64);
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
