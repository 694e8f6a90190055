//! A real Debian root with Python, built by the tests with `mmdebstrap` (through the Debian mirror the
//! machine reaches), packed as an OCI image with `umoci`, pushed to a loopback registry with `skopeo`, pulled
//! into the store and run. The built OCI layout is cached under `<target>/image-fixtures/`.
//!
//! `bench_pull_against_skopeo_and_umoci` (ignored: a measurement, run with `--ignored --nocapture`) times
//! pull+unpack of that image against `skopeo copy` + `umoci unpack` of the same image from the same registry.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agentbox_image::{ImageConfig, ImageRef, Store};
use common::{DEBIAN_TAG, Registry, debian_fixture as fixture, push_debian as push, run_ok, target_dir};

#[tokio::test]
async fn a_debian_root_pulls_and_runs_python() {
    let layout = fixture();
    let reg = Registry::start();
    let reference = push(&reg, &layout);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(ImageConfig::in_dir(dir.path().join("store"))).unwrap();
    let (record, report) = store.pull(&ImageRef::parse(&reference).unwrap()).await.unwrap();
    assert_eq!(report.layers_unpacked, 1);
    assert_eq!(record.config.cmd, Some(vec!["python3".to_owned()]));
    assert_eq!(record.config.working_dir.as_deref(), Some("/root"));
    let dirs = store.layer_dirs(&record).unwrap();
    let manifest = store.layer_manifest(&record.layers[0].diff_id).unwrap();
    // Debian's setuid programs (su, mount, passwd...) are in the image, but not setuid on the host.
    assert!(manifest.setid.iter().any(|s| s.path == "usr/bin/su"), "{:?}", manifest.setid);
    let su = std::fs::metadata(dirs[0].join("usr/bin/su")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&su.permissions()) & 0o6000, 0);
    // The root is whole: its python runs in it.
    let out = Command::new("chroot")
        .arg(&dirs[0])
        .args(["/usr/bin/python3", "-c", "import sys; print(6 * 7)"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

fn du(path: &Path) -> u64 {
    let out = Command::new("du").args(["-sb"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("0").parse().unwrap_or(0)
}

/// CPU time (user + system) of this process's threads, and of its children that were waited for.
fn cpu_times() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses): utime, stime, cutime, cstime are 14..=17.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let tick = |t: u64| Duration::from_millis(t * 10); // CLK_TCK is 100 on Linux
    (tick(f[11] + f[12]), tick(f[13] + f[14]))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
async fn bench_pull_against_skopeo_and_umoci() {
    let layout = fixture();
    let reg = Registry::start();
    let reference = push(&reg, &layout);
    let rounds = 7;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let (mut ours_cpu, mut theirs_cpu) = (Vec::new(), Vec::new());
    let mut sizes = (0, 0);
    for _ in 0..rounds {
        let dir = tempfile::tempdir_in(target_dir()).unwrap();
        let store = Store::open(ImageConfig::in_dir(dir.path().join("store"))).unwrap();
        let (cpu, _) = cpu_times();
        let t = Instant::now();
        let (record, report) = store.pull(&ImageRef::parse(&reference).unwrap()).await.unwrap();
        ours.push(t.elapsed());
        ours_cpu.push(cpu_times().0 - cpu);
        sizes = (report.bytes_downloaded, du(&store.layer_dirs(&record).unwrap()[0]));

        let dir = tempfile::tempdir_in(target_dir()).unwrap();
        let oci = format!("oci:{}:{DEBIAN_TAG}", dir.path().join("oci").display());
        let (_, cpu) = cpu_times();
        let t = Instant::now();
        run_ok(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(&oci),
        );
        run_ok(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:{DEBIAN_TAG}", dir.path().join("oci").display()))
                .arg(dir.path().join("bundle")),
        );
        theirs.push(t.elapsed());
        theirs_cpu.push(cpu_times().1 - cpu);
    }
    let (a, b) = (median(ours), median(theirs));
    let (ca, cb) = (median(ours_cpu), median(theirs_cpu));
    eprintln!(
        "pull+unpack of {reference} ({:.1} MB compressed, {:.1} MB unpacked), median of {rounds}:\n  agentbox-image {:.2} s wall, {:.2} s CPU\n  skopeo copy + umoci unpack {:.2} s wall, {:.2} s CPU\n  ratio {:.2}x wall, {:.2}x CPU",
        sizes.0 as f64 / 1e6,
        sizes.1 as f64 / 1e6,
        a.as_secs_f64(),
        ca.as_secs_f64(),
        b.as_secs_f64(),
        cb.as_secs_f64(),
        a.as_secs_f64() / b.as_secs_f64(),
        ca.as_secs_f64() / cb.as_secs_f64()
    );
}
