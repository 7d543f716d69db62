//! The resolved rule model: what the compiler flattens into maps and what the
//! reference classifier scans. Every source of policy (the policy file, later the
//! catalog, service tags and DNS) ends up as a list of [`Rule`]s.

use std::{fmt, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tagwall_common::policy::{PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// An IP protocol as a rule names it: `any`, `tcp`, `udp`, `icmp`, `icmpv6` or a number
/// 1-255.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Proto(pub u8);

impl Proto {
    pub const ANY: Self = Self(PROTO_ANY);
    pub const TCP: Self = Self(PROTO_TCP);
    pub const UDP: Self = Self(PROTO_UDP);
    pub const ICMP: Self = Self(PROTO_ICMP);
    pub const ICMPV6: Self = Self(PROTO_ICMPV6);

    /// Do packets of this protocol carry ports the datapath reads?
    #[must_use]
    pub const fn has_ports(self) -> bool {
        self.0 == PROTO_TCP || self.0 == PROTO_UDP
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            PROTO_ANY => f.write_str("any"),
            PROTO_TCP => f.write_str("tcp"),
            PROTO_UDP => f.write_str("udp"),
            PROTO_ICMP => f.write_str("icmp"),
            PROTO_ICMPV6 => f.write_str("icmpv6"),
            n => write!(f, "{n}"),
        }
    }
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "any" | "*" => Ok(Self::ANY),
            "tcp" => Ok(Self::TCP),
            "udp" => Ok(Self::UDP),
            "icmp" => Ok(Self::ICMP),
            "icmpv6" | "ipv6-icmp" => Ok(Self::ICMPV6),
            other => match other.parse::<u8>() {
                Ok(0) | Err(_) => Err(format!(
                    "unknown protocol {s:?}: use any, tcp, udp, icmp, icmpv6 or a number 1-255"
                )),
                Ok(n) => Ok(Self(n)),
            },
        }
    }
}

impl Serialize for Proto {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An inclusive destination port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ANY: Self = Self {
        lo: 0,
        hi: u16::MAX,
    };

    #[must_use]
    pub const fn single(p: u16) -> Self {
        Self { lo: p, hi: p }
    }

    #[must_use]
    pub const fn is_any(self) -> bool {
        self.lo == 0 && self.hi == u16::MAX
    }

    #[must_use]
    pub const fn contains(self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            f.write_str("any")
        } else if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    /// `443`, `29876-29877` or `any`. Port 0 is allowed only as part of `any`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("any") || s == "*" {
            return Ok(Self::ANY);
        }
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) => Err(format!("port 0 in {s:?} is not a valid destination port")),
                Ok(n) => Ok(n),
                Err(_) => Err(format!(
                    "bad port {p:?} in {s:?}: ports are 1-65535, ranges are LO-HI"
                )),
            }
        };
        match s.split_once('-') {
            None => port(s).map(Self::single),
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(format!("port range {s:?} is reversed (low > high)"));
                }
                Ok(Self { lo, hi })
            }
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    /// Accepts a number (`443`) or a string (`"443"`, `"29876-29877"`, `"any"`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => u16::try_from(n)
                .ok()
                .filter(|&p| p != 0)
                .map(Self::single)
                .ok_or_else(|| serde::de::Error::custom(format!("port {n} is not in 1-65535"))),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Which address of a packet a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic leaving the protected network: match the destination.
    #[default]
    Outbound,
    /// Traffic entering the protected network: match the source.
    Inbound,
    /// Traffic to the gateway (or host) itself and to platform addresses, whichever
    /// way it goes: match the destination in both directions (management rules).
    Local,
}

/// One resolved rule: prefixes plus one protocol and its port ranges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Counter index in the datapath, `1..MAX_RULES`. Unique.
    pub id: u32,
    /// Stable, human name (catalog id, `user:NAME`, `mgmt:NAME`).
    pub name: String,
    pub direction: Direction,
    pub prefixes: Vec<IpNet>,
    pub proto: Proto,
    /// Destination port ranges; `[PortRange::ANY]` for "any port".
    pub ports: Vec<PortRange>,
    /// Where the rule came from (file and section, catalog row, service tag, ...).
    pub origin: String,
}

impl Rule {
    /// Does this rule allow a packet of `proto` to `port` (`None`: no ports)?
    #[must_use]
    pub fn allows(&self, proto: u8, port: Option<u16>) -> bool {
        if self.proto != Proto::ANY && self.proto.0 != proto {
            return false;
        }
        match port {
            Some(p) => self.ports.iter().any(|r| r.contains(p)),
            None => self.ports.iter().any(|r| r.is_any()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_reject() {
        assert_eq!("443".parse::<PortRange>(), Ok(PortRange::single(443)));
        assert_eq!(
            "29876-29877".parse::<PortRange>(),
            Ok(PortRange {
                lo: 29876,
                hi: 29877
            })
        );
        assert_eq!("any".parse::<PortRange>(), Ok(PortRange::ANY));
        assert!("0".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
        assert!("10-5".parse::<PortRange>().is_err());
        assert!("x".parse::<PortRange>().is_err());
    }

    #[test]
    fn protocols_parse_and_reject() {
        assert_eq!("TCP".parse::<Proto>(), Ok(Proto::TCP));
        assert_eq!("47".parse::<Proto>(), Ok(Proto(47)));
        assert!("0".parse::<Proto>().is_err());
        assert!("sctpx".parse::<Proto>().is_err());
    }

    #[test]
    fn allows_follows_portless_semantics() {
        let r = Rule {
            id: 1,
            name: "t".into(),
            direction: Direction::Outbound,
            prefixes: vec![],
            proto: Proto::TCP,
            ports: vec![PortRange::single(443)],
            origin: String::new(),
        };
        assert!(r.allows(6, Some(443)));
        assert!(!r.allows(6, Some(444)));
        assert!(!r.allows(17, Some(443)));
        assert!(!r.allows(6, None));
        let any = Rule {
            proto: Proto::ANY,
            ports: vec![PortRange::ANY],
            ..r
        };
        assert!(any.allows(1, None));
        assert!(any.allows(17, Some(9)));
    }
}
