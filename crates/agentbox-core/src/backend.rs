//! The provider-agnostic backend trait.

use agentbox_config::{NetworkConfig, PackageSpec};
use agentbox_metrics::SandboxMetrics;
use async_trait::async_trait;

use crate::egress::{EgressPage, EgressQuery, SecretStore};
use crate::terminal::{Terminal, TerminalRequest};
use crate::transfer::{FileStream, FileUpload};
use crate::types::{
    CodeRequest, CreateRequest, ExecRequest, ExecStream, FileEntry, HealthStatus, ProcessInfo, SandboxId, SandboxInfo,
    SnapshotInfo, StoppedSandbox, VolumeInfo,
};
use crate::{Error, Result};

/// A place that can host sandboxes: the local Linux host, E2B, ...
///
/// Every method but [`create`](Self::create) and [`list`](Self::list) takes the
/// id a previous `create` returned; an unknown id gives [`Error::NotFound`].
/// Paths are absolute paths inside the sandbox (relative ones are taken from
/// the user's home) and must never resolve outside it.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait SandboxBackend: Send + Sync + 'static {
    /// Short backend name (`local`, `e2b`).
    fn name(&self) -> &'static str;

    /// Creates and starts a sandbox. The config must already be valid.
    async fn create(&self, request: CreateRequest) -> Result<SandboxInfo>;

    /// Starts an execution and streams its output; the stream ends with an exit event. Dropping the
    /// stream before that event ends the execution's process tree.
    async fn exec(&self, id: &SandboxId, request: ExecRequest) -> Result<ExecStream>;

    /// Creates a sandbox and starts `first` in it, as [`create`](Self::create) then [`exec`](Self::exec) do, for a
    /// caller with one command to run (`agentbox run`). A backend may start it without a round trip of its own
    /// (the local one sends it with the sandbox's setup). When the execution can't be started, the sandbox is
    /// destroyed and the error returned.
    async fn create_and_exec(&self, request: CreateRequest, first: ExecRequest) -> Result<(SandboxInfo, ExecStream)> {
        let info = self.create(request).await?;
        let stream = exec_or_destroy(self, &info.id, first).await?;
        Ok((info, stream))
    }

    /// Runs code in a language's interpreter and streams its output, like [`exec`](Self::exec).
    async fn run_code(&self, id: &SandboxId, request: CodeRequest) -> Result<ExecStream>;

    /// Starts a process in the background; its output goes to a file in the sandbox.
    async fn spawn_background(&self, id: &SandboxId, request: ExecRequest) -> Result<ProcessInfo>;

    /// Lists background processes started with [`spawn_background`](Self::spawn_background).
    async fn list_processes(&self, id: &SandboxId) -> Result<Vec<ProcessInfo>>;

    /// Sends `signal` to a background process and all of its descendants.
    async fn kill_process(&self, id: &SandboxId, pid: u32, signal: i32) -> Result<()>;

    /// Reads a whole file.
    async fn read_file(&self, id: &SandboxId, path: &str) -> Result<Vec<u8>>;

    /// Writes a whole file, creating missing parent directories.
    async fn write_file(&self, id: &SandboxId, path: &str, data: Vec<u8>) -> Result<()>;

    /// Opens a regular file to read in bounded chunks: memory stays at a few chunks whatever its size.
    ///
    /// The default reads the whole file with [`read_file`](Self::read_file); backends that can stream override it.
    async fn read_file_stream(&self, id: &SandboxId, path: &str) -> Result<FileStream> {
        Ok(FileStream::from_bytes(self.read_file(id, path).await?))
    }

    /// Writes a file from chunks, creating missing parent directories. The file appears whole when the upload
    /// ends; an upload abandoned with an error leaves the old file (if any) as it was. Returns the bytes written.
    ///
    /// The default collects at most `max` bytes in memory and calls [`write_file`](Self::write_file).
    async fn write_file_stream(&self, id: &SandboxId, path: &str, upload: FileUpload, max: u64) -> Result<u64> {
        let data = upload.collect(max).await?;
        let n = data.len() as u64;
        self.write_file(id, path, data).await?;
        Ok(n)
    }

    /// Starts a process on a new pseudo-terminal: an interactive shell, an editor, anything that wants
    /// a tty. Input and resizes go through [`Terminal::input`]; output and the exit come back on
    /// [`Terminal::output`].
    ///
    /// # Errors
    /// [`Error::Unsupported`] where the backend has no terminals; otherwise as `exec`.
    async fn open_terminal(&self, id: &SandboxId, request: TerminalRequest) -> Result<Terminal> {
        let _ = (id, request);
        Err(Error::Unsupported(format!("the {} backend has no interactive terminals", self.name())))
    }

    /// Freezes every process of the sandbox: memory and files stay, no CPU is used, and executions are refused
    /// until [`resume`](Self::resume). Files can still be read and written.
    ///
    /// The default says the backend can't.
    async fn pause(&self, id: &SandboxId) -> Result<()> {
        let _ = id;
        Err(Error::Unsupported(format!("the {} backend can't pause sandboxes", self.name())))
    }

    /// Lets a paused sandbox's processes continue where they stopped.
    async fn resume(&self, id: &SandboxId) -> Result<()> {
        let _ = id;
        Err(Error::Unsupported(format!("the {} backend can't pause sandboxes", self.name())))
    }

    /// Ends every process of the sandbox and keeps its files (writable layer, root filesystem) on disk, where
    /// they survive a restart of this process and of the host: the sandbox is gone, and
    /// [`start`](Self::start) boots a fresh one on its files. It uses no memory or CPU meanwhile.
    ///
    /// The default says the backend can't.
    async fn stop(&self, id: &SandboxId) -> Result<StoppedSandbox> {
        let _ = id;
        Err(Error::Unsupported(format!("the {} backend can't stop and start sandboxes", self.name())))
    }

    /// Creates a sandbox as `request` asks, on the files of the stopped sandbox `key`, which it takes over: on
    /// success `key` is gone; on failure it is kept, and the start can be retried.
    ///
    /// The default says the backend can't.
    async fn start(&self, key: &str, request: CreateRequest) -> Result<SandboxInfo> {
        let _ = (key, request);
        Err(Error::Unsupported(format!("the {} backend can't stop and start sandboxes", self.name())))
    }

    /// Deletes the kept files of the stopped sandbox `key`.
    async fn discard_stopped(&self, key: &str) -> Result<()> {
        Err(Error::NotFound(format!("stopped sandbox {key}")))
    }

    /// Writes the changes a stopped sandbox made to its root filesystem (an image root's writable layer) as an
    /// uncompressed OCI layer tar to the file `to`, for a template build to keep as a layer. The home and volumes
    /// are not part of the root. Returns the bytes of file content written.
    ///
    /// The default says the backend can't.
    async fn export_root_changes(&self, key: &str, to: &std::path::Path) -> Result<u64> {
        let _ = (key, to);
        Err(Error::Unsupported(format!("the {} backend can't export a sandbox's root", self.name())))
    }

    /// Every stopped sandbox the backend keeps.
    async fn list_stopped(&self) -> Result<Vec<StoppedSandbox>> {
        Ok(Vec::new())
    }

    /// Takes a read-only snapshot of the sandbox's files named `name`, while it runs.
    ///
    /// The default says the backend can't.
    async fn snapshot(&self, id: &SandboxId, name: &str) -> Result<SnapshotInfo> {
        let _ = (id, name);
        Err(Error::Unsupported(format!("the {} backend can't take snapshots", self.name())))
    }

    /// Every snapshot the backend holds.
    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        Ok(Vec::new())
    }

    /// Deletes a snapshot; sandboxes made from it keep their files.
    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        Err(Error::NotFound(format!("snapshot {name}")))
    }

    /// Gets what a create of `config` needs from elsewhere (an image pulled from its registry), before the
    /// create itself: this is not part of `startup_timeout`, which bounds starting the sandbox.
    ///
    /// The default has nothing to get.
    async fn prepare(&self, config: &agentbox_config::SandboxConfig) -> Result<()> {
        let _ = config;
        Ok(())
    }

    /// Makes the volume `name`, holding at most `limit_bytes`; sandboxes mount it with `storage.volumes`.
    ///
    /// The default says the backend can't.
    async fn create_volume(&self, name: &str, limit_bytes: u64) -> Result<VolumeInfo> {
        let _ = (name, limit_bytes);
        Err(Error::Unsupported(format!("the {} backend has no volumes", self.name())))
    }

    /// Every volume the backend holds.
    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        Ok(Vec::new())
    }

    /// Deletes a volume with its files; refused while a sandbox has it mounted.
    async fn delete_volume(&self, name: &str) -> Result<()> {
        Err(Error::NotFound(format!("volume {name}")))
    }

    /// Lists a directory.
    async fn list_dir(&self, id: &SandboxId, path: &str) -> Result<Vec<FileEntry>>;

    /// Describes one path without following a final symlink.
    async fn stat(&self, id: &SandboxId, path: &str) -> Result<FileEntry>;

    /// Creates a directory and its missing parents.
    async fn mkdir(&self, id: &SandboxId, path: &str) -> Result<()>;

    /// Removes a file, or a directory with everything in it.
    async fn remove(&self, id: &SandboxId, path: &str) -> Result<()>;

    /// Renames a file or directory.
    async fn rename(&self, id: &SandboxId, from: &str, to: &str) -> Result<()>;

    /// Samples resource use.
    async fn metrics(&self, id: &SandboxId) -> Result<SandboxMetrics>;

    /// Probes whether the sandbox answers.
    async fn health(&self, id: &SandboxId) -> Result<HealthStatus>;

    /// Replaces a running sandbox's network policy.
    async fn update_network(&self, id: &SandboxId, network: NetworkConfig) -> Result<()> {
        let _ = (id, network);
        Err(Error::Unsupported(format!(
            "the {} backend cannot change network policy of a running sandbox",
            self.name()
        )))
    }

    /// The server's secrets that this backend's egress proxy injects, or `None` when it can't.
    fn secrets(&self) -> Option<SecretStore> {
        None
    }

    /// One page of a sandbox's egress audit log.
    async fn egress_log(&self, id: &SandboxId, query: EgressQuery) -> Result<EgressPage> {
        let _ = (id, query);
        Err(Error::Unsupported(format!("the {} backend keeps no egress log", self.name())))
    }

    /// Installs packages in the sandbox, one installer run per package manager.
    ///
    /// The default runs pip (into the user's site) and npm (into the home's
    /// `node_modules`) through [`exec`](Self::exec), and refuses apt.
    async fn install_packages(&self, id: &SandboxId, packages: Vec<PackageSpec>) -> Result<()> {
        let apt = crate::install::AptSupport::No("this backend's installer runs pip and npm only");
        for request in crate::install::install_requests(&packages, apt)? {
            let label = request.to_argv()?.join(" ");
            let out = self.exec(id, request).await?.collect(16 * 1024).await;
            if out.exit_code != 0 {
                return Err(Error::backend(format!(
                    "package install failed (exit {}): {label}\n{}",
                    out.exit_code,
                    out.stderr.trim_end()
                )));
            }
        }
        Ok(())
    }

    /// A base URL on the host (such as `http://127.0.0.1:41234`) that reaches TCP `port`
    /// inside the sandbox, e.g. a browser's DevTools endpoint or a dev server.
    async fn open_port(&self, id: &SandboxId, port: u16) -> Result<String> {
        let _ = (id, port);
        Err(Error::Unsupported(format!("the {} backend cannot expose sandbox ports", self.name())))
    }

    /// Extends the sandbox's lifetime on backends that expire sandboxes themselves.
    async fn keep_alive(&self, id: &SandboxId, for_secs: u64) -> Result<()> {
        let _ = (id, for_secs);
        Ok(())
    }

    /// Destroys the sandbox and releases everything it held. Destroying a destroyed sandbox is not an error.
    async fn destroy(&self, id: &SandboxId) -> Result<()>;

    /// Every live sandbox this backend knows, including ones created by an earlier process.
    async fn list(&self) -> Result<Vec<SandboxInfo>>;
}

/// Starts `request` in the sandbox `id`, which was made for it alone: when it can't be started, the sandbox is
/// destroyed and the error returned (the end of [`SandboxBackend::create_and_exec`]).
///
/// # Errors
/// The execution's error.
pub async fn exec_or_destroy<B: SandboxBackend + ?Sized>(
    backend: &B,
    id: &SandboxId,
    request: ExecRequest,
) -> Result<ExecStream> {
    match backend.exec(id, request).await {
        Ok(stream) => Ok(stream),
        Err(e) => {
            let _ = backend.destroy(id).await;
            Err(e)
        }
    }
}
