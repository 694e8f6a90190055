//! Which protections hold on this host, read from the backend: a protection lost silently (a cgroup
//! controller gone, landlock missing, storage falling back to memory) fails here instead of only logging
//! a warning.
//!
//! The expected list is this project's test host (CI's): Linux with cgroup v1 (cpu, cpuacct, cpuset, memory,
//! devices, freezer, blkio, pids mounted separately), landlock, and the disk storage pool (a btrfs image under
//! /var/lib/agentbox/storage) all hold; the one degradation is that root here runs without CAP_SYS_RESOURCE,
//! so the sandbox init can't be exempted from the OOM killer. A host that differs fails with the list it has.

mod common;

use agentbox_local::CgroupLayout;

#[test]
fn limitations_on_this_host_are_exactly_the_known_ones() {
    if common::not_root() {
        return;
    }
    let backend = common::backend();
    let expected =
        ["the sandbox init can't be exempted from the OOM killer (this host lacks CAP_SYS_RESOURCE): executions are \
         its preferred victims, but sandboxed code can lower its own score to the init's"];
    assert_eq!(
        backend.limitations(),
        expected,
        "the local backend's limitations on this host changed: a protection was lost, or one was gained (then update \
         this list and docs/SECURITY.md)"
    );
    match backend.cgroup_layout() {
        CgroupLayout::V1(controllers) => {
            let names: Vec<&str> = controllers.keys().map(String::as_str).collect();
            for needed in ["cpu", "memory", "pids"] {
                assert!(names.contains(&needed), "cgroup v1 controller {needed} is missing: {names:?}");
            }
        }
        other => panic!("this host mounts cgroup v1; the backend found {other:?}"),
    }
}
