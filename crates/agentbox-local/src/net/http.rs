//! The HTTP proxy: CONNECT tunnels, and plain HTTP requests in absolute form.
//!
//! Every request on a client connection is checked on its own, so a client
//! can't reuse a connection made for an allowed host to reach another one.
//! Plain HTTP requests are sent to the destination on a fresh connection with
//! the Host header set from the request's URI.

use std::convert::Infallible;
use std::sync::Arc;

use agentbox_core::budget::{self, Slot};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::audit::Pending;
use super::policy::Rule;
use super::{OpenError, Proxy};

pub(super) type Body = BoxBody<Bytes, hyper::Error>;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Most headers in one request head.
const MAX_HEADERS: usize = 64;

/// Serves one client connection until it closes; `slot` is the connection's place in the budget,
/// which a CONNECT tunnel keeps until it closes.
///
/// The read buffer, and so the largest request head, is bounded by the budget's
/// `max_head_bytes` (a larger head is answered 431 and the connection closed), and a head must
/// arrive within `header_timeout`, which is also the idle limit between requests.
pub(super) async fn serve(stream: TcpStream, proxy: Proxy, slot: Arc<Slot>) {
    let limits = budget::proxy_pool().limits();
    let service = hyper::service::service_fn(move |req| {
        let p = proxy.clone();
        let slot = slot.clone();
        async move { Ok::<_, Infallible>(handle(req, p, slot).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .preserve_header_case(true)
        .title_case_headers(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "egress proxy client connection ended");
    }
}

pub(super) fn text(status: StatusCode, reason: Option<String>, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Some(reason) = reason.and_then(|s| hyper::ext::ReasonPhrase::try_from(s).ok()) {
        r.extensions_mut().insert(reason);
    }
    r
}

pub(super) fn refused(host: &str, port: u16, rule: &Rule) -> Response<Body> {
    let mut r = text(
        StatusCode::FORBIDDEN,
        Some(format!("Forbidden by the sandbox egress policy ({})", rule.name())),
        format!("the sandbox egress proxy refused {host}:{port}: {rule} (rule {})\n", rule.name()),
    );
    if let Ok(v) = HeaderValue::from_str(rule.name()) {
        r.headers_mut().insert(HeaderName::from_static("x-agentbox-refused"), v);
    }
    r
}

fn failed(error: OpenError, host: &str, port: u16) -> Response<Body> {
    match error {
        OpenError::Refused(rule) => refused(host, port, &rule),
        OpenError::Failed(msg) => text(StatusCode::BAD_GATEWAY, None, format!("{msg}\n")),
    }
}

async fn handle(req: Request<Incoming>, proxy: Proxy, slot: Arc<Slot>) -> Response<Body> {
    if req.method() == Method::CONNECT { connect(req, proxy, slot).await } else { forward(req, proxy).await }
}

async fn connect(req: Request<Incoming>, proxy: Proxy, client_slot: Arc<Slot>) -> Response<Body> {
    let Some((host, port)) = req.uri().authority().and_then(|a| Some((a.host().to_owned(), a.port_u16()?))) else {
        return text(StatusCode::BAD_REQUEST, None, "CONNECT needs a host:port target\n".into());
    };
    let up = match proxy.open(&host, port, "http-connect").await {
        Ok(up) => up,
        Err(e) => return failed(e, &host, port),
    };
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => proxy.carry(TokioIo::new(upgraded), up).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
        drop(client_slot);
    });
    Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed())
}

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

async fn forward(req: Request<Incoming>, proxy: Proxy) -> Response<Body> {
    let uri = req.uri().clone();
    let Some(authority) = uri.authority().cloned() else {
        return text(
            StatusCode::BAD_REQUEST,
            None,
            "this is the sandbox's egress proxy: send requests in absolute form (GET http://host/path) or use CONNECT\n"
                .into(),
        );
    };
    if uri.scheme_str() != Some("http") {
        proxy.shared.refuse(
            "http",
            authority.host(),
            authority.port_u16().unwrap_or(0),
            &Rule::Unsupported("a plain request for a non-http URL"),
        );
        return text(
            StatusCode::BAD_REQUEST,
            None,
            format!(
                "only http:// URLs can be sent as plain requests; use CONNECT for {}\n",
                uri.scheme_str().unwrap_or("this scheme")
            ),
        );
    }
    let host = authority.host().to_owned();
    let port = authority.port_u16().unwrap_or(80);
    let method = req.method().as_str().to_owned();
    let path = uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let up = match proxy.open(&host, port, "http").await {
        Ok(up) => up,
        Err(e) => return failed(e, &host, port),
    };
    let super::Upstream { stream, target, slot } = up;
    let counts = stream.counts();
    let mut pending = Pending::new("request", "http", &target.host.to_string(), port);
    {
        let r = pending.record();
        r.address = Some(target.ip.to_string());
        r.method = Some(method.clone());
        r.path = Some(path.clone());
    }
    let rules = proxy.current();
    let (mut parts, body) = req.into_parts();
    let checked = rules.policy.check_request(&target.host, port, &method, &path).and_then(|matched| {
        let applied = rules.secrets.apply(&proxy.shared.ctx.secrets, &target.host, port, &mut parts)?;
        Ok((matched, applied))
    });
    match checked {
        Ok((matched, applied)) => {
            let r = pending.record();
            r.rule = matched;
            r.secrets.clone_from(&applied.names);
            if !applied.body.is_empty() {
                // Bodies are rewritten on inspected (TLS) connections only.
                let rule = Rule::Unsupported("replacing a secret placeholder in a plain HTTP request body");
                return refuse_request(&proxy, pending, &host, port, &rule);
            }
        }
        Err(rule) => return refuse_request(&proxy, pending, &host, port, &rule),
    }
    // A destination's response head is bounded too (more generously than a request's: cookies).
    let head_limit = (budget::proxy_pool().limits().max_head_bytes * 4).max(64 << 10);
    let handshake = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .title_case_headers(true)
        .max_buf_size(head_limit)
        .handshake::<_, Body>(TokioIo::new(stream))
        .await;
    let (mut sender, conn) = match handshake {
        Ok(pair) => pair,
        Err(e) => return text(StatusCode::BAD_GATEWAY, None, format!("talking to {host}:{port} failed: {e}\n")),
    };
    let driver = proxy.clone();
    tokio::spawn(async move {
        driver.guard(&target, conn).await;
        drop(slot);
        driver.shared.audit.push(pending.finish(Some(&counts)));
    });
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
        parts.headers.insert(header::HOST, v);
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match path.parse() {
        Ok(u) => u,
        Err(_) => return text(StatusCode::BAD_REQUEST, None, "bad request path\n".into()),
    };
    match sender.send_request(Request::from_parts(parts, body.boxed())).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => text(StatusCode::BAD_GATEWAY, None, format!("the request to {host}:{port} failed: {e}\n")),
    }
}

/// Counts, logs and records a refused request, and answers it.
fn refuse_request(proxy: &Proxy, mut pending: Pending, host: &str, port: u16, rule: &Rule) -> Response<Body> {
    proxy.shared.count_refusal("http", host, port, rule);
    let r = pending.record();
    r.decision = agentbox_core::egress::EgressDecision::Refused;
    r.rule = Some(rule.name().to_owned());
    r.status = Some(StatusCode::FORBIDDEN.as_u16());
    if let Rule::SecretWrongHost(name) = rule {
        r.secrets = vec![name.clone()];
    }
    proxy.shared.audit.push(pending.finish(None));
    refused(host, port, rule)
}
