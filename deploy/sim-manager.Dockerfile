# The simulated Swarm manager (crates/sim-manager) as an image, for the demo stack in
# compose.yml: it runs for election in etcd as classic Swarm's `swarm manage --replication`
# does and answers a small Docker-like API (X-Served-By says which manager answered).
# Build from the repository's top: docker build -f deploy/sim-manager.Dockerfile .
FROM rust:1-bookworm AS build
# The "build" rows of scripts/install-deps, as in ../Dockerfile.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc cmake protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sim-manager

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sim-manager
COPY --from=build /src/target/release/sim-manager /usr/local/bin/sim-manager
USER 10001:10001
EXPOSE 2375
ENTRYPOINT ["/usr/local/bin/sim-manager"]
