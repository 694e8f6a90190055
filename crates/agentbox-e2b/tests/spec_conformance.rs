//! The fake E2B server and the backend's requests, checked against E2B's published API description
//! (`tests/spec`, vendored with its license): a route or a field name the fake serves, or a request the
//! backend sends, that E2B does not describe fails here.
//!
//! The description is read as text: OpenAPI paths and methods by indentation, property names under
//! `properties:`, and the protos' services, methods and fields (as proto3 JSON names them, in lowerCamelCase).
//! The code interpreter (port 49999) has no published description; its routes are left out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use std::collections::BTreeSet;
use std::sync::Arc;

use agentbox_core::{CreateRequest, ExecRequest, SandboxBackend};
use fake::{FakeE2b, FakeOptions};

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/spec");
const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake");

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `/sandboxes/{sandboxID}` and `/sandboxes/{id}` are one route.
fn template(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// Whether the concrete `path` is an instance of the template `t` (`{}` stands for one segment).
fn matches(t: &str, path: &str) -> bool {
    let (t, p): (Vec<_>, Vec<_>) = (t.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| *t == "{}" && !p.is_empty() || t == p)
}

/// (METHOD, path template) of every operation of an OpenAPI document.
fn openapi_routes(yaml: &str) -> BTreeSet<(String, String)> {
    let (mut routes, mut in_paths, mut path) = (BTreeSet::new(), false, None::<String>);
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.trim_end().strip_suffix(':')) {
            path = Some(template(&format!("/{p}")));
        } else if let (Some(p), Some(method)) = (&path, line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))) {
            if ["get", "post", "put", "patch", "delete", "head"].contains(&method) {
                routes.insert((method.to_uppercase(), p.clone()));
            }
        }
    }
    routes
}

/// Every name listed under a `properties:` key, and every parameter `name:`, of an OpenAPI document.
fn openapi_fields(yaml: &str) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    let mut properties_at: Option<usize> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if let Some(at) = properties_at {
            if indent <= at {
                properties_at = None;
            } else if indent == at + 2 {
                if let Some(name) = text.strip_suffix(':') {
                    fields.insert(name.trim_matches('"').to_owned());
                }
            }
        }
        if text == "properties:" {
            properties_at = Some(indent);
        }
        if let Some(name) = text.strip_prefix("name: ").or_else(|| text.strip_prefix("- name: ")) {
            fields.insert(name.trim().trim_matches('"').to_owned());
        }
    }
    fields
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The Connect routes (`POST /package.Service/Method`) and the JSON field names of a proto file.
fn proto(text: &str) -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let (mut routes, mut fields) = (BTreeSet::new(), BTreeSet::new());
    let package = text.lines().find_map(|l| l.trim().strip_prefix("package ")).unwrap().trim_end_matches(';');
    let mut service = None;
    for line in text.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix("service ") {
            service = Some(s.trim_end_matches('{').trim().to_owned());
        } else if let (Some(s), Some(rpc)) = (&service, line.strip_prefix("rpc ")) {
            let method = rpc.split('(').next().unwrap().trim();
            routes.insert(("POST".to_owned(), format!("/{package}.{s}/{method}")));
        } else if let Some((decl, _number)) = line.split_once('=') {
            // `[optional|repeated] Type name = N;` and `map<K, V> name = N;`
            if let Some(name) = decl.split_whitespace().last() {
                if !line.starts_with("//") && !line.starts_with("option ") {
                    fields.insert(lower_camel(name));
                }
            }
        }
    }
    (routes, fields)
}

struct Spec {
    control: BTreeSet<(String, String)>,
    control_fields: BTreeSet<String>,
    envd: BTreeSet<(String, String)>,
    envd_fields: BTreeSet<String>,
}

fn spec() -> Spec {
    let openapi = read(&format!("{SPEC}/openapi.yml"));
    let envd_yaml = read(&format!("{SPEC}/envd/envd.yaml"));
    let mut envd = openapi_routes(&envd_yaml);
    let mut envd_fields = openapi_fields(&envd_yaml);
    for file in ["process/process.proto", "filesystem/filesystem.proto"] {
        let (routes, fields) = proto(&read(&format!("{SPEC}/envd/{file}")));
        envd.extend(routes);
        envd_fields.extend(fields);
    }
    // Connect's own error body and end-of-stream message (connectrpc.com/docs/protocol), not E2B's schemas.
    envd_fields.extend(["code", "message", "error"].map(str::to_owned));
    Spec { control: openapi_routes(&openapi), control_fields: openapi_fields(&openapi), envd, envd_fields }
}

/// The fake's `.route("PATH", get(..).post(..))` calls in one source file, as (METHOD, path template).
fn fake_routes(source: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (i, _) in source.match_indices(".route(\"") {
        let rest = &source[i + ".route(\"".len()..];
        let path = &rest[..rest.find('"').unwrap()];
        let call = &rest[..rest.find("))").map_or(rest.len(), |e| e + 2)];
        for method in ["get", "post", "put", "patch", "delete"] {
            if call.contains(&format!("{method}(")) {
                routes.insert((method.to_uppercase(), template(path)));
            }
        }
    }
    routes
}

/// The JSON field names a fake source file reads (`.get("x")`, `["x"]`) or writes (`"x": ...` in `json!`).
fn fake_fields(source: &str) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    let ident = |s: &str| -> Option<String> {
        let end = s.find('"')?;
        let name = &s[..end];
        (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then(|| name.to_owned())
    };
    for pat in [".get(\"", "[\""] {
        for (i, _) in source.match_indices(pat) {
            let rest = &source[i + pat.len()..];
            if let Some(name) = ident(rest) {
                let after = &rest[name.len() + 1..];
                if after.starts_with(')') || after.starts_with(']') {
                    fields.insert(name);
                }
            }
        }
    }
    for (i, _) in source.match_indices("\": ") {
        let before = &source[..i];
        if let Some(start) = before.rfind('"') {
            let name = &before[start + 1..];
            if !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && before[..start].ends_with(['{', ' ', ','])
            {
                fields.insert(name.to_owned());
            }
        }
    }
    fields
}

#[test]
fn the_vendored_description_parses() {
    let spec = spec();
    for route in [("POST", "/sandboxes"), ("GET", "/v2/sandboxes"), ("DELETE", "/sandboxes/{}")] {
        assert!(spec.control.contains(&(route.0.into(), route.1.into())), "{route:?} in {:?}", spec.control);
    }
    for route in [("GET", "/files"), ("POST", "/process.Process/Start"), ("POST", "/filesystem.Filesystem/Stat")] {
        assert!(spec.envd.contains(&(route.0.into(), route.1.into())), "{route:?} in {:?}", spec.envd);
    }
    for field in ["templateID", "sandboxID", "envdVersion", "cpuUsedPct"] {
        assert!(spec.control_fields.contains(field), "{field}");
    }
    for field in ["exitCode", "pid", "envs", "symlinkTarget", "cpu_used_pct"] {
        assert!(spec.envd_fields.contains(field), "{field}");
    }
}

#[test]
fn every_route_and_field_of_the_fake_is_in_e2bs_description() {
    let spec = spec();
    let control = read(&format!("{FAKE}/control.rs"));
    let envd = read(&format!("{FAKE}/envd.rs"));
    let routes = fake_routes(&control);
    assert!(routes.len() >= 8, "the fake's control routes were not found: {routes:?}");
    let missing: Vec<_> = routes.difference(&spec.control).collect();
    assert!(missing.is_empty(), "the fake's control plane serves routes E2B's openapi.yml lacks: {missing:?}");
    let routes = fake_routes(&envd);
    assert!(routes.len() >= 12, "the fake's envd routes were not found: {routes:?}");
    let missing: Vec<_> = routes.difference(&spec.envd).collect();
    assert!(missing.is_empty(), "the fake's envd serves routes E2B's envd.yaml and protos lack: {missing:?}");

    let fields = fake_fields(&control);
    let missing: Vec<_> = fields.difference(&spec.control_fields).collect();
    assert!(missing.is_empty(), "the fake's control plane uses fields E2B's openapi.yml lacks: {missing:?}");
    let mut fields = fake_fields(&envd);
    // E2B's proxy (not envd) answers 502 with the sandbox's id when a sandbox or port is gone.
    fields.remove("sandboxId");
    let missing: Vec<_> = fields.difference(&spec.envd_fields).collect();
    assert!(missing.is_empty(), "the fake's envd uses fields E2B's envd.yaml and protos lack: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_the_backend_sends_is_in_e2bs_description() {
    let spec = spec();
    let fake = FakeE2b::start(FakeOptions { interpreter_templates: Vec::new() }).await;
    let mut config = fake.config();
    config.templates.default = "base".into();
    let backend: Arc<dyn SandboxBackend> = Arc::new(agentbox_e2b::E2bBackend::new(config).unwrap());
    let info = backend.create(CreateRequest::new(agentbox_core::config::SandboxConfig::default())).await.unwrap();
    let id = &info.id;
    let out = backend.exec(id, ExecRequest::shell("echo hi")).await.unwrap().collect(4096).await;
    assert_eq!(out.stdout, "hi\n", "{out:?}");
    backend.write_file(id, "/home/user/a.txt", b"a".to_vec()).await.unwrap();
    assert_eq!(backend.read_file(id, "/home/user/a.txt").await.unwrap(), b"a");
    backend.mkdir(id, "/home/user/d").await.unwrap();
    backend.rename(id, "/home/user/a.txt", "/home/user/d/b.txt").await.unwrap();
    backend.list_dir(id, "/home/user/d").await.unwrap();
    backend.stat(id, "/home/user/d/b.txt").await.unwrap();
    backend.remove(id, "/home/user/d").await.unwrap();
    let p = backend.spawn_background(id, ExecRequest::shell("sleep 30")).await.unwrap();
    backend.list_processes(id).await.unwrap();
    backend.kill_process(id, p.pid, 9).await.unwrap();
    backend.metrics(id).await.unwrap();
    backend.health(id).await.unwrap();
    backend.list().await.unwrap();
    backend.destroy(id).await.unwrap();

    let seen = fake.seen();
    assert!(seen.len() >= 15, "{seen:?}");
    for s in seen {
        let (routes, what) = match s.headers.get("e2b-sandbox-port").map(String::as_str) {
            None => (&spec.control, "openapi.yml"),
            Some("49983") => (&spec.envd, "envd.yaml and the protos"),
            Some(port) => panic!("a request to port {port}, which no description covers: {s:?}"),
        };
        let described = routes.iter().any(|(method, t)| *method == s.method && matches(t, &s.path));
        assert!(described, "the backend sent {} {}, which E2B's {what} lacks", s.method, s.path);
    }
}

/// The JSON names of the backend's wire types for the control plane and envd (`src/wire.rs` up to its code
/// interpreter section): a field's `rename`, or its own name.
fn client_fields(source: &str) -> BTreeSet<String> {
    let described = source.split("// Code interpreter").next().unwrap();
    let mut fields = BTreeSet::new();
    let mut rename = None::<String>;
    for line in described.lines().map(str::trim) {
        if let Some(attr) = line.strip_prefix("#[serde(") {
            if let Some(r) = attr.split("rename = \"").nth(1) {
                rename = Some(r[..r.find('"').unwrap()].to_owned());
            }
        } else if let Some(field) = line.strip_prefix("pub ").and_then(|l| l.split_once(':')).map(|(n, _)| n) {
            if !field.contains(' ') && !field.contains('(') {
                fields.insert(rename.take().unwrap_or_else(|| field.to_owned()));
            }
            rename = None;
        } else if !line.starts_with("///") && !line.starts_with("#[") {
            rename = None;
        }
    }
    fields
}

#[test]
fn every_field_of_the_backends_wire_types_is_in_e2bs_description() {
    let spec = spec();
    let wire = read(concat!(env!("CARGO_MANIFEST_DIR"), "/../agentbox-e2b-wire/src/wire.rs"));
    let fields = client_fields(&wire);
    assert!(fields.len() >= 40, "the wire types' fields were not found: {fields:?}");
    let mut known: BTreeSet<String> = spec.control_fields.union(&spec.envd_fields).cloned().collect();
    // Read, never sent: EntryInfo's `isSymlink` is not in E2B's filesystem.proto (a link is known by its
    // `symlinkTarget` or FILE_TYPE_SYMLINK), so accepting it is lenient but harmless. Remove it from
    // `src/wire.rs` and from this list together.
    known.insert("isSymlink".to_owned());
    let missing: Vec<_> = fields.difference(&known).collect();
    assert!(missing.is_empty(), "the backend's wire types use fields E2B's description lacks: {missing:?}");
}
