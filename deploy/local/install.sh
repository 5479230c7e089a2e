#!/usr/bin/env bash
# Installs what the tests, demo and benchmarks need, only where it is missing:
# the pinned minio and mc (go install, cached), Debian packages, the virtualenv.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${MIRROR_CACHE_DIR:-$repo/.cache}
# shellcheck source=../versions.env
source "$repo/deploy/versions.env"

go_binary() {  # name module version
  local name=$1 module=$2 version=$3 stamp="$cache/bin/.$1.version"
  if [[ -x $cache/bin/$name && -f $stamp && $(cat "$stamp") == "$version" ]]; then
    return
  fi
  echo "install: building $name $version with go install (first time takes a few minutes)"
  mkdir -p "$cache/bin"
  GOBIN="$cache/bin" GOFLAGS=-mod=mod CGO_ENABLED=0 go install "$module@$version"
  "$cache/bin/$name" --version >/dev/null
  echo "$version" >"$stamp"
}

toxiproxy() {  # cmd/server installs as "server": renamed, so PATH gets no bare "server"
  local stamp="$cache/bin/.toxiproxy-server.version"
  if [[ -x $cache/bin/toxiproxy-server && -f $stamp && $(cat "$stamp") == "$TOXIPROXY_VERSION" ]]; then
    return
  fi
  echo "install: building toxiproxy-server $TOXIPROXY_VERSION with go install"
  mkdir -p "$cache/bin" "$cache/toxiproxy"
  GOBIN="$cache/toxiproxy" GOFLAGS=-mod=mod CGO_ENABLED=0 \
    go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION"
  mv "$cache/toxiproxy/server" "$cache/bin/toxiproxy-server"
  "$cache/bin/toxiproxy-server" -version >/dev/null
  echo "$TOXIPROXY_VERSION" >"$stamp"
}

debian_packages() {
  local missing=()
  [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || missing+=(rabbitmq-server)
  # The image test (tests/image): build and run the Dockerfile without a Docker engine.
  local tool
  for tool in podman buildah runc mmdebstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [[ -x /usr/lib/podman/netavark ]] || missing+=(netavark)  # podman's network stack
  # rclone: a peer in the WAN benchmarks (tests/benchmarks/wan.py).
  command -v rclone >/dev/null || missing+=(rclone)
  # Prometheus and promtool: the alert rules' unit tests and the dashboard-query test.
  { command -v promtool && command -v prometheus; } >/dev/null || missing+=(prometheus)
  if ! command -v kubectl >/dev/null; then
    # Debian ships kubectl as kubernetes-client; a kubectl package wins where one exists.
    if apt-cache show kubectl >/dev/null 2>&1; then missing+=(kubectl); else missing+=(kubernetes-client); fi
  fi
  ((${#missing[@]})) || return 0
  echo "install: Debian packages ${missing[*]}"
  local sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  # Debian starts a system node on install; the tests run private nodes instead.
  "${sudo[@]}" /usr/sbin/rabbitmqctl stop >/dev/null 2>&1 || true
  # Likewise Prometheus's system service: the tests start their own server.
  "${sudo[@]}" service prometheus stop >/dev/null 2>&1 || true
}

virtualenv() {
  local venv=$repo/.venv want have=""
  want=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
  [[ -f $venv/.pyproject.sha256 ]] && have=$(cat "$venv/.pyproject.sha256")
  [[ -x $venv/bin/python && $have == "$want" ]] && return
  echo "install: virtualenv $venv with the project and its test dependencies"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e "$repo[test]"
  echo "$want" >"$venv/.pyproject.sha256"
}

go_binary minio github.com/minio/minio "$MINIO_VERSION"
go_binary mc github.com/minio/mc "$MC_VERSION"
toxiproxy
debian_packages
virtualenv
