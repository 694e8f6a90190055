//! One HTTP exchange at a time, behind a trait so the retry and error logic is testable without a network, and
//! the retry loop itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, Url};

use crate::config::RetryPolicy;
use crate::error::retry_after;

/// A failed HTTP exchange (no status was received).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No answer within the time limit.
    #[error("{what} timed out after {after:?}: E2B did not answer in time")]
    Timeout {
        /// The request.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// The connection could not be made (nothing was sent).
    #[error("could not connect to {url} ({detail}): check E2B_DOMAIN, E2B_API_URL, E2B_SANDBOX_URL and the network")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        detail: String,
    },
    /// The exchange broke after the request was sent.
    #[error("the HTTP exchange with {url} failed: {detail}")]
    Other {
        /// Where.
        url: String,
        /// Why.
        detail: String,
    },
}

/// A request with its whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method.
    pub method: Method,
    /// URL, query included.
    pub url: Url,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Content type and body.
    pub body: Option<(String, Vec<u8>)>,
    /// Time limit of the whole exchange.
    pub timeout: Duration,
}

impl HttpRequest {
    /// A request without headers or body.
    #[must_use]
    pub fn new(method: Method, url: Url, timeout: Duration) -> Self {
        Self { method, url, headers: Vec::new(), body: None, timeout }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets a JSON body.
    #[must_use]
    pub fn json(mut self, value: &impl serde::Serialize) -> Self {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.body = Some(("application/json".to_owned(), bytes));
        self
    }

    /// The value of a header (case-insensitive).
    #[must_use]
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `METHOD path` for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        format!("{} {}", self.method, self.url.path())
    }
}

/// A response with its whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of a header (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the status is 2xx.
    #[must_use]
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends one request and reads its whole response.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends `request`.
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError>;
}

/// [`Transport`] over a reqwest client.
#[derive(Debug, Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// Wraps a client.
    #[must_use]
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }
}

/// The error chain of a reqwest error, which its `Display` alone leaves out.
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub(crate) fn classify(e: &reqwest::Error, what: &str, url: &Url, timeout: Duration) -> TransportError {
    if e.is_timeout() {
        TransportError::Timeout { what: what.to_owned(), after: timeout }
    } else if e.is_connect() {
        TransportError::Connect { url: url.to_string(), detail: describe_reqwest(e) }
    } else {
        TransportError::Other { url: url.to_string(), detail: describe_reqwest(e) }
    }
}

#[async_trait]
impl Transport for ReqwestTransport {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let what = request.describe();
        let mut builder = self.client.request(request.method.clone(), request.url.clone()).timeout(request.timeout);
        for (k, v) in &request.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        if let Some((content_type, body)) = request.body {
            builder = builder.header(reqwest::header::CONTENT_TYPE, content_type).body(body);
        }
        let response = builder.send().await.map_err(|e| classify(&e, &what, &request.url, request.timeout))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = response.bytes().await.map_err(|e| classify(&e, &what, &request.url, request.timeout))?.to_vec();
        Ok(HttpResponse { status, headers, body })
    }
}

/// When a call may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// Statuses that are retried.
    pub statuses: &'static [u16],
    /// Whether a timeout or broken exchange is retried (only for idempotent calls; a failed connection, where nothing
    /// was sent, is always retried).
    pub idempotent: bool,
}

/// Idempotent control-plane calls.
pub const CONTROL_IDEMPOTENT: RetryOn = RetryOn { statuses: &[429, 500, 502, 503, 504], idempotent: true };
/// Sandbox creation: retried on rate limits and transient 5xx, never after a timeout (it may have been created).
pub const CONTROL_CREATE: RetryOn = RetryOn { statuses: &[429, 500, 502, 503, 504], idempotent: false };
/// Idempotent calls to a sandbox (a 502 there means the sandbox is gone, so it is not retried).
pub const SANDBOX_IDEMPOTENT: RetryOn = RetryOn { statuses: &[429, 503], idempotent: true };
/// Calls that must not be repeated once sent.
pub const ONCE: RetryOn = RetryOn { statuses: &[], idempotent: false };

fn jitter(d: Duration) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = STATE.load(Ordering::Relaxed)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| u64::from(t.subsec_nanos()));
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    // Between half and all of the backoff.
    let fraction = 0.5 + (x % 1000) as f64 / 2000.0;
    d.mul_f64(fraction)
}

/// Sends `request`, repeating it as `on` and `policy` allow, and returns the last answer.
///
/// # Errors
/// The last [`TransportError`] when no attempt got an answer.
pub async fn send_with_retry(
    transport: &dyn Transport,
    policy: &RetryPolicy,
    request: HttpRequest,
    on: RetryOn,
) -> Result<HttpResponse, TransportError> {
    let mut retry = 0u32;
    loop {
        let result = transport.send(request.clone()).await;
        let attempts_left = retry + 1 < policy.max_attempts;
        let wait = match &result {
            Ok(r) if attempts_left && on.statuses.contains(&r.status) => match retry_after(r.header("retry-after")) {
                Some(d) if d > policy.max_retry_after => return result,
                Some(d) => d,
                None => jitter(policy.backoff(retry)),
            },
            Err(TransportError::Connect { .. }) if attempts_left => jitter(policy.backoff(retry)),
            Err(TransportError::Timeout { .. } | TransportError::Other { .. }) if attempts_left && on.idempotent => {
                jitter(policy.backoff(retry))
            }
            _ => return result,
        };
        tracing::debug!(request = %request.describe(), retry, ?wait, outcome = ?result.as_ref().map(|r| r.status), "retrying an E2B call");
        tokio::time::sleep(wait).await;
        retry += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn request() -> HttpRequest {
        HttpRequest::new(Method::GET, Url::parse("https://api.e2b.test/v2/sandboxes").unwrap(), Duration::from_secs(5))
    }

    #[allow(clippy::unnecessary_wraps, reason = "scripted answers are results")]
    fn status(code: u16, headers: &[(&str, &str)]) -> Result<HttpResponse, TransportError> {
        Ok(HttpResponse {
            status: code,
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            body: Vec::new(),
        })
    }

    /// A mock that answers from a script and counts the calls.
    fn scripted(script: Vec<Result<HttpResponse, TransportError>>) -> (MockTransport, Arc<Mutex<usize>>) {
        let calls = Arc::new(Mutex::new(0));
        let counter = calls.clone();
        let script = Mutex::new(script.into_iter());
        let mut mock = MockTransport::new();
        mock.expect_send().returning(move |_| {
            *counter.lock().unwrap() += 1;
            script.lock().unwrap().next().expect("more calls than scripted")
        });
        (mock, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_statuses_then_succeeds() {
        let (mock, calls) = scripted(vec![status(503, &[]), status(502, &[]), status(200, &[])]);
        let r = send_with_retry(&mock, &RetryPolicy::default(), request(), CONTROL_IDEMPOTENT).await.unwrap();
        assert_eq!((r.status, *calls.lock().unwrap()), (200, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_attempt_bound_holds() {
        let policy = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
        let (mock, calls) = scripted(vec![status(500, &[]), status(500, &[]), status(500, &[]), status(200, &[])]);
        let r = send_with_retry(&mock, &policy, request(), CONTROL_CREATE).await.unwrap();
        assert_eq!((r.status, *calls.lock().unwrap()), (500, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_and_bounded() {
        let (mock, calls) = scripted(vec![status(429, &[("Retry-After", "3")]), status(201, &[])]);
        let start = tokio::time::Instant::now();
        let r = send_with_retry(&mock, &RetryPolicy::default(), request(), CONTROL_CREATE).await.unwrap();
        assert_eq!((r.status, *calls.lock().unwrap()), (201, 2));
        assert!(start.elapsed() >= Duration::from_secs(3), "waited {:?}", start.elapsed());

        let (mock, calls) = scripted(vec![status(429, &[("retry-after", "600")])]);
        let r = send_with_retry(&mock, &RetryPolicy::default(), request(), CONTROL_CREATE).await.unwrap();
        assert_eq!((r.status, *calls.lock().unwrap()), (429, 1), "a Retry-After past the bound is not waited out");
    }

    #[tokio::test(start_paused = true)]
    async fn non_idempotent_calls_are_not_repeated_after_a_timeout() {
        let timeout = || Err(TransportError::Timeout { what: "POST /sandboxes".into(), after: Duration::from_secs(1) });
        let (mock, calls) = scripted(vec![timeout()]);
        assert!(send_with_retry(&mock, &RetryPolicy::default(), request(), CONTROL_CREATE).await.is_err());
        assert_eq!(*calls.lock().unwrap(), 1);

        let (mock, calls) = scripted(vec![timeout(), status(200, &[])]);
        assert!(send_with_retry(&mock, &RetryPolicy::default(), request(), CONTROL_IDEMPOTENT).await.is_ok());
        assert_eq!(*calls.lock().unwrap(), 2);

        let refused = || Err(TransportError::Connect { url: "x".into(), detail: "refused".into() });
        let (mock, calls) = scripted(vec![refused(), status(200, &[])]);
        assert!(send_with_retry(&mock, &RetryPolicy::default(), request(), ONCE).await.is_ok());
        assert_eq!(*calls.lock().unwrap(), 2, "nothing was sent, so even a one-shot call is retried");
    }

    #[tokio::test(start_paused = true)]
    async fn sandbox_calls_do_not_retry_a_gone_sandbox() {
        let (mock, calls) = scripted(vec![status(502, &[])]);
        let r = send_with_retry(&mock, &RetryPolicy::default(), request(), SANDBOX_IDEMPOTENT).await.unwrap();
        assert_eq!((r.status, *calls.lock().unwrap()), (502, 1));
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000), "{d:?}");
        }
    }
}
