#!/usr/bin/env bash
# agentboxd's memory while it serves files that a sandbox controls: a 10 GiB sparse file and a 1 GiB real file
# downloaded, 120 MB uploads one and four at a time, a 100 MB multipart upload. Prints the server's peak
# resident memory (VmHWM) after each step. docs/BENCHMARKS.md records the figures.
#
#   scripts/measure-file-memory.sh [path/to/agentboxd]     (default: target/debug/agentboxd; needs root, curl)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${1:-target/debug/agentboxd}
[[ -x $BIN ]] || cargo build -p agentboxd
DIR=$(mktemp -d)
PORT=18089
export AGENTBOX_API_TOKEN=measure-file-memory-token
H="Authorization: Bearer $AGENTBOX_API_TOKEN"
U=http://127.0.0.1:$PORT
# A session leader without a terminal, as under systemd.
setsid "$BIN" --listen 127.0.0.1:$PORT --data-dir "$DIR" >"$DIR/log" 2>&1 </dev/null &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 100); do curl -sf "$U/health" >/dev/null && break; sleep 0.1; done
hwm() { printf '%-44s peak %s kB\n' "$1" "$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")"; }
curl -sf -H "$H" -H 'Content-Type: application/json' -d '{"run_id":"m","memory_mb":2048}' "$U/api/sandboxes/create" >/dev/null
curl -sf -H "$H" -H 'Content-Type: application/json' \
    -d '{"command":"truncate -s 10G /home/user/sparse && head -c 1G /dev/urandom > /home/user/real"}' \
    "$U/api/sandboxes/m/execute/command" >/dev/null
hwm "idle, one sandbox"
curl -sf -H "$H" "$U/api/sandboxes/m/files?path=/home/user/sparse" -o /dev/null -w '10 GiB sparse: %{size_download} bytes in %{time_total} s\n'
hwm "after the 10 GiB sparse download"
curl -sf -H "$H" "$U/api/sandboxes/m/files?path=/home/user/real" -o /dev/null -w '1 GiB real: %{size_download} bytes in %{time_total} s\n'
hwm "after the 1 GiB download"
head -c 120M /dev/urandom >"$DIR/up.bin"
curl -sf -H "$H" -T "$DIR/up.bin" "$U/api/sandboxes/m/files?path=/home/user/up.bin" -o /dev/null
hwm "after a 120 MB upload"
UPLOADS=()
for i in 1 2 3 4; do
    curl -sf -H "$H" -T "$DIR/up.bin" "$U/api/sandboxes/m/files?path=/home/user/up$i.bin" -o /dev/null &
    UPLOADS+=($!)
done
wait "${UPLOADS[@]}"
hwm "after four 120 MB uploads at once"
head -c 100M "$DIR/up.bin" >"$DIR/mp.bin"
curl -sf -X PUT -H "$H" -F "file=@$DIR/mp.bin;filename=mp.bin" "$U/api/sandboxes/m/files?path=/home/user/dir/" -o /dev/null
hwm "after a 100 MB multipart upload"
