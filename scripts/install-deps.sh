#!/usr/bin/env bash
# Installs what Replyway's local runs and tests need and is missing:
# redis-server (Debian package), the tansu broker (from crates.io) and the
# Python venv of the Python example service (PyPI).
set -euo pipefail

TANSU_VERSION=0.6.0

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (Debian package)..."
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

# The Kafka client links the system's OpenSSL (TLS and SASL to brokers), as
# does the Redis client (rediss://): headers and pkg-config to build them.
if ! pkg-config --exists openssl 2>/dev/null; then
  echo "installing libssl-dev and pkg-config (Debian packages)..."
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libssl-dev pkg-config >/dev/null
fi

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then command -v tansu; return; fi
  if [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"; return; fi
  return 1
}

if ! bin=$(tansu_bin) || ! "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "installing the tansu broker $TANSU_VERSION from crates.io (takes 8-12 minutes on 2 cores)..."
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi

if ! rustup component list --installed 2>/dev/null | grep -q '^rustfmt'; then rustup component add rustfmt; fi
if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then rustup component add clippy; fi

"$(dirname "$0")/install-python.sh"
