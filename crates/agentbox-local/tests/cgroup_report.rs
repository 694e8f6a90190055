//! What `agentbox doctor` reports about the host's cgroups is where the backend puts a sandbox's cgroups:
//! under the delegated cgroup with systemd's `Delegate=yes`, under the hierarchy's root otherwise (cgroup v2),
//! or in the v1 hierarchies.

mod common;

use agentbox_local::{CgroupLayout, CgroupReport, CgroupVersion, LocalBackend, LocalConfig};
use common::Sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_says_where_sandbox_cgroups_go() {
    if common::not_root() {
        return;
    }
    let sb = Sandbox::new().await;
    let report = CgroupReport::inspect();
    // Shown with --nocapture: the report of the host the test ran on.
    eprintln!("{report}");
    let dirs = LocalBackend::host_cgroups(&LocalConfig::default(), sb.id.as_str());
    match sb.backend.cgroup_layout() {
        CgroupLayout::V2(_) => {
            assert_eq!(report.version, CgroupVersion::V2, "{report}");
            let base = report.base.clone().expect("a v2 report names where the sandboxes' cgroups go");
            assert!(!dirs.is_empty() && dirs.iter().all(|d| d.starts_with(&base)), "{dirs:?} outside {report}");
            if let Some(delegated) = &report.delegated {
                assert_eq!(&base, delegated, "{report}");
                let own = report.own_cgroup.clone().unwrap_or_default();
                assert!(own != base, "this process still sits in the delegated cgroup: {report}");
            }
            for c in ["memory", "cpu", "pids"] {
                assert!(report.enabled.iter().any(|e| e == c), "{c} not handed down: {report}");
            }
        }
        CgroupLayout::V1(_) => assert_eq!(report.version, CgroupVersion::V1, "{report}"),
        CgroupLayout::None => assert_eq!(report.version, CgroupVersion::None, "{report}"),
    }
    sb.destroy().await;
}
