//! Marker pings: ICMP/ICMPv6 echo requests to configured addresses, from any host on the
//! interface. The research protocol pings such addresses right before and after each voice
//! command so that captures can be cut into trials ("frames").

use aya_ebpf::Global;
use echo_common::{
    Event, MarkerKey, EVENT_MARKER, FAMILY_V4, ICMPV6_ECHO_REQUEST, ICMP_ECHO_REQUEST,
    PROTO_ICMP, PROTO_ICMPV6,
};

use crate::{
    accounting::{emit, now_ns},
    maps::{MARKERS, MARKER_PINGS},
    parse::{Packet, L3},
};

/// Non-zero when markers are configured (`echo_common::GLOBAL_MARKERS_ENABLED`, its symbol):
/// set by user space at load time in `.rodata`, which is frozen before the programs are
/// verified, so the verifier knows the value and removes the branch not taken. A frame of an
/// agent without markers pays nothing for them; a map read per frame cost ~3 ns, a fifth of
/// a frame of another MAC.
#[unsafe(no_mangle)]
static MARKERS_ENABLED: Global<u32> = Global::new(0);

/// True when markers are configured.
#[inline(always)]
pub fn enabled() -> bool {
    MARKERS_ENABLED.load() != 0
}

/// Counts and reports `l3` when it is an echo request to a marker address.
#[inline(always)]
pub fn check<P: Packet>(pkt: &P, l3: &L3, direction: u8) {
    let want = match l3.proto {
        PROTO_ICMP if l3.family == FAMILY_V4 => ICMP_ECHO_REQUEST,
        PROTO_ICMPV6 if l3.family != FAMILY_V4 => ICMPV6_ECHO_REQUEST,
        _ => return,
    };
    if l3.later_fragment {
        return;
    }
    // Through the load helper: a one-byte direct read at a variable offset compiles to a
    // bounds check the verifier does not accept.
    let mut icmp_type = [0u8; 1];
    if !pkt.load(l3.l4_off, &mut icmp_type) || icmp_type[0] != want {
        return;
    }
    let key = MarkerKey { addr: l3.dst, family: l3.family, _pad: [0; 3] };
    // SAFETY: MARKERS is only written by user space, with whole values.
    let Some(info) = (unsafe { MARKERS.get(&key) }) else { return };
    let slot = info.slot;
    if let Some(c) = MARKER_PINGS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, used by this CPU only.
        unsafe { *c += 1 };
    }
    emit(&Event {
        ts_ns: now_ns(pkt),
        addr: l3.dst,
        bytes: (l3.l3_end - l3.l4_off) as u32,
        kind: EVENT_MARKER,
        direction,
        family: l3.family,
        marker: slot as u8,
        ..Event::default()
    });
}
