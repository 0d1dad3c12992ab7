# syntax=docker/dockerfile:1
# One image with every InternVL2 binary: internvl (CLI: download, serve, train,
# ...), internvl-gateway, internvl-preprocess, internvl-vision-encoder,
# internvl-llm-decoder, internvl-trainer, and the sentencepiece tokenizer
# plugin.
#
#   docker build -t internvl:latest .
#
# Kubernetes manifests using it: deploy/k8s (see deploy/README.md).

############################ build stage ############################
FROM debian:bookworm AS build
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
# The project's own list of build packages (installs with apt-get).
COPY scripts/install_deps.sh scripts/install_deps.sh
RUN ./scripts/install_deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DINTERNVL_BUILD_TESTS=OFF \
 && ninja -C /build internvl internvl-gateway internvl-preprocess internvl-vision-encoder \
      internvl-llm-decoder internvl-trainer internvl_sp \
 && mkdir -p /out/bin /out/lib \
 && cp /build/cli/internvl /build/gateway/internvl-gateway \
      /build/services/preprocess/internvl-preprocess \
      /build/services/vision_encoder/internvl-vision-encoder \
      /build/services/llm_decoder/internvl-llm-decoder \
      /build/services/trainer/internvl-trainer /out/bin/ \
 && cp /build/lib/libinternvl_sp.so /out/lib/ \
 && strip --strip-unneeded /out/bin/* /out/lib/*

############################ runtime stage ##########################
FROM debian:bookworm-slim AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# Runtime shared libraries only (no compilers, no -dev packages). The list is
# the NEEDED entries of the binaries and the plugin (readelf -d / ldd) mapped to
# Debian packages with dpkg -S; apt pulls their own dependencies.
# ca-certificates: `internvl download` fetches from the hub over HTTPS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates \
      libabsl20220623 \
      libavcodec59 libavformat59 libavutil57 libswscale6 \
      libcurl4 libssl3 libcpp-httplib0.11 \
      libgrpc29 libgrpc++1.51 libprotobuf32 \
      libhiredis0.14 \
      libicu72 libpcre2-8-0 \
      libopencv-core406 libopencv-imgcodecs406 \
      libsentencepiece0 \
      libtorch1.13 libopenblas0-pthread \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/bin/ /usr/local/bin/
# The tokenizer dlopens libinternvl_sp.so: $INTERNVL_SP_PLUGIN, next to the
# executable, then ../lib, i.e. /usr/local/lib for /usr/local/bin/*.
COPY --from=build /out/lib/libinternvl_sp.so /usr/local/lib/libinternvl_sp.so
ENV INTERNVL_SP_PLUGIN=/usr/local/lib/libinternvl_sp.so \
    HF_HOME=/models/hf
RUN groupadd --system --gid 10001 internvl \
 && useradd --system --uid 10001 --gid internvl --home-dir /home/internvl --create-home internvl \
 && mkdir -p /models/hf && chown -R internvl:internvl /models \
 && ldd /usr/local/bin/* /usr/local/lib/libinternvl_sp.so | (! grep "not found")
USER 10001:10001
WORKDIR /home/internvl
# gRPC: gateway 50050, preprocess 50051, vision-encoder 50052, llm-decoder 50053,
# trainer 50054; the gateway's OpenAI-compatible HTTP API (--openai_port) 8000.
# /metrics + /healthz: 9089, 9090, 9091, 9092, 9093 respectively.
EXPOSE 50050 50051 50052 50053 50054 8000 9089 9090 9091 9092 9093
ENTRYPOINT ["/usr/local/bin/internvl"]
CMD ["--help"]
