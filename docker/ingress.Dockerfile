# syntax=docker/dockerfile:1
# clothesline-ingress: the HTTP API. Built from the repository root, one of two ways:
#   docker build -f docker/ingress.Dockerfile -t clothesline/ingress .
#       compiles in Docker (the last stage): dependencies in their own layer (cargo-chef), so a
#       source change rebuilds only the workspace crates; needs the Rust image and crates.io
#   scripts/build-images.sh with BUILD=host (docker build --target prebuilt)
#       copies the binary built on the host (staged in target/prebuilt/); needs no registry
# The runtime image is distroless (glibc, CA certificates, no shell), non-root; LOCAL_BASE=1 in
# build-images.sh swaps in the images of scripts/base-images.sh.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BUSYBOX_IMAGE=busybox:1.37.0-musl

# A static busybox gives compose health checks an HTTP client (`busybox wget`); nothing else uses it.
FROM ${BUSYBOX_IMAGE} AS busybox

# What both ways share: everything but the binary.
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=busybox /bin/busybox /usr/local/bin/busybox
ENV INGRESS_HTTP_ADDR=0.0.0.0:8080 \
    NATS_URL=nats://nats:4222
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/clothesline-ingress"]

# The stages up to here need no Rust image: the legacy builder, which builds every stage before
# the target, stops here.
FROM runtime AS prebuilt
COPY target/prebuilt/clothesline-ingress /usr/local/bin/clothesline-ingress

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked -p clothesline-ingress --bin clothesline-ingress --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p clothesline-ingress --bin clothesline-ingress

FROM runtime
COPY --from=builder /src/target/release/clothesline-ingress /usr/local/bin/clothesline-ingress
