# One entry point for people and CI. `make help` lists the targets.
.DEFAULT_GOAL := help
.PHONY: help run test down setup unit agents integration chaos chaos-long lint format bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

run: ## the main job: stack and workers up, sample orders through the saga, a summary (ARGS=--observe: Zipkin, Prometheus)
	infra/run.sh $(ARGS)

test: ## the whole suite: lint, types, schema check, unit, agent and integration tests (real Kafka and Redis)
	infra/test.sh

bench: ## the benchmark: Kafka, Faust, pipeline, codec and gateway figures, JSON + plot (ARGS=--quick: < 3 min)
	infra/bench.sh $(ARGS)

down: ## stop everything `make run` started (`make down ARGS=-v` also drops the volumes)
	infra/compose.sh --profile app --profile observe down $(ARGS)

setup: ## install everything the pipeline needs: Docker engine, images, kcat, the Python environment
	infra/setup.sh all

unit: ## unit tests only
	.venv/bin/python -m pytest -m unit

agents: ## Faust agent tests only
	.venv/bin/python -m pytest -m agents

integration: ## integration tests only (testcontainers), the long chaos run left out
	infra/test.sh -m "integration and not chaos_long"

chaos: ## chaos tests only (kills, broker restarts, Redis flushed, three brokers), with the reproducers of open bugs
	infra/test.sh -m chaos

chaos-long: ## the long chaos run only: 10,000 orders, 3 brokers, 2 workers per service, 20+ kills (≤ 90 min)
	infra/test.sh -m chaos_long

lint: ## ruff, mypy and the import layers (lint-imports)
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy && .venv/bin/lint-imports

format: ## format the code with ruff
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .
