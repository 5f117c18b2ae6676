//! Table-driven packet fixtures through BPF_PROG_TEST_RUN (after Katran's test fixtures):
//! each states the exact counters the XDP program must produce.

use aya::programs::{TestRun, TestRunOptions};
use echo_agent::{clock::Clock, counters, device::Mac, events, loader::Programs, testrun};
use echo_common::{DestStats, PacketClass, DIR_DOWNLOAD, DIR_UPLOAD, MAX_DEVICES, PACKET_CLASSES};
use xtask::packets::{one_record_upload, tls_stream, udp_v4, Ip, TcpFrame, ACK, DEVICE_MAC, HOTSPOT_MAC, PSH, SYN};

const ISN: u32 = 0xffff_ff00; // close to wrapping, so sequence arithmetic wraps mid-fixture
const APP: u8 = 23;
const HS: u8 = 22;
const CCS: u8 = 20;

/// What one fixture must leave in the maps for 10.77.2.10:443 (or the only TCP destination).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Expect {
    app: u64,
    app_records: u64,
    handshake: u64,
    ccs: u64,
    retransmit: u64,
    unsynced: u64,
}

/// Runs `frames` through freshly loaded programs, live's and replay's (which walk records
/// with other code, see `echo_common::CLOCK_CAPTURE`), and checks that they agree but for
/// the times; returns the TCP destination's counters (None when there is none) and the
/// device's upload packet classes.
fn run(frames: &[Vec<u8>]) -> (Option<DestStats>, [u64; PACKET_CLASSES]) {
    let [live, replay] = [Clock::Monotonic, Clock::Capture].map(|clock| run_loaded(frames, clock));
    let untimed = |(s, classes): &(Option<DestStats>, [u64; PACKET_CLASSES])| {
        (s.map(|s| DestStats { first_seen_ns: 0, last_seen_ns: 0, ..s }), *classes)
    };
    assert_eq!(untimed(&live), untimed(&replay), "live and replay programs disagree");
    live
}

fn run_loaded(frames: &[Vec<u8>], clock: Clock) -> (Option<DestStats>, [u64; PACKET_CLASSES]) {
    let mut progs = Programs::load(&[], clock).expect("load programs (root needed)");
    progs.set_devices(&[Mac(DEVICE_MAC)]).unwrap();
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(testrun::run_one(&progs, f, 1 + i as u64, &[Mac(DEVICE_MAC)]).unwrap(), 2, "XDP_PASS, always");
    }
    let snap = counters::read(&progs.ebpf).unwrap();
    let tcp: Vec<_> = snap.dests.iter().filter(|(k, _)| k.proto == 6).collect();
    assert!(tcp.len() <= 1, "one TCP destination per fixture: {tcp:?}");
    (tcp.first().map(|(_, s)| *s), snap.classes_of(0, DIR_UPLOAD))
}

fn got(s: &DestStats) -> Expect {
    Expect {
        app: s.tls_app_bytes,
        app_records: s.tls_app_records,
        handshake: s.handshake_bytes,
        ccs: s.ccs_bytes,
        retransmit: s.retransmit_bytes,
        unsynced: s.unsynced_bytes,
    }
}

/// SYN, then `stream` cut at `cuts` (offsets into the stream), sent in `order`
/// (indices of the pieces; all pieces in order when empty).
fn flow(stream: &[u8], cuts: &[usize], order: &[usize], shape: impl Fn(&mut TcpFrame)) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(stream.len());
    let pieces: Vec<(u32, Vec<u8>)> = bounds
        .windows(2)
        .map(|w| (ISN.wrapping_add(1).wrapping_add(w[0] as u32), stream[w[0]..w[1]].to_vec()))
        .collect();
    let order: Vec<usize> = if order.is_empty() { (0..pieces.len()).collect() } else { order.to_vec() };
    let mut syn = TcpFrame::upload_v4(ISN, SYN, Vec::new());
    shape(&mut syn);
    let mut frames = vec![syn.build()];
    for i in order {
        let mut f = TcpFrame::upload_v4(pieces[i].0, ACK | PSH, pieces[i].1.clone());
        shape(&mut f);
        frames.push(f.build());
    }
    frames
}

fn plain(_: &mut TcpFrame) {}

fn check(name: &str, frames: Vec<Vec<u8>>, want: Expect) {
    let payload: u64 = frames.iter().map(|f| payload_len(f)).sum();
    let (stats, _) = run(&frames);
    let s = stats.unwrap_or_else(|| panic!("{name}: no destination counted"));
    assert_eq!(got(&s), want, "{name}");
    assert_eq!(s.tcp_payload_bytes, payload, "{name}: TCP payload");
    assert_eq!(s.packets, frames.len() as u64, "{name}: packets");
    assert_eq!(s.wire_bytes, frames.iter().map(|f| f.len() as u64).sum::<u64>(), "{name}: wire bytes");
}

/// TCP payload length of a frame built by `TcpFrame` (32-byte TCP header).
fn payload_len(f: &[u8]) -> u64 {
    let mut off = 12;
    while matches!(u16::from_be_bytes([f[off], f[off + 1]]), 0x8100 | 0x88a8) {
        off += 4;
    }
    let (ethertype, l3) = (u16::from_be_bytes([f[off], f[off + 1]]), off + 2);
    let l4 = if ethertype == 0x0800 {
        l3 + (f[l3] as usize & 0xf) * 4
    } else {
        // Walk the extension headers (all of the 8-byte-unit kind in these fixtures).
        let mut next = f[l3 + 6];
        let mut p = l3 + 40;
        while next != 6 {
            next = f[p];
            p += (f[p + 1] as usize + 1) * 8;
        }
        p
    };
    (f.len() - l4 - 32) as u64
}

fn app(n: u64, records: u64) -> Expect {
    Expect { app: n, app_records: records, ..Default::default() }
}

#[test]
fn records_in_one_segment() {
    check("1 record", flow(&tls_stream(&[(APP, 100)]), &[], &[], plain), app(100, 1));
    check("2 records", flow(&tls_stream(&[(APP, 100), (APP, 200)]), &[], &[], plain), app(300, 2));
    let sixty = vec![(APP, 17); 60];
    check("60 records", flow(&tls_stream(&sixty), &[], &[], plain), app(60 * 17, 60));
}

#[test]
fn header_split_at_every_offset() {
    let stream = tls_stream(&[(APP, 100), (APP, 50)]);
    for k in 1..=4 {
        check(&format!("header split after {k} bytes"), flow(&stream, &[105 + k], &[], plain), app(150, 2));
    }
}

#[test]
fn record_of_16k_over_12_segments() {
    let stream = tls_stream(&[(APP, 16384)]);
    let step = stream.len().div_ceil(12);
    let cuts: Vec<usize> = (1..12).map(|i| i * step).collect();
    check("16 KiB record, 12 segments", flow(&stream, &cuts, &[], plain), app(16384, 1));
}

#[test]
fn handshake_ccs_and_app_data_are_counted_apart() {
    let stream = tls_stream(&[(HS, 200), (CCS, 1), (APP, 300)]);
    let want = Expect { app: 300, app_records: 1, handshake: 200, ccs: 1, ..Default::default() };
    check("handshake, CCS, app data", flow(&stream, &[150], &[], plain), want);
}

#[test]
fn retransmitted_header_segment_is_not_counted_twice() {
    let stream = tls_stream(&[(APP, 100), (APP, 100)]);
    let want = Expect { retransmit: 105, ..app(200, 2) };
    check("retransmission", flow(&stream, &[105], &[0, 1, 1], plain), want);
}

#[test]
fn swapped_segments_inside_one_record() {
    let stream = tls_stream(&[(APP, 3000)]);
    check("swap inside a record", flow(&stream, &[1000, 2000], &[0, 2, 1], plain), app(3000, 1));
}

#[test]
fn swapped_segments_with_the_header_in_the_hole() {
    // Headers at 0, 1005, 2010; the late piece [1200, 2400) holds the one at 2010.
    let stream = tls_stream(&[(APP, 1000), (APP, 1000), (APP, 1000)]);
    check("swap, header in the hole", flow(&stream, &[1200, 2400], &[0, 2, 1], plain), app(3000, 3));
}

#[test]
fn swapped_segments_with_a_header_in_the_early_piece() {
    // Headers at 0, 1005, 1110; the piece that arrives early, [1050, 1615), holds 1110.
    let stream = tls_stream(&[(APP, 1000), (APP, 100), (APP, 500)]);
    check("swap, header in the early piece", flow(&stream, &[500, 1050], &[0, 2, 1], plain), app(1600, 3));
}

#[test]
fn mid_stream_pickup_resyncs_on_the_next_header() {
    let stream = tls_stream(&[(APP, 1000), (APP, 200)]);
    // No SYN: the program first sees the flow 500 bytes into the first record.
    let f = TcpFrame::upload_v4(ISN.wrapping_add(501), ACK | PSH, stream[500..].to_vec());
    let want = Expect { unsynced: 505, ..app(200, 1) };
    check("mid-stream pickup", vec![f.build()], want);
}

#[test]
fn bogus_record_length_loses_sync_explicitly() {
    let mut stream = tls_stream(&[(APP, 100)]);
    stream.extend_from_slice(&[APP, 3, 3, 0xff, 0xff]); // 65535 > 2^14 + 2048
    stream.extend_from_slice(&[0u8; 45]);
    let want = Expect { unsynced: 50, ..app(100, 1) };
    check("bogus length", flow(&stream, &[], &[], plain), want);
}

#[test]
fn ipv4_options_ipv6_extension_headers_and_vlan_tags() {
    let stream = tls_stream(&[(APP, 700), (APP, 300)]);
    let want = app(1000, 2);
    let options = |f: &mut TcpFrame| {
        if let Ip::V4 { options, .. } = &mut f.ip {
            *options = vec![1, 1, 1, 1, 0x94, 4, 0, 0]; // NOPs, router alert
        }
    };
    check("IPv4 options", flow(&stream, &[400], &[], options), want);
    let v6 = |f: &mut TcpFrame| {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[0xfd, 0x77, 0, 1]);
        src[15] = 2;
        let mut dst = src;
        dst[3] = 2;
        dst[15] = 0x10;
        // Hop-by-hop (router alert) then destination options (PadN).
        f.ip = Ip::V6 { src, dst, ext: vec![(0, vec![5, 2, 0, 0, 1, 0]), (60, vec![1, 4, 0, 0, 0, 0])] };
    };
    check("IPv6 hop-by-hop + destination options", flow(&stream, &[400], &[], v6), want);
    check("one VLAN tag", flow(&stream, &[400], &[], |f| f.vlans = vec![(0x8100, 7)]), want);
    check("two VLAN tags", flow(&stream, &[400], &[], |f| f.vlans = vec![(0x88a8, 100), (0x8100, 7)]), want);
}

#[test]
fn other_macs_pass_untouched_and_uncounted() {
    let frames = flow(&tls_stream(&[(APP, 100)]), &[], &[], |f| f.src_mac = [2, 0, 0, 0, 0, 9]);
    let (stats, classes) = run(&frames);
    assert_eq!(stats, None);
    assert_eq!(classes, [0; PACKET_CLASSES]);
}

/// The worst case of the device table: 16 devices whose probes all start at one slot, and a
/// 17th MAC of that slot that is not monitored. Each device's upload is counted for it alone,
/// a download to the last one (the TC program probes the destination MAC) too, the 17th
/// nothing.
#[test]
fn sixteen_devices_of_one_home_slot_are_each_found() {
    let macs = echo_agent::device_table::colliding(MAX_DEVICES as usize + 1);
    let (devices, other) = (&macs[..MAX_DEVICES as usize], macs[MAX_DEVICES as usize]);
    let mut progs = Programs::load(&[], Clock::Monotonic).expect("load programs (root needed)");
    assert_eq!(progs.set_devices(devices).unwrap(), (0..MAX_DEVICES).collect::<Vec<_>>());
    for (i, mac) in macs.iter().enumerate() {
        for f in flow(&tls_stream(&[(APP, 100 + i)]), &[], &[], |f| {
            f.src_mac = mac.0;
            f.sport = 40_000 + i as u16;
        }) {
            testrun::run_one(&progs, &f, 0, &macs).unwrap();
        }
    }
    let down = udp_v4((HOTSPOT_MAC, devices[15].0), [10, 77, 2, 10], [10, 77, 1, 2], (5000, 6000), &[0; 33]);
    testrun::run_one(&progs, &down, 0, devices).unwrap();
    let snap = counters::read(&progs.ebpf).unwrap();
    let mut got: Vec<(u8, u8, u8, u64, u64)> = snap.dests.iter().map(|(k, s)| (k.device, k.direction, k.proto, s.packets, s.tls_app_bytes)).collect();
    got.sort();
    let mut want: Vec<(u8, u8, u8, u64, u64)> = (0..MAX_DEVICES as u8).map(|i| (i, DIR_UPLOAD, 6, 2, 100 + i as u64)).collect();
    want.push((15, DIR_DOWNLOAD, 17, 1, 0));
    want.sort();
    assert_eq!(got, want, "{other} is not monitored");
}

#[test]
fn non_tls_flow_counts_tcp_only() {
    let frames = flow(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &[], &[], plain);
    let (stats, classes) = run(&frames);
    let s = stats.unwrap();
    assert_eq!(got(&s), Expect::default());
    assert_eq!(s.tcp_payload_bytes, 27);
    assert_eq!(classes[PacketClass::OtherTcp as usize], 2);
}

#[test]
fn truncated_frames_at_every_header_boundary_are_class_other() {
    let full = flow(&tls_stream(&[(APP, 100)]), &[], &[], plain).pop().unwrap();
    // Ethernet+IPv4 = 34, +TCP = 66; cut inside and at each boundary, and one byte short.
    let cuts = [14, 20, 33, 34, 40, 53, 54, 65, 66, full.len() - 1];
    let frames: Vec<Vec<u8>> = cuts.iter().map(|&n| full[..n].to_vec()).collect();
    let (stats, classes) = run(&frames);
    assert_eq!(stats, None);
    let mut want = [0; PACKET_CLASSES];
    want[PacketClass::Other as usize] = cuts.len() as u64;
    assert_eq!(classes, want);
}

#[test]
fn packet_classes() {
    let stream = tls_stream(&[(HS, 300), (APP, 100)]);
    let mut frames = flow(&stream, &[305], &[0, 1, 1], plain); // SYN, handshake, app, retransmission
    frames.push(TcpFrame::upload_v4(ISN.wrapping_add(1 + stream.len() as u32), ACK, Vec::new()).build());
    let (_, classes) = run(&frames);
    let mut want = [0; PACKET_CLASSES];
    want[PacketClass::OtherTcp as usize] = 1;
    want[PacketClass::Handshake as usize] = 1;
    want[PacketClass::AppData as usize] = 1;
    want[PacketClass::Retransmit as usize] = 1;
    want[PacketClass::Ack as usize] = 1;
    assert_eq!(classes, want);
}

const XDP_PASS: u32 = 2;

/// 100,000 random and mutated frames through both programs: every verdict a pass, no error, and the counters stay
/// consistent (TLS bytes never exceed the TCP payload seen).
#[test]
fn malformed_frames_always_pass() {
    let mut progs = Programs::load(&[], Clock::Monotonic).unwrap();
    progs.set_devices(&[Mac(DEVICE_MAC)]).unwrap();
    let seeds: Vec<Vec<u8>> = [
        flow(&tls_stream(&[(HS, 200), (APP, 1000), (APP, 50)]), &[300, 700], &[], plain),
        flow(&tls_stream(&[(APP, 500)]), &[], &[], |f| f.vlans = vec![(0x8100, 3)]),
    ]
    .concat();
    let mut next = xtask::packets::xorshift(0x9e37_79b9_7f4a_7c15u64);
    for i in 0..100_000u32 {
        let mut f = if i % 10 == 0 {
            // Random bytes behind the device's MAC.
            let len = 14 + (next() % 1500) as usize;
            let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            f[6..12].copy_from_slice(&DEVICE_MAC);
            f
        } else {
            seeds[(next() % seeds.len() as u64) as usize].clone()
        };
        for _ in 0..(1 + next() % 4) {
            let pos = (next() % f.len() as u64) as usize;
            f[pos] = next() as u8;
        }
        if next() % 4 == 0 {
            let len = 14 + (next() % (f.len() as u64 - 13)) as usize;
            f.truncate(len);
        }
        // Both programs see every frame: XDP as the device's upload, TC (addresses swapped,
        // so the frame goes to the device) as its download.
        let opts = TestRunOptions { data_in: Some(&f), ..Default::default() };
        assert_eq!(progs.xdp().test_run(opts).unwrap().return_value, XDP_PASS, "XDP, frame {i}: {f:02x?}");
        let mut down = f.clone();
        down[..6].copy_from_slice(&f[6..12]);
        down[6..12].copy_from_slice(&f[..6]);
        if testrun::tc_test_run_accepts(&down) {
            let opts = TestRunOptions { data_in: Some(&down), ..Default::default() };
            let tc = progs.tc().test_run(opts).unwrap_or_else(|e| panic!("TC, frame {i} ({} bytes): {e}: {down:02x?}", down.len()));
            assert_eq!(tc.return_value, testrun::TC_ACT_UNSPEC, "TC, frame {i}: {down:02x?}");
        }
    }
    let snap = counters::read(&progs.ebpf).unwrap();
    for (k, s) in &snap.dests {
        let tls = s.tls_app_bytes + s.handshake_bytes + s.ccs_bytes + s.alert_bytes + s.unsynced_bytes;
        assert!(tls <= s.tcp_payload_bytes, "{k:?}: {s:?}");
    }
    // Both directions were counted: the mutations went through both programs' parsers.
    for dir in [DIR_UPLOAD, echo_common::DIR_DOWNLOAD] {
        assert!(snap.dests.iter().any(|(k, s)| k.direction == dir && s.tcp_payload_bytes > 0), "direction {dir}");
    }
    eprintln!(
        "verifier: {:?} instructions processed for echo_xdp, {:?} for echo_tc",
        progs.xdp_verified_insns(),
        progs.tc_verified_insns()
    );
}

/// The research controller's MAC (a host other than the device), the sender of the marker
/// pings of these tests.
const CONTROLLER_MAC: [u8; 6] = [0x02, 0xec, 0x40, 0x00, 0x00, 0x03];

/// An ICMP (or ICMPv6) message of `icmp_type` from `src_mac` to `dst_mac`, to `dst`.
fn icmp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], dst: std::net::IpAddr, icmp_type: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    let icmp = [icmp_type, 0, 0, 0, 0x45, 0x43, 0, 1, b'e', b'c', b'h', b'o'];
    match dst {
        std::net::IpAddr::V4(d) => {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, (20 + icmp.len()) as u8, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 77, 1, 3]);
            f.extend_from_slice(&d.octets());
        }
        std::net::IpAddr::V6(d) => {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, icmp.len() as u8, 58, 64]);
            f.extend_from_slice(&[0xfd, 0x77, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
            f.extend_from_slice(&d.octets());
        }
    }
    f.extend_from_slice(&icmp);
    f
}

/// Echo requests to marker addresses become marker events with their slot, from any host at
/// XDP ingress and from the hotspot itself at TC egress; echo replies and other addresses do
/// not; MARKER_PINGS counts the same.
#[test]
fn marker_pings_become_events() {
    use echo_agent::markers::MarkerSpec;
    use echo_common::{EVENT_MARKER, MAP_EVENTS};
    let markers: Vec<MarkerSpec> =
        ["192.0.2.1=command_start", "192.0.2.2=command_end", "2001:db8::1=response_start", "192.0.2.4=response_end"].iter().map(|m| m.parse().unwrap()).collect();
    let mut progs = Programs::load(&markers.iter().map(|m| m.key()).collect::<Vec<_>>(), Clock::Capture).unwrap();
    let devices = [Mac(DEVICE_MAC)];
    progs.set_devices(&devices).unwrap();
    let mut ring = aya::maps::RingBuf::try_from(progs.ebpf.take_map(MAP_EVENTS).unwrap()).unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let hotspot = xtask::packets::HOTSPOT_MAC;
    // (frame, marker slot expected): controller pings through XDP, the hotspot's own through TC.
    let cases = [
        (icmp_frame(CONTROLLER_MAC, hotspot, ip("192.0.2.1"), 8), Some(0)),
        (icmp_frame(CONTROLLER_MAC, hotspot, ip("192.0.2.2"), 8), Some(1)),
        (icmp_frame(CONTROLLER_MAC, hotspot, ip("192.0.2.1"), 0), None), // echo reply
        (icmp_frame(CONTROLLER_MAC, hotspot, ip("192.0.2.9"), 8), None), // not a marker
        (icmp_frame(CONTROLLER_MAC, hotspot, ip("2001:db8::1"), 128), Some(2)),
        (icmp_frame(CONTROLLER_MAC, hotspot, ip("2001:db8::1"), 129), None),
        (icmp_frame(hotspot, DEVICE_MAC, ip("192.0.2.4"), 8), Some(3)),
    ];
    for (i, (frame, slot)) in cases.iter().enumerate() {
        testrun::run_one(&progs, frame, 1_000 + i as u64, &devices).unwrap();
        let mut got = Vec::new();
        events::drain(&mut ring, |e| got.push(e));
        let got: Vec<(u8, u8, u64)> = got.iter().map(|e| (e.kind, e.marker, e.ts_ns)).collect();
        let want: Vec<(u8, u8, u64)> = slot.iter().map(|s| (EVENT_MARKER, *s as u8, 1_000 + i as u64)).collect();
        assert_eq!(got, want, "case {i}");
    }
    let pings: Vec<u64> = (0..4).map(|slot| counters::per_cpu_sum(&progs.ebpf, echo_common::MAP_MARKER_PINGS, slot).unwrap()).collect();
    assert_eq!(pings, vec![1, 1, 1, 1]);
}

/// A full ring buffer drops events, not bytes: with nobody reading, 22,000 one-record
/// segments overflow the 1 MiB `EVENTS` (48 bytes per event, so 21,845 fit); every event is
/// either read or counted in `EVENT_DROPS`, and the counters stay exact.
#[test]
fn a_full_ring_buffer_counts_dropped_events_and_keeps_counters_exact() {
    use echo_common::{Event, EVENTS_BYTES, MAP_EVENTS, MAP_EVENT_DROPS};
    const SEGMENTS: usize = 22_000;
    const PAYLOAD: usize = 100;
    let frames = one_record_upload(ISN, SEGMENTS, PAYLOAD);
    let mut progs = Programs::load(&[], Clock::Monotonic).unwrap();
    let devices = [Mac(DEVICE_MAC)];
    progs.set_devices(&devices).unwrap();
    for f in &frames {
        testrun::run_one(&progs, f, 0, &devices).unwrap();
    }
    let fit = (EVENTS_BYTES as usize / (8 + std::mem::size_of::<Event>())) as u64;
    let mut ring = aya::maps::RingBuf::try_from(progs.ebpf.take_map(MAP_EVENTS).unwrap()).unwrap();
    let mut read = 0u64;
    echo_agent::events::drain(&mut ring, |_| read += 1);
    let dropped = counters::per_cpu_sum(&progs.ebpf, MAP_EVENT_DROPS, 0).unwrap();
    assert_eq!((read, dropped), (fit, SEGMENTS as u64 - fit));
    let snap = counters::read(&progs.ebpf).unwrap();
    let (_, s) = snap.dests.iter().find(|(k, _)| k.proto == 6).expect("the flow's destination");
    assert_eq!((s.tls_app_bytes, s.tls_app_records, s.unsynced_bytes), ((SEGMENTS * PAYLOAD) as u64, SEGMENTS as u64, 0));
}

/// The reader is woken once a quarter of `EVENTS` is waiting, not per event: a CPU checks
/// the fill level at every `EVENTS_FILL_CHECK_EVERY`-th event, so a reader asleep in poll
/// stays asleep through 5,503 events (48 bytes each: the quarter, 262,144 bytes, is passed
/// at the 5,462nd) and wakes at the 5,504th, the first check past the mark.
#[test]
fn the_reader_is_woken_at_the_first_fill_check_past_a_quarter_of_the_ring() {
    use echo_common::{Event, EVENTS_FILL_CHECK_EVERY, EVENTS_WAKEUP_BYTES, MAP_EVENTS};
    use std::{os::fd::AsRawFd, sync::mpsc, time::Duration};
    let event = (8 + std::mem::size_of::<Event>()) as u64;
    let past_mark = (EVENTS_WAKEUP_BYTES as u64).div_ceil(event);
    let woken_at = past_mark.div_ceil(EVENTS_FILL_CHECK_EVERY) * EVENTS_FILL_CHECK_EVERY;
    assert_eq!((past_mark, woken_at), (5_462, 5_504));
    // One CPU counts every event: the fill is checked per CPU.
    echo_agent::fold::pin_this_thread(0).unwrap();
    let frames = one_record_upload(ISN, woken_at as usize, 100);
    let mut progs = Programs::load(&[], Clock::Monotonic).unwrap();
    let devices = [Mac(DEVICE_MAC)];
    progs.set_devices(&devices).unwrap();
    let mut ring = aya::maps::RingBuf::try_from(progs.ebpf.take_map(MAP_EVENTS).unwrap()).unwrap();
    let fd = ring.as_raw_fd();
    let (polling, woken) = (mpsc::channel(), mpsc::channel());
    let poller = std::thread::spawn(move || {
        polling.0.send(()).unwrap();
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; the ring outlives the thread (joined below).
        let n = unsafe { libc::poll(&mut p, 1, 20_000) };
        woken.0.send(n).unwrap();
    });
    polling.1.recv().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The SYN carries no event; each segment one.
    let (last, before) = frames.split_last().unwrap();
    for f in before {
        testrun::run_one(&progs, f, 0, &devices).unwrap();
    }
    assert_eq!(woken.1.recv_timeout(Duration::from_millis(500)), Err(mpsc::RecvTimeoutError::Timeout), "woken before the check");
    testrun::run_one(&progs, last, 0, &devices).unwrap();
    assert_eq!(woken.1.recv_timeout(Duration::from_secs(10)), Ok(1), "not woken at the check");
    poller.join().unwrap();
    let mut read = 0u64;
    events::drain(&mut ring, |_| read += 1);
    assert_eq!(read, woken_at);
}

/// The live clocks: a marker event carries CLOCK_MONOTONIC (markers milliseconds apart keep
/// their order and gap), what every counted frame carries (an app-data event, a
/// destination's first and last times) CLOCK_MONOTONIC_COARSE, for a seventh of the cost.
/// Either clock in the other's place falls outside its bounds but for a tick landing between
/// the two readings (4 ms ticks, a run of ~0.1 ms).
#[test]
fn live_markers_carry_the_monotonic_clock_and_app_data_the_coarse_one() {
    use echo_agent::{clock::now_ns as now, markers::MarkerSpec};
    use echo_common::{EVENT_APP_DATA, EVENT_MARKER};
    let marker: MarkerSpec = "192.0.2.1=command_start".parse().unwrap();
    let mut progs = Programs::load(&[marker.key()], Clock::Monotonic).unwrap();
    let devices = [Mac(DEVICE_MAC)];
    progs.set_devices(&devices).unwrap();
    let mut rings = progs.rings().unwrap();
    let (fine0, coarse0) = (now(libc::CLOCK_MONOTONIC), now(libc::CLOCK_MONOTONIC_COARSE));
    let ping = icmp_frame(CONTROLLER_MAC, xtask::packets::HOTSPOT_MAC, "192.0.2.1".parse().unwrap(), 8);
    for f in std::iter::once(ping).chain(flow(&tls_stream(&[(APP, 100)]), &[], &[], plain)) {
        testrun::run_one(&progs, &f, 0, &devices).unwrap();
    }
    let (fine1, coarse1) = (now(libc::CLOCK_MONOTONIC), now(libc::CLOCK_MONOTONIC_COARSE));
    let mut got = Vec::new();
    events::drain(&mut rings.events, |e| got.push((e.kind, e.bytes, e.ts_ns)));
    assert_eq!(got.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(), [(EVENT_MARKER, 12), (EVENT_APP_DATA, 100)], "{got:?}");
    assert!((fine0..=fine1).contains(&got[0].2), "marker {got:?} within [{fine0}, {fine1}]");
    assert!((coarse0..=coarse1).contains(&got[1].2), "app data {got:?} within [{coarse0}, {coarse1}]");
    let snap = counters::read(&progs.ebpf).unwrap();
    let (_, s) = snap.dests.iter().find(|(k, _)| k.proto == 6).expect("the flow's destination");
    assert!(coarse0 <= s.first_seen_ns && s.first_seen_ns <= s.last_seen_ns && s.last_seen_ns <= coarse1, "{s:?} within [{coarse0}, {coarse1}]");
}

/// The coarse clock is cached per CPU for as long as jiffies stay put
/// (`accounting::coarse_kernel_ns`): segments 5 ms apart, over a dozen 4 ms ticks, each
/// carry the coarse time of their own run, never an earlier tick's.
#[test]
fn the_cached_coarse_clock_follows_every_tick() {
    use echo_agent::clock::now_ns as now;
    let mut progs = Programs::load(&[], Clock::Monotonic).unwrap();
    let devices = [Mac(DEVICE_MAC)];
    progs.set_devices(&devices).unwrap();
    let mut ring = aya::maps::RingBuf::try_from(progs.ebpf.take_map(echo_common::MAP_EVENTS).unwrap()).unwrap();
    let frames = one_record_upload(ISN, 12, 100);
    let mut brackets = Vec::new();
    for f in &frames {
        let before = now(libc::CLOCK_MONOTONIC_COARSE);
        testrun::run_one(&progs, f, 0, &devices).unwrap();
        brackets.push((before, now(libc::CLOCK_MONOTONIC_COARSE)));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut times = Vec::new();
    events::drain(&mut ring, |e| times.push(e.ts_ns));
    // The SYN sends no event.
    assert_eq!(times.len(), 12);
    for (i, (t, (before, after))) in times.iter().zip(&brackets[1..]).enumerate() {
        assert!((before..=after).contains(&t), "segment {i}: {t} outside [{before}, {after}]");
    }
    assert!(brackets[12].0 > brackets[1].1, "the segments spanned several ticks");
}

/// Replay on several threads hands one CPU frames of different flows out of capture order:
/// a destination's first and last seen must be the earliest and latest capture times, not
/// those of the first and last frames run, and each event carries its own frame's time.
#[test]
fn first_and_last_seen_are_the_earliest_and_latest_times_in_any_run_order() {
    let devices = [Mac(DEVICE_MAC)];
    let mut progs = Programs::load(&[], Clock::Capture).unwrap();
    progs.set_devices(&devices).unwrap();
    let mut ring = aya::maps::RingBuf::try_from(progs.ebpf.take_map(echo_common::MAP_EVENTS).unwrap()).unwrap();
    // Two connections to one destination (10.77.2.10:443), from ports 40000 and 40001.
    let conn = |sport: u16| -> Vec<Vec<u8>> {
        flow(&tls_stream(&[(APP, 100)]), &[], &[], |f| f.sport = sport)
    };
    // Run order: the second connection (times 3000, 4000) before the first (1000, 2000).
    let mut times = Vec::new();
    for (frames, t0) in [(conn(40_001), 3_000u64), (conn(40_000), 1_000)] {
        for (i, f) in frames.iter().enumerate() {
            testrun::run_one(&progs, f, t0 + 1_000 * i as u64, &devices).unwrap();
            echo_agent::events::drain(&mut ring, |e| times.push(e.ts_ns));
        }
    }
    let snap = counters::read(&progs.ebpf).unwrap();
    let (_, s) = snap.dests.iter().find(|(k, _)| k.proto == 6).expect("the TCP destination");
    assert_eq!((s.first_seen_ns, s.last_seen_ns, s.packets), (1_000, 4_000, 4));
    assert_eq!(times, vec![4_000, 2_000], "one app-data event per connection, at its frame's time");
}
