//! `agentbox completions` and `agentbox man`: generated from the parser, so they list every command.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

fn agentbox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_agentbox")).args(args).output().unwrap()
}

#[test]
fn completions_know_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let o = agentbox(&["completions", shell]);
        assert!(o.status.success(), "{shell}");
        let script = String::from_utf8(o.stdout).unwrap();
        for verb in ["run", "create", "exec", "cp", "ls", "inspect", "stats", "rm", "pause", "resume", "snapshot"] {
            assert!(script.contains(verb), "{shell} completion lacks {verb}");
        }
    }
    let o = agentbox(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn man_pages_are_written_for_every_command() {
    let dir = std::env::temp_dir().join(format!("agentbox-man-test-{}", std::process::id()));
    let o = agentbox(&["man", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for page in ["agentbox.1", "agentbox-run.1", "agentbox-exec.1", "agentbox-cp.1"] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page} is not roff");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
