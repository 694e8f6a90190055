//! Image references: `python:3.12`, `docker.io/library/python:3.12-slim`, `localhost:5000/team/agent:1`,
//! `name@sha256:...`.

mod grammar;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use oci_client::Reference;

use crate::digest::Digest;

/// A reference that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The text is not a valid reference.
    #[error("{input:?} is not a valid image reference (expected [REGISTRY/]NAME[:TAG][@sha256:DIGEST]): {source}")]
    Parse {
        /// What was given.
        input: String,
        /// The parser's reason.
        #[source]
        source: oci_client::ParseError,
    },
    /// The digest part is not a sha256 digest.
    #[error("image reference {input:?}: {source}")]
    Digest {
        /// What was given.
        input: String,
        /// Why the digest was refused.
        #[source]
        source: crate::digest::DigestError,
    },
}

/// A parsed, normalized image reference. `python:3.12` means `docker.io/library/python:3.12`, and a
/// reference with neither tag nor digest means `:latest`.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    /// Parses and normalizes a reference.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let inner =
            grammar::parse(input).map_err(|source| ReferenceError::Parse { input: input.to_owned(), source })?;
        if let Some(d) = inner.digest() {
            Digest::parse(d).map_err(|source| ReferenceError::Digest { input: input.to_owned(), source })?;
        }
        Ok(Self { inner })
    }

    /// The registry as named (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository (`library/python`).
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| Digest::parse(d).ok())
    }

    /// The underlying client reference.
    pub(crate) fn oci(&self) -> &Reference {
        &self.inner
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.whole())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageRef({})", self.inner.whole())
    }
}

/// Whether a registry host (`host[:port]`) is on loopback: `localhost`, 127.0.0.0/8 or `::1`. Such a registry
/// may be reached over plain http, as Docker allows.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = host_of(registry);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host part of `host[:port]`, without the brackets of an IPv6 literal.
pub(crate) fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = ImageRef::parse(s).expect("valid reference");
        (r.registry().into(), r.repository().into(), r.tag().map(Into::into), r.digest().map(|d| d.to_string()))
    }

    #[test]
    fn normalizes_docker_hub_names() {
        assert_eq!(parts("python:3.12"), ("docker.io".into(), "library/python".into(), Some("3.12".into()), None));
        assert_eq!(
            parts("docker.io/library/python:3.12-slim"),
            ("docker.io".into(), "library/python".into(), Some("3.12-slim".into()), None)
        );
        assert_eq!(parts("ubuntu").2, Some("latest".into()));
        assert_eq!(
            ImageRef::parse("python:3.12").map(|r| r.to_string()).ok(),
            Some("docker.io/library/python:3.12".into())
        );
    }

    #[test]
    fn parses_local_registries_and_digests() {
        assert_eq!(
            parts("localhost:5000/team/agent:1"),
            ("localhost:5000".into(), "team/agent".into(), Some("1".into()), None)
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let (reg, repo, _, digest) = parts(&format!("127.0.0.1:5000/x@{d}"));
        assert_eq!((reg.as_str(), repo.as_str(), digest), ("127.0.0.1:5000", "x", Some(d)));
        assert!(ImageRef::parse("team/UPPER").is_err());
        assert!(ImageRef::parse(&format!("x@sha512:{}", "a".repeat(128))).is_err());
    }

    #[test]
    fn loopback_registries() {
        for r in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.3.2.1", "[::1]:5000"] {
            assert!(is_loopback_registry(r), "{r}");
        }
        for r in ["docker.io", "10.0.0.1:5000", "localhost.example.com", "128.0.0.1"] {
            assert!(!is_loopback_registry(r), "{r}");
        }
    }
}
