//! Test helpers: a real registry on loopback (Debian's `docker-registry`, the CNCF distribution registry),
//! layers crafted with the tar crate (hostile ones included), and images pushed with the registry client.

#![allow(dead_code, clippy::unwrap_used, clippy::needless_pass_by_value, missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentbox_image::Digest;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

/// Fails (never skips) when a program the tests need is missing.
pub fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    assert!(found, "`{program}` is missing: install the Debian package `{package}` (scripts/test-all.sh does)");
}

/// A `docker-registry serve` on 127.0.0.1 and a free port, killed by its PID when dropped.
pub struct Registry {
    pub addr: String,
    pub root: PathBuf,
    /// What the push helpers authenticate with.
    pub auth: RegistryAuth,
    config: PathBuf,
    child: Child,
    token_server: Option<TokenServer>,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A registry doing Docker's token authentication (a bearer token from a token service, for a user name
    /// and password) with a token service of the test's own that signs tokens with `openssl`.
    pub fn start_with_token_auth(user: &str, password: &str) -> Self {
        Self::start_with(Some((user.to_owned(), password.to_owned())))
    }

    fn start_with(token_auth: Option<(String, String)>) -> Self {
        require("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let mut auth_yaml = String::new();
        let mut token_server = None;
        let mut auth = RegistryAuth::Anonymous;
        if let Some((user, password)) = token_auth {
            let server = TokenServer::start(dir.path(), &user, &password);
            auth_yaml = format!(
                "auth:\n  token:\n    realm: http://{}/token\n    service: agentbox-test\n    issuer: agentbox-test-issuer\n    rootcertbundle: {}\n",
                server.addr,
                dir.path().join("cert.pem").display()
            );
            token_server = Some(server);
            auth = RegistryAuth::Basic(user, password);
        }
        let root = dir.path().join("storage");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
                root.display()
            ),
        )
        .unwrap();
        let child = serve(&config);
        let registry = Self { addr, root, auth, config, child, token_server, _dir: dir };
        registry.wait_ready();
        registry
    }

    /// Stops the registry (its storage stays).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address and storage.
    pub fn restart(&mut self) {
        self.child = serve(&self.config);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not start on {}", self.addr);
    }

    /// Where the registry keeps a blob's bytes (to corrupt or hide it).
    pub fn blob_data(&self, d: &Digest) -> PathBuf {
        self.root.join("docker/registry/v2/blobs/sha256").join(&d.hex()[..2]).join(d.hex()).join("data")
    }

    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    pub fn client(&self) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.addr.clone()]),
            ..ClientConfig::default()
        })
    }
}

fn serve(config: &Path) -> Child {
    Command::new("docker-registry")
        .arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.token_server.take() {
            t.stop();
        }
    }
}

/// Docker's token service (the registry's `auth.token` realm): for the right user name and password (basic
/// auth), a JWT signed with RS256 by a key whose self-signed certificate the registry trusts, granting the
/// scope asked for.
struct TokenServer {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenServer {
    fn start(dir: &Path, user: &str, password: &str) -> Self {
        require("openssl", "openssl");
        let key = dir.join("key.pem");
        let cert = dir.join("cert.pem");
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=agentbox-test-token",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        let der = Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&cert).output().unwrap().stdout;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let expected = {
            use base64::Engine as _;
            format!("basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
                .to_lowercase()
        };
        let (stop2, user) = (stop.clone(), user.to_owned());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req).to_string();
                let authorized = req
                    .lines()
                    .any(|l| l.to_lowercase().starts_with("authorization:") && l.to_lowercase().contains(&expected));
                let response = if authorized {
                    let scope = req
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .split(['?', '&'])
                        .find_map(|kv| kv.strip_prefix("scope="))
                        .unwrap_or("");
                    let scope = scope.replace("%3A", ":").replace("%2C", ",").replace("%2F", "/");
                    let mut parts = scope.splitn(3, ':');
                    let (_, name, actions) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let token = sign(&key, &der, &user, name, actions);
                    let body = format!("{{\"token\":\"{token}\",\"access_token\":\"{token}\",\"expires_in\":3600}}");
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                };
                let _ = conn.write_all(response.as_bytes());
            }
        });
        Self { addr, stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
        let _ = self.thread.join();
    }
}

fn sign(key: &Path, cert_der: &[u8], user: &str, name: &str, actions: &str) -> String {
    use base64::Engine as _;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)]});
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    let claims = serde_json::json!({
        "iss": "agentbox-test-issuer", "sub": user, "aud": "agentbox-test",
        "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": format!("{now}-{name}"),
        "access": [{"type": "repository", "name": name, "actions": actions}],
    });
    let input =
        format!("{}.{}", b64url(&serde_json::to_vec(&header).unwrap()), b64url(&serde_json::to_vec(&claims).unwrap()));
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let sig = child.wait_with_output().unwrap().stdout;
    format!("{input}.{}", b64url(&sig))
}

/// A tar entry, written header by header so names can be anything (`..`, absolute, long).
pub enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Block(&'a str, u32, u32),
    Fifo(&'a str),
}

pub fn tar(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, link, kind, mode, data): (&str, Option<&str>, tar::EntryType, u32, &[u8]) = match e {
            E::File(n, d, m) => (n, None, tar::EntryType::Regular, *m, d),
            E::Dir(n, m) => (n, None, tar::EntryType::Directory, *m, b""),
            E::Symlink(n, t) => (n, Some(t), tar::EntryType::Symlink, 0o777, b""),
            E::Hard(n, t) => (n, Some(t), tar::EntryType::Link, 0o644, b""),
            E::Char(n, ma, mi) | E::Block(n, ma, mi) => {
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
                let kind = if matches!(e, E::Char(..)) { tar::EntryType::Char } else { tar::EntryType::Block };
                (n, None, kind, 0o666, b"")
            }
            E::Fifo(n) => (n, None, tar::EntryType::Fifo, 0o644, b""),
        };
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

/// A layer blob: compressed bytes, media type, diff_id.
#[derive(Clone)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: String,
    pub diff_id: Digest,
}

impl Layer {
    pub fn new(tar: &[u8], comp: Comp) -> Self {
        let diff_id = Digest::of(tar);
        let (blob, media_type) = match comp {
            Comp::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
            Comp::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).unwrap();
                (e.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip")
            }
            Comp::Zstd => (zstd::encode_all(tar, 3).unwrap(), "application/vnd.oci.image.layer.v1.tar+zstd"),
        };
        Self { blob, media_type: media_type.into(), diff_id }
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.blob)
    }

    /// Writes the blob to a file (for feeding the unpacker directly).
    pub fn write_to(&self, dir: &Path) -> PathBuf {
        let p = dir.join(self.digest().hex());
        std::fs::write(&p, &self.blob).unwrap();
        p
    }
}

/// An image config with these layers and runtime settings (`extra` is merged into `config`).
pub fn config_json(arch: &str, layers: &[Layer], extra: serde_json::Value) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": extra,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": Digest::of(bytes).to_string(), "size": bytes.len()})
}

async fn push_blob(client: &Client, r: &Reference, bytes: &[u8]) {
    client.push_blob(r, bytes.to_vec(), &Digest::of(bytes).to_string()).await.unwrap();
}

/// Pushes an image (layers, config, manifest) as `name:tag`; returns the manifest's bytes.
pub async fn push_image(reg: &Registry, name_tag: &str, layers: &[Layer], config: &[u8]) -> Vec<u8> {
    let client = reg.client();
    let r: Reference = reg.reference(name_tag).parse().unwrap();
    client.auth(&r, &reg.auth, RegistryOperation::Push).await.unwrap();
    for l in layers {
        push_blob(&client, &r, &l.blob).await;
    }
    push_blob(&client, &r, config).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| descriptor(&l.media_type, &l.blob)).collect::<Vec<_>>(),
    }))
    .unwrap();
    client
        .push_manifest_raw(
            &r,
            manifest.clone(),
            http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        )
        .await
        .unwrap();
    manifest
}

/// Pushes an index of already pushed manifests (`(manifest bytes, architecture)`) as `name:tag`.
pub async fn push_index(reg: &Registry, name_tag: &str, manifests: &[(&[u8], &str)]) -> Vec<u8> {
    let client = reg.client();
    let r: Reference = reg.reference(name_tag).parse().unwrap();
    client.auth(&r, &reg.auth, RegistryOperation::Push).await.unwrap();
    let entries: Vec<serde_json::Value> = manifests
        .iter()
        .map(|(m, arch)| {
            let mut d = descriptor("application/vnd.oci.image.manifest.v1+json", m);
            d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
            d
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    client
        .push_manifest_raw(&r, index.clone(), http::HeaderValue::from_static("application/vnd.oci.image.index.v1+json"))
        .await
        .unwrap();
    index
}

/// The host's architecture in OCI's words.
pub fn host_arch() -> String {
    agentbox_image::Platform::host().architecture
}

/// The directory of the cargo target the tests were built in (for cached fixtures).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/debug/deps/<test binary>
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// A TCP proxy in front of a registry that cuts the first `cuts` blob downloads after `cut_after` bytes of
/// response, as a network failure would. Every request gets a connection of its own (`Connection: close`).
pub struct CuttingProxy {
    pub addr: String,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CuttingProxy {
    pub fn start(upstream: &str, cut_after: usize, cuts: usize) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let cuts = std::sync::Arc::new(AtomicUsize::new(cuts));
        let (stop2, upstream, cuts_left) = (stop.clone(), upstream.to_owned(), cuts.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut client) = conn else { continue };
                let (upstream, cuts) = (upstream.clone(), cuts.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let mut lines: Vec<&str> = text
                        .split("\r\n")
                        .filter(|l| !l.is_empty() && !l.to_lowercase().starts_with("connection:"))
                        .collect();
                    lines.push("Connection: close");
                    let request = format!("{}\r\n\r\n", lines.join("\r\n"));
                    let cut = text.lines().next().is_some_and(|l| l.contains("/blobs/"))
                        && cuts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                    let Ok(mut up) = TcpStream::connect(&upstream) else { return };
                    if up.write_all(request.as_bytes()).is_err() {
                        return;
                    }
                    let mut sent = 0usize;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match up.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let n = if cut { n.min(cut_after - sent) } else { n };
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                        if cut && sent >= cut_after {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self { addr, cuts: cuts_left, stop, thread: Some(thread) }
    }

    /// Cuts not made yet.
    pub fn cuts_left(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The tag of the Debian fixture.
pub const DEBIAN_TAG: &str = "bookworm";

pub fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The OCI layout of a minimal Debian bookworm with python3 (`mmdebstrap` through the Debian mirror, packed
/// with `umoci`), built once and cached under `<target>/image-fixtures/` for every test that needs it.
pub fn debian_fixture() -> PathBuf {
    let dir = target_dir().join("image-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let layout = dir.join("debian-python");
    let done = dir.join("debian-python.complete");
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    if done.exists() {
        return layout;
    }
    for (program, package) in [("mmdebstrap", "mmdebstrap"), ("umoci", "umoci"), ("skopeo", "skopeo")] {
        require(program, package);
    }
    let work = tempfile::tempdir_in(&dir).unwrap();
    let rootfs = work.path().join("rootfs.tar");
    run_ok(
        Command::new("mmdebstrap")
            .args(["--quiet", "--variant=minbase", "--include=python3-minimal", DEBIAN_TAG])
            .arg(&rootfs),
    );
    let staging = work.path().join("layout");
    let image = format!("{}:{DEBIAN_TAG}", staging.display());
    run_ok(Command::new("umoci").args(["init", "--layout"]).arg(&staging));
    run_ok(Command::new("umoci").args(["new", "--image", &image]));
    run_ok(Command::new("umoci").args(["raw", "add-layer", "--image", &image]).arg(&rootfs));
    run_ok(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.workingdir",
        "/root",
        "--config.cmd",
        "python3",
    ]));
    if layout.exists() {
        std::fs::remove_dir_all(&layout).unwrap();
    }
    std::fs::rename(&staging, &layout).unwrap();
    std::fs::write(&done, b"").unwrap();
    layout
}

/// The Debian fixture pushed to a registry started for the caller: the registry (it stops when dropped) and the
/// fixture's reference in it.
pub fn debian_in_registry() -> (Registry, String) {
    let layout = debian_fixture();
    let registry = Registry::start();
    let reference = push_debian(&registry, &layout);
    (registry, reference)
}

/// Pushes the Debian fixture to `reg` with `skopeo`; returns its reference.
pub fn push_debian(reg: &Registry, layout: &Path) -> String {
    let dest = format!("{}/debian-python:{DEBIAN_TAG}", reg.addr);
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{DEBIAN_TAG}", layout.display()))
            .arg(format!("docker://{dest}")),
    );
    dest
}
