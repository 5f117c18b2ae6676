//! The HTTP listener: a landing page, the metrics, and the JSON API. Plain HTTP is served by
//! `tiny_http`; with `tls_server_config` in `--web.config.file`, by a small HTTPS server here
//! (rustls, one request per connection). Both route through `Web::route`, which also checks
//! basic authentication when users are configured.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    str::FromStr as _,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use prometheus::{Encoder as _, Registry, TextEncoder};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::web_config::WebConfig;

/// JSON endpoints served next to the metrics (`/api/...`).
pub trait Api: Send + Sync {
    /// Answers `method path?query` with (status, JSON body), or `None` for an unknown path.
    fn handle(&self, method: &Method, path: &str, query: &str, body: &str) -> Option<(u16, String)>;
    /// Paths listed on the landing page.
    fn endpoints(&self) -> Vec<&'static str>;
}

pub struct Web {
    pub registry: Registry,
    pub telemetry_path: String,
    pub api: Option<Arc<dyn Api>>,
    /// TLS and users; `None`: plain HTTP, open.
    pub config: Option<WebConfig>,
}

/// The text exposition format, version 0.0.4, as Prometheus's own client libraries label it.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Largest request body read (API bodies are a word or two).
const MAX_BODY: u64 = 4096;
/// Largest request head (request line and headers) the HTTPS server reads.
const MAX_HEAD: usize = 16 * 1024;
/// HTTPS connections served at once; more wait in the listen backlog.
const MAX_TLS_CONNECTIONS: usize = 16;
/// How long an HTTPS client may take to send its request.
const TLS_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

/// One answer: status, content type, body, and whether to ask for credentials.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    challenge: bool,
}

impl Answer {
    fn text(status: u16, body: &str) -> Self {
        Answer { status, content_type: "text/plain; charset=utf-8", body: body.as_bytes().to_vec(), challenge: false }
    }
}

impl Web {
    /// Serves on `listener` (bound by the caller, so "port in use" is reported before the
    /// programs are attached).
    pub fn spawn(self, listener: TcpListener) -> std::io::Result<()> {
        let tls = self.config.as_ref().and_then(|c| c.tls.clone());
        let web = Arc::new(self);
        if let Some(tls) = tls {
            thread::Builder::new().name("https".into()).spawn(move || serve_tls(web, listener, tls))?;
            return Ok(());
        }
        let server = Arc::new(Server::from_listener(listener, None).map_err(std::io::Error::other)?);
        // Two workers: a slow scrape does not hold up the API.
        for _ in 0..2 {
            let (web, server) = (web.clone(), server.clone());
            thread::Builder::new().name("http".into()).spawn(move || {
                for req in server.incoming_requests() {
                    web.respond(req);
                }
            })?;
        }
        Ok(())
    }

    /// A plain-HTTP request from tiny_http.
    fn respond(&self, mut req: Request) {
        let url = req.url().to_string();
        let auth = req.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str().to_string());
        let mut body = String::new();
        let _ = req.as_reader().take(MAX_BODY).read_to_string(&mut body);
        let a = self.route(req.method(), &url, auth.as_deref(), &body);
        let mut resp = Response::from_data(a.body).with_status_code(a.status).with_header(header("Content-Type", a.content_type));
        if a.challenge {
            resp = resp.with_header(header("WWW-Authenticate", "Basic realm=\"echo-agent\""));
        }
        let _ = req.respond(resp);
    }

    /// Every request, whatever the transport: authentication, then metrics, landing page or API.
    fn route(&self, method: &Method, url: &str, authorization: Option<&str>, body: &str) -> Answer {
        if let Some(c) = &self.config {
            if !c.users.admit(authorization) {
                return Answer { challenge: true, ..Answer::text(401, "unauthorized\n") };
            }
        }
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        if path == self.telemetry_path && *method == Method::Get {
            let mut buf = Vec::new();
            return match TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
                Ok(()) => Answer { status: 200, content_type: METRICS_CONTENT_TYPE, body: buf, challenge: false },
                Err(e) => Answer::text(500, &e.to_string()),
            };
        }
        if path == "/" && *method == Method::Get {
            return Answer { status: 200, content_type: "text/html; charset=utf-8", body: self.landing().into_bytes(), challenge: false };
        }
        match self.api.as_ref().and_then(|a| a.handle(method, path, query, body)) {
            Some((status, json)) => Answer { status, content_type: "application/json", body: json.into_bytes(), challenge: false },
            None => Answer::text(404, "not found\n"),
        }
    }

    fn landing(&self) -> String {
        let mut links = vec![self.telemetry_path.as_str()];
        if let Some(api) = &self.api {
            links.extend(api.endpoints());
        }
        let items: String = links.iter().map(|l| format!("<li><a href=\"{l}\">{l}</a></li>")).collect();
        format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>echo-agent</title></head><body>\
             <h1>echo-agent {}</h1><p>What does my smart speaker upload, and when?</p><ul>{items}</ul></body></html>\n",
            env!("CARGO_PKG_VERSION")
        )
    }
}

/// The HTTPS server: a thread per connection (at most `MAX_TLS_CONNECTIONS`), one request
/// each, answered with `Connection: close`.
fn serve_tls(web: Arc<Web>, listener: TcpListener, config: Arc<rustls::ServerConfig>) {
    let busy = Arc::new(AtomicUsize::new(0));
    for sock in listener.incoming().flatten() {
        while busy.load(Ordering::Acquire) >= MAX_TLS_CONNECTIONS {
            thread::sleep(Duration::from_millis(5));
        }
        busy.fetch_add(1, Ordering::AcqRel);
        let (web, config, done) = (web.clone(), config.clone(), busy.clone());
        let spawned = thread::Builder::new().name("https-conn".into()).spawn(move || {
            let _ = serve_tls_connection(&web, sock, config);
            done.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn serve_tls_connection(web: &Web, sock: TcpStream, config: Arc<rustls::ServerConfig>) -> std::io::Result<()> {
    sock.set_read_timeout(Some(TLS_READ_TIMEOUT))?;
    sock.set_write_timeout(Some(TLS_READ_TIMEOUT))?;
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let answer = match read_request(&mut tls)? {
        Some((method, url, auth, body)) => web.route(&method, &url, auth.as_deref(), &body),
        None => Answer::text(400, "bad request\n"),
    };
    let reason = match answer.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    );
    if answer.challenge {
        head.push_str("WWW-Authenticate: Basic realm=\"echo-agent\"\r\n");
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())?;
    tls.write_all(&answer.body)?;
    tls.conn.send_close_notify();
    tls.flush()
}

/// Method, URL, Authorization and body of one request.
pub type Parsed = (Method, String, Option<String>, String);

/// One HTTPS request from `r` (head at most `MAX_HEAD` bytes, body at most `MAX_BODY`);
/// `None` when it is not HTTP/1.x. Public for the fuzz target.
pub fn read_request(r: &mut impl std::io::Read) -> std::io::Result<Option<Parsed>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let Some(method) = req.method.and_then(|m| Method::from_str(m).ok()) else { return Ok(None) };
                let url = req.path.unwrap_or("/").to_string();
                let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value).into_owned());
                let auth = header("Authorization");
                let length: u64 = header("Content-Length").and_then(|v| v.trim().parse().ok()).unwrap_or(0).min(MAX_BODY);
                let mut body = buf[head_len..].to_vec();
                body.truncate(length as usize);
                let missing = length - body.len() as u64;
                r.take(missing).read_to_end(&mut body)?;
                return Ok(Some((method, url, auth, String::from_utf8_lossy(&body).into_owned())));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            _ => return Ok(None),
        }
    }
}
