//! Header parsers, one file per header, in the style of xdp-tools' `parsing_helpers.h`:
//! each takes the packet and the offset where its header starts, checks every access against
//! the end of the packet right before it, and returns the fields it found plus the offset of
//! the next header.

pub mod ethernet;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

use echo_common::{DestStats, Walker, CAPTURE_TIME_META_LEN};

use crate::tls_records;

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    cty::c_void,
    helpers::generated::{bpf_loop, bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
};

/// Read access to a packet, implemented for XDP (`bpf_xdp_load_bytes`) and TC
/// (`bpf_skb_load_bytes`), so that parsers and the record walker are written once.
///
/// Every read is a helper's copy into the program's stack, never a packet pointer plus an
/// offset: without CAP_PERFMON the verifier applies its Spectre v1 masking to pointer
/// arithmetic and refuses any register offset on a packet pointer (and any pointer minus
/// pointer), so copies are what lets the agent run with CAP_BPF and CAP_NET_ADMIN alone. The
/// helper checks offset and length against the packet itself.
pub trait Packet: Copy {
    /// The direction every packet of this hook travels: `DIR_UPLOAD` at XDP or TC ingress
    /// (from the devices), `DIR_DOWNLOAD` at TC egress. A constant, so each program carries
    /// only its direction's code.
    const DIRECTION: u8;
    /// Reads a `T` at `off`, or `None` when it does not fit in the packet.
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        let mut v = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: `v` has room for a `T`; the helper fills it completely when it succeeds.
        self.load_into(off, v.as_mut_ptr() as *mut u8, core::mem::size_of::<T>() as u32).then(|| unsafe { v.assume_init() })
    }
    /// Reads a `T` at the constant offset `OFF` (the Ethernet header, which every frame's
    /// first check reads) in place, which costs less than a helper call and needs only
    /// immediate offsets, which the verifier accepts without CAP_PERFMON.
    fn read_head<T: Copy, const OFF: usize>(&self) -> Option<T>;
    /// Reads a `T` at `off`, where `USUAL` is the offset the header has in most frames (no
    /// VLAN tag, no IP options or extension headers): in place there, since a helper call
    /// costs ~20 ns, through the helper elsewhere.
    #[inline(always)]
    fn read_usual<T: Copy, const USUAL: usize>(&self, off: usize) -> Option<T> {
        if off == USUAL { self.read_head::<T, USUAL>() } else { self.read(off) }
    }
    /// Copies `buf.len()` bytes at `off` into `buf` (a small stack buffer, so the offset can be
    /// a variable without pointer arithmetic the verifier has to follow).
    fn load(&self, off: usize, buf: &mut [u8]) -> bool {
        self.load_into(off, buf.as_mut_ptr(), buf.len() as u32)
    }
    /// Copies `len` bytes at `off` to `dst`, which must have room for them (`len` must be
    /// bounded where the verifier can see it).
    fn load_into(&self, off: usize, dst: *mut u8, len: u32) -> bool;
    /// Length of the whole packet in bytes.
    fn len(&self) -> usize;
    /// The capture time a replayed frame carries (see `echo_common::CLOCK_CAPTURE`); 0 when
    /// it carries none. Only meaningful in replay.
    fn capture_time_ns(&self) -> u64;
    /// `tls_records::walk_loop_global` through this hook's global function
    /// (`echo_walk_loop_xdp`, `echo_walk_loop_tc`): the verifier checks a global function
    /// once, on its own, with nothing known of its arguments, and with it the loop's
    /// callback, instead of once for each state of the caller that reaches the call.
    fn walk_loop(&self, w: *mut Walker, stats: *mut DestStats, seg_at: u64, span: u64) -> u64;
}

/// echo_xdp's record walk loop, a global function (see `Packet::walk_loop`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn echo_walk_loop_xdp(ctx: *mut xdp_md, w: *mut Walker, stats: *mut DestStats, seg_at: u64, span: u64) -> u64 {
    tls_records::walk_loop_global(&XdpPacket { ctx }, w, stats, seg_at, span)
}

/// echo_tc's and echo_tc_up's record walk loop, a global function (see `Packet::walk_loop`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn echo_walk_loop_tc(skb: *mut __sk_buff, w: *mut Walker, stats: *mut DestStats, seg_at: u64, span: u64) -> u64 {
    // The walk reads and counts the same way in either direction.
    tls_records::walk_loop_global(&TcEgress { skb }, w, stats, seg_at, span)
}

/// The alignment a frame's first byte is known to have: drivers start frames at
/// `NET_IP_ALIGN` (0, or 2 on architectures without efficient unaligned access) past an
/// aligned headroom, so 2-byte reads at even offsets are aligned everywhere, and the verifier
/// accepts them even where it enforces alignment (it checks packet reads as if the frame
/// started at 2).
const HEAD_ALIGN: usize = 2;

/// Reads a `T` at the constant offset `OFF` of the bytes from `start` (a packet pointer) to
/// `end` (the packet end pointer), or `None` when it does not fit.
#[inline(always)]
fn read_in_place<T: Copy, const OFF: usize>(start: usize, end: usize) -> Option<T> {
    if start + OFF + core::mem::size_of::<T>() > end {
        return None;
    }
    let p = (start + OFF) as *const T;
    // SAFETY: bounds checked right above; the verifier checks it again. An aligned read
    // when `OFF` is a multiple of `T`'s alignment and that is at most 2 (see
    // `HEAD_ALIGN`): one load of the width instead of a byte load per byte, which is all
    // LLVM emits for an unaligned one.
    Some(unsafe { if align_of::<T>() <= HEAD_ALIGN && OFF % align_of::<T>() == 0 { p.read() } else { p.read_unaligned() } })
}

/// An XDP frame. Holds the context pointer by value so that `bpf_loop` callbacks can carry it.
#[derive(Clone, Copy)]
pub struct XdpPacket {
    pub ctx: *mut xdp_md,
}

impl Packet for XdpPacket {
    const DIRECTION: u8 = echo_common::DIR_UPLOAD;

    #[inline(always)]
    fn read_head<T: Copy, const OFF: usize>(&self) -> Option<T> {
        // SAFETY: the context the kernel handed to the program.
        let (start, end) = unsafe { ((*self.ctx).data as usize, (*self.ctx).data_end as usize) };
        read_in_place::<T, OFF>(start, end)
    }

    #[inline(always)]
    fn load_into(&self, off: usize, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the helper checks the offset and length against the packet; the caller
        // vouches for `dst`.
        unsafe { bpf_xdp_load_bytes(self.ctx, off as u32, dst as *mut _, len) == 0 }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        // SAFETY: the context the kernel handed to the program.
        unsafe { bpf_xdp_get_buff_len(self.ctx) as usize }
    }

    /// From the metadata right before the frame: constant offsets from `data_meta`, checked
    /// against `data`, as the verifier wants them.
    #[inline(always)]
    fn capture_time_ns(&self) -> u64 {
        // SAFETY: the context the kernel handed to the program.
        let (meta, data) = unsafe { ((*self.ctx).data_meta as usize, (*self.ctx).data as usize) };
        if meta + CAPTURE_TIME_META_LEN > data {
            return 0;
        }
        // SAFETY: bounds checked right above; the verifier checks it again.
        unsafe { (meta as *const u64).read_unaligned() }
    }

    #[inline(always)]
    fn walk_loop(&self, w: *mut Walker, stats: *mut DestStats, seg_at: u64, span: u64) -> u64 {
        echo_walk_loop_xdp(self.ctx, w, stats, seg_at, span)
    }
}

/// A socket buffer at TC, travelling in `DIRECTION`: `DIR_DOWNLOAD` at egress (echo_tc),
/// `DIR_UPLOAD` at ingress (echo_tc_up, `--xdp-mode tc-ingress`). `bpf_skb_load_bytes` also
/// reaches a GSO or GRO super-packet's payload, which lies mostly outside the linear area.
#[derive(Clone, Copy)]
pub struct TcPacket<const DIRECTION: u8> {
    pub skb: *mut __sk_buff,
}

/// Downloads, at TC egress.
pub type TcEgress = TcPacket<{ echo_common::DIR_DOWNLOAD }>;
/// Uploads, at TC ingress.
pub type TcIngress = TcPacket<{ echo_common::DIR_UPLOAD }>;

impl<const D: u8> Packet for TcPacket<D> {
    const DIRECTION: u8 = D;

    /// In place when the bytes lie in the skb's linear area (the headers, almost always),
    /// else through the helper's copy, which also reaches the paged part.
    #[inline(always)]
    fn read_head<T: Copy, const OFF: usize>(&self) -> Option<T> {
        // SAFETY: the context the kernel handed to the program.
        let (start, end) = unsafe { ((*self.skb).data as usize, (*self.skb).data_end as usize) };
        read_in_place::<T, OFF>(start, end).or_else(|| self.read(OFF))
    }

    #[inline(always)]
    fn load_into(&self, off: usize, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the helper checks the offset and length against the packet; the caller
        // vouches for `dst`.
        unsafe { bpf_skb_load_bytes(self.skb as *const c_void, off as u32, dst as *mut c_void, len) == 0 }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        // SAFETY: the context the kernel handed to the program.
        unsafe { (*self.skb).len as usize }
    }

    #[inline(always)]
    fn capture_time_ns(&self) -> u64 {
        // SAFETY: the context the kernel handed to the program; `cb` is readable at TC.
        let cb = unsafe { (*self.skb).cb };
        cb[0] as u64 | (cb[1] as u64) << 32
    }

    #[inline(always)]
    fn walk_loop(&self, w: *mut Walker, stats: *mut DestStats, seg_at: u64, span: u64) -> u64 {
        echo_walk_loop_tc(self.skb, w, stats, seg_at, span)
    }
}

/// Runs `step` up to `n` times through `bpf_loop` on `ctx` (the verifier checks one step,
/// not every iteration), returns what `result` reads from `ctx` once the loop is done, then
/// overwrites `ctx` with zeros, 8 bytes at a time, in stores the compiler keeps. A loop's
/// context holds the packet's context pointer (and map value pointers) on the stack; without
/// CAP_PERFMON the verifier refuses any later narrower store into a stack slot that still
/// holds a pointer ("attempt to corrupt spilled pointer on stack"), and the compiler reuses
/// the context's stack for other variables. `C` must be a multiple of 8 bytes.
///
/// # Safety
/// `step` must read its context argument as a `*mut C`.
#[inline(always)]
pub unsafe fn run_loop<C, R>(n: u32, step: extern "C" fn(u64, *mut c_void) -> i64, ctx: &mut C, result: impl FnOnce(&C) -> R) -> R {
    const { assert!(core::mem::size_of::<C>() % 8 == 0) };
    // SAFETY: the caller vouches for `step`; `ctx` outlives the call.
    unsafe { bpf_loop(n, step as *const () as *mut c_void, ctx as *mut C as *mut c_void, 0) };
    let r = result(ctx);
    let words = ctx as *mut C as *mut u64;
    for i in 0..core::mem::size_of::<C>() / 8 {
        // SAFETY: within `ctx`, which is 8-byte aligned as it holds 8-byte fields.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    r
}

/// Where a transport header starts in most frames: after an Ethernet header without VLAN tags
/// and an IPv4 header without options (the `USUAL` of `Packet::read_usual` for TCP and UDP).
pub const USUAL_L4_OFF: usize = ethernet::ETH_HLEN + ipv4::MIN_HLEN;

/// Where a TCP segment's payload starts in most frames: after `USUAL_L4_OFF` and a TCP header
/// with the timestamps option (32 bytes), which Linux sends on every segment by default.
pub const USUAL_PAYLOAD_OFF: usize = USUAL_L4_OFF + 32;

/// Layer-3 facts every later stage needs.
#[derive(Clone, Copy)]
pub struct L3 {
    pub family: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Transport protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Offset of the transport header.
    pub l4_off: usize,
    /// Offset one past the IP packet's last byte, from its length field (Ethernet padding
    /// excluded).
    pub l3_end: usize,
    /// A non-first fragment: the transport header is elsewhere.
    pub later_fragment: bool,
}
