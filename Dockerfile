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
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/understudy --create-home understudy
COPY --from=build /src/target/release/understudy /usr/local/bin/understudy
COPY config /etc/understudy
USER understudy
WORKDIR /var/lib/understudy
EXPOSE 8080 8081
# Mount your own config over /etc/understudy (its store.path, relative to the file, should
# point to a writable volume, e.g. store.path = "/var/lib/understudy/understudy.db").
ENTRYPOINT ["/usr/local/bin/understudy"]
CMD ["serve", "--config", "/etc/understudy/understudy.toml"]
