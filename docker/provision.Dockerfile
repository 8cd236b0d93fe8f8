# syntax=docker/dockerfile:1
# clothesline-provision: creates or updates the JetStream streams and consumers, then exits (a
# compose one-shot service, a Kubernetes Job). Also carries clothesline-model (publish, promote,
# canary, rollback of model versions: README, "Model versions"), run with --entrypoint or a Job's
# command. Built from the repository root, one of two ways:
#   docker build -f docker/provision.Dockerfile -t clothesline/provision .
#       compiles in Docker (the last stage, cargo-chef); needs the Rust image and crates.io
#   scripts/build-images.sh with BUILD=host (docker build --target prebuilt)
#       copies the binary built on the host (staged in target/prebuilt/); needs no registry
# The definitions in nats/jetstream/ are compiled in; mount others and set JETSTREAM_DEFINITIONS.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# What both ways share: everything but the binary.
FROM ${RUNTIME_IMAGE} AS runtime
ENV NATS_URL=nats://nats:4222
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/clothesline-provision"]

# The stages up to here need no Rust image: the legacy builder, which builds every stage before
# the target, stops here.
FROM runtime AS prebuilt
COPY target/prebuilt/clothesline-provision /usr/local/bin/clothesline-provision
COPY target/prebuilt/clothesline-model /usr/local/bin/clothesline-model

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked -p clothesline-tierkit --bin clothesline-provision --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p clothesline-tierkit --bin clothesline-provision --bin clothesline-model

FROM runtime
COPY --from=builder /src/target/release/clothesline-provision /usr/local/bin/clothesline-provision
COPY --from=builder /src/target/release/clothesline-model /usr/local/bin/clothesline-model
