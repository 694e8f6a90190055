//! What the client verbs (`create`, `exec`, `cp`, `ls`, `inspect`, `stats`, `rm`, `pause`, `resume`,
//! `snapshot`) share: where agentboxd is, and a runtime to talk to it.

use agentbox_client::{Client, ClientConfig};

use super::CliError;

/// Where agentboxd listens.
#[derive(Debug, Clone, clap::Args)]
pub struct Server {
    /// agentboxd's URL (default: AGENTBOX_URL, else http://127.0.0.1:8080). The token comes from
    /// AGENTBOX_API_TOKEN, else agentboxd's token file when readable.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

impl Server {
    /// A client for it.
    ///
    /// # Errors
    /// A URL that is not http(s).
    pub fn client(&self) -> Result<Client, CliError> {
        Ok(Client::new(ClientConfig::from_env(self.url.clone()))?)
    }
}

/// Runs a client future on a small runtime of its own.
///
/// # Errors
/// What the future fails with, or a runtime that can't start.
pub fn block_on<T>(f: impl std::future::Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

/// `a=b` pairs into a JSON object.
///
/// # Errors
/// A pair without `=` or with an empty name.
pub fn env_object(pairs: &[String], flag: &str) -> Result<serde_json::Map<String, serde_json::Value>, CliError> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
                .ok_or_else(|| CliError::Usage(format!("{flag} {p:?} must look like NAME=VALUE")))
        })
        .collect()
}
