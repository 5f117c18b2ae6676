//! The interaction log as read back at start (a torn or corrupted file must not stop the agent).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let loaded = echo_agent::store::Loaded::read(data).expect("reading from memory cannot fail");
    assert!(loaded.records.len() + loaded.skipped <= data.split(|b| *b == b'\n').count());
});
