#!/bin/bash
# The cgroup v2 guest's side of scripts/cgroup-v2-guest.sh. It runs from the work disk (/work) and is
# started by the root's /sbin/agentbox-guest-boot as the guest's first process. The kernel command line picks
# the host set-up under test (agentbox.mode=):
#
#   plain    no systemd: this script mounts cgroup2 (nsdelegate, as systemd does) and runs the tests itself,
#            from the root cgroup, like a minimal VM or a container host;
#   systemd  systemd boots and runs the tests as a service made from packaging/agentboxd.service, so they run
#            under Delegate=yes and the unit's hardening, the way a packaged agentboxd runs.
#
# Each test binary's output goes to /work/results/<mode>/<test>.log and its exit status to <test>.rc; the host
# reads them back from the work disk after the guest powers off.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

mode=plain
for arg in $(cat /proc/cmdline); do
    case $arg in agentbox.mode=*) mode=${arg#agentbox.mode=} ;; esac
done
# The systemd unit starts this script again, as `guest-init run-tests`.
mode=${1:-$mode}

power_off() {
    sync
    echo 1 >/proc/sys/kernel/sysrq
    echo o >/proc/sysrq-trigger
    sleep 60
}

# Kernel modules the tests use, from the root's /lib/modules (the cloud kernel builds most as modules).
load_modules() {
    local m
    for m in overlay veth loop btrfs tun nf_tables; do
        modprobe -q "$m" || echo "agentbox-guest: module $m not loaded"
    done
}

# Where the sandboxes' parents `agentbox-<hash>` are while the tests run, sampled: a backend removes its parent
# once it holds no sandbox, so after the run there may be none left to look at.
watch_parents() {
    while :; do
        find /sys/fs/cgroup -mindepth 1 -maxdepth 4 -type d -name 'agentbox-????????' 2>/dev/null
        sleep 0.2
    done >"$1"
}

# Where the sandboxes' cgroups went: under the unit's delegated cgroup with systemd, under the root without.
# It looks at the parents seen while the tests ran (`watch_parents`).
check_placement() {
    local expected=/sys/fs/cgroup parents
    if [[ $mode == systemd ]]; then
        expected=$(dirname "/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)")
        echo "delegated cgroup $expected: trusted.delegate=$(python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], "trusted.delegate").decode())' "$expected" 2>&1)"
        echo "its controllers for children: $(cat "$expected/cgroup.subtree_control")"
        echo "its processes: $(cat "$expected/cgroup.procs" | tr '\n' ' ')"
    fi
    parents=$({ cat "$1"; find /sys/fs/cgroup -mindepth 1 -maxdepth 4 -type d -name 'agentbox-????????'; } | sort -u)
    echo "sandbox parents: $(echo "$parents" | tr '\n' ' ')"
    [[ -n "$parents" ]] || { echo "error: no sandbox parent cgroup found"; return 1; }
    local p
    for p in $parents; do
        if [[ "$(dirname "$p")" != "$expected" ]]; then
            echo "error: $p is not under $expected"
            return 1
        fi
        if [[ -d "$p" ]]; then
            echo "$p: controllers for sandboxes: $(cat "$p/cgroup.subtree_control")"
        else
            echo "$p: seen during the run, removed by its backend after it"
        fi
    done
    echo "every sandbox parent is under $expected"
}

# A container's view: the limits tests in a cgroup namespace whose root (/sys/fs/cgroup/container) holds the test
# binary itself, as in a container with a private cgroup namespace. Enabling controllers there needs it empty,
# so the backend moves into a leaf first.
run_container_limits() {
    local out=/work/results/$mode ctr=/sys/fs/cgroup/container rc
    grep -q '^limits ' /work/tests || return 0
    mkdir -p "$ctr"
    echo "==> [$mode] container-limits"
    # shellcheck disable=SC2016
    (cd /tmp && RUST_BACKTRACE=1 timeout -k 10 "${AGENTBOX_GUEST_TEST_TIMEOUT:-900}" sh -c '
        echo $$ >"$1/cgroup.procs"
        exec unshare --cgroup --mount --propagation private sh -c "
            umount -l /sys/fs/cgroup && mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup &&
            echo \"own cgroup in the namespace: \$(cat /proc/self/cgroup)\" && exec /work/bin/limits"
    ' sh "$ctr") >"$out/container-limits.log" 2>&1
    rc=$?
    echo "cgroups under $ctr after the run: $(find "$ctr" -mindepth 1 -maxdepth 1 -type d | tr '\n' ' ')" \
        >>"$out/container-limits.log"
    echo "$rc" >"$out/container-limits.rc"
    tail -n 3 "$out/container-limits.log"
    echo "==> [$mode] container-limits: exit status $rc"
}

# Runs every test binary listed in /work/tests ("name path [args]" lines), recording logs and exit statuses.
run_tests() {
    local out=/work/results/$mode name bin rc
    mkdir -p "$out"
    {
        echo "kernel $(uname -r)"
        echo "cgroup mounts: $(grep cgroup /proc/self/mounts | tr '\n' ';')"
        echo "own cgroup: $(cat /proc/self/cgroup)"
        echo "root controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
        echo "own cgroup's controllers: $(cat "/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/cgroup.controllers")"
    } | tee "$out/environment"
    watch_parents "$out/parents.seen" &
    local watcher=$!
    while read -r name bin args; do
        [[ -z "$name" || "$name" == \#* ]] && continue
        echo "==> [$mode] $name"
        # A hung test binary fails its own step, not the whole guest run.
        # shellcheck disable=SC2086
        (cd /tmp && RUST_BACKTRACE=1 timeout -k 10 "${AGENTBOX_GUEST_TEST_TIMEOUT:-900}" "/work/bin/$bin" $args) \
            >"$out/$name.log" 2>&1
        rc=$?
        echo "$rc" >"$out/$name.rc"
        tail -n 3 "$out/$name.log"
        echo "==> [$mode] $name: exit status $rc"
    done </work/tests
    kill "$watcher" 2>/dev/null
    wait "$watcher" 2>/dev/null
    check_placement "$out/parents.seen" >"$out/placement.log" 2>&1
    echo $? >"$out/placement.rc"
    cat "$out/placement.log"
    echo done >"$out/finished"
    sync
}

case $mode in
plain)
    mount -t sysfs sysfs /sys 2>/dev/null
    mount -t devtmpfs devtmpfs /dev 2>/dev/null
    mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
    mount -t tmpfs -o mode=1777 tmpfs /tmp
    mount -t tmpfs -o mode=755 tmpfs /run
    mkdir -p /dev/pts /dev/shm
    mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts 2>/dev/null
    mount -t tmpfs tmpfs /dev/shm
    hostname agentbox-guest
    ip link set lo up
    load_modules
    run_tests
    run_container_limits
    sync
    mount -o remount,ro /work
    power_off
    ;;
systemd)
    # The unit as shipped, with the test run as its ExecStart (and no agentboxd binary to start): the tests
    # then run under its Delegate=yes and its hardening options. The guest powers off when it ends.
    unit=/etc/systemd/system/agentbox-guest-tests.service
    sed -e 's|^ExecStart=.*|ExecStart=/work/guest-init run-tests|' \
        -e 's|^Type=.*|Type=exec|' \
        -e 's|^Restart=.*|Restart=no|' \
        -e '/^\[Unit\]/a RequiresMountsFor=/work\nSuccessAction=poweroff-force\nFailureAction=poweroff-force' \
        -e '/^\[Service\]/a StandardOutput=journal+console\nStandardError=journal+console' \
        /work/agentboxd.service >"$unit"
    mkdir -p /etc/systemd/system/multi-user.target.wants
    ln -sf "$unit" /etc/systemd/system/multi-user.target.wants/
    # Nothing in the guest needs a login or the network services.
    ln -sf /dev/null /etc/systemd/system/getty@.service
    ln -sf /dev/null /etc/systemd/system/serial-getty@.service
    # /work stays mounted: systemd takes it over as a mount unit (RequiresMountsFor=/work).
    exec /lib/systemd/systemd
    ;;
run-tests)
    # Inside the systemd unit. cgroup v2's no-internal-processes rule: the test binaries find the unit's
    # delegated cgroup and enable controllers for its children, which needs it empty, so this shell (and every
    # test binary it starts) moves into a leaf of its own first, as a lone agentboxd moves into `supervisor`.
    mode=systemd
    own=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)
    mkdir -p "$own/runner"
    echo $$ >"$own/runner/cgroup.procs"
    load_modules
    run_tests
    echo "what is left in $own:"
    find "$own" -name cgroup.procs -exec sh -c 'for f; do echo "$f: $(tr "\n" " " <"$f") frozen: $(grep frozen "${f%/*}/cgroup.events" 2>/dev/null)"; done' sh {} +
    ps -eo pid,stat,cgroup:60,args | grep -v ' \[' | head -40
    ;;
*)
    echo "agentbox-guest: unknown agentbox.mode=$mode" >/dev/console
    power_off
    ;;
esac
