//! Network egress of local sandboxes: the filtering proxy, DNS, limits, counters, live policy and package installs.
//!
//! Everything runs against servers these tests start on the host's loopback: a
//! DNS server (so test names such as `allowed.test` resolve, and some rebind to
//! private addresses), an HTTP server and raw TCP servers. The sandboxes reach
//! them only through the proxy, with `127.0.0.0/8` as an allowed CIDR.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentbox_config::{NetworkConfig, SandboxConfig};
use agentbox_core::{Error, ExecEvent, ExecRequest, SandboxBackend};
use common::Sandbox;
use common::dns::dns_server;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the test HTTP server answers for a GET path: a body, or `None` for 404.
type Routes = Arc<dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync>;

/// A one-request-per-connection HTTP/1.1 server on the host's loopback.
///
/// GET is answered from `routes`; PUT and POST bodies are read, and the answer is the rate
/// at which the body arrived, in bytes per second, measured from its first read to its last.
async fn http_server(routes: Routes) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let routes = routes.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let mut rd = BufReader::new(rd);
                let mut line = String::new();
                if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if rd.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let body = if method == "PUT" || method == "POST" {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut got = 0;
                    let mut first: Option<(Instant, usize)> = None;
                    let mut last = Instant::now();
                    while got < length {
                        let n = rd.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        got += n;
                        last = Instant::now();
                        first.get_or_insert((last, n));
                    }
                    let rate = first.map_or(0.0, |(t, n)| (got - n) as f64 / last.duration_since(t).as_secs_f64());
                    Some(format!("{rate:.0}").into_bytes())
                } else {
                    routes(&path)
                };
                let kind = if path.starts_with("/simple/") { "text/html" } else { "application/octet-stream" };
                let head = match &body {
                    Some(b) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        b.len()
                    ),
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                };
                let _ = wr.write_all(head.as_bytes()).await;
                if let Some(b) = body {
                    let _ = wr.write_all(&b).await;
                }
                let _ = wr.shutdown().await;
            });
        }
    });
    port
}

/// A TCP server that reads exactly `take` bytes, then writes `give` bytes and closes.
async fn exchange_server(take: usize, give: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; take];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(&vec![b'x'; give]).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// A TCP echo server.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// The test world: names that resolve (through the test DNS server) and an HTTP server.
struct World {
    dns: IpAddr,
    http: u16,
}

const LOCAL: [u8; 4] = [127, 0, 0, 1];

impl World {
    /// Starts the DNS server with `extra` names besides the usual ones (which all point at 127.0.0.1).
    async fn new(extra: &[(&str, &[&str])]) -> Self {
        let mut table: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for name in ["allowed.test", "a.wild.test", "blocked.wild.test", "other.test", "a.test", "b.test", "localhost"]
        {
            table.insert(name.into(), vec![IpAddr::from(LOCAL)]);
        }
        for (name, ips) in extra {
            table.insert((*name).into(), ips.iter().map(|s| s.parse().unwrap()).collect());
        }
        let dns = dns_server(table).await;
        let routes: Routes = Arc::new(|path: &str| {
            if path == "/hello" {
                return Some(b"hello".to_vec());
            }
            let n: usize = path.strip_prefix("/bytes/")?.parse().ok()?;
            Some(vec![b'b'; n])
        });
        let http = http_server(routes).await;
        Self { dns, http }
    }

    /// A policy with networking on, these domain lists, the test DNS server and loopback allowed.
    fn network(&self, allowed: &[&str], denied: &[&str]) -> NetworkConfig {
        NetworkConfig {
            enabled: true,
            allowed_domains: allowed.iter().map(|s| (*s).to_owned()).collect(),
            denied_domains: denied.iter().map(|s| (*s).to_owned()).collect(),
            dns_servers: vec![self.dns.to_string()],
            allowed_cidrs: vec!["127.0.0.0/8".into()],
            ..NetworkConfig::default()
        }
    }

    async fn sandbox(&self, network: NetworkConfig) -> Sandbox {
        Sandbox::with(SandboxConfig { network, ..SandboxConfig::default() }).await
    }
}

/// `curl` from inside the sandbox, through the proxy even for loopback names and addresses:
/// "CODE REFUSED-RULE BODY" (CODE 000 when curl got no answer).
async fn curl(sb: &Sandbox, args: &str) -> String {
    let out = sb
        .sh(&format!(
            "curl -s -m 20 --noproxy '' -o /tmp/body -D /tmp/head -w '%{{http_code}}' {args}; \
             echo \" $(grep -i '^x-agentbox-refused' /tmp/head | tail -1 | cut -d' ' -f2 | tr -d '\\r') $(cat /tmp/body 2>/dev/null)\"; \
             rm -f /tmp/body /tmp/head"
        ))
        .await;
    out.stdout.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_names_pass_and_denied_names_and_ips_are_refused() {
    if common::not_root() {
        return;
    }
    let w = World::new(&[]).await;
    let sb = w.sandbox(w.network(&["allowed.test", "*.wild.test"], &["blocked.wild.test"])).await;
    let p = w.http;
    // Plain HTTP through HTTP_PROXY, a CONNECT tunnel, and SOCKS5 with the name resolved by the proxy.
    assert_eq!(curl(&sb, &format!("http://allowed.test:{p}/hello")).await, "200  hello");
    assert_eq!(curl(&sb, &format!("-p http://allowed.test:{p}/hello")).await, "200  hello");
    assert_eq!(curl(&sb, &format!("-x socks5h://127.0.0.1:1080 http://a.wild.test:{p}/hello")).await, "200  hello");
    // Deny wins over a wildcard allow; names off the list and IP addresses are refused.
    let refused = curl(&sb, &format!("http://blocked.wild.test:{p}/hello")).await;
    assert!(refused.starts_with("403 denied-domain the sandbox egress proxy refused blocked.wild.test"), "{refused}");
    assert!(curl(&sb, &format!("http://other.test:{p}/hello")).await.starts_with("403 not-allowed-domain"));
    assert!(curl(&sb, &format!("http://wild.test:{p}/hello")).await.starts_with("403 not-allowed-domain"));
    assert!(curl(&sb, &format!("http://127.0.0.1:{p}/hello")).await.starts_with("403 ip-literal"));
    let tunnel = sb.sh(&format!("curl -s -m 20 -p http://other.test:{p}/hello")).await;
    assert_eq!(tunnel.exit_code, 56, "CONNECT refused: {tunnel:?}");
    let socks = sb.sh(&format!("curl -s -m 20 -x socks5h://127.0.0.1:1080 http://127.0.0.1:{p}/hello")).await;
    assert_ne!(socks.exit_code, 0, "{socks:?}");
    // Without the proxy there is no way out at all, not even to a public address.
    let direct = sb
        .py(&format!(
            "import socket\n\
             for a in [('1.1.1.1', 443), ('8.8.8.8', {p}), ('2606:4700::1111', 443)]:\n\
             \x20   s = socket.socket(socket.AF_INET6 if ':' in a[0] else socket.AF_INET)\n\
             \x20   try:\n\
             \x20       s.connect(a); print('connected')\n\
             \x20   except OSError as e:\n\
             \x20       print(e.strerror)"
        ))
        .await;
    assert_eq!(direct, "Network is unreachable\nNetwork is unreachable\nNetwork is unreachable");
    let stats = sb.backend.network_stats(&sb.id).unwrap();
    for rule in ["denied-domain", "not-allowed-domain", "ip-literal"] {
        assert!(stats.refused_by_rule.get(rule).copied().unwrap_or(0) >= 1, "{rule}: {stats:?}");
    }
    assert_eq!(stats.connections, 3, "{stats:?}");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn names_resolving_to_private_addresses_and_metadata_are_refused() {
    if common::not_root() {
        return;
    }
    let w = World::new(&[
        ("rebind.test", &["10.0.0.7"]),
        ("mixed.test", &["127.0.0.1", "192.168.1.1"]),
        ("meta.test", &["169.254.169.254"]),
        ("v6.test", &["::ffff:10.1.1.1"]),
    ])
    .await;
    let p = w.http;
    let sb = w.sandbox(w.network(&["rebind.test", "mixed.test", "meta.test", "v6.test"], &[])).await;
    // The names are allowed; the addresses they resolve to are not.
    assert!(curl(&sb, &format!("http://rebind.test:{p}/hello")).await.starts_with("403 private"));
    let mixed = sb.sh(&format!("curl -s -m 20 -p http://mixed.test:{p}/hello")).await;
    assert_eq!(mixed.exit_code, 56, "{mixed:?}");
    assert!(curl(&sb, &format!("http://mixed.test:{p}/hello")).await.starts_with("403 private"));
    assert!(curl(&sb, "http://meta.test/latest/meta-data/").await.starts_with("403 link-local"));
    assert!(curl(&sb, &format!("http://v6.test:{p}/hello")).await.starts_with("403 private"));
    // With every public destination allowed and no CIDR allowance, loopback and metadata stay out of reach.
    let open = NetworkConfig { allowed_cidrs: vec![], ..w.network(&[], &[]) };
    sb.backend.update_network(&sb.id, open).await.unwrap();
    assert!(curl(&sb, "http://169.254.169.254/latest/meta-data/").await.starts_with("403 link-local"));
    assert!(curl(&sb, &format!("http://localhost:{p}/hello")).await.starts_with("403 loopback"));
    assert!(curl(&sb, &format!("http://allowed.test:{p}/hello")).await.starts_with("403 loopback"));
    assert!(curl(&sb, &format!("http://[::ffff:127.0.0.1]:{p}/hello")).await.starts_with("403 loopback"));
    // curl turns the numeric form into 127.0.0.1 itself; a raw request keeps it and gets refused as invalid.
    assert!(curl(&sb, &format!("http://0x7f000001:{p}/hello")).await.starts_with("403 loopback"));
    let raw = sb
        .py("import socket\n\
             s = socket.create_connection(('127.0.0.1', 3128))\n\
             s.sendall(b'CONNECT 0x7f.1:80 HTTP/1.1\\r\\n\\r\\n')\n\
             print(s.recv(200).split(b'\\r\\n')[0].decode())")
        .await;
    assert_eq!(raw, "HTTP/1.1 403 Forbidden by the sandbox egress policy (invalid-host)");
    let stats = sb.backend.network_stats(&sb.id).unwrap();
    assert_eq!(stats.connections, 0, "nothing may have been connected: {stats:?}");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn udp_and_dns_have_no_route_out() {
    if common::not_root() {
        return;
    }
    let w = World::new(&[]).await;
    let sb = w.sandbox(w.network(&[], &[])).await;
    let out = sb
        .py("import socket\n\
             def err(f):\n\
             \x20   try:\n\
             \x20       f(); return 'sent'\n\
             \x20   except OSError as e:\n\
             \x20       return e.strerror or str(e)\n\
             u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             print(err(lambda: u.sendto(b'q', ('1.1.1.1', 53))))\n\
             print(err(lambda: u.sendto(b'q', ('8.8.8.8', 443))))\n\
             u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
             print(err(lambda: u6.sendto(b'q', ('2001:4860:4860::8888', 53))))\n\
             print(err(lambda: socket.getaddrinfo('allowed.test', 80)))\n\
             s = socket.create_connection(('127.0.0.1', 1080))\n\
             s.sendall(b'\\x05\\x01\\x00'); assert s.recv(2) == b'\\x05\\x00'\n\
             s.sendall(b'\\x05\\x03\\x00\\x01\\x01\\x01\\x01\\x01\\x00\\x35')\n\
             print(s.recv(10)[1])\n\
             print(open('/etc/resolv.conf').read().strip().splitlines()[-1])")
        .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["Network is unreachable"; 3], "{out}");
    assert!(lines[3].contains("Name or service not known") || lines[3].contains("Temporary failure"), "{out}");
    assert_eq!(lines[4], "7", "SOCKS5 UDP ASSOCIATE is refused: {out}");
    assert_eq!(lines[5], "nameserver 127.0.0.1");
    // The same name resolves on the proxy's side, through network.dns_servers.
    assert_eq!(curl(&sb, &format!("http://allowed.test:{}/hello", w.http)).await, "200  hello");
    assert_eq!(sb.backend.network_stats(&sb.id).unwrap().refused_by_rule.get("unsupported"), Some(&1));
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bandwidth_limits_hold_both_ways() {
    if common::not_root() {
        return;
    }
    let w = World::new(&[]).await;
    let rate: u64 = 256 * 1024;
    let network = NetworkConfig {
        bandwidth_in_bytes_per_sec: Some(rate),
        bandwidth_out_bytes_per_sec: Some(rate),
        ..w.network(&["allowed.test"], &[])
    };
    let sb = w.sandbox(network).await;
    let p = w.http;
    // About two seconds each way: 512 KiB at 256 KiB/s.
    let size = 2 * rate;
    let down = sb
        .sh(&format!("curl -s -m 60 -o /dev/null -w '%{{speed_download}}' http://allowed.test:{p}/bytes/{size}"))
        .await;
    // The limit is the upper bound; a busy machine only makes transfers slower, so the lower bound is loose
    // (it only shows the limit is not a stall).
    let measured: f64 = down.stdout.trim().parse().unwrap_or_else(|_| panic!("{down:?}"));
    let ratio = measured / rate as f64;
    assert!((0.25..=1.2).contains(&ratio), "download at {measured:.0} B/s for a limit of {rate} B/s ({ratio:.2})");
    let up = sb
        .sh(&format!(
            "head -c {size} /dev/zero > /tmp/up && curl -s -m 60 -H 'Expect:' -T /tmp/up http://allowed.test:{p}/upload"
        ))
        .await;
    let measured: f64 = up.stdout.trim().parse().unwrap_or_else(|_| panic!("{up:?}"));
    let ratio = measured / rate as f64;
    assert!((0.25..=1.2).contains(&ratio), "upload at {measured:.0} B/s for a limit of {rate} B/s ({ratio:.2})");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn byte_counters_are_exact() {
    if common::not_root() {
        return;
    }
    let w = World::new(&[]).await;
    let (take, give) = (1000usize, 300_000usize);
    let port = exchange_server(take, give).await;
    let sb = w.sandbox(w.network(&["allowed.test"], &[])).await;
    let before = sb.backend.network_stats(&sb.id).unwrap();
    assert_eq!((before.bytes_in, before.bytes_out), (0, 0));
    let script = format!(
        "import socket, sys\n\
         def tunnel_http():\n\
         \x20   s = socket.create_connection(('127.0.0.1', 3128))\n\
         \x20   s.sendall(b'CONNECT allowed.test:{port} HTTP/1.1\\r\\nHost: allowed.test:{port}\\r\\n\\r\\n')\n\
         \x20   head = b''\n\
         \x20   while not head.endswith(b'\\r\\n\\r\\n'): head += s.recv(1)\n\
         \x20   assert b' 200 ' in head, head\n\
         \x20   return s\n\
         def tunnel_socks():\n\
         \x20   s = socket.create_connection(('127.0.0.1', 1080))\n\
         \x20   s.sendall(b'\\x05\\x01\\x00'); assert s.recv(2) == b'\\x05\\x00'\n\
         \x20   name = b'allowed.test'\n\
         \x20   s.sendall(b'\\x05\\x01\\x00\\x03' + bytes([len(name)]) + name + ({port}).to_bytes(2, 'big'))\n\
         \x20   r = b''\n\
         \x20   while len(r) < 10: r += s.recv(10 - len(r))\n\
         \x20   assert r[1] == 0, r\n\
         \x20   return s\n\
         s = tunnel_socks() if sys.argv[1] == 'socks' else tunnel_http()\n\
         s.sendall(b'u' * {take})\n\
         got = 0\n\
         while True:\n\
         \x20   d = s.recv(65536)\n\
         \x20   if not d: break\n\
         \x20   got += len(d)\n\
         print(got)"
    );
    for (round, via) in ["http", "socks"].into_iter().enumerate() {
        let out = sb.run(ExecRequest::argv(["python3", "-c", &script, via])).await;
        assert_eq!(out.stdout.trim(), give.to_string(), "{out:?}");
        let stats = sb.backend.network_stats(&sb.id).unwrap();
        let n = round as u64 + 1;
        assert_eq!((stats.bytes_in, stats.bytes_out), (n * give as u64, n * take as u64), "{via}");
    }
    let m = sb.backend.metrics(&sb.id).await.unwrap();
    assert_eq!((m.network_in_bytes, m.network_out_bytes), (2 * give as u64, 2 * take as u64));
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn live_policy_changes_apply_to_new_and_open_connections() {
    if common::not_root() {
        return;
    }
    let w = World::new(&[]).await;
    let echo = echo_server().await;
    let p = w.http;
    let sb = w.sandbox(w.network(&["a.test"], &[])).await;
    assert_eq!(curl(&sb, &format!("http://a.test:{p}/hello")).await, "200  hello");
    assert!(curl(&sb, &format!("http://b.test:{p}/hello")).await.starts_with("403 not-allowed-domain"));

    // A tunnel to a.test stays open across the change, then finds itself cut.
    let script = format!(
        "import os, socket, time\n\
         s = socket.create_connection(('127.0.0.1', 3128))\n\
         s.sendall(b'CONNECT a.test:{echo} HTTP/1.1\\r\\n\\r\\n')\n\
         head = b''\n\
         while not head.endswith(b'\\r\\n\\r\\n'): head += s.recv(1)\n\
         s.sendall(b'ping'); assert s.recv(4) == b'ping'\n\
         print('open', flush=True)\n\
         while not os.path.exists('/tmp/go'): time.sleep(0.02)\n\
         try:\n\
         \x20   s.sendall(b'ping'); print('after', s.recv(4), flush=True)\n\
         except OSError as e:\n\
         \x20   print('after', e.strerror, flush=True)"
    );
    let mut stream = sb
        .backend
        .exec(
            &sb.id,
            ExecRequest { timeout: Some(Duration::from_secs(60)), ..ExecRequest::argv(["python3", "-c", &script]) },
        )
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("open") {
        match stream.next().await {
            Some(ExecEvent::Stdout(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("the tunnel script ended early: {other:?} {seen}"),
        }
    }
    sb.backend.update_network(&sb.id, w.network(&["b.test"], &[])).await.unwrap();
    assert_eq!(curl(&sb, &format!("http://b.test:{p}/hello")).await, "200  hello");
    assert!(curl(&sb, &format!("http://a.test:{p}/hello")).await.starts_with("403 not-allowed-domain"));
    sb.backend.write_file(&sb.id, "/tmp/go", b"go".to_vec()).await.unwrap();
    let rest = stream.collect(4096).await;
    let after = format!("{seen}{}", rest.stdout);
    assert!(after.contains("after b''") || after.contains("after Connection reset"), "{after} {}", rest.stderr);

    // Switching networking off stops the proxy: its variables are gone and nothing answers on its port.
    sb.backend.update_network(&sb.id, NetworkConfig::default()).await.unwrap();
    let off =
        sb.sh(&format!("echo \"[$HTTP_PROXY]\"; curl -s -m 10 -x http://127.0.0.1:3128 http://b.test:{p}/hello")).await;
    assert_eq!(off.stdout.lines().next(), Some("[]"));
    assert_eq!(off.exit_code, 7, "connection refused: {off:?}");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn networking_can_be_turned_on_for_a_running_sandbox() {
    if common::not_root() {
        return;
    }
    let w = World::new(&[]).await;
    let sb = Sandbox::new().await;
    let off = sb.sh(&format!("echo \"[$HTTPS_PROXY]\"; curl -s -m 10 http://allowed.test:{}/hello", w.http)).await;
    assert_eq!(off.stdout.trim(), "[]");
    assert_ne!(off.exit_code, 0);
    sb.backend.update_network(&sb.id, w.network(&["allowed.test"], &[])).await.unwrap();
    let on = sb.sh("echo $HTTP_PROXY $ALL_PROXY $NO_PROXY $npm_config_https_proxy").await;
    assert_eq!(
        on.stdout.trim(),
        "http://127.0.0.1:3128 socks5h://127.0.0.1:1080 localhost,127.0.0.1,::1 http://127.0.0.1:3128"
    );
    assert_eq!(curl(&sb, &format!("http://allowed.test:{}/hello", w.http)).await, "200  hello");
    let bad = NetworkConfig { allowed_domains: vec!["not a domain".into()], ..w.network(&[], &[]) };
    let err = sb.backend.update_network(&sb.id, bad).await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    sb.destroy().await;
}

/// Builds a pure-Python wheel of `name` 1.0 whose module holds `VALUE = 42`; returns its file name and bytes.
fn build_wheel(dir: &std::path::Path, name: &str) -> (String, Vec<u8>) {
    let file = format!("{name}-1.0-py3-none-any.whl");
    let path = dir.join(&file);
    let script = r#"
import base64, hashlib, sys, zipfile
name, out = sys.argv[1], sys.argv[2]
dist = f"{name}-1.0.dist-info"
files = {
    f"{name}/__init__.py": b"VALUE = 42\n",
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 1.0\n".encode(),
    f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: agentbox-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for n, d in files.items():
    h = base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode()
    record += f"{n},sha256={h},{len(d)}\n"
record += f"{dist}/RECORD,,\n"
with zipfile.ZipFile(out, "w") as z:
    for n, d in files.items():
        z.writestr(n, d)
    z.writestr(f"{dist}/RECORD", record)
"#;
    let status = std::process::Command::new("python3").args(["-c", script, name]).arg(&path).status().unwrap();
    assert!(status.success());
    (file, std::fs::read(&path).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn pip_installs_from_a_loopback_index_through_the_proxy() {
    if common::not_root() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("agentbox-wheels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (good_file, good) = build_wheel(&dir, "agentbox_demo");
    let (bad_file, bad) = build_wheel(&dir, "agentbox_other");
    let _ = std::fs::remove_dir_all(&dir);
    // A PEP 503 simple index on mirror.test; agentbox-other's file lives on elsewhere.test.
    let http_port = Arc::new(std::sync::OnceLock::<u16>::new());
    let port_for_routes = http_port.clone();
    let routes: Routes = Arc::new(move |path: &str| {
        let port = port_for_routes.get().copied().unwrap_or(0);
        let link = |host: &str, file: &str| {
            format!("<html><body><a href=\"http://{host}:{port}/files/{file}\">{file}</a></body></html>").into_bytes()
        };
        match path {
            "/simple/agentbox-demo/" => Some(link("mirror.test", &good_file)),
            "/simple/agentbox-other/" => Some(link("elsewhere.test", &bad_file)),
            p if p == format!("/files/{good_file}") => Some(good.clone()),
            p if p == format!("/files/{bad_file}") => Some(bad.clone()),
            _ => None,
        }
    });
    let port = http_server(routes).await;
    http_port.set(port).unwrap();
    let w = World::new(&[("mirror.test", &["127.0.0.1"]), ("elsewhere.test", &["127.0.0.1"])]).await;
    let mut config = SandboxConfig { network: w.network(&["allowed.test"], &[]), ..SandboxConfig::default() };
    config.environment_variables.insert("PIP_INDEX_URL".into(), format!("http://mirror.test:{port}/simple"));
    config.environment_variables.insert("PIP_TRUSTED_HOST".into(), "mirror.test elsewhere.test".into());
    let sb = Sandbox::with(config).await;

    // The index host is reachable for the install step only.
    assert!(curl(&sb, &format!("http://mirror.test:{port}/simple/agentbox-demo/")).await.starts_with("403"));
    sb.backend.install_packages(&sb.id, vec!["pip:agentbox-demo==1.0".parse().unwrap()]).await.unwrap();
    assert_eq!(
        sb.py("import agentbox_demo; print(agentbox_demo.VALUE, agentbox_demo.__file__)").await,
        "42 /home/user/.local/lib/python3.11/site-packages/agentbox_demo/__init__.py"
    );
    assert!(curl(&sb, &format!("http://mirror.test:{port}/simple/agentbox-demo/")).await.starts_with("403"));

    // A file on a host that is neither the index nor allowed fails with the proxy's reason.
    let err = sb.backend.install_packages(&sb.id, vec!["pip:agentbox-other".parse().unwrap()]).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("pip install failed") && msg.contains("403"), "{msg}");
    assert!(msg.contains("elsewhere.test"), "{msg}");
    // The sandbox is still usable, and apt is refused with its reason.
    assert_eq!(sb.sh("echo still here").await.stdout, "still here\n");
    let apt = sb.backend.install_packages(&sb.id, vec!["apt:jq".parse().unwrap()]).await.unwrap_err();
    assert!(matches!(&apt, Error::Unsupported(m) if m.contains("apt:jq")), "{apt}");
    sb.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn packages_install_even_with_networking_off() {
    if common::not_root() {
        return;
    }
    let (file, wheel) = {
        let dir = std::env::temp_dir().join(format!("agentbox-wheels-off-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let built = build_wheel(&dir, "agentbox_offline");
        let _ = std::fs::remove_dir_all(&dir);
        built
    };
    let index = format!("<a href=\"/files/{file}\">{file}</a>").into_bytes();
    let file_path = format!("/files/{file}");
    let routes: Routes = Arc::new(move |path: &str| match path {
        "/simple/agentbox-offline/" => Some(index.clone()),
        p if p == file_path => Some(wheel.clone()),
        _ => None,
    });
    let port = http_server(routes).await;
    let w = World::new(&[("mirror.test", &["127.0.0.1"])]).await;
    let mut network = w.network(&[], &[]);
    network.enabled = false;
    let mut config = SandboxConfig { network, ..SandboxConfig::default() };
    config.environment_variables.insert("PIP_INDEX_URL".into(), format!("http://mirror.test:{port}/simple"));
    config.environment_variables.insert("PIP_TRUSTED_HOST".into(), "mirror.test".into());
    let sb = Sandbox::with(config).await;
    sb.backend.install_packages(&sb.id, vec!["agentbox-offline".parse().unwrap()]).await.unwrap();
    assert_eq!(sb.py("import agentbox_offline; print(agentbox_offline.VALUE)").await, "42");
    // Afterwards the sandbox is back to loopback only.
    let after = sb.sh("curl -s -m 10 -x http://127.0.0.1:3128 http://mirror.test/; echo \" $?\"").await;
    assert_eq!(after.stdout.trim(), "7");
    sb.destroy().await;
}

/// Whether a network namespace (held open by `ns`) still has TCP sockets.
fn tcp_sockets_in(ns: &std::fs::File) -> usize {
    use std::os::fd::AsRawFd;
    let fd = ns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this scoped thread only, with a network namespace fd.
            assert_eq!(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }, 0);
            let tcp = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap();
            tcp.lines().skip(1).count()
        })
        .join()
        .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_closes_the_proxy_sockets() {
    if common::not_root() {
        return;
    }
    let w = World::new(&[]).await;
    let sb = w.sandbox(w.network(&[], &[])).await;
    let pid = sb.backend.init_pid(&sb.id).unwrap();
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(tcp_sockets_in(&ns), 2, "the two proxy listeners");
    sb.destroy().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tcp_sockets_in(&ns) > 0 {
        assert!(Instant::now() < deadline, "proxy sockets outlived the sandbox");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
