#!/usr/bin/env bash
# The benchmark: `pipeline bench` on its own Kafka (KRaft) and Redis, started through testcontainers from
# compose.yaml. Arguments go to `pipeline bench` (--quick: under 3 minutes; the full run: under 15).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
infra/setup.sh all
infra/setup.sh bench
eval "$(infra/setup.sh env | sed 's/^/export /')"
export TESTCONTAINERS_RYUK_DISABLED=true TC_HOST=127.0.0.1 TESTCONTAINERS_CONNECTION_MODE=docker_host
exec .venv/bin/pipeline bench "$@"
