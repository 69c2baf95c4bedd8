#!/usr/bin/env bash
# Installs what Replyway's local runs and tests need and is missing:
# redis-server, Java 17 and Maven (Debian packages), the pinned Apache Kafka
# broker (Maven Central, scripts/install-kafka.sh), the Python venv of the
# Python example service (PyPI) and the jar of the Spring example (Maven
# Central, scripts/install-spring.sh). Silent when everything is there.
set -euo pipefail

apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing $* (Debian packages)..."
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

command -v redis-server >/dev/null 2>&1 || apt_install redis-server
# The outbox tests start PostgreSQL 15 (initdb, postgres) of their own.
[ -x /usr/lib/postgresql/15/bin/initdb ] || apt_install postgresql

# The broker needs Java 17 or newer; Maven fetches it from Maven Central.
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1; }
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  apt_install openjdk-17-jre-headless
fi
command -v mvn >/dev/null 2>&1 || apt_install maven
"$(dirname "$0")/install-kafka.sh"

# The Kafka client links the system's OpenSSL (TLS and SASL to brokers), as
# does the Redis client (rediss://): headers and pkg-config to build them.
if ! pkg-config --exists openssl 2>/dev/null; then
  apt_install libssl-dev pkg-config
fi

if ! rustup component list --installed 2>/dev/null | grep -q '^rustfmt'; then rustup component add rustfmt; fi
if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then rustup component add clippy; fi

"$(dirname "$0")/install-python.sh"
"$(dirname "$0")/install-spring.sh"
