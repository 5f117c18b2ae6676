//! The pin directory: `/sys/fs/bpf/echo-agent/v1/<iface>/` holds the maps and links of the
//! agent attached to `<iface>`, so that counting goes on while the agent is down and a
//! restarted agent carries on with the same counters. `v1` is the layout version: a release
//! that changes a map's key or value bumps it (and `check_layout` catches the rest).

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use echo_common::{
    MAP_CLASS_COUNTERS, MAP_DEST_STATS, MAP_DEVICE_TABLE, MAP_EVENTS, MAP_EVENT_DROPS,
    MAP_FLOWS, MAP_INSERTS, MAP_MARKERS, MAP_MARKER_PINGS, MAP_PENDING_DESTS, MAP_SNIPPETS,
    MAP_SNIPPET_DROPS,
};
use thiserror::Error;

/// Where bpffs lives.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Root of every agent's pins, versioned by map layout.
pub const PIN_ROOT: &str = "/sys/fs/bpf/echo-agent/v1";
/// Link pin names carry the XDP mode, since a link cannot tell which mode it was made in.
pub const XDP_LINK_DRIVER: &str = "link_xdp_driver";
pub const XDP_LINK_SKB: &str = "link_xdp_skb";
pub const TC_LINK: &str = "link_tc";
/// The upload program's link at TC ingress (`--xdp-mode tc-ingress`).
pub const TC_INGRESS_LINK: &str = "link_tc_ingress";

/// Maps shared by successive agents (all but the scratch space).
pub const PINNED_MAPS: &[&str] = &[
    MAP_DEVICE_TABLE,
    MAP_FLOWS,
    MAP_DEST_STATS,
    MAP_PENDING_DESTS,
    MAP_CLASS_COUNTERS,
    MAP_INSERTS,
    MAP_EVENTS,
    MAP_EVENT_DROPS,
    MAP_MARKERS,
    MAP_MARKER_PINGS,
    MAP_SNIPPETS,
    MAP_SNIPPET_DROPS,
];

#[derive(Debug, Error)]
pub enum PinError {
    #[error("bpffs is not mounted at {BPFFS} and mounting it failed")]
    Mount(#[source] io::Error),
    #[error("cannot create pin directory {0}")]
    Dir(PathBuf, #[source] io::Error),
    #[error("cannot read pin directory {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("cannot remove stale pin {0}")]
    Remove(PathBuf, #[source] io::Error),
}

/// The pin directory of the agent on `iface`.
pub fn dir_for(iface: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(iface)
}

/// The pin directory of `iface`, ready for use (bpffs mounted, directory created).
pub fn prepare_for(iface: &str) -> Result<PathBuf, PinError> {
    let dir = dir_for(iface);
    prepare(&dir)?;
    Ok(dir)
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs at `/sys/fs/bpf` unless it is there, then creates `dir`.
pub fn prepare(dir: &Path) -> Result<(), PinError> {
    if !is_bpffs(Path::new(BPFFS)) {
        let src = CString::new("bpf").expect("no NUL");
        let target = CString::new(BPFFS).expect("no NUL");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let r = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
        if r != 0 {
            return Err(PinError::Mount(io::Error::last_os_error()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| PinError::Dir(dir.to_path_buf(), e))
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Removes every pinned map in `dir` whose key size, value size or max entries differ from
/// the object's definition (an older or newer agent's layout), so the loader recreates it,
/// and every pinned map this agent does not use (an older agent's, such as the `DEVICES` and
/// `DEVICE_FILTER` that `DEVICE_TABLE` replaced). Returns one note per map removed.
pub fn check_layout(dir: &Path, obj: &aya_obj::Object) -> Result<Vec<String>, PinError> {
    let mut notes = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(notes),
        Err(e) => return Err(PinError::Read(dir.to_path_buf(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| PinError::Read(dir.to_path_buf(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("link_") && !PINNED_MAPS.contains(&name.as_str()) {
            std::fs::remove_file(entry.path()).map_err(|e| PinError::Remove(entry.path(), e))?;
            notes.push(format!("pinned map {name} is not used by this agent: removed"));
        }
    }
    for &name in PINNED_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let want = &obj.maps[name];
        let want = (want.key_size(), want.value_size(), want.max_entries());
        let found = MapInfo::from_pin(&path).map(|i| (i.key_size(), i.value_size(), i.max_entries()));
        let ok = match &found {
            // A ring buffer's size is rounded by the kernel to whole pages; compare keys only.
            Ok(f) if name == MAP_EVENTS || name == MAP_SNIPPETS => f.0 == want.0 && f.1 == want.1,
            Ok(f) => *f == want,
            Err(_) => false,
        };
        if !ok {
            std::fs::remove_file(&path).map_err(|e| PinError::Remove(path.clone(), e))?;
            notes.push(match found {
                Ok(f) => format!(
                    "pinned map {name} has layout key={} value={} entries={}, this agent needs key={} value={} entries={}: recreated (its counts start over)",
                    f.0, f.1, f.2, want.0, want.1, want.2
                ),
                Err(e) => format!("pinned map {name} is unreadable ({e}): recreated"),
            });
        }
    }
    Ok(notes)
}

/// Removes the pin directory of `iface`: links (which detaches the programs unless a running
/// agent still holds them) and maps. Returns the names removed.
pub fn remove_all(iface: &str) -> io::Result<Vec<String>> {
    let dir = dir_for(iface);
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        std::fs::remove_file(entry.path())?;
        removed.push(entry.file_name().to_string_lossy().into_owned());
    }
    std::fs::remove_dir(&dir)?;
    removed.sort();
    Ok(removed)
}

/// The interface index a pinned XDP or TCX link is attached to: `Some(0)` when its interface
/// went away (the kernel keeps the link, defunct), `None` when there is no such pin.
pub fn link_ifindex(path: &Path) -> Option<u32> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut get = [0u64; 2];
    get[0] = c.as_ptr() as u64;
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 7, get.as_mut_ptr(), 16) };
    if fd < 0 {
        return None;
    }
    let fd = fd as i32;
    // struct bpf_link_info: type, id, prog_id, (pad), then the per-type union, whose first
    // field is the ifindex for both XDP and TCX links.
    let mut info = [0u32; 16];
    // BPF_OBJ_GET_INFO_BY_FD: bpf_fd (u32), info_len (u32), info (u64).
    let mut attr = [0u32; 4];
    attr[0] = fd as u32;
    attr[1] = std::mem::size_of_val(&info) as u32;
    let ptr = info.as_mut_ptr() as u64;
    attr[2] = ptr as u32;
    attr[3] = (ptr >> 32) as u32;
    // SAFETY: a valid bpf_attr for BPF_OBJ_GET_INFO_BY_FD pointing at `info`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 15, attr.as_mut_ptr(), 16) };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    (r == 0).then_some(info[4])
}
