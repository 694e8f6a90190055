//! Content digests (`sha256:<64 hex>`) and readers that hash what passes through them.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read};
use std::rc::Rc;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A problem with a digest string.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// The algorithm is not sha256, the only one the store keeps.
    #[error("digest {0:?} uses an unsupported algorithm; only sha256 digests are accepted")]
    Algorithm(String),
    /// The encoded part is not 64 lowercase hex digits.
    #[error("digest {0:?} is malformed: expected sha256: followed by 64 lowercase hex digits")]
    Malformed(String),
}

/// A sha256 content digest, always valid: 64 lowercase hex digits, so it is safe as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<hex>`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(DigestError::Malformed(s.to_owned()));
        };
        if algo != "sha256" {
            return Err(DigestError::Algorithm(s.to_owned()));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(DigestError::Malformed(s.to_owned()));
        }
        Ok(Self { hex: hex.to_owned() })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self { hex: hex::encode(Sha256::digest(bytes)) }
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, for messages and progress.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }

    fn from_hasher(hasher: Sha256) -> Self {
        Self { hex: hex::encode(hasher.finalize()) }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> Self {
        d.to_string()
    }
}

/// A running sha256 with a byte count.
#[derive(Default)]
pub struct Hasher {
    sha: Sha256,
    bytes: u64,
}

impl Hasher {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.bytes += data.len() as u64;
    }

    /// How many bytes went in.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        Digest::from_hasher(self.sha)
    }
}

/// A hasher shared between the reader that feeds it and the code that reads the result.
pub(crate) type SharedHasher = Rc<RefCell<Hasher>>;

/// A reader that hashes every byte read through it into a [`SharedHasher`], and fails once more than
/// `limit` bytes went through (the [`LimitExceeded`] error inside the `io::Error`).
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: SharedHasher,
    limit: u64,
}

/// The marker error a [`HashingReader`] returns past its limit.
#[derive(Debug, thiserror::Error)]
#[error("read limit exceeded")]
pub(crate) struct LimitExceeded;

impl<R> HashingReader<R> {
    pub(crate) fn new(inner: R, hasher: SharedHasher, limit: u64) -> Self {
        Self { inner, hasher, limit }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut hasher = self.hasher.borrow_mut();
        hasher.update(&buf[..n]);
        if hasher.bytes() > self.limit {
            return Err(io::Error::other(LimitExceeded));
        }
        Ok(n)
    }
}

/// Whether an I/O error came from a [`HashingReader`] past its limit (possibly wrapped by a decoder or
/// the tar reader, which keep the original error as the source or the payload).
pub(crate) fn is_limit_exceeded(e: &io::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|e| e as _);
    while let Some(err) = cur {
        if err.is::<LimitExceeded>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if is_limit_exceeded(io) {
                return true;
            }
        }
        cur = err.source();
    }
    e.to_string().contains("read limit exceeded")
}

/// Hashes a whole file.
pub fn digest_file(path: &std::path::Path) -> io::Result<(Digest, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let bytes = hasher.bytes();
    Ok((hasher.finish(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let d = Digest::of(b"");
        assert_eq!(d.to_string(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(Digest::parse(&d.to_string()).ok(), Some(d));
        assert!(matches!(Digest::parse("sha512:ab"), Err(DigestError::Algorithm(_))));
        assert!(matches!(Digest::parse("sha256:../../etc"), Err(DigestError::Malformed(_))));
        assert!(matches!(Digest::parse(&format!("sha256:{}", "A".repeat(64))), Err(DigestError::Malformed(_))));
    }
}
