#!/usr/bin/env bash
# The official E2B SDKs, unmodified, against agentboxd's E2B-compatible API on the local backend: Python (e2b,
# e2b-code-interpreter; pinned in requirements.txt) and JS (e2b, @e2b/code-interpreter; pinned in package.json).
#
#   [PROFILE=release] crates/agentbox-e2b-api/tests/sdk/run.sh [--bench | --bench-only] [SCENARIO_NAME_PART ...]
#
# Installs the SDKs under the target directory (a venv and a node_modules, once per pinned set), builds and
# starts the debug agentboxd on a free loopback port with a throwaway data directory and [e2b_api] enabled, points
# the SDKs at it (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY) and runs scenarios.py, then (unless arguments select
# Python scenarios or the benchmark) scenarios.mjs and the vendored subset of E2B's own SDK tests (upstream/), all
# of which create real sandboxes running real processes. Stops
# agentboxd with SIGTERM (it destroys what is left). Exits non-zero on any failure, or when an SDK cannot be
# installed: this check never passes unrun.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
# shellcheck source=../../../../scripts/lib/agentboxd.sh
source "$root/scripts/lib/agentboxd.sh"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/e2b-sdk-venv"
stamp="$venv/.requirements"

python="$(command -v python3 || true)"
if [[ -z "$python" ]] || ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)'; then
    echo "error: the E2B SDK scenarios need Python 3.9 or newer (python3 on PATH); install it and run again" >&2
    exit 1
fi
if ! cmp -s "$here/requirements.txt" "$stamp"; then
    echo "installing the E2B SDKs ($(grep -v '^#' "$here/requirements.txt" | tr '\n' ' ')) into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"; then
        echo "error: installing the E2B SDKs from PyPI failed (see above); the SDK check cannot run without them" >&2
        exit 1
    fi
    cp "$here/requirements.txt" "$stamp"
fi

node_dir="$target/e2b-sdk-node"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "error: the JS SDK scenarios need Node.js 18 or newer and npm on PATH; install them and run again" >&2
    exit 1
fi
if ! cmp -s "$here/package.json" "$node_dir/package.json"; then
    echo "installing the E2B JS SDKs (package.json) into $node_dir"
    rm -rf "$node_dir"
    mkdir -p "$node_dir"
    cp "$here/package.json" "$node_dir/package.json"
    if ! (cd "$node_dir" && npm install --no-audit --no-fund --loglevel=error); then
        rm -f "$node_dir/package.json"
        echo "error: installing the E2B JS SDKs from npm failed (see above); the SDK check cannot run without them" >&2
        exit 1
    fi
fi
# Node resolves packages from the script's own directory: the scenarios run from beside node_modules.
cp "$here/scenarios.mjs" "$node_dir/scenarios.mjs"

# PROFILE=release measures a release build (the benchmark's figures); the checks use the debug build.
profile="${PROFILE:-debug}"
if [[ "$profile" == release ]]; then
    (cd "$root" && cargo build --quiet --release -p agentboxd)
else
    (cd "$root" && cargo build --quiet -p agentboxd)
fi
work="$(mktemp -d)"
token="e2b_$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')"
AGENTBOX_API_TOKEN="$token" RUST_LOG=warn "$target/$profile/agentboxd" \
    --listen 127.0.0.1:0 --data-dir "$work/data" --config "$here/agentboxd.toml" 2>"$work/agentboxd.log" &
pid=$!
cleanup() {
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

base="$(wait_for_agentboxd "$pid" "$work/agentboxd.log")" || exit 1

status=0
export E2B_API_KEY="$token" E2B_API_URL="$base" E2B_SANDBOX_URL="$base"
"$venv/bin/python" "$here/scenarios.py" "$@" || status=$?
if (($# == 0)); then
    node "$node_dir/scenarios.mjs" || status=$?
    # E2B's own SDK tests (a vendored subset, see upstream/README.md), less the ones deselected.txt explains.
    deselect=()
    while read -r id; do
        [[ -z "$id" || "$id" == \#* ]] || deselect+=(--deselect "$id")
    done <"$here/upstream/deselected.txt"
    (cd "$here/upstream" && PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
        --timeout 120 "${deselect[@]}" tests) || status=$?
fi
if grep -q "panicked" "$work/agentboxd.log"; then
    echo "error: agentboxd panicked during the run:" >&2
    grep -A5 "panicked" "$work/agentboxd.log" >&2
    status=1
fi
exit "$status"
