//! Calls to a sandbox's ports through E2B's proxy: envd's Connect RPCs and `/files`, and the process output stream.

use std::time::Duration;

use agentbox_core::{Error, Result};
use base64::Engine as _;
use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{Handle, Inner};
use crate::config::ENVD_PORT;
use crate::connect::{self, FrameDecoder, ProtocolError};
use crate::error::{Call, E2bError, Plane, connect_error, http_error, retry_after};
use crate::transport::{HttpRequest, HttpResponse, RetryOn, classify, send_with_retry};
use crate::wire::{EventMessage, ProcessEvent, StartRequest};

/// Header carrying envd's access token.
pub const ACCESS_TOKEN_HEADER: &str = "X-Access-Token";
/// Header carrying the traffic token for ports other than envd's.
pub const TRAFFIC_TOKEN_HEADER: &str = "E2B-Traffic-Access-Token";
/// Routing header: the sandbox.
pub const SANDBOX_ID_HEADER: &str = "E2b-Sandbox-Id";
/// Routing header: the port.
pub const SANDBOX_PORT_HEADER: &str = "E2b-Sandbox-Port";
/// Asks envd to send keep-alive events on quiet streams every so many seconds.
pub const KEEPALIVE_HEADER: &str = "Keepalive-Ping-Interval";

impl Inner {
    /// The URL of `path` on a port of a sandbox.
    pub(crate) fn sandbox_url(&self, h: &Handle, port: u16, path: &str) -> Result<Url> {
        let base = self
            .config
            .sandbox_base(h.id.as_str(), port, h.domain.as_deref())
            .map_err(|e| Error::backend(format!("cannot build the URL of sandbox {}: {e}", h.id)))?;
        base.join(path.trim_start_matches('/'))
            .map_err(|e| Error::backend(format!("cannot build a sandbox URL for {path}: {e}")))
    }

    /// The headers every call to a sandbox port carries: user, access tokens and routing.
    pub(crate) fn sandbox_headers(&self, h: &Handle, port: u16) -> Vec<(String, String)> {
        let user = base64::engine::general_purpose::STANDARD.encode(format!("{}:", self.config.user));
        let mut headers = vec![("Authorization".to_owned(), format!("Basic {user}"))];
        if let Some(token) = &h.envd_token {
            headers.push((ACCESS_TOKEN_HEADER.to_owned(), token.clone()));
        }
        if port != ENVD_PORT {
            if let Some(token) = &h.traffic_token {
                headers.push((TRAFFIC_TOKEN_HEADER.to_owned(), token.clone()));
            }
        }
        if self.config.routes_by_header() {
            headers.push((SANDBOX_ID_HEADER.to_owned(), h.id.to_string()));
            headers.push((SANDBOX_PORT_HEADER.to_owned(), port.to_string()));
        }
        headers
    }

    /// A request to a sandbox port with the sandbox headers and the request time limit.
    pub(crate) fn sandbox_request(&self, h: &Handle, port: u16, method: Method, path: &str) -> Result<HttpRequest> {
        let mut request = HttpRequest::new(method, self.sandbox_url(h, port, path)?, self.config.timeouts.request);
        request.headers = self.sandbox_headers(h, port);
        Ok(request)
    }

    /// Sends a request to a sandbox port; a non-2xx answer becomes an error described by `call`.
    pub(crate) async fn sandbox_send(
        &self,
        h: &Handle,
        request: HttpRequest,
        on: RetryOn,
        call: Call<'_>,
    ) -> Result<HttpResponse> {
        let response = send_with_retry(self.transport.as_ref(), &self.config.retry, request, on).await?;
        if response.ok() {
            return Ok(response);
        }
        if response.status == 502 {
            self.forget(&h.id);
        }
        Err(http_error(call, response.status, &response.body, retry_after(response.header("retry-after"))))
    }

    /// Calls a unary envd RPC such as `filesystem.Filesystem/Stat`.
    pub(crate) async fn envd_unary<Q: Serialize, R: DeserializeOwned>(
        &self,
        h: &Handle,
        procedure: &str,
        body: &Q,
        on: RetryOn,
        call: Call<'_>,
    ) -> Result<R> {
        let request = self
            .sandbox_request(h, ENVD_PORT, Method::POST, &format!("/{procedure}"))?
            .header("Connect-Protocol-Version", "1")
            .header("Connect-Timeout-Ms", self.config.timeouts.request.as_millis().to_string())
            .json(body);
        let response = self.sandbox_send(h, request, on, call).await?;
        let body = if response.body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { &response.body };
        serde_json::from_slice(body).map_err(|e| {
            Error::from(E2bError::from(ProtocolError::BadMessage {
                what: "envd response",
                detail: format!("{procedure}: {e}"),
            }))
        })
    }

    /// Starts a process with `process.Process/Start` and waits for its start event.
    ///
    /// `limit` is passed to envd as the call's deadline (plus a grace period), so a process outlives a vanished
    /// client by no more than that.
    pub(crate) async fn start_process(
        &self,
        h: &Handle,
        start: &StartRequest,
        limit: Option<Duration>,
        call: Call<'_>,
    ) -> Result<(u32, ProcessStream)> {
        let url = self.sandbox_url(h, ENVD_PORT, "/process.Process/Start")?;
        let timeouts = self.config.timeouts;
        let json =
            serde_json::to_vec(start).map_err(|e| Error::backend(format!("cannot encode a start request: {e}")))?;
        let mut builder = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/connect+json")
            .header("Connect-Protocol-Version", "1")
            .header(KEEPALIVE_HEADER, timeouts.keepalive_ping.as_secs().max(1).to_string())
            .body(connect::envelope(0, &json));
        if let Some(limit) = limit {
            let ms = (limit + Duration::from_secs(30)).as_millis();
            builder = builder.header("Connect-Timeout-Ms", ms.to_string());
        }
        for (k, v) in self.sandbox_headers(h, ENVD_PORT) {
            builder = builder.header(k, v);
        }
        let what = "POST /process.Process/Start";
        let response = match tokio::time::timeout(timeouts.request, builder.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(classify(&e, what, &url, timeouts.request).into()),
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "{what} to sandbox {} got no answer within {:?}",
                    h.id, timeouts.request
                )));
            }
        };
        let status = response.status().as_u16();
        if status != 200 {
            let retry = retry_after(response.headers().get("retry-after").and_then(|v| v.to_str().ok()));
            let body = tokio::time::timeout(timeouts.request, response.bytes())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            if status == 502 {
                self.forget(&h.id);
            }
            return Err(http_error(call, status, &body, retry));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if !content_type.starts_with("application/connect+json") {
            return Err(E2bError::from(ProtocolError::NotAStream(content_type)).into());
        }
        let mut stream = ProcessStream {
            response,
            decoder: FrameDecoder::new(),
            idle: timeouts.stream_idle,
            sandbox: h.id.to_string(),
            action: call.action.to_owned(),
            subject: call.subject.to_owned(),
        };
        let first = tokio::time::timeout(timeouts.request, stream.next()).await.map_err(|_| {
            Error::Timeout(format!("sandbox {} did not start the process within {:?}", h.id, timeouts.request))
        })??;
        match first {
            Some(ProcessEvent { start: Some(s), .. }) => Ok((s.pid, stream)),
            Some(other) => Err(Error::backend(format!("envd sent {other:?} before the process's start event"))),
            None => Err(Error::backend("envd ended the stream before the process started")),
        }
    }
}

/// The events of a started process, read from a Connect server stream.
pub struct ProcessStream {
    response: reqwest::Response,
    decoder: FrameDecoder,
    idle: Duration,
    sandbox: String,
    action: String,
    subject: String,
}

impl ProcessStream {
    /// The next event other than a keep-alive; `None` once the stream ended cleanly.
    ///
    /// # Errors
    /// The error the stream ended with, a broken or silent connection, or a malformed message.
    pub async fn next(&mut self) -> Result<Option<ProcessEvent>> {
        loop {
            if let Some(frame) = self.decoder.next_frame().map_err(E2bError::from)? {
                if frame.is_end() {
                    let end = connect::EndStream::parse(&frame.payload).map_err(E2bError::from)?;
                    return match end.error {
                        Some(e) => {
                            let call = Call {
                                plane: Plane::Sandbox,
                                action: &self.action,
                                subject: &self.subject,
                                sandbox: Some(&self.sandbox),
                            };
                            Err(connect_error(call, &e.code, &e.message))
                        }
                        None => Ok(None),
                    };
                }
                let message: EventMessage = serde_json::from_slice(&frame.payload).map_err(|e| {
                    E2bError::from(ProtocolError::BadMessage { what: "process event", detail: e.to_string() })
                })?;
                match message.event {
                    Some(event) if event.keepalive.is_none() => return Ok(Some(event)),
                    _ => continue,
                }
            }
            match tokio::time::timeout(self.idle, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.decoder.push(&bytes),
                Ok(Ok(None)) => {
                    self.decoder.finish().map_err(E2bError::from)?;
                    return Ok(None);
                }
                Ok(Err(e)) => {
                    return Err(Error::backend(format!(
                        "the output stream of sandbox {} broke: {}",
                        self.sandbox,
                        crate::transport::describe_reqwest(&e)
                    )));
                }
                Err(_) => {
                    return Err(Error::backend(format!(
                        "the output stream of sandbox {} was silent for {:?} although envd sends keep-alives: the \
                         connection is broken",
                        self.sandbox, self.idle
                    )));
                }
            }
        }
    }
}
