//! Prometheus export: a custom `Collector` that reads the programs' maps at scrape time and
//! sums their per-CPU copies. Nothing polls in between, so the numbers never drift from the
//! kernel's.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use echo_common::{
    CLASS_NAMES, DIR_DOWNLOAD, DIR_UPLOAD, MAP_EVENT_DROPS, MAP_MARKER_PINGS, MAP_SNIPPET_DROPS,
};
use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    GaugeVec, Opts,
};

use crate::{
    counters::{self, per_cpu_sum, Snapshot},
    loader::MapSet,
    markers::MarkerSpec,
    replay::key_ip,
};

/// Label value of the destinations beyond `--max-destinations`.
pub const OTHER: &str = "other";

/// Attachment state, written by the main loop, read at scrape time.
pub struct Health {
    pub iface: String,
    pub xdp_attached: AtomicBool,
    pub tc_attached: AtomicBool,
    pub xdp_mode: Mutex<&'static str>,
    /// Kernel program ids, for run-time statistics.
    pub program_ids: Vec<(&'static str, u32)>,
    /// This agent turned the kernel's BPF run-time statistics on.
    pub bpf_stats: bool,
}

impl Health {
    pub fn new(iface: &str, program_ids: Vec<(&'static str, u32)>, bpf_stats: bool) -> Self {
        Health {
            iface: iface.to_string(),
            xdp_attached: AtomicBool::new(false),
            tc_attached: AtomicBool::new(false),
            xdp_mode: Mutex::new("none"),
            program_ids,
            bpf_stats,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
}

/// Every metric this collector exports: name, help, kind, labels.
const METRICS: &[(&str, &str, Kind, &[&str])] = &[
    ("echo_upload_tls_bytes_total", "TLS application-data payload bytes uploaded by the device (record headers excluded).", Kind::Counter, &["device", "destination"]),
    ("echo_download_tls_bytes_total", "TLS application-data payload bytes downloaded by the device (record headers excluded).", Kind::Counter, &["device", "destination"]),
    ("echo_upload_tcp_payload_bytes_total", "TCP payload bytes uploaded by the device, retransmissions included.", Kind::Counter, &["device"]),
    ("echo_upload_packets_total", "IP packets uploaded by the device.", Kind::Counter, &["device"]),
    ("echo_handshake_bytes_total", "TLS handshake record payload bytes.", Kind::Counter, &["device", "direction"]),
    ("echo_retransmit_bytes_total", "TCP payload bytes seen before (not counted twice).", Kind::Counter, &["device", "direction"]),
    ("echo_unsynced_bytes_total", "TCP payload bytes of TLS flows whose record boundaries were not known.", Kind::Counter, &["device", "direction"]),
    ("echo_packets_total", "Packets by class.", Kind::Counter, &["device", "direction", "class"]),
    ("echo_marker_pings_total", "Echo requests to marker addresses.", Kind::Counter, &["role"]),
    ("echo_xdp_attached", "1 when the upload program is attached: XDP in mode driver or skb, or at TC ingress (mode tc-ingress).", Kind::Gauge, &["iface", "mode"]),
    ("echo_tc_attached", "1 when the TC egress (download) program is attached.", Kind::Gauge, &["iface"]),
    ("echo_map_entries", "Live entries of the programs' LRU maps.", Kind::Gauge, &["map"]),
    ("echo_map_evictions_total", "Entries pushed out of the programs' LRU maps.", Kind::Counter, &["map"]),
    ("echo_events_dropped_total", "Events the ring buffer had no room for (counters stay exact).", Kind::Counter, &[]),
    ("echo_unfolded_cpus", "CPUs whose pending destination counts this scrape could not fold in: their latest counts wait for that CPU's next fold.", Kind::Gauge, &[]),
    ("echo_snippets_dropped_total", "ClientHello and DNS snippets the ring buffer had no room for (names may be missing).", Kind::Counter, &[]),
    ("echo_bpf_run_seconds_total", "Time the kernel spent in the program (kernel BPF statistics).", Kind::Counter, &["program"]),
    ("echo_bpf_runs_total", "Runs of the program (kernel BPF statistics).", Kind::Counter, &["program"]),
    ("echo_build_info", "The agent's version.", Kind::Gauge, &["version"]),
];

/// Reads the maps at scrape time.
pub struct MapCollector {
    maps: Arc<MapSet>,
    /// (device index, label), in flag order.
    devices: Vec<(u32, String)>,
    markers: Vec<MarkerSpec>,
    health: Arc<Health>,
    max_destinations: usize,
    /// Destinations exported by name, per device. Once named a destination stays named, so
    /// its counter never moves into "other" and back (which would look like a reset).
    named: Mutex<HashMap<u32, BTreeSet<IpAddr>>>,
    /// Live flow-table entries, counted by a thread of its own every `FLOW_COUNT_EVERY`.
    flow_entries: Arc<AtomicU64>,
    /// Flow evictions last exported: insertions minus a count taken up to
    /// `FLOW_COUNT_EVERY` earlier can dip, and a counter must not.
    flow_evictions: AtomicU64,
    descs: Vec<Desc>,
}

/// How often the flow table's entries are counted. Walking a full table (65,536 keys, one
/// syscall each) takes ~70 ms, which would make every scrape of a flooded agent that slow;
/// so `echo_map_entries{map="flows"}` and the flow evictions lag by up to this much.
pub const FLOW_COUNT_EVERY: Duration = Duration::from_secs(10);

impl MapCollector {
    pub fn new(maps: Arc<MapSet>, devices: Vec<(u32, String)>, markers: Vec<MarkerSpec>, health: Arc<Health>, max_destinations: usize) -> Self {
        let descs = METRICS.iter().flat_map(|m| vec_for(m).desc().into_iter().cloned().collect::<Vec<_>>()).collect();
        let flow_entries = Arc::new(AtomicU64::new(counters::count_flows(&*maps).unwrap_or(0)));
        let (counted, from) = (flow_entries.clone(), maps.clone());
        let _ = std::thread::Builder::new().name("flow-count".into()).spawn(move || loop {
            std::thread::sleep(FLOW_COUNT_EVERY);
            if let Ok(n) = counters::count_flows(&*from) {
                counted.store(n, Ordering::Relaxed);
            }
        });
        MapCollector {
            maps,
            devices,
            markers,
            health,
            max_destinations,
            named: Mutex::new(HashMap::new()),
            flow_entries,
            flow_evictions: AtomicU64::new(0),
            descs,
        }
    }
}

fn vec_for(m: &(&str, &str, Kind, &[&str])) -> GaugeVec {
    // Counters are built as gauge vectors and typed COUNTER on output: their values come
    // from the kernel as totals, to be set, not incremented.
    GaugeVec::new(Opts::new(m.0, m.1), m.3).expect("valid metric definition")
}

/// Collects rows per metric, then turns them into families.
#[derive(Default)]
struct Rows(BTreeMap<&'static str, Vec<(Vec<String>, f64)>>);

impl Rows {
    fn add(&mut self, name: &'static str, labels: &[&str], v: f64) {
        self.0.entry(name).or_default().push((labels.iter().map(|s| s.to_string()).collect(), v));
    }

    fn families(self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        for m in METRICS {
            let Some(rows) = self.0.get(m.0) else { continue };
            let v = vec_for(m);
            for (labels, value) in rows {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                v.with_label_values(&labels).add(*value);
            }
            for mut f in v.collect() {
                if m.2 == Kind::Counter {
                    f.set_field_type(prometheus::proto::MetricType::COUNTER);
                    for metric in f.mut_metric() {
                        let mut c = prometheus::proto::Counter::default();
                        c.set_value(metric.get_gauge().get_value());
                        metric.set_counter(c);
                    }
                }
                out.push(f);
            }
        }
        out
    }
}

fn dir_name(dir: u8) -> &'static str {
    if dir == DIR_UPLOAD { "upload" } else { "download" }
}

fn tls_metric(dir: u8) -> &'static str {
    if dir == DIR_UPLOAD { "echo_upload_tls_bytes_total" } else { "echo_download_tls_bytes_total" }
}

impl MapCollector {
    fn device_rows(&self, snap: &Snapshot, rows: &mut Rows) {
        let mut named = self.named.lock().expect("not poisoned");
        for (index, label) in &self.devices {
            // App-data bytes per (direction, address), all ports and protocols together.
            let mut by_ip: BTreeMap<(u8, IpAddr), u64> = BTreeMap::new();
            let mut per_dir = [[0u64; 3]; 2];
            let (mut tcp_payload, mut packets) = (0u64, 0u64);
            for (k, s) in snap.dests.iter().filter(|(k, _)| k.device as u32 == *index) {
                *by_ip.entry((k.direction, key_ip(k))).or_default() += s.tls_app_bytes;
                let d = &mut per_dir[(k.direction & 1) as usize];
                d[0] += s.handshake_bytes;
                d[1] += s.retransmit_bytes;
                d[2] += s.unsynced_bytes;
                if k.direction == DIR_UPLOAD {
                    tcp_payload += s.tcp_payload_bytes;
                    packets += s.packets;
                }
            }
            let set = named.entry(*index).or_default();
            let mut both_dirs: BTreeMap<IpAddr, u64> = BTreeMap::new();
            for ((_, ip), b) in &by_ip {
                *both_dirs.entry(*ip).or_default() += b;
            }
            let mut ranked: Vec<(u64, IpAddr)> = both_dirs.into_iter().map(|(ip, b)| (b, ip)).collect();
            ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            for (_, ip) in ranked {
                if set.len() >= self.max_destinations {
                    break;
                }
                set.insert(ip);
            }
            let mut other = [0u64; 2];
            for ((dir, ip), b) in &by_ip {
                if set.contains(ip) {
                    rows.add(tls_metric(*dir), &[label, &ip.to_string()], *b as f64);
                } else {
                    other[(*dir & 1) as usize] += b;
                }
            }
            for dir in [DIR_UPLOAD, DIR_DOWNLOAD] {
                if other[dir as usize] > 0 {
                    rows.add(tls_metric(dir), &[label, OTHER], other[dir as usize] as f64);
                }
                let d = per_dir[dir as usize];
                rows.add("echo_handshake_bytes_total", &[label, dir_name(dir)], d[0] as f64);
                rows.add("echo_retransmit_bytes_total", &[label, dir_name(dir)], d[1] as f64);
                rows.add("echo_unsynced_bytes_total", &[label, dir_name(dir)], d[2] as f64);
                for (class, n) in CLASS_NAMES.iter().zip(snap.classes_of(*index, dir)) {
                    rows.add("echo_packets_total", &[label, dir_name(dir), class], n as f64);
                }
            }
            rows.add("echo_upload_tcp_payload_bytes_total", &[label], tcp_payload as f64);
            rows.add("echo_upload_packets_total", &[label], packets as f64);
        }
    }

    fn health_rows(&self, snap: &Snapshot, rows: &mut Rows) {
        let h = &self.health;
        let mode = *h.xdp_mode.lock().expect("not poisoned");
        rows.add("echo_xdp_attached", &[&h.iface, mode], h.xdp_attached.load(Ordering::Relaxed) as u8 as f64);
        rows.add("echo_tc_attached", &[&h.iface], h.tc_attached.load(Ordering::Relaxed) as u8 as f64);
        rows.add("echo_map_entries", &["flows"], snap.flow_entries as f64);
        rows.add("echo_map_entries", &["destinations"], snap.dests.len() as f64);
        let flow_evictions = self.flow_evictions.fetch_max(snap.flow_evictions(), Ordering::Relaxed).max(snap.flow_evictions());
        rows.add("echo_map_evictions_total", &["flows"], flow_evictions as f64);
        rows.add("echo_map_evictions_total", &["destinations"], snap.dest_evictions() as f64);
        rows.add("echo_events_dropped_total", &[], per_cpu_sum(&*self.maps, MAP_EVENT_DROPS, 0).unwrap_or(0) as f64);
        rows.add("echo_unfolded_cpus", &[], snap.unfolded_cpus as f64);
        rows.add("echo_snippets_dropped_total", &[], per_cpu_sum(&*self.maps, MAP_SNIPPET_DROPS, 0).unwrap_or(0) as f64);
        let mut pings: BTreeMap<&str, u64> = BTreeMap::new();
        for (slot, m) in self.markers.iter().enumerate() {
            *pings.entry(m.role.name()).or_default() += per_cpu_sum(&*self.maps, MAP_MARKER_PINGS, slot as u32).unwrap_or(0);
        }
        for (role, n) in pings {
            rows.add("echo_marker_pings_total", &[role], n as f64);
        }
        if h.bpf_stats || sysctl_bpf_stats() {
            for info in aya::programs::loaded_programs().flatten() {
                if let Some((name, _)) = h.program_ids.iter().find(|(_, id)| *id == info.id()) {
                    rows.add("echo_bpf_run_seconds_total", &[name], info.run_time().as_secs_f64());
                    rows.add("echo_bpf_runs_total", &[name], info.run_count() as f64);
                }
            }
        }
        rows.add("echo_build_info", &[env!("CARGO_PKG_VERSION")], 1.0);
    }
}

/// The kernel keeps run-time statistics while the sysctl is on (or an `enable_stats` fd is
/// open, which the sysctl does not show).
fn sysctl_bpf_stats() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").map(|s| s.trim() != "0").unwrap_or(false)
}

impl Collector for MapCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut rows = Rows::default();
        match counters::read_with_flow_entries(&*self.maps, self.flow_entries.load(Ordering::Relaxed)) {
            Ok(snap) => {
                self.device_rows(&snap, &mut rows);
                self.health_rows(&snap, &mut rows);
            }
            Err(e) => eprintln!("echo-agent: reading maps at scrape time: {e}"),
        }
        rows.families()
    }
}
