#!/usr/bin/env bash
# `docker compose` where the plugin exists, else the standalone docker-compose; project order-pipeline.
# PIPELINE_CLUSTER=1 layers compose.cluster.yaml on compose.yaml: three Kafka nodes instead of one.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$("$root/infra/setup.sh" env | sed 's/^/export /')"
files=(-f "$root/compose.yaml")
if [[ "${PIPELINE_CLUSTER:-0}" == 1 ]]; then
  files+=(-f "$root/compose.cluster.yaml")
fi
if docker compose version >/dev/null 2>&1; then
  exec docker compose -p order-pipeline "${files[@]}" "$@"
elif command -v docker-compose >/dev/null 2>&1; then
  exec docker-compose -p order-pipeline "${files[@]}" "$@"
fi
echo "neither 'docker compose' nor 'docker-compose' is installed (infra/setup.sh tools installs one)" >&2
exit 1
