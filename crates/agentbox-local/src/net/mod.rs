//! Network egress for local sandboxes: a filtering proxy the sandbox can only reach through its loopback.
//!
//! A sandbox's network namespace has nothing but loopback: no interface leads
//! out, so direct connections to IP addresses, UDP, raw DNS and IPv6 fail with
//! "network unreachable" whatever a program does. When networking is enabled,
//! the host binds two listening sockets *inside* that namespace (see
//! [`crate::netns::NetNs::listen`]) and serves them from host tasks:
//!
//! - `127.0.0.1:3128`: an HTTP proxy (CONNECT tunnels, and plain HTTP requests in absolute form);
//! - `127.0.0.1:1080`: a SOCKS5 proxy (CONNECT only, names resolved on the proxy side).
//!
//! The proxy checks each destination against the sandbox's [`Policy`],
//! resolves names itself (`network.dns_servers`, else the host's resolver),
//! checks every address, and connects from the host to an address that passed
//! (never re-resolving). Bytes to and from destinations are counted and
//! rate-limited per sandbox ([`meter`]). Programs find the proxy through the
//! environment ([`proxy_env`]). Policy changes apply at once, also to open
//! connections, which are cut when the new rules refuse them.
//!
//! CONNECT tunnels are opaque, except to hosts that carry a secret or are
//! inspected: for those the proxy terminates TLS with a certificate from the
//! sandbox's own CA ([`tls`]), checks each request against method and path
//! rules, and adds the sandbox's secrets ([`secrets`], [`inspect`]). Every
//! connection, and every request on an inspected one, is recorded in the
//! sandbox's egress log ([`audit`]).

pub mod audit;
mod http;
mod inspect;
pub mod install;
pub mod meter;
pub mod policy;
pub mod resolve;
pub mod secrets;
mod socks;
pub mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentbox_config::NetworkConfig;
use agentbox_core::Error;
use agentbox_core::LockExt;
use agentbox_core::budget::{self, Exhausted, Slot, Tenant};
use agentbox_core::egress::{EgressDecision, EgressPage, EgressQuery, SecretStore};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use self::audit::{AuditLog, Counted, Pending};
use self::meter::{Meter, Metered};
use self::policy::{Host, Policy, Rule};
use self::resolve::Resolver;
use self::secrets::{Placeholders, SecretRules};
use self::tls::SandboxCa;
use crate::netns::NetNs;

/// Port of the HTTP proxy inside every sandbox with networking.
pub const HTTP_PROXY_PORT: u16 = 3128;
/// Port of the SOCKS5 proxy inside every sandbox with networking.
pub const SOCKS_PROXY_PORT: u16 = 1080;
/// Time limit of one connection attempt to a destination address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The sandbox's /etc/resolv.conf, the same whether networking is on or off.
pub const RESOLV_CONF: &str = "\
# No DNS server is reachable from this sandbox, and no route leads out of it: lookups here fail at once.
# With networking enabled, programs reach the network through the egress proxy (HTTP_PROXY and
# HTTPS_PROXY: http://127.0.0.1:3128, ALL_PROXY: socks5h://127.0.0.1:1080), which resolves names
# itself (network.dns_servers, else the host's resolver) and checks every name and address.
nameserver 127.0.0.1
";

/// Where the host writes a sandbox's trust bundle (the system roots plus the sandbox's CA), for
/// the variables of [`ca_env`].
pub const CA_BUNDLE_PATH: &str = "/tmp/.agentbox/ca-certificates.crt";

/// Host files tried, in order, for the system roots that go into a sandbox's trust bundle.
const SYSTEM_BUNDLES: [&str; 3] =
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// The variables that make common clients trust the bundle at [`CA_BUNDLE_PATH`]: OpenSSL
/// (Python's ssl and urllib, curl, git), requests, pip and Node.js.
#[must_use]
pub fn ca_env() -> BTreeMap<String, String> {
    ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO"]
        .into_iter()
        .map(|k| (k.to_owned(), CA_BUNDLE_PATH.to_owned()))
        .collect()
}

/// What every sandbox's proxy shares: the server's secrets and the TLS set-up for destinations.
#[derive(Clone)]
pub struct EgressContext {
    /// The server's secrets, read at each request.
    pub secrets: SecretStore,
    /// The extra roots inspected destinations are verified with, besides the host's.
    extra_roots: Arc<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// How inspected destinations are verified, made at the first inspected connection.
    upstream_tls: Arc<std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, Arc<tls::TlsError>>>>,
}

impl std::fmt::Debug for EgressContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressContext").field("secrets", &self.secrets).finish_non_exhaustive()
    }
}

impl EgressContext {
    /// A context trusting the host's roots plus the PEM files in `extra_roots` (read now; the host's are read
    /// at the first inspected connection).
    ///
    /// # Errors
    /// When an extra root can't be used.
    pub fn new(secrets: SecretStore, extra_roots: &[PathBuf]) -> Result<Self, tls::TlsError> {
        let extra_roots = Arc::new(tls::read_extra_roots(extra_roots)?);
        Ok(Self { secrets, extra_roots, upstream_tls: Arc::default() })
    }

    /// The client configuration inspected destinations are verified with (made once, on first use; a note
    /// about the host's roots is logged then).
    ///
    /// # Errors
    /// rustls refusing the configuration (the same error at every call once it failed).
    pub fn upstream_tls(&self) -> Result<Arc<rustls::ClientConfig>, Arc<tls::TlsError>> {
        self.upstream_tls
            .get_or_init(|| match tls::upstream_config(&self.extra_roots) {
                Ok((config, note)) => {
                    if let Some(note) = note {
                        tracing::warn!(note = %note, "egress TLS");
                    }
                    Ok(config)
                }
                Err(e) => Err(Arc::new(e)),
            })
            .clone()
    }
}

/// Traffic and refusals of one sandbox since it was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStats {
    /// Bytes received from destinations.
    pub bytes_in: u64,
    /// Bytes sent to destinations.
    pub bytes_out: u64,
    /// Connections made to destinations.
    pub connections: u64,
    /// Connections refused.
    pub refused: u64,
    /// Refused connections by rule (`denied-domain`, `loopback`, ...).
    pub refused_by_rule: BTreeMap<String, u64>,
}

/// The environment that points programs at the proxy listening on `http_port` (and `socks_port`).
#[must_use]
pub fn proxy_env(http_port: u16, socks_port: Option<u16>) -> BTreeMap<String, String> {
    let http = format!("http://127.0.0.1:{http_port}");
    let mut env = BTreeMap::new();
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        env.insert(k.to_owned(), http.clone());
    }
    let all = socks_port.map_or_else(|| http.clone(), |p| format!("socks5h://127.0.0.1:{p}"));
    env.insert("ALL_PROXY".into(), all.clone());
    env.insert("all_proxy".into(), all);
    let none = "localhost,127.0.0.1,::1".to_owned();
    env.insert("NO_PROXY".into(), none.clone());
    env.insert("no_proxy".into(), none);
    env.insert("npm_config_proxy".into(), http.clone());
    env.insert("npm_config_https_proxy".into(), http);
    // Node.js 24 and newer route fetch() and http(s) through HTTP(S)_PROXY with this.
    env.insert("NODE_USE_ENV_PROXY".into(), "1".into());
    env
}

/// Why a destination could not be reached.
#[derive(Debug)]
enum OpenError {
    /// The policy refused it (already logged and counted).
    Refused(Rule),
    /// Every address failed to connect.
    Failed(String),
}

/// What one proxy listener enforces: a policy, where names are looked up, and the secrets it adds.
#[derive(Debug)]
struct Rules {
    policy: Policy,
    resolver: Resolver,
    secrets: SecretRules,
}

impl Rules {
    fn closed() -> Arc<Self> {
        Arc::new(Self { policy: Policy::closed(), resolver: Resolver::Host, secrets: SecretRules::default() })
    }
}

/// State shared by a sandbox's listeners and connections.
struct Shared {
    sandbox: String,
    meter: Arc<Meter>,
    connections: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// The sandbox's share of the server's connection budget: one slot per connection from the
    /// sandbox and one per connection to a destination, held until it closes.
    slots: Arc<Tenant>,
    host_addrs: Mutex<(Option<Instant>, Arc<Vec<IpAddr>>)>,
    audit: AuditLog,
    placeholders: Placeholders,
    /// The sandbox's CA: its private key lives here and nowhere else. Made when networking is first turned on
    /// (its key generation seeds the process's random generator, tens of milliseconds the first time).
    ca: std::sync::OnceLock<Result<SandboxCa, Arc<tls::TlsError>>>,
    ctx: EgressContext,
}

impl Shared {
    /// The sandbox's CA, made on first use.
    fn ca(&self) -> Result<&SandboxCa, Arc<tls::TlsError>> {
        self.ca.get_or_init(|| SandboxCa::generate(&self.sandbox).map_err(Arc::new)).as_ref().map_err(Clone::clone)
    }

    /// Counts and logs a refusal (rate-limited); the caller records it in the egress log.
    fn count_refusal(&self, via: &str, host: &str, port: u16, rule: &Rule) {
        *self.refused.lock_unpoisoned().entry(rule.name()).or_insert(0) += 1;
        if budget::log_limiter().allow("egress refused", &format!("sandbox {}", self.sandbox)) {
            let name = rule.name();
            tracing::info!(sandbox = %self.sandbox, host, port, via, rule = name, reason = %rule, "egress refused");
        }
    }

    /// Counts, logs and records a refused connection.
    fn refuse(&self, via: &str, host: &str, port: u16, rule: &Rule) {
        self.count_refusal(via, host, port, rule);
        let mut pending = Pending::new("connection", via, host, port);
        let r = pending.record();
        r.decision = EgressDecision::Refused;
        r.rule = Some(rule.name().to_owned());
        if let Rule::SecretWrongHost(name) = rule {
            r.secrets = vec![name.clone()];
        }
        self.audit.push(pending.finish(None));
    }

    /// Takes a connection slot from the sandbox's share of the budget.
    fn slot(&self) -> Result<Slot, Rule> {
        self.slots.try_acquire().map_err(|e| match e {
            Exhausted::Sandbox => Rule::ConnectionLimit,
            Exhausted::Server => Rule::ServerConnectionLimit,
        })
    }

    fn host_addrs(&self) -> Arc<Vec<IpAddr>> {
        let mut cache = self.host_addrs.lock_unpoisoned();
        if cache.0.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            *cache = (Some(Instant::now()), Arc::new(host_addresses()));
        }
        cache.1.clone()
    }
}

/// The addresses of the host's interfaces.
fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: the family is AF_INET, so this is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: the family is AF_INET6, so this is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// A destination connection that passed the policy.
struct Upstream {
    stream: Counted<Metered<TcpStream>>,
    target: Target,
    slot: Slot,
}

/// Where a connection goes, for re-checks when the policy changes.
#[derive(Debug, Clone)]
struct Target {
    host: Host,
    ip: IpAddr,
    port: u16,
    via: &'static str,
}

/// One listener's view: the shared state and the rules it enforces.
#[derive(Clone)]
struct Proxy {
    shared: Arc<Shared>,
    rules: watch::Receiver<Arc<Rules>>,
}

impl Proxy {
    fn current(&self) -> Arc<Rules> {
        self.rules.borrow().clone()
    }

    /// Checks and connects to `host:port`; refusals are logged and counted here.
    async fn open(&self, host: &str, port: u16, via: &'static str) -> Result<Upstream, OpenError> {
        let refuse = |rule: Rule| {
            self.shared.refuse(via, host, port, &rule);
            OpenError::Refused(rule)
        };
        let rules = self.current();
        let parsed = Host::parse(host).map_err(refuse)?;
        rules.policy.check_host(&parsed, port).map_err(refuse)?;
        let ips = match &parsed {
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => {
                rules.resolver.lookup(name).await.map_err(|e| refuse(Rule::Unresolved(e.to_string())))?
            }
        };
        let host_addrs = self.shared.host_addrs();
        for ip in &ips {
            rules.policy.check_ip(*ip, &host_addrs).map_err(|rule| {
                self.shared.refuse(via, &format!("{host} ({ip})"), port, &rule);
                OpenError::Refused(rule)
            })?;
        }
        let slot = self.shared.slot().map_err(refuse)?;
        let mut last = String::new();
        for ip in ips {
            let addr = SocketAddr::new(policy::canonical(ip), port);
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    self.shared.connections.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(sandbox = %self.shared.sandbox, host, port, %ip, via, "egress connected");
                    return Ok(Upstream {
                        stream: Counted::new(Metered::new(stream, self.shared.meter.clone())),
                        target: Target { host: parsed, ip, port, via },
                        slot,
                    });
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer within {CONNECT_TIMEOUT:?}"),
            }
        }
        Err(OpenError::Failed(format!("cannot connect to {host}:{port}: {last}")))
    }

    /// Runs `work` (a connection to `target`) until it ends, or until the rules change to refuse it.
    async fn guard<F: Future>(&self, target: &Target, work: F) -> Option<F::Output> {
        let mut rules = self.rules.clone();
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                changed = rules.changed() => {
                    let Ok(()) = changed else { return None };
                    let now = rules.borrow_and_update().clone();
                    let verdict = now
                        .policy
                        .check_host(&target.host, target.port)
                        .and_then(|()| now.policy.check_ip(target.ip, &self.shared.host_addrs()));
                    if let Err(rule) = verdict {
                        let shown = format!("{} ({})", target.host, target.ip);
                        self.shared.refuse(target.via, &shown, target.port, &rule);
                        return None;
                    }
                }
            }
        }
    }

    /// Carries a client connection to a destination that passed: an opaque tunnel, or an inspected
    /// connection when the destination has secrets or request rules. Records it when it ends.
    async fn carry<C>(&self, mut client: C, up: Upstream)
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let target = up.target.clone();
        let counts = up.stream.counts();
        let mut pending = Pending::new("connection", target.via, &target.host.to_string(), target.port);
        pending.record().address = Some(target.ip.to_string());
        if Shared::inspects(&self.current(), &target) {
            if let Err(rule) = inspect::serve(self, client, up).await {
                self.shared.count_refusal(target.via, &target.host.to_string(), target.port, &rule);
                let r = pending.record();
                r.decision = EgressDecision::Refused;
                r.rule = Some(rule.name().to_owned());
            }
        } else {
            let Upstream { mut stream, slot, .. } = up;
            let buffer = budget::proxy_pool().limits().copy_buffer_bytes;
            let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut stream, buffer, buffer);
            self.guard(&target, copy).await;
            drop(slot);
        }
        self.shared.audit.push(pending.finish(Some(&counts)));
    }

    /// Runs a client session until it ends, or until networking is switched off.
    async fn session<F: Future>(&self, work: F) {
        let mut rules = self.rules.clone();
        tokio::pin!(work);
        loop {
            tokio::select! {
                _ = &mut work => return,
                changed = rules.changed() => {
                    if changed.is_err() || !rules.borrow_and_update().policy.enabled {
                        return;
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Protocol {
    Http,
    Socks,
}

async fn accept_loop(listener: tokio::net::TcpListener, proxy: Proxy, protocol: Protocol) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let slot = match proxy.shared.slot() {
                        Ok(slot) => Arc::new(slot),
                        Err(rule) => {
                            proxy.shared.refuse("accept", "-", 0, &rule);
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let p = proxy.clone();
                    // The client's slot stays taken while its session runs and, for a CONNECT
                    // tunnel, until the tunnel closes (the tunnel holds a clone).
                    sessions.spawn(async move {
                        match protocol {
                            Protocol::Http => p.session(http::serve(stream, p.clone(), slot)).await,
                            Protocol::Socks => p.session(socks::serve(stream, p.clone(), slot)).await,
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    let source = format!("sandbox {}", proxy.shared.sandbox);
                    if budget::log_limiter().allow("egress proxy accept failed", &source) {
                        tracing::warn!(sandbox = %proxy.shared.sandbox, error = %e, "egress proxy accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// Binds `port` on the sandbox's loopback and serves it; the task owns the socket.
async fn listen(netns: &NetNs, port: u16, proxy: Proxy, protocol: Protocol) -> Result<(u16, JoinHandle<()>), Error> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let netns = netns.clone();
    let std_listener = tokio::task::spawn_blocking(move || netns.listen(addr))
        .await
        .map_err(|e| Error::backend_with(format!("binding the egress proxy: {e}"), e))?
        .map_err(|e| {
            Error::backend(format!(
                "cannot listen on {addr} inside the sandbox for the egress proxy: {e}; \
                 a process in the sandbox may hold the port"
            ))
        })?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let bound = listener.local_addr()?.port();
    Ok((bound, tokio::spawn(accept_loop(listener, proxy, protocol))))
}

fn build_rules(config: &NetworkConfig, placeholders: &Placeholders) -> Result<Arc<Rules>, Error> {
    let resolver = Resolver::new(&config.dns_servers).map_err(|e| Error::backend_with(e.to_string(), e))?;
    let secrets = SecretRules::new(config, placeholders);
    Ok(Arc::new(Rules { policy: Policy::new(config), resolver, secrets }))
}

struct Running {
    config: NetworkConfig,
    rules: watch::Sender<Arc<Rules>>,
    listeners: Vec<JoinHandle<()>>,
}

/// A sandbox's egress: its proxy listeners, counters and current policy.
pub struct Egress {
    netns: NetNs,
    shared: Arc<Shared>,
    /// The current rules, for the environment of new executions.
    current: watch::Receiver<Arc<Rules>>,
    /// Whether the trust bundle was written into the sandbox.
    ca_installed: AtomicBool,
    enabled: AtomicBool,
    running: tokio::sync::Mutex<Running>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress").field("sandbox", &self.shared.sandbox).finish_non_exhaustive()
    }
}

impl Egress {
    /// Sets up egress for a sandbox whose network namespace is `netns`; starts the proxy when `config.enabled`.
    ///
    /// # Errors
    /// When the proxy can't listen inside the sandbox or the resolver can't be built.
    pub async fn start(sandbox: &str, netns: NetNs, config: &NetworkConfig, ctx: EgressContext) -> Result<Self, Error> {
        let shared = Arc::new(Shared {
            sandbox: sandbox.to_owned(),
            meter: Arc::new(Meter::new(config.bandwidth_in_bytes_per_sec, config.bandwidth_out_bytes_per_sec)),
            connections: AtomicU64::new(0),
            refused: Mutex::new(BTreeMap::new()),
            slots: budget::proxy_pool().tenant(),
            host_addrs: Mutex::new((None, Arc::new(Vec::new()))),
            audit: AuditLog::default(),
            placeholders: Placeholders::default(),
            ca: std::sync::OnceLock::new(),
            ctx,
        });
        let (tx, current) = watch::channel(Rules::closed());
        let egress = Self {
            netns,
            shared,
            current,
            ca_installed: AtomicBool::new(false),
            enabled: AtomicBool::new(false),
            running: tokio::sync::Mutex::new(Running {
                config: NetworkConfig::default(),
                rules: tx,
                listeners: Vec::new(),
            }),
        };
        egress.update(config.clone()).await?;
        Ok(egress)
    }

    /// Replaces the policy, live: new connections follow it at once, and open ones it refuses are cut.
    /// Turning networking on starts the proxy; turning it off stops it and cuts every connection.
    ///
    /// # Errors
    /// When the proxy can't be started or the resolver built; the old policy then stays.
    pub async fn update(&self, config: NetworkConfig) -> Result<(), Error> {
        let mut running = self.running.lock().await;
        let rules = if config.enabled { build_rules(&config, &self.shared.placeholders)? } else { Rules::closed() };
        if config.enabled && running.listeners.is_empty() {
            let proxy = Proxy { shared: self.shared.clone(), rules: running.rules.subscribe() };
            let (_, http) = listen(&self.netns, HTTP_PROXY_PORT, proxy.clone(), Protocol::Http).await?;
            let socks = match listen(&self.netns, SOCKS_PROXY_PORT, proxy, Protocol::Socks).await {
                Ok((_, t)) => t,
                Err(e) => {
                    http.abort();
                    return Err(e);
                }
            };
            running.listeners = vec![http, socks];
        }
        self.shared.meter.down.set_rate(config.bandwidth_in_bytes_per_sec);
        self.shared.meter.up.set_rate(config.bandwidth_out_bytes_per_sec);
        running.rules.send_replace(rules);
        if !config.enabled {
            // Awaited, so the listening sockets are closed when this returns: a connection made
            // afterwards is refused rather than accepted and then dropped.
            for t in running.listeners.drain(..) {
                t.abort();
                let _ = t.await;
            }
        }
        self.enabled.store(config.enabled, Ordering::SeqCst);
        tracing::info!(
            sandbox = %self.shared.sandbox,
            enabled = config.enabled,
            allowed = config.allowed_domains.len(),
            denied = config.denied_domains.len(),
            "network policy set"
        );
        running.config = config;
        Ok(())
    }

    /// Environment for one execution: the proxy variables when networking is on, below
    /// the sandbox's configured variables and the execution's own.
    #[must_use]
    pub fn exec_env(
        &self,
        configured: &BTreeMap<String, String>,
        requested: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if self.enabled.load(Ordering::SeqCst) {
            let rules = self.current.borrow().clone();
            let placeholders = rules.secrets.env();
            for (k, v) in
                proxy_env(HTTP_PROXY_PORT, Some(SOCKS_PROXY_PORT)).into_iter().chain(ca_env()).chain(placeholders)
            {
                if !configured.contains_key(&k) {
                    env.insert(k, v);
                }
            }
        }
        env.extend(requested.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// Writes the sandbox's trust bundle ([`CA_BUNDLE_PATH`]) through the host file API, when
    /// networking is on and it isn't there yet. The sandbox may change or remove it: that only
    /// changes what its own clients trust.
    ///
    /// # Errors
    /// When the file can't be written.
    pub fn install_ca(&self, root: &agentbox_hostfs::Root) -> Result<(), Error> {
        if !self.enabled.load(Ordering::SeqCst) || self.ca_installed.load(Ordering::SeqCst) {
            return Ok(());
        }
        root.write(CA_BUNDLE_PATH, &self.ca_bundle()?)?;
        self.ca_installed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// One page of the sandbox's egress log.
    #[must_use]
    pub fn egress_log(&self, query: &EgressQuery) -> EgressPage {
        self.shared.audit.page(query)
    }

    /// The trust bundle for the sandbox: the host's system roots, then the sandbox's CA.
    ///
    /// # Errors
    /// When the sandbox's CA can't be made.
    pub fn ca_bundle(&self) -> Result<Vec<u8>, Error> {
        let mut out = SYSTEM_BUNDLES
            .iter()
            .find_map(|p| std::fs::read(Path::new(p)).ok())
            .unwrap_or_else(|| tls::native_roots_pem().into_bytes());
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(b"# agentbox: this sandbox's egress CA (the proxy's certificates for inspected hosts)\n");
        let ca =
            self.shared.ca().map_err(|e| Error::backend_with(format!("making the sandbox's egress CA: {e}"), e))?;
        out.extend_from_slice(ca.cert_pem().as_bytes());
        Ok(out)
    }

    /// Counters since creation.
    #[must_use]
    pub fn stats(&self) -> NetworkStats {
        let refused_by_rule: BTreeMap<String, u64> =
            self.shared.refused.lock_unpoisoned().iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        NetworkStats {
            bytes_in: self.shared.meter.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.shared.meter.bytes_out.load(Ordering::Relaxed),
            connections: self.shared.connections.load(Ordering::Relaxed),
            refused: refused_by_rule.values().sum(),
            refused_by_rule,
        }
    }

    /// Starts a second HTTP proxy for an installer: the sandbox's rules plus `extra_hosts`, even
    /// when the sandbox's own policy refuses them or networking is off. It stops when the guard drops.
    ///
    /// # Errors
    /// When it can't listen inside the sandbox.
    pub async fn installer_proxy(&self, extra_hosts: &[String]) -> Result<InstallerProxy, Error> {
        let mut config = self.running.lock().await.config.clone();
        let extra: Vec<String> = extra_hosts.iter().map(|h| policy::normalize_name(h)).collect();
        if !config.enabled || !config.allowed_domains.is_empty() {
            if !config.enabled {
                config.allowed_domains.clear();
            }
            config.allowed_domains.extend(extra.iter().cloned());
        }
        config.denied_domains.retain(|d| {
            agentbox_config::EgressEntry::parse(d)
                .map_or(true, |e| !extra.iter().any(|h| agentbox_config::egress::host_matches(&e.host, h)))
        });
        config.enabled = true;
        let (tx, rx) = watch::channel(build_rules(&config, &self.shared.placeholders)?);
        let proxy = Proxy { shared: self.shared.clone(), rules: rx };
        let (port, task) = listen(&self.netns, 0, proxy, Protocol::Http).await?;
        tracing::info!(sandbox = %self.shared.sandbox, port, hosts = ?extra, "installer proxy started");
        Ok(InstallerProxy { port, task, _rules: tx })
    }

    /// Stops the proxy, closes its sockets and cuts every connection.
    pub async fn shutdown(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        let mut running = self.running.lock().await;
        running.rules.send_replace(Rules::closed());
        for t in running.listeners.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        let running = self.running.get_mut();
        running.rules.send_replace(Rules::closed());
        for t in running.listeners.drain(..) {
            t.abort();
        }
    }
}

/// A temporary proxy for package installers; stops (and cuts its connections) when dropped.
pub struct InstallerProxy {
    port: u16,
    task: JoinHandle<()>,
    _rules: watch::Sender<Arc<Rules>>,
}

impl InstallerProxy {
    /// Environment that sends an installer through this proxy.
    #[must_use]
    pub fn env(&self) -> BTreeMap<String, String> {
        proxy_env(self.port, None)
    }
}

impl Drop for InstallerProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl From<OpenError> for String {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Refused(rule) => rule.to_string(),
            OpenError::Failed(msg) => msg,
        }
    }
}
