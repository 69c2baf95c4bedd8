#!/usr/bin/env bash
# Creates the Python venv of the example service (examples/python/) and installs
# examples/python/requirements.txt into it, when missing or outdated.
# Idempotent: once done, a run only compares a stamp and exits.
#
#   REPLYWAY_PYTHON_VENV  where the venv goes (default: .venv at the repo root)
#   PYTHON3               the interpreter that creates it (default: python3)
#
# The test suite (tests/tests/python_service.rs) runs <venv>/bin/python, or
# $REPLYWAY_PYTHON when set.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${REPLYWAY_PYTHON_VENV:-$ROOT/.venv}
REQUIREMENTS=$ROOT/examples/python/requirements.txt
PYTHON3=${PYTHON3:-python3}
# The same librdkafka as the Rust clients (rdkafka-sys bundles 2.12.1).
MIN_LIBRDKAFKA=0x020c0000 # 2.12.0

apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# What the venv was made from: the requirements and the interpreter's version.
# A change of either re-installs.
stamp_of() {
  {
    sha256sum "$REQUIREMENTS" | cut -d' ' -f1
    "$VENV/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null || echo none
  } | sha256sum | cut -d' ' -f1
}

STAMP_FILE=$VENV/.replyway-requirements
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$(stamp_of)" ]; then
  exit 0
fi

if ! command -v "$PYTHON3" >/dev/null 2>&1; then
  echo "installing python3 (Debian package)..."
  apt_install python3 python3-venv
fi
# Debian's python3 has venv's pip bootstrap (ensurepip) in a package of its own.
if ! "$PYTHON3" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "installing python3-venv (Debian package)..."
  apt_install python3-venv
fi

# A venv whose interpreter is gone or broken (e.g. python3 upgraded) is made anew.
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "creating the Python venv at $VENV..."
  rm -rf "$VENV"
  "$PYTHON3" -m venv "$VENV"
fi

echo "installing $REQUIREMENTS into $VENV..."
# Wheels only for confluent-kafka: a source build would link the system's
# librdkafka, which may be older than the broker needs.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --only-binary confluent-kafka -r "$REQUIREMENTS"

"$VENV/bin/python" - "$MIN_LIBRDKAFKA" <<'EOF'
import sys
import confluent_kafka

name, number = confluent_kafka.libversion()
if number < int(sys.argv[1], 16):
    sys.exit(f"confluent-kafka {confluent_kafka.version()} bundles librdkafka {name}; "
             f"the local broker needs >= 2.12: pin a newer confluent-kafka")
print(f"confluent-kafka {confluent_kafka.version()}, librdkafka {name}")
EOF

stamp_of >"$STAMP_FILE"
