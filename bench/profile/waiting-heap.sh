#!/usr/bin/env bash
# Heap profile of one gateway holding N requests at once over HTTP/2 (h2c):
# which allocations a waiting request costs. Starts its own broker, Redis,
# collector and echo service on free ports, the gateway under heaptrack, and
# h2load sending N requests (10 connections) that the echo service answers
# after HOLD_MS; then prints heaptrack's peak heap by category.
#
#   bench/profile/waiting-heap.sh [N]        (default 10000)
#
# Needs the release build (make build), heaptrack and h2load (Debian packages
# heaptrack and nghttp2-client; installed when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
N=${1:-10000}
HOLD_MS=${HOLD_MS:-15000}
OUT=${OUT:-target/heap-profile}
B=target/release

need() {
  command -v "$1" >/dev/null 2>&1 && return
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null
}
need heaptrack heaptrack
need h2load nghttp2-client
[ -x "$B/replyway-gateway" ] || cargo build --release --locked --workspace --bins

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KAFKA_PORT=$(free_port); REDIS_PORT=$(free_port); HTTP_PORT=$(free_port); ADMIN_PORT=$(free_port)
rm -rf "$OUT"; mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

export REPLYWAY_KAFKA__BROKERS="127.0.0.1:$KAFKA_PORT" REPLYWAY_REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT" >"$OUT/redis.log" 2>&1 &
pids+=($!)
"$B/replyway-kafka" --dir "$OUT/kafka" --port "$KAFKA_PORT" --controller-port "$(free_port)" \
  --topics echo.requests,replyway.replies >"$OUT/kafka.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 900); do grep -qx ready "$OUT/kafka.log" 2>/dev/null && break; sleep 0.1; done
grep -qx ready "$OUT/kafka.log" || { cat "$OUT/kafka.log" >&2; exit 1; }
REPLYWAY_ADMIN_LISTEN= "$B/replyway-collector" --config config/local/collector.toml >"$OUT/collector.log" 2>&1 &
pids+=($!)
REPLYWAY_MAX_IN_FLIGHT=$((N + 100)) "$B/replyway-echo" --config config/local/echo.toml >"$OUT/echo.log" 2>&1 &
pids+=($!)
sed 's/^timeout = .*/timeout = "60s"/' config/local/gateway.toml >"$OUT/gateway.toml"
REPLYWAY_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" REPLYWAY_MAX_WAITING=$((N + 100)) RUST_LOG=warn \
  heaptrack -o "$OUT/gateway" "$B/replyway-gateway" --config "$OUT/gateway.toml" \
  --listen "127.0.0.1:$HTTP_PORT" >"$OUT/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs -X POST "http://127.0.0.1:$HTTP_PORT/echo" -d '{}' >/dev/null 2>&1 && break
  sleep 0.2
done
echo "{\"sleep_ms\":$HOLD_MS}" >"$OUT/body.json"
echo "holding $N requests for ${HOLD_MS} ms ..."
h2load -n "$N" -c 10 -m $(((N + 9) / 10)) -d "$OUT/body.json" -H 'content-type: application/json' \
  "http://127.0.0.1:$HTTP_PORT/echo" >"$OUT/h2load.log" 2>&1 &
load=$!
sleep $((HOLD_MS / 2000))
waiting=$(curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" | sed -n 's/^replyway_gateway_waiting_requests \(.*\)/\1/p')
echo "waiting at once: $waiting"
wait "$load"
grep -E '^(requests|status codes):' "$OUT/h2load.log"
gateway=$(pgrep -f "replyway-gateway --config $OUT/gateway.toml" | tail -1)
kill -TERM "$gateway"
for _ in $(seq 1 50); do [ -s "$OUT/gateway.zst" ] && ! kill -0 "$gateway" 2>/dev/null && break; sleep 0.2; done
sleep 2
heaptrack_print -f "$OUT/gateway.zst" -s 0 --print-peaks 0 --print-allocators 0 --print-temporary 0 \
  --print-leaks 0 --flamegraph-cost-type peak -F "$OUT/peak.folded" | grep -E 'peak heap|peak RSS'
python3 bench/profile/heap_categories.py "$OUT/peak.folded" "$N" | tee "$OUT/summary.txt"
