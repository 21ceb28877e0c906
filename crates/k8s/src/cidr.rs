//! `--nodeport-addresses` CIDRs and which addresses they select.

use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not an IP address or CIDR ({why})")]
pub struct CidrError {
    pub text: String,
    pub why: &'static str,
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| CidrError { text: text.to_string(), why };
        let (ip, prefix) = match text.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| err("bad prefix length"))?)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| err("bad address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err("prefix length too long"));
        }
        Ok(Self { addr, prefix })
    }
}

impl Cidr {
    pub fn is_single_address(&self) -> bool {
        self.prefix == if self.addr.is_ipv4() { 32 } else { 128 }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(*ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(*ip) & mask
            }
            _ => false,
        }
    }
}

/// The NodePort addresses: with no CIDRs, every host address (loopback
/// included). A CIDR selects the host addresses inside it; a single address
/// (a /32, a /128 or a bare IP) is used as given, even if no interface of
/// this network namespace has it.
pub fn nodeport_addresses(cidrs: &[Cidr], host: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = if cidrs.is_empty() {
        host.to_vec()
    } else {
        let mut v: Vec<IpAddr> = cidrs.iter().filter(|c| c.is_single_address()).map(|c| c.addr).collect();
        v.extend(host.iter().filter(|ip| cidrs.iter().any(|c| !c.is_single_address() && c.contains(ip))));
        v
    };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    #[test]
    fn cidrs_parse_and_match() {
        assert!(c("10.0.0.0/8").contains(&"10.1.2.3".parse().expect("ip")));
        assert!(!c("10.0.0.0/8").contains(&"11.0.0.1".parse().expect("ip")));
        assert!(c("fd00::/8").contains(&"fd12::1".parse().expect("ip")));
        assert!(c("0.0.0.0/0").contains(&"1.2.3.4".parse().expect("ip")));
        assert!(c("192.168.1.5").is_single_address());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn nodeport_addresses_default_to_every_host_address() {
        let host: Vec<IpAddr> = vec!["127.0.0.1".parse().expect("ip"), "192.168.1.5".parse().expect("ip")];
        assert_eq!(nodeport_addresses(&[], &host), host);
    }

    #[test]
    fn a_cidr_selects_host_addresses_and_a_single_address_is_taken_as_given() {
        let host: Vec<IpAddr> = vec!["127.0.0.1".parse().expect("ip"), "192.168.1.5".parse().expect("ip")];
        let got = nodeport_addresses(&[c("192.168.0.0/16"), c("10.9.9.9/32")], &host);
        assert_eq!(got, vec!["10.9.9.9".parse::<IpAddr>().expect("ip"), "192.168.1.5".parse().expect("ip")]);
    }
}
