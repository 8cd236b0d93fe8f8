# Prometheus for compose's monitoring profile, made without a registry: the binary of Debian
# bookworm's prometheus package (2.42) on the local runtime base. Built by scripts/base-images.sh
# with the binary as the whole context. Runs as nobody, storing in /prometheus (a volume).
ARG RUNTIME_IMAGE=clothesline-base/runtime:bookworm
FROM ${RUNTIME_IMAGE}
COPY prometheus /usr/local/bin/prometheus
RUN mkdir /prometheus && chown 65534:65534 /prometheus
USER 65534:65534
EXPOSE 9090
VOLUME ["/prometheus"]
ENTRYPOINT ["/usr/local/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
