#!/usr/bin/env bash
# Starts or stops the pipeline's own processes on this machine: one Faust worker per service and the Redis
# projector, in the background, logging to .cache/run/<name>.log.
#
#   infra/workers.sh start | stop | status
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run=$root/.cache/run
mkdir -p "$run"
names=(orders inventory payments notifications projector)

command_of() {
  if [ "$1" = projector ]; then echo "$root/.venv/bin/pipeline project"; else echo "$root/.venv/bin/pipeline worker $1"; fi
}

alive() { [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

case "${1:-}" in
  start)
    for name in "${names[@]}"; do
      if alive "$name"; then continue; fi
      # shellcheck disable=SC2046
      setsid nohup $(command_of "$name") >>"$run/$name.log" 2>&1 < /dev/null &
      echo $! > "$run/$name.pid"
    done
    echo "started: ${names[*]} (logs in .cache/run/)"
    ;;
  stop)
    for name in "${names[@]}"; do
      if alive "$name"; then kill -TERM "$(cat "$run/$name.pid")" 2>/dev/null || true; fi
    done
    for name in "${names[@]}"; do
      for _ in $(seq 1 60); do alive "$name" || break; sleep 0.5; done
      if alive "$name"; then kill -KILL "$(cat "$run/$name.pid")" 2>/dev/null || true; fi
      rm -f "$run/$name.pid"
    done
    ;;
  status)
    for name in "${names[@]}"; do
      if alive "$name"; then echo "$name: running (pid $(cat "$run/$name.pid"))"; else echo "$name: stopped"; fi
    done
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
