# percore as a container image: a release build, then a slim runtime with only the binary and
# the default config, run as a non-root user.
#
#   docker build -t percore .
#   docker run --rm -p 8972:8972 -p 9090:9090 \
#       --security-opt seccomp=deploy/seccomp.json --ulimit memlock=-1:-1 --cpuset-cpus=2-3 percore
#
# The seccomp profile is Docker's default plus the io_uring syscalls (Docker 25+ denies them by
# default, and percore cannot run without io_uring: it exits 71 and says so). memlock: each
# core registers its io buffer with three io_uring rings (README "Running in a container").

FROM rust:1.95-slim-bookworm AS build
# glommio's build script runs `git submodule update` (a no-op for the crates.io source, but it
# unwraps the spawn) and liburing's configure; the slim image has no git. etcd-client's build
# script compiles etcd's protobuf definitions with protoc.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole tree: the vendored rustls patch (vendor/) is part of the build.
COPY . .
RUN cargo build --release --locked --bin percore \
    && install -D -m 0755 target/release/percore /out/usr/bin/percore

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin percore
COPY --from=build /out/usr/bin/percore /usr/bin/percore
COPY configs/server.toml /etc/percore/server.toml
# The image's defaults: the packaged config, listening on every interface of the container,
# and the admin endpoint (/metrics, /healthz, /readyz) on 9090 for probes and Prometheus.
ENV PERCORE_CONFIG=/etc/percore/server.toml \
    PERCORE_LISTEN=tcp@0.0.0.0:8972 \
    PERCORE_ADMIN_LISTEN=0.0.0.0:9090
USER 10001:10001
# rpcx (TCP; also HTTP CONNECT, the HTTP gateway and TLS when configured), then admin.
EXPOSE 8972 9090
# /healthz through bash's /dev/tcp: the slim image has no curl, and needs none.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# SIGTERM (docker stop) drains calls in flight within server.drain_timeout (10s), then exits 0:
# keep `docker stop -t` above it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/percore", "serve"]
