#!/usr/bin/env bash
# Runs the benchmark several times on the same code and summarizes the spread:
# the lowest and highest figure of each mode and concurrency over the runs, so
# a difference between two versions can be told from noise.
#
#   bench/spread.sh [RUNS] [-- BENCH ARGS]    (default 3 runs, the benchmark's defaults)
#
# Each run's own output goes to bench/results/spread/run-N/results.md, the
# summary to bench/results/spread/summary.md. Needs the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
shift || true
[ "${1:-}" = "--" ] && shift
OUT=${OUT:-bench/results/spread}
B=target/release
[ -x "$B/replyway-bench" ] || cargo build --release --locked --workspace --bins
rm -rf "$OUT"
mkdir -p "$OUT"
for n in $(seq 1 "$RUNS"); do
  echo "run $n of $RUNS ($(date -u +%H:%M:%S))"
  "$B/replyway-bench" --out "$OUT/run-$n" "$@" >"$OUT/run-$n.log" 2>&1 || {
    tail -n 40 "$OUT/run-$n.log" >&2
    exit 1
  }
  rm -f "$OUT/run-$n.log"
done
python3 bench/spread.py "$OUT"/run-*/results.md >"$OUT/summary.md"
cat "$OUT/summary.md"
