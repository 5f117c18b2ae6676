//! Loads the echo-ebpf programs and configures their maps.

use aya::{
    maps::{Array, HashMap, MapError},
    programs::{ProgramError, Xdp},
    Ebpf, EbpfError,
};
use echo_common::{mac_filter_bit, mac_key, DeviceInfo, MAP_CLOCK, MAP_DEVICES, MAP_DEVICE_FILTER, MAX_DEVICES};
use thiserror::Error;

use crate::device::Mac;

/// The programs, compiled for the BPF target by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/echo-ebpf"));

/// Name of the XDP (upload) program in the object.
pub const XDP_PROGRAM: &str = "echo_xdp";

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("loading eBPF programs needs root or CAP_BPF and CAP_NET_ADMIN")]
    Privileges,
    #[error("the kernel refused the eBPF object: {0}")]
    Object(#[source] EbpfError),
    #[error("the kernel refused program {0}: {1}")]
    Program(&'static str, #[source] ProgramError),
    #[error("map {0}: {1}")]
    Map(&'static str, #[source] MapError),
    #[error("at most {MAX_DEVICES} devices can be monitored, {0} given")]
    TooManyDevices(usize),
}

fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(libc::EPERM) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// The loaded object with its XDP program loaded into the kernel (not attached).
pub struct Programs {
    pub ebpf: Ebpf,
}

impl Programs {
    pub fn load() -> Result<Self, LoadError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| if is_eperm(&e) { LoadError::Privileges } else { LoadError::Object(e) })?;
        let xdp: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .expect("the object defines echo_xdp")
            .try_into()
            .expect("echo_xdp is an XDP program");
        xdp.load().map_err(|e| if is_eperm(&e) { LoadError::Privileges } else { LoadError::Program(XDP_PROGRAM, e) })?;
        Ok(Programs { ebpf })
    }

    pub fn xdp(&self) -> &Xdp {
        self.ebpf.program(XDP_PROGRAM).expect("loaded").try_into().expect("XDP")
    }

    /// Makes `devices` the monitored devices, with indices in the given order.
    pub fn set_devices(&mut self, devices: &[Mac]) -> Result<(), LoadError> {
        if devices.len() > MAX_DEVICES as usize {
            return Err(LoadError::TooManyDevices(devices.len()));
        }
        let map_err = |e| LoadError::Map(MAP_DEVICES, e);
        let mut map: HashMap<_, [u8; 8], DeviceInfo> =
            HashMap::try_from(self.ebpf.map_mut(MAP_DEVICES).expect("DEVICES exists")).map_err(map_err)?;
        let mut filter = 0u64;
        for (index, mac) in devices.iter().enumerate() {
            map.insert(mac_key(mac.0), DeviceInfo { index: index as u32, _reserved: 0 }, 0).map_err(map_err)?;
            filter |= mac_filter_bit(mac.0);
        }
        let mut arr: Array<_, u64> = Array::try_from(self.ebpf.map_mut(MAP_DEVICE_FILTER).expect("DEVICE_FILTER exists"))
            .map_err(|e| LoadError::Map(MAP_DEVICE_FILTER, e))?;
        arr.set(0, filter, 0).map_err(|e| LoadError::Map(MAP_DEVICE_FILTER, e))
    }

    /// Sets the programs' clock override (0: the kernel's monotonic clock).
    pub fn set_clock(&mut self, ns: u64) -> Result<(), LoadError> {
        let mut arr: Array<_, u64> = Array::try_from(self.ebpf.map_mut(MAP_CLOCK).expect("CLOCK exists"))
            .map_err(|e| LoadError::Map(MAP_CLOCK, e))?;
        arr.set(0, ns, 0).map_err(|e| LoadError::Map(MAP_CLOCK, e))
    }
}

impl Programs {
    /// Instructions the verifier processed when loading the XDP program.
    pub fn xdp_verified_insns(&self) -> Option<u32> {
        self.xdp().info().ok().and_then(|i| i.verified_instruction_count())
    }
}
