# sembase in a container: the release binary on a slim Debian, run as an
# unprivileged user. Models are mounted at $SEMBASE_HOME/models or pulled at
# start (SEMBASE_PULL="all-minilm-l6-v2 ..."); see deploy/compose.yaml.
#
#   docker build -t sembase .          (or: podman build -t sembase .)
#   docker run --rm -v sembase:/var/lib/sembase -e SEMBASE_PULL=all-minilm-l6-v2 \
#     -p 8080:8080 sembase serve --model all-minilm-l6-v2 --host 0.0.0.0

# Base images, overridable for a registry mirror (--build-arg RUST_IMAGE=...).
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim

# Build stage: the whole workspace's toolchain, thrown away afterwards.
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p sembase-cli \
 && install -m 0755 target/release/sembase /usr/local/bin/sembase

# Run stage: the binary, CA certificates (model pulls over HTTPS) and a user.
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/sembase --shell /usr/sbin/nologin sembase \
 && mkdir -p /var/lib/sembase/models /var/lib/sembase/indexes \
 && chown -R sembase /var/lib/sembase
COPY --from=build /usr/local/bin/sembase /usr/local/bin/sembase
COPY deploy/entrypoint.sh /usr/local/bin/sembase-entrypoint
ENV SEMBASE_HOME=/var/lib/sembase
USER sembase
WORKDIR /var/lib/sembase
VOLUME /var/lib/sembase
EXPOSE 8080
ENTRYPOINT ["sembase-entrypoint"]
CMD ["--help"]
