//! Requests as the HTTPS listener reads them (after TLS): request line, headers, body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    if let Ok(Some((_, url, _, body))) = echo_agent::api::read_request(&mut input) {
        // At most MAX_BODY bytes, each at most 3 once invalid UTF-8 is replaced.
        assert!(body.len() <= 3 * 4096, "{}", url.len());
    }
});
