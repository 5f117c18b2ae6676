//! Floods through BPF_PROG_TEST_RUN: one monitored device opens 1,000,000 distinct flows to
//! 100,000 distinct destinations while one real flow uploads exactly 1,000,000 app-data
//! bytes. The maps stay within their configured sizes, every eviction is counted and
//! exported, the busy destination's counters stay exact, and a scrape of the result stays
//! small (the top `--max-destinations` by name, the rest summed in "other").

use std::{sync::Arc, time::Instant};

use echo_agent::{
    clock::Clock,
    counters,
    device::Mac,
    exporter::{Health, MapCollector},
    loader::Programs,
    testrun,
};
use echo_common::{
    DEST_STATS_ENTRIES, FLOW_TABLE_ENTRIES, MAP_CLASS_COUNTERS, MAP_DEST_STATS, MAP_EVENT_DROPS, MAP_FLOWS, MAP_INSERTS,
    MAP_MARKER_PINGS, MAP_SNIPPET_DROPS,
};
use prometheus::{Encoder as _, TextEncoder};
use xtask::packets::{tls_record, TcpFrame, ACK, DEVICE_MAC, PSH, SYN};

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
