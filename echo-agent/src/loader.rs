//! Loads the echo-ebpf programs (optionally reusing maps pinned by an earlier agent) and
//! configures their maps. Attaching lives in `attach`, the pin directory in `pins`.

use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::Path,
};

use aya::{
    maps::{Array, HashMap, Map, MapError, RingBuf},
    programs::{ProgramError, SchedClassifier, Xdp},
    Ebpf, EbpfError, EbpfLoader,
};
use echo_common::{
    DeviceSlot, MarkerInfo, MarkerKey, CLOCK_CAPTURE, CLOCK_KERNEL, DEST_STATS_ENTRIES, DEVICE_SLOTS, FLOW_TABLE_ENTRIES, GLOBAL_CLOCK, GLOBAL_MARKERS_ENABLED, MAP_DEST_STATS, MAP_DEVICE_TABLE, MAP_EVENTS, MAP_FLOWS, MAP_MARKERS, MAP_SNIPPETS, MAX_DEVICES, MAX_MARKERS,
};
use thiserror::Error;

use crate::{clock::Clock, device::Mac, device_table, pins};

/// The programs, compiled for the BPF target by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/echo-ebpf"));

/// Name of the XDP (upload) program in the object.
pub const XDP_PROGRAM: &str = "echo_xdp";
/// Name of the TC egress (download) program in the object.
pub const TC_PROGRAM: &str = "echo_tc";
/// Name of the TC ingress upload program in the object, echo_xdp's stand-in with
/// `--xdp-mode tc-ingress`: loaded only then (`Programs::load_tc_up`).
pub const TC_UPLOAD_PROGRAM: &str = "echo_tc_up";
/// Name of the program that folds a CPU's pending destination counts into `DEST_STATS`
/// (`fold`): loaded with the maps, never attached, run on each CPU before a read.
pub const FOLD_PROGRAM: &str = "echo_fold";
/// Name of the benchmarks' baseline in the object: an XDP program that only passes the
/// frame (never loaded or attached by the agent).
pub const BASELINE_PROGRAM: &str = "echo_baseline";

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("loading eBPF programs needs root, or CAP_BPF and CAP_NET_ADMIN")]
    Privileges,
    #[error("the kernel refused the eBPF object")]
    Object(#[source] EbpfError),
    #[error("the kernel refused program {name}{}", .verdict.as_deref().map(|v| format!(" ({v})")).unwrap_or_default())]
    Program {
        name: &'static str,
        /// The verifier's last word (`verifier_verdict`).
        verdict: Option<String>,
        #[source]
        source: ProgramError,
    },
    #[error("map {0}")]
    Map(&'static str, #[source] MapError),
    #[error("at most {MAX_DEVICES} devices can be monitored, {0} given")]
    TooManyDevices(usize),
    #[error("at most {MAX_MARKERS} marker addresses can be configured, {0} given")]
    TooManyMarkers(usize),
    #[error(transparent)]
    Pins(#[from] pins::PinError),
}

/// True when `e` or one of its sources is EPERM: missing privileges, not a bad program.
pub fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    has_errno(e, libc::EPERM)
}

/// True when `e` or one of its sources is the OS error `errno`.
pub fn has_errno(e: &(dyn std::error::Error + 'static), errno: i32) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(errno) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Whether this process may load and attach the programs: CAP_NET_ADMIN, and CAP_BPF (or,
/// before 5.8, CAP_SYS_ADMIN), in its effective set. Not CAP_PERFMON: the programs are
/// written for the verifier's Spectre v1 rules that apply without it (packets read through
/// helpers into the stack, no variable offsets on packet or map value pointers, no
/// narrower store over a pointer left on the stack; see `echo-ebpf/src/parse/mod.rs`).
pub fn has_privileges() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    // struct __user_cap_header_struct { version, pid } and two __user_cap_data_struct
    // { effective, permitted, inheritable } (version 3: 64 capability bits).
    let mut header = [0x2008_0522u32, 0];
    let mut data = [0u32; 6];
    // SAFETY: valid header and data buffers of the sizes capget expects for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) } != 0 {
        return false;
    }
    let effective = |cap: u32| data[(cap / 32 * 3) as usize] & (1 << (cap % 32)) != 0;
    effective(CAP_NET_ADMIN) && (effective(CAP_BPF) || effective(CAP_SYS_ADMIN))
}

/// The parsed object file: map definitions (names, sizes) without loading anything.
pub fn object() -> aya_obj::Object {
    aya_obj::Object::parse(OBJECT).expect("the embedded object parses")
}

/// Maps every frame in a program's way, read by the agent through `MapSource`.
pub trait MapSource {
    fn map_named(&self, name: &str) -> Option<&Map>;
    /// `FOLD_PROGRAM`, to run before reading `DEST_STATS` (`fold`).
    fn fold_program(&self) -> Option<BorrowedFd<'_>>;
}

impl MapSource for Ebpf {
    fn map_named(&self, name: &str) -> Option<&Map> {
        self.map(name)
    }

    fn fold_program(&self) -> Option<BorrowedFd<'_>> {
        let xdp: &Xdp = self.program(FOLD_PROGRAM)?.try_into().ok()?;
        xdp.fd().ok().map(|fd| fd.as_fd())
    }
}

/// Maps taken out of the `Ebpf` object, with the fold program's fd, so a scrape thread can
/// own them.
#[derive(Default)]
pub struct MapSet {
    maps: std::collections::HashMap<String, Map>,
    fold: Option<OwnedFd>,
}

impl MapSource for MapSet {
    fn map_named(&self, name: &str) -> Option<&Map> {
        self.maps.get(name)
    }

    fn fold_program(&self) -> Option<BorrowedFd<'_>> {
        self.fold.as_ref().map(|fd| fd.as_fd())
    }
}

/// Entries of the two LRU tables, the bulk of what a load allocates: preallocated, and
/// `DEST_STATS` per CPU. Creating both at full size took 13–21 ms on a 2-core VM (strace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSizes {
    pub flows: u32,
    pub destinations: u32,
}

impl TableSizes {
    /// The sizes the object declares, which the live agent pins.
    pub const FULL: Self = Self { flows: FLOW_TABLE_ENTRIES, destinations: DEST_STATS_ENTRIES };
}

fn program_err(name: &'static str, e: ProgramError) -> LoadError {
    if is_eperm(&e) {
        return LoadError::Privileges;
    }
    let verdict = match &e {
        ProgramError::LoadError { verifier_log, .. } => verifier_verdict(&verifier_log.to_string()).map(str::to_string),
        _ => None,
    };
    LoadError::Program { name, verdict, source: e }
}

/// The verifier's last word in its log: the last line before its statistics. The error's
/// own text starts with the log's first line, which says nothing when the log is long (a
/// program refused as too complex has millions of lines, and the kernel keeps their end).
pub fn verifier_verdict(log: &str) -> Option<&str> {
    const STATS: [&str; 3] = ["verification time ", "stack depth ", "processed "];
    log.lines().map(str::trim).rev().find(|l| !l.is_empty() && !STATS.iter().any(|s| l.starts_with(s)))
}

/// Loads echo_xdp (from `Programs::programs_mut`) into the kernel.
pub fn load_xdp(xdp: &mut Xdp) -> Result<(), LoadError> {
    xdp.load().map_err(|e| program_err(XDP_PROGRAM, e))
}

/// Loads echo_tc (from `Programs::programs_mut`) into the kernel.
pub fn load_tc(tc: &mut SchedClassifier) -> Result<(), LoadError> {
    tc.load().map_err(|e| program_err(TC_PROGRAM, e))
}

/// The loaded object with both programs loaded into the kernel (not attached), or (from
/// `Programs::open`) its maps only, the programs still to load.
pub struct Programs {
    pub ebpf: Ebpf,
    /// The clock the programs take "now" from, fixed at load time (`GLOBAL_CLOCK`):
    /// `Monotonic` the kernel's (`CLOCK_KERNEL`), `Capture` each frame's (`CLOCK_CAPTURE`).
    clock: Clock,
}

impl Programs {
    /// Loads with private maps (replay, tests), `markers` (address, family) the marker
    /// addresses (slot = position in the list), reading `clock`.
    pub fn load(markers: &[MarkerKey], clock: Clock) -> Result<Self, LoadError> {
        Self::load_sized(markers, clock, TableSizes::FULL)
    }

    /// As `load`, with the LRU tables at `sizes` (replay starts small, see `replay`).
    pub fn load_sized(markers: &[MarkerKey], clock: Clock, sizes: TableSizes) -> Result<Self, LoadError> {
        let mut programs = Self::open(markers, clock, sizes)?;
        programs.load_programs()?;
        Ok(programs)
    }

    /// As `load_sized`, but only creates and fills the maps: the programs are loaded later by
    /// `load_programs`, or by `testrun::run_capture`, which runs frames through echo_tc while
    /// echo_xdp is still being verified.
    pub fn open(markers: &[MarkerKey], clock: Clock, sizes: TableSizes) -> Result<Self, LoadError> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(MAP_FLOWS, sizes.flows).map_max_entries(MAP_DEST_STATS, sizes.destinations);
        Self::open_with(&mut loader, markers, clock)
    }

    /// Loads reusing the maps pinned in `dir` when their layout matches, pinning fresh ones
    /// otherwise; `markers` as for `load`, the kernel's clock (`Clock::Monotonic`: live).
    /// Returns what had to be recreated, for the log.
    pub fn load_pinned(dir: &Path, markers: &[MarkerKey]) -> Result<(Self, Vec<String>), LoadError> {
        let obj = object();
        let notes = pins::check_layout(dir, &obj)?;
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&'static str, std::path::PathBuf)> =
            pins::PINNED_MAPS.iter().map(|&name| (name, dir.join(name))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut programs = Self::open_with(&mut loader, markers, Clock::Monotonic)?;
        programs.load_programs()?;
        Ok((programs, notes))
    }

    /// The clock and whether there are markers are fixed at load time (`GLOBAL_CLOCK`,
    /// `GLOBAL_MARKERS_ENABLED`), so the verifier drops the other clock's code, and the marker
    /// check from a program without markers; the addresses go into `MARKERS` once the maps
    /// exist.
    fn open_with(loader: &mut EbpfLoader, markers: &[MarkerKey], clock: Clock) -> Result<Self, LoadError> {
        if markers.len() > MAX_MARKERS as usize {
            return Err(LoadError::TooManyMarkers(markers.len()));
        }
        let enabled = if markers.is_empty() { &0u32 } else { &1u32 };
        let ebpf = loader
            .override_global(GLOBAL_MARKERS_ENABLED, enabled, true)
            .override_global(GLOBAL_CLOCK, if clock == Clock::Capture { &CLOCK_CAPTURE } else { &CLOCK_KERNEL }, true)
            .load(OBJECT)
            .map_err(|e| if is_eperm(&e) { LoadError::Privileges } else { LoadError::Object(e) })?;
        let mut programs = Programs { ebpf, clock };
        programs.fill_markers(markers)?;
        // With the maps, not the other programs: any counts in the maps can be folded,
        // whichever programs later load (a few instructions to verify).
        let fold: &mut Xdp = programs.ebpf.program_mut(FOLD_PROGRAM).expect("the object defines echo_fold").try_into().expect("XDP");
        fold.load().map_err(|e| program_err(FOLD_PROGRAM, e))?;
        Ok(programs)
    }

    /// Loads both programs into the kernel, at once: verifying each takes ~0.04-0.1 s of one
    /// core, most of a replay's start-up.
    pub fn load_programs(&mut self) -> Result<(), LoadError> {
        let (xdp, tc) = self.programs_mut();
        let (xdp, tc) = std::thread::scope(|s| {
            let tc = s.spawn(|| load_tc(tc));
            (load_xdp(xdp), tc.join().expect("loading does not panic"))
        });
        xdp.and(tc)
    }

    /// Both programs, to load or run them from different threads.
    pub fn programs_mut(&mut self) -> (&mut Xdp, &mut SchedClassifier) {
        let (mut xdp, mut tc) = (None, None);
        for (name, program) in self.ebpf.programs_mut() {
            match name {
                XDP_PROGRAM => xdp = Some(<&mut Xdp>::try_from(program).expect("echo_xdp is XDP")),
                TC_PROGRAM => tc = Some(<&mut SchedClassifier>::try_from(program).expect("echo_tc is a classifier")),
                _ => {}
            }
        }
        (xdp.expect("the object defines echo_xdp"), tc.expect("the object defines echo_tc"))
    }

    pub fn xdp(&self) -> &Xdp {
        self.ebpf.program(XDP_PROGRAM).expect("loaded").try_into().expect("XDP")
    }

    pub fn xdp_mut(&mut self) -> &mut Xdp {
        self.ebpf.program_mut(XDP_PROGRAM).expect("loaded").try_into().expect("XDP")
    }

    pub fn tc(&self) -> &SchedClassifier {
        self.ebpf.program(TC_PROGRAM).expect("loaded").try_into().expect("classifier")
    }

    pub fn tc_mut(&mut self) -> &mut SchedClassifier {
        self.ebpf.program_mut(TC_PROGRAM).expect("loaded").try_into().expect("classifier")
    }

    /// Loads echo_tc_up into the kernel, once (`--xdp-mode tc-ingress`).
    pub fn load_tc_up(&mut self) -> Result<(), LoadError> {
        let tc = self.tc_up_mut();
        if tc.fd().is_ok() {
            return Ok(());
        }
        tc.load().map_err(|e| program_err(TC_UPLOAD_PROGRAM, e))
    }

    pub fn tc_up_mut(&mut self) -> &mut SchedClassifier {
        self.ebpf.program_mut(TC_UPLOAD_PROGRAM).expect("the object defines echo_tc_up").try_into().expect("classifier")
    }

    fn map_mut(&mut self, name: &'static str) -> &mut Map {
        self.ebpf.map_mut(name).unwrap_or_else(|| panic!("the object defines map {name}"))
    }

    /// Makes `devices` the monitored devices. A device keeps the index it had in the (pinned)
    /// table, so counters of a restarted agent stay with their device whatever the flag order;
    /// devices no longer listed are removed. Only slots that change are written, so a restart
    /// with the same devices leaves the table the running programs probe untouched. Returns
    /// each device's index, in `devices` order.
    pub fn set_devices(&mut self, devices: &[Mac]) -> Result<Vec<u32>, LoadError> {
        if devices.len() > MAX_DEVICES as usize {
            return Err(LoadError::TooManyDevices(devices.len()));
        }
        let map_err = |e| LoadError::Map(MAP_DEVICE_TABLE, e);
        let mut map: Array<_, DeviceSlot> = Array::try_from(self.map_mut(MAP_DEVICE_TABLE)).map_err(map_err)?;
        let old: Vec<DeviceSlot> = (0..DEVICE_SLOTS).map(|i| map.get(&i, 0)).collect::<Result<_, _>>().map_err(map_err)?;
        let indices = device_table::indices(devices, &old);
        let table = device_table::build(devices, &indices);
        for (i, (o, n)) in old.iter().zip(&table).enumerate() {
            if o != n {
                map.set(i as u32, n, 0).map_err(map_err)?;
            }
        }
        Ok(indices)
    }

    /// Makes `markers` the contents of `MARKERS` (pinned: an earlier agent's addresses go).
    fn fill_markers(&mut self, markers: &[MarkerKey]) -> Result<(), LoadError> {
        let map_err = |e| LoadError::Map(MAP_MARKERS, e);
        let mut map: HashMap<_, MarkerKey, MarkerInfo> = HashMap::try_from(self.map_mut(MAP_MARKERS)).map_err(map_err)?;
        let old: Vec<MarkerKey> = map.keys().collect::<Result<_, _>>().map_err(map_err)?;
        for k in old.iter().filter(|k| !markers.contains(k)) {
            map.remove(k).map_err(map_err)?;
        }
        for (slot, key) in markers.iter().enumerate() {
            map.insert(key, MarkerInfo { slot: slot as u32 }, 0).map_err(map_err)?;
        }
        Ok(())
    }

    /// The clock the programs were loaded with.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Takes the named maps out of the object, with a copy of the fold program's fd (for a
    /// thread that reads them on its own).
    pub fn take_maps(&mut self, names: &[&str]) -> MapSet {
        let fold = self.ebpf.fold_program().and_then(|fd| fd.try_clone_to_owned().ok());
        MapSet { maps: names.iter().filter_map(|&n| self.ebpf.take_map(n).map(|m| (n.to_string(), m))).collect(), fold }
    }

    /// Takes both ring buffers out of the object, for the one reader that drains them.
    pub fn rings(&mut self) -> Result<crate::events::Rings, LoadError> {
        let mut ring = |name: &'static str| {
            let map = self.ebpf.take_map(name).ok_or(LoadError::Map(name, MapError::InvalidName { name: name.to_string() }))?;
            RingBuf::try_from(map).map_err(|e| LoadError::Map(name, e))
        };
        Ok(crate::events::Rings { events: ring(MAP_EVENTS)?, snippets: ring(MAP_SNIPPETS)? })
    }

    /// Instructions the verifier processed when loading the XDP program.
    pub fn xdp_verified_insns(&self) -> Option<u32> {
        self.xdp().info().ok().and_then(|i| i.verified_instruction_count())
    }

    /// Instructions the verifier processed when loading the TC program.
    pub fn tc_verified_insns(&self) -> Option<u32> {
        self.tc().info().ok().and_then(|i| i.verified_instruction_count())
    }
}

#[cfg(test)]
mod tests {
    use super::verifier_verdict;

    #[test]
    fn the_verdict_is_the_last_line_before_the_statistics() {
        // The end of the log the kernel (6.18.44-fc-v1272) kept when it refused echo_xdp
        // loaded without CAP_PERFMON: 16 MiB of it, starting mid-line.
        let refused = "ls_records.rs:355\n4353: (73) *(u8 *)(r8 +4) = r1\n3700: (55) if r1 != 0x0 goto pc+1\n\
            The sequence of 8193 jumps is too complex.\nverification time 2867582 usec\nstack depth 352+0+0+16+80\n\
            processed 423762 insns (limit 1000000) max_states_per_insn 69 total_states 9785 peak_states 6670 mark_read 0\n";
        assert_eq!(verifier_verdict(refused), Some("The sequence of 8193 jumps is too complex."));
        let short = "0: R1=ctx() R10=fp0\n0: (79) r0 = *(u64 *)(r1 +512)\ninvalid bpf_context access off=512 size=8\n\
            processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n\n";
        assert_eq!(verifier_verdict(short), Some("invalid bpf_context access off=512 size=8"));
        assert_eq!(verifier_verdict(""), None);
        assert_eq!(verifier_verdict("processed 0 insns\n"), None);
    }
}
