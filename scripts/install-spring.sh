#!/usr/bin/env bash
# Builds the Spring for Apache Kafka example (examples/spring/, a Spring Boot
# application) into examples/spring/target/shouter.jar with Maven, which
# fetches Spring Boot and its dependencies from Maven Central into ~/.m2 the
# first time. Quick and silent when the jar is there and was built from the
# sources as they are now (a stamp beside the jar holds their hash): no network
# is needed then. Prints how long the Maven build took.
#
# The test suite (tests/tests/suite/spring.rs) runs that jar with java.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
APP=$ROOT/examples/spring
JAR=$APP/target/shouter.jar
STAMP=$APP/target/shouter.sources

apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing $* (Debian packages)..."
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# What the jar is built from: the pom, the sources, and the JDK that compiles them.
sources_hash() {
  {
    (cd "$APP" && find pom.xml src -type f -print0 | sort -z | xargs -0 sha256sum)
    javac -version 2>&1
  } | sha256sum | cut -d' ' -f1
}

# A JRE runs the broker; compiling needs the JDK (javac).
command -v javac >/dev/null 2>&1 || apt_install openjdk-17-jdk-headless
command -v mvn >/dev/null 2>&1 || apt_install maven

if [ -f "$JAR" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(sources_hash)" ]; then
  exit 0
fi

echo "building examples/spring with Maven..."
started=$(date +%s%N)
log=$(mktemp)
if ! mvn -q -B -f "$APP/pom.xml" package >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  echo "building examples/spring failed (Maven's output above)" >&2
  exit 1
fi
rm -f "$log"
[ -f "$JAR" ] || { echo "$JAR is missing after the Maven build" >&2; exit 1; }
sources_hash >"$STAMP"
elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))
printf 'examples/spring: Maven build %d.%01d s, %s (%s)\n' \
  $((elapsed_ms / 1000)) $((elapsed_ms % 1000 / 100)) "${JAR#"$ROOT"/}" "$(du -h "$JAR" | cut -f1)"
