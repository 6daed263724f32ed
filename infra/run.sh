#!/usr/bin/env bash
# The main job: bring up Kafka (KRaft) and Redis, create the topics, publish sample events through the CLI and
# tail them back decoded. The stack stays up afterwards for kcat and the CLI; `make down` stops it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
infra/setup.sh all
infra/compose.sh up -d kafka redis

export PIPELINE_KAFKA_BOOTSTRAP=${PIPELINE_KAFKA_BOOTSTRAP:-127.0.0.1:9092}
export PIPELINE_REDIS_URL=${PIPELINE_REDIS_URL:-redis://127.0.0.1:6379/0}
pipeline=.venv/bin/pipeline
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "waiting for Kafka and Redis"
$pipeline wait-ready --timeout 180
step "checking schema compatibility"
$pipeline schemas check
step "applying topics"
$pipeline topics apply

run=$(date +%s)
user="u-$run" order="o-$run"
now=$(($(date +%s) * 1000))
step "publishing sample events (run $run)"
$pipeline publish users.commands.v1 RegisterUser --key "$user" \
  --data "{\"user_id\": \"$user\", \"username\": \"ada\", \"email\": \"ada-$run@example.com\", \"profile\": {\"city\": \"London\"}}"
$pipeline publish inventory.commands.v1 AddStock --key SKU-1 \
  --data '{"sku": "SKU-1", "quantity": 10, "reason": "initial stock"}'
$pipeline publish orders.commands.v1 PlaceOrder --key "$order" --data "{\"order_id\": \"$order\", \"user_id\": \"$user\",
  \"lines\": [{\"sku\": \"SKU-1\", \"quantity\": 2, \"unit_price_cents\": 1250}],
  \"payment\": {\"method\": \"card\", \"token\": \"tok_visa\"}, \"idempotency_key\": \"$order\", \"requested_at\": $now}"
placed="{\"order_id\": \"$order\", \"user_id\": \"$user\", \"lines\": [{\"sku\": \"SKU-1\", \"quantity\": 2, \"unit_price_cents\": 1250}],
  \"total_cents\": 2500, \"currency\": \"EUR\", \"placed_at\": $now, \"deadline_at\": $((now + 60000))}"
$pipeline publish orders.events.v1 OrderPlaced --version 1 --key "$order" --data "$placed"
$pipeline publish orders.events.v1 OrderConfirmed --key "$order" \
  --data "{\"order_id\": \"$order\", \"payment_id\": \"pay-$run\", \"confirmed_at\": $now}"

step "tailing orders.events.v1 back, decoded (v1 OrderPlaced read as v2)"
$pipeline tail orders.events.v1 --from-beginning --idle-timeout 3 | grep -F "\"$order\"" || true

cat <<MSG

The stack is up: Kafka at $PIPELINE_KAFKA_BOOTSTRAP, Redis at $PIPELINE_REDIS_URL.
  kcat -b $PIPELINE_KAFKA_BOOTSTRAP -L                       # brokers, topics, partitions
  kcat -b $PIPELINE_KAFKA_BOOTSTRAP -C -t orders.events.v1 -o beginning -e -f '%k %h\n'
  .venv/bin/pipeline tail orders.events.v1 --from-beginning
Stop it with: make down
MSG
