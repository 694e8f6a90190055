//! The `shell` tool: a bash command line with cwd, env, timeout and background.

use std::collections::BTreeMap;
use std::time::Duration;

use agentbox_core::ExecRequest;
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ToolError, ToolResult};
use crate::output::collect_exec;
use crate::tool::{ToolContext, TypedTool};

/// Input of the `shell` tool.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellInput {
    /// The command line, run by `bash -c`.
    pub command: String,
    /// Working directory (default: the home directory, /home/user).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Time limit in seconds (default: the sandbox's execution timeout). Ignored for background commands.
    #[serde(default)]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_secs: Option<u64>,
    /// Start the command in the background and return its pid and output file at once (for servers and long jobs).
    #[serde(default)]
    pub background: bool,
    /// Run it as root inside the sandbox (for `apt-get install`), where the sandbox was created allowing it.
    #[serde(default)]
    pub as_root: bool,
}

/// Output of the `shell` tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShellOutput {
    /// A command that ran to its end.
    Finished {
        /// Exit code; 124 after a timeout, 128+N when killed by signal N.
        exit_code: i32,
        /// Standard output, cut in the middle with a mark when long.
        stdout: String,
        /// Standard error, likewise.
        stderr: String,
        /// Whether it was killed at its time limit.
        timed_out: bool,
        /// Whether the sandbox's out-of-memory killer ended it.
        #[serde(skip_serializing_if = "std::ops::Not::not", default)]
        oom_killed: bool,
        /// Whether either stream was cut.
        truncated: bool,
        /// Where the full standard output was saved, when cut.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        stdout_file: Option<String>,
        /// Where the full standard error was saved, when cut.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        stderr_file: Option<String>,
        /// Wall-clock duration in milliseconds.
        duration_ms: u64,
    },
    /// A command started in the background.
    Background {
        /// Its process id in the sandbox.
        pid: u32,
        /// The file receiving its stdout and stderr (read it with `read_file`).
        output_file: Option<String>,
    },
}

/// Runs shell commands in the sandbox.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShellTool;

#[async_trait]
impl TypedTool for ShellTool {
    type Input = ShellInput;
    type Output = ShellOutput;
    const NAME: &'static str = "shell";

    fn description(&self) -> &str {
        "Run a bash command line in the sandbox and return its exit code, stdout and stderr. \
         Long output is cut in the middle and saved in full to a file whose path is returned. \
         Set background=true for servers or long jobs: it returns the pid and the output file at once."
    }

    async fn run(&self, ctx: &ToolContext, input: ShellInput) -> ToolResult<ShellOutput> {
        if input.command.trim().is_empty() {
            return Err(ToolError::invalid_input("command is empty: give a bash command line such as `ls -la`"));
        }
        if input.timeout_secs == Some(0) {
            return Err(ToolError::invalid_input("timeout_secs must be at least 1"));
        }
        let cwd = input.cwd.as_deref().map(|c| ctx.config().resolve(c)).transpose()?;
        let sandbox = ctx.sandbox()?;
        let request = ExecRequest {
            cwd,
            env: input.env,
            timeout: input.timeout_secs.map(Duration::from_secs),
            user: input.as_root.then(|| "root".to_owned()),
            ..ExecRequest::shell(input.command)
        };
        if input.background {
            let info = sandbox.spawn_background(request).await?;
            return Ok(ShellOutput::Background { pid: info.pid, output_file: info.output_path });
        }
        let label = format!("shell-{}", uuid::Uuid::new_v4().simple());
        let stream = sandbox.exec(request).await?;
        let done = collect_exec(&sandbox, stream, &label).await?;
        let mut stderr = done.stderr.text;
        if done.status.timed_out {
            let limit = match input.timeout_secs {
                Some(s) => format!("{s}s"),
                None => format!("the sandbox's execution timeout ({:?})", sandbox.execution_timeout()?),
            };
            stderr.push_str(&format!(
                "\n[the command was killed after {limit}; raise timeout_secs or run it with background=true]"
            ));
        }
        Ok(ShellOutput::Finished {
            exit_code: done.status.exit_code,
            stdout: done.stdout.text,
            stderr,
            timed_out: done.status.timed_out,
            oom_killed: done.status.oom_killed,
            truncated: done.stdout.truncated || done.stderr.truncated,
            stdout_file: done.stdout.saved_to,
            stderr_file: done.stderr.saved_to,
            duration_ms: u64::try_from(done.status.duration.as_millis()).unwrap_or(u64::MAX),
        })
    }
}
