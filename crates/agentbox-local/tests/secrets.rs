//! Secrets and inspected hosts: credential injection at the egress proxy, HTTP-level rules, and
//! the egress audit log.
//!
//! An HTTPS server on the host's loopback presents a certificate from a test CA, which the
//! backend's proxy trusts through `LocalConfig::upstream_extra_roots`. A DNS server on loopback
//! maps the test names to 127.0.0.1, and `127.0.0.0/8` is an allowed CIDR. Code in the sandbox
//! reaches the server only through the proxy.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use agentbox_config::{NetworkConfig, SandboxConfig, SecretRule};
use agentbox_core::egress::{EgressDecision, EgressQuery, EgressRecord, SecretSource, SecretValue};
use agentbox_core::{CreateRequest, SandboxBackend};
use agentbox_local::{LocalBackend, LocalConfig};
use common::Sandbox;
use common::dns::dns_server;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;

/// The real value: it must reach the server and nothing else.
const KEY: &str = "sk-test-5e7c1d0f-real-value-never-in-the-sandbox";
const TOKEN: &str = "ghp-test-token-value-9a8b7c";

/// One request as the test server saw it.
#[derive(Debug, Clone)]
struct Seen {
    sni: Option<String>,
    alpn: Vec<String>,
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

type Log = Arc<Mutex<Vec<Seen>>>;

struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn test_ca() -> TestCa {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "agentbox test CA");
    let cert = params.self_signed(&key).unwrap();
    TestCa { pem: cert.pem(), issuer: Issuer::new(params, key) }
}

/// An HTTPS server for the test names, recording every request; answers 200 "ok".
async fn https_server(ca: &TestCa) -> (u16, Log) {
    let key = KeyPair::generate().unwrap();
    let names = ["secret.test", "plain.test", "inspect.test", "other.test"].map(str::to_owned).to_vec();
    let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca.issuer).unwrap();
    let der_key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der_key)
            .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"agentbox-opaque-check".to_vec()];
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (config, seen) = (config.clone(), seen.clone());
            tokio::spawn(async move {
                let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
                let Ok(start) = acceptor.await else { return };
                let hello = start.client_hello();
                let sni = hello.server_name().map(str::to_owned);
                let alpn: Vec<String> = hello
                    .alpn()
                    .map(|i| i.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                    .unwrap_or_default();
                let Ok(tls) = start.into_stream(config).await else { return };
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (seen, sni, alpn) = (seen.clone(), sni.clone(), alpn.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        seen.lock().unwrap().push(Seen {
                            sni,
                            alpn,
                            path: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())
                                })
                                .collect(),
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    (port, log)
}

struct World {
    dns: IpAddr,
    port: u16,
    log: Log,
    backend: Arc<LocalBackend>,
    ca_pem: String,
}

impl World {
    async fn new(tag: &str) -> Self {
        let ca = test_ca();
        let dir = common::tempdir(tag);
        let ca_path = dir.join("test-ca.pem");
        std::fs::write(&ca_path, &ca.pem).unwrap();
        let table = ["secret.test", "plain.test", "inspect.test", "other.test"]
            .into_iter()
            .map(|n| (n.to_owned(), vec![IpAddr::from([127, 0, 0, 1])]))
            .collect();
        let dns = dns_server(table).await;
        let (port, log) = https_server(&ca).await;
        let config = LocalConfig { upstream_extra_roots: vec![ca_path], ..LocalConfig::default() };
        let backend = Arc::new(LocalBackend::new(config).unwrap());
        let store = backend.secrets().unwrap();
        store.set("API_KEY", SecretSource::Value(SecretValue::new(KEY.into()))).unwrap();
        store.set("GH_TOKEN", SecretSource::Value(SecretValue::new(TOKEN.into()))).unwrap();
        Self { dns, port, log, backend, ca_pem: ca.pem }
    }

    fn network(&self, allowed: &[&str], denied: &[&str]) -> NetworkConfig {
        NetworkConfig {
            enabled: true,
            allowed_domains: allowed.iter().map(|s| (*s).to_owned()).collect(),
            denied_domains: denied.iter().map(|s| (*s).to_owned()).collect(),
            inspect_domains: vec!["inspect.test".into()],
            dns_servers: vec![self.dns.to_string()],
            allowed_cidrs: vec!["127.0.0.0/8".into()],
            secrets: vec![
                SecretRule {
                    name: "API_KEY".into(),
                    hosts: vec!["secret.test".into()],
                    placeholder: true,
                    replace_in_body: true,
                    ..SecretRule::default()
                },
                SecretRule {
                    name: "GH_TOKEN".into(),
                    hosts: vec![format!("secret.test:{}", self.port)],
                    header: Some("Authorization: Bearer {value}".into()),
                    ..SecretRule::default()
                },
            ],
            ..NetworkConfig::default()
        }
    }

    async fn sandbox(&self, network: NetworkConfig) -> Sandbox {
        let config = SandboxConfig { network, ..SandboxConfig::default() };
        let info = self.backend.create(CreateRequest::new(config)).await.expect("create sandbox");
        Sandbox { backend: self.backend.clone(), id: info.id }
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.log.lock().unwrap().iter().filter(|s| s.path.starts_with(path)).cloned().collect()
    }
}

async fn records(sb: &Sandbox) -> Vec<EgressRecord> {
    let page =
        sb.backend.egress_log(&sb.id, EgressQuery { limit: Some(1000), ..EgressQuery::default() }).await.unwrap();
    assert_eq!(page.dropped, 0);
    page.records
}

/// "CODE REFUSED-RULE BODY" of one curl call from inside the sandbox (through the proxy).
async fn curl(sb: &Sandbox, args: &str) -> String {
    let out = sb
        .sh(&format!(
            "curl -s -m 20 -o /tmp/body -D /tmp/head -w '%{{http_code}}' {args}; \
             echo \" $(grep -i '^x-agentbox-refused' /tmp/head | tail -1 | cut -d' ' -f2 | tr -d '\\r') $(cat /tmp/body 2>/dev/null)\"; \
             rm -f /tmp/body /tmp/head"
        ))
        .await;
    out.stdout.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_the_server_and_never_the_sandbox() {
    if common::not_root() {
        return;
    }
    let w = World::new("secrets").await;
    let p = w.port;
    let sb = w.sandbox(w.network(&[], &[])).await;
    let placeholder = sb.sh("printf %s \"$AGENTBOX_SECRET_API_KEY\"").await.stdout;
    assert!(placeholder.starts_with("agentbox-placeholder-"), "{placeholder:?}");
    let env = sb.sh("env").await.stdout;
    for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE", "PIP_CERT"] {
        assert!(env.contains(&format!("{var}=/tmp/.agentbox/ca-certificates.crt")), "{var} missing: {env}");
    }

    // curl: a header with the placeholder, and the header the proxy adds.
    let out = curl(&sb, &format!("-H \"X-Api-Key: $AGENTBOX_SECRET_API_KEY\" https://secret.test:{p}/curl")).await;
    assert_eq!(out, "200  ok");
    let seen = w.seen("/curl");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-api-key"], KEY);
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(seen[0].alpn, ["http/1.1"], "the proxy, not curl, made this handshake");

    // Python urllib (placeholder in the query) and requests (placeholder in a JSON body).
    let py = sb
        .py(&format!(
            "import os, urllib.request, requests\n\
             ph = os.environ['AGENTBOX_SECRET_API_KEY']\n\
             r = urllib.request.urlopen(urllib.request.Request('https://secret.test:{p}/urllib?key=' + ph))\n\
             print(r.status, r.read().decode())\n\
             r = requests.post('https://secret.test:{p}/requests', json={{'key': ph, 'again': ph}})\n\
             print(r.status_code, r.text)"
        ))
        .await;
    assert_eq!(py, "200 ok\n200 ok");
    assert_eq!(w.seen("/urllib")[0].path, format!("/urllib?key={KEY}"));
    let body = &w.seen("/requests")[0].body;
    assert_eq!(body, &format!("{{\"key\": \"{KEY}\", \"again\": \"{KEY}\"}}"));

    // Node https, through a CONNECT tunnel it opens itself (Node 20 has no proxy support of its own).
    let node = sb
        .sh(&format!(
            "node -e \"const http=require('http'),https=require('https'),tls=require('tls');\
             const c=http.request({{host:'127.0.0.1',port:3128,method:'CONNECT',path:'secret.test:{p}'}});\
             c.on('connect',(res,socket)=>{{const r=https.request({{host:'secret.test',port:{p},path:'/node',\
             headers:{{'x-api-key':process.env.AGENTBOX_SECRET_API_KEY}},\
             createConnection:()=>tls.connect({{socket,servername:'secret.test'}})}},\
             (res)=>{{console.log(res.statusCode);process.exit(0)}});\
             r.on('error',(e)=>{{console.log('error '+e.message);process.exit(1)}});r.end()}});c.end();\""
        ))
        .await;
    assert_eq!(node.stdout.trim(), "200", "{}", node.stderr);
    assert_eq!(w.seen("/node")[0].headers["x-api-key"], KEY);
    // Node 24 and newer send fetch() through HTTPS_PROXY themselves (NODE_USE_ENV_PROXY).
    let fetch = sb
        .sh(&format!(
            "[ \"$(node -p 'process.versions.node.split(\".\")[0]')\" -ge 24 ] || {{ echo skipped; exit 0; }}; \
             node -e \"fetch('https://secret.test:{p}/fetch',{{headers:{{'x-api-key':process.env.AGENTBOX_SECRET_API_KEY}}}})\
             .then(r=>console.log(r.status))\""
        ))
        .await;
    if fetch.stdout.trim() != "skipped" {
        assert_eq!(fetch.stdout.trim(), "200", "{}", fetch.stderr);
        assert_eq!(w.seen("/fetch")[0].headers["x-api-key"], KEY);
    }

    // The placeholder sent to an inspected host that may not receive it: refused, never forwarded.
    let out = curl(&sb, &format!("-H \"X-Api-Key: $AGENTBOX_SECRET_API_KEY\" https://inspect.test:{p}/wrong")).await;
    assert_eq!(out.split(' ').take(2).collect::<Vec<_>>(), ["403", "secret-wrong-host"]);
    assert!(w.seen("/wrong").is_empty());
    // An inspected host without the placeholder is served, and nothing is added.
    assert_eq!(curl(&sb, &format!("https://inspect.test:{p}/inspected")).await, "200  ok");
    assert!(!w.seen("/inspected")[0].headers.contains_key("authorization"));

    // A host with no secret and no rules is an opaque tunnel: the server sees the client's own
    // handshake (its ALPN offer), and the placeholder arrives unchanged.
    sb.backend.write_file(&sb.id, "/tmp/test-ca.pem", w.ca_pem.clone().into_bytes()).await.unwrap();
    let opaque = sb
        .py(&format!(
            "import os, socket, ssl\n\
             ctx = ssl.create_default_context(cafile='/tmp/test-ca.pem')\n\
             ctx.set_alpn_protocols(['agentbox-opaque-check'])\n\
             s = socket.create_connection(('127.0.0.1', 3128))\n\
             s.sendall(b'CONNECT plain.test:{p} HTTP/1.1\\r\\nHost: plain.test:{p}\\r\\n\\r\\n')\n\
             head = b''\n\
             while not head.endswith(b'\\r\\n\\r\\n'): head += s.recv(1)\n\
             t = ctx.wrap_socket(s, server_hostname='plain.test')\n\
             ph = os.environ['AGENTBOX_SECRET_API_KEY']\n\
             t.sendall(('GET /opaque HTTP/1.1\\r\\nHost: plain.test\\r\\nX-Api-Key: ' + ph + '\\r\\nConnection: close\\r\\n\\r\\n').encode())\n\
             print(t.recv(12).decode().split()[1])"
        ))
        .await;
    assert_eq!(opaque, "200");
    let seen = w.seen("/opaque");
    assert_eq!(seen[0].alpn, ["agentbox-opaque-check"]);
    assert_eq!(seen[0].sni.as_deref(), Some("plain.test"));
    assert_eq!(seen[0].headers["x-api-key"], placeholder);

    // The sandbox can't find the value anywhere it can read.
    let grep = sb
        .sh(&format!(
            "grep -rIl -e '{KEY}' -e '{TOKEN}' /home /tmp /etc /run /proc/self/environ 2>/dev/null; \
             env | grep -c -e '{KEY}' -e '{TOKEN}'"
        ))
        .await;
    assert_eq!(grep.stdout.trim(), "0", "{}", grep.stdout);

    // The audit log has exactly the traffic above, with secrets by name.
    let log = records(&sb).await;
    let requests: Vec<&EgressRecord> = log.iter().filter(|r| r.kind == "request").collect();
    let paths: Vec<String> =
        requests.iter().map(|r| r.path.clone().unwrap().split('?').next().unwrap().to_owned()).collect();
    let mut expected = vec!["/curl", "/urllib", "/requests", "/node", "/wrong", "/inspected"];
    if fetch.stdout.trim() != "skipped" {
        expected.insert(4, "/fetch");
    }
    assert_eq!(paths, expected, "{log:#?}");
    let curl_req = requests[0];
    assert_eq!((curl_req.host.as_str(), curl_req.port, curl_req.via.as_str()), ("secret.test", p, "tls"));
    assert_eq!(curl_req.secrets, ["API_KEY", "GH_TOKEN"]);
    assert_eq!((curl_req.decision, curl_req.status), (EgressDecision::Allowed, Some(200)));
    assert!(curl_req.bytes_in > 0 && curl_req.bytes_out > 0);
    assert_eq!(requests[1].path.as_deref(), Some(format!("/urllib?key={placeholder}").as_str()));
    let wrong = requests.iter().find(|r| r.path.as_deref() == Some("/wrong")).unwrap();
    assert_eq!((wrong.decision, wrong.rule.as_deref()), (EgressDecision::Refused, Some("secret-wrong-host")));
    assert_eq!(wrong.secrets, ["API_KEY"]);
    let connections: Vec<&EgressRecord> = log.iter().filter(|r| r.kind == "connection").collect();
    assert_eq!(connections.len(), requests.len() + 1, "{connections:#?}");
    let tunnel = connections.iter().find(|r| r.host == "plain.test").unwrap();
    assert_eq!((tunnel.via.as_str(), tunnel.address.as_deref()), ("http-connect", Some("127.0.0.1")));
    assert!(tunnel.bytes_in > 0 && tunnel.bytes_out > 0);
    let text = format!("{log:?}");
    assert!(!text.contains(KEY) && !text.contains(TOKEN));

    // Rotation: a new value applies to the next request.
    let store = sb.backend.secrets().unwrap();
    store.set("GH_TOKEN", SecretSource::Value(SecretValue::new("rotated-token".into()))).unwrap();
    assert_eq!(curl(&sb, &format!("https://secret.test:{p}/rotated")).await, "200  ok");
    assert_eq!(w.seen("/rotated")[0].headers["authorization"], "Bearer rotated-token");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn method_path_and_port_rules_apply_as_written_and_change_live() {
    if common::not_root() {
        return;
    }
    let w = World::new("rules").await;
    let p = w.port;
    let sb = w.sandbox(w.network(&[], &[])).await;
    assert_eq!(curl(&sb, &format!("-X POST https://inspect.test:{p}/anything")).await, "200  ok");
    let rules = w.network(
        &["GET,HEAD inspect.test/ok/*", "POST inspect.test/ok/submit", &format!("secret.test:{p}"), "other.test:1"],
        &["DELETE secret.test/*"],
    );
    sb.backend.update_network(&sb.id, rules).await.unwrap();
    let code = |out: String| out.split(' ').take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(code(curl(&sb, &format!("https://inspect.test:{p}/ok/a")).await), "200 ");
    assert_eq!(code(curl(&sb, &format!("-X POST https://inspect.test:{p}/ok/submit")).await), "200 ");
    assert_eq!(code(curl(&sb, &format!("-X POST https://inspect.test:{p}/ok/a")).await), "403 not-allowed-request");
    assert_eq!(code(curl(&sb, &format!("https://inspect.test:{p}/other")).await), "403 not-allowed-request");
    assert_eq!(code(curl(&sb, &format!("https://secret.test:{p}/fine")).await), "200 ");
    assert_eq!(code(curl(&sb, &format!("-X DELETE https://secret.test:{p}/x")).await), "403 denied-request");
    // The port is part of the rule: other.test is allowed on port 1 only.
    let refused = curl(&sb, &format!("https://other.test:{p}/port")).await;
    assert!(refused.starts_with("000") || refused.contains("not-allowed-domain"), "{refused}");
    assert!(w.seen("/ok/a").len() == 1 && w.seen("/other").is_empty() && w.seen("/x").is_empty());
    assert!(w.seen("/port").is_empty());
    let log = records(&sb).await;
    let refused: Vec<(&str, &str)> = log
        .iter()
        .filter(|r| r.decision == EgressDecision::Refused)
        .map(|r| (r.path.as_deref().unwrap_or("-"), r.rule.as_deref().unwrap_or("-")))
        .collect();
    assert_eq!(
        refused,
        [
            ("/ok/a", "not-allowed-request"),
            ("/other", "not-allowed-request"),
            ("/x", "denied-request"),
            ("-", "not-allowed-domain")
        ]
    );
    let allowed = log.iter().find(|r| r.path.as_deref() == Some("/ok/submit")).unwrap();
    assert_eq!(allowed.rule.as_deref(), Some("POST inspect.test/ok/submit"));
    sb.destroy().await;
}
