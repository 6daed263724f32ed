#!/usr/bin/env bash
# Brings a machine to the point where the pipeline runs: a Docker engine, the Kafka and Redis images,
# host tools (kcat) and the Python environment. Every step is idempotent and cached; a second run is fast.
#
#   infra/setup.sh [all|docker|images|registry-image|app-image|observe|tools|python|bench|secret|env]
#
# `secret` (part of `all`) writes this installation's random JWT secret to .cache/jwt-secret (mode 0600,
# outside git); the gateway and `pipeline token` read it, and compose mounts it into the gateway's container.
# Where no Docker engine answers and the machine is Debian with root, Debian's docker.io is installed and
# dockerd started with published ports bound to 127.0.0.1; where one answers (Docker Desktop, a user in the
# docker group), no step needs root. Where images can be pulled, the official ones serve (apache/kafka, redis,
# apicurio/apicurio-registry, python:3.11-slim under infra/app/Dockerfile). Where they cannot, root on Debian builds
# them here from the same Dockerfiles on a Debian root filesystem (mmdebstrap) with a JRE, redis-server and Python,
# Kafka's jars from Maven Central and a wheelhouse from PyPI; the schema registry (Apicurio Registry) on the Kafka
# image's JRE with Apicurio's built application from Maven Central (io.apicurio:apicurio-registry-app, tar.gz "all").
# No GNU-only tools outside that offline path.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=$root/.cache
mkdir -p "$cache"

KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$root/infra/kafka/pom.xml")
KAFKA_IMAGE=${PIPELINE_KAFKA_IMAGE:-order-pipeline/kafka:$KAFKA_VERSION}
REDIS_IMAGE=${PIPELINE_REDIS_IMAGE:-order-pipeline/redis:7}
OFFICIAL_KAFKA=apache/kafka:$KAFKA_VERSION
REGISTRY_VERSION=3.0.9  # 3.0.x runs on Java 17 (the Kafka image's JRE); 3.1+ needs Java 21
REGISTRY_IMAGE=${PIPELINE_REGISTRY_IMAGE:-order-pipeline/registry:$REGISTRY_VERSION}
OFFICIAL_REGISTRY=apicurio/apicurio-registry:$REGISTRY_VERSION
OFFICIAL_REDIS=redis:7.4
DEBIAN_MIRROR=${PIPELINE_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
is_debian_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_updated=
apt_install() {
  is_debian_root || { log "cannot install $* here (not Debian as root): install it by hand"; return 1; }
  if [ -z "$apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_docker() {
  if docker info >/dev/null 2>&1; then return; fi
  if ! command -v dockerd >/dev/null 2>&1; then
    apt_install docker.io iptables ca-certificates
  fi
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (published ports on 127.0.0.1; log: $cache/dockerd.log)"
    # setsid: the engine outlives this script and the make run that called it.
    setsid nohup dockerd --ip 127.0.0.1 >"$cache/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
      docker info >/dev/null 2>&1 && break
      sleep 1
    done
    docker info >/dev/null 2>&1 || { log "dockerd did not come up; see $cache/dockerd.log"; tail -20 "$cache/dockerd.log" >&2; exit 1; }
  fi
}

# A command with a time limit, in perl: GNU timeout is absent on stock macOS.
with_timeout() {
  local secs=$1
  shift
  perl -e 'alarm shift @ARGV; exec @ARGV or exit 127' "$secs" "$@"
}

sha256() { if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi; }

# An image is current when it exists and, if we built it, was built from this recipe.
image_current() {
  local image=$1 want=$2 label
  label=$(docker image inspect -f '{{ index .Config.Labels "org.order-pipeline.recipe" }}' "$image" 2>/dev/null) || return 1
  [ -z "$label" ] || [ "$label" = "<no value>" ] || [ "$label" = "$want" ]
}

try_pull() {
  local official=$1 image=$2
  if with_timeout 120 docker pull -q "$official" >/dev/null 2>&1; then
    docker tag "$official" "$image"
    log "using the official image $official as $image"
    return 0
  fi
  return 1
}

# The offline path, root on Debian only. One Debian root filesystem (mmdebstrap, then docker import) with a JRE,
# redis-server and Python 3.11 serves as the base image of all three Dockerfiles (infra/kafka, infra/redis,
# infra/app), in place of apache/kafka, redis and python:3.11-slim.
debian_base_hash() { declare -f build_debian_base | sha256 | cut -c1-16; }
debian_base() { printf 'order-pipeline/debian:%s' "$(debian_base_hash)"; }

build_debian_base() {
  local base
  base=$(debian_base)
  if docker image inspect "$base" >/dev/null 2>&1; then return; fi
  is_debian_root || { log "no image registry answers and this is not Debian as root: cannot build $base"; exit 1; }
  command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap
  log "building $base: a Debian root filesystem with a JRE, redis-server and Python 3.11 (mmdebstrap; about a minute)"
  mmdebstrap --quiet --variant=apt --mode=root \
    --include=openjdk-17-jre-headless,redis-server,python3,python3-venv,ca-certificates,procps \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/*' \
    bookworm "$cache/rootfs.tar" "deb $DEBIAN_MIRROR bookworm main"
  docker import --change 'ENV LANG=C.UTF-8' "$cache/rootfs.tar" "$base" >/dev/null
  rm -f "$cache/rootfs.tar"
  docker images order-pipeline/debian --format '{{.Tag}}' | grep -vx "$(debian_base_hash)" \
    | xargs -r -I{} docker rmi order-pipeline/debian:{} >/dev/null 2>&1 || true
}

recipe_hash() {
  { declare -f build_images build_debian_base; cat "$root"/infra/kafka/* "$root"/infra/redis/*; } | sha256 | cut -c1-16
}

build_kafka_libs() {
  local libs=$cache/kafka-libs-$KAFKA_VERSION
  if [ ! -f "$libs/.done" ]; then
    command -v mvn >/dev/null 2>&1 || apt_install maven
    log "fetching Kafka $KAFKA_VERSION jars from Maven Central"
    rm -rf "$libs"
    mvn -q -B -f "$root/infra/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime >&2
    touch "$libs/.done"
  fi
  printf '%s' "$libs"
}

build_images() {
  local hash=$1 libs base context=$cache/kafka-context
  libs=$(build_kafka_libs)
  build_debian_base
  base=$(debian_base)
  # the Kafka build's context: the recipe beside the jars (hard links, no copy)
  rm -rf "$context" && mkdir -p "$context/libs"
  cp "$root"/infra/kafka/* "$context/"
  cp -l "$libs"/*.jar "$context/libs/"
  docker build -q --build-arg "BASE=$base" --build-arg "KAFKA_VERSION=$KAFKA_VERSION" \
    --label "org.order-pipeline.recipe=$hash" -t "$KAFKA_IMAGE" "$context" >/dev/null
  rm -rf "$context"
  docker build -q --build-arg "BASE=$base" --label "org.order-pipeline.recipe=$hash" \
    -t "$REDIS_IMAGE" "$root/infra/redis" >/dev/null
  log "built $KAFKA_IMAGE and $REDIS_IMAGE from $base (recipe $hash)"
}

ensure_images() {
  ensure_docker
  local hash
  hash=$(recipe_hash)
  if image_current "$KAFKA_IMAGE" "$hash" && image_current "$REDIS_IMAGE" "$hash"; then return; fi
  if try_pull "$OFFICIAL_KAFKA" "$KAFKA_IMAGE" && try_pull "$OFFICIAL_REDIS" "$REDIS_IMAGE"; then return; fi
  build_images "$hash"
}

# Apicurio Registry's Quarkus application (runner jar + lib/), unpacked under .cache once.
fetch_registry_app() {
  local app=$cache/apicurio-registry-$REGISTRY_VERSION
  if [ ! -f "$app/.done" ]; then
    command -v mvn >/dev/null 2>&1 || apt_install maven
    log "fetching Apicurio Registry $REGISTRY_VERSION from Maven Central (about 110 MB)"
    rm -rf "$app" "$cache/registry-download" && mkdir -p "$app"
    mvn -q -B dependency:copy -Dartifact="io.apicurio:apicurio-registry-app:$REGISTRY_VERSION:tar.gz:all" \
      -DoutputDirectory="$cache/registry-download" >&2
    tar -xzf "$cache/registry-download/apicurio-registry-app-$REGISTRY_VERSION-all.tar.gz" -C "$app"
    rm -rf "$cache/registry-download"
    [ -f "$app/apicurio-registry-app-$REGISTRY_VERSION-runner.jar" ] || { log "unexpected layout in $app"; exit 1; }
    touch "$app/.done"
  fi
  printf '%s' "$app"
}

registry_hash() {
  { declare -f build_registry_image; echo "$REGISTRY_VERSION"; docker image inspect -f '{{.Id}}' "$KAFKA_IMAGE"; } \
    | sha256 | cut -c1-16
}

# The Kafka image's filesystem (Debian, OpenJDK 17) plus the registry's application in /opt/apicurio; its data
# (H2 database files) in /var/lib/registry, a volume in compose.
build_registry_image() {
  local hash=$1 app tmp stage=$cache/registry-stage
  app=$(fetch_registry_app)
  rm -rf "$stage" && mkdir -p "$stage/opt" "$stage/var/lib/registry"
  cp -al "$app" "$stage/opt/apicurio" && rm -f "$stage/opt/apicurio/.done"
  tmp=$(docker create "$KAFKA_IMAGE" true)
  docker cp "$stage/." "$tmp:/" >/dev/null
  rm -rf "$stage"
  docker commit \
    --change "CMD [\"java\", \"-jar\", \"/opt/apicurio/apicurio-registry-app-$REGISTRY_VERSION-runner.jar\"]" \
    --change 'WORKDIR /opt/apicurio' --change 'EXPOSE 8080' \
    --change "ENV REGISTRY_VERSION=$REGISTRY_VERSION" \
    --change "LABEL org.order-pipeline.recipe=$hash" "$tmp" "$REGISTRY_IMAGE" >/dev/null
  docker rm "$tmp" >/dev/null
  log "built $REGISTRY_IMAGE (recipe $hash)"
}

ensure_registry_image() {
  ensure_images
  local hash
  hash=$(registry_hash)
  if image_current "$REGISTRY_IMAGE" "$hash"; then return; fi
  if try_pull "$OFFICIAL_REGISTRY" "$REGISTRY_IMAGE"; then return; fi
  build_registry_image "$hash"
}

# The pipeline's own processes in a container, built from infra/app/Dockerfile: on python:3.11-slim with the
# dependencies from the package index where the official image can be pulled; else on the Debian base above with
# a wheelhouse built here by the host's pip (a build here cannot verify the index's TLS certificate: the host
# trusts a CA the containers do not). Docker's layer cache makes a second build take seconds.
APP_IMAGE=${PIPELINE_APP_IMAGE:-order-pipeline/app:latest}
OFFICIAL_PYTHON=python:3.11-slim

ensure_wheelhouse() {
  local wheels=$cache/wheelhouse stamp
  stamp=$(sha256 < "$root/pyproject.toml" | cut -c1-16)
  if [ -f "$wheels/.stamp" ] && [ "$(cat "$wheels/.stamp")" = "$stamp" ]; then return; fi
  log "building the wheelhouse in $wheels: the project's dependencies and its build backend"
  rm -rf "$wheels" && mkdir -p "$wheels"
  "$root/.venv/bin/python" -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"]))' "$root/pyproject.toml" \
    > "$wheels/requirements.txt"
  "$root/.venv/bin/pip" wheel -q -r "$wheels/requirements.txt" -w "$wheels"
  echo "$stamp" > "$wheels/.stamp"
}

ensure_app_image() {
  ensure_docker
  local args=()
  if docker image inspect "$OFFICIAL_PYTHON" >/dev/null 2>&1 \
     || with_timeout 120 docker pull -q "$OFFICIAL_PYTHON" >/dev/null 2>&1; then
    args=(--build-arg "PYTHON_BASE=$OFFICIAL_PYTHON")
  else
    build_debian_base
    ensure_wheelhouse
    args=(--build-arg "PYTHON_BASE=$(debian_base)" --build-arg WHEELHOUSE=.cache/wheelhouse)
  fi
  log "building $APP_IMAGE (infra/app/Dockerfile, ${args[1]})"
  docker build -q "${args[@]}" -f "$root/infra/app/Dockerfile" -t "$APP_IMAGE" "$root" >/dev/null
}

# The observe profile's images: Zipkin and Prometheus, official where they can be pulled; else Zipkin's server jar
# from Maven Central on the Kafka image's JRE and Debian's prometheus package on the Debian base.
ZIPKIN_VERSION=3.5.1
ZIPKIN_IMAGE=${PIPELINE_ZIPKIN_IMAGE:-order-pipeline/zipkin:$ZIPKIN_VERSION}
PROMETHEUS_IMAGE=${PIPELINE_PROMETHEUS_IMAGE:-order-pipeline/prometheus:2}
OFFICIAL_ZIPKIN=openzipkin/zipkin:$ZIPKIN_VERSION
OFFICIAL_PROMETHEUS=prom/prometheus:v2.53.4

observe_hash() {
  { declare -f build_observe_images build_debian_base; cat "$root"/infra/observe/*; } | sha256 | cut -c1-16
}

build_observe_images() {
  local hash=$1 jars=$cache/zipkin-$ZIPKIN_VERSION context=$cache/zipkin-context
  if [ ! -f "$jars/.done" ]; then
    command -v mvn >/dev/null 2>&1 || apt_install maven
    log "fetching Zipkin $ZIPKIN_VERSION's server jar from Maven Central"
    rm -rf "$jars"
    mvn -q -B -f "$root/infra/kafka/pom.xml" dependency:copy \
      -Dartifact="io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec" -DoutputDirectory="$jars" >&2
    touch "$jars/.done"
  fi
  rm -rf "$context" && mkdir -p "$context"
  cp -l "$jars"/zipkin-server-*.jar "$context/zipkin.jar"
  docker build -q --build-arg "BASE=$KAFKA_IMAGE" --label "org.order-pipeline.recipe=$hash" \
    -f "$root/infra/observe/zipkin.Dockerfile" -t "$ZIPKIN_IMAGE" "$context" >/dev/null
  rm -rf "$context"
  build_debian_base
  docker build -q --build-arg "BASE=$(debian_base)" --label "org.order-pipeline.recipe=$hash" \
    -f "$root/infra/observe/prometheus.Dockerfile" -t "$PROMETHEUS_IMAGE" "$root/infra/observe" >/dev/null
  log "built $ZIPKIN_IMAGE and $PROMETHEUS_IMAGE (recipe $hash)"
}

ensure_observe_images() {
  ensure_images
  local hash
  hash=$(observe_hash)
  if image_current "$ZIPKIN_IMAGE" "$hash" && image_current "$PROMETHEUS_IMAGE" "$hash"; then return; fi
  if try_pull "$OFFICIAL_ZIPKIN" "$ZIPKIN_IMAGE" && try_pull "$OFFICIAL_PROMETHEUS" "$PROMETHEUS_IMAGE"; then return; fi
  build_observe_images "$hash"
}

ensure_tools() {
  command -v kcat >/dev/null 2>&1 || apt_install kcat || log "kcat is missing: the kcat recipes and its test need it"
  if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    apt_install docker-compose || log "install Docker Compose: make run needs it"
  fi
}

ensure_python() {
  local venv=$root/.venv stamp
  stamp=$(sha256 < "$root/pyproject.toml" | cut -c1-16)
  if [ -f "$venv/.stamp" ] && [ "$(cat "$venv/.stamp")" = "$stamp" ]; then return; fi
  log "installing the Python environment in .venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade 'pip>=25.1'
  "$venv/bin/pip" install -q -e "$root" --group "$root/pyproject.toml:dev"
  echo "$stamp" > "$venv/.stamp"
}

# `make bench` only: the benchmark's dependency group (the latency plot's matplotlib, the py-spy profiler).
ensure_bench_python() {
  ensure_python
  local venv=$root/.venv stamp
  stamp=$(sha256 < "$root/pyproject.toml" | cut -c1-16)
  if [ -f "$venv/.stamp-bench" ] && [ "$(cat "$venv/.stamp-bench")" = "$stamp" ]; then return; fi
  log "installing the benchmark's dependency group (pyproject.toml: bench)"
  "$venv/bin/pip" install -q --group "$root/pyproject.toml:bench"
  echo "$stamp" > "$venv/.stamp-bench"
}

# The gateway's HS256 secret, one per installation: 48 random bytes as base64 (64 characters), readable by
# its owner only. Kept when present; rewritten only by deleting the file (every token signed with it dies).
JWT_SECRET_FILE=$cache/jwt-secret
ensure_secret() {
  # a bind mount of a missing file leaves an empty directory behind on some engines
  if [ -d "$JWT_SECRET_FILE" ]; then
    rmdir "$JWT_SECRET_FILE" || { log "$JWT_SECRET_FILE is a directory: remove it"; exit 1; }
  fi
  if [ -s "$JWT_SECRET_FILE" ]; then
    chmod 600 "$JWT_SECRET_FILE"
    return
  fi
  log "writing a random JWT secret for this installation to $JWT_SECRET_FILE (mode 0600)"
  (umask 077 && head -c 48 /dev/urandom | base64 | tr -d '\n' >"$JWT_SECRET_FILE.tmp")
  mv -f "$JWT_SECRET_FILE.tmp" "$JWT_SECRET_FILE"
}

case "${1:-all}" in
  docker) ensure_docker ;;
  images) ensure_images; ensure_registry_image ;;
  registry-image) ensure_registry_image ;;
  app-image) ensure_python; ensure_app_image ;;
  observe) ensure_observe_images ;;
  tools) ensure_tools ;;
  python) ensure_python ;;
  bench) ensure_bench_python ;;
  secret) ensure_secret ;;
  all) ensure_secret; ensure_python; ensure_tools; ensure_images; ensure_registry_image ;;
  env)
    printf 'PIPELINE_KAFKA_IMAGE=%s\nPIPELINE_REDIS_IMAGE=%s\nPIPELINE_REGISTRY_IMAGE=%s\nPIPELINE_APP_IMAGE=%s\n' \
      "$KAFKA_IMAGE" "$REDIS_IMAGE" "$REGISTRY_IMAGE" "$APP_IMAGE"
    printf 'PIPELINE_ZIPKIN_IMAGE=%s\nPIPELINE_PROMETHEUS_IMAGE=%s\n' "$ZIPKIN_IMAGE" "$PROMETHEUS_IMAGE" ;;
  *) echo "usage: $0 [all|docker|images|registry-image|app-image|observe|tools|python|bench|secret|env]" >&2; exit 2 ;;
esac
