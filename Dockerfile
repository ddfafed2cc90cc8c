# certgate: multi-stage build. The builder runs the same release build as CI (.ci/run).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

# Layout (docs/operations.md): everything certgate reads lives under /etc/certgate, with the
# repository's relative layout, so the config's `../certs/...` paths resolve to
# /etc/certgate/certs/:
#   /etc/certgate/config/certgate.yaml   the configuration (mount yours over config/)
#   /etc/certgate/certs/                 certificates, keys, CA bundles, CRLs (mount yours)
# The shipped config and certs are the repository's DEMO material, so the image starts as is;
# never use their keys outside a laptop.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin certgate
COPY --from=build /src/target/release/certgate /usr/local/bin/certgate
COPY config/certgate.yaml /etc/certgate/config/certgate.yaml
COPY certs/ /etc/certgate/certs/
WORKDIR /etc/certgate
USER 10001:10001
EXPOSE 8443 9901
# Liveness through the admin API (admin.listen; loopback inside the container is enough).
# `certgate health` is a built-in client: the image has no curl.
HEALTHCHECK --interval=30s --timeout=6s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/certgate", "health", "--admin", "127.0.0.1:9901"]
ENTRYPOINT ["/usr/local/bin/certgate"]
CMD ["serve", "--config", "/etc/certgate/config/certgate.yaml"]
