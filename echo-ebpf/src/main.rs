//! Program entry points only; the work happens in `accounting`.
#![no_std]
#![no_main]

mod accounting;
mod maps;
mod parse;
mod tls_records;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use echo_common::DIR_UPLOAD;

/// Uploads: frames arriving on the hotspot interface from monitored devices.
/// Always passes the frame on, untouched.
#[xdp]
pub fn echo_xdp(ctx: XdpContext) -> u32 {
    accounting::account(&parse::XdpPacket { ctx: ctx.ctx }, DIR_UPLOAD);
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
