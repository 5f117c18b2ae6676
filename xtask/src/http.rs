//! A minimal HTTP/1.0 client that runs inside a namespace (the agent listens on loopback in
//! the hotspot namespace).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::netns::spawn_in;

pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `method path` with `body` to `addr`, from namespace `ns`.
pub fn request(ns: &str, addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<Response> {
    let req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let raw = spawn_in(ns, move || -> Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("HTTP thread panicked"))??;
    let text = String::from_utf8(raw).context("HTTP response is not UTF-8")?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else { bail!("malformed HTTP response") };
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status")?;
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    Ok(Response { status, content_type, body: body.to_string() })
}
