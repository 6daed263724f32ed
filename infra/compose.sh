#!/usr/bin/env bash
# `docker compose` where the plugin exists, else the standalone docker-compose; project order-pipeline.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$("$root/infra/setup.sh" env | sed 's/^/export /')"
if docker compose version >/dev/null 2>&1; then
  exec docker compose -p order-pipeline -f "$root/compose.yaml" "$@"
elif command -v docker-compose >/dev/null 2>&1; then
  exec docker-compose -p order-pipeline -f "$root/compose.yaml" "$@"
fi
echo "neither 'docker compose' nor 'docker-compose' is installed (infra/setup.sh tools installs one)" >&2
exit 1
