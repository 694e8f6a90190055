//! Interactive terminals on agentboxd (`GET /api/sandboxes/{run_id}/terminal`, a WebSocket), and the
//! driver that connects one to this process's own terminal: raw mode, window-size changes, and the
//! terminal restored however the session ends.

use std::io::Write;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::{Client, ClientError, ExecExit, path_segment};

/// What to open.
#[derive(Debug, Clone, Default)]
pub struct TerminalOptions {
    /// Initial rows and columns; this terminal's size (or 24x80) when absent.
    pub size: Option<(u16, u16)>,
    /// A bash command line instead of a login shell.
    pub command: Option<String>,
    /// Working directory.
    pub cwd: Option<String>,
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
}

impl Client {
    /// Opens a terminal in a sandbox.
    ///
    /// # Errors
    /// The server's refusal (unknown run, paused sandbox), or a server that can't be reached.
    pub async fn terminal(&self, run_id: &str, options: &TerminalOptions) -> Result<TerminalSession, ClientError> {
        let (rows, cols) = options.size.unwrap_or((24, 80));
        let mut url = reqwest::Url::parse(&format!("{}/api/sandboxes/{}/terminal", self.base, path_segment(run_id)))
            .map_err(|e| ClientError::BadUrl { url: self.base.clone(), message: e.to_string() })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("rows", &rows.to_string()).append_pair("cols", &cols.to_string());
            if let Some(c) = &options.command {
                q.append_pair("command", c);
            }
            if let Some(c) = &options.cwd {
                q.append_pair("cwd", c);
            }
        }
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
                    struct Exit {
                        exit: ExecExit,
                    }
                    let exit: Exit = serde_json::from_str(t.as_str())
                        .map_err(|e| ClientError::Protocol(format!("the terminal's exit message: {e}")))?;
                    return Ok(Some(TerminalOutput::Exit(exit.exit)));
                }
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Connects the session to this process's terminal until the remote process exits: this terminal
    /// goes to raw mode (keys, Ctrl-C included, go to the remote process), window-size changes follow,
    /// and the terminal is restored on the way out. Answers the remote exit (`None` if the connection
    /// dropped first).
    ///
    /// # Errors
    /// A broken connection, or stdin that is not a terminal.
    pub async fn attach(mut self) -> Result<Option<ExecExit>, ClientError> {
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
                key = keys.recv() => match key {
                    Some(k) => self.send(k).await?,
                    None => break Ok(None),
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
                    Some(TerminalOutput::Exit(exit)) => break Ok(Some(exit)),
                    None => break Ok(None),
                },
            }
        };
        drop(raw);
        result
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
