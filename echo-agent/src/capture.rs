//! Reads pcap and pcapng captures of Ethernet frames (with the maintained `pcap-parser`).

use std::{fs::File, io::Read, path::Path};

use pcap_parser::{create_reader, traits::PcapNGPacketBlock, Block, Linktype, PcapBlockOwned, PcapError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("cannot read capture {0}: {1}")]
    Open(String, std::io::Error),
    #[error("{0} is not a pcap or pcapng capture ({1})")]
    Format(String, String),
    #[error("{0}: link type {1} is not supported (capture on the Ethernet interface, not 'any')")]
    LinkType(String, i32),
}

/// Buffer for the reader: holds the largest block a capture of 64 KiB GRO frames produces.
const READ_BUFFER: usize = 1 << 20;
const NS: u64 = 1_000_000_000;

/// Calls `frame(capture_time_ns, bytes)` for every frame of `path`, in file order.
/// Returns the number of frames. A capture cut short in its last record (a killed tcpdump)
/// ends at the last complete frame, as tshark reads it.
pub fn for_each_frame(path: &Path, frame: impl FnMut(u64, &[u8])) -> Result<u64, CaptureError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| CaptureError::Open(name.clone(), e))?;
    for_each_frame_in(&name, file, frame)
}

/// `for_each_frame` over any reader; `name` names it in errors.
pub fn for_each_frame_in(name: &str, input: impl Read, mut frame: impl FnMut(u64, &[u8])) -> Result<u64, CaptureError> {
    let name = name.to_string();
    let mut reader = create_reader(READ_BUFFER, input).map_err(|e| CaptureError::Format(name.clone(), format!("{e:?}")))?;
    let mut legacy_nanos = false;
    // Per pcapng interface: (ticks per second, offset in seconds).
    let mut interfaces: Vec<(u64, i64)> = Vec::new();
    let mut count = 0u64;
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        if h.network != Linktype::ETHERNET {
                            return Err(CaptureError::LinkType(name, h.network.0));
                        }
                        legacy_nanos = h.is_nanosecond_precision();
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let sub = if legacy_nanos { b.ts_usec as u64 } else { b.ts_usec as u64 * 1_000 };
                        frame(b.ts_sec as u64 * NS + sub, b.data);
                        count += 1;
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        if idb.linktype != Linktype::ETHERNET {
                            return Err(CaptureError::LinkType(name, idb.linktype.0));
                        }
                        interfaces.push((idb.ts_resolution().unwrap_or(1_000_000), idb.ts_offset()));
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let (per_sec, off) = interfaces.get(epb.if_id as usize).copied().unwrap_or((1_000_000, 0));
                        let ticks = ((epb.ts_high as u64) << 32) | epb.ts_low as u64;
                        let ns = (ticks as u128 * NS as u128 / per_sec.max(1) as u128) as u64;
                        // packet_data(): the captured bytes without the block's padding to 32 bits.
                        frame(ns.saturating_add_signed(off.saturating_mul(NS as i64)), epb.packet_data());
                        count += 1;
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        frame(0, spb.packet_data());
                        count += 1;
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(offset);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if reader.reader_exhausted() {
                    break;
                }
                reader.refill().map_err(|e| CaptureError::Format(name.clone(), format!("{e:?}")))?;
            }
            Err(PcapError::UnexpectedEof) => break,
            Err(e) => return Err(CaptureError::Format(name, format!("{e:?}"))),
        }
    }
    Ok(count)
}
