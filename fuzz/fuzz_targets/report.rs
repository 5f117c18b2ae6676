//! Report input (an interaction log or a replay JSON) through the statistics, the table, the
//! CSV and the HTML with its plots. Errors are fine; panics are not.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frames) = echo_agent::report::parse_frames(data) else { return };
    let r = echo_agent::report::build(&frames, "gap_s");
    let _ = echo_agent::report::table(&r);
    let _ = echo_agent::report::csv(&r);
    let _ = echo_agent::plots::html(&r, "fuzz");
});
