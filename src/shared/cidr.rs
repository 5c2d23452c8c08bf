//! IP networks written as CIDR (`10.0.0.0/8`, `fd00::/8`, or a bare address for one host): parsed
//! strictly, compared with IPv4-mapped IPv6 peers seen as the IPv4 address they carry.
use std::net::IpAddr;

/// One IP network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a network did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an IP network (expected ADDRESS or ADDRESS/PREFIX)")]
pub struct CidrError(pub String);

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        (!0u128 << (width - prefix)) & (if width == 32 { u32::MAX as u128 } else { !0 })
    }
}

impl Cidr {
    /// The network holding exactly `addr`.
    pub fn host(addr: IpAddr) -> Cidr {
        let addr = addr.to_canonical();
        Cidr {
            network: addr,
            prefix: bits(addr).1,
        }
    }

    /// `ADDRESS/PREFIX` (host bits must be zero) or a bare `ADDRESS`.
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(text.to_owned());
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let (value, width) = bits(addr);
        let prefix = match prefix {
            None => width,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
        };
        if prefix > width || value & !mask(prefix, width) & mask(width, width) != 0 {
            return Err(bad());
        }
        Ok(Cidr {
            network: addr,
            prefix,
        })
    }

    /// Comma/space/newline separated networks; `#` starts a comment to the end of the line.
    pub fn parse_list(text: &str) -> Result<Vec<Cidr>, CidrError> {
        text.lines()
            .map(|line| line.split('#').next().unwrap_or(""))
            .flat_map(|line| line.split([',', ' ', '\t']))
            .filter(|word| !word.is_empty())
            .map(Cidr::parse)
            .collect()
    }

    /// Whether this is an IPv6 network.
    pub fn is_ipv6(&self) -> bool {
        self.network.is_ipv6()
    }

    /// Whether `addr` lies in this network (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        if addr.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        let (value, width) = bits(addr);
        let m = mask(self.prefix, width);
        value & m == bits(self.network).0 & m
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Networks parse strictly and match the addresses inside them only.
    #[test]
    fn parse_and_contains() {
        let net = Cidr::parse("10.213.0.0/28").unwrap();
        assert!(net.contains(ip("10.213.0.15")));
        assert!(!net.contains(ip("10.213.0.16")));
        assert!(net.contains(ip("::ffff:10.213.0.3")), "v4-mapped peer");
        assert!(!net.contains(ip("fd00::1")));
        assert_eq!(net.to_string(), "10.213.0.0/28");
        let host = Cidr::parse("192.168.7.1").unwrap();
        assert!(host.contains(ip("192.168.7.1")) && !host.contains(ip("192.168.7.2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fdab::1")));
        assert!(!Cidr::parse("fd00::/8").unwrap().contains(ip("fe80::1")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "fd00::1/8",
            "host",
            "",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Cidr::parse_list("10.0.0.0/8, 127.0.0.1 # loopback\n\nfd00::/8").unwrap(),
            vec![
                Cidr::parse("10.0.0.0/8").unwrap(),
                Cidr::parse("127.0.0.1").unwrap(),
                Cidr::parse("fd00::/8").unwrap()
            ]
        );
    }
}
