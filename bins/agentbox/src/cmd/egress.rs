//! `agentbox egress` and `agentbox secret`: a sandbox's egress audit log, and the server's secrets on agentboxd.

use std::io::{self, Read, Write};

use serde_json::{Value, json};

use super::CliError;
use super::remote::{Server, block_on};

/// Arguments of `agentbox egress`.
#[derive(Debug, clap::Args)]
pub struct EgressArgs {
    #[command(flatten)]
    pub server: Server,
    /// The sandbox's run id.
    pub run_id: String,
    /// Only records to this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only refused connections and requests.
    #[arg(long)]
    pub refused: bool,
    /// Only records after this sequence number (the `next` of an earlier page).
    #[arg(long)]
    pub after: Option<u64>,
    /// At most this many records (1 to 1000; default 100).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Print the page as JSON.
    #[arg(long)]
    pub json: bool,
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// Prints a page of a sandbox's egress log: one line per connection or request.
///
/// # Errors
/// The server's refusal (an unknown run); output errors.
pub fn egress(args: &EgressArgs) -> Result<(), CliError> {
    let client = args.server.client()?;
    let decision = args.refused.then_some("refused");
    let page = block_on(async {
        Ok(client.egress(&args.run_id, args.after, args.limit, args.host.as_deref(), decision).await?)
    })?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &page)?;
        writeln!(out)?;
        return Ok(());
    }
    let records = page.get("records").and_then(Value::as_array).cloned().unwrap_or_default();
    writeln!(
        out,
        "{:>6} {:<10} {:<12} {:<8} {:<30} {:<24} {:>6} {:>9} {:>9}  RULE / SECRETS",
        "SEQ", "KIND", "VIA", "DECISION", "DESTINATION", "REQUEST", "STATUS", "IN", "OUT"
    )?;
    for r in &records {
        let dest = format!("{}:{}", text(r, "host"), text(r, "port"));
        let request = match (r.get("method").and_then(Value::as_str), r.get("path").and_then(Value::as_str)) {
            (Some(m), Some(p)) => format!("{m} {p}"),
            _ => "-".into(),
        };
        let secrets: Vec<&str> = r
            .get("secrets")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut rule = text(r, "rule");
        if !secrets.is_empty() {
            rule = format!("{rule} [{}]", secrets.join(","));
        }
        writeln!(
            out,
            "{:>6} {:<10} {:<12} {:<8} {:<30} {:<24} {:>6} {:>9} {:>9}  {rule}",
            text(r, "seq"),
            text(r, "kind"),
            text(r, "via"),
            text(r, "decision"),
            dest,
            request,
            text(r, "status"),
            text(r, "bytes_in"),
            text(r, "bytes_out"),
        )?;
    }
    if let Some(next) = page.get("next").and_then(Value::as_u64) {
        writeln!(out, "more: agentbox egress {} --after {next}", args.run_id)?;
    }
    if let Some(d) = page.get("dropped").and_then(Value::as_u64).filter(|d| *d > 0) {
        writeln!(out, "{d} older records were dropped to keep the log within its bound")?;
    }
    Ok(())
}

/// Arguments of `agentbox secret`.
#[derive(Debug, clap::Args)]
pub struct SecretArgs {
    #[command(flatten)]
    pub server: Server,
    #[command(subcommand)]
    pub action: SecretAction,
}

/// What to do with the server's secrets.
#[derive(Debug, clap::Subcommand)]
pub enum SecretAction {
    /// List the secrets: names and kinds of source, never values.
    Ls,
    /// Define or replace a secret; the value is read from standard input unless --env or --file is given.
    Set {
        /// The secret's name (upper-case letters, digits and `_`).
        name: String,
        /// Read the value from this variable of agentboxd's environment, at each use.
        #[arg(long, conflicts_with = "file")]
        env: Option<String>,
        /// Read the value from this file on agentboxd's host, at each use.
        #[arg(long)]
        file: Option<String>,
    },
    /// Delete a secret.
    Rm {
        /// The secret's name.
        name: String,
    },
}

/// Lists, sets or deletes the server's secrets.
///
/// # Errors
/// The server's refusal; reading standard input; output errors.
pub fn secret(args: &SecretArgs) -> Result<(), CliError> {
    let client = args.server.client()?;
    let mut out = io::stdout().lock();
    match &args.action {
        SecretAction::Ls => {
            let list = block_on(async { Ok(client.secrets().await?) })?;
            for s in list {
                writeln!(out, "{}\t{}", text(&s, "name"), text(&s, "source"))?;
            }
        }
        SecretAction::Set { name, env, file } => {
            let source = match (env, file) {
                (Some(e), _) => json!({ "env": e }),
                (None, Some(f)) => json!({ "file": f }),
                (None, None) => {
                    let mut value = String::new();
                    io::stdin().read_to_string(&mut value)?;
                    json!({ "value": value.trim_end_matches(['\n', '\r']) })
                }
            };
            let set = block_on(async { Ok(client.set_secret(name, &source).await?) })?;
            writeln!(out, "{} set (source: {})", text(&set, "name"), text(&set, "source"))?;
        }
        SecretAction::Rm { name } => {
            block_on(async { Ok(client.delete_secret(name).await?) })?;
            writeln!(out, "deleted {name}")?;
        }
    }
    Ok(())
}
