//! Web search with whichever provider is configured.
//!
//! ```text
//! TAVILY_API_KEY=tvly-... cargo run --example search -- "rust async runtimes"
//! SERPER_API_KEY=...      cargo run --example search -- "rust async runtimes"
//! SEARXNG_URL=http://127.0.0.1:8888 cargo run --example search -- "rust async runtimes"
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use agentbox_tools::search::{SearchConfig, SearchRequest, WebSearch};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let query = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let query = if query.trim().is_empty() { "agentbox sandbox for AI agents".to_owned() } else { query };
    let search = WebSearch::new(SearchConfig::from_env())?;
    if !search.is_configured() {
        eprintln!(
            "No search provider is configured. Set one of:\n  TAVILY_API_KEY   (Tavily; AGENTBOX_TAVILY_URL overrides its URL)\n  \
             SERPER_API_KEY   (Serper; AGENTBOX_SERPER_URL overrides its URL)\n  SEARXNG_URL      (a SearXNG instance with JSON output enabled)"
        );
        return Ok(());
    }
    let providers: Vec<String> = search.providers().iter().map(ToString::to_string).collect();
    println!("providers, in order: {}", providers.join(", "));
    let request = SearchRequest { max_results: Some(5), ..SearchRequest::new(query) };
    let response = search.search(&request).await?;
    println!("answered by {} for {:?}", response.provider, response.query);
    if let Some(answer) = &response.answer {
        println!("answer: {answer}");
    }
    for (i, r) in response.results.iter().enumerate() {
        println!("{}. {}\n   {}\n   {}", i + 1, r.title, r.url, r.snippet);
    }
    let again = search.search(&request).await?;
    println!("same query again: served from cache = {}", again.cached);
    Ok(())
}
