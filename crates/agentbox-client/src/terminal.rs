//! Interactive terminals on agentboxd (`GET /api/sandboxes/{run_id}/terminal`, a WebSocket), kept
//! terminals that outlive their connection (`?keep=true`, reattached with
//! `GET /api/sandboxes/{run_id}/terminals/{id}`), and the driver that connects one to this process's
//! own terminal: raw mode, window-size changes, a detach key sequence for kept terminals, and the
//! terminal restored however the session ends.

use std::io::Write;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{Client, ClientError, ExecExit, path_segment};

/// The default detach key sequence: Ctrl-P then Ctrl-Q, as `docker attach` has.
pub const DETACH_KEYS: &[u8] = &[0x10, 0x11];

/// What to open.
#[derive(Debug, Clone, Default)]
pub struct TerminalOptions {
    /// Initial rows and columns; this terminal's size (or 24x80) when absent.
    pub size: Option<(u16, u16)>,
    /// A bash command line instead of a login shell.
    pub command: Option<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Keep the terminal running when the connection closes, to reattach to later
    /// ([`Client::attach_terminal`]); the server names it in a first [`TerminalOutput::Kept`].
    pub keep: bool,
}

/// How [`TerminalSession::attach`] connects a session to this terminal.
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    /// Keys that detach (leaving a kept terminal running) instead of going to the remote process;
    /// none when empty. A prefix of them is held back until the next key shows whether they follow.
    pub detach_keys: Vec<u8>,
}

/// How an attached session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachEnd {
    /// The remote process exited.
    Exited(ExecExit),
    /// The detach keys were typed; a kept terminal runs on.
    Detached,
    /// The connection closed first (or another client attached to the kept terminal).
    Closed,
}

/// A kept terminal, as `GET /api/sandboxes/{run_id}/terminals` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalInfo {
    /// Its id, for reattaching and closing.
    pub id: String,
    /// What runs on it.
    pub command: String,
    /// Its size.
    pub size: TerminalSize,
    /// When it was opened, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Whether a client is attached.
    pub attached: bool,
    /// Whether its process exited.
    pub exited: bool,
    /// The exit code, once exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Bytes of output kept for the next attach.
    #[serde(default)]
    pub buffered_bytes: u64,
    /// Bytes of output dropped from the start of that buffer.
    #[serde(default)]
    pub dropped_bytes: u64,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An open terminal session.
pub struct TerminalSession {
    socket: Socket,
}

impl std::fmt::Debug for TerminalSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalSession").finish_non_exhaustive()
    }
}

/// Something the terminal sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminalOutput {
    /// Bytes for the screen.
    Data(Vec<u8>),
    /// The process ended.
    Exit(ExecExit),
    /// The session is on a kept terminal (the first message of such a session).
    Kept {
        /// The kept terminal's id.
        id: String,
        /// Output dropped before what is replayed next (the server keeps the last 256 KiB).
        dropped_bytes: u64,
    },
}

impl Client {
    /// Opens a terminal in a sandbox.
    ///
    /// # Errors
    /// The server's refusal (unknown run, paused sandbox), or a server that can't be reached.
    pub async fn terminal(&self, run_id: &str, options: &TerminalOptions) -> Result<TerminalSession, ClientError> {
        let (rows, cols) = options.size.unwrap_or((24, 80));
        let mut url = self.api_url(&format!("/api/sandboxes/{}/terminal", path_segment(run_id)))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("rows", &rows.to_string()).append_pair("cols", &cols.to_string());
            if let Some(c) = &options.command {
                q.append_pair("command", c);
            }
            if let Some(c) = &options.cwd {
                q.append_pair("cwd", c);
            }
            if options.keep {
                q.append_pair("keep", "true");
            }
        }
        self.connect_terminal(url).await
    }

    /// Reattaches to a kept terminal: the server first replays what it printed meanwhile (its last
    /// 256 KiB), then live output. Another client attached to it is detached.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run or terminal, or a server that can't be reached.
    pub async fn attach_terminal(&self, run_id: &str, terminal_id: &str) -> Result<TerminalSession, ClientError> {
        let url = self.api_url(&format!(
            "/api/sandboxes/{}/terminals/{}/attach",
            path_segment(run_id),
            path_segment(terminal_id)
        ))?;
        self.connect_terminal(url).await
    }

    /// The run's kept terminals, oldest first.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run.
    pub async fn terminals(&self, run_id: &str) -> Result<Vec<TerminalInfo>, ClientError> {
        let v = self.terminals_json(run_id).await?;
        serde_json::from_value(v["terminals"].clone())
            .map_err(|e| ClientError::Protocol(format!("the terminal list does not parse: {e}")))
    }

    /// The run's kept terminals as the server's JSON (`{"terminals": [...]}`).
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run.
    pub async fn terminals_json(&self, run_id: &str) -> Result<serde_json::Value, ClientError> {
        self.json(self.request(reqwest::Method::GET, &format!("/api/sandboxes/{}/terminals", path_segment(run_id))))
            .await
    }

    /// Hangs up a kept terminal (its processes get SIGHUP).
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run or terminal.
    pub async fn close_terminal(&self, run_id: &str, terminal_id: &str) -> Result<(), ClientError> {
        let path = format!("/api/sandboxes/{}/terminals/{}", path_segment(run_id), path_segment(terminal_id));
        self.send(self.request(reqwest::Method::DELETE, &path)).await.map(drop)
    }

    fn api_url(&self, path: &str) -> Result<reqwest::Url, ClientError> {
        reqwest::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| ClientError::BadUrl { url: self.base.clone(), message: e.to_string() })
    }

    async fn connect_terminal(&self, mut url: reqwest::Url) -> Result<TerminalSession, ClientError> {
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|()| ClientError::BadUrl { url: self.base.clone(), message: "no ws scheme".into() })?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::BadUrl { url: self.base.clone(), message: e.to_string() })?;
        if let Some(t) = &self.token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| ClientError::Protocol("the API token can't be sent in a header".into()))?;
            request.headers_mut().insert("authorization", value);
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(TerminalSession { socket }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
                Err(crate::api_error_from_value(status, &body))
            }
            Err(tokio_tungstenite::tungstenite::Error::Io(e)) => Err(ClientError::Io {
                what: format!(
                    "cannot reach agentboxd at {}; start it with `agentboxd` (or `agentbox serve`), or point --url / AGENTBOX_URL at it",
                    self.base
                ),
                source: e,
            }),
            Err(e) => Err(ClientError::Protocol(format!("opening the terminal's WebSocket: {e}"))),
        }
    }
}

impl TerminalSession {
    /// Sends typed bytes.
    ///
    /// # Errors
    /// A closed connection.
    pub async fn send(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.socket.send(Message::Binary(bytes.into())).await.map_err(ClientError::WebSocket)
    }

    /// Closes the connection cleanly, after what was sent: a kept terminal runs on (detached), any
    /// other is hung up.
    ///
    /// # Errors
    /// A connection that broke first.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.socket.close(None).await.map_err(ClientError::WebSocket)?;
        // The server's answering close ends it; output still in flight is dropped meanwhile.
        let drain = async { while let Some(Ok(_)) = self.socket.next().await {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
        Ok(())
    }

    /// Tells the terminal its new size.
    ///
    /// # Errors
    /// A closed connection.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        let control = serde_json::json!({ "resize": { "rows": rows, "cols": cols } }).to_string();
        self.socket.send(Message::Text(control.into())).await.map_err(ClientError::WebSocket)
    }

    /// The next output, or `None` when the connection closed without an exit.
    ///
    /// # Errors
    /// A broken connection or an exit message that doesn't parse.
    pub async fn next(&mut self) -> Result<Option<TerminalOutput>, ClientError> {
        while let Some(message) = self.socket.next().await {
            match message.map_err(ClientError::WebSocket)? {
                Message::Binary(b) => return Ok(Some(TerminalOutput::Data(b.to_vec()))),
                Message::Text(t) => {
                    #[derive(serde::Deserialize)]
                    #[serde(rename_all = "snake_case")]
                    enum Control {
                        Exit(ExecExit),
                        Terminal { id: String, dropped_bytes: u64 },
                    }
                    let control: Control = serde_json::from_str(t.as_str())
                        .map_err(|e| ClientError::Protocol(format!("the terminal's message {t:?}: {e}")))?;
                    return Ok(Some(match control {
                        Control::Exit(exit) => TerminalOutput::Exit(exit),
                        Control::Terminal { id, dropped_bytes } => TerminalOutput::Kept { id, dropped_bytes },
                    }));
                }
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Connects the session to this process's terminal until the remote process exits (or the detach
    /// keys are typed): this terminal goes to raw mode (keys, Ctrl-C included, go to the remote
    /// process), window-size changes follow, and the terminal is restored on the way out. A kept
    /// terminal's [`TerminalOutput::Kept`] is not shown.
    ///
    /// # Errors
    /// A broken connection, or stdin that is not a terminal.
    pub async fn attach(mut self, options: &AttachOptions) -> Result<AttachEnd, ClientError> {
        let mut detach = DetachMatcher::new(options.detach_keys.clone());
        let stdin = rustix::stdio::stdin();
        let raw = RawMode::enter(stdin).map_err(|e| ClientError::Io {
            what: "putting the terminal in raw mode (is stdin a terminal? use `exec` without -it otherwise)".into(),
            source: e.into(),
        })?;
        if let Ok(size) = rustix::termios::tcgetwinsize(stdin) {
            self.resize(size.ws_row, size.ws_col).await?;
        }
        // Keys are read on a thread of their own: a blocking read of the terminal can't be cancelled.
        let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            let mut input = std::io::stdin().lock();
            while let Ok(n) = input.read(&mut buf) {
                if n == 0 || keys_tx.blocking_send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            .map_err(|e| ClientError::Io { what: "watching the window size".into(), source: e })?;
        let mut out = std::io::stdout();
        let result = loop {
            tokio::select! {
                key = keys.recv() => match key.map(|k| detach.feed(&k)) {
                    Some((k, detached)) => {
                        if !k.is_empty() {
                            self.send(k).await?;
                        }
                        if detached {
                            break Ok(AttachEnd::Detached);
                        }
                    }
                    None => break Ok(AttachEnd::Closed),
                },
                _ = winch.recv() => {
                    if let Ok(size) = rustix::termios::tcgetwinsize(stdin) {
                        self.resize(size.ws_row, size.ws_col).await?;
                    }
                }
                output = self.next() => match output? {
                    Some(TerminalOutput::Data(d)) => {
                        out.write_all(&d).and_then(|()| out.flush())
                            .map_err(|e| ClientError::Io { what: "writing to the terminal".into(), source: e })?;
                    }
                    Some(TerminalOutput::Exit(exit)) => break Ok(AttachEnd::Exited(exit)),
                    Some(TerminalOutput::Kept { .. }) => {}
                    None => break Ok(AttachEnd::Closed),
                },
            }
        };
        drop(raw);
        if matches!(result, Ok(AttachEnd::Detached)) {
            // A clean close, after the keys typed before the detach ones.
            let _ = self.close().await;
        }
        result
    }
}

/// Spots the detach key sequence in typed input, holding back a partial match until the next key.
#[derive(Debug)]
struct DetachMatcher {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachMatcher {
    fn new(keys: Vec<u8>) -> Self {
        Self { keys, matched: 0 }
    }

    /// The bytes to send on, and whether the sequence was completed (what follows it is dropped).
    fn feed(&mut self, chunk: &[u8]) -> (Vec<u8>, bool) {
        if self.keys.is_empty() {
            return (chunk.to_vec(), false);
        }
        let mut out = Vec::with_capacity(chunk.len());
        for &b in chunk {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return (out, true);
                }
                continue;
            }
            // Not the sequence after all: what was held back goes on.
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = usize::from(b == self.keys[0]);
            if self.matched == 0 {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// This terminal in raw mode; restored when dropped (also on an error or a panic unwinding).
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter(fd: rustix::fd::BorrowedFd<'static>) -> rustix::io::Result<Self> {
        let saved = rustix::termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Flush, &raw)?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ =
            rustix::termios::tcsetattr(rustix::stdio::stdin(), rustix::termios::OptionalActions::Flush, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::{DETACH_KEYS, DetachMatcher};

    #[test]
    fn the_detach_keys_are_found_across_reads_and_other_keys_pass() {
        let mut m = DetachMatcher::new(DETACH_KEYS.to_vec());
        assert_eq!(m.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(m.feed(&[b'a', 0x10]), (b"a".to_vec(), false), "a Ctrl-P is held back");
        assert_eq!(m.feed(b"x"), (vec![0x10, b'x'], false), "and sent when no Ctrl-Q follows");
        assert_eq!(m.feed(&[0x10, 0x10]), (vec![0x10], false));
        assert_eq!(m.feed(&[0x11, b'z']), (vec![], true));
        assert_eq!(m.feed(&[b'q', 0x10, 0x11]), (b"q".to_vec(), true));
        let mut none = DetachMatcher::new(Vec::new());
        assert_eq!(none.feed(&[0x10, 0x11]), (vec![0x10, 0x11], false));
    }
}
