//! The flow lock (`echo-ebpf/src/flow_lock.rs`): a program walks a flow's records only while
//! it holds the flow's lock. Here user space plays the other CPU: it marks the flow's entry
//! held, and a segment run meanwhile must leave the flow alone and count its bytes as
//! unsynced; once released, the same segment is walked and counted as application data.

use aya::maps::{HashMap, MapData};
use echo_agent::{clock::Clock, counters, device::Mac, loader::Programs, testrun};
use echo_common::{DestStats, FlowKey, FlowState, FLOW_LOCK_HELD, MAP_FLOWS, PROTO_TCP};
use xtask::packets::{one_record_upload, DEVICE_MAC};

const DEVICES: [Mac; 1] = [Mac(DEVICE_MAC)];
const ISN: u32 = 1_000;
/// One record's payload; its segment carries the 5-byte header too.
const PAYLOAD: usize = 300;

fn flows(progs: &mut Programs) -> HashMap<&mut MapData, FlowKey, FlowState> {
    HashMap::try_from(progs.ebpf.map_mut(MAP_FLOWS).unwrap()).unwrap()
}

/// The only flow's key and state.
fn the_flow(progs: &mut Programs) -> (FlowKey, FlowState) {
    let all: Vec<_> = flows(progs).iter().map(Result::unwrap).collect();
    assert_eq!(all.len(), 1, "one flow: {all:?}");
    all[0]
}

fn set_lock(progs: &mut Programs, lock: u64) {
    let (key, mut state) = the_flow(progs);
    state.lock = lock;
    flows(progs).insert(key, state, 0).unwrap();
}

fn tcp_stats(progs: &Programs) -> DestStats {
    let snap = counters::read(&progs.ebpf).unwrap();
    let tcp: Vec<_> = snap.dests.iter().filter(|(k, _)| k.proto == PROTO_TCP).map(|(_, s)| *s).collect();
    assert_eq!(tcp.len(), 1, "one TCP destination");
    tcp[0]
}

fn held_flow_is_left_alone(clock: Clock) {
    let mut progs = Programs::load(&[], clock).expect("load programs (root needed)");
    progs.set_devices(&DEVICES).unwrap();
    let frames = one_record_upload(ISN, 1, PAYLOAD);
    let run = |progs: &Programs, i: usize, ts: u64| assert_eq!(testrun::run_one(progs, &frames[i], ts, &DEVICES).unwrap(), 2, "XDP_PASS");
    run(&progs, 0, 1); // the SYN creates the flow, unlocked
    let (_, before) = the_flow(&mut progs);
    assert_eq!(before.lock, 0, "{clock:?}: a new flow is unlocked");
    set_lock(&mut progs, FLOW_LOCK_HELD);
    run(&progs, 1, 2);
    let s = tcp_stats(&progs);
    let segment = (5 + PAYLOAD) as u64;
    assert_eq!((s.tls_app_bytes, s.tls_app_records, s.unsynced_bytes, s.retransmit_bytes), (0, 0, segment, 0), "{clock:?}: held: not walked");
    let (_, during) = the_flow(&mut progs);
    assert_eq!(during, FlowState { lock: FLOW_LOCK_HELD, ..before }, "{clock:?}: held: the flow untouched");
    set_lock(&mut progs, 0);
    run(&progs, 1, 3);
    let s = tcp_stats(&progs);
    assert_eq!((s.tls_app_bytes, s.tls_app_records, s.unsynced_bytes, s.retransmit_bytes), (PAYLOAD as u64, 1, segment, 0), "{clock:?}: released: walked once");
    let (_, after) = the_flow(&mut progs);
    assert_eq!((after.lock, after.seq_high), (0, ISN + 1 + segment as u32), "{clock:?}: released after the walk");
}

#[test]
fn a_segment_of_a_held_flow_is_counted_unsynced_and_the_flow_left_alone() {
    held_flow_is_left_alone(Clock::Monotonic);
    held_flow_is_left_alone(Clock::Capture);
}
