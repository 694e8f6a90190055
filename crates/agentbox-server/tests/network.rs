//! `PUT /api/sandboxes/{run_id}/network` end to end: a real local sandbox whose egress is switched on
//! and off over HTTP, reaching an HTTP server this test runs on the host's loopback through the
//! sandbox's proxy.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_server::{Registry, ServerConfig};
use common::{TestServer, expect_error};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server on the host's loopback answering every request with `hello`; returns its port and
/// the number of requests it has answered.
async fn hello_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _ =
                    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").await;
            });
        }
    });
    (port, hits)
}

/// From inside the sandbox, GETs the host server at 127.0.0.1:`port` the way a program would: through
/// `HTTP_PROXY` when the sandbox has one (`--noproxy ''` so loopback is not exempted); returns
/// `(proxy variable, curl's exit code, body)`.
async fn fetch(t: &TestServer, run: &str, port: u16) -> (String, i64, String) {
    let out =
        t.sh(run, &format!("echo \"[$HTTP_PROXY]\"; curl -s -m 20 --noproxy '' http://127.0.0.1:{port}/hello")).await;
    let stdout = out["stdout"].as_str().unwrap();
    let (proxy, body) = stdout.split_once('\n').unwrap();
    (proxy.to_owned(), out["exit_code"].as_i64().unwrap(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policy_changes_live_over_http() {
    let backend = Arc::new(LocalBackend::new(LocalConfig::default()).expect("the local backend needs root"));
    let registry = Registry::in_memory().unwrap();
    let t = TestServer::start(backend, ServerConfig::default(), registry.clone()).await;
    let (port, hits) = hello_server().await;
    let run = "net-live";
    let created = t.create(run).await;
    assert_eq!(created["config"]["network"]["enabled"], false);
    let put = |body: Value| t.put(&format!("/api/sandboxes/{run}/network")).json(&body).send();

    // Off (the default): nothing leaves the sandbox.
    let (proxy, code, _) = fetch(&t, run, port).await;
    assert_eq!((proxy.as_str(), code), ("[]", 7), "connection refused inside the sandbox");
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // On, with the host's loopback allowed: the request goes through the proxy and is answered.
    let policy = json!({"enabled": true, "allowed_cidrs": ["127.0.0.0/8"], "bandwidth_in_bytes_per_sec": 1_000_000});
    let r = put(policy).await.unwrap();
    assert_eq!(r.status(), 200);
    let effective: Value = r.json().await.unwrap();
    assert_eq!(
        effective,
        json!({"enabled": true, "allowed_domains": [], "denied_domains": [], "inspect_domains": [], "secrets": [],
               "dns_servers": [], "allowed_cidrs": ["127.0.0.0/8"], "bandwidth_in_bytes_per_sec": 1_000_000,
               "bandwidth_out_bytes_per_sec": null})
    );
    let (proxy, code, body) = fetch(&t, run, port).await;
    assert_eq!((proxy.as_str(), code, body.as_str()), ("[http://127.0.0.1:3128]", 0, "hello"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // The sandbox's configuration and the registry's row carry the new policy.
    let view: Value = t.get(&format!("/api/sandboxes/{run}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(view["config"]["network"], effective);
    let row = registry.load().await.unwrap().into_iter().find(|r| r.run_id == run).unwrap();
    assert!(row.config.network.enabled);
    assert_eq!(row.config.network.allowed_cidrs, ["127.0.0.0/8"]);

    // Invalid policies are refused with every problem listed, and change nothing.
    let r =
        put(json!({"enabled": true, "allowed_cidrs": ["127.0.0.0/99"], "dns_servers": ["dns.google"]})).await.unwrap();
    let text = r.text().await.unwrap();
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["error"]["code"], "invalid_config", "{text}");
    let paths: Vec<&str> =
        err["error"]["details"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["network.dns_servers[0]", "network.allowed_cidrs[0]"], "{text}");
    expect_error(put(json!({"enabled": "yes"})).await.unwrap(), 400, "invalid_request").await;
    expect_error(put(json!({"enabled": true, "allow": []})).await.unwrap(), 400, "invalid_request").await;
    let (_, code, body) = fetch(&t, run, port).await;
    assert_eq!((code, body.as_str()), (0, "hello"), "the previous policy still holds");
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // Off again (an empty body is the default policy): the same request fails and never reaches the host.
    let r = put(json!({})).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["enabled"], false);
    let (proxy, code, _) = fetch(&t, run, port).await;
    assert_eq!((proxy.as_str(), code), ("[]", 7));
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let row = registry.load().await.unwrap().into_iter().find(|r| r.run_id == run).unwrap();
    assert!(!row.config.network.enabled);

    let r = t.put("/api/sandboxes/nobody/network").json(&json!({})).send().await.unwrap();
    expect_error(r, 404, "not_found").await;
    let r = t.delete(&format!("/api/sandboxes/{run}")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    t.stop().await;
}
