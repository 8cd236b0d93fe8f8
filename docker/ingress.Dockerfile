# syntax=docker/dockerfile:1
# clothesline-ingress: the HTTP API. Built from the repository root:
#   docker build -f docker/ingress.Dockerfile -t clothesline/ingress .
# Dependencies are compiled in their own layer (cargo-chef), so a source change rebuilds only the
# workspace crates. The runtime image is distroless (glibc, CA certificates, no shell), non-root.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BUSYBOX_IMAGE=busybox:1.37.0-musl

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

# A static busybox gives compose health checks an HTTP client (`busybox wget`); nothing else uses it.
FROM ${BUSYBOX_IMAGE} AS busybox

FROM ${RUNTIME_IMAGE}
COPY --from=busybox /bin/busybox /usr/local/bin/busybox
COPY --from=builder /src/target/release/clothesline-ingress /usr/local/bin/clothesline-ingress
ENV INGRESS_HTTP_ADDR=0.0.0.0:8080 \
    NATS_URL=nats://nats:4222
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/clothesline-ingress"]
