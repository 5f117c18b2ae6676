//! `--web.config.file` contents (YAML, bcrypt hashes), short of reading the TLS files.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = echo_agent::web_config::check(&String::from_utf8_lossy(data));
});
