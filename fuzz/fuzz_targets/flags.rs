//! Command lines: NUL-separated arguments after `echo-agent`, through clap and every value
//! parser (MACs, marker specs, groups, muted spans, numbers). Errors are fine; panics are not.
#![no_main]
use clap::Parser as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let args = std::iter::once("echo-agent").chain(text.split('\0'));
    let _ = echo_agent::cli::Cli::try_parse_from(args);
});
