//! The backend conformance suite: the [`SandboxBackend`] contract written down
//! as checks that every backend must pass.
//!
//! Each check is an async function taking an `Arc<dyn SandboxBackend>` and
//! [`Options`]. It creates the sandboxes it needs, exercises one area of the
//! contract (commands, stdin, environment, working directory, time limits,
//! code per language, files and their errors, background processes, metrics,
//! health, destroy and listing), destroys what it created, and returns
//! [`Outcome::Passed`], [`Outcome::Skipped`] with the reason a backend gave
//! (an [`Error::Unsupported`] for an optional feature), or a [`Failure`] that
//! says which rule broke and what was seen.
//!
//! In a backend's tests, [`conformance_tests!`] turns every check into one
//! `#[tokio::test]`:
//!
//! ```ignore
//! async fn target() -> agentbox_conformance::Target {
//!     let backend = MyBackend::new(MyConfig::default()).unwrap();
//!     agentbox_conformance::Target::new(std::sync::Arc::new(backend))
//! }
//! mod conformance {
//!     agentbox_conformance::conformance_tests!(super::target);
//! }
//! ```

pub mod terminal;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentbox_core::config::SandboxConfig;
use agentbox_core::{
    CodeRequest, CreateRequest, Error, ExecEvent, ExecOutput, ExecRequest, FileKind, Language, SandboxBackend,
    SandboxId, SandboxInfo, SandboxState,
};

/// What a check found when the contract held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every rule held.
    Passed,
    /// The backend declared the feature unsupported; the reason is its message.
    Skipped(String),
}

/// A broken rule of the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The check that failed.
    pub check: &'static str,
    /// Which rule broke and what was seen instead.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conformance check `{}` failed: {}", self.check, self.message)
    }
}

impl std::error::Error for Failure {}

/// The result of one check.
pub type CheckResult = Result<Outcome, Failure>;

/// How the checks drive a backend.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration of the sandboxes the checks create (some checks change a field or two).
    pub config: SandboxConfig,
    /// Longest time one backend call (or one execution, start to exit) may take before the check fails.
    pub call_timeout: Duration,
    /// Pause between two looks when waiting for a background process to change state.
    pub poll_interval: Duration,
    /// How many looks before giving up on such a wait.
    pub poll_attempts: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: SandboxConfig::default(),
            call_timeout: Duration::from_secs(120),
            poll_interval: Duration::from_millis(100),
            poll_attempts: 300,
        }
    }
}

/// A backend to check, with the options to check it with and anything that must live as long as the check
/// (a test server, a temporary directory).
pub struct Target {
    /// The backend.
    pub backend: Arc<dyn SandboxBackend>,
    /// The options.
    pub options: Options,
    /// Dropped after the check.
    pub keep: Option<Box<dyn Any + Send + Sync>>,
}

impl Target {
    /// A target with default options.
    #[must_use]
    pub fn new(backend: Arc<dyn SandboxBackend>) -> Self {
        Self { backend, options: Options::default(), keep: None }
    }

    /// Keeps `value` alive until the check ends.
    #[must_use]
    pub fn keeping(mut self, value: impl Any + Send + Sync) -> Self {
        self.keep = Some(Box::new(value));
        self
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("backend", &self.backend.name())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A check as a value.
pub type CheckFn = fn(Arc<dyn SandboxBackend>, Options) -> Pin<Box<dyn Future<Output = CheckResult> + Send>>;

/// One named check.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// The check's name (also the name of its function in this crate).
    pub name: &'static str,
    /// Runs it.
    pub run: CheckFn,
}

/// Lists every check's name, in a stable order, to a callback macro (used by [`checks`] and [`conformance_tests!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __with_checks {
    ($callback:ident ! ( $($extra:tt)* )) => {
        $crate::$callback!(
            ($($extra)*)
            create_and_list
            exec_exit_codes
            exec_output
            exec_streams_before_exit
            exec_stdin
            exec_env_and_cwd
            exec_timeout
            exec_abandoned
            exec_invalid_requests
            run_code_python
            run_code_javascript
            run_code_typescript
            run_code_bash
            files_roundtrip
            file_errors
            background_processes
            metrics_and_health
            destroy_semantics
            unknown_sandbox
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __check_list {
    (() $($name:ident)*) => {
        /// Every check, in a stable order.
        #[must_use]
        pub fn checks() -> Vec<Check> {
            vec![$(Check { name: stringify!($name), run: |b, o| Box::pin($name(b, o)) }),*]
        }
    };
}

__with_checks!(__check_list!());

/// Generates one `#[tokio::test]` per check, each calling `$target().await` for a fresh [`Target`].
///
/// The calling crate needs `tokio` (with `macros` and `rt-multi-thread`) among its dev-dependencies.
///
/// With `skip_when = f`, each test first calls `f() -> bool` and returns at once when it says true (for a
/// backend that can't run here, such as the local one without root; `f` says why).
#[macro_export]
macro_rules! conformance_tests {
    ($target:path) => {
        $crate::__with_checks!(__conformance_test!($target, $crate::never_skip));
    };
    ($target:path, skip_when = $skip:path) => {
        $crate::__with_checks!(__conformance_test!($target, $skip));
    };
}

/// The default of [`conformance_tests!`]'s `skip_when`: every check runs.
#[doc(hidden)]
#[must_use]
pub fn never_skip() -> bool {
    false
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    (($target:path, $skip:path) $($name:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if $skip() {
                    return;
                }
                let target: $crate::Target = $target().await;
                let result = $crate::$name(target.backend.clone(), target.options.clone()).await;
                drop(target);
                match result {
                    Ok($crate::Outcome::Passed) => {}
                    Ok($crate::Outcome::Skipped(why)) => eprintln!("skipped {}: {why}", stringify!($name)),
                    Err(failure) => panic!("{failure}"),
                }
            }
        )*
    };
}

/// What [`run_all`] found: each check's name and result.
#[derive(Debug, Clone)]
pub struct Report {
    /// Results in the order of [`checks`].
    pub results: Vec<(&'static str, CheckResult)>,
}

impl Report {
    /// The failures.
    pub fn failures(&self) -> impl Iterator<Item = &Failure> {
        self.results.iter().filter_map(|(_, r)| r.as_ref().err())
    }

    /// Whether no check failed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mut passed, mut skipped, mut failed) = (0, 0, 0);
        for (name, result) in &self.results {
            match result {
                Ok(Outcome::Passed) => {
                    passed += 1;
                    writeln!(f, "ok      {name}")?;
                }
                Ok(Outcome::Skipped(why)) => {
                    skipped += 1;
                    writeln!(f, "skipped {name}: {why}")?;
                }
                Err(e) => {
                    failed += 1;
                    writeln!(f, "FAILED  {name}: {}", e.message)?;
                }
            }
        }
        write!(f, "{passed} passed, {failed} failed, {skipped} skipped")
    }
}

/// Runs every check one after the other.
pub async fn run_all(backend: Arc<dyn SandboxBackend>, options: Options) -> Report {
    let mut results = Vec::new();
    for check in checks() {
        results.push((check.name, (check.run)(backend.clone(), options.clone()).await));
    }
    Report { results }
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers

const OUTPUT_CAP: usize = 8 * 1024 * 1024;

fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{nanos:x}{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn unique_number() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::from(d.subsec_nanos()));
    nanos / 1000 + COUNTER.fetch_add(1, Ordering::Relaxed)
}

struct Ctx {
    check: &'static str,
    backend: Arc<dyn SandboxBackend>,
    options: Options,
}

impl Ctx {
    fn new(check: &'static str, backend: Arc<dyn SandboxBackend>, options: Options) -> Self {
        Self { check, backend, options }
    }

    fn fail(&self, message: impl Into<String>) -> Failure {
        Failure { check: self.check, message: message.into() }
    }

    fn ensure(&self, ok: bool, message: impl FnOnce() -> String) -> Result<(), Failure> {
        if ok { Ok(()) } else { Err(self.fail(message())) }
    }

    /// Awaits a backend call within the call timeout; an error becomes a failure naming `what`.
    async fn call<T>(&self, what: &str, fut: impl Future<Output = agentbox_core::Result<T>>) -> Result<T, Failure> {
        match tokio::time::timeout(self.options.call_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.fail(format!("{what} returned an error: {e}"))),
            Err(_) => Err(self.fail(format!("{what} did not finish within {:?}", self.options.call_timeout))),
        }
    }

    /// Awaits a backend call that must fail; returns its error.
    async fn call_err<T: fmt::Debug>(
        &self,
        what: &str,
        fut: impl Future<Output = agentbox_core::Result<T>>,
    ) -> Result<Error, Failure> {
        match tokio::time::timeout(self.options.call_timeout, fut).await {
            Ok(Ok(v)) => Err(self.fail(format!("{what} should have failed but returned {v:?}"))),
            Ok(Err(e)) => Ok(e),
            Err(_) => Err(self.fail(format!("{what} did not finish within {:?}", self.options.call_timeout))),
        }
    }

    async fn expect_not_found<T: fmt::Debug>(
        &self,
        what: &str,
        fut: impl Future<Output = agentbox_core::Result<T>>,
    ) -> Result<(), Failure> {
        match self.call_err(what, fut).await? {
            Error::NotFound(_) => Ok(()),
            other => Err(self.fail(format!("{what} should fail with NotFound, got {} ({other})", other.code()))),
        }
    }

    async fn create(&self, request: CreateRequest) -> Result<SandboxInfo, Failure> {
        self.call("create", self.backend.create(request)).await
    }

    async fn destroy(&self, id: &SandboxId) -> Result<(), Failure> {
        self.call(&format!("destroy({id})"), self.backend.destroy(id)).await
    }

    /// Destroys the check's sandbox whatever happened, and returns the check's result
    /// (or the destroy failure if the check itself passed).
    async fn finish(&self, id: &SandboxId, result: CheckResult) -> CheckResult {
        let destroyed = self.destroy(id).await;
        match (result, destroyed) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            (Ok(o), Ok(())) => Ok(o),
        }
    }

    async fn run(&self, id: &SandboxId, request: ExecRequest) -> Result<ExecOutput, Failure> {
        let what = format!("exec({:?})", request.command);
        let stream = self.call(&what, self.backend.exec(id, request)).await?;
        tokio::time::timeout(self.options.call_timeout, stream.collect(OUTPUT_CAP))
            .await
            .map_err(|_| self.fail(format!("{what} did not exit within {:?}", self.options.call_timeout)))
    }

    async fn sh(&self, id: &SandboxId, line: &str) -> Result<ExecOutput, Failure> {
        self.run(id, ExecRequest::shell(line)).await
    }

    /// Runs a shell line that must succeed; returns its stdout.
    async fn sh_ok(&self, id: &SandboxId, line: &str) -> Result<String, Failure> {
        let out = self.sh(id, line).await?;
        self.ensure(out.exit_code == 0, || {
            format!("`{line}` should exit 0, got {} (stdout {:?}, stderr {:?})", out.exit_code, out.stdout, out.stderr)
        })?;
        Ok(out.stdout)
    }

    async fn home(&self, id: &SandboxId) -> Result<String, Failure> {
        let home = self.sh_ok(id, "printf %s \"$HOME\"").await?;
        self.ensure(home.starts_with('/'), || format!("$HOME should be an absolute path, got {home:?}"))?;
        Ok(home)
    }

    async fn code(&self, id: &SandboxId, request: CodeRequest) -> Result<Result<ExecOutput, Error>, Failure> {
        let what = format!("run_code({})", request.language.as_str());
        let stream = match tokio::time::timeout(self.options.call_timeout, self.backend.run_code(id, request)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Ok(Err(e)),
            Err(_) => return Err(self.fail(format!("{what} did not start within {:?}", self.options.call_timeout))),
        };
        tokio::time::timeout(self.options.call_timeout, stream.collect(OUTPUT_CAP))
            .await
            .map(Ok)
            .map_err(|_| self.fail(format!("{what} did not finish within {:?}", self.options.call_timeout)))
    }

    async fn pause(&self) {
        tokio::time::sleep(self.options.poll_interval).await;
    }
}

/// Defines a check that runs `$body` against one fresh sandbox created from the options' config,
/// and destroys it afterwards whatever the outcome.
macro_rules! sandbox_check {
    ($(#[$m:meta])* $name:ident, |$ctx:ident, $id:ident| $body:block) => {
        $(#[$m])*
        ///
        /// # Errors
        /// A [`Failure`] naming the broken rule.
        pub async fn $name(backend: Arc<dyn SandboxBackend>, options: Options) -> CheckResult {
            let $ctx = Ctx::new(stringify!($name), backend, options);
            let info = $ctx.create(CreateRequest::new($ctx.options.config.clone())).await?;
            let result: CheckResult = async {
                let $id = &info.id;
                $body
            }
            .await;
            $ctx.finish(&info.id, result).await
        }
    };
}

// ---------------------------------------------------------------------------------------------------------------
// Lifecycle

/// `create` returns a running sandbox of this backend with the given metadata, `list` shows it with that
/// metadata, and no longer shows it after `destroy`.
///
/// # Errors
/// A [`Failure`] naming the broken rule.
pub async fn create_and_list(backend: Arc<dyn SandboxBackend>, options: Options) -> CheckResult {
    let ctx = Ctx::new("create_and_list", backend, options);
    let label = format!("create_and_list-{}", nonce());
    let mut request = CreateRequest::new(ctx.options.config.clone());
    request.metadata.insert("conformance".into(), label.clone());
    let info = ctx.create(request).await?;
    let result: CheckResult = async {
        ctx.ensure(info.backend == ctx.backend.name(), || {
            format!("created sandbox reports backend {:?}, expected {:?}", info.backend, ctx.backend.name())
        })?;
        ctx.ensure(info.state == SandboxState::Running, || {
            format!("a created sandbox should be running, got {:?}", info.state)
        })?;
        ctx.ensure(info.metadata.get("conformance") == Some(&label), || {
            format!("create should return the metadata it was given, got {:?}", info.metadata)
        })?;
        let listed = ctx.call("list", ctx.backend.list()).await?;
        let Some(found) = listed.iter().find(|s| s.id == info.id) else {
            return Err(ctx.fail(format!("list does not show the sandbox {} just created", info.id)));
        };
        ctx.ensure(found.metadata.get("conformance") == Some(&label), || {
            format!("list should show the metadata given at creation, got {:?}", found.metadata)
        })?;
        ctx.ensure(found.backend == ctx.backend.name(), || {
            format!("listed sandbox reports backend {:?}", found.backend)
        })?;
        Ok(Outcome::Passed)
    }
    .await;
    let result = ctx.finish(&info.id, result).await?;
    let listed = ctx.call("list after destroy", ctx.backend.list()).await?;
    ctx.ensure(!listed.iter().any(|s| s.id == info.id), || format!("list still shows {} after destroy", info.id))?;
    Ok(result)
}

/// `destroy` is idempotent, and every call on a destroyed sandbox fails with `NotFound`.
///
/// # Errors
/// A [`Failure`] naming the broken rule.
pub async fn destroy_semantics(backend: Arc<dyn SandboxBackend>, options: Options) -> CheckResult {
    let ctx = Ctx::new("destroy_semantics", backend, options);
    let info = ctx.create(CreateRequest::new(ctx.options.config.clone())).await?;
    let id = &info.id;
    ctx.destroy(id).await?;
    ctx.call("a second destroy of the same sandbox", ctx.backend.destroy(id)).await?;
    ctx.expect_not_found("exec after destroy", ctx.backend.exec(id, ExecRequest::shell("true"))).await?;
    ctx.expect_not_found("read_file after destroy", ctx.backend.read_file(id, "/tmp/x")).await?;
    ctx.expect_not_found("write_file after destroy", ctx.backend.write_file(id, "/tmp/x", b"x".to_vec())).await?;
    ctx.expect_not_found("metrics after destroy", ctx.backend.metrics(id)).await?;
    ctx.expect_not_found("health after destroy", ctx.backend.health(id)).await?;
    ctx.expect_not_found("list_processes after destroy", ctx.backend.list_processes(id)).await?;
    Ok(Outcome::Passed)
}

/// Calls on an id no `create` returned fail with `NotFound`.
///
/// # Errors
/// A [`Failure`] naming the broken rule.
pub async fn unknown_sandbox(backend: Arc<dyn SandboxBackend>, options: Options) -> CheckResult {
    let ctx = Ctx::new("unknown_sandbox", backend, options);
    let id = SandboxId::new_unchecked(format!("conformance-missing-{}", nonce()));
    ctx.expect_not_found("exec on an unknown sandbox", ctx.backend.exec(&id, ExecRequest::shell("true"))).await?;
    ctx.expect_not_found("stat on an unknown sandbox", ctx.backend.stat(&id, "/tmp")).await?;
    ctx.expect_not_found("metrics on an unknown sandbox", ctx.backend.metrics(&id)).await?;
    Ok(Outcome::Passed)
}

// ---------------------------------------------------------------------------------------------------------------
// Commands

sandbox_check!(
    /// Exit codes come back as the process gave them, and a process killed by a signal reports 128+signal and the signal.
    exec_exit_codes,
    |ctx, id| {
        for (line, want) in [("exit 0", 0), ("exit 3", 3), ("exit 255", 255)] {
            let out = ctx.sh(id, line).await?;
            ctx.ensure(out.exit_code == want, || format!("`{line}` should exit {want}, got {}", out.exit_code))?;
            ctx.ensure(!out.timed_out && out.signal.is_none(), || format!("`{line}` reports timed_out/signal: {out:?}"))?;
        }
        for (argv, want) in [(["true"], 0), (["false"], 1)] {
            let out = ctx.run(id, ExecRequest::argv(argv)).await?;
            ctx.ensure(out.exit_code == want, || format!("{argv:?} should exit {want}, got {}", out.exit_code))?;
        }
        let argv = ExecRequest::argv(["/bin/sh", "-c", "exit 7"]);
        let out = ctx.run(id, argv).await?;
        ctx.ensure(out.exit_code == 7, || format!("argv [/bin/sh -c 'exit 7'] should exit 7, got {}", out.exit_code))?;
        let out = ctx.sh(id, "kill -KILL $$").await?;
        ctx.ensure(out.exit_code == 137 && out.signal == Some(9), || {
            format!("a shell killing itself with SIGKILL should report exit 137 and signal 9, got exit {} signal {:?}", out.exit_code, out.signal)
        })?;
        Ok(Outcome::Passed)
    }
);

sandbox_check!(
    /// Standard output and error stay apart, arrive whole, and large outputs are not cut below the cap.
    exec_output,
    |ctx, id| {
        let out = ctx.sh(id, "echo out-line; echo err-line >&2; printf 'no newline'").await?;
        ctx.ensure(out.stdout == "out-line\nno newline", || format!("stdout should be \"out-line\\nno newline\", got {:?}", out.stdout))?;
        ctx.ensure(out.stderr == "err-line\n", || format!("stderr should be \"err-line\\n\", got {:?}", out.stderr))?;
        let out = ctx.sh(id, "head -c 300000 /dev/zero | tr '\\0' a").await?;
        ctx.ensure(out.stdout.len() == 300_000 && out.stdout.bytes().all(|b| b == b'a') && !out.truncated, || {
            format!("300000 bytes of output should arrive whole, got {} bytes (truncated: {})", out.stdout.len(), out.truncated)
        })?;
        let out = ctx.sh(id, "printf '\\303\\251t\\303\\251'").await?;
        ctx.ensure(out.stdout == "été", || format!("UTF-8 output should survive, got {:?}", out.stdout))?;
        Ok(Outcome::Passed)
    }
);

sandbox_check!(
    /// Output is streamed while the process runs, not only when it exits.
    exec_streams_before_exit,
    |ctx, id| {
        let home = ctx.home(id).await?;
        let flag = format!("{home}/conformance-go-{}", nonce());
        let line = format!("echo ready; while [ ! -e '{flag}' ]; do sleep 0.05; done; echo done");
        let mut stream = ctx.call("exec", ctx.backend.exec(id, ExecRequest::shell(line))).await?;
        let mut seen = Vec::new();
        while !seen.ends_with(b"ready\n") {
            match tokio::time::timeout(ctx.options.call_timeout, stream.next()).await {
                Ok(Some(ExecEvent::Stdout(b))) => seen.extend_from_slice(&b),
                Ok(Some(ExecEvent::Stderr(_))) => {}
                Ok(Some(ExecEvent::Exit(s))) => {
                    return Err(ctx.fail(format!("the process exited ({s:?}) before the test let it: output was not streamed")));
                }
                Ok(None) => return Err(ctx.fail("the stream ended without an exit event")),
                Err(_) => return Err(ctx.fail("no output arrived while the process was running: output is not streamed")),
            }
        }
        ctx.call("write_file (the go flag)", ctx.backend.write_file(id, &flag, Vec::new())).await?;
        let rest = tokio::time::timeout(ctx.options.call_timeout, stream.collect(OUTPUT_CAP))
            .await
            .map_err(|_| ctx.fail("the process did not finish after its go flag was written"))?;
        ctx.ensure(rest.stdout == "done\n" && rest.exit_code == 0, || format!("expected \"done\\n\" and exit 0 after the flag, got {rest:?}"))?;
        Ok(Outcome::Passed)
    }
);

sandbox_check!(
    /// Bytes given as stdin reach the process, then stdin is closed; without stdin the process reads end-of-file at once.
    exec_stdin,
    |ctx, id| {
        let out = ctx.run(id, ExecRequest { stdin: Some(b"hello\nworld\n".to_vec()), ..ExecRequest::argv(["cat"]) }).await?;
        ctx.ensure(out.stdout == "hello\nworld\n" && out.exit_code == 0, || format!("cat should echo its stdin, got {out:?}"))?;
        let big: Vec<u8> = (0..=255u8).cycle().take(256 * 1024).collect();
        let out = ctx.run(id, ExecRequest { stdin: Some(big), ..ExecRequest::shell("wc -c") }).await?;
        ctx.ensure(out.stdout.trim() == "262144", || format!("256 KiB of binary stdin should arrive whole, wc -c said {:?}", out.stdout))?;
        let out = ctx.run(id, ExecRequest::argv(["cat"])).await?;
        ctx.ensure(out.stdout.is_empty() && out.exit_code == 0, || format!("cat without stdin should read nothing and exit 0, got {out:?}"))?;
        let out = ctx.run(id, ExecRequest { stdin: Some(Vec::new()), ..ExecRequest::argv(["cat"]) }).await?;
        ctx.ensure(out.stdout.is_empty() && out.exit_code == 0, || format!("cat with empty stdin should exit 0, got {out:?}"))?;
        Ok(Outcome::Passed)
    }
);

/// Environment variables of the request and of the sandbox reach the process; the working directory defaults to
/// the home and can be set.
///
/// # Errors
/// A [`Failure`] naming the broken rule.
pub async fn exec_env_and_cwd(backend: Arc<dyn SandboxBackend>, options: Options) -> CheckResult {
    let ctx = Ctx::new("exec_env_and_cwd", backend, options);
    let mut config = ctx.options.config.clone();
    config.environment_variables.insert("CONFORMANCE_SANDBOX_VAR".into(), "from-sandbox".into());
    let info = ctx.create(CreateRequest::new(config)).await?;
    let result: CheckResult = async {
        let id = &info.id;
        let mut request = ExecRequest::shell("printf '%s|%s' \"$CONFORMANCE_VAR\" \"$CONFORMANCE_SANDBOX_VAR\"");
        request.env.insert("CONFORMANCE_VAR".into(), "a b=c'd".into());
        let out = ctx.run(id, request).await?;
        ctx.ensure(out.stdout == "a b=c'd|from-sandbox", || {
            format!("request and sandbox environment should reach the process, got {:?}", out.stdout)
        })?;
        let home = ctx.home(id).await?;
        let pwd = ctx.sh_ok(id, "pwd").await?;
        ctx.ensure(pwd.trim_end() == home, || {
            format!("the default working directory should be the home {home:?}, got {pwd:?}")
        })?;
        let dir = format!("{home}/conformance-cwd-{}", nonce());
        ctx.call("mkdir", ctx.backend.mkdir(id, &dir)).await?;
        let out = ctx.run(id, ExecRequest { cwd: Some(dir.clone()), ..ExecRequest::argv(["pwd"]) }).await?;
        ctx.ensure(out.stdout.trim_end() == dir, || {
            format!("cwd {dir:?} should be the working directory, pwd said {:?}", out.stdout)
        })?;
        Ok(Outcome::Passed)
    }
    .await;
    ctx.finish(&info.id, result).await
}

/// A process past its time limit (the request's, or the sandbox's execution_timeout) is killed and reported as
/// timed out with exit code 124, and the sandbox stays usable.
///
/// # Errors
/// A [`Failure`] naming the broken rule.
pub async fn exec_timeout(backend: Arc<dyn SandboxBackend>, options: Options) -> CheckResult {
    let ctx = Ctx::new("exec_timeout", backend, options);
    let mut config = ctx.options.config.clone();
    config.execution_timeout = Duration::from_secs(2);
    let info = ctx.create(CreateRequest::new(config)).await?;
    let result: CheckResult = async {
        let id = &info.id;
        let out = ctx
            .run(
                id,
                ExecRequest { timeout: Some(Duration::from_secs(1)), ..ExecRequest::shell("echo started; sleep 60") },
            )
            .await?;
        ctx.ensure(out.timed_out && out.exit_code == 124, || {
            format!(
                "`sleep 60` with a 1 s limit should time out with exit 124, got exit {} timed_out {}",
                out.exit_code, out.timed_out
            )
        })?;
        ctx.ensure(out.stdout == "started\n", || {
            format!("output before the timeout should be kept, got {:?}", out.stdout)
        })?;
        let out = ctx.sh(id, "sleep 60").await?;
        ctx.ensure(out.timed_out && out.exit_code == 124, || {
            format!("`sleep 60` should time out at the sandbox's execution_timeout (2 s), got {out:?}")
        })?;
        let after = ctx.sh_ok(id, "echo still-usable").await?;
        ctx.ensure(after == "still-usable\n", || {
            format!("the sandbox should be usable after a timeout, got {after:?}")
        })?;
        Ok(Outcome::Passed)
    }
    .await;
    ctx.finish(&info.id, result).await
}

sandbox_check!(
    /// Dropping an execution's stream before its exit ends the process: a caller that gives up (a client that hung
    /// up) leaves nothing running until the time limit.
    exec_abandoned,
    |ctx, id| {
        let what = "exec of `echo $$; exec sleep 600`";
        let mut stream = ctx.call(what, ctx.backend.exec(id, ExecRequest::shell("echo $$; exec sleep 600"))).await?;
        let mut head = Vec::new();
        let pid = loop {
            let event = tokio::time::timeout(ctx.options.call_timeout, stream.next())
                .await
                .map_err(|_| ctx.fail(format!("{what} printed nothing within {:?}", ctx.options.call_timeout)))?;
            match event {
                Some(ExecEvent::Stdout(b)) => head.extend_from_slice(&b),
                Some(ExecEvent::Stderr(_)) => {}
                other => return Err(ctx.fail(format!("{what} should still run, got {other:?}"))),
            }
            if let Some(end) = head.iter().position(|b| *b == b'\n') {
                let text = String::from_utf8_lossy(&head[..end]).trim().to_owned();
                break text.parse::<u32>().map_err(|_| ctx.fail(format!("{what} printed {text:?}, not a pid")))?;
            }
        };
        let check = format!("kill -0 {pid}");
        ctx.ensure(ctx.sh(id, &check).await?.exit_code == 0, || format!("process {pid} should run before the drop"))?;
        drop(stream);
        let deadline = tokio::time::Instant::now() + ctx.options.call_timeout;
        loop {
            if ctx.sh(id, &check).await?.exit_code != 0 {
                return Ok(Outcome::Passed);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ctx.fail(format!(
                    "process {pid} still ran {:?} after its stream was dropped",
                    ctx.options.call_timeout
                )));
            }
            ctx.pause().await;
        }
    }
);

sandbox_check!(
    /// Malformed requests are refused with `InvalidRequest`; a missing program or working directory is an error or a
    /// non-zero exit, never a success.
    exec_invalid_requests,
    |ctx, id| {
        for (what, request) in [
            ("an empty argv", ExecRequest::argv(Vec::<String>::new())),
            ("an argument with a NUL byte", ExecRequest::argv(["echo", "a\0b"])),
        ] {
            match ctx.call_err(&format!("exec with {what}"), ctx.backend.exec(id, request)).await? {
                Error::InvalidRequest(_) => {}
                other => return Err(ctx.fail(format!("exec with {what} should fail with InvalidRequest, got {other}"))),
            }
        }
        let missing = ExecRequest::argv(["/nonexistent/conformance-program"]);
        if let Ok(stream) = ctx.call("exec of a missing program", ctx.backend.exec(id, missing)).await {
            let out = stream.collect(OUTPUT_CAP).await;
            ctx.ensure(out.exit_code != 0, || "a missing program should not exit 0".into())?;
        }
        let bad_cwd = ExecRequest { cwd: Some("/nonexistent/conformance-dir".into()), ..ExecRequest::argv(["true"]) };
        if let Ok(stream) = ctx.call("exec in a missing directory", ctx.backend.exec(id, bad_cwd)).await {
            let out = stream.collect(OUTPUT_CAP).await;
            ctx.ensure(out.exit_code != 0, || "a command in a missing working directory should not exit 0".into())?;
        }
        Ok(Outcome::Passed)
    }
);

// ---------------------------------------------------------------------------------------------------------------
// Code

struct LanguageCase {
    language: Language,
    answer: &'static str,
    failing: &'static str,
    /// Whether a failing snippet must give a non-zero exit (a shell's failed command need not).
    failure_exits_non_zero: bool,
    endless: Option<&'static str>,
}

async fn run_code_case(ctx: &Ctx, id: &SandboxId, case: &LanguageCase) -> CheckResult {
    let lang = case.language.as_str();
    let mut request = CodeRequest::new(case.language, case.answer);
    request.env.insert("CONFORMANCE_CODE".into(), "env-ok".into());
    let out = match ctx.code(id, request).await? {
        Ok(out) => out,
        // Every backend runs all four languages: an `Unsupported` answer fails like any other error.
        Err(e) => return Err(ctx.fail(format!("run_code({lang}) returned an error: {e}"))),
    };
    ctx.ensure(out.exit_code == 0 && out.stdout.contains("42") && out.stdout.contains("env-ok"), || {
        format!("{lang} code printing 6*7 and $CONFORMANCE_CODE should exit 0 with \"42\" and \"env-ok\" on stdout, got {out:?}")
    })?;
    let out = ctx.code(id, CodeRequest::new(case.language, case.failing)).await?;
    let out = out.map_err(|e| ctx.fail(format!("failing {lang} code should give output, not an error: {e}")))?;
    ctx.ensure(!case.failure_exits_non_zero || out.exit_code != 0, || {
        format!("failing {lang} code should not exit 0, got {out:?}")
    })?;
    ctx.ensure(out.stderr.contains("conformance-boom") || out.stdout.contains("conformance-boom"), || {
        format!("the error of failing {lang} code should be reported, got {out:?}")
    })?;
    if let Some(endless) = case.endless {
        let request = CodeRequest { timeout: Some(Duration::from_secs(1)), ..CodeRequest::new(case.language, endless) };
        let out = ctx.code(id, request).await?.map_err(|e| ctx.fail(format!("endless {lang} code: {e}")))?;
        ctx.ensure(out.timed_out && out.exit_code == 124, || {
            format!("endless {lang} code with a 1 s limit should time out with 124, got {out:?}")
        })?;
        let again = ctx.code(id, CodeRequest::new(case.language, case.answer)).await?;
        let again = again.map_err(|e| ctx.fail(format!("{lang} code after a timeout: {e}")))?;
        ctx.ensure(again.exit_code == 0 && again.stdout.contains("42"), || {
            format!("{lang} code should run again after a timeout, got {again:?}")
        })?;
    }
    Ok(Outcome::Passed)
}

sandbox_check!(
    /// Python code runs with the request's environment and working directory; exceptions and time limits are reported.
    run_code_python,
    |ctx, id| {
        let case = LanguageCase {
            language: Language::Python,
            answer: "import os\nprint(6 * 7)\nprint(os.environ.get('CONFORMANCE_CODE', 'env-missing'))",
            failing: "raise ValueError('conformance-boom')",
            failure_exits_non_zero: true,
            endless: Some("while True:\n    pass"),
        };
        let outcome = run_code_case(&ctx, id, &case).await?;
        if outcome != Outcome::Passed {
            return Ok(outcome);
        }
        let home = ctx.home(id).await?;
        let dir = format!("{home}/conformance-code-{}", nonce());
        ctx.call("mkdir", ctx.backend.mkdir(id, &dir)).await?;
        let request = CodeRequest { cwd: Some(dir.clone()), ..CodeRequest::new(Language::Python, "import os\nprint(os.getcwd())") };
        let out = ctx.code(id, request).await?.map_err(|e| ctx.fail(format!("python code with a cwd: {e}")))?;
        ctx.ensure(out.stdout.trim_end() == dir, || format!("python code should run in cwd {dir:?}, os.getcwd() said {:?}", out.stdout))?;
        Ok(Outcome::Passed)
    }
);

sandbox_check!(
    /// JavaScript code runs with the request's environment; thrown errors are reported.
    run_code_javascript,
    |ctx, id| {
        let case = LanguageCase {
            language: Language::Javascript,
            answer: "console.log(6 * 7); console.log(process.env.CONFORMANCE_CODE || 'env-missing');",
            failing: "throw new Error('conformance-boom');",
            failure_exits_non_zero: true,
            endless: None,
        };
        run_code_case(&ctx, id, &case).await
    }
);

sandbox_check!(
    /// TypeScript code (with type annotations, an interface and an enum) runs on every backend; thrown errors
    /// are reported.
    run_code_typescript,
    |ctx, id| {
        let case = LanguageCase {
            language: Language::Typescript,
            answer: "interface Factors { a: number; b: number }\nenum Sign { Plus = 1 }\n\
                     const f: Factors = { a: 6, b: 7 };\nconsole.log((f.a * f.b * Sign.Plus) as number);\n\
                     console.log(process.env.CONFORMANCE_CODE ?? 'env-missing');",
            failing: "const message: string = 'conformance-boom';\nthrow new Error(message);",
            failure_exits_non_zero: true,
            endless: None,
        };
        run_code_case(&ctx, id, &case).await
    }
);

sandbox_check!(
    /// Bash code runs with the request's environment; a failing command's error is reported.
    run_code_bash,
    |ctx, id| {
        let case = LanguageCase {
            language: Language::Bash,
            answer: "echo $((6 * 7))\necho \"${CONFORMANCE_CODE:-env-missing}\"",
            failing: "echo conformance-boom >&2\nfalse",
            failure_exits_non_zero: false,
            endless: None,
        };
        run_code_case(&ctx, id, &case).await
    }
);

// ---------------------------------------------------------------------------------------------------------------
// Files

sandbox_check!(
    /// Files written through the API read back byte for byte (also from commands), parents are created, and
    /// list_dir, stat, mkdir, rename and remove behave as documented.
    files_roundtrip,
    |ctx, id| {
        let home = ctx.home(id).await?;
        let root = format!("{home}/conformance-files-{}", nonce());
        let file = format!("{root}/a/b/data.bin");
        let data: Vec<u8> = (0..=255u8).collect();
        ctx.call("write_file (missing parents)", ctx.backend.write_file(id, &file, data.clone())).await?;
        let back = ctx.call("read_file", ctx.backend.read_file(id, &file)).await?;
        ctx.ensure(back == data, || format!("read_file should return the 256 bytes written, got {} bytes", back.len()))?;
        let via_shell = ctx.sh_ok(id, &format!("od -An -tx1 -v '{file}' | tr -d ' \\n' | head -c 16")).await?;
        ctx.ensure(via_shell == "0001020304050607", || format!("a command should see the bytes written, od said {via_shell:?}"))?;

        ctx.call("write_file (overwrite)", ctx.backend.write_file(id, &file, b"short".to_vec())).await?;
        let back = ctx.call("read_file", ctx.backend.read_file(id, &file)).await?;
        ctx.ensure(back == b"short", || format!("write_file should replace the whole file, got {:?}", String::from_utf8_lossy(&back)))?;

        let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let big_path = format!("{root}/big.bin");
        ctx.call("write_file (3 MiB)", ctx.backend.write_file(id, &big_path, big.clone())).await?;
        let back = ctx.call("read_file (3 MiB)", ctx.backend.read_file(id, &big_path)).await?;
        ctx.ensure(back == big, || format!("a 3 MiB file should read back identical, got {} bytes", back.len()))?;

        let st = ctx.call("stat", ctx.backend.stat(id, &file)).await?;
        ctx.ensure(st.kind == FileKind::File && st.size == 5 && st.name == "data.bin" && st.path == file, || {
            format!("stat of a 5-byte file should say file, size 5, name data.bin, path {file:?}, got {st:?}")
        })?;
        ctx.ensure(st.modified_ms > 0, || format!("stat should give a modification time, got {st:?}"))?;
        let dir_st = ctx.call("stat of a directory", ctx.backend.stat(id, &format!("{root}/a"))).await?;
        ctx.ensure(dir_st.kind == FileKind::Dir, || format!("stat of a directory should say dir, got {dir_st:?}"))?;

        let entries = ctx.call("list_dir", ctx.backend.list_dir(id, &format!("{root}/a/b"))).await?;
        ctx.ensure(entries.len() == 1 && entries[0].name == "data.bin" && entries[0].path == file && entries[0].kind == FileKind::File, || {
            format!("list_dir should show exactly data.bin with its absolute path, got {entries:?}")
        })?;

        let nested = format!("{root}/x/y/z");
        ctx.call("mkdir (missing parents)", ctx.backend.mkdir(id, &nested)).await?;
        ctx.call("mkdir of an existing directory", ctx.backend.mkdir(id, &nested)).await?;
        let st = ctx.call("stat", ctx.backend.stat(id, &nested)).await?;
        ctx.ensure(st.kind == FileKind::Dir, || format!("mkdir should make a directory, stat says {st:?}"))?;

        let moved = format!("{root}/x/moved.bin");
        ctx.call("rename", ctx.backend.rename(id, &file, &moved)).await?;
        ctx.expect_not_found("stat of a renamed file's old path", ctx.backend.stat(id, &file)).await?;
        let back = ctx.call("read_file after rename", ctx.backend.read_file(id, &moved)).await?;
        ctx.ensure(back == b"short", || "the renamed file should keep its content".into())?;

        ctx.sh_ok(id, &format!("ln -s moved.bin '{root}/x/link'")).await?;
        let link = ctx.call("stat of a symlink", ctx.backend.stat(id, &format!("{root}/x/link"))).await?;
        ctx.ensure(link.kind == FileKind::Symlink, || format!("stat should not follow a final symlink, got {link:?}"))?;

        let relative = format!("conformance-rel-{}.txt", nonce());
        ctx.call("write_file (relative path)", ctx.backend.write_file(id, &relative, b"rel".to_vec())).await?;
        let back = ctx.call("read_file (absolute path)", ctx.backend.read_file(id, &format!("{home}/{relative}"))).await?;
        ctx.ensure(back == b"rel", || "a relative path should be taken from the home".into())?;
        ctx.call("remove (relative path)", ctx.backend.remove(id, &relative)).await?;

        ctx.call("remove of a directory tree", ctx.backend.remove(id, &root)).await?;
        ctx.expect_not_found("stat of a removed tree", ctx.backend.stat(id, &root)).await?;
        Ok(Outcome::Passed)
    }
);

sandbox_check!(
    /// Missing paths give `NotFound`; malformed paths give `InvalidRequest`; reading a directory is an error.
    file_errors,
    |ctx, id| {
        let home = ctx.home(id).await?;
        let missing = format!("{home}/conformance-missing-{}", nonce());
        ctx.expect_not_found("read_file of a missing file", ctx.backend.read_file(id, &missing)).await?;
        ctx.expect_not_found("stat of a missing path", ctx.backend.stat(id, &missing)).await?;
        ctx.expect_not_found("list_dir of a missing directory", ctx.backend.list_dir(id, &missing)).await?;
        ctx.expect_not_found("remove of a missing path", ctx.backend.remove(id, &missing)).await?;
        ctx.expect_not_found("rename of a missing path", ctx.backend.rename(id, &missing, &format!("{missing}-2"))).await?;
        ctx.call_err("read_file of a directory", ctx.backend.read_file(id, &home)).await?;
        match ctx.call_err("read_file of a path with a NUL byte", ctx.backend.read_file(id, "/tmp/a\0b")).await? {
            Error::InvalidRequest(_) => {}
            other => return Err(ctx.fail(format!("a path with a NUL byte should give InvalidRequest, got {other}"))),
        }
        Ok(Outcome::Passed)
    }
);

// ---------------------------------------------------------------------------------------------------------------
// Background processes

sandbox_check!(
    /// Background processes are listed while they run, write their output to the file they report, end with their
    /// exit code, and can be killed together with their descendants; an unknown pid gives `NotFound`.
    background_processes,
    |ctx, id| {
        let marker = format!("conformance-bg-{}", nonce());
        let line = format!("echo {marker}-out; echo {marker}-err >&2; exit 3");
        let info = ctx.call("spawn_background", ctx.backend.spawn_background(id, ExecRequest::shell(line))).await?;
        ctx.ensure(info.pid > 0, || format!("spawn_background should give a pid, got {info:?}"))?;
        let Some(output_path) = info.output_path.clone() else {
            return Err(ctx.fail(format!("spawn_background should say where the output goes, got {info:?}")));
        };
        let mut ended = None;
        for _ in 0..ctx.options.poll_attempts {
            let list = ctx.call("list_processes", ctx.backend.list_processes(id)).await?;
            match list.iter().find(|p| p.pid == info.pid) {
                Some(p) if !p.running => {
                    ended = Some(p.clone());
                    break;
                }
                Some(_) => ctx.pause().await,
                None => return Err(ctx.fail(format!("list_processes lost process {} before reporting its end: {list:?}", info.pid))),
            }
        }
        let Some(ended) = ended else { return Err(ctx.fail("a background `exit 3` was still listed as running after the polling budget")) };
        ctx.ensure(ended.exit_code == Some(3), || format!("the ended process should report exit code 3, got {ended:?}"))?;
        let output = ctx.call("read_file of the output", ctx.backend.read_file(id, &output_path)).await?;
        let output = String::from_utf8_lossy(&output);
        ctx.ensure(output.contains(&format!("{marker}-out")) && output.contains(&format!("{marker}-err")), || {
            format!("the output file should hold stdout and stderr, got {output:?}")
        })?;

        let sleeper = format!("sleep {}", 3000 + unique_number() % 900);
        let line = format!("{sleeper} & {sleeper} & wait");
        let tree = ctx.call("spawn_background", ctx.backend.spawn_background(id, ExecRequest::shell(line))).await?;
        let list = ctx.call("list_processes", ctx.backend.list_processes(id)).await?;
        ctx.ensure(list.iter().any(|p| p.pid == tree.pid && p.running), || format!("a running process should be listed as running, got {list:?}"))?;
        let count = format!("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^{sleeper} $' || true");
        let mut started = false;
        for _ in 0..ctx.options.poll_attempts {
            if ctx.sh_ok(id, &count).await?.trim() == "2" {
                started = true;
                break;
            }
            ctx.pause().await;
        }
        ctx.ensure(started, || "the background process's two children never appeared".into())?;
        ctx.call("kill_process", ctx.backend.kill_process(id, tree.pid, 9)).await?;
        let mut gone = false;
        for _ in 0..ctx.options.poll_attempts {
            let list = ctx.call("list_processes", ctx.backend.list_processes(id)).await?;
            let stopped = list.iter().find(|p| p.pid == tree.pid).is_none_or(|p| !p.running);
            if stopped && ctx.sh_ok(id, &count).await?.trim() == "0" {
                gone = true;
                break;
            }
            ctx.pause().await;
        }
        ctx.ensure(gone, || "kill_process should end the process and its descendants".into())?;
        ctx.expect_not_found("kill_process of an unknown pid", ctx.backend.kill_process(id, 4_000_000, 9)).await?;
        Ok(Outcome::Passed)
    }
);

// ---------------------------------------------------------------------------------------------------------------
// Observation

sandbox_check!(
    /// Metrics describe a live sandbox and a health probe of a running sandbox succeeds.
    metrics_and_health,
    |ctx, id| {
        ctx.sh_ok(id, "true").await?;
        let m = ctx.call("metrics", ctx.backend.metrics(id)).await?;
        ctx.ensure(m.memory_used_mb > 0.0 && m.memory_used_mb.is_finite(), || format!("a running sandbox uses some memory, metrics say {m:?}"))?;
        ctx.ensure(m.cpu_usage_percent >= 0.0 && m.cpu_usage_percent.is_finite(), || format!("cpu_usage_percent should be a non-negative number, got {m:?}"))?;
        ctx.ensure(m.disk_used_gb >= 0.0 && m.disk_used_gb.is_finite(), || format!("disk_used_gb should be a non-negative number, got {m:?}"))?;
        ctx.ensure(m.sampled_at_ms > 0, || format!("metrics should say when they were sampled, got {m:?}"))?;
        let h = ctx.call("health", ctx.backend.health(id)).await?;
        ctx.ensure(h.healthy && h.message.is_none(), || format!("a running sandbox should be healthy, got {h:?}"))?;
        Ok(Outcome::Passed)
    }
);

/// Whether a test of the local backend must not run because the process is not root, which the local
/// backend needs (namespaces, cgroups, mounts). Such a test returns at once; the first of a test binary
/// says why. Under CI (`CI=true`), which runs as root, a missing root is an error instead: the suite can't
/// pass there without running.
///
/// # Panics
/// Under `CI=true` when not root.
#[must_use]
pub fn not_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    static SAID: std::sync::Once = std::sync::Once::new();
    // /proc/self belongs to the process's effective user.
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return false;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the local backend's tests need root and CI runs them as root; this CI run is not root"
    );
    SAID.call_once(|| {
        // Written to the process's stderr itself, which the test harness does not capture.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: the local backend's tests need root (namespaces, cgroups, mounts); run them as root"
        );
    });
    true
}
