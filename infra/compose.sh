#!/usr/bin/env bash
# `docker compose` where the plugin exists, else the standalone docker-compose; project order-pipeline, with the
# images infra/setup.sh built or tagged. PIPELINE_CLUSTER=1 layers compose.cluster.yaml on compose.yaml: three
# Kafka nodes instead of one.
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
  # docker-compose v1 rejects compose.yaml's top-level `name:` (the project name is given by -p instead): it
  # reads a copy without that line, relative paths resolved from the repository as before
  mkdir -p "$root/.cache"
  sed '/^name:/d' "$root/compose.yaml" > "$root/.cache/compose.v1.yaml"
  files[1]=$root/.cache/compose.v1.yaml
  exec docker-compose -p order-pipeline --project-directory "$root" "${files[@]}" "$@"
fi
echo "neither 'docker compose' nor 'docker-compose' is installed (infra/setup.sh tools installs one)" >&2
exit 1
