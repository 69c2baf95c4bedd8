#!/usr/bin/env bash
# Starts the whole Replyway stack on this machine: a single-node KRaft Apache
# Kafka (data under .run/kafka, formatted on first start, kept across runs),
# Redis, the collector, the echo and ledger demo services and the gateway.
# Ctrl-C stops everything: the services first, then the broker and Redis.
#
# Ports (override with the environment): gateway 8080 (config/local/gateway.toml),
# KAFKA_PORT=9092 (KAFKA_CONTROLLER_PORT=9093), REDIS_PORT=6380.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
REDIS_PORT=${REDIS_PORT:-6380}
GATEWAY_LISTEN=${GATEWAY_LISTEN:-127.0.0.1:8080}
RUN_DIR=${RUN_DIR:-.run}
mkdir -p "$RUN_DIR/logs"

export REPLYWAY_KAFKA__BROKERS="127.0.0.1:${KAFKA_PORT}"
export REPLYWAY_REDIS__URL="redis://127.0.0.1:${REDIS_PORT}"

# Every process runs in a session of its own, so that Ctrl-C reaches only this
# script, which stops them in order: the Replyway processes first (committing
# offsets and leaving their consumer groups), then the broker and Redis.
pids=()
infra=()
cleanup() {
  trap - INT TERM EXIT
  trap "" PIPE  # the terminal or a pipe may be gone already
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${infra[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${infra[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped."
}
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 200); do port_busy "$1" && return 0; sleep 0.1; done
  echo "nothing listens on port $1 (see $RUN_DIR/logs)" >&2; return 1
}
for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$REDIS_PORT" "${GATEWAY_LISTEN##*:}"; do
  if port_busy "$p"; then echo "port $p is in use; set KAFKA_PORT / KAFKA_CONTROLLER_PORT / REDIS_PORT / GATEWAY_LISTEN" >&2; exit 1; fi
done

echo "building (release)..."
cargo build --release --locked --workspace --bins

echo "starting redis-server on 127.0.0.1:${REDIS_PORT}"
setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$RUN_DIR" >"$RUN_DIR/logs/redis.log" 2>&1 &
infra+=($!)
echo "starting Apache Kafka on 127.0.0.1:${KAFKA_PORT} (data in $RUN_DIR/kafka, log in $RUN_DIR/kafka/node-1/broker.log)"
setsid target/release/replyway-kafka --dir "$RUN_DIR/kafka" --port "$KAFKA_PORT" \
  --controller-port "$KAFKA_CONTROLLER_PORT" --partitions 3 \
  --topics echo.requests,ledger.requests,ledger.events,kyc.requests,replyway.replies \
  >"$RUN_DIR/logs/kafka.log" 2>&1 &
infra+=($!)
wait_port "$REDIS_PORT"
# The broker prints "ready" once the topics exist (a JVM start, a few seconds).
for _ in $(seq 1 900); do
  grep -qx ready "$RUN_DIR/logs/kafka.log" 2>/dev/null && break
  kill -0 "${infra[1]}" 2>/dev/null || { cat "$RUN_DIR/logs/kafka.log" >&2; echo "Apache Kafka did not start" >&2; exit 1; }
  sleep 0.1
done
grep -qx ready "$RUN_DIR/logs/kafka.log" || { echo "Apache Kafka was not ready after 90 s; see $RUN_DIR/logs/kafka.log" >&2; exit 1; }
grep '^Apache Kafka' "$RUN_DIR/logs/kafka.log"

bin=target/release
setsid "$bin/replyway-collector" --config config/local/collector.toml >"$RUN_DIR/logs/collector.log" 2>&1 &
pids+=($!)
setsid "$bin/replyway-echo" --config config/local/echo.toml >"$RUN_DIR/logs/echo.log" 2>&1 &
pids+=($!)
setsid "$bin/replyway-ledger" --config config/local/ledger.toml >"$RUN_DIR/logs/ledger.log" 2>&1 &
pids+=($!)
setsid "$bin/replyway-gateway" --config config/local/gateway.toml --listen "$GATEWAY_LISTEN" >"$RUN_DIR/logs/gateway.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 300); do
  if curl -fsS "http://${GATEWAY_LISTEN}/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
curl -fsS "http://${GATEWAY_LISTEN}/readyz" >/dev/null || { echo "the gateway did not become ready; see $RUN_DIR/logs/gateway.log" >&2; exit 1; }
# Until the demo services have joined their consumer groups, their routes
# answer 503 no-responders: wait for both to answer.
for _ in $(seq 1 300); do
  if curl -fsS -X POST "http://${GATEWAY_LISTEN}/echo" -d ping >/dev/null 2>&1 &&
    curl -fsS "http://${GATEWAY_LISTEN}/ledger/accounts/alice" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
curl -fsS -X POST "http://${GATEWAY_LISTEN}/echo" -d ping >/dev/null || { echo "the echo service did not answer; see $RUN_DIR/logs/echo.log" >&2; exit 1; }

cat <<EOT

Replyway is running:
  gateway     http://${GATEWAY_LISTEN}   (routes: POST /echo, POST /echo/{key},
              POST /ledger/transfers, GET /ledger/accounts/{account})
              admin (/healthz /readyz /metrics) on http://127.0.0.1:9090
  collector   consumer group replyway-collector on replyway.replies
              admin on http://127.0.0.1:9091
  echo        consumer group replyway-echo on echo.requests
  ledger      consumer group replyway-ledger on ledger.requests, events to ledger.events
              (accounts alice and bob in Redis under the key prefix ledger)
  broker      Apache Kafka $(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' scripts/kafka/pom.xml) at 127.0.0.1:${KAFKA_PORT} (KRaft, data in ${RUN_DIR}/kafka)
  redis       127.0.0.1:${REDIS_PORT} (key prefix replyway)
  logs        ${RUN_DIR}/logs/

Try:
  curl -i -X POST http://${GATEWAY_LISTEN}/echo -H 'content-type: application/json' -d '{"hello":"world"}'
  curl -i -X POST http://${GATEWAY_LISTEN}/echo -d '{"status":409}'
  curl -i -X POST http://${GATEWAY_LISTEN}/echo -H 'prefer: respond-async' -d 'later'
  curl -i -X POST http://${GATEWAY_LISTEN}/ledger/transfers -H 'content-type: application/json' \\
       -H 'x-client-id: shop-7' -d '{"from":"alice","to":"bob","amount":250}'
  curl -i http://${GATEWAY_LISTEN}/ledger/accounts/bob
  curl -s http://127.0.0.1:9090/metrics | grep replyway_gateway_requests

Service to service (the Requester; topic kyc.requests is there):
  target/release/replyway-kyc -c config/local/risk-scoring.toml &
  target/release/replyway-risk-scoring -c config/local/risk-scoring.toml

Ctrl-C stops everything.
EOT

# Stay up until Ctrl-C or until a component exits.
wait -n "${pids[@]}" "${infra[@]}" || true
echo "a component exited; see ${RUN_DIR}/logs" >&2
