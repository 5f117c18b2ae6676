//! Floods through BPF_PROG_TEST_RUN: one monitored device opens 1,000,000 distinct flows to
//! 100,000 distinct destinations while one real flow uploads exactly 1,000,000 app-data
//! bytes. The maps stay within their configured sizes, every eviction is counted and
//! exported, the busy destination's counters stay exact, and a scrape of the result stays
//! small (the top `--max-destinations` by name, the rest summed in "other").
//!
//! And captures that outgrow replay's first, small tables (`replay::FIRST_SIZES`): replayed
//! again at full size, they report what full tables count, and what even those push out.

use std::{sync::Arc, time::Instant};

use echo_agent::{
    clock::Clock,
    counters,
    device::Mac,
    exporter::{Health, MapCollector},
    loader::Programs,
    replay::{self, FIRST_SIZES},
    testrun,
};
use echo_common::{
    DEST_STATS_ENTRIES, FLOW_TABLE_ENTRIES, MAP_CLASS_COUNTERS, MAP_DEST_STATS, MAP_EVENT_DROPS, MAP_FLOWS, MAP_INSERTS,
    MAP_MARKER_PINGS, MAP_SNIPPET_DROPS,
};
use prometheus::{Encoder as _, TextEncoder};
use xtask::packets::{pcap, tls_record, Ip, TcpFrame, ACK, DEVICE_MAC, PSH, SYN};

const FLOWS: u32 = 1_000_000;
const DESTINATIONS: u32 = 100_000;
/// The busy flow sends one 1,000-byte record every this many flood segments.
const EVERY: u32 = 1_000;
const RECORD: usize = 1_000;
/// Where the flood segments' destination address and source port sit in the frame
/// (Ethernet 14 + IPv4 20 bytes, no options).
const DST_OFF: usize = 14 + 16;
const SPORT_OFF: usize = 14 + 20;
/// `--max-destinations`' default.
const MAX_DESTINATIONS: usize = 50;

#[test]
fn a_million_flows_to_100k_destinations_stay_bounded_and_the_busy_one_exact() {
    let mut progs = Programs::load(&[], Clock::Monotonic).expect("load programs (root needed)");
    let devices = [Mac(DEVICE_MAC)];
    progs.set_devices(&devices).unwrap();
    let run = |progs: &Programs, f: &[u8]| assert_eq!(testrun::run_one(progs, f, 0, &devices).unwrap(), 2);

    let isn = 7u32;
    run(&progs, &TcpFrame::upload_v4(isn, SYN, Vec::new()).build());
    let mut busy_seq = isn + 1;
    let mut flood = TcpFrame::upload_v4(0, PSH | ACK, tls_record(23, 100)).build();
    let t = Instant::now();
    for i in 0..FLOWS {
        let d = i % DESTINATIONS;
        flood[DST_OFF..DST_OFF + 4].copy_from_slice(&[10, 100 + (d >> 16) as u8, (d >> 8) as u8, d as u8]);
        flood[SPORT_OFF..SPORT_OFF + 2].copy_from_slice(&(1024 + (i / DESTINATIONS) as u16).to_be_bytes());
        run(&progs, &flood);
        if i % EVERY == 0 {
            let record = tls_record(23, RECORD);
            run(&progs, &TcpFrame::upload_v4(busy_seq, PSH | ACK, record.clone()).build());
            busy_seq += record.len() as u32;
        }
    }
    eprintln!("floods: {} segments through XDP in {:.1} s", FLOWS + FLOWS / EVERY + 1, t.elapsed().as_secs_f64());

    let t = Instant::now();
    let snap = counters::read(&progs.ebpf).unwrap();
    eprintln!("floods: counters::read {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    eprintln!(
        "floods: flows {} entries, {} inserted, {} evicted; destinations {} entries, {} inserted, {} evicted",
        snap.flow_entries,
        snap.flow_inserts,
        snap.flow_evictions(),
        snap.dests.len(),
        snap.dest_inserts,
        snap.dest_evictions()
    );
    assert!(snap.flow_entries <= FLOW_TABLE_ENTRIES as u64 && snap.dests.len() <= DEST_STATS_ENTRIES as usize);
    // Every flow was new once (the busy one too); a destination comes back after 100,000
    // others and is inserted again.
    assert_eq!(snap.flow_inserts, FLOWS as u64 + 1);
    assert_eq!(snap.flow_evictions(), snap.flow_inserts - snap.flow_entries);
    assert!(snap.dest_inserts > DESTINATIONS as u64 && snap.dest_evictions() == snap.dest_inserts - snap.dests.len() as u64);
    let (_, busy) = snap.dests.iter().find(|(k, _)| k.addr[..4] == [10, 77, 2, 10]).expect("the busy destination survives");
    let records = (FLOWS / EVERY) as u64;
    assert_eq!((busy.tls_app_bytes, busy.tls_app_records, busy.unsynced_bytes), (records * RECORD as u64, records, 0));

    // The scrape of all that: bounded by --max-destinations, exact for the busy destination.
    let names = [MAP_DEST_STATS, MAP_CLASS_COUNTERS, MAP_INSERTS, MAP_FLOWS, MAP_EVENT_DROPS, MAP_SNIPPET_DROPS, MAP_MARKER_PINGS];
    let maps = Arc::new(progs.take_maps(&names));
    let health = Arc::new(Health::new("flood0", Vec::new(), false));
    let registry = prometheus::Registry::new();
    registry.register(Box::new(MapCollector::new(maps, vec![(0, "echo".into())], Vec::new(), health, MAX_DESTINATIONS))).unwrap();
    let t = Instant::now();
    let mut text = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    eprintln!("floods: /metrics is {} bytes, gathered and encoded in {:.1} ms", text.len(), t.elapsed().as_secs_f64() * 1e3);
    assert!(text.len() < 1 << 20, "{} bytes", text.len());
    let upload: Vec<&str> = text.lines().filter(|l| l.starts_with("echo_upload_tls_bytes_total{")).collect();
    assert_eq!(upload.len(), MAX_DESTINATIONS + 1, "the top destinations and \"other\"");
    assert!(upload.contains(&format!("echo_upload_tls_bytes_total{{destination=\"10.77.2.10\",device=\"echo\"}} {}", records * RECORD as u64).as_str()), "{upload:?}");
    for (map, evicted) in [("flows", snap.flow_evictions()), ("destinations", snap.dest_evictions())] {
        assert!(text.contains(&format!("echo_map_evictions_total{{map=\"{map}\"}} {evicted}\n")), "{map}");
    }
}

/// App-data length of every record the table-size tests send; its header and first half go
/// in one segment, the second half in the next, so a flow's state is needed between them.
const SPLIT_RECORD: usize = 100;

/// Flow `i`'s three frames (SYN, the record's header and first half, its second half), to
/// 10.100.x.y:443 for destination `dest`, from 10.77.(1 + i / 60,000).2 and source port
/// 1024 + i % 60,000 (a port for each of the first 60,000 flows, then the next address).
fn split_record_flow(i: u32, dest: u32) -> [Vec<u8>; 3] {
    let isn = 1000u32;
    let record = tls_record(23, SPLIT_RECORD);
    let (first, second) = record.split_at(5 + SPLIT_RECORD / 2);
    let frame = |seq: u32, flags: u8, payload: &[u8]| {
        let mut f = TcpFrame::upload_v4(seq, flags, payload.to_vec());
        f.ip = Ip::V4 { src: [10, 77, 1 + (i / 60_000) as u8, 2], dst: [10, 100, (dest >> 8) as u8, dest as u8], options: Vec::new() };
        f.sport = 1024 + (i % 60_000) as u16;
        f.build()
    };
    [frame(isn, SYN, &[]), frame(isn + 1, PSH | ACK, first), frame(isn + 1 + first.len() as u32, PSH | ACK, second)]
}

/// Writes `frames` as a pcap under a name unique to `test`; removed on drop.
struct TempCapture(std::path::PathBuf);

impl TempCapture {
    fn new(test: &str, frames: &[Vec<u8>]) -> Self {
        let path = std::env::temp_dir().join(format!("echo-{test}-{}.pcap", std::process::id()));
        std::fs::write(&path, pcap(frames)).unwrap();
        TempCapture(path)
    }
}

impl Drop for TempCapture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_replay_that_outgrows_its_first_tables_is_replayed_at_full_size() {
    // More flows and destinations than the first tables hold, all SYNs first, then every
    // first half, then every second half: each flow's state must live through 10,000 others.
    const FLOWS: u32 = FIRST_SIZES.flows + 904;
    const DESTS: u32 = FIRST_SIZES.destinations * 2;
    let flows: Vec<[Vec<u8>; 3]> = (0..FLOWS).map(|i| split_record_flow(i, i % DESTS)).collect();
    let frames: Vec<Vec<u8>> = (0..3).flat_map(|phase| flows.iter().map(move |f| f[phase].clone())).collect();
    let capture = TempCapture::new("outgrows-first-tables", &frames);
    let devices = [Mac(DEVICE_MAC)];

    // What the first tables alone would report: short, as their evictions say.
    let mut small = Programs::load_sized(&[], Clock::Capture, FIRST_SIZES).expect("load programs (root needed)");
    small.set_devices(&devices).unwrap();
    testrun::run_capture(&mut small, &capture.0, &devices).unwrap();
    let snap = counters::read(&small.ebpf).unwrap();
    assert!(snap.flow_evictions() > 0 && snap.dest_evictions() > 0, "{} {}", snap.flow_evictions(), snap.dest_evictions());
    let counted: u64 = snap.dests.iter().map(|(_, s)| s.tls_app_bytes).sum();
    assert!(counted < FLOWS as u64 * SPLIT_RECORD as u64, "{counted}");
    drop(small);

    let report = replay::replay(&capture.0, &devices, &Default::default()).unwrap();
    assert_eq!((report.frames, report.evicted_flows, report.evicted_destinations), (3 * FLOWS as u64, 0, 0));
    let dests = &report.devices[0].destinations;
    assert_eq!(dests.len(), DESTS as usize);
    for d in dests {
        let std::net::IpAddr::V4(ip) = d.ip else { panic!("{}", d.ip) };
        let dest = u32::from(ip.octets()[2]) << 8 | u32::from(ip.octets()[3]);
        // Flows i with i % DESTS == dest: two for the first 904 destinations, one after.
        let n = (FLOWS - dest).div_ceil(DESTS) as u64;
        let u = &d.upload;
        assert_eq!((u.tls_app_bytes, u.tls_records, u.unsynced_bytes, u.packets), (n * SPLIT_RECORD as u64, n, 0, 3 * n), "{ip}");
    }
    assert!(!replay::table(&report).starts_with("warning"));
}

#[test]
fn a_replay_beyond_the_full_tables_reports_its_evictions() {
    // More flows than even the full table holds, each over before the next begins: the LRU
    // pushes out finished flows only, so every byte is counted, and the report says how many
    // went.
    const FLOWS: u32 = FLOW_TABLE_ENTRIES + FIRST_SIZES.flows;
    let frames: Vec<Vec<u8>> = (0..FLOWS).flat_map(|i| split_record_flow(i, 0)).collect();
    let capture = TempCapture::new("beyond-full-tables", &frames);
    let report = replay::replay(&capture.0, &[Mac(DEVICE_MAC)], &Default::default()).unwrap();
    assert!(report.evicted_flows >= (FLOWS - FLOW_TABLE_ENTRIES) as u64, "{}", report.evicted_flows);
    assert!(report.evicted_flows <= FLOWS as u64, "{}", report.evicted_flows);
    assert_eq!(report.evicted_destinations, 0);
    let [d] = &report.devices[0].destinations[..] else { panic!("one destination") };
    let u = &d.upload;
    assert_eq!((u.tls_app_bytes, u.tls_records, u.unsynced_bytes), (FLOWS as u64 * SPLIT_RECORD as u64, FLOWS as u64, 0));
    let table = replay::table(&report);
    assert_eq!(
        table.lines().next().unwrap(),
        format!("warning: the tables pushed out {} flows and 0 destinations: counts are short (see evicted_* in the JSON)", report.evicted_flows)
    );
}
