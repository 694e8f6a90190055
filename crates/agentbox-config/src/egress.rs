//! Egress entries and secret rules: the parsed forms of `network.allowed_domains`,
//! `network.denied_domains`, `network.inspect_domains` and `network.secrets[].hosts`.
//!
//! An entry is `[METHODS ]HOST[:PORT][PATH]`:
//!
//! - `HOST` is a name (`api.github.com`), a wildcard (`*.github.com`, every name below it) or an
//!   IPv4 address; an IPv6 address is written in brackets (`[2001:db8::1]`).
//! - `PORT` limits the entry to one destination port (`api.github.com:443`); without it, any port.
//! - `METHODS` is one or more HTTP methods joined by commas (`GET`, `GET,HEAD`), and `PATH` an
//!   absolute path, exact (`/user`) or a prefix when it ends in `*` (`/repos/*`). Both apply only to
//!   requests the proxy can see: plain HTTP, and HTTPS to hosts whose TLS it terminates. An entry
//!   with a method or a path makes the proxy terminate TLS for the hosts it matches.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What is malformed in an egress entry or a secret's header, and the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// A method that is not upper-case letters (at most 16).
    #[error("invalid HTTP method {0:?} (expected upper-case methods like \"GET,HEAD\")")]
    Method(String),
    /// A path with a query, a fragment, a space or an empty segment.
    #[error("invalid path {0:?} (expected an absolute path like \"/repos/*\")")]
    Path(String),
    /// A path with a `*` that is not its last character.
    #[error("invalid path {0:?} (only a final \"*\" is allowed)")]
    PathWildcard(String),
    /// A bracketed IPv6 host without its closing bracket.
    #[error("invalid host {0:?} (missing \"]\")")]
    UnclosedBracket(String),
    /// Brackets around something that is not an IPv6 address.
    #[error("invalid IPv6 address {text:?}")]
    Ipv6 {
        /// The text between the brackets.
        text: String,
        /// Why it is not an address.
        #[source]
        source: std::net::AddrParseError,
    },
    /// Text after a bracketed address that is not a port.
    #[error("invalid host {0:?}")]
    AfterBracket(String),
    /// A port that is not 1 to 65535.
    #[error("invalid port {0:?} (expected 1 to 65535)")]
    Port(String),
    /// A host that is neither a name, a wildcard nor an address.
    #[error(
        "invalid host {0:?} (expected a name like \"pypi.org\", a wildcard like \"*.example.com\" or an IP address)"
    )]
    Host(String),
    /// A secret's header without a `:` between name and template.
    #[error("invalid header {0:?} (expected \"Name: template\")")]
    Header(String),
    /// A secret's header name with characters a header name cannot have.
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    /// A secret's header template without `{value}`.
    #[error("the header template must contain {{value}}, where the secret goes")]
    TemplateWithoutValue,
    /// A secret's header template with control characters.
    #[error("the header template must not contain control characters")]
    TemplateControl,
}

/// How a request path is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path (without the query) equals this.
    Exact(String),
    /// The path starts with this.
    Prefix(String),
}

impl PathMatch {
    /// Whether a request path (query included or not) matches.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        match self {
            Self::Exact(p) => path == p,
            Self::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// One parsed egress entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEntry {
    /// Upper-case HTTP methods; empty means any.
    pub methods: Vec<String>,
    /// The host pattern, lower-case: a name, `*.suffix`, or an IP address (without brackets).
    pub host: String,
    /// The destination port, or any.
    pub port: Option<u16>,
    /// The request path, or any.
    pub path: Option<PathMatch>,
}

impl EgressEntry {
    /// Parses an entry (see the module documentation for the form).
    ///
    /// # Errors
    /// An [`EgressError`] naming what is malformed and the expected form.
    pub fn parse(text: &str) -> Result<Self, EgressError> {
        let text = text.trim();
        let (methods, rest) = match text.split_once(' ') {
            Some((m, rest)) => {
                let methods: Vec<String> = m.split(',').map(str::to_owned).collect();
                if let Some(bad) =
                    methods.iter().find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) || m.len() > 16)
                {
                    return Err(EgressError::Method(bad.clone()));
                }
                (methods, rest.trim())
            }
            None => (Vec::new(), text),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let path = match path {
            None => None,
            Some(p) if p.contains(['?', '#', ' ']) || p.contains("//") => {
                return Err(EgressError::Path(p.to_owned()));
            }
            Some(p) => Some(match p.strip_suffix('*') {
                Some(prefix) if !prefix.contains('*') => PathMatch::Prefix(prefix.to_owned()),
                Some(_) => return Err(EgressError::PathWildcard(p.to_owned())),
                None if p.contains('*') => return Err(EgressError::PathWildcard(p.to_owned())),
                None => PathMatch::Exact(p.to_owned()),
            }),
        };
        let (host, port) = split_host_port(authority)?;
        Ok(Self { methods, host, port, path })
    }

    /// Whether the entry restricts requests (a method or a path), so the proxy must see them.
    #[must_use]
    pub fn is_request_level(&self) -> bool {
        !self.methods.is_empty() || self.path.is_some()
    }

    /// Whether a normalized host name or address text and a port match the entry's host and port.
    #[must_use]
    pub fn matches_host(&self, host: &str, port: u16) -> bool {
        self.port.is_none_or(|p| p == port) && host_matches(&self.host, host)
    }

    /// Whether a request's method and path match (the host was matched already).
    #[must_use]
    pub fn matches_request(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.path.as_ref().is_none_or(|p| p.matches(path))
    }
}

impl fmt::Display for EgressEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.methods.is_empty() {
            write!(f, "{} ", self.methods.join(","))?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        match &self.path {
            Some(PathMatch::Exact(p)) => f.write_str(p),
            Some(PathMatch::Prefix(p)) => write!(f, "{p}*"),
            None => Ok(()),
        }
    }
}

/// Whether `pattern` (a name, `*.suffix` or an address) matches a normalized host.
#[must_use]
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len()
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern == host,
    }
}

fn split_host_port(authority: &str) -> Result<(String, Option<u16>), EgressError> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(|| EgressError::UnclosedBracket(authority.to_owned()))?;
        if let Err(source) = ip.parse::<std::net::Ipv6Addr>() {
            return Err(EgressError::Ipv6 { text: ip.to_owned(), source });
        }
        match after.strip_prefix(':') {
            Some(p) => (ip.to_owned(), Some(p)),
            None if after.is_empty() => (ip.to_owned(), None),
            None => return Err(EgressError::AfterBracket(authority.to_owned())),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(EgressError::Port(p.to_owned())),
        },
        None => None,
    };
    let host = host.strip_suffix('.').unwrap_or(&host).to_ascii_lowercase();
    if host.parse::<IpAddr>().is_err() && !valid_domain_pattern(&host) {
        return Err(EgressError::Host(host));
    }
    Ok((host, port))
}

/// Whether `d` is a DNS name or `*.` followed by one.
pub(crate) fn valid_domain_pattern(d: &str) -> bool {
    let name = d.strip_prefix("*.").unwrap_or(d);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// A credential the egress proxy adds to requests, so it never enters the sandbox.
///
/// The value is not part of the sandbox's configuration: it is held by the server (agentboxd's
/// `secrets` configuration or `PUT /api/secrets/{name}`) under the same name, and read for every
/// request, so a new value applies at once.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct SecretRule {
    /// The secret's name: upper-case letters, digits and `_` (`GITHUB_TOKEN`).
    pub name: String,
    /// Destinations that may receive it: names, wildcards or IPv4 addresses, optionally with a port
    /// (`api.github.com`, `*.openai.com:443`), at most 253 characters. The proxy terminates TLS for these
    /// hosts only.
    pub hosts: Vec<String>,
    /// A header set on every request to those hosts, as `Name: template` where `{value}` stands for
    /// the secret (`Authorization: Bearer {value}`). Replaces a header of that name the sandbox sent.
    pub header: Option<String>,
    /// Whether the sandbox sees `AGENTBOX_SECRET_<NAME>=agentbox-placeholder-<random>`, which the
    /// proxy replaces with the value in the request line and headers of requests to those hosts.
    pub placeholder: bool,
    /// Whether the placeholder is replaced in request bodies too (bodies up to the proxy's rewrite
    /// limit; a larger body is refused). Ignored without `placeholder`; a secret with neither a header
    /// nor a placeholder is never sent.
    pub replace_in_body: bool,
}

impl SecretRule {
    /// The header name and value template of [`header`](Self::header).
    ///
    /// # Errors
    /// When the header is not `Name: template` with a valid name and a `{value}` in the template.
    pub fn header_parts(&self) -> Result<Option<(String, String)>, EgressError> {
        let Some(h) = &self.header else { return Ok(None) };
        let (name, template) = h.split_once(':').ok_or_else(|| EgressError::Header(h.clone()))?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(EgressError::HeaderName(name.to_owned()));
        }
        let template = template.trim();
        if !template.contains("{value}") {
            return Err(EgressError::TemplateWithoutValue);
        }
        if template.bytes().any(|b| b.is_ascii_control()) {
            return Err(EgressError::TemplateControl);
        }
        Ok(Some((name.to_owned(), template.to_owned())))
    }

    /// The environment variable that carries the placeholder in the sandbox.
    #[must_use]
    pub fn placeholder_env(&self) -> String {
        format!("AGENTBOX_SECRET_{}", self.name)
    }
}

/// Whether `name` is a valid secret name.
#[must_use]
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_with_ports_methods_and_paths() {
        let e = EgressEntry::parse("GET,HEAD api.github.com:443/repos/*").unwrap();
        assert_eq!(e.methods, ["GET", "HEAD"]);
        assert_eq!((e.host.as_str(), e.port), ("api.github.com", Some(443)));
        assert_eq!(e.path, Some(PathMatch::Prefix("/repos/".into())));
        assert!(e.matches_host("api.github.com", 443));
        assert!(!e.matches_host("api.github.com", 80));
        assert!(e.matches_request("GET", "/repos/a/b?x=1"));
        assert!(!e.matches_request("POST", "/repos/a"));
        assert!(!e.matches_request("GET", "/user"));
        assert_eq!(e.to_string(), "GET,HEAD api.github.com:443/repos/*");
        let w = EgressEntry::parse("*.Example.com.").unwrap();
        assert!(w.matches_host("a.example.com", 1) && !w.matches_host("example.com", 1));
        assert!(!w.is_request_level());
        let ip = EgressEntry::parse("[::1]:8443/x").unwrap();
        assert_eq!((ip.host.as_str(), ip.port, ip.path), ("::1", Some(8443), Some(PathMatch::Exact("/x".into()))));
        assert_eq!(EgressEntry::parse("10.0.0.1:80").unwrap().host, "10.0.0.1");
        for bad in ["get a.com", "a.com:0", "a.com:x", "a b c", "a..com", "a.com/x*y", "a.com/a?b", "[zz]", ""] {
            assert!(EgressEntry::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_headers_parse() {
        let mut r =
            SecretRule { name: "T".into(), header: Some("Authorization: Bearer {value}".into()), ..Default::default() };
        assert_eq!(r.header_parts().unwrap(), Some(("Authorization".into(), "Bearer {value}".into())));
        r.header = Some("X-Key: fixed".into());
        assert!(r.header_parts().is_err());
        r.header = Some("Bad Name: {value}".into());
        assert!(r.header_parts().is_err());
        assert!(valid_secret_name("GITHUB_TOKEN") && !valid_secret_name("lower") && !valid_secret_name("1A"));
    }
}
