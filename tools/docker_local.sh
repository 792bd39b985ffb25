#!/usr/bin/env bash
# A Docker engine and a plain Debian 12 base image on this machine, for the test that builds the
# project's image from scratch (as root).
#   tools/docker_local.sh [start]  install Debian's docker.io and debootstrap if missing, start
#                                  dockerd unless one answers, and make the base image
#                                  $DOCKER_BASE (default caffe-transfer-base:bookworm) unless it
#                                  exists; prints its name
#   tools/docker_local.sh stop     stop the dockerd that start started
# No image registry is reachable here, so the base image is debootstrap's minimal bookworm from
# the Debian mirror apt already uses, with deb822 sources as in the official debian:12 image. The
# certificate authorities this machine adds (/usr/local/share/ca-certificates, e.g. a proxy's)
# go into it too, with PIP_CERT, so that apt and pip inside reach what they reach here.
# dockerd runs without a bridge or iptables rules: builds and runs use --network host or none.
set -euo pipefail
BASE=${DOCKER_BASE:-caffe-transfer-base:bookworm}
PIDFILE=/run/caffe-transfer-dockerd.pid  # only a dockerd this script started

if [ "${1:-start}" = stop ]; then
  if [ -f "$PIDFILE" ]; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    rm -f "$PIDFILE"
  fi
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "docker_local.sh: run as root (it starts dockerd)" >&2; exit 1; }
log() { printf '[docker] %s\n' "$*" >&2; }

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing docker.io and debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: /var/log/caffe-transfer-dockerd.log)"
  dockerd --iptables=false --ip6tables=false --bridge=none --pidfile="$PIDFILE" \
    >/var/log/caffe-transfer-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -n 20 /var/log/caffe-transfer-dockerd.log >&2; exit 1; }
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  sources=/etc/apt/sources.list.d/debian.sources
  [ -f "$sources" ] || { echo "docker_local.sh: no $sources to take the Debian mirror from" >&2; exit 1; }
  # The first deb822 stanza's URI is the archive, the one naming bookworm-security the security one.
  mirror=$(awk '/^URIs:/ {print $2; exit}' "$sources")
  security=$(awk '/^URIs:/ {uri = $2} /^Suites:.*-security/ {print uri; exit}' "$sources")
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  log "making $BASE with debootstrap (bookworm, minbase)"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; exit 1; }
  rm -f "$root/etc/apt/sources.list" "$root.log"
  { printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\n' "$mirror"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$security" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\n' "$security"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } >"$root/etc/apt/sources.list.d/debian.sources"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
  env_args=()
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    env_args=(-c "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
  fi
  tar -C "$root" -c . | docker import "${env_args[@]}" - "$BASE" >/dev/null
fi
echo "$BASE"
