#!/usr/bin/env bash
# Installs the pinned Apache Kafka broker (kafka.version in scripts/kafka/pom.xml,
# the same version as docker-compose.yml's apache/kafka image) from Maven Central
# into a cache outside the work tree: the broker's runtime jars plus the log4j2
# jars its release tarball ships. Quick and silent when they are there.
#
#   KAFKA_HOME       an Apache Kafka distribution to use instead (its libs/)
#   REPLYWAY_CACHE   the cache (default: $XDG_CACHE_HOME/replyway or ~/.cache/replyway)
#
#   install-kafka.sh          install when missing
#   install-kafka.sh --libs   print the folder of the broker's jars (install first)
#
# tests/src/kafka.rs finds the jars by the same rules.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
pom="$here/kafka/pom.xml"
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
[ -n "$version" ] || { echo "no kafka.version in $pom" >&2; exit 1; }

if [ -n "${KAFKA_HOME:-}" ]; then
  libs="$KAFKA_HOME/libs"
  ls "$libs"/kafka_2.13-*.jar >/dev/null 2>&1 \
    || { echo "KAFKA_HOME=$KAFKA_HOME is not an Apache Kafka distribution (no libs/kafka_2.13-*.jar)" >&2; exit 1; }
  [ "${1:-}" = "--libs" ] && echo "$libs"
  exit 0
fi

cache=${REPLYWAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/replyway}
home="$cache/kafka-$version"
libs="$home/libs"
if [ "${1:-}" = "--libs" ]; then echo "$libs"; exit 0; fi

# The stamp holds the pom it was installed from: another pin re-installs.
if [ -f "$home/installed" ] && cmp -s "$pom" "$home/installed"; then exit 0; fi

echo "installing Apache Kafka $version from Maven Central into $home..."
started=$(date +%s)
rm -rf "$home.tmp"
mkdir -p "$home.tmp"
# Maven 3.8's default maven-dependency-plugin is 2.8: the pom pins 3.6.1.
if ! mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$home.tmp/libs" >"$home.tmp/mvn.log" 2>&1; then
  cat "$home.tmp/mvn.log" >&2
  echo "installing Apache Kafka $version from Maven Central failed (log above)" >&2
  exit 1
fi
[ -f "$home.tmp/libs/kafka_2.13-$version.jar" ] || { echo "kafka_2.13-$version.jar is missing after the install" >&2; exit 1; }
cp "$pom" "$home.tmp/installed"
rm -rf "$home"
mv "$home.tmp" "$home"
echo "Apache Kafka $version: $(ls "$libs" | wc -l) jars, $(du -sh "$libs" | cut -f1), in $(( $(date +%s) - started )) s"
