//! Experiment plans (TOML): parsing, checking and scheduling. Errors are fine; panics are not.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(plan) = echo_agent::plan::Plan::parse(text) {
        // Bounded: a plan of a billion trials is valid, but not one to build here.
        if plan.trials() <= 10_000 {
            assert_eq!(plan.schedule().len(), plan.trials());
        }
    }
});
