#!/usr/bin/env bash
# The main job: Kafka (KRaft), Redis and the schema registry up, topics created and schemas registered, the workers
# (the view service among them) started, then a stream of sample orders through the saga with a closing summary. Everything stays up afterwards for kcat,
# the CLI and orders published by hand; `make down` stops it. Arguments go to `pipeline demo`, except --observe:
# it also starts the observe profile (Zipkin, Prometheus) with every process exporting its spans to Zipkin.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
observe=0
demo_args=()
for arg in "$@"; do
  if [[ $arg == --observe ]]; then observe=1; else demo_args+=("$arg"); fi
done
infra/setup.sh all
infra/setup.sh app-image
profiles=(--profile app)
if [[ $observe == 1 ]]; then
  infra/setup.sh observe
  profiles+=(--profile observe)
  export OTEL_TRACES_EXPORTER=${OTEL_TRACES_EXPORTER:-zipkin}
fi

# PIPELINE_CLUSTER=1: three Kafka nodes (compose.cluster.yaml); PIPELINE_WORKERS_PER_SERVICE=N: N workers each
if [[ "${PIPELINE_CLUSTER:-0}" == 1 ]]; then
  export PIPELINE_KAFKA_BOOTSTRAP=${PIPELINE_KAFKA_BOOTSTRAP:-127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9095}
fi
export PIPELINE_KAFKA_BOOTSTRAP=${PIPELINE_KAFKA_BOOTSTRAP:-127.0.0.1:9092}
scale=()
for service in orders inventory payments notifications users; do
  scale+=(--scale "worker-$service=${PIPELINE_WORKERS_PER_SERVICE:-1}")
done
export PIPELINE_REDIS_URL=${PIPELINE_REDIS_URL:-redis://127.0.0.1:6379/0}
export PIPELINE_SCHEMA_REGISTRY_URL=${PIPELINE_SCHEMA_REGISTRY_URL:-http://127.0.0.1:8081/apis/ccompat/v7}
pipeline=.venv/bin/pipeline
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "checking schema compatibility"
$pipeline schemas check
step "starting Kafka, Redis, the schema registry, the topics and schemas, ${PIPELINE_WORKERS_PER_SERVICE:-1} worker(s) per service, the view service included (compose.yaml, ${profiles[*]})"
infra/compose.sh "${profiles[@]}" up -d "${scale[@]}"
$pipeline wait-ready --timeout 180
# on a cluster, librdkafka's admin client can abort (SIGABRT, exit 134) while group coordinators settle
# (librdkafka issue 4605): ask again, a few times
for attempt in 1 2 3 4 5; do
  rc=0
  $pipeline wait-workers --timeout 180 || rc=$?
  [[ $rc == 134 && $attempt -lt 5 ]] || break
done
[[ $rc == 0 ]] || exit "$rc"

step "streaming sample orders through the saga"
$pipeline demo ${demo_args[@]+"${demo_args[@]}"}

cat <<MSG

The pipeline is up: Kafka at $PIPELINE_KAFKA_BOOTSTRAP, Redis at $PIPELINE_REDIS_URL, the schema registry at
$PIPELINE_SCHEMA_REGISTRY_URL, workers in compose.
  infra/compose.sh --profile app logs -f worker-orders      # a worker's log
  infra/compose.sh --profile app ps                         # what runs
  .venv/bin/pipeline order <order id>                        # an order's view and saga timeline
  .venv/bin/pipeline token --subject <user id>               # a token the gateway on 127.0.0.1:8080 accepts
  kcat -b $PIPELINE_KAFKA_BOOTSTRAP -L                          # brokers, topics, partitions
  kcat -b $PIPELINE_KAFKA_BOOTSTRAP -C -t orders.events.v1 -o beginning -e -q -f '%k %h\n'
  .venv/bin/pipeline tail orders.events.v1 --from-beginning --max 10
Stop it all with: ${PIPELINE_CLUSTER:+PIPELINE_CLUSTER=$PIPELINE_CLUSTER }make down
MSG
if [[ $observe == 1 ]]; then
  cat <<MSG
Observe (spans of every process go to Zipkin, Prometheus scrapes every process's /metrics every 5 s):
  Zipkin, the traces:        http://127.0.0.1:9411/zipkin/
  Prometheus, the metrics:   http://127.0.0.1:9090/graph?g0.expr=sum%20by%20(service)%20(rate(pipeline_events_total%5B1m%5D))
MSG
fi
