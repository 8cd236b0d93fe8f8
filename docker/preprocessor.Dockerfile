# syntax=docker/dockerfile:1
# clothesline-preprocessor: downloads, decodes and resizes images into uint8 tensors. Built from the
# repository root, one of two ways:
#   docker build -f docker/preprocessor.Dockerfile -t clothesline/preprocessor .
#       compiles in Docker (the last stage, cargo-chef); libjpeg-turbo is built from source (cmake
#       + nasm) and linked statically; needs the Rust image and crates.io
#   scripts/build-images.sh with BUILD=host (docker build --target prebuilt)
#       copies the binary built on the host (staged in target/prebuilt/); needs no registry
# The runtime image is distroless (glibc, CA certificates for HTTPS downloads, no shell), non-root.
# The model manifest (input size, preprocessing) is baked in at /app/model; mount another over it
# to change models.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BUSYBOX_IMAGE=busybox:1.37.0-musl

# A static busybox gives compose health checks an HTTP client (`busybox wget`); nothing else uses it.
FROM ${BUSYBOX_IMAGE} AS busybox

# What both ways share: everything but the binary.
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=busybox /bin/busybox /usr/local/bin/busybox
COPY model/manifest.json /app/model/manifest.json
ENV MODEL_MANIFEST=/app/model/manifest.json \
    PREPROCESSOR_HTTP_ADDR=0.0.0.0:9091 \
    NATS_URL=nats://nats:4222
EXPOSE 9091
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/clothesline-preprocessor"]

# The stages up to here need no Rust image: the legacy builder, which builds every stage before
# the target, stops here.
FROM runtime AS prebuilt
COPY target/prebuilt/clothesline-preprocessor /usr/local/bin/clothesline-preprocessor

FROM ${RUST_IMAGE} AS chef
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake nasm \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked -p clothesline-preprocessor --bin clothesline-preprocessor --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p clothesline-preprocessor --bin clothesline-preprocessor

FROM runtime
COPY --from=builder /src/target/release/clothesline-preprocessor /usr/local/bin/clothesline-preprocessor
