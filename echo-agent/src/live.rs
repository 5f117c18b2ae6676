//! The live agent's answers: events from the programs go through an `analysis::Session`;
//! its results become metrics, lines of the interaction log, and the JSON API.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Result;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, GaugeVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use tiny_http::Method;

use crate::{
    activation::{Interaction, Reason, Unexpected},
    analysis::{Config, Record, Session},
    api::Api,
    clock::{monotonic_ns, Clock},
    counters,
    events::Item,
    frames::{Frame, Trial},
    stats::arm_stats,
    loader::MapSet,
    names::Source,
    replay::key_ip,
    store::{Loaded, Store},
};

/// Records of each kind kept in memory for the API by default (`--api-history`; the log on
/// disk keeps everything). A year of a busy household is ~40,000 interactions, ~1 KiB each
/// with its frame.
pub const DEFAULT_HISTORY: usize = 100_000;

/// Time is advanced to this long before "now", so events already stamped but not yet read
/// (they wait up to `events::POLL_INTERVAL` in the ring buffer) are not judged late (a window
/// closed just before its last upload arrived).
const TICK_LAG: Duration = Duration::from_millis(250);

/// Upload per interaction or frame: the published commands upload ~45 kB.
const UPLOAD_BUCKETS: &[f64] = &[1e3, 5e3, 10e3, 20e3, 30e3, 40e3, 50e3, 60e3, 80e3, 100e3, 200e3, 500e3, 1e6];
const DURATION_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0];

struct Metrics {
    interactions: IntCounterVec,
    interaction_upload: HistogramVec,
    interaction_duration: HistogramVec,
    last_upload: GaugeVec,
    last_end: GaugeVec,
    active: IntGaugeVec,
    muted: IntGaugeVec,
    frames: IntCounterVec,
    frame_upload: HistogramVec,
    marker_last: GaugeVec,
    background: IntCounterVec,
    unexpected: IntCounterVec,
    destination_info: IntGaugeVec,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self> {
        let dev = &["device"];
        let m = Metrics {
            interactions: IntCounterVec::new(Opts::new("echo_interactions_total", "Voice interactions (activation windows) that ended."), dev)?,
            interaction_upload: HistogramVec::new(
                HistogramOpts::new("echo_interaction_upload_bytes", "TLS app-data bytes uploaded per interaction.").buckets(UPLOAD_BUCKETS.to_vec()),
                dev,
            )?,
            interaction_duration: HistogramVec::new(
                HistogramOpts::new("echo_interaction_duration_seconds", "From the first to the last upload of an interaction.").buckets(DURATION_BUCKETS.to_vec()),
                dev,
            )?,
            last_upload: GaugeVec::new(Opts::new("echo_last_interaction_upload_bytes", "TLS app-data bytes uploaded by the latest interaction."), dev)?,
            last_end: GaugeVec::new(Opts::new("echo_last_interaction_end_timestamp_seconds", "When the latest interaction's last upload happened."), dev)?,
            active: IntGaugeVec::new(Opts::new("echo_activation_active", "1 while an activation window is open."), dev)?,
            muted: IntGaugeVec::new(Opts::new("echo_device_muted", "1 while the microphone is reported muted (POST /api/devices/DEVICE/muted)."), dev)?,
            frames: IntCounterVec::new(Opts::new("echo_frames_total", "Marker-framed trials (command_start to response_start)."), &["arm"])?,
            frame_upload: HistogramVec::new(
                HistogramOpts::new("echo_frame_upload_bytes", "Upload to the frame's top destination.").buckets(UPLOAD_BUCKETS.to_vec()),
                &["arm"],
            )?,
            marker_last: GaugeVec::new(Opts::new("echo_marker_last_timestamp_seconds", "When the latest marker ping of the role was seen."), &["role"])?,
            background: IntCounterVec::new(
                Opts::new("echo_background_upload_bytes_total", "App-data upload outside interactions that fits the heartbeat pattern."),
                dev,
            )?,
            unexpected: IntCounterVec::new(
                Opts::new("echo_unexpected_upload_bytes_total", "App-data upload above the heartbeat pattern while muted or outside any interaction."),
                &["device", "reason"],
            )?,
            destination_info: IntGaugeVec::new(
                Opts::new(
                    "echo_destination_info",
                    "1 for each destination address with a known name (source: sni or dns); join on device and destination.",
                ),
                &["device", "destination", "name", "source"],
            )?,
        };
        registry.register(Box::new(m.interactions.clone()))?;
        registry.register(Box::new(m.interaction_upload.clone()))?;
        registry.register(Box::new(m.interaction_duration.clone()))?;
        registry.register(Box::new(m.last_upload.clone()))?;
        registry.register(Box::new(m.last_end.clone()))?;
        registry.register(Box::new(m.active.clone()))?;
        registry.register(Box::new(m.muted.clone()))?;
        registry.register(Box::new(m.frames.clone()))?;
        registry.register(Box::new(m.frame_upload.clone()))?;
        registry.register(Box::new(m.marker_last.clone()))?;
        registry.register(Box::new(m.background.clone()))?;
        registry.register(Box::new(m.unexpected.clone()))?;
        registry.register(Box::new(m.destination_info.clone()))?;
        Ok(m)
    }

    fn interaction(&self, i: &Interaction) {
        let d = &[i.device.as_str()];
        self.interactions.with_label_values(d).inc();
        self.interaction_upload.with_label_values(d).observe(i.upload_bytes as f64);
        self.interaction_duration.with_label_values(d).observe(i.duration);
        self.last(i);
    }

    fn last(&self, i: &Interaction) {
        let d = &[i.device.as_str()];
        self.last_upload.with_label_values(d).set(i.upload_bytes as f64);
        self.last_end.with_label_values(d).set(i.end);
    }

    fn frame(&self, f: &Frame) {
        self.frames.with_label_values(&[&f.arm]).inc();
        self.frame_upload.with_label_values(&[&f.arm]).observe(f.upload_bytes as f64);
    }
}

/// What the API serves: the latest `max` records of each kind.
struct History {
    max: usize,
    interactions: VecDeque<Interaction>,
    frames: VecDeque<Frame>,
    unexpected: VecDeque<Unexpected>,
}

fn push_bounded<T>(q: &mut VecDeque<T>, x: T, max: usize) {
    if q.len() >= max {
        q.pop_front();
    }
    if max > 0 {
        q.push_back(x);
    }
}

impl History {
    fn new(max: usize) -> Self {
        History { max, interactions: VecDeque::new(), frames: VecDeque::new(), unexpected: VecDeque::new() }
    }

    fn add(&mut self, r: &Record) {
        match r {
            Record::Interaction(x) => push_bounded(&mut self.interactions, x.clone(), self.max),
            Record::Frame(x) => push_bounded(&mut self.frames, x.clone(), self.max),
            Record::Unexpected(x) => push_bounded(&mut self.unexpected, x.clone(), self.max),
            Record::Muted { .. } => {}
        }
    }
}

struct State {
    session: Session,
    store: Store,
    history: History,
    store_failed: bool,
    /// `NameTable::version` last exported as `echo_destination_info`.
    names_exported: u64,
}

pub struct Live {
    state: Mutex<State>,
    metrics: Metrics,
    /// The programs' counter maps, for `/api/destinations` (absent in tests of the API alone).
    counters: Option<Arc<MapSet>>,
}

impl Live {
    /// `devices`: (index in the programs, name). `loaded` is the log as it was at start;
    /// `history` records of each kind are kept for the API.
    pub fn new(
        registry: &Registry,
        config: Config,
        devices: &[(u32, String)],
        (store, loaded): (Store, Loaded),
        history: usize,
        counters: Option<Arc<MapSet>>,
    ) -> Result<Self> {
        let metrics = Metrics::new(registry)?;
        let mut history = History::new(history);
        loaded.records.iter().for_each(|r| history.add(r));
        let frames_of = |name: &str| loaded.records.iter().filter(|r| matches!(r, Record::Frame(f) if f.device == name)).count();
        let names: Vec<(u8, String, usize)> = devices.iter().map(|(i, n)| (*i as u8, n.clone(), frames_of(n))).collect();
        let mut session = Session::new(config, Clock::Monotonic, &names);
        let now = monotonic_ns();
        for (_, name) in devices {
            // Every series exists from the start, at zero.
            let d = &[name.as_str()];
            metrics.interactions.with_label_values(d);
            metrics.background.with_label_values(d);
            metrics.active.with_label_values(d).set(0);
            for r in Reason::ALL {
                metrics.unexpected.with_label_values(&[name, r.name()]);
            }
            // The microphone state and the latest interaction outlive a restart.
            let muted = loaded.records.iter().rev().find_map(|r| match r {
                Record::Muted { device, muted, .. } if device == name => Some(*muted),
                _ => None,
            });
            if let Some(m) = muted {
                session.restore_muted(name, now, m);
            }
            metrics.muted.with_label_values(d).set(muted.unwrap_or(false) as i64);
            if let Some(i) = history.interactions.iter().rev().find(|i| &i.device == name) {
                metrics.last(i);
            }
        }
        let state = State { session, store, history, store_failed: false, names_exported: u64::MAX };
        Ok(Live { state: Mutex::new(state), metrics, counters })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The event reader's sink: an event or snippet, or `None` when the ring buffers have
    /// been drained.
    pub fn on_item(&self, item: Option<Item>) {
        let mut st = self.state();
        match item {
            Some(i) => st.session.item(&i),
            None => {
                if let Some(maps) = &self.counters {
                    if let Ok(dropped) = counters::per_cpu_sum(&**maps, echo_common::MAP_EVENT_DROPS, 0) {
                        st.session.events_dropped(dropped);
                    }
                }
                st.session.tick(monotonic_ns().saturating_sub(TICK_LAG.as_nanos() as u64));
                self.publish(&mut st);
            }
        }
    }

    /// Closes what is open (shutdown) and writes it out.
    pub fn finish(&self) {
        let mut st = self.state();
        st.session.finish();
        self.publish(&mut st);
    }

    fn publish(&self, st: &mut State) {
        let records = st.session.take();
        for r in &records {
            match r {
                Record::Interaction(i) => self.metrics.interaction(i),
                Record::Frame(f) => self.metrics.frame(f),
                _ => {}
            }
            st.history.add(r);
            if let Err(e) = st.store.append(r) {
                if !st.store_failed {
                    eprintln!("echo-agent: writing the interaction log: {e} (metrics and the API go on)");
                    st.store_failed = true;
                }
            }
        }
        for d in st.session.devices() {
            let name = &[d.name.as_str()];
            self.metrics.active.with_label_values(name).set(d.tracker.is_open() as i64);
            self.metrics.muted.with_label_values(name).set(d.tracker.muted() as i64);
            set_counter(&self.metrics.background, name, d.tracker.background_bytes);
            for r in Reason::ALL {
                set_counter(&self.metrics.unexpected, &[&d.name, r.name()], d.unexpected_bytes(r));
            }
        }
        for (role, t) in &st.session.marker_last {
            self.metrics.marker_last.with_label_values(&[role.name()]).set(*t);
        }
        if st.names_exported != st.session.names.version {
            st.names_exported = st.session.names.version;
            let info = &self.metrics.destination_info;
            info.reset();
            for (device, ip, e) in st.session.names.iter() {
                if let Some(d) = st.session.device(device) {
                    info.with_label_values(&[d.name.as_str(), &ip.to_string(), &e.name, e.source.name()]).set(1);
                }
            }
        }
    }

    /// The destination counters, summed over CPUs (none in tests of the API alone).
    fn dest_counters(&self) -> Result<Vec<(echo_common::DestKey, echo_common::DestStats)>, String> {
        let Some(maps) = &self.counters else { return Ok(Vec::new()) };
        counters::read_dests(&**maps).map_err(|e| format!("reading the counter maps: {e}"))
    }

    /// Every destination of every device with its name and TLS app-data bytes: addresses in
    /// the counter maps, and named addresses that carried no app data yet.
    fn destinations(&self, st: &State) -> Result<Vec<DestinationView>, String> {
        type Views = BTreeMap<(String, IpAddr), DestinationView>;
        fn view<'a>(out: &'a mut Views, device: &str, ip: IpAddr) -> &'a mut DestinationView {
            out.entry((device.to_string(), ip)).or_insert_with(|| DestinationView { device: device.to_string(), ip, name: None, source: None, upload_tls_bytes: 0, download_tls_bytes: 0 })
        }
        let mut out = Views::new();
        for (k, s) in &self.dest_counters()? {
            let Some(d) = st.session.device(k.device) else { continue };
            let v = view(&mut out, &d.name, key_ip(k));
            *(if k.direction == echo_common::DIR_UPLOAD { &mut v.upload_tls_bytes } else { &mut v.download_tls_bytes }) += s.tls_app_bytes;
        }
        for (device, ip, e) in st.session.names.iter() {
            let Some(d) = st.session.device(device) else { continue };
            let v = view(&mut out, &d.name, *ip);
            v.name = Some(e.name.clone());
            v.source = Some(e.source);
        }
        Ok(out.into_values().collect())
    }
}

/// Raises a counter to `total` (the session keeps totals; counters only go up).
fn set_counter(c: &IntCounterVec, labels: &[&str], total: u64) {
    let c = c.with_label_values(labels);
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

fn json(status: u16, v: &impl Serialize) -> Option<(u16, String)> {
    Some((status, serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))))
}

fn error(status: u16, msg: &str) -> Option<(u16, String)> {
    json(status, &serde_json::json!({ "error": msg }))
}

/// `since=EPOCH_SECONDS` from a query string; 0 when absent.
fn since(query: &str) -> Result<f64, String> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "since" {
            return v.parse::<f64>().ok().filter(|s| s.is_finite()).ok_or_else(|| format!("since must be epoch seconds, got {v:?}"));
        }
    }
    Ok(0.0)
}

#[derive(Serialize)]
struct DestinationView {
    device: String,
    ip: IpAddr,
    name: Option<String>,
    source: Option<Source>,
    upload_tls_bytes: u64,
    download_tls_bytes: u64,
}

#[derive(Serialize)]
struct DeviceView<'a> {
    device: &'a str,
    muted: bool,
    activation_active: bool,
    background_upload_bytes: u64,
    unexpected_upload_bytes: BTreeMap<&'static str, u64>,
    /// TLS app-data bytes, all destinations, from the counter maps at this request: an
    /// experiment runner watches the download grow to find the device's response.
    upload_tls_bytes: u64,
    download_tls_bytes: u64,
}

impl Api for Live {
    fn handle(&self, method: &Method, path: &str, query: &str, body: &str) -> Option<(u16, String)> {
        let since = match since(query) {
            Ok(s) => s,
            Err(e) => return error(400, &e),
        };
        // POST /api/devices/{device}/muted and /api/devices/{device}/trial
        let mute_device = path.strip_prefix("/api/devices/").and_then(|d| d.strip_suffix("/muted"));
        let trial_device = path.strip_prefix("/api/devices/").and_then(|d| d.strip_suffix("/trial"));
        let mut st = self.state();
        let h = &st.history;
        match (method, path) {
            (Method::Get, "/api/interactions") => json(200, &h.interactions.iter().filter(|x| x.end >= since).collect::<Vec<_>>()),
            (Method::Get, "/api/frames") => json(200, &h.frames.iter().filter(|x| x.end >= since).collect::<Vec<_>>()),
            (Method::Get, "/api/unexpected") => json(200, &h.unexpected.iter().filter(|x| x.end >= since).collect::<Vec<_>>()),
            (Method::Get, "/api/arms") => {
                let frames: Vec<Frame> = h.frames.iter().filter(|x| x.end >= since).cloned().collect();
                json(200, &arm_stats(&frames))
            }
            (Method::Get, "/api/markers") => {
                json(200, &st.session.marker_last.iter().map(|(r, t)| (r.name(), *t)).collect::<BTreeMap<_, _>>())
            }
            (Method::Get, "/api/devices") => {
                let dests = match self.dest_counters() {
                    Ok(s) => s,
                    Err(e) => return error(500, &e),
                };
                let tls = |index: u8, dir: u8| dests.iter().filter(|(k, _)| k.device == index && k.direction == dir).map(|(_, s)| s.tls_app_bytes).sum();
                let views: Vec<DeviceView> = st
                    .session
                    .indexed_devices()
                    .map(|(i, d)| DeviceView {
                        device: &d.name,
                        muted: d.tracker.muted(),
                        activation_active: d.tracker.is_open(),
                        background_upload_bytes: d.tracker.background_bytes,
                        unexpected_upload_bytes: Reason::ALL.iter().map(|&r| (r.name(), d.unexpected_bytes(r))).collect(),
                        upload_tls_bytes: tls(i, echo_common::DIR_UPLOAD),
                        download_tls_bytes: tls(i, echo_common::DIR_DOWNLOAD),
                    })
                    .collect();
                json(200, &views)
            }
            (Method::Post, _) if trial_device.is_some() => {
                let name = percent_decode(trial_device.unwrap_or_default());
                let trial: Trial = match serde_json::from_str(body) {
                    Ok(t) => t,
                    Err(e) => return error(400, &format!("body must be a trial, {{\"arm\": NAME, \"params\": {{NAME: NUMBER}}}}: {e}")),
                };
                if trial.arm.is_empty() || trial.params.values().any(|v| !v.is_finite()) {
                    return error(400, "a trial needs an arm name and finite parameters");
                }
                if !st.session.announce(&name, trial.clone()) {
                    return error(404, &format!("no device {name:?}"));
                }
                json(200, &trial)
            }
            (Method::Get, "/api/destinations") => match self.destinations(&st) {
                Ok(v) => json(200, &v),
                Err(e) => error(500, &e),
            },
            (Method::Post, _) if mute_device.is_some() => {
                let name = percent_decode(mute_device.unwrap_or_default());
                let name = name.as_str();
                let muted = match body.trim() {
                    "true" => true,
                    "false" => false,
                    other => return error(400, &format!("body must be true or false, got {other:?}")),
                };
                if !st.session.set_muted(name, monotonic_ns(), muted) {
                    return error(404, &format!("no device {name:?}"));
                }
                self.publish(&mut st);
                json(200, &serde_json::json!({ "device": name, "muted": muted }))
            }
            _ => None,
        }
    }

    fn endpoints(&self) -> Vec<&'static str> {
        vec!["/api/interactions", "/api/frames", "/api/arms", "/api/unexpected", "/api/markers", "/api/devices", "/api/destinations"]
    }
}

/// `%XX` escapes decoded (a MAC's colons may arrive as `%3A`); invalid escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_escapes() {
        assert_eq!(since(""), Ok(0.0));
        assert_eq!(since("x=1&since=1700000000.5"), Ok(1_700_000_000.5));
        assert!(since("since=yesterday").is_err());
        assert!(since("since=NaN").is_err());
        assert_eq!(percent_decode("02%3Aec%3a40"), "02:ec:40");
        assert_eq!(percent_decode("echo%zz%4"), "echo%zz%4");
    }

    #[test]
    fn history_keeps_the_latest() {
        let mut q = VecDeque::new();
        (0..5).for_each(|i| push_bounded(&mut q, i, 3));
        assert_eq!(q, [2, 3, 4]);
        let mut none = VecDeque::new();
        push_bounded(&mut none, 1, 0);
        assert!(none.is_empty());
    }

    /// `POST /api/devices/muted` (prefix and suffix overlap) once panicked slicing the path;
    /// found by the `api` fuzz target.
    #[test]
    fn overlapping_mute_path_is_a_404() {
        let dir = std::env::temp_dir().join(format!("echo-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (store, loaded) = Store::open(&dir).unwrap();
        let live = Live::new(&Registry::new(), Config::default(), &[(0, "echo".into())], (store, loaded), 10, None).unwrap();
        assert_eq!(live.handle(&Method::Post, "/api/devices/muted", "", "true"), None, "not an endpoint");
        for p in ["/api/devices//muted", "/api/devices/x/muted"] {
            assert_eq!(live.handle(&Method::Post, p, "", "true").map(|r| r.0), Some(404), "{p}");
        }
        assert_eq!(live.handle(&Method::Post, "/api/devices/echo/muted", "", "true").map(|r| r.0), Some(200));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `POST /api/devices/{device}/trial` names the next frame's arm and parameters.
    #[test]
    fn announced_trials_tag_frames() {
        use echo_common::{Event, EVENT_MARKER};
        let dir = std::env::temp_dir().join(format!("echo-live-trial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let markers = ["10.0.0.1=command_start", "10.0.0.2=command_end", "10.0.0.3=response_start", "10.0.0.4=response_end"];
        let config = Config { markers: markers.iter().map(|m| m.parse().unwrap()).collect(), ..Config::default() };
        let live = Live::new(&Registry::new(), config, &[(0, "echo".into())], Store::open(&dir).unwrap(), 10, None).unwrap();
        let post = |body: &str| live.handle(&Method::Post, "/api/devices/echo/trial", "", body).map(|r| r.0);
        assert_eq!(post(r#"{"arm": "gap-0.7", "params": {"gap_s": 0.7}}"#), Some(200));
        for bad in ["", "{}", r#"{"arm": ""}"#, r#"{"arm": "a", "params": {"x": "y"}}"#, r#"{"arm": "a", "other": 1}"#] {
            assert_eq!(post(bad), Some(400), "{bad}");
        }
        assert_eq!(live.handle(&Method::Post, "/api/devices/nobody/trial", "", r#"{"arm": "a"}"#).map(|r| r.0), Some(404));
        let now = monotonic_ns();
        for (slot, t) in [(0u8, now), (1, now + 1_000), (2, now + 2_000), (3, now + 3_000)] {
            live.on_item(Some(Item::Event(Event { ts_ns: t, kind: EVENT_MARKER, marker: slot, ..Event::default() })));
        }
        live.on_item(None);
        let (status, body) = live.handle(&Method::Get, "/api/frames", "", "").unwrap();
        let frames: Vec<Frame> = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 200);
        assert_eq!(frames.iter().map(|f| (f.arm.as_str(), f.params.get("gap_s").copied())).collect::<Vec<_>>(), [("gap-0.7", Some(0.7))]);
        let (_, devices) = live.handle(&Method::Get, "/api/devices", "", "").unwrap();
        assert!(devices.contains(r#""upload_tls_bytes":0,"download_tls_bytes":0"#), "{devices}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
