#!/bin/sh
# Make the image docker.io/library/debian:bookworm-slim locally, with debootstrap,
# when it is not there yet: where no registry of container images can be reached
# (this machine, CI), the Dockerfile's base image cannot be pulled.
#
#   sh tests/docker_base.sh [IMAGE]
#
# Needs root, debootstrap and podman. The Debian mirror is the one apt uses here
# (/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list), else deb.debian.org.
set -eu

image="${1:-docker.io/library/debian:bookworm-slim}"
if podman image exists "$image"; then
    echo "docker_base: $image is already there"
    exit 0
fi

mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
         | grep -v -e security -e updates | head -n 1 || true)
if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]*\)\{0,1\}\([^[:space:]]*\)[[:space:]]\{1,\}bookworm[[:space:]].*/\2/p' \
             /etc/apt/sources.list 2>/dev/null | head -n 1 || true)
fi
mirror="${mirror:-http://deb.debian.org/debian}"

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/relay-bookworm.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
echo "docker_base: debootstrap bookworm from $mirror into $rootfs"
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    exit 1
}
rm -f "$rootfs.log"
# Like the official slim image: no package lists or caches (apt-get update fills them).
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' - "$image"
echo "docker_base: made $image"
