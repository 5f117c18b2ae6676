//! The simulated Echo's ears: it "hears" audio described by a small JSON file (prefix,
//! command, gap and postfix lengths, and a time-compression factor) that the demo player
//! (`player_script`) sends to its microphone port, and behaves as the seed paper measured on
//! real hardware. Every behavioural parameter is a constant of this file:
//!
//! - Nothing before the wake word is uploaded: the prefix only delays the upload.
//! - From the wake word on it uploads the wake-word burst and then streams
//!   `RECORDS_PER_SECOND` records of audio (the published ~45 kB per 2.5 s command), give
//!   or take up to `JITTER_RECORDS`.
//! - It finds the end of the command when the pause after it is at least `ALWAYS_ENDS_GAP_S`
//!   (0.7 s), never below `NEVER_ENDS_GAP_S` (0.5 s), with a probability rising linearly in
//!   between; without a postfix the end is always found. When found, it stops streaming at
//!   the end of the command and answers correctly (`CORRECT_RESPONSE`) while the postfix still
//!   plays; when missed, it streams through the postfix (the upload grows with its length)
//!   and, after the whole input, answers with an error (`ERROR_RESPONSE`) or, in
//!   `SILENT_SHARE` of the cases, not at all.
//!
//! Times in the audio file are real seconds; the simulator plays and uploads them
//! `speed` times faster, cloud thinking time included.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    echo_sim::{self, sealed, Tls, BURST, STREAM_RECORD, STREAM_RECORDS},
    netns::{spawn_in, Topology, DEVICE_V4},
    packets::xorshift,
};

/// The pause after a command from which the end is always found (seed paper, Fig. 6).
pub const ALWAYS_ENDS_GAP_S: f64 = 0.7;
/// The pause below which the end is never found.
pub const NEVER_ENDS_GAP_S: f64 = 0.5;
/// The published command: ~2.5 s of speech, ~45 kB uploaded (the burst and 24 records).
pub const COMMAND_S: f64 = 2.5;
const RECORDS_PER_SECOND: f64 = STREAM_RECORDS as f64 / COMMAND_S;
/// Streamed records vary by up to this many either way, trial to trial, and each is up to
/// `RECORD_JITTER` bytes shorter than `STREAM_RECORD` (audio compresses unevenly).
const JITTER_RECORDS: u64 = 2;
const RECORD_JITTER: u64 = 128;
/// Response plaintext bytes: an answer to the command, and "Sorry, I don't know that".
pub const CORRECT_RESPONSE: usize = 20_000;
pub const ERROR_RESPONSE: usize = 6_000;
/// Of the trials whose end was missed, the share with no answer at all.
const SILENT_SHARE: f64 = 0.25;
/// The cloud's thinking time before an answer, real seconds.
const THINK_S: f64 = 1.0;
/// Where the microphone listens (in the device namespace).
pub const MICROPHONE_PORT: u16 = 7070;

/// One piece of audio as the player describes it. Seconds are real (uncompressed) time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Audio {
    pub prefix_s: f64,
    pub command_s: f64,
    pub gap_s: f64,
    pub postfix_s: f64,
    /// Time compression: everything plays this many times faster.
    pub speed: f64,
}

impl Audio {
    pub fn to_json(&self) -> String {
        serde_json::json!({ "prefix_s": self.prefix_s, "command_s": self.command_s, "gap_s": self.gap_s, "postfix_s": self.postfix_s, "speed": self.speed }).to_string()
    }

    fn from_json(line: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(line).context("audio description")?;
        let f = |k: &str| v[k].as_f64().with_context(|| format!("audio description without {k}"));
        Ok(Audio { prefix_s: f("prefix_s")?, command_s: f("command_s")?, gap_s: f("gap_s")?, postfix_s: f("postfix_s")?, speed: f("speed")?.max(1e-3) })
    }

    fn total_s(&self) -> f64 {
        self.prefix_s + self.command_s + self.gap_s + self.postfix_s
    }
}

/// What the simulated Echo does with one piece of audio.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub end_found: bool,
    /// Audio streamed after the wake word, real seconds.
    pub recorded_s: f64,
    /// Payload bytes of each streamed record.
    pub records: Vec<usize>,
    /// Response plaintext bytes (0: none).
    pub response: usize,
}

/// Uniform in [0, 1) from the generator.
fn unit(rng: &mut impl FnMut() -> u64) -> f64 {
    (rng() >> 11) as f64 / (1u64 << 53) as f64
}

pub fn decide(a: &Audio, rng: &mut impl FnMut() -> u64) -> Decision {
    let p_found = if a.postfix_s <= 0.0 { 1.0 } else { ((a.gap_s - NEVER_ENDS_GAP_S) / (ALWAYS_ENDS_GAP_S - NEVER_ENDS_GAP_S)).clamp(0.0, 1.0) };
    let end_found = p_found >= 1.0 || unit(rng) < p_found;
    let recorded_s = if end_found { a.command_s } else { a.command_s + a.gap_s + a.postfix_s };
    let jitter = rng() % (2 * JITTER_RECORDS + 1);
    let n = ((recorded_s * RECORDS_PER_SECOND).round() as u64 + jitter).saturating_sub(JITTER_RECORDS).max(1);
    let records = (0..n).map(|_| STREAM_RECORD - (rng() % RECORD_JITTER) as usize).collect();
    let response = if end_found {
        CORRECT_RESPONSE
    } else if unit(rng) < SILENT_SHARE {
        0
    } else {
        ERROR_RESPONSE
    };
    Decision { end_found, recorded_s, records, response }
}

/// What was heard and sent, per piece of audio, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Heard {
    pub audio: Audio,
    pub decision: Decision,
    /// Record payload bytes uploaded, and downloaded in the answer.
    pub upload_bytes: u64,
    pub download_bytes: u64,
}

pub fn microphone() -> SocketAddr {
    SocketAddr::from((DEVICE_V4, MICROPHONE_PORT))
}

/// A bash script that plays an audio description file to the simulated Echo's microphone and
/// returns when it has played (the simulator answers "done"): the experiment's player.
pub fn player_script(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let m = microphone();
    let path = dir.join("play-to-echo");
    let script = format!(
        "#!/bin/bash\n# Plays a simulated audio description ($1) to the simulated Echo at {m}.\nset -e\nexec 3<>/dev/tcp/{}/{}\ntr -d '\\n' < \"$1\" >&3\necho >&3\nread -r -u 3 reply\n[ \"$reply\" = done ]\n",
        m.ip(),
        m.port()
    );
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The simulated Echo, listening: connects to its cloud at `server` and answers what it hears
/// on its microphone until `stop`. Decisions draw from a generator seeded with `seed`.
pub fn listen(topo: &Topology, server: SocketAddr, seed: u64, stop: Arc<AtomicBool>) -> Result<thread::JoinHandle<Result<Vec<Heard>>>> {
    let ready = Arc::new(AtomicBool::new(false));
    let r = ready.clone();
    let handle = spawn_in(&topo.device_ns, move || -> Result<Vec<Heard>> {
        let mic = TcpListener::bind(microphone()).context("binding the microphone")?;
        mic.set_nonblocking(true)?;
        let mut tls = echo_sim::connect(server)?;
        r.store(true, Ordering::Relaxed);
        let mut rng = xorshift(seed | 1);
        let mut heard = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match mic.accept() {
                Ok((sock, _)) => heard.push(hear(&mut tls, sock, &mut rng)?),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(e.into()),
            }
        }
        echo_sim::close(&mut tls)?;
        Ok(heard)
    })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.load(Ordering::Relaxed) && !handle.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    Ok(handle)
}

fn hear(tls: &mut Tls, sock: std::net::TcpStream, rng: &mut impl FnMut() -> u64) -> Result<Heard> {
    sock.set_nonblocking(false)?;
    let mut line = String::new();
    BufReader::new(&sock).read_line(&mut line).context("reading the player")?;
    let audio = Audio::from_json(line.trim())?;
    let d = decide(&audio, rng);
    let t0 = Instant::now();
    let at = |real_s: f64| t0 + Duration::from_secs_f64(real_s / audio.speed);
    let sleep_until = |t: Instant| thread::sleep(t.saturating_duration_since(Instant::now()));
    // The wake word starts the command: the burst, then audio as it is spoken.
    sleep_until(at(audio.prefix_s));
    for &r in &BURST {
        echo_sim::send_data(tls, r)?;
    }
    let think = Duration::from_secs_f64(THINK_S / audio.speed);
    let n = d.records.len();
    for (i, &r) in d.records.iter().enumerate() {
        sleep_until(at(audio.prefix_s + d.recorded_s * (i + 1) as f64 / n as f64));
        if i + 1 == n {
            echo_sim::send_last(tls, r, d.response, think)?;
        } else {
            echo_sim::send_data(tls, r)?;
        }
    }
    sleep_until(at(audio.total_s()));
    (&sock).write_all(b"done\n")?;
    drop(sock);
    if d.response > 0 {
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < d.response {
            let n = std::io::Read::read(tls, &mut buf)?;
            anyhow::ensure!(n > 0, "the cloud closed mid-response");
            got += n;
        }
    }
    let upload_bytes = (BURST.iter().sum::<usize>() + d.records.iter().sum::<usize>()) as u64;
    let download_bytes = if d.response > 0 { sealed(d.response).1 } else { 0 };
    Ok(Heard { audio, decision: d, upload_bytes, download_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(gap_s: f64, postfix_s: f64) -> Audio {
        Audio { prefix_s: 0.0, command_s: COMMAND_S, gap_s, postfix_s, speed: 1.0 }
    }

    #[test]
    fn behaves_as_published() {
        let mut rng = xorshift(1);
        for _ in 0..200 {
            let below = decide(&audio(0.4, 3.0), &mut rng);
            assert!(!below.end_found && below.response != CORRECT_RESPONSE);
            let above = decide(&audio(0.7, 3.0), &mut rng);
            assert!(above.end_found && above.response == CORRECT_RESPONSE);
            let command = decide(&audio(1.0, 0.0), &mut rng).records;
            assert!((22..=26).contains(&command.len()) && command.iter().all(|r| (1_340..=1_467).contains(r)));
        }
        // Without a pause the postfix is streamed: ~9.6 records per second of it.
        let long = decide(&audio(0.0, 3.0), &mut rng).records.len();
        assert!((51..=55).contains(&long), "{long}");
        let silent = (0..1_000).filter(|_| decide(&audio(0.0, 1.0), &mut rng).response == 0).count();
        assert!((200..=300).contains(&silent), "{silent}");
    }
}
