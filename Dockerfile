# syntax=docker/dockerfile:1
#
# One image with the Replyway binaries: replyway-gateway, replyway-collector
# and the demo services replyway-echo and replyway-ledger. docker-compose.yml
# runs each service from it with its own command; the settings files of
# config/compose/ are in /etc/replyway/.
#
#   docker build -t replyway .
#   docker run --rm replyway replyway-gateway --help

# ---- build -------------------------------------------------------------------
# The workspace needs rustc >= 1.88.
FROM rust:1.95-bookworm AS builder

# rdkafka (features "tokio" and "ssl") builds librdkafka from its bundled
# source with ./configure and make and links zlib and the system's OpenSSL
# (Kafka TLS and SASL); the redis client uses the same OpenSSL for rediss://.
# The rust:*-bookworm image already has what that needs (gcc, make,
# pkg-config, zlib1g-dev, libssl-dev); the runtime image needs libz and
# libssl3.
WORKDIR /src
COPY . .

# Dependency caching: BuildKit cache mounts instead of a "manifests + stub
# sources" layer. The workspace has eight members (tests, bench and examples
# among them) with [[bin]] paths of their own, and stubs would have to mirror
# each one and be kept in step by hand. The cache mounts keep cargo's registry
# and target/ between builds, so after a source change cargo recompiles only
# the workspace's own crates (librdkafka and the other dependencies stay
# built). target/ lives in the cache, not in the layer, so the binaries are
# copied out in the same step.
RUN --mount=type=cache,id=replyway-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=replyway-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=replyway-target,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p replyway-gateway -p replyway-collector -p replyway-echo -p replyway-ledger --bins \
 && mkdir -p /out \
 && for bin in replyway-gateway replyway-collector replyway-echo replyway-ledger; do \
        cp "target/release/$bin" /out/; \
    done

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim

# libssl3 and ca-certificates for rediss:// and TLS brokers; curl for the
# compose healthchecks (GET /readyz on the admin port).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 replyway \
 && useradd --system --uid 10001 --gid replyway --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin replyway

COPY --from=builder /out/ /usr/local/bin/
COPY config/compose/ /etc/replyway/

USER replyway:replyway
# 8080: the gateway's HTTP API; 9090: the admin port (healthz, readyz,
# metrics) of gateway and collector when admin_listen is set.
EXPOSE 8080 9090
CMD ["replyway-gateway", "--config", "/etc/replyway/gateway.toml"]
