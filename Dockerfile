# Multi-stage build: the README's `cargo build --release --locked`, without the simulated
# upstream (`--no-default-features`: no `demo`, no `mock-upstream` in a production image), then a
# slim, non-root runtime image that runs `understudy serve` with a mounted config.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sim ./sim
COPY benches ./benches
RUN cargo build --release --locked --no-default-features

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The non-root user and the one directory it writes: the store (SQLite database, WAL, lock).
RUN useradd --no-log-init --user-group --uid 10001 --home-dir /var/lib/understudy --no-create-home \
        --shell /usr/sbin/nologin understudy \
    && install -d -o understudy -g understudy -m 0750 /var/lib/understudy
COPY --from=build /src/target/release/understudy /usr/local/bin/understudy
# The reference files (prompts, Prometheus rules, ...) and, as understudy.toml, the image's
# config: listeners on 0.0.0.0, the store in /var/lib/understudy (tests/image.rs runs the binary
# with exactly this layout as this user and runs the HEALTHCHECK below against it).
COPY config /etc/understudy
COPY config/docker.toml /etc/understudy/understudy.toml
USER understudy
WORKDIR /var/lib/understudy
# Declared after the directory is made and chowned, so a new named volume starts owned by the
# user. Mount a volume here to keep the store across containers.
VOLUME /var/lib/understudy
EXPOSE 8080 8081
# With what the image has (bash, coreutils): GET /healthz on the proxy port, healthy on a 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# To use your own config, mount it over /etc/understudy/understudy.toml (or the directory);
# keep `[store] path` in /var/lib/understudy and the listeners on 0.0.0.0.
ENTRYPOINT ["/usr/local/bin/understudy"]
CMD ["serve", "--config", "/etc/understudy/understudy.toml"]
