//! The `[e2b_api]` section of agentboxd's configuration.

use std::collections::BTreeMap;
use std::str::FromStr;

use agentbox_config::Preset;
use serde::Deserialize;

use crate::E2bApiError;

/// Which preset each E2B template id stands for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct TemplateTable(pub BTreeMap<String, String>);

impl Default for TemplateTable {
    fn default() -> Self {
        let pairs = [("base", "default"), ("code-interpreter-v1", "default"), ("code-interpreter", "default")];
        Self(pairs.into_iter().map(|(t, p)| (t.to_owned(), p.to_owned())).collect())
    }
}

impl TemplateTable {
    /// The preset of a template id.
    ///
    /// # Errors
    /// [`E2bApiError::UnknownTemplate`] naming the templates that exist.
    pub fn preset(&self, template: &str) -> Result<Preset, E2bApiError> {
        let name = self.0.get(template).ok_or_else(|| E2bApiError::UnknownTemplate {
            template: template.to_owned(),
            known: self.0.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        Preset::from_str(name).map_err(|e| E2bApiError::Config(format!("template {template:?}: {e}")))
    }
}

/// The E2B-compatible API's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct E2bApiConfig {
    /// Serve the E2B API on agentboxd's listener (`/sandboxes`, `/v2/sandboxes`, and requests carrying
    /// `E2b-Sandbox-Id`). Off by default.
    pub enabled: bool,
    /// Template id -> agentbox preset (`default`, `lightweight`, `heavy_compute`, `browser`). Other template ids
    /// are refused with 400.
    pub templates: TemplateTable,
    /// Longest sandbox timeout accepted, in seconds (E2B's own limit is 24 hours on its Pro plan).
    pub max_timeout_secs: u64,
    /// Largest file upload through `POST /files`, in bytes.
    pub max_upload_bytes: u64,
    /// Most E2B sandboxes alive at once.
    pub max_sandboxes: usize,
    /// Let commands run as root (the SDKs' `user="root"`), as E2B's sandboxes do: root of each sandbox's own
    /// user namespace (`security.allow_root_inside`). On by default.
    pub allow_root: bool,
}

impl Default for E2bApiConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            templates: TemplateTable::default(),
            max_timeout_secs: 86_400,
            max_upload_bytes: 1 << 30,
            max_sandboxes: 100,
            allow_root: true,
        }
    }
}

impl E2bApiConfig {
    /// Checks that every template names a preset and the limits are usable.
    ///
    /// # Errors
    /// [`E2bApiError::Config`] listing every problem.
    pub fn check(&self) -> Result<(), E2bApiError> {
        let mut problems = Vec::new();
        for (template, preset) in &self.templates.0 {
            if Preset::from_str(preset).is_err() {
                problems.push(format!(
                    "e2b_api.templates.{template}: unknown preset {preset:?} (use default, lightweight, heavy_compute or browser)"
                ));
            }
        }
        if self.max_timeout_secs == 0 {
            problems.push("e2b_api.max_timeout_secs: must be at least 1".to_owned());
        }
        if self.max_sandboxes == 0 {
            problems.push("e2b_api.max_sandboxes: must be at least 1".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(E2bApiError::Config(problems.join("; "))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_map_to_presets_and_unknown_ones_are_named() {
        let config = E2bApiConfig::default();
        config.check().unwrap();
        assert_eq!(config.templates.preset("base").unwrap(), Preset::Default);
        let err = config.templates.preset("nope").unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("base"), "{err}");
        let bad: E2bApiConfig = toml_like(r#"{"templates": {"x": "huge"}}"#);
        assert!(bad.check().unwrap_err().to_string().contains("huge"));
    }

    fn toml_like(json: &str) -> E2bApiConfig {
        serde_json::from_str(json).unwrap()
    }
}
