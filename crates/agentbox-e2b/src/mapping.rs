//! Pure translations between agentbox's types and E2B's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentbox_config::NetworkConfig;
use agentbox_core::{Error, ExitStatus, FileEntry, FileKind, Result};
use agentbox_metrics::SandboxMetrics;

use crate::wire::{EndEvent, EntryInfo, SandboxMetric, SandboxNetwork};

/// The E2B form of a network policy: `allow_internet_access` and the optional allow/deny lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// `allow_internet_access`.
    pub allow_internet_access: bool,
    /// `network`, when lists are needed.
    pub network: Option<SandboxNetwork>,
}

/// Every IPv4 address, E2B's `ALL_TRAFFIC`.
pub const ALL_TRAFFIC: &str = "0.0.0.0/0";

/// Whether the domain pattern `pattern` (`example.com` or `*.example.com`) matches the name `name`.
fn pattern_covers(pattern: &str, name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    match pattern.strip_prefix("*.") {
        Some(base) => name.len() > base.len() && name.ends_with(base) && name[..name.len() - base.len()].ends_with('.'),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// Maps a [`NetworkConfig`] onto E2B's egress controls.
///
/// E2B filters egress by IP and CIDR, and by host name only for HTTP (the `Host` header on port 80) and TLS (SNI on
/// port 443) inside an allow list that denies everything else. So:
/// - `enabled = false` becomes `allow_internet_access: false`;
/// - `allowed_domains` become `allowOut` host names with `denyOut: ["0.0.0.0/0"]` (other ports and protocols,
///   UDP/QUIC included, are then blocked);
/// - `allowed_cidrs` become `allowOut` entries;
/// - a `denied_domains` entry is accepted only when an allow list already excludes it.
///
/// # Errors
/// [`Error::Unsupported`] for rules E2B cannot express: denying names while allowing all others, denying a name an
/// allowed wildcard covers, custom DNS resolvers, and bandwidth limits.
pub fn network_plan(n: &NetworkConfig) -> Result<NetworkPlan> {
    if !n.enabled {
        return Ok(NetworkPlan { allow_internet_access: false, network: None });
    }
    let mut unsupported = Vec::new();
    if n.allowed_domains.is_empty() && !n.denied_domains.is_empty() {
        unsupported.push(format!(
            "network.denied_domains {:?} with every other name allowed: E2B filters names only through an allow list \
             (allowOut with denyOut 0.0.0.0/0), so list the names the sandbox may reach in network.allowed_domains instead",
            n.denied_domains
        ));
    }
    for denied in &n.denied_domains {
        if let Some(allowed) = n.allowed_domains.iter().find(|a| pattern_covers(a, denied)) {
            unsupported.push(format!(
                "network.denied_domains entry {denied:?} falls under the allowed {allowed:?}: E2B's allow list wins and it \
                 has no deny by name; narrow network.allowed_domains so it no longer covers {denied:?}"
            ));
        }
    }
    if !n.dns_servers.is_empty() {
        unsupported.push(format!(
            "network.dns_servers {:?}: E2B sandboxes use E2B's resolver (8.8.8.8 when names are filtered); leave the list empty",
            n.dns_servers
        ));
    }
    if n.bandwidth_in_bytes_per_sec.is_some() || n.bandwidth_out_bytes_per_sec.is_some() {
        unsupported.push(
            "network.bandwidth_in/out_bytes_per_sec: E2B has no per-sandbox bandwidth limit; leave them unset"
                .to_owned(),
        );
    }
    if !unsupported.is_empty() {
        return Err(Error::Unsupported(format!("the E2B backend cannot enforce {}", unsupported.join("; and "))));
    }
    let mut allow_out: Vec<String> = n.allowed_domains.clone();
    allow_out.extend(n.allowed_cidrs.iter().cloned());
    let deny_out = if n.allowed_domains.is_empty() { Vec::new() } else { vec![ALL_TRAFFIC.to_owned()] };
    let network = (!allow_out.is_empty() || !deny_out.is_empty()).then_some(SandboxNetwork { allow_out, deny_out });
    Ok(NetworkPlan { allow_internet_access: true, network })
}

/// Go's names of the signals (`ProcessState.String()` prints `signal: <name>`).
const SIGNAL_NAMES: &[(&str, i32)] = &[
    ("hangup", 1),
    ("interrupt", 2),
    ("quit", 3),
    ("illegal instruction", 4),
    ("trace/breakpoint trap", 5),
    ("aborted", 6),
    ("bus error", 7),
    ("floating point exception", 8),
    ("killed", 9),
    ("user defined signal 1", 10),
    ("segmentation fault", 11),
    ("user defined signal 2", 12),
    ("broken pipe", 13),
    ("alarm clock", 14),
    ("terminated", 15),
];

/// The signal in a status such as `signal: killed` or `signal: segmentation fault (core dumped)`.
#[must_use]
pub fn signal_of_status(status: &str) -> Option<i32> {
    let rest = status.trim().strip_prefix("signal: ")?;
    let rest = rest.strip_suffix(" (core dumped)").unwrap_or(rest);
    if let Some((_, n)) = SIGNAL_NAMES.iter().find(|(name, _)| *name == rest) {
        return Some(*n);
    }
    rest.strip_prefix("signal ").and_then(|n| n.parse().ok())
}

/// How a process ended, from envd's end event: 128+signal when a signal killed it, else its exit code (absent in
/// the JSON when 0).
#[must_use]
pub fn exit_status(end: &EndEvent, duration: Duration) -> ExitStatus {
    let (exit_code, signal) = match signal_of_status(&end.status) {
        Some(sig) => (128 + sig, Some(sig)),
        None if end.exit_code < 0 => (255, None),
        None => (end.exit_code, None),
    };
    ExitStatus { exit_code, signal, timed_out: false, oom_killed: false, duration }
}

/// The status of an execution killed at its time limit.
#[must_use]
pub fn timed_out(duration: Duration) -> ExitStatus {
    ExitStatus { exit_code: 124, signal: None, timed_out: true, oom_killed: false, duration }
}

/// Milliseconds since the epoch of an RFC 3339 time (0 when unparsable).
#[must_use]
pub fn rfc3339_ms(s: &str) -> u64 {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(s))
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, in milliseconds since the epoch.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A [`FileEntry`] from envd's `EntryInfo`; a symlink (by `isSymlink` or a target) is reported as one, not followed.
#[must_use]
pub fn file_entry(e: &EntryInfo) -> FileEntry {
    let symlink = e.is_symlink || e.symlink_target.is_some() || e.kind == "FILE_TYPE_SYMLINK";
    let kind = if symlink {
        FileKind::Symlink
    } else {
        match e.kind.as_str() {
            "FILE_TYPE_FILE" => FileKind::File,
            "FILE_TYPE_DIRECTORY" => FileKind::Dir,
            _ => FileKind::Other,
        }
    };
    let name =
        if e.name.is_empty() { e.path.rsplit('/').next().unwrap_or_default().to_owned() } else { e.name.clone() };
    FileEntry {
        path: e.path.clone(),
        name,
        kind,
        size: u64::try_from(e.size).unwrap_or(0),
        mode: e.mode & 0o7777,
        modified_ms: e.modified_time.as_deref().map_or(0, rfc3339_ms),
        symlink_target: e.symlink_target.clone(),
    }
}

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// [`SandboxMetrics`] from E2B's samples (oldest first): the newest sample, with the peak memory of all of them.
/// E2B reports CPU use in percent of all CPUs; agentbox in percent of one CPU, so it is multiplied by the CPU count.
/// E2B reports no CPU time or network counters; those stay 0.
#[must_use]
#[allow(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
pub fn metrics(samples: &[SandboxMetric]) -> Option<SandboxMetrics> {
    let last = samples.iter().max_by_key(|s| s.timestamp_unix)?;
    let peak = samples.iter().map(|s| s.mem_used).max().unwrap_or(last.mem_used);
    Some(SandboxMetrics {
        cpu_usage_percent: (last.cpu_used_pct * f64::from(last.cpu_count.max(1))).max(0.0),
        memory_used_mb: last.mem_used as f64 / MIB,
        memory_peak_mb: peak as f64 / MIB,
        disk_used_gb: last.disk_used as f64 / GIB,
        is_healthy: true,
        sampled_at_ms: u64::try_from(last.timestamp_unix).unwrap_or(0).saturating_mul(1000),
        ..SandboxMetrics::default()
    })
}

/// An absolute, normalized sandbox path: relative paths start at `home`, `.` and `..` are resolved lexically.
///
/// # Errors
/// [`Error::InvalidRequest`] for an empty path or one with a NUL byte.
pub fn sandbox_path(home: &str, path: &str) -> Result<String> {
    if path.is_empty() {
        return Err(Error::InvalidRequest(
            "the path is empty: give an absolute path or one relative to the home".into(),
        ));
    }
    if path.contains('\0') {
        return Err(Error::InvalidRequest(format!("the path {path:?} contains a NUL byte")));
    }
    let joined = if path.starts_with('/') { path.to_owned() } else { format!("{home}/{path}") };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(f: impl FnOnce(&mut NetworkConfig)) -> NetworkConfig {
        let mut n = NetworkConfig { enabled: true, ..NetworkConfig::default() };
        f(&mut n);
        n
    }

    #[test]
    fn network_rules_e2b_can_express() {
        let off = network_plan(&NetworkConfig::default()).unwrap();
        assert_eq!(off, NetworkPlan { allow_internet_access: false, network: None });
        let open = network_plan(&net(|_| {})).unwrap();
        assert_eq!(open, NetworkPlan { allow_internet_access: true, network: None });
        let allow = network_plan(&net(|n| {
            n.allowed_domains = vec!["pypi.org".into(), "*.pythonhosted.org".into()];
            n.allowed_cidrs = vec!["10.1.0.0/16".into()];
            n.denied_domains = vec!["evil.com".into()];
        }))
        .unwrap();
        let list = allow.network.unwrap();
        assert_eq!(list.allow_out, ["pypi.org", "*.pythonhosted.org", "10.1.0.0/16"]);
        assert_eq!(list.deny_out, [ALL_TRAFFIC]);
        let cidrs_only = network_plan(&net(|n| n.allowed_cidrs = vec!["192.168.1.0/24".into()])).unwrap();
        assert_eq!(cidrs_only.network.unwrap().deny_out, Vec::<String>::new());
    }

    #[test]
    fn network_rules_e2b_cannot_express_say_why() {
        let cases: [(&str, NetworkConfig); 4] = [
            ("allow list", net(|n| n.denied_domains = vec!["evil.com".into()])),
            (
                "falls under",
                net(|n| {
                    n.allowed_domains = vec!["*.example.com".into()];
                    n.denied_domains = vec!["bad.example.com".into()];
                }),
            ),
            ("dns_servers", net(|n| n.dns_servers = vec!["1.1.1.1".into()])),
            ("bandwidth", net(|n| n.bandwidth_out_bytes_per_sec = Some(1000))),
        ];
        for (needle, config) in cases {
            match network_plan(&config) {
                Err(Error::Unsupported(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("{needle}: expected Unsupported, got {other:?}"),
            }
        }
    }

    #[test]
    fn exit_statuses() {
        let end =
            |code, status: &str| EndEvent { exit_code: code, exited: code >= 0, status: status.into(), error: None };
        let s = exit_status(&end(0, "exit status 0"), Duration::ZERO);
        assert_eq!((s.exit_code, s.signal), (0, None));
        assert_eq!(exit_status(&end(3, "exit status 3"), Duration::ZERO).exit_code, 3);
        let s = exit_status(&end(-1, "signal: killed"), Duration::ZERO);
        assert_eq!((s.exit_code, s.signal), (137, Some(9)));
        let s = exit_status(&end(-1, "signal: segmentation fault (core dumped)"), Duration::ZERO);
        assert_eq!((s.exit_code, s.signal), (139, Some(11)));
        assert_eq!(signal_of_status("signal: signal 34"), Some(34));
        assert_eq!(exit_status(&end(-1, "weird"), Duration::ZERO).exit_code, 255);
        assert!(timed_out(Duration::ZERO).timed_out);
    }

    #[test]
    fn entries_and_paths() {
        let e = EntryInfo {
            name: "a.txt".into(),
            kind: "FILE_TYPE_FILE".into(),
            path: "/home/user/a.txt".into(),
            size: 5,
            mode: 0o100_644,
            permissions: String::new(),
            modified_time: Some("2024-05-01T10:00:00.250Z".into()),
            symlink_target: None,
            is_symlink: false,
        };
        let f = file_entry(&e);
        assert_eq!((f.kind, f.size, f.mode, f.modified_ms), (FileKind::File, 5, 0o644, 1_714_557_600_250));
        let link = file_entry(&EntryInfo { kind: "FILE_TYPE_DIRECTORY".into(), is_symlink: true, ..e.clone() });
        assert_eq!(link.kind, FileKind::Symlink);
        assert_eq!(sandbox_path("/home/user", "a/../b/./c").unwrap(), "/home/user/b/c");
        assert_eq!(sandbox_path("/home/user", "/tmp/../../etc").unwrap(), "/etc");
        assert!(matches!(sandbox_path("/home/user", "a\0b"), Err(Error::InvalidRequest(_))));
        assert!(matches!(sandbox_path("/home/user", ""), Err(Error::InvalidRequest(_))));
    }

    #[test]
    fn metrics_take_the_newest_sample_and_the_peak() {
        let sample = |t, mem| SandboxMetric {
            timestamp_unix: t,
            cpu_count: 2,
            cpu_used_pct: 25.0,
            mem_used: mem,
            mem_total: 1 << 30,
            disk_used: 1 << 30,
            disk_total: 10 << 30,
            timestamp: None,
            mem_cache: None,
        };
        let m = metrics(&[sample(10, 300 << 20), sample(20, 100 << 20)]).unwrap();
        assert_eq!(
            (m.cpu_usage_percent, m.memory_used_mb, m.memory_peak_mb, m.disk_used_gb),
            (50.0, 100.0, 300.0, 1.0)
        );
        assert_eq!(m.sampled_at_ms, 20_000);
        assert!(metrics(&[]).is_none());
    }
}
