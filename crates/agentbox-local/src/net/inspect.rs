//! Inspected connections: the proxy terminates the sandbox's TLS with a certificate from the
//! sandbox's CA, reads each HTTP/1.1 request, checks it against the method and path rules,
//! rewrites it with the sandbox's secrets, and sends it over its own TLS connection to the
//! destination, verified against the host's roots.
//!
//! Only hosts with a secret, an `inspect_domains` entry, or an entry with a method or a path are
//! inspected; every other CONNECT stays an opaque tunnel. What the sandbox sends is bounded as on
//! the plain proxy: the request head by the budget's `max_head_bytes` and `header_timeout`, the TLS
//! handshakes by `header_timeout`, and a body the proxy rewrites by [`MAX_REWRITE_BODY`].

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use agentbox_core::budget;
use agentbox_core::egress::EgressDecision;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use super::audit::{Counts, Pending};
use super::http::{Body, refused, strip_hop_by_hop, text};
use super::policy::Rule;
use super::secrets::{MAX_REWRITE_BODY, rewrite_body};
use super::{Proxy, Shared, Target, Upstream};

/// Most headers in one request head, as on the plain proxy.
const MAX_HEADERS: usize = 64;

type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// What every request of one inspected connection shares.
struct Conn {
    proxy: Proxy,
    target: Target,
    address: String,
    counts: Arc<Counts>,
    sender: tokio::sync::Mutex<Sender>,
}

/// Serves an inspected connection until the sandbox closes it or the rules cut it.
///
/// # Errors
/// [`Rule::Tls`] when either handshake fails (logged and recorded by the caller).
pub(super) async fn serve<C>(proxy: &Proxy, client: C, upstream: Upstream) -> Result<(), Rule>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = budget::proxy_pool().limits();
    let Upstream { stream, target, slot } = upstream;
    let counts = stream.counts();
    let host = target.host.match_text();
    let name = ServerName::try_from(host.clone()).map_err(|_| Rule::InvalidHost)?;
    let connector = tokio_rustls::TlsConnector::from(
        proxy
            .shared
            .ctx
            .upstream_tls()
            .map_err(|e| Rule::Tls(format!("the TLS client configuration for inspected hosts: {e}")))?,
    );
    let up = match tokio::time::timeout(limits.header_timeout, connector.connect(name, stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Rule::Tls(format!("the destination {host}:{}: {e}", target.port))),
        Err(_) => {
            return Err(Rule::Tls(format!("the destination {host}:{} did not finish the handshake", target.port)));
        }
    };
    let server_config = proxy
        .shared
        .ca()
        .map_err(|e| Rule::Tls(format!("making the sandbox's egress CA: {e}")))?
        .server_config(&host)
        .map_err(|e| Rule::Tls(format!("issuing a certificate: {e}")))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let client = match tokio::time::timeout(limits.header_timeout, acceptor.accept(client)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(Rule::Tls(format!(
                "the sandbox's client: {e} (does it trust the sandbox CA? see SSL_CERT_FILE)"
            )));
        }
        Err(_) => return Err(Rule::Tls("the sandbox's client did not finish the handshake".into())),
    };
    let head_limit = (limits.max_head_bytes * 4).max(64 << 10);
    let (sender, upstream_conn) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .title_case_headers(true)
        .max_buf_size(head_limit)
        .handshake::<_, Body>(TokioIo::new(up))
        .await
        .map_err(|e| Rule::Tls(format!("talking HTTP to {host}:{}: {e}", target.port)))?;
    let conn = Arc::new(Conn {
        proxy: proxy.clone(),
        address: target.ip.to_string(),
        target: target.clone(),
        counts,
        sender: tokio::sync::Mutex::new(sender),
    });
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(req, conn).await) }
    });
    let server = hyper::server::conn::http1::Builder::new()
        .preserve_header_case(true)
        .title_case_headers(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(client), service);
    let work = async {
        // The destination side runs while the sandbox side does; when the sandbox closes, both end.
        let upstream_driver = async {
            let _ = upstream_conn.await;
            std::future::pending::<()>().await;
        };
        tokio::select! {
            r = server => if let Err(e) = r { tracing::debug!(error = %e, "inspected client connection ended") },
            () = upstream_driver => {}
        }
    };
    proxy.guard(&target, work).await;
    drop(slot);
    Ok(())
}

async fn handle(req: Request<Incoming>, conn: Arc<Conn>) -> Response<Body> {
    let Conn { proxy, target, .. } = &*conn;
    let shared = &proxy.shared;
    let host = target.host.to_string();
    let mut pending = Pending::new("request", "tls", &host, target.port);
    let method = req.method().as_str().to_owned();
    let path = req.uri().path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    {
        let r = pending.record();
        r.address = Some(conn.address.clone());
        r.method = Some(method.clone());
        r.path = Some(path.clone());
    }
    let rules = proxy.current();
    let refuse = |mut pending: Pending, rule: Rule| {
        shared.count_refusal("tls", &format!("{method} {host}{}", path_for_log(&path)), target.port, &rule);
        let r = pending.record();
        r.decision = EgressDecision::Refused;
        r.rule = Some(rule.name().to_owned());
        if let Rule::SecretWrongHost(name) = &rule {
            r.secrets = vec![name.clone()];
        }
        let status =
            if matches!(rule, Rule::BodyTooLarge(_)) { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::FORBIDDEN };
        r.status = Some(status.as_u16());
        shared.audit.push(pending.finish(None));
        let mut resp = refused(&host, target.port, &rule);
        *resp.status_mut() = status;
        resp
    };
    match rules.policy.check_request(&target.host, target.port, &method, &path) {
        Ok(matched) => pending.record().rule = matched,
        Err(rule) => return refuse(pending, rule),
    }
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let applied = match rules.secrets.apply(&shared.ctx.secrets, &target.host, target.port, &mut parts) {
        Ok(a) => a,
        Err(rule) => return refuse(pending, rule),
    };
    pending.record().secrets.clone_from(&applied.names);
    let body: Body = if applied.body.is_empty() {
        body.boxed()
    } else {
        let bytes = match Limited::new(body, MAX_REWRITE_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return refuse(pending, Rule::BodyTooLarge(MAX_REWRITE_BODY));
            }
            Err(_) => return text(StatusCode::BAD_REQUEST, None, "the request body could not be read\n".into()),
        };
        let bytes = rewrite_body(&bytes, &applied.body).map_or(bytes, Bytes::from);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Full::new(bytes).map_err(|never| match never {}).boxed()
    };
    drop(applied);
    let start = (conn.counts.bytes_in.load(Ordering::Relaxed), conn.counts.bytes_out.load(Ordering::Relaxed));
    let sent = {
        let mut sender = conn.sender.lock().await;
        if sender.ready().await.is_err() {
            return text(StatusCode::BAD_GATEWAY, None, format!("the connection to {host}:{} closed\n", target.port));
        }
        sender.send_request(Request::from_parts(parts, body))
    };
    match sent.await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            pending.record().status = Some(parts.status.as_u16());
            let audited = Audited { inner: body, pending: Some(pending), conn: conn.clone(), start };
            Response::from_parts(parts, audited.boxed())
        }
        Err(e) => {
            let r = pending.record();
            r.status = Some(StatusCode::BAD_GATEWAY.as_u16());
            shared.audit.push(pending.finish(None));
            // The error is hyper's about the connection; it never holds the request's headers.
            text(StatusCode::BAD_GATEWAY, None, format!("the request to {host}:{} failed: {e}\n", target.port))
        }
    }
}

/// The path without its query, for logs (a query may carry a placeholder; never a value).
fn path_for_log(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// A response body that writes its request's audit record when it ends or is dropped.
struct Audited {
    inner: Incoming,
    pending: Option<Pending>,
    conn: Arc<Conn>,
    start: (u64, u64),
}

impl Audited {
    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            let c = &self.conn.counts;
            let mut record = p.finish(None);
            record.bytes_in = c.bytes_in.load(Ordering::Relaxed).saturating_sub(self.start.0);
            record.bytes_out = c.bytes_out.load(Ordering::Relaxed).saturating_sub(self.start.1);
            self.conn.proxy.shared.audit.push(record);
        }
    }
}

impl Drop for Audited {
    fn drop(&mut self) {
        self.finish();
    }
}

impl hyper::body::Body for Audited {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None | Some(Err(_)))) {
            self.finish();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Shared {
    /// Whether the proxy terminates TLS for `target` under `rules`.
    pub(super) fn inspects(rules: &super::Rules, target: &Target) -> bool {
        rules.policy.inspects(&target.host, target.port) || rules.secrets.covers(&target.host, target.port)
    }
}
