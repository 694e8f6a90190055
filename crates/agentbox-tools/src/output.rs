//! Output sized for a model's context: head and tail kept, the middle cut with a mark
//! saying how much was cut and where the full text was saved inside the sandbox.

use std::collections::VecDeque;

use agentbox_core::{ExecEvent, ExecStream, ExitStatus};

use crate::error::ToolResult;
use crate::tool::ToolSandbox;

/// The mark put where bytes were cut.
#[must_use]
pub fn truncation_mark(cut: u64, saved_to: Option<&str>) -> String {
    match saved_to {
        Some(path) => format!("\n[... {cut} bytes truncated; full output saved to {path} ...]\n"),
        None => format!("\n[... {cut} bytes truncated ...]\n"),
    }
}

/// Cuts `text` to at most about `cap` bytes (half head, half tail) on character boundaries, with a mark.
#[must_use]
pub fn cap_text(text: &str, cap: usize, saved_to: Option<&str>) -> (String, bool) {
    if text.len() <= cap {
        return (text.to_owned(), false);
    }
    let mut head_end = cap - cap / 2;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - cap / 2;
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    let cut = (tail_start - head_end) as u64;
    (format!("{}{}{}", &text[..head_end], truncation_mark(cut, saved_to), &text[tail_start..]), true)
}

/// One output stream being collected: everything up to the spill limit, and the last bytes.
#[derive(Debug)]
struct Captured {
    full: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
    spill_cap: usize,
    tail_cap: usize,
}

impl Captured {
    fn new(shown_cap: usize, spill_cap: usize) -> Self {
        Self {
            full: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
            spill_cap: spill_cap.max(shown_cap),
            tail_cap: shown_cap / 2,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let room = self.spill_cap.saturating_sub(self.full.len());
        self.full.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if self.total > self.spill_cap as u64 {
            self.tail.extend(chunk);
            let excess = self.tail.len().saturating_sub(self.tail_cap);
            self.tail.drain(..excess);
        }
    }
}

/// A stream's text for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamText {
    /// The text shown, with a truncation mark if cut.
    pub text: String,
    /// Whether it was cut.
    pub truncated: bool,
    /// Where the full output was saved in the sandbox, when cut.
    pub saved_to: Option<String>,
    /// Bytes the stream produced.
    pub total_bytes: u64,
}

/// A finished execution, sized for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectedExec {
    /// How it ended.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: StreamText,
    /// Standard error.
    pub stderr: StreamText,
}

/// Drains `stream`, keeping what the model is shown and saving the full text of a cut stream
/// to `{state_dir}/outputs/{label}.stdout|stderr` in the sandbox.
///
/// # Errors
/// Only when saving a cut stream fails.
pub async fn collect_exec(sandbox: &ToolSandbox<'_>, mut stream: ExecStream, label: &str) -> ToolResult<CollectedExec> {
    let cfg = sandbox.config();
    let mut out = Captured::new(cfg.max_output_bytes, cfg.max_spill_bytes);
    let mut err = Captured::new(cfg.max_output_bytes, cfg.max_spill_bytes);
    let mut status = None;
    while let Some(ev) = stream.next().await {
        match ev {
            ExecEvent::Stdout(b) => out.push(&b),
            ExecEvent::Stderr(b) => err.push(&b),
            ExecEvent::Exit(s) => status = Some(s),
        }
    }
    let status = status.unwrap_or(ExitStatus {
        exit_code: 255,
        signal: None,
        timed_out: false,
        oom_killed: false,
        duration: std::time::Duration::ZERO,
    });
    let stdout = render(sandbox, out, &format!("{label}.stdout")).await?;
    let stderr = render(sandbox, err, &format!("{label}.stderr")).await?;
    Ok(CollectedExec { status, stdout, stderr })
}

async fn render(sandbox: &ToolSandbox<'_>, captured: Captured, file: &str) -> ToolResult<StreamText> {
    let cap = sandbox.config().max_output_bytes;
    let total = captured.total;
    if total <= cap as u64 {
        return Ok(StreamText {
            text: String::from_utf8_lossy(&captured.full).into_owned(),
            truncated: false,
            saved_to: None,
            total_bytes: total,
        });
    }
    let path = format!("{}/outputs/{file}", sandbox.config().state_dir.trim_end_matches('/'));
    let full_len = captured.full.len();
    let kept_all = full_len as u64 == total;
    let head_text = String::from_utf8_lossy(&captured.full).into_owned();
    sandbox.write_file(&path, captured.full).await?;
    let text = if kept_all {
        cap_text(&head_text, cap, Some(&path)).0
    } else {
        // Longer than the spill limit: the file holds the first bytes; show its head and the stream's real tail.
        let head_cap = cap - cap / 2;
        let mut head_end = head_cap.min(head_text.len());
        while !head_text.is_char_boundary(head_end) {
            head_end -= 1;
        }
        let tail: Vec<u8> = captured.tail.into_iter().collect();
        let cut = total - head_end as u64 - tail.len() as u64;
        format!(
            "{}\n[... {cut} bytes truncated; the first {full_len} bytes are saved to {path} ...]\n{}",
            &head_text[..head_end],
            String::from_utf8_lossy(&tail)
        )
    };
    Ok(StreamText { text, truncated: true, saved_to: Some(path), total_bytes: total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_text_keeps_head_and_tail_and_says_how_much_was_cut() {
        let text = "a".repeat(50) + &"b".repeat(100) + &"c".repeat(50);
        let (shown, cut) = cap_text(&text, 100, Some("/tmp/x"));
        assert!(cut);
        assert!(shown.starts_with(&"a".repeat(50)));
        assert!(shown.ends_with(&"c".repeat(50)));
        assert!(shown.contains("[... 100 bytes truncated; full output saved to /tmp/x ...]"));
        assert_eq!(cap_text("short", 100, None), ("short".to_owned(), false));
    }

    #[test]
    fn cap_text_never_splits_a_character() {
        let text = "é".repeat(100);
        let (shown, _) = cap_text(&text, 51, None);
        assert!(shown.contains("bytes truncated"));
        assert!(!shown.contains('\u{FFFD}'));
    }
}
