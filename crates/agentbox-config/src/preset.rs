//! The named presets.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::SandboxConfig;

/// A named starting configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// 2 CPUs, 512 MiB, 10 GiB.
    #[default]
    Default,
    /// 1 CPU, 256 MiB, 5 GiB.
    Lightweight,
    /// 4 CPUs, 2048 MiB, 20 GiB.
    HeavyCompute,
    /// 2 CPUs, 1024 MiB, 10 GiB, with room for a headless browser (large /dev/shm, more processes).
    Browser,
}

impl Preset {
    /// Every preset, in a stable order.
    pub const ALL: [Self; 4] = [Self::Default, Self::Lightweight, Self::HeavyCompute, Self::Browser];

    /// The preset's name as used in configs and on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Lightweight => "lightweight",
            Self::HeavyCompute => "heavy_compute",
            Self::Browser => "browser",
        }
    }

    /// The full configuration of this preset.
    #[must_use]
    pub fn config(self) -> SandboxConfig {
        let mut c = SandboxConfig::default();
        match self {
            Self::Default => {}
            Self::Lightweight => {
                c.cpu_count = 1;
                c.memory_mb = 256;
                c.disk_gb = 5;
                c.security.max_processes = 128;
            }
            Self::HeavyCompute => {
                c.cpu_count = 4;
                c.memory_mb = 2048;
                c.disk_gb = 20;
                c.security.max_processes = 1024;
            }
            Self::Browser => {
                c.memory_mb = 1024;
                c.storage.shm_size_mb = 512;
                c.security.max_processes = 1024;
                c.security.max_open_files = 8192;
            }
        }
        c
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a preset's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown preset {0:?} (expected default, lightweight, heavy_compute or browser)")]
pub struct UnknownPreset(pub String);

impl FromStr for Preset {
    type Err = UnknownPreset;
    fn from_str(s: &str) -> Result<Self, UnknownPreset> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s || (s == "heavy-compute" && *p == Self::HeavyCompute))
            .ok_or_else(|| UnknownPreset(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_original_numbers() {
        let got: Vec<_> = Preset::ALL
            .iter()
            .map(|p| (p.name(), p.config().cpu_count, p.config().memory_mb, p.config().disk_gb))
            .collect();
        assert_eq!(
            got,
            [
                ("default", 2, 512, 10),
                ("lightweight", 1, 256, 5),
                ("heavy_compute", 4, 2048, 20),
                ("browser", 2, 1024, 10)
            ]
        );
        for p in Preset::ALL {
            p.config().validate().unwrap();
            assert_eq!(p.name().parse::<Preset>().unwrap(), p);
        }
        assert!("huge".parse::<Preset>().unwrap_err().to_string().contains("expected default"));
    }
}
