//! File tools: read (with line ranges), write, list, search-replace edit, delete, upload and download.

use std::collections::VecDeque;

use agentbox_core::{FileEntry, FileKind};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ToolError, ToolErrorKind, ToolResult};
use crate::tool::{ToolContext, ToolRegistry, TypedTool};

/// Registers every file tool.
pub fn register_all(registry: &mut ToolRegistry) {
    registry.register(ReadFileTool);
    registry.register(WriteFileTool);
    registry.register(ListFilesTool);
    registry.register(EditFileTool);
    registry.register(DeleteFileTool);
    registry.register(UploadFileTool);
    registry.register(DownloadFileTool);
}

fn is_binary(data: &[u8]) -> bool {
    data.iter().take(8192).any(|&b| b == 0) || std::str::from_utf8(data).is_err()
}

async fn read_text(ctx: &ToolContext, path: &str) -> ToolResult<String> {
    let sandbox = ctx.sandbox()?;
    let max = ctx.config().max_transfer_bytes as u64;
    let data = sandbox.read_file_limited(path, max).await.map_err(|e| directory_hint(e, path)).map_err(|e| {
        if e.kind == ToolErrorKind::LimitExceeded {
            ToolError::new(
                ToolErrorKind::LimitExceeded,
                format!(
                    "{path} is over the {max}-byte limit of the file tools; look at parts of it with a command \
                     (head, tail, sed -n 'A,Bp', grep)"
                ),
            )
        } else {
            e
        }
    })?;
    if is_binary(&data) {
        return Err(ToolError::new(
            ToolErrorKind::Unsupported,
            format!("{path} is a binary file ({} bytes), not text: use download_file to get it as base64", data.len()),
        ));
    }
    String::from_utf8(data).map_err(|e| ToolError::failed(format!("{path}: {e}")))
}

fn directory_hint(e: ToolError, path: &str) -> ToolError {
    if e.message.to_ascii_lowercase().contains("is a directory") {
        ToolError::invalid_input(format!("{path} is a directory: use list_files to see what it holds"))
    } else {
        e
    }
}

/// Input of `read_file`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileInput {
    /// File path; relative paths are taken from /home/user.
    pub path: String,
    /// First line to return, counting from 1 (default 1).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub start_line: Option<usize>,
    /// Last line to return, inclusive (default: the end, or as much as fits).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub end_line: Option<usize>,
}

/// Output of `read_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFileOutput {
    /// Absolute path.
    pub path: String,
    /// The lines' text.
    pub content: String,
    /// First line returned (1-based).
    pub start_line: usize,
    /// Last line returned (0 when the file is empty).
    pub end_line: usize,
    /// Lines in the whole file.
    pub total_lines: usize,
    /// Set when the read stopped early to stay within the size cap: the line to continue from.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_start_line: Option<usize>,
}

/// Reads a text file, whole or a range of lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadFileTool;

#[async_trait]
impl TypedTool for ReadFileTool {
    type Input = ReadFileInput;
    type Output = ReadFileOutput;
    const NAME: &'static str = "read_file";

    fn description(&self) -> &str {
        "Read a text file in the sandbox, whole or lines start_line..=end_line (1-based). \
         Long reads stop early and return next_start_line to continue from."
    }

    async fn run(&self, ctx: &ToolContext, input: ReadFileInput) -> ToolResult<ReadFileOutput> {
        let path = ctx.config().resolve(&input.path)?;
        let start = input.start_line.unwrap_or(1);
        if start == 0 || input.end_line == Some(0) {
            return Err(ToolError::invalid_input("line numbers start at 1"));
        }
        if let Some(end) = input.end_line.filter(|e| *e < start) {
            return Err(ToolError::invalid_input(format!("end_line ({end}) is before start_line ({start})")));
        }
        let text = read_text(ctx, &path).await?;
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let total = lines.len();
        if total == 0 {
            return Ok(ReadFileOutput {
                path,
                content: String::new(),
                start_line: 1,
                end_line: 0,
                total_lines: 0,
                next_start_line: None,
            });
        }
        if start > total {
            return Err(ToolError::invalid_input(format!(
                "start_line {start} is past the end of {path}, which has {total} lines"
            )));
        }
        let end = input.end_line.unwrap_or(total).min(total);
        let cap = ctx.config().max_read_bytes;
        let mut content = String::new();
        let mut last = start - 1;
        for (i, line) in lines[start - 1..end].iter().enumerate() {
            if !content.is_empty() && content.len() + line.len() > cap {
                break;
            }
            if line.len() > cap {
                // One huge line: return its first bytes and say so.
                let mut cut = cap;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                content.push_str(&line[..cut]);
                content.push_str(&crate::output::truncation_mark((line.len() - cut) as u64, None));
                last = start + i;
                break;
            }
            content.push_str(line);
            last = start + i;
        }
        let next_start_line = (last < end).then_some(last + 1);
        Ok(ReadFileOutput { path, content, start_line: start, end_line: last, total_lines: total, next_start_line })
    }
}

/// Input of `write_file`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileInput {
    /// File path; relative paths are taken from /home/user. Missing directories are created.
    pub path: String,
    /// The whole new content (UTF-8 text).
    pub content: String,
}

/// Output of `write_file` and `upload_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenOutput {
    /// Absolute path.
    pub path: String,
    /// Bytes written.
    pub bytes_written: usize,
}

/// Writes a text file.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteFileTool;

#[async_trait]
impl TypedTool for WriteFileTool {
    type Input = WriteFileInput;
    type Output = WrittenOutput;
    const NAME: &'static str = "write_file";

    fn description(&self) -> &str {
        "Create or overwrite a text file in the sandbox with the given content; missing directories are created."
    }

    async fn run(&self, ctx: &ToolContext, input: WriteFileInput) -> ToolResult<WrittenOutput> {
        let path = ctx.config().resolve(&input.path)?;
        let n = input.content.len();
        ctx.sandbox()?.write_file(&path, input.content.into_bytes()).await?;
        Ok(WrittenOutput { path, bytes_written: n })
    }
}

/// Input of `list_files`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilesInput {
    /// Directory to list (default /home/user).
    #[serde(default)]
    pub path: Option<String>,
    /// Also list subdirectories' contents, breadth first.
    #[serde(default)]
    pub recursive: bool,
    /// Include names starting with a dot.
    #[serde(default)]
    pub include_hidden: bool,
}

/// One listed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedEntry {
    /// Absolute path.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
}

/// Output of `list_files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListFilesOutput {
    /// The directory listed.
    pub path: String,
    /// Entries, sorted by path within each directory.
    pub entries: Vec<ListedEntry>,
    /// Whether the listing stopped at the entry cap.
    pub truncated: bool,
}

/// Lists a directory.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilesTool;

#[async_trait]
impl TypedTool for ListFilesTool {
    type Input = ListFilesInput;
    type Output = ListFilesOutput;
    const NAME: &'static str = "list_files";

    fn description(&self) -> &str {
        "List the files and directories in a sandbox directory (default /home/user), optionally recursively."
    }

    async fn run(&self, ctx: &ToolContext, input: ListFilesInput) -> ToolResult<ListFilesOutput> {
        let sandbox = ctx.sandbox()?;
        let root = ctx.config().resolve(input.path.as_deref().unwrap_or("~"))?;
        let cap = ctx.config().max_list_entries;
        let mut entries = Vec::new();
        let mut queue = VecDeque::from([root.clone()]);
        let mut truncated = false;
        while let Some(dir) = queue.pop_front() {
            let mut listed: Vec<FileEntry> = match sandbox.list_dir(&dir).await {
                Ok(l) => l,
                Err(e) if dir == root => {
                    if let Ok(entry) = sandbox.stat(&root).await {
                        if entry.kind != FileKind::Dir {
                            return Err(ToolError::invalid_input(format!(
                                "{root} is a file, not a directory: use read_file"
                            )));
                        }
                    }
                    return Err(e);
                }
                Err(_) => continue,
            };
            listed.sort_by(|a, b| a.name.cmp(&b.name));
            for e in listed {
                if !input.include_hidden && e.name.starts_with('.') {
                    continue;
                }
                if entries.len() >= cap {
                    truncated = true;
                    break;
                }
                if input.recursive && e.kind == FileKind::Dir {
                    queue.push_back(e.path.clone());
                }
                entries.push(ListedEntry { path: e.path, kind: e.kind, size: e.size });
            }
            if truncated {
                break;
            }
        }
        Ok(ListFilesOutput { path: root, entries, truncated })
    }
}

/// Input of `edit_file`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EditFileInput {
    /// File path; relative paths are taken from /home/user.
    pub path: String,
    /// The exact text to replace, including whitespace; it must occur once unless replace_all is set.
    pub old_text: String,
    /// The replacement text.
    pub new_text: String,
    /// Replace every occurrence instead of requiring exactly one.
    #[serde(default)]
    pub replace_all: bool,
}

/// Output of `edit_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditFileOutput {
    /// Absolute path.
    pub path: String,
    /// Occurrences replaced.
    pub replacements: usize,
    /// The line where the first replacement starts (1-based).
    pub first_line: usize,
}

/// Replaces text in a file.
#[derive(Debug, Clone, Copy, Default)]
pub struct EditFileTool;

#[async_trait]
impl TypedTool for EditFileTool {
    type Input = EditFileInput;
    type Output = EditFileOutput;
    const NAME: &'static str = "edit_file";

    fn description(&self) -> &str {
        "Edit a text file by replacing old_text with new_text. old_text must match exactly (whitespace included) \
         and occur once, unless replace_all is true."
    }

    async fn run(&self, ctx: &ToolContext, input: EditFileInput) -> ToolResult<EditFileOutput> {
        let path = ctx.config().resolve(&input.path)?;
        if input.old_text.is_empty() {
            return Err(ToolError::invalid_input(
                "old_text is empty: give the exact text to replace (use write_file to create a file)",
            ));
        }
        let text = read_text(ctx, &path).await?;
        let count = text.matches(&input.old_text).count();
        if count == 0 {
            return Err(ToolError::not_found(format!(
                "old_text was not found in {path}; read the file and copy the exact text, whitespace included"
            )));
        }
        if count > 1 && !input.replace_all {
            return Err(ToolError::new(
                ToolErrorKind::Conflict,
                format!(
                    "old_text occurs {count} times in {path}; add surrounding lines to make it unique, or set replace_all"
                ),
            ));
        }
        let first = text.find(&input.old_text).unwrap_or(0);
        let first_line = text[..first].matches('\n').count() + 1;
        let new = if input.replace_all {
            text.replace(&input.old_text, &input.new_text)
        } else {
            text.replacen(&input.old_text, &input.new_text, 1)
        };
        ctx.sandbox()?.write_file(&path, new.into_bytes()).await?;
        Ok(EditFileOutput { path, replacements: if input.replace_all { count } else { 1 }, first_line })
    }
}

/// Input of `delete_file`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteFileInput {
    /// File or directory path; a directory is removed with everything in it.
    pub path: String,
}

/// Output of `delete_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteFileOutput {
    /// Absolute path removed.
    pub path: String,
    /// What it was.
    pub kind: FileKind,
}

/// Removes a file or directory.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteFileTool;

#[async_trait]
impl TypedTool for DeleteFileTool {
    type Input = DeleteFileInput;
    type Output = DeleteFileOutput;
    const NAME: &'static str = "delete_file";

    fn description(&self) -> &str {
        "Delete a file, or a directory with everything in it, in the sandbox."
    }

    async fn run(&self, ctx: &ToolContext, input: DeleteFileInput) -> ToolResult<DeleteFileOutput> {
        let path = ctx.config().resolve(&input.path)?;
        let trimmed = path.trim_end_matches('/');
        if trimmed.is_empty() || trimmed == ctx.config().home_dir.trim_end_matches('/') {
            return Err(ToolError::invalid_input(format!(
                "refusing to delete {path}: name a file or directory inside it"
            )));
        }
        let sandbox = ctx.sandbox()?;
        let entry = sandbox.stat(&path).await?;
        sandbox.remove(&path).await?;
        Ok(DeleteFileOutput { path, kind: entry.kind })
    }
}

/// Input of `upload_file`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadFileInput {
    /// Destination path; missing directories are created.
    pub path: String,
    /// The bytes, base64-encoded (standard alphabet, padded).
    pub content_base64: String,
}

/// Writes bytes to a file.
#[derive(Debug, Clone, Copy, Default)]
pub struct UploadFileTool;

#[async_trait]
impl TypedTool for UploadFileTool {
    type Input = UploadFileInput;
    type Output = WrittenOutput;
    const NAME: &'static str = "upload_file";

    fn description(&self) -> &str {
        "Write bytes (base64-encoded) to a file in the sandbox, for binary files such as images or archives."
    }

    async fn run(&self, ctx: &ToolContext, input: UploadFileInput) -> ToolResult<WrittenOutput> {
        let path = ctx.config().resolve(&input.path)?;
        let data = BASE64
            .decode(input.content_base64.trim())
            .map_err(|e| ToolError::invalid_input(format!("content_base64 is not valid base64: {e}")))?;
        let max = ctx.config().max_transfer_bytes;
        if data.len() > max {
            return Err(ToolError::new(
                ToolErrorKind::LimitExceeded,
                format!("the upload is {} bytes, over the {max}-byte limit; split it into parts", data.len()),
            ));
        }
        let n = data.len();
        ctx.sandbox()?.write_file(&path, data).await?;
        Ok(WrittenOutput { path, bytes_written: n })
    }
}

/// Input of `download_file`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadFileInput {
    /// File path; relative paths are taken from /home/user.
    pub path: String,
}

/// Output of `download_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadFileOutput {
    /// Absolute path.
    pub path: String,
    /// Size in bytes.
    pub size: usize,
    /// The bytes, base64-encoded.
    pub content_base64: String,
}

/// Reads a file's bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct DownloadFileTool;

#[async_trait]
impl TypedTool for DownloadFileTool {
    type Input = DownloadFileInput;
    type Output = DownloadFileOutput;
    const NAME: &'static str = "download_file";

    fn description(&self) -> &str {
        "Read a file's bytes from the sandbox, base64-encoded (for binary files; use read_file for text)."
    }

    async fn run(&self, ctx: &ToolContext, input: DownloadFileInput) -> ToolResult<DownloadFileOutput> {
        let path = ctx.config().resolve(&input.path)?;
        let sandbox = ctx.sandbox()?;
        let max = ctx.config().max_transfer_bytes;
        let entry = sandbox.stat(&path).await?;
        if entry.kind == FileKind::Dir {
            return Err(ToolError::invalid_input(format!("{path} is a directory: use list_files")));
        }
        if entry.size > max as u64 {
            return Err(ToolError::new(
                ToolErrorKind::LimitExceeded,
                format!(
                    "{path} is {} bytes, over the {max}-byte download limit; compress or split it first",
                    entry.size
                ),
            ));
        }
        let data = sandbox.read_file_limited(&path, max as u64).await.map_err(|e| directory_hint(e, &path))?;
        Ok(DownloadFileOutput { path, size: data.len(), content_base64: BASE64.encode(&data) })
    }
}
