//! Device MAC addresses as given on the command line: `02:ec:40:00:00:01[=kitchen]`.

use std::{fmt, str::FromStr};

use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed MAC address {0:?}: expected six hex byte pairs like 02:ec:40:00:00:01")]
pub struct MacError(pub String);

impl FromStr for Mac {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Self, MacError> {
        let err = || MacError(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in &mut mac {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// A monitored device: its MAC and the name it carries in metrics (the MAC by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    pub mac: Mac,
    pub name: String,
}

impl FromStr for DeviceSpec {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Self, MacError> {
        let (mac, name) = match s.split_once('=') {
            Some((mac, name)) if !name.is_empty() => (mac.parse::<Mac>()?, name.to_string()),
            Some(_) => return Err(MacError(s.to_string())),
            None => {
                let mac = s.parse::<Mac>()?;
                (mac, mac.to_string())
            }
        };
        Ok(DeviceSpec { mac, name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let m: Mac = "02:EC:40:00:00:01".parse().unwrap();
        assert_eq!(m.0, [0x02, 0xec, 0x40, 0, 0, 1]);
        assert_eq!(m.to_string(), "02:ec:40:00:00:01");
        assert_eq!("02-ec-40-00-00-01".parse::<Mac>().unwrap(), m);
        let d: DeviceSpec = "02:ec:40:00:00:01=kitchen".parse().unwrap();
        assert_eq!((d.mac, d.name.as_str()), (m, "kitchen"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "02:ec:40:00:00", "02:ec:40:00:00:01:02", "02:ec:40:00:00:1", "zz:ec:40:00:00:01", "02:ec:40:00:00:01="] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }
}
