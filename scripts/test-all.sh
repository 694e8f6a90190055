#!/usr/bin/env bash
# The whole test suite of agentbox: the command CI runs (.ci/run) and the one to run before pushing.
#
#   scripts/test-all.sh
#
# 1. installs the Debian packages the tests need, if missing;
# 2. checks formatting, lints, runs every test and builds the docs without warnings.
# Debug builds in the workspace's target directory, so a second run only rebuilds what changed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages the test suite needs:
#   chromium            headless browser behind the browser tool
#   python3             the interpreter sandboxes run Python code with (the system one, under /usr)
#   python3-matplotlib  rich results of the code tool (figures as PNG)
#   python3-requests    the secrets test: requests in a sandbox trusts the sandbox's egress CA (REQUESTS_CA_BUNDLE)
#   curl                downloads inside sandboxes in the network tests
#   btrfs-progs         mkfs.btrfs and btrfs for the disk-backed storage pool (a sparse btrfs image with quota groups)
#   docker-registry     a real OCI registry on loopback for the image tests (agentbox-image)
#   skopeo, umoci       push the image tests' Debian fixture as an OCI image, and the pull baseline
#   mmdebstrap          builds that fixture (a minimal Debian root with python3) from the Debian mirror, and the
#                       cgroup v2 guest's root
#   qemu-system-x86     boots the cgroup v2 guest (scripts/cgroup-v2-guest.sh) under TCG
#   openssl             signs the tokens of the image tests' token service (registry token authentication)
#   tmux                a real terminal for the interactive shell test (`agentbox shell`)
#   nodejs              JavaScript in sandboxes (only when no node is installed under /usr)
REQUIRED_PACKAGES=(chromium python3 python3-matplotlib python3-requests curl btrfs-progs docker-registry skopeo umoci mmdebstrap openssl tmux
    qemu-system-x86)
if [[ ! -x /usr/bin/node && ! -x /usr/local/bin/node ]]; then
    REQUIRED_PACKAGES+=(nodejs)
fi

step() {
    printf '\n==> %s\n' "$*"
}

install_missing_packages() {
    local missing=() pkg
    for pkg in "${REQUIRED_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        echo "all present: ${REQUIRED_PACKAGES[*]}"
        return
    fi
    local sudo=()
    if ((EUID != 0)); then
        if ! command -v sudo >/dev/null; then
            echo "error: missing Debian packages ${missing[*]}; install them as root: apt-get install ${missing[*]}" >&2
            exit 1
        fi
        sudo=(sudo)
    fi
    echo "installing: ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# A fresh checkout (CI) builds everything once: incremental state would only cost time and disk there.
if [[ "${CI:-}" == "true" ]]; then
    export CARGO_INCREMENTAL=0
fi

step "Debian packages"
if command -v dpkg-query >/dev/null; then
    install_missing_packages
else
    echo "not a Debian system: make sure these are installed: ${REQUIRED_PACKAGES[*]}"
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# The core's mockall mock (feature `mock`) has tests and a doc example of its own.
step "cargo clippy -p agentbox-core --all-targets --features mock -- -D warnings"
cargo clippy -p agentbox-core --all-targets --features mock -- -D warnings

step "cargo test --workspace"
cargo test --workspace

# The host's decoders of sandbox-originated frames, fuzzed longer than `cargo test` does (about 15 s).
step "bounded fuzz: PROPTEST_CASES=10000 cargo test -p agentbox-local --test proto_fuzz"
PROPTEST_CASES=10000 cargo test -p agentbox-local --test proto_fuzz

step "cargo test -p agentbox-core --features mock"
cargo test -p agentbox-core --features mock

step "cargo doc --workspace --no-deps (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "cargo deny: licenses, duplicate crates, sources (deny.toml)"
# Installed from crates.io into target/tools on first use, so a fresh clone checks deny.toml too; a failed
# install fails the run.
deny_version="0.20.2"
deny="target/tools/bin/cargo-deny"
if ! "$deny" --version 2>/dev/null | grep -qx "cargo-deny $deny_version"; then
    echo "installing cargo-deny $deny_version into target/tools"
    cargo install --quiet --locked --root target/tools --version "$deny_version" cargo-deny
fi
"$deny" --log-level error check --hide-inclusion-graph licenses bans sources
echo "advisories not checked: the advisory database is a git repository this machine cannot fetch"

# ---------------------------------------------------------------------------------------------
# This machine is cgroup v1 (hybrid): the local backend's v2 paths run in a qemu guest with the unified hierarchy
# only, once from the root cgroup and once under systemd with Delegate=yes (docs/HOSTS.md). A guest that can't
# boot or doesn't report back fails the run.
step "cgroup v2 guest: agentbox-local's tests on a v2-only kernel, plain and under systemd (Delegate=yes)"
scripts/cgroup-v2-guest.sh
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Later steps go here (each as: step "what"; command), e.g. schemathesis against a running agentboxd.
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# The E2B-compatible API: the official E2B Python SDKs (pinned, installed into target/e2b-sdk-venv from PyPI on
# first use), unmodified, run their scenarios against agentboxd on loopback with the local backend.
step "E2B SDK scenarios: official e2b and e2b-code-interpreter against agentboxd's E2B API"
crates/agentbox-e2b-api/tests/sdk/run.sh
# ---------------------------------------------------------------------------------------------

step "schemathesis against agentboxd: --checks all, seed 42, two-minute budget"
crates/agentbox-server/tests/schemathesis/run.sh 120

step "all checks passed"
