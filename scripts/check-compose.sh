#!/usr/bin/env bash
# Checks docker-compose.yml without a Docker engine: installs docker-compose
# (Debian package) when it is missing, then has it parse, validate and
# interpolate the file (`docker-compose config`). Exits non-zero when the file
# is invalid. The settings the services load are checked by tests/tests/compose.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker-compose >/dev/null 2>&1; then
  echo "installing docker-compose (Debian package)..."
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # Without recommends: the check needs no Docker engine.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! docker-compose -f docker-compose.yml config >"$out"; then
  echo "docker-compose.yml: invalid (see above)" >&2
  exit 1
fi
services=$(docker-compose -f docker-compose.yml config --services | tr '\n' ' ')
echo "docker-compose.yml: valid; services: ${services% }"
