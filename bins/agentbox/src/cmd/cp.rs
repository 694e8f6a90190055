//! `agentbox cp`: files and directories between this machine and a sandbox on agentboxd, either way,
//! written as `RUN_ID:/path` on the sandbox's side. Files stream in both directions; a directory is
//! copied file by file (its tree is recreated, symlinks and special files are skipped and listed).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use agentbox_client::Client;
use serde_json::Value;

use super::CliError;
use super::remote::{Server, block_on};

/// Arguments of `agentbox cp`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  agentbox cp data.csv task-1:/home/user/data.csv\n  agentbox cp task-1:/home/user/out/ ./out\n  agentbox cp ./src task-1:project/"
)]
pub struct Args {
    #[command(flatten)]
    pub server: Server,
    /// Source: a local path or RUN_ID:PATH.
    pub src: String,
    /// Destination: a local path or RUN_ID:PATH (relative sandbox paths start at the user's home).
    pub dst: String,
}

enum Side {
    Local(PathBuf),
    Sandbox { run_id: String, path: String },
}

fn side(s: &str) -> Side {
    // `RUN_ID:PATH`, where a run id has no `/`; `./a:b` or `/x:y` stay local paths.
    match s.split_once(':') {
        Some((id, path))
            if !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !id.starts_with('.') =>
        {
            Side::Sandbox { run_id: id.to_owned(), path: if path.is_empty() { ".".into() } else { path.to_owned() } }
        }
        _ => Side::Local(PathBuf::from(s)),
    }
}

fn join_remote(dir: &str, name: &str) -> String {
    if dir.ends_with('/') { format!("{dir}{name}") } else { format!("{dir}/{name}") }
}

/// Copies; prints what was copied on stderr.
///
/// # Errors
/// Both sides local or both in sandboxes, a missing source, the server's refusal.
pub fn run(args: &Args) -> Result<(), CliError> {
    let client = args.server.client()?;
    match (side(&args.src), side(&args.dst)) {
        (Side::Local(src), Side::Sandbox { run_id, path }) => block_on(upload(&client, &src, &run_id, &path)),
        (Side::Sandbox { run_id, path }, Side::Local(dst)) => block_on(download(&client, &run_id, &path, &dst)),
        (Side::Local(_), Side::Local(_)) => {
            Err(CliError::Usage("one side of `agentbox cp` must be in a sandbox, written RUN_ID:PATH".into()))
        }
        (Side::Sandbox { .. }, Side::Sandbox { .. }) => {
            Err(CliError::Usage("copying between two sandboxes is not supported: copy to this machine first".into()))
        }
    }
}

async fn upload(client: &Client, src: &Path, run_id: &str, path: &str) -> Result<(), CliError> {
    let meta = std::fs::metadata(src).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", src.display())))?;
    let name = src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if meta.is_file() {
        // `cp f run:dir/` puts it inside the directory, as cp does.
        let target = if path.ends_with('/') { join_remote(path, &name) } else { path.to_owned() };
        let n = client.upload_file(run_id, &target, src).await?;
        let _ = writeln!(io::stderr(), "{} -> {run_id}:{target} ({n} bytes)", src.display());
        return Ok(());
    }
    if !meta.is_dir() {
        return Err(CliError::Usage(format!("{} is neither a file nor a directory", src.display())));
    }
    let root = if path.ends_with('/') { join_remote(path, &name) } else { path.to_owned() };
    let (mut files, mut bytes, mut skipped) = (0u64, 0u64, Vec::new());
    let mut stack = vec![(src.to_owned(), root.clone())];
    while let Some((dir, remote)) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", dir.display())))?;
        let mut any = false;
        for entry in entries {
            let entry = entry.map_err(|e| CliError::Usage(format!("cannot read {}: {e}", dir.display())))?;
            let kind = entry.file_type().map_err(|e| CliError::Usage(format!("{}: {e}", entry.path().display())))?;
            let target = join_remote(&remote, &entry.file_name().to_string_lossy());
            any = true;
            if kind.is_dir() {
                stack.push((entry.path(), target));
            } else if kind.is_file() {
                bytes += client.upload_file(run_id, &target, &entry.path()).await?;
                files += 1;
            } else {
                skipped.push(entry.path().display().to_string());
            }
        }
        if !any {
            // An empty directory still exists on the other side.
            client.upload_bytes(run_id, &join_remote(&remote, ".agentbox-keep"), Vec::new()).await?;
            let _ = client
                .exec(
                    run_id,
                    &serde_json::json!({"argv": ["rm", "-f", join_remote(&remote, ".agentbox-keep")]}),
                    |_| {},
                )
                .await;
        }
    }
    let _ = writeln!(io::stderr(), "{} -> {run_id}:{root} ({files} files, {bytes} bytes)", src.display());
    for s in skipped {
        let _ = writeln!(io::stderr(), "skipped (not a regular file or directory): {s}");
    }
    Ok(())
}

async fn download(client: &Client, run_id: &str, path: &str, dst: &Path) -> Result<(), CliError> {
    // A directory answers the listing; anything else is fetched as a file (the server refuses specials).
    let listing = match client.list_files(run_id, path).await {
        Ok(v) => Some(v),
        Err(agentbox_client::ClientError::Api { status: 400 | 422, .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let name = Path::new(path.trim_end_matches('/')).file_name().map(|n| n.to_owned()).unwrap_or_default();
    let Some(listing) = listing else {
        let target = if dst.is_dir() { dst.join(&name) } else { dst.to_owned() };
        let n = fetch(client, run_id, path, &target).await?;
        let _ = writeln!(io::stderr(), "{run_id}:{path} -> {} ({n} bytes)", target.display());
        return Ok(());
    };
    let root = if dst.is_dir() { dst.join(&name) } else { dst.to_owned() };
    let (mut files, mut bytes, mut skipped) = (0u64, 0u64, Vec::new());
    let mut stack = vec![(listing, root.clone())];
    while let Some((listing, local)) = stack.pop() {
        std::fs::create_dir_all(&local)
            .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", local.display())))?;
        let entries = listing.get("entries").and_then(Value::as_array).cloned().unwrap_or_default();
        for e in entries {
            let (Some(remote), Some(name), Some(kind)) = (
                e.get("path").and_then(Value::as_str),
                e.get("name").and_then(Value::as_str),
                e.get("kind").and_then(Value::as_str),
            ) else {
                continue;
            };
            if name.contains('/') || name == ".." || name == "." {
                skipped.push(remote.to_owned());
                continue;
            }
            match kind {
                "dir" => stack.push((client.list_files(run_id, remote).await?, local.join(name))),
                "file" => {
                    bytes += fetch(client, run_id, remote, &local.join(name)).await?;
                    files += 1;
                }
                _ => skipped.push(remote.to_owned()),
            }
        }
    }
    let _ = writeln!(io::stderr(), "{run_id}:{path} -> {} ({files} files, {bytes} bytes)", root.display());
    for s in skipped {
        let _ = writeln!(io::stderr(), "skipped (not a regular file or directory): {run_id}:{s}");
    }
    Ok(())
}

async fn fetch(client: &Client, run_id: &str, path: &str, target: &Path) -> Result<u64, CliError> {
    let mut file = tokio::fs::File::create(target)
        .await
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", target.display())))?;
    Ok(client.download(run_id, path, &mut file).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_id_prefix_names_the_sandbox_side() {
        assert!(
            matches!(side("task-1:/home/user/a"), Side::Sandbox { run_id, path } if run_id == "task-1" && path == "/home/user/a")
        );
        assert!(matches!(side("t:"), Side::Sandbox { path, .. } if path == "."));
        for local in ["./a:b", "/x:y", "plain", ".hidden:x", ":x"] {
            assert!(matches!(side(local), Side::Local(_)), "{local}");
        }
    }
}
