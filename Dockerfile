# litegate, built from this repository:
#   docker build -t litegate .
# Build stage: the toolchain and the source. Runtime stage: the binary in
# debian:bookworm-slim (glibc, CA certificates), run as an unprivileged user.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml names the benches; the manifest does not parse without them.
COPY benches ./benches
RUN cargo build --release --locked --bin litegate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/litegate litegate \
 && mkdir -p /var/lib/litegate /etc/litegate \
 && chown litegate /var/lib/litegate
COPY --from=build /src/target/release/litegate /usr/local/bin/litegate
USER 10001
# public, cluster; the admin listener (9191) stays on loopback unless the
# config moves it.
EXPOSE 8080 7070
# Asks the node's admin listener for its status. Readiness is the admin
# listener's /readyz; `litegate status` exits non-zero when it cannot reach
# the node (and, with the readiness work of issue 14 §4, when the node is
# not ready). Set --admin if admin.listen is not 127.0.0.1:9191.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["litegate", "status", "--admin", "http://127.0.0.1:9191"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["litegate"]
CMD ["run", "--config", "/etc/litegate/litegate.toml"]
