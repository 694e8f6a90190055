//! Files through envd: whole-file `GET`/`POST /files`, and the `filesystem.Filesystem` RPCs.

use agentbox_core::{Error, FileEntry, FileKind, Result, SandboxId};
use reqwest::Method;

use crate::backend::{Handle, Inner};
use crate::config::ENVD_PORT;
use crate::error::{Call, Plane};
use crate::mapping::{file_entry, sandbox_path};
use crate::transport::{ONCE, SANDBOX_IDEMPOTENT};
use crate::wire::{EntryResponse, ListDirRequest, ListDirResponse, MoveRequest, PathRequest};

/// A `multipart/form-data` body with one part, `file`, as envd's upload expects; returns the content type and body.
pub(crate) fn multipart(filename: &str, data: &[u8], seed: u64) -> (String, Vec<u8>) {
    let mut n = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let boundary = loop {
        n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let candidate = format!("agentbox-{n:016x}{:08x}", data.len());
        if !data.windows(candidate.len()).any(|w| w == candidate.as_bytes()) {
            break candidate;
        }
    };
    let name: String = filename.chars().map(|c| if c == '"' || c.is_control() { '_' } else { c }).collect();
    let mut body = Vec::with_capacity(data.len() + 256);
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(
        format!("Content-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n").as_bytes(),
    );
    body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

impl Inner {
    fn path(&self, path: &str) -> Result<String> {
        sandbox_path(&self.home(), path)
    }

    fn files_request(&self, h: &Handle, method: Method, path: &str) -> Result<crate::transport::HttpRequest> {
        let mut request = self.sandbox_request(h, ENVD_PORT, method, "/files")?;
        request.url.query_pairs_mut().append_pair("path", path).append_pair("username", &self.config.user);
        Ok(request)
    }

    pub(crate) async fn read_file(&self, id: &SandboxId, path: &str) -> Result<Vec<u8>> {
        let path = self.path(path)?;
        let h = self.ready(id, self.config.timeouts.request).await?;
        let request = self.files_request(&h, Method::GET, &path)?.header("Accept", "application/octet-stream");
        let action = format!("read {path}");
        let call = Call { plane: Plane::Sandbox, action: &action, subject: &path, sandbox: Some(id.as_str()) };
        Ok(self.sandbox_send(&h, request, SANDBOX_IDEMPOTENT, call).await?.body)
    }

    pub(crate) async fn write_file(&self, id: &SandboxId, path: &str, data: Vec<u8>) -> Result<()> {
        let path = self.path(path)?;
        let h = self.ready(id, self.config.timeouts.request).await?;
        self.write_file_on(&h, &path, data).await
    }

    /// Uploads a whole file; envd creates missing parents and replaces an existing file.
    pub(crate) async fn write_file_on(&self, h: &Handle, path: &str, data: Vec<u8>) -> Result<()> {
        let mut request = self.files_request(h, Method::POST, path)?;
        request.body = Some(multipart(path, &data, self.next_seq()));
        let action = format!("write {path}");
        let call = Call { plane: Plane::Sandbox, action: &action, subject: path, sandbox: Some(h.id.as_str()) };
        self.sandbox_send(h, request, SANDBOX_IDEMPOTENT, call).await.map(|_| ())
    }

    async fn stat_on(&self, h: &Handle, path: &str) -> Result<FileEntry> {
        let action = format!("stat {path}");
        let call = Call { plane: Plane::Sandbox, action: &action, subject: path, sandbox: Some(h.id.as_str()) };
        let response: EntryResponse = self
            .envd_unary(
                h,
                "filesystem.Filesystem/Stat",
                &PathRequest { path: path.to_owned() },
                SANDBOX_IDEMPOTENT,
                call,
            )
            .await?;
        let entry = response.entry.ok_or_else(|| Error::backend(format!("envd's Stat of {path} returned no entry")))?;
        Ok(file_entry(&entry))
    }

    pub(crate) async fn stat(&self, id: &SandboxId, path: &str) -> Result<FileEntry> {
        let path = self.path(path)?;
        let h = self.ready(id, self.config.timeouts.request).await?;
        self.stat_on(&h, &path).await
    }

    pub(crate) async fn list_dir(&self, id: &SandboxId, path: &str) -> Result<Vec<FileEntry>> {
        let path = self.path(path)?;
        let h = self.ready(id, self.config.timeouts.request).await?;
        let action = format!("list {path}");
        let call = Call { plane: Plane::Sandbox, action: &action, subject: &path, sandbox: Some(id.as_str()) };
        let body = ListDirRequest { path: path.clone(), depth: 1 };
        let response: ListDirResponse =
            self.envd_unary(&h, "filesystem.Filesystem/ListDir", &body, SANDBOX_IDEMPOTENT, call).await?;
        let mut entries: Vec<FileEntry> = response.entries.iter().map(file_entry).collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    pub(crate) async fn mkdir(&self, id: &SandboxId, path: &str) -> Result<()> {
        let path = self.path(path)?;
        let h = self.ready(id, self.config.timeouts.request).await?;
        let action = format!("create directory {path}");
        let call = Call { plane: Plane::Sandbox, action: &action, subject: &path, sandbox: Some(id.as_str()) };
        let result: Result<EntryResponse> =
            self.envd_unary(&h, "filesystem.Filesystem/MakeDir", &PathRequest { path: path.clone() }, ONCE, call).await;
        match result {
            Ok(_) => Ok(()),
            // envd refuses an existing directory; mkdir -p semantics accept it.
            Err(Error::Conflict(m)) => match self.stat_on(&h, &path).await {
                Ok(e) if e.kind == FileKind::Dir => Ok(()),
                _ => Err(Error::Conflict(m)),
            },
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn remove(&self, id: &SandboxId, path: &str) -> Result<()> {
        let path = self.path(path)?;
        if path == "/" {
            return Err(Error::InvalidRequest("refusing to remove the sandbox's root directory".into()));
        }
        let h = self.ready(id, self.config.timeouts.request).await?;
        // envd removes like `rm -rf` and accepts a missing path; the contract reports it.
        self.stat_on(&h, &path).await?;
        let action = format!("remove {path}");
        let call = Call { plane: Plane::Sandbox, action: &action, subject: &path, sandbox: Some(id.as_str()) };
        let _: serde_json::Value = self
            .envd_unary(&h, "filesystem.Filesystem/Remove", &PathRequest { path: path.clone() }, ONCE, call)
            .await?;
        Ok(())
    }

    pub(crate) async fn rename(&self, id: &SandboxId, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.path(from)?, self.path(to)?);
        let h = self.ready(id, self.config.timeouts.request).await?;
        let action = format!("move {from} to {to}");
        let call = Call { plane: Plane::Sandbox, action: &action, subject: &from, sandbox: Some(id.as_str()) };
        let body = MoveRequest { source: from.clone(), destination: to };
        let _: EntryResponse = self.envd_unary(&h, "filesystem.Filesystem/Move", &body, ONCE, call).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_body_has_one_file_part() {
        let (content_type, body) = multipart("/home/user/a\".txt", b"hello\r\n--x", 7);
        let boundary = content_type.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(&format!("--{boundary}\r\n")));
        assert!(text.contains("name=\"file\"; filename=\"/home/user/a_.txt\""));
        assert!(text.contains("\r\n\r\nhello\r\n--x\r\n"));
        assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")));
    }
}
