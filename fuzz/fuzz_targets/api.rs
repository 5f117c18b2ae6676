//! The JSON API: method, path, query and body as a client sends them (mute switches included).
//! Input: a method byte, then path, query and body separated by NUL.
#![no_main]
use std::sync::OnceLock;

use echo_agent::{analysis::Config, api::Api as _, live::Live, store::Store};
use libfuzzer_sys::fuzz_target;
use tiny_http::Method;

fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("echo-fuzz-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("state dir");
        let (store, loaded) = Store::open(&dir).expect("store");
        let registry = prometheus::Registry::new();
        Live::new(&registry, Config::default(), &[(0, "echo".to_string())], (store, loaded), 1_000, None).expect("live")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else { return };
    let method = [Method::Get, Method::Post, Method::Put, Method::Delete][(m & 3) as usize].clone();
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(3, '\0');
    let (path, query, body) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if let Some((status, json)) = live().handle(&method, path, query, body) {
        assert!((200..600).contains(&status));
        serde_json_check(&json);
    }
});

/// Every answer is one JSON document.
fn serde_json_check(s: &str) {
    assert!(s.starts_with('{') || s.starts_with('['), "{s}");
}
