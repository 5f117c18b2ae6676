//! Snippets for naming destinations (see `echo_common::snippets`): the ClientHello that opens
//! a device's TLS stream, and DNS responses to a device. Each is a bounded copy straight into
//! ring-buffer memory; user space parses it and keeps only names and addresses.

use echo_common::{
    tls::{CT_HANDSHAKE, HEADER_LEN, HS_CLIENT_HELLO},
    DestKey, Snippet, SNIPPET_BYTES, SNIPPET_CLIENT_HELLO, SNIPPET_DNS,
};

use crate::{
    accounting::{forget, now_ns},
    maps::{SNIPPETS, SNIPPET_DROPS},
    parse::Packet,
};

/// Sends the segment at `off` (`len` payload bytes) when it starts with a ClientHello: a
/// handshake record whose first message is of type client_hello. The caller has checked that
/// the segment starts the flow's byte stream, so a retransmission or a later segment never
/// comes here twice for one connection (a retransmitted first segment may: user space takes
/// the same name again).
#[inline(always)]
pub fn client_hello<P: Packet>(pkt: &P, key: &DestKey, off: usize, len: u32) {
    let mut h = [0u8; HEADER_LEN as usize + 1];
    if !pkt.load(off, &mut h) || h[0] != CT_HANDSHAKE || h[HEADER_LEN as usize] != HS_CLIENT_HELLO {
        return;
    }
    send(pkt, SNIPPET_CLIENT_HELLO, key, off, len);
}

/// Sends the UDP payload of a DNS response (`len` bytes at `off`).
#[inline(always)]
pub fn dns<P: Packet>(pkt: &P, key: &DestKey, off: usize, len: u32) {
    send(pkt, SNIPPET_DNS, key, off, len);
}

#[inline(always)]
fn send<P: Packet>(pkt: &P, kind: u8, key: &DestKey, off: usize, len: u32) {
    // Every parse path (VLAN tags, IP options, extension headers) arrives here with its own
    // offsets; forgotten, they verify the copy once.
    let [off, len, _] = forget([off as u32, len, 0]);
    let off = off as usize;
    if len == 0 {
        return;
    }
    // The copy's length must be provably within the entry and not zero: computed as one more
    // than a value in [0, SNIPPET_BYTES - 1], which is what the verifier can follow.
    let last = len - 1;
    let n = if last > SNIPPET_BYTES as u32 - 1 { SNIPPET_BYTES as u32 - 1 } else { last } + 1;
    let Some(mut entry) = SNIPPETS.reserve::<Snippet>(0) else {
        if let Some(c) = SNIPPET_DROPS.get_ptr_mut(0) {
            // SAFETY: per-CPU value, used by this CPU only.
            unsafe { *c += 1 };
        }
        return;
    };
    let s = entry.as_mut_ptr();
    // SAFETY: `s` points at a reserved entry of `size_of::<Snippet>()` bytes; every field but
    // `data` is written here, and `data[..n]` by the load (n <= SNIPPET_BYTES).
    let copied = unsafe {
        (*s).ts_ns = now_ns(pkt);
        (*s).addr = key.addr;
        (*s).len = n;
        (*s).wire_len = len;
        (*s).port = key.port;
        (*s).kind = kind;
        (*s).device = key.device;
        (*s).family = key.family;
        (*s)._pad = [0; 3];
        pkt.load_into(off, (*s).data.as_mut_ptr(), n)
    };
    if copied {
        entry.submit(0);
    } else {
        entry.discard(0);
    }
}
