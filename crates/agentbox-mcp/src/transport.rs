//! The transports: one byte stream (stdio) and streamable HTTP.

use std::future::Future;
use std::sync::Arc;

use rmcp::ServiceExt as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::server::{McpServer, McpSession};

/// Why serving a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The client and the server could not start the protocol.
    #[error("the MCP session could not start: {0}")]
    Start(String),
    /// The serving task failed.
    #[error("the MCP session failed: {0}")]
    Task(String),
}

/// The streamable HTTP service, ready to mount (for example at `/mcp` with axum's `route_service`).
pub type HttpService = StreamableHttpService<McpSession, LocalSessionManager>;

impl McpServer {
    /// Serves one client on a byte stream (stdio, a socket, an in-process duplex) until the client
    /// closes it or `shutdown` completes, then destroys the session's default sandbox.
    ///
    /// For stdio pass the halves of `rmcp::transport::io::stdio_pipes()`: nothing else may write to stdout.
    ///
    /// # Errors
    /// [`TransportError`] if the session could not start or its task failed. A client that closes
    /// the stream before saying anything is not an error.
    pub async fn serve<R, W>(
        &self,
        reader: R,
        writer: W,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), TransportError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        use rmcp::service::ServerInitializeError as Init;
        let session = self.stream_session();
        let ct = CancellationToken::new();
        tokio::pin!(shutdown);
        let started = tokio::select! {
            r = session.clone().serve_with_ct((reader, writer), ct.clone()) => Some(r),
            () = &mut shutdown => None,
        };
        let result = match started {
            None | Some(Err(Init::ConnectionClosed(_) | Init::Cancelled)) => Ok(()),
            Some(Err(e)) => Err(TransportError::Start(e.to_string())),
            Some(Ok(running)) => {
                let waiting = running.waiting();
                tokio::pin!(waiting);
                let ended = tokio::select! {
                    r = &mut waiting => r,
                    () = &mut shutdown => {
                        ct.cancel();
                        waiting.await
                    }
                };
                ended.map(|_| ()).map_err(|e| TransportError::Task(e.to_string()))
            }
        };
        session.close().await;
        result
    }

    /// Serves one client on this process's stdin and stdout, as [`serve`](Self::serve) does.
    ///
    /// # Errors
    /// As [`serve`](Self::serve).
    pub async fn serve_stdio(&self, shutdown: impl Future<Output = ()>) -> Result<(), TransportError> {
        let (stdin, stdout) = rmcp::transport::io::stdio_pipes();
        self.serve(stdin, stdout, shutdown).await
    }
}

/// The streamable HTTP transport of `server`, with `server`'s allowed hosts and origins and session
/// idle timeout. Each HTTP session is an [`McpSession`]: its default sandbox is destroyed when the
/// client deletes the session, the session idles out, or `cancel` is cancelled.
///
/// Authentication is the embedding server's job: put it in front (agentboxd checks its bearer token).
#[must_use]
pub fn http_service(server: &McpServer, cancel: CancellationToken) -> HttpService {
    let config = server.config();
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(config.session_idle_timeout);
    let mut http = StreamableHttpServerConfig::default().with_cancellation_token(cancel);
    http = if config.allowed_hosts.is_empty() {
        http.disable_allowed_hosts()
    } else {
        http.with_allowed_hosts(config.allowed_hosts.clone())
    };
    if !config.allowed_origins.is_empty() {
        http = http.with_allowed_origins(config.allowed_origins.clone());
    }
    let server = server.clone();
    StreamableHttpService::new(move || Ok(server.http_session()), Arc::new(sessions), http)
}
