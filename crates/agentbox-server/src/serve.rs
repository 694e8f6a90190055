//! The HTTP/1.1 listener: connection caps (in all and per client address), header limits, slow-client
//! and idle timeouts, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::budget::Connections;
use crate::config::Limits;

/// Serves `router` on `listener` until `shutdown` completes, then waits up to `grace` for requests in flight.
///
/// Each request carries the client's address as [`ConnectInfo<SocketAddr>`]. At most
/// `limits.max_connections_per_client` connections from one address are open at once, further ones
/// are closed at once; when `limits.max_connections` are open, a silent connection (no request yet)
/// of an address holding more is closed to make room, else the new one is closed (see
/// [`Connections`]). A connection that sends no request head within `limits.header_read_timeout`,
/// first or between requests, is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let connections = Arc::new(Connections::new(limits.max_connections, limits.max_connections_per_client));
    serve_counted(listener, router, limits, connections, shutdown, grace).await;
}

/// [`serve`], counting connections in `connections` (whose caps apply instead of the limits').
pub(crate) async fn serve_counted(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    // Graceful shutdown by hand: hyper-util's helper can't watch connections that allow upgrades.
    let stopping = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    if agentbox_core::budget::log_limiter().allow("accepting a connection failed", "the listener") {
                        tracing::warn!(error = %e, "accepting a connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streamed responses (SSE, Connect streams) are written in small pieces: without TCP_NODELAY, Nagle's
        // algorithm holds each behind the client's delayed ACK, about 40 ms.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %e, "setting TCP_NODELAY failed");
        }
        let Some(admitted) = connections.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let router = router.clone();
        let silent = admitted.spoke();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            silent.store(false, Ordering::Release);
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        // With upgrades: terminals are WebSockets (an upgraded connection leaves this task; its
        // session ends with its process).
        let conn = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let stopping = stopping.clone();
        tracker.spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                ended = conn.as_mut() => if let Err(e) = ended {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                },
                () = stopping.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    if let Err(e) = conn.await {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    }
                }
                () = admitted.closing() => tracing::debug!(peer = %peer, "closed a silent connection to make room"),
            }
            drop(admitted);
        });
    }
    drop(listener);
    stopping.cancel();
    tracker.close();
    tokio::select! {
        () = tracker.wait() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(grace = ?grace, "requests still in flight after the grace period; closing"),
    }
}

/// Binds `addr`.
///
/// # Errors
/// [`crate::ServerError::Listen`] saying what address failed.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::ServerError> {
    TcpListener::bind(addr).await.map_err(|source| crate::ServerError::Listen { addr: addr.to_string(), source })
}
