# syntax=docker/dockerfile:1
# clothesline-gpu-worker on CPU only (image clothesline/gpu-worker-cpu): the worker of
# docker/gpu-worker.Dockerfile without the CUDA libraries it cannot use without a GPU. Built the
# same two ways (the last stage compiles in Docker; --target prebuilt copies host builds).
# PyPI's torch wheel is the CUDA build, and there is no other on PyPI: libtorch_cpu.so itself links
# libcudart and libcupti (about 5 MB, loadable without a GPU or driver), and torch-sys links the
# binary to libtorch_cuda.so. So this image keeps libc10, libtorch_cpu, libgomp, libcudart and
# libcupti, and drops libtorch_cuda with cuBLAS, cuDNN, NCCL & co. (about 3 GB); `patchelf
# --remove-needed libtorch_cuda.so` takes that library off the binary, which then only sees the CPU
# (libtorch's CUDA hooks are registered by libtorch_cuda, which is never loaded): DEVICE=cuda
# fails, DEVICE=auto picks the CPU.
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
# HOME lives in /tmp, the only writable place under a read-only root filesystem.
ENV LD_LIBRARY_PATH=/opt/torch/torch/lib \
    HOME=/tmp \
    DEVICE=cpu \
    MODEL_MANIFEST=/app/model/manifest.json \
    GPU_WORKER_HTTP_ADDR=0.0.0.0:9092 \
    NATS_URL=nats://nats:4222
EXPOSE 9092
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/clothesline-gpu-worker"]

# The stages up to here need no Rust image: the legacy builder, which builds every stage before
# the target, stops here. scripts/build-images.sh stages the binary with libtorch_cuda removed.
FROM runtime AS prebuilt
COPY target/prebuilt/torch/lib/libc10.so target/prebuilt/torch/lib/libtorch_cpu.so target/prebuilt/torch/lib/libgomp.so.1 /opt/torch/torch/lib/
COPY target/prebuilt/nvidia/cu13/lib/libcudart.so.13 target/prebuilt/nvidia/cu13/lib/libcupti.so.13 /opt/torch/nvidia/cu13/lib/
COPY target/prebuilt/clothesline-gpu-worker /usr/local/bin/clothesline-gpu-worker
COPY model/manifest.json model/clothes.pt /app/model/

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# The torch wheel installed flat into /opt/torch, as in docker/gpu-worker.Dockerfile.
FROM chef AS torch
ARG TORCH_VERSION
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv patchelf \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/pip \
 && /opt/pip/bin/pip install --no-cache-dir --target /opt/torch "torch==${TORCH_VERSION}"
ENV PYTHONPATH=/opt/torch \
    LIBTORCH_USE_PYTORCH=1 \
    TORCH_LIB=/opt/torch/torch/lib

FROM torch AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked -p clothesline-gpu-worker --bin clothesline-gpu-worker --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p clothesline-gpu-worker --bin clothesline-gpu-worker \
 && patchelf --remove-needed libtorch_cuda.so target/release/clothesline-gpu-worker

FROM runtime
COPY --from=torch /opt/torch/torch/lib/libc10.so /opt/torch/torch/lib/libtorch_cpu.so /opt/torch/torch/lib/libgomp.so.1 /opt/torch/torch/lib/
COPY --from=torch /opt/torch/nvidia/cu13/lib/libcudart.so.13 /opt/torch/nvidia/cu13/lib/libcupti.so.13 /opt/torch/nvidia/cu13/lib/
COPY --from=builder /src/target/release/clothesline-gpu-worker /usr/local/bin/clothesline-gpu-worker
COPY model/manifest.json model/clothes.pt /app/model/
