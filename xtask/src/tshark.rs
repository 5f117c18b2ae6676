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

/// Totals per (destination address, destination port) of the frames `src_mac` sent.
/// TLS 1.3 encrypted records carry `tls.record.opaque_type`, others
/// `tls.record.content_type`; `--no-duplicate-keys` turns the per-record repeated keys of
/// tshark's JSON into arrays, so every record is seen.
pub fn totals(pcap: &Path, src_mac: &str) -> Result<BTreeMap<(IpAddr, u16), Totals>> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-n", "-Y", &format!("eth.src == {src_mac} && tcp"), "-T", "json", "--no-duplicate-keys", "-J", "ip ipv6 tcp tls"])
        .output()
        .context("running tshark")?;
    if !out.status.success() {
        bail!("tshark: {}", String::from_utf8_lossy(&out.stderr));
    }
    let packets: Value = serde_json::from_slice(&out.stdout).context("tshark JSON")?;
    let mut totals: BTreeMap<(IpAddr, u16), Totals> = BTreeMap::new();
    for p in packets.as_array().map(Vec::as_slice).unwrap_or_default() {
        let layers = &p["_source"]["layers"];
        let dst = layers["ip"]["ip.dst"].as_str().or_else(|| layers["ipv6"]["ipv6.dst"].as_str()).context("no IP destination")?;
        let port = num(&layers["tcp"]["tcp.dstport"]).context("no TCP port")?;
        let t = totals.entry((dst.parse()?, port as u16)).or_default();
        t.tcp_payload_bytes += num(&layers["tcp"]["tcp.len"]).unwrap_or(0);
        let mut records = Vec::new();
        collect(&layers["tls"], &mut records);
        for r in records {
            let ty = num(&r["tls.record.content_type"]).or_else(|| num(&r["tls.record.opaque_type"]));
            let len = num(&r["tls.record.length"]).unwrap_or(0);
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
