//! Snippets: bounded copies of the few packets that name destinations, sent to user space
//! through their own ring buffer (`SNIPPETS`). The first segment of each TLS stream a
//! monitored device opens, when it starts with a ClientHello (user space reads the SNI), and
//! DNS responses sent to a monitored device over UDP (user space reads A/AAAA/CNAME answers).
//! Nothing else of any payload ever leaves the kernel, and these copies are parsed and
//! dropped: only names and addresses are kept.

/// Bytes of payload one snippet holds. A ClientHello is read from the stream's first segment
/// only (at most one MSS, 1,460 bytes on Ethernet), where every common TLS stack puts the
/// server_name extension; a DNS response over UDP rarely exceeds EDNS's usual 1,232 bytes.
/// Longer payloads are cut (`Snippet::len < Snippet::wire_len`) and parsed as far as they go.
pub const SNIPPET_BYTES: usize = 1536;

/// Ring buffer size in bytes (a power of two and a multiple of the page size): 256 KiB holds
/// 165 snippets, while a household opens a few connections and gets a few DNS answers per
/// second, and user space drains the buffer every 100 ms.
pub const SNIPPETS_BYTES: u32 = 1 << 18;

/// `Snippet::kind`: the first segment of an uploaded TLS stream, starting with a ClientHello.
pub const SNIPPET_CLIENT_HELLO: u8 = 1;
/// `Snippet::kind`: the UDP payload of a DNS response to a device.
pub const SNIPPET_DNS: u8 = 2;

pub const MAP_SNIPPETS: &str = "SNIPPETS";
pub const MAP_SNIPPET_DROPS: &str = "SNIPPET_DROPS";

/// One snippet. `data[..len]` holds the payload's first bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Snippet {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC), or the capture time in replay.
    pub ts_ns: u64,
    /// Remote address: the TLS server (ClientHello) or the DNS server (response); IPv4 in the
    /// first 4 bytes.
    pub addr: [u8; 16],
    /// Bytes copied into `data`.
    pub len: u32,
    /// Payload bytes the packet carried (more than `len` when cut).
    pub wire_len: u32,
    /// Remote port.
    pub port: u16,
    pub kind: u8,
    /// Device index.
    pub device: u8,
    pub family: u8,
    pub _pad: [u8; 3],
    pub data: [u8; SNIPPET_BYTES],
}

impl Snippet {
    /// The copied payload.
    pub fn payload(&self) -> &[u8] {
        &self.data[..(self.len as usize).min(SNIPPET_BYTES)]
    }
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Snippet>() == 8 + 16 + 4 + 4 + 2 + 1 + 1 + 1 + 3 + SNIPPET_BYTES);
    assert!(SNIPPETS_BYTES.is_power_of_two());
    assert!(SNIPPET_BYTES % 8 == 0);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), padding-free (checked above) and valid for any bit pattern.
    unsafe impl aya::Pod for super::Snippet {}
}
