//! Host-side secrets and the egress audit log: the types backends and the server share.
//!
//! A [`SecretStore`] holds the values of the secrets that sandbox configurations name in
//! `network.secrets`. Values are read for every request, so setting a new value applies to the next
//! request. Nothing here prints a value: [`SecretValue`]'s `Debug` and `Display` are redacted, and
//! listing gives names and kinds only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::RwLockExt;
use serde::{Deserialize, Serialize};

/// Longest secret value accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 16 * 1024;

/// Where a secret's value comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The value itself, held in memory only.
    Value(SecretValue),
    /// A variable of the server's environment, read at each use.
    Env(String),
    /// A file on the host, read at each use (so rotating the file rotates the secret).
    File(PathBuf),
}

impl SecretSource {
    /// The kind of source, for listings: `value`, `env` or `file`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Value(_) => "value",
            Self::Env(_) => "env",
            Self::File(_) => "file",
        }
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(_) => f.write_str("Value(<redacted>)"),
            Self::Env(name) => write!(f, "Env({name:?})"),
            Self::File(path) => write!(f, "File({path:?})"),
        }
    }
}

/// A secret's value; printing it shows `<redacted>`, and its memory is cleared when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a value.
    #[must_use]
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for the one place that sends it (the egress proxy).
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        // Best effort: overwrite the bytes before the allocation is freed.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        for b in &mut bytes {
            // SAFETY: `b` is a valid, aligned byte of a live allocation; the volatile write keeps
            // the compiler from dropping the store as dead.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret as listed: its name and the kind of its source, never its value.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// The secret's name.
    pub name: String,
    /// `value`, `env` or `file`.
    pub source: String,
}

/// Why a secret's value can't be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No secret of that name is defined on the server.
    #[error(
        "secret {0} is not defined on the server; define it with PUT /api/secrets/{0} or in agentboxd's configuration"
    )]
    Undefined(String),
    /// The environment variable it names is not set.
    #[error("secret {name}: the server's environment variable {var} is not set")]
    EnvMissing {
        /// The secret.
        name: String,
        /// The variable.
        var: String,
    },
    /// The file it names can't be read.
    #[error("secret {name}: cannot read {path}: {reason}")]
    File {
        /// The secret.
        name: String,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The value is too long or holds characters a header can't carry.
    #[error("secret {0}: the value must be 1 to {MAX_SECRET_BYTES} bytes of visible ASCII and spaces")]
    Invalid(String),
}

/// Checks that a value can go into a header and a request line.
///
/// # Errors
/// [`SecretError::Invalid`] naming the secret.
pub fn check_value(name: &str, value: &str) -> Result<(), SecretError> {
    if value.is_empty() || value.len() > MAX_SECRET_BYTES || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(SecretError::Invalid(name.to_owned()));
    }
    Ok(())
}

/// The server's secrets by name; cheap to clone, shared by every sandbox.
#[derive(Clone, Default)]
pub struct SecretStore {
    inner: Arc<RwLock<BTreeMap<String, SecretSource>>>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore").field("secrets", &self.list()).finish()
    }
}

impl SecretStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Defines or replaces a secret; requests after this see the new value.
    ///
    /// # Errors
    /// When a literal value is empty, too long or not visible ASCII.
    pub fn set(&self, name: &str, source: SecretSource) -> Result<(), SecretError> {
        if let SecretSource::Value(v) = &source {
            check_value(name, v.expose())?;
        }
        self.inner.write_unpoisoned().insert(name.to_owned(), source);
        Ok(())
    }

    /// Removes a secret; whether it existed.
    pub fn remove(&self, name: &str) -> bool {
        self.inner.write_unpoisoned().remove(name).is_some()
    }

    /// Names and kinds, sorted by name.
    #[must_use]
    pub fn list(&self) -> Vec<SecretInfo> {
        self.inner
            .read_unpoisoned()
            .iter()
            .map(|(name, s)| SecretInfo { name: name.clone(), source: s.kind().to_owned() })
            .collect()
    }

    /// The current value of `name`, read from its source now.
    ///
    /// # Errors
    /// When it is undefined, its source can't be read, or the value is not usable in a request.
    pub fn resolve(&self, name: &str) -> Result<SecretValue, SecretError> {
        let source =
            self.inner.read_unpoisoned().get(name).cloned().ok_or_else(|| SecretError::Undefined(name.to_owned()))?;
        let value = match source {
            SecretSource::Value(v) => return Ok(v),
            SecretSource::Env(var) => {
                std::env::var(&var).map_err(|_| SecretError::EnvMissing { name: name.to_owned(), var: var.clone() })?
            }
            SecretSource::File(path) => {
                // The file's own error would be fine, but a read error never shows content anyway.
                let text = std::fs::read_to_string(&path).map_err(|e| SecretError::File {
                    name: name.to_owned(),
                    path: path.display().to_string(),
                    reason: e.kind().to_string(),
                })?;
                text.trim_end_matches(['\n', '\r']).to_owned()
            }
        };
        check_value(name, &value)?;
        Ok(SecretValue::new(value))
    }
}

/// What the proxy did with a connection or request.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressDecision {
    /// Let through.
    Allowed,
    /// Refused by a rule.
    Refused,
}

/// One record of the egress audit log: a connection, or a request on an inspected connection.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRecord {
    /// Position in the sandbox's log, from 1; gaps mean records were dropped to bound the log.
    pub seq: u64,
    /// When the connection or request started, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `connection` or `request`.
    pub kind: String,
    /// How the sandbox reached the proxy: `http-connect`, `http`, `socks5`, `tls` (an inspected request).
    pub via: String,
    /// The destination host as the sandbox named it.
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// The address connected to, when a connection was made.
    pub address: Option<String>,
    /// The request's method, for requests.
    pub method: Option<String>,
    /// The request's path and query as the sandbox sent them (placeholders, never values), for requests.
    pub path: Option<String>,
    /// Allowed or refused.
    pub decision: EgressDecision,
    /// The rule that decided: the refusing rule's name, or the allow entry that matched, when known.
    pub rule: Option<String>,
    /// Secrets added to the request, or the secret whose placeholder caused a refusal (names only).
    pub secrets: Vec<String>,
    /// The response status, for requests that got one.
    pub status: Option<u16>,
    /// Bytes received from the destination.
    pub bytes_in: u64,
    /// Bytes sent to the destination.
    pub bytes_out: u64,
    /// How long the connection or request lasted, in milliseconds.
    pub duration_ms: u64,
}

/// Which records to return.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressQuery {
    /// Only records with a larger `seq` (the `next` of the previous page).
    pub after: Option<u64>,
    /// At most this many (the backend caps it).
    pub limit: Option<usize>,
    /// Only this destination host.
    pub host: Option<String>,
    /// Only this decision.
    pub decision: Option<EgressDecision>,
}

/// One page of the log.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressPage {
    /// Records in `seq` order.
    pub records: Vec<EgressRecord>,
    /// The `after` for the next page, when more may follow.
    pub next: Option<u64>,
    /// Records dropped so far to keep the log within its bound.
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_print_and_sources_resolve() {
        let store = SecretStore::new();
        store.set("A", SecretSource::Value(SecretValue::new("s3cr3t".into()))).unwrap();
        assert!(!format!("{store:?} {:?}", store.resolve("A").unwrap()).contains("s3cr3t"));
        assert_eq!(store.resolve("A").unwrap().expose(), "s3cr3t");
        assert!(matches!(store.resolve("B"), Err(SecretError::Undefined(_))));
        assert!(store.set("C", SecretSource::Value(SecretValue::new("a\nb".into()))).is_err());
        store.set("E", SecretSource::Env("AGENTBOX_TEST_UNSET_VARIABLE".into())).unwrap();
        assert!(matches!(store.resolve("E"), Err(SecretError::EnvMissing { .. })));
        assert_eq!(store.list().iter().map(|s| s.source.as_str()).collect::<Vec<_>>(), ["value", "env"]);
        assert!(store.remove("A") && !store.remove("A"));
    }
}
