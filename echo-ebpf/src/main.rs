//! Program entry points only; the work happens in `accounting`.
#![no_std]
#![no_main]
// `core` has no atomic types for the BPF target: `flow_lock` uses the intrinsics.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod accounting;
mod flow_lock;
mod maps;
mod markers;
mod parse;
mod snippets;
mod tls_records;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_UNSPEC},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Uploads: frames arriving on the hotspot interface from monitored devices.
/// Always passes the frame on, untouched.
#[xdp]
pub fn echo_xdp(ctx: XdpContext) -> u32 {
    accounting::account(&parse::XdpPacket { ctx: ctx.ctx });
    xdp_action::XDP_PASS
}

/// Downloads: frames the hotspot sends out of its interface towards monitored devices
/// (TC egress, where GSO super-packets up to 64 KiB are still whole). Returns "no opinion"
/// (TC_ACT_UNSPEC, TCX_NEXT), so the frame goes on to any later program and out unchanged.
#[classifier]
pub fn echo_tc(ctx: TcContext) -> i32 {
    accounting::account(&parse::TcEgress { skb: ctx.skb.skb });
    TC_ACT_UNSPEC
}

/// Uploads at TC ingress instead of XDP (`--xdp-mode tc-ingress`): the same accounting as
/// echo_xdp, on the skb as it is. For drivers without native XDP (every Wi-Fi driver), where
/// skb-mode XDP first copies every frame that has less than 256 bytes of headroom or is not
/// linear (every GRO super-packet). Returns "no opinion", like echo_tc.
#[classifier]
pub fn echo_tc_up(ctx: TcContext) -> i32 {
    accounting::account(&parse::TcIngress { skb: ctx.skb.skb });
    TC_ACT_UNSPEC
}

/// Folds this CPU's pending destination counts (`PENDING_DESTS`) into `DEST_STATS`: run by
/// user space on each CPU (BPF_PROG_TEST_RUN) before it reads them. Never attached.
#[xdp]
pub fn echo_fold(_ctx: XdpContext) -> u32 {
    accounting::fold_pending();
    xdp_action::XDP_PASS
}

/// The benchmarks' baseline: an XDP program that only passes the frame (never attached).
#[xdp]
pub fn echo_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
