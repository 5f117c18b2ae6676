//! The DNS response parser on arbitrary bytes (what the TC program copies from UDP port 53).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for l in echo_agent::names::dns_answers(data) {
        assert_eq!(echo_agent::names::clean_name(&l.name).as_deref(), Some(l.name.as_str()));
    }
});
