//! The interaction log: JSON Lines in the state directory, one `analysis::Record` per line,
//! synced to disk per record, readable by its owner only (0600). It is read back at start,
//! so the API's history and the frame numbering survive restarts.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead, BufReader, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::analysis::Record;

pub const LOG_FILE: &str = "interactions.jsonl";

#[derive(Debug, Error)]
#[error("interaction log {0}")]
pub struct StoreError(PathBuf, #[source] io::Error);

pub struct Store {
    file: File,
}

/// What was in the log when it was opened.
pub struct Loaded {
    pub records: Vec<Record>,
    /// Lines that did not parse (a line cut short by a crash, or another version's record).
    pub skipped: usize,
}

impl Loaded {
    /// The records of a log; a line that is not a record (cut short, another version's, not
    /// even UTF-8) is counted as skipped, never an error.
    pub fn read(input: impl BufRead) -> io::Result<Loaded> {
        let mut loaded = Loaded { records: Vec::new(), skipped: 0 };
        for line in input.split(b'\n') {
            let line = line?;
            if line.trim_ascii().is_empty() {
                continue;
            }
            match serde_json::from_slice(&line) {
                Ok(r) => loaded.records.push(r),
                Err(_) => loaded.skipped += 1,
            }
        }
        Ok(loaded)
    }
}

impl Store {
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StoreError> {
        let path = dir.join(LOG_FILE);
        let err = |e| StoreError(path.clone(), e);
        let mut file = OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(&path).map_err(err)?;
        // An older file may have been created with other permissions.
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        let loaded = Loaded::read(BufReader::new(&file)).map_err(err)?;
        // A record cut short by a crash has no newline: end it, so the next one starts clean.
        let len = file.seek(SeekFrom::End(0)).map_err(err)?;
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1)).map_err(err)?;
            file.read_exact(&mut last).map_err(err)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(err)?;
            }
        }
        Ok((Store { file }, loaded))
    }

    /// Appends one record and waits until it is on disk.
    pub fn append(&mut self, r: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_reads_back_and_survives_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("echo-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rec = |at: f64| Record::Muted { device: "echo".into(), muted: true, at };
        {
            let (mut s, loaded) = Store::open(&dir).unwrap();
            assert_eq!((loaded.records.len(), loaded.skipped), (0, 0));
            s.append(&rec(1.0)).unwrap();
        }
        // A crash in the middle of the second record.
        // And bytes that are not even UTF-8 (a disk error), on a line of their own.
        std::fs::OpenOptions::new().append(true).open(dir.join(LOG_FILE)).unwrap().write_all(b"\xff\xfe\n{\"type\":\"mu").unwrap();
        {
            let (mut s, loaded) = Store::open(&dir).unwrap();
            assert_eq!((loaded.records, loaded.skipped), (vec![rec(1.0)], 2));
            s.append(&rec(2.0)).unwrap();
        }
        let (_, loaded) = Store::open(&dir).unwrap();
        assert_eq!((loaded.records, loaded.skipped), (vec![rec(1.0), rec(2.0)], 2));
        let mode = std::fs::metadata(dir.join(LOG_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
