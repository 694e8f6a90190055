//! `agentbox presets`, run as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Output};

use serde_json::Value;

/// Runs the built `agentbox` binary with `args`.
fn agentbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentbox")).args(args).output().expect("the agentbox binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn json_has_the_presets_numbers() {
    let out = agentbox(&["presets", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let presets = json.as_object().unwrap();
    assert_eq!(presets.len(), 4);
    let numbers = |name: &str| {
        let p = &presets[name];
        (p["cpu_count"].as_u64().unwrap(), p["memory_mb"].as_u64().unwrap(), p["disk_gb"].as_u64().unwrap())
    };
    assert_eq!(numbers("default"), (2, 512, 10));
    assert_eq!(numbers("lightweight"), (1, 256, 5));
    assert_eq!(numbers("heavy_compute"), (4, 2048, 20));
    assert_eq!(numbers("browser"), (2, 1024, 10));
}

#[test]
fn json_carries_every_config_field_and_parses_back() {
    let out = agentbox(&["presets", "--json"]);
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    for (name, value) in json.as_object().unwrap() {
        let preset: agentbox_config::Preset = name.parse().unwrap();
        let config: agentbox_config::SandboxConfig = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(config, preset.config(), "{name}");
        for field in ["network", "storage", "security", "startup_timeout", "idle_timeout", "pre_install_packages"] {
            assert!(value.get(field).is_some(), "{name} lacks {field}");
        }
    }
    assert_eq!(json["browser"]["storage"]["shm_size_mb"], 512);
    assert_eq!(json["default"]["execution_timeout"], 300);
}

#[test]
fn one_preset_can_be_asked_for_by_name() {
    let out = agentbox(&["presets", "browser", "--json"]);
    assert!(out.status.success());
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json.as_object().unwrap().keys().collect::<Vec<_>>(), ["browser"]);
}

#[test]
fn the_table_lists_every_preset() {
    let out = agentbox(&["presets"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let names: Vec<&str> = text.lines().skip(1).take(4).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["default", "lightweight", "heavy_compute", "browser"]);
    assert!(text.lines().nth(2).unwrap().contains("256 MiB"), "{text}");
}

#[test]
fn an_unknown_preset_is_one_line_on_stderr_and_a_failure() {
    let out = agentbox(&["presets", "huge"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(r#"unknown preset "huge""#) && err.contains("expected default"), "{err}");
}
