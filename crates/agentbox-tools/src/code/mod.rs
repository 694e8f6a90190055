//! The code tools: `run_code` and `code_context`.
//!
//! Python and JavaScript run in stateful contexts, as in a notebook: a long-lived
//! interpreter per context inside the sandbox keeps variables, imports and definitions
//! across calls. The interpreter is a small driver script written into the sandbox and
//! started with `spawn_background`; each call writes a request file, then runs a client
//! script (`exec`) that signals the driver through a FIFO and waits for its answer, which
//! is read back as a file. Only the [`SandboxBackend`](agentbox_core::SandboxBackend)
//! trait is used, so contexts work on every backend.
//!
//! TypeScript and Bash run statelessly through the backend's `run_code`.

use std::collections::BTreeMap;
use std::time::Duration;

use agentbox_core::{CodeRequest, ExecRequest, Language};
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ToolError, ToolErrorKind, ToolResult};
use crate::output::collect_exec;
use crate::tool::{ToolContext, ToolSandbox, TypedTool};

const PYTHON_DRIVER: &str = include_str!("drivers/python_driver.py");
const NODE_DRIVER: &str = include_str!("drivers/node_driver.js");
const CLIENT: &str = include_str!("drivers/client.sh");

/// A language code can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CodeLanguage {
    /// Python 3 (stateful contexts).
    Python,
    /// JavaScript on Node.js (stateful contexts).
    Javascript,
    /// TypeScript (stateless).
    Typescript,
    /// Bash (stateless).
    Bash,
}

impl CodeLanguage {
    /// The name used in requests.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.core().as_str()
    }

    /// The core language.
    #[must_use]
    pub fn core(self) -> Language {
        match self {
            Self::Python => Language::Python,
            Self::Javascript => Language::Javascript,
            Self::Typescript => Language::Typescript,
            Self::Bash => Language::Bash,
        }
    }

    /// Whether stateful contexts exist for this language.
    #[must_use]
    pub fn has_contexts(self) -> bool {
        matches!(self, Self::Python | Self::Javascript)
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "python" => Some(Self::Python),
            "javascript" => Some(Self::Javascript),
            "typescript" => Some(Self::Typescript),
            "bash" => Some(Self::Bash),
            _ => None,
        }
    }

    fn default_context(self) -> String {
        format!("default-{}", self.as_str())
    }
}

/// One rich result: a value in every format it offers, as in a notebook.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RichResult {
    /// Plain text (`repr` in Python, `util.inspect` in JavaScript).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
    /// PNG image, base64 (matplotlib figures, `_repr_png_`, PNG buffers).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub png: Option<String>,
    /// JPEG image, base64.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub jpeg: Option<String>,
    /// SVG image.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub svg: Option<String>,
    /// HTML.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub html: Option<String>,
    /// Markdown.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub markdown: Option<String>,
    /// LaTeX.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub latex: Option<String>,
    /// JSON data.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub json: Option<serde_json::Value>,
    /// Whether this is the value of the code's last expression.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub is_main_result: bool,
    /// Whether a format was cut or left out because it was over the size limits ([`CodeLimits`]).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub truncated: bool,
    /// Formats cut or left out, each saved whole to a file inside the sandbox (format -> path), which
    /// the file tools can read or download.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub files: BTreeMap<String, String>,
}

/// An error raised by the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeError {
    /// Exception class (`ZeroDivisionError`, `TypeError`, ...).
    pub name: String,
    /// Its message.
    pub value: String,
    /// The traceback, user frames only.
    pub traceback: String,
}

/// The size limits of a code context's answer. They are applied inside the sandbox by the context's
/// driver, so the host reads an answer of bounded size (and refuses a larger one unread): each format
/// of each rich result is at most `result_bytes` (longer text is cut with a mark; longer images and
/// JSON are left out), the whole answer at most `response_bytes` (results that do not fit are left
/// out), with at most `max_results` results and at most `json_elements` elements in its JSON results
/// (a JSON element costs the host about 32 bytes once parsed, however short its text). Whatever is
/// cut is saved to a file in the sandbox, named in the result's `files`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLimits {
    /// Largest format of one result, in bytes.
    pub result_bytes: usize,
    /// Largest whole answer, in bytes.
    pub response_bytes: usize,
    /// Most results in one answer.
    pub max_results: usize,
    /// Most JSON elements (array items, object members) in one answer's JSON results.
    pub json_elements: usize,
}

impl CodeLimits {
    /// The limits a tool configuration sets (`max_result_bytes`, `max_response_bytes`, `max_results`,
    /// `max_result_json_elements`, next to `max_output_bytes`); an answer is never smaller than one result.
    #[must_use]
    pub fn for_config(config: &crate::ToolsConfig) -> Self {
        let result_bytes = config.max_result_bytes.max(1024);
        Self {
            result_bytes,
            response_bytes: config.max_response_bytes.max(result_bytes),
            max_results: config.max_results.max(1),
            json_elements: config.max_result_json_elements.max(16),
        }
    }

    /// The most the host reads of an answer: the answer's limit, and room for the two output streams
    /// (each capped at `max_output_bytes` by the driver, and escaped in JSON at up to 6 bytes a byte).
    fn read_limit(self, config: &crate::ToolsConfig) -> u64 {
        let streams = config.max_output_bytes.saturating_mul(12).saturating_add(64 * 1024);
        u64::try_from(self.response_bytes.saturating_add(streams)).unwrap_or(u64::MAX)
    }

    /// Most JSON elements the host parses in an answer: the JSON results' budget, and room for the
    /// answer's own structure (a few per result).
    fn parse_elements(self) -> usize {
        self.json_elements.saturating_add(self.max_results.saturating_mul(32)).saturating_add(1024)
    }
}

#[derive(Debug, Deserialize)]
struct DriverResponse {
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
    #[serde(default)]
    stdout_file: Option<String>,
    #[serde(default)]
    stderr_file: Option<String>,
    #[serde(default)]
    results: Vec<RichResult>,
    #[serde(default)]
    error: Option<CodeError>,
    #[serde(default)]
    timed_out: bool,
    #[serde(default)]
    duration_ms: u64,
}

/// Input of `run_code`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCodeInput {
    /// The source to run.
    pub code: String,
    /// Language (default python, or the context's language when context_id is given).
    #[serde(default)]
    pub language: Option<CodeLanguage>,
    /// Context to run in (python and javascript): state persists across calls in the same context.
    /// Without it, python and javascript use the language's default context.
    #[serde(default)]
    pub context_id: Option<String>,
    /// Time limit in seconds (default: the sandbox's execution timeout). A context that times out is interrupted and keeps its state.
    #[serde(default)]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_secs: Option<u64>,
}

/// Output of `run_code`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCodeOutput {
    /// The language run.
    pub language: CodeLanguage,
    /// The context it ran in (stateless runs have none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub context_id: Option<String>,
    /// Standard output, cut in the middle with a mark when long.
    pub stdout: String,
    /// Standard error, likewise.
    pub stderr: String,
    /// Rich results: displayed values, figures, then the last expression's value.
    pub results: Vec<RichResult>,
    /// The error the code raised, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<CodeError>,
    /// Exit code (stateless runs).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exit_code: Option<i32>,
    /// Whether the time limit was hit.
    pub timed_out: bool,
    /// Where the full standard output was saved, when cut.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stdout_file: Option<String>,
    /// Where the full standard error was saved, when cut.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stderr_file: Option<String>,
    /// Something the model should know (a context was restarted and lost its state).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub notice: Option<String>,
    /// Wall-clock duration in milliseconds.
    pub duration_ms: u64,
}

/// A code context's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContextInfo {
    /// Its id.
    pub id: String,
    /// Its language.
    pub language: String,
    /// `alive`, `starting` or `dead` (a dead context must be restarted).
    pub status: String,
}

fn check_context_id(id: &str) -> ToolResult<()> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ToolError::invalid_input(format!("context id {id:?} is invalid: use 1 to 64 letters, digits, '-' or '_'")))
    }
}

fn contexts_dir(sb: &ToolSandbox<'_>) -> String {
    format!("{}/contexts", sb.config().state_dir.trim_end_matches('/'))
}

fn drivers_dir(sb: &ToolSandbox<'_>) -> String {
    format!("{}/drivers", sb.config().state_dir.trim_end_matches('/'))
}

fn context_dir(sb: &ToolSandbox<'_>, id: &str) -> String {
    format!("{}/{id}", contexts_dir(sb))
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn no_context(id: &str) -> ToolError {
    ToolError::not_found(format!(
        "no code context {id:?}; create it with code_context action=create, or list them with action=list"
    ))
}

/// Largest of the small files a context keeps (its language, its process id and log path).
const SMALL_FILE_BYTES: u64 = 4096;

/// Bytes of a dead interpreter's log shown in an error.
const LOG_TAIL_BYTES: usize = 2000;

/// Runs the client script and returns (exit code, stderr).
async fn client(sb: &ToolSandbox<'_>, args: &[&str], timeout: Duration) -> ToolResult<(i32, String, bool)> {
    let mut argv = vec!["/bin/bash".to_owned(), format!("{}/client.sh", drivers_dir(sb))];
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    let request = ExecRequest { timeout: Some(timeout), ..ExecRequest::argv(argv) };
    let mut out = sb.exec(request.clone()).await?.collect(64 * 1024).await;
    if out.exit_code == 127 && out.stderr.contains("client.sh") {
        // The sandbox's temporary files were cleared: put the scripts back and try again.
        install_drivers(sb).await?;
        out = sb.exec(request).await?.collect(64 * 1024).await;
    }
    Ok((out.exit_code, out.stderr.trim().to_owned() + out.stdout.trim(), out.timed_out))
}

async fn install_drivers(sb: &ToolSandbox<'_>) -> ToolResult<()> {
    let dir = drivers_dir(sb);
    sb.write_file(&format!("{dir}/client.sh"), CLIENT.as_bytes().to_vec()).await?;
    sb.write_file(&format!("{dir}/python_driver.py"), PYTHON_DRIVER.as_bytes().to_vec()).await?;
    sb.write_file(&format!("{dir}/node_driver.js"), NODE_DRIVER.as_bytes().to_vec()).await?;
    Ok(())
}

async fn context_language(sb: &ToolSandbox<'_>, id: &str) -> ToolResult<CodeLanguage> {
    let raw = match sb.read_file_limited(&format!("{}/language", context_dir(sb, id)), SMALL_FILE_BYTES).await {
        Ok(raw) => raw,
        Err(e) if e.kind == ToolErrorKind::NotFound => return Err(no_context(id)),
        Err(e) if e.kind == ToolErrorKind::LimitExceeded => {
            return Err(ToolError::failed(format!("code context {id:?} is damaged (unknown language); delete it")));
        }
        Err(e) => return Err(e),
    };
    CodeLanguage::parse(&String::from_utf8_lossy(&raw))
        .ok_or_else(|| ToolError::failed(format!("code context {id:?} is damaged (unknown language); delete it")))
}

/// Creates a context and starts its interpreter.
async fn create_context(sb: &ToolSandbox<'_>, language: CodeLanguage, id: Option<String>) -> ToolResult<ContextInfo> {
    if !language.has_contexts() {
        return Err(ToolError::new(
            ToolErrorKind::Unsupported,
            format!(
                "stateful contexts exist for python and javascript; run {} code without a context_id",
                language.as_str()
            ),
        ));
    }
    let id = id.unwrap_or_else(|| format!("ctx-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
    check_context_id(&id)?;
    if context_language(sb, &id).await.is_ok() {
        return Err(ToolError::new(
            ToolErrorKind::Conflict,
            format!("code context {id:?} already exists; use it, restart it, delete it, or pick another id"),
        ));
    }
    install_drivers(sb).await?;
    let dir = context_dir(sb, &id);
    sb.write_file(&format!("{dir}/language"), language.as_str().as_bytes().to_vec()).await?;
    let drivers = drivers_dir(sb);
    let launch = match language {
        CodeLanguage::Python => {
            format!("exec python3 -u {} {}", quote(&format!("{drivers}/python_driver.py")), quote(&dir))
        }
        _ => format!("exec node {} {}", quote(&format!("{drivers}/node_driver.js")), quote(&dir)),
    };
    // The interpreter itself runs in the user's home, so relative paths in user code mean what the file tools mean.
    let line = format!(
        "cd {d} && {{ [ -p requests ] || mkfifo -m 600 requests; }} && cd {home} && {launch}",
        d = quote(&dir),
        home = quote(&sb.config().home_dir)
    );
    let mut env = BTreeMap::new();
    env.insert("MPLBACKEND".to_owned(), "Agg".to_owned());
    env.insert("PYTHONUNBUFFERED".to_owned(), "1".to_owned());
    let request = ExecRequest { cwd: Some(sb.config().home_dir.clone()), env, ..ExecRequest::shell(line) };
    let info = match sb.spawn_background(request).await {
        Ok(info) => info,
        Err(e) => {
            let _ = sb.remove(&dir).await;
            return Err(e);
        }
    };
    let mut meta = info.pid.to_string();
    if let Some(log) = &info.output_path {
        meta.push('\n');
        meta.push_str(log);
    }
    sb.write_file(&format!("{dir}/process"), meta.into_bytes()).await?;
    Ok(ContextInfo { id, language: language.as_str().to_owned(), status: "starting".into() })
}

async fn list_contexts(sb: &ToolSandbox<'_>) -> ToolResult<Vec<ContextInfo>> {
    let base = contexts_dir(sb);
    match sb.stat(&base).await {
        Ok(_) => {}
        Err(e) if e.kind == ToolErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    install_drivers(sb).await?;
    let argv = vec!["/bin/bash".to_owned(), format!("{}/client.sh", drivers_dir(sb)), "status".into(), base];
    let out = sb
        .exec(ExecRequest { timeout: Some(Duration::from_secs(30)), ..ExecRequest::argv(argv) })
        .await?
        .collect(1 << 20)
        .await;
    if out.exit_code != 0 {
        return Err(ToolError::failed(format!(
            "listing code contexts failed (exit {}): {}",
            out.exit_code,
            out.stderr.trim()
        )));
    }
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| {
            let mut it = l.split('\t');
            Some(ContextInfo {
                id: it.next()?.to_owned(),
                language: it.next()?.to_owned(),
                status: it.next()?.to_owned(),
            })
        })
        .collect())
}

async fn process_meta(sb: &ToolSandbox<'_>, id: &str) -> (Option<u32>, Option<String>) {
    let path = format!("{}/process", context_dir(sb, id));
    let Ok(raw) = sb.read_file_limited(&path, SMALL_FILE_BYTES).await else { return (None, None) };
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    (lines.next().and_then(|p| p.trim().parse().ok()), lines.next().map(str::to_owned))
}

async fn delete_context(sb: &ToolSandbox<'_>, id: &str) -> ToolResult<ContextInfo> {
    check_context_id(id)?;
    let language = context_language(sb, id).await?;
    let (pid, _) = process_meta(sb, id).await;
    if let Some(pid) = pid {
        // SIGKILL to the driver and everything the code started; gone already is fine.
        if let Err(e) = sb.kill_process(pid, 9).await {
            tracing::debug!(context = id, error = %e, "killing a code context's process group failed");
        }
    }
    install_drivers(sb).await?;
    let (code, msg, _) = client(sb, &["kill", &context_dir(sb, id)], Duration::from_secs(30)).await?;
    if code != 0 {
        return Err(ToolError::failed(format!("deleting code context {id:?} failed (exit {code}): {msg}")));
    }
    Ok(ContextInfo { id: id.to_owned(), language: language.as_str().to_owned(), status: "deleted".into() })
}

async fn restart_context(sb: &ToolSandbox<'_>, id: &str) -> ToolResult<ContextInfo> {
    let language = context_language(sb, id).await?;
    delete_context(sb, id).await?;
    create_context(sb, language, Some(id.to_owned())).await
}

/// Why a run in a context could not finish.
enum RunFailure {
    /// The context does not exist.
    Missing,
    /// The interpreter had exited before the code was sent.
    Dead(String),
    /// The interpreter exited while running the code.
    Died(String),
    Tool(ToolError),
}

async fn why_dead(sb: &ToolSandbox<'_>, id: &str) -> String {
    let (_, log) = process_meta(sb, id).await;
    let Some(log) = log else { return String::new() };
    // The log is the sandbox's to grow: read only its end, through `tail`, with the output capped.
    let tail = ExecRequest {
        timeout: Some(Duration::from_secs(10)),
        ..ExecRequest::argv(["tail", "-c", &LOG_TAIL_BYTES.to_string(), &log])
    };
    let Ok(stream) = sb.exec(tail).await else { return String::new() };
    let out = stream.collect(2 * LOG_TAIL_BYTES).await;
    let tail = out.stdout.trim();
    if out.exit_code != 0 || tail.is_empty() { String::new() } else { format!("; its last output: {tail}") }
}

async fn run_in_context(
    sb: &ToolSandbox<'_>,
    id: &str,
    code: &str,
    timeout: Duration,
) -> Result<DriverResponse, RunFailure> {
    let dir = context_dir(sb, id);
    let rid = uuid::Uuid::new_v4().simple().to_string();
    let limits = CodeLimits::for_config(sb.config());
    let request = serde_json::json!({
        "code": code,
        "timeout": timeout.as_secs_f64(),
        "cap": sb.config().max_output_bytes,
        "result_cap": limits.result_bytes,
        "response_cap": limits.response_bytes,
        "max_results": limits.max_results,
        "json_elements": limits.json_elements,
    });
    sb.write_file(&format!("{dir}/req-{rid}.json"), request.to_string().into_bytes())
        .await
        .map_err(RunFailure::Tool)?;
    let wait = timeout + sb.config().code_grace;
    let (exit, msg, timed_out) = client(sb, &["run", &dir, &rid], wait).await.map_err(RunFailure::Tool)?;
    let resp_path = format!("{dir}/resp-{rid}.json");
    if timed_out {
        let _ = client(sb, &["interrupt", &dir], Duration::from_secs(10)).await;
        let _ = sb.remove(&format!("{dir}/req-{rid}.json")).await;
        return Err(RunFailure::Tool(ToolError::new(
            ToolErrorKind::Timeout,
            format!(
                "code context {id:?} did not answer within {wait:?}; it was sent an interrupt. \
                 If later calls hang too, restart it with code_context action=restart (its state is lost)"
            ),
        )));
    }
    match exit {
        0 => {}
        3 => return Err(RunFailure::Missing),
        4 | 5 => {
            let _ = sb.remove(&format!("{dir}/req-{rid}.json")).await;
            return Err(RunFailure::Dead(format!("{msg}{}", why_dead(sb, id).await)));
        }
        6 => {
            let _ = sb.remove(&format!("{dir}/req-{rid}.json")).await;
            return Err(RunFailure::Died(format!("{msg}{}", why_dead(sb, id).await)));
        }
        other => {
            return Err(RunFailure::Tool(ToolError::failed(format!(
                "talking to code context {id:?} failed (exit {other}): {msg}"
            ))));
        }
    }
    let read = sb.read_file_limited(&resp_path, limits.read_limit(sb.config())).await;
    let _ = sb.remove(&resp_path).await;
    let raw = match read {
        Ok(raw) => raw,
        Err(e) if e.kind == ToolErrorKind::LimitExceeded => {
            return Err(RunFailure::Tool(ToolError::new(
                ToolErrorKind::LimitExceeded,
                format!(
                    "code context {id:?} sent an answer over {} bytes, which its driver should have capped; it was \
                     not read. Restart the context with code_context action=restart",
                    limits.read_limit(sb.config())
                ),
            )));
        }
        Err(e) => return Err(RunFailure::Tool(e)),
    };
    crate::untrusted::parse(&raw, limits.parse_elements())
        .map_err(|e| RunFailure::Tool(ToolError::failed(format!("code context {id:?} sent a malformed answer: {e}"))))
}

fn from_response(
    language: CodeLanguage,
    context_id: String,
    r: DriverResponse,
    notice: Option<String>,
) -> RunCodeOutput {
    RunCodeOutput {
        language,
        context_id: Some(context_id),
        stdout: r.stdout,
        stderr: r.stderr,
        results: r.results,
        error: r.error,
        exit_code: None,
        timed_out: r.timed_out,
        stdout_file: r.stdout_file,
        stderr_file: r.stderr_file,
        notice,
        duration_ms: r.duration_ms,
    }
}

async fn run_stateless(
    sb: &ToolSandbox<'_>,
    language: CodeLanguage,
    code: String,
    timeout: Option<Duration>,
) -> ToolResult<RunCodeOutput> {
    let request = CodeRequest { timeout, ..CodeRequest::new(language.core(), code) };
    let stream = sb.manager().run_code(sb.run_id(), request).await?;
    let label = format!("code-{}", uuid::Uuid::new_v4().simple());
    let done = collect_exec(sb, stream, &label).await?;
    Ok(RunCodeOutput {
        language,
        context_id: None,
        stdout: done.stdout.text,
        stderr: done.stderr.text,
        results: Vec::new(),
        error: None,
        exit_code: Some(done.status.exit_code),
        timed_out: done.status.timed_out,
        stdout_file: done.stdout.saved_to,
        stderr_file: done.stderr.saved_to,
        notice: None,
        duration_ms: u64::try_from(done.status.duration.as_millis()).unwrap_or(u64::MAX),
    })
}

/// Runs code, statefully for python and javascript.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunCodeTool;

#[async_trait]
impl TypedTool for RunCodeTool {
    type Input = RunCodeInput;
    type Output = RunCodeOutput;
    const NAME: &'static str = "run_code";

    fn description(&self) -> &str {
        "Run python, javascript, typescript or bash code in the sandbox. Python and javascript run in a stateful context, \
         like a notebook: variables, imports and functions persist across calls (each language has a default context; \
         create more with code_context). Returns stdout, stderr, rich results (the last expression's value, matplotlib \
         figures as base64 PNG, display() output) and any error with its traceback. typescript and bash run statelessly."
    }

    async fn run(&self, ctx: &ToolContext, input: RunCodeInput) -> ToolResult<RunCodeOutput> {
        if input.timeout_secs == Some(0) {
            return Err(ToolError::invalid_input("timeout_secs must be at least 1"));
        }
        if let Some(id) = &input.context_id {
            check_context_id(id)?;
        }
        let sb = ctx.sandbox()?;
        let timeout = match input.timeout_secs {
            Some(s) => Duration::from_secs(s),
            None => sb.execution_timeout()?,
        };
        let (language, id, is_default) = match (&input.context_id, input.language) {
            (Some(id), lang) => {
                check_context_id(id)?;
                let actual = context_language(&sb, id).await?;
                if let Some(lang) = lang.filter(|l| *l != actual) {
                    return Err(ToolError::invalid_input(format!(
                        "context {id:?} runs {}, not {}; omit language or use another context",
                        actual.as_str(),
                        lang.as_str()
                    )));
                }
                (actual, id.clone(), false)
            }
            (None, lang) => {
                let lang = lang.unwrap_or(CodeLanguage::Python);
                if !lang.has_contexts() {
                    return run_stateless(&sb, lang, input.code, input.timeout_secs.map(Duration::from_secs)).await;
                }
                (lang, lang.default_context(), true)
            }
        };
        if is_default {
            match context_language(&sb, &id).await {
                Ok(_) => {}
                Err(e) if e.kind == ToolErrorKind::NotFound => {
                    create_context(&sb, language, Some(id.clone())).await?;
                }
                Err(e) => return Err(e),
            }
        }
        let mut notice = None;
        for attempt in 0..2 {
            match run_in_context(&sb, &id, &input.code, timeout).await {
                Ok(r) => return Ok(from_response(language, id, r, notice)),
                Err(RunFailure::Tool(e)) => return Err(e),
                Err(RunFailure::Missing) if is_default && attempt == 0 => {
                    create_context(&sb, language, Some(id.clone())).await?;
                }
                Err(RunFailure::Missing) => return Err(no_context(&id)),
                Err(RunFailure::Dead(why)) if is_default && attempt == 0 => {
                    restart_context(&sb, &id).await?;
                    notice = Some(format!(
                        "the default {} context had exited ({why}) and was restarted: earlier variables and imports are gone",
                        language.as_str()
                    ));
                }
                Err(RunFailure::Dead(why)) => {
                    return Err(ToolError::failed(format!(
                        "code context {id:?} has exited ({why}); restart it with code_context action=restart (its state is lost)"
                    )));
                }
                Err(RunFailure::Died(why)) if is_default => {
                    restart_context(&sb, &id).await?;
                    return Err(ToolError::failed(format!(
                        "the {} interpreter exited while running this code ({why}); the default context was restarted \
                         and its earlier variables and imports are gone",
                        language.as_str()
                    )));
                }
                Err(RunFailure::Died(why)) => {
                    return Err(ToolError::failed(format!(
                        "the interpreter of code context {id:?} exited while running this code ({why}); \
                         restart it with code_context action=restart (its state is lost)"
                    )));
                }
            }
        }
        Err(ToolError::failed(format!("code context {id:?} could not be started")))
    }
}

/// What `code_context` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContextAction {
    /// Start a new context.
    Create,
    /// List contexts.
    List,
    /// Restart a context's interpreter, dropping its state.
    Restart,
    /// Stop a context and remove it.
    Delete,
}

/// Input of `code_context`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeContextInput {
    /// What to do.
    pub action: ContextAction,
    /// Language of a new context (create; default python).
    #[serde(default)]
    pub language: Option<CodeLanguage>,
    /// The context (required for restart and delete; optional for create, which makes one up).
    #[serde(default)]
    pub context_id: Option<String>,
}

/// Output of `code_context`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeContextOutput {
    /// The contexts the action touched, or every context for list.
    pub contexts: Vec<ContextInfo>,
}

/// Creates, lists, restarts and deletes code contexts.
#[derive(Debug, Clone, Copy, Default)]
pub struct CodeContextTool;

#[async_trait]
impl TypedTool for CodeContextTool {
    type Input = CodeContextInput;
    type Output = CodeContextOutput;
    const NAME: &'static str = "code_context";

    fn description(&self) -> &str {
        "Manage stateful code contexts (python, javascript): create one (its id is returned; pass it to run_code), \
         list them with their status, restart one (drops its state, e.g. when it hangs), or delete one."
    }

    async fn run(&self, ctx: &ToolContext, input: CodeContextInput) -> ToolResult<CodeContextOutput> {
        let sb = ctx.sandbox()?;
        let need_id = || {
            input
                .context_id
                .clone()
                .ok_or_else(|| ToolError::invalid_input("context_id is required for restart and delete"))
        };
        let contexts = match input.action {
            ContextAction::Create => {
                vec![
                    create_context(&sb, input.language.unwrap_or(CodeLanguage::Python), input.context_id.clone())
                        .await?,
                ]
            }
            ContextAction::List => list_contexts(&sb).await?,
            ContextAction::Restart => vec![restart_context(&sb, &need_id()?).await?],
            ContextAction::Delete => vec![delete_context(&sb, &need_id()?).await?],
        };
        Ok(CodeContextOutput { contexts })
    }
}
