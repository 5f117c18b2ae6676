//! Pending destination counts (`PENDING_DESTS`): a CPU's frames for one destination add
//! there and reach `DEST_STATS` when a frame for another destination, or one a second later,
//! folds them, or when a read folds every CPU (`echo_agent::fold`). These tests look at
//! `DEST_STATS` itself, as no reader should, to show each fold happening; and at what
//! `counters::read` returns, which must be exact whichever CPUs the frames ran on.

use aya::maps::{MapData, PerCpuHashMap};
use echo_agent::{clock::Clock, counters, device::Mac, fold, loader::Programs, testrun};
use echo_common::{DestKey, DestStats, MAP_DEST_STATS};
use xtask::packets::{udp_v4, DEVICE_MAC, HOTSPOT_MAC};

const DEVICES: [Mac; 1] = [Mac(DEVICE_MAC)];

/// A 60-byte upload to 10.77.2.`host`:9000.
fn upload_to(host: u8) -> Vec<u8> {
    udp_v4((DEVICE_MAC, HOTSPOT_MAC), [10, 77, 1, 2], [10, 77, 2, host], (5000, 9000), &[0; 18])
}

/// Replay's programs (frames carry their own times).
fn programs() -> Programs {
    let mut progs = Programs::load(&[], Clock::Capture).expect("load programs (root needed)");
    progs.set_devices(&DEVICES).unwrap();
    progs
}

fn pin_to(cpu: u32) {
    fold::pin_this_thread(cpu).unwrap_or_else(|e| panic!("pin to CPU {cpu}: {e}"));
}

fn allowed_cpus() -> Vec<u32> {
    fold::this_thread_cpus().unwrap()
}

/// `DEST_STATS` unfolded: (last address byte, packets, wire bytes) per entry, summed over CPUs.
fn unfolded(progs: &Programs) -> Vec<(u8, u64, u64)> {
    let map: PerCpuHashMap<&MapData, DestKey, DestStats> = PerCpuHashMap::try_from(progs.ebpf.map(MAP_DEST_STATS).unwrap()).unwrap();
    let mut v: Vec<_> = map
        .iter()
        .map(|e| {
            let (k, per_cpu) = e.unwrap();
            (k.addr[3], per_cpu.iter().map(|s| s.packets).sum(), per_cpu.iter().map(|s| s.wire_bytes).sum())
        })
        .collect();
    v.sort();
    v
}

/// What `counters::read` returns: (last address byte, packets, wire bytes, first and last
/// seen) per destination.
fn read(progs: &Programs) -> Vec<(u8, u64, u64, u64, u64)> {
    let snap = counters::read(&progs.ebpf).unwrap();
    assert_eq!(snap.unfolded_cpus, 0, "every CPU folded");
    snap.dests.iter().map(|(k, s)| (k.addr[3], s.packets, s.wire_bytes, s.first_seen_ns, s.last_seen_ns)).collect()
}

#[test]
fn counts_stay_pending_until_another_destination_or_a_read_folds_them() {
    pin_to(allowed_cpus()[0]);
    let progs = programs();
    let run = |host: u8, ts: u64| testrun::run_one(&progs, &upload_to(host), ts, &DEVICES).unwrap();
    run(10, 1_000);
    run(10, 2_000);
    assert_eq!(unfolded(&progs), vec![], "both frames pending");
    run(11, 3_000);
    assert_eq!(unfolded(&progs), vec![(10, 2, 120)], "the frame for .11 folded .10's counts");
    assert_eq!(read(&progs), vec![(10, 2, 120, 1_000, 2_000), (11, 1, 60, 3_000, 3_000)]);
    assert_eq!(unfolded(&progs), vec![(10, 2, 120), (11, 1, 60)], "the read folded .11's");
    // Folding twice adds nothing; new counts fold into the existing entry.
    run(11, 4_000);
    assert_eq!(read(&progs), vec![(10, 2, 120, 1_000, 2_000), (11, 2, 120, 3_000, 4_000)]);
    assert_eq!(read(&progs), vec![(10, 2, 120, 1_000, 2_000), (11, 2, 120, 3_000, 4_000)]);
}

#[test]
fn pending_counts_fold_a_second_after_they_began() {
    pin_to(allowed_cpus()[0]);
    let progs = programs();
    let run = |ts: u64| testrun::run_one(&progs, &upload_to(10), ts, &DEVICES).unwrap();
    run(5_000);
    run(5_000 + 999_999_999);
    assert_eq!(unfolded(&progs), vec![], "within the second: pending");
    run(5_000 + 1_000_000_000);
    assert_eq!(unfolded(&progs), vec![(10, 2, 120)], "a second after the first: folded");
    run(5_000 + 1_500_000_000);
    assert_eq!(unfolded(&progs), vec![(10, 2, 120)], "the third and fourth pending since the third");
    assert_eq!(read(&progs), vec![(10, 4, 240, 5_000, 1_500_005_000)]);
}

#[test]
fn a_read_folds_the_counts_pending_on_every_cpu() {
    let cpus = allowed_cpus();
    let progs = programs();
    // One destination per CPU, each pending on its CPU only.
    for (i, &cpu) in cpus.iter().enumerate() {
        pin_to(cpu);
        testrun::run_one(&progs, &upload_to(10 + i as u8), 1_000 + i as u64, &DEVICES).unwrap();
    }
    assert_eq!(unfolded(&progs), vec![], "each CPU's only destination pending");
    let want: Vec<_> = (0..cpus.len()).map(|i| (10 + i as u8, 1, 60, 1_000 + i as u64, 1_000 + i as u64)).collect();
    assert_eq!(read(&progs), want, "CPUs {cpus:?}");
    // The read gave the thread its CPU set back.
    assert_eq!(allowed_cpus(), vec![*cpus.last().unwrap()]);
}

#[test]
fn maps_without_the_fold_program_count_every_cpu_as_unfolded() {
    let online = aya::util::online_cpus().unwrap().len() as u32;
    assert_eq!(counters::fold_pending(&echo_agent::loader::MapSet::default()), online);
}
