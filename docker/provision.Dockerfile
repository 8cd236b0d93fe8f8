# syntax=docker/dockerfile:1
# clothesline-provision: creates or updates the JetStream streams and consumers, then exits (a
# compose one-shot service, a Kubernetes Job). Built from the repository root:
#   docker build -f docker/provision.Dockerfile -t clothesline/provision .
# The definitions in nats/jetstream/ are compiled in; mount others and set JETSTREAM_DEFINITIONS.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked -p clothesline-protocol --bin clothesline-provision --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p clothesline-protocol --bin clothesline-provision

FROM ${RUNTIME_IMAGE}
COPY --from=builder /src/target/release/clothesline-provision /usr/local/bin/clothesline-provision
ENV NATS_URL=nats://nats:4222
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/clothesline-provision"]
