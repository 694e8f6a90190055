//! `agentbox template build|ls|rm` and `agentbox run --template`, through the real binary: a template built
//! from a Dockerfile over the Debian fixture (pulled from a registry on loopback), then a sandbox run from it.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../../../crates/agentbox-image/tests/common/mod.rs"]
mod image_common;

use std::process::{Command, Output};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn agentbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentbox")).args(args).output().unwrap()
}

#[test]
fn a_template_is_built_listed_run_and_removed() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let (registry, base) = image_common::debian_in_registry();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tool.py"), "print('tool says', 6 * 7)\n").unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {base}\nARG WHO=cli\nCOPY tool.py /opt/tool.py\nRUN echo \"built by $WHO\" > /etc/built-by\nENV TOOL=/opt/tool.py\n"
        ),
    )
    .unwrap();
    let name = format!("cli-test-{}", std::process::id());
    let context = dir.path().to_str().unwrap();
    let o = agentbox(&["template", "build", "-t", &name, "--build-arg", "WHO=the-cli", context]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("agentbox.local/templates/{name}:latest")), "{}", text(&o));
    let o = agentbox(&["template", "build", "-t", &name, "--build-arg", "WHO=the-cli", context]);
    assert!(text(&o).contains("COPY tool.py /opt/tool.py (cached)"), "{}", text(&o));
    // Pushed to a registry: a fresh store pulls it whole, and a sandbox runs from the pushed name.
    let pushed = format!("{}/templates/{name}:1", registry.addr);
    let o = agentbox(&["template", "build", "-t", &name, "--build-arg", "WHO=the-cli", "--push", &pushed, context]);
    assert!(o.status.success() && text(&o).contains(&format!("pushed {pushed}")), "{}", text(&o));
    let fresh = tempfile::tempdir().unwrap();
    let o = agentbox(&["image", "pull", "--store", fresh.path().to_str().unwrap(), &pushed]);
    assert!(o.status.success(), "{}", text(&o));
    let o = agentbox(&["run", "--image", &pushed, "--", "cat", "/etc/built-by"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "built by the-cli\n", "{}", text(&o));
    let o = agentbox(&["image", "push", "--json", "no.such/image:1", &pushed]);
    assert!(!o.status.success() && text(&o).contains("no such image"), "{}", text(&o));
    let o = agentbox(&["template", "ls"]);
    assert!(text(&o).contains(&name), "{}", text(&o));
    let o = agentbox(&["run", "--template", &name, "--", "sh", "-c", "python3 $TOOL; cat /etc/built-by"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "tool says 42\nbuilt by the-cli\n", "{}", text(&o));
    let o = agentbox(&["template", "rm", &name, "no-such-template"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("template no-such-template not found"), "{}", text(&o));
    let o = agentbox(&["run", "--template", &name, "--", "true"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("agentbox template build"), "{}", text(&o));
    // A failing step prints its output and names the step.
    std::fs::write(dir.path().join("Dockerfile"), format!("FROM {base}\nRUN echo step output here; exit 3\n")).unwrap();
    let o = agentbox(&["template", "build", "-t", &name, context]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("step output here") && text(&o).contains("exited with 3"), "{}", text(&o));
}
