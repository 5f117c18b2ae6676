//! tcpdump captures inside a namespace.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::netns::Topology;

pub struct Capture {
    child: Child,
    pub path: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `iface` in `ns`; returns once it listens.
    pub fn start(topo: &Topology, ns: &str, iface: &str, name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("echo-{}-{name}.pcap", topo.id));
        let mut child = topo
            .cmd(ns, "tcpdump")
            // -B: a 64 MiB kernel buffer, so 64 KiB GRO frames at veth speed are not dropped.
            .args(["-i", iface, "-n", "-s", "0", "-U", "-B", "65536", "--immediate-mode", "-w"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump")?;
        let mut line = String::new();
        BufReader::new(child.stderr.as_mut().expect("piped")).read_line(&mut line)?;
        if !line.contains("listening on") {
            let _ = child.kill();
            bail!("tcpdump did not start: {line}");
        }
        Ok(Capture { child, path })
    }

    /// Stops tcpdump (SIGINT, so it flushes) and returns the capture's path. Fails when the
    /// kernel dropped packets: a capture with holes is no ground truth.
    pub fn stop(mut self) -> Result<PathBuf> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut summary = String::new();
        self.child.stderr.take().expect("piped").read_to_string(&mut summary)?;
        self.child.wait()?;
        let dropped = summary.lines().find(|l| l.contains("dropped by kernel")).and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok());
        if dropped != Some(0) {
            bail!("tcpdump dropped packets: {summary}");
        }
        Ok(std::mem::take(&mut self.path))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
