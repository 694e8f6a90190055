//! The egress rules: which names and which addresses a sandbox may reach.
//!
//! A destination passes two checks. The name check runs first, on the name the
//! program asked for: denied patterns win, then the allow list (empty means
//! every name). The address check runs on every address the name resolved to
//! (or on the literal address asked for), and refuses anything that is not a
//! public unicast address or one of the host's own addresses, unless an
//! allowed CIDR covers it. The proxy then connects only to addresses that
//! passed, so a name that resolves to a private address is refused however
//! often it is re-resolved.
//!
//! Entries may carry a port, and HTTP methods and a path (see
//! [`agentbox_config::EgressEntry`]). Ports are checked with the name; methods
//! and paths are checked per request ([`Policy::check_request`]) on the
//! connections the proxy can read: plain HTTP, and HTTPS to the hosts whose TLS
//! it terminates ([`Policy::inspects`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agentbox_config::{EgressEntry, NetworkConfig};

/// Why a destination was refused; the name is what logs and counters use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Networking is off for this sandbox.
    NetworkDisabled,
    /// The name matches a `network.denied_domains` pattern.
    Denied(String),
    /// The allow list is not empty and the name matches none of it.
    NotAllowed,
    /// The destination is an IP address while the allow list names domains.
    IpLiteral,
    /// The host is not a valid DNS name or IP address.
    InvalidHost,
    /// The address is of a kind that is never reached without an allowed CIDR.
    Address(&'static str),
    /// The address belongs to the host itself.
    HostAddress,
    /// The name could not be resolved.
    Unresolved(String),
    /// Too many connections at once from this sandbox.
    ConnectionLimit,
    /// The server's connection budget for all proxies is used up, or tight while this sandbox holds
    /// more than its share.
    ServerConnectionLimit,
    /// The client asked for something the proxy does not do (UDP, BIND, https absolute-form).
    Unsupported(&'static str),
    /// The request matches a `network.denied_domains` entry with a method or a path.
    DeniedRequest(String),
    /// The host's allow entries all name methods or paths, and the request matches none of them.
    RequestNotAllowed,
    /// The request carries the placeholder of a secret that this destination may not receive.
    SecretWrongHost(String),
    /// A secret for this request has no usable value on the server (the reason names the secret only).
    SecretUnavailable(String),
    /// A request body that must be rewritten is larger than the proxy rewrites.
    BodyTooLarge(usize),
    /// The proxy could not establish TLS with the sandbox or the destination.
    Tls(String),
}

impl Rule {
    /// A short, stable name for logs and counters.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::NetworkDisabled => "network-disabled",
            Self::Denied(_) => "denied-domain",
            Self::NotAllowed => "not-allowed-domain",
            Self::IpLiteral => "ip-literal",
            Self::InvalidHost => "invalid-host",
            Self::Address(kind) => kind,
            Self::HostAddress => "host-address",
            Self::Unresolved(_) => "unresolved",
            Self::ConnectionLimit => "connection-limit",
            Self::ServerConnectionLimit => "server-connection-limit",
            Self::Unsupported(_) => "unsupported",
            Self::DeniedRequest(_) => "denied-request",
            Self::RequestNotAllowed => "not-allowed-request",
            Self::SecretWrongHost(_) => "secret-wrong-host",
            Self::SecretUnavailable(_) => "secret-unavailable",
            Self::BodyTooLarge(_) => "body-too-large",
            Self::Tls(_) => "tls",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NetworkDisabled => f.write_str("networking is disabled for this sandbox"),
            Self::Denied(p) => write!(f, "the name matches network.denied_domains entry {p:?}"),
            Self::NotAllowed => f.write_str("the name is not in network.allowed_domains"),
            Self::IpLiteral => {
                f.write_str("IP addresses are not reachable directly when network.allowed_domains is set; use a name")
            }
            Self::InvalidHost => f.write_str("the host is not a valid DNS name or IP address"),
            Self::Address(kind) => {
                write!(f, "the address is {kind} and not covered by network.allowed_cidrs")
            }
            Self::HostAddress => {
                f.write_str("the address belongs to the host and is not covered by network.allowed_cidrs")
            }
            Self::Unresolved(e) => write!(f, "the name could not be resolved: {e}"),
            Self::ConnectionLimit => f.write_str("too many connections from this sandbox at once"),
            Self::ServerConnectionLimit => f.write_str(
                "the server's connection budget for all sandboxes is used up, or tight while this sandbox \
                     holds more than its share; close idle connections and retry",
            ),
            Self::Unsupported(what) => write!(f, "{what} is not supported by the egress proxy"),
            Self::DeniedRequest(e) => write!(f, "the request matches network.denied_domains entry {e:?}"),
            Self::RequestNotAllowed => {
                f.write_str("the request's method and path match none of this host's network.allowed_domains entries")
            }
            Self::SecretWrongHost(name) => write!(
                f,
                "the request carries the placeholder of secret {name}, which this destination may not receive \
                 (network.secrets hosts)"
            ),
            Self::SecretUnavailable(reason) => write!(f, "{reason}"),
            Self::BodyTooLarge(max) => write!(
                f,
                "the request body carries a secret placeholder to replace and is larger than {max} bytes, \
                 the most the proxy rewrites"
            ),
            Self::Tls(reason) => write!(f, "TLS failed: {reason}"),
        }
    }
}

/// Lower-cases a name and drops one final dot.
#[must_use]
pub fn normalize_name(name: &str) -> String {
    let n = name.strip_suffix('.').unwrap_or(name);
    n.to_ascii_lowercase()
}

/// Whether `name` is a syntactically valid DNS name (letters, digits, `-`, `_`; labels of 1 to 63).
#[must_use]
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a bare address (a range of one).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip.parse::<IpAddr>().ok()?, Some(bits.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Self { addr: canonical(ip), bits })
    }

    /// Whether `ip` (taken in canonical form) lies in the range.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.bits)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as IPv4; anything else unchanged.
#[must_use]
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, bits: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The kind of a non-public address, or `None` for a public unicast address.
#[must_use]
pub fn special_kind(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let table: [([u8; 4], u32, &'static str); 17] = [
        ([0, 0, 0, 0], 8, "unspecified"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "shared (CGNAT)"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local (cloud metadata)"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "IETF protocol assignment"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 31, 196, 0], 24, "AS112"),
        ([192, 52, 193, 0], 24, "AMT"),
        ([192, 88, 99, 0], 24, "6to4 relay anycast"),
        ([192, 168, 0, 0], 16, "private"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved"),
    ];
    table.iter().find(|(net, bits, _)| in_v4(ip, *net, *bits)).map(|(_, _, k)| *k)
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let seg = ip.segments();
    // Forms that carry an IPv4 address: judge the embedded one. IPv4-mapped forms were
    // made canonical already; IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
    let embedded = |hi: usize| {
        let o = ip.octets();
        Ipv4Addr::new(o[hi], o[hi + 1], o[hi + 2], o[hi + 3])
    };
    if in_v6(ip, Ipv6Addr::UNSPECIFIED, 96) {
        return Some(v4_kind(embedded(12)).unwrap_or("IPv4-compatible"));
    }
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
        || in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48)
    {
        return Some(v4_kind(embedded(12)).unwrap_or("NAT64"));
    }
    if seg[0] == 0x2002 {
        return Some(v4_kind(embedded(2)).unwrap_or("6to4"));
    }
    let table: [(Ipv6Addr, u32, &'static str); 8] = [
        (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "discard-only"),
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, "Teredo"),
        (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48, "benchmarking"),
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, "documentation"),
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "unique-local"),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local"),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
    ];
    table.iter().find(|(net, bits, _)| in_v6(ip, *net, *bits)).map(|(_, _, k)| *k)
}

/// A sandbox's rules in checkable form.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Whether anything may be reached.
    pub enabled: bool,
    allowed: Vec<EgressEntry>,
    denied: Vec<EgressEntry>,
    inspect: Vec<EgressEntry>,
    cidrs: Vec<Cidr>,
}

fn entries(list: &[String]) -> Vec<EgressEntry> {
    // The configuration was validated; an entry that doesn't parse can't match anything.
    list.iter().filter_map(|e| EgressEntry::parse(e).ok()).collect()
}

impl Policy {
    /// The rules of a (validated) network configuration.
    #[must_use]
    pub fn new(config: &NetworkConfig) -> Self {
        Self {
            enabled: config.enabled,
            allowed: entries(&config.allowed_domains),
            denied: entries(&config.denied_domains),
            inspect: entries(&config.inspect_domains),
            cidrs: config.allowed_cidrs.iter().filter_map(|c| Cidr::parse(c)).collect(),
        }
    }

    /// A policy that refuses everything (networking off).
    #[must_use]
    pub fn closed() -> Self {
        Self { enabled: false, allowed: Vec::new(), denied: Vec::new(), inspect: Vec::new(), cidrs: Vec::new() }
    }

    /// Checks the host and port a client asked for, before any lookup. IP literals match only an
    /// exact entry equal to them; the address check still follows. Entries with a method or a path
    /// allow the connection, and are checked again on each request.
    ///
    /// # Errors
    /// The rule that refuses it.
    pub fn check_host(&self, host: &Host, port: u16) -> Result<(), Rule> {
        if !self.enabled {
            return Err(Rule::NetworkDisabled);
        }
        let text = host.match_text();
        if let Some(e) = self.denied.iter().find(|e| !e.is_request_level() && e.matches_host(&text, port)) {
            return Err(Rule::Denied(e.to_string()));
        }
        if self.allowed.is_empty() || self.allowed.iter().any(|e| e.matches_host(&text, port)) {
            return Ok(());
        }
        Err(match host {
            Host::Name(_) => Rule::NotAllowed,
            Host::Ip(_) => Rule::IpLiteral,
        })
    }

    /// Checks one request on an allowed connection; returns the allow entry that let it through, if any.
    ///
    /// # Errors
    /// [`Rule::DeniedRequest`] or [`Rule::RequestNotAllowed`].
    pub fn check_request(&self, host: &Host, port: u16, method: &str, path: &str) -> Result<Option<String>, Rule> {
        let text = host.match_text();
        if let Some(e) = self
            .denied
            .iter()
            .find(|e| e.is_request_level() && e.matches_host(&text, port) && e.matches_request(method, path))
        {
            return Err(Rule::DeniedRequest(e.to_string()));
        }
        if self.allowed.is_empty() {
            return Ok(None);
        }
        let mut matching = self.allowed.iter().filter(|e| e.matches_host(&text, port)).peekable();
        if matching.peek().is_none() {
            return Err(Rule::NotAllowed);
        }
        matching
            .find(|e| !e.is_request_level() || e.matches_request(method, path))
            .map(|e| Some(e.to_string()))
            .ok_or(Rule::RequestNotAllowed)
    }

    /// Whether the proxy must read the requests to `host:port`: an `inspect_domains` entry matches,
    /// or an allow or deny entry with a method or a path does.
    #[must_use]
    pub fn inspects(&self, host: &Host, port: u16) -> bool {
        let text = host.match_text();
        self.inspect.iter().any(|e| e.matches_host(&text, port))
            || self.allowed.iter().chain(&self.denied).any(|e| e.is_request_level() && e.matches_host(&text, port))
    }

    /// Checks one address about to be connected to.
    ///
    /// # Errors
    /// The rule that refuses it.
    pub fn check_ip(&self, ip: IpAddr, host_addrs: &[IpAddr]) -> Result<(), Rule> {
        if !self.enabled {
            return Err(Rule::NetworkDisabled);
        }
        if self.cidrs.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        if let Some(kind) = special_kind(ip) {
            return Err(Rule::Address(kind));
        }
        let ip = canonical(ip);
        if host_addrs.iter().any(|h| canonical(*h) == ip) {
            return Err(Rule::HostAddress);
        }
        Ok(())
    }
}

/// A destination host as a client named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, normalized.
    Name(String),
    /// An IP address.
    Ip(IpAddr),
}

impl Host {
    /// Parses a host from a request (`example.com`, `1.2.3.4`, `[::1]` or `::1`).
    ///
    /// # Errors
    /// [`Rule::InvalidHost`] for anything else.
    pub fn parse(s: &str) -> Result<Self, Rule> {
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let name = normalize_name(s);
        // Numeric-looking names (`0x7f.1`, `2130706433`) are refused rather than guessed at.
        if valid_name(&name) && !name.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
            Ok(Self::Name(name))
        } else {
            Err(Rule::InvalidHost)
        }
    }
}

impl Host {
    /// The text entries are matched against: the name, or the address in canonical form.
    #[must_use]
    pub fn match_text(&self) -> String {
        match self {
            Self::Name(n) => n.clone(),
            Self::Ip(ip) => canonical(*ip).to_string(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str], denied: &[&str], cidrs: &[&str]) -> Policy {
        Policy::new(&NetworkConfig {
            enabled: true,
            allowed_domains: allowed.iter().map(|s| (*s).to_owned()).collect(),
            denied_domains: denied.iter().map(|s| (*s).to_owned()).collect(),
            allowed_cidrs: cidrs.iter().map(|s| (*s).to_owned()).collect(),
            ..NetworkConfig::default()
        })
    }

    fn name(p: &Policy, h: &str) -> Result<(), &'static str> {
        p.check_host(&Host::parse(h).map_err(|r| r.name())?, 443).map_err(|r| r.name())
    }

    fn ip(p: &Policy, a: &str) -> Result<(), &'static str> {
        p.check_ip(a.parse().unwrap(), &["192.0.2.10".parse().unwrap(), "8.8.4.4".parse().unwrap()])
            .map_err(|r| r.name())
    }

    #[test]
    fn names_exact_wildcard_deny_wins() {
        let p = policy(&["pypi.org", "*.Example.com"], &["bad.example.com", "*.evil.example.com"], &[]);
        assert_eq!(name(&p, "pypi.org"), Ok(()));
        assert_eq!(name(&p, "PyPI.org."), Ok(()));
        assert_eq!(name(&p, "files.pypi.org"), Err("not-allowed-domain"));
        assert_eq!(name(&p, "a.example.com"), Ok(()));
        assert_eq!(name(&p, "a.b.example.com"), Ok(()));
        assert_eq!(name(&p, "example.com"), Err("not-allowed-domain"));
        assert_eq!(name(&p, "notexample.com"), Err("not-allowed-domain"));
        assert_eq!(name(&p, "bad.example.com"), Err("denied-domain"));
        assert_eq!(name(&p, "x.evil.example.com"), Err("denied-domain"));
        assert_eq!(name(&p, "1.2.3.4"), Err("ip-literal"));
        assert_eq!(name(&p, "[::1]"), Err("ip-literal"));
        assert_eq!(name(&p, "0x7f.1"), Err("invalid-host"));
        assert_eq!(name(&p, "a b"), Err("invalid-host"));
        let open = policy(&[], &["*.evil.com"], &[]);
        assert_eq!(name(&open, "anything.org"), Ok(()));
        assert_eq!(name(&open, "1.2.3.4"), Ok(()));
        assert_eq!(name(&open, "a.evil.com"), Err("denied-domain"));
        let closed = Policy::closed();
        assert_eq!(name(&closed, "pypi.org"), Err("network-disabled"));
    }

    #[test]
    fn ports_methods_and_paths() {
        let p = policy(
            &["api.test:443", "GET,HEAD gh.test/repos/*", "POST gh.test/graphql", "open.test"],
            &["DELETE open.test/*", "open.test:25"],
            &[],
        );
        let host = |h: &str| Host::parse(h).unwrap();
        let req = |h: &str, port, m, path| p.check_request(&host(h), port, m, path).map_err(|r| r.name());
        assert_eq!(p.check_host(&host("api.test"), 443), Ok(()));
        assert_eq!(p.check_host(&host("api.test"), 80).map_err(|r| r.name()), Err("not-allowed-domain"));
        assert_eq!(p.check_host(&host("open.test"), 25).map_err(|r| r.name()), Err("denied-domain"));
        assert_eq!(p.check_host(&host("gh.test"), 443), Ok(()));
        assert_eq!(req("gh.test", 443, "GET", "/repos/a/b"), Ok(Some("GET,HEAD gh.test/repos/*".into())));
        assert_eq!(req("gh.test", 443, "POST", "/repos/a/b"), Err("not-allowed-request"));
        assert_eq!(req("gh.test", 443, "POST", "/graphql"), Ok(Some("POST gh.test/graphql".into())));
        assert_eq!(req("gh.test", 443, "GET", "/user"), Err("not-allowed-request"));
        assert_eq!(req("open.test", 443, "GET", "/x"), Ok(Some("open.test".into())));
        assert_eq!(req("open.test", 443, "DELETE", "/x"), Err("denied-request"));
        assert!(p.inspects(&host("gh.test"), 443) && p.inspects(&host("open.test"), 443));
        assert!(!p.inspects(&host("api.test"), 443));
    }

    #[test]
    fn addresses_refused_unless_allowed() {
        let p = policy(&[], &[], &[]);
        for (a, rule) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.20.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("100.100.100.200", "shared (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata)"),
            ("2002:a00:1::", "private"),
            ("fd00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001::1", "Teredo"),
            ("192.0.2.10", "documentation"),
            ("8.8.4.4", "host-address"),
        ] {
            assert_eq!(ip(&p, a), Err(rule), "{a}");
        }
        assert_eq!(ip(&p, "8.8.8.8"), Ok(()));
        assert_eq!(ip(&p, "2606:4700::1111"), Ok(()));
        let allowed = policy(&[], &[], &["127.0.0.0/8", "fd00::/8", "8.8.4.4"]);
        assert_eq!(ip(&allowed, "127.9.9.9"), Ok(()));
        assert_eq!(ip(&allowed, "::ffff:127.0.0.1"), Ok(()));
        assert_eq!(ip(&allowed, "fd12::1"), Ok(()));
        assert_eq!(ip(&allowed, "8.8.4.4"), Ok(()));
        assert_eq!(ip(&allowed, "10.0.0.1"), Err("private"));
    }

    #[test]
    fn cidr_parsing() {
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nonsense").is_none());
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains("::2".parse().unwrap()));
    }
}
