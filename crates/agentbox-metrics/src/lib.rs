//! Sandbox metrics and their Prometheus text exposition.
//!
//! ```
//! use agentbox_metrics::{render_prometheus, MetricsLabels, SandboxMetrics};
//!
//! let m = SandboxMetrics { memory_used_mb: 12.5, execution_count: 3, ..SandboxMetrics::default() };
//! let labels = MetricsLabels { run_id: "task-1".into(), sandbox_id: "sb-1".into(), backend: "local".into() };
//! let text = render_prometheus(&[(labels, m)]);
//! assert!(text.contains(r#"agentbox_sandbox_memory_used_mb{run_id="task-1",sandbox_id="sb-1",backend="local"} 12.5"#));
//! ```

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// A sample of one sandbox's resource use and health.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct SandboxMetrics {
    /// CPU use over the last sampling interval, in percent of one CPU (200 = two CPUs busy).
    pub cpu_usage_percent: f64,
    /// CPU time consumed since creation, in seconds.
    pub cpu_time_seconds: f64,
    /// Memory in use now, in MiB.
    pub memory_used_mb: f64,
    /// Highest memory use since creation, in MiB.
    pub memory_peak_mb: f64,
    /// Writable storage in use, in GiB.
    pub disk_used_gb: f64,
    /// Bytes received from the network.
    pub network_in_bytes: u64,
    /// Bytes sent to the network.
    pub network_out_bytes: u64,
    /// Executions run in this sandbox.
    pub execution_count: u64,
    /// Exit code of the last execution, if any ran.
    pub last_exit_code: Option<i32>,
    /// Whether the last health check passed.
    pub is_healthy: bool,
    /// Consecutive failed health checks.
    pub health_check_failures: u32,
    /// When this sample was taken, in milliseconds since the Unix epoch.
    pub sampled_at_ms: u64,
}

/// The labels identifying one sandbox in Prometheus output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsLabels {
    /// The caller's run id.
    pub run_id: String,
    /// The backend's sandbox id.
    pub sandbox_id: String,
    /// The backend name (`local`, `e2b`).
    pub backend: String,
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

type Getter = fn(&SandboxMetrics) -> f64;

#[allow(clippy::cast_precision_loss)] // counters beyond 2^53 lose precision in Prometheus anyway
const SERIES: &[(&str, &str, &str, Getter)] = &[
    ("cpu_usage_percent", "gauge", "CPU use over the last interval, percent of one CPU.", |m| m.cpu_usage_percent),
    ("cpu_time_seconds", "counter", "CPU time consumed since creation.", |m| m.cpu_time_seconds),
    ("memory_used_mb", "gauge", "Memory in use, MiB.", |m| m.memory_used_mb),
    ("memory_peak_mb", "gauge", "Peak memory use, MiB.", |m| m.memory_peak_mb),
    ("disk_used_gb", "gauge", "Writable storage in use, GiB.", |m| m.disk_used_gb),
    ("network_in_bytes", "counter", "Bytes received from the network.", |m| m.network_in_bytes as f64),
    ("network_out_bytes", "counter", "Bytes sent to the network.", |m| m.network_out_bytes as f64),
    ("execution_count", "counter", "Executions run.", |m| m.execution_count as f64),
    ("last_exit_code", "gauge", "Exit code of the last execution (absent before the first).", |m| {
        m.last_exit_code.map_or(f64::NAN, f64::from)
    }),
    ("is_healthy", "gauge", "1 if the last health check passed.", |m| if m.is_healthy { 1.0 } else { 0.0 }),
    ("health_check_failures", "gauge", "Consecutive failed health checks.", |m| f64::from(m.health_check_failures)),
];

/// Renders metrics of many sandboxes as Prometheus text exposition (version 0.0.4).
///
/// Each series is named `agentbox_sandbox_<field>` and labelled with run_id, sandbox_id and backend.
/// A sandbox that has run nothing yet has no `last_exit_code` sample.
#[must_use]
pub fn render_prometheus(sandboxes: &[(MetricsLabels, SandboxMetrics)]) -> String {
    let mut out = String::new();
    for (name, kind, help, get) in SERIES {
        let _ = writeln!(out, "# HELP agentbox_sandbox_{name} {help}");
        let _ = writeln!(out, "# TYPE agentbox_sandbox_{name} {kind}");
        for (l, m) in sandboxes {
            let v = get(m);
            if v.is_nan() {
                continue;
            }
            let _ = writeln!(
                out,
                "agentbox_sandbox_{name}{{run_id=\"{}\",sandbox_id=\"{}\",backend=\"{}\"}} {v}",
                escape(&l.run_id),
                escape(&l.sandbox_id),
                escape(&l.backend)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_series_with_escaped_labels() {
        let l = MetricsLabels { run_id: "a\"b\\c\nd".into(), sandbox_id: "s".into(), backend: "local".into() };
        let m = SandboxMetrics { network_in_bytes: 42, is_healthy: true, ..SandboxMetrics::default() };
        let text = render_prometheus(&[(l, m)]);
        assert!(
            text.contains(
                r#"agentbox_sandbox_network_in_bytes{run_id="a\"b\\c\nd",sandbox_id="s",backend="local"} 42"#
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE agentbox_sandbox_execution_count counter"));
        assert!(text.contains("agentbox_sandbox_is_healthy{") && text.contains("} 1\n"));
        assert!(!text.contains("agentbox_sandbox_last_exit_code{"), "no exit code before the first exec");
    }

    #[test]
    fn serde_uses_the_original_field_names() {
        let v = serde_json::to_value(SandboxMetrics::default()).unwrap();
        for f in [
            "cpu_usage_percent",
            "cpu_time_seconds",
            "memory_used_mb",
            "memory_peak_mb",
            "disk_used_gb",
            "network_in_bytes",
            "network_out_bytes",
            "execution_count",
            "last_exit_code",
            "is_healthy",
            "health_check_failures",
        ] {
            assert!(v.get(f).is_some(), "{f}");
        }
    }
}
