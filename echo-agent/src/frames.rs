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

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub device: String,
    /// The device's frames are numbered from 0 (across restarts of the live agent).
    pub index: usize,
    pub arm: String,
    /// Epoch seconds (capture time in replay).
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
}

/// Cuts one device's uploads into frames as events arrive, in time order: a frame opens at
/// `command_start` (a later one restarts it) and closes at the next `response_start`; one
/// with no `response_start` is never reported. Arms rotate over `arms` by frame index
/// ("all" when none are given).
pub struct FrameCutter {
    device: String,
    arms: Vec<String>,
    clock: Clock,
    next_index: usize,
    groups: Groups,
    /// Start, sums, degraded.
    open: Option<(u64, DestSums, bool)>,
}

impl FrameCutter {
    pub fn new(device: &str, arms: &[String], groups: &Groups, clock: Clock, next_index: usize) -> Self {
        FrameCutter { device: device.to_string(), arms: arms.to_vec(), clock, next_index, groups: groups.clone(), open: None }
    }

    pub fn upload(&mut self, u: &Upload) {
        if let Some((start, sums, _)) = &mut self.open {
            if u.ts_ns >= *start {
                sums.add(u);
            }
        }
    }

    /// Events were lost: the open frame, if any, is degraded.
    pub fn degrade(&mut self) {
        if let Some((_, _, d)) = &mut self.open {
            *d = true;
        }
    }

    pub fn marker(&mut self, ts_ns: u64, role: Role) -> Option<Frame> {
        match role {
            Role::CommandStart => self.open = Some((ts_ns, DestSums::default(), false)),
            Role::ResponseStart => {
                let (start, sums, degraded) = self.open.take()?;
                let index = self.next_index;
                self.next_index += 1;
                let top = sums.top(&self.groups);
                let arm = if self.arms.is_empty() { "all".to_string() } else { self.arms[index % self.arms.len()].clone() };
                return Some(Frame {
                    device: self.device.clone(),
                    index,
                    arm,
                    start: self.clock.secs(start),
                    end: self.clock.secs(ts_ns),
                    top_destination: top.destination,
                    upload_bytes: top.destination_bytes,
                    top_destination_name: None,
                    top_group: top.group,
                    top_group_upload_bytes: top.group_bytes,
                    degraded,
                });
            }
            Role::CommandEnd | Role::ResponseEnd => {}
        }
        None
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmStats {
    pub arm: String,
    pub n: usize,
    pub kept: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1) of the kept values; 0 with fewer than two.
    pub sd: f64,
    pub median: f64,
}

/// Per arm, in order of first appearance: the IQR filter, then mean, SD and median.
pub fn arm_stats(frames: &[Frame]) -> Vec<ArmStats> {
    let mut arms: Vec<(String, Vec<f64>)> = Vec::new();
    for f in frames {
        match arms.iter_mut().find(|(a, _)| *a == f.arm) {
            Some((_, v)) => v.push(f.upload_bytes as f64),
            None => arms.push((f.arm.clone(), vec![f.upload_bytes as f64])),
        }
    }
    arms.into_iter()
        .map(|(arm, values)| {
            let kept = iqr_filter(&values);
            ArmStats { arm, n: values.len(), kept: kept.len(), mean: mean(&kept), sd: sd(&kept), median: quantile(&kept, 0.5) }
        })
        .collect()
}

/// Keeps x when Q1 − 1.5·IQR < x < Q3 + 1.5·IQR (strict, as the paper states). Values inside
/// the box (Q1 ≤ x ≤ Q3) are never outliers: that matters only when IQR = 0 (one value, or
/// identical values), where the strict fences alone would drop everything.
pub fn iqr_filter(values: &[f64]) -> Vec<f64> {
    let q1 = quantile(values, 0.25);
    let q3 = quantile(values, 0.75);
    let iqr = q3 - q1;
    values.iter().copied().filter(|&x| (q1 - 1.5 * iqr < x && x < q3 + 1.5 * iqr) || (q1 <= x && x <= q3)).collect()
}

/// The inclusive quantile (Excel's QUARTILE.INC, numpy's default "linear"): position
/// p·(n − 1) in the sorted values, interpolated. NaN when empty.
pub fn quantile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = p * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

pub fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn quartiles_are_inclusive() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(quantile(&v, 0.25), 2.75);
        assert_eq!(quantile(&v, 0.5), 4.5);
        assert_eq!(quantile(&v, 0.75), 6.25);
    }

    #[test]
    fn a_zero_iqr_keeps_the_box() {
        assert_eq!(iqr_filter(&[45_000.0]), vec![45_000.0]);
        assert_eq!(iqr_filter(&[5.0, 5.0, 5.0, 5.0, 100.0]), vec![5.0; 4]);
    }

    #[test]
    fn iqr_drops_the_outlier_only() {
        // Sorted: 44,000 44,500 45,000 45,500 46,000 48,000 90,000. Q1 at position 1.5 =
        // 44,750; Q3 at 4.5 = 47,000; IQR 2,250: keep 41,375 < x < 50,375.
        let v = [44_000.0, 45_000.0, 46_000.0, 44_500.0, 45_500.0, 90_000.0, 48_000.0];
        assert_eq!((quantile(&v, 0.25), quantile(&v, 0.75)), (44_750.0, 47_000.0));
        assert_eq!(iqr_filter(&v), vec![44_000.0, 45_000.0, 46_000.0, 44_500.0, 45_500.0, 48_000.0]);
    }

    #[test]
    fn frames_take_the_top_destination_and_rotate_arms() {
        let s = 1_000_000_000u64;
        // 10.0.0.1 and 10.0.0.2 are named in the group "alexa"; 10.0.0.3 in none.
        let up = |t: u64, d: &str, b: u64| Upload { ts_ns: t, dest: ip(d), bytes: b, group: if d == "10.0.0.3" { NO_GROUP } else { 0 } };
        let groups = Groups::new(vec![("amazon.com".into(), "alexa".into())]);
        let mut c = FrameCutter::new("echo", &["I_1".into(), "I_2".into()], &groups, Clock::Capture, 0);
        let mut f = Vec::new();
        let mut marker = |c: &mut FrameCutter, t: u64, r: Role| f.extend(c.marker(t, r));
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
        marker(&mut c, 20 * s, Role::CommandStart); // never answered: no frame
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].arm.as_str(), f[0].top_destination, f[0].upload_bytes), ("I_1", Some(ip("10.0.0.1")), 45_000));
        assert_eq!((f[0].index, f[0].start, f[0].end), (0, 1.0, 4.0));
        assert_eq!((f[0].top_group.as_deref(), f[0].top_group_upload_bytes), (Some("alexa"), 85_000));
        assert_eq!((f[1].arm.as_str(), f[1].top_destination, f[1].upload_bytes), ("I_2", Some(ip("10.0.0.1")), 44_900));
        assert_eq!((f[1].top_group.as_deref(), f[1].top_group_upload_bytes), (Some("alexa"), 44_900));
    }

    #[test]
    fn arm_summary() {
        let mk = |arm: &str, b: u64| Frame { device: String::new(), index: 0, arm: arm.into(), start: 0.0, end: 0.0, top_destination: None, upload_bytes: b, ..Frame::default() };
        let f: Vec<Frame> = [40_000, 42_000, 44_000, 46_000, 200_000].iter().map(|&b| mk("a", b)).collect();
        let s = &arm_stats(&f)[0];
        assert_eq!((s.n, s.kept), (5, 4));
        assert_eq!(s.mean, 43_000.0);
        assert_eq!(s.median, 43_000.0);
        assert!((s.sd - 2_581.988_897_471_611).abs() < 1e-6, "{}", s.sd);
    }
}
