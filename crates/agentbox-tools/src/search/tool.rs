//! The `web_search` tool.

use async_trait::async_trait;

use super::{SearchRequest, SearchResponse, WebSearch};
use crate::error::ToolResult;
use crate::tool::{ToolContext, TypedTool};

/// Searches the web with the configured providers.
#[derive(Debug, Clone)]
pub struct WebSearchTool {
    search: WebSearch,
}

impl WebSearchTool {
    /// A tool searching with `search`.
    #[must_use]
    pub fn new(search: WebSearch) -> Self {
        Self { search }
    }
}

#[async_trait]
impl TypedTool for WebSearchTool {
    type Input = SearchRequest;
    type Output = SearchResponse;
    const NAME: &'static str = "web_search";
    const NEEDS_SANDBOX: bool = false;

    fn description(&self) -> &str {
        "Search the web. Returns results as {title, url, snippet, score?, published?} and, where the provider gives one, \
         a direct answer. Options: max_results (1-20), depth (basic|advanced), time_range (day|week|month|year), \
         include_domains and exclude_domains."
    }

    async fn run(&self, _ctx: &ToolContext, input: SearchRequest) -> ToolResult<SearchResponse> {
        Ok(self.search.search(&input).await?)
    }
}
