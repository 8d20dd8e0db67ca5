# mesh-broker's image: a Debian 12 build stage, a bookworm-slim runtime with only the shared
# libraries the binaries load. The broker is PID 1 and drains on SIGTERM; it runs as a non-root
# numeric user and writes only to its data dir (a volume), so a read-only root filesystem works.
#
#   docker build -t mesh-broker .                       # or podman build
#   podman build -v "$HOME/.cache/ccache:/ccache" …    # reuses the host's compiler cache
FROM debian:bookworm-slim AS build
COPY scripts/deps.sh /src/scripts/deps.sh
RUN /src/scripts/deps.sh build && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
# The build tree sits where the host's does (build/ in the source tree), so a mounted host
# ccache hits for the same sources.
ENV CCACHE_DIR=/ccache CCACHE_BASEDIR=/src CCACHE_NOHASHDIR=1 CCACHE_COMPILERCHECK=content
RUN cmake -S . -B build -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DMESH_BUILD_TESTING=OFF \
        -DMESH_FUZZ=OFF \
 && cmake --build build --target mesh-broker mesh-cli \
 && mkdir -p /out \
 && strip --strip-debug -o /out/mesh-broker build/broker/mesh-broker \
 && strip --strip-debug -o /out/mesh-cli build/client/mesh-cli

FROM debian:bookworm-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mesh-broker" \
      org.opencontainers.image.description="Peer-to-peer mesh message broker: Noise XX links, RocksDB mailboxes, gRPC and REST control plane" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim" \
      org.opencontainers.image.licenses="NOASSERTION"
# The runtime libraries of mesh-broker and mesh-cli (what `ldd` lists), nothing else.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libabsl20220623 libc-ares2 libfmt9 libgflags2.2 libgrpc++1.51 libgrpc29 libjemalloc2 \
      liblz4-1 libprometheus-cpp-core1.0 libprotobuf32 libre2-9 librocksdb7.8 libsnappy1v5 \
      libsodium23 libspdlog1.10 libssl3 libzstd1 libbz2-1.0 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/mesh && chown 10001:10001 /var/lib/mesh && chmod 0750 /var/lib/mesh
COPY --from=build /out/mesh-broker /out/mesh-cli /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/mesh
ENV MESH_DATA_DIR=/var/lib/mesh
VOLUME ["/var/lib/mesh"]
# peers, cluster links, REST + /metrics + health, gRPC
EXPOSE 7700 7780 7800 8080 50051
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mesh-broker"]
