# syntax=docker/dockerfile:1
# clothesline-gpu-worker: batches tensors through the TorchScript model with libtorch. Built from
# the repository root, one of two ways:
#   docker build -f docker/gpu-worker.Dockerfile -t clothesline/gpu-worker .
#       compiles in Docker (the last stage, cargo-chef) against the torch wheel installed from
#       PyPI in the build; needs the Rust image, crates.io and PyPI
#   scripts/build-images.sh with BUILD=host (docker build --target prebuilt)
#       copies the binary built on the host and the host's torch wheel (scripts/deps.sh), staged
#       in target/prebuilt/; needs no registry
# libtorch comes from the torch wheel (its CUDA build, with the nvidia-* libraries it links), so
# the same image runs on a GPU (CUDA driver >= 580 on the host, exposed by the NVIDIA container
# toolkit or Kubernetes device plugin) and on CPU when no GPU is present (DEVICE=auto or cpu).
# docker/gpu-worker-cpu.Dockerfile is the CPU-only variant, without most of the CUDA libraries.
# The model and its manifest are baked in at /app/model; mount another model over it to change it.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BUSYBOX_IMAGE=busybox:1.37.0-musl
ARG TORCH_VERSION=2.13.0

# A static busybox gives compose health checks an HTTP client (`busybox wget`); nothing else uses it.
FROM ${BUSYBOX_IMAGE} AS busybox

# What both ways share: everything but libtorch, the binary and the model.
FROM ${RUNTIME_IMAGE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin nonroot
COPY --from=busybox /bin/busybox /usr/local/bin/busybox
# NVIDIA_VISIBLE_DEVICES is left to the runtime (compose device reservation, the Kubernetes device
# plugin), so a container without a GPU request never sees a GPU. HOME and the CUDA kernel cache
# live in /tmp, the only writable place under a read-only root filesystem.
ENV LD_LIBRARY_PATH=/opt/torch/torch/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOME=/tmp \
    CUDA_CACHE_PATH=/tmp/cuda-cache \
    MODEL_MANIFEST=/app/model/manifest.json \
    GPU_WORKER_HTTP_ADDR=0.0.0.0:9092 \
    NATS_URL=nats://nats:4222
EXPOSE 9092
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/clothesline-gpu-worker"]

# The stages up to here need no Rust image: the legacy builder, which builds every stage before
# the target, stops here. Largest and most stable layers first: libtorch and the CUDA libraries,
# then the binary, the model.
FROM runtime AS prebuilt
COPY target/prebuilt/torch/lib /opt/torch/torch/lib
COPY target/prebuilt/nvidia /opt/torch/nvidia
COPY target/prebuilt/clothesline-gpu-worker /usr/local/bin/clothesline-gpu-worker
COPY model/manifest.json model/clothes.pt /app/model/

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# The torch wheel installed flat into /opt/torch (not a venv's site-packages), so the paths do not
# depend on the Python version: libtorch in /opt/torch/torch/lib, CUDA in /opt/torch/nvidia/*/lib
# (found by libtorch's own $ORIGIN-relative rpath).
FROM chef AS torch
ARG TORCH_VERSION
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/pip \
 && /opt/pip/bin/pip install --no-cache-dir --target /opt/torch "torch==${TORCH_VERSION}"
# torch-sys asks `python3` where torch is (LIBTORCH_USE_PYTORCH); the worker's build.rs sets the
# binary's rpath to TORCH_LIB, the same path the runtime image uses.
ENV PYTHONPATH=/opt/torch \
    LIBTORCH_USE_PYTORCH=1 \
    TORCH_LIB=/opt/torch/torch/lib

FROM torch AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked -p clothesline-gpu-worker --bin clothesline-gpu-worker --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p clothesline-gpu-worker --bin clothesline-gpu-worker

FROM runtime
COPY --from=torch /opt/torch/torch/lib /opt/torch/torch/lib
COPY --from=torch /opt/torch/nvidia /opt/torch/nvidia
COPY --from=builder /src/target/release/clothesline-gpu-worker /usr/local/bin/clothesline-gpu-worker
COPY model/manifest.json model/clothes.pt /app/model/
