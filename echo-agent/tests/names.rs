//! Destination names end to end. In the namespace topology a DNS server in the cloud answers
//! the device (A through a CNAME, A, AAAA), and the device uploads over real TLS stacks:
//! rustls with SNI, OpenSSL without SNI, rustls with an SNI that contradicts DNS, and rustls
//! over IPv6 without SNI. Then:
//! - names and their sources equal what tshark reads from the same capture (SNI wins, DNS
//!   names the rest), in `echo_destination_info`, `/api/destinations` and replay;
//! - the bytes `/api/destinations` lists equal the exporter's counters;
//! - the one interaction's top destination carries its name, and its top group (`--group`)
//!   follows the service across its three addresses.

use std::{collections::BTreeMap, net::IpAddr, path::Path, thread, time::Duration};

use echo_agent::{activation::Interaction, analysis::Config, device::Mac, names::{parse_group, Groups, Source}, replay};
use serde_json::Value;
use xtask::{
    agent::Agent,
    capture::Capture,
    dns::{self, dns_addr, DnsServer, Rr},
    netns::{server_v4, server_v6, spawn_in, tls_addr, Topology},
    packets::DEVICE_MAC,
    tls::{openssl_upload_as, rustls_upload_as, TlsServer, Version},
    tshark,
};

const BIN: &str = env!("CARGO_BIN_EXE_echo-agent");
const DEVICE: &str = "echo";
const ALEXA: &str = "avs-alexa-12-na.amazon.com";
const METRICS: &str = "device-metrics-us.amazon.com";
const V6: &str = "api.amazonalexa.com";
const DECOY: &str = "decoy.example";
const SNI_ONLY: &str = "unlisted.example";
const GROUPS: [&str; 2] = ["amazon.com=alexa", "amazonalexa.com=alexa"];

fn zone() -> Vec<Rr> {
    let addr = |name: &str, ip: IpAddr| Rr::Addr { name: name.into(), ip, ttl: 300 };
    vec![
        Rr::Cname { name: ALEXA.into(), target: "pitangui.amazon.com".into(), ttl: 60 },
        addr("pitangui.amazon.com", server_v4(0)),
        addr(METRICS, server_v4(1)),
        addr(DECOY, server_v4(2)),
        addr(V6, server_v6(0)),
    ]
}

/// What every source must say: address -> (name, source).
fn expected() -> BTreeMap<IpAddr, (String, Source)> {
    [(server_v4(0), ALEXA, Source::Sni), (server_v4(1), METRICS, Source::Dns), (server_v4(2), SNI_ONLY, Source::Sni), (server_v6(0), V6, Source::Dns)]
        .into_iter()
        .map(|(ip, n, s)| (ip, (n.to_string(), s)))
        .collect()
}

#[test]
fn names_from_sni_and_dns_in_metrics_api_and_replay() {
    let topo = Topology::new(1500).expect("topology");
    let addrs = vec![tls_addr(server_v4(0)), tls_addr(server_v4(1)), tls_addr(server_v4(2)), tls_addr(server_v6(0))];
    let _servers = TlsServer::start(&topo, addrs, 2_000).expect("servers");
    let _dns = DnsServer::start(&topo, dns_addr(), zone()).expect("dns");
    let state = xtask::agent::state_dir(&format!("{}-names", topo.id));
    let device = format!("{}={DEVICE}", Mac(DEVICE_MAC));
    let mut flags = vec!["--device", &device, "--state-dir", state.to_str().unwrap()];
    GROUPS.iter().for_each(|g| flags.extend(["--group", g]));
    let mut agent = Agent::start(Path::new(BIN), &topo, &flags).expect("agent");
    let cap = Capture::start(&topo, &topo.hotspot_ns, &topo.hotspot_lan_if, "names").expect("tcpdump");

    // The device resolves every name, as a stub resolver would before connecting.
    let resolved = spawn_in(&topo.device_ns, || -> anyhow::Result<Vec<IpAddr>> {
        let mut ips = Vec::new();
        for (name, v4) in [(ALEXA, true), (METRICS, true), (DECOY, true), (V6, false)] {
            ips.extend(dns::resolve(dns_addr(), name, v4)?);
        }
        Ok(ips)
    })
    .unwrap()
    .join()
    .unwrap()
    .expect("resolve");
    assert_eq!(resolved, vec![server_v4(0), server_v4(1), server_v4(2), server_v6(0)]);

    // One burst of upload to four servers (one interaction), from two TLS stacks.
    let up = |addr, sni, writes| rustls_upload_as(&topo, addr, sni, Version::Tls13, writes, Duration::ZERO).unwrap().join().unwrap().expect("rustls");
    up(tls_addr(server_v4(0)), Some(ALEXA), vec![12_000, 13_000]);
    openssl_upload_as(&topo, tls_addr(server_v4(1)), None, Version::Tls13, 30_000).expect("openssl");
    up(tls_addr(server_v4(2)), Some(SNI_ONLY), vec![10_000]);
    up(tls_addr(server_v6(0)), None, vec![5_000]);
    // The window closes after the idle gap (2 s).
    thread::sleep(Duration::from_millis(3_000));
    let pcap = cap.stop().expect("capture");

    // Wireshark reads the same names from the capture.
    let (sni, dns) = tshark::names(&pcap, &Mac(DEVICE_MAC).to_string()).expect("tshark");
    eprintln!("tshark: sni {sni:?} dns {dns:?}");
    let mut wireshark: BTreeMap<IpAddr, (String, Source)> = dns.into_iter().map(|(ip, n)| (ip, (n, Source::Dns))).collect();
    wireshark.extend(sni.into_iter().map(|(ip, n)| (ip, (n, Source::Sni))));
    assert_eq!(wireshark, expected(), "tshark");

    // Metrics: one info series per named address.
    let m = agent.scrape().unwrap();
    let info: BTreeMap<IpAddr, (String, Source)> = m
        .series("echo_destination_info")
        .into_iter()
        .map(|(l, v)| {
            assert_eq!((l["device"].as_str(), v), (DEVICE, 1.0));
            let source = if l["source"] == "sni" { Source::Sni } else { Source::Dns };
            (l["destination"].parse().unwrap(), (l["name"].clone(), source))
        })
        .collect();
    assert_eq!(info, expected(), "echo_destination_info");
    assert_eq!(m.value("echo_snippets_dropped_total", &[]), 0.0);

    // The API: names, sources, and the counters' bytes.
    let r = agent.get("/api/destinations").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let list: Vec<Value> = serde_json::from_str(&r.body).unwrap();
    let mut upload = BTreeMap::new();
    for d in &list {
        let ip: IpAddr = d["ip"].as_str().unwrap().parse().unwrap();
        let counter = m.value("echo_upload_tls_bytes_total", &[("device", DEVICE), ("destination", &ip.to_string())]);
        assert_eq!(d["upload_tls_bytes"].as_u64().unwrap() as f64, counter, "{ip}");
        upload.insert(ip, d["upload_tls_bytes"].as_u64().unwrap());
        if let Some((name, source)) = expected().get(&ip) {
            assert_eq!((d["name"].as_str(), d["source"].as_str()), (Some(name.as_str()), Some(source.name())), "{ip}");
            assert!(upload[&ip] > 5_000, "{ip}: {}", upload[&ip]);
        }
    }
    assert_eq!(list.iter().filter(|d| !d["name"].is_null()).count(), 4, "{list:#?}");

    // The interaction: the top address (most bytes, named by DNS only) and the top group,
    // which gathers the three addresses of the service.
    let interactions: Vec<Interaction> = serde_json::from_str(&agent.get("/api/interactions").unwrap().body).unwrap();
    let alexa = upload[&server_v4(0)] + upload[&server_v4(1)] + upload[&server_v6(0)];
    let want = (Some(server_v4(1)), upload[&server_v4(1)], Some(METRICS.to_string()), Some("alexa".to_string()), alexa);
    let top = |i: &Interaction| (i.top_destination, i.top_destination_upload_bytes, i.top_destination_name.clone(), i.top_group.clone(), i.top_group_upload_bytes);
    assert_eq!(interactions.iter().map(top).collect::<Vec<_>>(), vec![want.clone()], "live");
    assert_eq!(agent.terminate().unwrap().code(), Some(0));

    // Replay: the same names for the same destinations, the same interaction.
    let config = Config { groups: Groups::new(GROUPS.iter().map(|g| parse_group(g).unwrap()).collect()), ..Default::default() };
    let report = replay::replay(&pcap, &[Mac(DEVICE_MAC)], &config).expect("replay");
    let d = &report.devices[0];
    let named: BTreeMap<IpAddr, (String, Source)> =
        d.destinations.iter().filter_map(|x| Some((x.ip, (x.name.clone()?, x.name_source?)))).collect();
    assert_eq!(named, expected(), "replay");
    assert_eq!(d.interactions.iter().map(top).collect::<Vec<_>>(), vec![want], "replay");
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&pcap);
}
