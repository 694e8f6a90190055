//! Package specifications such as `pip:pandas==2.2`, `npm:lodash` or `apt:jq`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The package manager a [`PackageSpec`] installs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    /// Python packages, installed into the sandbox user's environment.
    Pip,
    /// Node packages, installed into the workspace's `node_modules`.
    Npm,
    /// Debian packages.
    Apt,
}

impl PackageManager {
    /// The prefix used in package strings (`pip`, `npm`, `apt`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pip => "pip",
            Self::Npm => "npm",
            Self::Apt => "apt",
        }
    }
}

/// One package to install: a manager, a name and an optional version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackageSpec {
    /// Which installer handles it.
    pub manager: PackageManager,
    /// The package name as the installer knows it.
    pub name: String,
    /// The version pin, if any (`==2.2` for pip, `@4` for npm, `=1.6` for apt).
    pub version: Option<String>,
}

impl PackageSpec {
    /// The argument to hand to the installer (`pandas==2.2`, `lodash@4`, `jq=1.6`).
    #[must_use]
    pub fn installer_arg(&self) -> String {
        match (&self.version, self.manager) {
            (None, _) => self.name.clone(),
            (Some(v), PackageManager::Pip) => format!("{}=={v}", self.name),
            (Some(v), PackageManager::Npm) => format!("{}@{v}", self.name),
            (Some(v), PackageManager::Apt) => format!("{}={v}", self.name),
        }
    }
}

impl fmt::Display for PackageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.manager.as_str(), self.installer_arg())
    }
}

fn valid_name(name: &str, extra: &[char]) -> bool {
    !name.is_empty()
        && name.len() <= 214
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || extra.contains(&c))
}

/// A package spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageSpecError {
    /// A manager other than pip, npm and apt.
    #[error("unknown package manager {0:?} (expected pip, npm or apt)")]
    Manager(String),
    /// A name with characters a package name cannot have.
    #[error("invalid {manager} package name {name:?} (letters, digits, '-', '_' and '.' only, not starting with '-')")]
    Name {
        /// The manager it was given for.
        manager: &'static str,
        /// The name.
        name: String,
    },
    /// An empty version, or one with characters a version cannot have.
    #[error("invalid version {version:?} for package {name:?}")]
    Version {
        /// The version.
        version: String,
        /// The package's name.
        name: String,
    },
}

impl FromStr for PackageSpec {
    type Err = PackageSpecError;

    /// Parses `MANAGER:NAME[VERSION]`; a bare name means pip.
    fn from_str(s: &str) -> Result<Self, PackageSpecError> {
        let s = s.trim();
        let (manager, rest) = match s.split_once(':') {
            Some(("pip", r)) => (PackageManager::Pip, r),
            Some(("npm", r)) => (PackageManager::Npm, r),
            Some(("apt", r)) => (PackageManager::Apt, r),
            Some((m, _)) => return Err(PackageSpecError::Manager(m.to_owned())),
            None => (PackageManager::Pip, s),
        };
        let (name, version) = match manager {
            PackageManager::Pip => match rest.split_once("==") {
                Some((n, v)) => (n, Some(v)),
                None => (rest, None),
            },
            // npm scoped packages start with '@': the version separator is the last '@' after the first char.
            PackageManager::Npm => match rest.get(1..).and_then(|r| r.rfind('@')) {
                Some(i) => (&rest[..=i], Some(&rest[i + 2..])),
                None => (rest, None),
            },
            PackageManager::Apt => match rest.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (rest, None),
            },
        };
        let extra: &[char] = match manager {
            PackageManager::Npm => &['@', '/'],
            PackageManager::Pip => &['[', ']', ','],
            PackageManager::Apt => &['+'],
        };
        if !valid_name(name, extra) {
            return Err(PackageSpecError::Name { manager: manager.as_str(), name: name.to_owned() });
        }
        if let Some(v) = version {
            if v.is_empty()
                || !v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '~' | '*' | '^' | ':'))
            {
                return Err(PackageSpecError::Version { version: v.to_owned(), name: name.to_owned() });
            }
        }
        Ok(Self { manager, name: name.to_owned(), version: version.map(str::to_owned) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, manager: PackageManager, name: &str, version: Option<&str>) {
        let p: PackageSpec = input.parse().unwrap();
        assert_eq!((p.manager, p.name.as_str(), p.version.as_deref()), (manager, name, version), "{input}");
    }

    #[test]
    fn parses_specs() {
        check("pandas", PackageManager::Pip, "pandas", None);
        check("pip:pandas==2.2.1", PackageManager::Pip, "pandas", Some("2.2.1"));
        check("npm:lodash", PackageManager::Npm, "lodash", None);
        check("npm:@types/node@20", PackageManager::Npm, "@types/node", Some("20"));
        check("apt:jq", PackageManager::Apt, "jq", None);
        assert!(
            "brew:wget".parse::<PackageSpec>().unwrap_err().to_string().contains("unknown package manager \"brew\"")
        );
        assert!("pip:--index-url=x".parse::<PackageSpec>().is_err());
        assert!("pip:a;rm -rf /".parse::<PackageSpec>().is_err());
    }
}
