# Replyway: the two commands a new user needs.
#   make run   - install what is missing, build, start the whole stack locally
#   make test  - the whole test suite (what CI runs)

.PHONY: run test deps build lint

deps:
	@scripts/install-deps.sh

run: deps
	@scripts/run-local.sh

test: deps
	cargo build --workspace --bins --locked
	cargo test --workspace --locked

build:
	cargo build --workspace --release --locked

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
