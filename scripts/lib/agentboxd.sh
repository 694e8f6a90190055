# Shared by the test scripts that start agentboxd on a free loopback port (sourced, not run).

# wait_for_agentboxd PID LOG: waits until the agentboxd with that pid, whose stderr goes to LOG, prints the
# address it listens on, and prints that base URL (http://127.0.0.1:PORT). Exits the script with the log
# shown when the server dies first or takes longer than 30 s.
wait_for_agentboxd() {
    local pid="$1" log="$2" url=""
    for _ in $(seq 1 300); do
        url="$(sed -n 's/^agentboxd listening on \(http:\/\/[^ ]*\).*/\1/p' "$log")"
        if [[ -n "$url" ]]; then
            echo "$url"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "error: agentboxd did not start" >&2
    cat "$log" >&2
    exit 1
}
