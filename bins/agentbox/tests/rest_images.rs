//! `/api/images` and `/api/templates` of a real server (`agentbox serve`, local backend) driven with curl: a pull
//! from a registry on loopback with its progress as Server-Sent Events, templates built from a JSON Dockerfile
//! and from an uploaded tar context, a sandbox started from one, and removal.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
#[path = "../../../crates/agentbox-image/tests/common/mod.rs"]
mod image_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::server::Server;

/// curl against the server: the status and the body.
trait Curl {
    fn curl(&self, method: &str, path: &str, extra: &[&str]) -> (u16, String);
    fn json(&self, method: &str, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value);
}

impl Curl for Server {
    fn curl(&self, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "-X", method, "-w", "\n%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {}", self.token))
            .args(extra)
            .arg(format!("{}{path}", self.url))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.trim().parse().unwrap(), body.to_owned())
    }

    fn json(&self, method: &str, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let (status, text) =
            self.curl(method, path, &["-H", "Content-Type: application/json", "--data-binary", &body.to_string()]);
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }
}

fn tar_of(dir: &Path) -> PathBuf {
    let out = dir.with_extension("tar");
    let status = Command::new("tar").arg("-cf").arg(&out).arg("-C").arg(dir).arg(".").status().unwrap();
    assert!(status.success());
    out
}

#[test]
fn images_and_templates_over_rest() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    image_common::require("curl", "curl");
    let (_registry, base) = image_common::debian_in_registry();
    let server = Server::start("rest-images");
    let name = format!("rest-{}", std::process::id());

    // A pull, its progress as events.
    let body = serde_json::json!({ "reference": base }).to_string();
    let (status, events) = server.curl(
        "POST",
        "/api/images/pull",
        &["-N", "-H", "Accept: text/event-stream", "-H", "Content-Type: application/json", "--data-binary", &body],
    );
    assert_eq!(status, 200, "{events}");
    assert!(events.contains("event: resolved") && events.contains("event: done"), "{events}");
    let (status, list) = server.json("GET", "/api/images", &serde_json::Value::Null);
    assert_eq!(status, 200);
    assert!(list["images"].as_array().unwrap().iter().any(|i| i["reference"] == base.as_str()), "{list}");
    let (status, err) = server.json("POST", "/api/images/pull", &serde_json::json!({ "reference": "Not A Reference" }));
    assert_eq!(status, 422, "{err}");

    // A template from a JSON Dockerfile, and a sandbox from it.
    let dockerfile = format!("FROM {base}\nRUN echo built over rest > /etc/built\n");
    let (status, built) =
        server.json("POST", &format!("/api/templates/{name}/build"), &serde_json::json!({ "dockerfile": dockerfile }));
    assert_eq!(status, 200, "{built}");
    assert_eq!(built["reference"], format!("agentbox.local/templates/{name}:latest"));
    let (status, list) = server.json("GET", "/api/templates", &serde_json::Value::Null);
    assert!(
        status == 200 && list["templates"].as_array().unwrap().iter().any(|t| t["name"] == name.as_str()),
        "{list}"
    );
    let (status, made) =
        server.json("POST", "/api/sandboxes/create", &serde_json::json!({ "run_id": name, "template": name }));
    assert_eq!(status, 201, "{made}");
    let (status, out) = server.json(
        "POST",
        &format!("/api/sandboxes/{name}/execute/command"),
        &serde_json::json!({ "command": "cat /etc/built" }),
    );
    assert_eq!((status, out["stdout"].as_str()), (200, Some("built over rest\n")), "{out}");
    let (status, _) = server.curl("DELETE", &format!("/api/sandboxes/{name}"), &[]);
    assert_eq!(status, 204);

    // A template from an uploaded context: COPY takes its files.
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("context");
    std::fs::create_dir(&context).unwrap();
    std::fs::write(context.join("tool.txt"), "from the context\n").unwrap();
    std::fs::write(context.join("Build.docker"), format!("FROM {base}\nCOPY tool.txt /opt/tool.txt\n")).unwrap();
    let tar = tar_of(&context);
    let (status, built) = server.curl(
        "POST",
        &format!("/api/templates/{name}-ctx/build?dockerfile=Build.docker"),
        &["-H", "Content-Type: application/x-tar", "--data-binary", &format!("@{}", tar.display())],
    );
    assert_eq!(status, 200, "{built}");
    let (status, ran) = server.json(
        "POST",
        "/api/sandboxes/create",
        &serde_json::json!({ "run_id": format!("{name}-ctx"), "template": format!("{name}-ctx") }),
    );
    assert_eq!(status, 201, "{ran}");
    let (status, out) = server.json(
        "POST",
        &format!("/api/sandboxes/{name}-ctx/execute/command"),
        &serde_json::json!({ "command": "cat /opt/tool.txt" }),
    );
    assert_eq!((status, out["stdout"].as_str()), (200, Some("from the context\n")), "{out}");
    let (status, _) = server.curl("DELETE", &format!("/api/sandboxes/{name}-ctx"), &[]);
    assert_eq!(status, 204);
    // A context that is not a tar, and a Dockerfile it lacks: the request's problem.
    let (status, err) = server.curl(
        "POST",
        &format!("/api/templates/{name}-bad/build"),
        &["-H", "Content-Type: application/x-tar", "--data-binary", "not a tar at all"],
    );
    assert_eq!(status, 422, "{err}");
    let (status, err) = server.curl(
        "POST",
        &format!("/api/templates/{name}-bad/build?dockerfile=Missing"),
        &["-H", "Content-Type: application/x-tar", "--data-binary", &format!("@{}", tar.display())],
    );
    assert_eq!(status, 422, "{err}");

    // Removal.
    for t in [name.clone(), format!("{name}-ctx")] {
        let (status, _) = server.curl("DELETE", &format!("/api/templates/{t}"), &[]);
        assert_eq!(status, 204, "{t}");
    }
    let (status, _) = server.curl("DELETE", &format!("/api/templates/{name}"), &[]);
    assert_eq!(status, 404);
    let (status, _) = server.curl("DELETE", "/api/images", &["-G", "--data-urlencode", &format!("reference={base}")]);
    assert_eq!(status, 204);
    let (status, pruned) = server.json("POST", "/api/images/prune", &serde_json::Value::Null);
    assert_eq!(status, 200, "{pruned}");
}
