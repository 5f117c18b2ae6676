//! Ground truth from Wireshark: per-destination TLS record totals computed by `tshark` on a
//! capture, for frames sent by one MAC.

use std::{collections::BTreeMap, net::IpAddr, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub app_bytes: u64,
    pub app_records: u64,
    pub handshake_bytes: u64,
    pub tcp_payload_bytes: u64,
}

/// Which frames of a device to total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Frames the device sent, keyed by their destination.
    Upload,
    /// Frames sent to the device, keyed by their source.
    Download,
}

/// Totals per (remote address, remote port) of the frames `mac` sent (upload) or received
/// (download).
/// TLS 1.3 encrypted records carry `tls.record.opaque_type`, others
/// `tls.record.content_type`; `--no-duplicate-keys` turns the per-record repeated keys of
/// tshark's JSON into arrays, so every record is seen.
pub fn totals(pcap: &Path, mac: &str, dir: Direction) -> Result<BTreeMap<(IpAddr, u16), Totals>> {
    let (eth, ip, ip6, port) = match dir {
        Direction::Upload => ("eth.src", "ip.dst", "ipv6.dst", "tcp.dstport"),
        Direction::Download => ("eth.dst", "ip.src", "ipv6.src", "tcp.srcport"),
    };
    let packets = packets(pcap, &format!("{eth} == {mac} && tcp"), "ip ipv6 tcp tls")?;
    let mut totals: BTreeMap<(IpAddr, u16), Totals> = BTreeMap::new();
    for p in &packets {
        let layers = &p["_source"]["layers"];
        let remote = layers["ip"][ip].as_str().or_else(|| layers["ipv6"][ip6].as_str()).context("no IP address")?;
        let port = num(&layers["tcp"][port]).context("no TCP port")?;
        let t = totals.entry((remote.parse()?, port as u16)).or_default();
        t.tcp_payload_bytes += num(&layers["tcp"]["tcp.len"]).unwrap_or(0);
        for (ty, len) in records(layers) {
            match ty {
                Some(23) => {
                    t.app_bytes += len;
                    t.app_records += 1;
                }
                Some(22) => t.handshake_bytes += len,
                _ => {}
            }
        }
    }
    Ok(totals)
}

/// tshark's JSON for the packets of `pcap` matching `filter`, with the `protocols` layers.
fn packets(pcap: &Path, filter: &str, protocols: &str) -> Result<Vec<Value>> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        // Segments captured out of order (two CPUs feeding the capture) still reassemble.
        .args(["-n", "-o", "tcp.reassemble_out_of_order:TRUE", "-Y", filter, "-T", "json", "--no-duplicate-keys", "-J", protocols])
        .output()
        .context("running tshark")?;
    if !out.status.success() {
        bail!("tshark: {}", String::from_utf8_lossy(&out.stderr));
    }
    match serde_json::from_slice(&out.stdout).context("tshark JSON")? {
        Value::Array(a) => Ok(a),
        _ => Ok(Vec::new()),
    }
}

/// (content type, length) of every TLS record tshark completed in this packet.
fn records(layers: &Value) -> Vec<(Option<u64>, u64)> {
    let mut out = Vec::new();
    collect(&layers["tls"], &mut out);
    out.iter()
        .map(|r| {
            let ty = num(&r["tls.record.content_type"]).or_else(|| num(&r["tls.record.opaque_type"]));
            (ty, num(&r["tls.record.length"]).unwrap_or(0))
        })
        .collect()
}

/// One moment of a capture, as Wireshark sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// An echo request to the marker address of this index.
    Marker(usize),
    /// One TLS application-data record uploaded by the device, at the packet that completed it.
    Upload { dst: IpAddr, bytes: u64 },
}

/// Echo requests to `markers` and the app-data records `mac` uploaded, with epoch times, in
/// capture order.
pub fn timeline(pcap: &Path, mac: &str, markers: &[IpAddr]) -> Result<Vec<(f64, Seen)>> {
    let list: Vec<String> = markers.iter().map(|m| m.to_string()).collect();
    let filter = format!("(eth.src == {mac} && tcp) || (icmp.type == 8 && ip.dst in {{{}}})", list.join(", "));
    let mut out = Vec::new();
    for p in packets(pcap, &filter, "frame ip ipv6 tcp tls icmp")? {
        let layers = &p["_source"]["layers"];
        let ts: f64 = layers["frame"]["frame.time_epoch"].as_str().context("no frame time")?.parse()?;
        let dst: IpAddr = layers["ip"]["ip.dst"].as_str().or_else(|| layers["ipv6"]["ipv6.dst"].as_str()).context("no IP address")?.parse()?;
        if layers.get("icmp").is_some() {
            if let Some(i) = markers.iter().position(|m| *m == dst) {
                out.push((ts, Seen::Marker(i)));
            }
            continue;
        }
        for (ty, len) in records(layers) {
            if ty == Some(23) {
                out.push((ts, Seen::Upload { dst, bytes: len }));
            }
        }
    }
    Ok(out)
}

fn num(v: &Value) -> Option<u64> {
    v.as_str()?.parse().ok()
}

/// Every object under a `tls.record` key, however deep and whether alone or in an array.
fn collect<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                if k == "tls.record" {
                    match x {
                        Value::Array(a) => out.extend(a.iter()),
                        _ => out.push(x),
                    }
                } else {
                    collect(x, out);
                }
            }
        }
        _ => {}
    }
}

/// Names Wireshark finds for the addresses `mac` talks to: the server_name of each ClientHello
/// it sent (by destination address), and the question of each DNS response it received for
/// every A/AAAA address in the response.
pub fn names(pcap: &Path, mac: &str) -> Result<(BTreeMap<IpAddr, String>, BTreeMap<IpAddr, String>)> {
    let fields = |filter: &str, fields: &[&str]| -> Result<Vec<Vec<String>>> {
        let mut c = Command::new("tshark");
        c.args(["-r"]).arg(pcap).args(["-Y", filter, "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]);
        for f in fields {
            c.args(["-e", f]);
        }
        let out = c.output().context("running tshark")?;
        if !out.status.success() {
            bail!("tshark: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.lines().map(|l| l.split('\t').map(str::to_string).collect()).collect())
    };
    let mut sni = BTreeMap::new();
    for row in fields(&format!("eth.src == {mac} && tls.handshake.extensions_server_name"), &["ip.dst", "ipv6.dst", "tls.handshake.extensions_server_name"])? {
        let ip = if row[0].is_empty() { &row[1] } else { &row[0] };
        sni.insert(ip.parse()?, row[2].clone());
    }
    let mut dns = BTreeMap::new();
    for row in fields(&format!("eth.dst == {mac} && dns.flags.response == 1"), &["dns.qry.name", "dns.a", "dns.aaaa"])? {
        for ip in row[1..].iter().flat_map(|l| l.split(',')).filter(|s| !s.is_empty()) {
            dns.insert(ip.parse()?, row[0].clone());
        }
    }
    Ok((sni, dns))
}
