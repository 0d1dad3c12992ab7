# syntax=docker/dockerfile:1
# One image with every InternVL2 binary: internvl (CLI: download, serve, train,
# ...), internvl-gateway, internvl-preprocess, internvl-vision-encoder,
# internvl-llm-decoder, internvl-trainer, and the sentencepiece tokenizer
# plugin.
#
#   deploy/build_image.sh            # docker or podman; makes the Debian base
#                                    # when no registry is reachable; smoke test
#   docker build -t internvl:latest .
#
# Kubernetes manifests using it: deploy/k8s (see deploy/README.md).

############################ build stage ############################
FROM debian:bookworm AS build
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
# The base image's own packages, recorded before anything is installed: the
# runtime base (bookworm-slim: the same packages) has their libraries.
RUN dpkg-query -W -f '${Package}\n' | sort >/base-packages.txt
# The project's own list of build packages (installs with apt-get; no node/npm
# or redis-server: nothing runs tests here).
COPY scripts/install_deps.sh scripts/install_deps.sh
RUN INTERNVL_DEPS=build ./scripts/install_deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# The whole tree (binaries, tests, benchmarks) in Release with the project's
# warning flags (-Wall -Wextra -Werror, cmake/target_defaults.cmake) through the
# test command's own scripts/build.sh: the image build is the check that the
# Release build compiles warning-free (the test command builds RelWithDebInfo).
# BUILD_TARGETS="internvl internvl-gateway internvl-preprocess
# internvl-vision-encoder internvl-llm-decoder internvl-trainer internvl_sp"
# builds only what the image ships (no Release check). JOBS: parallel compile
# jobs (default: the cores). The ccache cache mount keeps objects across image
# builds on one machine.
ARG BUILD_TARGETS=all
ARG JOBS=
RUN --mount=type=cache,id=internvl-ccache,target=/root/.cache/ccache \
    INTERNVL_DEPS=build BUILD_TYPE=Release BUILD_DIR=build JOBS="${JOBS}" ./scripts/build.sh --target ${BUILD_TARGETS} \
 && (ccache -s | grep -E "Hits|Misses" || true)
# The binaries, stripped, and the libraries they load (deploy/runtime_libs.sh:
# their ldd closure less the base image's packages, with a manifest and the
# packages' copyright files) under /out, laid out as the runtime's root.
RUN mkdir -p /out/usr/local/bin /out/usr/local/lib \
 && cp build/cli/internvl build/gateway/internvl-gateway \
      build/services/preprocess/internvl-preprocess \
      build/services/vision_encoder/internvl-vision-encoder \
      build/services/llm_decoder/internvl-llm-decoder \
      build/services/trainer/internvl-trainer /out/usr/local/bin/ \
 && cp build/lib/libinternvl_sp.so /out/usr/local/lib/ \
 && strip --strip-unneeded /out/usr/local/bin/* /out/usr/local/lib/* \
 && deploy/runtime_libs.sh /out /base-packages.txt /out/usr/local/bin/* /out/usr/local/lib/libinternvl_sp.so

############################ runtime stage ##########################
FROM debian:bookworm-slim AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# ca-certificates: `internvl download` fetches from the hub over HTTPS. The
# only package installed here: no compilers, no -dev packages.
# apt's package caches go too (/var/cache/apt/*.bin: 90 MB in a base without
# Docker's apt settings).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log
# The binaries, the plugin and exactly the shared libraries they load.
COPY --from=build /out/ /
# The tokenizer dlopens libinternvl_sp.so: $INTERNVL_SP_PLUGIN, next to the
# executable, then ../lib, i.e. /usr/local/lib for /usr/local/bin/*.
ENV INTERNVL_SP_PLUGIN=/usr/local/lib/libinternvl_sp.so \
    HF_HOME=/models/hf
RUN ldconfig \
 && groupadd --system --gid 10001 internvl \
 && useradd --system --uid 10001 --gid internvl --home-dir /home/internvl --create-home internvl \
 && mkdir -p /models/hf && chown -R internvl:internvl /models \
 && ldd /usr/local/bin/* /usr/local/lib/libinternvl_sp.so | (! grep "not found") \
 && /usr/local/bin/internvl --help >/dev/null
USER 10001:10001
WORKDIR /home/internvl
# gRPC: gateway 50050, preprocess 50051, vision-encoder 50052, llm-decoder 50053,
# trainer 50054; the gateway's OpenAI-compatible HTTP API (--openai_port) 8000.
# /metrics + /healthz: 9089, 9090, 9091, 9092, 9093 respectively.
EXPOSE 50050 50051 50052 50053 50054 8000 9089 9090 9091 9092 9093
ENTRYPOINT ["/usr/local/bin/internvl"]
CMD ["--help"]
