//! Test topologies in network namespaces: device ↔ hotspot ↔ cloud, each its own namespace,
//! created and deleted by the test (nothing in the root namespace; every address used lives
//! inside them). Names carry a per-topology suffix so tests run in parallel.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{bail, Context as _, Result};

use crate::packets::{DEVICE_MAC, HOTSPOT_MAC};

/// Prefix of every namespace this crate creates.
const PREFIX: &str = "ea";

/// Addresses inside the topology (they exist only in its namespaces).
pub const DEVICE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
pub const HOTSPOT_LAN_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
pub const HOTSPOT_WAN_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
pub const DEVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 2);
pub const HOTSPOT_LAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 1);
pub const HOTSPOT_WAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 1);
/// Servers in the cloud namespace: 10.77.2.10–12 and fd77:2::10–12.
pub const SERVERS: usize = 3;

pub fn server_v4(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 77, 2, 10 + i as u8))
}

pub fn server_v6(i: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 0x10 + i as u16))
}

pub fn tls_addr(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 443)
}

/// The three namespaces and the interfaces between them.
pub struct Topology {
    pub id: String,
    pub device_ns: String,
    pub hotspot_ns: String,
    pub cloud_ns: String,
    /// Hotspot's interface towards the device: where the agent attaches and tcpdump listens.
    pub hotspot_lan_if: String,
    pub device_if: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl Topology {
    /// Builds the topology with links of `mtu` bytes.
    pub fn new(mtu: u32) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // "<pid>x<n>" in hex: unique per process and per topology, short enough for
        // interface names (15 bytes), and tells `remove_stale` whose it was.
        let id = format!("{:x}x{:x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let t = Topology {
            device_ns: format!("{PREFIX}dev-{id}"),
            hotspot_ns: format!("{PREFIX}hot-{id}"),
            cloud_ns: format!("{PREFIX}cld-{id}"),
            hotspot_lan_if: format!("hl{id}"),
            device_if: format!("dv{id}"),
            id,
        };
        // Drop deletes whatever was created, also when a step below fails.
        for ns in [&t.device_ns, &t.hotspot_ns, &t.cloud_ns] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let hotspot_wan = format!("hw{}", t.id);
        let cloud_if = format!("cl{}", t.id);
        let mtu_s = mtu.to_string();
        ip(&["-n", &t.device_ns, "link", "add", &t.device_if, "type", "veth", "peer", "name", &t.hotspot_lan_if, "netns", &t.hotspot_ns])?;
        ip(&["-n", &t.hotspot_ns, "link", "add", &hotspot_wan, "type", "veth", "peer", "name", &cloud_if, "netns", &t.cloud_ns])?;
        ip(&["-n", &t.device_ns, "link", "set", &t.device_if, "address", &mac(DEVICE_MAC), "mtu", &mtu_s, "up"])?;
        ip(&["-n", &t.hotspot_ns, "link", "set", &t.hotspot_lan_if, "address", &mac(HOTSPOT_MAC), "mtu", &mtu_s, "up"])?;
        ip(&["-n", &t.hotspot_ns, "link", "set", &hotspot_wan, "mtu", &mtu_s, "up"])?;
        ip(&["-n", &t.cloud_ns, "link", "set", &cloud_if, "mtu", &mtu_s, "up"])?;
        // IPv6 needs links of at least 1280 bytes (RFC 8200): smaller MTUs are IPv4-only.
        let v6 = mtu >= 1280;
        let addr = |ns: &str, dev: &str, a: String| {
            if !v6 && a.contains(':') {
                return Ok(());
            }
            ip(&["-n", ns, "addr", "add", &a, "dev", dev, "nodad"])
        };
        addr(&t.device_ns, &t.device_if, format!("{DEVICE_V4}/24"))?;
        addr(&t.device_ns, &t.device_if, format!("{DEVICE_V6}/64"))?;
        addr(&t.hotspot_ns, &t.hotspot_lan_if, format!("{HOTSPOT_LAN_V4}/24"))?;
        addr(&t.hotspot_ns, &t.hotspot_lan_if, format!("{HOTSPOT_LAN_V6}/64"))?;
        addr(&t.hotspot_ns, &hotspot_wan, format!("{HOTSPOT_WAN_V4}/24"))?;
        addr(&t.hotspot_ns, &hotspot_wan, format!("{HOTSPOT_WAN_V6}/64"))?;
        for i in 0..SERVERS {
            addr(&t.cloud_ns, &cloud_if, format!("{}/24", server_v4(i)))?;
            addr(&t.cloud_ns, &cloud_if, format!("{}/64", server_v6(i)))?;
        }
        ip(&["-n", &t.device_ns, "route", "add", "default", "via", &HOTSPOT_LAN_V4.to_string()])?;
        if v6 {
            ip(&["-n", &t.device_ns, "-6", "route", "add", "default", "via", &HOTSPOT_LAN_V6.to_string()])?;
            ip(&["-n", &t.cloud_ns, "-6", "route", "add", "default", "via", &HOTSPOT_WAN_V6.to_string()])?;
        }
        ip(&["-n", &t.cloud_ns, "route", "add", "default", "via", &HOTSPOT_WAN_V4.to_string()])?;
        t.exec_ok(&t.hotspot_ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;
        Ok(t)
    }

    /// A command run inside namespace `ns`.
    pub fn cmd(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    pub fn exec_ok(&self, ns: &str, program: &str, args: &[&str]) -> Result<()> {
        let out = self.cmd(ns, program).args(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.device_ns, &self.hotspot_ns, &self.cloud_ns] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (setns affects only the
/// calling thread), so real sockets of this process live in the test topology.
pub fn spawn_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<thread::JoinHandle<T>> {
    let file = File::open(format!("/var/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = thread::spawn(move || {
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = tx.send(rc);
        assert_eq!(rc, 0, "setns");
        f()
    });
    if rx.recv().ok() != Some(0) {
        bail!("cannot enter namespace {ns}");
    }
    Ok(handle)
}

/// Deletes namespaces left by test processes that no longer run (killed before Drop).
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some((_, id)) = rest.split_once('-') else { continue };
        let Some(pid) = id.split_once('x').and_then(|(pid, _)| u32::from_str_radix(pid, 16).ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}
