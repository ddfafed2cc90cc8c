# certgate: multi-stage build. The builder runs the same release build as CI (.ci/run).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin certgate
COPY --from=build /src/target/release/certgate /usr/local/bin/certgate
USER 10001:10001
EXPOSE 8443 9901
ENTRYPOINT ["/usr/local/bin/certgate"]
CMD ["serve", "--config", "/etc/certgate/certgate.yaml"]
