//! Real TLS peers for tests and the demo: a rustls server in the cloud namespace, and
//! clients in the device namespace (rustls in-process, or OpenSSL's `s_client`).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, CryptoProvider},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

use crate::netns::{spawn_in, Service, Topology};

pub const SERVER_NAME: &str = "echo.test";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A server for `SERVER_NAME` with a fresh self-signed certificate, TLS 1.2 and 1.3.
fn server_config() -> Result<Arc<rustls::ServerConfig>> {
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)?;
    Ok(Arc::new(config))
}

/// A client of `version` that accepts our servers' certificates; `provider` may pin suites.
pub(crate) fn client_config(version: Version, provider: Arc<CryptoProvider>) -> Result<Arc<rustls::ClientConfig>> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match version {
        Version::Tls12 => &[&rustls::version::TLS12],
        Version::Tls13 => &[&rustls::version::TLS13],
    };
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS 1.3 client for HTTPS requests to the agent (self-signed certificates accepted).
pub fn https_client() -> Result<Arc<rustls::ClientConfig>> {
    client_config(Version::Tls13, provider())
}

/// The ring provider restricted to one cipher suite.
pub(crate) fn provider_with(suite: rustls::SupportedCipherSuite) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider { cipher_suites: vec![suite], ..ring::default_provider() })
}

/// A TLS server in the cloud namespace: accepts on `addrs` until dropped, and hands each
/// connection to its handler on a thread of its own. `start` reads each connection until the
/// client's close_notify and answers with `response` bytes; the simulated Echo's cloud
/// (`echo_sim::Cloud`) brings its own handler.
pub struct TlsServer {
    _service: Service,
}

impl TlsServer {
    pub fn start(topo: &Topology, addrs: Vec<SocketAddr>, response: usize) -> Result<Self> {
        Self::with(topo, addrs, move |sock, config, _| serve(sock, config, response))
    }

    pub(crate) fn with(
        topo: &Topology,
        addrs: Vec<SocketAddr>,
        handler: impl Fn(TcpStream, Arc<rustls::ServerConfig>, &AtomicBool) -> Result<()> + Send + Sync + Clone + 'static,
    ) -> Result<Self> {
        let config = server_config()?;
        let bind = move || -> std::io::Result<Vec<TcpListener>> {
            addrs.iter().map(|a| TcpListener::bind(a).and_then(|l| l.set_nonblocking(true).map(|()| l))).collect()
        };
        let serve = move |listeners: Vec<TcpListener>, stop: Arc<AtomicBool>| {
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                for l in &listeners {
                    if let Ok((sock, _)) = l.accept() {
                        idle = false;
                        let (config, stop, handler) = (config.clone(), stop.clone(), handler.clone());
                        thread::spawn(move || {
                            let _ = handler(sock, config, &stop);
                        });
                    }
                }
                if idle {
                    thread::sleep(Duration::from_millis(5));
                }
            }
        };
        Ok(TlsServer { _service: Service::start(&topo.cloud_ns, "TLS server", bind, serve)? })
    }
}

fn serve(sock: TcpStream, config: Arc<rustls::ServerConfig>, response: usize) -> Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    let conn = rustls::ServerConnection::new(config)?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
    }
    if response > 0 {
        tls.write_all(&vec![0x5a; response])?;
    }
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}

/// Accepts any server certificate: the tests' server is ours, and its traffic never leaves
/// the test namespaces.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects from the device namespace to `addr` with rustls, writes `writes` (one
/// `write_all` and flush each, so each becomes its own records), sends close_notify and reads
/// the response. Returns the response length.
pub fn rustls_upload(topo: &Topology, addr: SocketAddr, version: Version, writes: Vec<usize>, pause: Duration) -> Result<thread::JoinHandle<Result<usize>>> {
    rustls_upload_as(topo, addr, Some(SERVER_NAME), version, writes, pause)
}

/// `rustls_upload` with the server name sent as SNI, or none (the name is then the address,
/// which rustls never sends).
pub fn rustls_upload_as(
    topo: &Topology,
    addr: SocketAddr,
    sni: Option<&str>,
    version: Version,
    writes: Vec<usize>,
    pause: Duration,
) -> Result<thread::JoinHandle<Result<usize>>> {
    let name: ServerName<'static> = match sni {
        Some(n) => ServerName::try_from(n.to_string())?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    spawn_in(&topo.device_ns, move || -> Result<usize> {
        let conn = rustls::ClientConnection::new(client_config(version, provider())?, name)?;
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connect {addr}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        for (i, n) in writes.iter().enumerate() {
            let data: Vec<u8> = (0..*n).map(|j| (i + j) as u8).collect();
            tls.write_all(&data)?;
            tls.flush()?;
            if !pause.is_zero() {
                thread::sleep(pause);
            }
        }
        tls.conn.send_close_notify();
        tls.flush()?;
        let mut response = Vec::new();
        match tls.read_to_end(&mut response) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e.into()),
        }
        Ok(response.len())
    })
}

/// The first bytes rustls sends on a TLS 1.3 connection to `sni`: its ClientHello record.
pub fn client_hello(sni: &str) -> Result<Vec<u8>> {
    let mut conn = rustls::ClientConnection::new(client_config(Version::Tls13, provider())?, ServerName::try_from(sni.to_string())?)?;
    let mut out = Vec::new();
    conn.write_tls(&mut out)?;
    Ok(out)
}

/// Uploads `bytes` bytes from the device namespace with `openssl s_client`, which sends
/// what it reads from standard input and closes the connection at its end.
pub fn openssl_upload(topo: &Topology, addr: SocketAddr, version: Version, bytes: usize) -> Result<()> {
    openssl_upload_as(topo, addr, Some(SERVER_NAME), version, bytes)
}

/// `openssl_upload` with the server name sent as SNI, or none (`-noservername`).
pub fn openssl_upload_as(topo: &Topology, addr: SocketAddr, sni: Option<&str>, version: Version, bytes: usize) -> Result<()> {
    let input = std::env::temp_dir().join(format!("echo-openssl-{}-{}.bin", topo.id, addr.port() as usize + bytes));
    std::fs::write(&input, (0..bytes).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())?;
    let flag = match version {
        Version::Tls12 => "-tls1_2",
        Version::Tls13 => "-tls1_3",
    };
    let out = topo
        .cmd(&topo.device_ns, "openssl")
        .args(["s_client", "-connect", &addr.to_string(), flag, "-nocommands", "-no_ign_eof"])
        .args(match sni {
            Some(n) => vec!["-servername", n],
            None => vec!["-noservername"],
        })
        .stdin(std::fs::File::open(&input)?)
        .output()
        .context("running openssl s_client")?;
    let _ = std::fs::remove_file(&input);
    if !out.status.success() {
        bail!("openssl s_client failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
