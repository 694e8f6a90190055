#!/usr/bin/env bash
# Runs the local backend's tests on a cgroup v2 kernel: a Debian guest under qemu (TCG, no KVM needed), booted
# twice with the unified hierarchy only (cgroup_no_v1=all):
#
#   plain    the tests run from the root cgroup, with no systemd (a minimal VM, a container host);
#   systemd  the tests run as a service made from packaging/agentboxd.service (Delegate=yes and its hardening).
#
#   scripts/cgroup-v2-guest.sh [test ...]     # default: lib cgroup_report isolation limits hostile_init lifecycle leaks pause userns
#
# The test binaries are built here (cargo test -p agentbox-local --no-run) and reach the guest on a work disk;
# the guest's root, kernel and initramfs are built once with mmdebstrap and cached in
# $CARGO_TARGET_DIR/cgroup-v2-guest (target/cgroup-v2-guest by default). Any test binary that fails, or a guest
# that does not report back, fails the run. Needs root (mmdebstrap, mke2fs -d) and the Debian mirror.
#
# Environment: AGENTBOX_GUEST_MODES ("plain systemd"), AGENTBOX_GUEST_CPUS (2), AGENTBOX_GUEST_MEMORY (3G),
# AGENTBOX_GUEST_TIMEOUT (seconds per boot, 1200), AGENTBOX_GUEST_TEST_THREADS (1: under TCG a test gets both
# virtual CPUs, as the hostile tests' time limits for a loaded sandbox assume).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
target=${CARGO_TARGET_DIR:-$repo/target}
cache=$target/cgroup-v2-guest
modes=(${AGENTBOX_GUEST_MODES:-plain systemd})
cpus=${AGENTBOX_GUEST_CPUS:-2}
memory=${AGENTBOX_GUEST_MEMORY:-3G}
boot_timeout=${AGENTBOX_GUEST_TIMEOUT:-1200}
test_threads=${AGENTBOX_GUEST_TEST_THREADS:-1}
# Every v2 code path: limits (memory.max, cpu.max, pids.max, memory.events), pause (cgroup.freeze), teardown
# (cgroup.kill), leaks (no cgroup left behind), isolation and a hostile init (delegation boundaries), and the
# unit tests of the cgroup code itself. After them the guest checks where the sandboxes' cgroups went (`placement`:
# under the unit's delegated cgroup with systemd, under the root without); the plain boot also runs `limits` in a
# cgroup namespace whose root holds the test binary, as in a container (`container-limits`).
tests=("$@")
if ((${#tests[@]} == 0)); then
    tests=(lib cgroup_report isolation limits hostile_init lifecycle leaks pause userns)
fi

if ((EUID != 0)); then
    echo "error: the cgroup v2 guest needs root (mmdebstrap into a directory, mke2fs -d); run it as root" >&2
    exit 1
fi

# qemu, mmdebstrap, mke2fs/debugfs, strip.
packages=(qemu-system-x86 mmdebstrap e2fsprogs binutils)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

started=$SECONDS
scripts/lib/cgroup-v2-guest-image.sh "$cache"
echo "guest image: $((SECONDS - started)) s"

# The test binaries, built on this host (the guest runs the same Debian release, so the same libc).
echo "building the test binaries: cargo test -p agentbox-local --no-run"
cargo_args=()
for t in "${tests[@]}"; do
    if [[ "$t" == lib ]]; then cargo_args+=(--lib); else cargo_args+=(--test "$t"); fi
done
run=$cache/run
rm -rf "$run" "$cache/work.img"
mkdir -p "$run/bin" "$run/results"
cargo test -p agentbox-local --no-run --message-format=json "${cargo_args[@]}" >"$cache/artifacts.json"
python3 - "$cache/artifacts.json" "$run" "$test_threads" "${tests[@]}" <<'PY'
import json, subprocess, sys
artifacts, run, threads, wanted = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
found = {}
for line in open(artifacts):
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("profile", {}).get("test") or not msg.get("executable"):
        continue
    name = "lib" if "lib" in msg["target"]["kind"] else msg["target"]["name"]
    found[name] = msg["executable"]
missing = [t for t in wanted if t not in found]
if missing:
    sys.exit(f"error: no test binary for {missing} in cargo's output (found {sorted(found)})")
with open(f"{run}/tests", "w") as out:
    for t in wanted:
        # Debug info is most of a test binary: the guest gets it without (backtraces keep function names).
        subprocess.run(["strip", "--strip-debug", "-o", f"{run}/bin/{t}", found[t]], check=True)
        # The report's own test shows the report it checked.
        extra = " --nocapture" if t == "cgroup_report" else ""
        out.write(f"{t} {t} --test-threads={threads}{extra}\n")
PY
cp scripts/lib/cgroup-v2-guest-init.sh "$run/guest-init"
cp packaging/agentboxd.service "$run/agentboxd.service"
size_mb=$(($(du -sm "$run" | cut -f1) + 256))
mke2fs -q -t ext4 -L agentbox-work -d "$run" "$cache/work.img" "${size_mb}M"

failed=()
for mode in "${modes[@]}"; do
    echo "==> booting the cgroup v2 guest ($mode), at most ${boot_timeout} s"
    boot_started=$SECONDS
    console=$cache/console-$mode.log
    # The root image is opened with snapshot=on: the guest's writes never reach the cache.
    status=0
    timeout -k 10 "$boot_timeout" qemu-system-x86_64 \
        -accel tcg -cpu max -smp "$cpus" -m "$memory" \
        -nodefaults -display none -no-reboot \
        -serial "file:$console" \
        -kernel "$cache/vmlinuz" -initrd "$cache/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 systemd.show_status=1 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 init=/sbin/agentbox-guest-boot agentbox.mode=$mode panic=-1" \
        -drive "file=$cache/root.img,format=raw,if=virtio,snapshot=on" \
        -drive "file=$cache/work.img,format=raw,if=virtio" \
        || status=$?
    echo "guest ($mode) ran $((SECONDS - boot_started)) s, qemu exit status $status; console log: $console"
    if ((status != 0)); then
        # 124: the time limit; the guest did not power off by itself.
        echo "error: the guest ($mode) did not power off cleanly (qemu exit status $status)" >&2
        failed+=("$mode: qemu exit status $status")
    fi
    results=$cache/results
    rm -rf "${results:?}/$mode"
    mkdir -p "$results"
    debugfs -R "rdump /results/$mode $results" "$cache/work.img" >/dev/null 2>&1 || true
    if [[ ! -f "$results/$mode/finished" ]]; then
        echo "error: the guest ($mode) did not finish its tests; the end of its console:" >&2
        tail -n 40 "$console" >&2
        failed+=("$mode: no report")
        continue
    fi
    checks=("${tests[@]}" placement)
    if [[ "$mode" == plain && " ${tests[*]} " == *" limits "* ]]; then
        checks+=(container-limits)
    fi
    for t in "${checks[@]}"; do
        rc=$(cat "$results/$mode/$t.rc" 2>/dev/null || echo missing)
        summary=$(grep -E '^test result:' "$results/$mode/$t.log" | tail -n1 || true)
        echo "[$mode] $t: exit status $rc ${summary:+($summary)}"
        if [[ "$rc" != 0 ]]; then
            failed+=("$mode: $t")
            echo "---- $results/$mode/$t.log (failures) ----"
            if grep -q '^failures:' "$results/$mode/$t.log"; then
                sed -n '/^failures:/,$p' "$results/$mode/$t.log" | head -n 80
            else
                tail -n 40 "$results/$mode/$t.log"
            fi
        fi
    done
done

echo "cgroup v2 guest: $((SECONDS - started)) s in all; results in $cache/results"
if ((${#failed[@]})); then
    echo "error: cgroup v2 guest failures: ${failed[*]}" >&2
    exit 1
fi
echo "cgroup v2 guest: every test passed (${modes[*]})"
