//! Executions: the request the agent gets for one, checked against what `execve` can take.

use agentbox_core::{Error, ExecRequest, Result};

use super::{LocalBackend, Sandbox};
use crate::proto::Exec;

/// The most argument and environment bytes an execution may have: `execve`'s limit with the
/// default 8 MiB stack (a quarter of it).
const MAX_ARGS_BYTES: usize = 2 * 1024 * 1024;

impl LocalBackend {
    pub(super) fn exec_message(sb: &Sandbox, request: &ExecRequest, output_path: Option<String>) -> Result<Exec> {
        let argv = request.to_argv()?;
        let home = sb.config.security.run_as.home();
        let cwd = match &request.cwd {
            None => home,
            Some(c) if c.starts_with('/') => c.clone(),
            Some(c) => format!("{home}/{c}"),
        };
        if cwd.contains('\0') {
            return Err(Error::InvalidRequest("cwd contains a NUL byte".into()));
        }
        let timeout = request.timeout.unwrap_or(sb.config.execution_timeout);
        let env = sb.net.exec_env(&sb.config.environment_variables, &request.env);
        // What execve(2) can take at most; larger requests could never start (and must not reach the agent).
        let size: usize = argv.iter().map(|a| a.len() + 1).sum::<usize>()
            + env.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
        if size > MAX_ARGS_BYTES {
            return Err(Error::InvalidRequest(format!(
                "the command's arguments and environment take {size} bytes; a command can take at most {MAX_ARGS_BYTES} \
                 (the kernel's limit): pass large data through stdin or a file"
            )));
        }
        Ok(Exec {
            argv,
            cwd,
            env,
            timeout_ms: if output_path.is_some() && request.timeout.is_none() {
                0
            } else {
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1)
            },
            stdin: request.stdin.is_some(),
            output_path,
        })
    }
}
