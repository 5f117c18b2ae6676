//! Interface lifecycle: a rtnetlink socket subscribed to link notifications wakes the main
//! loop whenever any interface appears, disappears or changes, so the agent re-attaches as
//! soon as the hotspot's interface is back.

use std::{io, sync::mpsc, thread};

/// rtnetlink multicast group of link (interface) notifications.
const RTMGRP_LINK: u32 = 1;

/// Spawns a thread that sends `()` on every link notification.
pub fn watch_links() -> io::Result<mpsc::Receiver<()>> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_nl is valid; then filled in.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = RTMGRP_LINK;
    // SAFETY: valid fd and address of the right length.
    let r = unsafe {
        libc::bind(fd, &addr as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_nl>() as u32)
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let (tx, rx) = mpsc::channel();
    thread::Builder::new().name("netlink".into()).spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut _, buf.len(), 0) };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // A receive error (ENOBUFS after a burst) also means "look again".
            if tx.send(()).is_err() {
                break;
            }
        }
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
    })?;
    Ok(rx)
}
