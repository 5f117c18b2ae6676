//! pcap/pcapng reading and the cutting of captured frames into wire segments (replay's input).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = echo_agent::capture::for_each_frame_in("fuzz", data, |_, frame| {
        let mut total = 0;
        echo_agent::gso::for_each_segment(frame, |seg| total += seg.len());
    });
});
