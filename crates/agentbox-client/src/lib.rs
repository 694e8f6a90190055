//! A client for agentboxd's REST API (docs/API.md): sandboxes, streamed executions, files,
//! pause and resume, and snapshots. The `agentbox` command line's `create`, `exec`, `cp`, `ls`,
//! `inspect`, `stats`, `rm`, `pause`, `resume`, `snapshot` and `restore` verbs are built on it.
//!
//! Sandboxes, metrics and snapshots come back as the server's JSON (`serde_json::Value`), the same
//! documents `--json` prints; executions come back as typed events.
//!
//! ```no_run
//! # async fn demo() -> Result<(), agentbox_client::ClientError> {
//! use agentbox_client::{Client, ClientConfig, ExecEvent};
//! let client = Client::new(ClientConfig::from_env(None))?;
//! client.create(&serde_json::json!({"run_id": "demo"})).await?;
//! let exit = client
//!     .exec("demo", &serde_json::json!({"command": "echo hi"}), |event| {
//!         if let ExecEvent::Stdout(text) = event {
//!             print!("{text}");
//!         }
//!     })
//!     .await?;
//! assert_eq!(exit.exit_code, 0);
//! client.delete("demo").await?;
//! # Ok(()) }
//! ```

mod sse;
mod terminal;

pub use terminal::{
    AttachEnd, AttachOptions, DETACH_KEYS, TerminalInfo, TerminalOptions, TerminalOutput, TerminalSession, TerminalSize,
};

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;

/// The server's default address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Where the server is and how to authenticate.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// The API token, when there is one.
    pub token: Option<String>,
    /// How long to wait to connect.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// `url`, else `AGENTBOX_URL`, else [`DEFAULT_URL`]; the token from `AGENTBOX_API_TOKEN`, else the
    /// server's generated token file in its default data directory when this user can read it.
    #[must_use]
    pub fn from_env(url: Option<String>) -> Self {
        let url = url
            .or_else(|| std::env::var("AGENTBOX_URL").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let token = std::env::var("AGENTBOX_API_TOKEN").ok().filter(|t| !t.trim().is_empty()).or_else(|| {
            std::fs::read_to_string(token_file()).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
        });
        Self { url, token, connect_timeout: Duration::from_secs(5) }
    }
}

fn token_file() -> PathBuf {
    agentbox_config::paths::default_data_dir().join(agentbox_config::paths::TOKEN_FILE)
}

/// What a client call can fail with. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error(
        "cannot reach agentboxd at {url}: {source}; start it with `agentboxd` (or `agentbox serve`), or point --url / AGENTBOX_URL at it"
    )]
    Unreachable {
        /// The server's URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The token was missing or wrong.
    #[error(
        "agentboxd refused the API token ({message}); set AGENTBOX_API_TOKEN to the token agentboxd printed at its first start (or stored in {})",
        token_file().display()
    )]
    Unauthorized {
        /// The server's message.
        message: String,
    },
    /// The run, file or snapshot does not exist.
    #[error("{message}")]
    NotFound {
        /// The server's message.
        message: String,
    },
    /// The server answered with another error.
    #[error("agentboxd answered {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The stable error code (docs/API.md).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The request or its answer broke off.
    #[error("talking to agentboxd failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// A terminal's WebSocket broke.
    #[error("the terminal's connection broke: {0}")]
    WebSocket(#[source] tokio_tungstenite::tungstenite::Error),
    /// The answer was not what the API documents.
    #[error("agentboxd answered something unexpected: {0}")]
    Protocol(String),
    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The configured URL is not usable.
    #[error("invalid server URL {url:?}: {message}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
}

/// One event of a streamed execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Output on stdout.
    Stdout(String),
    /// Output on stderr.
    Stderr(String),
}

/// How an execution ended (the `exit` event).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ExecExit {
    /// The exit code (124 when timed out, 128+N when killed by signal N).
    pub exit_code: i32,
    /// The signal that killed it, if any.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Whether the time limit ended it.
    #[serde(default)]
    pub timed_out: bool,
    /// Whether the out-of-memory killer ended it.
    #[serde(default)]
    pub oom_killed: bool,
    /// Whether output was cut to the sandbox's limit.
    #[serde(default)]
    pub truncated: bool,
    /// How long it ran.
    #[serde(default)]
    pub duration_ms: u64,
}

/// A connection to one agentboxd.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) token: Option<String>,
}

pub(crate) fn path_segment(s: &str) -> String {
    // Run ids and snapshot names are letters, digits, `-`, `_` and `.`; anything else is escaped so a
    // stray `/` or `?` can't change the route.
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}

impl Client {
    /// A client for the server `config` names.
    ///
    /// # Errors
    /// [`ClientError::BadUrl`] for a URL that isn't http(s).
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let base = config.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BadUrl {
                url: config.url,
                message: "it must start with http:// or https://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| ClientError::BadUrl { url: config.url.clone(), message: e.to_string() })?;
        Ok(Self { http, base, token: config.token })
    }

    /// The server's base URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, r: RequestBuilder) -> Result<Response, ClientError> {
        let response = r.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                ClientError::Unreachable { url: self.base.clone(), source: e }
            } else {
                ClientError::Transport(e)
            }
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_from(response).await)
    }

    async fn json(&self, r: RequestBuilder) -> Result<Value, ClientError> {
        self.send(r).await?.json().await.map_err(ClientError::Transport)
    }

    /// `GET /health`: the server's status and version (no token needed).
    ///
    /// # Errors
    /// When the server can't be reached.
    pub async fn health(&self) -> Result<Value, ClientError> {
        self.json(self.request(Method::GET, "/health")).await
    }

    /// Creates a sandbox (`POST /api/sandboxes/create`) from a request such as
    /// `{"run_id": "x", "preset": "default", "memory_mb": 256}`; answers the sandbox.
    ///
    /// # Errors
    /// The server's error: an invalid configuration, a run that exists with another one, limits.
    pub async fn create(&self, request: &Value) -> Result<Value, ClientError> {
        self.json(self.request(Method::POST, "/api/sandboxes/create").json(request)).await
    }

    /// Every sandbox, sorted by run id.
    ///
    /// # Errors
    /// The server's error.
    pub async fn list(&self) -> Result<Vec<Value>, ClientError> {
        let v = self.json(self.request(Method::GET, "/api/sandboxes")).await?;
        match v.get("sandboxes") {
            Some(Value::Array(list)) => Ok(list.clone()),
            _ => Err(ClientError::Protocol("the sandbox list has no `sandboxes` array".into())),
        }
    }

    /// One sandbox.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run.
    pub async fn get(&self, run_id: &str) -> Result<Value, ClientError> {
        self.json(self.request(Method::GET, &format!("/api/sandboxes/{}", path_segment(run_id)))).await
    }

    /// Destroys a sandbox.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run.
    pub async fn delete(&self, run_id: &str) -> Result<(), ClientError> {
        self.send(self.request(Method::DELETE, &format!("/api/sandboxes/{}", path_segment(run_id)))).await.map(drop)
    }

    /// A sandbox's live metrics.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run.
    pub async fn metrics(&self, run_id: &str) -> Result<Value, ClientError> {
        self.json(self.request(Method::GET, &format!("/api/sandboxes/{}/metrics", path_segment(run_id)))).await
    }

    /// Freezes a sandbox's processes.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run; the backend's refusal.
    pub async fn pause(&self, run_id: &str) -> Result<Value, ClientError> {
        self.json(self.request(Method::POST, &format!("/api/sandboxes/{}/pause", path_segment(run_id)))).await
    }

    /// Thaws a paused sandbox.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run; a conflict when it isn't paused.
    pub async fn resume(&self, run_id: &str) -> Result<Value, ClientError> {
        self.json(self.request(Method::POST, &format!("/api/sandboxes/{}/resume", path_segment(run_id)))).await
    }

    /// Calls the agent tool `name` (see `GET /api/tools`) in a sandbox with `input`; answers its output.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run or tool; the tool's refusal.
    pub async fn call_tool(&self, run_id: &str, name: &str, input: &Value) -> Result<Value, ClientError> {
        let r = self
            .request(Method::POST, &format!("/api/sandboxes/{}/tools/{}", path_segment(run_id), path_segment(name)))
            .json(input);
        self.json(r).await
    }

    /// A sandbox's background processes (`{"processes": [{pid, argv, running, exit_code, output_path}]}`).
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run.
    pub async fn processes(&self, run_id: &str) -> Result<Value, ClientError> {
        self.json(self.request(Method::GET, &format!("/api/sandboxes/{}/processes", path_segment(run_id)))).await
    }

    /// Stops a sandbox: its processes end, its files stay on disk until it is started or destroyed.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run; unsupported without disk-backed storage.
    pub async fn stop(&self, run_id: &str) -> Result<Value, ClientError> {
        self.json(self.request(Method::POST, &format!("/api/sandboxes/{}/stop", path_segment(run_id)))).await
    }

    /// Starts a stopped sandbox: a fresh sandbox on its files.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run.
    pub async fn start(&self, run_id: &str) -> Result<Value, ClientError> {
        self.json(self.request(Method::POST, &format!("/api/sandboxes/{}/start", path_segment(run_id)))).await
    }

    /// Snapshots a sandbox's files under `name`.
    ///
    /// # Errors
    /// A conflict when the name is taken; unsupported without disk-backed storage.
    pub async fn snapshot(&self, run_id: &str, name: &str) -> Result<Value, ClientError> {
        let r = self
            .request(Method::POST, &format!("/api/sandboxes/{}/snapshots", path_segment(run_id)))
            .json(&serde_json::json!({ "name": name }));
        self.json(r).await
    }

    /// Puts a run's files back to the snapshot `name`: a new sandbox from it takes the run's place.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run or snapshot; unsupported without disk-backed storage.
    pub async fn restore(&self, run_id: &str, name: &str) -> Result<Value, ClientError> {
        let r = self
            .request(Method::POST, &format!("/api/sandboxes/{}/restore", path_segment(run_id)))
            .json(&serde_json::json!({ "name": name }));
        self.json(r).await
    }

    /// Every snapshot.
    ///
    /// # Errors
    /// The server's error.
    pub async fn snapshots(&self) -> Result<Vec<Value>, ClientError> {
        let v = self.json(self.request(Method::GET, "/api/snapshots")).await?;
        match v.get("snapshots") {
            Some(Value::Array(list)) => Ok(list.clone()),
            _ => Err(ClientError::Protocol("the snapshot list has no `snapshots` array".into())),
        }
    }

    /// Deletes a snapshot.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown snapshot.
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.request(Method::DELETE, &format!("/api/snapshots/{}", path_segment(name)))).await.map(drop)
    }

    /// One page of a sandbox's egress audit log (`{"records": [...], "next": ..., "dropped": ...}`):
    /// records after `after`, at most `limit`, only to `host`, only `allowed` or `refused` decisions.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown run; unsupported on backends without a log.
    pub async fn egress(
        &self,
        run_id: &str,
        after: Option<u64>,
        limit: Option<u32>,
        host: Option<&str>,
        decision: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        query.extend(after.map(|a| ("after", a.to_string())));
        query.extend(limit.map(|l| ("limit", l.to_string())));
        query.extend(host.map(|h| ("host", h.to_owned())));
        query.extend(decision.map(|d| ("decision", d.to_owned())));
        let r = self.request(Method::GET, &format!("/api/sandboxes/{}/egress", path_segment(run_id))).query(&query);
        self.json(r).await
    }

    /// The server's secrets: names and kinds of source, never values.
    ///
    /// # Errors
    /// Unsupported on backends that can't inject secrets.
    pub async fn secrets(&self) -> Result<Vec<Value>, ClientError> {
        let v = self.json(self.request(Method::GET, "/api/secrets")).await?;
        match v.get("secrets") {
            Some(Value::Array(list)) => Ok(list.clone()),
            _ => Err(ClientError::Protocol("the secret list has no `secrets` array".into())),
        }
    }

    /// Defines or replaces a secret; `source` is `{"value": ...}`, `{"env": VAR}` or `{"file": PATH}`.
    ///
    /// # Errors
    /// A bad request for an invalid name or source.
    pub async fn set_secret(&self, name: &str, source: &Value) -> Result<Value, ClientError> {
        let r = self.request(Method::PUT, &format!("/api/secrets/{}", path_segment(name))).json(source);
        self.json(r).await
    }

    /// Deletes a secret.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for an unknown secret.
    pub async fn delete_secret(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.request(Method::DELETE, &format!("/api/secrets/{}", path_segment(name)))).await.map(drop)
    }

    /// Makes a volume of at most `size_gb` GiB.
    ///
    /// # Errors
    /// A conflict when the name is taken; unsupported without disk-backed storage.
    pub async fn create_volume(&self, name: &str, size_gb: u64) -> Result<Value, ClientError> {
        let r =
            self.request(Method::POST, "/api/volumes").json(&serde_json::json!({ "name": name, "size_gb": size_gb }));
        self.json(r).await
    }

    /// Every volume.
    ///
    /// # Errors
    /// The server's error.
    pub async fn volumes(&self) -> Result<Vec<Value>, ClientError> {
        let v = self.json(self.request(Method::GET, "/api/volumes")).await?;
        match v.get("volumes") {
            Some(Value::Array(list)) => Ok(list.clone()),
            _ => Err(ClientError::Protocol("the volume list has no `volumes` array".into())),
        }
    }

    /// Deletes a volume and its files.
    ///
    /// # Errors
    /// [`ClientError::NotFound`]; a conflict while a sandbox has it mounted.
    pub async fn delete_volume(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.request(Method::DELETE, &format!("/api/volumes/{}", path_segment(name)))).await.map(drop)
    }

    /// Runs a command (`{"command": "..."}` or `{"argv": [...]}`, with `cwd`, `env`, `timeout`) and
    /// streams its output to `on_event` as it happens; answers how it ended.
    ///
    /// # Errors
    /// The server's error before the execution starts, or a stream that ends without an exit.
    pub async fn exec(
        &self,
        run_id: &str,
        request: &Value,
        on_event: impl FnMut(ExecEvent),
    ) -> Result<ExecExit, ClientError> {
        self.stream_execution(&format!("/api/sandboxes/{}/execute/command", path_segment(run_id)), request, on_event)
            .await
    }

    /// Runs code (`{"language": "python", "code": "..."}`), streamed like [`Client::exec`].
    ///
    /// # Errors
    /// As [`Client::exec`].
    pub async fn run_code(
        &self,
        run_id: &str,
        request: &Value,
        on_event: impl FnMut(ExecEvent),
    ) -> Result<ExecExit, ClientError> {
        self.stream_execution(&format!("/api/sandboxes/{}/execute/code", path_segment(run_id)), request, on_event).await
    }

    async fn stream_execution(
        &self,
        path: &str,
        request: &Value,
        mut on_event: impl FnMut(ExecEvent),
    ) -> Result<ExecExit, ClientError> {
        let r = self.request(Method::POST, path).header("accept", "text/event-stream").json(request);
        let response = self.send(r).await?;
        let mut body = response.bytes_stream();
        let mut parser = sse::Parser::default();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(ClientError::Transport)?;
            for event in parser.push(&chunk)? {
                let data = || -> Result<String, ClientError> {
                    #[derive(Deserialize)]
                    struct Data {
                        data: String,
                    }
                    serde_json::from_str::<Data>(&event.data)
                        .map(|d| d.data)
                        .map_err(|e| ClientError::Protocol(format!("a `{}` event: {e}", event.name)))
                };
                match event.name.as_str() {
                    "stdout" => on_event(ExecEvent::Stdout(data()?)),
                    "stderr" => on_event(ExecEvent::Stderr(data()?)),
                    "exit" => {
                        return serde_json::from_str(&event.data)
                            .map_err(|e| ClientError::Protocol(format!("the `exit` event: {e}")));
                    }
                    "error" => return Err(api_error_from_value(500, &event.data)),
                    _ => {}
                }
            }
        }
        Err(ClientError::Protocol("the execution's event stream ended without an `exit` event".into()))
    }

    /// Streams a sandbox file into `out`; answers the number of bytes written.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for a missing file; a refusal for a directory or special file.
    pub async fn download(
        &self,
        run_id: &str,
        path: &str,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let r = self
            .request(Method::GET, &format!("/api/sandboxes/{}/files", path_segment(run_id)))
            .query(&[("path", path)]);
        let mut body = self.send(r).await?.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(ClientError::Transport)?;
            out.write_all(&chunk)
                .await
                .map_err(|e| ClientError::Io { what: "writing the downloaded file".into(), source: e })?;
            n += chunk.len() as u64;
        }
        out.flush().await.map_err(|e| ClientError::Io { what: "writing the downloaded file".into(), source: e })?;
        Ok(n)
    }

    /// Streams a local file into the sandbox at `path` (replaced atomically); answers the bytes written.
    ///
    /// # Errors
    /// When the local file can't be read, or the server refuses the upload.
    pub async fn upload_file(&self, run_id: &str, path: &str, local: &std::path::Path) -> Result<u64, ClientError> {
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| ClientError::Io { what: format!("opening {}", local.display()), source: e })?;
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
        let r = self
            .request(Method::PUT, &format!("/api/sandboxes/{}/files", path_segment(run_id)))
            .query(&[("path", path)])
            .header("content-type", "application/octet-stream")
            .header("content-length", len)
            .body(body);
        self.send(r).await?;
        Ok(len)
    }

    /// Writes `bytes` into the sandbox at `path`.
    ///
    /// # Errors
    /// The server's refusal.
    pub async fn upload_bytes(&self, run_id: &str, path: &str, bytes: Vec<u8>) -> Result<(), ClientError> {
        let r = self
            .request(Method::PUT, &format!("/api/sandboxes/{}/files", path_segment(run_id)))
            .query(&[("path", path)])
            .header("content-type", "application/octet-stream")
            .body(bytes);
        self.send(r).await.map(drop)
    }

    /// Lists a sandbox directory: `{"path", "entries": [{"path", "name", "kind", "size", ...}]}`.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] for a missing directory.
    pub async fn list_files(&self, run_id: &str, path: &str) -> Result<Value, ClientError> {
        let r = self
            .request(Method::GET, &format!("/api/sandboxes/{}/files/list", path_segment(run_id)))
            .query(&[("path", path)]);
        self.json(r).await
    }
}

async fn error_from(response: Response) -> ClientError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    api_error_from_value(status.as_u16(), &body)
}

pub(crate) fn api_error_from_value(status: u16, body: &str) -> ClientError {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let err = v.get("error").unwrap_or(&v);
    let code = err.get("code").and_then(Value::as_str).unwrap_or("unknown").to_owned();
    let message =
        err.get("message").and_then(Value::as_str).map_or_else(|| body.chars().take(300).collect(), str::to_owned);
    match StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR) {
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized { message },
        StatusCode::NOT_FOUND => ClientError::NotFound { message },
        _ => ClientError::Api { status, code, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_the_servers_code_and_message() {
        let e = api_error_from_value(409, r#"{"error":{"code":"conflict","message":"run x exists"}}"#);
        assert_eq!(e.to_string(), "agentboxd answered 409 conflict: run x exists");
        assert!(matches!(api_error_from_value(404, r#"{"error":{"code":"not_found","message":"no run y"}}"#),
            ClientError::NotFound { message } if message == "no run y"));
        assert!(matches!(api_error_from_value(401, "{}"), ClientError::Unauthorized { .. }));
        let e = api_error_from_value(502, "<html>bad gateway</html>");
        assert_eq!(e.to_string(), "agentboxd answered 502 unknown: <html>bad gateway</html>");
    }

    #[test]
    fn route_segments_are_escaped() {
        assert_eq!(path_segment("task-1.a_b"), "task-1.a_b");
        assert_eq!(path_segment("../x?y"), "..%2Fx%3Fy");
    }
}
