//! Attaching the programs to the hotspot interface through pinned BPF links.
//!
//! A link pinned in the pin directory keeps its program attached after the agent exits (or
//! is killed). A restarted agent finds it and swaps its own, freshly loaded program into it
//! atomically (`BPF_LINK_UPDATE`): the interface is never without a program, and since the
//! maps are pinned too, the new program carries on with the same counters. No byte is lost.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    SchedClassifier,
    xdp::{XdpLink, XdpMode as KernelXdpMode},
    ProgramError, TcAttachType,
};
use aya::util::KernelVersion;
use clap::ValueEnum;
use thiserror::Error;

use crate::{
    loader::{has_errno, is_eperm, Programs},
    pins::{link_ifindex, TC_INGRESS_LINK, TC_LINK, XDP_LINK_DRIVER, XDP_LINK_SKB},
};

/// `--xdp-mode`: how the upload program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpMode {
    /// Driver mode when the driver supports XDP, else skb (generic) mode. Wi-Fi drivers have
    /// no native XDP, so on a real hotspot this ends up in skb mode.
    Auto,
    Skb,
    Driver,
    /// No XDP: the upload program at TC ingress (TCX) instead, counting the same bytes. For
    /// drivers without native XDP, where skb mode first copies every frame with less than
    /// 256 bytes of headroom (BENCHMARKS.md measures both).
    #[value(name = "tc-ingress")]
    TcIngress,
}

/// The `mode` label of `echo_xdp_attached` (and `Links::xdp_mode`) for `XdpMode::TcIngress`.
pub const TC_INGRESS_MODE: &str = "tc-ingress";

impl XdpMode {
    /// The XDP modes to try, in order: (label, kernel flag, link pin name).
    fn candidates(self) -> &'static [(&'static str, KernelXdpMode, &'static str)] {
        const DRIVER: (&str, KernelXdpMode, &str) = ("driver", KernelXdpMode::Driver, XDP_LINK_DRIVER);
        const SKB: (&str, KernelXdpMode, &str) = ("skb", KernelXdpMode::Skb, XDP_LINK_SKB);
        match self {
            XdpMode::Auto => &[DRIVER, SKB],
            XdpMode::Skb => &[SKB],
            XdpMode::Driver => &[DRIVER],
            XdpMode::TcIngress => &[],
        }
    }

    /// The link pins this mode may use; an upload pin of another mode is let go.
    fn upload_pins(self) -> Vec<&'static str> {
        match self {
            XdpMode::TcIngress => vec![TC_INGRESS_LINK],
            _ => self.candidates().iter().map(|c| c.2).collect(),
        }
    }
}

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("no such interface: {0}")]
    NoSuchInterface(String),
    #[error("attaching needs root, or CAP_BPF and CAP_NET_ADMIN")]
    Privileges,
    #[error("cannot attach XDP to {0} in {1} mode")]
    Xdp(String, &'static str, #[source] ProgramError),
    #[error("{0} has no native XDP support (its driver refused driver mode): use --xdp-mode skb or auto")]
    NoDriverMode(String),
    #[error("cannot attach the TC {1} program to {0}")]
    Tc(String, &'static str, #[source] ProgramError),
    #[error("Linux {0} has no TCX links, which the TC programs attach through: Linux 6.6 or later is needed")]
    NoTcx(String),
    #[error("link on {0}: {1}")]
    Link(String, String),
    #[error("cannot pin link {0}: {1}")]
    Pin(PathBuf, String),
}

/// A link this agent holds, and where it is pinned.
struct Held {
    link: FdLink,
    path: PathBuf,
}

/// Both programs attached to one interface.
pub struct Links {
    /// The upload program's link: XDP, or TC ingress.
    upload: Held,
    tc: Held,
    /// "driver", "skb" or `TC_INGRESS_MODE`.
    pub xdp_mode: &'static str,
    pub ifindex: u32,
    /// The links were already there (an earlier agent's) and got the new programs swapped in.
    pub reused: bool,
}

impl Links {
    /// Where the upload program's link is pinned.
    pub fn upload_pin(&self) -> PathBuf {
        self.upload.path.clone()
    }

    /// Lets go of the links. `keep`: leave them pinned, so the programs stay attached and
    /// counting after this agent exits; otherwise unpin them, which detaches the programs.
    pub fn release(self, keep: bool) {
        for held in [self.upload, self.tc] {
            if !keep {
                let _ = std::fs::remove_file(&held.path);
            }
            drop(held.link);
        }
    }
}

/// The first kernel with TCX links, which both TC programs attach through: pinned, and swapped
/// atomically on restart like the XDP link. Older kernels attach TC programs as netlink
/// (clsact) filters, which aya hands back as links that cannot be pinned; the agent does not
/// manage those.
const TCX_KERNEL: KernelVersion = KernelVersion::new(6, 6, 0);

/// Whether the running kernel (`current`) has TCX links; checked before anything is loaded.
pub fn check_kernel(current: KernelVersion) -> Result<(), AttachError> {
    if current < TCX_KERNEL {
        return Err(AttachError::NoTcx(current.to_string()));
    }
    Ok(())
}

pub fn ifindex(iface: &str) -> Option<u32> {
    let c = CString::new(iface).ok()?;
    // SAFETY: a valid NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Attaches both programs to `iface`, reusing the links pinned in `dir` when they are still
/// attached to this very interface (same ifindex), else attaching and pinning new ones. With
/// `XdpMode::TcIngress` the upload program is echo_tc_up, which the caller has loaded
/// (`Programs::load_tc_up`).
pub fn attach(progs: &mut Programs, iface: &str, mode: XdpMode, dir: &Path) -> Result<Links, AttachError> {
    let index = ifindex(iface).ok_or_else(|| AttachError::NoSuchInterface(iface.to_string()))?;
    // Upload pins of other modes are let go first, so the interface can take the new mode
    // and no frame is counted by two upload programs.
    let keep = mode.upload_pins();
    for pin_name in [XDP_LINK_DRIVER, XDP_LINK_SKB, TC_INGRESS_LINK] {
        if !keep.contains(&pin_name) {
            let _ = std::fs::remove_file(dir.join(pin_name));
        }
    }
    let (upload, xdp_mode, upload_reused) = if mode == XdpMode::TcIngress {
        let (held, reused) = attach_tc(progs.tc_up_mut(), iface, index, &dir.join(TC_INGRESS_LINK), TcAttachType::Ingress)?;
        (held, TC_INGRESS_MODE, reused)
    } else {
        attach_xdp(progs, iface, index, mode, dir)?
    };
    let (tc, tc_reused) = attach_tc(progs.tc_mut(), iface, index, &dir.join(TC_LINK), TcAttachType::Egress)?;
    Ok(Links { upload, tc, xdp_mode, ifindex: index, reused: upload_reused && tc_reused })
}

/// The pinned link at `path` when it is alive on `index`; any other pin there is removed.
fn reusable(path: &Path, index: u32) -> Option<FdLink> {
    match link_ifindex(path) {
        Some(i) if i == index => PinnedLink::from_pin(path).ok().map(FdLink::from),
        Some(_) => {
            // Defunct (interface gone) or attached elsewhere: unpinning lets it go.
            let _ = std::fs::remove_file(path);
            None
        }
        None => None,
    }
}

fn link_err(iface: &str, e: impl std::fmt::Display) -> AttachError {
    AttachError::Link(iface.to_string(), e.to_string())
}

fn pin(link: FdLink, path: &Path) -> Result<FdLink, AttachError> {
    let _ = std::fs::remove_file(path);
    link.pin(path).map(FdLink::from).map_err(|e| AttachError::Pin(path.to_path_buf(), e.to_string()))
}

fn attach_xdp(
    progs: &mut Programs,
    iface: &str,
    index: u32,
    mode: XdpMode,
    dir: &Path,
) -> Result<(Held, &'static str, bool), AttachError> {
    for &(name, _, pin_name) in mode.candidates() {
        let path = dir.join(pin_name);
        if let Some(old) = reusable(&path, index) {
            let xdp = progs.xdp_mut();
            let err = |e| AttachError::Xdp(iface.to_string(), name, e);
            let link = XdpLink::try_from(old).map_err(|e| link_err(iface, e))?;
            let id = xdp.attach_to_link(link).map_err(err)?;
            let link = FdLink::try_from(xdp.take_link(id).map_err(err)?).map_err(|e| link_err(iface, e))?;
            return Ok((Held { link, path }, name, true));
        }
    }
    let mut last = None;
    for &(name, flags, pin_name) in mode.candidates() {
        let xdp = progs.xdp_mut();
        let err = |e| AttachError::Xdp(iface.to_string(), name, e);
        match xdp.attach_to_if_index(index, flags) {
            Ok(id) => {
                let link = FdLink::try_from(xdp.take_link(id).map_err(err)?).map_err(|e| link_err(iface, e))?;
                let path = dir.join(pin_name);
                let link = pin(link, &path)?;
                return Ok((Held { link, path }, name, false));
            }
            Err(e) if is_eperm(&e) => return Err(AttachError::Privileges),
            Err(e) if mode == XdpMode::Driver && has_errno(&e, libc::EOPNOTSUPP) => return Err(AttachError::NoDriverMode(iface.to_string())),
            Err(e) => last = Some(err(e)),
        }
    }
    Err(last.expect("every mode has a candidate"))
}

fn attach_tc(tc: &mut SchedClassifier, iface: &str, index: u32, path: &Path, at: TcAttachType) -> Result<(Held, bool), AttachError> {
    let side = if at == TcAttachType::Ingress { "ingress" } else { "egress" };
    let err = |e| AttachError::Tc(iface.to_string(), side, e);
    if let Some(old) = reusable(path, index) {
        let link = SchedClassifierLink::try_from(old).map_err(|e| link_err(iface, e))?;
        let id = tc.attach_to_link(link).map_err(err)?;
        let link = FdLink::try_from(tc.take_link(id).map_err(err)?).map_err(|e| link_err(iface, e))?;
        return Ok((Held { link, path: path.to_path_buf() }, true));
    }
    // Kernels from 6.6 attach through TCX, a BPF link: no clsact qdisc needed.
    let id = tc.attach(iface, at).map_err(|e| if is_eperm(&e) { AttachError::Privileges } else { err(e) })?;
    let link = FdLink::try_from(tc.take_link(id).map_err(err)?).map_err(|e| link_err(iface, e))?;
    let link = pin(link, path)?;
    Ok((Held { link, path: path.to_path_buf() }, false))
}

#[cfg(test)]
mod tests {
    use aya::util::KernelVersion;

    use super::check_kernel;

    #[test]
    fn tcx_needs_linux_6_6() {
        let said = |v| check_kernel(v).map_err(|e| e.to_string());
        assert_eq!(said(KernelVersion::new(6, 1, 0)), Err("Linux 6.1.0 has no TCX links, which the TC programs attach through: Linux 6.6 or later is needed".to_string()));
        assert_eq!(said(KernelVersion::new(6, 5, 13)), Err("Linux 6.5.13 has no TCX links, which the TC programs attach through: Linux 6.6 or later is needed".to_string()));
        assert_eq!(said(KernelVersion::new(6, 6, 0)), Ok(()));
        assert_eq!(said(KernelVersion::new(6, 18, 44)), Ok(()));
    }
}
