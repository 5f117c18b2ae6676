//! Draining the programs' ring buffers: `EVENTS` (byte and marker events) and `SNIPPETS`
//! (packets that name destinations).

use std::{io, os::fd::AsRawFd as _, thread};

use aya::maps::{MapData, RingBuf};
use echo_common::{Event, Snippet};

/// What the programs send to user space.
#[derive(Clone, Debug)]
pub enum Item {
    Event(Event),
    /// Boxed: a snippet is 1.5 KiB and rare, an event 40 bytes and common.
    Snippet(Box<Snippet>),
}

/// A record of exactly `T`'s size, as the programs wrote it; `None` for any other size.
fn parse_pod<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    (bytes.len() == std::mem::size_of::<T>())
        // SAFETY: T is plain old data of exactly this size; read_unaligned copes with the ring
        // buffer's 8-byte alignment.
        .then(|| unsafe { (bytes.as_ptr() as *const T).read_unaligned() })
}

/// An event as the programs wrote it; `None` for a record of another size.
pub fn parse_event(bytes: &[u8]) -> Option<Event> {
    parse_pod(bytes)
}

/// Every event waiting in `ring`, in order.
pub fn drain(ring: &mut RingBuf<MapData>, mut sink: impl FnMut(Event)) {
    while let Some(item) = ring.next() {
        if let Some(ev) = parse_event(&item) {
            sink(ev);
        }
    }
}

/// Both rings: snippets first, so a name is known before the bytes of the connection it
/// names (a DNS answer or ClientHello precedes its connection's data on the wire, and both
/// rings are drained together).
pub fn drain_all(rings: &mut Rings, mut sink: impl FnMut(Item)) {
    while let Some(item) = rings.snippets.next() {
        if let Some(s) = parse_pod::<Snippet>(&item) {
            sink(Item::Snippet(Box::new(s)));
        }
    }
    drain(&mut rings.events, |e| sink(Item::Event(e)));
}

pub struct Rings {
    pub events: RingBuf<MapData>,
    pub snippets: RingBuf<MapData>,
}

/// How often the reader drains the ring buffers. The programs wake it earlier only when a
/// quarter of `EVENTS` is used (`EVENTS_WAKEUP_BYTES`) or a snippet arrives, so a steady
/// trickle of events costs ten wake-ups a second rather than one per packet.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Spawns a thread that waits on the ring buffers and hands everything to `sink`, then
/// `None` after each drain (at least every `POLL_INTERVAL`), so time-based state (window
/// closing) advances without traffic.
pub fn spawn(mut rings: Rings, mut sink: impl FnMut(Option<Item>) + Send + 'static) -> io::Result<()> {
    thread::Builder::new().name("events".into()).spawn(move || {
        loop {
            let mut p = [rings.events.as_raw_fd(), rings.snippets.as_raw_fd()].map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
            // SAFETY: two valid pollfds.
            unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, POLL_INTERVAL.as_millis() as i32) };
            drain_all(&mut rings, |item| sink(Some(item)));
            sink(None);
        }
    })?;
    Ok(())
}
