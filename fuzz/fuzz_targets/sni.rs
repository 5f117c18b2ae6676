//! The SNI parser on arbitrary bytes (what the XDP program copies from a ClientHello).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(name) = echo_agent::names::sni(data) {
        assert_eq!(echo_agent::names::clean_name(&name).as_deref(), Some(name.as_str()));
    }
});
