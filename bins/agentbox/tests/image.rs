//! `agentbox image pull|ls|rm|prune` against a real registry on loopback (Debian's docker-registry), with
//! an image this test builds as an OCI layout and pushes with skopeo.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_owned()
}

/// Moves `file` into the layout's blobs; answers its digest and size.
fn blob(layout: &Path, file: &Path) -> (String, u64) {
    let hex = sha256(file);
    let size = std::fs::metadata(file).unwrap().len();
    std::fs::rename(file, layout.join("blobs/sha256").join(&hex)).unwrap();
    (format!("sha256:{hex}"), size)
}

fn build_layout(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/greeting"), "hello from the image\n").unwrap();
    let tar = dir.join("layer.tar");
    assert!(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg("etc").status().unwrap().success());
    let (layer, layer_size) = blob(&layout, &tar);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin", "GREETING=1"], "WorkingDir": "/etc"},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    });
    let config_file = dir.join("config.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let (config, config_size) = blob(&layout, &config_file);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}],
    });
    let manifest_file = dir.join("manifest.json");
    std::fs::write(&manifest_file, manifest.to_string()).unwrap();
    let (manifest, manifest_size) = blob(&layout, &manifest_file);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": "1"},
    }]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    layout
}

struct Registry(std::process::Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn images_are_pulled_listed_removed_and_pruned() {
    let dir = std::env::temp_dir().join(format!("agentbox-image-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let layout = build_layout(&dir);
    // A free loopback port for the registry.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry").display()
        ),
    )
    .unwrap();
    let _registry = Registry(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is installed (scripts/test-all.sh installs it)"),
    );
    let reference = format!("127.0.0.1:{port}/cli-test:1");
    let mut pushed = false;
    for _ in 0..50 {
        let o = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", layout.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .expect("skopeo is installed");
        if o.status.success() {
            pushed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(pushed, "skopeo could not push to the registry");

    let store = dir.join("store");
    let agentbox = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_agentbox"))
            .arg("image")
            .arg("--store")
            .arg(&store)
            .args(args)
            .output()
            .unwrap()
    };
    let o = agentbox(&["pull", &reference]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 layers: 1 downloaded"), "{}", text(&o));
    let o = agentbox(&["ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["reference"], reference.as_str(), "{list}");
    assert_eq!(list[0]["config"]["working_dir"], "/etc", "{list}");
    // Pulled again: nothing to download.
    let o = agentbox(&["pull", &reference]);
    assert!(text(&o).contains("0 downloaded, 1 reused"), "{}", text(&o));
    let o = agentbox(&["rm", &reference, "nope:1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("nope:1: no such image"), "{}", text(&o));
    let o = agentbox(&["prune", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["layers_removed"], 1, "{report}");
    assert_eq!(report["bytes_after"], 0, "{report}");
    let o = agentbox(&["pull", "UPPER/case:1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}
