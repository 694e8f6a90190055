#!/bin/bash
# agentbox code context client: talks to a context driver through its FIFO.
#   client.sh run DIR ID        send request ID (req-ID.json already written) and wait for resp-ID.json
#   client.sh status BASE       print "id<TAB>language<TAB>alive|dead" for every context under BASE
#   client.sh interrupt DIR     send SIGINT to the driver
#   client.sh kill DIR          kill the driver and remove its directory
# Exit codes of run: 0 done, 3 no such context, 4 the driver had exited, 5 the driver never started,
# 6 the driver exited while running the request.
set -u
cmd=$1
# A zombie still answers kill -0: look at its state too.
alive() {
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 1
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  s=${s##*) }
  [ "${s:0:1}" != Z ]
}
driver_pid() { cat "$1/pid" 2>/dev/null; }

case "$cmd" in
run)
  dir=$2; id=$3
  [ -d "$dir" ] || { echo "no such context" >&2; exit 3; }
  pid=$(driver_pid "$dir")
  tries=0
  while [ -z "$pid" ]; do
    tries=$((tries + 1))
    [ "$tries" -gt 600 ] && { echo "the interpreter did not start within 30s" >&2; exit 5; }
    sleep 0.05
    pid=$(driver_pid "$dir")
  done
  alive "$pid" || { echo "the interpreter has exited" >&2; exit 4; }
  fifo="$dir/resp-$id.fifo"
  mkfifo -m 600 "$fifo" || exit 1
  exec 3<>"$fifo"
  trap 'rm -f "$fifo"' EXIT
  echo "$id" >"$dir/requests"
  while :; do
    if read -r -t 0.5 _ <&3; then
      exit 0
    fi
    if ! alive "$pid"; then
      [ -e "$dir/resp-$id.json" ] && exit 0
      echo "the interpreter exited while running the code" >&2
      exit 6
    fi
  done
  ;;
status)
  base=$2
  for d in "$base"/*/; do
    [ -d "$d" ] || continue
    d=${d%/}
    lang=$(cat "$d/language" 2>/dev/null || echo unknown)
    pid=$(driver_pid "$d")
    if [ -z "$pid" ]; then st=starting; elif alive "$pid"; then st=alive; else st=dead; fi
    printf '%s\t%s\t%s\n' "${d##*/}" "$lang" "$st"
  done
  ;;
interrupt)
  pid=$(driver_pid "$2")
  alive "$pid" && kill -INT "$pid"
  exit 0
  ;;
kill)
  pid=$(driver_pid "$2")
  alive "$pid" && kill -KILL "$pid"
  rm -rf "$2"
  exit 0
  ;;
*)
  echo "unknown command $cmd" >&2
  exit 2
  ;;
esac
