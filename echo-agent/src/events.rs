//! Draining the programs' event ring buffer.

use std::{io, os::fd::AsRawFd as _, thread};

use aya::maps::{MapData, RingBuf};
use echo_common::Event;

/// An event as the programs wrote it; `None` for a record of another size.
pub fn parse_event(bytes: &[u8]) -> Option<Event> {
    (bytes.len() == std::mem::size_of::<Event>())
        // SAFETY: Event is plain old data of exactly this size; read_unaligned copes with
        // the ring buffer's 8-byte alignment.
        .then(|| unsafe { (bytes.as_ptr() as *const Event).read_unaligned() })
}

/// Every event waiting in `ring`, in order.
pub fn drain(ring: &mut RingBuf<MapData>, mut sink: impl FnMut(Event)) {
    while let Some(item) = ring.next() {
        if let Some(ev) = parse_event(&item) {
            sink(ev);
        }
    }
}

/// How often the reader drains the ring buffer. The programs wake it earlier only when a
/// quarter of the buffer is used (`EVENTS_WAKEUP_BYTES`), so a steady trickle of events costs
/// ten wake-ups a second rather than one per packet.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Spawns a thread that waits on the ring buffer and hands every event to `sink`, then
/// `None` after each drain (at least every `POLL_INTERVAL`), so time-based state (window
/// closing) advances without traffic.
pub fn spawn(mut ring: RingBuf<MapData>, mut sink: impl FnMut(Option<Event>) + Send + 'static) -> io::Result<()> {
    thread::Builder::new().name("events".into()).spawn(move || {
        let fd = ring.as_raw_fd();
        loop {
            let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, POLL_INTERVAL.as_millis() as i32) };
            drain(&mut ring, |ev| sink(Some(ev)));
            sink(None);
        }
    })?;
    Ok(())
}
