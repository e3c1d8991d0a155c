# Multi-stage build to a small runtime image that runs as a non-root user.
# Build: docker build -t leader-proxy .
# In a container the proxy must listen on a non-loopback address, which leader-proxy only
# allows with client TLS (--tlsverify) or an explicit --insecure-bind: see README.md.
FROM rust:1-bookworm AS build
# The build packages of scripts/install-deps (its "build" rows; tests/install_deps.rs keeps
# the two lists equal): gcc and cmake for pingora's zlib-ng, protoc and the well-known .proto
# includes (libprotobuf-dev) for etcd-client.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc cmake protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin leader-proxy

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin leader-proxy
COPY --from=build /src/target/release/leader-proxy /usr/local/bin/leader-proxy
USER 10001:10001
EXPOSE 2375 9375
ENTRYPOINT ["/usr/local/bin/leader-proxy"]
CMD ["--help"]
