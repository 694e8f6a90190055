//! The browser driver: the part of the browser tool that runs inside the sandbox.
//!
//! The host never speaks DevTools. It starts this program in the sandbox (the sandbox's own agent
//! binary, which is this program, re-executed as an ordinary execution: same user, seccomp filter,
//! landlock rules, cgroup and limits as the user's code), and the driver starts Chromium as its
//! child, connects to it with chromiumoxide on the sandbox's loopback and runs the actions. A
//! hostile page or a program impersonating Chromium can only crash the driver, which the sandbox
//! owns; the host then fails the call and starts a new driver on the next one.
//!
//! Each call is one short execution of the *client* (this program again), whose stdin is the
//! request and whose stdout is the reply ([`super::wire`]): the client passes both through the
//! driver's socket (an abstract unix socket in the sandbox's network namespace). The host thus reads
//! nothing from the sandbox but execution output in agent frames, capped. The client sends the request
//! length first and keeps its side of the socket open: when the host gives a call up, it ends the client,
//! and the driver drops the action instead of running it to its time limit.
//!
//! Both programs are entered from a constructor that runs before `main`, when [`HELPER_ENV`] names
//! them, the way the local backend's zygote is.

use std::io::{Read as _, Write as _};
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::actions;
use super::error::{BrowserError, BrowserResult};
use super::input::BrowserAction;
use super::session::{self, Session};
use super::wire::{self, Request, WireError};
use super::{BrowserConfig, PROBE_LIMIT};

/// The environment variable that turns this program into the driver or the client.
pub(crate) const HELPER_ENV: &str = "AGENTBOX_TOOLS_HELPER";
/// [`HELPER_ENV`]'s value for the driver.
pub(crate) const DRIVER: &str = "browser-driver";
/// [`HELPER_ENV`]'s value for the client.
pub(crate) const CLIENT: &str = "browser-client";
/// The environment variable naming the driver's socket.
pub(crate) const SOCKET_ENV: &str = "AGENTBOX_BROWSER_SOCKET";
/// The environment variable saying how long the client waits for the driver's socket, in milliseconds.
pub(crate) const WAIT_ENV: &str = "AGENTBOX_BROWSER_WAIT_MS";
/// The client's exit code when no driver listens (nothing was sent).
pub(crate) const NO_DRIVER: i32 = 70;

/// The driver's abstract socket name for a DevTools port.
pub(crate) fn socket_name(cfg: &BrowserConfig) -> String {
    format!("agentbox-browser-driver-{}", cfg.debugging_port)
}

#[ctor::ctor]
#[allow(clippy::exit, reason = "the driver and the client are whole programs: they end here, before `main`")]
fn helper_entry() {
    let Some(which) = std::env::var_os(HELPER_ENV) else { return };
    let code = if which == DRIVER {
        driver_main()
    } else if which == CLIENT {
        client_main()
    } else {
        return;
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Referenced by the tool so that the constructor above is always linked in.
pub(crate) fn entry_point() -> extern "C" fn() {
    helper_entry
}

// ----- the client -----

/// Passes stdin to the driver and the driver's reply to stdout.
fn client_main() -> i32 {
    let name = std::env::var(SOCKET_ENV).unwrap_or_default();
    let wait = Duration::from_millis(std::env::var(WAIT_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    let mut request = Vec::new();
    if let Err(e) = std::io::stdin().take(wire::REQUEST_BYTES as u64 + 1).read_to_end(&mut request) {
        eprintln!("agentbox browser client: reading the request failed: {e}");
        return 1;
    }
    let Ok(addr) = SocketAddr::from_abstract_name(name.as_bytes()) else {
        eprintln!("agentbox browser client: bad socket name {name:?}");
        return 1;
    };
    let start = Instant::now();
    let mut conn = loop {
        match UnixStream::connect_addr(&addr) {
            Ok(c) => break c,
            Err(e) if start.elapsed() >= wait => {
                eprintln!("agentbox browser client: no browser driver listens: {e}");
                return NO_DRIVER;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    // The request goes length first, and the client's side stays open while the driver works: the driver
    // gives the action up when this process goes away (the host ends it when its caller gives up).
    let Ok(len) = u32::try_from(request.len()) else {
        eprintln!("agentbox browser client: the request is too large");
        return 1;
    };
    if let Err(e) = conn.write_all(&len.to_le_bytes()).and_then(|()| conn.write_all(&request)) {
        eprintln!("agentbox browser client: sending the request failed: {e}");
        return 1;
    }
    match std::io::copy(&mut conn, &mut std::io::stdout().lock()) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("agentbox browser client: reading the reply failed: {e}");
            1
        }
    }
}

// ----- the driver -----

fn driver_main() -> i32 {
    let name = std::env::var(SOCKET_ENV).unwrap_or_default();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentbox browser driver: cannot start its runtime: {e}");
            return 1;
        }
    };
    let listener = match SocketAddr::from_abstract_name(name.as_bytes())
        .and_then(|addr| std::os::unix::net::UnixListener::bind_addr(&addr))
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("agentbox browser driver: cannot listen on @{name}: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let listener = match listener.set_nonblocking(true).and_then(|()| tokio::net::UnixListener::from_std(listener))
        {
            Ok(l) => l,
            Err(e) => {
                eprintln!("agentbox browser driver: cannot use its socket: {e}");
                return 1;
            }
        };
        let mut driver = Driver::default();
        loop {
            match listener.accept().await {
                Ok((conn, _)) => driver.serve(conn).await,
                // Out of descriptors or memory: wait instead of spinning; calls fail meanwhile.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
}

/// The driver's browser, and why the previous one went away.
#[derive(Default)]
struct Driver {
    session: Option<Session>,
    lost: Option<String>,
}

impl Driver {
    /// Reads one request, runs it, writes the reply. The action is given up if the client goes away
    /// meanwhile, so that the next call does not wait for one nobody reads.
    async fn serve(&mut self, mut conn: tokio::net::UnixStream) {
        let read = tokio::time::timeout(Duration::from_secs(10), read_request(&mut conn)).await;
        let outcome = match read {
            Ok(Ok(bytes)) => match serde_json::from_slice::<Request>(&bytes) {
                Ok(request) => {
                    let (mut rd, _) = conn.split();
                    let hangup = async move {
                        // Nothing more may come from the client: any byte, end of file or error means it is gone.
                        let _ = rd.read(&mut [0_u8; 1]).await;
                    };
                    self.handle(request, hangup).await.map_err(WireError::from)
                }
                Err(e) => Err(invalid(format!("the browser driver got an invalid request: {e}"))),
            },
            Ok(Err(e)) => Err(e),
            Err(_) => Err(invalid("the request did not arrive in time".into())),
        };
        let reply = wire::encode_reply(outcome);
        let _ = tokio::time::timeout(Duration::from_secs(30), conn.write_all(&reply)).await;
        let _ = conn.shutdown().await;
    }

    async fn handle(
        &mut self,
        request: Request,
        hangup: impl std::future::Future<Output = ()>,
    ) -> BrowserResult<Map<String, Value>> {
        let Request { config: cfg, network_enabled, resources_hint, action } = request;
        let action: BrowserAction = serde_json::from_value(action)
            .map_err(|e| BrowserError::InvalidInput(format!("invalid input for browser: {e}")))?;
        action.validate().map_err(|e| BrowserError::InvalidInput(format!("invalid input for browser: {e}")))?;
        if matches!(action, BrowserAction::Close {}) {
            return Ok(self.close().await);
        }
        let started = self.ensure(&cfg, network_enabled, &resources_hint).await?;
        let Some(session) = self.session.as_mut() else {
            return Err(BrowserError::Gone("the browser is not running".into()));
        };
        let cx = actions::Ctx { cfg: &cfg, network_enabled };
        let outcome = tokio::select! {
            outcome = actions::run(session, &cx, action) => outcome,
            // The browser stays as the action left it; a navigation it started may go on loading.
            () = hangup => return Err(BrowserError::Gone("the call was given up: its client went away".into())),
        };
        match outcome {
            Ok(mut out) => {
                if let Some(s) = started {
                    s.describe(&mut out);
                }
                session.report_events(&mut out);
                Ok(out)
            }
            Err(e) => Err(self.after_failure(&resources_hint, e).await),
        }
    }

    /// Starts the browser if there is none, or a new one if the old one died.
    async fn ensure(
        &mut self,
        cfg: &BrowserConfig,
        network_enabled: bool,
        hint: &str,
    ) -> BrowserResult<Option<Started>> {
        if let Some(s) = self.session.as_mut() {
            let reason = if !s.connected() {
                Some("its DevTools connection had closed (it crashed or was killed)")
            } else if !session::process_running(&mut s.child) {
                Some("its process had exited (it crashed or was killed)")
            } else if s.network_enabled != network_enabled {
                Some("the sandbox's network policy changed")
            } else if !s.answers(PROBE_LIMIT).await {
                Some("it had stopped answering")
            } else {
                None
            };
            if let Some(reason) = reason {
                s.kill().await;
                self.session = None;
                self.lost = Some(reason.to_owned());
            }
        }
        if self.session.is_some() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let session = session::launch(cfg, network_enabled, hint).await?;
        self.session = Some(session);
        Ok(Some(Started { launch_ms: super::millis(t0.elapsed()), restarted_because: self.lost.take() }))
    }

    /// Turns a failed action into the error returned, dropping a browser that went away.
    async fn after_failure(&mut self, hint: &str, e: BrowserError) -> BrowserError {
        let Some(s) = self.session.as_mut() else { return e };
        if e.is_gone() || !s.connected() {
            let exited = !session::process_running(&mut s.child);
            let tail = if exited { session::log_tail(&s.log_path).await } else { String::new() };
            s.kill().await;
            self.session = None;
            self.lost = Some(if exited {
                "it stopped during the previous call (crashed, was killed or ran out of memory)".into()
            } else {
                "its DevTools connection failed during the previous call".into()
            });
            let output = if tail.is_empty() { String::new() } else { format!(" Its last output:\n{tail}\n") };
            return BrowserError::Gone(format!("{e}.{output}{hint}"));
        }
        match e {
            // A browser short of memory or processes shows up as calls that never answer.
            BrowserError::Timeout(m) if m.contains("did not answer") => BrowserError::Timeout(format!("{m}.{hint}")),
            other => other,
        }
    }

    async fn close(&mut self) -> Map<String, Value> {
        self.lost = None;
        let mut out = Map::new();
        match self.session.take() {
            Some(mut s) => {
                s.kill().await;
                out.insert("closed".into(), Value::Bool(true));
            }
            None => {
                out.insert("closed".into(), Value::Bool(false));
                out.insert("message".into(), Value::String("no browser was running".into()));
            }
        }
        out
    }
}

/// Reads one request: its length (4 bytes, little-endian), then that many bytes, at most
/// [`wire::REQUEST_BYTES`].
async fn read_request(conn: &mut tokio::net::UnixStream) -> Result<Vec<u8>, WireError> {
    let mut len = [0_u8; 4];
    conn.read_exact(&mut len).await.map_err(|e| invalid(format!("reading the request failed: {e}")))?;
    let len = usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX);
    if len > wire::REQUEST_BYTES {
        return Err(invalid(format!("the request is larger than {} bytes", wire::REQUEST_BYTES)));
    }
    let mut bytes = vec![0_u8; len];
    conn.read_exact(&mut bytes).await.map_err(|e| invalid(format!("reading the request failed: {e}")))?;
    Ok(bytes)
}

fn invalid(message: String) -> WireError {
    WireError { kind: crate::ToolErrorKind::InvalidInput, message }
}

/// A browser started for this call.
struct Started {
    launch_ms: u64,
    restarted_because: Option<String>,
}

impl Started {
    fn describe(self, out: &mut Map<String, Value>) {
        out.insert("browser_launch_ms".into(), Value::from(self.launch_ms));
        match self.restarted_because {
            Some(reason) => {
                out.insert("browser_restarted".into(), Value::Bool(true));
                out.insert(
                    "notice".into(),
                    Value::String(format!(
                        "the browser was restarted because {reason}; tabs, history and page state from before are gone"
                    )),
                );
            }
            None => {
                out.insert("browser_started".into(), Value::Bool(true));
            }
        }
    }
}
