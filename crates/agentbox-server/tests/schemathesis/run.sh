#!/usr/bin/env bash
# Property-based API testing of agentboxd with schemathesis (from PyPI): every operation in /openapi.json,
# every check (`--checks all`), positive and negative data, all four phases, a fixed seed and a time budget.
#
#   crates/agentbox-server/tests/schemathesis/run.sh [MAX_SECONDS]
#
# Starts the debug agentboxd (local backend) on a free loopback port with a throwaway data directory,
# runs schemathesis against it, stops it with SIGTERM. Exits non-zero on any failure.
# Responses may take up to 90 s: a create with pre_install_packages runs the installer (which, in a
# 16 MiB sandbox the fuzzer asks for, thrashes until the out-of-memory killer ends it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
# shellcheck source=../../../../scripts/lib/agentboxd.sh
source "$root/scripts/lib/agentboxd.sh"
budget="${1:-120}"
version="4.32.5"
venv="$root/target/schemathesis-venv"

# Python 3.11 hits a CPython bug ("AST constructor recursion depth mismatch") inside Hypothesis on
# this schema; 3.12 and later are fine.
python=""
candidates=(python3.14 python3.13 python3.12 python3)
if command -v pyenv >/dev/null; then
    # pyenv's shims only run the selected version; installed newer ones are used directly.
    candidates+=("$(pyenv root)"/versions/3.1[2-9]*/bin/python3)
fi
for candidate in "${candidates[@]}"; do
    if command -v "$candidate" >/dev/null &&
        "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
        python="$(command -v "$candidate")"
        break
    fi
done
if [[ -z "$python" ]]; then
    # Debian 12's own python3 is 3.11, on which schemathesis crashes inside Hypothesis. The API fuzzing is a
    # required check: without an interpreter it fails the run rather than pass unchecked.
    echo "error: schemathesis needs Python 3.12 or newer and none was found (tried ${candidates[*]});" >&2
    echo "       install one (python3.12 or python3.13 on PATH, or a pyenv version) and run again" >&2
    exit 1
fi
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$version"; then
    echo "installing schemathesis $version into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

cargo build --quiet -p agentboxd
work="$(mktemp -d)"
token="schemathesis-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
AGENTBOX_API_TOKEN="$token" RUST_LOG=warn "$root/target/debug/agentboxd" \
    --listen 127.0.0.1:0 --data-dir "$work/data" --config "$here/server.toml" 2>"$work/agentboxd.log" &
pid=$!
cleanup() {
    # Best effort: nothing here may change the run's exit status (a list with no match is a failing grep).
    set +e
    # Snapshots, volumes and stopped sandboxes outlive the server (they live in the shared storage pool):
    # delete what this run made, and only that. Every run in this server's registry is this run's (its data
    # directory is new); deleting a stopped run deletes its files.
    if [[ -n "${base:-}" ]]; then
        auth=(-H "Authorization: Bearer $token")
        for kind in snapshots volumes; do
            names "$kind" | sort >"$work/$kind.after" || true
            comm -13 "$work/$kind.before" "$work/$kind.after" | while read -r name; do
                curl -sf -X DELETE "${auth[@]}" "$base/api/$kind/$name" >/dev/null || true
            done
        done
        { curl -sf "${auth[@]}" "$base/api/sandboxes" | grep -o '"run_id":"[^"]*"' | cut -d'"' -f4; } |
            sort -u | while read -r run; do
                curl -sf -X DELETE "${auth[@]}" "$base/api/sandboxes/$run" >/dev/null || true
            done || true
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

base="$(wait_for_agentboxd "$pid" "$work/agentboxd.log")" || exit 1

# The names of the snapshots or volumes (`$1`) in the shared pool.
names() {
    { curl -sf -H "Authorization: Bearer $token" "$base/api/$1" | grep -o '"name":"[^"]*"' | cut -d'"' -f4; } || true
}
names snapshots | sort >"$work/snapshots.before"
names volumes | sort >"$work/volumes.before"

status=0
"$venv/bin/st" --config-file "$here/schemathesis.toml" run "$base/openapi.json" \
    -H "Authorization: Bearer $token" \
    --checks all --mode all --phases examples,coverage,fuzzing,stateful \
    --max-examples 50 --seed 42 --workers 2 --max-time "$budget" \
    --request-timeout 120 --max-response-time 90 || status=$?
if grep -q "panicked" "$work/agentboxd.log"; then
    echo "error: agentboxd panicked during the run:" >&2
    grep -A5 "panicked" "$work/agentboxd.log" >&2
    status=1
fi
exit "$status"
