//! `agentbox run --save-snapshot` / `--from-snapshot` and `agentbox snapshots`, through the real binary.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn agentbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentbox")).args(args).output().expect("the agentbox binary runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn a_run_saves_a_snapshot_the_next_run_starts_from() {
    let name = format!("cli-test-{}", std::process::id());
    let o = agentbox(&["run", "--save-snapshot", &name, "--", "bash", "-c", "echo kept > ~/note; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = agentbox(&["snapshots", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(list.as_array().unwrap().iter().any(|s| s["name"] == name.as_str()), "{list}");
    let o = agentbox(&["run", "--from-snapshot", &name, "--", "cat", "/home/user/note"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "kept\n", "{}", text(&o));
    let o = agentbox(&["snapshots", "delete", &name]);
    assert!(o.status.success(), "{}", text(&o));
    let o = agentbox(&["run", "--from-snapshot", &name, "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains(&format!("snapshot {name} not found")), "{}", text(&o));
}
