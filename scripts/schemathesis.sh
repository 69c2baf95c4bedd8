#!/usr/bin/env bash
# Checks the gateway against its own OpenAPI document: starts Apache Kafka,
# Redis, the collector, the echo and ledger demo services and the gateway (from
# target/debug, with config/local/*.toml moved to free ports by environment
# variables), validates GET /openapi.json with openapi-spec-validator, then runs
# schemathesis against it. Exits non-zero on any failure; stops everything it
# started on exit.
#
#   REPLYWAY_SCHEMATHESIS_VENV  the Python venv (default: .venv-schemathesis at the
#                               repo root); created, and the pinned tools installed,
#                               when missing
#   SCHEMATHESIS_MAX_EXAMPLES   test cases per operation and phase (default 100)
#   SCHEMATHESIS_TIMEOUT        bound on the schemathesis run, seconds (default 900)
#   SCHEMATHESIS_WORKERS        concurrent schemathesis workers (default 1: with
#                               more, Python 3.11.7 failed a run with "AST
#                               constructor recursion depth mismatch", a
#                               thread-safety bug of its ast module)
#   SCHEMATHESIS_SEED           fixes the random seed (default: a fresh one, printed)
#   RUN_DIR                     logs, the fetched document and the JUnit report
#                               (default target/schemathesis)
#   GATEWAY_CONFIG              the gateway's settings (default
#                               config/local/gateway.toml); its routes must use the
#                               echo and ledger topics, and the probes need its
#                               POST /echo and POST /ledger/transfers routes
#
# Arguments are passed on to `schemathesis run`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

SCHEMATHESIS_VERSION=4.32.5
VALIDATOR_VERSION=0.9.0
VENV=${REPLYWAY_SCHEMATHESIS_VENV:-$ROOT/.venv-schemathesis}
PYTHON3=${PYTHON3:-python3}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-100}
RUN_TIMEOUT=${SCHEMATHESIS_TIMEOUT:-900}
WORKERS=${SCHEMATHESIS_WORKERS:-1}
RUN_DIR=${RUN_DIR:-$ROOT/target/schemathesis}
GATEWAY_CONFIG=${GATEWAY_CONFIG:-config/local/gateway.toml}
# Relative paths are taken from the repo root.
case "$VENV" in /*) ;; *) VENV=$ROOT/$VENV ;; esac
case "$RUN_DIR" in /*) ;; *) RUN_DIR=$ROOT/$RUN_DIR ;; esac
LOGS=$RUN_DIR/logs

apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# --- tools ------------------------------------------------------------------

if ! command -v "$PYTHON3" >/dev/null 2>&1; then
  echo "installing python3 (Debian package)..."
  apt_install python3 python3-venv
fi
if ! "$PYTHON3" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "installing python3-venv (Debian package)..."
  apt_install python3-venv
fi
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "creating the Python venv at $VENV..."
  rm -rf "$VENV"
  "$PYTHON3" -m venv "$VENV"
fi
installed() { "$VENV/bin/python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null || true; }
if [ "$(installed schemathesis)" != "$SCHEMATHESIS_VERSION" ] ||
  [ "$(installed openapi-spec-validator)" != "$VALIDATOR_VERSION" ]; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION and openapi-spec-validator $VALIDATOR_VERSION into $VENV..."
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" "openapi-spec-validator==$VALIDATOR_VERSION"
fi

scripts/install-deps.sh

echo "building..."
cargo build --workspace --bins --locked

# --- the stack ----------------------------------------------------------------

mkdir -p "$LOGS"
rm -f "$LOGS"/*.log

pids=()
runner=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$runner" ]; then
    kill -TERM "$runner" 2>/dev/null || true
    wait "$runner" 2>/dev/null || true
  fi
  # Services first (they commit and leave their groups), then broker and Redis.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${infra[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${infra[@]}"; do wait "$pid" 2>/dev/null || true; done
  exit "$rc"
}
infra=()
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Free ports, all held at once so that they differ.
read -r KAFKA_PORT KAFKA_CONTROLLER_PORT REDIS_PORT GATEWAY_PORT GATEWAY_ADMIN_PORT COLLECTOR_ADMIN_PORT < <(
  "$PYTHON3" - <<'EOF'
import socket
held = [socket.socket() for _ in range(6)]
for s in held:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))
EOF
)
GATEWAY="127.0.0.1:$GATEWAY_PORT"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 200); do port_busy "$1" && return 0; sleep 0.1; done
  echo "nothing listens on port $1 (see $LOGS)" >&2
  return 1
}

echo "starting redis-server on 127.0.0.1:$REDIS_PORT and Apache Kafka on 127.0.0.1:$KAFKA_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$RUN_DIR" >"$LOGS/redis.log" 2>&1 &
infra+=($!)
rm -rf "$RUN_DIR/kafka"
target/debug/replyway-kafka --dir "$RUN_DIR/kafka" --port "$KAFKA_PORT" \
  --controller-port "$KAFKA_CONTROLLER_PORT" --partitions 3 \
  --topics echo.requests,ledger.requests,ledger.events,replyway.replies >"$LOGS/kafka.log" 2>&1 &
infra+=($!)
wait_port "$REDIS_PORT"
for _ in $(seq 1 900); do
  grep -qx ready "$LOGS/kafka.log" 2>/dev/null && break
  sleep 0.1
done
grep -qx ready "$LOGS/kafka.log" || { cat "$LOGS/kafka.log" >&2; echo "Apache Kafka did not start" >&2; exit 1; }

export NO_COLOR=1 # plain service logs
export REPLYWAY_KAFKA__BROKERS="127.0.0.1:$KAFKA_PORT"
export REPLYWAY_REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
bin=target/debug
REPLYWAY_ADMIN_LISTEN="127.0.0.1:$COLLECTOR_ADMIN_PORT" \
  "$bin/replyway-collector" --config config/local/collector.toml >"$LOGS/collector.log" 2>&1 &
pids+=($!)
"$bin/replyway-echo" --config config/local/echo.toml >"$LOGS/echo.log" 2>&1 &
pids+=($!)
# The local gateway configuration routes /ledger/* to the ledger service.
if [ -x "$bin/replyway-ledger" ] && [ -f config/local/ledger.toml ]; then
  "$bin/replyway-ledger" --config config/local/ledger.toml >"$LOGS/ledger.log" 2>&1 &
  pids+=($!)
fi
REPLYWAY_LISTEN="$GATEWAY" REPLYWAY_ADMIN_LISTEN="127.0.0.1:$GATEWAY_ADMIN_PORT" \
  "$bin/replyway-gateway" --config "$GATEWAY_CONFIG" >"$LOGS/gateway.log" 2>&1 &
pids+=($!)

echo "waiting for the gateway at http://$GATEWAY/readyz..."
ready=""
for _ in $(seq 1 600); do
  if curl -fsS "http://$GATEWAY/readyz" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "the gateway did not become ready; see $LOGS/gateway.log" >&2
  curl -sS "http://$GATEWAY/readyz" >&2 || true
  exit 1
fi
# The demo services answer once they have joined their consumer groups.
for _ in $(seq 1 300); do
  if curl -fsS -X POST "http://$GATEWAY/echo" -d ping >/dev/null 2>&1; then break; fi
  sleep 0.1
done

# --- the checks -----------------------------------------------------------------

curl -fsS "http://$GATEWAY/openapi.json" -o "$RUN_DIR/openapi.json"
echo "validating $RUN_DIR/openapi.json with openapi-spec-validator $VALIDATOR_VERSION..."
"$VENV/bin/openapi-spec-validator" "$RUN_DIR/openapi.json"

# Answers schemathesis does not provoke (a reply timeout, an oversized body,
# a reused idempotency key, unknown paths and methods, a pending reply), checked
# against the document: status, the headers the gateway sets, the body's schema.
echo "probing the gateway's own answers against the document..."
"$VENV/bin/python" - "http://$GATEWAY" "$RUN_DIR/openapi.json" <<'PY'
import json
import sys
import urllib.error
import urllib.request

from jsonschema import Draft202012Validator

base, doc = sys.argv[1], json.load(open(sys.argv[2]))
failures = []


def valid(schema, value):
    errors = Draft202012Validator({**schema, "components": doc["components"]}).iter_errors(value)
    return [e.message for e in errors]


def call(method, path, body=None, headers=None):
    request = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def check(name, answer, status, response, kind=None, headers=()):
    code, got, body = answer
    if code != status:
        failures.append(f"{name}: status {code}, expected {status}: {body[:300]!r}")
        return None
    for header in headers:
        value = got.get(header)
        spec = response.get("headers", {}).get(header)
        if value is None or spec is None:
            failures.append(f"{name}: header {header} missing from the answer or the document")
        else:
            failures.extend(f"{name}: header {header}: {m}" for m in valid(spec["schema"], value))
    media = (got.get("content-type") or "").split(";")[0].strip()
    content = response.get("content", {})
    schema = (content.get(media) or content.get("*/*") or {}).get("schema")
    if schema is None:
        failures.append(f"{name}: content type {media!r} not documented")
        return None
    value = json.loads(body)
    if kind is not None and value.get("type") != f"urn:replyway:problem:{kind}":
        failures.append(f"{name}: type {value.get('type')!r}, expected {kind}")
    failures.extend(f"{name}: {m}" for m in valid(schema, value))
    return got, value


def op(path, method="post"):
    return doc["paths"][path][method]["responses"]


components = doc["components"]["responses"]
# The service gets the command before its deadline (the wait), replies after it.
answer = check("reply timeout", call("POST", "/echo", b'{"sleep_ms":1500}', {"Prefer": "wait=1"}),
               504, op("/echo")["504"], "reply-timeout", ["location", "correlation-id"])
if answer:
    late = call("GET", answer[0]["location"], headers={"Prefer": "wait=10"})
    if late[0] != 200 or json.loads(late[2]) != {"sleep_ms": 1500}:
        failures.append(f"late pick-up: {late[0]} {late[2][:200]!r}")
answer = check("async", call("POST", "/echo", b"later", {"Prefer": "respond-async"}), 202,
               op("/echo")["202"], None, ["location", "correlation-id", "retry-after", "preference-applied"])
if answer:  # the gateway's own 202, not a service's
    failures.extend(f"async: {m}" for m in valid({"$ref": "#/components/schemas/PendingReply"}, answer[1]))
check("oversized body", call("POST", "/ledger/transfers", b"x" * 5000), 413,
      op("/ledger/transfers")["413"], "body-too-large")
check("malformed Prefer", call("POST", "/echo", b"{}", {"Prefer": "wait=soon"}), 400,
      op("/echo")["400"], "bad-request")
check("malformed Idempotency-Key", call("POST", "/echo", b"{}", {"Idempotency-Key": '"open'}), 400,
      op("/echo")["400"], "bad-request")
check("first use of a key", call("POST", "/echo", b'"one"', {"Idempotency-Key": "probe-key"}), 200,
      op("/echo")["default"], None, ["correlation-id"])
check("reused key", call("POST", "/echo", b'"two"', {"Idempotency-Key": "probe-key"}), 422,
      op("/echo")["422"], "idempotency-key-reused")
check("unknown reply", call("GET", "/v1/replies/no-such-id"), 404,
      op("/v1/replies/{id}", "get")["404"], "unknown-reply")
check("malformed reply id", call("GET", "/v1/replies/a%7Bb%7D"), 400,
      op("/v1/replies/{id}", "get")["400"], "bad-request")
check("unknown path", call("POST", "/nowhere"), 404, components["NoRoute"], "no-route")
check("other method", call("PUT", "/echo"), 405, components["MethodNotAllowed"], "method-not-allowed",
      ["allow"])
check("readiness", call("GET", "/readyz"), 200, op("/readyz", "get")["200"])
for failure in failures:
    print("  " + failure, file=sys.stderr)
print(f"{len(failures)} failures")
sys.exit(1 if failures else 0)
PY

seed=()
[ -n "${SCHEMATHESIS_SEED:-}" ] && seed=(--seed "$SCHEMATHESIS_SEED")
echo "running schemathesis $SCHEMATHESIS_VERSION against http://$GATEWAY/openapi.json..."
# Every check but positive_data_acceptance, which expects a 2xx for every request
# the schema allows. It cannot apply to a gateway: a route's body is opaque to it
# (any bytes of any media type), so whether a request is acceptable is for the
# service to say, and the demo services refuse most generated bodies with their
# own 4xx; nor can a header schema express every rule the gateway applies to
# Prefer (a `wait` must be a number of seconds). negative_data_rejection, the
# conformance checks and not_a_server_error stay on.
# In the background, so that a signal to this script (which `wait` lets through
# at once) stops it in cleanup; in RUN_DIR, where it keeps its .schemathesis/.
(cd "$RUN_DIR" && exec timeout --kill-after=30 "$RUN_TIMEOUT" \
  "$VENV/bin/schemathesis" run "http://$GATEWAY/openapi.json" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  --max-examples "$MAX_EXAMPLES" \
  --workers "$WORKERS" \
  --request-timeout 30 \
  --generation-database none \
  --no-color \
  --report junit --report-junit-path "$RUN_DIR/junit.xml" \
  "${seed[@]}" "$@") &
runner=$!
rc=0
wait "$runner" || rc=$?
runner=""
if [ "$rc" -ne 0 ]; then
  if [ "$rc" -eq 124 ]; then
    echo "schemathesis did not finish within ${RUN_TIMEOUT}s" >&2
  fi
  echo "schemathesis failed (exit $rc); logs of the stack in $LOGS" >&2
  exit "$rc"
fi
echo "schemathesis passed; report in $RUN_DIR/junit.xml"
