# Replyway: the commands a new user needs.
#   make run   - install what is missing, build, start the whole stack locally
#   make test  - the whole test suite, and the benchmark in smoke mode (what CI runs)
#   make bench - the benchmark (fresh broker and Redis; results in bench/results/)

.PHONY: run test deps build lint bench

deps:
	@scripts/install-deps.sh

run: deps
	@scripts/run-local.sh

test: deps
	scripts/timed.sh build cargo build --workspace --bins --tests --locked
	scripts/timed.sh tests cargo test --workspace --locked
	scripts/timed.sh bench-smoke target/debug/replyway-bench --smoke --out target/bench-smoke
	scripts/timed.sh schemathesis scripts/schemathesis.sh
	scripts/timed.sh fuzz scripts/fuzz.sh --smoke

bench: deps
	cargo build --release --workspace --bins --locked
	target/release/replyway-bench $(BENCH_ARGS)

build:
	cargo build --workspace --release --locked

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	scripts/check-compose.sh
