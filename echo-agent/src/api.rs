//! The HTTP listener: a landing page, the metrics, and the JSON API.

use std::{io::Read as _, net::TcpListener, sync::Arc, thread};

use prometheus::{Encoder as _, Registry, TextEncoder};
use tiny_http::{Header, Method, Request, Response, Server};

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
}

/// The text exposition format, version 0.0.4, as Prometheus's own client libraries label it.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Largest request body read (API bodies are a word or two).
const MAX_BODY: u64 = 4096;

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

impl Web {
    /// Serves on `listener` (bound by the caller, so "port in use" is reported before the
    /// programs are attached) from a thread per request queue worker.
    pub fn spawn(self, listener: TcpListener) -> std::io::Result<()> {
        let server = Server::from_listener(listener, None).map_err(std::io::Error::other)?;
        let web = Arc::new(self);
        let server = Arc::new(server);
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

    fn respond(&self, mut req: Request) {
        let url = req.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let resp = if path == self.telemetry_path && *req.method() == Method::Get {
            let mut buf = Vec::new();
            let enc = TextEncoder::new();
            match enc.encode(&self.registry.gather(), &mut buf) {
                Ok(()) => Response::from_data(buf).with_header(header("Content-Type", METRICS_CONTENT_TYPE)),
                Err(e) => Response::from_string(e.to_string()).with_status_code(500),
            }
        } else if path == "/" && *req.method() == Method::Get {
            Response::from_string(self.landing()).with_header(header("Content-Type", "text/html; charset=utf-8"))
        } else {
            let mut body = String::new();
            let _ = req.as_reader().take(MAX_BODY).read_to_string(&mut body);
            match self.api.as_ref().and_then(|a| a.handle(req.method(), path, query, &body)) {
                Some((status, json)) => Response::from_string(json)
                    .with_status_code(status)
                    .with_header(header("Content-Type", "application/json")),
                None => Response::from_string("not found\n")
                    .with_status_code(404)
                    .with_header(header("Content-Type", "text/plain; charset=utf-8")),
            }
        };
        let _ = req.respond(resp);
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
