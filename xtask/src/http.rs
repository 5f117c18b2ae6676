//! A minimal HTTP/1.0 client that runs inside a namespace (the agent listens on loopback in
//! the hotspot namespace), over plain TCP or TLS, with basic authentication when asked.

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
    request_with(ns, addr, method, path, body, &Options::default())
}

/// How to reach the server.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// HTTPS (any certificate accepted: the test servers' are self-signed).
    pub tls: bool,
    /// User and password for basic authentication.
    pub basic: Option<(String, String)>,
}

/// `request` over TLS and/or with credentials.
pub fn request_with(ns: &str, addr: SocketAddr, method: &str, path: &str, body: &str, opts: &Options) -> Result<Response> {
    use base64::Engine as _;
    let auth = opts
        .basic
        .as_ref()
        .map(|(u, p)| format!("Authorization: Basic {}\r\n", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
        .unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\n\r\n{body}", body.len());
    let tls = opts.tls.then(crate::tls::https_client).transpose()?;
    let raw = spawn_in(ns, move || -> Result<Vec<u8>> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut out = Vec::new();
        match tls {
            Some(config) => {
                let conn = rustls::ClientConnection::new(config, rustls::pki_types::ServerName::IpAddress(addr.ip().into()))?;
                let mut s = rustls::StreamOwned::new(conn, s);
                s.write_all(req.as_bytes())?;
                s.read_to_end(&mut out)?;
            }
            None => {
                let mut s = s;
                s.write_all(req.as_bytes())?;
                s.read_to_end(&mut out)?;
            }
        }
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
