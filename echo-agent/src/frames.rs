//! Marker-framed trials, the research protocol of the seed paper: a frame runs from a
//! `command_start` marker ping to the next `response_start`; its value is the upload to the
//! destination that received the most bytes within it. Arms are assigned in rotation (trials
//! were played alternately), and per arm the IQR filter drops outliers before the summary.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    clock::Clock,
    markers::Role,
    names::{Groups, NO_GROUP},
};

/// One app-data upload event of a device (see `echo_common::Event`), times in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Upload {
    pub ts_ns: u64,
    pub dest: IpAddr,
    pub bytes: u64,
    /// The destination's group (`--group`) when the upload happened, or `NO_GROUP`.
    pub group: u16,
}

/// Uploads summed per destination and per destination group, to find the top of a window
/// or a frame. One entry per destination, not per upload.
#[derive(Default, Debug)]
pub struct DestSums {
    by_dest: BTreeMap<IpAddr, u64>,
    by_group: BTreeMap<u16, u64>,
}

/// The top destination and the top group of a window or frame (ties: the lower address, the
/// earlier `--group`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Top {
    pub destination: Option<IpAddr>,
    pub destination_bytes: u64,
    pub group: Option<String>,
    pub group_bytes: u64,
}

impl DestSums {
    pub fn add(&mut self, u: &Upload) {
        *self.by_dest.entry(u.dest).or_default() += u.bytes;
        if u.group != NO_GROUP {
            *self.by_group.entry(u.group).or_default() += u.bytes;
        }
    }

    pub fn top(&self, groups: &Groups) -> Top {
        let (destination, destination_bytes) = max_entry(&self.by_dest);
        let (group, group_bytes) = max_entry(&self.by_group);
        Top { destination, destination_bytes, group: group.and_then(|g| groups.name(g)).map(str::to_string), group_bytes }
    }
}

fn max_entry<K: Copy>(m: &BTreeMap<K, u64>) -> (Option<K>, u64) {
    m.iter().fold((None, 0), |best, (k, &b)| if b > best.1 || best.0.is_none() { (Some(*k), b) } else { best })
}

/// How the device answered a trial, from the markers: no `response_start` within the
/// response timeout; a response that began after the input ended (`command_end`: the whole
/// input, postfix included, was taken as the command); or one that began while the input
/// still played (the device found the end of the command, the seed paper's correct reply).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    #[default]
    None,
    AfterInput,
    Early,
}

impl Response {
    pub const ALL: [Response; 3] = [Response::None, Response::AfterInput, Response::Early];

    pub fn name(self) -> &'static str {
        match self {
            Response::None => "none",
            Response::AfterInput => "after_input",
            Response::Early => "early",
        }
    }
}

/// What an experiment runner announces before a trial (`POST /api/devices/{name}/trial`):
/// the next frame's arm and the arm's numeric parameters, instead of the rotation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trial {
    pub arm: String,
    #[serde(default)]
    pub params: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub device: String,
    /// The device's frames are numbered from 0 (across restarts of the live agent).
    pub index: usize,
    pub arm: String,
    /// Epoch seconds (capture time in replay): `command_start`, and `response_start` (or,
    /// without a response, `command_end`).
    pub start: f64,
    pub end: f64,
    pub top_destination: Option<IpAddr>,
    /// Upload to the top destination: the frame's value.
    pub upload_bytes: u64,
    /// The top destination's name (SNI or DNS) when known.
    #[serde(default)]
    pub top_destination_name: Option<String>,
    /// The group (`--group`) that received the most upload, and how much.
    #[serde(default)]
    pub top_group: Option<String>,
    #[serde(default)]
    pub top_group_upload_bytes: u64,
    /// Events were dropped while it was open (see `Interaction::degraded`).
    #[serde(default)]
    pub degraded: bool,
    /// The announced arm's parameters (empty when arms rotate).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, f64>,
    /// Epoch seconds of the other markers within the trial.
    #[serde(default)]
    pub command_end: Option<f64>,
    #[serde(default)]
    pub response_start: Option<f64>,
    #[serde(default)]
    pub response_end: Option<f64>,
    #[serde(default)]
    pub response: Response,
    /// App data the device downloaded from `start` to the response's end (all
    /// destinations): the size of the answer.
    #[serde(default)]
    pub download_bytes: u64,
}

/// A frame being cut. Times in nanoseconds.
struct Open {
    start: u64,
    sums: DestSums,
    degraded: bool,
    trial: Option<Trial>,
    command_end: Option<u64>,
    response_start: Option<u64>,
    response_end: Option<u64>,
    download: u64,
}

/// Cuts one device's traffic into frames as events arrive, in time order. A frame opens at
/// `command_start`; its upload is summed until `response_start`, its download until
/// `response_end`. It closes once both `command_end` and `response_end` were seen (or at
/// the next `command_start`, or `timeout` after `command_end` or `response_start` with
/// nothing further, or at `finish`); a frame with neither `command_end` nor
/// `response_start` is never reported (the controller restarted it). Arms come from an
/// announced `Trial`, else rotate over `arms` by frame index ("all" when none are given).
pub struct FrameCutter {
    device: String,
    arms: Vec<String>,
    clock: Clock,
    next_index: usize,
    groups: Groups,
    timeout: u64,
    announced: Option<Trial>,
    open: Option<Open>,
    /// Closed frames, for the caller to take.
    pub done: Vec<Frame>,
}

impl FrameCutter {
    pub fn new(device: &str, arms: &[String], groups: &Groups, clock: Clock, next_index: usize, timeout: std::time::Duration) -> Self {
        FrameCutter {
            device: device.to_string(),
            arms: arms.to_vec(),
            clock,
            next_index,
            groups: groups.clone(),
            timeout: timeout.as_nanos() as u64,
            announced: None,
            open: None,
            done: Vec::new(),
        }
    }

    /// The next frame's arm and parameters.
    pub fn announce(&mut self, trial: Trial) {
        self.announced = Some(trial);
    }

    pub fn upload(&mut self, u: &Upload) {
        if let Some(o) = &mut self.open {
            if u.ts_ns >= o.start && o.response_start.is_none() {
                o.sums.add(u);
            }
        }
    }

    pub fn download(&mut self, ts_ns: u64, bytes: u64) {
        if let Some(o) = &mut self.open {
            if ts_ns >= o.start && o.response_end.is_none() {
                o.download += bytes;
            }
        }
    }

    /// Events were lost: the open frame, if any, is degraded.
    pub fn degrade(&mut self) {
        if let Some(o) = &mut self.open {
            o.degraded = true;
        }
    }

    pub fn marker(&mut self, ts_ns: u64, role: Role) {
        match role {
            Role::CommandStart => {
                self.close();
                let trial = self.announced.take();
                self.open = Some(Open { start: ts_ns, sums: DestSums::default(), degraded: false, trial, command_end: None, response_start: None, response_end: None, download: 0 });
            }
            Role::CommandEnd => {
                if let Some(o) = self.open.as_mut().filter(|o| o.command_end.is_none()) {
                    o.command_end = Some(ts_ns);
                }
            }
            Role::ResponseStart => {
                if let Some(o) = self.open.as_mut().filter(|o| o.response_start.is_none()) {
                    o.response_start = Some(ts_ns);
                }
            }
            Role::ResponseEnd => {
                if let Some(o) = self.open.as_mut().filter(|o| o.response_start.is_some() && o.response_end.is_none()) {
                    o.response_end = Some(ts_ns);
                }
            }
        }
        if self.open.as_ref().is_some_and(|o| o.command_end.is_some() && o.response_end.is_some()) {
            self.close();
        }
    }

    /// Advances time: a frame waiting longer than the timeout for a response (or for its
    /// end) closes.
    pub fn tick(&mut self, now_ns: u64) {
        let waiting_since = self.open.as_ref().and_then(|o| if o.response_end.is_some() { None } else { o.response_start.or(o.command_end) });
        if waiting_since.is_some_and(|t| now_ns.saturating_sub(t) > self.timeout) {
            self.close();
        }
    }

    /// Closes the open frame, if it is one (end of a replay, or shutdown).
    pub fn finish(&mut self) {
        self.close();
    }

    fn close(&mut self) {
        let Some(o) = self.open.take() else { return };
        let Some(end) = o.response_start.or(o.command_end) else { return };
        let index = self.next_index;
        self.next_index += 1;
        let top = o.sums.top(&self.groups);
        let (arm, params) = match o.trial {
            Some(t) => (t.arm, t.params),
            None if self.arms.is_empty() => ("all".to_string(), BTreeMap::new()),
            None => (self.arms[index % self.arms.len()].clone(), BTreeMap::new()),
        };
        let response = match (o.response_start, o.command_end) {
            (None, _) => Response::None,
            (Some(r), Some(c)) if r < c => Response::Early,
            (Some(_), _) => Response::AfterInput,
        };
        let secs = |t: Option<u64>| t.map(|t| self.clock.secs(t));
        self.done.push(Frame {
            device: self.device.clone(),
            index,
            arm,
            start: self.clock.secs(o.start),
            end: self.clock.secs(end),
            top_destination: top.destination,
            upload_bytes: top.destination_bytes,
            top_destination_name: None,
            top_group: top.group,
            top_group_upload_bytes: top.group_bytes,
            degraded: o.degraded,
            params,
            command_end: secs(o.command_end),
            response_start: secs(o.response_start),
            response_end: secs(o.response_end),
            response,
            download_bytes: o.download,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn frames_take_the_top_destination_and_rotate_arms() {
        let s = 1_000_000_000u64;
        // 10.0.0.1 and 10.0.0.2 are named in the group "alexa"; 10.0.0.3 in none.
        let up = |t: u64, d: &str, b: u64| Upload { ts_ns: t, dest: ip(d), bytes: b, group: if d == "10.0.0.3" { NO_GROUP } else { 0 } };
        let groups = Groups::new(vec![("amazon.com".into(), "alexa".into())]);
        let mut c = FrameCutter::new("echo", &["I_1".into(), "I_2".into()], &groups, Clock::Capture, 0, std::time::Duration::from_secs(30));
        let marker = |c: &mut FrameCutter, t: u64, r: Role| c.marker(t, r);
        c.upload(&up(s / 2, "10.0.0.1", 999)); // before the frame
        marker(&mut c, s, Role::CommandStart);
        c.upload(&up(s, "10.0.0.1", 30_000));
        marker(&mut c, 2 * s, Role::CommandEnd);
        c.upload(&up(3 * s, "10.0.0.1", 15_000));
        c.upload(&up(3 * s, "10.0.0.2", 40_000));
        marker(&mut c, 4 * s, Role::ResponseStart);
        c.upload(&up(4 * s, "10.0.0.1", 5)); // at response_start: after it
        marker(&mut c, 5 * s, Role::ResponseEnd);
        marker(&mut c, 10 * s, Role::CommandStart);
        c.upload(&up(11 * s, "10.0.0.3", 100));
        c.upload(&up(12 * s, "10.0.0.1", 44_900));
        marker(&mut c, 13 * s, Role::ResponseStart);
        marker(&mut c, 14 * s, Role::ResponseStart); // no command_start: no frame
        marker(&mut c, 20 * s, Role::CommandStart); // closes the second; restarted: no frame
        marker(&mut c, 21 * s, Role::CommandStart);
        c.finish();
        let f = &c.done;
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].arm.as_str(), f[0].top_destination, f[0].upload_bytes), ("I_1", Some(ip("10.0.0.1")), 45_000));
        assert_eq!((f[0].index, f[0].start, f[0].end), (0, 1.0, 4.0));
        assert_eq!((f[0].top_group.as_deref(), f[0].top_group_upload_bytes), (Some("alexa"), 85_000));
        assert_eq!((f[1].arm.as_str(), f[1].top_destination, f[1].upload_bytes), ("I_2", Some(ip("10.0.0.1")), 44_900));
        assert_eq!((f[1].top_group.as_deref(), f[1].top_group_upload_bytes), (Some("alexa"), 44_900));
    }

    #[test]
    fn announced_trials_responses_and_timeouts() {
        let s = 1_000_000_000u64;
        let up = |t: u64, b: u64| Upload { ts_ns: t, dest: ip("10.0.0.1"), bytes: b, group: NO_GROUP };
        let mut c = FrameCutter::new("echo", &["rotated".into()], &Groups::default(), Clock::Capture, 7, std::time::Duration::from_secs(5));
        let trial = |arm: &str, gap: f64| Trial { arm: arm.into(), params: BTreeMap::from([("gap_s".to_string(), gap)]) };
        // Early: the answer starts before the audio ends; upload after it is not the frame's,
        // download until response_end is.
        c.announce(trial("gap-0.8", 0.8));
        c.marker(s, Role::CommandStart);
        c.upload(&up(s, 40_000));
        c.download(2 * s, 15_000);
        c.marker(2 * s, Role::ResponseStart);
        c.upload(&up(2 * s, 99));
        c.download(3 * s, 5_034);
        c.marker(3 * s, Role::ResponseEnd);
        assert!(c.done.is_empty(), "waits for command_end");
        c.marker(4 * s, Role::CommandEnd);
        c.download(5 * s, 1); // after the frame
        // No response: closes `timeout` after command_end.
        c.announce(trial("gap-0.1", 0.1));
        c.marker(10 * s, Role::CommandStart);
        c.upload(&up(11 * s, 90_000));
        c.marker(13 * s, Role::CommandEnd);
        c.tick(18 * s);
        assert_eq!(c.done.len(), 1, "not yet: {:?}", c.done);
        c.tick(18 * s + 1);
        // After the input, unannounced: the rotation; closed by the next command_start.
        c.marker(20 * s, Role::CommandStart);
        c.marker(21 * s, Role::CommandEnd);
        c.marker(22 * s, Role::ResponseStart);
        c.download(22 * s, 6_017);
        c.marker(30 * s, Role::CommandStart);
        let got: Vec<_> = c.done.iter().map(|f| (f.index, f.arm.as_str(), f.response, f.upload_bytes, f.download_bytes, f.end, f.params.get("gap_s").copied())).collect();
        assert_eq!(
            got,
            [
                (7, "gap-0.8", Response::Early, 40_000, 20_034, 2.0, Some(0.8)),
                (8, "gap-0.1", Response::None, 90_000, 0, 13.0, Some(0.1)),
                (9, "rotated", Response::AfterInput, 0, 6_017, 22.0, None),
            ]
        );
        assert_eq!((c.done[0].command_end, c.done[0].response_start, c.done[0].response_end), (Some(4.0), Some(2.0), Some(3.0)));
        assert_eq!((c.done[2].response_end, c.done[1].response_start), (None, None));
    }
}
