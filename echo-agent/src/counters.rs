//! Reads the programs' counter maps and sums their per-CPU copies.

use aya::maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap};
use echo_common::{
    DestKey, DestStats, FlowKey, FlowState, DIRECTIONS, INSERTS_DEST_STATS,
    INSERTS_FLOWS, MAP_CLASS_COUNTERS, MAP_DEST_STATS, MAP_FLOWS, MAP_INSERTS, PACKET_CLASSES,
};

/// One read of all counters.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Every destination entry, summed over CPUs.
    pub dests: Vec<(DestKey, DestStats)>,
    /// Packet classes, index `device * DIRECTIONS + direction`.
    pub classes: Vec<[u64; PACKET_CLASSES]>,
    pub flow_entries: u64,
    pub flow_inserts: u64,
    pub dest_inserts: u64,
    /// CPUs whose pending destination counts could not be folded before this read (`fold`).
    pub unfolded_cpus: u32,
}

impl Snapshot {
    pub fn classes_of(&self, device: u32, direction: u8) -> [u64; PACKET_CLASSES] {
        self.classes.get((device * DIRECTIONS + direction as u32) as usize).copied().unwrap_or_default()
    }

    /// Entries pushed out of the LRU maps: insertions minus live entries.
    pub fn flow_evictions(&self) -> u64 {
        self.flow_inserts.saturating_sub(self.flow_entries)
    }

    pub fn dest_evictions(&self) -> u64 {
        self.dest_inserts.saturating_sub(self.dests.len() as u64)
    }
}

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{
    fold::{self, FoldError},
    loader::MapSource,
};

fn map<'a>(maps: &'a impl MapSource, name: &str) -> &'a aya::maps::Map {
    maps.map_named(name).unwrap_or_else(|| panic!("the object defines map {name}"))
}

/// Sums a per-CPU array slot over CPUs.
pub fn per_cpu_sum(maps: &impl MapSource, name: &str, slot: u32) -> Result<u64, MapError> {
    let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(maps, name))?;
    Ok(arr.get(&slot, 0)?.iter().sum())
}

/// Every counter, the flow table's live entries included (walked key by key).
pub fn read(ebpf: &impl MapSource) -> Result<Snapshot, MapError> {
    let flow_entries = count_flows(ebpf)?;
    read_with_flow_entries(ebpf, flow_entries)
}

/// Live entries of the flow table: one syscall per key, ~70 ms for a full table of 65,536.
pub fn count_flows(ebpf: &impl MapSource) -> Result<u64, MapError> {
    let flows: HashMap<&MapData, FlowKey, FlowState> = HashMap::try_from(map(ebpf, MAP_FLOWS))?;
    Ok(flows.keys().count() as u64)
}

/// Folds every CPU's pending destination counts into `DEST_STATS` (`fold`), so that a read
/// that follows is exact. Returns the CPUs that could not be folded; says why on standard
/// error the first time.
pub fn fold_pending(ebpf: &impl MapSource) -> u32 {
    static SAID: AtomicBool = AtomicBool::new(false);
    let r = ebpf.fold_program().map_or(Err(FoldError::NoProgram), fold::on_every_cpu);
    match r {
        Ok(()) => 0,
        Err(e) => {
            if !SAID.swap(true, Ordering::Relaxed) {
                eprintln!("echo-agent: {e}: destination counters lack those CPUs' latest frames until they fold them (echo_unfolded_cpus)");
            }
            e.unfolded_cpus()
        }
    }
}

/// Every destination entry, summed over CPUs, in key order (device, direction, address, port,
/// protocol), pending counts folded first. Cheaper than `read` when only destinations are
/// wanted: the API's device and destination views, which an experiment runner polls every
/// 10 ms.
pub fn read_dests(ebpf: &impl MapSource) -> Result<Vec<(DestKey, DestStats)>, MapError> {
    fold_pending(ebpf);
    sum_dests(ebpf)
}

/// `DEST_STATS` as it is, summed over CPUs, in key order.
fn sum_dests(ebpf: &impl MapSource) -> Result<Vec<(DestKey, DestStats)>, MapError> {
    let stats: PerCpuHashMap<&MapData, DestKey, DestStats> = PerCpuHashMap::try_from(map(ebpf, MAP_DEST_STATS))?;
    let mut dests = Vec::new();
    for entry in stats.iter() {
        let (key, per_cpu) = entry?;
        let mut sum = DestStats::default();
        per_cpu.iter().for_each(|s| sum.merge(s));
        dests.push((key, sum));
    }
    dests.sort_by(|a, b| (a.0.device, a.0.direction, a.0.addr, a.0.port, a.0.proto).cmp(&(b.0.device, b.0.direction, b.0.addr, b.0.port, b.0.proto)));
    Ok(dests)
}

/// Every counter, with the flow table's live entries as counted elsewhere.
pub fn read_with_flow_entries(ebpf: &impl MapSource, flow_entries: u64) -> Result<Snapshot, MapError> {
    let unfolded_cpus = fold_pending(ebpf);
    let dests = sum_dests(ebpf)?;

    let classes_map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(ebpf, MAP_CLASS_COUNTERS))?;
    let sums = classes_map.iter().map(|per_cpu| per_cpu.map(|v| v.iter().sum::<u64>())).collect::<Result<Vec<u64>, _>>()?;
    let classes = sums.chunks(PACKET_CLASSES).map(|c| std::array::from_fn(|i| c.get(i).copied().unwrap_or(0))).collect();

    let sum_slot = |slot: u32| per_cpu_sum(ebpf, MAP_INSERTS, slot);
    Ok(Snapshot {
        dests,
        classes,
        flow_entries,
        flow_inserts: sum_slot(INSERTS_FLOWS)?,
        dest_inserts: sum_slot(INSERTS_DEST_STATS)?,
        unfolded_cpus,
    })
}
