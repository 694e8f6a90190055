//! Secrets end to end through REST, with the server in a process of its own as agentboxd runs: a secret set
//! with `PUT /api/secrets/{name}` reaches an HTTPS server on the host's loopback from a sandbox that only
//! holds its placeholder, the egress log shows the request by the secret's name, and afterwards the value
//! is found in nothing the server wrote or answered: its log (at debug level), its registry, the backend's
//! state directory, the API's responses and the metrics.
//!
//! The server process is this test binary run again with `AGENTBOX_SECRETS_DIR` set
//! ([`secrets_server_process`]); its proxy trusts the test CA through `LocalConfig::upstream_extra_roots`.

#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agentbox_server::{ApiToken, Registry, Server, ServerConfig, ShutdownPolicy};
use common::child::ChildServer;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const CHILD_ENV: &str = "AGENTBOX_SECRETS_DIR";
const TOKEN: &str = "secrets-test-token-0123456789";
const VALUE: &str = "sk-live-7f3a9c2e-the-value-that-must-not-leak";

/// Not a test of its own: the server of [`a_secret_reaches_its_host_and_nothing_else`], on a local backend
/// whose state directory is inside the test's directory, logging at debug level.
#[test]
fn secrets_server_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else { return };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let local = agentbox_local::LocalConfig {
            state_dir: dir.join("state"),
            upstream_extra_roots: vec![dir.join("test-ca.pem")],
            storage: None,
            ..agentbox_local::LocalConfig::default()
        };
        let backend = Arc::new(agentbox_local::LocalBackend::new(local).unwrap());
        let registry = Registry::open(&dir.join("registry.db")).unwrap();
        let config = ServerConfig { on_shutdown: ShutdownPolicy::Destroy, ..ServerConfig::default() };
        let server = Server::start(backend, config, ApiToken::new(TOKEN).unwrap(), registry).await.unwrap();
        common::child::serve_until_term(server, &dir).await;
    });
}

/// An HTTPS server on 127.0.0.1 with a certificate from a fresh test CA (written to `dir/test-ca.pem`);
/// records the `x-api-key` header of every request.
async fn https_server(dir: &Path) -> (u16, Arc<Mutex<Vec<String>>>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("test-ca.pem"), ca_cert.pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let key =
                        req.headers().get("x-api-key").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                    log.lock().unwrap().push(key.unwrap_or_default());
                    async { Ok::<_, Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from_static(b"ok")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    (port, seen)
}

/// Every file under `dir` (following no links) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if kind.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_its_host_and_nothing_else() {
    let dir = std::env::temp_dir().join(format!("agentbox-secrets-server-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (port, seen) = https_server(&dir).await;
    let server = ChildServer::start("secrets_server_process", CHILD_ENV, &dir, || Ok(()));
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let mut answers = String::new();
    let mut call = async |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = http.request(method, format!("{base}{path}")).bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        answers.push_str(&text);
        (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
    };

    let (status, set) = call(reqwest::Method::PUT, "/api/secrets/API_KEY", Some(json!({"value": VALUE}))).await;
    assert_eq!((status, set), (200, json!({"name": "API_KEY", "source": "value"})));
    let network = json!({
        "enabled": true,
        "allowed_cidrs": ["127.0.0.0/8"],
        "secrets": [{"name": "API_KEY", "hosts": [format!("127.0.0.1:{port}")], "placeholder": true}],
    });
    let create = json!({"run_id": "secret-run", "network": network});
    let (status, created) = call(reqwest::Method::POST, "/api/sandboxes/create", Some(create)).await;
    assert_eq!(status, 201, "{created}");
    let command = format!(
        "curl -s -m 20 --noproxy '' -x http://127.0.0.1:3128 -H \"X-Api-Key: $AGENTBOX_SECRET_API_KEY\" \
         https://127.0.0.1:{port}/v1/models; echo; printf %s \"$AGENTBOX_SECRET_API_KEY\""
    );
    let (status, out) =
        call(reqwest::Method::POST, "/api/sandboxes/secret-run/execute/command", Some(json!({"command": command})))
            .await;
    assert_eq!(status, 200, "{out}");
    let stdout = out["stdout"].as_str().unwrap().to_owned();
    let (body, placeholder) = stdout.split_once('\n').unwrap();
    assert_eq!(body, "ok", "{out}");
    assert!(placeholder.starts_with("agentbox-placeholder-"));
    assert_eq!(*seen.lock().unwrap(), [VALUE]);

    let (status, log) = call(reqwest::Method::GET, "/api/sandboxes/secret-run/egress?decision=allowed", None).await;
    assert_eq!(status, 200);
    let records = log["records"].as_array().unwrap();
    let request = records.iter().find(|r| r["kind"] == "request").unwrap();
    assert_eq!(request["path"], "/v1/models");
    assert_eq!(request["secrets"], json!(["API_KEY"]));
    assert_eq!(request["status"], 200);
    assert_eq!(records.iter().filter(|r| r["kind"] == "connection").count(), 1);

    for path in ["/api/secrets", "/api/sandboxes/secret-run", "/api/sandboxes/secret-run/metrics", "/metrics"] {
        let (status, _) = call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _) = call(reqwest::Method::DELETE, "/api/secrets/API_KEY", None).await;
    assert_eq!(status, 204);
    let (status, _) = call(reqwest::Method::DELETE, "/api/sandboxes/secret-run", None).await;
    assert!(status == 200 || status == 204, "{status}");
    drop(server);

    assert!(!answers.contains(VALUE), "an API answer holds the value");
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
    assert!(log.contains("secret set"), "the log is at debug level and covers the run:\n{log}");
    assert!(!log.contains(VALUE), "the server's log holds the value");
    let leaked = files_containing(&dir, VALUE.as_bytes());
    assert!(leaked.is_empty(), "files holding the value: {leaked:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
