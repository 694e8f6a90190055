//! `agentbox search`: web search with the configured providers.

use std::io::Write;

use agentbox_tools::search::{ProviderKind, SearchConfig, SearchRequest, WebSearch};

use super::CliError;

/// Arguments of `agentbox search`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Providers come from the environment, tried in this order: TAVILY_API_KEY, SERPER_API_KEY, SEARXNG_URL\n(AGENTBOX_TAVILY_URL and AGENTBOX_SERPER_URL override the base URLs).\n\nExamples:\n  agentbox search 'rust async runtimes'\n  agentbox search --max-results 3 --provider searxng --json 'tokio'"
)]
pub struct Args {
    /// What to search for.
    #[arg(required = true, num_args = 1..)]
    pub query: Vec<String>,
    /// Results wanted, 1 to 20.
    #[arg(long, default_value_t = 5)]
    pub max_results: u32,
    /// Use only this provider: tavily, serper or searxng.
    #[arg(long)]
    pub provider: Option<String>,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `agentbox search`.
///
/// # Errors
/// No provider configured, bad options, or every provider failing.
pub fn run(args: &Args) -> Result<(), CliError> {
    let provider: Option<ProviderKind> = args.provider.as_deref().map(str::parse).transpose()?;
    let request =
        SearchRequest { max_results: Some(args.max_results), provider, ..SearchRequest::new(args.query.join(" ")) };
    let search = WebSearch::new(SearchConfig::from_env())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let response = runtime.block_on(search.search(&request))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&response)?)?;
        return Ok(());
    }
    if let Some(answer) = &response.answer {
        writeln!(out, "Answer: {answer}\n")?;
    }
    if response.results.is_empty() {
        writeln!(out, "No results.")?;
    }
    for (i, r) in response.results.iter().enumerate() {
        writeln!(out, "{}. {}\n   {}", i + 1, r.title, r.url)?;
        if !r.snippet.is_empty() {
            writeln!(out, "   {}", r.snippet)?;
        }
        if let Some(p) = &r.published {
            writeln!(out, "   published {p}")?;
        }
    }
    writeln!(out, "\n(via {}{})", response.provider, if response.cached { ", cached" } else { "" })?;
    Ok(())
}
