//! `--web.config.file`: TLS and basic authentication for the metrics and API listener, in the
//! Prometheus exporter-toolkit format (so `promtool check web-config` checks it, and one file
//! serves every exporter on the box):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: echo-agent.crt   # relative paths are relative to this file
//!   key_file: echo-agent.key
//! basic_auth_users:
//!   prometheus: $2y$10$...      # bcrypt (htpasswd -nBC 10 prometheus)
//! ```
//!
//! With users configured every request needs one of them, the API's switches included. A
//! field this agent does not implement is an error rather than silently ignored.

use std::{
    collections::{BTreeMap, HashSet},
    hash::{BuildHasher as _, RandomState},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WebConfigError {
    #[error("web config {0}: {1}")]
    Read(PathBuf, String),
    #[error("web config {0}: {1}")]
    Invalid(PathBuf, String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// TLS12 or TLS13 (the exporter-toolkit names); TLS 1.2 when absent.
    min_version: Option<String>,
}

/// The listener's security.
pub struct WebConfig {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub users: Users,
}

impl WebConfig {
    /// Reads and checks `path`: the certificate and key load, every password hash is bcrypt.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let invalid = |why: String| WebConfigError::Invalid(path.to_path_buf(), why);
        let text = std::fs::read_to_string(path).map_err(|e| WebConfigError::Read(path.to_path_buf(), e.to_string()))?;
        let file = parse(&text).map_err(invalid)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls = match file.tls_server_config {
            Some(t) => Some(Arc::new(server_config(dir, &t).map_err(invalid)?)),
            None => None,
        };
        Ok(WebConfig { tls, users: Users { hashes: file.basic_auth_users, verified: Mutex::default(), hasher: RandomState::new() } })
    }
}

/// The file's fields, with every password hash checked (no file is read: the fuzz target's
/// entry point).
fn parse(text: &str) -> Result<File, String> {
    // An empty file is a valid configuration with nothing in it.
    if text.trim().is_empty() {
        return Ok(File { tls_server_config: None, basic_auth_users: BTreeMap::new() });
    }
    let file: File = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    for (user, hash) in &file.basic_auth_users {
        hash.parse::<bcrypt::HashParts>().map_err(|e| format!("basic_auth_users: {user}: not a bcrypt hash ({e})"))?;
    }
    Ok(file)
}

/// Checks a configuration's text as `WebConfig::load` does, short of reading the TLS files.
pub fn check(text: &str) -> Result<(), String> {
    parse(text).map(|_| ())
}

fn server_config(dir: &Path, t: &TlsFile) -> Result<rustls::ServerConfig, String> {
    let cert_path = dir.join(&t.cert_file);
    let key_path = dir.join(&t.key_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("cert_file {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("cert_file {}: no certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| format!("key_file {}: {e}", key_path.display()))?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version.as_deref() {
        None | Some("TLS12") => rustls::ALL_VERSIONS,
        Some("TLS13") => &[&rustls::version::TLS13],
        Some(other) => return Err(format!("min_version: {other:?} is not supported (TLS12 or TLS13)")),
    };
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert_file and key_file: {e}"))
}

/// `basic_auth_users`, and the credentials already verified (bcrypt costs tens of
/// milliseconds a check, which a scrape every few seconds should not pay each time). Only a
/// keyed hash of verified credentials is kept, never a password.
pub struct Users {
    hashes: BTreeMap<String, String>,
    verified: Mutex<HashSet<u64>>,
    hasher: RandomState,
}

/// bcrypt cost of `echo-agent web-password`: 10, as exporter-toolkit's documentation uses;
/// one check takes ~60 ms on a small router, once per client thanks to the cache.
pub const PASSWORD_COST: u32 = 10;

/// Verified credentials remembered; beyond that the cache starts over.
const MAX_VERIFIED: usize = 64;

impl Users {
    pub fn required(&self) -> bool {
        !self.hashes.is_empty()
    }

    /// Whether the `Authorization` header value admits the request.
    pub fn admit(&self, authorization: Option<&str>) -> bool {
        if !self.required() {
            return true;
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else { return false };
        let Some(hash) = self.hashes.get(&user) else { return false };
        let key = self.hasher.hash_one((&user, &password, hash));
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.contains(&key) {
            return true;
        }
        if !bcrypt::verify(&password, hash).unwrap_or(false) {
            return false;
        }
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        verified.insert(key);
        true
    }
}

/// User and password of a `Basic` authorization header value.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(pairs: &[(&str, &str)]) -> Users {
        let hashes = pairs.iter().map(|(u, p)| (u.to_string(), bcrypt::hash(p, 4).unwrap())).collect();
        Users { hashes, verified: Mutex::default(), hasher: RandomState::new() }
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }

    #[test]
    fn basic_auth_admits_only_the_right_password() {
        let u = users(&[("prometheus", "s3cret")]);
        assert!(u.admit(Some(&basic("prometheus", "s3cret"))));
        assert!(u.admit(Some(&basic("prometheus", "s3cret"))), "from the cache");
        assert!(!u.admit(Some(&basic("prometheus", "S3cret"))));
        assert!(!u.admit(Some(&basic("root", "s3cret"))));
        assert!(!u.admit(None));
        assert!(!u.admit(Some("Bearer abc")));
        assert!(!u.admit(Some("Basic !!!")));
        assert!(users(&[]).admit(None), "no users: open");
    }

    #[test]
    fn config_errors_name_the_field() {
        let dir = std::env::temp_dir().join(format!("echo-webcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let check = |text: &str, want: &str| {
            let p = dir.join("web.yml");
            std::fs::write(&p, text).unwrap();
            let err = WebConfig::load(&p).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(want), "{text:?}: {err}");
        };
        check("basic_auth_users:\n  alice: plain\n", "basic_auth_users: alice: not a bcrypt hash");
        check("tls_server_config:\n  cert_file: none.crt\n  key_file: none.key\n", "cert_file");
        check("http_server_config:\n  http2: false\n", "unknown field `http_server_config`");
        assert!(WebConfig::load(&dir.join("web.yml")).is_err());
        std::fs::write(dir.join("empty.yml"), "").unwrap();
        assert!(!WebConfig::load(&dir.join("empty.yml")).unwrap().users.required());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
