#!/usr/bin/env bash
# The sizes of the futures a request to a configured route allocates in the
# gateway: rustc's own layout report (-Zprint-type-sizes, enabled on the
# stable compiler with RUSTC_BOOTSTRAP=1 for this one build), filtered to the
# route's futures. The submission is boxed and freed once the command is
# produced; the answer is what stays allocated while the request waits.
#
#   bench/profile/future-sizes.sh [OUT]    (default bench/results/future-sizes.txt)
#
# Rebuilds the gateway library in release mode (about 2 minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
OUT=${1:-bench/results/future-sizes.txt}
RAW=target/future-sizes.raw
mkdir -p target "$(dirname "$OUT")"
RUSTC_BOOTSTRAP=1 cargo rustc --locked -p replyway-gateway --release --lib -- -Zprint-type-sizes >"$RAW" 2>&1
{
  echo "# rustc $(rustc --version | cut -d' ' -f2), commit $(git rev-parse --short HEAD)"
  echo "# bytes  future"
  grep -E '^print-type-size type: `\{async' "$RAW" |
    grep -E 'serving::|Node::submit|serving\.rs|axum::handler::Handler<.*serving|within_grace<.*Submitted::reply' |
    sed -E 's/^print-type-size type: `(.*)`: ([0-9]+) bytes.*/\2\t\1/' |
    sort -t$'\t' -k1,1nr -u
} >"$OUT"
cat "$OUT"
