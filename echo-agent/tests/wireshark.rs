//! Differential tests against Wireshark: real TLS stacks (rustls, OpenSSL) upload known
//! amounts inside test namespaces, tcpdump captures on the hotspot, tshark computes the
//! truth, `replay` runs the same capture through the XDP (upload) and TC (download) programs.
//! Zero bytes of difference, both directions.

use std::{net::SocketAddr, time::Duration};

use echo_agent::{device::Mac, replay};
use xtask::{
    capture::Capture,
    netns::{server_v4, server_v6, tls_addr, Topology, SERVERS},
    packets::DEVICE_MAC,
    tls::{openssl_upload, rustls_upload, TlsServer, Version},
    tshark::{self, Direction},
};

enum Client {
    Rustls { version: Version, server: SocketAddr, writes: Vec<usize> },
    OpenSsl { version: Version, server: SocketAddr, bytes: usize },
}

fn bulk(n: usize) -> Vec<usize> {
    vec![16 * 1024; n]
}

/// Many small writes of varying size, one or more records each.
fn small(n: usize) -> Vec<usize> {
    (0..n).map(|i| 1 + (i * 37) % 300).collect()
}

fn differential(name: &str, mtu: u32, clients: Vec<Client>) {
    let topo = Topology::new(mtu).expect("topology");
    let addrs = (0..SERVERS)
        .flat_map(|i| [tls_addr(server_v4(i)), tls_addr(server_v6(i))])
        .filter(|a| a.is_ipv4() || mtu >= 1280)
        .collect();
    let server = TlsServer::start(&topo, addrs, 3000).expect("server");
    let cap = Capture::start(&topo, &topo.hotspot_ns, &topo.hotspot_lan_if, name).expect("tcpdump");
    // All clients at once: concurrent flows.
    let mut threads = Vec::new();
    let mut openssl = Vec::new();
    for c in clients {
        match c {
            Client::Rustls { version, server, writes } => {
                threads.push(rustls_upload(&topo, server, version, writes, Duration::ZERO).expect("client"))
            }
            Client::OpenSsl { version, server, bytes } => openssl.push((version, server, bytes)),
        }
    }
    for (version, server, bytes) in openssl {
        openssl_upload(&topo, server, version, bytes).expect("openssl s_client");
    }
    for t in threads {
        t.join().expect("client thread").expect("client");
    }
    std::thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop().expect("stop tcpdump");
    drop(server);

    let mac = Mac(DEVICE_MAC);
    eprintln!("{name}: capture {}", pcap.display());
    let report = replay::replay(&pcap, &[mac], &Default::default()).expect("replay");
    let ours = &report.devices[0].destinations;
    for dir in [Direction::Upload, Direction::Download] {
        let truth = tshark::totals(&pcap, &mac.to_string(), dir).expect("tshark");
        assert!(!truth.is_empty(), "{name}: tshark saw no {dir:?} traffic");
        let mut total = 0;
        for ((ip, port), t) in &truth {
            let d = ours
                .iter()
                .find(|d| d.ip == *ip && d.port == *port && d.protocol == "tcp")
                .unwrap_or_else(|| panic!("{name}: {ip}:{port} not counted"));
            let c = if dir == Direction::Upload { &d.upload } else { &d.download };
            let diff = c.tls_app_bytes as i64 - t.app_bytes as i64;
            eprintln!(
                "{name}: {dir:?} {ip}:{port} tshark app={} records={} handshake={} payload={} | echo app={} records={} handshake={} payload={} unsynced={} | diff={diff}",
                t.app_bytes, t.app_records, t.handshake_bytes, t.tcp_payload_bytes, c.tls_app_bytes, c.tls_records, c.handshake_bytes, c.tcp_payload_bytes, c.unsynced_bytes
            );
            assert_eq!(c.tls_app_bytes, t.app_bytes, "{name}: {dir:?} {ip}:{port} app-data bytes");
            assert_eq!(c.tls_records, t.app_records, "{name}: {dir:?} {ip}:{port} app-data records");
            assert_eq!(c.handshake_bytes, t.handshake_bytes, "{name}: {dir:?} {ip}:{port} handshake bytes");
            assert_eq!(c.tcp_payload_bytes, t.tcp_payload_bytes, "{name}: {dir:?} {ip}:{port} TCP payload");
            assert_eq!(c.unsynced_bytes, 0, "{name}: {dir:?} {ip}:{port} unsynced");
            total += t.app_bytes;
        }
        for d in ours {
            let c = if dir == Direction::Upload { &d.upload } else { &d.download };
            if c.tls_app_bytes > 0 {
                assert!(truth.contains_key(&(d.ip, d.port)), "{name}: {}:{} counted but not in tshark", d.ip, d.port);
            }
        }
        assert!(total > 0, "{name}: no {dir:?} application data");
    }
    // The same capture as pcapng (editcap, from Wireshark) replays to the same document.
    let ng = pcap.with_extension("pcapng");
    let st = std::process::Command::new("editcap").args(["-F", "pcapng"]).arg(&pcap).arg(&ng).status().expect("editcap");
    assert!(st.success());
    let report_ng = replay::replay(&ng, &[mac], &Default::default()).expect("replay pcapng");
    assert_eq!(report_ng.devices, report.devices, "{name}: pcapng replay");
    let _ = std::fs::remove_file(&ng);
    if std::env::var_os("ECHO_KEEP_PCAP").is_none() {
        let _ = std::fs::remove_file(&pcap);
    }
}

fn v4(i: usize) -> SocketAddr {
    tls_addr(server_v4(i))
}

fn v6(i: usize) -> SocketAddr {
    tls_addr(server_v6(i))
}

#[test]
fn rustls_tls13_ipv4_mtu1500_bulk_and_small() {
    differential("rustls13-v4-1500", 1500, vec![
        Client::Rustls { version: Version::Tls13, server: v4(0), writes: bulk(24) },
        Client::Rustls { version: Version::Tls13, server: v4(1), writes: small(400) },
    ]);
}

#[test]
fn rustls_tls12_ipv4_mtu576_bulk_and_small() {
    differential("rustls12-v4-576", 576, vec![
        Client::Rustls { version: Version::Tls12, server: v4(0), writes: bulk(12) },
        Client::Rustls { version: Version::Tls12, server: v4(1), writes: small(300) },
    ]);
}

#[test]
fn rustls_both_versions_ipv6_mtu1500() {
    differential("rustls-v6-1500", 1500, vec![
        Client::Rustls { version: Version::Tls13, server: v6(0), writes: bulk(16) },
        Client::Rustls { version: Version::Tls12, server: v6(1), writes: small(300) },
    ]);
}

/// IPv6's minimum MTU is 1280 (RFC 8200), so this is IPv6's small-MTU case; 576 is IPv4's.
#[test]
fn rustls_ipv6_mtu1280_small_writes() {
    differential("rustls-v6-1280", 1280, vec![Client::Rustls { version: Version::Tls13, server: v6(2), writes: small(500) }]);
}

#[test]
fn openssl_tls12_and_tls13_ipv4_and_ipv6() {
    differential("openssl-1500", 1500, vec![
        Client::OpenSsl { version: Version::Tls13, server: v4(2), bytes: 200_000 },
        Client::OpenSsl { version: Version::Tls12, server: v6(2), bytes: 150_000 },
    ]);
}

#[test]
fn openssl_ipv4_mtu576() {
    differential("openssl-v4-576", 576, vec![Client::OpenSsl { version: Version::Tls12, server: v4(0), bytes: 100_000 }]);
}

#[test]
fn concurrent_flows_to_several_destinations() {
    differential("concurrent", 1500, vec![
        Client::Rustls { version: Version::Tls13, server: v4(0), writes: bulk(8) },
        Client::Rustls { version: Version::Tls13, server: v4(0), writes: small(200) },
        Client::Rustls { version: Version::Tls12, server: v4(1), writes: bulk(8) },
        Client::Rustls { version: Version::Tls13, server: v6(1), writes: bulk(8) },
        Client::Rustls { version: Version::Tls12, server: v6(2), writes: small(200) },
    ]);
}
