//! Marker addresses and their roles (`--marker IP=ROLE`). Pinging a marker address marks a
//! moment of a trial, the research protocol's way of framing captures.

use std::{fmt, net::IpAddr, str::FromStr};

use echo_common::{MarkerKey, FAMILY_V4, FAMILY_V6};
use thiserror::Error;

/// What a marker ping means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    CommandStart,
    CommandEnd,
    ResponseStart,
    ResponseEnd,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::CommandStart, Role::CommandEnd, Role::ResponseStart, Role::ResponseEnd];

    pub fn name(self) -> &'static str {
        match self {
            Role::CommandStart => "command_start",
            Role::CommandEnd => "command_end",
            Role::ResponseStart => "response_start",
            Role::ResponseEnd => "response_end",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkerSpec {
    pub ip: IpAddr,
    pub role: Role,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed marker {0:?}: expected IP=ROLE with ROLE one of command_start, command_end, response_start, response_end")]
pub struct MarkerError(pub String);

impl FromStr for MarkerSpec {
    type Err = MarkerError;
    fn from_str(s: &str) -> Result<Self, MarkerError> {
        let err = || MarkerError(s.to_string());
        let (ip, role) = s.split_once('=').ok_or_else(err)?;
        let ip: IpAddr = ip.parse().map_err(|_| err())?;
        let role = Role::ALL.into_iter().find(|r| r.name() == role).ok_or_else(err)?;
        Ok(MarkerSpec { ip, role })
    }
}

impl MarkerSpec {
    /// The key the programs look the address up by.
    pub fn key(&self) -> MarkerKey {
        let mut addr = [0u8; 16];
        let family = match self.ip {
            IpAddr::V4(a) => {
                addr[..4].copy_from_slice(&a.octets());
                FAMILY_V4
            }
            IpAddr::V6(a) => {
                addr = a.octets();
                FAMILY_V6
            }
        };
        MarkerKey { addr, family, _pad: [0; 3] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let m: MarkerSpec = "192.0.2.1=command_start".parse().unwrap();
        assert_eq!(m.role, Role::CommandStart);
        assert_eq!(&m.key().addr[..5], &[192, 0, 2, 1, 0]);
        let m: MarkerSpec = "2001:db8::1=response_end".parse().unwrap();
        assert_eq!(m.key().family, FAMILY_V6);
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["192.0.2.1", "192.0.2.1=", "192.0.2.300=command_start", "192.0.2.1=start", "=command_end"] {
            assert!(bad.parse::<MarkerSpec>().is_err(), "{bad}");
        }
    }
}
