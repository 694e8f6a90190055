//! Where agentbox keeps its files by default, shared by the server (which writes there) and its
//! clients (which read the generated API token from there).

use std::path::PathBuf;

/// The default data directory of agentboxd (its registry and generated API token):
/// `/var/lib/agentbox` for root, else `$XDG_DATA_HOME/agentbox` or `~/.local/share/agentbox`.
#[must_use]
pub fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/agentbox");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("agentbox");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/agentbox"),
        None => PathBuf::from("/var/lib/agentbox"),
    }
}

/// Name of the file in the data directory holding agentboxd's generated API token.
pub const TOKEN_FILE: &str = "api-token";

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // The owner of /proc/self is the process's effective uid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
