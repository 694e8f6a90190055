//! `agentbox volume`: named, persistent volumes on agentboxd (sandboxes mount them with `create --volume`).

use std::io::{self, Write};

use serde_json::Value;

use super::CliError;
use super::remote::{Server, block_on};
use super::sandboxes::str_of;

/// Arguments of `agentbox volume`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  agentbox volume create workspace --size-gb 5\n  agentbox create task-1 --volume workspace:/home/user/work\n  agentbox volume ls\n  agentbox volume rm workspace"
)]
pub struct Args {
    #[command(flatten)]
    pub server: Server,
    #[command(subcommand)]
    pub action: Action,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What to do with volumes.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Make a volume.
    Create {
        /// Its name: 1-200 letters, digits, `.`, `_` or `-`.
        name: String,
        /// The most it may hold, in GiB.
        #[arg(long, default_value_t = 1)]
        size_gb: u64,
    },
    /// List every volume.
    Ls,
    /// Delete volumes and their files (refused while a sandbox has one mounted).
    Rm {
        /// The volumes' names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Parses `NAME:/path[:ro]`, the `--volume` flag of `create`, into the API's volume object.
///
/// # Errors
/// A value of another shape.
pub fn parse_mount(spec: &str) -> Result<Value, CliError> {
    let usage = || CliError::Usage(format!("--volume {spec:?} must look like NAME:/path or NAME:/path:ro"));
    let (name, rest) = spec.split_once(':').ok_or_else(usage)?;
    let (path, read_only) = match rest.rsplit_once(':') {
        Some((path, "ro")) => (path, true),
        Some((path, "rw")) => (path, false),
        _ => (rest, false),
    };
    if name.is_empty() || !path.starts_with('/') {
        return Err(usage());
    }
    Ok(serde_json::json!({ "name": name, "mount_path": path, "read_only": read_only }))
}

/// Makes, lists or deletes volumes on agentboxd.
///
/// # Errors
/// The server's refusal, or a server that can't be reached.
pub fn run(args: &Args) -> Result<(), CliError> {
    let client = args.server.client()?;
    let mut out = io::stdout().lock();
    match &args.action {
        Action::Create { name, size_gb } => {
            let v = block_on(async { Ok(client.create_volume(name, *size_gb).await?) })?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &v)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{}", str_of(&v, "name"))?;
            }
        }
        Action::Ls => {
            let volumes = block_on(async { Ok(client.volumes().await?) })?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &volumes)?;
                writeln!(out)?;
            } else if volumes.is_empty() {
                writeln!(out, "no volumes; make one with `agentbox volume create NAME`")?;
            } else {
                writeln!(out, "{:<32} {:>14} {:>14} {:>8}", "NAME", "USED", "LIMIT", "MOUNTED")?;
                for v in &volumes {
                    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                    writeln!(
                        out,
                        "{:<32} {:>14} {:>14} {:>8}",
                        str_of(v, "name"),
                        n("used_bytes"),
                        n("limit_bytes"),
                        n("mounted_by")
                    )?;
                }
            }
        }
        Action::Rm { names } => {
            for name in names {
                block_on(async { Ok(client.delete_volume(name).await?) })?;
                if !args.json {
                    writeln!(out, "deleted {name}")?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags_parse() {
        assert_eq!(parse_mount("ws:/data").unwrap()["read_only"], false);
        let ro = parse_mount("ws:/home/user/work:ro").unwrap();
        assert_eq!(
            (ro["name"].as_str(), ro["mount_path"].as_str(), ro["read_only"].as_bool()),
            (Some("ws"), Some("/home/user/work"), Some(true))
        );
        for bad in ["ws", ":/data", "ws:data", "ws:"] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
    }
}
