//! Code: E2B's code interpreter (`POST /execute`, NDJSON) in templates that have one, the process API elsewhere.

use std::sync::Arc;

use agentbox_core::{
    CodeRequest, Command, Error, ExecEvent, ExecRequest, ExecStream, ExitStatus, Language, Result, SandboxId,
};
use reqwest::Method;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::{Handle, Inner};
use crate::config::CODE_INTERPRETER_PORT;
use crate::error::{Call, Plane, http_error, retry_after};
use crate::mapping::{self, sandbox_path};
use crate::transport::{ONCE, RetryOn, describe_reqwest};
use crate::wire::{Context, CreateContext, ExecuteRequest, OutputLine};

/// Directory of the source files of code run through the process API.
pub const CODE_DIR: &str = "/tmp/agentbox-code";

/// Removes ANSI escape sequences (IPython colours its tracebacks).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The text an interpreter error is reported with on stderr.
fn error_text(line: &OutputLine) -> String {
    let name = line.name.clone().unwrap_or_else(|| "Error".into());
    let value = line.value.clone().unwrap_or_default();
    let headline = if value.is_empty() { name } else { format!("{name}: {value}") };
    match line.traceback.as_deref().map(strip_ansi) {
        Some(tb) if !tb.trim().is_empty() => {
            let mut text = tb.trim_end().to_owned();
            if !text.contains(&value) {
                text.push('\n');
                text.push_str(&headline);
            }
            text.push('\n');
            text
        }
        _ => format!("{headline}\n"),
    }
}

/// Folds NDJSON lines into exec events; `Some(status)` once the execution ended.
#[derive(Debug, Default)]
pub(crate) struct NdjsonState {
    buf: Vec<u8>,
    failed: bool,
}

impl NdjsonState {
    /// Feeds bytes; returns the events they complete and whether `end_of_execution` arrived.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<(Vec<ExecEvent>, bool)> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(newline) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=newline).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed: OutputLine = serde_json::from_slice(&line).map_err(|e| {
                Error::from(crate::E2bError::from(crate::connect::ProtocolError::BadMessage {
                    what: "code interpreter output line",
                    detail: e.to_string(),
                }))
            })?;
            match parsed.kind.as_str() {
                "stdout" => events.push(ExecEvent::Stdout(parsed.text.unwrap_or_default().into_bytes())),
                "stderr" => events.push(ExecEvent::Stderr(parsed.text.unwrap_or_default().into_bytes())),
                "result" => {
                    if let Some(text) = parsed.text.filter(|t| !t.is_empty()) {
                        events.push(ExecEvent::Stdout(format!("{text}\n").into_bytes()));
                    }
                }
                "error" => {
                    self.failed = true;
                    events.push(ExecEvent::Stderr(error_text(&parsed).into_bytes()));
                }
                "end_of_execution" => return Ok((events, true)),
                _ => {}
            }
        }
        Ok((events, false))
    }

    /// Whether an error was reported.
    pub(crate) fn failed(&self) -> bool {
        self.failed
    }
}

fn interpreter_language(language: Language) -> &'static str {
    match language {
        Language::Python => "python",
        Language::Javascript => "javascript",
        Language::Typescript => "typescript",
        Language::Bash => "bash",
    }
}

impl Inner {
    pub(crate) async fn run_code(self: &Arc<Self>, id: &SandboxId, request: CodeRequest) -> Result<ExecStream> {
        if request.code.contains('\0') {
            return Err(Error::InvalidRequest("the code contains a NUL byte".into()));
        }
        let h = self.handle(id).await?;
        if self.config.templates.has_code_interpreter(&h.template) {
            let limit = request.timeout.unwrap_or(h.execution_timeout);
            self.touch(&h, limit).await?;
            self.interpret(h, request, limit).await
        } else {
            self.run_code_as_process(id, &h, request).await
        }
    }

    /// Writes the code to a file and runs its interpreter through the process API.
    async fn run_code_as_process(
        self: &Arc<Self>,
        id: &SandboxId,
        h: &Handle,
        request: CodeRequest,
    ) -> Result<ExecStream> {
        let path = format!("{CODE_DIR}/{}-{}.{}", mapping::now_ms(), self.next_seq(), request.language.extension());
        self.write_file_on(h, &path, request.code.into_bytes()).await?;
        let argv: Vec<String> = match request.language {
            Language::Python => vec!["python3".into(), path.clone()],
            Language::Javascript => vec!["node".into(), path.clone()],
            Language::Typescript => {
                vec!["node".into(), "--experimental-strip-types".into(), "--no-warnings".into(), path.clone()]
            }
            Language::Bash => vec!["/bin/bash".into(), path.clone()],
        };
        let exec = ExecRequest {
            command: Command::Argv(argv),
            cwd: request.cwd,
            env: request.env,
            stdin: None,
            timeout: request.timeout,
            user: None,
        };
        self.exec_with_cleanup(id, exec, Some(path)).await
    }

    /// The id of the interpreter context for a language and working directory, created on first use.
    async fn context(&self, h: &Handle, language: Language, cwd: &str, fresh: bool) -> Result<String> {
        let key = (language, cwd.to_owned());
        if !fresh {
            if let Some(id) = h.lock().contexts.get(&key) {
                return Ok(id.clone());
            }
        }
        let lang = interpreter_language(language);
        let request = self
            .sandbox_request(h, CODE_INTERPRETER_PORT, Method::POST, "/contexts")?
            .json(&CreateContext { language: lang.to_owned(), cwd: cwd.to_owned() });
        let action = format!("start a {lang} interpreter context");
        let subject = format!("{lang} interpreter");
        let call = Call { plane: Plane::Sandbox, action: &action, subject: &subject, sandbox: Some(h.id.as_str()) };
        let context: Context = match self.sandbox_send(h, request, ONCE, call).await {
            Ok(response) => crate::backend::parse_json(&response.body, "code interpreter context")?,
            Err(Error::Backend { message: m, .. } | Error::InvalidRequest(m)) if language != Language::Python => {
                return Err(Error::Unsupported(format!(
                    "the code interpreter of template {} cannot run {lang} ({m}); use a template with a {lang} kernel, or \
                     leave the template out of E2B_CODE_INTERPRETER_TEMPLATES to run code through the process API",
                    h.template
                )));
            }
            Err(e) => return Err(e),
        };
        h.lock().contexts.insert(key, context.id.clone());
        Ok(context.id)
    }

    async fn interpret(
        self: &Arc<Self>,
        h: Arc<Handle>,
        request: CodeRequest,
        limit: std::time::Duration,
    ) -> Result<ExecStream> {
        let cwd = match &request.cwd {
            Some(c) => sandbox_path(&self.home(), c)?,
            None => self.home(),
        };
        let started = Instant::now();
        let deadline = started + limit;
        let mut fresh = false;
        let (context_id, response) = loop {
            let context_id = self.context(&h, request.language, &cwd, fresh).await?;
            let body = ExecuteRequest {
                code: request.code.clone(),
                context_id: Some(context_id.clone()),
                language: None,
                env_vars: (!request.env.is_empty()).then(|| request.env.clone()),
            };
            let url = self.sandbox_url(&h, CODE_INTERPRETER_PORT, "/execute")?;
            let mut builder = self.http.post(url.clone()).json(&body);
            for (k, v) in self.sandbox_headers(&h, CODE_INTERPRETER_PORT) {
                builder = builder.header(k, v);
            }
            let timeout = self.config.timeouts.request;
            let response = match tokio::time::timeout(timeout, builder.send()).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(crate::transport::classify(&e, "POST /execute", &url, timeout).into()),
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "the code interpreter of sandbox {} did not answer within {timeout:?}",
                        h.id
                    )));
                }
            };
            let status = response.status().as_u16();
            if status == 200 {
                break (context_id, response);
            }
            let retry = retry_after(response.headers().get("retry-after").and_then(|v| v.to_str().ok()));
            let body =
                tokio::time::timeout(timeout, response.bytes()).await.ok().and_then(Result::ok).unwrap_or_default();
            if status == 404 && !fresh {
                // The context went away (its kernel was removed); make a new one once.
                h.lock().contexts.remove(&(request.language, cwd.clone()));
                fresh = true;
                continue;
            }
            if status == 502 {
                self.forget(&h.id);
            }
            let lang = interpreter_language(request.language);
            let action = format!("run {lang} code");
            let subject = format!("{lang} interpreter context {context_id}");
            let call = Call { plane: Plane::Sandbox, action: &action, subject: &subject, sandbox: Some(h.id.as_str()) };
            return Err(http_error(call, status, &body, retry));
        };
        let (tx, rx) = mpsc::channel(64);
        let inner = self.clone();
        let idle = self.config.timeouts.stream_idle;
        tokio::spawn(async move { inner.interpret_pump(h, context_id, response, tx, started, deadline, idle).await });
        Ok(ExecStream::new(rx))
    }

    #[allow(clippy::too_many_arguments)]
    async fn interpret_pump(
        self: Arc<Self>,
        h: Arc<Handle>,
        context_id: String,
        mut response: reqwest::Response,
        tx: mpsc::Sender<ExecEvent>,
        started: Instant,
        deadline: Instant,
        idle: std::time::Duration,
    ) {
        let mut state = NdjsonState::default();
        let outcome: std::result::Result<(), Option<String>> = loop {
            let chunk = tokio::select! {
                c = tokio::time::timeout(idle, response.chunk()) => c,
                () = tokio::time::sleep_until(deadline) => break Err(None),
                () = tx.closed() => break Err(Some(String::new())),
            };
            let bytes = match chunk {
                Ok(Ok(Some(bytes))) => bytes,
                Ok(Ok(None)) => break Err(Some("the output ended without end_of_execution".into())),
                Ok(Err(e)) => break Err(Some(describe_reqwest(&e))),
                Err(_) => break Err(Some(format!("no output or keep-alive for {idle:?}"))),
            };
            match state.push(&bytes) {
                Ok((events, done)) => {
                    for event in events {
                        if tx.send(event).await.is_err() {
                            break;
                        }
                    }
                    if done {
                        break Ok(());
                    }
                }
                Err(e) => break Err(Some(e.to_string())),
            }
        };
        drop(response);
        let duration = started.elapsed();
        let status = match outcome {
            Ok(()) => Some(ExitStatus {
                exit_code: i32::from(state.failed()),
                signal: None,
                timed_out: false,
                oom_killed: false,
                duration,
            }),
            Err(None) => {
                self.interrupt(&h, &context_id).await;
                Some(mapping::timed_out(duration))
            }
            Err(Some(why)) if why.is_empty() => {
                self.interrupt(&h, &context_id).await;
                None
            }
            Err(Some(why)) => {
                self.interrupt(&h, &context_id).await;
                let note = format!(
                    "\n[agentbox: the code interpreter's output broke before the end of the execution: {why}]\n"
                );
                let _ = tx.send(ExecEvent::Stderr(note.into_bytes())).await;
                Some(ExitStatus { exit_code: 255, signal: None, timed_out: false, oom_killed: false, duration })
            }
        };
        if let Some(status) = status {
            h.record_exit(status.exit_code);
            let _ = tx.send(ExecEvent::Exit(status)).await;
        }
    }

    /// Stops what runs in a context by restarting its kernel (its state is lost).
    async fn interrupt(&self, h: &Handle, context_id: &str) {
        let request = match self.sandbox_request(
            h,
            CODE_INTERPRETER_PORT,
            Method::POST,
            &format!("/contexts/{context_id}/restart"),
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(sandbox_id = %h.id, error = %e, "cannot address the code interpreter");
                return;
            }
        };
        let call = Call {
            plane: Plane::Sandbox,
            action: "restart an interpreter context",
            subject: context_id,
            sandbox: Some(h.id.as_str()),
        };
        if let Err(e) = self.sandbox_send(h, request, RetryOn { statuses: &[503], idempotent: true }, call).await {
            tracing::warn!(sandbox_id = %h.id, context_id, error = %e, "restarting an interpreter context failed; dropping it");
            h.lock().contexts.retain(|_, v| v != context_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_lines_become_events() {
        let mut s = NdjsonState::default();
        let (events, done) =
            s.push(b"{\"type\":\"stdout\",\"text\":\"hi\\n\",\"timestamp\":1}\n{\"type\":\"res").unwrap();
        assert_eq!(events, [ExecEvent::Stdout(b"hi\n".to_vec())]);
        assert!(!done);
        let (events, done) = s.push(b"ult\",\"text\":\"42\",\"is_main_result\":true}\n{\"type\":\"number_of_executions\",\"execution_count\":1}\n").unwrap();
        assert_eq!(events, [ExecEvent::Stdout(b"42\n".to_vec())]);
        assert!(!done);
        let tb = "\u{1b}[0;31mValueError\u{1b}[0m: boom";
        let line =
            serde_json::json!({"type": "error", "name": "ValueError", "value": "boom", "traceback": tb}).to_string();
        let (events, done) = s.push(format!("{line}\n{{\"type\":\"end_of_execution\"}}\n").as_bytes()).unwrap();
        assert_eq!(events, [ExecEvent::Stderr(b"ValueError: boom\n".to_vec())]);
        assert!(done && s.failed());
        assert!(NdjsonState::default().push(b"not json\n").is_err());
    }
}
