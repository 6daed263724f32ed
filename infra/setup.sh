#!/usr/bin/env bash
# Brings a machine to the point where the pipeline runs: a Docker engine, the Kafka and Redis images,
# host tools (kcat) and the Python environment. Every step is idempotent and cached; a second run is fast.
#
#   infra/setup.sh [all|docker|images|registry-image|app-image|tools|python|bench|secret|env]
#
# `secret` (part of `all`) writes this installation's random JWT secret to .cache/jwt-secret (mode 0600,
# outside git); the gateway and `pipeline token` read it, and compose mounts it into the gateway's container.
# Where no Docker engine answers and the machine is Debian with root, Debian's docker.io is installed and
# dockerd started with published ports bound to 127.0.0.1. Where images cannot be pulled, they are built
# here: a Debian root filesystem (mmdebstrap) with a JRE and redis-server, plus Kafka's jars from Maven Central.
# The schema registry (Apicurio Registry) is the official image where it can be pulled, else the Kafka image's
# JRE with Apicurio's built application from Maven Central (io.apicurio:apicurio-registry-app, tar.gz "all").
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

recipe_hash() {
  { declare -f build_images; cat "$root"/infra/kafka/*; } | sha256sum | cut -c1-16
}

# An image is current when it exists and, if we built it, was built from this recipe.
image_current() {
  local image=$1 want=$2 label
  label=$(docker image inspect -f '{{ index .Config.Labels "org.order-pipeline.recipe" }}' "$image" 2>/dev/null) || return 1
  [ -z "$label" ] || [ "$label" = "<no value>" ] || [ "$label" = "$want" ]
}

try_pull() {
  local official=$1 image=$2
  if timeout 120 docker pull -q "$official" >/dev/null 2>&1; then
    docker tag "$official" "$image"
    log "using the official image $official as $image"
    return 0
  fi
  return 1
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
  local hash=$1 libs base
  libs=$(build_kafka_libs)
  command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap
  base=order-pipeline/base:$hash
  log "building a Debian root filesystem with a JRE and redis-server (mmdebstrap; about a minute)"
  mmdebstrap --quiet --variant=apt --mode=root \
    --include=openjdk-17-jre-headless,redis-server,ca-certificates,procps \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="mkdir -p \"\$1/opt/kafka/libs\" \"\$1/etc/kafka/docker\" \"\$1/var/lib/kafka/data\" \"\$1/data\"" \
    --customize-hook="cp $libs/*.jar \"\$1/opt/kafka/libs/\"" \
    --customize-hook="cp $root/infra/kafka/run \"\$1/etc/kafka/docker/run\"" \
    --customize-hook="cp $root/infra/kafka/log4j.properties \"\$1/opt/kafka/log4j.properties\"" \
    --customize-hook="rm -rf \"\$1/var/cache/apt\"/*.bin \"\$1/var/lib/apt/lists\"/*" \
    bookworm "$cache/rootfs.tar" "deb $DEBIAN_MIRROR bookworm main"
  docker import --change 'ENV LANG=C.UTF-8' "$cache/rootfs.tar" "$base" >/dev/null
  rm -f "$cache/rootfs.tar"

  local tmp
  tmp=$(docker create "$base" true)
  docker commit \
    --change 'CMD ["/etc/kafka/docker/run"]' --change 'EXPOSE 9092' \
    --change "ENV KAFKA_VERSION=$KAFKA_VERSION" \
    --change "LABEL org.order-pipeline.recipe=$hash" "$tmp" "$KAFKA_IMAGE" >/dev/null
  docker commit \
    --change 'CMD ["redis-server", "--protected-mode", "no"]' --change 'EXPOSE 6379' \
    --change "LABEL org.order-pipeline.recipe=$hash" "$tmp" "$REDIS_IMAGE" >/dev/null
  docker rm "$tmp" >/dev/null
  docker images order-pipeline/base --format '{{.Tag}}' | grep -vx "$hash" \
    | xargs -r -I{} docker rmi order-pipeline/base:{} >/dev/null 2>&1 || true
  log "built $KAFKA_IMAGE and $REDIS_IMAGE (recipe $hash)"
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
    | sha256sum | cut -c1-16
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

# The pipeline's own processes in a container: Debian's python3 (3.11) with the project and its dependencies
# installed from wheels built here, so the image builds without a registry. Rebuilt when the code changes.
APP_IMAGE=${PIPELINE_APP_IMAGE:-order-pipeline/app:latest}

app_hash() {
  (cd "$root" && git ls-files -z -- pyproject.toml common pipeline schemas streams producers consumers gateway bench 2>/dev/null \
     | xargs -0 sha256sum; declare -f build_app_image) | sha256sum | cut -c1-16
}

build_app_image() {
  local hash=$1 wheels=$cache/app-wheels
  command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap
  log "building $APP_IMAGE: wheels of the project and its dependencies, then a Debian root filesystem"
  rm -rf "$wheels" && mkdir -p "$wheels"
  "$root/.venv/bin/pip" wheel -q "$root" -w "$wheels"
  mmdebstrap --quiet --variant=apt --mode=root --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="mkdir -p \"\$1/tmp/wheels\" && cp $wheels/*.whl \"\$1/tmp/wheels/\"" \
    --customize-hook='chroot "$1" python3 -m venv /opt/venv' \
    --customize-hook='chroot "$1" /opt/venv/bin/pip install -q --no-index --find-links /tmp/wheels order-pipeline' \
    --customize-hook='rm -rf "$1/tmp/wheels" "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/*' \
    bookworm "$cache/app-rootfs.tar" "deb $DEBIAN_MIRROR bookworm main"
  docker import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1 PIPELINE_DATA_DIR=/var/lib/pipeline' \
    --change 'WORKDIR /var/lib/pipeline' --change 'CMD ["pipeline", "--help"]' \
    --change "LABEL org.order-pipeline.recipe=$hash" "$cache/app-rootfs.tar" "$APP_IMAGE" >/dev/null
  rm -f "$cache/app-rootfs.tar"
  log "built $APP_IMAGE (code $hash)"
}

ensure_app_image() {
  ensure_docker
  local hash
  hash=$(app_hash)
  local label
  label=$(docker image inspect -f '{{ index .Config.Labels "org.order-pipeline.recipe" }}' "$APP_IMAGE" 2>/dev/null || true)
  [ "$label" = "$hash" ] || build_app_image "$hash"
}

ensure_tools() {
  command -v kcat >/dev/null 2>&1 || apt_install kcat || log "kcat is missing: the kcat recipes and its test need it"
  if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    apt_install docker-compose || log "install Docker Compose: make run needs it"
  fi
}

ensure_python() {
  local venv=$root/.venv stamp
  stamp=$(sha256sum "$root/pyproject.toml" | cut -c1-16)
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
  stamp=$(sha256sum "$root/pyproject.toml" | cut -c1-16)
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
  (umask 077 && head -c 48 /dev/urandom | base64 -w0 >"$JWT_SECRET_FILE.tmp")
  mv -f "$JWT_SECRET_FILE.tmp" "$JWT_SECRET_FILE"
}

case "${1:-all}" in
  docker) ensure_docker ;;
  images) ensure_images; ensure_registry_image ;;
  registry-image) ensure_registry_image ;;
  app-image) ensure_python; ensure_app_image ;;
  tools) ensure_tools ;;
  python) ensure_python ;;
  bench) ensure_bench_python ;;
  secret) ensure_secret ;;
  all) ensure_secret; ensure_python; ensure_tools; ensure_images; ensure_registry_image ;;
  env)
    printf 'PIPELINE_KAFKA_IMAGE=%s\nPIPELINE_REDIS_IMAGE=%s\nPIPELINE_REGISTRY_IMAGE=%s\nPIPELINE_APP_IMAGE=%s\n' \
      "$KAFKA_IMAGE" "$REDIS_IMAGE" "$REGISTRY_IMAGE" "$APP_IMAGE" ;;
  *) echo "usage: $0 [all|docker|images|registry-image|app-image|tools|python|bench|secret|env]" >&2; exit 2 ;;
esac
