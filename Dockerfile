# syntax=docker/dockerfile:1
# topserve: multi-stage build. Both stages install packages with scripts/install-deps.sh, the same
# script CI and the README use (--build: compilers and -dev packages; --runtime: shared libraries).
#
#   docker build -t topserve .
#   docker run -p 8500:8500 -p 9100:9100 topserve            # serves models/sst2-small
#   docker run ... topserve --config /etc/topserve/config.yaml

# BASE: the Debian 12 image both stages start from (scripts/test-container.sh passes one it made
# with debootstrap, so no registry is needed).
ARG BASE=debian:12-slim
FROM ${BASE} AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh --build
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTOPSERVE_BUILD_TESTS=OFF \
      -DTOPSERVE_BUILD_BENCH=OFF \
 && cmake --build /build -j "$(nproc)" \
 && install -d /out/bin /out/models \
 && install -m 0755 /build/server/topserve-server /build/tools/topserve-cli /out/bin/ \
 && cp -r models/. /out/models/

FROM ${BASE} AS runtime
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN bash /tmp/install-deps.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin topserve
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build /out/models/ /opt/topserve/models/
COPY deploy/config.example.yaml /etc/topserve/config.yaml
# The example config names its model relative to the working directory (models/sst2-small, as from
# the repository root); here the models live under /opt/topserve. (The Kubernetes ConfigMap uses
# absolute paths.)
WORKDIR /opt/topserve
# OpenMP workers must not spin: on small CPU quotas they starve the gRPC threads.
ENV OMP_WAIT_POLICY=passive
USER 10001:10001
# gRPC (health: grpc.health.v1, readiness per model) and Prometheus metrics.
EXPOSE 8500 9100
ENTRYPOINT ["/usr/local/bin/topserve-server"]
CMD ["--config", "/etc/topserve/config.yaml"]
