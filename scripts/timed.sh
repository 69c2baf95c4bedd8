#!/usr/bin/env bash
# Runs a command as a named phase and prints how long it took:
#   scripts/timed.sh <phase> <command> [args...]
# Used by make test and .ci/run, so that every run shows where its time went.
set -uo pipefail
phase=$1
shift
started=$(date +%s)
echo "=== phase $phase: started $(date -u +%H:%M:%S)"
"$@"
rc=$?
echo "=== phase $phase: $(( $(date +%s) - started )) s (exit $rc)"
exit "$rc"
